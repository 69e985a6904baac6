// `npm run soak -- --minutes N`: random verified I/O against a small tree on loopback while nodes are killed and
// restarted and links are cut, stalled and delayed at random; then every block is checked. It prints what it did and
// what it found, and exits 1 if any block read back wrong. Not part of `npm test`. Everything it starts is killed by
// pid when it ends, and every loop is bounded by the time asked for.
//
// The tree:   client -> node "top" exports `all` = linear( mirror(far1, far2), far3 )
//             far1, far2, far3 are remote devices reaching leaves l1, l2, l3 through fault proxies p1, p2, p3.

import type { ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { randomBytes } from 'node:crypto'
import { parseArgs } from 'node:util'
import { FaultProxy } from './fault-proxy'
import { freePort } from './ports'
import { spawnDst } from './spawn-dst'
import { RemoteDevice } from '../../export/native/remote-device'

const MiB = 1024 * 1024
const LEAF = 16 * MiB

interface Proc { name: string, args: string[], port: number, proc: ChildProcess | null }

function log (message: string): void {
  process.stdout.write(`[soak ${new Date().toISOString().slice(11, 19)}] ${message}\n`)
}

function sleep (ms: number): Promise<void> { return new Promise(resolve => setTimeout(resolve, ms)) }
function pick<T> (xs: T[]): T { return xs[Math.floor(Math.random() * xs.length)] }
function between (lo: number, hi: number): number { return lo + Math.floor(Math.random() * (hi - lo + 1)) }

/** dst processes that exited without being killed by the soak (a crash is a finding, not noise). */
const crashes: string[] = []

async function launch (p: Proc): Promise<void> {
  const spawned: ChildProcess[] = []
  const started = spawnDst(p.args, { what: p.name, procs: spawned })
  // Known before it is ready, so a start that fails or hangs can still be killed.
  const proc = spawned[0]
  p.proc = proc
  const { out } = await started
  proc.once('exit', (code, signal) => {
    if (p.proc !== proc) return // killed by the soak
    p.proc = null
    const report = `${p.name} exited on its own (code ${code}, signal ${signal}); its last output:\n${out().slice(-4000)}`
    crashes.push(report)
    log(report)
  })
}

function kill (p: Proc): Promise<void> {
  const proc = p.proc
  p.proc = null
  if (proc === null || proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve()
  return new Promise(resolve => { proc.once('exit', () => resolve()); proc.kill('SIGKILL') })
}

async function main (): Promise<void> {
  const { values } = parseArgs({ args: process.argv.slice(2), options: { minutes: { type: 'string' }, seed: { type: 'string' } } })
  const minutes = Number(values.minutes ?? 2)
  if (!(minutes > 0 && minutes <= 24 * 60)) { process.stderr.write('soak: --minutes N (0 < N <= 1440)\n'); process.exit(2) }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dst-soak-'))
  const procs: Proc[] = []
  const proxies: FaultProxy[] = []
  let client: RemoteDevice | null = null
  const did: Record<string, number> = {}
  const count = (what: string): void => { did[what] = (did[what] ?? 0) + 1 }
  try {
    // Leaves, each behind a fault proxy.
    const leaves: Proc[] = []
    for (const n of [1, 2, 3]) {
      const port = await freePort()
      const leaf: Proc = { name: `l${n}`, port, proc: null, args: ['export', path.join(dir, `l${n}.img`), '--listen', `127.0.0.1:${port}`, '--size', String(LEAF), '--name', 'disk'] }
      await launch(leaf)
      leaves.push(leaf)
      procs.push(leaf)
      proxies.push(await FaultProxy.start({ target: { host: '127.0.0.1', port } }))
    }
    const topPort = await freePort()
    const config = {
      name: 'top', listen: `127.0.0.1:${topPort}`, dataDir: path.join(dir, 'state-top'), pingInterval: 300, reconnectTimeout: 3000, requestTimeout: 3000,
      devices: {
        far1: { type: 'remote', url: `dst://127.0.0.1:${proxies[0].port}/disk` },
        far2: { type: 'remote', url: `dst://127.0.0.1:${proxies[1].port}/disk` },
        far3: { type: 'remote', url: `dst://127.0.0.1:${proxies[2].port}/disk` },
        mir: { type: 'mirror', members: ['far1', 'far2'], region: '64KiB', syncFrom: 'far1' },
        all: { type: 'linear', members: ['mir', 'far3'] },
      },
      exports: [{ device: 'all' }],
    }
    fs.writeFileSync(path.join(dir, 'top.json'), JSON.stringify(config))
    const top: Proc = { name: 'top', port: topPort, proc: null, args: ['node', '--config', path.join(dir, 'top.json')] }
    await launch(top)
    procs.push(top)
    client = await RemoteDevice.open({ host: '127.0.0.1', port: topPort, export: 'all' }, { openTimeout: 30000, reconnectTimeout: 60000, requestTimeout: 10000 })
    const size = client.size
    log(`tree up in ${dir}: ${size / MiB} MiB = linear(mirror(l1, l2), l3); running ${minutes} min`)

    // The model: what every byte should hold. A write that failed leaves its range unknown until written again.
    const model = Buffer.alloc(size)
    const unknown = new Uint8Array(Math.ceil(size / 4096))
    const busy: Array<[number, number]> = []
    const stats = { writes: 0, reads: 0, bytes: 0, errors: 0, mismatches: 0 }
    const end = Date.now() + minutes * 60000
    const free = (a: number, b: number): boolean => busy.every(([x, y]) => b <= x || y <= a)
    // Failed requests are expected while no leg of the mirror is in sync; at most 5 are logged a second, the rest
    // counted, and a worker whose request failed waits a moment before the next.
    let window = 0
    let inWindow = 0
    const logFailure = (message: string): void => {
      const now = Math.floor(Date.now() / 1000)
      if (now !== window) {
        if (inWindow > 5) log(`... and ${inWindow - 5} more failed requests in that second`)
        window = now
        inWindow = 0
      }
      if (++inWindow <= 5) log(message)
    }

    const worker = async (): Promise<void> => {
      const dev = client as RemoteDevice
      while (Date.now() < end) {
        const length = between(1, 64) * 4096
        const at = between(0, (size - length) / 4096) * 4096
        if (!free(at, at + length)) { await sleep(1); continue }
        const span: [number, number] = [at, at + length]
        busy.push(span)
        try {
          if (Math.random() < 0.5) {
            const data = randomBytes(length)
            try {
              await dev.write(at, data)
              data.copy(model, at)
              unknown.fill(0, at / 4096, (at + length) / 4096)
              stats.writes++
            } catch (err) {
              stats.errors++
              unknown.fill(1, at / 4096, (at + length) / 4096)
              logFailure(`write ${at}+${length} failed: ${(err as Error).message}`)
              await sleep(50)
            }
          } else {
            const got = Buffer.alloc(length)
            try {
              await dev.read(at, length, got)
              stats.reads++
              for (let b = at; b < at + length; b += 4096) {
                if (unknown[b / 4096] === 0 && !got.subarray(b - at, b - at + 4096).equals(model.subarray(b, b + 4096))) {
                  stats.mismatches++
                  log(`MISMATCH in block ${b / 4096} (read ${at}+${length})`)
                }
              }
            } catch (err) {
              stats.errors++
              logFailure(`read ${at}+${length} failed: ${(err as Error).message}`)
              await sleep(50)
            }
          }
          stats.bytes += length
        } finally {
          busy.splice(busy.indexOf(span), 1)
        }
      }
    }

    const chaos = async (): Promise<void> => {
      while (Date.now() < end - 5000) {
        await sleep(between(1500, 4000))
        if (Date.now() >= end - 5000) break
        const action = pick(['kill-leg', 'kill-leg', 'kill-l3', 'cut', 'stall', 'delay', 'kill-top'])
        switch (action) {
          case 'kill-leg': {
            // A mirror leg may stay away longer than reconnectTimeout: the mirror goes on and resyncs it later.
            const leaf = pick([leaves[0], leaves[1]])
            const away = between(300, 6000)
            log(`kill ${leaf.name} for ${away} ms`)
            await kill(leaf)
            await sleep(away)
            await launch(leaf)
            count(action)
            break
          }
          case 'kill-l3': {
            // l3 is not mirrored: it comes back within reconnectTimeout so no I/O fails.
            const away = between(300, 2000)
            log(`kill l3 for ${away} ms`)
            await kill(leaves[2])
            await sleep(away)
            await launch(leaves[2])
            count(action)
            break
          }
          case 'cut': {
            const i = between(0, 2)
            log(`cut the links to l${i + 1}`)
            proxies[i].cut()
            count(action)
            break
          }
          case 'stall': {
            const i = between(0, 2)
            const ms = between(200, i === 2 ? 1500 : 4000)
            log(`stall the link to l${i + 1} for ${ms} ms`)
            proxies[i].stall()
            await sleep(ms)
            proxies[i].pass()
            count(action)
            break
          }
          case 'delay': {
            const i = between(0, 2)
            const ms = between(5, 50)
            log(`delay the link to l${i + 1} by ${ms} ms for 2 s`)
            proxies[i].delay(ms)
            await sleep(2000)
            proxies[i].delay(0)
            count(action)
            break
          }
          case 'kill-top': {
            log('kill -9 the top node and restart it')
            await kill(top)
            await sleep(between(100, 1500))
            await launch(top)
            count(action)
            break
          }
        }
      }
    }

    await Promise.all([chaos(), ...Array.from({ length: 6 }, () => worker())])
    for (const p of proxies) { p.pass(); p.delay(0) }
    log('load stopped; waiting for the mirror to be in sync')
    const statusUrl = `http://127.0.0.1:${topPort}/status`
    let inSync = false
    for (let i = 0; i < 600 && !inSync; i++) {
      try {
        const s = await (await fetch(statusUrl)).json() as { devices: { mir: { members: Array<{ state: string }> } } }
        inSync = s.devices.mir.members.every(m => m.state === 'in-sync')
      } catch {}
      if (!inSync) await sleep(200)
    }

    // Every block through the top (a piece that cannot be read is a finding, counted, not a crash of the soak), and
    // each mirror leg's file against the other.
    const all = Buffer.alloc(size)
    let bad = 0
    let checked = 0
    let unreadable = 0
    for (let at = 0; at < size; at += MiB) {
      const n = Math.min(MiB, size - at)
      let readOk = true
      try {
        await client.read(at, n, all.subarray(at, at + n))
      } catch (err) {
        readOk = false
        log(`final read ${at}+${n} failed: ${(err as Error).message}`)
      }
      for (let b = at; b < at + n; b += 4096) {
        if (unknown[b / 4096] !== 0) continue
        checked++
        if (!readOk) unreadable++
        else if (!all.subarray(b, b + 4096).equals(model.subarray(b, b + 4096))) bad++
      }
    }
    await client.flush().catch(err => log(`final flush failed: ${(err as Error).message}`))
    const l1 = fs.readFileSync(path.join(dir, 'l1.img'))
    const l2 = fs.readFileSync(path.join(dir, 'l2.img'))
    const legsEqual = inSync && l1.equals(l2)
    const legsMatchTop = l1.equals(all.subarray(0, LEAF))
    log(`did: ${Object.entries(did).map(([k, v]) => `${k} ${v}`).join(', ') || 'no faults'}`)
    log(`I/O: ${stats.writes} writes, ${stats.reads} reads, ${(stats.bytes / MiB).toFixed(0)} MiB, ${stats.errors} errors`)
    log(`found: ${stats.mismatches} wrong reads during the run; ${bad} of ${checked} known blocks wrong and ${unreadable} unreadable at the end` +
      `; mirror ${inSync ? 'in sync' : 'NOT in sync'}; leg files ${legsEqual ? 'identical' : 'DIFFERENT'}; l1 ${legsMatchTop ? 'matches' : 'does NOT match'} the top`)
    if (crashes.length > 0) log(`CRASHED: ${crashes.length} dst process(es) exited on their own (above)`)
    if (stats.mismatches > 0 || bad > 0 || unreadable > 0 || !legsEqual || !legsMatchTop || crashes.length > 0) process.exitCode = 1
  } finally {
    await client?.close().catch(() => {})
    for (const p of proxies) await p.close().catch(() => {})
    for (const p of procs) await kill(p)
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

main().then(() => {
  // Everything was closed and killed above; exit here rather than wait for the loop to drain by itself, so a handle
  // that never finishes closing (seen rarely, in Node's exit-time cleanup) cannot keep the soak spinning.
  process.exit(process.exitCode ?? 0)
}, err => {
  process.stderr.write(`soak: ${(err as Error).stack ?? String(err)}\n`)
  process.exit(1)
})
