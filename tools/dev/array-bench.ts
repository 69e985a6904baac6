// The arrays' part of `npm run bench` (issue 14, point 11): one leaf one dst:// hop away (the baseline), a 4-member
// stripe, a 4+1 raid35 and a 4+1 raid5 parity array, each array node exporting over NBD, measured with the same fio
// jobs (1 MiB sequential read and write, 4 KiB random read and write) and reported as ratios to the one leaf.
//
// Five leaf nodes, each in its own network namespace behind a rate-limited veth link (tools/dev/netns.ts, tc tbf), as
// separate machines would be; each leaf exports one file per array (and leaf 1 the baseline's), so the arrays never
// share a member file and all four array nodes can run at once. Each job runs in rounds (BENCH_ROUNDS), every target
// once per round back to back, ratios taken within a round, medians printed: this machine's speed drifts. For parity
// arrays the write jobs also print the reads before write per write (the array's `preReads` and `preReadBytes` in
// /status, before and after the job, over fio's write count). Without the rights for namespaces (root, ip, tc) or
// with BENCH_LINKS=0 every leaf is on 127.0.0.1, unlimited, and the report says so: then every process shares this
// machine's CPUs and the ratios measure CPU, not links.
// Knobs: BENCH_SECONDS (per fio run, default 8), BENCH_ROUNDS (default 2), BENCH_LINK_RATE (default 200mbit),
// BENCH_MEMBER_MIB (each member file, default 256), BENCH_ARRAY_TARGETS and BENCH_ARRAY_JOBS (substrings, comma
// separated). The defaults run in about six minutes.

