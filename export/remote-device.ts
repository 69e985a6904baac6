// A device on another node, reached at dst://HOST:PORT/NAME. It learns size and identity from the handshake, splits
// requests larger than the export's maximum, and pipelines up to `queueDepth` of them on one connection. When the
// connection drops it reconnects in the background; requests made meanwhile fail with a clear error, and a peer
// that comes back with another disk (other identity or size) is refused. Retrying in-flight requests across a
// reconnect belongs to the fault-tolerance layer.

import { Device, type DeviceStatus } from '../node/device'
import { DstError, Errno } from '../node/errors'
import { Op } from './codec'
import { settleAll } from '../node/settle'
import { Connection, formatDstUrl, type ConnectOptions, type DstUrl } from './client'

export interface RemoteDeviceOptions extends ConnectOptions {
  /** Keep trying the first connection this long (ms) before giving up; 0 means one try. */
  openTimeout?: number
  /** Log lines about connection changes. */
  log?: (message: string) => void
}

export class RemoteDevice extends Device {
  readonly type = 'remote'
  readonly url: string
  private conn: Connection | null
  private readonly maxRequest: number
  private readonly target: DstUrl
  private readonly options: RemoteDeviceOptions
  private reconnectTimer: NodeJS.Timeout | null = null
  private backoff = 100
  private closedByUs = false
  lastError = ''

  private constructor (target: DstUrl, conn: Connection, options: RemoteDeviceOptions) {
    const h = conn.handshake
    super({ size: h.size, blockSize: h.blockSize, readOnly: conn.readOnly, canFlush: conn.canFlush, canTrim: conn.canTrim })
    this.target = target
    this.url = formatDstUrl(target)
    this.conn = conn
    this.maxRequest = h.maxRequest
    this.identity = h.identity
    this.options = options
    this.watch(conn)
  }

  static async open (target: DstUrl, options: RemoteDeviceOptions = {}): Promise<RemoteDevice> {
    const deadline = Date.now() + (options.openTimeout ?? 0)
    let wait = 100
    for (;;) {
      try {
        const conn = await Connection.connect(target, options)
        return new RemoteDevice(target, conn, options)
      } catch (err) {
        const e = err as DstError
        // Refusals (token, allow list, no such export) will not change by waiting.
        if (e.code !== 'DST_ERR_CONNECT' && e.code !== 'DST_ERR_TIMEOUT') throw err
        if (Date.now() + wait > deadline) throw err
        options.log?.(`${e.message}; retrying`)
        await new Promise(resolve => setTimeout(resolve, wait))
        wait = Math.min(wait * 2, 2000)
      }
    }
  }

  get connected (): boolean { return this.conn !== null && !this.conn.isClosed }

  // These three are what the base class reads to derive capabilities; all are answered by the peer's handshake.
  protected override _read (offset: number, length: number, into: Uint8Array): Promise<void> {
    return this.split(Op.READ, offset, length, into)
  }

  protected override _write (offset: number, data: Uint8Array): Promise<void> {
    return this.split(Op.WRITE, offset, data.byteLength, data)
  }

  protected override _flush (): Promise<void> {
    const conn = this.live()
    if (!conn.canFlush) return Promise.resolve()
    return conn.request(Op.FLUSH, 0, 0, null, null)
  }

  protected override _trim (offset: number, length: number): Promise<void> {
    const conn = this.live()
    if (!conn.canTrim) return Promise.reject(new DstError('DST_ERR_ENOTSUP', `${this.url}: the export cannot trim`, Errno.ENOTSUP))
    return conn.request(Op.TRIM, offset, length, null, null)
  }

  protected override _close (): Promise<void> {
    this.closedByUs = true
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer)
    this.conn?.close(1000, 'device closed')
    return Promise.resolve()
  }

  override status (): DeviceStatus {
    return { ...super.status(), url: this.url, identity: this.identity, connected: this.connected, ...(this.lastError !== '' ? { lastError: this.lastError } : {}) }
  }

  ping (): Promise<void> {
    return this.live().ping()
  }

  private split (op: number, offset: number, length: number, buf: Uint8Array): Promise<void> {
    const conn = this.live()
    if (length <= this.maxRequest) return conn.request(op, offset, length, op === Op.READ ? buf : null, op === Op.WRITE ? buf : null)
    const parts: Array<Promise<void>> = []
    for (let done = 0; done < length; done += this.maxRequest) {
      const n = Math.min(this.maxRequest, length - done)
      const view = buf.subarray(done, done + n)
      parts.push(conn.request(op, offset + done, n, op === Op.READ ? view : null, op === Op.WRITE ? view : null))
    }
    return settleAll(parts)
  }

  private live (): Connection {
    const conn = this.conn
    if (conn === null || conn.isClosed) {
      throw new DstError('DST_ERR_DISCONNECTED', `${this.url}: not connected${this.lastError !== '' ? ` (${this.lastError})` : ''}`, Errno.EIO)
    }
    return conn
  }

  private watch (conn: Connection): void {
    conn.onClose = err => {
      if (this.closedByUs) return
      this.lastError = err.message
      this.state = 'connecting'
      this.options.log?.(`${err.message}; reconnecting`)
      this.scheduleReconnect()
    }
  }

  private scheduleReconnect (): void {
    if (this.closedByUs || this.reconnectTimer !== null) return
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null
      Connection.connect(this.target, this.options).then(conn => {
        if (this.closedByUs) { conn.close(1000, 'device closed'); return }
        const h = conn.handshake
        if (h.identity !== this.identity || h.size !== this.size) {
          conn.close(1000, 'different disk')
          this.state = 'failed'
          this.lastError = `peer came back with a different disk (identity ${h.identity}, size ${h.size}); not reconnecting`
          this.options.log?.(`${this.url}: ${this.lastError}`)
          return
        }
        this.conn = conn
        this.backoff = 100
        this.state = 'online'
        this.lastError = ''
        this.options.log?.(`${this.url}: reconnected`)
        this.watch(conn)
      }, (err: Error) => {
        this.lastError = err.message
        this.backoff = Math.min(this.backoff * 2, 2000)
        this.scheduleReconnect()
      })
    }, this.backoff)
    this.reconnectTimer.unref()
  }
}

