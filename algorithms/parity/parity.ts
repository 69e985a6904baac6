// parity: single-parity arrays (raid35, raid5; the arithmetic is in ./layout.ts) that survive the loss of any one
// member. This file is the I/O paths, what parity changes about a request and nothing more:
//
// - reads go to the member holding the bytes; the bytes of a member that is down are the XOR of the same range on
//   every other member (data and parity), read under the stripe's lock so parity and data agree;
// - raid35 writes whole blocks: fragments and their XOR go to every member at once, no read; a write that is not
//   whole blocks is widened to them (read, merge, write), the only read before write;
// - raid5 writes a stripe at a time under its lock: a full stripe's parity comes from the new data alone, a partial
//   one reads the old data and old parity (read-modify-write) or the rest of the stripe (reconstruct-write), whichever
//   reads less and whichever the members that are up allow;
// - a member that fails a request is down from then on: requests go on with the others, and it comes back only
//   through `rebuild()`, which reconstructs its every byte from the others. With two members down the array fails.

import { Device, type DeviceStatus } from '../../node/core/device'
import { DstError, Errno, ErrorCode } from '../../node/core/errors'
import { derivedIdentity } from '../../node/core/identity'
import { settleAll } from '../../node/core/settle'
import { xorInto } from '../../node/core/xor'
import type { Member } from '../linear'
import { Raid35Layout, Raid5Layout, raid35Problem, raid5Problem, type ParityLayoutName, type StripeWrite } from './layout'

export interface ParityOptions {
  name: string
  members: Member[]
  layout: ParityLayoutName
  /** raid5: bytes of one chunk (default 64 KiB). */
  chunk?: number
  /** raid35: the array's block, split into one fragment per data member (default 4 KiB). */
  blockSize?: number
  /** XOR of large buffers (node/core/xor.ts's engine); default: on the calling thread. */
  xor?: (dest: Uint8Array, sources: readonly Uint8Array[]) => Promise<void>
  log?: (message: string) => void
}

export type MemberState = 'up' | 'down' | 'rebuilding'

/** Serialises work per key (a stripe, a group of blocks); keys are taken in ascending order, so two never deadlock. */
class KeyedLock {
  private readonly tails = new Map<number, Promise<void>>()

  async take (keys: number[]): Promise<() => void> {
    const releases: Array<() => void> = []
    for (const k of keys) {
      const before = this.tails.get(k) ?? Promise.resolve()
      let release!: () => void
      const mine = new Promise<void>(resolve => { release = resolve })
      const tail = before.then(() => mine)
      this.tails.set(k, tail)
      releases.push(() => { release(); if (this.tails.get(k) === tail) this.tails.delete(k) })
      await before
    }
    return () => { for (const r of releases) r() }
  }
}

/** A member failed a read before write: the write is planned again without it. */
class MemberLost extends DstError {
  constructor (member: string, cause: unknown) {
    super(ErrorCode.EIO, `member '${member}' failed a read before write: ${(cause as Error)?.message ?? String(cause)}`)
  }
}

/** raid35 writes and degraded reads lock groups of this many array bytes (whole blocks). */
const RAID35_LOCK_GROUP = 64 * 1024

export class ParityDevice extends Device {
  readonly type = 'parity'
  readonly name: string
  readonly layout: ParityLayoutName
  readonly members: Member[]
  readonly states: MemberState[]
  /** Bytes read before writing (raid5 read-modify-write and reconstruct-write; raid35 widened sub-block writes). */
  readonly counters = { preReadBytes: 0, preReads: 0, fullStripeWrites: 0, reconstructedReads: 0, rebuiltBytes: 0 }
  private readonly r35: Raid35Layout | null
  private readonly r5: Raid5Layout | null
  private readonly locks = new KeyedLock()
  private readonly xor: (dest: Uint8Array, sources: readonly Uint8Array[]) => Promise<void>
  private readonly log: (message: string) => void

