// The export server at the protocol edge (export/server.ts, node/listener.ts): a real node process fed bad input by
// a raw `ws` client. Every bad frame is either answered with an errno or closes the connection with a reason, access
// rules refuse at the upgrade before any data moves, and the node keeps serving well-behaved clients afterwards.
// The tests share one node and run serially, so the last one sees the node after all the abuse.

import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { randomBytes } from 'node:crypto'
import { startNode, tempDir, type RunningNode } from '../helpers/node-process'
import { RawClient, attemptUpgrade, frame, type Reply } from '../helpers/raw-client'
import { HandshakeFlag, Op, REQUEST_HEADER_SIZE, REQUEST_MAGIC } from '../../export/codec'
import { RemoteDevice } from '../../export/remote-device'

// Wire error numbers as export/PROTOCOL.md lists them (not imported, so the test checks the source's table too).
const EAGAIN = 11
const EINVAL = 22
const EROFS = 30
const EOVERFLOW = 75
const ENOTSUP = 95

const KiB = 1024
const MAX_REQUEST = 64 * KiB
const DISK_SIZE = 1024 * KiB
const RO_SIZE = 256 * KiB
const TOKEN = 's3cret-token'

let node: RunningNode
let dir: string
let diskPath: string
let roPath: string

test.before(async () => {
  dir = tempDir('dst-server-')
  diskPath = path.join(dir, 'disk.img')
  roPath = path.join(dir, 'ro.img')
  // Random contents, so "unchanged" means something and reads can be checked against the file.
  fs.writeFileSync(diskPath, randomBytes(DISK_SIZE))
  fs.writeFileSync(roPath, randomBytes(RO_SIZE))
  node = await startNode(dir, {
    name: 'srv',
    pool: { count: 256, size: '64KiB' },
    devices: {
      disk: { type: 'file', path: diskPath },
      ro: { type: 'file', path: roPath },
      tok: { type: 'memory', size: '1MiB' },
      far: { type: 'memory', size: '1MiB' },
    },
    exports: [
      { device: 'disk' },
      { device: 'ro', readOnly: true },
      { device: 'tok', token: TOKEN },
      { device: 'far', allow: ['10.0.0.0/8'] },
    ],
  })
})

test.after.always(async () => {
  await node?.kill()
})

async function open (t: { teardown: (fn: () => void) => void }, name = 'disk', headers: Record<string, string> = {}): Promise<RawClient> {
  const c = await RawClient.connect(node.port, name, headers)
  t.teardown(() => c.terminate())
  return c
}

function fileBytes (file: string, offset: number, length: number): Buffer {
  return fs.readFileSync(file).subarray(offset, offset + length)
}

test.serial('the handshake describes the export: size, block size, request limits, flags', async t => {
  const c = await open(t)
  t.is(c.handshake.version, 2)
  t.is(c.handshake.size, DISK_SIZE)
  t.not(c.handshake.flags & HandshakeFlag.HASH, 0)
  t.is(c.handshake.flags & HandshakeFlag.DIGEST, 0, 'wire digests are off unless the export asks for them')
  t.is(c.handshake.hashAlgorithm, 'blake2b512')
  t.is(c.handshake.digestSize, 64)
  t.is(c.handshake.blockSize, 4096)
  t.is(c.handshake.maxRequest, MAX_REQUEST)
  t.is(c.handshake.maxInFlight, 128)
  t.is(c.handshake.flags & HandshakeFlag.READ_ONLY, 0)
  t.not(c.handshake.flags & HandshakeFlag.FLUSH, 0)
  t.regex(c.handshake.identity, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/)
  const ro = await open(t, 'ro')
  t.is(ro.handshake.size, RO_SIZE)
  t.not(ro.handshake.flags & HandshakeFlag.READ_ONLY, 0)
  t.is(ro.handshake.flags & HandshakeFlag.TRIM, 0)
})

