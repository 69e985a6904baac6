// verify: compares every region on every leg that holds it, by digests computed where each leg's data lives, while
// I/O goes on (each region is locked against writes only while its digests are taken). Mismatches are reported; with
// `repair`, the legs that differ from the reference (the `from` leg, or a strict majority of 3+ legs) get the region
// marked stale and are resynced from it, and the verify ends once that resync has.

import { DstError, Errno, ErrorCode } from '../../node/core/errors'
import { settleAll } from '../../node/core/settle'
import { formatSize } from '../../node/core/size'
import type { ArrayContext } from './context'
import type { Leg, LegState } from './leg'
import { Pacer } from './pacer'
import { compareChunk, differingChunks, hashTrouble } from './digests'

/** Mismatched regions a verify report lists (it counts them all). */
const REPORT_LIMIT = 1000
/** Times a region is tried again while the hash workers are busy. */
const BUSY_RETRIES = 20

export interface VerifyOptions {
  /** Mark mismatched regions stale on the legs that differ from the reference, and resync them. */
  repair?: boolean
  /** The leg whose data is right; without it, a strict majority of 3+ legs decides, and 2 legs cannot be repaired. */
  from?: string
  /** Regions compared at once. */
  concurrency?: number
  /** Most bytes per second compared; 0 for no limit. */
  rate?: number
  /** Called as regions are done. */
  onProgress?: (report: VerifyReport) => void
}

export interface VerifyMismatch {
  region: number
  offset: number
  length: number
  /** Chunks of the region whose digests differ between legs. */
  chunks: number
  /** The legs that differ from the reference; every compared leg when there is none. */
  legs: string[]
  /** The leg (or majority) taken as right, or null when nothing decides. */
  reference: string | null
  repaired: boolean
}

export interface VerifyReport {
  /** `incomplete`: finished, but part of the array could not be compared on every leg (see `notCompared`). */
  state: 'running' | 'done' | 'incomplete' | 'failed'
  repair: boolean
  from: string | null
  startedAt: string
  finishedAt: string | null
  seconds: number
  totalBytes: number
  doneBytes: number
  /** Bytes compared on at least two legs; the rest were skipped (only one leg held them). */
  comparedBytes: number
  skippedBytes: number
  /** Per leg, the bytes it could not be compared on (it was down, foreign or stale there), and its state then. */
  notCompared: Array<{ leg: string, state: LegState, bytes: number }>
  /** Why the verify is incomplete, in words ("leg b down: 256 MiB not compared"), or null. */
  incomplete: string | null
  mismatches: number
  repairedRegions: number
  /** The first regions that differ (up to 1000), in region order. */
  mismatchedRegions: VerifyMismatch[]
  error: string | null
}

/** One run: its report, the legs to resync after, and where its workers are. */
interface Run {
  report: VerifyReport
  chunk: number
  from: string | null
  toResync: Set<Leg>
  next: number
  pacer: Pacer
  options: VerifyOptions
}

export class Verifier {
  private readonly ctx: ArrayContext
  private readonly fail: (leg: Leg, err: unknown) => void
  private readonly resync: (leg: Leg) => Promise<void>
  /** The running or last verify. */
  last: VerifyReport | null = null
  /** The running verify, until it has ended (close waits for it). */
  running: Promise<void> | null = null
  /** Totals since start (metrics). */
  readonly totals = { runs: 0, bytes: 0, mismatches: 0, repaired: 0 }

  constructor (ctx: ArrayContext, fail: (leg: Leg, err: unknown) => void, resync: (leg: Leg) => Promise<void>) {
    this.ctx = ctx
    this.fail = fail
    this.resync = resync
  }

  start (options: VerifyOptions = {}): Promise<VerifyReport> {
    if (this.last?.state === 'running') return Promise.reject(this.busyError())
    const run = this.run(options)
    this.running = run.catch(() => {}).then(() => { this.running = null })
    return run
  }

  private busyError (): DstError {
    return new DstError(ErrorCode.BUSY, `mirror '${this.ctx.name}': a verify is already running`, Errno.EAGAIN)
  }

