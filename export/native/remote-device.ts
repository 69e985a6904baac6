// A device on another node, reached at dst://HOST:PORT/NAME. It learns size and identity from the handshake, splits
// requests larger than the export's maximum, and pipelines up to `queueDepth` of them on one connection.
//
// Riding out faults: when the connection drops (closed socket, peer restart, a silent peer caught by pings, a request
// left unanswered past `requestTimeout`), it reconnects by itself with capped exponential backoff, and every request
// that had not been answered is sent again on the new connection (requests are positional, so sending one twice is
// harmless). The caller sees no error if the peer is back within `reconnectTimeout`; after that, requests fail with a
// clear error until the peer returns. A peer that comes back with another disk (another identity, or a smaller size)
// is never trusted: the device turns `foreign`, every request fails with DST_ERR_FOREIGN, and it keeps looking (over
// read-only sessions, which take no write lease) for its own disk to come back; only `acceptFoundDisk()` (the
// operator's `dst array replace`) takes the other disk on.
//
// Opened with `expect` (what an earlier handshake found, remembered by the node), a device whose peer cannot be
// reached starts `connecting` with those values instead of failing: requests wait for the peer as after a drop.

import { Device, type DeviceState, type DeviceStatus, type Extent } from '../../node/core/device'
import { DstError, ErrorCode } from '../../node/core/errors'
import { CLOSE_WRITER_DONE, HandshakeFlag, MAX_EXTENTS_SPAN, Op, type Handshake } from './codec'
import { settleAll } from '../../node/core/settle'
import { DIGEST_SIZE, digestCount } from '../../node/core/hasher'
import { Connection, type ConnectOptions } from './client'
import { type DstUrl } from '../../node/core/url'
import { formatDstUrl } from '../../node/core/url'

/** What a handshake says about the disk behind an export: enough to open the device while the peer is away. */
export interface RemoteDisk {
  size: number
  blockSize: number
  maxRequest: number
  identity: string
  /** Handshake flags (read-only, flush, trim). */
  flags: number
}

export function diskOf (h: Handshake): RemoteDisk {
  return { size: h.size, blockSize: h.blockSize, maxRequest: h.maxRequest, identity: h.identity, flags: h.flags & (HandshakeFlag.READ_ONLY | HandshakeFlag.FLUSH | HandshakeFlag.TRIM) }
}

/** Another disk than `expected` (the same disk may have grown; it may not shrink). */
function otherDisk (found: RemoteDisk, expected: RemoteDisk): boolean {
  return found.identity !== expected.identity || found.size < expected.size
}

export interface RemoteDeviceOptions extends ConnectOptions {
  /** Keep trying the first connection this long (ms) before giving up; 0 means one try. */
  openTimeout?: number
  /** How long (ms) requests wait for a lost peer to come back before they fail. Default 30 s. */
  reconnectTimeout?: number
  /** The disk an earlier handshake found: the device insists on it, and opens `connecting` if the peer is away. */
  expect?: RemoteDisk
  /** Called when a handshake finds a disk that differs from what the device knew (first open, growth, accept). */
  onDisk?: (disk: RemoteDisk) => void
  /** Log lines about connection changes. */
  log?: (message: string) => void
}

/** Errors of the link, not of the request: the request is sent again on a fresh connection. */
const TRANSPORT = new Set<ErrorCode>([ErrorCode.DISCONNECTED, ErrorCode.PROTOCOL, ErrorCode.TIMEOUT, ErrorCode.SILENT])

interface Waiter { resolve: (conn: Connection) => void, reject: (err: Error) => void }

export class RemoteDevice extends Device {
  readonly type = 'remote'
  readonly url: string
  private conn: Connection | null
  private maxRequest: number
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
  /** Times the link came back after it dropped (status, dst_remote_reconnects_total). */
  reconnects = 0
  /** Requests sent again after a reconnect (status, tests). */
  resent = 0
  /** Payloads that failed their wire digest, over every connection (each was sent or asked for again). */
  readonly counters: { digestErrors: number }
  /** The other disk found where this device's disk was (state `foreign`), or null. */
  found: RemoteDisk | null = null
  /** The disk this device serves: requests go only to a peer that presents it. */
  private disk: RemoteDisk

