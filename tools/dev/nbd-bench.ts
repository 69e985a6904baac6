// The NBD half of `npm run bench`: the same fio jobs (nbd engine, loopback) against (a) `nbdkit file` on a file,
// (b) dst's NBD export of the same file, (c) dst exporting a remote device one dst:// hop away, (d) a dst mirror of two
// remote nodes. Prints IOPS, MiB/s, p99 latency, the ratio of each to nbdkit, the serving process's peak RSS, and the
// dst node's young-generation GCs per 100k requests. Ratios measured side by side in one run are what to compare.
// Then it samples each dst target's RSS once a second through one long mixed job (BENCH_RSS_SECONDS, default 60) and
// prints first, last and peak: a flat line means the request path does not accumulate memory.
// Each job runs BENCH_ROUNDS times (default 3) over every target in turn; ratios are taken within a round and the
// medians printed, with the spread of the ratio to nbdkit over the rounds.
// Knobs: BENCH_SECONDS, BENCH_ROUNDS, BENCH_NBD_TARGETS (letters, e.g. "ab"), BENCH_NBD_JOBS (substrings of job names, comma
// separated), BENCH_RSS_SECONDS (0 skips), BENCH_RSS_TARGETS (letters, default "bcd").

import { spawn, type ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { randomFillSync } from 'node:crypto'
import { fio, median, nbdUri, type FioJob as Job } from './fio'
import { freePort } from './ports'
import { spawnDst } from './spawn-dst'

const MiB = 1024 * 1024
const procs: ChildProcess[] = []

interface Target { name: string, uri: string, pid: number, metrics?: string }
interface Result { iops: number, mibs: number, p99: number, ios: number, rss: number }

function startDst (args: string[]): Promise<{ proc: ChildProcess, out: () => string }> {
  return spawnDst(args, { procs })
}

function currentRss (pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m === null ? 0 : Number(m[1]) * 1024
  } catch { return 0 }
}

/** The node's JavaScript heap in use now (from its /metrics), or null where it has none. */
async function heapUsed (metrics: string | undefined): Promise<number | null> {
  if (metrics === undefined) return null
  try {
    const m = /dst_memory_bytes\{[^}]*kind="heap_used"\} (\d+)/.exec(await (await fetch(metrics)).text())
    return m === null ? null : Number(m[1])
  } catch { return null }
}

/** Runs `job` for `seconds` and samples the target's RSS and heap in use once a second meanwhile. */
async function rssOver (target: Target, job: Job, seconds: number): Promise<{ samples: number[], heaps: number[], mibs: number }> {
  const samples: number[] = [currentRss(target.pid)]
  const heaps: number[] = []
  const timer = setInterval(() => {
    samples.push(currentRss(target.pid))
    void heapUsed(target.metrics).then(h => { if (h !== null) heaps.push(h) })
  }, 1000)
  try {
    const r = await fio(target.uri, job, seconds)
    return { samples: [...samples, currentRss(target.pid)], heaps, mibs: r.mibs }
  } finally { clearInterval(timer) }
}

function peakRss (pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m === null ? 0 : Number(m[1]) * 1024
  } catch { return 0 }
}

async function minorGcs (metrics: string | undefined): Promise<number | null> {
  if (metrics === undefined) return null
  const text = await (await fetch(metrics)).text()
  const m = /dst_gc_total\{[^}]*kind="minor"\} (\d+)/.exec(text)
  return m === null ? null : Number(m[1])
}

