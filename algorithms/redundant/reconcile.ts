// reconcile: what a redundant array makes of its superblock at open, as a pure function of what was saved and which
// legs answer now. It matches the legs to the saved ones by identity, carries their intent bits and in-sync records
// over, and marks stale, on each leg, the regions its bits say may differ; a region marked on every leg was being
// written at the crash, and one leg that was in sync keeps it (any copy will do as long as all agree). A leg new to
// the array gets every region marked. When nothing matches, or the region or size changed, the array is new (or,
// if only the region changed over legs all in sync with nothing marked, kept as it was).

import { bitmapBytes, type IntentState, type LegRecord } from '../intent-store'
import { fillBits, getBit } from './intent-map'

export interface LegAtOpen {
  name: string
  /** The identity of the disk behind the leg now ('' when it has none). */
  identity: string
}

export interface ReconciledLeg {
  record: LegRecord
  bits: Uint8Array
  /** One byte per region: 1 where the leg may not hold the array's data. */
  stale: Uint8Array
  /** Not in the superblock: its disk must be found blank (or taken on by the operator) before it is written. */
  newToArray: boolean
}

export interface Reconciled {
  /**
   * `known`: the superblock names some of these legs, with this region and size; `kept`: only the region changed,
   * and every leg was in sync with nothing marked (nothing is stale); `new`: set up as a new array (the caller decides
   * what to copy: see the mirror's `decideNew`).
   */
  kind: 'known' | 'kept' | 'new'
  /** The array's UUID from the superblock, or null for a new array. */
  uuid: string | null
  events: number
  /** The legs are not exactly the saved ones in the saved order: the map is written whole. */
  layoutChanged: boolean
  legs: ReconciledLeg[]
}

export function reconcile (loaded: IntentState | null, legs: LegAtOpen[], region: number, size: number): Reconciled {
  const regions = Math.ceil(size / region)
  const bytes = bitmapBytes(regions)
  const out: ReconciledLeg[] = legs.map(m => ({
    record: { name: m.name, identity: m.identity, inSync: true }, bits: new Uint8Array(bytes), stale: new Uint8Array(regions), newToArray: false,
  }))
  const old = loaded?.superblock
  const matched = legs.map(m => old === undefined || m.identity === '' ? -1 : old.legs.findIndex(l => l.identity === m.identity))
  if (loaded !== null && old !== undefined && old.region === region && old.size === size && matched.some(j => j >= 0)) {
    for (const [i, leg] of out.entries()) {
      const j = matched[i]
      if (j >= 0) {
        leg.bits.set(loaded.bits[j])
        leg.record.inSync = old.legs[j].inSync
      } else {
        leg.record.inSync = false
        leg.newToArray = true
        fillBits(leg.bits, regions)
      }
    }
    // Take the first leg that was in sync as the source of regions marked on every leg.
    let source = out.findIndex((l, i) => l.record.inSync && matched[i] >= 0)
    if (source < 0) source = matched.findIndex(j => j >= 0)
    for (let r = 0; r < regions; r++) {
      let all = true
      for (const leg of out) {
        if (getBit(leg.bits, r)) leg.stale[r] = 1; else all = false
      }
      if (all) out[source].stale[r] = 0
    }
    const layoutChanged = matched.some((j, i) => j !== i) || old.legs.length !== legs.length
    return { kind: 'known', uuid: old.uuid, events: old.events, layoutChanged, legs: out }
  }
  const clean = loaded !== null && old !== undefined && old.size === size && old.legs.length === legs.length &&
    matched.every(j => j >= 0 && old.legs[j].inSync) && loaded.bits.every(b => b.every(x => x === 0))
  if (clean) return { kind: 'kept', uuid: old.uuid, events: old.events, layoutChanged: true, legs: out }
  return { kind: 'new', uuid: null, events: 0, layoutChanged: true, legs: out }
}

/**
 * Which legs hold every acknowledged write though they are out of I/O (failed or foreign now): while no present leg
 * is in sync, the legs the superblock called in sync, so it keeps saying so (the array is failed until one is back).
 */
export function authorities (legs: Array<{ absent: boolean, inSync: boolean }>): boolean[] {
  const present = legs.some(l => !l.absent && l.inSync)
  return legs.map(l => !present && l.absent && l.inSync)
}
