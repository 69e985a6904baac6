// End-to-end arrays: a 3-level tree across seven node processes, a leaf killed and restarted under writes, and a node
// killed with SIGKILL mid-write whose mirror then resyncs only its dirty regions.

import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { randomBytes } from 'node:crypto'
import { runDst, startNode, tempDir, type RunningNode } from '../helpers/node-process'
import { freePort } from '../helpers/ports'
import { RemoteDevice } from '../../export/native/remote-device'
import { parseDstUrl } from '../../node/core/url'
import { FileIntentStore } from '../../algorithms/intent-store'
import { until } from '../helpers/wait'

const MiB = 1024 * 1024

async function open (url: string, reconnectTimeout = 30000): Promise<RemoteDevice> {
  const target = parseDstUrl(url)
  if (typeof target === 'string') throw new Error(target)
  return RemoteDevice.open(target, { queueDepth: 32, openTimeout: 20000, reconnectTimeout })
}

test('a 3-level tree across 7 nodes: data written at the top lands in every leaf file; a leaf killed during writes is resynced with only what changed', async t => {
  const dir = tempDir()
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const nodes: RunningNode[] = []
  t.teardown(async () => { await Promise.all(nodes.map(n => n.kill())) })
  const leafSize = 8 * MiB
  const leaf = async (name: string, listen = '127.0.0.1:0'): Promise<RunningNode> => {
    const n = await startNode(dir, {
      name, listen, dataDir: `./state/${name}`,
      devices: { disk: { type: 'file', path: `./${name}.img`, size: leafSize } },
      exports: [{ device: 'disk' }],
    })
    nodes.push(n)
    return n
  }
  // Level 1: four leaves exporting files.
  // l2 is restarted later on the same address, so it gets a port that cannot be taken meanwhile (see helpers/ports).
  const l2port = await freePort()
  const [l1, l2, l3, l4] = await Promise.all(['l1', 'l2', 'l3', 'l4'].map(n => leaf(n, n === 'l2' ? `127.0.0.1:${l2port}` : undefined)))
  // Level 2: a mirror of two remote leaves, and a linear array of the other two.
  const [m1, m2] = await Promise.all([
    startNode(dir, {
      name: 'm1', dataDir: './state/m1', pingInterval: 1000, reconnectTimeout: 2000,
      devices: {
        a: { type: 'remote', url: l1.url('disk') }, b: { type: 'remote', url: l2.url('disk') },
        mir: { type: 'mirror', members: ['a', 'b'], region: '64KiB' },
      },
      exports: [{ device: 'mir' }],
    }),
    startNode(dir, {
      name: 'm2', dataDir: './state/m2',
      devices: {
        c: { type: 'remote', url: l3.url('disk') }, d: { type: 'remote', url: l4.url('disk') },
        lin: { type: 'linear', members: ['c', 'd'] },
      },
      exports: [{ device: 'lin' }],
    }),
  ])
  nodes.push(m1, m2)
  // Level 3: the top concatenates the two middle arrays.
  const top = await startNode(dir, {
    name: 'top', dataDir: './state/top',
    devices: {
      left: { type: 'remote', url: m1.url('mir') }, right: { type: 'remote', url: m2.url('lin') },
      all: { type: 'linear', members: ['left', 'right'] },
    },
    exports: [{ device: 'all' }],
  })
  nodes.push(top)

  const dev = await open(top.url('all'))
  t.teardown(() => dev.close())
  t.is(dev.size, 3 * leafSize)
  await until('m1 mirror in sync', async () => (await m1.status()).devices.mir.state === 'online')

  // Random data through the top, in requests that cross every member boundary.
  const model = randomBytes(dev.size)
  const chunk = 768 * 1024
  const writes: Array<Promise<void>> = []
  for (let at = 0; at < dev.size; at += chunk) writes.push(dev.write(at, model.subarray(at, Math.min(dev.size, at + chunk))))
  await Promise.all(writes)
  await dev.flush()
  const back = Buffer.alloc(dev.size)
  await dev.read(0, dev.size, back)
  t.true(back.equals(model), 'read back through the top')
  const file = (name: string): Buffer => fs.readFileSync(path.join(dir, `${name}.img`))
  t.true(file('l1').equals(model.subarray(0, leafSize)), 'l1 holds the mirror half')
  t.true(file('l2').equals(model.subarray(0, leafSize)), 'l2 holds the mirror half')
  t.true(file('l3').equals(model.subarray(leafSize, 2 * leafSize)), 'l3 holds the first linear member')
  t.true(file('l4').equals(model.subarray(2 * leafSize, 3 * leafSize)), 'l4 holds the second linear member')

  // Kill leaf l2 (a mirror leg) while writes go on; the tree stays writable.
  const writeSome = async (from: number, count: number): Promise<void> => {
    for (let i = 0; i < count; i++) {
      const at = from + i * 64 * 1024
      const data = randomBytes(16 * 1024)
      data.copy(model, at)
      await dev.write(at, data)
    }
  }
  const during = writeSome(0, 8)
  await l2.kill()
  await during
  await writeSome(1 * MiB, 16)
  const degraded = await m1.status()
  t.is(degraded.devices.mir.state, 'degraded')
  const leg = degraded.devices.mir.members.find((m: any) => m.name === 'b')
  t.is(leg.state, 'failed')
  t.true(leg.dirtyBytes > 0 && leg.dirtyBytes < leafSize / 4, `dirtyBytes ${leg.dirtyBytes} well under the device size`)

  // Restart l2 on its port: m1 reconnects by itself and resyncs only the dirty regions.
  const l2b = await leaf('l2', `127.0.0.1:${l2port}`)
  t.truthy(l2b)
  await until('leg b back in sync', async () => {
    const s = await m1.status()
    return s.devices.mir.members.every((m: any) => m.state === 'in-sync')
  })
  const after = await m1.status()
  t.true(after.devices.mir.resyncedBytes <= leg.dirtyBytes + 64 * 1024, `resynced ${after.devices.mir.resyncedBytes} <= dirty ${leg.dirtyBytes}`)
  await dev.read(0, dev.size, back)
  t.true(back.equals(model), 'top reads the latest data')
  t.true(file('l1').equals(model.subarray(0, leafSize)))
  t.true(file('l2').equals(file('l1')), 'the restarted leaf is byte-identical to its twin')
})

