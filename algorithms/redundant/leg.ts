// leg: one member of a redundant array, and its state machine. A leg's state changes only through `to()`, which
// checks that the change is one the array knows, counts it (per transition, for status and metrics), logs it and,
// when asked, counts it as an array event (the superblock's event counter). The leg also carries what the array keeps
// per member: its position, its write-intent bits and superblock record, which regions it does not hold (`stale`),
// and the bookkeeping of its resync and health probes.

import type { Device } from '../../node/core/device'
import type { LegRecord } from '../intent-store'

/**
 * `failed`: the leg's device does not answer (or fails requests); `foreign`: another disk answers where the leg was
 * (its identity is not the one the array knows), or a leg new to the array holds data: it is never written until the
 * operator takes it on (`replaceLeg`). Both are left out of all I/O.
 */
export type LegState = 'in-sync' | 'stale' | 'resyncing' | 'failed' | 'foreign'

/** The changes a leg's state may make; anything else is a bug in the array, and `to()` throws. */
const ALLOWED: Record<LegState, readonly LegState[]> = {
  'in-sync': ['stale', 'failed', 'foreign'],
  stale: ['resyncing', 'failed', 'foreign'],
  resyncing: ['in-sync', 'stale', 'failed', 'foreign'],
  failed: ['stale', 'foreign'],
  // foreign -> foreign: a leg found foreign by its device is then held by the array's own finding.
  foreign: ['stale', 'foreign'],
}

/** A running resync: bytes done of total, written, compared by digest, and in the sources' holes needing no write. */
export interface ResyncProgress { doneBytes: number, totalBytes: number, copiedBytes: number, comparedBytes: number, skippedBytes: number }

export interface LegHooks {
  log: (message: string) => void
  /** Counts one array event (the superblock's counter). */
  event: () => void
}

export interface Transition {
  /** The leg's last error, set with the change ('' clears it; absent leaves it). */
  why?: string
  /** The log line; absent: "leg 'NAME' STATE (was OLD): WHY"; false: nothing is logged. */
  log?: string | false
  /** The change is an array event (bumps the superblock's counter). */
  event?: boolean
}

export class Leg {
  readonly name: string
  readonly device: Device
  private state_: LegState
  /** Position in the array (superblock and bitmap order); kept by the LegSet. */
  index = 0
  /** This leg's write-intent bitmap (a bit per region) and its superblock record, owned by the intent map. */
  bits: Uint8Array
  record: LegRecord
  outstanding = 0
  /** One byte per region: 1 when this leg does not hold the array's data there. */
  readonly stale: Uint8Array
  staleCount = 0
  /** A leg new to the array: its resync compares before it copies. */
  full = false
  /** Its disk is new to the array and not yet found blank: it is never written before that check (or a replace). */
  newDisk = false
  /** Foreign by the array's own finding (a disk it does not know): stays so until `replaceLeg`. */
  held = false
  resync: ResyncProgress | null = null
  /** Where the resync's workers look for the next stale region, and the regions they hold. */
  cursor = 0
  readonly claimed = new Set<number>()
  running: Promise<void> | null = null
  lastError = ''
  nextProbe = 0
  probeWait: number
  /** The array's event count when this leg's resync paused for want of a source (-1: not paused). */
  pausedAt = -1
  /**
   * This leg failed as the last in-sync one and no leg has been in sync since: it holds every acknowledged write, so
   * the superblock keeps calling it in sync (a restart takes regions marked on every leg from it).
   */
  authority = false
  /** Transitions this leg has made, by "from>to" (status and metrics). */
  readonly transitions: Record<string, number> = {}
  private readonly hooks: LegHooks

  constructor (name: string, device: Device, regions: number, bits: Uint8Array, record: LegRecord, probeWait: number,
    hooks: LegHooks, state: LegState = 'in-sync') {
    this.name = name
    this.device = device
    this.stale = new Uint8Array(regions)
    this.bits = bits
    this.record = record
    this.probeWait = probeWait
    this.hooks = hooks
    this.state_ = state
  }

  get state (): LegState { return this.state_ }

  /** Left out of all I/O: its device fails, or it holds a disk the array does not know. */
  get absent (): boolean { return this.state_ === 'failed' || this.state_ === 'foreign' }

  /** The one way a leg's state changes. */
  to (next: LegState, t: Transition = {}): void {
    const was = this.state_
    if (!ALLOWED[was].includes(next)) throw new Error(`leg '${this.name}': no transition from ${was} to ${next}`)
    this.state_ = next
    const key = `${was}>${next}`
    this.transitions[key] = (this.transitions[key] ?? 0) + 1
    if (t.why !== undefined) this.lastError = t.why
    if (t.event === true) this.hooks.event()
    if (t.log !== false) this.hooks.log(t.log ?? `leg '${this.name}' ${next} (was ${was})${t.why !== undefined && t.why !== '' ? `: ${t.why}` : ''}`)
  }

  /** Sets the state of a leg being set up (open, add): no transition, nothing counted. */
  initial (state: LegState): void {
    this.state_ = state
  }

  /** True if this leg holds the array's data over regions r0..r1. */
  holds (r0: number, r1: number): boolean {
    if (this.staleCount === 0) return true
    for (let r = r0; r <= r1; r++) if (this.stale[r] !== 0) return false
    return true
  }

  markStale (r0: number, r1: number): void {
    for (let r = r0; r <= r1; r++) if (this.stale[r] === 0) { this.stale[r] = 1; this.staleCount++ }
  }

  markHeld (r: number): void {
    if (this.stale[r] !== 0) { this.stale[r] = 0; this.staleCount-- }
  }

  /** Marks every region stale (a full sync). */
  markAllStale (): void {
    this.stale.fill(1)
    this.staleCount = this.stale.length
  }

  /** Bytes of the array this leg does not hold (`region` bytes per region, `size` in all). */
  staleBytes (region: number, size: number): number {
    if (this.staleCount === 0) return 0
    const regions = this.stale.length
    let bytes = this.staleCount * region
    if (this.stale[regions - 1] !== 0) bytes -= regions * region - size
    return bytes
  }

  countStale (): void {
    let n = 0
    for (let i = 0; i < this.stale.length; i++) n += this.stale[i]
    this.staleCount = n
  }
}
