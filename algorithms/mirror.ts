// mirror: every leg holds the whole array. Writes go to every present leg and complete when all have answered;
// reads go to the least busy leg that holds the range (large reads are split across legs). A write-intent bit per leg
// and region is made durable before the data write is issued and cleared lazily once the region is quiet, so a leg
// that was away, or a crash, costs a resync of only the regions that may differ. A returning leg is brought up to
// date in the background, region by region, while I/O goes on; a region being copied is locked against writes so
// older data can never overwrite newer.
//
// The machinery is in ./redundant (legs and their states, the leg set and its pickers, the region gate, the intent
// map, reconciliation at open, resync, verify, health probes, the pacer); this file is what makes them a mirror: how
// a new array decides its first sync, and the I/O paths.

import { randomUUID } from 'node:crypto'
import { Device, type DeviceStatus, type Extent } from '../node/core/device'
import { DstError, Errno, ErrorCode } from '../node/core/errors'
import { realClock, type Clock, type TimerHandle } from '../node/core/clock'
import { settleAll } from '../node/core/settle'
import { bitmapBytes, type IntentStore } from './intent-store'
import type { Member } from './linear'
import { firstData } from './blank'
import type { ArrayConfig, ArrayContext } from './redundant/context'
import { Leg, type LegHooks, type LegState } from './redundant/leg'
import { LegSet } from './redundant/leg-set'
import { RegionGate } from './redundant/region-gate'
import { IntentMap, fillBits } from './redundant/intent-map'
import { authorities, reconcile } from './redundant/reconcile'
import { Health, deviceError, usable } from './redundant/health'
import { Resync } from './redundant/resync'
import { Verifier, summary, type VerifyOptions, type VerifyReport } from './redundant/verify'
import { hashTrouble } from './redundant/digests'
import { FanoutPool, type Fanout } from './redundant/fanout'
import { admitNew, replaceForeign } from './redundant/admit'

export type { LegState } from './redundant/leg'
export type { VerifyOptions, VerifyReport, VerifyMismatch } from './redundant/verify'

export interface MirrorOptions {
  name: string
  legs: Member[]
  /** Bytes per region of the write-intent map (a power of two). */
  region: number
  store: IntentStore
  /** Most bytes per second a resync copies; 0 for no limit. */
  resyncRate?: number
  /** Milliseconds a region must stay quiet before its intent bits are cleared. */
  clearDelay?: number
  /** Milliseconds between checks whether a failed leg is back. */
  probeInterval?: number
  /** Start resyncs by themselves (tests turn this off to step them). */
  autoResync?: boolean
  /**
   * Checksum resync (default on): a region is first compared by digests computed where each leg's data lives, and
   * only the chunks that differ are copied. Off: every stale region is copied whole.
   */
  compare?: boolean
  /**
   * A new array's legs are not known to hold the same data. `syncFrom` names the leg the others are overwritten from;
   * `assumeClean` says they already are the same (nothing is copied). Without either, only legs that read as all
   * zeros are overwritten (from the first leg), and the array is refused if another leg holds data. Both apply only
   * when the array is created (no superblock, or its region or size changed).
   */
  syncFrom?: string
  assumeClean?: boolean
  log?: (message: string) => void
  /** Time for probes, pacing and clear passes (tests drive a manual clock). */
  clock?: Clock
}

/** Reads at least this long are split across legs so one reader gets the bandwidth of several. */
const SPLIT_READ = 128 * 1024

/** The options with every default applied, once. */
function configure (options: MirrorOptions): ArrayConfig {
  return {
    resyncRate: options.resyncRate ?? 0,
    clearDelay: options.clearDelay ?? 5000,
    probeInterval: options.probeInterval ?? 1000,
    autoResync: options.autoResync !== false,
    compare: options.compare !== false,
    log: options.log ?? (() => {}),
    clock: options.clock ?? realClock,
  }
}

