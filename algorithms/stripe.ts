// stripe (raid 0): the array's chunks dealt round-robin over the members, chunk c on member c mod n at member offset
// floor(c / n) × chunk. A request is split at chunk boundaries and every piece is issued at once, so a large request
// keeps every member busy. No redundancy: a failed member fails the requests that touch it, like linear.

import type { DeviceStatus, Extent } from '../node/core/device'
import { DstError, ErrorCode } from '../node/core/errors'
import { derivedIdentity } from '../node/core/identity'
import { settleAll } from '../node/core/settle'
import type { Hasher } from '../node/core/hasher'
import { PieceArray, appendRun, type Member, type PieceFn } from './pieces'

export const MIN_CHUNK = 4096
export const MAX_CHUNK = 16 * 1024 * 1024
export const DEFAULT_CHUNK = 64 * 1024

export interface StripeOptions {
  members: Member[]
  /** Bytes of one chunk: a power of two from 4 KiB to 16 MiB, a multiple of every member's block size. */
  chunk?: number
  /** Where a range whose digest chunks straddle stripe chunks is digested (default: defaultHasher()). */
  hasher?: Hasher
}

/** Why a chunk size cannot stripe these members, or null. Shared by the config check and the constructor. */
export function stripeChunkProblem (chunk: number, blockSizes: number[]): string | null {
  if (!Number.isInteger(chunk) || chunk < MIN_CHUNK || chunk > MAX_CHUNK || (chunk & (chunk - 1)) !== 0) {
    return `chunk ${chunk} is not a power of two from 4KiB to 16MiB`
  }
  const big = blockSizes.find(b => chunk % b !== 0)
  if (big !== undefined) return `chunk ${chunk} is not a multiple of a member's block size ${big}`
  return null
}

export class StripeDevice extends PieceArray {
  readonly type = 'stripe'
  readonly chunk: number

  constructor (options: StripeOptions) {
    const { members } = options
    const chunk = options.chunk ?? DEFAULT_CHUNK
    if (members.length < 2) throw new DstError(ErrorCode.CONFIG, `a stripe array needs at least two members, got ${members.length}`)
    const problem = stripeChunkProblem(chunk, members.map(m => m.device.blockSize))
    if (problem !== null) throw new DstError(ErrorCode.CONFIG, `stripe: ${problem}`)
    const rows = Math.floor(Math.min(...members.map(m => m.device.size)) / chunk)
    super(members, {
      size: rows * chunk * members.length,
      blockSize: Math.max(...members.map(m => m.device.blockSize)),
      readOnly: !members.every(m => m.device.writable),
      canFlush: members.some(m => m.device.canFlush),
      canTrim: members.every(m => m.device.canTrim),
      hasher: options.hasher,
    })
    this.chunk = chunk
    // The same data exactly when the same members hold it in the same order with the same chunk.
    this.identity = derivedIdentity(`stripe:${chunk}:${members.map(m => `${m.device.identity}/${m.device.size}`).join(',')}`)
  }

  /** Members digest their own pieces when every digest chunk lies inside one stripe chunk. */
  protected override hashForwardable (offset: number, _length: number, chunk: number): boolean {
    return this.chunk % chunk === 0 && offset % chunk === 0
  }

  override status (): DeviceStatus {
    const members = this.members.map(m => ({ name: m.name, ...m.device.status() }))
    const down = members.some(m => m.state === 'failed' || m.state === 'connecting' || m.state === 'foreign')
    return { ...super.status(), state: down && this.state === 'online' ? 'degraded' : this.state, chunk: this.chunk, members }
  }

  /** Where array offset `offset` lives: the member index and the offset on that member. */
  locate (offset: number): { member: number, at: number } {
    const c = Math.floor(offset / this.chunk)
    const n = this.members.length
    return { member: c % n, at: Math.floor(c / n) * this.chunk + (offset - c * this.chunk) }
  }

  /**
   * Each member is asked once, for the rows the range touches; the array's runs are then walked chunk by chunk, except
   * that rows where every member is a hole (or every one data) are passed over whole, so a mostly empty stripe costs
   * the runs its members hold, not its chunk count.
   */
  protected override async _extents (offset: number, length: number): Promise<Extent[]> {
    const n = this.members.length
    const chunk = this.chunk
    const end = offset + length
    const row0 = Math.floor(Math.floor(offset / chunk) / n)
    const row1 = Math.floor(Math.floor((end - 1) / chunk) / n)
    const perMember = await Promise.all(this.members.map(m => m.device.extents(row0 * chunk, (row1 - row0 + 1) * chunk)))
    const cursor = new Array<number>(n).fill(0)
    /** The run of member i at member offset x (x only grows per member): its index in perMember[i]. */
    const runAt = (i: number, x: number): Extent => {
      const runs = perMember[i]
      let k = cursor[i]
      while (runs[k].offset + runs[k].length <= x) k++
      cursor[i] = k
      return runs[k]
    }
    const out: Extent[] = []
    let pos = offset
    while (pos < end) {
      const c = Math.floor(pos / chunk)
      const row = Math.floor(c / n)
      const i = c % n
      const inside = pos - c * chunk
      if (i === 0 && inside === 0) {
        // At a row start: how many whole rows every member spends in runs of one kind.
        const first = runAt(0, row * chunk)
        let rowsEnd = Math.floor((first.offset + first.length) / chunk)
        for (let j = 1; j < n && rowsEnd > row; j++) {
          const r = runAt(j, row * chunk)
          if (r.hole !== first.hole) rowsEnd = row
          else rowsEnd = Math.min(rowsEnd, Math.floor((r.offset + r.length) / chunk))
        }
        if (rowsEnd > row) {
          const stop = Math.min(end, rowsEnd * n * chunk)
          appendRun(out, pos, stop - pos, first.hole)
          pos = stop
          continue
        }
      }
      const x = row * chunk + inside
      const r = runAt(i, x)
      const stop = Math.min(end, pos + (chunk - inside), pos + (r.offset + r.length - x))
      appendRun(out, pos, stop - pos, r.hole)
      pos = stop
    }
    return out
  }

  /** Calls `fn` once per chunk piece of the range, with the member, its offset there and the offset into the buffer. */
  protected override each (offset: number, length: number, fn: PieceFn): Promise<void> {
    const n = this.members.length
    const chunk = this.chunk
    const end = offset + length
    let c = Math.floor(offset / chunk)
    let inside = offset - c * chunk
    if (inside + length <= chunk) return fn(this.members[c % n], Math.floor(c / n) * chunk + inside, length, 0)
    const parts: Array<Promise<void>> = []
    for (let pos = offset; pos < end; c++, inside = 0) {
      const piece = Math.min(chunk - inside, end - pos)
      parts.push(fn(this.members[c % n], Math.floor(c / n) * chunk + inside, piece, pos - offset))
      pos += piece
    }
    return settleAll(parts)
  }
}
