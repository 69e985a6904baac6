// context: what the parts of a redundant array share, and the array's options with every default applied once.

import type { Clock } from '../../node/core/clock'
import type { LegSet } from './leg-set'
import type { RegionGate } from './region-gate'
import type { IntentMap } from './intent-map'

/** The options the parts read, defaults applied (see the mirror's MirrorOptions for each). */
export interface ArrayConfig {
  resyncRate: number
  clearDelay: number
  probeInterval: number
  autoResync: boolean
  compare: boolean
  log: (message: string) => void
  clock: Clock
}

export interface ArrayContext {
  readonly name: string
  readonly size: number
  /** Bytes per region, and regions in all. */
  readonly region: number
  readonly regions: number
  readonly blockSize: number
  readonly legs: LegSet
  readonly gate: RegionGate
  readonly intent: IntentMap
  readonly config: ArrayConfig
  /** True once the array is closing: background work stops. */
  readonly stopping: boolean
}