export class MirrorDevice extends Device implements ArrayContext {
  readonly type = 'mirror'
  readonly name: string
  readonly region: number
  readonly regions: number
  readonly legs: LegSet
  readonly gate = new RegionGate()
  readonly intent: IntentMap
  readonly config: ArrayConfig
  readonly options: MirrorOptions
  stopping = false
  private readonly hooks: LegHooks
  private readonly health: Health
  private readonly resyncs: Resync
  private readonly verifier: Verifier
  private timers: TimerHandle[] = []
  private readonly fanouts: FanoutPool

  private constructor (options: MirrorOptions, config: ArrayConfig, size: number, intent: (m: MirrorDevice) => IntentMap,
    legs: LegSet, hooks: LegHooks) {
    super({
      size,
      blockSize: Math.max(...options.legs.map(m => m.device.blockSize)),
      readOnly: !options.legs.every(m => m.device.writable),
      canFlush: options.legs.some(m => m.device.canFlush),
      canTrim: options.legs.every(m => m.device.canTrim),
    })
    this.name = options.name
    this.region = options.region
    this.regions = Math.ceil(size / options.region)
    this.options = options
    this.config = config
    this.legs = legs
    this.hooks = hooks
    this.intent = intent(this)
    this.identity = this.intent.superblock.uuid
    this.health = new Health(this, l => this.resyncs.start(l))
    this.resyncs = new Resync(this, this.fail)
    this.verifier = new Verifier(this, this.fail, l => this.resyncs.start(l))
    this.fanouts = new FanoutPool(this.legFailed)
  }

  static async open (options: MirrorOptions): Promise<MirrorDevice> {
    const { legs: members, region, store } = options
    const config = configure(options)
    const log = config.log
    if (members.length < 1) throw new DstError(ErrorCode.CONFIG, `mirror '${options.name}': needs at least one leg`, Errno.EINVAL)
    if (options.syncFrom !== undefined && !members.some(m => m.name === options.syncFrom)) {
      throw new DstError(ErrorCode.CONFIG, `mirror '${options.name}': syncFrom '${options.syncFrom}' is not one of its legs (${members.map(m => m.name).join(', ')})`, Errno.EINVAL)
    }
    if (options.syncFrom !== undefined && options.assumeClean === true) {
      throw new DstError(ErrorCode.CONFIG, `mirror '${options.name}': give syncFrom or assumeClean, not both`, Errno.EINVAL)
    }
    const sizes = members.map(m => m.device.size)
    const size = Math.min(...sizes)
    if (new Set(sizes).size > 1) {
      log(`legs differ in size (${members.map(m => `${m.name} ${m.device.size}`).join(', ')}); the mirror uses ${size} bytes`)
    }
    const regions = Math.ceil(size / region)
    const loaded = await store.load()
    const plan = reconcile(loaded, members.map(m => ({ name: m.name, identity: m.device.identity })), region, size)
    // Legs only change state by transition (an array event) once the array exists; before, they are set up.
    let mirror: MirrorDevice | null = null
    const hooks: LegHooks = { log, event: () => { mirror?.intent.event() } }
    const legs = members.map((m, i) => {
      const p = plan.legs[i]
      const leg = new Leg(m.name, m.device, regions, p.bits, p.record, config.probeInterval, hooks)
      leg.stale.set(p.stale)
      // A leg whose device cannot be reached now starts failed (or foreign: another disk answers there); the probe
      // takes it back when it answers, with its identity checked.
      if (!usable(m.device)) {
        leg.initial(m.device.state === 'foreign' ? 'foreign' : 'failed')
        leg.lastError = deviceError(m.device)
      }
      return leg
    })
    if (plan.kind === 'known') {
      for (const [i, leg] of legs.entries()) {
        if (!plan.legs[i].newToArray) continue
        // A leg new to the array: written only if it holds nothing but zeros; otherwise the operator must say so.
        leg.full = true
        leg.newDisk = true
        if (leg.absent) log(`leg '${leg.name}' is new to the array and not reachable: it is checked for data when it answers`)
        else await admitNew(leg, size, config)
      }
    } else if (plan.kind === 'kept') {
      log(`region changed (was ${loaded?.superblock.region ?? 0}); every leg was in sync with nothing marked: kept in sync`)
    } else {
      if (loaded !== null) log(`region or size changed (was ${loaded.superblock.region}/${loaded.superblock.size}), or no leg is known to the array: it is set up again as a new array`)
      await MirrorDevice.decideNew(options, config, legs, size, regions)
    }
    const authority = authorities(legs.map(l => ({ absent: l.absent, inSync: l.record.inSync })))
    for (const [i, l] of legs.entries()) {
      l.authority = authority[i]
      l.countStale()
      if (l.staleCount > 0 && l.state === 'in-sync') l.initial('stale')
    }
    const superblock = { uuid: plan.uuid ?? randomUUID(), size, region, events: plan.events + 1, legs: [] }
    const set = new LegSet(options.name, legs)
    const created = new MirrorDevice(options, config, size, m => new IntentMap(options.name, superblock, store, set, m.gate, regions, log), set, hooks)
    await created.intent.initial(plan.layoutChanged)
    mirror = created
    created.start()
    return created
  }

