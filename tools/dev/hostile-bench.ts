// Client isolation, measured (the last part of `npm run bench`): a dst node exporting a 256 MiB file over NBD and
// dst://, and a normal client doing 4 KiB random reads at queue depth 16 (fio's nbd engine; our own small NBD client
// when fio is not installed), first alone, then with hostile clients attached that never read a byte: an NBD one that
// sent 200 1 MiB READs and keeps sending small requests, and a native one (raw WebSocket) that sent 200 1 MiB READs.
// Prints the normal client's IOPS and p99 in both, their ratio, and the node's peak RSS in both. Rounds alternate
// alone / hostile, so that ratios are taken side by side. Bounded: BENCH_SECONDS per run (default 5), BENCH_ROUNDS
// rounds (default 2); every process is killed by its pid at the end.
// Run: node -r ts-node/register/transpile-only tools/dev/hostile-bench.ts

import { execFile, execFileSync, type ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'
import { randomFillSync } from 'node:crypto'
import WebSocket from 'ws'
import { spawnDst } from './spawn-dst'
import { HANDSHAKE_SIZE, Op, REQUEST_HEADER_SIZE, writeRequestHeader } from '../../export/native/codec'

const MiB = 1024 * 1024
const SIZE = 256 * MiB
const procs: ChildProcess[] = []

interface Run { iops: number, p99: number }

function hasFio (): boolean {
  try { execFileSync('fio', ['--version'], { stdio: 'ignore' }); return true } catch { return false }
}

function fio (uri: string, seconds: number): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile('fio', ['--name=normal', '--ioengine=nbd', `--uri=${uri}`, '--time_based', `--runtime=${seconds}`, '--size=256m',
      '--rw=randread', '--bs=4k', '--iodepth=16', '--output-format=json'], { maxBuffer: 64 * MiB }, (err, stdout, stderr) => {
      if (err !== null) { reject(new Error(`fio on ${uri}: ${stderr || err.message}`)); return }
      const j = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: Array<{ read: { iops: number, clat_ns: { percentile?: Record<string, number> } } }> }
      resolve({ iops: j.jobs[0].read.iops, p99: (j.jobs[0].read.clat_ns.percentile?.['99.000000'] ?? 0) / 1e6 })
    })
  })
}

/** NBD request header (handles below 2^32). */
function nbdRequest (type: number, handle: number, offset: number, length: number): Buffer {
  const h = Buffer.alloc(28)
  h.writeUInt32BE(0x25609513, 0)
  h.writeUInt16BE(type, 6)
  h.writeUInt32BE(handle, 12)
  h.writeUInt32BE(Math.floor(offset / 2 ** 32), 16)
  h.writeUInt32BE(offset >>> 0, 20)
  h.writeUInt32BE(length, 24)
  return h
}

function nbdHandshake (name: string): Buffer {
  const opt = Buffer.alloc(16 + name.length)
  Buffer.from('IHAVEOPT').copy(opt, 0)
  opt.writeUInt32BE(1, 8) // NBD_OPT_EXPORT_NAME
  opt.writeUInt32BE(name.length, 12)
  opt.write(name, 16)
  return Buffer.concat([Buffer.from([0, 0, 0, 3]), opt])
}

/** The fallback normal client: 4 KiB random reads, 16 in flight, for `seconds`. */
function ownClient (port: number, seconds: number): Promise<Run> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1')
    let buf = Buffer.alloc(0)
    let handshaken = false
    let done = 0
    const started = new Map<number, bigint>()
    const latencies: number[] = []
    let next = 1
    const end = Date.now() + seconds * 1000
    const issue = (): void => {
      const h = next++
      started.set(h, process.hrtime.bigint())
      s.write(nbdRequest(0, h, Math.floor(Math.random() * (SIZE / 4096)) * 4096, 4096))
    }
    s.on('error', reject)
    s.on('data', c => {
      buf = buf.length === 0 ? c : Buffer.concat([buf, c])
      if (!handshaken) {
        if (buf.length < 28) return
        buf = buf.subarray(28)
        handshaken = true
        for (let i = 0; i < 16; i++) issue()
      }
      while (buf.length >= 16 + 4096) {
        const h = buf.readUInt32BE(12)
        latencies.push(Number(process.hrtime.bigint() - (started.get(h) ?? 0n)) / 1e6)
        started.delete(h)
        buf = buf.subarray(16 + 4096)
        done++
        if (Date.now() < end) issue()
        else if (started.size === 0) {
          s.destroy()
          latencies.sort((a, b) => a - b)
          resolve({ iops: done / seconds, p99: latencies[Math.floor(latencies.length * 0.99)] ?? 0 })
          return
        }
      }
    })
    s.write(nbdHandshake('disk'))
  })
}

