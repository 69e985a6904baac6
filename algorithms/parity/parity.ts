// parity: single-parity arrays (raid35, raid5; the arithmetic is in ./layout.ts) that survive the loss of any one
// member. The machinery is the mirror's (../redundant: legs and their states, the write-intent map, the region gate,
// health probes, resync, the pacer); this file is what parity changes about them: the I/O paths, how a region is
// rebuilt (reconstructed from the other members, not copied from a twin), and what a crash leaves to mend.
//
// - Regions are ranges of member offsets: region r is bytes [r × region, (r + 1) × region) of every member, which is
//   one contiguous range of the array in both layouts. A member "holds" a region when it is present and not stale
//   there; at most one member may miss a region, and its bytes there are the XOR of every other member's.
// - Reads go to the member holding the bytes; the bytes of a member that misses them are reconstructed, under the
//   stripe's lock so data and parity agree.
// - raid35 writes whole blocks: fragments and their XOR go to every member at once, no read; a write that is not
//   whole blocks is widened to them (read, merge, write), the only read before write.
// - raid5 writes a stripe at a time under its lock: a full stripe's parity comes from the new data alone, a partial
//   one reads the old data and old parity (read-modify-write) or the rest of the stripe (reconstruct-write), whichever
//   reads less and whichever the members that hold the region allow.
// - The write hole: every write marks its regions in the persistent intent map before any member is written. After a
//   crash, a region marked on every member that was in sync may hold new data beside old parity: its parity is
//   recomputed from the data members before the array serves. A crash while a member was missing leaves regions
//   whose data cannot be trusted; the array is refused unless `forceDegradedStart` (md's dirty-degraded rule).

import { randomUUID } from 'node:crypto'
import { Device, type DeviceStatus, type Extent } from '../../node/core/device'
import { DstError, Errno, ErrorCode } from '../../node/core/errors'
import { realClock, type Clock, type TimerHandle } from '../../node/core/clock'
import { settleAll } from '../../node/core/settle'
import { xorInto } from '../../node/core/xor'
import { firstData } from '../blank'
import type { IntentStore } from '../intent-store'
import type { Member } from '../linear'
import type { ArrayConfig, ArrayContext } from '../redundant/context'
import { Leg, type LegHooks, type LegState } from '../redundant/leg'
import { LegSet } from '../redundant/leg-set'
import { RegionGate } from '../redundant/region-gate'
import { IntentMap, fillBits, getBit } from '../redundant/intent-map'
import { authorities, reconcile } from '../redundant/reconcile'
import { Health, deviceError, usable } from '../redundant/health'
import { Resync } from '../redundant/resync'
import { KeyedLock } from '../redundant/keyed-lock'
import { admitNew, replaceForeign } from '../redundant/admit'
import type { VerifyOptions, VerifyReport } from '../redundant/verify'
import { Raid35Layout, Raid5Layout, raid35Problem, raid5Problem, type ParityLayoutName, type StripeWrite } from './layout'
import { Scrub } from './scrub'

export type { ParityLayoutName } from './layout'

export interface ParityOptions {
  name: string
  members: Member[]
  layout: ParityLayoutName
  /** raid5: bytes of one chunk (default 64 KiB). */
  chunk?: number
  /** raid35: the array's block, split into one fragment per data member (default 4 KiB, or data members × their block size if larger). */
  blockSize?: number
  /** Bytes of each member per region of the write-intent map (a power of two; raid5: a multiple of the chunk). */
  region: number
  store: IntentStore
  /** Most bytes per second a rebuild writes; 0 for no limit. */
  resyncRate?: number
  /** Milliseconds a region must stay quiet before its intent bits are cleared. */
  clearDelay?: number
  /** Milliseconds between checks whether a failed member is back. */
  probeInterval?: number
  /** Start rebuilds by themselves (tests turn this off to step them). */
  autoResync?: boolean
  /** Start an array that crashed while degraded, taking the members present as right (data there may be lost). */
  forceDegradedStart?: boolean
  /** A new array: the members already agree (parity holds); nothing is computed. */
  assumeClean?: boolean
  /** A new array whose members hold data: parity is computed from the data members over the whole array. */
  initialSync?: boolean
  /** XOR of large buffers (node/core/xor.ts's engine); default: on the calling thread. */
  xor?: (dest: Uint8Array, sources: readonly Uint8Array[]) => Promise<void>
  log?: (message: string) => void
  clock?: Clock
}

/** raid35 writes and degraded reads lock groups of this many array bytes (whole blocks). */
const RAID35_LOCK_GROUP = 64 * 1024
/** Buffers larger than this are in shared memory, so the XOR can run on the worker threads without a copy. */
const SHARED_FROM = 64 * 1024

function scratch (n: number): Buffer {
  return n > SHARED_FROM ? Buffer.from(new SharedArrayBuffer(n)) : Buffer.allocUnsafe(n)
}

/** Why a parity array's region cannot be used with these members and this layout, or null. */
export function parityRegionProblem (region: number, unit: number): string | null {
  if (!Number.isInteger(region) || region <= 0 || (region & (region - 1)) !== 0) return `region ${region} is not a power of two`
  if (region % unit !== 0) return `region ${region} is not a multiple of ${unit} bytes (the layout's unit on each member)`
  return null
}

/** A member failed a read before write: the write is planned again without it. */
class MemberLost extends DstError {
  constructor (member: string, cause: unknown) {
    super(ErrorCode.EIO, `member '${member}' failed a read before write: ${(cause as Error)?.message ?? String(cause)}`)
  }
}

export class ParityDevice extends Device {
  readonly type = 'parity'
  readonly name: string
  readonly layout: ParityLayoutName
  readonly members: Member[]
  /** Bytes of each member per region, regions in all, and bytes of each member the array uses. */
  readonly region: number
  readonly regions: number
  readonly memberBytes: number
  readonly legs: LegSet
  readonly gate = new RegionGate()
  readonly intent: IntentMap
  readonly config: ArrayConfig
  /** Bytes read before writing (raid5 read-modify-write and reconstruct-write; raid35 widened sub-block writes). */
  readonly counters = { preReadBytes: 0, preReads: 0, fullStripeWrites: 0, reconstructedReads: 0, rebuiltBytes: 0, recomputedRegions: 0 }
  stopping = false
  private readonly r35: Raid35Layout | null
  private readonly r5: Raid5Layout | null
  private readonly locks = new KeyedLock()
  private readonly xor: (dest: Uint8Array, sources: readonly Uint8Array[]) => Promise<void>
  private readonly ctx: ArrayContext
  private readonly health: Health
  private readonly resyncs: Resync
  private readonly scrub: Scrub
  private timers: TimerHandle[] = []
  /** A new array's parity being computed in the background (initialSync). */
  private initial: Promise<void> | null = null