test.serial('a message that ends inside a request header closes the connection with 1002 and a reason', async t => {
  const c = await open(t)
  c.send(frame(Op.READ, 1, 0, 512).subarray(0, 20))
  const closed = await c.waitClosed()
  t.is(closed.code, 1002)
  t.regex(closed.reason, /truncated/)
  t.is(c.replies.length, 0)

  // Same for a WRITE whose payload is cut short inside its message.
  const w = await open(t)
  w.send(frame(Op.WRITE, 2, 0, 4096, randomBytes(4096)).subarray(0, REQUEST_HEADER_SIZE + 1000))
  const closedW = await w.waitClosed()
  t.is(closedW.code, 1002)
  t.regex(closedW.reason, /truncated/)
  t.is(w.replies.length, 0)
})

test.serial('a request with a bad magic closes the connection with 1002', async t => {
  const c = await open(t)
  const bad = frame(Op.READ, 1, 0, 512)
  bad.writeUInt32LE(0xdeadbeef, 0)
  c.send(bad)
  const closed = await c.waitClosed()
  t.is(closed.code, 1002)
  t.regex(closed.reason, /magic/)
  t.is(c.replies.length, 0)

  // A good request followed by a bad one in the same message: the good one may be answered, then the close.
  const d = await open(t)
  const bad2 = frame(Op.READ, 3, 0, 512)
  bad2.writeUInt32LE(REQUEST_MAGIC + 1, 0)
  d.send(Buffer.concat([frame(Op.PING, 2, 0, 0), bad2]))
  t.is((await d.waitClosed()).code, 1002)
  t.false(d.replies.some(r => r.tagLo === 3))
})

test.serial('a text message closes the connection', async t => {
  const c = await open(t)
  c.send('READ 0 512')
  const closed = await c.waitClosed()
  t.is(closed.code, 1007)
  t.regex(closed.reason, /text/)
  t.is(c.replies.length, 0)
})

test.serial('an unknown opcode is answered ENOTSUP and the connection keeps working', async t => {
  const c = await open(t)
  const r = await c.call(77, 11, 0, 512)
  t.is(r.errno, ENOTSUP)
  t.is(r.op, 77)
  t.is(r.length, 0)
  const read = await c.call(Op.READ, 12, 8192, 4096)
  t.is(read.errno, 0)
  t.is(read.op, Op.READ)
  t.true(read.payload.equals(fileBytes(diskPath, 8192, 4096)))
  // TRIM on a file device that cannot trim: also ENOTSUP, also not fatal.
  t.is((await c.call(Op.TRIM, 13, 0, 4096)).errno, ENOTSUP)
  t.is((await c.call(Op.PING, 14, 0, 0)).errno, 0)
  t.false(c.isClosed)
})

test.serial('a READ past the end is answered EINVAL', async t => {
  const c = await open(t)
  const cases: Array<[number, number]> = [
    [DISK_SIZE, 1], // starts at the end
    [DISK_SIZE - 100, 4096], // straddles the end
    [2 ** 60, 512], // far beyond
  ]
  let tag = 100
  for (const [offset, length] of cases) {
    const r = await c.call(Op.READ, tag++, offset, length)
    t.is(r.errno, EINVAL, `READ ${offset}+${length}`)
    t.is(r.length, 0)
  }
  // The largest u64 offset (not representable as a JS number, so the bytes are set by hand).
  const huge = frame(Op.READ, tag, 0, 512)
  huge.writeUInt32LE(0xfffffe00, 16)
  huge.writeUInt32LE(0xffffffff, 20)
  const hugeTag = tag++
  c.send(huge)
  const hugeReply = (await c.waitReplies(c.replies.length + 1)).find(r => r.tagLo === hugeTag)
  t.is(hugeReply?.errno, EINVAL, 'READ at offset 2^64-512')
  // The last byte is still readable.
  const last = await c.call(Op.READ, tag++, DISK_SIZE - 1, 1)
  t.is(last.errno, 0)
  t.true(last.payload.equals(fileBytes(diskPath, DISK_SIZE - 1, 1)))
})

