// The sparse half of `npm run bench` (issue 15, point 8), dst side by side with nbdkit in one run:
// (a) a 4 GiB image holding 64 MiB of data (16 runs of 4 MiB) copied out with `qemu-img convert -O raw` and with
//     `nbdcopy`, from `nbdkit file` and from dst's NBD export of the same file: wall time, and dst's ratio to nbdkit
//     (time; target <= 1.2x);
// (b) fio jobs (nbd engine) against `nbdkit file`, dst's export of the file, nbdkit's own one-hop proxy (`nbdkit nbd
//     uri=…` in front of nbdkit file) and dst through one dst:// hop (a node whose remote device is a dst export of the
//     file): IOPS and the ratios direct/nbdkit file and hop/nbdkit hop (target >= 1.0x).
// Each measurement runs BENCH_ROUNDS times (default 3), the targets back to back within a round; medians are shown,
// ratios taken within each round. Knobs: BENCH_SECONDS (fio, default 5), BENCH_ROUNDS, BENCH_SPARSE_PARTS ("ab").

import { spawn, execFile, type ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { randomFillSync } from 'node:crypto'
import { freePort } from './ports'
import { spawnDst } from './spawn-dst'

const MiB = 1024 * 1024
const GiB = 1024 * MiB
const procs: ChildProcess[] = []
const env = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` }

function exec (cmd: string, args: string[], timeout = 300000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { env, timeout, maxBuffer: 64 * MiB }, (err, stdout, stderr) => {
      if (err !== null) reject(new Error(`${cmd} ${args.join(' ')}: ${stderr || err.message}`))
      else resolve(stdout)
    })
  })
}

async function timed (cmd: string, args: string[]): Promise<number> {
  const t0 = process.hrtime.bigint()
  await exec(cmd, args)
  return Number(process.hrtime.bigint() - t0) / 1e9
}

function median (xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length === 0 ? 0 : s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2
}

/** Starts nbdkit in the foreground on a loopback port; resolves once it accepts connections. */
async function nbdkit (args: string[]): Promise<string> {
  const port = await freePort()
  const kit = spawn('nbdkit', ['-f', '-p', String(port), '-i', '127.0.0.1', ...args], { stdio: 'ignore' })
  procs.push(kit)
  const uri = `nbd://127.0.0.1:${port}`
  for (let i = 0; i < 100; i++) {
    try { await exec('nbdinfo', ['--size', uri], 5000); return uri } catch { await new Promise(resolve => setTimeout(resolve, 100)) }
  }
  throw new Error(`nbdkit ${args.join(' ')} did not start`)
}

function nbdUri (out: string): string {
  const m = /nbd {5}(nbd:\/\/\S+)/.exec(out)
  if (m === null) throw new Error(`no nbd address in:\n${out}`)
  return m[1]
}

function fio (uri: string, args: string[], seconds: number): Promise<number> {
  return exec('fio', ['--name=bench', '--ioengine=nbd', `--uri=${uri}`, '--time_based', `--runtime=${seconds}`, '--size=256m', '--output-format=json', ...args])
    .then(stdout => {
      const j = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: Array<Record<'read' | 'write', { iops: number }>> }
      return args.some(a => /rw=(rand)?write/.test(a)) ? j.jobs[0].write.iops : j.jobs[0].read.iops
    })
}

const pad = (s: string, n: number): string => s.padEnd(n)

