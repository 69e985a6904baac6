// The integrity part of `npm run bench`: a mirror node over two leaf nodes (each exporting a file), all real
// processes, first on loopback, then (as root) with each leaf behind its own 1 Gbit link (network namespaces, tc).
// Measures (1) online verify throughput, MiB of mirror verified per second, with the digests computed on the leaf
// nodes; (2) the sync of a leg that differs from the other in 1% of its regions, with checksum resync (digests first,
// only differing chunks copied) against a plain full copy, side by side in one run.
// Usage: node -r ts-node/register/transpile-only tools/dev/verify-bench.ts [--size MiB]

import type { ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { randomFillSync } from 'node:crypto'
import { parseArgs } from 'node:util'
import { linksAvailable, makeLinks } from './netns'
import { spawnDst } from './spawn-dst'

const MiB = 1024 * 1024
const REGION = MiB
const procs: ChildProcess[] = []

interface Node { proc: ChildProcess, port: number, http: string }

async function startNode (dir: string, config: Record<string, unknown>, netns?: string): Promise<Node> {
  const file = path.join(dir, `${String(config.name)}.json`)
  fs.writeFileSync(file, JSON.stringify({ listen: '127.0.0.1:0', ...config }, null, 2))
  const started = await spawnDst(['node', '--config', file], { netns, procs, what: `node ${String(config.name)}` })
  const port = started.statusPort
  if (port === null) throw new Error(`node ${String(config.name)} printed no status address: ${started.out()}`)
  return { proc: started.proc, port, http: `http://127.0.0.1:${port}` }
}

async function stopNode (n: Node): Promise<void> {
  const exited = new Promise(resolve => n.proc.once('exit', resolve))
  n.proc.kill('SIGTERM')
  await exited
}

interface LegStatus { name: string, state: string, resync?: { copiedBytes: number, comparedBytes: number } }
interface MirrorStatus { state: string, resyncedBytes: number, resyncComparedBytes: number, members: LegStatus[] }

async function mirrorStatus (n: Node): Promise<MirrorStatus> {
  const s = await (await fetch(`${n.http}/status`)).json() as { devices: Record<string, MirrorStatus> }
  return s.devices.m
}

/** Waits (bounded) until every leg of the mirror is in sync; returns the seconds it took and the bytes moved. */
async function waitInSync (n: Node, began: number): Promise<{ secs: number, copied: number, compared: number }> {
  for (let i = 0; i < 6000; i++) {
    const m = await mirrorStatus(n)
    if (m.members.every(l => l.state === 'in-sync')) return { secs: (Date.now() - began) / 1000, copied: m.resyncedBytes, compared: m.resyncComparedBytes }
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  throw new Error('the mirror did not get in sync within 5 minutes')
}

/** Makes `b` a copy of `a` that differs in one 4 KiB block of every hundredth region (1% of regions). */
function makeLegFiles (a: string, b: string, size: number): number {
  const buf = Buffer.alloc(16 * MiB)
  const fa = fs.openSync(a, 'w')
  const fb = fs.openSync(b, 'w')
  for (let at = 0; at < size; at += buf.length) {
    randomFillSync(buf)
    fs.writeSync(fa, buf, 0, Math.min(buf.length, size - at), at)
    fs.writeSync(fb, buf, 0, Math.min(buf.length, size - at), at)
  }
  fs.closeSync(fa)
  return differ(fb, size, fs.closeSync)
}

function differ (fb: number, size: number, done: (fd: number) => void): number {
  const block = Buffer.alloc(4096)
  let regions = 0
  for (let r = 0; r * REGION < size; r += 100) {
    randomFillSync(block)
    fs.writeSync(fb, block, 0, block.length, r * REGION + 12345 * 4)
    regions++
  }
  done(fb)
  return regions
}

function fmt (x: number): string { return x.toFixed(x >= 100 ? 0 : 1) }

interface Scenario { title: string, hosts: string[], netns: Array<string | undefined> }

async function scenario (sc: Scenario, dir: string, size: number, fileA: string, fileB: string): Promise<void> {
  const started: Node[] = []
  try {
    const leaf = async (i: number, file: string): Promise<Node> => {
      const n = await startNode(dir, {
        name: `leaf${i}`, listen: `${sc.hosts[i]}:0`, dataDir: path.join(dir, `state-leaf${i}`),
        devices: { d: { type: 'file', path: file } }, exports: [{ device: 'd', allow: ['127.0.0.0/8', '10.77.0.0/16'] }],
      }, sc.netns[i])
      started.push(n)
      return n
    }
    const leafA = await leaf(0, fileA)
    const leafB = await leaf(1, fileB)
    // Both runs use one dataDir (so the leaf exports see the same writer and its lease), emptied between them so the
    // second run is a new array too.
    const midState = path.join(dir, 'state-mid')
    const mirrorConfig = (checksumResync: boolean): Record<string, unknown> => ({
      name: 'mid',
      dataDir: midState,
      devices: {
        ra: { type: 'remote', url: `dst://${sc.hosts[0]}:${leafA.port}/d` },
        rb: { type: 'remote', url: `dst://${sc.hosts[1]}:${leafB.port}/d` },
        // Both legs hold data: the new array is told which one is right (it never guesses).
        m: { type: 'mirror', members: ['ra', 'rb'], region: '1MiB', checksumResync, syncFrom: 'ra' },
      },
      exports: [{ device: 'm' }],
    })
    fs.rmSync(midState, { recursive: true, force: true })

    // A new array: leg rb is synced from ra in full. With checksum resync, only the differing chunks move.
    let began = Date.now()
    const mid1 = await startNode(dir, mirrorConfig(true))
    started.push(mid1)
    const withSums = await waitInSync(mid1, began)
    await stopNode(mid1)

    // The same starting point, and a plain full copy.
    const fb = fs.openSync(fileB, 'r+')
    differ(fb, size, fs.closeSync)
    fs.rmSync(midState, { recursive: true, force: true })
    began = Date.now()
    const mid2 = await startNode(dir, mirrorConfig(false))
    started.push(mid2)
    const plain = await waitInSync(mid2, began)

    // Online verify of the now identical legs, digests computed on the leaf nodes.
    const res = await fetch(`${mid2.http}/arrays/m/verify`, { method: 'POST', body: JSON.stringify({ wait: true }), signal: AbortSignal.timeout(600000) })
    const answer = await res.json() as { verify?: { state: string, comparedBytes: number, seconds: number, mismatches: number }, error?: string }
    if (answer.verify === undefined) throw new Error(`verify failed: ${answer.error ?? res.status}`)
    const v = answer.verify

    console.log(`\n== ${sc.title}\n`)
    console.log('job                                   seconds   MiB copied   MiB compared   MiB/s of array')
    const row = (name: string, r: { secs: number, copied: number, compared: number }): void => {
      console.log(`${name.padEnd(38)}${fmt(r.secs).padStart(7)}${fmt(r.copied / MiB).padStart(13)}${fmt(r.compared / MiB).padStart(15)}${fmt(size / MiB / r.secs).padStart(17)}`)
    }
    row('sync of a leg, 1% differs: checksum', withSums)
    row('sync of a leg, 1% differs: full copy', plain)
    row('online verify (legs identical)', { secs: v.seconds, copied: 0, compared: v.comparedBytes })
    console.log('')
    console.log(`checksum resync took ${fmt(withSums.secs / plain.secs * 100)}% of the full copy's time and moved ${fmt(withSums.copied / Math.max(1, plain.copied) * 100)}% of its bytes`)
    console.log(`online verify: ${fmt(v.comparedBytes / MiB / v.seconds)} MiB/s of mirror verified, ${v.mismatches} mismatches`)
    console.log('(the sync rows include the mirror node\'s start-up, under a second)')
  } finally {
    await Promise.all(started.map(n => n.proc.exitCode === null && n.proc.signalCode === null ? stopNode(n) : undefined))
  }
}

async function main (): Promise<void> {
  const { values } = parseArgs({ options: { size: { type: 'string' } } })
  const size = Number(values.size ?? 256) * MiB
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dst-verify-bench-'))
  try {
    const fileA = path.join(dir, 'a.img')
    const fileB = path.join(dir, 'b.img')
    const changed = makeLegFiles(fileA, fileB, size)
    const regions = Math.ceil(size / REGION)
    console.log(`verify and resync: a ${size / MiB} MiB mirror of two remote leaf nodes; ${changed} of ${regions} regions differ (${fmt(100 * changed / regions)}%); ${os.cpus().length} CPUs`)
    await scenario({ title: 'loopback (every process on this machine\'s CPUs; digests compete with copies for them)', hosts: ['127.0.0.1', '127.0.0.1'], netns: [undefined, undefined] }, dir, size, fileA, fileB)
    if (linksAvailable()) {
      const fb = fs.openSync(fileB, 'r+')
      differ(fb, size, fs.closeSync)
      const links = makeLinks('1gbit')
      try {
        await scenario({ title: 'each leaf behind its own 1 Gbit link (network namespaces, tc)', hosts: links.hosts, netns: ['dstbench1', 'dstbench2'] }, dir, size, fileA, fileB)
      } finally {
        links.cleanup()
      }
    } else {
      console.log('\n(links scenario skipped: needs root, ip and tc)')
    }
  } finally {
    for (const p of procs) { try { p.kill('SIGKILL') } catch {} }
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

main().catch(err => {
  console.error(err)
  for (const p of procs) { try { p.kill('SIGKILL') } catch {} }
  process.exit(1)
})
