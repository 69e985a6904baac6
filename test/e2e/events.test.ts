// `dst events --tree` and GET /events across a 3-level tree of real nodes on loopback: the stream starts with every
// node's state, a leaf killed under writes is a failed leg on the mirror node and an unreachable node, the leaf back
// is a resync and the leg in sync again; a client that never reads its stream is closed, and the node goes on.

import test from 'ava'
import { spawn } from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { DST, runDst, startNode, tempDir } from '../helpers/node-process'
import { startWatchTree } from '../helpers/watch-tree'
import { testNeeding } from '../helpers/requires'
import { attemptUpgrade } from '../helpers/raw-client'

/** Collects the lines a process prints, and waits for one that matches. */
function lines (proc: ReturnType<typeof spawn>): { all: () => string, waitFor: (re: RegExp, ms: number) => Promise<string> } {
  let out = ''
  const waiters = new Set<() => void>()
  proc.stdout?.on('data', d => { out += String(d); for (const w of [...waiters]) w() })
  proc.stderr?.on('data', d => { out += String(d) })
  return {
    all: () => out,
    waitFor: (re, ms) => new Promise((resolve, reject) => {
      const check = (): void => {
        const m = out.split('\n').find(l => re.test(l))
        if (m !== undefined) { waiters.delete(check); clearTimeout(timer); resolve(m) }
      }
      const timer = setTimeout(() => { waiters.delete(check); reject(new Error(`no line matching ${String(re)} within ${ms} ms; got:\n${out.slice(-4000)}`)) }, ms)
      waiters.add(check)
      check()
    }),
  }
}

test('dst events --tree: every node\'s state, then a leaf killed and back, as lines a person reads', async t => {
  const w = await startWatchTree(t)
  const proc = spawn(process.execPath, [DST, 'events', '--tree', w.top.http], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => { proc.kill('SIGKILL') })
  const out = lines(proc)
  for (const node of ['top', 'mid', 'leaf1', 'leaf2']) await out.waitFor(new RegExp(`^\\S+ ${node} exists -$`), 15000)
  t.truthy(await out.waitFor(/ mid exists device:m leg:b state:in-sync/, 1000))
  t.truthy(await out.waitFor(/ leaf2 exists export:disk device:disk connections:1 lease:/, 1000))

  await w.killLeaf(1)
  const leaf2 = `http://127.0.0.1:${w.leaves[1].port}`
  t.truthy(await out.waitFor(new RegExp(`^\\S+ ${leaf2.replace(/[.:/]/g, '\\$&')} unreachable error:"ECONNREFUSED" retrying$`), 10000))
  t.truthy(await out.waitFor(/ mid remote-disconnected device:b$/, 10000))
  // Writes through the top node reach the mirror; the leg on the dead leaf fails once its device gives up (1 s).
  const file = path.join(w.dir, 'data.bin')
  fs.writeFileSync(file, Buffer.alloc(256 * 1024, 7))
  const copied = await runDst(['copy', file, w.top.url('all'), '--offset', '4MiB', '--quiet'])
  t.is(copied.code, 0, copied.stderr)
  t.truthy(await out.waitFor(/ mid leg-failed device:m leg:b state:in-sync->failed$/, 10000))
  t.truthy(await out.waitFor(/ mid device-state device:m state:online->degraded$/, 10000))

  await w.restartLeaf(1)
  t.truthy(await out.waitFor(/ mid remote-connected device:b$/, 15000))
  t.truthy(await out.waitFor(/ mid leg-returned device:m leg:b state:failed->/, 15000))
  t.truthy(await out.waitFor(/ mid leg-(state|returned) device:m leg:b state:\S+->in-sync$/, 20000))
  // The node samples every 250 ms: a resync shorter than that is seen as the leg going from failed to in-sync.
  if (/ mid resync-start device:m leg:b doneBytes:\d+ totalBytes:\d+$/m.test(out.all())) {
    t.truthy(await out.waitFor(/ mid resync-finish device:m leg:b doneBytes:(\d+) totalBytes:\1 state:in-sync$/, 5000))
  }
  t.truthy(await out.waitFor(/ leaf2 exists -$/, 10000), 'the leaf followed again')
  t.log(out.all().split('\n').filter(l => !/ exists /.test(l)).join('\n'))
})

test('dst events --json: one JSON object a line, the snapshot first', async t => {
  const dir = tempDir()
  const node = await startNode(dir, { name: 'solo', devices: { m: { type: 'memory', size: '1MiB' } }, exports: [{ device: 'm' }] })
  t.teardown(async () => { await node.kill(); fs.rmSync(dir, { recursive: true, force: true }) })
  const proc = spawn(process.execPath, [DST, 'events', '--json', node.http], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => { proc.kill('SIGKILL') })
  const first = JSON.parse(await lines(proc).waitFor(/^\{/, 10000))
  t.like(first, { node: 'solo', kind: 'snapshot' })
  t.regex(first.time, /^\d{4}-\d\d-\d\dT/)
  t.like(first.status.devices.m, { type: 'memory', state: 'online' })
})

// A client with a tiny receive window that never reads: python3, since Node cannot set SO_RCVBUF before connecting.
const NEVER_READS = `
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
s.connect(('127.0.0.1', int(sys.argv[1])))
s.sendall(b'GET /events HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')
print('sent', flush=True)
time.sleep(200)
`

testNeeding([{ command: 'python3', install: 'apt-get install python3' }])('a client that never reads its event stream is bounded, then closed, and the node goes on', async t => {
  const dir = tempDir()
  // Many exports with a token: each upgrade without it is refused, and each refusal is an event on the stream.
  const devices: Record<string, unknown> = {}
  const exports: unknown[] = []
  for (let i = 0; i < 200; i++) { devices[`d${i}`] = { type: 'memory', size: '64KiB' }; exports.push({ device: `d${i}`, token: 'secret' }) }
  process.env.DST_EVENTS_MAX_QUEUED = '16384'
  const node = await startNode(dir, { name: 'busy', devices, exports })
  delete process.env.DST_EVENTS_MAX_QUEUED
  t.teardown(async () => { await node.kill(); fs.rmSync(dir, { recursive: true, force: true }) })
  const client = spawn('python3', ['-c', NEVER_READS, String(node.port)], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => { client.kill('SIGKILL') })
  await lines(client).waitFor(/^sent$/, 10000)
  const began = Date.now()
  let rounds = 0
  const closedLine = /closing 127\.0\.0\.1's event stream: it does not read \((\d+) bytes waiting, at most 16384\)/
  while (!closedLine.test(node.output()) && Date.now() - began < 100000) {
    await Promise.all(Object.keys(devices).map(d => attemptUpgrade(node.port, d).catch(() => null)))
    rounds++
    await new Promise(resolve => setTimeout(resolve, 300))
  }
  const m = closedLine.exec(node.output())
  t.truthy(m, `the stream was closed (after ${rounds} rounds of 200 refusals, ${Date.now() - began} ms)`)
  t.true(Number(m?.[1]) < 16384 + 1024, 'closed as soon as the bound was passed')
  t.log(`closed after ${rounds} rounds of 200 refusals, ${Date.now() - began} ms`)
  const status = await node.status()
  t.is(status.name, 'busy', 'the node still answers')
})
