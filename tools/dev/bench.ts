// `npm run bench`: measures, side by side in one run on loopback, a device one dst:// hop away against a mirror of
// two remote nodes (and the leaf exported directly), with the same client and the same jobs. Reports ratios, which
// mean something on a shared machine; the absolute numbers are only for orientation. Not part of `npm test`.
// Each row also shows the young-generation (minor) GCs of the serving node per 100k requests, read from its /metrics
// before and after the job (dst_gc_total, node/core/gc.ts): whether the request path allocates. Only the node the
// client talks to is counted (for "one hop", not the leaf behind it).

import type { ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { randomFillSync } from 'node:crypto'
import { RemoteDevice } from '../../export/native/remote-device'
import { parseDstUrl } from '../../node/core/url'
import { linksAvailable, makeLinks } from './netns'
import { spawnDst } from './spawn-dst'

const MiB = 1024 * 1024
const procs: ChildProcess[] = []

interface Target { name: string, url: string, pid: () => number, metrics: string }
interface Job { name: string, run: (dev: RemoteDevice) => Promise<{ ops: number, bytes: number, secs: number, p99: number }> }

async function start (args: string[], netns?: string): Promise<{ port: number, proc: ChildProcess }> {
  const started = await spawnDst(args, { netns, procs })
  if (started.statusPort === null) throw new Error(`dst ${args.join(' ')} printed no status address: ${started.out()}`)
  return { port: started.statusPort, proc: started.proc }
}

async function open (url: string): Promise<RemoteDevice> {
  const t = parseDstUrl(url)
  if (typeof t === 'string') throw new Error(t)
  return RemoteDevice.open(t, { queueDepth: 64, openTimeout: 30000 })
}

function percentile (xs: number[], p: number): number {
  if (xs.length === 0) return 0
  const s = xs.slice().sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor(p * s.length))]
}

/** Runs `depth` workers issuing requests from `next` until `seconds` pass. */
async function loop (seconds: number, depth: number, issue: (worker: number, i: number) => Promise<number>): Promise<{ ops: number, bytes: number, secs: number, p99: number }> {
  const end = Date.now() + seconds * 1000
  let ops = 0
  let bytes = 0
  const lat: number[] = []
  const began = process.hrtime.bigint()
  await Promise.all(Array.from({ length: depth }, async (_, w) => {
    for (let i = 0; Date.now() < end; i++) {
      const t0 = process.hrtime.bigint()
      // Not `bytes += await …`: that reads `bytes` before the await and loses the other workers' additions.
      const n = await issue(w, i)
      bytes += n
      lat.push(Number(process.hrtime.bigint() - t0) / 1e6)
      ops++
    }
  }))
  const secs = Number(process.hrtime.bigint() - began) / 1e9
  return { ops, bytes, secs, p99: percentile(lat, 0.99) }
}

function jobs (seconds: number): Job[] {
  const rnd = (n: number): number => Math.floor(Math.random() * n)
  return [
    {
      name: 'seq read 1MiB qd8',
      run: async dev => {
        const bufs = Array.from({ length: 8 }, () => Buffer.alloc(MiB))
        const blocks = Math.floor(dev.size / MiB)
        let next = 0
        return loop(seconds, 8, async w => { const at = (next++ % blocks) * MiB; await dev.read(at, MiB, bufs[w]); return MiB })
      },
    },
    {
      name: 'seq write 1MiB qd4',
      run: async dev => {
        const bufs = Array.from({ length: 4 }, () => randomFillSync(Buffer.alloc(MiB)))
        const blocks = Math.floor(dev.size / MiB)
        let next = 0
        return loop(seconds, 4, async w => { const at = (next++ % blocks) * MiB; await dev.write(at, bufs[w]); return MiB })
      },
    },
    {
      name: 'rand read 4KiB qd16',
      run: async dev => {
        const bufs = Array.from({ length: 16 }, () => Buffer.alloc(4096))
        const blocks = Math.floor(dev.size / 4096)
        return loop(seconds, 16, async w => { await dev.read(rnd(blocks) * 4096, 4096, bufs[w]); return 4096 })
      },
    },
    {
      name: 'rand write 4KiB qd16',
      run: async dev => {
        const bufs = Array.from({ length: 16 }, () => randomFillSync(Buffer.alloc(4096)))
        const blocks = Math.floor(dev.size / 4096)
        return loop(seconds, 16, async w => { await dev.write(rnd(blocks) * 4096, bufs[w]); return 4096 })
      },
    },
  ]
}

