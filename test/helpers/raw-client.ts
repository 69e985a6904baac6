// A raw client of the native protocol for tests that feed a node bad input: a plain `ws` WebSocket that sends
// whatever bytes a test builds and records the handshake, every reply and the close code, with no checks of its own.

import WebSocket from 'ws'
import {
  HANDSHAKE_SIZE, REPLY_HEADER_SIZE, REQUEST_HEADER_SIZE, parseHandshake, parseReplyHeader, writeRequestHeader,
  type Handshake,
} from '../../export/codec'

export interface Reply {
  op: number
  tagLo: number
  tagHi: number
  errno: number
  length: number
  payload: Buffer
}

export interface Closed { code: number, reason: string }

/** Builds one request frame: a 32-byte header, followed by `payload` for a WRITE. */
export function frame (op: number, tag: number, offset: number, length: number, payload?: Uint8Array, tagHi = 0): Buffer {
  const header = Buffer.alloc(REQUEST_HEADER_SIZE)
  writeRequestHeader(header, 0, op, 0, tag, tagHi, offset, length)
  return payload === undefined ? header : Buffer.concat([header, payload])
}

export class RawClient {
  readonly handshake: Handshake
  readonly replies: Reply[] = []
  /** Binary messages that were not whole replies (kept so a test can see them). */
  readonly junk: Buffer[] = []
  readonly closed: Promise<Closed>
  private waiters: Array<() => void> = []
  private closeInfo: Closed | null = null

  private constructor (readonly ws: WebSocket, first: Buffer) {
    this.handshake = parseHandshake(first)
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) { this.junk.push(Buffer.from(data)); return }
      let at = 0
      while (data.length - at >= REPLY_HEADER_SIZE) {
        const h = parseReplyHeader(data, at)
        const end = at + REPLY_HEADER_SIZE + h.length
        this.replies.push({ ...h, payload: Buffer.from(data.subarray(at + REPLY_HEADER_SIZE, end)) })
        at = end
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

  /** Opens ws://127.0.0.1:PORT/NAME and waits for the 64-byte handshake. */
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
  async call (op: number, tag: number, offset: number, length: number, payload?: Uint8Array): Promise<Reply> {
    const before = this.replies.length
    this.send(frame(op, tag, offset, length, payload))
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
