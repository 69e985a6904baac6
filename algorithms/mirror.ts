// mirror: every leg holds the whole array. Writes go to every present leg and complete when all have answered;
// reads go to the least busy leg that holds the range (large reads are split across legs). A write-intent bit per leg
// and region is made durable before the data write is issued and cleared lazily once the region is quiet, so a leg
// that was away, or a crash, costs a resync of only the regions that may differ. A returning leg is brought up to
// date in the background, region by region, while I/O goes on; a region being copied is locked against writes so
// older data can never overwrite newer.

import { randomUUID } from 'node:crypto'
import { Device, type DeviceStatus } from '../node/core/device'
import { DstError, Errno } from '../node/core/errors'
import { bitmapBytes, PAGE, type IntentState, type IntentStore, type LegRecord } from './intent-store'
import type { Member } from './linear'
import { settleAll } from '../node/core/settle'
import { DIGEST_SIZE, isHashChunk } from '../node/core/hasher'
import { firstData } from './blank'
import { formatSize } from '../node/core/size'

/**
 * `failed`: the leg's device does not answer (or fails requests); `foreign`: another disk answers where the leg was
 * (its identity is not the one the array knows), or a leg new to the array holds data: it is never written until the
 * operator takes it on (`replaceLeg`). Both are left out of all I/O.
 */
export type LegState = 'in-sync' | 'stale' | 'resyncing' | 'failed' | 'foreign'

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
}

interface Leg {
  name: string
  device: Device
  state: LegState
  outstanding: number
  /** One byte per region: 1 when this leg does not hold the array's data there. */
  stale: Uint8Array
  staleCount: number
  /** A leg new to the array: its resync compares before it copies. */
  full: boolean
  /** Its disk is new to the array and not yet found blank: it is never written before that check (or a replace). */
  newDisk: boolean
  /** Foreign by the array's own finding (a disk it does not know): stays so until `replaceLeg`. */
  held: boolean
  resync: { doneBytes: number, totalBytes: number, copiedBytes: number, comparedBytes: number } | null
  /** Where the resync's workers look for the next stale region, and the regions they hold. */
  cursor: number
  claimed: Set<number>
  running: Promise<void> | null
  lastError: string
  nextProbe: number
  probeWait: number
  /** The array's event count when this leg's resync paused for want of a source (-1: not paused). */
  pausedAt: number
  /**
   * This leg failed as the last in-sync one and no leg has been in sync since: it holds every acknowledged write, so
   * the superblock keeps calling it in sync (a restart takes regions marked on every leg from it).
   */
  authority: boolean
}

/** Reads at least this long are split across legs so one reader gets the bandwidth of several. */
const SPLIT_READ = 128 * 1024
/** Regions one resync works on at once. */
const RESYNC_PARALLEL = 4
/** Resync and verify compare digests of chunks this long (at most a region). */
const COMPARE_CHUNK = 64 * 1024
/** Mismatched regions a verify report lists (it counts them all). */
const REPORT_LIMIT = 1000

export interface VerifyOptions {
  /** Mark mismatched regions stale on the legs that differ from the reference, and resync them. */
  repair?: boolean
  /** The leg whose data is right; without it, a strict majority of 3+ legs decides, and 2 legs cannot be repaired. */
  from?: string
  /** Regions compared at once. */
  concurrency?: number
  /** Most bytes per second compared; 0 for no limit. */
  rate?: number
  /** Called as regions are done. */
  onProgress?: (report: VerifyReport) => void
}

export interface VerifyMismatch {
  region: number
  offset: number
  length: number
  /** Chunks of the region whose digests differ between legs. */
  chunks: number
  /** The legs that differ from the reference; every compared leg when there is none. */
  legs: string[]
  /** The leg (or majority) taken as right, or null when nothing decides. */
  reference: string | null
  repaired: boolean
}

export interface VerifyReport {
  /** `incomplete`: finished, but part of the array could not be compared on every leg (see `notCompared`). */
  state: 'running' | 'done' | 'incomplete' | 'failed'
  repair: boolean
  from: string | null
  startedAt: string
  finishedAt: string | null
  seconds: number
  totalBytes: number
  doneBytes: number
  /** Bytes compared on at least two legs; the rest were skipped (only one leg held them). */
  comparedBytes: number
  skippedBytes: number
  /** Per leg, the bytes it could not be compared on (it was down, foreign or stale there), and its state then. */
  notCompared: Array<{ leg: string, state: LegState, bytes: number }>
  /** Why the verify is incomplete, in words ("leg b down: 256 MiB not compared"), or null. */
  incomplete: string | null
  mismatches: number
  repairedRegions: number
  /** The first regions that differ (up to 1000), in region order. */
  mismatchedRegions: VerifyMismatch[]
  error: string | null
}

export class MirrorDevice extends Device {
  readonly type = 'mirror'
  readonly name: string
  readonly region: number
  readonly regions: number
  private legs: Leg[]
  private state_: IntentState
  private readonly store: IntentStore
  private readonly options: MirrorOptions
  private readonly log: (message: string) => void
  /** Regions with requests in flight, and how many. */
  private readonly regionInflight = new Map<number, number>()
  private active = 0
  /** Regions with an intent bit set on any leg; the lazy-clear pass looks only at these. */
  private readonly marked = new Set<number>()
  /** Regions written since the last clear pass: not yet quiet. */
  private readonly touched = new Set<number>()
  private pages = new Map<number, Set<number>>()
  private saving: Promise<void> | null = null
  private saveQueued: Promise<void> | null = null
  /** The save recording the latest leg failure, until it is on disk. */
  private failSave: Promise<void> | null = null
  /** Regions being copied by a resync, and by how many resyncs (several legs may resync at once). */
  private readonly locked = new Map<number, number>()
  private paused = false
  private readonly gate: Array<() => void> = []
  private readonly idleWaiters = new Map<number, Array<() => void>>()
  private activeIdle: (() => void) | null = null
  private timers: NodeJS.Timeout[] = []
  private stopping = false
  /** Bytes resyncs have copied and compared since start (status and tests). */
  resyncedBytes = 0
  comparedBytes = 0
  /** The running or last online verify. */
  lastVerify: VerifyReport | null = null
  private verifying: Promise<void> | null = null
  /** Verify totals since start (metrics). */
  readonly verifyTotals = { runs: 0, bytes: 0, mismatches: 0, repaired: 0 }

  private constructor (options: MirrorOptions, size: number, state: IntentState, legs: Leg[]) {
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
    this.store = options.store
    this.options = options
    this.log = options.log ?? (() => {})
    this.state_ = state
    this.legs = legs
    this.identity = state.superblock.uuid
    for (let r = 0; r < this.regions; r++) if (this.anyBit(r)) this.marked.add(r)
  }