  private constructor (options: ParityOptions, config: ArrayConfig, shape: Shape, legs: LegSet, intent: (p: ParityDevice) => IntentMap) {
    const { members } = options
    super({
      size: shape.size,
      blockSize: shape.blockSize,
      readOnly: !members.every(m => m.device.writable),
      canFlush: members.some(m => m.device.canFlush),
      // A trim would leave parity undefined where members zero (or not) as they like: not offered.
      canTrim: false,
    })
    this.name = options.name
    this.layout = options.layout
    this.members = members
    this.region = options.region
    this.memberBytes = shape.memberBytes
    this.regions = Math.ceil(shape.memberBytes / options.region)
    this.config = config
    this.r35 = shape.r35
    this.r5 = shape.r5
    this.legs = legs
    this.xor = options.xor ?? ((dest, sources) => { xorInto(dest, sources); return Promise.resolve() })
    this.intent = intent(this)
    this.identity = this.intent.superblock.uuid
    // The parts see the array in member offsets: a region is `region` bytes of each member.
    const self = this
    this.ctx = {
      name: options.name,
      size: shape.memberBytes,
      region: options.region,
      regions: this.regions,
      blockSize: Math.max(...members.map(m => m.device.blockSize)),
      legs,
      gate: this.gate,
      intent: this.intent,
      config,
      get stopping () { return self.stopping },
    }
    this.health = new Health(this.ctx, l => this.resyncs.start(l))
    this.resyncs = new Resync(this.ctx, this.fail, this.rebuildRegion)
    this.scrub = new Scrub(this.scrubContext)
  }

  /** The layout's shape for these members, or a config error saying which rule they break. */
  static shape (options: Pick<ParityOptions, 'name' | 'members' | 'layout' | 'chunk' | 'blockSize'>): Shape {
    const { members, layout } = options
    const blockSizes = members.map(m => m.device.blockSize)
    const smallest = Math.min(...members.map(m => m.device.size))
    const names = members.map(m => m.name)
    const twice = names.find((n, i) => names.indexOf(n) !== i)
    if (twice !== undefined) throw new DstError(ErrorCode.CONFIG, `parity '${options.name}': member '${twice}' is named twice`, Errno.EINVAL)
    if (layout === 'raid35') {
      // Default: 4 KiB, or one member block per data member if that is larger (fragments whole member blocks).
      const block = options.blockSize ?? Math.max(4096, (members.length - 1) * Math.max(...blockSizes))
      const problem = raid35Problem(members.length, block, blockSizes)
      const odd = members.find(m => (block / (members.length - 1)) % m.device.blockSize !== 0)
      if (problem !== null) throw new DstError(ErrorCode.CONFIG, `parity '${options.name}': ${problem}${/block size \d+$/.test(problem) && odd !== undefined ? ` (member '${odd.name}')` : ''}`, Errno.EINVAL)
      const r35 = new Raid35Layout(members.length, block, smallest)
      return { size: r35.size, blockSize: block, memberBytes: r35.size / r35.data, unit: r35.fragment, r35, r5: null }
    }
    if (layout !== 'raid5') throw new DstError(ErrorCode.CONFIG, `parity '${options.name}': unknown layout ${JSON.stringify(layout)} (raid35 or raid5)`, Errno.EINVAL)
    const chunk = options.chunk ?? 64 * 1024
    const problem = raid5Problem(members.length, chunk, blockSizes)
    const odd = members.find(m => chunk % m.device.blockSize !== 0)
    if (problem !== null) throw new DstError(ErrorCode.CONFIG, `parity '${options.name}': ${problem}${/block size \d+$/.test(problem) && odd !== undefined ? ` (member '${odd.name}')` : ''}`, Errno.EINVAL)
    const r5 = new Raid5Layout(members.length, chunk, smallest)
    return { size: r5.size, blockSize: Math.max(...blockSizes), memberBytes: r5.size / r5.data, unit: chunk, r35: null, r5 }
  }