async function sparseCopies (dir: string, rounds: number): Promise<void> {
  const image = path.join(dir, 'sparse.img')
  const fd = fs.openSync(image, 'w')
  fs.ftruncateSync(fd, 4 * GiB)
  const chunk = randomFillSync(Buffer.alloc(4 * MiB))
  for (let i = 0; i < 16; i++) fs.writeSync(fd, chunk, 0, chunk.length, i * (4 * GiB / 16))
  fs.fsyncSync(fd)
  fs.closeSync(fd)
  const kit = await nbdkit(['-r', 'file', `file=${image}`])
  const dst = await spawnDst(['export', image, '--listen', '127.0.0.1:0', '--nbd', '127.0.0.1:0', '--name', 'disk', '--read-only'], { procs })
  const targets = [{ name: 'nbdkit file', uri: kit }, { name: 'dst file', uri: nbdUri(dst.out()) }]
  const out = path.join(dir, 'out.raw')
  const tools: Array<{ name: string, run: (uri: string) => Promise<number> }> = [
    { name: 'qemu-img convert -O raw', run: uri => timed('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, out]) },
    { name: 'nbdcopy', run: uri => { fs.rmSync(out, { force: true }); return timed('nbdcopy', [uri, out]) } },
  ]
  console.log(`\n== Sparse copy: a 4 GiB image with 64 MiB of data (16 runs of 4 MiB), copied out to a local file; ${rounds} rounds, medians\n`)
  console.log(`${pad('tool', 26)}${pad('nbdkit file s', 15)}${pad('dst file s', 12)}${pad('dst / nbdkit', 14)}spread`)
  for (const tool of tools) {
    const times = new Map<string, number[]>(targets.map(tg => [tg.name, []]))
    const ratios: number[] = []
    for (let r = 0; r < rounds; r++) {
      const [a, b] = [await tool.run(targets[0].uri), await tool.run(targets[1].uri)]
      times.get(targets[0].name)?.push(a)
      times.get(targets[1].name)?.push(b)
      ratios.push(b / a)
    }
    const spread = `${Math.min(...ratios).toFixed(2)}-${Math.max(...ratios).toFixed(2)}x`
    console.log(`${pad(tool.name, 26)}${pad(median(times.get(targets[0].name) as number[]).toFixed(3), 15)}${pad(median(times.get(targets[1].name) as number[]).toFixed(3), 12)}${pad(`${median(ratios).toFixed(2)}x`, 14)}${spread}`)
  }
  fs.rmSync(out, { force: true })
}

async function hops (dir: string, rounds: number, seconds: number): Promise<void> {
  const data = randomFillSync(Buffer.alloc(256 * MiB))
  for (const name of ['k.img', 'd.img', 'h.img']) {
    const fd = fs.openSync(path.join(dir, name), 'w')
    fs.writeSync(fd, data)
    fs.fsyncSync(fd)
    fs.closeSync(fd)
  }
  const kitFile = await nbdkit(['file', `file=${path.join(dir, 'k.img')}`])
  const kitHop = await nbdkit(['nbd', `uri=${kitFile}`])
  const direct = await spawnDst(['export', path.join(dir, 'd.img'), '--listen', '127.0.0.1:0', '--nbd', '127.0.0.1:0', '--name', 'disk'], { procs })
  const leaf = await spawnDst(['export', path.join(dir, 'h.img'), '--listen', '127.0.0.1:0', '--name', 'disk'], { procs })
  const leafUrl = (/export {2}(dst:\/\/\S+)/.exec(leaf.out()) as RegExpExecArray)[1]
  const config = path.join(dir, 'hop.json')
  fs.writeFileSync(config, JSON.stringify({ name: 'hop', listen: '127.0.0.1:0', nbd: '127.0.0.1:0', dataDir: path.join(dir, 'state-hop'), devices: { far: { type: 'remote', url: leafUrl } }, exports: [{ device: 'far' }] }))
  const hop = await spawnDst(['node', '--config', config], { procs })
  const targets = [
    { name: 'nbdkit file', uri: kitFile },
    { name: 'dst file', uri: nbdUri(direct.out()) },
    { name: 'nbdkit hop', uri: kitHop },
    { name: 'dst hop', uri: nbdUri(hop.out()) },
  ]
  const jobs = [
    { name: '4k randread qd16', args: ['--rw=randread', '--bs=4k', '--iodepth=16'] },
    { name: '4k randwrite qd16', args: ['--rw=randwrite', '--bs=4k', '--iodepth=16'] },
    { name: '1M read qd4', args: ['--rw=read', '--bs=1m', '--iodepth=4'] },
    { name: '1M write qd4', args: ['--rw=write', '--bs=1m', '--iodepth=4'] },
  ]
  console.log(`\n== fio ${seconds} s per run (nbd engine, loopback, ${os.cpus().length} cores, 256 MiB files in the page cache); ${rounds} rounds, medians; ratios within a round\n`)
  console.log(`${pad('job', 20)}${targets.map(tg => pad(`${tg.name} IOPS`, 18)).join('')}${pad('direct/nbdkit', 15)}${pad('hop/nbdkit hop', 16)}spread (direct; hop)`)
  for (const job of jobs) {
    const iops = targets.map(() => [] as number[])
    const direct: number[] = []
    const hop: number[] = []
    for (let r = 0; r < rounds; r++) {
      const got: number[] = []
      for (const tg of targets) got.push(await fio(tg.uri, job.args, seconds))
      got.forEach((v, i) => iops[i].push(v))
      direct.push(got[1] / got[0])
      hop.push(got[3] / got[2])
    }
    const spread = (xs: number[]): string => `${Math.min(...xs).toFixed(2)}-${Math.max(...xs).toFixed(2)}x`
    console.log(`${pad(job.name, 20)}${iops.map(xs => pad(median(xs).toFixed(0), 18)).join('')}${pad(`${median(direct).toFixed(2)}x`, 15)}${pad(`${median(hop).toFixed(2)}x`, 16)}${spread(direct)}; ${spread(hop)}`)
  }
}

async function main (): Promise<void> {
  const rounds = Math.max(1, Number(process.env.BENCH_ROUNDS ?? 3))
  const seconds = Number(process.env.BENCH_SECONDS ?? 5)
  const parts = process.env.BENCH_SPARSE_PARTS ?? 'ab'
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dst-sparse-bench-'))
  try {
    if (parts.includes('a')) await sparseCopies(dir, rounds)
    if (parts.includes('b')) await hops(dir, rounds, seconds)
  } finally {
    for (const p of procs) p.kill('SIGKILL')
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

main().catch(err => {
  for (const p of procs) p.kill('SIGKILL')
  console.error(`sparse bench: ${(err as Error).message}`)
  process.exit(1)
})