/** The node's young-generation GC count so far (its /metrics), or null if it cannot be read. */
async function minorGcs (metrics: string): Promise<number | null> {
  try {
    const m = /dst_gc_total\{[^}]*kind="minor"\} (\d+)/.exec(await (await fetch(metrics)).text())
    return m === null ? null : Number(m[1])
  } catch { return null }
}

function peakRss (pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m === null ? 0 : Number(m[1]) * 1024
  } catch { return 0 }
}

interface Scenario { title: string, leafHosts: string[], netns: Array<string | undefined> }

async function scenario (sc: Scenario, dir: string, seconds: number, size: number): Promise<void> {
  const started: ChildProcess[] = []
  try {
    const leaves: Array<{ port: number, proc: ChildProcess, url: string, metrics: string }> = []
    for (const [i, host] of sc.leafHosts.entries()) {
      const file = path.join(dir, `l${i + 1}.img`)
      // Two nodes (the one-hop node and the mirror) write this leaf, one after the other: the export is shared.
      const leaf = await start(['export', file, '--listen', `${host}:0`, '--name', 'disk', '--allow', '127.0.0.0/8', '--allow', '10.77.0.0/16', '--shared'], sc.netns[i])
      started.push(leaf.proc)
      leaves.push({ ...leaf, url: `dst://${host}:${leaf.port}/disk`, metrics: `http://${host}:${leaf.port}/metrics` })
    }
    const cfg = (name: string, devices: object, device: string): string => {
      const file = path.join(dir, `${name}.json`)
      fs.rmSync(path.join(dir, `state-${name}`), { recursive: true, force: true })
      fs.writeFileSync(file, JSON.stringify({ name, listen: '127.0.0.1:0', dataDir: `./state-${name}`, devices, exports: [{ device }] }))
      return file
    }
    const hop = await start(['node', '--config', cfg('hop', { far: { type: 'remote', url: leaves[0].url } }, 'far')])
    started.push(hop.proc)
    const mir = await start(['node', '--config', cfg('mir', {
      a: { type: 'remote', url: leaves[0].url },
      b: { type: 'remote', url: leaves[1].url },
      m: { type: 'mirror', members: ['a', 'b'], syncFrom: 'a' },
    }, 'm')])
    started.push(mir.proc)
    // Wait for the mirror's first sync (a compare of identical legs).
    for (let i = 0; i < 1500; i++) {
      const st = await (await fetch(`http://127.0.0.1:${mir.port}/status`)).json() as { devices: { m: { state: string } } }
      if (st.devices.m.state === 'online') break
      await new Promise(resolve => setTimeout(resolve, 200))
    }
    const targets: Target[] = [
      { name: 'leaf (direct)', url: leaves[0].url, pid: () => leaves[0].proc.pid ?? 0, metrics: leaves[0].metrics },
      { name: 'remote, one hop', url: `dst://127.0.0.1:${hop.port}/far`, pid: () => hop.proc.pid ?? 0, metrics: `http://127.0.0.1:${hop.port}/metrics` },
      { name: 'mirror of 2 remote', url: `dst://127.0.0.1:${mir.port}/m`, pid: () => mir.proc.pid ?? 0, metrics: `http://127.0.0.1:${mir.port}/metrics` },
    ]
    const only = process.env.BENCH_TARGETS?.split(',')
    const chosen = only === undefined ? targets : targets.filter(t => only.some(o => t.name.includes(o)))
    const results = new Map<string, Map<string, { mibs: number, iops: number, p99: number, gcs: number | null }>>()
    console.log(`\n== ${sc.title}\n`)
    for (const job of jobs(seconds)) {
      for (const target of chosen) {
        const dev = await open(target.url)
        const gc0 = await minorGcs(target.metrics)
        const r = await job.run(dev)
        const gc1 = await minorGcs(target.metrics)
        await dev.close()
        const row = results.get(job.name) ?? new Map()
        const gcs = gc0 === null || gc1 === null ? null : ((gc1 - gc0) / Math.max(1, r.ops)) * 100000
        row.set(target.name, { mibs: r.bytes / MiB / r.secs, iops: r.ops / r.secs, p99: r.p99, gcs })
        results.set(job.name, row)
      }
    }
    const base = 'remote, one hop'
    const pad = (x: string, n: number): string => x.padEnd(n)
    console.log(`${pad('job', 22)}${pad('target', 22)}${pad('MiB/s', 10)}${pad('IOPS', 10)}${pad('p99 ms', 9)}${pad('vs one hop', 12)}minor GCs/100k req`)
    for (const [job, row] of results) {
      for (const [target, r] of row) {
        const ratio = r.mibs / (row.get(base)?.mibs ?? r.mibs)
        console.log(`${pad(job, 22)}${pad(target, 22)}${pad(r.mibs.toFixed(1), 10)}${pad(r.iops.toFixed(0), 10)}${pad(r.p99.toFixed(2), 9)}${pad(`${ratio.toFixed(2)}x`, 12)}${r.gcs === null ? '-' : r.gcs.toFixed(0)}`)
      }
    }
    console.log('\npeak RSS (VmHWM) of the serving process:')
    for (const t of chosen) console.log(`  ${pad(t.name, 22)}${(peakRss(t.pid()) / MiB).toFixed(0)} MiB`)
    const seq = results.get('seq read 1MiB qd8')
    if (seq?.get(base) !== undefined && seq.get('mirror of 2 remote') !== undefined) {
      const ratio = (seq.get('mirror of 2 remote')?.mibs ?? 0) / (seq.get(base)?.mibs ?? 1)
      console.log(`\nsequential read, mirror of two remote nodes vs one: ${ratio.toFixed(2)}x`)
    }
  } finally {
    for (const p of started) p.kill('SIGKILL')
    await new Promise(resolve => setTimeout(resolve, 300))
  }
}