  static async open (options: ParityOptions): Promise<ParityDevice> {
    const shape = ParityDevice.shape(options)
    const { members, region, store } = options
    const config: ArrayConfig = {
      resyncRate: options.resyncRate ?? 0,
      clearDelay: options.clearDelay ?? 5000,
      probeInterval: options.probeInterval ?? 1000,
      autoResync: options.autoResync !== false,
      compare: false,
      log: options.log ?? (() => {}),
      clock: options.clock ?? realClock,
    }
    const log = config.log
    const what = `parity '${options.name}'`
    const problem = parityRegionProblem(region, shape.unit)
    if (problem !== null) throw new DstError(ErrorCode.CONFIG, `${what}: ${problem}`, Errno.EINVAL)
    if (shape.memberBytes === 0) throw new DstError(ErrorCode.CONFIG, `${what}: the smallest member holds less than one ${shape.r5 !== null ? 'chunk' : 'fragment'}`, Errno.EINVAL)
    if (options.assumeClean === true && options.initialSync === true) throw new DstError(ErrorCode.CONFIG, `${what}: give assumeClean or initialSync, not both`, Errno.EINVAL)
    const regions = Math.ceil(shape.memberBytes / region)
    const loaded = await store.load()
    // A parity layout is its members' order: a member found at another position than the superblock says would read
    // another member's fragments or chunks. Refused, naming both orders, before anything is read or written.
    const saved = loaded?.superblock.legs ?? []
    const moved = members.map((m, i) => ({ m, i, j: m.device.identity === '' ? -1 : saved.findIndex(l => l.identity === m.device.identity) }))
      .filter(x => x.j >= 0 && x.j !== x.i)
    if (moved.length > 0 && loaded?.superblock.region === region && loaded?.superblock.size === shape.memberBytes) {
      throw new DstError(ErrorCode.CONFIG, `${what}: members are in another order than when the array was made (${moved.map(x => `'${x.m.name}' was member ${x.j + 1}, now ${x.i + 1}`).join('; ')}): a parity layout depends on the order; list them as before (${saved.map(l => l.name).join(', ')})`, Errno.EINVAL)
    }
    const plan = reconcile(loaded, members.map(m => ({ name: m.name, identity: m.device.identity })), region, shape.memberBytes)
    let array: ParityDevice | null = null
    const hooks: LegHooks = { log, event: () => { array?.intent.event() } }
    const legs = members.map((m, i) => {
      const p = plan.legs[i]
      const leg = new Leg(m.name, m.device, regions, p.bits, p.record, config.probeInterval, hooks)
      if (!usable(m.device)) {
        leg.initial(m.device.state === 'foreign' ? 'foreign' : 'failed')
        leg.lastError = deviceError(m.device)
      }
      return leg
    })
    /** Regions whose parity must be computed from the data members before they are redundant again. */
    const recompute = new Set<number>()
    if (plan.kind === 'known') {
      ParityDevice.afterCrash(what, options, shape, plan.legs.map(p => p.newToArray), legs, regions, recompute, log)
      for (const [i, leg] of legs.entries()) {
        if (!plan.legs[i].newToArray) continue
        leg.full = true
        leg.newDisk = true
        if (leg.absent) log(`member '${leg.name}' is new to the array and not reachable: it is checked for data when it answers`)
        else await admitNew(leg, shape.memberBytes, config)
      }
    } else if (plan.kind === 'kept') {
      log(`region changed (was ${loaded?.superblock.region ?? 0}); every member was in sync with nothing marked: kept in sync`)
    } else {
      if (loaded !== null) log(`region or size changed (was ${loaded.superblock.region}/${loaded.superblock.size}), or no member is known to the array: it is set up as a new array`)
      if (await ParityDevice.decideNew(what, options, config, legs, shape.memberBytes)) {
        for (let r = 0; r < regions; r++) recompute.add(r)
        for (const l of legs) fillBits(l.bits, regions)
      }
    }
    const authority = authorities(legs.map(l => ({ absent: l.absent, inSync: l.record.inSync })))
    for (const [i, l] of legs.entries()) {
      l.authority = authority[i]
      l.countStale()
      if (l.staleCount > 0 && l.state === 'in-sync') l.initial('stale')
    }
    const superblock = { uuid: plan.uuid ?? randomUUID(), size: shape.memberBytes, region, events: plan.events + 1, legs: [] }
    const set = new LegSet(options.name, legs, 'parity')
    const created = new ParityDevice(options, config, shape, set, p => new IntentMap(options.name, superblock, store, set, p.gate, regions, log))
    for (const r of recompute) created.intent.pinned.add(r)
    await created.intent.initial(plan.layoutChanged)
    array = created
    if (recompute.size > 0 && plan.kind === 'known') {
      // The write hole: parity of the regions being written at the crash, from the data, before anything is served.
      log(`${recompute.size} region(s) were being written when the array stopped: their parity is recomputed from the data members`)
      await created.recover([...recompute], options.forceDegradedStart === true)
    }
    created.start(recompute.size > 0 && plan.kind !== 'known' ? [...recompute] : [])
    return created
  }

  /**
   * What the bits of an array that was running tell: a region marked on every member that was in sync was being
   * written (its parity is recomputed); a region marked on some members only is missing on those (stale, rebuilt
   * later). If a region being written cannot have its parity recomputed (a member holding data there is missing),
   * the array is refused unless `forceDegradedStart`.
   */
  private static afterCrash (what: string, options: ParityOptions, shape: Shape, newToArray: boolean[], legs: Leg[], regions: number,
    recompute: Set<number>, log: (m: string) => void): void {
    const trusted = legs.filter((l, i) => !newToArray[i] && l.record.inSync)
    const dataHolders = shape.r35 !== null ? legs.slice(0, shape.r35.data) : legs
    const untrusted: number[] = []
    for (let r = 0; r < regions; r++) {
      const writing = trusted.length > 0 && trusted.every(l => getBit(l.bits, r))
      for (const [i, l] of legs.entries()) {
        const marked = newToArray[i] || getBit(l.bits, r)
        // A trusted member marked with the others was written with them: it holds the region (new or old bytes).
        if (marked && !(writing && trusted.includes(l))) l.stale[r] = 1
      }
      if (!writing) continue
      const missing = dataHolders.filter(l => l.absent || l.stale[r] !== 0)
      if (missing.length === 0) { recompute.add(r); continue }
      untrusted.push(r)
      // Taken as right by force: the members present keep what they hold; the missing one is rebuilt from them.
      for (const l of legs) if (l.absent) l.stale[r] = 1
    }
    if (shape.r35 !== null) {
      // raid35's parity member missing where data was being written: its rebuild computes parity from the data.
      const p = legs[shape.r35.parity]
      for (const r of recompute) if (p.absent || p.stale[r] !== 0) { p.stale[r] = 1; recompute.delete(r) }
    }
    if (untrusted.length === 0) return
    const missing = legs.filter(l => l.absent || untrusted.some(r => l.stale[r] !== 0)).map(l => `'${l.name}' (${l.absent ? l.lastError || l.state : 'stale'})`)
    const first = untrusted.slice(0, 8).join(', ') + (untrusted.length > 8 ? ', …' : '')
    const detail = `${untrusted.length} region(s) (${first}) were being written when the array stopped while ${missing.join(', ')} ${missing.length === 1 ? 'was' : 'were'} missing: their parity cannot be recomputed, so a lost member's bytes there cannot be trusted`
    if (options.forceDegradedStart !== true) {
      throw new DstError(ErrorCode.DIRTYDEGRADED, `${what}: ${detail}. Start it when every member can be reached, or set "forceDegradedStart": true to take the members present as right (data in those regions may be lost)`, Errno.EIO)
    }
    log(`forceDegradedStart: ${detail}; the members present are taken as right there`)
  }