  /**
   * A new array (no superblock that names its legs): which legs are overwritten, and from which. Never a guess: the
   * operator's `syncFrom` or `assumeClean`, or else the first leg, and then only over legs that hold nothing but zeros.
   */
  private static async decideNew (options: MirrorOptions, config: ArrayConfig, legs: Leg[], size: number, regions: number): Promise<void> {
    const log = config.log
    const names = legs.map(l => `'${l.name}'`).join(', ')
    const how = `set "syncFrom": "LEG" on the mirror to overwrite the other legs from LEG, or "assumeClean": true if the legs already hold the same data`
    if (options.assumeClean === true) {
      log(`new array: assumeClean: legs ${names} are taken as identical; nothing is copied`)
      return
    }
    const src = options.syncFrom === undefined ? legs[0] : legs.find(l => l.name === options.syncFrom) as Leg
    if (src.absent) {
      throw new DstError(ErrorCode.SYNCSOURCE, `mirror '${options.name}': new array: leg '${src.name}', the sync source, cannot be reached (${src.lastError}); the array cannot be set up without it`, Errno.EIO)
    }
    const others = legs.filter(l => l !== src)
    if (options.syncFrom === undefined) {
      const unknown = others.filter(l => l.absent)
      if (unknown.length > 0) {
        throw new DstError(ErrorCode.SYNCSOURCE, `mirror '${options.name}': new array: ${unknown.map(l => `'${l.name}' (${l.lastError})`).join(', ')} cannot be reached, so nobody can tell whether it holds data; start when it can be reached, or ${how}`, Errno.EIO)
      }
      const holding: string[] = []
      for (const l of others) {
        const at = await firstData(l.device, size, config.clock)
        if (at >= 0) holding.push(`'${l.name}' (data at byte ${at})`)
      }
      if (holding.length > 0) {
        throw new DstError(ErrorCode.SYNCSOURCE, `mirror '${options.name}': new array of legs ${names}: ${holding.join(', ')} ${holding.length === 1 ? 'holds' : 'hold'} data and no superblock says ${holding.length === 1 ? 'it is' : 'they are'} in sync with '${src.name}'; refusing to overwrite. To choose, ${how}`, Errno.EINVAL)
      }
      if (await firstData(src.device, size, config.clock) < 0) {
        log(`new array: every leg (${names}) holds only zeros: in sync, nothing to copy`)
        return
      }
      log(`new array: legs ${others.map(l => `'${l.name}'`).join(', ')} hold only zeros: filled from '${src.name}'`)
    } else {
      log(`new array: syncFrom '${src.name}': ${others.map(l => `'${l.name}'`).join(', ')} will be overwritten from it (full sync)`)
    }
    for (const l of others) {
      fillBits(l.bits, regions)
      l.stale.fill(1)
      l.full = true
      l.record.inSync = false
    }
  }

