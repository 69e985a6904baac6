// One connection's fair share of the node's buffer pool: the one "take a free buffer or wait" path of both protocols
// (native sessions and NBD), so that a client that stops reading its replies cannot hold every buffer.
//
// Why a share, and why this size: a reply that its client does not read keeps its buffer (the data is sent from it),
// so buffers taken by such a client come back only when it reads or is closed. The pool is therefore dealt out by
// connection: a connection that holds or waits for buffers is *active*, and one may hold at most
// max(1, floor(count / (active + 1))) at once. The "+ 1" is the reserve: whatever the active connections hold, as much
// again as one share stays for the next connection to ask (a single client alone gets half the pool, which is still
// far more than a queue depth of 32 needs). Shares shrink as more connections become active and grow as they leave;
// a connection above its share after a newcomer arrived keeps what it has but gets no more until it is back under
// it. Connections that wait get buffers in the order they asked, across connections (the pool's FIFO), each with at
// most its share of requests in that FIFO; the rest of a connection's requests wait in its own ring. Many
// never-reading clients at once can still take every buffer between them (each before the next came); the sessions
// close a connection whose replies stay unread for long (`stallTimeout`), which gives its buffers back.

import type { BufferPool, PoolBuffer } from './pool'
import { Ring } from './ring'

interface Waiter { resolve: (buf: PoolBuffer) => void, reject: (err: Error) => void }

export class PoolShare {
  /** Buffers this connection holds now. */
  private held = 0
  /** Its requests now waiting in the pool's FIFO. */
  private asked = 0
  private active = false
  private closed = false
  private readonly waiting: Ring<Waiter>

  /** `maxWaiting`: most requests of this connection that may wait at once (beyond: an explicit error). */
  constructor (readonly pool: BufferPool, maxWaiting = 1024) {
    this.waiting = new Ring(maxWaiting)
  }

  /** Most buffers this connection may hold now. */
  get limit (): number {
    const others = this.pool.activeShares - (this.active ? 1 : 0)
    return Math.max(1, Math.floor(this.pool.count / (others + 2)))
  }

  get holding (): number { return this.held }

  /** A free buffer now, or null: the pool is empty, others wait before us, or this connection holds its share. */
  tryAcquire (): PoolBuffer | null {
    if (this.waiting.length > 0 || this.pool.waiting > 0 || this.held + this.asked >= this.limit) return null
    const buf = this.pool.tryAcquire()
    if (buf === null) return null
    this.held++
    if (!this.active) this.activate()
    return buf
  }

  /** A buffer, waiting (in order) when none can be had now. Rejects once the connection is closed. */
  acquire (): Promise<PoolBuffer> {
    const buf = this.tryAcquire()
    if (buf !== null) return Promise.resolve(buf)
    if (this.closed) return Promise.reject(new RangeError('buffer pool: the connection is closed'))
    if (this.waiting.full) return Promise.reject(new RangeError(`buffer pool: ${this.waiting.capacity} requests of this connection already waiting`))
    if (!this.active) this.activate()
    this.pool.waits++
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject })
      this.pump()
    })
  }

  release (buf: PoolBuffer): void {
    this.held--
    this.pool.release(buf)
    this.pump()
    this.settle()
  }

  /** The connection is gone: its waiting requests are refused; buffers it still holds come back through release(). */
  close (): void {
    if (this.closed) return
    this.closed = true
    const err = new RangeError('buffer pool: the connection is closed')
    for (let w = this.waiting.shift(); w !== undefined; w = this.waiting.shift()) w.reject(err)
    this.settle()
  }

  /** Moves waiting requests into the pool's FIFO while this connection is under its share. */
  private pump (): void {
    while (this.waiting.length > 0 && this.held + this.asked < this.limit) {
      const w = this.waiting.shift() as Waiter
      this.asked++
      this.pool.acquire().then(buf => {
        this.asked--
        this.held++
        w.resolve(buf)
      }, (err: Error) => {
        this.asked--
        w.reject(err)
        this.settle()
      })
    }
  }

  private activate (): void {
    this.active = true
    this.pool.activeShares++
  }

  private settle (): void {
    if (this.active && this.held === 0 && this.asked === 0 && this.waiting.length === 0) {
      this.active = false
      this.pool.activeShares--
    }
  }
}
