// A seeded, bounded fuzz of every edge of a node (issue 12): the NBD handshake and transmission phases, native
// frames, and every HTTP route, with random bytes and structured mutations of valid messages (test/helpers/mutate.ts).
// The seeds are fixed, so a failure replays; each section is bounded in cases and time. Afterwards the node must still
// be up, give every pool buffer back, serve a normal client correctly (data written is read back), and its memory must
// stay within a bound.

import test from 'ava'
import * as fs from 'node:fs'
import * as net from 'node:net'
import { randomBytes } from 'node:crypto'
import { startNode, tempDir, type RunningNode } from '../helpers/node-process'
import { prng, between, seededBytes } from '../helpers/random'
import { mutate, pieces } from '../helpers/mutate'
import { NBD_CMD, NbdTestClient, nbdHandshake, nbdOption, nbdRequest } from '../helpers/raw-nbd'
import { RawClient, frame } from '../helpers/raw-client'
import { Op, REQUEST_HEADER_SIZE } from '../../export/native/codec'
import { RemoteDevice } from '../../export/native/remote-device'
import { until } from '../helpers/wait'

const KiB = 1024
const MiB = 1024 * KiB
const SIZE = 16 * MiB
/** Each section stops after its cases or this long, whichever comes first. */
const SECTION_MS = 6000

let node: RunningNode
let nbdPort: number
let dir: string
let rssBefore = 0

async function memory (kind = 'rss'): Promise<number> {
  const text = await (await fetch(`${node.http}/metrics`)).text()
  const m = new RegExp(`^dst_memory_bytes\\{[^}]*kind="${kind}"\\} (\\d+)`, 'm').exec(text)
  if (m === null) throw new Error(`no dst_memory_bytes ${kind} in /metrics`)
  return Number(m[1])
}

test.before(async () => {
  dir = tempDir('dst-fuzz-')
  node = await startNode(dir, {
    name: 'fuzz', nbd: '127.0.0.1:0', dataDir: './state',
    pool: { count: 32, size: '1MiB' },
    devices: {
      disk: { type: 'file', path: './disk.img', size: SIZE },
      ro: { type: 'file', path: './ro.img', size: 1 * MiB },
      a: { type: 'memory', size: 4 * MiB },
      b: { type: 'memory', size: 4 * MiB },
      spare: { type: 'memory', size: 4 * MiB },
      m: { type: 'mirror', members: ['a', 'b'] },
    },
    exports: [{ device: 'disk' }, { device: 'ro', readOnly: true }, { device: 'spare', name: 'tok', token: 'fuzz-token' }],
  })
  nbdPort = Number(/nbd {5}nbd:\/\/127\.0\.0\.1:(\d+)\//.exec(node.output())?.[1])
  rssBefore = await memory()
})

test.after.always(async () => {
  await node?.kill()
  if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true })
})

/** Runs `cases` cases, `parallel` at a time, until done or SECTION_MS passed; returns how many ran. */
async function run (cases: number, parallel: number, one: (i: number) => Promise<void>): Promise<number> {
  const deadline = Date.now() + SECTION_MS
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < cases && Date.now() < deadline) await one(next++)
  }
  await Promise.all(Array.from({ length: parallel }, worker))
  return next
}

/** Sends `parts` to the NBD port one write each, reads whatever comes, and goes after `linger` ms or at close. */
function nbdCase (parts: Buffer[], linger: number): Promise<number> {
  return new Promise(resolve => {
    const s = net.connect(nbdPort, '127.0.0.1')
    let got = 0
    const done = (): void => { clearTimeout(timer); s.destroy(); resolve(got) }
    const timer = setTimeout(done, linger)
    s.on('data', c => { got += c.length })
    s.on('error', () => {})
    s.on('close', done)
    s.on('connect', () => { for (const p of parts) s.write(p) })
  })
}

function infoData (rand: () => number): Buffer {
  const name = ['disk', 'ro', 'tok', '', 'nope', 'x'.repeat(between(rand, 0, 300))][between(rand, 0, 5)]
  const n = Buffer.from(name)
  const count = between(rand, 0, 40)
  const b = Buffer.alloc(4 + n.length + 2 + 2 * count)
  b.writeUInt32BE(n.length, 0)
  n.copy(b, 4)
  b.writeUInt16BE(count, 4 + n.length)
  for (let i = 0; i < count; i++) b.writeUInt16BE(between(rand, 0, 5), 4 + n.length + 2 + 2 * i)
  return b
}