  static async open (options: MirrorOptions): Promise<MirrorDevice> {
    const { legs: members, region, store } = options
    const log = options.log ?? (() => {})
    if (members.length < 1) throw new DstError('DST_ERR_CONFIG', `mirror '${options.name}': needs at least one leg`, Errno.EINVAL)
    if (options.syncFrom !== undefined && !members.some(m => m.name === options.syncFrom)) {
      throw new DstError('DST_ERR_CONFIG', `mirror '${options.name}': syncFrom '${options.syncFrom}' is not one of its legs (${members.map(m => m.name).join(', ')})`, Errno.EINVAL)
    }
    if (options.syncFrom !== undefined && options.assumeClean === true) {
      throw new DstError('DST_ERR_CONFIG', `mirror '${options.name}': give syncFrom or assumeClean, not both`, Errno.EINVAL)
    }
    const sizes = members.map(m => m.device.size)
    const size = Math.min(...sizes)
    if (new Set(sizes).size > 1) {
      log(`legs differ in size (${members.map(m => `${m.name} ${m.device.size}`).join(', ')}); the mirror uses ${size} bytes`)
    }
    const regions = Math.ceil(size / region)
    const bytes = bitmapBytes(regions)
    const loaded = await store.load()
    const legs: Leg[] = members.map(m => newLeg(m, regions, options))
    const records: LegRecord[] = members.map(m => ({ name: m.name, identity: m.device.identity, inSync: true }))
    const bits = members.map(() => new Uint8Array(bytes))
    const reachable = members.map(m => usable(m.device))
    // A leg whose device cannot be reached now starts failed (or foreign: another disk answers there); the probe takes
    // it back when it answers, with its identity checked.
    legs.forEach((l, i) => {
      if (reachable[i]) return
      l.state = l.device.state === 'foreign' ? 'foreign' : 'failed'
      l.lastError = deviceError(l.device)
    })
    let uuid: string = randomUUID()
    let events = 0
    let layoutChanged = true
    const old = loaded?.superblock
    const matched = members.map(m => old === undefined || m.device.identity === '' ? -1 : old.legs.findIndex(l => l.identity === m.device.identity))
    if (loaded !== null && old !== undefined && old.region === region && old.size === size && matched.some(j => j >= 0)) {
      uuid = old.uuid
      events = old.events
      for (const [i, m] of members.entries()) {
        const j = matched[i]
        if (j >= 0) {
          bits[i].set(loaded.bits[j])
          records[i].inSync = old.legs[j].inSync
          continue
        }
        // A leg new to the array: written only if it holds nothing but zeros; otherwise the operator must say so.
        records[i].inSync = false
        legs[i].full = true
        legs[i].newDisk = true
        fillBits(bits[i], regions)
        if (!reachable[i]) {
          log(`leg '${m.name}' is new to the array and not reachable: it is checked for data when it answers`)
          continue
        }
        await MirrorDevice.admitNew(legs[i], size, log)
      }
      layoutChanged = matched.some((j, i) => j !== i) || old.legs.length !== members.length
      // A region marked on every leg was being written at the crash: any leg's copy will do, as long as all agree.
      // Take the first leg that was in sync as the source.
      let source = records.findIndex((r, i) => r.inSync && matched[i] >= 0)
      if (source < 0) source = matched.findIndex(j => j >= 0)
      for (let r = 0; r < regions; r++) {
        let all = true
        for (let i = 0; i < legs.length; i++) {
          if (getBit(bits[i], r)) { legs[i].stale[r] = 1 } else all = false
        }
        if (all) legs[source].stale[r] = 0
      }
    } else {
      // Only the region changed, and the superblock knew every leg as in sync with nothing marked: they are identical.
      const clean = loaded !== null && old !== undefined && old.size === size && old.legs.length === members.length &&
        matched.every(j => j >= 0 && old.legs[j].inSync) && loaded.bits.every(b => b.every(x => x === 0))
      if (clean) {
        uuid = old.uuid
        events = old.events
        log(`region changed (was ${old.region}); every leg was in sync with nothing marked: kept in sync`)
      } else {
        if (loaded !== null) log(`region or size changed (was ${loaded.superblock.region}/${loaded.superblock.size}), or no leg is known to the array: it is set up again as a new array`)
        await MirrorDevice.decideNew(options, legs, records, bits, size, regions, reachable)
      }
    }
    // Legs that were in sync but cannot be reached: while no reachable leg is in sync, they hold every acknowledged
    // write, and the superblock must keep saying so (the array is failed until one is back).
    if (!legs.some((l, i) => l.state === 'in-sync' && records[i].inSync)) {
      legs.forEach((l, i) => { if (absent(l) && records[i].inSync) l.authority = true })
    }
    for (const l of legs) {
      l.staleCount = countOnes(l.stale)
      if (l.staleCount > 0 && l.state === 'in-sync') l.state = 'stale'
    }
    const state: IntentState = { superblock: { uuid, size, region, events: events + 1, legs: records }, bits }
    if (layoutChanged) await store.create(state); else await store.update(state, new Map())
    const mirror = new MirrorDevice(options, size, state, legs)
    mirror.start()
    return mirror
  }

  /**
   * A new array (no superblock that names its legs): which legs are overwritten, and from which. Never a guess: the
   * operator's `syncFrom` or `assumeClean`, or else the first leg, and then only over legs that hold nothing but zeros.
   */
  private static async decideNew (options: MirrorOptions, legs: Leg[], records: LegRecord[], bits: Uint8Array[], size: number,
    regions: number, reachable: boolean[]): Promise<void> {
    const log = options.log ?? (() => {})
    const names = legs.map(l => `'${l.name}'`).join(', ')
    const how = `set "syncFrom": "LEG" on the mirror to overwrite the other legs from LEG, or "assumeClean": true if the legs already hold the same data`
    if (options.assumeClean === true) {
      log(`new array: assumeClean: legs ${names} are taken as identical; nothing is copied`)
      return
    }
    const source = options.syncFrom === undefined ? 0 : legs.findIndex(l => l.name === options.syncFrom)
    const src = legs[source]
    if (!reachable[source]) {
      throw new DstError('DST_ERR_SYNCSOURCE', `mirror '${options.name}': new array: leg '${src.name}', the sync source, cannot be reached (${src.lastError}); the array cannot be set up without it`, Errno.EIO)
    }
    const others = legs.filter((_, i) => i !== source)
    if (options.syncFrom === undefined) {
      const unknown = others.filter((_, k) => !reachable[legs.indexOf(others[k])])
      if (unknown.length > 0) {
        throw new DstError('DST_ERR_SYNCSOURCE', `mirror '${options.name}': new array: ${unknown.map(l => `'${l.name}' (${l.lastError})`).join(', ')} cannot be reached, so nobody can tell whether it holds data; start when it can be reached, or ${how}`, Errno.EIO)
      }
      const holding: string[] = []
      for (const l of others) {
        const at = await firstData(l.device, size)
        if (at >= 0) holding.push(`'${l.name}' (data at byte ${at})`)
      }
      if (holding.length > 0) {
        throw new DstError('DST_ERR_SYNCSOURCE', `mirror '${options.name}': new array of legs ${names}: ${holding.join(', ')} ${holding.length === 1 ? 'holds' : 'hold'} data and no superblock says ${holding.length === 1 ? 'it is' : 'they are'} in sync with '${src.name}'; refusing to overwrite. To choose, ${how}`, Errno.EINVAL)
      }
      if (await firstData(src.device, size) < 0) {
        log(`new array: every leg (${names}) holds only zeros: in sync, nothing to copy`)
        return
      }
      log(`new array: legs ${others.map(l => `'${l.name}'`).join(', ')} hold only zeros: filled from '${src.name}'`)
    } else {
      log(`new array: syncFrom '${src.name}': ${others.map(l => `'${l.name}'`).join(', ')} will be overwritten from it (full sync)`)
    }
    for (const l of others) {
      const i = legs.indexOf(l)
      fillBits(bits[i], regions)
      l.stale.fill(1)
      l.full = true
      records[i].inSync = false
    }
  }