  private constructor (target: DstUrl, conn: Connection | null, disk: RemoteDisk, options: RemoteDeviceOptions) {
    super({
      size: disk.size, blockSize: disk.blockSize, readOnly: (disk.flags & HandshakeFlag.READ_ONLY) !== 0,
      canFlush: (disk.flags & HandshakeFlag.FLUSH) !== 0, canTrim: (disk.flags & HandshakeFlag.TRIM) !== 0,
      hasher: options.hasher,
    })
    this.target = target
    this.url = formatDstUrl(target)
    this.conn = conn
    this.disk = disk
    this.maxRequest = disk.maxRequest
    this.identity = disk.identity
    this.generation = conn?.handshake.generation ?? 0
    this.counters = options.counters ?? { digestErrors: 0 }
    this.options = { ...options, counters: this.counters }
    this.reconnectTimeout = options.reconnectTimeout ?? 30000
    if (conn !== null) this.watch(conn)
  }

  static async open (target: DstUrl, given: RemoteDeviceOptions = {}): Promise<RemoteDevice> {
    const options = { ...given, counters: given.counters ?? { digestErrors: 0 } }
    const expect = options.expect
    // A device whose disk is remembered does not wait for its peer: it opens connecting and waits per request.
    const deadline = Date.now() + (expect !== undefined ? 0 : options.openTimeout ?? 0)
    let wait = 100
    for (;;) {
      try {
        const conn = await Connection.connect(target, options)
        const disk = diskOf(conn.handshake)
        if (expect !== undefined && otherDisk(disk, expect)) {
          const device = new RemoteDevice(target, null, expect, options)
          device.foreign(conn)
          return device
        }
        if (expect === undefined || JSON.stringify(disk) !== JSON.stringify(expect)) options.onDisk?.(disk)
        return new RemoteDevice(target, conn, disk, options)
      } catch (err) {
        const e = err as DstError
        // A lease whose holder has left expires by itself: wait for it if it does so in time.
        if (e.code === ErrorCode.LEASED && e.retryAfter !== undefined && Date.now() + e.retryAfter + 100 <= deadline) {
          options.log?.(`${e.message}; waiting ${e.retryAfter} ms for it to expire`)
          await new Promise(resolve => setTimeout(resolve, e.retryAfter as number + 100))
          continue
        }
        // Other refusals (token, allow list, no such export, a lease held) will not change by waiting.
        if (e.code !== ErrorCode.CONNECT && e.code !== ErrorCode.TIMEOUT) throw err
        if (expect !== undefined) {
          const device = new RemoteDevice(target, null, expect, options)
          device.options.log?.(`${e.message}; opened with the disk its last handshake found (${expect.size} bytes, identity ${expect.identity}), connecting`)
          device.lost(e)
          return device
        }
        if (Date.now() + wait > deadline) {
          e.message = `${e.message}: never reached, so its size is unknown (no earlier handshake is remembered)`
          throw e
        }
        options.log?.(`${e.message}; retrying`)
        await new Promise(resolve => setTimeout(resolve, wait))
        wait = Math.min(wait * 2, 2000)
      }
    }
  }

