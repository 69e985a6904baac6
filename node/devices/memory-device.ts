// A synthetic device held in memory: the `memory` plugin of our tests (and config type "memory"). It is sparse, as a
// file on a filesystem that can punch holes is: its bytes live in pages of PAGE_SIZE allocated on their first write,
// a trim frees the pages it covers whole (and zeroes the rest of its range), and extents() reports pages never
// written, or freed, as holes. So tests have holes without files, and a memory device may be far larger than memory
// while it holds little.
//
// `data` is the escape hatch for tests that poke bytes directly: it turns the device into one flat Buffer for good.
// From then on anyone may change any byte behind the device's back, so extents() answers "all data" (always correct)
// and trim only zeroes.

import { constants } from 'node:buffer'
import { Device, type DeviceOptions, type Extent } from '../core/device'
import { randomUUID } from 'node:crypto'

/** Bytes per page: large enough that a 1 MiB request is 16 page copies, small enough that holes stay fine-grained. */
export const PAGE_SIZE = 64 * 1024

export class MemoryDevice extends Device {
  readonly type = 'memory'
  /** Sparse storage: page index → its bytes (the last page may be shorter). Null once the device went flat. */
  private pages: Map<number, Buffer> | null = new Map()
  private flat: Buffer | null = null

  constructor (options: DeviceOptions) {
    super(options)
    this.identity = randomUUID()
  }

  /**
   * The whole device as one flat Buffer, for tests that read or poke bytes directly. The first use copies the pages
   * into it and the device stays flat (no more holes reported): writes through the Buffer cannot be seen.
   */
  get data (): Buffer {
    if (this.flat === null) {
      if (this.size > constants.MAX_LENGTH) throw new RangeError(`memory device of ${this.size} bytes is too large to be one Buffer`)
      const flat = Buffer.alloc(this.size)
      for (const [index, page] of this.pages as Map<number, Buffer>) page.copy(flat, index * PAGE_SIZE)
      this.flat = flat
      this.pages = null
    }
    return this.flat
  }

  /** Bytes of pages allocated (sparse), or the whole size once flat. */
  get allocatedBytes (): number {
    if (this.pages === null) return this.size
    let n = 0
    for (const page of this.pages.values()) n += page.length
    return n
  }

  protected override _read (offset: number, length: number, into: Uint8Array): Promise<void> {
    const pages = this.pages
    if (pages === null) {
      (this.flat as Buffer).copy(into, 0, offset, offset + length)
      return Promise.resolve()
    }
    let pos = 0
    while (pos < length) {
      const at = offset + pos
      const index = Math.floor(at / PAGE_SIZE)
      const inPage = at - index * PAGE_SIZE
      const n = Math.min(length - pos, PAGE_SIZE - inPage)
      const page = pages.get(index)
      if (page !== undefined) page.copy(into, pos, inPage, inPage + n)
      else into.fill(0, pos, pos + n)
      pos += n
    }
    return Promise.resolve()
  }

  protected override _write (offset: number, data: Uint8Array): Promise<void> {
    const pages = this.pages
    if (pages === null) {
      (this.flat as Buffer).set(data, offset)
      return Promise.resolve()
    }
    const length = data.byteLength
    let pos = 0
    while (pos < length) {
      const at = offset + pos
      const index = Math.floor(at / PAGE_SIZE)
      const inPage = at - index * PAGE_SIZE
      const n = Math.min(length - pos, PAGE_SIZE - inPage)
      let page = pages.get(index)
      if (page === undefined) {
        const pageLength = Math.min(PAGE_SIZE, this.size - index * PAGE_SIZE)
        // A write that covers the page whole overwrites every byte: no need to zero it first.
        page = n === pageLength ? Buffer.allocUnsafe(pageLength) : Buffer.alloc(pageLength)
        pages.set(index, page)
      }
      page.set(data.subarray(pos, pos + n), inPage)
      pos += n
    }
    return Promise.resolve()
  }

  protected override _trim (offset: number, length: number): Promise<void> {
    const pages = this.pages
    if (pages === null) {
      (this.flat as Buffer).fill(0, offset, offset + length)
      return Promise.resolve()
    }
    const end = offset + length
    for (const index of this.allocatedIn(offset, length)) {
      const start = index * PAGE_SIZE
      const page = pages.get(index) as Buffer
      const from = Math.max(offset, start) - start
      const to = Math.min(end, start + page.length) - start
      if (from === 0 && to === page.length) pages.delete(index)
      else page.fill(0, from, to)
    }
    return Promise.resolve()
  }

  protected override _extents (offset: number, length: number): Promise<Extent[]> {
    if (this.pages === null) return super._extents(offset, length)
    const runs: Extent[] = []
    const end = offset + length
    let at = offset
    const push = (upTo: number, hole: boolean): void => {
      if (upTo <= at) return
      const last = runs[runs.length - 1]
      if (last !== undefined && last.hole === hole) last.length += upTo - at
      else runs.push({ offset: at, length: upTo - at, hole })
      at = upTo
    }
    for (const index of this.allocatedIn(offset, length)) {
      const start = index * PAGE_SIZE
      push(Math.max(start, at), true)
      push(Math.min(end, start + PAGE_SIZE), false)
    }
    push(end, true)
    return Promise.resolve(runs)
  }

  /** Indexes of the allocated pages that overlap [offset, offset + length), ascending: by scanning the range or the map. */
  private allocatedIn (offset: number, length: number): number[] {
    const pages = this.pages as Map<number, Buffer>
    const first = Math.floor(offset / PAGE_SIZE)
    const last = Math.floor((offset + length - 1) / PAGE_SIZE)
    const found: number[] = []
    if (last - first + 1 <= pages.size) {
      for (let i = first; i <= last; i++) if (pages.has(i)) found.push(i)
      return found
    }
    for (const i of pages.keys()) if (i >= first && i <= last) found.push(i)
    return found.sort((a, b) => a - b)
  }
}
