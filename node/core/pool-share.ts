// One connection's fair share of the node's buffer pool: the one "take a free buffer or wait" path of both protocols
// (native sessions and NBD), so that a client that stops reading its replies cannot hold every buffer.
//
// Why: a reply that its client does not read keeps its buffer (the data is sent from it), so the buffers such a client
// took come back only when it reads or is closed; without shares, one client sending 200 large READs and reading none
// holds the whole pool and every other client waits (NBD) or gets EAGAIN (native) until it goes.
//
// The rules, and why these:
// - A connection holding or waiting for buffers is *active*; each may hold at most max(1, floor(count / active)), so
//   one busy client alone may use most of the pool, and as others become active each one's share shrinks to a fair
//   part. A connection above its share (it took buffers before the others came) keeps them but gets no more until it
//   is back under it.
// - A share alone cannot help against a client that grabbed its buffers first and never gives them back. So the last
//   `reserve` free buffers (an eighth of the pool) go only to connections holding fewer than half the reserve: a
//   stalled client can never take them all, and a newcomer always finds a few, whoever holds the rest.
// - Waiting connections are offered buffers in turn as they come back, one each per round (round robin), and a
//   connection's own requests are served in order.
// Several never-reading clients, each arriving before the next, can still hold most of the pool between them; the
// sessions close a connection whose replies stay unread for long (`stallTimeout`), which gives its buffers back.

import type { BufferPool, PoolBuffer, ShareWaiter } from './pool'
import { Ring } from './ring'

/**
 * A request waiting for a buffer: told once, with the buffer or with why there is none (the connection closed, too
 * many waiting). A request record of a protocol session implements it with bound methods, so waiting costs no closure.
 */
export interface BufferWaiter {
  gotBuffer: (buf: PoolBuffer) => void
  noBuffer: (err: Error) => void
}

/** acquire()'s promise as a waiter (for callers off the hot path). */
class PromiseWaiter implements BufferWaiter {
  constructor (readonly gotBuffer: (buf: PoolBuffer) => void, readonly noBuffer: (err: Error) => void) {}
}

export class PoolShare implements ShareWaiter {
  /** Buffers this connection holds now. */
  private held = 0
  private active = false
  private closed = false
  /** In the pool's queue of waiting connections. */
  private queued = false
  private readonly waiting: Ring<BufferWaiter>
  private readonly reserve: number
  private readonly reserveHolding: number

  /** `maxWaiting`: most requests of this connection that may wait at once (beyond: an explicit error). */
  constructor (readonly pool: BufferPool, maxWaiting = 1024) {
    this.waiting = new Ring(maxWaiting)
    this.reserve = Math.floor(pool.count / 8)
    this.reserveHolding = Math.max(1, Math.floor(this.reserve / 2))
  }

  /** Most buffers this connection may hold now. */
  get limit (): number {
    return Math.max(1, Math.floor(this.pool.count / (this.pool.activeShares + (this.active ? 0 : 1))))
  }

  get holding (): number { return this.held }

  /** A free buffer now, or null: none is free, others wait before us, or this connection holds its share. */
  tryAcquire (): PoolBuffer | null {
    if (this.waiting.length > 0) return null
    return this.take()
  }

  /**
   * The one "take a free buffer or wait" of both protocols: a buffer now (returned; `waiter` is not told), or null and
   * `waiter` is told later, in order behind this connection's earlier waiters: gotBuffer, or noBuffer once the
   * connection is closed or when too many of its requests wait already (then at once, before this returns).
   */
  acquireFor (waiter: BufferWaiter): PoolBuffer | null {
    if (this.closed) { waiter.noBuffer(new RangeError('buffer pool: the connection is closed')); return null }
    const buf = this.tryAcquire()
    if (buf !== null) return buf
    if (this.waiting.full) { waiter.noBuffer(new RangeError(`buffer pool: ${this.waiting.capacity} requests of this connection already waiting`)); return null }
    if (!this.active) this.activate()
    this.pool.waits++
    this.waiting.push(waiter)
    if (!this.queued) { this.queued = true; this.pool.queueShare(this) }
    return null
  }

  /** A buffer, waiting (in order) when none can be had now. Rejects once the connection is closed. */
  acquire (): Promise<PoolBuffer> {
    return new Promise((resolve, reject) => {
      const buf = this.acquireFor(new PromiseWaiter(resolve, reject))
      if (buf !== null) resolve(buf)
    })
  }

  release (buf: PoolBuffer): void {
    this.held--
    this.pool.release(buf)
    this.settle()
  }

  /** The connection is gone: its waiting requests are refused; buffers it still holds come back through release(). */
  close (): void {
    if (this.closed) return
    this.closed = true
    const err = new RangeError('buffer pool: the connection is closed')
    for (let w = this.waiting.shift(); w !== undefined; w = this.waiting.shift()) w.noBuffer(err)
    this.settle()
  }

  takeOne (): boolean {
    if (this.waiting.length === 0) return false
    const buf = this.take()
    if (buf === null) return false
    ;(this.waiting.shift() as BufferWaiter).gotBuffer(buf)
    return true
  }

  stillWaiting (): boolean {
    this.queued = this.waiting.length > 0
    return this.queued
  }

  private take (): PoolBuffer | null {
    const free = this.pool.available
    if (this.closed || free === 0 || this.pool.waiting > 0 || this.held >= this.limit) return null
    if (free <= this.reserve && this.held >= this.reserveHolding) return null
    const buf = this.pool.tryAcquire() as PoolBuffer
    this.held++
    if (!this.active) this.activate()
    return buf
  }

  private activate (): void {
    this.active = true
    this.pool.activeShares++
  }

  private settle (): void {
    if (this.active && this.held === 0 && this.waiting.length === 0) {
      this.active = false
      this.pool.activeShares--
      // Every other share just grew: those waiting may take more now.
      this.pool.offerShares()
    }
  }
}