  /** Bytes resyncs have copied and compared since start (status and tests). */
  get resyncedBytes (): number { return this.resyncs.copiedBytes }
  get comparedBytes (): number { return this.resyncs.comparedBytes }
  /** Bytes of the sources' holes resyncs did not read nor write (sparse-aware copies). */
  get skippedBytes (): number { return this.resyncs.skippedBytes }
  /** The running or last online verify. */
  get lastVerify (): VerifyReport | null { return this.verifier.last }
  /** Verify totals since start (metrics). */
  get verifyTotals (): { runs: number, bytes: number, mismatches: number, repaired: number } { return this.verifier.totals }
  get legNames (): string[] { return this.legs.names }

  /** Legs as the status and tests see them. */
  legStates (): Array<{ name: string, state: LegState, dirtyBytes: number }> {
    return this.legs.all.map(l => ({ name: l.name, state: l.state, dirtyBytes: l.staleBytes(this.region, this.size) }))
  }

  override status (): DeviceStatus {
    const base = super.status()
    return {
      ...base,
      state: this.state === 'closed' || this.state === 'closing' ? this.state : this.legs.arrayState(),
      uuid: this.intent.superblock.uuid,
      region: this.region,
      events: this.intent.events,
      resyncedBytes: this.resyncedBytes,
      resyncComparedBytes: this.comparedBytes,
      resyncSkippedBytes: this.skippedBytes,
      ...(this.lastVerify !== null ? { verify: summary(this.lastVerify) } : {}),
      members: this.legs.all.map(l => ({
        name: l.name,
        ...l.device.status(),
        deviceState: l.device.state,
        state: l.state,
        dirtyBytes: l.staleBytes(this.region, this.size),
        ...(l.resync !== null ? { resync: { ...l.resync } } : {}),
        ...(l.lastError !== '' ? { lastError: l.lastError } : {}),
      })),
    }
  }

  // ---- I/O -------------------------------------------------------------------------------------------------------

  protected override _read (offset: number, length: number, into: Uint8Array): Promise<void> {
    if (!this.gate.open) return this.readGated(offset, length, into)
    // Not paused: enter() would only count the read as active; done here without its promise turn.
    this.gate.enterNow()
    return this.readRange(offset, length, into).then(this.gate.exitOk, this.gate.exitErr)
  }

  private async readGated (offset: number, length: number, into: Uint8Array): Promise<void> {
    await this.gate.enter()
    try {
      await this.readRange(offset, length, into)
    } finally {
      this.gate.exit()
    }
  }

  /** Digests come from one leg that holds the range (the best reader), like a read. */
  protected override async _hash (offset: number, length: number, chunk: number): Promise<Buffer> {
    await this.gate.enter()
    try {
      for (;;) {
        const leg = this.legs.reader(this.regionOf(offset), this.regionOf(offset + length - 1))
        if (leg === null) throw this.legs.noLegError(`hash ${offset}+${length}`)
        leg.outstanding++
        try {
          return await leg.device.hash(offset, length, chunk)
        } catch (err) {
          // Busy or broken hash workers say nothing about the leg's data.
          if (hashTrouble(err)) throw err
          this.fail(leg, err)
        } finally {
          leg.outstanding--
        }
      }
    } finally {
      this.gate.exit()
    }
  }

  /**
   * Holes as one leg that holds the range sees them (the best reader, like a read): legs that hold a range hold the
   * same bytes, so a hole there reads as zeros from every one. With no such leg, or one that cannot answer, the range
   * is data (always correct); a failing extents() is no reason to fail the leg (reads find that out).
   */
  protected override async _extents (offset: number, length: number): Promise<Extent[]> {
    await this.gate.enter()
    try {
      const leg = this.legs.reader(this.regionOf(offset), this.regionOf(offset + length - 1))
      if (leg === null) return [{ offset, length, hole: false }]
      leg.outstanding++
      try {
        return await leg.device.extents(offset, length)
      } catch {
        return [{ offset, length, hole: false }]
      } finally {
        leg.outstanding--
      }
    } finally {
      this.gate.exit()
    }
  }