test.serial('a WRITE past the end is answered EINVAL and changes nothing, inside or outside the range', async t => {
  const before = fs.readFileSync(diskPath)
  const c = await open(t)
  const r = await c.call(Op.WRITE, 1, DISK_SIZE - 1000, 4096, randomBytes(4096))
  t.is(r.errno, EINVAL)
  const r2 = await c.call(Op.WRITE, 2, DISK_SIZE, 512, randomBytes(512))
  t.is(r2.errno, EINVAL)
  t.true(fs.readFileSync(diskPath).equals(before))
  t.false(c.isClosed)
})

test.serial('a WRITE to a read-only export is answered EROFS and the file is unchanged', async t => {
  const before = fs.readFileSync(roPath)
  const c = await open(t, 'ro')
  t.is((await c.call(Op.WRITE, 1, 0, 4096, randomBytes(4096))).errno, EROFS)
  t.is((await c.call(Op.TRIM, 2, 0, 4096)).errno, EROFS)
  const read = await c.call(Op.READ, 3, 4096, 4096)
  t.is(read.errno, 0)
  t.true(read.payload.equals(before.subarray(4096, 8192)))
  t.true(fs.readFileSync(roPath).equals(before))
})

test.serial('a READ larger than maxRequest is answered EOVERFLOW', async t => {
  const c = await open(t)
  const r = await c.call(Op.READ, 1, 0, MAX_REQUEST + 512)
  t.is(r.errno, EOVERFLOW)
  t.is(r.length, 0)
  const ok = await c.call(Op.READ, 2, 0, MAX_REQUEST)
  t.is(ok.errno, 0)
  t.is(ok.payload.length, MAX_REQUEST)
  t.true(ok.payload.equals(fileBytes(diskPath, 0, MAX_REQUEST)))
})

test.serial('a WRITE larger than maxRequest (payload sent) is answered EOVERFLOW and the connection stays usable', async t => {
  const before = fs.readFileSync(diskPath)
  const c = await open(t)
  const r = await c.call(Op.WRITE, 1, 0, MAX_REQUEST + 4096, randomBytes(MAX_REQUEST + 4096))
  t.is(r.errno, EOVERFLOW)
  t.true(fs.readFileSync(diskPath).equals(before))
  // The payload was consumed as part of the refused frame: the next request parses and works.
  const data = randomBytes(8192)
  t.is((await c.call(Op.WRITE, 2, 20480, 8192, data)).errno, 0)
  const read = await c.call(Op.READ, 3, 20480, 8192)
  t.is(read.errno, 0)
  t.true(read.payload.equals(data))
  t.true(fileBytes(diskPath, 20480, 8192).equals(data))
})

test.serial('a wrong token is refused with HTTP 401 and a reason before any data', async t => {
  const r = await attemptUpgrade(node.port, 'tok', { authorization: 'Bearer wrong' })
  t.is(r.status, 401)
  t.regex(r.body, /wrong token/)
  t.false(r.opened)
  t.is(r.messages, 0)
  // The right token gets in (so the refusal above was about the token).
  const c = await open(t, 'tok', { authorization: `Bearer ${TOKEN}` })
  t.is(c.handshake.size, 1024 * KiB)
})

test.serial('a missing token is refused with HTTP 401', async t => {
  const r = await attemptUpgrade(node.port, 'tok')
  t.is(r.status, 401)
  t.regex(r.body, /needs a token/)
  t.false(r.opened)
  const r2 = await attemptUpgrade(node.port, 'tok', { authorization: `Basic ${TOKEN}` })
  t.is(r2.status, 401)
  t.false(r2.opened)
})

