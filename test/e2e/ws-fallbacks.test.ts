// The client's fallback paths (export/native/client.ts), against a real node: DST_WS_TAP=0 (replies through ws's
// 'message' events instead of the tap), DST_DIRECT_READ=0 (ws's own socket reads instead of a SocketReader) and
// DST_WS_SEND=1 (requests through ws.send instead of straight onto the TCP socket). Each is read when a connection is
// made, so a test sets it around opening its device; the tests are serial because the environment is the process's.
// Under each (and with none, and all at once): writes, reads, flushes and HASH round trips, on a plain export and on
// one with wire digests, checked against a model and against the exported file.

import test, { type ExecutionContext } from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { startNode, tempDir, type RunningNode } from '../helpers/node-process'
import { newSeed, prng, seededBytes } from '../helpers/random'
import { digestsOf } from '../helpers/digests'
import { RemoteDevice } from '../../export/native/remote-device'

const KiB = 1024
const MiB = 1024 * KiB
const SIZE = 4 * MiB

const SWITCHES = ['DST_WS_TAP', 'DST_DIRECT_READ', 'DST_WS_SEND'] as const
type Switch = typeof SWITCHES[number]

let dir: string
let node: RunningNode

test.before(async () => {
  dir = tempDir('dst-ws-fallbacks-')
  node = await startNode(dir, {
    name: 'fallbacks',
    pool: { count: 16, size: '256KiB' },
    devices: {
      plain: { type: 'file', path: './plain.img', size: SIZE },
      digested: { type: 'file', path: './digested.img', size: SIZE },
    },
    exports: [{ device: 'plain', shared: true }, { device: 'digested', digest: true, shared: true }],
  })
})

test.after.always(async () => {
  if (node !== undefined) await node.kill()
  fs.rmSync(dir, { recursive: true, force: true })
})

/** What a connection uses, from its private fields: the paths the switches turn off. */
function paths (dev: RemoteDevice): { tapped: boolean, directRead: boolean, directSend: boolean } {
  const conn = (dev as unknown as { conn: { ws: { listenerCount: (e: string) => number }, reader: unknown, socket: unknown } | null }).conn
  if (conn === null) throw new Error('the device has no connection')
  return { tapped: conn.ws.listenerCount('message') === 0, directRead: conn.reader !== null, directSend: conn.socket !== null }
}

async function roundTrips (t: ExecutionContext, exportName: string, env: Partial<Record<Switch, string>>): Promise<void> {
  const saved = new Map(SWITCHES.map(name => [name, process.env[name]]))
  for (const name of SWITCHES) { if (env[name] === undefined) delete process.env[name]; else process.env[name] = env[name] }
  let dev: RemoteDevice
  try {
    dev = await RemoteDevice.open({ host: '127.0.0.1', port: node.port, export: exportName })
  } finally {
    for (const [name, value] of saved) { if (value === undefined) delete process.env[name]; else process.env[name] = value }
  }
  try {
    const used = paths(dev)
    t.is(used.tapped, env.DST_WS_TAP !== '0', 'the tap')
    t.is(used.directRead, env.DST_DIRECT_READ !== '0', 'the direct reader')
    t.is(used.directSend, env.DST_WS_SEND !== '1', 'sends onto the socket')

    const seed = newSeed()
    t.log(`seed ${seed}`)
    const rand = prng(seed)
    const model = seededBytes(rand, SIZE)
    await dev.write(0, model) // larger than a pool buffer: split into several requests
    // Writes of several sizes, some at odd places and some crossing a pool buffer's size, many at once.
    const writes: Promise<void>[] = []
    for (const [offset, length] of [[0, 4 * KiB], [12345, 100], [300 * KiB, 256 * KiB], [1 * MiB - 512, 1 * MiB + 1024], [SIZE - 7, 7]]) {
      const data = seededBytes(rand, length)
      data.copy(model, offset)
      writes.push(dev.write(offset, data))
    }
    await Promise.all(writes)
    await dev.flush()
    const reads = await Promise.all([[0, SIZE], [12000, 1000], [300 * KiB, 300 * KiB], [SIZE - 100, 100]].map(async ([offset, length]) => {
      const into = Buffer.alloc(length)
      await dev.read(offset, length, into)
      return { offset, into }
    }))
    for (const { offset, into } of reads) t.true(into.equals(model.subarray(offset, offset + into.length)), `read at ${offset}+${into.length}`)
    const chunk = 64 * KiB
    t.true((await dev.hash(0, SIZE, chunk)).equals(digestsOf(model, chunk)), 'HASH of the whole export')
    t.true((await dev.hash(12288, 8192, 4096)).equals(digestsOf(model.subarray(12288, 20480), 4096)), 'HASH of a small range')
    t.true(fs.readFileSync(path.join(dir, `${exportName}.img`)).equals(model), 'the exported file holds what was written')
  } finally {
    await dev.close()
  }
}

const SETTINGS: Array<[string, Partial<Record<Switch, string>>]> = [
  ['no switch (the fast paths)', {}],
  ['DST_WS_TAP=0', { DST_WS_TAP: '0' }],
  ['DST_DIRECT_READ=0', { DST_DIRECT_READ: '0' }],
  ['DST_WS_SEND=1', { DST_WS_SEND: '1' }],
  ['all three (plain ws)', { DST_WS_TAP: '0', DST_DIRECT_READ: '0', DST_WS_SEND: '1' }],
]

for (const [title, env] of SETTINGS) {
  for (const exportName of ['plain', 'digested']) {
    test.serial(`${title}: write, read, flush and HASH round trips on a ${exportName === 'digested' ? 'wire-digest' : 'plain'} export`, async t => {
      await roundTrips(t, exportName, env)
    })
  }
}
