// End-to-end safety of arrays at the edges (issue 12), with real node processes on loopback: creating a mirror never
// overwrites a leg that holds data unless the operator names the source (syncFrom) or says the legs are equal
// (assumeClean); another disk at a leg's address is foreign and untouched until `dst array replace`; a node starts
// with a mirror leg or a linear member down (and resyncs the leg when it is back); a verify that cannot compare a
// leg says so and exits 3.

import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { randomBytes } from 'node:crypto'
import { runDst, startNode, tempDir, type RunningNode } from '../helpers/node-process'
import { freePort } from '../helpers/ports'
import { RemoteDevice } from '../../export/native/remote-device'
import { parseConfig } from '../../node/daemon/config'
import { parseDstUrl } from '../../node/core/url'
import { DeviceRegistry } from '../../node/daemon/registry'
import { Hasher } from '../../node/core/hasher'
import { until, within } from '../helpers/wait'

const MiB = 1024 * 1024
const SIZE = 4 * MiB

async function open (url: string, reconnectTimeout = 30000): Promise<RemoteDevice> {
  const target = parseDstUrl(url)
  if (typeof target === 'string') throw new Error(target)
  return await RemoteDevice.open(target, { openTimeout: 20000, reconnectTimeout })
}

/** Test context pieces: a folder, and every node started in it killed at the end. */
function rig (t: { teardown: (fn: () => unknown) => void }): { dir: string, nodes: RunningNode[], leaf: (name: string, listen?: string, file?: string) => Promise<RunningNode> } {
  const dir = tempDir()
  const nodes: RunningNode[] = []
  t.teardown(async () => {
    await Promise.all(nodes.map(n => n.kill()))
    fs.rmSync(dir, { recursive: true, force: true })
  })
  const leaf = async (name: string, listen = '127.0.0.1:0', file = `./${name}.img`): Promise<RunningNode> => {
    const n = await startNode(dir, { name, listen, dataDir: `./state/${name}`, devices: { disk: { type: 'file', path: file, size: SIZE } }, exports: [{ device: 'disk' }] })
    nodes.push(n)
    return n
  }
  return { dir, nodes, leaf }
}

function legOf (status: any, array: string, leg: string): any {
  return status.devices[array].members.find((m: any) => m.name === leg)
}

test('creating a mirror of an empty file and a remote leaf that holds data: refused naming syncFrom and assumeClean, nothing overwritten; syncFrom copies from the named leg; assumeClean copies nothing', async t => {
  const { dir, nodes, leaf } = rig(t)
  const data = randomBytes(SIZE)
  fs.writeFileSync(path.join(dir, 'far.img'), data)
  const far = await leaf('far')
  const mirror = (name: string, extra: Record<string, unknown>, url = far.url('disk')): Record<string, unknown> => ({
    name, dataDir: `./state/${name}`,
    devices: {
      local: { type: 'file', path: `./${name}-local.img`, size: SIZE },
      far: { type: 'remote', url },
      both: { type: 'mirror', members: ['local', 'far'], region: '64KiB', ...extra },
    },
    exports: [{ device: 'both' }],
  })
  const refused = await t.throwsAsync(startNode(dir, mirror('m1', {})))
  t.regex(refused?.message ?? '', /'far' \(data at byte 0\) holds data/)
  t.regex(refused?.message ?? '', /syncFrom/)
  t.regex(refused?.message ?? '', /assumeClean/)
  t.true(fs.readFileSync(path.join(dir, 'far.img')).equals(data), 'the leaf holding data was not overwritten')
  t.false(fs.readFileSync(path.join(dir, 'm1-local.img')).some(b => b !== 0), 'nor was anything copied to the empty leg')

  // The operator names the source and starts the node again.
  const m1 = await startNode(dir, mirror('m1', { syncFrom: 'far' }))
  nodes.push(m1)
  await until('m1 in sync', async () => (await m1.status()).devices.both.state === 'online')
  t.true(fs.readFileSync(path.join(dir, 'm1-local.img')).equals(data), 'the empty leg was filled from far')
  t.true(fs.readFileSync(path.join(dir, 'far.img')).equals(data), 'far is unchanged')
  t.is(await m1.stop(), 0)

  // m2 mirrors another leaf (far stays leased to m1's writer for leaseTimeout after m1 left).
  const far2data = randomBytes(SIZE)
  fs.writeFileSync(path.join(dir, 'far2.img'), far2data)
  const far2 = await leaf('far2')
  const m2 = await startNode(dir, mirror('m2', { assumeClean: true }, far2.url('disk')))
  nodes.push(m2)
  const s = await m2.status()
  t.is(s.devices.both.state, 'online', 'assumeClean: in sync at once')
  t.is(s.devices.both.resyncedBytes + s.devices.both.resyncComparedBytes, 0, 'nothing compared or copied')
  t.false(fs.readFileSync(path.join(dir, 'm2-local.img')).some(b => b !== 0), 'nothing was copied to local')
  t.true(fs.readFileSync(path.join(dir, 'far2.img')).equals(far2data))
})