  constructor (options: ParityOptions) {
    const { members, layout } = options
    const blockSizes = members.map(m => m.device.blockSize)
    const smallest = Math.min(...members.map(m => m.device.size))
    let size: number
    let blockSize: number
    let r35: Raid35Layout | null = null
    let r5: Raid5Layout | null = null
    if (layout === 'raid35') {
      const block = options.blockSize ?? 4096
      const problem = raid35Problem(members.length, block, blockSizes)
      if (problem !== null) throw new DstError(ErrorCode.CONFIG, `parity '${options.name}': ${problem}`)
      r35 = new Raid35Layout(members.length, block, smallest)
      size = r35.size
      blockSize = block
    } else {
      const chunk = options.chunk ?? 64 * 1024
      const problem = raid5Problem(members.length, chunk, blockSizes)
      if (problem !== null) throw new DstError(ErrorCode.CONFIG, `parity '${options.name}': ${problem}`)
      r5 = new Raid5Layout(members.length, chunk, smallest)
      size = r5.size
      blockSize = Math.max(...blockSizes)
    }
    super({
      size,
      blockSize,
      readOnly: !members.every(m => m.device.writable),
      canFlush: members.some(m => m.device.canFlush),
      // A trim would leave parity undefined where members zero (or not) as they like: not offered.
      canTrim: false,
    })
    this.name = options.name
    this.layout = layout
    this.members = members
    this.states = members.map(() => 'up')
    this.r35 = r35
    this.r5 = r5
    this.xor = options.xor ?? ((dest, sources) => { xorInto(dest, sources); return Promise.resolve() })
    this.log = options.log ?? (() => {})
    const shape = layout === 'raid35' ? `raid35:${blockSize}` : `raid5:${(r5 as Raid5Layout).chunk}`
    this.identity = derivedIdentity(`parity:${shape}:${members.map(m => `${m.device.identity}/${m.device.size}`).join(',')}`)
  }

  /** Members that serve requests now: up, and (for reads) not being rebuilt. */
  private usable (i: number): boolean {
    const s = this.members[i].device.state
    return this.states[i] === 'up' && s !== 'failed' && s !== 'connecting' && s !== 'foreign'
  }

  private down (): number[] {
    return this.members.map((_, i) => i).filter(i => !this.usable(i))
  }

  private markDown (i: number, err: unknown): void {
    if (this.states[i] === 'down') return
    this.states[i] = 'down'
    this.log(`member '${this.members[i].name}' is down: ${(err as Error)?.message ?? String(err)}`)
  }

  private tooFew (what: string): DstError {
    const down = this.members.filter((_, i) => !this.usable(i)).map(m => m.name)
    return new DstError(ErrorCode.NOLEG, `parity '${this.name}': ${what}: members ${down.join(', ')} are down; single parity survives one`, Errno.EIO)
  }

  // ---- reads

  protected override async _read (offset: number, length: number, into: Uint8Array): Promise<void> {
    if (this.down().length > 1) throw this.tooFew('read')
    if (this.r5 !== null) return await this.read5(this.r5, offset, length, into)
    return await this.read35(this.r35 as Raid35Layout, offset, length, into)
  }

  private async read5 (l: Raid5Layout, offset: number, length: number, into: Uint8Array): Promise<void> {
    await settleAll(l.readPieces(offset, length).map(async p => {
      const dest = into.subarray(p.done, p.done + p.length)
      if (this.usable(p.member)) {
        try {
          await this.members[p.member].device.read(p.at, p.length, dest)
          return
        } catch (err) {
          this.markDown(p.member, err)
        }
      }
      await this.reconstruct5(l, p.member, p.at, p.length, dest)
    }))
  }

  /** The bytes member `lost` holds at [at, at + length) (inside one chunk), from every other member, under the stripe lock. */
  private async reconstruct5 (l: Raid5Layout, lost: number, at: number, length: number, dest: Uint8Array): Promise<void> {
    const release = await this.locks.take([Math.floor(at / l.chunk)])
    try {
      await this.reconstructRange(lost, at, length, dest)
    } finally {
      release()
    }
  }