/** Hostile clients that never read: returns a function that disconnects them. */
async function attachHostiles (nbdPort: number, port: number): Promise<() => void> {
  // NBD: 200 1 MiB READs, then small requests (4 KiB READs and FLUSHes) for as long as the node takes them.
  const nbd = net.connect(nbdPort, '127.0.0.1')
  nbd.pause()
  nbd.on('error', () => {})
  nbd.write(Buffer.concat([nbdHandshake('disk'), ...Array.from({ length: 200 }, (_, i) => nbdRequest(0, i + 1, (i % 256) * MiB, MiB))]))
  const small = Buffer.concat(Array.from({ length: 2000 }, (_, i) => nbdRequest(i % 2 === 0 ? 0 : 3, 1000 + i, i % 2 === 0 ? (i % 1000) * 4096 : 0, i % 2 === 0 ? 4096 : 0)))
  let flooding = true
  const flood = (): void => { while (flooding && nbd.write(small)) { /* until the node stops reading */ } }
  nbd.on('drain', flood)
  flood()
  // Native: a WebSocket whose socket is paused once the handshake came, then 200 1 MiB READs.
  const ws = new WebSocket(`ws://127.0.0.1:${port}/disk`, { perMessageDeflate: false })
  ws.on('error', () => {})
  await new Promise<void>((resolve, reject) => {
    ws.once('message', (data: Buffer) => {
      if (data.length !== HANDSHAKE_SIZE) { reject(new Error('no native handshake')); return }
      ;(ws as unknown as { _socket: net.Socket })._socket.pause()
      const frames = Buffer.alloc(200 * REQUEST_HEADER_SIZE)
      for (let i = 0; i < 200; i++) writeRequestHeader(frames, i * REQUEST_HEADER_SIZE, Op.READ, 0, i + 1, 0, (i % 256) * MiB, MiB)
      ws.send(frames)
      resolve()
    })
    ws.once('error', reject)
  })
  await new Promise(resolve => setTimeout(resolve, 1000))
  return () => { flooding = false; nbd.destroy(); ws.terminate() }
}

function rss (pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m === null ? 0 : Number(m[1]) * 1024
  } catch { return 0 }
}

/** Runs `fn` while sampling the node's RSS every 250 ms; returns its result and the peak. */
async function withRss<T> (pid: number, fn: () => Promise<T>): Promise<{ result: T, peak: number }> {
  let peak = rss(pid)
  const timer = setInterval(() => { peak = Math.max(peak, rss(pid)) }, 250)
  try {
    const result = await fn()
    return { result, peak: Math.max(peak, rss(pid)) }
  } finally { clearInterval(timer) }
}

async function waitPoolFree (http: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const s = await (await fetch(`${http}/status`)).json() as { pool: { free: number, count: number } }
    if (s.pool.free === s.pool.count) return
    await new Promise(resolve => setTimeout(resolve, 100))
  }
}

async function main (): Promise<void> {
  const seconds = Number(process.env.BENCH_SECONDS ?? 5)
  const rounds = Number(process.env.BENCH_ROUNDS ?? 2)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dst-hostile-bench-'))
  try {
    const file = path.join(dir, 'disk.img')
    fs.writeFileSync(file, randomFillSync(Buffer.alloc(SIZE)))
    const node = await spawnDst(['export', file, '--listen', '127.0.0.1:0', '--nbd', '127.0.0.1:0', '--name', 'disk'], { procs })
    const pid = node.proc.pid ?? 0
    const http = /status {2}(http:\/\/\S+)\/status/.exec(node.out())?.[1] ?? ''
    const nbdUri = /nbd {5}(nbd:\/\/\S+)/.exec(node.out())?.[1] ?? ''
    const nbdPort = Number(/:(\d+)\//.exec(nbdUri)?.[1])
    const port = Number(/:(\d+)$/.exec(http)?.[1])
    const client = hasFio() ? (): Promise<Run> => fio(nbdUri, seconds) : (): Promise<Run> => ownClient(nbdPort, seconds)
    console.log(`\n== Isolation: 4 KiB random reads, qd 16, ${seconds} s per run (${hasFio() ? 'fio nbd engine' : 'built-in NBD client'}), alone and beside never-reading NBD and native clients; ${rounds} rounds, ${os.cpus().length} cores\n`)
    console.log('round  alone IOPS  p99 ms  RSS MiB   hostile IOPS  p99 ms  RSS MiB   IOPS ratio')
    for (let r = 1; r <= rounds; r++) {
      const alone = await withRss(pid, client)
      const detach = await attachHostiles(nbdPort, port)
      let hostile: { result: Run, peak: number }
      try {
        hostile = await withRss(pid, client)
      } finally { detach() }
      await waitPoolFree(http)
      const f = (x: number, d = 0): string => x.toFixed(d)
      console.log(`${f(r).padEnd(7)}${f(alone.result.iops).padEnd(12)}${f(alone.result.p99, 2).padEnd(8)}${f(alone.peak / MiB).padEnd(10)}` +
        `${f(hostile.result.iops).padEnd(14)}${f(hostile.result.p99, 2).padEnd(8)}${f(hostile.peak / MiB).padEnd(10)}${(hostile.result.iops / alone.result.iops).toFixed(2)}x`)
    }
  } finally {
    for (const p of procs) { try { p.kill('SIGKILL') } catch {} }
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

main().catch(err => { console.error(err); for (const p of procs) { try { p.kill('SIGKILL') } catch {} } process.exit(1) })
