// leg-set: the legs of a redundant array, in array order, and the one place that picks among them: which leg serves a
// read (least busy, a reconnecting one last), which legs hold a range (readers, resync sources, verify), and the
// array's state from its legs'. Each leg carries its own index, bits and record, so nothing is kept in step by
// `indexOf`.

import { DstError, Errno, ErrorCode } from '../../node/core/errors'
import type { Leg } from './leg'

export class LegSet {
  private readonly list: Leg[]
  private readonly arrayName: string

  /** What the array is called in messages ('mirror', 'parity'). */
  private readonly kind: string

  constructor (arrayName: string, legs: Leg[], kind = 'mirror') {
    this.arrayName = arrayName
    this.kind = kind
    this.list = legs
    this.renumber()
  }

  get all (): readonly Leg[] { return this.list }
  get length (): number { return this.list.length }
  get names (): string[] { return this.list.map(l => l.name) }

  find (name: string): Leg | undefined {
    return this.list.find(l => l.name === name)
  }

  has (leg: Leg): boolean {
    return this.list[leg.index] === leg
  }

  /** The leg called `name`, or a DST_ERR_NOLEG error naming the legs there are. */
  named (name: string): Leg {
    const leg = this.find(name)
    if (leg === undefined) throw new DstError(ErrorCode.NOLEG, `${this.kind} '${this.arrayName}': no leg '${name}' (legs: ${this.names.join(', ')})`, Errno.EINVAL)
    return leg
  }

  add (leg: Leg): void {
    this.list.push(leg)
    this.renumber()
  }

  remove (leg: Leg): void {
    this.list.splice(leg.index, 1)
    this.renumber()
  }

  inSyncCount (): number {
    let n = 0
    for (const l of this.list) if (l.state === 'in-sync') n++
    return n
  }

  anyInSync (): boolean {
    for (const l of this.list) if (l.state === 'in-sync') return true
    return false
  }

  /**
   * The leg to read r0..r1 from: the least busy that holds the range, a leg whose link is down (reconnecting) only
   * when no other does; `except` is never picked. Picked without building arrays; null when no leg holds it.
   */
  reader (r0: number, r1: number, except: Leg | null = null): Leg | null {
    let best: Leg | null = null
    let bestRank = 0
    for (const l of this.list) {
      if (l === except || l.absent || !l.holds(r0, r1)) continue
      const rank = readRank(l)
      if (best === null || rank < bestRank) { best = l; bestRank = rank }
    }
    return best
  }

  /** Every leg that holds r0..r1 (but `except`), in array order (verify compares them all). */
  holders (r0: number, r1: number, except: Leg | null = null): Leg[] {
    const out: Leg[] = []
    for (const l of this.list) if (l !== except && !l.absent && l.holds(r0, r1)) out.push(l)
    return out
  }

  /** Every leg that holds r0..r1, best reader first (a read spread over several legs). */
  readers (r0: number, r1: number): Leg[] {
    const out = this.holders(r0, r1)
    if (out.length > 1) out.sort((a, b) => readRank(a) - readRank(b))
    return out
  }

  /** The legs that are not absent (flush). */
  present (): Leg[] {
    return this.list.filter(l => !l.absent)
  }

  arrayState (): 'online' | 'degraded' | 'failed' {
    const inSync = this.inSyncCount()
    if (inSync === 0) return 'failed'
    return inSync === this.list.length && inSync > 1 ? 'online' : 'degraded'
  }

  /** Every leg's state (and last error), for an error message. */
  describe (): string {
    return this.list.map(l => `${l.name} ${l.state}${l.lastError !== '' ? ` (${l.lastError})` : ''}`).join('; ')
  }

  /** The error of a request no in-sync leg can serve. */
  noLegError (what: string): DstError {
    return new DstError(ErrorCode.NOLEG, `mirror '${this.arrayName}': ${what}: no in-sync leg left (${this.describe()})`, Errno.EIO)
  }

  private renumber (): void {
    this.list.forEach((l, i) => { l.index = i })
  }
}

/** Least busy first; a leg whose link is down (reconnecting) only when no other leg will do. */
function readRank (l: Leg): number {
  return (l.device.state === 'connecting' ? 1e9 : 0) + l.outstanding
}