  protected override _write (offset: number, data: Uint8Array): Promise<void> {
    return this.mutate(offset, data.byteLength, data)
  }

  protected override _trim (offset: number, length: number): Promise<void> {
    return this.mutate(offset, length, null)
  }

  protected override async _flush (): Promise<void> {
    await this.gate.enter()
    try {
      // A leg whose device cannot take I/O now (its peer away, reconnecting) cannot make anything durable: it is out
      // (its regions written from now on are marked for it), and the flush is not held until it is back.
      const targets = this.legs.present().filter(l => {
        if (usable(l.device)) return true
        this.fail(l, new DstError(ErrorCode.DISCONNECTED, `flush: ${deviceError(l.device)}`, Errno.EIO))
        return false
      })
      const done = await Promise.allSettled(targets.map(l => l.device.flush()))
      done.forEach((d, i) => { if (d.status === 'rejected') this.fail(targets[i], d.reason) })
      if (!targets.some((l, i) => done[i].status === 'fulfilled' && l.state === 'in-sync')) throw this.legs.noLegError('flush')
    } finally {
      this.gate.exit()
    }
  }

  protected override async _close (): Promise<void> {
    this.stopping = true
    for (const t of this.timers) this.config.clock.clearInterval(t)
    this.timers = []
    await Promise.all(this.legs.all.map(l => l.running?.catch(() => {})))
    await this.verifier.running
    this.intent.clearQuiet(true)
    await this.intent.save()
    await this.intent.close()
  }

  /**
   * A read below SPLIT_READ goes to the least busy leg holding the range; if that leg fails, it is marked failed and
   * the read starts over on the others (readAnyLeg).
   */
  private readRange (offset: number, length: number, into: Uint8Array): Promise<void> {
    if (length >= SPLIT_READ) return this.readAnyLeg(offset, length, into)
    const chosen = this.legs.reader(this.regionOf(offset), this.regionOf(offset + length - 1))
    if (chosen === null) return Promise.reject(this.legs.noLegError(`read ${offset}+${length}`))
    chosen.outstanding++
    return chosen.device.read(offset, length, into).then(() => { chosen.outstanding-- }, err => {
      chosen.outstanding--
      this.fail(chosen, err)
      return this.readAnyLeg(offset, length, into)
    })
  }

  private async readAnyLeg (offset: number, length: number, into: Uint8Array): Promise<void> {
    const r0 = this.regionOf(offset)
    const r1 = this.regionOf(offset + length - 1)
    for (;;) {
      const eligible = this.legs.readers(r0, r1)
      if (eligible.length === 0) throw this.legs.noLegError(`read ${offset}+${length}`)
      if (length >= SPLIT_READ && eligible.length > 1) {
        const parts = Math.min(eligible.length, Math.floor(length / (SPLIT_READ / 2)))
        const step = Math.ceil(length / parts / this.blockSize) * this.blockSize
        const work: Array<Promise<void>> = []
        for (let i = 0, pos = 0; pos < length; i++, pos += step) {
          const n = Math.min(step, length - pos)
          const leg = eligible[i % eligible.length]
          work.push(this.legRead(leg, offset + pos, n, into.subarray(pos, pos + n))
            .catch(() => this.readRange(offset + pos, n, into.subarray(pos, pos + n))))
        }
        await settleAll(work)
        return
      }
      try {
        await this.legRead(eligible[0], offset, length, into)
        return
      } catch {
        // legRead marked the leg failed; try the next one.
      }
    }
  }

  private async legRead (leg: Leg, offset: number, length: number, into: Uint8Array): Promise<void> {
    leg.outstanding++
    try {
      await leg.device.read(offset, length, into)
    } catch (err) {
      this.fail(leg, err)
      throw err
    } finally {
      leg.outstanding--
    }
  }