  /**
   * A new array (no superblock names its members): true if parity must be computed everywhere (initialSync). Members
   * that read as zeros agree already (the XOR of zeros is zero); members that hold data are refused unless told.
   */
  private static async decideNew (what: string, options: ParityOptions, config: ArrayConfig, legs: Leg[], memberBytes: number): Promise<boolean> {
    const how = 'set "initialSync": true to compute parity from the data members over the whole array (overwriting the parity on every member), or "assumeClean": true if parity already holds'
    if (options.assumeClean === true) {
      config.log('new array: assumeClean: parity is taken as holding; nothing is computed')
      return false
    }
    const away = legs.filter(l => l.absent)
    if (options.initialSync === true) {
      if (away.length > 0) throw new DstError(ErrorCode.NEWPARITY, `${what}: new array: ${away.map(l => `'${l.name}' (${l.lastError})`).join(', ')} cannot be reached; parity cannot be computed without every member`, Errno.EIO)
      config.log('new array: initialSync: parity is computed from the data members in the background')
      return true
    }
    if (away.length > 0) {
      throw new DstError(ErrorCode.NEWPARITY, `${what}: new array: ${away.map(l => `'${l.name}' (${l.lastError})`).join(', ')} cannot be reached, so nobody can tell whether it holds data; start when it can be reached, or ${how}`, Errno.EIO)
    }
    const holding: string[] = []
    for (const l of legs) {
      const at = await firstData(l.device, memberBytes, config.clock)
      if (at >= 0) holding.push(`'${l.name}' (data at byte ${at})`)
    }
    if (holding.length > 0) {
      throw new DstError(ErrorCode.NEWPARITY, `${what}: new array: ${holding.join(', ')} ${holding.length === 1 ? 'holds' : 'hold'} data and no superblock says parity holds; refusing to overwrite. To choose, ${how}`, Errno.EINVAL)
    }
    config.log(`new array: every member holds only zeros: parity holds, nothing to compute`)
    return false
  }

  // ---- state -----------------------------------------------------------------------------------------------------

  /** Bytes rebuilds have written since start. */
  get resyncedBytes (): number { return this.resyncs.copiedBytes }
  get comparedBytes (): number { return 0 }
  /** Bytes rebuilds did not write because every other member holds a hole there (the member was trimmed instead). */
  skippedBytes = 0
  get lastVerify (): VerifyReport | null { return this.scrub.last }
  get verifyTotals (): { runs: number, bytes: number, mismatches: number, repaired: number } { return this.scrub.totals }
  get legNames (): string[] { return this.legs.names }

  legStates (): Array<{ name: string, state: LegState, dirtyBytes: number }> {
    return this.legs.all.map(l => ({ name: l.name, state: l.state, dirtyBytes: l.staleBytes(this.region, this.memberBytes) }))
  }

  /** Members that miss some region (failed, foreign, or stale somewhere). */
  private arrayState (): 'online' | 'degraded' | 'failed' {
    let absent = 0
    let stale = 0
    for (const l of this.legs.all) { if (l.absent) absent++; else if (l.state !== 'in-sync') stale++ }
    if (absent > 1) return 'failed'
    return absent + stale > 0 ? 'degraded' : 'online'
  }

  override status (): DeviceStatus {
    return {
      ...super.status(),
      state: this.state === 'closed' || this.state === 'closing' ? this.state : this.arrayState(),
      layout: this.layout,
      ...(this.r5 !== null ? { chunk: this.r5.chunk } : { fragment: (this.r35 as Raid35Layout).fragment }),
      uuid: this.intent.superblock.uuid,
      region: this.region,
      events: this.intent.events,
      resyncedBytes: this.resyncedBytes,
      resyncSkippedBytes: this.skippedBytes,
      counters: { ...this.counters },
      ...(this.intent.pinned.size > 0 ? { parityPendingRegions: this.intent.pinned.size } : {}),
      ...(this.lastVerify !== null ? { verify: this.scrub.summary() } : {}),
      members: this.legs.all.map((l, i) => ({
        name: l.name,
        role: this.roleOf(i),
        ...l.device.status(),
        deviceState: l.device.state,
        state: l.state,
        dirtyBytes: l.staleBytes(this.region, this.memberBytes),
        ...(l.resync !== null ? { resync: { ...l.resync } } : {}),
        ...(l.lastError !== '' ? { lastError: l.lastError } : {}),
      })),
    }
  }

  private roleOf (i: number): string {
    if (this.r35 !== null) return i === this.r35.parity ? 'parity' : 'data'
    return 'data+parity'
  }

  // ---- who holds what ----------------------------------------------------------------------------------------------

  private regionOf (memberOffset: number): number {
    return Math.floor(memberOffset / this.region)
  }

  /** Member i holds member bytes [at, at + length): present, and not stale in any of their regions. */
  private holds (i: number, at: number, length: number): boolean {
    const l = this.legs.all[i]
    if (l.absent) return false
    // A member whose device cannot take I/O now (reconnecting, another disk) is out at once: the writes it misses are
    // marked, and it comes back through the probe with a rebuild of only those regions.
    if (!usable(l.device)) { this.fail(l, new DstError(ErrorCode.DISCONNECTED, deviceError(l.device), Errno.EIO)); return false }
    return l.holds(this.regionOf(at), this.regionOf(at + length - 1))
  }

  /** Members that miss member bytes [at, at + length). */
  private missing (at: number, length: number): number[] {
    const out: number[] = []
    for (let i = 0; i < this.legs.length; i++) if (!this.holds(i, at, length)) out.push(i)
    return out
  }

  private tooFew (what: string, at: number, length: number): DstError {
    const gone = this.missing(at, length).map(i => this.legs.all[i]).map(l => `${l.name} ${l.state}${l.lastError !== '' ? ` (${l.lastError})` : ''}`)
    return new DstError(ErrorCode.NOLEG, `parity '${this.name}': ${what}: members ${gone.join('; ')} miss these bytes; single parity survives one`, Errno.EIO)
  }

  private readonly fail = (l: Leg, err: unknown): void => { this.health.fail(l, err) }

  /**
   * Member i failed a request over member bytes [at, at + length): out of I/O from now on; a failed write also leaves
   * those regions stale on it (a failed read says nothing about what the member holds).
   */
  private memberFailed (i: number, at: number, length: number, err: unknown, write = false): void {
    const l = this.legs.all[i]
    this.fail(l, err)
    if (write) l.markStale(this.regionOf(at), this.regionOf(at + length - 1))
  }

  /** Member bytes [at, at + length) of the array's request [offset, offset + length). */
  private memberSpan (offset: number, length: number): { at: number, length: number } {
    if (this.r35 !== null) {
      const { first, count } = this.r35.widen(offset, length)
      return this.r35.memberRange(first, count)
    }
    const l = this.r5 as Raid5Layout
    const s0 = Math.floor(offset / l.stripeBytes)
    const s1 = Math.floor((offset + length - 1) / l.stripeBytes)
    return { at: s0 * l.chunk, length: (s1 - s0 + 1) * l.chunk }
  }

