// fio for the NBD benchmarks (nbd-bench.ts, array-bench.ts): one time-based job on an nbd:// URI through fio's nbd
// engine, its JSON read back into IOPS, MiB/s, p99 completion latency and the I/Os done; the address a dst node prints
// for an export; the median the benches report over rounds.

import { execFile } from 'node:child_process'

const MiB = 1024 * 1024

export interface FioJob { name: string, args: string[] }
export interface FioResult { iops: number, mibs: number, p99: number, ios: number }

/** The first `nbd://` address a dst node printed (its `nbd     nbd://HOST:PORT/NAME` line). */
export function nbdUri (out: string): string {
  const m = /nbd {5}(nbd:\/\/\S+)/.exec(out)
  if (m === null) throw new Error(`no nbd address in:\n${out}`)
  return m[1]
}

/** Runs `job` for `seconds` over the first `size` bytes of the export (fio's --size, e.g. '256m'). */
export function fio (uri: string, job: FioJob, seconds: number, size = '256m'): Promise<FioResult> {
  return new Promise((resolve, reject) => {
    execFile('fio', ['--name=bench', '--ioengine=nbd', `--uri=${uri}`, '--time_based', `--runtime=${seconds}`, `--size=${size}`,
      '--output-format=json', ...job.args], { maxBuffer: 64 * MiB, timeout: (seconds + 120) * 1000 }, (err, stdout, stderr) => {
      if (err !== null) { reject(new Error(`fio ${job.name} on ${uri}: ${stderr || err.message}`)); return }
      // fio may print a line of its own before the JSON document.
      const j = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: Array<Record<'read' | 'write', { iops: number, bw_bytes: number, total_ios: number, clat_ns: { percentile?: Record<string, number> } }>> }
      const side = job.args.some(a => /rw=(rand)?write/.test(a)) ? j.jobs[0].write : j.jobs[0].read
      resolve({ iops: side.iops, mibs: side.bw_bytes / MiB, p99: (side.clat_ns.percentile?.['99.000000'] ?? 0) / 1e6, ios: side.total_ios })
    })
  })
}

export function median (xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length === 0 ? 0 : s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2
}