  /**
   * Takes on the other disk found where this device's disk was (the operator's `dst array replace`): from now on this
   * device serves that disk. Resolves once it is connected to it.
   */
  async acceptFoundDisk (timeout = 10000): Promise<void> {
    const found = this.found
    if (this.state !== 'foreign' || found === null) throw new DstError(ErrorCode.NOTFOREIGN, `${this.url}: the device is ${this.state}, not foreign: there is no other disk to take on`)
    if (found.size < this.size) throw new DstError(ErrorCode.SIZE, `${this.url}: the disk found has ${found.size} bytes, this device needs ${this.size}`)
    this.options.log?.(`taking on the disk found (identity ${found.identity}, ${found.size} bytes) in place of ${this.disk.identity}`)
    this.disk = { ...found, size: this.disk.size }
    this.identity = found.identity
    this.found = null
    if (this.reconnectTimer !== null) { clearTimeout(this.reconnectTimer); this.reconnectTimer = null }
    this.backoff = 0
    this.lost(new DstError(ErrorCode.DISCONNECTED, 'connecting to the disk taken on'))
    const deadline = Date.now() + timeout
    while ((this.state as DeviceState) !== 'online') {
      if ((this.state as DeviceState) === 'foreign' || Date.now() > deadline) throw new DstError(ErrorCode.FOREIGN, `${this.url}: could not connect to the disk taken on (${this.state}${this.lastError !== '' ? `: ${this.lastError}` : ''})`)
      await new Promise(resolve => setTimeout(resolve, 50))
    }
    this.options.onDisk?.(this.disk)
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

  /**
   * The peer asks its own device (a file's SEEK_DATA/SEEK_HOLE, an array's members), in requests of under 4 GiB whose
   * replies hold a bounded number of runs: each next request starts where the last reply ended. A peer of an older
   * protocol version answers nothing: its ranges are data (Connection.extents).
   */
  protected override async _extents (offset: number, length: number): Promise<Extent[]> {
    const runs: Extent[] = []
    const end = offset + length
    let at = offset
    while (at < end) {
      const from = at
      const got = await this.retrying(conn => conn.extents(from, Math.min(MAX_EXTENTS_SPAN, end - from)), 0)
      for (const r of got) {
        const last = runs[runs.length - 1]
        if (last !== undefined && last.hole === r.hole) last.length += r.length
        else runs.push({ ...r })
        at = r.offset + r.length
      }
    }
    return runs
  }

  /**
   * Fails the requests waiting for the peer to come back (a node stopping does not wait reconnectTimeout for them).
   * Returns how many there were.
   */
  abandonWaiting (why: string): number {
    const n = this.waiters.length
    this.release(new DstError(ErrorCode.DISCONNECTED, `${this.url}: ${why}`))
    return n
  }

  protected override _close (): Promise<void> {
    this.closedByUs = true
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer)
    if (this.giveUpTimer !== null) clearTimeout(this.giveUpTimer)
    this.release(new DstError(ErrorCode.CLOSED, `${this.url}: device closed`))
    // Closed for good: the export may give our write lease to the next writer at once.
    this.conn?.close(CLOSE_WRITER_DONE, 'writer done')
    return Promise.resolve()
  }

