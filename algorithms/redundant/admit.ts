// admit: what a redundant array does with a member new to it (named in the config, unknown to the superblock): it is
// taken on with a full sync only if it holds nothing but zeros; a disk that holds data is left foreign until the
// operator takes it on (`dst array replace`), never overwritten unasked.

import { firstData } from '../blank'
import type { ArrayConfig } from './context'
import type { Leg } from './leg'

/** Checks the first `size` bytes of a new leg: full sync if blank, foreign (held) if it holds data. */
export async function admitNew (l: Leg, size: number, config: ArrayConfig): Promise<void> {
  const at = await firstData(l.device, size, config.clock)
  l.stale.fill(1)
  if (at < 0) {
    l.newDisk = false
    config.log(`leg '${l.name}' is new to the array (identity ${l.device.identity || 'none'}) and holds only zeros: full sync`)
    return
  }
  l.initial('foreign')
  l.held = true
  l.lastError = `a disk new to the array (identity ${l.device.identity || 'none'}) holds data (at byte ${at}): not overwritten; 'dst array replace' takes it on with a full sync`
  config.log(`leg '${l.name}': ${l.lastError}`)
}
