// A running node (node/daemon/node.ts) as a process: stacked across two nodes through a `remote` device, its /status and
// /metrics pages, a graceful SIGTERM under load that keeps every acknowledged write, and the embedded default config.

import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { startNode, tempDir, type RunningNode } from '../helpers/node-process'
import { newSeed, prng, seededBytes, between } from '../helpers/random'
import { freePort } from '../helpers/ports'
import { RemoteDevice } from '../../export/native/remote-device'
import { DEFAULT_CONFIG } from '../../node/daemon/config'
import type { DstError } from '../../node/core/errors'
import { until, within } from '../helpers/wait'

const KiB = 1024
const MiB = 1024 * KiB
const GiB = 1024 * MiB

type Teardown = { teardown: (fn: () => unknown) => void }

async function node (t: Teardown, dir: string, config: Record<string, unknown>): Promise<RunningNode> {
  const n = await startNode(dir, config)
  t.teardown(() => n.kill())
  return n
}

async function device (t: Teardown, n: RunningNode, name: string, queueDepth?: number, access?: 'ro' | 'rw'): Promise<RemoteDevice> {
  const dev = await RemoteDevice.open({ host: '127.0.0.1', port: n.port, export: name }, { queueDepth, access })
  t.teardown(() => dev.close())
  return dev
}

async function getJson (url: string): Promise<{ status: number, type: string, body: any }> {
  const res = await fetch(url)
  return { status: res.status, type: res.headers.get('content-type') ?? '', body: await res.json() }
}

async function getText (url: string): Promise<{ status: number, type: string, body: string }> {
  const res = await fetch(url)
  return { status: res.status, type: res.headers.get('content-type') ?? '', body: await res.text() }
}

/** The value of one Prometheus sample, or NaN when the line is missing. */
function sample (metrics: string, name: string, labels: string): number {
  for (const line of metrics.split('\n')) if (line.startsWith(`${name}{${labels}} `)) return Number(line.slice(name.length + labels.length + 3))
  return NaN
}

test('node B re-exports node A\'s file through a remote device; data written on B lands in A\'s file', async t => {
  const seed = newSeed()
  t.log(`seed ${seed}`)
  const rand = prng(seed)
  const dirA = tempDir('dst-node-a-')
  const fileA = path.join(dirA, 'disk.img')
  fs.writeFileSync(fileA, seededBytes(rand, 8 * MiB))
  const a = await node(t, dirA, { name: 'a', devices: { disk: { type: 'file', path: fileA } }, exports: [{ device: 'disk' }] })
  const b = await node(t, tempDir('dst-node-b-'), {
    name: 'b',
    devices: { far: { type: 'remote', url: a.url('disk') } },
    exports: [{ device: 'far', name: 'again' }],
  })

  const dev = await device(t, b, 'again')
  // B holds A's write lease; a reader connects read-only.
  const direct = await device(t, a, 'disk', undefined, 'ro')
  t.is(dev.size, 8 * MiB)
  t.is(dev.identity, direct.identity, 'the identity of A\'s file passes through B')
  t.true(dev.writable)

  const model = fs.readFileSync(fileA)
  // One large write (split on both hops) and many small ones in flight at once, in disjoint places.
  const big = seededBytes(rand, 3 * MiB + 1000)
  const bigAt = 1 * MiB + 123
  big.copy(model, bigAt)
  const writes: Array<Promise<void>> = [dev.write(bigAt, big)]
  for (let i = 0; i < 60; i++) {
    const at = 5 * MiB + i * 40 * KiB + between(rand, 0, 1000)
    const data = seededBytes(rand, between(rand, 1, 30 * KiB))
    data.copy(model, at)
    writes.push(dev.write(at, data))
  }
  await Promise.all(writes)
  await dev.flush()

  const back = Buffer.alloc(8 * MiB)
  await dev.read(0, back.length, back)
  t.true(back.equals(model), 'reads through B return what was written')
  t.true(fs.readFileSync(fileA).equals(model), 'A\'s file holds every byte written through B')

  const status = await getJson(`${b.http}/status`)
  t.is(status.body.devices.far.type, 'remote')
  t.is(status.body.devices.far.state, 'online')
  t.is(status.body.devices.far.connected, true)
  t.is(status.body.devices.far.url, a.url('disk'))
  t.is(status.body.devices.far.size, 8 * MiB)
})