test.serial('an address outside the allow list is refused with HTTP 403', async t => {
  const r = await attemptUpgrade(node.port, 'far')
  t.is(r.status, 403)
  t.regex(r.body, /allow list/)
  t.regex(r.body, /127\.0\.0\.1/)
  t.false(r.opened)
  t.is(r.messages, 0)
})

test.serial('an unknown export is refused with HTTP 404', async t => {
  const r = await attemptUpgrade(node.port, 'nosuch')
  t.is(r.status, 404)
  t.regex(r.body, /nosuch/)
  t.false(r.opened)
})

test.serial('PING and FLUSH are answered; a PING with a length is EINVAL', async t => {
  const c = await open(t)
  const ping = await c.call(Op.PING, 42, 0, 0)
  t.deepEqual([ping.op, ping.tagLo, ping.errno, ping.length], [Op.PING, 42, 0, 0])
  const flush = await c.call(Op.FLUSH, 43, 0, 0)
  t.deepEqual([flush.op, flush.errno], [Op.FLUSH, 0])
  t.is((await c.call(Op.PING, 44, 0, 512)).errno, EINVAL)
})

test.serial('many requests in flight on one connection are each answered once, matched by tag', async t => {
  const c = await open(t)
  const n = 60
  const before = fs.readFileSync(diskPath)
  interface Sent { op: number, tagLo: number, tagHi: number, offset: number, data?: Buffer }
  const sent: Sent[] = []
  // Tags that are not in order and use both halves, so matching cannot work by position.
  const tagOf = (i: number): number => ((i * 2654435761) >>> 0) % 1000003
  for (let i = 0; i < n; i++) {
    sent.push({ op: Op.WRITE, tagLo: tagOf(2 * i), tagHi: i + 1, offset: 512 * KiB + i * 4096, data: randomBytes(4096) })
    sent.push({ op: Op.READ, tagLo: tagOf(2 * i + 1), tagHi: 0xffffffff - i, offset: i * 4096 })
  }
  sent.push({ op: Op.PING, tagLo: 7, tagHi: 7, offset: 0 })
  const frames = sent.map(s => frame(s.op, s.tagLo, s.offset, s.op === Op.PING ? 0 : 4096, s.data, s.tagHi))
  // Half in one message (many frames back to back), half as one message each, all in the same tick.
  const half = Math.floor(frames.length / 2)
  c.send(Buffer.concat(frames.slice(0, half)))
  for (const f of frames.slice(half)) c.send(f)
  const replies = await c.waitReplies(sent.length)
  await new Promise(resolve => setTimeout(resolve, 100)) // any duplicate reply would arrive by now
  t.is(c.replies.length, sent.length)
  const byTag = new Map<string, Reply>()
  for (const r of replies) {
    const key = `${r.tagLo}:${r.tagHi}`
    t.false(byTag.has(key), `duplicate reply for tag ${key}`)
    byTag.set(key, r)
  }
  for (const s of sent) {
    const r = byTag.get(`${s.tagLo}:${s.tagHi}`)
    if (r === undefined) { t.fail(`no reply for tag ${s.tagLo}:${s.tagHi}`); continue }
    t.is(r.op, s.op)
    t.is(r.errno, 0)
    if (s.op === Op.READ) t.true(r.payload.equals(before.subarray(s.offset, s.offset + 4096)), `READ at ${s.offset}`)
    else t.is(r.length, 0)
  }
  const after = fs.readFileSync(diskPath)
  for (const s of sent) if (s.data !== undefined) t.true(after.subarray(s.offset, s.offset + 4096).equals(s.data), `WRITE at ${s.offset}`)
})

