// intent-map: a redundant array's write-intent map in memory, over an IntentStore. A write sets the bit of every leg
// for its regions and waits for the save before it is issued (`markIntent`, `save`); bits are cleared lazily once a
// region has been quiet for a pass and every leg holds it (`clearQuiet`). Concurrent savers share saves (one running,
// at most one queued), only the bitmap pages that changed are written, and a leg failure's save is a barrier: writes
// that skipped the leg are acknowledged only once it is on disk (`recordFailure`, `failureBarrier`).

import { DstError, Errno, ErrorCode } from '../../node/core/errors'
import { PAGE, type IntentState, type IntentStore, type Superblock } from '../intent-store'
import type { LegSet } from './leg-set'
import type { Leg } from './leg'
import type { RegionGate } from './region-gate'

export class IntentMap {
  private readonly state: IntentState
  private readonly store: IntentStore
  private readonly legs: LegSet
  private readonly gate: RegionGate
  private readonly arrayName: string
  private readonly log: (message: string) => void
  /** Regions with an intent bit set on any leg; the clear pass looks only at these. */
  private readonly marked = new Set<number>()
  /**
   * Regions whose bits stay set whatever the legs hold, until the array lets go of them (parity: regions whose parity
   * is still to be recomputed from the data after a crash or at creation).
   */
  readonly pinned = new Set<number>()
  /** Bitmap pages changed since the last save: leg index -> byte offsets. */
  private pages = new Map<number, Set<number>>()
  private saving: Promise<void> | null = null
  private saveQueued: Promise<void> | null = null
  /** The save recording the latest leg failure, until it is on disk. */
  private failSave: Promise<void> | null = null

  constructor (arrayName: string, superblock: Superblock, store: IntentStore, legs: LegSet, gate: RegionGate, regions: number,
    log: (message: string) => void) {
    this.arrayName = arrayName
    this.store = store
    this.legs = legs
    this.gate = gate
    this.log = log
    this.state = { superblock, bits: [] }
    this.relayout()
    for (let r = 0; r < regions; r++) if (this.anyBit(r)) this.marked.add(r)
  }

  get superblock (): Superblock { return this.state.superblock }
  get events (): number { return this.state.superblock.events }
  /** Counts one array event (saved with the next save). */
  readonly event = (): void => { this.state.superblock.events++ }

  /** Sets the intent bit of every leg for the regions; true if any bit changed (a save is needed). */
  markIntent (r0: number, r1: number): boolean {
    let changed = false
    for (let r = r0; r <= r1; r++) {
      for (const l of this.legs.all) {
        if (!getBit(l.bits, r)) { this.setBit(l.index, r, true); changed = true }
      }
      this.marked.add(r)
    }
    return changed
  }

  /** Marks one region on one leg (a verify repair). */
  mark (leg: number, r: number): void {
    this.setBit(leg, r, true)
    this.marked.add(r)
  }

  /** Marks every region on every leg (a leg added or replaced: the pass clears what the resync makes whole). */
  markAll (regions: number): void {
    for (let r = 0; r < regions; r++) this.marked.add(r)
  }

  /** Clears a leg's bit for a region if set; true if it changed. */
  unmark (leg: number, r: number): boolean {
    const l = this.legs.all[leg]
    if (!getBit(l.bits, r)) return false
    this.setBit(leg, r, false)
    return true
  }

  /** Clears the bits of regions that have been quiet since the last pass and are held by their leg. */
  clearQuiet (all = false): boolean {
    let changed = false
    const touched = this.gate.touched
    for (const r of this.marked) {
      if (this.gate.busy(r) || (!all && touched.has(r)) || this.gate.isLocked(r) || this.pinned.has(r)) continue
      let left = false
      for (const l of this.legs.all) {
        if (!getBit(l.bits, r)) continue
        if (l.stale[r] === 0 && !l.absent) { this.setBit(l.index, r, false); changed = true } else left = true
      }
      if (!left) this.marked.delete(r)
    }
    touched.clear()
    return changed
  }

  /**
   * Takes on the disk `identity` as leg `leg` (a replace): recorded, out of sync, every region stale and marked, and
   * the map rewritten whole; the caller holds I/O and then starts the leg's full sync (or rebuild).
   */
  async takeOn (leg: Leg, identity: string, regions: number): Promise<void> {
    leg.record.identity = identity
    leg.record.inSync = false
    leg.markAllStale()
    leg.full = true
    leg.newDisk = false
    leg.held = false
    leg.authority = false
    leg.to('stale', { why: '', log: false })
    fillBits(leg.bits, regions)
    this.markAll(regions)
    this.event()
    await this.rewrite()
  }

  /** Makes the in-memory map durable. Concurrent callers share saves; a caller's bits are in the save it awaits. */
  save (): Promise<void> {
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

  /** A save whose failure is only logged (background saves). */
  saveLogged (): void {
    this.save().catch(err => this.log((err as Error).message))
  }

  /** Saves a leg's failure; writes that skip the leg wait for it (`failureBarrier`). */
  recordFailure (): void {
    const saving: Promise<void> = this.save().catch(err => this.log((err as Error).message)).finally(() => {
      if (this.failSave === saving) this.failSave = null
    })
    this.failSave = saving
  }

  /** Resolves once the latest leg failure is on disk (at once when there is none pending). */
  failureBarrier (): Promise<void> | null {
    return this.failSave
  }

  /** Rebuilds the stored arrays from the legs and rewrites the whole map (legs added, removed or replaced). */
  async rewrite (): Promise<void> {
    this.relayout()
    await this.store.create(this.state)
    this.pages = new Map()
  }

  /** Writes the map as it is at open (a new layout is written whole). */
  async initial (layoutChanged: boolean): Promise<void> {
    if (layoutChanged) await this.store.create(this.state); else await this.store.update(this.state, new Map())
  }

  async close (): Promise<void> {
    await this.store.close?.()
  }

  private async runSave (): Promise<void> {
    const pages = this.pages
    this.pages = new Map()
    for (const l of this.legs.all) l.record.inSync = l.state === 'in-sync' || l.authority
    try {
      await this.store.update(this.state, pages)
    } catch (err) {
      // Keep the pages for the next attempt; the write that needed them fails.
      for (const [leg, set] of pages) for (const p of set) this.setPage(leg, p)
      throw new DstError(ErrorCode.INTENT, `array '${this.arrayName}': cannot save the write-intent map: ${(err as Error).message}`, Errno.EIO)
    }
  }

  private relayout (): void {
    this.state.bits = this.legs.all.map(l => l.bits)
    this.state.superblock.legs = this.legs.all.map(l => l.record)
  }

  private anyBit (r: number): boolean {
    return this.legs.all.some(l => getBit(l.bits, r))
  }

  private setBit (leg: number, r: number, on: boolean): void {
    const bits = this.legs.all[leg].bits
    if (on) bits[r >> 3] |= 1 << (r & 7); else bits[r >> 3] &= ~(1 << (r & 7))
    this.setPage(leg, Math.floor((r >> 3) / PAGE) * PAGE)
  }

  private setPage (leg: number, page: number): void {
    let set = this.pages.get(leg)
    if (set === undefined) { set = new Set(); this.pages.set(leg, set) }
    set.add(page)
  }
}

export function getBit (bits: Uint8Array, r: number): boolean {
  return (bits[r >> 3] & (1 << (r & 7))) !== 0
}

export function fillBits (bits: Uint8Array, regions: number): void {
  bits.fill(0xff, 0, regions >> 3)
  for (let r = regions & ~7; r < regions; r++) bits[r >> 3] |= 1 << (r & 7)
}
