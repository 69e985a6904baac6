// resync: brings a stale leg up to date in the background, region by region, while I/O goes on. A few workers take
// the leg's stale regions in order; each locks its region against writes (so older data can never overwrite newer),
// compares it by digests on both legs when it can, copies only the chunks that differ from a leg that holds it, and
// unlocks. It skips the source's holes (extents()): a hole is neither read nor copied, and the leg is changed there
// only if it may hold data (trimmed, or written with zeros). Passes repeat until nothing is stale (a verify repair may mark regions behind the workers). With no source
// for a region the resync pauses; the health probe restarts it once the legs change.

import { settleAll } from '../../node/core/settle'
import type { ArrayContext } from './context'
import type { Leg } from './leg'
import { Pacer } from './pacer'
import { compareChunk, differingRuns, hashTrouble, zeroDigests } from './digests'
import type { Device, Extent } from '../../node/core/device'

/** A byte range [from, to) inside a region. */
type Range = [number, number]

/** A device's extents of a range; one that cannot answer (an error) makes it all data, which is always correct. */
async function extentsOrData (device: Device, offset: number, length: number): Promise<Extent[]> {
  try {
    return await device.extents(offset, length)
  } catch {
    return [{ offset, length, hole: false }]
  }
}

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
  /** Bytes of the sources' holes that needed no write on the leg (neither read nor written). */
  skippedBytes = 0
  private zeroBuffer: Buffer | null = null

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
    const progress = l.resync = { doneBytes: 0, totalBytes: l.staleBytes(region, size), copiedBytes: 0, comparedBytes: 0, skippedBytes: 0 }
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
      l.to('in-sync', { event: true, log: `leg '${l.name}' in sync (${progress.copiedBytes} of ${progress.totalBytes} bytes copied, ${progress.comparedBytes} compared by digest, ${progress.skippedBytes} in holes skipped)` })
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
   * must stop. Sparse-aware: the source's holes are not read. Where the leg is a hole too nothing is done; where it may
   * hold data it is trimmed if it can trim (and what still holds data after that gets zeros), else written with zeros,
   * so a new blank leg of a mostly empty array gets only the data. With checksum resync, both legs digest the data
   * ranges where their data lives and only differing chunks are read and written (and a leg's data under a source hole
   * is compared with zeros' digests before zeros are written); trouble with the hash workers falls back to copying.
   */
  private async copyRegion (l: Leg, r: number, at: number, n: number, buf: Buffer): Promise<number | null> {
    const { legs, intent, config } = this.ctx
    const chunk = config.compare ? compareChunk(this.ctx.region) : 0
    for (;;) {
      const src = legs.reader(r, r, l)
      if (src === null) {
        l.lastError = `no leg holds region ${r} to copy from`
        l.pausedAt = intent.events
        config.log(`leg '${l.name}': resync paused: ${l.lastError}`)
        return null
      }
      const srcRuns = await extentsOrData(src.device, at, n)
      const holes = srcRuns.filter(e => e.hole).map((e): Range => [e.offset - at, e.offset - at + e.length])
      const data = srcRuns.filter(e => !e.hole).map((e): Range => [e.offset - at, e.offset - at + e.length])
      let copied = 0
      let skipped = 0
      if (holes.length > 0) {
        // Under the source's holes: only where this leg may hold data must it change.
        const fix = await this.clearUnder(l, at, holes, chunk)
        if (fix === null) return null
        copied += fix.written
        skipped += fix.skipped
      }
      const moved = await this.copyData(src, l, at, data, chunk, buf)
      if (moved === 'target') return null
      if (moved === 'source') continue
      copied += moved
      this.skippedBytes += skipped
      if (l.resync !== null) l.resync.skippedBytes += skipped
      return copied
    }
  }

  /**
   * Copies the source's data ranges of a region (compared by digest first when `chunk` > 0). Returns the bytes written,
   * or which side failed: 'source' (it was failed; pick another) or 'target' (the resync stops).
   */
  private async copyData (src: Leg, l: Leg, at: number, ranges: Range[], chunk: number, buf: Buffer): Promise<number | 'source' | 'target'> {
    let copied = 0
    for (const [from, to] of ranges) {
      let runs: Range[] = [[from, to]]
      if (chunk > 0) {
        const [want, have] = await Promise.allSettled([src.device.hash(at + from, to - from, chunk), l.device.hash(at + from, to - from, chunk)])
        if (want.status === 'rejected' && !hashTrouble(want.reason)) { this.fail(src, want.reason); return 'source' }
        if (have.status === 'rejected' && !hashTrouble(have.reason)) { this.fail(l, have.reason); return 'target' }
        if (want.status === 'fulfilled' && have.status === 'fulfilled') {
          runs = differingRuns(want.value, have.value, chunk, to - from).map(([a, b]): Range => [from + a, from + b])
          this.compared(l, to - from)
        }
      }
      for (const [a, b] of runs) {
        const view = buf.subarray(a, b)
        try {
          await src.device.read(at + a, b - a, view)
        } catch (err) {
          this.fail(src, err)
          return 'source'
        }
        try {
          await l.device.write(at + a, view)
        } catch (err) {
          this.fail(l, err)
          return 'target'
        }
        copied += b - a
      }
    }
    return copied
  }

  /**
   * Makes the leg read zeros under the source's holes of a region: nothing where it is a hole already; a trim where it
   * can trim (a trim may leave data, so it is asked again); zeros written where data is left (with `chunk` > 0, only
   * the chunks whose digests are not zeros'). Returns the bytes written and the hole bytes that needed no write, or
   * null when the leg failed.
   */
  private async clearUnder (l: Leg, at: number, holes: Range[], chunk: number): Promise<{ written: number, skipped: number } | null> {
    const total = holes.reduce((sum, [a, b]) => sum + (b - a), 0)
    let dirty = await this.dataUnder(l, at, holes)
    try {
      if (dirty.length > 0 && l.device.canTrim) {
        for (const [a, b] of dirty) await l.device.trim(at + a, b - a)
        dirty = await this.dataUnder(l, at, dirty)
      }
      let written = 0
      for (const [from, to] of dirty) {
        let runs: Range[] = [[from, to]]
        if (chunk > 0) {
          const have = await l.device.hash(at + from, to - from, chunk).catch((err: unknown) => { if (hashTrouble(err)) return null; throw err })
          if (have !== null) {
            runs = differingRuns(zeroDigests(to - from, chunk), have, chunk, to - from).map(([a, b]): Range => [from + a, from + b])
            this.compared(l, to - from)
          }
        }
        for (const [a, b] of runs) {
          await l.device.write(at + a, this.zeros.subarray(0, b - a))
          written += b - a
        }
      }
      return { written, skipped: total - written }
    } catch (err) {
      this.fail(l, err)
      return null
    }
  }

  /** The parts of `ranges` (region-local) where the leg holds data, as its extents() says. */
  private async dataUnder (l: Leg, at: number, ranges: Range[]): Promise<Range[]> {
    const out: Range[] = []
    for (const [a, b] of ranges) {
      for (const e of await extentsOrData(l.device, at + a, b - a)) if (!e.hole) out.push([e.offset - at, e.offset - at + e.length])
    }
    return out
  }

  private compared (l: Leg, n: number): void {
    this.comparedBytes += n
    if (l.resync !== null) l.resync.comparedBytes += n
  }

  /** Zeros to write where a leg must read zeros: one region's worth, made once. */
  private get zeros (): Buffer {
    if (this.zeroBuffer === null) this.zeroBuffer = Buffer.alloc(this.ctx.region)
    return this.zeroBuffer
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