import type { ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { fio, median, nbdUri, type FioJob } from './fio'
import { linksAvailable, makeLinks } from './netns'
import { spawnDst } from './spawn-dst'

const MiB = 1024 * 1024
const LEAVES = 5
const procs: ChildProcess[] = []

interface Target {
  name: string
  /** The array's device on its node ('far' for the one hop). */
  device: string
  /** The leaves' exports it is made of. */
  members: Array<{ leaf: number, export: string }>
  /** The array device's config, given its member device names. */
  config: (members: string[]) => Record<string, unknown>
}

interface Running { target: Target, uri: string, status: string }

const TARGETS: Target[] = [
  { name: 'one leaf, 1 hop', device: 'far', members: [{ leaf: 0, export: 'one' }], config: () => ({}) },
  {
    name: 'stripe of 4',
    device: 'a',
    members: [0, 1, 2, 3].map(leaf => ({ leaf, export: 'stripe' })),
    config: members => ({ type: 'stripe', members, chunk: '64KiB' }),
  },
  {
    name: 'raid35 4+1',
    device: 'a',
    members: [0, 1, 2, 3, 4].map(leaf => ({ leaf, export: 'raid35' })),
    // No block given: four data members of 4 KiB blocks make it 16 KiB (one 4 KiB fragment each).
    config: members => ({ type: 'parity', layout: 'raid35', members, region: '1MiB' }),
  },
  {
    name: 'raid5 4+1',
    device: 'a',
    members: [0, 1, 2, 3, 4].map(leaf => ({ leaf, export: 'raid5' })),
    config: members => ({ type: 'parity', layout: 'raid5', members, chunk: '64KiB', region: '1MiB' }),
  },
]

const JOBS: FioJob[] = [
  { name: '1M write qd4', args: ['--rw=write', '--bs=1m', '--iodepth=4'] },
  { name: '1M read qd4', args: ['--rw=read', '--bs=1m', '--iodepth=4'] },
  { name: '4k randwrite qd16', args: ['--rw=randwrite', '--bs=4k', '--iodepth=16'] },
  { name: '4k randread qd16', args: ['--rw=randread', '--bs=4k', '--iodepth=16'] },
]

/** Issue 14's targets (point 11): the least ratio to one leaf each array should reach, per job. */
const GOALS: Record<string, Record<string, number>> = {
  '1M read qd4': { 'stripe of 4': 3, 'raid35 4+1': 3, 'raid5 4+1': 3 },
  '1M write qd4': { 'stripe of 4': 2.5, 'raid35 4+1': 2.5, 'raid5 4+1': 2.5 },
  '4k randread qd16': { 'stripe of 4': 3, 'raid35 4+1': 0.8, 'raid5 4+1': 3 },
}

function pick<T extends { name: string }> (all: T[], env: string | undefined): T[] {
  const only = (env ?? '').split(',').filter(x => x !== '')
  return only.length === 0 ? all : all.filter(x => only.some(o => x.name.includes(o)))
}

async function getJson (url: string): Promise<any> {
  const res = await fetch(url, { signal: AbortSignal.timeout(10000) })
  if (res.status !== 200) throw new Error(`GET ${url}: HTTP ${res.status}`)
  return await res.json()
}

/** A parity array's reads before write so far, from /status (the device's own fields, or its `counters`). */
async function preReads (running: Running): Promise<{ reads: number, bytes: number } | null> {
  const d = (await getJson(running.status)).devices?.[running.target.device]
  const c = d?.preReads !== undefined ? d : d?.counters
  if (typeof c?.preReads !== 'number') return null
  return { reads: c.preReads, bytes: c.preReadBytes ?? 0 }
}

async function waitOnline (running: Running, ms: number): Promise<void> {
  const deadline = Date.now() + ms
  let state = 'unknown'
  while (Date.now() < deadline) {
    state = (await getJson(running.status)).devices?.[running.target.device]?.state ?? 'missing'
    if (state === 'online') return
    await new Promise(resolve => setTimeout(resolve, 250))
  }
  throw new Error(`${running.target.name}: still ${state} after ${ms} ms`)
}

async function main (): Promise<void> {
  const seconds = Number(process.env.BENCH_SECONDS ?? 8)
  const rounds = Math.max(1, Number(process.env.BENCH_ROUNDS ?? 2))
  const rate = process.env.BENCH_LINK_RATE ?? '200mbit'
  const memberBytes = Number(process.env.BENCH_MEMBER_MIB ?? 256) * MiB
  const fioSize = `${Math.min(256, memberBytes / MiB)}m`
  const targets = pick(TARGETS, process.env.BENCH_ARRAY_TARGETS)
  if (!targets.includes(TARGETS[0])) targets.unshift(TARGETS[0]) // the baseline, always
  const jobs = pick(JOBS, process.env.BENCH_ARRAY_JOBS)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dst-array-bench-'))
  let links: ReturnType<typeof makeLinks> | null = null
  try {
    // Array benches' own names, so this never collides with bench.ts's dstbench1/2.
    if (linksAvailable()) links = makeLinks(rate, { count: LEAVES, prefix: 'dstarray', veth: 'dsta', net: 78 })
    const hosts = links?.hosts ?? Array.from({ length: LEAVES }, () => '127.0.0.1')
    console.log(`\n== arrays: fio ${seconds} s per run, ${rounds} round(s) of every target per job (medians; ratios within each round), nbd engine, ${os.cpus().length} cores, ${memberBytes / MiB} MiB member files, fio over the first ${fioSize}`)
    console.log(links !== null
      ? `   each of the ${LEAVES} leaves in its own network namespace behind a ${rate} veth link (tc tbf, both directions); array nodes, fio and NBD on this host`
      : `   NO LINKS (needs root, ip and tc; or BENCH_LINKS=0 was set): every leaf on 127.0.0.1, unlimited, all on this machine's CPUs; the ratios measure CPU, not links`)

    // The leaves: leaf i exports one file per array it is a member of.
    const leafUrls: Array<Map<string, string>> = []
    await Promise.all(hosts.map(async (host, i) => {
      const exportsOf = [...new Set(targets.flatMap(t => t.members.filter(m => m.leaf === i).map(m => m.export)))]
      if (exportsOf.length === 0) return // a member of none of the targets chosen
      const name = `leaf${i + 1}`
      const devices = Object.fromEntries(exportsOf.map(e => [e, { type: 'file', path: `./${name}-${e}.img`, size: memberBytes }]))
      const file = path.join(dir, `${name}.json`)
      fs.writeFileSync(file, JSON.stringify({
        name, listen: `${host}:0`, dataDir: `./state-${name}`, devices,
        exports: exportsOf.map(e => ({ device: e, allow: ['127.0.0.0/8', '10.78.0.0/16'] })),
      }))
      const leaf = await spawnDst(['node', '--config', file], { netns: links?.namespaces[i], procs, what: name })
      if (leaf.statusPort === null) throw new Error(`${name} printed no status address: ${leaf.out()}`)
      leafUrls[i] = new Map(exportsOf.map(e => [e, `dst://${host}:${leaf.statusPort as number}/${e}`]))
    }))

    // The array nodes, all running at once (an idle one costs nothing); one that cannot start is reported and left out.
    const running: Running[] = []
    for (const target of targets) {
      const devices: Record<string, unknown> = {}
      const names = target.members.map((m, k) => {
        const dev = target.device === 'far' ? 'far' : `m${k}`
        devices[dev] = { type: 'remote', url: leafUrls[m.leaf].get(m.export) }
        return dev
      })
      if (target.device !== 'far') devices[target.device] = target.config(names)
      const name = target.name.split(' ')[0].replace(/[^a-z0-9]/g, '')
      const file = path.join(dir, `${name}.json`)
      fs.writeFileSync(file, JSON.stringify({ name, listen: '127.0.0.1:0', nbd: '127.0.0.1:0', dataDir: `./state-${name}`, devices, exports: [{ device: target.device }] }))
      try {
        const node = await spawnDst(['node', '--config', file], { procs, what: `${target.name} node`, timeout: 120000 })
        const r: Running = { target, uri: nbdUri(node.out()), status: `http://127.0.0.1:${node.statusPort as number}/status` }
        await waitOnline(r, 120000)
        running.push(r)
      } catch (err) {
        if (target === TARGETS[0]) throw err
        const why = (err as Error).message.split('\n').find(l => /dst node:|still|config/.test(l)) ?? (err as Error).message.split('\n')[0]
        console.log(`   ${target.name}: not measured, its node did not start: ${why.trim().slice(0, 300)}`)
      }
    }

    const pad = (s: string, n: number): string => s.padEnd(n)
    console.log(`\n${pad('job', 20)}${pad('target', 18)}${pad('IOPS', 9)}${pad('MiB/s', 9)}${pad('p99 ms', 9)}${pad('vs one leaf', 13)}${pad('spread', 13)}reads before write, per write`)
    const verdicts: string[] = []
    for (const job of jobs) {
      const ratios = new Map<Running, number[]>(running.map(r => [r, []]))
      const results = new Map<Running, Array<{ iops: number, mibs: number, p99: number }>>(running.map(r => [r, []]))
      const pre = new Map<Running, { reads: number, bytes: number, writes: number }>()
      const writes = job.args.some(a => /rw=(rand)?write/.test(a))
      for (let round = 0; round < rounds; round++) {
        let base = 0
        for (const r of running) {
          const before = writes ? await preReads(r) : null
          const res = await fio(r.uri, job, seconds, fioSize)
          const after = writes ? await preReads(r) : null
          if (before !== null && after !== null) {
            const p = pre.get(r) ?? { reads: 0, bytes: 0, writes: 0 }
            pre.set(r, { reads: p.reads + after.reads - before.reads, bytes: p.bytes + after.bytes - before.bytes, writes: p.writes + res.ios })
          }
          results.get(r)?.push(res)
          if (r.target === TARGETS[0]) base = res.iops
          if (base > 0) ratios.get(r)?.push(res.iops / base)
        }
      }
      for (const r of running) {
        const rs = results.get(r) ?? []
        const q = ratios.get(r) ?? []
        const p = pre.get(r)
        const ratio = median(q)
        const preText = p === undefined ? '-' : `${(p.reads / Math.max(1, p.writes)).toFixed(2)} reads, ${(p.bytes / Math.max(1, p.writes) / 1024).toFixed(1)} KiB`
        console.log(`${pad(job.name, 20)}${pad(r.target.name, 18)}${pad(median(rs.map(x => x.iops)).toFixed(0), 9)}${pad(median(rs.map(x => x.mibs)).toFixed(1), 9)}` +
          `${pad(median(rs.map(x => x.p99)).toFixed(2), 9)}${pad(`${ratio.toFixed(2)}x`, 13)}${pad(q.length > 1 ? `${Math.min(...q).toFixed(2)}-${Math.max(...q).toFixed(2)}x` : '-', 13)}${preText}`)
        const goal = GOALS[job.name]?.[r.target.name]
        if (goal !== undefined) verdicts.push(`${ratio >= goal ? 'met   ' : 'MISSED'} ${pad(r.target.name, 12)} ${pad(job.name, 18)} ${ratio.toFixed(2)}x one leaf (target ${goal}x)`)
      }
    }
    for (const target of targets) {
      if (!running.some(r => r.target === target)) verdicts.push(`not measured: ${target.name}`)
    }
    console.log(`\nissue 14's targets${links === null ? ' (NO LINKS: loopback only, not what the targets are about)' : ` (leaves behind ${rate} links)`}:`)
    for (const v of verdicts) console.log(`  ${v}`)
  } finally {
    for (const p of procs) p.kill('SIGKILL')
    await new Promise(resolve => setTimeout(resolve, 300))
    links?.cleanup()
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

main().catch(err => {
  for (const p of procs) p.kill('SIGKILL')
  console.error(`array bench: ${(err as Error).message}`)
  process.exit(1)
})