test('a foreign disk at a leg\'s address is refused: the leg is foreign in /status, dst status and /metrics, the disk is untouched, and dst array replace then syncs it', async t => {
  const { dir, nodes, leaf } = rig(t)
  const port = await freePort()
  const l1 = await leaf('l1', `127.0.0.1:${port}`)
  const l2 = await leaf('l2')
  const m = await startNode(dir, {
    name: 'm', dataDir: './state/m', pingInterval: 1000, reconnectTimeout: 2000,
    devices: { a: { type: 'remote', url: l1.url('disk') }, b: { type: 'remote', url: l2.url('disk') }, mir: { type: 'mirror', members: ['a', 'b'], region: '64KiB' } },
    exports: [{ device: 'mir' }],
  })
  nodes.push(m)
  await until('mirror online', async () => (await m.status()).devices.mir.state === 'online')
  const dev = await open(m.url('mir'))
  t.teardown(() => dev.close())
  await dev.write(0, randomBytes(SIZE))

  // l1 goes; another node serving another file (holding data) takes its port.
  await l1.kill()
  const theirs = randomBytes(SIZE)
  fs.writeFileSync(path.join(dir, 'imp.img'), theirs)
  const imp = await leaf('imp', `127.0.0.1:${port}`)
  t.truthy(imp)
  await until('leg a foreign', async () => legOf(await m.status(), 'mir', 'a').state === 'foreign', 20000)
  const s = await m.status()
  t.is(s.devices.mir.state, 'degraded')
  t.is(s.devices.a.state, 'foreign')
  t.is(typeof legOf(s, 'mir', 'a').foundIdentity, 'string')
  const shown = await runDst(['status', m.http])
  t.regex(shown.stdout.toString(), /a {2}remote {2}4 MiB {2}foreign/)
  const metrics = await (await fetch(`${m.http}/metrics`)).text()
  t.regex(metrics, /dst_mirror_legs\{node="m",array="mir",state="foreign"\} 1/)
  t.regex(metrics, /dst_device_state\{node="m",device="a",type="remote",state="foreign"\} 1/)
  // The array goes on degraded; the other disk gets nothing.
  await dev.write(MiB, randomBytes(64 * 1024))
  t.true(fs.readFileSync(path.join(dir, 'imp.img')).equals(theirs), 'the foreign disk is untouched')

  const replaced = await runDst(['array', 'replace', m.http, 'mir', 'a'])
  t.is(replaced.code, 0, replaced.stderr)
  t.regex(replaced.stdout.toString(), /overwritten by a full sync/)
  await until('leg a in sync again', async () => (await m.status()).devices.mir.state === 'online')
  t.true(fs.readFileSync(path.join(dir, 'imp.img')).equals(fs.readFileSync(path.join(dir, 'l2.img'))), 'the disk taken on holds the array')
})