  /** A write (`data`) or trim (null): mark intent on every leg durably, then issue to every present leg at once. */
  private async mutate (offset: number, length: number, data: Uint8Array | null): Promise<void> {
    const r0 = this.regionOf(offset)
    const r1 = this.regionOf(offset + length - 1)
    await this.gate.enter(r0, r1)
    const f = this.fanouts.take(r0, r1)
    try {
      // With no in-sync leg the write is refused before any leg is touched. Applied to a stale leg and marked missed on
      // the failed ones, it would leave regions that no leg holds, and the array could never be whole again.
      if (!this.legs.anyInSync()) throw this.legs.noLegError(`write ${offset}+${length}`)
      if (this.intent.markIntent(r0, r1)) await this.intent.save()
      for (const l of this.legs.all) {
        if (l.absent) l.markStale(r0, r1)
        else f.issue(l, data !== null ? l.device.write(offset, data) : l.device.trim(offset, length))
      }
      await f.wait()
      if (!f.anyInSyncOk()) {
        // Refused: every in-sync leg failed under it. Its range may now hold old or new bytes on any leg (a failed
        // write promises nothing there), but a region no other leg holds stays held by the leg that held it.
        if (f.held !== null && this.keepHolders(f.legs, f.held)) await this.intent.save()
        throw this.legs.noLegError(`write ${offset}+${length}`)
      }
      // A leg failed under this write: the superblock must say so on disk before the write is acknowledged, or a crash
      // now could pick that leg as the source and copy its old data over the legs that took the write.
      if (f.held !== null) await this.intent.save()
      else {
        const barrier = this.intent.failureBarrier()
        if (barrier !== null) await barrier
      }
    } finally {
      f.release()
      this.gate.leaveRegions(r0, r1)
      this.gate.exit()
    }
  }

  /**
   * Leg `i` of a write failed: out of I/O at once; the regions it held until now are noted, in case the write ends up
   * refused (made only when a leg fails: nothing more is allocated per write on the hot path), and marked stale.
   */
  private readonly legFailed = (f: Fanout, i: number, err: unknown): void => {
    const l = f.legs[i]
    this.fail(l, err)
    const was: number[] = []
    for (let r = f.r0; r <= f.r1; r++) if (l.stale[r] === 0) was.push(r)
    f.held ??= f.legs.map(() => null)
    f.held[i] = was
    l.markStale(f.r0, f.r1)
  }

  /**
   * After a refused write: gives back to each leg that failed under it the regions it held before, where no other
   * working leg holds them, and clears its intent bit there so a restart agrees. True if a bit changed.
   */
  private keepHolders (targets: Leg[], held: Array<number[] | null>): boolean {
    let changed = false
    targets.forEach((l, i) => {
      for (const r of held[i] ?? []) {
        if (l.stale[r] === 0 || this.legs.all.some(o => o !== l && !o.absent && o.stale[r] === 0)) continue
        l.markHeld(r)
        if (this.legs.has(l) && this.intent.unmark(l.index, r)) changed = true
      }
    })
    return changed
  }

  // ---- failure, return and resync --------------------------------------------------------------------------------

  private readonly fail = (l: Leg, err: unknown): void => { this.health.fail(l, err) }

  private start (): void {
    const clock = this.config.clock
    this.timers.push(clock.setInterval(() => { if (this.intent.clearQuiet()) this.intent.saveLogged() }, this.config.clearDelay))
    this.timers.push(clock.setInterval(() => this.health.probe(), this.config.probeInterval))
    this.resyncs.startAll()
  }

  /** Starts (or returns the running) resync of a stale leg. */
  startResync (l: Leg | string): Promise<void> {
    const leg = typeof l === 'string' ? this.legs.find(l) : l
    if (leg === undefined) return Promise.reject(new Error(`mirror '${this.name}': no leg '${String(l)}'`))
    return this.resyncs.start(leg)
  }

  /**
   * Compares every region on every leg that holds it while I/O goes on; with `repair`, resyncs the legs that differ
   * from the reference (see redundant/verify.ts).
   */
  verify (options: VerifyOptions = {}): Promise<VerifyReport> {
    return this.verifier.start(options)
  }

  // ---- management ------------------------------------------------------------------------------------------------

