// A bounded FIFO over a fixed array: O(1) push and shift, no growth, an explicit error when full
// (undici's FixedQueue and piscina's task queue do the same instead of Array.shift()).

export class Ring<T> {
  private readonly items: Array<T | undefined>
  private head = 0
  private count = 0

  constructor (readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity <= 0) throw new RangeError(`ring capacity must be a positive integer, got ${capacity}`)
    this.items = new Array<T | undefined>(capacity).fill(undefined)
  }

  get length (): number { return this.count }
  get full (): boolean { return this.count === this.capacity }

  push (item: T): void {
    if (this.count === this.capacity) throw new RangeError(`ring is full (${this.capacity} items)`)
    this.items[(this.head + this.count) % this.capacity] = item
    this.count++
  }

  /** Puts an item back at the front (a request that must be retried keeps its place). */
  unshift (item: T): void {
    if (this.count === this.capacity) throw new RangeError(`ring is full (${this.capacity} items)`)
    this.head = (this.head + this.capacity - 1) % this.capacity
    this.items[this.head] = item
    this.count++
  }

  shift (): T | undefined {
    if (this.count === 0) return undefined
    const item = this.items[this.head]
    this.items[this.head] = undefined
    this.head = (this.head + 1) % this.capacity
    this.count--
    return item
  }

  peek (): T | undefined {
    return this.count === 0 ? undefined : this.items[this.head]
  }

  /** Removes and returns everything, oldest first (used when a connection dies and its queue must be failed). */
  drain (): T[] {
    const out: T[] = []
    for (let item = this.shift(); item !== undefined; item = this.shift()) out.push(item)
    return out
  }
}