  /** A leg new to an existing array: taken on (full sync) if it holds only zeros; otherwise left foreign. */
  private static async admitNew (l: Leg, size: number, log: (message: string) => void): Promise<void> {
    const at = await firstData(l.device, size)
    l.stale.fill(1)
    if (at < 0) {
      l.newDisk = false
      log(`leg '${l.name}' is new to the array (identity ${l.device.identity || 'none'}) and holds only zeros: full sync`)
      return
    }
    l.state = 'foreign'
    l.held = true
    l.lastError = `a disk new to the array (identity ${l.device.identity || 'none'}) holds data (at byte ${at}): not overwritten; 'dst array replace' takes it on with a full sync`
    log(`leg '${l.name}': ${l.lastError}`)
  }

  /** Legs as the status and tests see them. */
  legStates (): Array<{ name: string, state: LegState, dirtyBytes: number }> {
    return this.legs.map(l => ({ name: l.name, state: l.state, dirtyBytes: this.staleBytes(l) }))
  }

  override status (): DeviceStatus {
    const base = super.status()
    return {
      ...base,
      state: this.arrayState(),
      uuid: this.state_.superblock.uuid,
      region: this.region,
      events: this.state_.superblock.events,
      resyncedBytes: this.resyncedBytes,
      resyncComparedBytes: this.comparedBytes,
      ...(this.lastVerify !== null ? { verify: summary(this.lastVerify) } : {}),
      members: this.legs.map(l => ({
        name: l.name,
        ...l.device.status(),
        deviceState: l.device.state,
        state: l.state,
        dirtyBytes: this.staleBytes(l),
        ...(l.resync !== null ? { resync: { ...l.resync } } : {}),
        ...(l.lastError !== '' ? { lastError: l.lastError } : {}),
      })),
    }
  }

  // ---- I/O -------------------------------------------------------------------------------------------------------

  protected override _read (offset: number, length: number, into: Uint8Array): Promise<void> {
    if (this.paused) return this.readGated(offset, length, into)
    // Not paused: enter() would only count the read as active; done here without its promise turn.
    this.active++
    return this.readRange(offset, length, into).then(this.exitOk, this.exitErr)
  }

  private async readGated (offset: number, length: number, into: Uint8Array): Promise<void> {
    await this.enter()
    try {
      await this.readRange(offset, length, into)
    } finally {
      this.exit()
    }
  }

  private readonly exitOk = (): void => { this.exit() }
  private readonly exitErr = (err: unknown): never => {
    this.exit()
    throw err
  }