  override status (): DeviceStatus {
    return {
      ...super.status(),
      url: this.url,
      identity: this.identity,
      ...(this.found !== null ? { foundIdentity: this.found.identity, foundSize: this.found.size } : {}),
      generation: this.generation,
      connected: this.connected,
      resent: this.resent,
      reconnects: this.reconnects,
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

  private sendRetrying (op: number, offset: number, length: number, into: Uint8Array | null, data: Uint8Array | null, aux: number, firstFailure: number): Promise<void> {
    return this.retrying(conn => conn.request(op, offset, length, into, data, aux), firstFailure)
  }

  /** Runs `call` on a live connection, again on the next one for as long as the link (not the call) is what failed. */
  private async retrying <T>(call: (conn: Connection) => Promise<T>, firstFailure: number): Promise<T> {
    for (;;) {
      const conn = this.conn !== null && !this.conn.isClosed ? this.conn : await this.nextConnection()
      try {
        return await call(conn)
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
    if (this.closedByUs) return Promise.reject(new DstError(ErrorCode.CLOSED, `${this.url}: device closed`))
    if (this.state === 'foreign') return Promise.reject(this.foreignError())
    if (this.unreachable !== null) return Promise.reject(this.unreachable)
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }))
  }

  private foreignError (): DstError {
    return new DstError(ErrorCode.FOREIGN, `${this.url}: ${this.lastError}`)
  }

  private release (err: Error | null, conn?: Connection): void {
    const waiters = this.waiters
    this.waiters = []
    for (const w of waiters) { if (err === null) w.resolve(conn as Connection); else w.reject(err) }
  }

  private watch (conn: Connection): void {
    conn.onClose = err => {
      if (this.closedByUs || this.conn !== conn) return
      this.lost(err)
    }
  }

  /** The peer is away (the link dropped, or it could not be reached at open): reconnect; requests wait meanwhile. */
  private lost (err: Error): void {
    this.lastError = err.message
    this.state = 'connecting'
    this.options.log?.(`${err.message}; reconnecting`)
    if (this.giveUpTimer === null && this.unreachable === null) {
      const since = Date.now()
      this.giveUpTimer = setTimeout(() => {
        this.giveUpTimer = null
        this.unreachable = new DstError(ErrorCode.UNREACHABLE, `${this.url}: unreachable for ${Date.now() - since} ms (${this.lastError})`)
        this.options.log?.(`${this.unreachable.message}; failing requests until it is back`)
        this.release(this.unreachable)
      }, this.reconnectTimeout)
      this.giveUpTimer.unref()
    }
    this.scheduleReconnect()
  }

  private scheduleReconnect (): void {
    if (this.closedByUs || this.reconnectTimer !== null) return
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null
      // While another disk answers, look for this one over read-only sessions: they take no write lease on it.
      const options = this.state === 'foreign' ? { ...this.options, access: 'ro' as const } : this.options
      Connection.connect(this.target, options).then(conn => this.reconnected(conn), (err: Error) => {
        if (this.state !== 'foreign') this.lastError = err.message
        // Capped so that a peer back just before reconnectTimeout is still tried in time.
        this.backoff = Math.min(Math.max(100, this.backoff * 2), 2000, Math.max(100, this.reconnectTimeout / 4))
        this.scheduleReconnect()
      })
    }, this.backoff)
    this.reconnectTimer.unref()
  }

  /** Another disk answers where this device's disk was: nothing is sent to it; keep looking for our own. */
  private foreign (conn: Connection): void {
    conn.close(1000, 'different disk')
    const disk = diskOf(conn.handshake)
    const news = this.found === null || this.found.identity !== disk.identity || this.found.size !== disk.size
    this.found = disk
    this.state = 'foreign'
    this.lastError = `peer serves a different disk (identity ${disk.identity}, size ${disk.size}; expected ${this.disk.identity}, ${this.disk.size}): not used; 'dst array replace' takes it on`
    if (this.giveUpTimer !== null) { clearTimeout(this.giveUpTimer); this.giveUpTimer = null }
    this.unreachable = null
    // Requests meant for our disk must not run on another.
    this.release(this.foreignError())
    if (news) this.options.log?.(this.lastError)
    this.backoff = 2000
    this.scheduleReconnect()
  }

  private reconnected (conn: Connection): void {
    if (this.closedByUs) { conn.close(1000, 'device closed'); return }
    const h = conn.handshake
    const disk = diskOf(h)
    if (otherDisk(disk, this.disk)) { this.foreign(conn); return }
    if (this.state === 'foreign') {
      // Our own disk is back. The session that found it is read-only: open a read-write one at once.
      conn.close(1000, 'reopening read-write')
      this.found = null
      this.backoff = 0
      this.lost(new DstError(ErrorCode.DISCONNECTED, 'the expected disk is back; reopening read-write'))
      return
    }
    // The device keeps its size (a disk may grow under it); what else the handshake says may change.
    if (disk.maxRequest !== this.disk.maxRequest || disk.flags !== this.disk.flags) {
      this.disk = { ...disk, size: this.disk.size }
      this.maxRequest = disk.maxRequest
      this.options.onDisk?.(this.disk)
    }
    if (h.generation !== this.generation) this.options.log?.(`peer restarted (generation ${this.generation} -> ${h.generation})`)
    this.generation = h.generation
    this.conn = conn
    this.backoff = 100
    this.state = 'online'
    this.lastError = ''
    this.unreachable = null
    if (this.giveUpTimer !== null) { clearTimeout(this.giveUpTimer); this.giveUpTimer = null }
    this.reconnects++
    this.options.log?.('reconnected')
    this.watch(conn)
    this.release(null, conn)
  }
}
