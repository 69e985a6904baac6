// A device on another node, reached at dst://HOST:PORT/NAME. It learns size and identity from the handshake, splits
// requests larger than the export's maximum, and pipelines up to `queueDepth` of them on one connection.
//
// Riding out faults: when the connection drops (closed socket, peer restart, a silent peer caught by pings, a request
// left unanswered past `requestTimeout`), it reconnects by itself with capped exponential backoff, and every request
// that had not been answered is sent again on the new connection (requests are positional, so sending one twice is
// harmless). The caller sees no error if the peer is back within `reconnectTimeout`; after that, requests fail with a
// clear error until the peer returns. A peer that comes back with another disk (identity or size) is never trusted
// with the old requests: they fail, and the device either refuses the new disk or (for mirror legs, which then do a
// full sync) takes it on.

import { Device, type DeviceStatus } from '../node/device'
import { DstError, Errno } from '../node/errors'
import { CLOSE_WRITER_DONE, Op } from './codec'
import { settleAll } from '../node/settle'
import { DIGEST_SIZE, digestCount } from '../node/hasher'
import { Connection, formatDstUrl, type ConnectOptions, type DstUrl } from './client'

export interface RemoteDeviceOptions extends ConnectOptions {
  /** Keep trying the first connection this long (ms) before giving up; 0 means one try. */
  openTimeout?: number
  /** How long (ms) requests wait for a lost peer to come back before they fail. Default 30 s. */
  reconnectTimeout?: number
  /** Take on a peer that comes back with another disk (mirror legs: the mirror resyncs it in full). */
  acceptNewDisk?: boolean
  /** Log lines about connection changes. */
  log?: (message: string) => void
}

/** Errors of the link, not of the request: the request is sent again on a fresh connection. */
const TRANSPORT = new Set(['DST_ERR_DISCONNECTED', 'DST_ERR_PROTOCOL', 'DST_ERR_TIMEOUT', 'DST_ERR_SILENT'])

interface Waiter { resolve: (conn: Connection) => void, reject: (err: Error) => void }

export class RemoteDevice extends Device {
  readonly type = 'remote'
  readonly url: string
  private conn: Connection | null
  private readonly maxRequest: number
  private readonly target: DstUrl
  private readonly options: RemoteDeviceOptions
  private readonly reconnectTimeout: number
  private reconnectTimer: NodeJS.Timeout | null = null
  private giveUpTimer: NodeJS.Timeout | null = null
  private backoff = 100
  private closedByUs = false
  /** Set once the peer has been away longer than reconnectTimeout: requests fail at once until it is back. */
  private unreachable: DstError | null = null
  private waiters: Waiter[] = []
  generation = 0
  lastError = ''
  /** Requests sent again after a reconnect (status, tests). */
  resent = 0
  /** Payloads that failed their wire digest, over every connection (each was sent or asked for again). */
  readonly counters: { digestErrors: number }
  /** Called when the peer came back with another disk and `acceptNewDisk` took it on. */
  onNewDisk: ((identity: string) => void) | null = null

  private constructor (target: DstUrl, conn: Connection, options: RemoteDeviceOptions) {
    const h = conn.handshake
    super({ size: h.size, blockSize: h.blockSize, readOnly: conn.readOnly, canFlush: conn.canFlush, canTrim: conn.canTrim })
    this.target = target
    this.url = formatDstUrl(target)
    this.conn = conn
    this.maxRequest = h.maxRequest
    this.identity = h.identity
    this.generation = h.generation
    this.counters = options.counters ?? { digestErrors: 0 }
    this.options = { ...options, counters: this.counters }
    this.reconnectTimeout = options.reconnectTimeout ?? 30000
    this.watch(conn)
  }

  static async open (target: DstUrl, given: RemoteDeviceOptions = {}): Promise<RemoteDevice> {
    const options = { ...given, counters: given.counters ?? { digestErrors: 0 } }
    const deadline = Date.now() + (options.openTimeout ?? 0)
    let wait = 100
    for (;;) {
      try {
        const conn = await Connection.connect(target, options)
        return new RemoteDevice(target, conn, options)
      } catch (err) {
        const e = err as DstError
        // A lease whose holder has left expires by itself: wait for it if it does so in time.
        if (e.code === 'DST_ERR_LEASED' && e.retryAfter !== undefined && Date.now() + e.retryAfter + 100 <= deadline) {
          options.log?.(`${e.message}; waiting ${e.retryAfter} ms for it to expire`)
          await new Promise(resolve => setTimeout(resolve, e.retryAfter as number + 100))
          continue
        }
        // Other refusals (token, allow list, no such export, a lease held) will not change by waiting.
        if (e.code !== 'DST_ERR_CONNECT' && e.code !== 'DST_ERR_TIMEOUT') throw err
        if (Date.now() + wait > deadline) throw err
        options.log?.(`${e.message}; retrying`)
        await new Promise(resolve => setTimeout(resolve, wait))
        wait = Math.min(wait * 2, 2000)
      }
    }
  }