  /** dest = XOR of [at, at + length) on every member but `lost` (the caller holds the lock). */
  private async reconstructRange (lost: number, at: number, length: number, dest: Uint8Array): Promise<void> {
    const others = this.members.map((_, i) => i).filter(i => i !== lost)
    if (others.some(i => !this.usable(i))) throw this.tooFew('reconstruct')
    const bufs = others.map(() => Buffer.allocUnsafe(length))
    await settleAll(others.map(async (i, k) => {
      try {
        await this.members[i].device.read(at, length, bufs[k])
      } catch (err) {
        this.markDown(i, err)
        throw this.tooFew('reconstruct')
      }
    }))
    this.counters.reconstructedReads++
    await this.xor(dest, bufs)
  }

  private async read35 (l: Raid35Layout, offset: number, length: number, into: Uint8Array): Promise<void> {
    const { first, count } = l.widen(offset, length)
    const aligned = offset === first * l.blockSize && length === count * l.blockSize
    const blocks = aligned ? into.subarray(0, length) : Buffer.allocUnsafe(count * l.blockSize)
    const release = this.down().length > 0 ? await this.locks.take(this.groups35(l, first, count)) : null
    try {
      await this.readBlocks35(l, first, count, blocks)
    } finally {
      release?.()
    }
    if (!aligned) into.set(blocks.subarray(offset - first * l.blockSize, offset - first * l.blockSize + length))
  }

  /** Whole blocks [first, first + count) into `blocks`, reconstructing a data member that is down. */
  private async readBlocks35 (l: Raid35Layout, first: number, count: number, blocks: Uint8Array): Promise<void> {
    const { at, length } = l.memberRange(first, count)
    const parts = Array.from({ length: l.data }, () => Buffer.allocUnsafe(length))
    let lost = -1
    await settleAll(parts.map(async (buf, i) => {
      if (this.usable(i)) {
        try {
          await this.members[i].device.read(at, length, buf)
          return
        } catch (err) {
          this.markDown(i, err)
        }
      }
      if (lost !== -1 && lost !== i) throw this.tooFew('read')
      lost = i
    }))
    if (lost !== -1) await this.reconstructRange(lost, at, length, parts[lost])
    l.gather(parts, blocks)
  }

  private groups35 (l: Raid35Layout, first: number, count: number): number[] {
    const per = Math.max(1, RAID35_LOCK_GROUP / l.blockSize)
    const out: number[] = []
    for (let g = Math.floor(first / per); g <= Math.floor((first + count - 1) / per); g++) out.push(g)
    return out
  }

  // ---- writes

  protected override async _write (offset: number, data: Uint8Array): Promise<void> {
    if (this.down().length > 1) throw this.tooFew('write')
    if (this.r5 !== null) {
      const l = this.r5
      await settleAll(l.writePlan(offset, data.byteLength).map(w => this.writeStripe5(l, w, data)))
      return
    }
    await this.write35(this.r35 as Raid35Layout, offset, data)
  }

  private async write35 (l: Raid35Layout, offset: number, data: Uint8Array): Promise<void> {
    const { first, count } = l.widen(offset, data.byteLength)
    const release = await this.locks.take(this.groups35(l, first, count))
    try {
      let blocks: Uint8Array = data
      if (offset !== first * l.blockSize || data.byteLength !== count * l.blockSize) {
        // The one read before write raid35 does: the blocks a sub-block write lands in, merged with the new bytes.
        blocks = Buffer.allocUnsafe(count * l.blockSize)
        this.counters.preReads++
        this.counters.preReadBytes += count * l.blockSize
        await this.readBlocks35(l, first, count, blocks)
        blocks.set(data, offset - first * l.blockSize)
      }
      const { at, length } = l.memberRange(first, count)
      const parts = Array.from({ length: l.members }, () => Buffer.allocUnsafe(length))
      l.scatter(blocks, parts.slice(0, l.data))
      await this.xor(parts[l.parity], parts.slice(0, l.data))
      await this.writeMembers(parts.map((buf, i) => ({ member: i, at, buf })))
    } finally {
      release()
    }
  }

