// The one contract every leaf (file, memory, remote) and every array implements. Shaped like random-access-storage:
// the base class owns the lifecycle and the safety checks, a backend overrides only `_read/_write/_flush/_trim/_close`,
// and its capabilities follow from which of them it overrides. Callers always pass the buffers.

import { DstError, ErrorCode } from './errors'
import { defaultHasher, digestByReading, isHashChunk, MAX_HASH_CHUNK, MIN_HASH_CHUNK, type Hasher } from './hasher'

/** `foreign`: a remote device whose peer now serves another disk (identity or size not the one it knew). */
export type DeviceState = 'opening' | 'online' | 'degraded' | 'connecting' | 'foreign' | 'failed' | 'closing' | 'closed'

/** What `/status` shows for a device; arrays add `members`. */
export interface DeviceStatus {
  type: string
  size: number
  blockSize: number
  state: DeviceState
  writable: boolean
  [key: string]: unknown
}

export interface DeviceOptions {
  size: number
  blockSize?: number
  /** Force read-only even when the backend can write. */
  readOnly?: boolean
  /** Narrow what the overridden methods imply: arrays and remote devices can only do what their members/peer can. */
  canFlush?: boolean
  canTrim?: boolean
  /** Narrow `canZeroFast`: the backend overrides `_zero` but cannot always zero without writing. */
  canZeroFast?: boolean
  /** The hash workers a range is digested on when the device has no cheaper way (default: defaultHasher()). */
  hasher?: Hasher
}

/** A run of a device's bytes: `hole` runs read as zeros and take no space; data runs may hold anything (zeros too). */
export interface Extent { offset: number, length: number, hole: boolean }

export abstract class Device {
  abstract readonly type: string
  size: number
  readonly blockSize: number
  readonly writable: boolean
  readonly canFlush: boolean
  readonly canTrim: boolean
  /** `zero()` makes a range read as zeros without writing them (a backend that overrides `_zero`). */
  readonly canZeroFast: boolean
  state: DeviceState = 'online'
  /** A stable identity (UUID) of the data behind this device, or '' when it has none. */
  identity = ''
  /** What `hash` digests on when it reads the range itself; undefined: the default hasher. */
  protected readonly hashService: Hasher | undefined

  private inflight = 0
  private idle: (() => void) | null = null
  private closing: Promise<void> | null = null

  constructor (options: DeviceOptions) {
    this.size = options.size
    this.blockSize = options.blockSize ?? 512
    this.hashService = options.hasher
    const proto = Device.prototype as unknown as Record<string, unknown>
    const self = this as unknown as Record<string, unknown>
    this.writable = options.readOnly !== true && self._write !== proto._write
    this.canFlush = options.canFlush !== false && self._flush !== proto._flush
    this.canTrim = options.canTrim !== false && this.writable && self._trim !== proto._trim
    this.canZeroFast = options.canZeroFast !== false && this.writable && self._zero !== proto._zero
  }

  /** Fills `into[0..length)` with the bytes at `offset`. */
  read (offset: number, length: number, into: Uint8Array): Promise<void> {
    try {
      this.check(offset, length)
      if (into.byteLength < length) throw new RangeError(`read buffer holds ${into.byteLength} bytes, ${length} requested`)
      if (length === 0) return Promise.resolve()
      return this.track(this._read(offset, length, into))
    } catch (err) {
      return Promise.reject(err)
    }
  }

  /** Writes all of `data` at `offset`. */
  write (offset: number, data: Uint8Array): Promise<void> {
    if (!this.writable) return Promise.reject(new DstError(ErrorCode.EROFS, `${this.type} device is read-only`))
    try {
      this.check(offset, data.byteLength)
      if (data.byteLength === 0) return Promise.resolve()
      return this.track(this._write(offset, data))
    } catch (err) {
      return Promise.reject(err)
    }
  }

  /** Returns once everything written before it is durable. A device with nothing to flush returns at once. */
  flush (): Promise<void> {
    if (this.closing !== null) return Promise.reject(closedError(this))
    if (!this.canFlush) return Promise.resolve()
    try {
      return this.track(this._flush())
    } catch (err) {
      return Promise.reject(err)
    }
  }

  /** Tells the device a range is no longer needed (it may read back as anything until written again). */
  trim (offset: number, length: number): Promise<void> {
    if (!this.canTrim) return Promise.reject(new DstError(ErrorCode.ENOTSUP, `${this.type} device cannot trim`))
    try {
      this.check(offset, length)
      if (length === 0) return Promise.resolve()
      return this.track(this._trim(offset, length))
    } catch (err) {
      return Promise.reject(err)
    }
  }

  /**
   * Makes [offset, offset + length) read as zeros. `mayTrim`: the space may be freed too (a hole); `fast`: only if it
   * costs no writing of zeros, else ENOTSUP at once (NBD's FAST_ZERO). A backend that cannot do better writes zeros.
   */
  zero (offset: number, length: number, mayTrim: boolean, fast = false): Promise<void> {
    if (!this.writable) return Promise.reject(new DstError(ErrorCode.EROFS, `${this.type} device is read-only`))
    if (fast && !this.canZeroFast) return Promise.reject(new DstError(ErrorCode.ENOTSUP, `${this.type} device cannot zero without writing`))
    try {
      this.check(offset, length)
      if (length === 0) return Promise.resolve()
      return this.track(this._zero(offset, length, mayTrim, fast))
    } catch (err) {
      return Promise.reject(err)
    }
  }

