// health: how a redundant array takes legs out and back. `fail` takes out a leg whose device failed a request (or
// now holds another disk) and saves that before any write skipping it is acknowledged. `probe`, on an interval,
// checks failed legs with a one-block read, backing off up to 5 s while they do not answer; a leg that answers with
// the disk it had comes back stale (and is resynced), one with another disk stays foreign until the operator takes it
// on. It also restarts resyncs that paused for want of a source once any leg's state has changed since.

import type { Device } from '../../node/core/device'
import { DstError, Errno, ErrorCode } from '../../node/core/errors'
import { firstData } from '../blank'
import type { ArrayContext } from './context'
import type { Leg } from './leg'

/** The longest wait between probes of a leg that does not answer. */
const MAX_PROBE_WAIT = 5000

export class Health {
  private readonly ctx: ArrayContext
  /** Starts the resync of a leg that is back. */
  private readonly resume: (leg: Leg) => Promise<void>

  constructor (ctx: ArrayContext, resume: (leg: Leg) => Promise<void>) {
    this.ctx = ctx
    this.resume = resume
  }

  /** Takes a leg out of I/O after `err` (foreign if its device holds another disk). */
  fail (l: Leg, err: unknown): void {
    if (l.absent) return
    const was = l.state
    const { legs, intent, config } = this.ctx
    l.to((err as DstError)?.code === ErrorCode.FOREIGN || l.device.state === 'foreign' ? 'foreign' : 'failed',
      { why: (err as Error)?.message ?? String(err), event: true })
    if (was === 'in-sync' && !legs.anyInSync()) l.authority = true
    l.nextProbe = config.clock.now() + l.probeWait
    // Writes that skip this leg are acknowledged only once this save (the leg is out of sync) is on disk.
    intent.recordFailure()
  }

  /** Marks a leg foreign (left out of all I/O until it is back with its own disk, or replaced). */
  toForeign (l: Leg, why: string, held = false): void {
    l.to('foreign', { why, event: true })
    l.held = held
    l.probeWait = this.ctx.config.probeInterval
    l.nextProbe = this.ctx.config.clock.now() + l.probeWait
    this.ctx.intent.saveLogged()
  }

  /**
   * Checks failed legs: one whose device answers again becomes stale and is resynced. A resync that paused for want of
   * a source is started again once a leg's state has changed since (a leg back, or in sync).
   */
  probe (): void {
    const { legs, intent, config } = this.ctx
    const now = config.clock.now()
    for (const l of legs.all) {
      if (l.state === 'stale' && l.running === null && l.pausedAt >= 0 && l.pausedAt !== intent.events &&
          !this.ctx.stopping && config.autoResync) {
        l.pausedAt = -1
        this.resume(l).catch(() => {})
        continue
      }
      // Another disk answers where a working leg's disk was (noticed by its device, between requests): leave it out now.
      if (!l.absent && l.device.state === 'foreign') { this.fail(l, new DstError(ErrorCode.FOREIGN, deviceError(l.device), Errno.EIO)); continue }
      // A leg whose old resync is still winding down is probed once that has stopped.
      if (!l.absent || now < l.nextProbe || this.ctx.stopping || l.running !== null) continue
      const ds = l.device.state
      if (ds === 'foreign' && l.state !== 'foreign') { this.toForeign(l, deviceError(l.device)); continue }
      if (!usable(l.device)) continue
      // A disk new to the array that holds data waits for the operator (replaceLeg).
      if (l.state === 'foreign' && l.held) continue
      l.nextProbe = Number.POSITIVE_INFINITY
      const buf = Buffer.alloc(Math.min(this.ctx.blockSize, this.ctx.size))
      l.device.read(0, buf.length, buf).then(() => this.answered(l), (err: Error) => {
        if (l.state === 'stale') { config.log(err.message); return }
        l.lastError = err.message
        l.probeWait = Math.min(l.probeWait * 2, MAX_PROBE_WAIT)
        l.nextProbe = config.clock.now() + l.probeWait
      })
    }
  }

  /** A failed or foreign leg's device answered a probe: back as stale if it holds the disk the array knows. */
  private async answered (l: Leg): Promise<void> {
    const { legs, intent, config } = this.ctx
    try {
      l.probeWait = config.probeInterval
      // Gone from the array, closing, or taken back meanwhile (a replace): nothing to bring back.
      if (!legs.has(l) || this.ctx.stopping || !l.absent) return
      if (l.record.identity !== l.device.identity) {
        // Another disk answers where this leg was: it is never written until the operator takes it on.
        this.toForeign(l, `another disk answers (identity ${l.device.identity || 'none'}, expected ${l.record.identity}): not overwritten; 'dst array replace' takes it on with a full sync`, true)
        return
      }
      if (l.newDisk) {
        // A leg new to the array, unreachable at start: written only if it holds nothing but zeros.
        const at = await firstData(l.device, this.ctx.size, config.clock)
        if (at >= 0) {
          this.toForeign(l, `a disk new to the array (identity ${l.device.identity || 'none'}) holds data (at byte ${at}): not overwritten; 'dst array replace' takes it on with a full sync`, true)
          return
        }
        l.newDisk = false
      }
      l.to('stale', { why: '', event: true, log: `leg '${l.name}' is back: resyncing ${l.staleBytes(this.ctx.region, this.ctx.size)} bytes` })
      await intent.save()
      if (config.autoResync) this.resume(l).catch(() => {})
    } catch (err) {
      if (l.state === 'stale') { config.log((err as Error).message); return }
      l.lastError = (err as Error).message
      l.probeWait = Math.min(l.probeWait * 2, MAX_PROBE_WAIT)
      l.nextProbe = config.clock.now() + l.probeWait
    }
  }
}

/** A device that can take I/O now (not reconnecting, not holding another disk, not closed). */
export function usable (d: Device): boolean {
  return d.state === 'online' || d.state === 'degraded'
}

/** Why a device is not usable, in words. */
export function deviceError (d: Device): string {
  const e = (d as { lastError?: unknown }).lastError
  return typeof e === 'string' && e !== '' ? `${d.state}: ${e}` : d.state
}
