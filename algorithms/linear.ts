// linear: members placed one after another, like nbdkit's offset filter repeated. A request that crosses a member
// boundary is split into one piece per member and completes as one request; a failed member fails only the requests
// that touch it.

import type { DeviceStatus } from '../node/core/device'
import { DstError, ErrorCode } from '../node/core/errors'
import { derivedIdentity } from '../node/core/identity'
import { settleAll } from '../node/core/settle'
import type { Hasher } from '../node/core/hasher'
import { PieceArray, type Member, type PieceFn } from './pieces'

export type { Member } from './pieces'

export class LinearDevice extends PieceArray {
  readonly type = 'linear'
  /** starts[i] is the array offset where member i begins; starts[n] is the size. */
  private readonly starts: number[]

  /** `hasher`: where a range whose chunks straddle members is digested (default: defaultHasher()). */
  constructor (members: Member[], options: { hasher?: Hasher } = {}) {
    if (members.length === 0) throw new DstError(ErrorCode.CONFIG, 'a linear array needs at least one member')
    const starts = [0]
    for (const m of members) starts.push(starts[starts.length - 1] + m.device.size)
    super(members, {
      size: starts[starts.length - 1],
      blockSize: Math.max(...members.map(m => m.device.blockSize)),
      readOnly: !members.every(m => m.device.writable),
      canFlush: members.some(m => m.device.canFlush),
      canTrim: members.every(m => m.device.canTrim),
      hasher: options.hasher,
    })
    this.starts = starts
    // A concatenation is the same data exactly when it has the same members in the same order.
    this.identity = derivedIdentity(`linear:${members.map(m => `${m.device.identity}/${m.device.size}`).join(',')}`)
  }

  /** Members digest their own pieces when every member boundary inside the range falls on a chunk boundary. */
  protected override hashForwardable (offset: number, length: number, chunk: number): boolean {
    const end = offset + length
    for (let i = this.memberAt(offset) + 1; i < this.members.length && this.starts[i] < end; i++) {
      if ((this.starts[i] - offset) % chunk !== 0) return false
    }
    return true
  }

  override status (): DeviceStatus {
    const failed = this.members.filter(m => m.device.state === 'failed' || m.device.state === 'connecting' || m.device.state === 'foreign')
    return {
      ...super.status(),
      state: failed.length > 0 ? 'degraded' : this.state,
      members: this.members.map((m, i) => ({ name: m.name, start: this.starts[i], ...m.device.status() })),
    }
  }

  /** Calls `fn` once per member the range touches, with the member-local offset and the offset into the buffer. */
  protected override each (offset: number, length: number, fn: PieceFn): Promise<void> {
    let i = this.memberAt(offset)
    const end = offset + length
    const first = this.starts[i + 1]
    if (end <= first) return fn(this.members[i], offset - this.starts[i], length, 0)
    const parts: Array<Promise<void>> = []
    for (let pos = offset; pos < end; i++) {
      const stop = Math.min(end, this.starts[i + 1])
      parts.push(fn(this.members[i], pos - this.starts[i], stop - pos, pos - offset))
      pos = stop
    }
    return settleAll(parts)
  }

  /** The member holding `offset` (binary search over the starts). */
  private memberAt (offset: number): number {
    let lo = 0
    let hi = this.members.length - 1
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1
      if (this.starts[mid] <= offset) lo = mid; else hi = mid - 1
    }
    return lo
  }
}

