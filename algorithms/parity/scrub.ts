// scrub: a parity array's online verify (md's "check", and with `repair` md's "repair"). Region by region, while I/O
// goes on, every member's bytes of the region are read with the region locked against writes (only while they are
// read, and while a repair rewrites parity); at every member offset the XOR across all members must be zero, which
// says parity equals the XOR of the data members in both layouts. A region that breaks it is reported; a repair
// rewrites its parity from the data members. A region some member misses (down, or stale there) is not compared.

import { DstError, Errno, ErrorCode } from '../../node/core/errors'
import { settleAll } from '../../node/core/settle'
import { formatSize } from '../../node/core/size'
import { Pacer } from '../redundant/pacer'
import { insertMismatch, notCompared, summary, type VerifyOptions, type VerifyReport } from '../redundant/verify'
import type { ScrubContext } from './parity'

/** Bytes of a region the report counts mismatches in. */
const SCRUB_CHUNK = 4096

export class Scrub {
  private readonly ctx: ScrubContext
  last: VerifyReport | null = null
  running: Promise<void> | null = null
  readonly totals = { runs: 0, bytes: 0, mismatches: 0, repaired: 0 }

  constructor (ctx: ScrubContext) {
    this.ctx = ctx
  }

  summary (): Record<string, unknown> {
    return this.last === null ? {} : summary(this.last)
  }

  start (options: VerifyOptions = {}): Promise<VerifyReport> {
    if (this.last?.state === 'running') return Promise.reject(new DstError(ErrorCode.BUSY, `parity '${this.ctx.name}': a verify is already running`, Errno.EAGAIN))
    const run = this.run(options)
    this.running = run.catch(() => {}).then(() => { this.running = null })
    return run
  }

  private async run (options: VerifyOptions): Promise<VerifyReport> {
    const { config, regions, memberBytes, legs } = this.ctx
    const clock = config.clock
    const data = legs.length - 1
    const report: VerifyReport = {
      state: 'running', repair: options.repair === true, from: null, startedAt: new Date(clock.now()).toISOString(), finishedAt: null,
      seconds: 0, totalBytes: memberBytes * data, doneBytes: 0, comparedBytes: 0, skippedBytes: 0, notCompared: [], incomplete: null,
      mismatches: 0, repairedRegions: 0, mismatchedRegions: [], error: null,
    }
    this.last = report
    this.totals.runs++
    const pacer = new Pacer(clock, options.rate ?? 0)
    let next = 0
    const worker = async (): Promise<void> => {
      while (next < regions && !this.ctx.stopping()) {
        await this.region(report, next++)
        report.seconds = pacer.elapsed() / 1000
        options.onProgress?.(report)
        await pacer.pace(report.doneBytes)
      }
    }
    try {
      await settleAll(Array.from({ length: Math.max(1, options.concurrency ?? 2) }, () => worker()))
      if (this.ctx.stopping()) throw new DstError(ErrorCode.CLOSED, `parity '${this.ctx.name}' closed during the verify`, Errno.ESHUTDOWN)
      if (report.notCompared.length > 0) {
        report.state = 'incomplete'
        report.incomplete = report.notCompared.map(x => `member ${x.leg} ${x.state === 'failed' ? 'down' : x.state}: ${formatSize(x.bytes)} not compared`).join('; ')
      } else report.state = 'done'
    } catch (err) {
      report.state = 'failed'
      report.error = (err as Error).message
    } finally {
      report.finishedAt = new Date(clock.now()).toISOString()
      report.seconds = pacer.elapsed() / 1000
      options.onProgress?.(report)
    }
    config.log(`verify ${report.state}: ${report.comparedBytes} bytes compared, ${report.mismatches} regions whose parity differs from the data` +
      `${report.repair ? `, ${report.repairedRegions} repaired` : ''}${report.error !== null ? ` (${report.error})` : ''}` +
      `${report.incomplete !== null ? ` (${report.incomplete})` : ''}`)
    return report
  }

  private async region (report: VerifyReport, r: number): Promise<void> {
    const { legs, gate, region, memberBytes } = this.ctx
    const data = legs.length - 1
    const at = r * region
    const n = Math.min(region, memberBytes - at)
    const missing = legs.all.filter(l => !this.ctx.holds(l.index, at, n))
    if (missing.length > 0) {
      notCompared(report, missing, n * data)
      report.skippedBytes += n * data
      report.doneBytes += n * data
      return
    }
    const bufs = legs.all.map(() => Buffer.from(new SharedArrayBuffer(n)))
    await gate.lockRegion(r)
    try {
      const reads = await Promise.allSettled(legs.all.map((l, i) => this.ctx.read(i, at, n, bufs[i])))
      const failed = reads.findIndex(x => x.status === 'rejected')
      if (failed >= 0) {
        reads.forEach((x, i) => { if (x.status === 'rejected') this.ctx.memberFailed(i, at, n, x.reason) })
        notCompared(report, legs.all.filter((_, i) => reads[i].status === 'rejected'), n * data)
        report.skippedBytes += n * data
        return
      }
      const acc = Buffer.from(new SharedArrayBuffer(n))
      await this.ctx.xor(acc, bufs)
      report.comparedBytes += n * data
      this.totals.bytes += n * data
      let chunks = 0
      for (let off = 0; off < n; off += SCRUB_CHUNK) {
        const slice = acc.subarray(off, Math.min(n, off + SCRUB_CHUNK))
        if (slice.some(b => b !== 0)) chunks++
      }
      if (chunks === 0) return
      let repaired = false
      if (report.repair) {
        await this.ctx.recompute(r)
        repaired = true
        report.repairedRegions++
        this.totals.repaired++
      }
      report.mismatches++
      this.totals.mismatches++
      const holders = parityHolders(this.ctx, legs.all.map(l => l.name), at, n)
      this.ctx.config.log(`verify: region ${r} (member bytes ${at}+${n}): parity differs from the data in ${chunks} of ${Math.ceil(n / SCRUB_CHUNK)} chunks${repaired ? '; parity rewritten from the data' : ''}`)
      insertMismatch(report.mismatchedRegions, { region: r, offset: at * data, length: n * data, chunks, legs: holders, reference: 'data', repaired })
    } finally {
      gate.unlockRegion(r)
      report.doneBytes += n * data
    }
  }
}

/** The members holding parity in member bytes [at, at + n): raid35's parity member, or every member for raid5. */
function parityHolders (ctx: ScrubContext, names: string[], _at: number, _n: number): string[] {
  return ctx.layout === 'raid35' ? [names[names.length - 1]] : names
}