  /**
   * Digests (BLAKE2b-512, 64 bytes each) of every `chunk`-byte piece of the range, the last piece possibly shorter,
   * concatenated. A leaf reads and digests on the hasher's worker threads; a remote device asks its peer, so only the
   * digests cross the network; arrays ask their members.
   */
  hash (offset: number, length: number, chunk: number): Promise<Buffer> {
    try {
      this.check(offset, length)
      if (!isHashChunk(chunk)) throw new DstError(ErrorCode.EINVAL, `hash chunk ${chunk} is not a power of two between ${MIN_HASH_CHUNK} and ${MAX_HASH_CHUNK}`)
      if (length === 0) return Promise.resolve(Buffer.alloc(0))
      return this.track(this._hash(offset, length, chunk))
    } catch (err) {
      return Promise.reject(err)
    }
  }

  /**
   * Which parts of [offset, offset + length) are holes (read as zeros and hold no space) and which hold data: runs in
   * order that cover the range exactly, adjacent runs of the same kind merged. A device that cannot tell answers one
   * data run over the whole range (always correct: data may be zeros).
   */
  extents (offset: number, length: number): Promise<Extent[]> {
    try {
      this.check(offset, length)
      if (length === 0) return Promise.resolve([])
      return this.track(this._extents(offset, length))
    } catch (err) {
      return Promise.reject(err)
    }
  }

  /** Waits for in-flight requests, then releases the backend. Requests made after close() fail. */
  close (): Promise<void> {
    if (this.closing === null) {
      this.closing = this.waitIdle().then(() => this._close()).then(() => { this.state = 'closed' })
      if (this.state !== 'failed') this.state = 'closing'
    }
    return this.closing
  }

  get inFlight (): number { return this.inflight }

  status (): DeviceStatus {
    return { type: this.type, size: this.size, blockSize: this.blockSize, state: this.state, writable: this.writable }
  }

  protected _read (_offset: number, _length: number, _into: Uint8Array): Promise<void> {
    return Promise.reject(new DstError(ErrorCode.ENOTSUP, `${this.type} device cannot read`))
  }

  protected _write (_offset: number, _data: Uint8Array): Promise<void> {
    return Promise.reject(new DstError(ErrorCode.EROFS, `${this.type} device is read-only`))
  }

  protected _hash (offset: number, length: number, chunk: number): Promise<Buffer> {
    return digestByReading((at, n, into) => this._read(at, n, into), offset, length, chunk, this.hashService ?? defaultHasher())
  }

  /** Writes zeros, at most ZERO_BATCH writes of ZERO_CHUNK bytes at once. `fast` is false here (zero() checked). */
  protected async _zero (offset: number, length: number, _mayTrim: boolean, _fast: boolean): Promise<void> {
    const zeros = zeroChunk()
    const parts: Array<Promise<void>> = []
    for (let done = 0; done < length; done += zeros.length) {
      parts.push(this._write(offset + done, zeros.subarray(0, Math.min(zeros.length, length - done))))
      if (parts.length === ZERO_BATCH) await Promise.all(parts.splice(0))
    }
    await Promise.all(parts)
  }

  protected _extents (offset: number, length: number): Promise<Extent[]> { return Promise.resolve([{ offset, length, hole: false }]) }
  protected _flush (): Promise<void> { return Promise.resolve() }
  protected _trim (_offset: number, _length: number): Promise<void> { return Promise.resolve() }
  protected _close (): Promise<void> { return Promise.resolve() }

  private check (offset: number, length: number): void {
    if (this.closing !== null) throw closedError(this)
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 ||
        offset + length > this.size) {
      throw new DstError(ErrorCode.EINVAL, `range ${offset}+${length} is outside the ${this.type} device (size ${this.size})`)
    }
  }

  private track <T>(p: Promise<T>): Promise<T> {
    this.inflight++
    // Bound once per device, not a closure per request: on the request path (finally() would cost more promises).
    return p.then(this.settledOk, this.settledErr) as Promise<T>
  }

  private readonly settledOk = <T>(value: T): T => {
    this.settled()
    return value
  }

  private readonly settledErr = (err: unknown): never => {
    this.settled()
    throw err
  }

  private settled (): void {
    if (--this.inflight === 0 && this.idle !== null) { const done = this.idle; this.idle = null; done() }
  }

  private waitIdle (): Promise<void> {
    if (this.inflight === 0) return Promise.resolve()
    return new Promise(resolve => { this.idle = resolve })
  }
}

const ZERO_CHUNK = 1024 * 1024
const ZERO_BATCH = 8
let zeros: Buffer | null = null
/** One buffer of zeros for every device, allocated at the first zero() that writes them (never written into). */
function zeroChunk (): Buffer {
  if (zeros === null) zeros = Buffer.alloc(ZERO_CHUNK)
  return zeros
}

function closedError (device: Device): DstError {
  return new DstError(ErrorCode.CLOSED, `${device.type} device is closed`)
}
