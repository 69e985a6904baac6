// admit: what a redundant array does with a member new to it (named in the config, unknown to the superblock): it is
// taken on with a full sync only if it holds nothing but zeros; a disk that holds data is left foreign until the
// operator takes it on (`dst array replace`), never overwritten unasked.

import { DstError, Errno, ErrorCode } from '../../node/core/errors'
import { firstData } from '../blank'
import type { ArrayConfig, ArrayContext } from './context'
import type { Leg } from './leg'
import { deviceError, usable } from './health'

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

/** How an array names itself and its members in a replace's messages. */
export interface ReplaceWords {
  /** "mirror 'm'", "parity 'p'" */
  array: string
  /** 'leg' or 'member' */
  member: string
  /** Bytes the new disk must hold, and how to say it ("the mirror needs 1048576"). */
  bytes: number
  needs: string
  /** Added to the refusal of a member that is not foreign. */
  notForeignHint: string
  /** What happens to the disk next ("it is overwritten by a full sync"). */
  after: string
}

/**
 * Takes on the disk now behind a foreign leg (`dst array replace`): checked (foreign, reachable, large enough,
 * writable), then recorded with I/O held, every region stale and marked, so its full sync (or rebuild) resumes after a
 * restart. The caller starts that sync. Returns what was done, in words.
 */
export async function replaceForeign (ctx: ArrayContext, leg: Leg, w: ReplaceWords): Promise<string> {
  const name = leg.name
  if (leg.state !== 'foreign') {
    throw new DstError(ErrorCode.NOTFOREIGN, `${w.array}: ${w.member} '${name}' is ${leg.state}; replace takes on the other disk of a foreign ${w.member}${w.notForeignHint}`, Errno.EINVAL)
  }
  const d = leg.device
  if (!usable(d)) throw new DstError(ErrorCode.NOTREADY, `${w.array}: ${w.member} '${name}': its device is ${deviceError(d)}; nothing to take on`, Errno.EAGAIN)
  if (d.size < w.bytes) throw new DstError(ErrorCode.SIZE, `${w.array}: '${name}' has ${d.size} bytes, ${w.needs} ${w.bytes}`, Errno.EINVAL)
  if (!d.writable) throw new DstError(ErrorCode.EROFS, `${w.array}: '${name}' is read-only`, Errno.EROFS)
  const was = leg.record.identity
  await ctx.gate.withIoHeld(async () => {
    await ctx.intent.takeOn(leg, d.identity, ctx.regions)
  })
  const detail = `${w.member} '${name}': disk ${d.identity || '(no identity)'} taken on in place of ${was || '(none)'}; ${w.after}`
  ctx.config.log(detail)
  return detail
}