test('kill -9 of a node during mirror writes: after restart only dirty regions are resynced and the legs end identical', async t => {
  const dir = tempDir()
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const size = 16 * MiB
  const region = 64 * 1024
  const config = {
    name: 'crash', dataDir: './state',
    devices: {
      a: { type: 'file', path: './a.img', size }, b: { type: 'file', path: './b.img', size },
      m: { type: 'mirror', members: ['a', 'b'], region },
    },
    exports: [{ device: 'm' }],
  }
  const first = await startNode(dir, config)
  t.teardown(() => first.kill())
  await until('initial sync', async () => (await first.status()).devices.m.state === 'online')
  // The client gives up on the dead node after a second (it will not come back on this address).
  const dev = await open(first.url('m'), 1000)
  // Writes to a few scattered regions, many in flight, then SIGKILL in the middle of them.
  const stop = Date.now() + 20000
  let failed = 0
  const writers = Array.from({ length: 8 }, async (_, w) => {
    for (let i = 0; Date.now() < stop; i++) {
      const at = ((w * 37 + i * 11) % 24) * 3 * region + (i % 4) * 4096
      try { await dev.write(at, randomBytes(32 * 1024)) } catch { failed++; return }
    }
  })
  await new Promise(resolve => setTimeout(resolve, 700))
  await first.kill()
  await Promise.all(writers)
  t.true(failed > 0, 'writes were in flight when the node died')
  await dev.close()

  // What the node had made durable before dying: the regions that may differ.
  const saved = await new FileIntentStore(path.join(dir, 'state', 'mirror-m.intent')).load()
  t.truthy(saved)
  let dirty = 0
  for (let r = 0; r < size / region; r++) if (saved!.bits.some(b => (b[r >> 3] & (1 << (r & 7))) !== 0)) dirty++
  t.true(dirty > 0 && dirty <= 72, `dirty regions ${dirty}`)

  const second = await startNode(dir, config)
  t.teardown(() => second.kill())
  await until('resync after the crash', async () => (await second.status()).devices.m.state === 'online')
  const s = await second.status()
  t.true(s.devices.m.resyncedBytes <= dirty * region, `copied ${s.devices.m.resyncedBytes} bytes for ${dirty} dirty regions`)
  t.is(await second.stop(), 0)
  t.true(fs.readFileSync(path.join(dir, 'a.img')).equals(fs.readFileSync(path.join(dir, 'b.img'))), 'legs byte-identical')
})

