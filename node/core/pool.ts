// The preallocated buffer pool of the request loop. Every payload lives in one of `count` slots of `size` bytes carved
// from a single SharedArrayBuffer, each with `headroom` bytes in front so a reply header can be written just before
// the payload and both sent as one view (no copy, no concatenation). Being shared memory, the slots can later be
// filled by an I/O worker thread without copies. When every slot is taken, callers wait in a FIFO (backpressure);
// the pool never grows.

import { Ring } from './ring'

export interface PoolBuffer {
  /** Slot number, stable for the life of the pool. */
  readonly index: number
  /** The whole slot: headroom followed by payload space. */
  readonly frame: Buffer
  /** The payload space (`size` bytes), starting `headroom` bytes into the frame. */
  readonly data: Buffer
}

/** What the pool asks of a connection's share (node/core/pool-share.ts) that waits for slots. */
export interface ShareWaiter {
  /** Takes one free slot for its oldest waiting request if its share allows; true if it did. */
  takeOne: () => boolean
  /** Whether it still has requests waiting (if not, it leaves the pool's queue). */
  stillWaiting: () => boolean
}

export interface BufferPoolOptions {
  count: number
  size: number
  headroom?: number
  /** Most callers that may wait at once for a slot; a further one gets an explicit error. */
  maxWaiters?: number
  /**
   * Touch every page at construction, so the whole pool is resident from the start: the process's memory does not
   * creep up as slots are first used under load, and a machine short of memory fails at start, not mid-request.
   */
  commit?: boolean
}

export class BufferPool {
  readonly count: number
  readonly size: number
  readonly headroom: number
  readonly memory: SharedArrayBuffer
  private readonly slots: PoolBuffer[]
  private readonly free: Int32Array
  private readonly inUse: Uint8Array
  private freeCount: number
  private readonly waiters: Ring<(buf: PoolBuffer) => void>
  /** Times a caller had to wait for a slot; exported as a metric. */
  waits = 0
  /** Connections holding or waiting for slots now (kept by their PoolShare, which sizes each one's share by it). */
  activeShares = 0
  /** Connections (PoolShare) with requests waiting for a slot, offered free slots in turn as they come back. */
  private readonly waitingShares: Ring<ShareWaiter>

  constructor (options: BufferPoolOptions) {
    const { count, size } = options
    const headroom = options.headroom ?? 0
    if (!Number.isInteger(count) || count <= 0) throw new RangeError(`buffer pool count must be a positive integer, got ${count}`)
    if (!Number.isInteger(size) || size <= 0) throw new RangeError(`buffer pool size must be a positive integer, got ${size}`)
    if (!Number.isInteger(headroom) || headroom < 0) throw new RangeError(`buffer pool headroom must be a whole number of bytes, got ${headroom}`)
    this.count = count
    this.size = size
    this.headroom = headroom
    const stride = headroom + size
    this.memory = new SharedArrayBuffer(stride * count)
    if (options.commit === true) new Uint8Array(this.memory).fill(0)
    this.slots = []
    this.free = new Int32Array(count)
    this.inUse = new Uint8Array(count)
    for (let i = 0; i < count; i++) {
      const frame = Buffer.from(this.memory, i * stride, stride)
      this.slots.push({ index: i, frame, data: frame.subarray(headroom) })
      this.free[i] = count - 1 - i
    }
    this.freeCount = count
    this.waiters = new Ring(options.maxWaiters ?? 65536)
    this.waitingShares = new Ring(options.maxWaiters ?? 65536)
  }

  get available (): number { return this.freeCount }
  get waiting (): number { return this.waiters.length }

  /** A free slot now, or null when the pool is empty. */
  tryAcquire (): PoolBuffer | null {
    if (this.freeCount === 0) return null
    return this.take()
  }

  /** A free slot, waiting in FIFO order behind earlier callers when the pool is empty. */
  acquire (): Promise<PoolBuffer> {
    if (this.freeCount > 0 && this.waiters.length === 0) return Promise.resolve(this.take())
    if (this.waiters.full) return Promise.reject(new RangeError(`buffer pool: ${this.waiters.capacity} callers already waiting`))
    this.waits++
    return new Promise(resolve => this.waiters.push(resolve))
  }

  release (buf: PoolBuffer): void {
    // Assertions: a caller that breaks the pool's contract is a bug, not an error to handle.
    if (this.slots[buf.index] !== buf) throw new Error('buffer pool: released a buffer that is not from this pool')
    if (this.inUse[buf.index] === 0) throw new Error(`buffer pool: slot ${buf.index} was released twice`)
    const next = this.waiters.shift()
    if (next !== undefined) { next(buf); return }
    this.inUse[buf.index] = 0
    this.free[this.freeCount++] = buf.index
    if (this.waitingShares.length > 0) this.offerShares()
  }

  /** A connection's share has requests waiting: it is offered free slots (its `take`) as they come back. */
  queueShare (share: ShareWaiter): void {
    this.waitingShares.push(share)
  }

  /**
   * Offers free slots to the waiting connections in turn, one slot each per round (round robin), until the slots are
   * gone or no connection may take one (each decides by its share). Also called when the shares change.
   */
  offerShares (): void {
    let progress = true
    while (progress && this.freeCount > 0 && this.waitingShares.length > 0) {
      progress = false
      for (let n = this.waitingShares.length; n > 0 && this.freeCount > 0; n--) {
        const share = this.waitingShares.shift() as ShareWaiter
        if (share.takeOne()) progress = true
        if (share.stillWaiting()) this.waitingShares.push(share)
      }
    }
  }

  private take (): PoolBuffer {
    const index = this.free[--this.freeCount]
    this.inUse[index] = 1
    return this.slots[index]
  }
}
