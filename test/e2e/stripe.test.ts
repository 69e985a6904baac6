// End-to-end stripe (raid 0) arrays with real node processes on loopback: a stripe of three remote leaves, exported,
// deals its chunks over the leaf files as the layout says; with one leaf gone, requests that touch it fail and the
// others are served; the config refuses what a stripe cannot be, naming the field.

import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { randomBytes } from 'node:crypto'
import { runDst, startNode, tempDir, type RunningNode } from '../helpers/node-process'
import { RemoteDevice } from '../../export/native/remote-device'
import { parseDstUrl } from '../../node/core/url'

const KiB = 1024
const LEAF = 1024 * KiB
const CHUNK = 64 * KiB

async function open (url: string): Promise<RemoteDevice> {
  const target = parseDstUrl(url)
  if (typeof target === 'string') throw new Error(target)
  return await RemoteDevice.open(target, { openTimeout: 20000, reconnectTimeout: 1000, requestTimeout: 5000 })
}

function rig (t: { teardown: (fn: () => unknown) => void }): { dir: string, nodes: RunningNode[] } {
  const dir = tempDir()
  const nodes: RunningNode[] = []
  t.teardown(async () => {
    await Promise.all(nodes.map(n => n.kill()))
    fs.rmSync(dir, { recursive: true, force: true })
  })
  return { dir, nodes }
}

test('a stripe of three remote leaves: chunks land round-robin in the leaf files, read back whole, and a dead leaf fails only its chunks', async t => {
  const { dir, nodes } = rig(t)
  const leaves: RunningNode[] = []
  for (const name of ['l0', 'l1', 'l2']) {
    const n = await startNode(dir, { name, listen: '127.0.0.1:0', dataDir: `./state/${name}`, devices: { disk: { type: 'file', path: `./${name}.img`, size: LEAF } }, exports: [{ device: 'disk' }] })
    nodes.push(n)
    leaves.push(n)
  }
  const top = await startNode(dir, {
    name: 'top', listen: '127.0.0.1:0', dataDir: './state/top',
    devices: {
      r0: { type: 'remote', url: leaves[0].url('disk'), reconnectTimeout: '1s' },
      r1: { type: 'remote', url: leaves[1].url('disk'), reconnectTimeout: '1s' },
      r2: { type: 'remote', url: leaves[2].url('disk'), reconnectTimeout: '1s' },
      s: { type: 'stripe', members: ['r0', 'r1', 'r2'], chunk: '64KiB' },
    },
    exports: [{ device: 's' }],
  })
  nodes.push(top)
  const status = await top.status()
  t.is(status.devices.s.type, 'stripe')
  t.is(status.devices.s.size, 3 * LEAF)
  t.is(status.devices.s.chunk, CHUNK)
  const dev = await open(top.url('s'))
  t.teardown(() => dev.close())
  t.is(dev.size, 3 * LEAF)
  const data = randomBytes(3 * LEAF)
  // Unaligned pieces: the first write ends mid-chunk, the second starts there.
  await dev.write(0, data.subarray(0, 100 * KiB))
  await dev.write(100 * KiB, data.subarray(100 * KiB))
  await dev.flush()
  const back = Buffer.alloc(3 * LEAF)
  for (let at = 0; at < back.length; at += 256 * KiB) await dev.read(at, 256 * KiB, back.subarray(at))
  t.true(back.equals(data), 'the array reads back what was written')
  const files = ['l0', 'l1', 'l2'].map(n => fs.readFileSync(path.join(dir, `${n}.img`)))
  for (let c = 0; c * CHUNK < data.length; c++) {
    const file = files[c % 3]
    const at = Math.floor(c / 3) * CHUNK
    if (!file.subarray(at, at + CHUNK).equals(data.subarray(c * CHUNK, (c + 1) * CHUNK))) {
      t.fail(`chunk ${c} is not at ${at} of l${c % 3}.img`)
      return
    }
  }
  const shown = await runDst(['status', top.http])
  t.regex(shown.stdout.toString(), /s {2}stripe {2}3 MiB {2}online/)

  await leaves[1].kill()
  // Chunk 0 is on l0, chunk 1 on l1: the first is served, the second fails once the member gives up on its peer.
  const one = Buffer.alloc(CHUNK)
  await dev.read(0, CHUNK, one)
  t.true(one.equals(data.subarray(0, CHUNK)))
  await t.throwsAsync(dev.read(CHUNK, CHUNK, Buffer.alloc(CHUNK)))
  const after = await top.status()
  t.is(after.devices.s.state, 'degraded')
  await dev.read(2 * CHUNK, CHUNK, one)
  t.true(one.equals(data.subarray(2 * CHUNK, 3 * CHUNK)), 'chunk 2, on l2, is still served')
})

test('config: a stripe needs two members, a chunk that is a power of two, and members no one else uses; each refusal names the field', async t => {
  const { dir } = rig(t)
  const check = async (devices: Record<string, unknown>): Promise<string> => {
    const file = path.join(dir, `c${Math.random().toString(36).slice(2)}.json`)
    fs.writeFileSync(file, JSON.stringify({ name: 'n', listen: '127.0.0.1:0', dataDir: './state', devices, exports: [] }))
    const r = await runDst(['node', '--config', file], { timeout: 20000 })
    t.is(r.code, 2, r.stderr)
    return r.stderr
  }
  const m = (n: number): Record<string, unknown> => Object.fromEntries(Array.from({ length: n }, (_, i) => [`m${i}`, { type: 'memory', size: '1MiB' }]))
  t.regex(await check({ ...m(1), s: { type: 'stripe', members: ['m0'] } }), /devices\.s\.members: a stripe needs at least two members, got 1/)
  t.regex(await check({ ...m(2), s: { type: 'stripe', members: ['m0', 'm1'], chunk: '48KiB' } }), /devices\.s\.chunk: chunk 49152 is not a power of two/)
  t.regex(await check({ ...m(2), s: { type: 'stripe', members: ['m0', 'm0'] } }), /devices\.s\.members: a device is listed twice/)
  t.regex(await check({ ...m(3), s: { type: 'stripe', members: ['m0', 'm1'] }, l: { type: 'linear', members: ['m1', 'm2'] } }), /'m1' is already a member of 's'/)
  t.regex(await check({ ...m(2), s: { type: 'stripe', members: ['m0', 'm1'], region: '1MiB' } }), /devices\.s\.region: unknown field/)
})