async function main (): Promise<void> {
  const seconds = Number(process.env.BENCH_SECONDS ?? 5)
  const size = 256 * MiB
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dst-nbd-bench-'))
  try {
    const data = randomFillSync(Buffer.alloc(size))
    for (const name of ['f.img', 'l0.img', 'l1.img', 'l2.img']) {
      const fd = fs.openSync(path.join(dir, name), 'w')
      fs.writeSync(fd, data)
      fs.fsyncSync(fd)
      fs.closeSync(fd)
    }
    // (a) nbdkit on the file.
    const kitPort = await freePort()
    const kit = spawn('nbdkit', ['-f', '-p', String(kitPort), '-i', '127.0.0.1', 'file', `file=${path.join(dir, 'f.img')}`], { stdio: 'ignore' })
    procs.push(kit)
    // (b) dst's NBD export of the same file.
    const direct = await startDst(['export', path.join(dir, 'f.img'), '--listen', '127.0.0.1:0', '--nbd', '127.0.0.1:0', '--name', 'disk'])
    const directStatus = /status {2}(http:\/\/\S+)\/status/.exec(direct.out())?.[1]
    // (c) a remote device one hop away, and (d) a mirror of two remote nodes, each node serving NBD.
    const leaf = async (name: string): Promise<string> => {
      const p = await startDst(['export', path.join(dir, name), '--listen', '127.0.0.1:0', '--name', 'disk'])
      const m = /export {2}(dst:\/\/\S+)/.exec(p.out())
      return (m as RegExpExecArray)[1]
    }
    const [u0, u1, u2] = await Promise.all([leaf('l0.img'), leaf('l1.img'), leaf('l2.img')])
    const node = async (name: string, devices: object, device: string): Promise<{ proc: ChildProcess, out: () => string }> => {
      const file = path.join(dir, `${name}.json`)
      fs.writeFileSync(file, JSON.stringify({ name, listen: '127.0.0.1:0', nbd: '127.0.0.1:0', dataDir: `./state-${name}`, devices, exports: [{ device }] }))
      return startDst(['node', '--config', file])
    }
    const hop = await node('hop', { far: { type: 'remote', url: u0 } }, 'far')
    const mir = await node('mir', { a: { type: 'remote', url: u1 }, b: { type: 'remote', url: u2 }, m: { type: 'mirror', members: ['a', 'b'], syncFrom: 'a' } }, 'm')
    const statusOf = (out: string): string | undefined => /status {2}(http:\/\/\S+)\/status/.exec(out)?.[1]
    for (let i = 0; i < 600; i++) {
      const s = await (await fetch(`${statusOf(mir.out())}/status`)).json() as { devices: { m: { state: string } } }
      if (s.devices.m.state === 'online') break
      await new Promise(resolve => setTimeout(resolve, 200))
    }
    const targets: Target[] = [
      { name: '(a) nbdkit file', uri: `nbd://127.0.0.1:${kitPort}`, pid: kit.pid ?? 0 },
      { name: '(b) dst file', uri: nbdUri(direct.out()), pid: direct.proc.pid ?? 0, metrics: `${directStatus}/metrics` },
      { name: '(c) dst remote, 1 hop', uri: nbdUri(hop.out()), pid: hop.proc.pid ?? 0, metrics: `${statusOf(hop.out())}/metrics` },
      { name: '(d) dst mirror of 2 remote', uri: nbdUri(mir.out()), pid: mir.proc.pid ?? 0, metrics: `${statusOf(mir.out())}/metrics` },
    ]
    const letters = process.env.BENCH_NBD_TARGETS ?? 'abcd'
    const chosen = targets.filter(tg => letters.includes(tg.name[1]))
    const allJobs: Job[] = [
      { name: '4k randread qd16', args: ['--rw=randread', '--bs=4k', '--iodepth=16'] },
      { name: '4k randwrite qd16', args: ['--rw=randwrite', '--bs=4k', '--iodepth=16'] },
      { name: '1M read qd4', args: ['--rw=read', '--bs=1m', '--iodepth=4'] },
      { name: '1M write qd4', args: ['--rw=write', '--bs=1m', '--iodepth=4'] },
    ]
    const jobFilter = (process.env.BENCH_NBD_JOBS ?? '').split(',').filter(x => x !== '')
    const jobs = allJobs.filter(j => jobFilter.length === 0 || jobFilter.some(f => j.name.includes(f)))
    // The machines are shared: their speed drifts by 2x within minutes. So each job runs in rounds, every target once
    // per round back to back, and the ratios are taken within each round; the table shows medians over the rounds.
    const rounds = Math.max(1, Number(process.env.BENCH_ROUNDS ?? 3))
    console.log(`\n== NBD: fio ${seconds} s per run, ${rounds} rounds of every target per job (medians shown; ratios taken within each round), nbd engine, loopback, ${os.cpus().length} cores, 256 MiB files in the page cache\n`)
    const pad = (s: string, n: number): string => s.padEnd(n)
    console.log(`${pad('job', 20)}${pad('target', 28)}${pad('IOPS', 10)}${pad('MiB/s', 10)}${pad('p99 ms', 9)}${pad('vs nbdkit', 11)}${pad('vs (b)', 9)}${pad('spread', 13)}${pad('RSS MiB', 9)}minor GCs/100k req`)
    console.log('(GCs: the young-generation collections of the dst node fio talks to, from its /metrics; nbdkit is C and has no GC)')
    for (const job of jobs) {
      const runs = new Map<Target, Result[]>(chosen.map(tg => [tg, []]))
      const vsKit = new Map<Target, number[]>(chosen.map(tg => [tg, []]))
      const vsDirect = new Map<Target, number[]>(chosen.map(tg => [tg, []]))
      const gcs = new Map<Target, { gcs: number, ios: number } | null>(chosen.map(tg => [tg, tg.metrics === undefined ? null : { gcs: 0, ios: 0 }]))
      for (let round = 0; round < rounds; round++) {
        let base = 0
        let direct = 0
        for (const target of chosen) {
          const gc0 = await minorGcs(target.metrics)
          const r = await fio(target.uri, job, seconds)
          const gc1 = await minorGcs(target.metrics)
          const g = gcs.get(target)
          if (g !== null && g !== undefined && gc0 !== null && gc1 !== null) { g.gcs += gc1 - gc0; g.ios += r.ios }
          runs.get(target)?.push({ ...r, rss: peakRss(target.pid) })
          if (target.name.startsWith('(a)')) base = r.iops
          if (target.name.startsWith('(b)')) direct = r.iops
          if (base > 0) vsKit.get(target)?.push(r.iops / base)
          if (direct > 0 && target.name >= '(c)') vsDirect.get(target)?.push(r.iops / direct)
        }
      }
      for (const target of chosen) {
        const rs = runs.get(target) as Result[]
        const iops = median(rs.map(r => r.iops))
        const kit = vsKit.get(target) as number[]
        const dir = vsDirect.get(target) as number[]
        const g = gcs.get(target)
        const spread = kit.length > 1 && !target.name.startsWith('(a)') ? `${Math.min(...kit).toFixed(2)}-${Math.max(...kit).toFixed(2)}x` : '-'
        console.log(`${pad(job.name, 20)}${pad(target.name, 28)}${pad(iops.toFixed(0), 10)}${pad(median(rs.map(r => r.mibs)).toFixed(1), 10)}` +
          `${pad(median(rs.map(r => r.p99)).toFixed(2), 9)}${pad(kit.length === 0 ? '-' : `${median(kit).toFixed(2)}x`, 11)}` +
          `${pad(dir.length === 0 ? '-' : `${median(dir).toFixed(2)}x`, 9)}${pad(spread, 13)}${pad((Math.max(...rs.map(r => r.rss)) / MiB).toFixed(0), 9)}` +
          `${target.name.startsWith('(a)') ? 'n/a (C)' : g === null || g === undefined ? '-' : ((g.gcs / Math.max(1, g.ios)) * 100000).toFixed(0)}`)
      }
    }
    const rssSeconds = Number(process.env.BENCH_RSS_SECONDS ?? 60)
    const rssLetters = process.env.BENCH_RSS_TARGETS ?? 'bcd'
    if (rssSeconds > 0) {
      const mixed: Job = { name: 'randrw 4k-1M qd16', args: ['--rw=randrw', '--bsrange=4k-1m', '--iodepth=16'] }
      console.log(`\n== RSS of each dst node through ${rssSeconds} s of fio ${mixed.args.join(' ')}, sampled once a second\n`)
      // The pool's buffers are touched as first used, so RSS climbs in the first seconds; what must stay flat is after.
      const warm = Math.min(10, Math.floor(rssSeconds / 3))
      // RSS also follows V8's sizing of its heap, which grows its reserve for a while under a steady load; what a leak
      // would raise is the heap's floor (what is left in use after collections): its lowest sample in the first and in
      // the last third of the run after the warm-up.
      console.log(`${pad('target', 28)}${pad('start MiB', 11)}${pad(`at ${warm} s`, 9)}${pad('last MiB', 10)}${pad('peak MiB', 10)}${pad(`last - at ${warm} s`, 16)}${pad('heap floor MiB', 16)}MiB/s`)
      for (const target of targets.filter(tg => rssLetters.includes(tg.name[1]) && !tg.name.startsWith('(a)'))) {
        const { samples, heaps, mibs } = await rssOver(target, mixed, rssSeconds)
        const settled = heaps.slice(Math.min(warm, heaps.length))
        const third = Math.max(1, Math.floor(settled.length / 3))
        const floor = (xs: number[]): string => xs.length === 0 ? '-' : (Math.min(...xs) / MiB).toFixed(0)
        const heapFloors = `${floor(settled.slice(0, third))} -> ${floor(settled.slice(-third))}`
        const first = samples[0] / MiB
        const warmed = samples[Math.min(warm, samples.length - 1)] / MiB
        const last = samples[samples.length - 1] / MiB
        const peak = Math.max(...samples) / MiB
        const growth = last - warmed
        console.log(`${pad(target.name, 28)}${pad(first.toFixed(0), 11)}${pad(warmed.toFixed(0), 9)}${pad(last.toFixed(0), 10)}${pad(peak.toFixed(0), 10)}${pad(`${growth >= 0 ? '+' : ''}${growth.toFixed(0)}`, 16)}${pad(heapFloors, 16)}${mibs.toFixed(0)}`)
      }
    }
  } finally {
    for (const p of procs) p.kill('SIGKILL')
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

main().catch(err => {
  for (const p of procs) p.kill('SIGKILL')
  console.error(`nbd bench: ${(err as Error).message}`)
  process.exit(1)
})
