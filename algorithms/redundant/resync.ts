// resync: brings a stale leg up to date in the background, region by region, while I/O goes on. A few workers take
// the leg's stale regions in order; each locks its region against writes (so older data can never overwrite newer),
// compares it by digests on both legs when it can, copies only the chunks that differ from a leg that holds it, and
// unlocks. Passes repeat until nothing is stale (a verify repair may mark regions behind the workers). With no source
// for a region the resync pauses; the health probe restarts it once the legs change.

import { settleAll } from '../../node/core/settle'
import type { ArrayContext } from './context'
import type { Leg } from './leg'
import { Pacer } from './pacer'
import { compareChunk, differingRuns, hashTrouble } from './digests'

/** Regions one resync works on at once. */
const RESYNC_PARALLEL = 4

/**
 * Brings region `r` (bytes [at, at + n) of the leg) of leg `l` up to date, with `buf` (region bytes) to work in; the
 * region is locked against writes meanwhile. Returns the bytes written, or null when the resync must stop (the leg
 * failed, or nothing holds the region to copy from: then it sets `l.lastError` and `l.pausedAt`).
 */
export type RegionCopier = (l: Leg, r: number, at: number, n: number, buf: Buffer) => Promise<number | null>

export class Resync {
  private readonly ctx: ArrayContext
  private readonly fail: (leg: Leg, err: unknown) => void
  /** How a region is brought up to date: a mirror copies from a leg that holds it; parity reconstructs it. */
  private readonly copy: RegionCopier
  /** Bytes resyncs have copied, and compared by digest, since start (status and tests). */
  copiedBytes = 0
  comparedBytes = 0

  constructor (ctx: ArrayContext, fail: (leg: Leg, err: unknown) => void, copy?: RegionCopier) {
    this.ctx = ctx
    this.fail = fail
    this.copy = copy ?? ((l, r, at, n, buf) => this.copyRegion(l, r, at, n, buf))
  }

  /** Starts (or returns the running) resync of a stale leg. */
  start (leg: Leg): Promise<void> {
    if (leg.running !== null) return leg.running
    if (leg.state !== 'stale') return Promise.resolve()
    leg.running = this.run(leg).finally(() => { leg.running = null })
    return leg.running
  }

  /** Starts resyncs of every stale leg, if the array resyncs by itself. */
  startAll (): void {
    if (!this.ctx.config.autoResync) return
    for (const l of this.ctx.legs.all) if (l.state === 'stale') this.start(l).catch(() => {})
  }

  private async run (l: Leg): Promise<void> {
    const { legs, intent, config, region, size } = this.ctx
    l.to('resyncing', { log: false })
    const progress = l.resync = { doneBytes: 0, totalBytes: l.staleBytes(region, size), copiedBytes: 0, comparedBytes: 0 }
    const pacer = new Pacer(config.clock, config.resyncRate)
    const job = { leg: l, pacer, stopped: false }
    try {
      // Passes until nothing is stale: a verify repair may mark regions behind the workers while this runs.
      while (l.staleCount > 0 && !job.stopped) {
        l.cursor = 0
        const workers: Array<Promise<void>> = []
        for (let i = 0; i < RESYNC_PARALLEL; i++) workers.push(this.worker(job))
        await settleAll(workers)
        progress.totalBytes = progress.doneBytes + l.staleBytes(region, size)
      }
      if (job.stopped || l.state !== 'resyncing') return
      l.full = false
      for (const o of legs.all) o.authority = false
      l.to('in-sync', { event: true, log: `leg '${l.name}' in sync (${progress.copiedBytes} of ${progress.totalBytes} bytes copied, ${progress.comparedBytes} compared by digest)` })
      intent.clearQuiet(true)
      await intent.save()
    } finally {
      if (l.state === 'resyncing') l.to('stale', { log: false })
      l.resync = null
    }
  }

  /** Takes the leg's next stale region, copies it, and goes on until none is left or the resync must stop. */
  private async worker (job: { leg: Leg, pacer: Pacer, stopped: boolean }): Promise<void> {
    const { gate, region, size } = this.ctx
    const l = job.leg
    const progress = l.resync
    if (progress === null) return
    const buf = Buffer.from(new SharedArrayBuffer(region))
    while (!job.stopped) {
      const r = this.nextStale(l)
      if (r < 0) return
      if (this.ctx.stopping || l.state !== 'resyncing') { job.stopped = true; return }
      const at = r * region
      const n = Math.min(region, size - at)
      l.claimed.add(r)
      await gate.lockRegion(r)
      try {
        const copied = await this.copy(l, r, at, n, buf)
        if (copied === null) { job.stopped = true; return }
        l.markHeld(r)
        progress.doneBytes += n
        progress.copiedBytes += copied
        this.copiedBytes += copied
      } finally {
        l.claimed.delete(r)
        gate.unlockRegion(r)
      }
      await job.pacer.pace(progress.doneBytes)
    }
  }

  /**
   * Brings one region of `l` up to date from a leg that holds it; returns the bytes written, or null when the resync
   * must stop. With checksum resync, both legs digest the region where their data lives and only differing chunks
   * are read and written; trouble with the hash workers falls back to copying the region whole.
   */
  private async copyRegion (l: Leg, r: number, at: number, n: number, buf: Buffer): Promise<number | null> {
    const { legs, intent, config } = this.ctx
    for (;;) {
      const src = legs.reader(r, r, l)
      if (src === null) {
        l.lastError = `no leg holds region ${r} to copy from`
        l.pausedAt = intent.events
        config.log(`leg '${l.name}': resync paused: ${l.lastError}`)
        return null
      }
      let runs: Array<[number, number]> = [[0, n]]
      const chunk = config.compare ? compareChunk(this.ctx.region) : 0
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
    const regions = this.ctx.regions
    for (let r = l.cursor; r < regions; r++) {
      if (l.stale[r] !== 0 && !l.claimed.has(r)) { l.cursor = r + 1; return r }
    }
    l.cursor = regions
    return -1
  }
}