  // ---- reads -----------------------------------------------------------------------------------------------------

  protected override async _read (offset: number, length: number, into: Uint8Array): Promise<void> {
    await this.gate.enter()
    try {
      if (this.r5 !== null) return await this.read5(this.r5, offset, length, into)
      return await this.read35(this.r35 as Raid35Layout, offset, length, into)
    } finally {
      this.gate.exit()
    }
  }

  private async read5 (l: Raid5Layout, offset: number, length: number, into: Uint8Array): Promise<void> {
    await settleAll(l.readPieces(offset, length).map(async p => {
      const dest = into.subarray(p.done, p.done + p.length)
      if (this.holds(p.member, p.at, p.length)) {
        try {
          await this.members[p.member].device.read(p.at, p.length, dest)
          return
        } catch (err) {
          this.memberFailed(p.member, p.at, p.length, err)
        }
      }
      const release = await this.locks.take([Math.floor(p.at / l.chunk)])
      try {
        await this.reconstructRange(p.member, p.at, p.length, dest)
      } finally {
        release()
      }
    }))
  }

  /** dest = XOR of member bytes [at, at + length) on every member but `lost` (the caller holds the lock). */
  private async reconstructRange (lost: number, at: number, length: number, dest: Uint8Array): Promise<void> {
    const r0 = this.regionOf(at)
    const r1 = this.regionOf(at + length - 1)
    for (let r = r0; r <= r1; r++) {
      if (this.intent.pinned.has(r)) throw new DstError(ErrorCode.NOLEG, `parity '${this.name}': member '${this.legs.all[lost].name}' misses region ${r}, whose parity is not yet computed`, Errno.EIO)
    }
    const others: number[] = []
    for (let i = 0; i < this.legs.length; i++) if (i !== lost) others.push(i)
    if (others.some(i => !this.holds(i, at, length))) throw this.tooFew('reconstruct', at, length)
    const bufs = others.map(() => scratch(length))
    await settleAll(others.map(async (i, k) => {
      try {
        await this.members[i].device.read(at, length, bufs[k])
      } catch (err) {
        this.memberFailed(i, at, length, err)
        throw this.tooFew('reconstruct', at, length)
      }
    }))
    this.counters.reconstructedReads++
    await this.xor(dest, bufs)
  }

  private async read35 (l: Raid35Layout, offset: number, length: number, into: Uint8Array): Promise<void> {
    const { first, count } = l.widen(offset, length)
    if (count <= 2 && length < l.blockSize * 2) {
      // A small read asks only the members whose fragments it touches, when they all hold them.
      const pieces = l.fragmentPieces(offset, length)
      if (pieces.every(p => this.holds(p.member, p.at, p.length))) {
        const done = await Promise.allSettled(pieces.map(p => this.members[p.member].device.read(p.at, p.length, into.subarray(p.done, p.done + p.length))))
        if (done.every(d => d.status === 'fulfilled')) return
        // A member failed: out of I/O, and the read is made again whole-block, reconstructing what it holds.
        done.forEach((d, k) => { if (d.status === 'rejected') this.memberFailed(pieces[k].member, pieces[k].at, pieces[k].length, d.reason) })
      }
    }
    const aligned = offset === first * l.blockSize && length === count * l.blockSize
    const blocks = aligned ? into.subarray(0, length) : scratch(count * l.blockSize)
    const { at, length: n } = l.memberRange(first, count)
    const degraded = this.missing(at, n).length > 0
    const release = degraded ? await this.locks.take(this.groups35(l, first, count)) : null
    try {
      await this.readBlocks35(l, first, count, blocks)
    } finally {
      release?.()
    }
    if (!aligned) into.set(blocks.subarray(offset - first * l.blockSize, offset - first * l.blockSize + length))
  }

