// A raw client of the native protocol for tests that feed a node bad input: a plain `ws` WebSocket that sends
// whatever bytes a test builds and records the handshake, every reply and the close code, with no checks of its own.
// On an export with wire digests (handshake flag DIGEST) a successful READ reply's trailing digest is kept apart.

import WebSocket from 'ws'
import {
  HANDSHAKE_SIZE, HandshakeFlag, Op, REPLY_HEADER_SIZE, REQUEST_HEADER_SIZE, parseHandshake, parseReplyHeader, writeRequestHeader,
  type Handshake,
} from '../../export/native/codec'

export interface Reply {
  op: number
  tagLo: number
  tagHi: number
  errno: number
  length: number
  payload: Buffer
  /** The wire digest that followed the payload (a successful READ on a DIGEST export), else undefined. */
  digest?: Buffer
}

export interface Closed { code: number, reason: string }

/**
 * Builds one request frame: a 32-byte header, followed by `payload` for a WRITE (on a DIGEST export, give the payload
 * with its digest appended: `length` stays the payload's). `aux` is the HASH chunk size.
 */
export function frame (op: number, tag: number, offset: number, length: number, payload?: Uint8Array, tagHi = 0, aux = 0): Buffer {
  const header = Buffer.alloc(REQUEST_HEADER_SIZE)
  writeRequestHeader(header, 0, op, 0, tag, tagHi, offset, length, aux)
  return payload === undefined ? header : Buffer.concat([header, payload])
}

export class RawClient {
  readonly handshake: Handshake
  readonly replies: Reply[] = []
  /** Binary messages that were not whole replies (kept so a test can see them). */
  readonly junk: Buffer[] = []
  /** Every binary message as it arrived, so a test can check the exact bytes of a reply. */
  readonly messages: Buffer[] = []
  readonly closed: Promise<Closed>
  private waiters: Array<() => void> = []
  private closeInfo: Closed | null = null

  private constructor (readonly ws: WebSocket, first: Buffer) {
    this.handshake = parseHandshake(first)
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) { this.junk.push(Buffer.from(data)); return }
      this.messages.push(Buffer.from(data))
      const digests = (this.handshake.flags & HandshakeFlag.DIGEST) !== 0
      let at = 0
      while (data.length - at >= REPLY_HEADER_SIZE) {
        let h
        try { h = parseReplyHeader(data, at) } catch { break } // not a reply header: the rest is junk
        const end = at + REPLY_HEADER_SIZE + h.length
        const trailer = digests && h.op === Op.READ && h.errno === 0 && h.length > 0 ? this.handshake.digestSize : 0
        if (trailer > 0 && end + trailer > data.length) break
        const reply: Reply = { ...h, payload: Buffer.from(data.subarray(at + REPLY_HEADER_SIZE, end)) }
        if (trailer > 0) reply.digest = Buffer.from(data.subarray(end, end + trailer))
        this.replies.push(reply)
        at = end + trailer
      }
      if (at !== data.length) this.junk.push(Buffer.from(data.subarray(at)))
      this.wake()
    })
    this.closed = new Promise(resolve => {
      ws.on('close', (code: number, reason: Buffer) => {
        this.closeInfo = { code, reason: reason.toString() }
        this.wake()
        resolve(this.closeInfo)
      })
    })
    ws.on('error', () => {})
  }

  /** Opens ws://127.0.0.1:PORT/NAME and waits for the handshake. */
  static connect (port: number, name: string, headers: Record<string, string> = {}, timeout = 10000): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/${encodeURIComponent(name)}`, { perMessageDeflate: false, headers })
      const timer = setTimeout(() => { ws.terminate(); reject(new Error(`no handshake from ${name} within ${timeout} ms`)) }, timeout)
      ws.on('error', err => { clearTimeout(timer); reject(err) })
      ws.once('message', (data: Buffer, isBinary: boolean) => {
        clearTimeout(timer)
        if (!isBinary || data.length !== HANDSHAKE_SIZE) { ws.terminate(); reject(new Error(`first message is not a handshake (${data.length} bytes)`)); return }
        ws.removeAllListeners('error')
        resolve(new RawClient(ws, data))
      })
    })
  }

  get isClosed (): boolean { return this.closeInfo !== null }

  send (data: Buffer | string): void { this.ws.send(data, { binary: typeof data !== 'string' }) }

  /** Waits until `count` replies have arrived in total (or the connection closes, or the time runs out). */
  async waitReplies (count: number, timeout = 10000): Promise<Reply[]> {
    const deadline = Date.now() + timeout
    while (this.replies.length < count) {
      if (this.closeInfo !== null) throw new Error(`connection closed (${this.closeInfo.code} ${this.closeInfo.reason}) after ${this.replies.length} of ${count} replies`)
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`${this.replies.length} of ${count} replies within ${timeout} ms`)
      await new Promise<void>(resolve => {
        const timer = setTimeout(resolve, left)
        this.waiters.push(() => { clearTimeout(timer); resolve() })
      })
    }
    return this.replies
  }

  /** Sends one request and waits for the reply with its tag. */
  async call (op: number, tag: number, offset: number, length: number, payload?: Uint8Array, aux = 0): Promise<Reply> {
    const before = this.replies.length
    this.send(frame(op, tag, offset, length, payload, 0, aux))
    const replies = await this.waitReplies(before + 1)
    const reply = replies.slice(before).find(r => r.tagLo === tag)
    if (reply === undefined) throw new Error(`reply to tag ${tag} missing; got tags ${replies.slice(before).map(r => r.tagLo).join(',')}`)
    return reply
  }

  /** Waits for the server to close the connection. */
  async waitClosed (timeout = 10000): Promise<Closed> {
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`connection still open after ${timeout} ms`)), timeout) })
    try { return await Promise.race([this.closed, late]) } finally { clearTimeout(timer) }
  }

  terminate (): void { this.ws.terminate() }

  private wake (): void {
    const waiters = this.waiters
    this.waiters = []
    for (const w of waiters) w()
  }
}

export interface Refusal {
  status: number
  body: string
  /** Whether a WebSocket was ever opened or any message arrived (both must be false for a refusal). */
  opened: boolean
  messages: number
}

/** Attempts an upgrade that the node should refuse; reports the HTTP status and body it answered with. */
export function attemptUpgrade (port: number, name: string, headers: Record<string, string> = {}, timeout = 10000): Promise<Refusal> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/${encodeURIComponent(name)}`, { perMessageDeflate: false, headers })
    let opened = false
    let messages = 0
    const timer = setTimeout(() => { ws.terminate(); reject(new Error(`no answer to the upgrade within ${timeout} ms`)) }, timeout)
    // An upgrade that should have been refused but was not: report it (status 101) so the test fails clearly.
    ws.on('open', () => { opened = true; setTimeout(() => { clearTimeout(timer); ws.terminate(); resolve({ status: 101, body: '', opened, messages }) }, 200) })
    ws.on('message', () => { messages++ })
    ws.on('error', err => { clearTimeout(timer); reject(err) })
    ws.on('unexpected-response', (req, res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        clearTimeout(timer)
        req.destroy()
        ws.removeAllListeners('error')
        ws.on('error', () => {})
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString(), opened, messages })
      })
    })
  })
}