test('a node starts with a mirror leg and a linear member down: degraded mirror serves I/O and resyncs the leg when it is back; the linear array serves the other member; verify exits 3 naming the leg', async t => {
  const { dir, nodes, leaf } = rig(t)
  const p2 = await freePort()
  const p4 = await freePort()
  const [l1, l2, l3, l4] = await Promise.all([leaf('l1'), leaf('l2', `127.0.0.1:${p2}`), leaf('l3'), leaf('l4', `127.0.0.1:${p4}`)])
  const config = {
    name: 'top', dataDir: './state/top', pingInterval: 1000, reconnectTimeout: 1000,
    devices: {
      a: { type: 'remote', url: l1.url('disk') }, b: { type: 'remote', url: l2.url('disk') },
      mir: { type: 'mirror', members: ['a', 'b'], region: '64KiB' },
      c: { type: 'remote', url: l3.url('disk') }, d: { type: 'remote', url: l4.url('disk') },
      lin: { type: 'linear', members: ['c', 'd'] },
    },
    exports: [{ device: 'mir' }, { device: 'lin' }],
  }
  const first = await startNode(dir, config)
  nodes.push(first)
  await until('mirror online', async () => (await first.status()).devices.mir.state === 'online')
  t.is(await first.stop(), 0)
  t.true(fs.existsSync(path.join(dir, 'state', 'top', 'remotes.json')), 'the remote devices\' disks are remembered')

  // A power cut: the node comes back before two of its leaves.
  await Promise.all([l2.kill(), l4.kill()])
  const started = Date.now()
  const top = await within(startNode(dir, config), 20000, 'start with leaves down')
  nodes.push(top)
  t.true(Date.now() - started < 15000, 'it did not wait for the missing leaves')
  const s = await top.status()
  t.is(s.devices.mir.state, 'degraded')
  t.is(legOf(s, 'mir', 'b').state, 'failed')
  t.is(s.devices.lin.state, 'degraded')

  const mir = await open(top.url('mir'))
  t.teardown(() => mir.close())
  const data = randomBytes(256 * 1024)
  await mir.write(MiB, data)
  const lin = await open(top.url('lin'))
  t.teardown(() => lin.close())
  const first4 = randomBytes(4096)
  await lin.write(4096, first4)
  const back = Buffer.alloc(4096)
  await lin.read(4096, 4096, back)
  t.true(back.equals(first4), 'the present member\'s range is served')
  const absent = await lin.read(SIZE + 4096, 4096, Buffer.alloc(4096)).then(() => null, (err: Error) => err)
  t.regex(absent?.message ?? '', /EIO/, 'the absent member\'s range fails (the wire carries the errno)')
  t.is((await top.status()).devices.d.state, 'connecting')

  const verify = await runDst(['verify', top.http, 'mir', '--no-progress'])
  t.is(verify.code, 3, verify.stderr)
  t.regex(verify.stderr, /leg b down: 4 MiB not compared/)
  t.is((await top.status()).verify.mir.state, 'incomplete')

  // The leaves come back: the mirror resyncs only what b missed, the linear member is served again.
  const [l2b, l4b] = await Promise.all([leaf('l2', `127.0.0.1:${p2}`), leaf('l4', `127.0.0.1:${p4}`)])
  t.truthy(l2b && l4b)
  await until('leg b in sync', async () => (await top.status()).devices.mir.state === 'online')
  t.true((await top.status()).devices.mir.resyncedBytes <= 256 * 1024, 'only the missed region was copied')
  t.true(fs.readFileSync(path.join(dir, 'l2.img')).equals(fs.readFileSync(path.join(dir, 'l1.img'))), 'the legs are identical')
  await until('linear member d back', async () => (await top.status()).devices.lin.state === 'online')
  await lin.write(SIZE, first4)
  t.true(fs.readFileSync(path.join(dir, 'l4.img')).subarray(0, 4096).equals(first4))
})