  /** Digests come from one leg that holds the range (least busy first), like a read. */
  protected override async _hash (offset: number, length: number, chunk: number): Promise<Buffer> {
    await this.enter()
    try {
      const r0 = this.regionOf(offset)
      const r1 = this.regionOf(offset + length - 1)
      for (;;) {
        const eligible = this.legs.filter(l => !absent(l) && this.holds(l, r0, r1))
        if (eligible.length === 0) throw this.noLegError(`hash ${offset}+${length}`)
        eligible.sort((a, b) => a.outstanding - b.outstanding)
        const leg = eligible[0]
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
      this.exit()
    }
  }

  protected override _write (offset: number, data: Uint8Array): Promise<void> {
    return this.mutate(offset, data.byteLength, l => l.device.write(offset, data))
  }

  protected override _trim (offset: number, length: number): Promise<void> {
    return this.mutate(offset, length, l => l.device.trim(offset, length))
  }

  protected override async _flush (): Promise<void> {
    await this.enter()
    try {
      const targets = this.legs.filter(l => !absent(l))
      const ok = await Promise.all(targets.map(l => l.device.flush().then(() => true, err => { this.fail(l, err); return false })))
      if (!targets.some((l, i) => ok[i] && l.state === 'in-sync')) throw this.noLegError('flush')
    } finally {
      this.exit()
    }
  }

  protected override async _close (): Promise<void> {
    this.stopping = true
    for (const t of this.timers) clearInterval(t)
    this.timers = []
    await Promise.all(this.legs.map(l => l.running?.catch(() => {})))
    await this.verifying
    this.clearQuiet(true)
    await this.save()
    await this.store.close?.()
  }

  /**
   * A read below SPLIT_READ goes to the least busy leg holding the range, picked without building arrays; if that leg
   * fails, it is marked failed and the read starts over on the others (readAnyLeg).
   */
  private readRange (offset: number, length: number, into: Uint8Array): Promise<void> {
    if (length >= SPLIT_READ) return this.readAnyLeg(offset, length, into)
    const r0 = this.regionOf(offset)
    const r1 = this.regionOf(offset + length - 1)
    let leg: Leg | null = null
    let legRank = 0
    for (const l of this.legs) {
      if (absent(l) || !this.holds(l, r0, r1)) continue
      // Least busy first; a leg whose link is down (reconnecting) only when no other leg holds the range.
      const rank = (l.device.state === 'connecting' ? 1e9 : 0) + l.outstanding
      if (leg === null || rank < legRank) { leg = l; legRank = rank }
    }
    if (leg === null) return Promise.reject(this.noLegError(`read ${offset}+${length}`))
    const chosen = leg
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
      const eligible = this.legs.filter(l => !absent(l) && this.holds(l, r0, r1))
      if (eligible.length === 0) throw this.noLegError(`read ${offset}+${length}`)
      // Least busy first; a leg whose link is down (reconnecting) only when no other leg holds the range.
      eligible.sort((a, b) => (a.device.state === 'connecting' ? 1 : 0) - (b.device.state === 'connecting' ? 1 : 0) || a.outstanding - b.outstanding)
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
      const leg = eligible[0]
      try {
        await this.legRead(leg, offset, length, into)
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

  /** A write or trim: mark intent on every leg durably, then issue to every present leg. */
  private async mutate (offset: number, length: number, op: (l: Leg) => Promise<void>): Promise<void> {
    const r0 = this.regionOf(offset)
    const r1 = this.regionOf(offset + length - 1)
    await this.enter(r0, r1)
    try {
      // With no in-sync leg the write is refused before any leg is touched. Applied to a stale leg and marked missed on
      // the failed ones, it would leave regions that no leg holds, and the array could never be whole again.
      if (!this.legs.some(l => l.state === 'in-sync')) throw this.noLegError(`write ${offset}+${length}`)
      if (this.markIntent(r0, r1)) await this.save()
      const targets: Leg[] = []
      for (const l of this.legs) {
        if (absent(l)) this.markStale(l, r0, r1); else targets.push(l)
      }
      // Regions a leg failing under this write held until now, per leg, in case the write ends up refused (made only
      // when a leg fails: nothing more is allocated per write on the hot path).
      let held: Array<number[] | null> | null = null
      const ok = await Promise.all(targets.map((l, i) => {
        l.outstanding++
        return op(l).then(() => true, err => {
          this.fail(l, err)
          const was: number[] = []
          for (let r = r0; r <= r1; r++) if (l.stale[r] === 0) was.push(r)
          held ??= targets.map(() => null)
          held[i] = was
          this.markStale(l, r0, r1)
          return false
        }).finally(() => { l.outstanding-- })
      }))
      if (!targets.some((l, i) => ok[i] && l.state === 'in-sync')) {
        // Refused: every in-sync leg failed under it. Its range may now hold old or new bytes on any leg (a failed
        // write promises nothing there), but a region no other leg holds stays held by the leg that held it.
        if (held !== null && this.keepHolders(targets, held)) await this.save()
        throw this.noLegError(`write ${offset}+${length}`)
      }
      // A leg failed under this write: the superblock must say so on disk before the write is acknowledged, or a crash
      // now could pick that leg as the source and copy its old data over the legs that took the write.
      if (ok.includes(false)) await this.save()
      else if (this.failSave !== null) await this.failSave
    } finally {
      for (let r = r0; r <= r1; r++) {
        const n = (this.regionInflight.get(r) ?? 1) - 1
        if (n === 0) {
          this.regionInflight.delete(r)
          const idle = this.idleWaiters.get(r)
          if (idle !== undefined) { this.idleWaiters.delete(r); for (const wake of idle) wake() }
        } else this.regionInflight.set(r, n)
      }
      this.exit()
    }
  }

  /**
   * Waits while I/O is paused or (for writes, r0 >= 0) while a region of the range is being resynced; then, in the same
   * synchronous step, counts the request in, so a resync that locks a region afterwards waits for it.
   */
  private async enter (r0 = -1, r1 = -1): Promise<void> {
    while (this.paused || (r0 >= 0 && this.anyLocked(r0, r1))) {
      await new Promise<void>(resolve => this.gate.push(resolve))
    }
    this.active++
    for (let r = r0; r >= 0 && r <= r1; r++) { this.regionInflight.set(r, (this.regionInflight.get(r) ?? 0) + 1); this.touched.add(r) }
  }

  private anyLocked (r0: number, r1: number): boolean {
    if (this.locked.size === 0) return false
    for (let r = r0; r <= r1; r++) if (this.locked.has(r)) return true
    return false
  }

  private exit (): void {
    if (--this.active === 0 && this.activeIdle !== null) { const done = this.activeIdle; this.activeIdle = null; done() }
  }

  private openGate (): void {
    for (const wake of this.gate.splice(0)) wake()
  }

  // ---- intent map --------------------------------------------------------------------------------------------------

  /** Sets the intent bit of every leg for the regions; true if any bit changed (a save is needed). */
  private markIntent (r0: number, r1: number): boolean {
    let changed = false
    for (let r = r0; r <= r1; r++) {
      for (let i = 0; i < this.legs.length; i++) {
        if (!getBit(this.state_.bits[i], r)) { this.setBit(i, r, true); changed = true }
      }
      this.marked.add(r)
    }
    return changed
  }

  /**
   * After a refused write: gives back to each leg that failed under it the regions it held before, where no other
   * working leg holds them, and clears its intent bit there so a restart agrees. True if a bit changed.
   */
  private keepHolders (targets: Leg[], held: Array<number[] | null>): boolean {
    let changed = false
    targets.forEach((l, i) => {
      const i0 = this.legs.indexOf(l)
      for (const r of held[i] ?? []) {
        if (l.stale[r] === 0 || this.legs.some(o => o !== l && !absent(o) && o.stale[r] === 0)) continue
        l.stale[r] = 0
        l.staleCount--
        if (i0 >= 0 && getBit(this.state_.bits[i0], r)) { this.setBit(i0, r, false); changed = true }
      }
    })
    return changed
  }

  private markStale (l: Leg, r0: number, r1: number): void {
    for (let r = r0; r <= r1; r++) if (l.stale[r] === 0) { l.stale[r] = 1; l.staleCount++ }
  }

  private setBit (leg: number, r: number, on: boolean): void {
    const bits = this.state_.bits[leg]
    if (on) bits[r >> 3] |= 1 << (r & 7); else bits[r >> 3] &= ~(1 << (r & 7))
    let set = this.pages.get(leg)
    if (set === undefined) { set = new Set(); this.pages.set(leg, set) }
    set.add(Math.floor((r >> 3) / PAGE) * PAGE)
  }

  private anyBit (r: number): boolean {
    return this.state_.bits.some(b => getBit(b, r))
  }

  /** Clears the bits of regions that have been quiet since the last pass and are held by their leg. */
  private clearQuiet (all = false): boolean {
    let changed = false
    for (const r of this.marked) {
      if (this.regionInflight.has(r) || (!all && this.touched.has(r)) || this.locked.has(r)) continue
      let left = false
      for (let i = 0; i < this.legs.length; i++) {
        const l = this.legs[i]
        if (!getBit(this.state_.bits[i], r)) continue
        if (l.stale[r] === 0 && !absent(l)) { this.setBit(i, r, false); changed = true } else left = true
      }
      if (!left) this.marked.delete(r)
    }
    this.touched.clear()
    return changed
  }

  /** Makes the in-memory map durable. Concurrent callers share saves; a caller's bits are in the save it awaits. */
  private save (): Promise<void> {
    if (this.saving === null) {
      this.saving = this.runSave().finally(() => { this.saving = null })
      return this.saving
    }
    if (this.saveQueued === null) {
      this.saveQueued = this.saving.catch(() => {}).then(() => {
        this.saveQueued = null
        return this.save()
      })
    }
    return this.saveQueued
  }

  private async runSave (): Promise<void> {
    const pages = this.pages
    this.pages = new Map()
    const sb = this.state_.superblock
    sb.legs.forEach((rec, i) => { const l = this.legs[i]; rec.inSync = l !== undefined && (l.state === 'in-sync' || l.authority) })
    try {
      await this.store.update(this.state_, pages)
    } catch (err) {
      // Keep the pages for the next attempt; the write that needed them fails.
      for (const [leg, set] of pages) for (const p of set) this.setPage(leg, p)
      throw new DstError('DST_ERR_INTENT', `mirror '${this.name}': cannot save the write-intent map: ${(err as Error).message}`, Errno.EIO)
    }
  }

  private setPage (leg: number, page: number): void {
    let set = this.pages.get(leg)
    if (set === undefined) { set = new Set(); this.pages.set(leg, set) }
    set.add(page)
  }

  // ---- failure, return and resync --------------------------------------------------------------------------------

  private fail (l: Leg, err: unknown): void {
    if (absent(l)) return
    const was = l.state
    l.state = (err as DstError)?.code === 'DST_ERR_FOREIGN' || l.device.state === 'foreign' ? 'foreign' : 'failed'
    if (was === 'in-sync' && !this.legs.some(o => o.state === 'in-sync')) l.authority = true
    l.lastError = (err as Error)?.message ?? String(err)
    l.nextProbe = Date.now() + l.probeWait
    this.state_.superblock.events++
    this.log(`leg '${l.name}' ${l.state} (was ${was}): ${l.lastError}`)
    // Writes that skip this leg are acknowledged only once this save (the leg is out of sync) is on disk.
    const saving: Promise<void> = this.save().catch(err => this.log((err as Error).message)).finally(() => {
      if (this.failSave === saving) this.failSave = null
    })
    this.failSave = saving
  }

  private start (): void {
    const clear = setInterval(() => {
      if (this.clearQuiet()) this.save().catch(err => this.log((err as Error).message))
    }, this.options.clearDelay ?? 5000)
    clear.unref()
    this.timers.push(clear)
    const probe = setInterval(() => this.probe(), this.options.probeInterval ?? 1000)
    probe.unref()
    this.timers.push(probe)
    if (this.options.autoResync !== false) for (const l of this.legs) if (l.state === 'stale') this.startResync(l)
  }

  /**
   * Checks failed legs: one whose device answers again becomes stale and is resynced. A resync that paused for want of
   * a source is started again once a leg's state has changed since (a leg back, or in sync).
   */
  private probe (): void {
    const now = Date.now()
    for (const l of this.legs) {
      if (l.state === 'stale' && l.running === null && l.pausedAt >= 0 && l.pausedAt !== this.state_.superblock.events &&
          !this.stopping && this.options.autoResync !== false) {
        l.pausedAt = -1
        this.startResync(l).catch(() => {})
        continue
      }
      // Another disk answers where a working leg's disk was (noticed by its device, between requests): leave it out now.
      if (!absent(l) && l.device.state === 'foreign') { this.fail(l, new DstError('DST_ERR_FOREIGN', deviceError(l.device), Errno.EIO)); continue }
      // A leg whose old resync is still winding down is probed once that has stopped.
      if (!absent(l) || now < l.nextProbe || this.stopping || l.running !== null) continue
      const ds = l.device.state
      if (ds === 'foreign' && l.state !== 'foreign') { this.toForeign(l, deviceError(l.device)); continue }
      if (!usable(l.device)) continue
      // A disk new to the array that holds data waits for the operator (replaceLeg).
      if (l.state === 'foreign' && l.held) continue
      l.nextProbe = Number.POSITIVE_INFINITY
      const buf = Buffer.alloc(Math.min(this.blockSize, this.size))
      l.device.read(0, buf.length, buf).then(async () => {
        l.probeWait = this.options.probeInterval ?? 1000
        const i = this.legs.indexOf(l)
        const record = this.state_.superblock.legs[i]
        if (i < 0 || this.stopping) return
        if (record !== undefined && record.identity !== l.device.identity) {
          // Another disk answers where this leg was: it is never written until the operator takes it on.
          this.toForeign(l, `another disk answers (identity ${l.device.identity || 'none'}, expected ${record.identity}): not overwritten; 'dst array replace' takes it on with a full sync`, true)
          return
        }
        if (l.newDisk) {
          // A leg new to the array, unreachable at start: written only if it holds nothing but zeros.
          const at = await firstData(l.device, this.size)
          if (at >= 0) {
            this.toForeign(l, `a disk new to the array (identity ${l.device.identity || 'none'}) holds data (at byte ${at}): not overwritten; 'dst array replace' takes it on with a full sync`, true)
            return
          }
          l.newDisk = false
        }
        l.lastError = ''
        l.state = 'stale'
        this.state_.superblock.events++
        this.log(`leg '${l.name}' is back: resyncing ${this.staleBytes(l)} bytes`)
        await this.save()
        if (this.options.autoResync !== false) this.startResync(l).catch(() => {})
      }).catch((err: Error) => {
        if (l.state === 'stale') { this.log(err.message); return }
        l.lastError = err.message
        l.probeWait = Math.min(l.probeWait * 2, 5000)
        l.nextProbe = Date.now() + l.probeWait
      })
    }
  }

  /** Marks a leg foreign (left out of all I/O until it is back with its own disk, or replaced). */
  private toForeign (l: Leg, why: string, held = false): void {
    const was = l.state
    l.state = 'foreign'
    l.held = held
    l.lastError = why
    l.probeWait = this.options.probeInterval ?? 1000
    l.nextProbe = Date.now() + l.probeWait
    this.state_.superblock.events++
    this.log(`leg '${l.name}' foreign (was ${was}): ${why}`)
    this.save().catch(err => this.log((err as Error).message))
  }

  /** Starts (or returns the running) resync of a stale leg. */
  startResync (l: Leg | string): Promise<void> {
    const leg = typeof l === 'string' ? this.legs.find(x => x.name === l) : l
    if (leg === undefined) return Promise.reject(new Error(`mirror '${this.name}': no leg '${String(l)}'`))
    if (leg.running !== null) return leg.running
    if (leg.state !== 'stale') return Promise.resolve()
    leg.running = this.resync(leg).finally(() => { leg.running = null })
    return leg.running
  }

  private async resync (l: Leg): Promise<void> {
    l.state = 'resyncing'
    const total = this.staleBytes(l)
    const progress = l.resync = { doneBytes: 0, totalBytes: total, copiedBytes: 0, comparedBytes: 0 }
    const rate = this.options.resyncRate ?? 0
    const began = Date.now()
    let stopped = false
    // A few regions at a time, so digests on both legs and copies overlap with the round trips.
    const worker = async (): Promise<void> => {
      const buf = Buffer.alloc(this.region)
      while (!stopped) {
        const r = this.nextStale(l)
        if (r < 0) return
        if (this.stopping || l.state !== 'resyncing') { stopped = true; return }
        const at = r * this.region
        const n = Math.min(this.region, this.size - at)
        l.claimed.add(r)
        await this.lockRegion(r)
        try {
          const copied = await this.copyRegion(l, r, at, n, buf)
          if (copied === null) { stopped = true; return }
          if (l.stale[r] !== 0) { l.stale[r] = 0; l.staleCount-- }
          progress.doneBytes += n
          progress.copiedBytes += copied
          this.resyncedBytes += copied
        } finally {
          l.claimed.delete(r)
          this.unlockRegion(r)
        }
        if (rate > 0) {
          const ahead = (progress.doneBytes / rate) * 1000 - (Date.now() - began)
          if (ahead > 0) await new Promise(resolve => setTimeout(resolve, ahead))
        }
      }
    }
    try {
      // Passes until nothing is stale: a verify repair may mark regions behind the workers while this runs.
      while (l.staleCount > 0 && !stopped) {
        l.cursor = 0
        await settleAll(Array.from({ length: RESYNC_PARALLEL }, worker))
        progress.totalBytes = progress.doneBytes + this.staleBytes(l)
      }
      if (stopped || l.state !== 'resyncing') return
      l.state = 'in-sync'
      l.full = false
      for (const o of this.legs) o.authority = false
      this.state_.superblock.events++
      this.log(`leg '${l.name}' in sync (${l.resync.copiedBytes} of ${l.resync.totalBytes} bytes copied, ${l.resync.comparedBytes} compared by digest)`)
      this.clearQuiet(true)
      await this.save()
    } finally {
      if (l.state === 'resyncing') l.state = 'stale'
      l.resync = null
    }
  }

  /**
   * Brings one region of `l` up to date from a leg that holds it; returns the bytes written, or null when the resync
   * must stop. With checksum resync, both legs digest the region where their data lives and only differing chunks
   * are read and written; trouble with the hash workers falls back to copying the region whole.
   */
  private async copyRegion (l: Leg, r: number, at: number, n: number, buf: Buffer): Promise<number | null> {
    for (;;) {
      const sources = this.legs.filter(s => s !== l && !absent(s) && s.stale[r] === 0)
      if (sources.length === 0) {
        l.lastError = `no leg holds region ${r} to copy from`
        l.pausedAt = this.state_.superblock.events
        this.log(`leg '${l.name}': resync paused: ${l.lastError}`)
        return null
      }
      sources.sort((a, b) => a.outstanding - b.outstanding)
      const src = sources[0]
      let runs: Array<[number, number]> = [[0, n]]
      const chunk = this.compareChunk()
      if (chunk > 0) {
        const [want, have] = await Promise.allSettled([src.device.hash(at, n, chunk), l.device.hash(at, n, chunk)])
        if (want.status === 'rejected' && !hashTrouble(want.reason)) { this.fail(src, want.reason); continue }
        if (have.status === 'rejected' && !hashTrouble(have.reason)) { this.fail(l, have.reason); return null }
        if (want.status === 'fulfilled' && have.status === 'fulfilled') {
          runs = differingRuns(want.value, have.value, chunk, n)
          this.comparedBytes += n
          if (l.resync !== null) l.resync.comparedBytes += n
        }
      }
      let copied = 0
      let retry = false
      for (const [from, to] of runs) {
        const view = buf.subarray(from, to)
        try {
          await src.device.read(at + from, to - from, view)
        } catch (err) {
          this.fail(src, err)
          retry = true
          break
        }
        try {
          await l.device.write(at + from, view)
        } catch (err) {
          this.fail(l, err)
          return null
        }
        copied += to - from
      }
      if (!retry) return copied
    }
  }

  /** The next stale region of `l` at or after its resync cursor that no worker holds, or -1. */
  private nextStale (l: Leg): number {
    for (let r = l.cursor; r < this.regions; r++) {
      if (l.stale[r] !== 0 && !l.claimed.has(r)) { l.cursor = r + 1; return r }
    }
    l.cursor = this.regions
    return -1
  }

  /** The chunk digests are compared in, or 0 when resync copies whole regions. */
  private compareChunk (): number {
    if (this.options.compare === false) return 0
    const chunk = Math.min(COMPARE_CHUNK, this.region)
    return isHashChunk(chunk) ? chunk : 0
  }

  // ---- online verify ---------------------------------------------------------------------------------------------

  /**
   * Compares every region on every leg that holds it, by digests computed where each leg's data lives, while I/O goes
   * on (each region is locked against writes only while its digests are taken). Mismatches are reported; with
   * `repair`, the legs that differ from the reference (the `from` leg, or a strict majority of 3+ legs) get the
   * region marked stale and are resynced from it, and the verify ends once that resync has.
   */
  verify (options: VerifyOptions = {}): Promise<VerifyReport> {
    if (this.lastVerify?.state === 'running') return Promise.reject(new DstError('DST_ERR_BUSY', `mirror '${this.name}': a verify is already running`, Errno.EAGAIN))
    const run = this.runVerify(options)
    this.verifying = run.catch(() => {}).then(() => { this.verifying = null })
    return run
  }

  private async runVerify (options: VerifyOptions): Promise<VerifyReport> {
    if (this.lastVerify?.state === 'running') throw new DstError('DST_ERR_BUSY', `mirror '${this.name}': a verify is already running`, Errno.EAGAIN)
    const from = options.from ?? null
    if (from !== null) {
      const leg = this.legNamed(from)
      if (absent(leg)) throw new DstError('DST_ERR_NOTSYNC', `mirror '${this.name}': leg '${from}' is ${leg.state}; it cannot be the reference`, Errno.EINVAL)
    }
    if (this.legs.length < 2) throw new DstError('DST_ERR_ONELEG', `mirror '${this.name}' has one leg: nothing to compare`, Errno.EINVAL)
    const chunk = Math.min(COMPARE_CHUNK, this.region)
    if (!isHashChunk(chunk)) throw new DstError('DST_ERR_REGION', `mirror '${this.name}': region ${this.region} is too small to verify by digest`, Errno.EINVAL)
    const report: VerifyReport = {
      state: 'running', repair: options.repair === true, from, startedAt: new Date().toISOString(), finishedAt: null,
      seconds: 0, totalBytes: this.size, doneBytes: 0, comparedBytes: 0, skippedBytes: 0, notCompared: [], incomplete: null,
      mismatches: 0, repairedRegions: 0, mismatchedRegions: [], error: null,
    }
    this.lastVerify = report
    this.verifyTotals.runs++
    const began = Date.now()
    const toResync = new Set<Leg>()
    let next = 0
    const worker = async (): Promise<void> => {
      while (next < this.regions && !this.stopping) {
        const r = next++
        await this.verifyRegion(r, chunk, from, report, toResync)
        report.seconds = (Date.now() - began) / 1000
        options.onProgress?.(report)
        const rate = options.rate ?? 0
        if (rate > 0) {
          const ahead = (report.doneBytes / rate) * 1000 - (Date.now() - began)
          if (ahead > 0) await new Promise(resolve => setTimeout(resolve, ahead))
        }
      }
    }
    try {
      await settleAll(Array.from({ length: Math.max(1, options.concurrency ?? 4) }, worker))
      if (this.stopping) throw new DstError('DST_ERR_CLOSED', `mirror '${this.name}' closed during the verify`, Errno.ESHUTDOWN)
      if (toResync.size > 0) {
        await this.save()
        this.log(`verify: resyncing ${report.repairedRegions} mismatched regions on ${[...toResync].map(l => l.name).join(', ')}`)
        await settleAll([...toResync].map(l => this.startResync(l)))
        const left = [...toResync].filter(l => l.state !== 'in-sync')
        if (left.length > 0) throw new DstError('DST_ERR_REPAIR', `repair incomplete: ${left.map(l => `${l.name} is ${l.state}${l.lastError !== '' ? ` (${l.lastError})` : ''}`).join('; ')}`, Errno.EIO)
      }
      if (report.notCompared.length > 0) {
        report.state = 'incomplete'
        report.incomplete = report.notCompared.map(x => `leg ${x.leg} ${x.state === 'failed' ? 'down' : x.state}: ${formatSize(x.bytes)} not compared`).join('; ')
      } else report.state = 'done'
    } catch (err) {
      report.state = 'failed'
      report.error = (err as Error).message
    } finally {
      report.finishedAt = new Date().toISOString()
      report.seconds = (Date.now() - began) / 1000
      options.onProgress?.(report)
    }
    this.log(`verify ${report.state}: ${report.comparedBytes} bytes compared, ${report.mismatches} mismatched regions` +
      `${report.repair ? `, ${report.repairedRegions} repaired` : ''}${report.error !== null ? ` (${report.error})` : ''}` +
      `${report.incomplete !== null ? ` (${report.incomplete})` : ''}`)
    return report
  }

  private async verifyRegion (r: number, chunk: number, from: string | null, report: VerifyReport, toResync: Set<Leg>): Promise<void> {
    const at = r * this.region
    const n = Math.min(this.region, this.size - at)
    for (let attempt = 0; ; attempt++) {
      const legs = this.legs.filter(l => !absent(l) && l.stale[r] === 0)
      const left = (): void => { if (legs.length < this.legs.length) this.notCompared(report, this.legs.filter(l => !legs.includes(l)), n) }
      if (legs.length < 2) { left(); report.skippedBytes += n; break }
      await this.lockRegion(r)
      let results: Array<PromiseSettledResult<Buffer>>
      try {
        results = await Promise.allSettled(legs.map(l => l.device.hash(at, n, chunk)))
      } finally {
        this.unlockRegion(r)
      }
      // A leg removed or split off while it digested is no longer part of the comparison.
      if (legs.some(l => !this.legs.includes(l))) continue
      const busy = results.some(x => x.status === 'rejected' && hashTrouble(x.reason))
      results.forEach((x, i) => { if (x.status === 'rejected' && !hashTrouble(x.reason)) this.fail(legs[i], x.reason) })
      if (busy) {
        // The hash workers were full or failed: try the region again shortly, a bounded number of times.
        if (attempt >= 20) throw (results.find(x => x.status === 'rejected' && hashTrouble(x.reason)) as PromiseRejectedResult).reason
        await new Promise(resolve => setTimeout(resolve, Math.min(1000, 10 * 2 ** attempt)))
        continue
      }
      if (results.some(x => x.status === 'rejected')) continue
      const digests = results.map(x => (x as PromiseFulfilledResult<Buffer>).value)
      left()
      report.comparedBytes += n
      this.verifyTotals.bytes += n
      if (digests.every(d => d.equals(digests[0]))) break
      this.mismatch(r, at, n, chunk, legs, digests, from, report, toResync)
      break
    }
    report.doneBytes += n
  }

  /** Counts bytes of a region that `legs` could not be compared on, per leg and the state it was in. */
  private notCompared (report: VerifyReport, legs: Leg[], n: number): void {
    for (const l of legs) {
      const entry = report.notCompared.find(x => x.leg === l.name && x.state === l.state)
      if (entry !== undefined) entry.bytes += n; else report.notCompared.push({ leg: l.name, state: l.state, bytes: n })
    }
  }

  private mismatch (r: number, at: number, n: number, chunk: number, legs: Leg[], digests: Buffer[], from: string | null,
    report: VerifyReport, toResync: Set<Leg>): void {
    let chunks = 0
    for (let c = 0; c * DIGEST_SIZE < digests[0].length; c++) {
      const a = c * DIGEST_SIZE
      if (!digests.every(d => d.compare(digests[0], a, a + DIGEST_SIZE, a, a + DIGEST_SIZE) === 0)) chunks++
    }
    // The reference: the operator's leg, or else a strict majority of the legs compared.
    let reference = -1
    let referenceName: string | null = null
    if (from !== null) {
      reference = legs.findIndex(l => l.name === from)
      if (reference >= 0) referenceName = from
    } else if (legs.length >= 3) {
      for (let i = 0; i < legs.length && reference < 0; i++) {
        if (digests.filter(d => d.equals(digests[i])).length * 2 > legs.length) { reference = i; referenceName = 'majority' }
      }
    }
    const differing = reference < 0 ? legs : legs.filter((_, i) => !digests[i].equals(digests[reference]))
    const repaired = report.repair && reference >= 0
    if (repaired) {
      for (const l of differing) {
        const i = this.legs.indexOf(l)
        this.setBit(i, r, true)
        this.marked.add(r)
        this.markStale(l, r, r)
        if (l.state === 'in-sync') l.state = 'stale'
        toResync.add(l)
      }
      report.repairedRegions++
      this.verifyTotals.repaired++
    }
    report.mismatches++
    this.verifyTotals.mismatches++
    this.log(`verify: region ${r} (${at}+${n}) differs in ${chunks} of ${Math.ceil(n / chunk)} chunks on ${differing.map(l => l.name).join(', ')}` +
      (reference < 0 ? ' (no reference to repair from: give --from LEG)' : ` from ${referenceName === 'majority' ? 'the majority' : `'${referenceName}'`}${repaired ? '; marked for resync' : ''}`))
    // Regions are compared several at once and finish in any order; the list stays in region order (the first
    // REPORT_LIMIT regions that differ), as a user reading it expects.
    const list = report.mismatchedRegions
    let pos = list.length
    while (pos > 0 && list[pos - 1].region > r) pos--
    if (pos < REPORT_LIMIT) {
      list.splice(pos, 0, { region: r, offset: at, length: n, chunks, legs: differing.map(l => l.name), reference: referenceName, repaired })
      if (list.length > REPORT_LIMIT) list.pop()
    }
  }

  private async lockRegion (r: number): Promise<void> {
    this.locked.set(r, (this.locked.get(r) ?? 0) + 1)
    if (this.regionInflight.has(r)) {
      await new Promise<void>(resolve => {
        const list = this.idleWaiters.get(r)
        if (list === undefined) this.idleWaiters.set(r, [resolve]); else list.push(resolve)
      })
    }
  }

  private unlockRegion (r: number): void {
    const n = (this.locked.get(r) ?? 1) - 1
    if (n === 0) this.locked.delete(r); else this.locked.set(r, n)
    this.openGate()
  }

  // ---- management ------------------------------------------------------------------------------------------------

  /** Holds new I/O and waits for what is in flight, runs `fn`, then lets I/O go on. */
  private async withIoHeld <T>(fn: () => Promise<T>): Promise<T> {
    while (this.paused) await new Promise<void>(resolve => this.gate.push(resolve))
    this.paused = true
    try {
      if (this.active > 0) await new Promise<void>(resolve => { this.activeIdle = resolve })
      return await fn()
    } finally {
      this.paused = false
      this.openGate()
    }
  }

  get legNames (): string[] { return this.legs.map(l => l.name) }

  /** Adds a leg (full sync in the background). */
  async addLeg (member: Member): Promise<void> {
    if (this.legs.some(l => l.name === member.name)) throw new DstError('DST_ERR_EXISTS', `mirror '${this.name}': '${member.name}' is already a leg`, Errno.EINVAL)
    if (member.device.size < this.size) throw new DstError('DST_ERR_SIZE', `mirror '${this.name}': '${member.name}' has ${member.device.size} bytes, the mirror needs ${this.size}`, Errno.EINVAL)
    if (!member.device.writable) throw new DstError('DST_ERR_EROFS', `mirror '${this.name}': '${member.name}' is read-only`, Errno.EROFS)
    const leg = newLeg(member, this.regions, this.options)
    leg.state = 'stale'
    leg.stale.fill(1)
    leg.staleCount = this.regions
    leg.full = true
    await this.withIoHeld(async () => {
      const bits = new Uint8Array(bitmapBytes(this.regions))
      fillBits(bits, this.regions)
      this.legs.push(leg)
      this.state_.bits.push(bits)
      this.state_.superblock.legs.push({ name: member.name, identity: member.device.identity, inSync: false })
      this.state_.superblock.events++
      for (let r = 0; r < this.regions; r++) this.marked.add(r)
      await this.store.create(this.state_)
      this.pages = new Map()
    })
    this.log(`leg '${member.name}' added: it is overwritten by a full sync from the array`)
    if (this.options.autoResync !== false) this.startResync(leg).catch(() => {})
  }

  /**
   * Takes on the disk now behind a foreign leg as a new leg: its identity is recorded and the whole array is copied
   * to it (a full sync, compare-first). The caller has already made the device accept that disk (a remote device
   * refuses another disk until told). Returns what was done, in words.
   */
  async replaceLeg (name: string): Promise<string> {
    const leg = this.legNamed(name)
    if (leg.state !== 'foreign') {
      throw new DstError('DST_ERR_NOTFOREIGN', `mirror '${this.name}': leg '${name}' is ${leg.state}; replace takes on the other disk of a foreign leg (to swap a working leg: remove, then add)`, Errno.EINVAL)
    }
    const d = leg.device
    if (!usable(d)) throw new DstError('DST_ERR_NOTREADY', `mirror '${this.name}': leg '${name}': its device is ${deviceError(d)}; nothing to take on`, Errno.EAGAIN)
    if (d.size < this.size) throw new DstError('DST_ERR_SIZE', `mirror '${this.name}': '${name}' has ${d.size} bytes, the mirror needs ${this.size}`, Errno.EINVAL)
    if (!d.writable) throw new DstError('DST_ERR_EROFS', `mirror '${this.name}': '${name}' is read-only`, Errno.EROFS)
    const was = this.state_.superblock.legs[this.legs.indexOf(leg)]?.identity ?? ''
    await this.withIoHeld(async () => {
      const i = this.legs.indexOf(leg)
      const record = this.state_.superblock.legs[i]
      record.identity = d.identity
      record.inSync = false
      leg.stale.fill(1)
      leg.staleCount = this.regions
      leg.full = true
      leg.newDisk = false
      leg.held = false
      leg.authority = false
      leg.lastError = ''
      leg.state = 'stale'
      fillBits(this.state_.bits[i], this.regions)
      for (let r = 0; r < this.regions; r++) this.marked.add(r)
      this.state_.superblock.events++
      await this.store.create(this.state_)
      this.pages = new Map()
    })
    const detail = `leg '${name}': disk ${d.identity || '(no identity)'} taken on in place of ${was || '(none)'}; it is overwritten by a full sync`
    this.log(detail)
    if (this.options.autoResync !== false) this.startResync(leg).catch(() => {})
    return detail
  }

  /** Removes a leg; the last in-sync leg cannot be removed. Returns its device. */
  async removeLeg (name: string): Promise<Device> {
    const leg = this.legNamed(name)
    if (leg.state === 'in-sync' && this.legs.filter(l => l.state === 'in-sync').length === 1) {
      throw new DstError('DST_ERR_LASTLEG', `mirror '${this.name}': '${name}' is the only in-sync leg`, Errno.EINVAL)
    }
    return await this.detach(leg, 'removed', async () => {
      if (leg.state === 'resyncing') leg.state = 'stale'
      await leg.running?.catch(() => {})
    })
  }

  /**
   * Detaches an in-sync leg as a point-in-time copy: I/O is held, the leg flushed and removed; what it holds is the
   * array as of that moment, usable on its own.
   */
  async splitLeg (name: string): Promise<Device> {
    const leg = this.legNamed(name)
    if (leg.state !== 'in-sync') throw new DstError('DST_ERR_NOTSYNC', `mirror '${this.name}': leg '${name}' is ${leg.state}; only an in-sync leg is a consistent copy`, Errno.EINVAL)
    if (this.legs.filter(l => l.state === 'in-sync').length < 2) throw new DstError('DST_ERR_LASTLEG', `mirror '${this.name}': '${name}' is the only in-sync leg`, Errno.EINVAL)
    return await this.detach(leg, 'split off as a point-in-time copy', () => leg.device.flush())
  }

  private legNamed (name: string): Leg {
    const leg = this.legs.find(l => l.name === name)
    if (leg === undefined) throw new DstError('DST_ERR_NOLEG', `mirror '${this.name}': no leg '${name}' (legs: ${this.legNames.join(', ')})`, Errno.EINVAL)
    return leg
  }

  /** With I/O held: `prepare`, then drop the leg from the array and rewrite the intent file without it. */
  private async detach (leg: Leg, what: string, prepare: () => Promise<void>): Promise<Device> {
    return await this.withIoHeld(async () => {
      await prepare()
      const i = this.legs.indexOf(leg)
      this.legs.splice(i, 1)
      this.state_.bits.splice(i, 1)
      this.state_.superblock.legs.splice(i, 1)
      this.state_.superblock.events++
      await this.store.create(this.state_)
      this.pages = new Map()
      this.log(`leg '${leg.name}' ${what}`)
      return leg.device
    })
  }

  // ---- helpers ---------------------------------------------------------------------------------------------------

  private regionOf (offset: number): number {
    return Math.floor(offset / this.region)
  }

  private holds (l: Leg, r0: number, r1: number): boolean {
    if (l.staleCount === 0) return true
    for (let r = r0; r <= r1; r++) if (l.stale[r] !== 0) return false
    return true
  }

  private staleBytes (l: Leg): number {
    if (l.staleCount === 0) return 0
    let bytes = l.staleCount * this.region
    if (l.stale[this.regions - 1] !== 0) bytes -= this.regions * this.region - this.size
    return bytes
  }

  private arrayState (): 'online' | 'degraded' | 'failed' | 'closed' | 'closing' {
    if (this.state === 'closed' || this.state === 'closing') return this.state
    const inSync = this.legs.filter(l => l.state === 'in-sync').length
    if (inSync === 0) return 'failed'
    return inSync === this.legs.length && inSync > 1 ? 'online' : 'degraded'
  }

  private noLegError (what: string): DstError {
    const states = this.legs.map(l => `${l.name} ${l.state}${l.lastError !== '' ? ` (${l.lastError})` : ''}`).join('; ')
    return new DstError('DST_ERR_NOLEG', `mirror '${this.name}': ${what}: no in-sync leg left (${states})`, Errno.EIO)
  }
}

/** A device that can take I/O now (not reconnecting, not holding another disk, not closed). */
function usable (d: Device): boolean {
  return d.state === 'online' || d.state === 'degraded'
}

/** Why a device is not usable, in words. */
function deviceError (d: Device): string {
  const e = (d as { lastError?: unknown }).lastError
  return typeof e === 'string' && e !== '' ? `${d.state}: ${e}` : d.state
}

/** A leg left out of all I/O: its device fails, or it holds a disk the array does not know. */
function absent (l: Leg): boolean {
  return l.state === 'failed' || l.state === 'foreign'
}

function newLeg (m: Member, regions: number, options: MirrorOptions): Leg {
  return {
    name: m.name, device: m.device, state: 'in-sync', outstanding: 0, stale: new Uint8Array(regions), staleCount: 0,
    full: false, newDisk: false, held: false, resync: null, cursor: 0, claimed: new Set(), running: null, lastError: '', nextProbe: 0,
    probeWait: options.probeInterval ?? 1000, pausedAt: -1, authority: false,
  }
}

/** Errors of the hash workers (busy, broken), not of a leg's data: they never fail a leg. */
function hashTrouble (err: unknown): boolean {
  const e = err as DstError
  return e?.code === 'DST_ERR_HASH_BUSY' || e?.code === 'DST_ERR_HASH' || e?.errno === Errno.EAGAIN
}

/** Byte ranges [from, to) of a region of `n` bytes whose chunk digests differ, adjacent chunks joined. */
function differingRuns (a: Buffer, b: Buffer, chunk: number, n: number): Array<[number, number]> {
  const runs: Array<[number, number]> = []
  for (let c = 0; c * chunk < n; c++) {
    const d = c * DIGEST_SIZE
    if (a.compare(b, d, d + DIGEST_SIZE, d, d + DIGEST_SIZE) === 0) continue
    const from = c * chunk
    const to = Math.min(n, from + chunk)
    const last = runs[runs.length - 1]
    if (last !== undefined && last[1] === from) last[1] = to; else runs.push([from, to])
  }
  return runs
}

/** What /status shows of a verify: the counts and the first mismatched regions. */
function summary (v: VerifyReport): Record<string, unknown> {
  return { ...v, mismatchedRegions: v.mismatchedRegions.slice(0, 20) }
}

function getBit (bits: Uint8Array, r: number): boolean {
  return (bits[r >> 3] & (1 << (r & 7))) !== 0
}

function fillBits (bits: Uint8Array, regions: number): void {
  bits.fill(0xff, 0, regions >> 3)
  for (let r = regions & ~7; r < regions; r++) bits[r >> 3] |= 1 << (r & 7)
}

function countOnes (a: Uint8Array): number {
  let n = 0
  for (let i = 0; i < a.length; i++) n += a[i]
  return n
}

