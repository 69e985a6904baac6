// What linear and stripe arrays share: an array whose every byte lives on exactly one member, so a request is cut
// into pieces (one per member range it touches) and each piece goes to its member as it is. A subclass says only how
// an array range maps to member ranges (`each`), and when a digest chunk may be asked of a member (`hashForwardable`).
// Extents are asked of the members piece by piece and mapped back (a stripe, whose pieces are its many chunks, asks
// each member once instead: algorithms/stripe.ts).

import { Device, type DeviceOptions, type Extent } from '../node/core/device'
import { settleAll } from '../node/core/settle'
import { DIGEST_SIZE, digestCount } from '../node/core/hasher'

export interface Member { name: string, device: Device }

/** Called once per piece: the member, the member-local offset, the piece's length and its offset into the request. */
export type PieceFn = (m: Member, at: number, n: number, done: number) => Promise<void>

export abstract class PieceArray extends Device {
  readonly members: Member[]

  constructor (members: Member[], options: DeviceOptions) {
    super(options)
    this.members = members
  }

  /** Calls `fn` once per piece of the range, all at once; settles when every piece has. */
  protected abstract each (offset: number, length: number, fn: PieceFn): Promise<void>

  /** True when every `chunk`-byte digest chunk of the range lies inside one piece (members can digest their own). */
  protected abstract hashForwardable (offset: number, length: number, chunk: number): boolean

  protected override _read (offset: number, length: number, into: Uint8Array): Promise<void> {
    return this.each(offset, length, (m, at, n, done) => m.device.read(at, n, into.subarray(done, done + n)))
  }

  protected override _write (offset: number, data: Uint8Array): Promise<void> {
    return this.each(offset, data.byteLength, (m, at, n, done) => m.device.write(at, data.subarray(done, done + n)))
  }

  protected override _flush (): Promise<void> {
    return settleAll(this.members.map(m => m.device.flush()))
  }

  protected override _trim (offset: number, length: number): Promise<void> {
    return this.each(offset, length, (m, at, n) => m.device.trim(at, n))
  }

  /** Each member tells the holes of its pieces; their runs, moved to array offsets, are joined in order. */
  protected override async _extents (offset: number, length: number): Promise<Extent[]> {
    const parts: Array<{ done: number, at: number, runs: Extent[] }> = []
    await this.each(offset, length, (m, at, n, done) => m.device.extents(at, n).then(runs => { parts.push({ done, at, runs }) }))
    parts.sort((a, b) => a.done - b.done)
    const out: Extent[] = []
    for (const p of parts) for (const r of p.runs) appendRun(out, offset + p.done + (r.offset - p.at), r.length, r.hole)
    return out
  }

  /** Each member digests its own pieces where it can; otherwise the range is read and digested here. */
  protected override async _hash (offset: number, length: number, chunk: number): Promise<Buffer> {
    if (!this.hashForwardable(offset, length, chunk)) return await super._hash(offset, length, chunk)
    const out = Buffer.alloc(digestCount(length, chunk) * DIGEST_SIZE)
    await this.each(offset, length, (m, at, n, done) => m.device.hash(at, n, chunk).then(d => { d.copy(out, (done / chunk) * DIGEST_SIZE) }))
    return out
  }
}

/** Adds a run at the end of `runs` (which ends at `offset`), merged with the last one when of the same kind. */
export function appendRun (runs: Extent[], offset: number, length: number, hole: boolean): void {
  if (length === 0) return
  const last = runs[runs.length - 1]
  if (last !== undefined && last.hole === hole) last.length += length
  else runs.push({ offset, length, hole })
}