test('a mirror leg with no remembered handshake opens with its superblock\'s size and identity while its node is down; a remote never reached fails saying why', async t => {
  const { dir, nodes, leaf } = rig(t)
  const p2 = await freePort()
  const [l1, l2] = await Promise.all([leaf('l1'), leaf('l2', `127.0.0.1:${p2}`)])
  const config = {
    name: 'top', dataDir: './state/top',
    devices: { a: { type: 'remote', url: l1.url('disk') }, b: { type: 'remote', url: l2.url('disk') }, mir: { type: 'mirror', members: ['a', 'b'], region: '64KiB' } },
    exports: [{ device: 'mir' }],
  }
  const first = await startNode(dir, config)
  nodes.push(first)
  t.is(await first.stop(), 0)
  // As after an upgrade from a version that kept no remotes.json.
  fs.rmSync(path.join(dir, 'state', 'top', 'remotes.json'))
  await l2.kill()
  const top = await within(startNode(dir, config), 20000, 'start with leg b down')
  nodes.push(top)
  t.is(legOf(await top.status(), 'mir', 'b').state, 'failed')
  const l2b = await leaf('l2', `127.0.0.1:${p2}`)
  t.truthy(l2b)
  await until('leg b in sync', async () => (await top.status()).devices.mir.state === 'online')

  const lonely = parseConfig({ name: 'x', listen: '127.0.0.1:0', dataDir: path.join(dir, 'state', 'x'), devices: { far: { type: 'remote', url: `dst://127.0.0.1:${await freePort()}/disk` } } }, dir)
  const hasher = new Hasher({ threads: 1 })
  t.teardown(() => hasher.close())
  const err = await t.throwsAsync(new DeviceRegistry().open(lonely, { log: () => {}, remoteOpenTimeout: 300, pingInterval: 1000, remotes: null, hasher }))
  t.regex(err?.message ?? '', /device 'far': .*never reached, so its size is unknown/)
})

test('a linear member whose address answers with another disk is foreign: its range fails, the other member is served, and dst array replace takes the disk on without copying', async t => {
  const { dir, nodes, leaf } = rig(t)
  const port = await freePort()
  const [c, d] = await Promise.all([leaf('c', `127.0.0.1:${port}`), leaf('d')])
  const top = await startNode(dir, {
    name: 'top', dataDir: './state/top', pingInterval: 1000, reconnectTimeout: 2000,
    devices: { c: { type: 'remote', url: c.url('disk') }, d: { type: 'remote', url: d.url('disk') }, lin: { type: 'linear', members: ['c', 'd'] } },
    exports: [{ device: 'lin' }],
  })
  nodes.push(top)
  const lin = await open(top.url('lin'))
  t.teardown(() => lin.close())
  await c.kill()
  const theirs = randomBytes(SIZE)
  fs.writeFileSync(path.join(dir, 'imp.img'), theirs)
  await leaf('imp', `127.0.0.1:${port}`)
  await until('member c foreign', async () => (await top.status()).devices.c.state === 'foreign', 20000)
  t.is((await top.status()).devices.lin.state, 'degraded')
  const refused = await lin.read(0, 4096, Buffer.alloc(4096)).then(() => null, (err: Error) => err)
  t.regex(refused?.message ?? '', /EIO/)
  await lin.write(SIZE, Buffer.alloc(4096, 1))
  t.true(fs.readFileSync(path.join(dir, 'imp.img')).equals(theirs), 'the other disk is untouched')
  const replaced = await runDst(['array', 'replace', top.http, 'lin', 'c'])
  t.is(replaced.code, 0, replaced.stderr)
  t.regex(replaced.stdout.toString(), /nothing was copied/)
  const got = Buffer.alloc(4096)
  await lin.read(0, 4096, got)
  t.true(got.equals(theirs.subarray(0, 4096)), 'the member now serves the disk taken on')
})