  /** Adds a leg (full sync in the background). */
  async addLeg (member: Member): Promise<void> {
    if (this.legs.find(member.name) !== undefined) throw new DstError(ErrorCode.EXISTS, `mirror '${this.name}': '${member.name}' is already a leg`, Errno.EINVAL)
    if (member.device.size < this.size) throw new DstError(ErrorCode.SIZE, `mirror '${this.name}': '${member.name}' has ${member.device.size} bytes, the mirror needs ${this.size}`, Errno.EINVAL)
    if (!member.device.writable) throw new DstError(ErrorCode.EROFS, `mirror '${this.name}': '${member.name}' is read-only`, Errno.EROFS)
    const bits = new Uint8Array(bitmapBytes(this.regions))
    fillBits(bits, this.regions)
    const leg = new Leg(member.name, member.device, this.regions, bits, { name: member.name, identity: member.device.identity, inSync: false },
      this.config.probeInterval, this.hooks, 'stale')
    leg.markAllStale()
    leg.full = true
    await this.gate.withIoHeld(async () => {
      this.legs.add(leg)
      this.intent.event()
      this.intent.markAll(this.regions)
      await this.intent.rewrite()
    })
    this.config.log(`leg '${member.name}' added: it is overwritten by a full sync from the array`)
    if (this.config.autoResync) this.startResync(leg).catch(() => {})
  }

  /**
   * Takes on the disk now behind a foreign leg as a new leg: its identity is recorded and the whole array is copied
   * to it (a full sync, compare-first). The caller has already made the device accept that disk (a remote device
   * refuses another disk until told). Returns what was done, in words.
   */
  async replaceLeg (name: string): Promise<string> {
    const leg = this.legs.named(name)
    const detail = await replaceForeign(this, leg, {
      array: `mirror '${this.name}'`, member: 'leg', bytes: this.size, needs: 'the mirror needs',
      notForeignHint: ' (to swap a working leg: remove, then add)', after: 'it is overwritten by a full sync',
    })
    if (this.config.autoResync) this.startResync(leg).catch(() => {})
    return detail
  }

  /** Removes a leg; the last in-sync leg cannot be removed. Returns its device. */
  async removeLeg (name: string): Promise<Device> {
    const leg = this.legs.named(name)
    if (leg.state === 'in-sync' && this.legs.inSyncCount() === 1) {
      throw new DstError(ErrorCode.LASTLEG, `mirror '${this.name}': '${name}' is the only in-sync leg`, Errno.EINVAL)
    }
    return await this.detach(leg, 'removed', async () => {
      if (leg.state === 'resyncing') leg.to('stale', { log: false })
      await leg.running?.catch(() => {})
    })
  }

  /**
   * Detaches an in-sync leg as a point-in-time copy: I/O is held, the leg flushed and removed; what it holds is the
   * array as of that moment, usable on its own.
   */
  async splitLeg (name: string): Promise<Device> {
    const leg = this.legs.named(name)
    if (leg.state !== 'in-sync') throw new DstError(ErrorCode.NOTSYNC, `mirror '${this.name}': leg '${name}' is ${leg.state}; only an in-sync leg is a consistent copy`, Errno.EINVAL)
    if (this.legs.inSyncCount() < 2) throw new DstError(ErrorCode.LASTLEG, `mirror '${this.name}': '${name}' is the only in-sync leg`, Errno.EINVAL)
    return await this.detach(leg, 'split off as a point-in-time copy', () => leg.device.flush())
  }

  /** With I/O held: `prepare`, then drop the leg from the array and rewrite the intent file without it. */
  private async detach (leg: Leg, what: string, prepare: () => Promise<void>): Promise<Device> {
    return await this.gate.withIoHeld(async () => {
      await prepare()
      this.legs.remove(leg)
      this.intent.event()
      await this.intent.rewrite()
      this.config.log(`leg '${leg.name}' ${what}`)
      return leg.device
    })
  }

  private regionOf (offset: number): number {
    return Math.floor(offset / this.region)
  }
}