test('while node A is down, I/O through B waits for it; past B\'s reconnectTimeout it fails with EIO; when A is back, B serves again', async t => {
  const seed = newSeed()
  const rand = prng(seed)
  const dirA = tempDir('dst-node-a-')
  const fileA = path.join(dirA, 'disk.img')
  fs.writeFileSync(fileA, seededBytes(rand, 2 * MiB))
  const portA = await freePort()
  const configA = { name: 'a', listen: `127.0.0.1:${portA}`, devices: { disk: { type: 'file', path: fileA } }, exports: [{ device: 'disk' }] }
  const a = await node(t, dirA, configA)
  const b = await node(t, tempDir('dst-node-b-'), { name: 'b', reconnectTimeout: 1500, devices: { far: { type: 'remote', url: a.url('disk') } }, exports: [{ device: 'far' }] })
  const dev = await device(t, b, 'far')
  const before = seededBytes(rand, 100 * KiB)
  await dev.write(0, before)

  await a.kill()
  const began = Date.now()
  const err = await within(dev.read(0, 4096, Buffer.alloc(4096)).then(() => null, (e: DstError) => e), 8000, 'read through B while A is down')
  t.is(err?.code, 'DST_ERR_EIO', err?.message)
  t.true(Date.now() - began >= 1000, 'B waited for A before failing the read')
  t.true(dev.connected, 'the client\'s own connection to B stays up')
  const down = (await getJson(`${b.http}/status`)).body
  t.is(down.devices.far.state, 'connecting')
  t.is(down.devices.far.connected, false)
  t.regex(String(down.devices.far.lastError), new RegExp(`127\\.0\\.0\\.1:${portA}`))

  const a2 = await node(t, dirA, configA)
  let state = ''
  // Bounded; if B never gets back online, the assertion below names the state it is in.
  await until('B to reconnect to A', async () => {
    state = (await getJson(`${b.http}/status`)).body.devices.far.state
    return state === 'online'
  }, 10000, 100).catch(() => {})
  t.is(state, 'online', 'B reconnected to A')
  const after = seededBytes(rand, 100 * KiB)
  await dev.write(200 * KiB, after)
  const back = Buffer.alloc(300 * KiB)
  await dev.read(0, back.length, back)
  t.true(back.subarray(0, before.length).equals(before))
  t.true(back.subarray(200 * KiB).equals(after))
  t.true(fs.readFileSync(fileA).subarray(200 * KiB, 300 * KiB).equals(after))
  t.is(a2.proc.exitCode, null)
})