  get connected (): boolean { return this.conn !== null && !this.conn.isClosed }

  protected override _read (offset: number, length: number, into: Uint8Array): Promise<void> {
    return this.split(Op.READ, offset, length, into)
  }

  protected override _write (offset: number, data: Uint8Array): Promise<void> {
    return this.split(Op.WRITE, offset, data.byteLength, data)
  }

  protected override _flush (): Promise<void> {
    return this.send(Op.FLUSH, 0, 0, null, null)
  }

  protected override _trim (offset: number, length: number): Promise<void> {
    return this.send(Op.TRIM, offset, length, null, null)
  }

  /** The peer digests its own data, so only the digests cross the network; a peer that cannot is read from instead. */
  protected override async _hash (offset: number, length: number, chunk: number): Promise<Buffer> {
    const step = Math.floor(this.maxRequest / chunk) * chunk
    if (this.conn === null || !this.conn.canHash || step === 0) return await super._hash(offset, length, chunk)
    const out = Buffer.alloc(digestCount(length, chunk) * DIGEST_SIZE)
    const parts: Array<Promise<void>> = []
    for (let done = 0; done < length; done += step) {
      const n = Math.min(step, length - done)
      const at = (done / chunk) * DIGEST_SIZE
      parts.push(this.send(Op.HASH, offset + done, n, out.subarray(at, at + digestCount(n, chunk) * DIGEST_SIZE), null, chunk))
    }
    await settleAll(parts)
    return out
  }