test('dst array add, split and remove change a mirror live, refuse what would lose data, and survive a restart', async t => {
  const dir = tempDir()
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const size = 4 * MiB
  const port = await freePort()
  const config = {
    name: 'mgmt', listen: `127.0.0.1:${port}`, dataDir: './state',
    admin: { token: 'sesame' },
    devices: {
      a: { type: 'file', path: './a.img', size }, b: { type: 'file', path: './b.img', size },
      spare: { type: 'file', path: './spare.img', size },
      m: { type: 'mirror', members: ['a', 'b'], region: '64KiB' },
    },
    exports: [{ device: 'm' }],
  }
  let node = await startNode(dir, config)
  t.teardown(() => node.kill())
  await until('first sync', async () => (await node.status()).devices.m.state === 'online')
  const dev = await open(node.url('m'))
  const first = randomBytes(size)
  await dev.write(0, first)
  const admin = (args: string[]): Promise<{ code: number | null, stdout: Buffer, stderr: string }> =>
    runDst(['array', ...args, '--admin-token', 'sesame'])

  // Without the admin token the node refuses.
  const noToken = await runDst(['array', 'add', node.http, 'm', 'spare'])
  t.is(noToken.code, 1)
  t.regex(noToken.stderr, /admin token/)

  // add: the spare becomes a leg and is filled in the background.
  const add = await admin(['add', node.http, 'm', 'spare'])
  t.is(add.code, 0, add.stderr)
  t.regex(add.stdout.toString(), /leg 'spare' added/)
  await until('spare in sync', async () => (await node.status()).devices.m.members.every((l: any) => l.state === 'in-sync'))
  t.true(fs.readFileSync(path.join(dir, 'spare.img')).equals(first), 'the added leg holds the array')

  // split: b is detached as a point-in-time copy and exported as "snap"; later writes do not reach it.
  const split = await admin(['split', node.http, 'm', 'b', '--export', 'snap', '--read-only'])
  t.is(split.code, 0, split.stderr)
  const later = randomBytes(64 * 1024)
  await dev.write(0, later)
  const snap = await open(node.url('snap'))
  t.false(snap.writable, 'exported read-only')
  const snapData = Buffer.alloc(size)
  await snap.read(0, size, snapData)
  await snap.close()
  t.true(snapData.equals(first), 'the split-off leg keeps the data as of the split')

  // Refusals: adding a device that is exported (one writer per leg), an unknown device, removing the last in-sync leg.
  const exported = await admin(['add', node.http, 'm', 'b'])
  t.is(exported.code, 1)
  t.regex(exported.stderr, /exported as 'snap'/)
  const unknown = await admin(['add', node.http, 'm', 'nosuch'])
  t.is(unknown.code, 1)
  t.regex(unknown.stderr, /no device named 'nosuch'/)
  const rmA = await admin(['remove', node.http, 'm', 'spare'])
  t.is(rmA.code, 0, rmA.stderr)
  const rmLast = await admin(['remove', node.http, 'm', 'a'])
  t.is(rmLast.code, 1)
  t.regex(rmLast.stderr, /only in-sync leg/)
  const notMirror = await admin(['add', node.http, 'a', 'spare'])
  t.is(notMirror.code, 1)
  t.regex(notMirror.stderr, /only mirror arrays/)
  await dev.close()

  // A restart keeps every change: m has one leg (a), snap is still exported.
  t.is(await node.stop(), 0)
  node = await startNode(dir, config)
  const s = await node.status()
  t.deepEqual(s.devices.m.members.map((l: any) => l.name), ['a'])
  t.is(s.devices.m.state, 'degraded')
  t.true(s.exports.some((e: any) => e.name === 'snap' && e.device === 'b' && e.readOnly === true))
  const again = await open(node.url('m'))
  const head = Buffer.alloc(later.length)
  await again.read(0, head.length, head)
  await again.close()
  t.true(head.equals(later), 'the array kept its latest data across the restart')
})