test('/status is JSON with name, devices and exports; /metrics counts requests per export', async t => {
  const dir = tempDir('dst-node-status-')
  const file = path.join(dir, 'disk.img')
  const n = await node(t, dir, {
    name: 'obs',
    devices: { disk: { type: 'file', path: file, size: '4MiB' }, mem: { type: 'memory', size: '1MiB' } },
    exports: [{ device: 'disk' }, { device: 'mem', name: 'scratch', readOnly: true, token: 'tok', allow: ['127.0.0.1'] }],
  })

  const s = await getJson(`${n.http}/status`)
  t.is(s.status, 200)
  t.regex(s.type, /application\/json/)
  t.is(s.body.name, 'obs')
  t.is(s.body.listen, `127.0.0.1:${n.port}`)
  t.deepEqual(Object.keys(s.body.devices).sort(), ['disk', 'mem'])
  t.like(s.body.devices.disk, { type: 'file', size: 4 * MiB, state: 'online', writable: true, path: file })
  t.like(s.body.devices.mem, { type: 'memory', size: 1 * MiB, state: 'online' })
  t.is(s.body.exports.length, 2)
  t.like(s.body.exports[0], { name: 'disk', device: 'disk', readOnly: false, url: n.url('disk'), token: false, connections: 0 })
  t.like(s.body.exports[1], { name: 'scratch', device: 'mem', readOnly: true, url: n.url('scratch'), token: true, allow: ['127.0.0.1'] })
  t.false(JSON.stringify(s.body).includes('"tok"'), 'the token itself is never shown')

  const m0 = await getText(`${n.http}/metrics`)
  t.is(m0.status, 200)
  t.regex(m0.type, /text\/plain/)
  t.regex(m0.body, /^# TYPE dst_requests_total counter$/m)
  const disk = 'node="obs",export="disk"'
  const scratch = 'node="obs",export="scratch"'
  for (const op of ['read', 'write', 'flush', 'trim', 'ping']) {
    t.is(sample(m0.body, 'dst_requests_total', `${disk},op="${op}"`), 0, `no ${op} yet`)
    t.is(sample(m0.body, 'dst_requests_total', `${scratch},op="${op}"`), 0)
  }
  t.is(sample(m0.body, 'dst_pool_buffers', 'node="obs"'), 64)
  // The pool is committed at start: its 64 MiB are resident and counted among the ArrayBuffers from the first sample.
  t.true(sample(m0.body, 'dst_memory_bytes', 'node="obs",kind="array_buffers"') >= 64 * MiB)
  t.true(sample(m0.body, 'dst_memory_bytes', 'node="obs",kind="rss"') >= 64 * MiB)
  t.true(sample(m0.body, 'dst_memory_bytes', 'node="obs",kind="heap_used"') > 0)

  const dev = await device(t, n, 'disk')
  const data = Buffer.alloc(64 * KiB, 7)
  for (let i = 0; i < 5; i++) await dev.write(i * 64 * KiB, data)
  const into = Buffer.alloc(32 * KiB)
  for (let i = 0; i < 7; i++) await dev.read(i * 32 * KiB, 32 * KiB, into)
  await t.throwsAsync(dev.read(4 * MiB - 10, 20, Buffer.alloc(20))) // refused on this side: never sent
  await dev.flush()

  const m1 = (await getText(`${n.http}/metrics`)).body
  t.is(sample(m1, 'dst_requests_total', `${disk},op="write"`), 5)
  t.is(sample(m1, 'dst_requests_total', `${disk},op="read"`), 7)
  t.is(sample(m1, 'dst_requests_total', `${disk},op="flush"`), 1)
  t.is(sample(m1, 'dst_bytes_total', `${disk},direction="write"`), 5 * 64 * KiB)
  t.is(sample(m1, 'dst_bytes_total', `${disk},direction="read"`), 7 * 32 * KiB)
  t.is(sample(m1, 'dst_request_errors_total', `${disk},op="read"`), 0)
  t.is(sample(m1, 'dst_connections', disk), 1)
  t.is(sample(m1, 'dst_requests_in_flight', disk), 0)
  t.is(sample(m1, 'dst_requests_total', `${scratch},op="write"`), 0, 'the other export\'s counters did not move')
  t.is(sample(m1, 'dst_pool_buffers_free', 'node="obs"'), 64, 'every pool buffer is back')

  const s1 = await getJson(`${n.http}/status`)
  t.is(s1.body.exports[0].connections, 1)

  const missing = await getText(`${n.http}/nothing-here`)
  t.is(missing.status, 404)
})

test('SIGTERM with many writes in flight: the node exits 0 and every acknowledged write is in the file', async t => {
  const seed = newSeed()
  t.log(`seed ${seed}`)
  const rand = prng(seed)
  const dir = tempDir('dst-node-term-')
  const file = path.join(dir, 'disk.img')
  const blocks = 8192
  const block = 4 * KiB
  const n = await node(t, dir, { name: 'term', devices: { disk: { type: 'file', path: file, size: blocks * block } }, exports: [{ device: 'disk' }] })
  // Requests cut off by the stop wait for the node to come back; it will not, so they fail after a second.
  const dev = await RemoteDevice.open({ host: '127.0.0.1', port: n.port, export: 'disk' }, { queueDepth: 64, reconnectTimeout: 1000 })
  t.teardown(() => dev.close())

  // Each block is written at most once, in a random order, with its own data: an acknowledged write must be found.
  const order = Array.from({ length: blocks }, (_, i) => i)
  for (let i = order.length - 1; i > 0; i--) { const j = between(rand, 0, i); [order[i], order[j]] = [order[j], order[i]] }
  const payloads = new Map<number, Buffer>()
  const acked = new Set<number>()
  const errors: DstError[] = []
  let next = 0
  let stopIssuing = false
  let outstanding = 0
  let allSettled: () => void = () => {}
  const settled = new Promise<void>(resolve => { allSettled = resolve })
  const issue = (): void => {
    while (!stopIssuing && outstanding < 256 && next < order.length) {
      const b = order[next++]
      const data = seededBytes(rand, block)
      payloads.set(b, data)
      outstanding++
      dev.write(b * block, data).then(() => { acked.add(b) }, (err: DstError) => { errors.push(err); stopIssuing = true }).finally(() => {
        outstanding--
        issue()
        if (outstanding === 0) allSettled()
      })
    }
    if (outstanding === 0) allSettled()
  }
  issue()

  const deadline = Date.now() + 20000
  while (acked.size < 1500 && Date.now() < deadline && next < order.length) await new Promise(resolve => setTimeout(resolve, 5))
  t.true(acked.size >= 1500, `acknowledged before SIGTERM: ${acked.size}`)
  const code = await n.stop()
  t.is(code, 0, n.output())
  t.regex(n.output(), /SIGTERM: finishing requests in flight/)
  t.regex(n.output(), /\] stopped/)

  let timer: NodeJS.Timeout | undefined
  await Promise.race([settled, new Promise((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`writes still pending: ${outstanding}`)), 10000) })])
  clearTimeout(timer)
  t.log(`issued ${next}, acknowledged ${acked.size}, refused ${errors.length}`)
  t.true(next < order.length, 'the node stopped before the writer ran out of work')
  t.true(errors.length > 0, 'writes after SIGTERM were refused')
  // Refused by the stopping node, or cut off with the connection and given up after reconnectTimeout.
  for (const err of errors) t.true(['DST_ERR_ESHUTDOWN', 'DST_ERR_UNREACHABLE'].includes(err.code), `${err.code}: ${err.message}`)

  const onDisk = fs.readFileSync(file)
  let missing = 0
  for (const b of acked) {
    if (!onDisk.subarray(b * block, (b + 1) * block).equals(payloads.get(b) as Buffer)) missing++
  }
  t.is(missing, 0, `${missing} of ${acked.size} acknowledged writes are not in the file`)
})