  protected override _close (): Promise<void> {
    this.closedByUs = true
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer)
    if (this.giveUpTimer !== null) clearTimeout(this.giveUpTimer)
    this.release(new DstError('DST_ERR_CLOSED', `${this.url}: device closed`, Errno.ESHUTDOWN))
    // Closed for good: the export may give our write lease to the next writer at once.
    this.conn?.close(CLOSE_WRITER_DONE, 'writer done')
    return Promise.resolve()
  }

  override status (): DeviceStatus {
    return {
      ...super.status(),
      url: this.url,
      identity: this.identity,
      generation: this.generation,
      connected: this.connected,
      resent: this.resent,
      digests: this.conn?.digests ?? false,
      digestErrors: this.counters.digestErrors,
      ...(this.lastError !== '' ? { lastError: this.lastError } : {}),
    }
  }

  async ping (): Promise<void> {
    await this.send(Op.PING, 0, 0, null, null)
  }

  /** Drops the current connection as if the link broke (tests and fault drills). */
  dropConnection (): void {
    this.conn?.terminate()
  }

  private split (op: number, offset: number, length: number, buf: Uint8Array): Promise<void> {
    if (length <= this.maxRequest) return this.send(op, offset, length, op === Op.READ ? buf : null, op === Op.WRITE ? buf : null)
    const parts: Array<Promise<void>> = []
    for (let done = 0; done < length; done += this.maxRequest) {
      const n = Math.min(this.maxRequest, length - done)
      const view = buf.subarray(done, done + n)
      parts.push(this.send(op, offset + done, n, op === Op.READ ? view : null, op === Op.WRITE ? view : null))
    }
    return settleAll(parts)
  }

  /** One request, sent again on a fresh connection for as long as the link (not the request) is what failed. */
  private send (op: number, offset: number, length: number, into: Uint8Array | null, data: Uint8Array | null, aux = 0): Promise<void> {
    // The usual case, a live connection, without the retry loop's async machinery on the request path.
    const conn = this.conn
    if (conn === null || conn.isClosed) return this.sendRetrying(op, offset, length, into, data, aux, 0)
    return conn.request(op, offset, length, into, data, aux).catch((err: DstError) => {
      if (this.closedByUs || !TRANSPORT.has(err.code)) throw err
      this.resent++
      return this.sendRetrying(op, offset, length, into, data, aux, Date.now())
    })
  }

  private async sendRetrying (op: number, offset: number, length: number, into: Uint8Array | null, data: Uint8Array | null, aux: number, firstFailure: number): Promise<void> {
    for (;;) {
      const conn = this.conn !== null && !this.conn.isClosed ? this.conn : await this.nextConnection()
      try {
        await conn.request(op, offset, length, into, data, aux)
        return
      } catch (err) {
        const e = err as DstError
        if (this.closedByUs || !TRANSPORT.has(e.code)) throw err
        // A request that keeps killing its connection must not loop forever.
        if (firstFailure === 0) firstFailure = Date.now()
        else if (Date.now() - firstFailure > this.reconnectTimeout) throw err
        this.resent++
      }
    }
  }

  /** A live connection: now, after the reconnect under way, or an error once the peer has been away too long. */
  private nextConnection (): Promise<Connection> {
    if (this.closedByUs) return Promise.reject(new DstError('DST_ERR_CLOSED', `${this.url}: device closed`, Errno.ESHUTDOWN))
    if (this.unreachable !== null) return Promise.reject(this.unreachable)
    if (this.state === 'failed') return Promise.reject(new DstError('DST_ERR_NEWDISK', `${this.url}: ${this.lastError}`, Errno.EIO))
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }))
  }

  private release (err: Error | null, conn?: Connection): void {
    const waiters = this.waiters
    this.waiters = []
    for (const w of waiters) { if (err === null) w.resolve(conn as Connection); else w.reject(err) }
  }

  private watch (conn: Connection): void {
    conn.onClose = err => {
      if (this.closedByUs || this.conn !== conn) return
      this.lastError = err.message
      this.state = 'connecting'
      this.options.log?.(`${err.message}; reconnecting`)
      if (this.giveUpTimer === null && this.unreachable === null) {
        const since = Date.now()
        this.giveUpTimer = setTimeout(() => {
          this.giveUpTimer = null
          this.unreachable = new DstError('DST_ERR_UNREACHABLE', `${this.url}: unreachable for ${Date.now() - since} ms (${this.lastError})`, Errno.EIO)
          this.options.log?.(`${this.unreachable.message}; failing requests until it is back`)
          this.release(this.unreachable)
        }, this.reconnectTimeout)
        this.giveUpTimer.unref()
      }
      this.scheduleReconnect()
    }
  }

  private scheduleReconnect (): void {
    if (this.closedByUs || this.reconnectTimer !== null) return
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null
      Connection.connect(this.target, this.options).then(conn => this.reconnected(conn), (err: Error) => {
        this.lastError = err.message
        // Capped so that a peer back just before reconnectTimeout is still tried in time.
        this.backoff = Math.min(this.backoff * 2, 2000, Math.max(100, this.reconnectTimeout / 4))
        this.scheduleReconnect()
      })
    }, this.backoff)
    this.reconnectTimer.unref()
  }

  private reconnected (conn: Connection): void {
    if (this.closedByUs) { conn.close(1000, 'device closed'); return }
    const h = conn.handshake
    if (h.identity !== this.identity || h.size !== this.size) {
      const what = `peer came back with a different disk (identity ${h.identity}, size ${h.size}; was ${this.identity}, ${this.size})`
      // Requests meant for the old disk must not run on the new one.
      const err = new DstError('DST_ERR_NEWDISK', `${this.url}: ${what}`, Errno.EIO)
      this.release(err)
      if (this.options.acceptNewDisk !== true || h.size < this.size) {
        conn.close(1000, 'different disk')
        this.state = 'failed'
        this.lastError = `${what}; not reconnecting`
        if (this.giveUpTimer !== null) { clearTimeout(this.giveUpTimer); this.giveUpTimer = null }
        this.options.log?.(this.lastError)
        return
      }
      this.identity = h.identity
      this.options.log?.(`${what}; taken on as a new disk`)
      this.onNewDisk?.(h.identity)
    }
    if (h.generation !== this.generation) this.options.log?.(`peer restarted (generation ${this.generation} -> ${h.generation})`)
    this.generation = h.generation
    this.conn = conn
    this.backoff = 100
    this.state = 'online'
    this.lastError = ''
    this.unreachable = null
    if (this.giveUpTimer !== null) { clearTimeout(this.giveUpTimer); this.giveUpTimer = null }
    this.options.log?.('reconnected')
    this.watch(conn)
    this.release(null, conn)
  }
}
