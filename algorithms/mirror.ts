// mirror: every leg holds the whole array. Writes go to every present leg and complete when all have answered;
// reads go to the least busy leg that holds the range (large reads are split across legs). A write-intent bit per leg
// and region is made durable before the data write is issued and cleared lazily once the region is quiet, so a leg
// that was away, or a crash, costs a resync of only the regions that may differ. A returning leg is brought up to
// date in the background, region by region, while I/O goes on; a region being copied is locked against writes so
// older data can never overwrite newer.

import { randomUUID } from 'node:crypto'
import { Device, type DeviceStatus } from '../node/device'
import { DstError, Errno } from '../node/errors'
import { bitmapBytes, PAGE, type IntentState, type IntentStore, type LegRecord } from './intent-store'
import type { Member } from './linear'
import { settleAll } from '../node/settle'

export type LegState = 'in-sync' | 'stale' | 'resyncing' | 'failed'

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
  resync: { doneBytes: number, totalBytes: number, copiedBytes: number } | null
  running: Promise<void> | null
  lastError: string
  nextProbe: number
  probeWait: number
}

/** Reads at least this long are split across legs so one reader gets the bandwidth of several. */
const SPLIT_READ = 128 * 1024

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
    if (members.length < 1) throw new DstError('DST_ERR_CONFIG', `mirror '${options.name}': needs at least one leg`, Errno.EINVAL)
    const sizes = members.map(m => m.device.size)
    const size = Math.min(...sizes)
    if (new Set(sizes).size > 1) {
      options.log?.(`legs differ in size (${members.map(m => `${m.name} ${m.device.size}`).join(', ')}); the mirror uses ${size} bytes`)
    }
    const regions = Math.ceil(size / region)
    const bytes = bitmapBytes(regions)
    const loaded = await store.load()
    const legs: Leg[] = members.map(m => newLeg(m, regions, options))
    const records: LegRecord[] = members.map(m => ({ name: m.name, identity: m.device.identity, inSync: true }))
    const bits = members.map(() => new Uint8Array(bytes))
    let uuid: string = randomUUID()
    let events = 0
    let layoutChanged = true
    if (loaded !== null && loaded.superblock.region === region && loaded.superblock.size === size) {
      const old = loaded.superblock
      uuid = old.uuid
      events = old.events
      const matched: number[] = []
      for (const [i, m] of members.entries()) {
        const j = m.device.identity === '' ? -1 : old.legs.findIndex(l => l.identity === m.device.identity)
        matched.push(j)
        if (j >= 0) {
          bits[i].set(loaded.bits[j])
          records[i].inSync = old.legs[j].inSync
        } else {
          records[i].inSync = false
          legs[i].full = true
          fillBits(bits[i], regions)
          options.log?.(`leg '${m.name}' is new to the array (identity ${m.device.identity || 'none'}): full sync`)
        }
      }
      layoutChanged = matched.some((j, i) => j !== i) || old.legs.length !== members.length
      // A region marked on every leg was being written at the crash: any leg's copy will do, as long as all agree.
      // Take the first leg that was in sync as the source.
      let source = records.findIndex((r, i) => r.inSync && matched[i] >= 0)
      if (source < 0) source = matched.findIndex(j => j >= 0)
      if (source < 0) source = 0
      for (let r = 0; r < regions; r++) {
        let all = true
        for (let i = 0; i < legs.length; i++) {
          if (getBit(bits[i], r)) { legs[i].stale[r] = 1 } else all = false
        }
        if (all) legs[source].stale[r] = 0
      }
      if (legs.every(l => l.full)) { legs[0].full = false; legs[0].stale.fill(0) }
    } else {
      if (loaded !== null) options.log?.(`region or size changed (was ${loaded.superblock.region}/${loaded.superblock.size}); starting over with a full sync`)
      // A new array: the first leg is the truth; every other leg is compared and copied once.
      for (let i = 1; i < legs.length; i++) {
        fillBits(bits[i], regions)
        legs[i].stale.fill(1)
        legs[i].full = true
        records[i].inSync = false
      }
    }
    for (const l of legs) {
      l.staleCount = countOnes(l.stale)
      if (l.staleCount > 0) l.state = 'stale'
    }
    const state: IntentState = { superblock: { uuid, size, region, events: events + 1, legs: records }, bits }
    if (layoutChanged) await store.create(state); else await store.update(state, new Map())
    const mirror = new MirrorDevice(options, size, state, legs)
    mirror.start()
    return mirror
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
      members: this.legs.map(l => ({
        name: l.name,
        ...l.device.status(),
        deviceState: l.device.state,
        state: l.state,
        dirtyBytes: this.staleBytes(l),
        ...(l.resync !== null ? { resync: { doneBytes: l.resync.doneBytes, totalBytes: l.resync.totalBytes } } : {}),
        ...(l.lastError !== '' ? { lastError: l.lastError } : {}),
      })),
    }
  }

  // ---- I/O -------------------------------------------------------------------------------------------------------

  protected override async _read (offset: number, length: number, into: Uint8Array): Promise<void> {
    await this.enter()
    try {
      await this.readRange(offset, length, into)
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
      const targets = this.legs.filter(l => l.state !== 'failed')
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
    this.clearQuiet(true)
    await this.save()
    await this.store.close?.()
  }

  private async readRange (offset: number, length: number, into: Uint8Array): Promise<void> {
    const r0 = this.regionOf(offset)
    const r1 = this.regionOf(offset + length - 1)
    for (;;) {
      const eligible = this.legs.filter(l => l.state !== 'failed' && this.holds(l, r0, r1))
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
      if (this.markIntent(r0, r1)) await this.save()
      const targets: Leg[] = []
      for (const l of this.legs) {
        if (l.state === 'failed') this.markStale(l, r0, r1); else targets.push(l)
      }
      const ok = await Promise.all(targets.map(l => {
        l.outstanding++
        return op(l).then(() => true, err => { this.fail(l, err); this.markStale(l, r0, r1); return false })
          .finally(() => { l.outstanding-- })
      }))
      if (!targets.some((l, i) => ok[i] && l.state === 'in-sync')) throw this.noLegError(`write ${offset}+${length}`)
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
        if (l.stale[r] === 0 && l.state !== 'failed') { this.setBit(i, r, false); changed = true } else left = true
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
    sb.legs.forEach((rec, i) => { rec.inSync = this.legs[i]?.state === 'in-sync' })
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
    if (l.state === 'failed') return
    const was = l.state
    l.state = 'failed'
    l.lastError = (err as Error)?.message ?? String(err)
    l.nextProbe = Date.now() + l.probeWait
    this.state_.superblock.events++
    this.log(`leg '${l.name}' failed (was ${was}): ${l.lastError}`)
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

  /** Checks failed legs: one whose device answers again becomes stale and is resynced. */
  private probe (): void {
    const now = Date.now()
    for (const l of this.legs) {
      // A leg whose old resync is still winding down is probed once that has stopped.
      if (l.state !== 'failed' || now < l.nextProbe || this.stopping || l.running !== null) continue
      const ds = l.device.state
      if (ds === 'connecting' || ds === 'closed' || ds === 'closing' || ds === 'failed') continue
      l.nextProbe = Number.POSITIVE_INFINITY
      const buf = Buffer.alloc(Math.min(this.blockSize, this.size))
      l.device.read(0, buf.length, buf).then(() => {
        l.probeWait = this.options.probeInterval ?? 1000
        l.lastError = ''
        const i = this.legs.indexOf(l)
        const record = this.state_.superblock.legs[i]
        if (record !== undefined && record.identity !== l.device.identity) {
          // Another disk answers where this leg was: nothing on it can be trusted; copy the whole array to it.
          this.log(`leg '${l.name}' came back with a different disk (${l.device.identity}, was ${record.identity}): full sync`)
          record.identity = l.device.identity
          l.stale.fill(1)
          l.staleCount = this.regions
          l.full = true
          for (let r = 0; r < this.regions; r++) { this.setBit(i, r, true); this.marked.add(r) }
        }
        l.state = 'stale'
        this.state_.superblock.events++
        this.log(`leg '${l.name}' is back: resyncing ${this.staleBytes(l)} bytes`)
        // The map (with a new disk's identity and all its bits) is on disk before anything is copied.
        this.save().then(() => {
          if (this.options.autoResync !== false) this.startResync(l).catch(() => {})
        }, (err: Error) => this.log(err.message))
      }, (err: Error) => {
        l.lastError = err.message
        l.probeWait = Math.min(l.probeWait * 2, 5000)
        l.nextProbe = Date.now() + l.probeWait
      })
    }
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
    l.resync = { doneBytes: 0, totalBytes: total, copiedBytes: 0 }
    const buf = Buffer.alloc(this.region)
    const cmp = l.full ? Buffer.alloc(this.region) : null
    const rate = this.options.resyncRate ?? 0
    const began = Date.now()
    try {
      for (let r = 0; r < this.regions; r++) {
        if (l.stale[r] === 0) continue
        if (this.stopping || l.state !== 'resyncing') return
        const at = r * this.region
        const n = Math.min(this.region, this.size - at)
        await this.lockRegion(r)
        try {
          const copied = await this.copyRegion(l, r, at, n, buf, cmp)
          if (copied === null) return
          l.stale[r] = 0
          l.staleCount--
          l.resync.doneBytes += n
          l.resync.copiedBytes += copied
          this.resyncedBytes += copied
        } finally {
          this.unlockRegion(r)
        }
        if (rate > 0) {
          const ahead = (l.resync.doneBytes / rate) * 1000 - (Date.now() - began)
          if (ahead > 0) await new Promise(resolve => setTimeout(resolve, ahead))
        }
      }
      if (l.state !== 'resyncing') return
      l.state = 'in-sync'
      l.full = false
      this.state_.superblock.events++
      this.log(`leg '${l.name}' in sync (${l.resync.copiedBytes} of ${total} bytes copied)`)
      this.clearQuiet(true)
      await this.save()
    } finally {
      if (l.state === 'resyncing') l.state = 'stale'
      l.resync = null
    }
  }

  /** Copies one region to `l` from a leg that holds it; returns bytes written, or null when the resync must stop. */
  private async copyRegion (l: Leg, r: number, at: number, n: number, buf: Buffer, cmp: Buffer | null): Promise<number | null> {
    for (;;) {
      const sources = this.legs.filter(s => s !== l && s.state !== 'failed' && s.stale[r] === 0)
      if (sources.length === 0) {
        l.lastError = `no leg holds region ${r} to copy from`
        this.log(`leg '${l.name}': resync paused: ${l.lastError}`)
        return null
      }
      sources.sort((a, b) => a.outstanding - b.outstanding)
      const src = sources[0]
      try {
        await src.device.read(at, n, buf.subarray(0, n))
      } catch (err) {
        this.fail(src, err)
        continue
      }
      try {
        if (cmp !== null) {
          await l.device.read(at, n, cmp.subarray(0, n))
          this.comparedBytes += n
          if (cmp.subarray(0, n).equals(buf.subarray(0, n))) return 0
        }
        await l.device.write(at, buf.subarray(0, n))
        return n
      } catch (err) {
        this.fail(l, err)
        return null
      }
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
    this.log(`leg '${member.name}' added: full sync`)
    if (this.options.autoResync !== false) this.startResync(leg).catch(() => {})
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

function newLeg (m: Member, regions: number, options: MirrorOptions): Leg {
  return {
    name: m.name, device: m.device, state: 'in-sync', outstanding: 0, stale: new Uint8Array(regions), staleCount: 0,
    full: false, resync: null, running: null, lastError: '', nextProbe: 0, probeWait: options.probeInterval ?? 1000,
  }
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