async function main (): Promise<void> {
  const seconds = Number(process.env.BENCH_SECONDS ?? 5)
  const size = Number(process.env.BENCH_SIZE_MIB ?? 256) * MiB
  const rate = process.env.BENCH_LINK_RATE ?? '1gbit'
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dst-bench-'))
  let links: { hosts: string[], cleanup: () => void } | null = null
  try {
    // Two leaves with identical contents (so the mirror's first sync only compares), kept in the page cache.
    const data = randomFillSync(Buffer.alloc(size))
    for (const name of ['l1.img', 'l2.img']) {
      // Written and synced before any job, so no job pays for the write-back of the setup's dirty pages.
      const fd = fs.openSync(path.join(dir, name), 'w')
      fs.writeSync(fd, data)
      fs.fsyncSync(fd)
      fs.closeSync(fd)
    }
    console.log(`dst bench: ${seconds} s per job, ${size / MiB} MiB devices, ${os.cpus().length} cores; the same client and jobs for every target`)
    if (process.env.BENCH_SCENARIOS === undefined || process.env.BENCH_SCENARIOS.includes('loopback')) {
      await scenario({ title: 'loopback: every process on this machine\'s CPUs, no link limit', leafHosts: ['127.0.0.1', '127.0.0.1'], netns: [undefined, undefined] }, dir, seconds, size)
    }
    if (process.env.BENCH_SCENARIOS === undefined || process.env.BENCH_SCENARIOS.includes('links')) {
      if (!linksAvailable()) {
        console.log('\n== links: skipped (needs root, ip and tc; BENCH_LINKS=0 turns it off)')
      } else {
        links = makeLinks(rate)
        await scenario({ title: `links: each leaf in its own network namespace behind a ${rate} veth link (tc tbf)`, leafHosts: links.hosts, netns: ['dstbench1', 'dstbench2'] }, dir, seconds, size)
      }
    }
  } finally {
    for (const p of procs) p.kill('SIGKILL')
    links?.cleanup()
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

main().catch(err => {
  for (const p of procs) p.kill('SIGKILL')
  console.error(`bench: ${(err as Error).message}`)
  process.exit(1)
})