  private async run (options: VerifyOptions): Promise<VerifyReport> {
    const { name, legs, intent, config, region } = this.ctx
    if (this.last?.state === 'running') throw this.busyError()
    const from = options.from ?? null
    if (from !== null) {
      const leg = legs.named(from)
      if (leg.absent) throw new DstError(ErrorCode.NOTSYNC, `mirror '${name}': leg '${from}' is ${leg.state}; it cannot be the reference`, Errno.EINVAL)
    }
    if (legs.length < 2) throw new DstError(ErrorCode.ONELEG, `mirror '${name}' has one leg: nothing to compare`, Errno.EINVAL)
    const chunk = compareChunk(region)
    if (chunk === 0) throw new DstError(ErrorCode.REGION, `mirror '${name}': region ${region} is too small to verify by digest`, Errno.EINVAL)
    const clock = config.clock
    const report: VerifyReport = {
      state: 'running', repair: options.repair === true, from, startedAt: new Date(clock.now()).toISOString(), finishedAt: null,
      seconds: 0, totalBytes: this.ctx.size, doneBytes: 0, comparedBytes: 0, skippedBytes: 0, notCompared: [], incomplete: null,
      mismatches: 0, repairedRegions: 0, mismatchedRegions: [], error: null,
    }
    this.last = report
    this.totals.runs++
    const run: Run = { report, chunk, from, toResync: new Set(), next: 0, pacer: new Pacer(clock, options.rate ?? 0), options }
    try {
      const workers: Array<Promise<void>> = []
      for (let i = 0; i < Math.max(1, options.concurrency ?? 4); i++) workers.push(this.worker(run))
      await settleAll(workers)
      if (this.ctx.stopping) throw new DstError(ErrorCode.CLOSED, `mirror '${name}' closed during the verify`, Errno.ESHUTDOWN)
      const toResync = [...run.toResync]
      if (toResync.length > 0) {
        await intent.save()
        config.log(`verify: resyncing ${report.repairedRegions} mismatched regions on ${toResync.map(l => l.name).join(', ')}`)
        await settleAll(toResync.map(l => this.resync(l)))
        const left = toResync.filter(l => l.state !== 'in-sync')
        if (left.length > 0) throw new DstError(ErrorCode.REPAIR, `repair incomplete: ${left.map(l => `${l.name} is ${l.state}${l.lastError !== '' ? ` (${l.lastError})` : ''}`).join('; ')}`, Errno.EIO)
      }
      if (report.notCompared.length > 0) {
        report.state = 'incomplete'
        report.incomplete = report.notCompared.map(x => `leg ${x.leg} ${x.state === 'failed' ? 'down' : x.state}: ${formatSize(x.bytes)} not compared`).join('; ')
      } else report.state = 'done'
    } catch (err) {
      report.state = 'failed'
      report.error = (err as Error).message
    } finally {
      report.finishedAt = new Date(clock.now()).toISOString()
      report.seconds = run.pacer.elapsed() / 1000
      options.onProgress?.(report)
    }
    config.log(`verify ${report.state}: ${report.comparedBytes} bytes compared, ${report.mismatches} mismatched regions` +
      `${report.repair ? `, ${report.repairedRegions} repaired` : ''}${report.error !== null ? ` (${report.error})` : ''}` +
      `${report.incomplete !== null ? ` (${report.incomplete})` : ''}`)
    return report
  }

  private async worker (run: Run): Promise<void> {
    while (run.next < this.ctx.regions && !this.ctx.stopping) {
      const r = run.next++
      await this.region(run, r)
      run.report.seconds = run.pacer.elapsed() / 1000
      run.options.onProgress?.(run.report)
      await run.pacer.pace(run.report.doneBytes)
    }
  }