test.serial('requests beyond maxInFlight sent at once are answered EAGAIN, the rest served; none is lost', async t => {
  const c = await open(t)
  const max = c.handshake.maxInFlight
  const n = max + 72
  // All in one message: the node decodes them in one go, before any read can complete.
  c.send(Buffer.concat(Array.from({ length: n }, (_, i) => frame(Op.READ, 5000 + i, (i % 200) * 512, 512))))
  const replies = await c.waitReplies(n)
  const tags = new Set(replies.map(r => r.tagLo))
  t.is(tags.size, n, 'every request answered once')
  t.is(replies.filter(r => r.errno === 0).length, max)
  t.is(replies.filter(r => r.errno === EAGAIN).length, n - max)
  // The connection is fine afterwards.
  t.is((await c.call(Op.READ, 1, 0, 512)).errno, 0)
})

// Regression (was a bug in export/server.ts, ExportSession.onRequest/payloadTarget): a WRITE of length 0 carries no payload, so the
// decoder never calls payloadTarget for it and `writeErrno`/`writeSlot` are left from the previous WRITE. On a fresh
// session (writeErrno 0, even on a read-only export) onRequest calls write() with `takeWriteSlot()` === null and
// throws a TypeError: the node used to die of it; since the listener catches handler exceptions it "only" drops the
// connection with 1011. After a refused WRITE the zero-length one inherits that refusal's errno instead. Runs on its
// own node so the failure spares the others.
test.serial('a zero-length WRITE is answered (EROFS on a read-only export) and does not crash the node', async t => {
  const zdir = tempDir('dst-server-zero-')
  const zfile = path.join(zdir, 'z.img')
  fs.writeFileSync(zfile, randomBytes(64 * KiB))
  const z = await startNode(zdir, {
    name: 'zero',
    devices: { z: { type: 'file', path: zfile } },
    exports: [{ device: 'z' }, { device: 'z', name: 'zro', readOnly: true }],
  })
  t.teardown(() => z.kill())
  const ro = await RawClient.connect(z.port, 'zro')
  t.teardown(() => ro.terminate())
  const roReply = await ro.call(Op.WRITE, 1, 0, 0).catch((err: Error) => err)
  t.is((roReply as Reply).errno, EROFS, `read-only export: ${String((roReply as Error).message ?? '')}`)
  const c = await RawClient.connect(z.port, 'z').catch((err: Error) => err)
  if (c instanceof Error) { t.fail(`node gone after a zero-length WRITE: ${c.message}\n${z.output()}`); return }
  t.teardown(() => c.terminate())
  const r = await c.call(Op.WRITE, 2, 4096, 0).catch((err: Error) => err)
  t.false(r instanceof Error, `zero-length WRITE: ${String((r as Error).message)}`)
  t.is((r as Reply).errno, 0)
  t.is((await c.call(Op.PING, 3, 0, 0)).errno, 0)
  t.is(z.proc.exitCode, null, 'node process is still running')
})

test.serial('after all the bad input the node still serves a well-behaved client', async t => {
  t.is(node.proc.exitCode, null, 'node process is still running')
  const dev = await RemoteDevice.open({ host: '127.0.0.1', port: node.port, export: 'disk' })
  t.teardown(() => dev.close())
  const data = randomBytes(200 * KiB) // larger than maxRequest: split into several requests
  await dev.write(300 * KiB, data)
  const back = Buffer.alloc(data.length)
  await dev.read(300 * KiB, data.length, back)
  t.true(back.equals(data))
  t.true(fileBytes(diskPath, 300 * KiB, data.length).equals(data))
  // The abuse was counted where an operator would look.
  const metrics = await (await fetch(`${node.http}/metrics`)).text()
  const value = (re: RegExp): number => Number(re.exec(metrics)?.[1] ?? NaN)
  t.true(value(/dst_protocol_errors_total\{node="srv",export="disk"\} (\d+)/) >= 3)
  t.true(value(/dst_connections_refused_total\{node="srv",export="tok"\} (\d+)/) >= 3)
  t.true(value(/dst_connections_refused_total\{node="srv",export="far"\} (\d+)/) >= 1)
  t.true(value(/dst_request_errors_total\{node="srv",export="disk",op="other"\} (\d+)/) >= 1)
})