  private async writeStripe5 (l: Raid5Layout, w: StripeWrite, data: Uint8Array): Promise<void> {
    // A member that fails a read before write is down from then on: the stripe is planned again without it.
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.writeStripe5Once(l, w, data)
      } catch (err) {
        if (!(err instanceof MemberLost) || attempt >= this.members.length || this.down().length > 1) throw err
      }
    }
  }

  private async writeStripe5Once (l: Raid5Layout, w: StripeWrite, data: Uint8Array): Promise<void> {
    const release = await this.locks.take([w.stripe])
    try {
      // At most one member cannot be read: down, or being rebuilt (which is written to, but not yet read from).
      const lost = this.down()
      if (lost.length > 1) throw this.tooFew('write')
      const gone = lost[0] ?? -1
      const width = w.hi - w.lo
      const parity = Buffer.allocUnsafe(width)
      const news = w.pieces.map(p => ({ member: p.member, at: p.at, buf: data.subarray(p.done, p.done + p.length) }))
      if (gone === w.parityMember && this.states[gone] !== 'rebuilding') {
        // Parity comes back with the member's rebuild; the data alone is written.
        await this.writeMembers(news)
        return
      }
      const newOf = (k: number): Uint8Array => data.subarray(w.pieces[k].done, w.pieces[k].done + w.pieces[k].length)
      if (w.mode === 'full') {
        this.counters.fullStripeWrites++
        await this.xor(parity, w.pieces.map((_, k) => newOf(k)))
      } else if (gone === -1 || gone === w.parityMember) {
        // Every data member can be read; old parity only if its member is not the one being rebuilt.
        if (w.mode === 'rmw' && gone === -1) await this.rmw5(w, data, parity)
        else await this.rcw5(l, w, data, parity)
      } else if (!w.pieces.some(p => p.member === gone)) {
        // The lost member is not written: old data under the pieces and old parity are all readable.
        await this.rmw5(w, data, parity)
      } else {
        // The lost member is written: its old bytes in [lo, hi) are the XOR of everyone else's old bytes there.
        const others = this.members.map((_, i) => i).filter(i => i !== gone)
        const olds = new Map(others.map(i => [i, Buffer.allocUnsafe(width)]))
        await settleAll(others.map(i => this.preRead(i, w.base + w.lo, width, olds.get(i) as Buffer)))
        const goneOld = Buffer.allocUnsafe(width)
        await this.xor(goneOld, [...olds.values()])
        olds.set(gone, goneOld)
        const chunks = Array.from({ length: l.data }, (_, j) => olds.get(l.memberOf(w.stripe, j)) as Buffer)
        for (const [k, p] of w.pieces.entries()) (olds.get(p.member) as Buffer).set(newOf(k), p.inChunk - w.lo)
        await this.xor(parity, chunks)
      }
      await this.writeMembers([...news, { member: w.parityMember, at: w.base + w.lo, buf: parity }])
    } finally {
      release()
    }
  }

  /** Read-modify-write: parity' = parity ^ old ^ new over each piece, in the parity's [lo, hi). */
  private async rmw5 (w: StripeWrite, data: Uint8Array, parity: Buffer): Promise<void> {
    const olds = w.pieces.map(p => Buffer.allocUnsafe(p.length))
    await settleAll([
      this.preRead(w.parityMember, w.base + w.lo, w.hi - w.lo, parity),
      ...w.pieces.map((p, k) => this.preRead(p.member, p.at, p.length, olds[k])),
    ])
    for (const [k, p] of w.pieces.entries()) {
      const slot = parity.subarray(p.inChunk - w.lo, p.inChunk - w.lo + p.length)
      await this.xor(slot, [slot, olds[k], data.subarray(p.done, p.done + p.length)])
    }
  }

  /** Reconstruct-write: parity = XOR over [lo, hi) of every data chunk, new bytes where written, old ones read elsewhere. */
  private async rcw5 (l: Raid5Layout, w: StripeWrite, data: Uint8Array, parity: Buffer): Promise<void> {
    const width = w.hi - w.lo
    const chunks = Array.from({ length: l.data }, (_, j) => ({ member: l.memberOf(w.stripe, j), buf: Buffer.allocUnsafe(width) }))
    await settleAll(chunks.map(async c => {
      const piece = w.pieces.find(p => p.member === c.member)
      if (piece === undefined) return await this.preRead(c.member, w.base + w.lo, width, c.buf)
      const a = piece.inChunk
      const b = piece.inChunk + piece.length
      c.buf.set(data.subarray(piece.done, piece.done + piece.length), a - w.lo)
      const reads: Array<Promise<void>> = []
      if (a > w.lo) reads.push(this.preRead(c.member, w.base + w.lo, a - w.lo, c.buf.subarray(0, a - w.lo)))
      if (b < w.hi) reads.push(this.preRead(c.member, w.base + b, w.hi - b, c.buf.subarray(b - w.lo)))
      await settleAll(reads)
    }))
    await this.xor(parity, chunks.map(c => c.buf))
  }

  private async preRead (member: number, at: number, length: number, into: Uint8Array): Promise<void> {
    if (!this.usable(member)) throw this.tooFew('read before write')
    this.counters.preReads++
    this.counters.preReadBytes += length
    try {
      await this.members[member].device.read(at, length, into)
    } catch (err) {
      this.markDown(member, err)
      throw new MemberLost(this.members[member].name, err)
    }
  }

  /**
   * Writes every piece to its member at once (pieces of a member that is down are skipped: its bytes are implied by
   * the others). Succeeds while at most one member is missing; a member that fails is down from then on.
   */
  private async writeMembers (writes: Array<{ member: number, at: number, buf: Uint8Array }>): Promise<void> {
    await Promise.all(writes.map(async w => {
      if (!this.usable(w.member) && this.states[w.member] !== 'rebuilding') return
      try {
        await this.members[w.member].device.write(w.at, w.buf)
      } catch (err) {
        this.markDown(w.member, err)
      }
    }))
    if (this.down().filter(i => this.states[i] !== 'rebuilding').length > 1) throw this.tooFew('write')
  }

  protected override _flush (): Promise<void> {
    return settleAll(this.members.map((m, i) => this.usable(i) ? m.device.flush().catch(err => this.markDown(i, err)) : Promise.resolve()))
  }

  // ---- rebuild

  /**
   * Reconstructs every byte of member `name` from the others, a stripe (raid5) or a lock group (raid35) at a time
   * under its lock, while I/O goes on; writes during the rebuild reach the member too. The member is up when done.
   */
  async rebuild (name: string, step = 1024 * 1024): Promise<void> {
    const i = this.members.findIndex(m => m.name === name)
    if (i < 0) throw new DstError(ErrorCode.NOLEG, `parity '${this.name}': no member '${name}'`)
    if (this.down().some(d => d !== i)) throw this.tooFew('rebuild')
    this.states[i] = 'rebuilding'
    this.log(`member '${name}': rebuild from the others`)
    const unit = this.r5 !== null ? this.r5.chunk : RAID35_LOCK_GROUP / (this.r35 as Raid35Layout).data
    const memberBytes = this.r5 !== null ? (this.r5.size / this.r5.data) : (this.r35 as Raid35Layout).size / (this.r35 as Raid35Layout).data
    const per = Math.max(unit, Math.floor(step / unit) * unit)
    try {
      for (let at = 0; at < memberBytes; at += per) {
        const n = Math.min(per, memberBytes - at)
        const keys: number[] = []
        for (let u = Math.floor(at / unit); u < Math.ceil((at + n) / unit); u++) keys.push(u)
        const release = await this.locks.take(keys)
        try {
          const buf = Buffer.allocUnsafe(n)
          await this.reconstructRange(i, at, n, buf)
          await this.members[i].device.write(at, buf)
          this.counters.rebuiltBytes += n
        } finally {
          release()
        }
      }
      this.states[i] = 'up'
      this.log(`member '${name}': rebuilt`)
    } catch (err) {
      this.markDown(i, err)
      throw err
    }
  }

  override status (): DeviceStatus {
    const down = this.down().length
    return {
      ...super.status(),
      state: this.state !== 'online' ? this.state : down > 1 ? 'failed' : down === 1 ? 'degraded' : 'online',
      layout: this.layout,
      ...(this.r5 !== null ? { chunk: this.r5.chunk } : { fragment: (this.r35 as Raid35Layout).fragment }),
      members: this.members.map((m, i) => ({ name: m.name, role: this.roleOf(i), memberState: this.states[i], ...m.device.status() })),
    }
  }

  private roleOf (i: number): string {
    if (this.r35 !== null) return i === this.r35.parity ? 'parity' : 'data'
    return 'data+parity'
  }
}