  private async region (run: Run, r: number): Promise<void> {
    const { legs, gate, config } = this.ctx
    const { report, chunk } = run
    const at = r * this.ctx.region
    const n = Math.min(this.ctx.region, this.ctx.size - at)
    for (let attempt = 0; ; attempt++) {
      const compared = legs.holders(r, r)
      const left = (): void => { if (compared.length < legs.length) notCompared(report, legs.all.filter(l => !compared.includes(l)), n) }
      if (compared.length < 2) { left(); report.skippedBytes += n; break }
      await gate.lockRegion(r)
      let results: Array<PromiseSettledResult<Buffer>>
      try {
        results = await Promise.allSettled(compared.map(l => l.device.hash(at, n, chunk)))
      } finally {
        gate.unlockRegion(r)
      }
      // A leg removed or split off while it digested is no longer part of the comparison.
      if (compared.some(l => !legs.has(l))) continue
      const busy = results.some(x => x.status === 'rejected' && hashTrouble(x.reason))
      results.forEach((x, i) => { if (x.status === 'rejected' && !hashTrouble(x.reason)) this.fail(compared[i], x.reason) })
      if (busy) {
        // The hash workers were full or failed: try the region again shortly, a bounded number of times.
        if (attempt >= BUSY_RETRIES) throw (results.find(x => x.status === 'rejected' && hashTrouble(x.reason)) as PromiseRejectedResult).reason
        await config.clock.sleep(Math.min(1000, 10 * 2 ** attempt))
        continue
      }
      if (results.some(x => x.status === 'rejected')) continue
      const digests = results.map(x => (x as PromiseFulfilledResult<Buffer>).value)
      left()
      report.comparedBytes += n
      this.totals.bytes += n
      if (digests.every(d => d.equals(digests[0]))) break
      this.mismatch(run, r, at, n, compared, digests)
      break
    }
    report.doneBytes += n
  }

  private mismatch (run: Run, r: number, at: number, n: number, compared: Leg[], digests: Buffer[]): void {
    const { report, chunk, from } = run
    const chunks = differingChunks(digests)
    const { reference, referenceName } = pickReference(compared.map(l => l.name), digests, from)
    const differing = reference < 0 ? compared : compared.filter((_, i) => !digests[i].equals(digests[reference]))
    const repaired = report.repair && reference >= 0
    if (repaired) {
      for (const l of differing) {
        this.ctx.intent.mark(l.index, r)
        l.markStale(r, r)
        if (l.state === 'in-sync') l.to('stale', { log: false })
        run.toResync.add(l)
      }
      report.repairedRegions++
      this.totals.repaired++
    }
    report.mismatches++
    this.totals.mismatches++
    this.ctx.config.log(`verify: region ${r} (${at}+${n}) differs in ${chunks} of ${Math.ceil(n / chunk)} chunks on ${differing.map(l => l.name).join(', ')}` +
      (reference < 0 ? ' (no reference to repair from: give --from LEG)' : ` from ${referenceName === 'majority' ? 'the majority' : `'${referenceName ?? ''}'`}${repaired ? '; marked for resync' : ''}`))
    insertMismatch(report.mismatchedRegions, { region: r, offset: at, length: n, chunks, legs: differing.map(l => l.name), reference: referenceName, repaired })
  }
}

/**
 * The reference among compared legs: the operator's leg (`from`), or else a strict majority of 3+ legs; -1 (and
 * null) when nothing decides.
 */
export function pickReference (names: string[], digests: Buffer[], from: string | null): { reference: number, referenceName: string | null } {
  if (from !== null) {
    const reference = names.indexOf(from)
    return { reference, referenceName: reference >= 0 ? from : null }
  }
  if (names.length >= 3) {
    for (let i = 0; i < names.length; i++) {
      if (digests.filter(d => d.equals(digests[i])).length * 2 > names.length) return { reference: i, referenceName: 'majority' }
    }
  }
  return { reference: -1, referenceName: null }
}

/**
 * Regions are compared several at once and finish in any order; the list stays in region order (the first
 * REPORT_LIMIT regions that differ), as a user reading it expects.
 */
export function insertMismatch (list: VerifyMismatch[], m: VerifyMismatch): void {
  let pos = list.length
  while (pos > 0 && list[pos - 1].region > m.region) pos--
  if (pos < REPORT_LIMIT) {
    list.splice(pos, 0, m)
    if (list.length > REPORT_LIMIT) list.pop()
  }
}

/** Counts bytes of a region that `legs` could not be compared on, per leg and the state it was in. */
export function notCompared (report: VerifyReport, legs: Leg[], n: number): void {
  for (const l of legs) {
    const entry = report.notCompared.find(x => x.leg === l.name && x.state === l.state)
    if (entry !== undefined) entry.bytes += n; else report.notCompared.push({ leg: l.name, state: l.state, bytes: n })
  }
}

/** What /status shows of a verify: the counts and the first mismatched regions. */
export function summary (v: VerifyReport): Record<string, unknown> {
  return { ...v, mismatchedRegions: v.mismatchedRegions.slice(0, 20) }
}