  /** Whole blocks [first, first + count) into `blocks`, reconstructing a data member that misses them. */
  private async readBlocks35 (l: Raid35Layout, first: number, count: number, blocks: Uint8Array): Promise<void> {
    const { at, length } = l.memberRange(first, count)
    const parts = Array.from({ length: l.data }, () => scratch(length))
    let lost = -1
    await settleAll(parts.map(async (buf, i) => {
      if (this.holds(i, at, length)) {
        try {
          await this.members[i].device.read(at, length, buf)
          return
        } catch (err) {
          this.memberFailed(i, at, length, err)
        }
      }
      if (lost !== -1 && lost !== i) throw this.tooFew('read', at, length)
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

  /**
   * Holes where every member has a hole over the same member bytes (zero fragments or chunks have zero parity, so
   * the array reads zeros there), in whole blocks (raid35) or stripes (raid5); data everywhere else. While a member
   * misses part of the range its holes say nothing: all data.
   */
  protected override async _extents (offset: number, length: number): Promise<Extent[]> {
    const unitM = this.r35 !== null ? this.r35.fragment : (this.r5 as Raid5Layout).chunk
    const unitA = this.r35 !== null ? this.r35.blockSize : (this.r5 as Raid5Layout).stripeBytes
    const u0 = Math.floor(offset / unitA)
    const u1 = Math.ceil((offset + length) / unitA)
    const at = u0 * unitM
    const n = (u1 - u0) * unitM
    const all: Extent[] = [{ offset, length, hole: false }]
    if (this.missing(at, n).length > 0) return all
    await this.gate.enter()
    let answers: Array<PromiseSettledResult<Extent[]>>
    try {
      answers = await Promise.allSettled(this.members.map(m => m.device.extents(at, n)))
    } finally {
      this.gate.exit()
    }
    // A member that cannot answer is out (as a failed read makes it); without its holes, all is data.
    answers.forEach((a, i) => { if (a.status === 'rejected') this.memberFailed(i, at, n, a.reason) })
    if (answers.some(a => a.status === 'rejected')) return all
    const lists = answers.map(a => (a as PromiseFulfilledResult<Extent[]>).value)
    // Holes common to every member, rounded inward to whole units, mapped to the array and clipped to the range.
    let common: Array<[number, number]> = [[at, at + n]]
    for (const list of lists) common = intersect(common, list.filter(e => e.hole).map(e => [e.offset, e.offset + e.length]))
    const out: Extent[] = []
    let pos = offset
    const end = offset + length
    for (const [a, b] of common) {
      const ha = Math.max(offset, Math.ceil(a / unitM) * unitA)
      const hb = Math.min(end, Math.floor(b / unitM) * unitA)
      if (hb <= ha) continue
      if (ha > pos) out.push({ offset: pos, length: ha - pos, hole: false })
      out.push({ offset: ha, length: hb - ha, hole: true })
      pos = hb
    }
    if (pos < end) out.push({ offset: pos, length: end - pos, hole: false })
    // Adjacent runs of one kind are one run.
    const merged: Extent[] = []
    for (const e of out) {
      const last = merged[merged.length - 1]
      if (last !== undefined && last.hole === e.hole) last.length += e.length; else merged.push({ ...e })
    }
    return merged
  }

  // ---- writes ----------------------------------------------------------------------------------------------------

  protected override async _write (offset: number, data: Uint8Array): Promise<void> {
    const span = this.memberSpan(offset, data.byteLength)
    const r0 = this.regionOf(span.at)
    const r1 = this.regionOf(span.at + span.length - 1)
    await this.gate.enter(r0, r1)
    try {
      // Refused before any member is touched when two miss the range: written, it could never be read back.
      if (this.missing(span.at, span.length).length > 1) throw this.tooFew(`write ${offset}+${data.byteLength}`, span.at, span.length)
      if (this.intent.markIntent(r0, r1)) await this.intent.save()
      for (const i of this.missing(span.at, span.length)) this.legs.all[i].markStale(r0, r1)
      let failures = 0
      const before = this.failuresSeen
      if (this.r5 !== null) {
        const l = this.r5
        await settleAll(l.writePlan(offset, data.byteLength).map(w => this.writeStripe5(l, w, data)))
      } else {
        await this.write35(this.r35 as Raid35Layout, offset, data)
      }
      failures = this.failuresSeen - before
      // A member failed under this write: its being out of sync is on disk before the write is acknowledged, or a
      // restart could take its old bytes as right.
      if (failures > 0) await this.intent.save()
      else {
        const barrier = this.intent.failureBarrier()
        if (barrier !== null) await barrier
      }
    } finally {
      this.gate.leaveRegions(r0, r1)
      this.gate.exit()
    }
  }

  /** Member failures seen by writes (a write compares before and after to know it must save). */
  private failuresSeen = 0

  private async write35 (l: Raid35Layout, offset: number, data: Uint8Array): Promise<void> {
    const { first, count } = l.widen(offset, data.byteLength)
    const release = await this.locks.take(this.groups35(l, first, count))
    try {
      let blocks: Uint8Array = data
      if (offset !== first * l.blockSize || data.byteLength !== count * l.blockSize) {
        // The one read before write raid35 does: the blocks a sub-block write lands in, merged with the new bytes.
        blocks = scratch(count * l.blockSize)
        this.counters.preReads++
        this.counters.preReadBytes += count * l.blockSize
        await this.readBlocks35(l, first, count, blocks)
        blocks.set(data, offset - first * l.blockSize)
      }
      const { at, length } = l.memberRange(first, count)
      const parts = Array.from({ length: l.members }, () => scratch(length))
      l.scatter(blocks, parts.slice(0, l.data))
      await this.xor(parts[l.parity], parts.slice(0, l.data))
      await this.writeMembers(parts.map((buf, i) => ({ member: i, at, buf })))
    } finally {
      release()
    }
  }

  private async writeStripe5 (l: Raid5Layout, w: StripeWrite, data: Uint8Array): Promise<void> {
    // A member that fails a read before write is out from then on: the stripe is planned again without it.
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.writeStripe5Once(l, w, data)
      } catch (err) {
        if (!(err instanceof MemberLost) || attempt >= this.members.length) throw err
      }
    }
  }

  private async writeStripe5Once (l: Raid5Layout, w: StripeWrite, data: Uint8Array): Promise<void> {
    const release = await this.locks.take([w.stripe])
    try {
      const base = w.stripe * l.chunk
      const lost = this.missing(base, l.chunk)
      if (lost.length > 1) throw this.tooFew('write', base, l.chunk)
      const gone = lost[0] ?? -1
      const width = w.hi - w.lo
      const parity = scratch(width)
      const news = w.pieces.map(p => ({ member: p.member, at: p.at, buf: data.subarray(p.done, p.done + p.length) }))
      if (gone === w.parityMember) {
        // Parity comes back with the member's rebuild (its region marked missing); the data alone is written.
        this.legs.all[gone].markStale(this.regionOf(w.base), this.regionOf(w.base))
        await this.writeMembers(news)
        return
      }
      const newOf = (k: number): Uint8Array => data.subarray(w.pieces[k].done, w.pieces[k].done + w.pieces[k].length)
      if (w.mode === 'full') {
        this.counters.fullStripeWrites++
        await this.xor(parity, w.pieces.map((_, k) => newOf(k)))
      } else if (gone === -1) {
        if (w.mode === 'rmw') await this.rmw5(w, data, parity); else await this.rcw5(l, w, data, parity)
      } else if (!w.pieces.some(p => p.member === gone)) {
        // The missing member is not written: old data under the pieces and old parity are all readable.
        await this.rmw5(w, data, parity)
      } else {
        // The missing member is written: its old bytes in [lo, hi) are the XOR of everyone else's old bytes there.
        const others = this.members.map((_, i) => i).filter(i => i !== gone)
        const olds = new Map(others.map(i => [i, scratch(width)]))
        await settleAll(others.map(i => this.preRead(i, w.base + w.lo, width, olds.get(i) as Buffer)))
        const goneOld = scratch(width)
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
    const olds = w.pieces.map(p => scratch(p.length))
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
    const chunks = Array.from({ length: l.data }, (_, j) => ({ member: l.memberOf(w.stripe, j), buf: scratch(width) }))
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
    if (!this.holds(member, at, length)) throw new MemberLost(this.members[member].name, new Error('it misses these bytes'))
    this.counters.preReads++
    this.counters.preReadBytes += length
    try {
      await this.members[member].device.read(at, length, into)
    } catch (err) {
      this.memberFailed(member, at, length, err)
      this.failuresSeen++
      throw new MemberLost(this.members[member].name, err)
    }
  }

  /**
   * Writes every piece to its member at once; a member that misses the range is skipped (its bytes are implied by
   * the others, and it stays stale there). Succeeds while at most one member misses the range.
   */
  private async writeMembers (writes: Array<{ member: number, at: number, buf: Uint8Array }>): Promise<void> {
    await Promise.all(writes.map(async w => {
      if (!this.holds(w.member, w.at, w.buf.byteLength)) {
        this.legs.all[w.member].markStale(this.regionOf(w.at), this.regionOf(w.at + w.buf.byteLength - 1))
        return
      }
      try {
        await this.members[w.member].device.write(w.at, w.buf)
      } catch (err) {
        this.memberFailed(w.member, w.at, w.buf.byteLength, err, true)
        this.failuresSeen++
      }
    }))
    for (const w of writes) {
      if (this.missing(w.at, w.buf.byteLength).length > 1) throw this.tooFew('write', w.at, w.buf.byteLength)
    }
  }

  protected override async _flush (): Promise<void> {
    await this.gate.enter()
    try {
      // A member whose device cannot take I/O now (reconnecting) is out, as for any request: flush is not held by it.
      const targets = this.legs.present().filter(l => {
        if (usable(l.device)) return true
        this.fail(l, new DstError(ErrorCode.DISCONNECTED, deviceError(l.device), Errno.EIO))
        return false
      })
      const done = await Promise.allSettled(targets.map(l => l.device.flush()))
      done.forEach((d, i) => { if (d.status === 'rejected') this.fail(targets[i], d.reason) })
      if (this.legs.all.filter(l => l.absent).length > 1) throw this.tooFew('flush', 0, this.memberBytes)
    } finally {
      this.gate.exit()
    }
  }

  // ---- rebuild, recompute, verify ----------------------------------------------------------------------------------

  /**
   * The resync engine's copier for parity: member `l`'s bytes of region `r` are the XOR of every other member's
   * there. The engine holds the region locked against writes. Null (the rebuild pauses, the probe restarts it) when
   * another member misses the region too.
   */
  private readonly rebuildRegion = async (l: Leg, r: number, at: number, n: number, buf: Buffer): Promise<number | null> => {
    const view = buf.subarray(0, n)
    const others = this.legs.all.filter(o => o !== l)
    const short = others.find(o => !this.holds(o.index, at, n))
    if (short !== undefined || this.intent.pinned.has(r)) {
      l.lastError = short !== undefined ? `region ${r}: member '${short.name}' misses it too; nothing to rebuild it from` : `region ${r}: its parity is not yet computed`
      l.pausedAt = this.intent.events
      this.config.log(`member '${l.name}': rebuild paused: ${l.lastError}`)
      return null
    }
    // Every other member holds a hole over the region: its bytes are zeros. A member that can zero without writing
    // (punch, ZERO_RANGE) is zeroed there, so nothing is read or written.
    if (l.device.canZeroFast) {
      const holes = await Promise.all(others.map(o => o.device.extents(at, n).then(x => x.length === 1 && x[0].hole, () => false)))
      if (holes.every(h => h)) {
        try {
          await l.device.zero(at, n, true, true)
        } catch (err) {
          this.fail(l, err)
          return null
        }
        this.skippedBytes += n
        if (l.resync !== null) l.resync.skippedBytes += n
        return 0
      }
    }
    try {
      await this.reconstructRange(l.index, at, n, view)
    } catch (err) {
      l.lastError = (err as Error).message
      l.pausedAt = this.intent.events
      return null
    }
    try {
      await l.device.write(at, view)
    } catch (err) {
      this.fail(l, err)
      return null
    }
    this.counters.rebuiltBytes += n
    return n
  }

  /**
   * Recomputes parity over region r from the data members (every member must hold the region's data), with the
   * region locked against writes. raid35: the parity member is the XOR of the data members; raid5: each stripe's
   * parity chunk is the XOR of the stripe's data chunks. Returns the member bytes whose parity changed.
   */
  async recomputeRegion (r: number, locked = false): Promise<number> {
    const at = r * this.region
    const n = Math.min(this.region, this.memberBytes - at)
    if (!locked) await this.gate.lockRegion(r)
    try {
      const holders = this.r35 !== null ? this.legs.all.slice(0, this.r35.data) : this.legs.all
      const short = holders.find(l => !this.holds(l.index, at, n))
      if (short !== undefined) throw new DstError(ErrorCode.NOLEG, `parity '${this.name}': region ${r}: member '${short.name}' (${short.state}) misses its data; parity cannot be computed`, Errno.EIO)
      const bufs = this.legs.all.map(() => scratch(n))
      const reads = this.r35 !== null ? holders.length : this.legs.length
      await settleAll(bufs.slice(0, reads).map(async (b, i) => {
        try {
          await this.members[i].device.read(at, n, b)
        } catch (err) {
          this.memberFailed(i, at, n, err)
          throw err
        }
      }))
      const writes: Array<{ member: number, at: number, buf: Uint8Array }> = []
      let changed = 0
      if (this.r35 !== null) {
        const p = this.r35.parity
        const fresh = scratch(n)
        await this.xor(fresh, bufs.slice(0, this.r35.data))
        changed = fresh.equals(bufs[p]) ? 0 : n
        if (changed > 0 || !this.holds(p, at, n)) writes.push({ member: p, at, buf: fresh })
      } else {
        const l = this.r5 as Raid5Layout
        for (let s = at / l.chunk; s < (at + n) / l.chunk; s++) {
          const p = l.parityOf(s)
          const off = s * l.chunk - at
          const slices = bufs.map(b => b.subarray(off, off + l.chunk))
          const fresh = scratch(l.chunk)
          await this.xor(fresh, slices.filter((_, i) => i !== p))
          if (!fresh.equals(slices[p])) { changed += l.chunk; writes.push({ member: p, at: s * l.chunk, buf: fresh }) }
        }
      }
      await settleAll(writes.map(async w => {
        try {
          await this.members[w.member].device.write(w.at, w.buf)
        } catch (err) {
          this.memberFailed(w.member, w.at, w.buf.byteLength, err, true)
          throw err
        }
      }))
      this.counters.recomputedRegions++
      if (this.intent.pinned.delete(r)) this.gate.touched.add(r)
      return changed
    } finally {
      if (!locked) this.gate.unlockRegion(r)
    }
  }

  /**
   * Open after a crash: the parity of the regions being written is recomputed before anything is served. A member
   * that fails meanwhile leaves those regions untrustworthy, as a crash while degraded does: refused unless forced.
   */
  private async recover (regions: number[], force: boolean): Promise<void> {
    try {
      await this.recomputeAll(regions)
    } catch (err) {
      const left = [...this.intent.pinned]
      const detail = `${left.length} region(s) were being written when the array stopped, and recomputing their parity failed: ${(err as Error).message}`
      if (!force) {
        this.stopping = true
        throw new DstError(ErrorCode.DIRTYDEGRADED, `parity '${this.name}': ${detail}. Start it when every member answers, or set "forceDegradedStart": true to take the members present as right (data in those regions may be lost)`, Errno.EIO)
      }
      this.config.log(`forceDegradedStart: ${detail}; the members present are taken as right there`)
      for (const r of left) {
        this.intent.pinned.delete(r)
        for (const l of this.legs.all) if (l.absent) l.markStale(r, r)
      }
      for (const l of this.legs.all) l.countStale()
    }
  }

  /** Recomputes parity over the regions, a few at a time (open after a crash, and initialSync). */
  private async recomputeAll (regions: number[]): Promise<void> {
    let next = 0
    const worker = async (): Promise<void> => {
      while (next < regions.length && !this.stopping) await this.recomputeRegion(regions[next++])
    }
    await settleAll([worker(), worker(), worker(), worker()])
    this.intent.clearQuiet(true)
    await this.intent.save()
  }

  private start (initialSync: number[]): void {
    const clock = this.config.clock
    this.timers.push(clock.setInterval(() => { if (this.intent.clearQuiet()) this.intent.saveLogged() }, this.config.clearDelay))
    this.timers.push(clock.setInterval(() => this.health.probe(), this.config.probeInterval))
    if (initialSync.length > 0) {
      this.initial = this.recomputeAll(initialSync).then(
        () => this.config.log(`initial sync: parity computed over ${initialSync.length} region(s)`),
        err => this.config.log(`initial sync stopped: ${(err as Error).message}; regions left are redundant only once it completes (restart the node to resume)`))
    }
    this.resyncs.startAll()
  }

  /** Starts (or returns the running) rebuild of a stale member. */
  startResync (l: Leg | string): Promise<void> {
    const leg = typeof l === 'string' ? this.legs.find(l) : l
    if (leg === undefined) return Promise.reject(new DstError(ErrorCode.NOLEG, `parity '${this.name}': no member '${String(l)}'`, Errno.EINVAL))
    return this.resyncs.start(leg)
  }

  /** Waits for a running initial sync (tests, close). */
  async initialSyncDone (): Promise<void> { await this.initial }

  /**
   * Checks that parity equals the XOR of the data members over every region while I/O goes on (md's check); with
   * `repair`, rewrites parity from the data where it does not (md's repair). See ./scrub.ts.
   */
  verify (options: VerifyOptions = {}): Promise<VerifyReport> {
    if (options.from !== undefined) return Promise.reject(new DstError(ErrorCode.USAGE, `parity '${this.name}': a repair rewrites parity from the data members; there is no member to take it "from"`, Errno.EINVAL))
    return this.scrub.start(options)
  }

  /** Parts the scrub uses. */
  private get scrubContext (): ScrubContext {
    return {
      name: this.name,
      layout: this.layout,
      region: this.region,
      regions: this.regions,
      memberBytes: this.memberBytes,
      legs: this.legs,
      gate: this.gate,
      config: this.config,
      stopping: () => this.stopping,
      holds: (i, at, n) => this.holds(i, at, n),
      read: (i, at, n, into) => this.members[i].device.read(at, n, into),
      memberFailed: (i, at, n, err) => this.memberFailed(i, at, n, err),
      recompute: r => this.recomputeRegion(r, true),
      xor: this.xor,
    }
  }

  /**
   * Takes on the disk now behind a foreign member: its identity is recorded and every byte of it is rebuilt from the
   * other members (a full rebuild whose progress is kept in the intent map, so a restart resumes it).
   */
  async replaceLeg (name: string): Promise<string> {
    const leg = this.legs.named(name)
    const detail = await replaceForeign(this.ctx, leg, {
      array: `parity '${this.name}'`, member: 'member', bytes: this.memberBytes, needs: 'each member needs',
      notForeignHint: '', after: 'it is rebuilt from the other members',
    })
    if (this.config.autoResync) this.startResync(leg).catch(() => {})
    return detail
  }

  protected override async _close (): Promise<void> {
    this.stopping = true
    for (const t of this.timers) this.config.clock.clearInterval(t)
    this.timers = []
    await Promise.all(this.legs.all.map(l => l.running?.catch(() => {})))
    await this.initial
    await this.scrub.running
    this.intent.clearQuiet(true)
    await this.intent.save()
    await this.intent.close()
  }
}

/** The intersection of two sorted lists of disjoint [start, end) intervals. */
function intersect (a: Array<[number, number]>, b: Array<[number, number]>): Array<[number, number]> {
  const out: Array<[number, number]> = []
  let i = 0
  let j = 0
  while (i < a.length && j < b.length) {
    const lo = Math.max(a[i][0], b[j][0])
    const hi = Math.min(a[i][1], b[j][1])
    if (lo < hi) out.push([lo, hi])
    if (a[i][1] < b[j][1]) i++; else j++
  }
  return out
}

/** What the layout makes of the members: sizes, the unit a region must be a multiple of, the layout object. */
export interface Shape {
  size: number
  blockSize: number
  memberBytes: number
  unit: number
  r35: Raid35Layout | null
  r5: Raid5Layout | null
}

/** What ./scrub.ts needs of the array. */
export interface ScrubContext {
  name: string
  layout: ParityLayoutName
  region: number
  regions: number
  memberBytes: number
  legs: LegSet
  gate: RegionGate
  config: ArrayConfig
  stopping: () => boolean
  holds: (i: number, at: number, n: number) => boolean
  read: (i: number, at: number, n: number, into: Uint8Array) => Promise<void>
  memberFailed: (i: number, at: number, n: number, err: unknown) => void
  /** Rewrites parity of a region from the data (the caller holds the region's lock); bytes that changed. */
  recompute: (r: number) => Promise<number>
  xor: (dest: Uint8Array, sources: readonly Uint8Array[]) => Promise<void>
}
