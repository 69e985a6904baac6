// The TLS part of `npm run bench`: what TLS costs, side by side in one run. One dst node with `tls` serves a 256 MiB
// file over NBD (the same export, plain and after STARTTLS) and natively (its uWebSockets.js SSL listener, and the
// node:tls listener for client certificates); a second node without TLS serves another copy natively. Then:
// - the fio jobs of the NBD bench (nbd engine): nbd:// against nbds://?tls-certificates=DIR;
// - a 1 MiB native hop from this process (dst's own client): dst:// against dsts:// on the main listener and on the
//   client-certificate listener, reads at queue depth 8 and writes at queue depth 4.
// Rounds alternate the targets (BENCH_ROUNDS, default 3; BENCH_SECONDS per run, default 5); the table prints the
// median of each and the median of the ratios taken within a round. Certificates are made with openssl.

import { execFile, type ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { randomFillSync } from 'node:crypto'
import { freePort } from './ports'
import { spawnDst } from './spawn-dst'
import { TestCa, x509Dir } from './certs'
import { Connection, type ClientTls } from '../../export/native/client'
import { Op } from '../../export/native/codec'
import { parseDstUrl, type DstUrl } from '../../node/core/url'

const MiB = 1024 * 1024
const procs: ChildProcess[] = []

interface Job { name: string, args: string[] }
const JOBS: Job[] = [
  { name: '4 KiB randread qd 16', args: ['--rw=randread', '--bs=4k', '--iodepth=16'] },
  { name: '4 KiB randwrite qd 16', args: ['--rw=randwrite', '--bs=4k', '--iodepth=16'] },
  { name: '1 MiB read qd 4', args: ['--rw=read', '--bs=1m', '--iodepth=4'] },
  { name: '1 MiB write qd 4', args: ['--rw=write', '--bs=1m', '--iodepth=4'] },
]

/**
 * fio's nbd engine refuses `tls-certificates=DIR` in a uri (libnbd's local file access is off there), so fio finds
 * its credentials where libnbd looks without it: $HOME/.pki/libnbd (HOME set for fio only).
 */
let fioHome = ''

function fio (uri: string, job: Job, seconds: number): Promise<number> {
  return new Promise((resolve, reject) => {
    execFile('fio', ['--name=bench', '--ioengine=nbd', `--uri=${uri}`, '--time_based', `--runtime=${seconds}`, '--size=256m',
      '--output-format=json', ...job.args], { maxBuffer: 64 * MiB, env: { ...process.env, HOME: fioHome, PATH: `/usr/bin:${process.env.PATH ?? ''}` } }, (err, stdout, stderr) => {
      if (err !== null) { reject(new Error(`fio ${job.name} on ${uri}: ${stderr || err.message}`)); return }
      const j = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: Array<Record<'read' | 'write', { iops: number }>> }
      resolve(job.args.some(a => /rw=(rand)?write/.test(a)) ? j.jobs[0].write.iops : j.jobs[0].read.iops)
    })
  })
}

/** MiB/s of 1 MiB requests of `op` kept `depth` deep for `seconds` on one native connection. */
async function hop (url: string, tls: ClientTls | undefined, op: number, depth: number, seconds: number): Promise<number> {
  const conn = await Connection.connect(parseDstUrl(url) as DstUrl, { ...(tls !== undefined ? { tls } : {}), queueDepth: depth, pingInterval: 0, requestTimeout: 0 })
  try {
    const size = 256 * MiB
    const end = performance.now() + seconds * 1000
    let done = 0
    const lane = async (i: number): Promise<void> => {
      const buf = Buffer.alloc(MiB, i)
      for (let at = i * MiB; performance.now() < end; at = (at + depth * MiB) % size) {
        await conn.request(op, at, MiB, op === Op.READ ? buf : null, op === Op.WRITE ? buf : null)
        done++
      }
    }
    const began = performance.now()
    await Promise.all(Array.from({ length: depth }, (_, i) => lane(i)))
    return done / ((performance.now() - began) / 1000)
  } finally {
    conn.close()
  }
}

function median (xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length === 0 ? 0 : s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2
}

