// The daemon's bridge from an array to NBD's qemu:dirty-bitmap contexts (node/core/dirty.ts): a mirror's map for each
// leg, read from the leg's per-region state without touching it. A region is dirty for a leg when the leg does not
// hold the array's data there: marked stale, or written (intent bit set) while the leg was out of I/O; a foreign leg
// holds none of it. Made here because only the daemon may know both the arrays and the exports.

import type { DirtyMaps, DirtyRun } from '../core/dirty'
import type { Device } from '../core/device'
import { MirrorDevice } from '../../algorithms/mirror'
import { getBit } from '../../algorithms/redundant/intent-map'

/** The dirty maps of an exported device, or undefined when it keeps none. */
export function dirtyMapsOf (device: Device): DirtyMaps | undefined {
  if (!(device instanceof MirrorDevice)) return undefined
  const m = device
  return {
    get names () { return m.legNames },
    runs (name: string, offset: number, length: number): DirtyRun[] {
      const leg = m.legs.find(name)
      if (leg === undefined || leg.state === 'foreign') return [{ offset, length, dirty: true }]
      const out: DirtyRun[] = []
      const end = offset + length
      for (let r = Math.floor(offset / m.region); r * m.region < end; r++) {
        const from = Math.max(offset, r * m.region)
        const to = Math.min(end, (r + 1) * m.region)
        const dirty = leg.stale[r] !== 0 || (leg.absent && getBit(leg.bits, r))
        const last = out[out.length - 1]
        if (last !== undefined && last.dirty === dirty) last.length += to - from
        else out.push({ offset: from, length: to - from, dirty })
      }
      return out
    },
  }
}