test.serial('NBD handshake: random bytes and mutated negotiations (seed 1201) close or answer; nothing else', async t => {
  const rand = prng(1201)
  const ran = await run(400, 8, async () => {
    const options: Buffer[] = []
    for (let k = between(rand, 1, 5); k > 0; k--) {
      const option = [1, 2, 3, 6, 7, 5, 8, 9, between(rand, 0, 0xffff)][between(rand, 0, 8)]
      const data = option === 6 || option === 7 ? infoData(rand) : option === 1 ? Buffer.from(['disk', 'ro', 'tok', 'nope'][between(rand, 0, 3)]) : seededBytes(rand, between(rand, 0, 8))
      options.push(nbdOption(option, data))
    }
    const valid = Buffer.concat([Buffer.from([0, 0, 0, between(rand, 0, 3)]), ...options])
    const bytes = rand() < 0.15 ? seededBytes(rand, between(rand, 1, 2000)) : rand() < 0.3 ? valid : mutate(rand, valid, 6)
    await nbdCase(pieces(rand, bytes), 60)
  })
  t.log(`${ran} handshakes`)
  t.is(node.proc.exitCode, null)
})

test.serial('NBD transmission: mutated request streams after a good handshake (seed 1202) are answered or cut; nothing else', async t => {
  const rand = prng(1202)
  const ran = await run(400, 8, async () => {
    const parts: Buffer[] = [nbdHandshake(rand() < 0.8 ? 'disk' : 'ro')]
    for (let k = between(rand, 1, 12); k > 0; k--) {
      const type = [NBD_CMD.READ, NBD_CMD.WRITE, NBD_CMD.FLUSH, NBD_CMD.TRIM, NBD_CMD.WRITE_ZEROES, NBD_CMD.DISC, between(rand, 0, 20)][between(rand, 0, 6)]
      const length = [0, 1, 512, 4096, 65536, MiB, MiB + 1, between(rand, 0, 2 * MiB)][between(rand, 0, 7)]
      const offset = rand() < 0.8 ? between(rand, 0, SIZE / 512) * 512 : [SIZE, SIZE - 1, 2 ** 40, 2 ** 53][between(rand, 0, 3)]
      const header = nbdRequest(type, k, offset, length, rand() < 0.2 ? between(rand, 0, 0xffff) : 0)
      parts.push(rand() < 0.25 ? mutate(rand, header, 2) : header)
      // A WRITE's payload: whole, short, or none (then the next header lands in it).
      if (type === NBD_CMD.WRITE && length <= MiB + 1) parts.push(seededBytes(rand, rand() < 0.8 ? length : between(rand, 0, length)))
    }
    await nbdCase(pieces(rand, Buffer.concat(parts), 6), 80)
  })
  t.log(`${ran} request streams`)
  t.is(node.proc.exitCode, null)
})

test.serial('native frames: mutated and random frames, messages cut mid-frame, text (seed 1203); every connection is answered or closed with a code', async t => {
  const rand = prng(1203)
  const ran = await run(300, 6, async () => {
    const name = ['disk', 'ro', 'disk', 'tok'][between(rand, 0, 3)]
    let c: RawClient
    try {
      c = await RawClient.connect(node.port, name, name === 'tok' && rand() < 0.5 ? { authorization: 'Bearer fuzz-token' } : {}, 3000)
    } catch {
      return // refused at the upgrade (the token export without its token)
    }
    try {
      for (let k = between(rand, 1, 6); k > 0; k--) {
        const op = [Op.READ, Op.WRITE, Op.FLUSH, Op.TRIM, Op.PING, Op.HASH, between(rand, 0, 255)][between(rand, 0, 6)]
        const length = [0, 1, 4096, 65536, MiB, MiB + 1, between(rand, 0, 2 * MiB)][between(rand, 0, 6)]
        const offset = rand() < 0.8 ? between(rand, 0, SIZE / 4096) * 4096 : [SIZE, 2 ** 40, 2 ** 53 - 1][between(rand, 0, 2)]
        const payload = op === Op.WRITE && length <= MiB + 1 ? seededBytes(rand, length) : undefined
        const f = frame(op, k, offset, length, payload, between(rand, 0, 3), op === Op.HASH ? [4096, 65536, 3, 0][between(rand, 0, 3)] : 0)
        const roll = rand()
        if (roll < 0.05) c.send('text is not the protocol')
        else if (roll < 0.15) c.send(seededBytes(rand, between(rand, 1, 200)))
        else if (roll < 0.4) c.send(mutate(rand, f.subarray(0, Math.min(f.length, REQUEST_HEADER_SIZE + 64)), 3))
        else c.send(f)
      }
      await Promise.race([c.closed, new Promise(resolve => setTimeout(resolve, 80))])
    } finally {
      c.terminate()
    }
  })
  t.log(`${ran} native connections`)
  t.is(node.proc.exitCode, null)
})