async function main (): Promise<void> {
  const seconds = Number(process.env.BENCH_SECONDS ?? 5)
  const rounds = Number(process.env.BENCH_ROUNDS ?? 3)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dst-tls-bench-'))
  try {
    const data = randomFillSync(Buffer.alloc(256 * MiB))
    for (const name of ['t.img', 'p.img']) fs.writeFileSync(path.join(dir, name), data)
    const ca = new TestCa(path.join(dir, 'pki'))
    const n1 = ca.issue('n1', 'n1')
    const n2 = ca.issue('n2', 'n2')
    fioHome = path.join(dir, 'home')
    x509Dir(path.join(fioHome, '.pki', 'libnbd'), ca.cert, n2)
    const certPort = await freePort()
    const write = (name: string, config: object): string => { const f = path.join(dir, `${name}.json`); fs.writeFileSync(f, JSON.stringify(config)); return f }
    const secure = await spawnDst(['node', '--config', write('tls', {
      name: 'tls', listen: '127.0.0.1:0', nbd: '127.0.0.1:0', dataDir: './state-tls',
      tls: { cert: n1.cert, key: n1.key, ca: ca.cert, clientCertListen: `127.0.0.1:${certPort}` },
      devices: { disk: { type: 'file', path: './t.img' }, certs: { type: 'memory', size: '256MiB' } },
      exports: [{ device: 'disk' }, { device: 'certs', clientCert: 'require' }],
    })], { procs })
    const plain = await spawnDst(['node', '--config', write('plain', {
      name: 'plain', listen: '127.0.0.1:0', dataDir: './state-plain', devices: { disk: { type: 'file', path: './p.img' } }, exports: [{ device: 'disk' }],
    })], { procs })
    const nbdPort = (/nbd {5}nbds:\/\/127\.0\.0\.1:(\d+)\//.exec(secure.out()) as RegExpExecArray)[1]
    const dsts = (/export {2}(dsts:\/\/\S+\/disk)\s/.exec(secure.out()) as RegExpExecArray)[1]
    const dst = (/export {2}(dst:\/\/\S+\/disk)\s/.exec(plain.out()) as RegExpExecArray)[1]
    const tls: ClientTls = { ca: fs.readFileSync(ca.cert), cert: fs.readFileSync(n2.cert), key: fs.readFileSync(n2.key) }

    console.log(`\nTLS against plain (${rounds} rounds of ${seconds} s, medians; ratio = TLS / plain within a round)`)
    console.log('fio, nbd engine:             plain nbd://    nbds:// (STARTTLS)   ratio')
    for (const job of JOBS) {
      const p: number[] = []
      const s: number[] = []
      for (let r = 0; r < rounds; r++) {
        p.push(await fio(`nbd://127.0.0.1:${nbdPort}/disk`, job, seconds))
        s.push(await fio(`nbds://127.0.0.1:${nbdPort}/disk`, job, seconds))
      }
      const unit = job.name.startsWith('1 MiB') ? (x: number): string => `${x.toFixed(0)} MiB/s` : (x: number): string => `${(x / 1000).toFixed(1)}k IOPS`
      console.log(`${job.name.padEnd(28)}${unit(median(p)).padEnd(16)}${unit(median(s)).padEnd(21)}${median(p.map((x, i) => s[i] / x)).toFixed(2)}x`)
    }
    console.log('native 1 MiB hop (MiB/s):    plain dst://    dsts:// listener     ratio   dsts:// client-cert listener   ratio')
    for (const [name, op, depth] of [['read qd 8', Op.READ, 8], ['write qd 4', Op.WRITE, 4]] as Array<[string, number, number]>) {
      const p: number[] = []
      const s: number[] = []
      const c: number[] = []
      for (let r = 0; r < rounds; r++) {
        p.push(await hop(dst, undefined, op, depth, seconds))
        s.push(await hop(dsts, tls, op, depth, seconds))
        c.push(await hop(`dsts://127.0.0.1:${certPort}/certs`, tls, op, depth, seconds))
      }
      console.log(`${name.padEnd(28)}${median(p).toFixed(0).padEnd(16)}${median(s).toFixed(0).padEnd(21)}${(median(p.map((x, i) => s[i] / x)).toFixed(2) + 'x').padEnd(8)}${median(c).toFixed(0).padEnd(31)}${median(p.map((x, i) => c[i] / x)).toFixed(2)}x`)
    }
  } finally {
    for (const p of procs) p.kill('SIGKILL')
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

main().catch(err => {
  for (const p of procs) p.kill('SIGKILL')
  console.error(`tls bench: ${(err as Error).message}`)
  process.exit(1)
})