test('the embedded default config (port 0) creates ./data/disk0.img sparse and serves it', async t => {
  const dir = tempDir('dst-node-default-')
  // `dst node --default` makes ./data in its cwd and resolves the default's paths there; startNode resolves a
  // config's relative paths against the config file's folder, which is the same thing here.
  fs.mkdirSync(path.join(dir, 'data'))
  const config = JSON.parse(JSON.stringify(DEFAULT_CONFIG)) as typeof DEFAULT_CONFIG
  t.is(config.listen, '127.0.0.1:7001', 'the default serves loopback only')
  t.is(config.nbd, '127.0.0.1:10809', 'NBD on loopback, on its usual port')
  config.listen = '127.0.0.1:0'
  config.nbd = '127.0.0.1:0'
  const n = await node(t, dir, config)
  t.regex(n.output(), /nbd {5}nbd:\/\/127\.0\.0\.1:\d+\/disk0/)

  const img = path.join(dir, 'data', 'disk0.img')
  const st = fs.statSync(img)
  t.is(st.size, 1 * GiB)
  t.true(st.blocks * 512 < 1 * MiB, `sparse: ${st.blocks * 512} bytes allocated`)
  t.true(fs.statSync(path.join(dir, 'data', 'state')).isDirectory(), 'dataDir ./data/state was created')

  const s = await getJson(`${n.http}/status`)
  t.is(s.body.name, 'dst')
  t.like(s.body.devices.disk0, { type: 'file', size: 1 * GiB, state: 'online', path: img })
  t.deepEqual(s.body.exports.map((e: { name: string }) => e.name), ['disk0'])
  t.regex(n.output(), new RegExp(`export  dst://127\\.0\\.0\\.1:${n.port}/disk0  \\(file device 'disk0', read-write\\)`))

  const dev = await device(t, n, 'disk0')
  const data = Buffer.from('hello from the default config')
  await dev.write(1 * GiB - data.length, data)
  const fd = fs.openSync(img, 'r')
  t.teardown(() => fs.closeSync(fd))
  const back = Buffer.alloc(data.length)
  fs.readSync(fd, back, 0, data.length, 1 * GiB - data.length)
  t.true(back.equals(data))
  t.true(fs.statSync(img).blocks * 512 < 1 * MiB, 'still sparse after a write at the end')
})

test('a second node on the port of a running one is refused with a clear error; every connection still reaches the first', async t => {
  const dir = tempDir()
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const port = await freePort()
  const config = (name: string): Record<string, unknown> => ({
    name, listen: `127.0.0.1:${port}`, dataDir: `./state-${name}`,
    devices: { disk: { type: 'file', path: `./${name}.img`, size: 1 * MiB } }, exports: [{ device: 'disk' }],
  })
  const first = await startNode(dir, config('first'))
  t.teardown(() => first.kill())
  // uWebSockets.js would share a fixed port (SO_REUSEPORT) with a second listener, and the kernel would then deal
  // connections to either node; the node asks for the port exclusively, so the second cannot start.
  const err = await t.throwsAsync(startNode(dir, config('second'), { timeout: 20000 }))
  t.regex(err?.message ?? '', new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port} \\(address in use`))
  for (let i = 0; i < 20; i++) t.is((await first.status()).name, 'first')
})

test('a remote device that reaches its own node (its node id in x-dst-node) is refused at the upgrade (508, DST_ERR_SELF), not retried', async t => {
  const dir = tempDir()
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const n = await node(t, dir, { name: 'loop', dataDir: './state', devices: { m: { type: 'memory', size: MiB } }, exports: [{ device: 'm' }] })
  const id = (await n.status()).id as string
  t.is(fs.readFileSync(path.join(dir, 'state', 'node-id'), 'utf8').trim(), id, '/status shows the node id kept in dataDir')
  const started = Date.now()
  const err = await t.throwsAsync(RemoteDevice.open({ host: '127.0.0.1', port: n.port, export: 'm' }, { node: { name: 'loop', id }, openTimeout: 10000 }))
  t.is((err as DstError).code, 'DST_ERR_SELF')
  t.regex(err?.message ?? '', /refused \(508\): export 'm' is on the node that asks for it/)
  t.true(Date.now() - started < 5000, 'not retried until the open timeout')
  const other = await RemoteDevice.open({ host: '127.0.0.1', port: n.port, export: 'm' }, { node: { name: 'other', id: '00000000-0000-4000-8000-000000000000' } })
  await other.close()
  t.pass()
})