test.serial('HTTP: random methods, paths (bad percent-escapes among them), headers and bodies on every route, and raw garbage (seed 1204); every request is answered', async t => {
  const rand = prng(1204)
  const word = (): string => ['m', 'a', 'b', 'spare', 'nope', 'disk', '%', '%E0%A4%A', '%zz', '..', '%2F', '%00', 'x'.repeat(between(rand, 1, 100)), encodeURIComponent(String.fromCharCode(between(rand, 0, 0xd7ff)))][between(rand, 0, 13)]
  const bodies = (): string => [
    '', '{}', '[]', 'null', '{"device":"spare"}', '{"device":"nope"}', '{"device":"dst://127.0.0.1:1/x"}', '{"wait":true}',
    '{"repair":"yes"}', '{"rate":-1}', '{"from":""}', '{', seededBytes(rand, between(rand, 1, 300)).toString('latin1'),
    JSON.stringify({ device: word(), name: word(), export: word(), readOnly: rand() < 0.5 }),
  ][between(rand, 0, 13)]
  const statuses = new Map<number, number>()
  const ran = await run(600, 6, async () => {
    // Mostly the admin route (it parses the most), the rest spread over the others and unknown ones.
    const method = rand() < 0.6 ? 'POST' : ['GET', 'POST', 'PUT', 'DELETE', 'HEAD', 'OPTIONS'][between(rand, 0, 5)]
    const path = rand() < 0.6
      ? [`/arrays/${word()}/${word()}`, `/arrays/m/${['add', 'remove', 'verify', 'nope', 'split'][between(rand, 0, 4)]}`, `/arrays/${word()}/add`][between(rand, 0, 2)]
      : ['/status', '/metrics', `/${word()}`, `/arrays/${word()}`, `/status?${word()}`, '/', '/arrays//'][between(rand, 0, 6)]
    const headers: Record<string, string> = {}
    if (rand() < 0.3) headers.authorization = ['Bearer ', 'Bearer x', 'Basic abc', seededBytes(rand, 20).toString('hex')][between(rand, 0, 3)]
    if (rand() < 0.2) headers['content-type'] = 'application/json'
    // Never a change that would last: remove and split are only ever asked of legs that do not exist.
    const body = method === 'GET' || method === 'HEAD' ? undefined : bodies().replace('"spare"', path.endsWith('/add') ? '"spare"' : '"nope"')
    try {
      const res = await fetch(`${node.http}${path}`, { method, headers, body, signal: AbortSignal.timeout(5000) })
      await res.arrayBuffer()
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1)
    } catch (err) {
      // fetch refuses some requests itself (a bad URL); a connection the node dropped would show as 'fetch failed'.
      if ((err as Error).message === 'fetch failed') throw new Error(`${method} ${path}: the node dropped the connection`)
    }
    if (rand() < 0.1) {
      // Raw bytes at the HTTP port: a mutated request line or plain garbage.
      const raw = rand() < 0.5 ? mutate(rand, Buffer.from(`POST /arrays/${word()}/add HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}`), 4) : seededBytes(rand, between(rand, 1, 500))
      await new Promise<void>(resolve => {
        const s = net.connect(node.port, '127.0.0.1', () => s.write(raw))
        const done = (): void => { clearTimeout(timer); s.destroy(); resolve() }
        const timer = setTimeout(done, 100)
        s.on('data', () => {})
        s.on('error', done)
        s.on('close', done)
      })
    }
  })
  t.log(`${ran} HTTP requests; statuses ${JSON.stringify(Object.fromEntries(statuses))}`)
  t.false(statuses.has(500), 'no route failed inside (a 500 is a bug found)')
  t.is(node.proc.exitCode, null)
})

test.serial('after the fuzzing the node is up, every pool buffer and connection is back, a normal client reads back what it wrote, and memory stayed bounded', async t => {
  t.is(node.proc.exitCode, null, 'the node process is still running')
  await until('every pool buffer back and every connection gone', async () => {
    const s = await node.status()
    return s.pool.free === s.pool.count && s.exports.every((e: { connections: number }) => e.connections === 0)
  }, 15000)
  const data = randomBytes(3 * MiB + 512)
  const nbd = await NbdTestClient.connect(nbdPort, 'disk')
  t.teardown(() => nbd.close())
  for (let at = 0; at < data.length; at += MiB) {
    const part = data.subarray(at, Math.min(data.length, at + MiB))
    t.is((await nbd.request(NBD_CMD.WRITE, 8 * MiB + at, part.length, part)).errno, 0)
  }
  const back: Buffer[] = []
  for (let at = 0; at < data.length; at += MiB) back.push((await nbd.request(NBD_CMD.READ, 8 * MiB + at, Math.min(MiB, data.length - at))).data)
  t.true(Buffer.concat(back).equals(data), 'NBD reads back what it wrote')
  const dev = await RemoteDevice.open({ host: '127.0.0.1', port: node.port, export: 'disk' })
  t.teardown(() => dev.close())
  const viaDst = Buffer.alloc(data.length)
  await dev.read(8 * MiB, data.length, viaDst)
  t.true(viaDst.equals(data), 'and so does the native protocol')
  const rss = await memory()
  t.log(`RSS ${(rssBefore / MiB).toFixed(0)} MiB before the fuzzing, ${(rss / MiB).toFixed(0)} MiB after`)
  t.true(rss - rssBefore < 200 * MiB, `RSS grew ${((rss - rssBefore) / MiB).toFixed(0)} MiB`)
})
