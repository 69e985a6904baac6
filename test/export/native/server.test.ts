// ExportSession (export/native/server.ts) in process, over a recording transport instead of a WebSocket: error replies
// for a device whose HASH fails, digest checking, replies of one turn leaving together, a transport that throws, the
// session holding replies while its transport is full, and the close of a client that keeps sending meanwhile.
// The same server fed bad input through a real node is test/e2e/native-server.test.ts.

import test from 'ava'
import { createHash, randomBytes } from 'node:crypto'
import { frame } from '../../helpers/raw-client'
import { EXTENT_ENTRY_SIZE, HandshakeFlag, MAX_EXTENTS_PER_REPLY, Op, REPLY_HEADER_SIZE, parseHandshake, parseReplyHeader } from '../../../export/native/codec'
import type { Extent } from '../../../node/core/device'
import { ExportSession, type SessionTransport } from '../../../export/native/server'
import { ExportMetrics, type ServedExport } from '../../../export/served'
import { MemoryDevice, PAGE_SIZE } from '../../../node/devices/memory-device'
import { BufferPool } from '../../../node/core/pool'
import { WriteLease } from '../../../node/core/lease'
import { DstError } from '../../../node/core/errors'
import { closeDefaultHasher } from '../../../node/core/hasher'
import { digestsOf } from '../../helpers/digests'

// Wire error numbers as export/native/PROTOCOL.md lists them (not imported, so the test checks the source's table too).
const EIO = 5
const EAGAIN = 11
const EINVAL = 22
const ENOSPC = 28
const EBADMSG = 74

const KiB = 1024
const MAX_REQUEST = 64 * KiB

test.after.always(async () => { await closeDefaultHasher() })

const blake = (data: Uint8Array): Buffer => createHash('blake2b512').update(data).digest()

/** A WRITE frame on a DIGEST export: header, payload, then `digest` (the payload's own unless a test lies). */
function digestWrite (tag: number, offset: number, data: Buffer, digest: Buffer = blake(data)): Buffer {
  return frame(Op.WRITE, tag, offset, data.length, Buffer.concat([data, digest]))
}

/** A transport for an in-process session: keeps every message the session sends, as the node's WebSocket would. */
class RecordingTransport implements SessionTransport {
  readonly messages: Buffer[] = []
  ended: { code: number, reason: string } | null = null
  send (message: Uint8Array): void { this.messages.push(Buffer.from(message)) }
  sendParts (first: Uint8Array, last: Uint8Array): void { this.messages.push(Buffer.concat([first, last])) }
  cork (fn: () => void): void { fn() }
  end (code: number, reason: string): void { this.ended = { code, reason } }
  /** What the fake "client" has not taken; a test sets it to stage a client that does not read. */
  buffered = 0
  drain: (() => void) | null = null
  bufferedAmount (): number { return this.buffered }
  onDrain (fn: () => void): void { this.drain = fn }

  /** Waits (bounded) until `count` messages have been sent in total. */
  async waitMessages (count: number, timeout = 10000): Promise<Buffer[]> {
    const deadline = Date.now() + timeout
    while (this.messages.length < count) {
      if (Date.now() > deadline) throw new Error(`${this.messages.length} of ${count} messages within ${timeout} ms`)
      await new Promise(resolve => setTimeout(resolve, 2))
    }
    return this.messages
  }
}

/** A memory device whose digests fail (a disk that cannot be read for a HASH), while reads and writes work. */
class HashFailingDevice extends MemoryDevice {
  failure: Error = new Error('cannot hash: the disk is on fire')
  /** Reject instead of throwing synchronously. */
  rejects = false
  protected override _hash (_offset: number, _length: number, _chunk: number): Promise<Buffer> {
    if (this.rejects) return Promise.reject(this.failure)
    throw this.failure
  }
}

interface InProcess { exp: ServedExport, session: ExportSession, transport: RecordingTransport }

/** An ExportSession of `device` on a fake transport: what the node's listener builds for one connection. */
function inProcessSession (device: MemoryDevice, digest = false): InProcess {
  const exp: ServedExport = {
    name: 'inproc', device, readOnly: false, allow: [], digest,
    metrics: new ExportMetrics(), lease: new WriteLease(1000), generation: 0,
  }
  const pool = new BufferPool({ count: 8, size: MAX_REQUEST, headroom: 32 })
  const transport = new RecordingTransport()
  const session = new ExportSession(exp, pool, { maxRequest: MAX_REQUEST, maxInFlight: 16, pingInterval: 10000 }, transport)
  return { exp, session, transport }
}

/** Sends one request to an in-process session and returns its reply header and the bytes after it. */
async function inProcessCall (p: InProcess, request: Buffer): Promise<{ op: number, errno: number, length: number, rest: Buffer }> {
  const before = p.transport.messages.length
  p.session.onMessage(request)
  const [message] = (await p.transport.waitMessages(before + 1)).slice(before)
  const h = parseReplyHeader(message, 0)
  return { op: h.op, errno: h.errno, length: h.length, rest: message.subarray(REPLY_HEADER_SIZE) }
}

test.serial('a device whose hash fails gets an error reply for that HASH (its errno, EIO for a plain error) and the session goes on', async t => {
  const device = new HashFailingDevice({ size: 256 * KiB })
  const p = inProcessSession(device)
  t.teardown(() => p.session.onClose())
  const hs = parseHandshake(p.session.handshake())
  t.not(hs.flags & HandshakeFlag.HASH, 0)
  const data = randomBytes(8192)
  t.is((await inProcessCall(p, frame(Op.WRITE, 1, 4096, data.length, data))).errno, 0)

  const failed = await inProcessCall(p, frame(Op.HASH, 2, 0, 16384, undefined, 0, 4096))
  t.deepEqual([failed.op, failed.errno, failed.length, failed.rest.length], [Op.HASH, EIO, 0, 0])
  t.is(p.transport.ended, null, 'a failed HASH does not end the connection')

  // A failure that carries an errno travels as that errno; a rejected promise is the same as a throw.
  device.failure = new DstError('DST_ERR_ENOSPC', 'no space to hash in', ENOSPC)
  device.rejects = true
  const enospc = await inProcessCall(p, frame(Op.HASH, 3, 0, 4096, undefined, 0, 4096))
  t.deepEqual([enospc.op, enospc.errno, enospc.length], [Op.HASH, ENOSPC, 0])

  // Everything else still works on the same session.
  const read = await inProcessCall(p, frame(Op.READ, 4, 4096, 8192))
  t.is(read.errno, 0)
  t.is(read.length, 8192)
  t.true(read.rest.equals(data))
  t.is((await inProcessCall(p, frame(Op.PING, 5, 0, 0))).errno, 0)
  t.is(p.transport.ended, null)
  t.is(p.session.pending, 0, 'no request is left in flight')
  t.is(p.exp.metrics.inFlight, 0)
  t.is(p.exp.metrics.requests.hash, 2)
  t.is(p.exp.metrics.errors.hash, 2)
  t.is(p.exp.metrics.bytesHashed, 0, 'failed HASHes hash nothing')

  // A healthy device on the same code path answers digests (so the failures above were the device's).
  const healthy = inProcessSession(new MemoryDevice({ size: 64 * KiB }))
  t.teardown(() => healthy.session.onClose())
  const ok = await inProcessCall(healthy, frame(Op.HASH, 6, 0, 8192, undefined, 0, 4096))
  t.is(ok.errno, 0)
  t.true(ok.rest.equals(digestsOf(Buffer.alloc(8192), 4096)))
})

// ---- wire digests (export "digest": true) ------------------------------------------------------------------------

test.serial('in a session, a digest mismatch leaves the device unchanged and bumps metrics.digestErrors', async t => {
  const device = new MemoryDevice({ size: 256 * KiB })
  device.data.set(randomBytes(device.size))
  const before = Buffer.from(device.data)
  const p = inProcessSession(device, true)
  t.teardown(() => p.session.onClose())
  t.not(parseHandshake(p.session.handshake()).flags & HandshakeFlag.DIGEST, 0)
  const data = randomBytes(MAX_REQUEST)
  const wrong = Buffer.from(blake(data))
  wrong[63] ^= 0x80
  const r = await inProcessCall(p, digestWrite(1, 0, data, wrong))
  t.deepEqual([r.op, r.errno, r.length], [Op.WRITE, EBADMSG, 0])
  t.is(p.exp.metrics.digestErrors, 1)
  t.is(p.exp.metrics.bytesWritten, 0)
  t.true(device.data.equals(before))
  const ok = await inProcessCall(p, digestWrite(2, 0, data))
  t.is(ok.errno, 0)
  t.is(p.exp.metrics.digestErrors, 1)
  t.true(device.data.subarray(0, MAX_REQUEST).equals(data))
  t.is(p.transport.ended, null)
})

test.serial('replies finished in one turn leave together: header-only ones as frames of one message, READs from their slots, which go back after', async t => {
  const device = new MemoryDevice({ size: 256 * KiB })
  const exp: ServedExport = {
    name: 'inproc', device, readOnly: false, allow: [], metrics: new ExportMetrics(), lease: new WriteLease(1000), generation: 0,
  }
  const pool = new BufferPool({ count: 16, size: MAX_REQUEST, headroom: 32 })
  let corks = 0
  const transport = new RecordingTransport()
  const cork = transport.cork.bind(transport)
  transport.cork = fn => { corks++; cork(fn) }
  const session = new ExportSession(exp, pool, { maxRequest: MAX_REQUEST, maxInFlight: 64, pingInterval: 10000 }, transport)
  t.teardown(() => session.onClose())
  const payloads = Array.from({ length: 10 }, () => randomBytes(4 * KiB))
  // One message: ten WRITEs, three READs of what the first three wrote, and one READ past the end (EINVAL).
  const message = Buffer.concat([
    ...payloads.map((p, i) => frame(Op.WRITE, 100 + i, i * 4 * KiB, p.length, p)),
    frame(Op.READ, 200, 0, 4 * KiB), frame(Op.READ, 201, 4 * KiB, 4 * KiB), frame(Op.READ, 202, 8 * KiB, 4 * KiB),
    frame(Op.READ, 203, 256 * KiB, 4 * KiB),
  ])
  session.onMessage(message)
  // The graceful stop's drain resolves only once the replies have left.
  await session.drain()
  const sent = transport.messages
  const headerOnly = sent.filter(m => m.length % REPLY_HEADER_SIZE === 0 && m.length > REPLY_HEADER_SIZE)
  t.is(headerOnly.length, 1, 'the header-only replies share one message')
  const frames = Array.from({ length: headerOnly[0].length / REPLY_HEADER_SIZE }, (_, i) => parseReplyHeader(headerOnly[0], i * REPLY_HEADER_SIZE))
  t.deepEqual(frames.filter(h => h.op === Op.WRITE).map(h => [h.tagLo, h.errno]).sort(), payloads.map((_, i) => [100 + i, 0]).sort())
  t.deepEqual(frames.filter(h => h.op === Op.READ).map(h => [h.tagLo, h.errno, h.length]), [[203, EINVAL, 0]])
  const reads = sent.filter(m => m !== headerOnly[0]).map(m => ({ h: parseReplyHeader(m, 0), data: m.subarray(REPLY_HEADER_SIZE) }))
  t.deepEqual(reads.map(r => r.h.tagLo).sort(), [200, 201, 202])
  for (const r of reads) t.true(r.data.equals(payloads[r.h.tagLo - 200]), `READ ${r.h.tagLo} carries what was written`)
  t.true(corks <= 2, `${corks} corked writes for 14 replies`)
  t.is(pool.available, 16, 'every pool buffer is back once its reply has left')
})

test.serial('a transport that throws on send ends that connection (1011) and gives every pool buffer back; nothing escapes', async t => {
  const device = new MemoryDevice({ size: 256 * KiB })
  const exp: ServedExport = {
    name: 'inproc', device, readOnly: false, allow: [], metrics: new ExportMetrics(), lease: new WriteLease(1000), generation: 0,
  }
  const pool = new BufferPool({ count: 8, size: MAX_REQUEST, headroom: 32 })
  const transport = new RecordingTransport()
  transport.send = () => { throw new Error('Invalid access of closed uWS.WebSocket/SSLWebSocket.') }
  const session = new ExportSession(exp, pool, { maxRequest: MAX_REQUEST, maxInFlight: 64, pingInterval: 10000 }, transport)
  t.teardown(() => session.onClose())
  session.onMessage(Buffer.concat([frame(Op.READ, 1, 0, 4 * KiB), frame(Op.READ, 2, 4 * KiB, 4 * KiB), frame(Op.PING, 3, 0, 0)]))
  await session.drain()
  t.is(transport.ended?.code, 1011)
  t.regex(transport.ended?.reason ?? '', /reply not sent: Invalid access/)
  t.is(pool.available, 8)
  t.is(exp.metrics.connections, 0, 'the session counts as closed')
})

test.serial('while the transport holds maxQueuedBytes, replies wait in the session (keeping their slots) and count against maxInFlight; a drain sends them all', async t => {
  const device = new MemoryDevice({ size: 256 * KiB })
  const exp: ServedExport = {
    name: 'inproc', device, readOnly: false, allow: [], metrics: new ExportMetrics(), lease: new WriteLease(1000), generation: 0,
  }
  const pool = new BufferPool({ count: 16, size: MAX_REQUEST, headroom: 32 })
  const transport = new RecordingTransport()
  transport.buffered = 1024 * KiB // the client reads nothing
  const session = new ExportSession(exp, pool, { maxRequest: MAX_REQUEST, maxInFlight: 8, pingInterval: 10000, maxQueuedBytes: 64 * KiB }, transport)
  t.teardown(() => session.onClose())
  session.onMessage(Buffer.concat(Array.from({ length: 6 }, (_, i) => frame(Op.READ, i, i * 4 * KiB, 4 * KiB))))
  await new Promise(resolve => setTimeout(resolve, 50))
  t.is(transport.messages.length, 0, 'nothing is sent above maxQueuedBytes (uWebSockets.js would drop it)')
  t.is(pool.available, 10, 'the held READ replies keep their slots')
  // 6 held replies + 2 new = maxInFlight: the next ones are EAGAIN, and those replies wait too.
  session.onMessage(Buffer.concat(Array.from({ length: 4 }, (_, i) => frame(Op.READ, 10 + i, 0, 4 * KiB))))
  await new Promise(resolve => setTimeout(resolve, 50))
  t.is(transport.messages.length, 0)
  transport.buffered = 0
  transport.drain?.()
  await session.drain()
  const replies = transport.messages.flatMap(m => {
    const out = []
    for (let at = 0; at < m.length;) { const h = parseReplyHeader(m, at); out.push(h); at += REPLY_HEADER_SIZE + h.length }
    return out
  })
  t.deepEqual(replies.filter(h => h.errno === 0).map(h => h.tagLo).sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 10, 11])
  t.deepEqual(replies.filter(h => h.errno === EAGAIN).map(h => h.tagLo).sort((a, b) => a - b), [12, 13])
  t.is(pool.available, 16)
  t.is(transport.ended, null)
})

test.serial('a client that keeps sending past maxInFlight while its replies wait is closed (1008) and every slot comes back', async t => {
  const device = new MemoryDevice({ size: 256 * KiB })
  const exp: ServedExport = {
    name: 'inproc', device, readOnly: false, allow: [], metrics: new ExportMetrics(), lease: new WriteLease(1000), generation: 0,
  }
  const pool = new BufferPool({ count: 16, size: MAX_REQUEST, headroom: 32 })
  const transport = new RecordingTransport()
  transport.buffered = 1024 * KiB
  const session = new ExportSession(exp, pool, { maxRequest: MAX_REQUEST, maxInFlight: 8, pingInterval: 10000, maxQueuedBytes: 64 * KiB }, transport)
  const closed: string[] = []
  session.onPolicyClose = reason => closed.push(reason)
  t.teardown(() => session.onClose())
  session.onMessage(Buffer.concat(Array.from({ length: 8 }, (_, i) => frame(Op.READ, i, i * 4 * KiB, 4 * KiB))))
  await new Promise(resolve => setTimeout(resolve, 50))
  t.is(transport.ended, null, 'at maxInFlight it is only slowed')
  session.onMessage(Buffer.concat(Array.from({ length: 8 }, (_, i) => frame(Op.READ, 100 + i, 0, 4 * KiB))))
  t.is(transport.ended, null, 'answered EAGAIN, held with the rest')
  session.onMessage(Buffer.concat(Array.from({ length: 8 }, (_, i) => frame(Op.READ, 200 + i, 0, 4 * KiB))))
  t.is(transport.ended?.code, 1008)
  t.regex(closed[0], /client sent past maxInFlight \(8\) while not reading its replies/)
  t.is(transport.messages.length, 0)
  t.is(pool.available, 16)
  t.is(exp.metrics.stalled, 1)
})

// ---- EXTENTS (protocol version 3) ---------------------------------------------------------------------------------

const ENOTSUP = 95

/** A device of `count` alternating runs of 512 bytes (data first), or one whose extents() fails. */
class ManyRunsDevice extends MemoryDevice {
  fails = false
  protected override _extents (offset: number, length: number): Promise<Extent[]> {
    if (this.fails) return Promise.reject(new Error('cannot tell'))
    const runs: Extent[] = []
    for (let at = offset; at < offset + length; at += 512) runs.push({ offset: at, length: Math.min(512, offset + length - at), hole: (at / 512) % 2 === 1 })
    return Promise.resolve(runs)
  }
}

function sessionOf (device: MemoryDevice, version?: number): InProcess {
  const exp: ServedExport = { name: 'inproc', device, readOnly: false, allow: [], metrics: new ExportMetrics(), lease: new WriteLease(1000), generation: 0 }
  const transport = new RecordingTransport()
  const session = new ExportSession(exp, new BufferPool({ count: 8, size: MAX_REQUEST, headroom: 32 }),
    { maxRequest: MAX_REQUEST, maxInFlight: 16, pingInterval: 10000 }, transport, { readOnly: false, owner: null, token: 0, version })
  return { exp, session, transport }
}

function runsOf (payload: Buffer): Array<[number, boolean]> {
  const out: Array<[number, boolean]> = []
  for (let at = 0; at < payload.length; at += 8) out.push([payload.readUInt32LE(at), payload.readUInt32LE(at + 4) === 1])
  return out
}

test.serial('EXTENTS in a session: the device\'s runs (not bounded by maxRequest), at most `aux` of them; bad requests are refused at the edge', async t => {
  const device = new MemoryDevice({ size: 16 * PAGE_SIZE })
  const p = sessionOf(device)
  t.teardown(() => p.session.onClose())
  const hs = parseHandshake(p.session.handshake())
  t.is(hs.version, 3)
  t.not(hs.flags & HandshakeFlag.EXTENTS, 0)
  await device.write(2 * PAGE_SIZE, Buffer.alloc(PAGE_SIZE, 1))
  await device.write(5 * PAGE_SIZE, Buffer.alloc(10, 1))

  const all = await inProcessCall(p, frame(Op.EXTENTS, 1, 0, device.size, undefined, 0, 100))
  t.is(all.errno, 0)
  t.deepEqual(runsOf(all.rest), [[2 * PAGE_SIZE, true], [PAGE_SIZE, false], [2 * PAGE_SIZE, true], [PAGE_SIZE, false], [10 * PAGE_SIZE, true]])
  const two = await inProcessCall(p, frame(Op.EXTENTS, 2, 0, device.size, undefined, 0, 2))
  t.deepEqual(runsOf(two.rest), [[2 * PAGE_SIZE, true], [PAGE_SIZE, false]], 'a prefix: the caller asks again from its end')
  const inner = await inProcessCall(p, frame(Op.EXTENTS, 3, 2 * PAGE_SIZE + 5, 10, undefined, 0, 8))
  t.deepEqual(runsOf(inner.rest), [[10, false]])
  const empty = await inProcessCall(p, frame(Op.EXTENTS, 4, 100, 0, undefined, 0, 8))
  t.deepEqual([empty.errno, empty.length], [0, 0])

  t.is((await inProcessCall(p, frame(Op.EXTENTS, 5, device.size - 1, 2, undefined, 0, 8))).errno, EINVAL, 'past the end')
  t.is((await inProcessCall(p, frame(Op.EXTENTS, 6, 0, 512, undefined, 0, 0))).errno, EINVAL, 'no room for a run')
  const overflow = frame(Op.EXTENTS, 7, 0, 0xffffffff, undefined, 0, 8)
  overflow.fill(0xff, 16, 24) // offset 2^64 - 1: offset + length overflows
  t.is((await inProcessCall(p, overflow)).errno, EINVAL, 'offset + length overflowing')
  t.is(p.transport.ended, null, 'refusals do not end the connection')
  t.is(p.exp.metrics.requests.extents, 7)
  t.is(p.exp.metrics.errors.extents, 3)
  t.is(p.session.pending, 0)
})

test.serial('EXTENTS: a device with thousands of runs gets a bounded reply (1024 runs, 8 KiB); a failing one an error; the session goes on', async t => {
  const device = new ManyRunsDevice({ size: 4 * 1024 * 1024 })
  const p = sessionOf(device)
  t.teardown(() => p.session.onClose())
  const huge = await inProcessCall(p, frame(Op.EXTENTS, 1, 0, device.size, undefined, 0, 0xffffffff))
  t.is(huge.errno, 0)
  t.is(huge.length, MAX_EXTENTS_PER_REPLY * EXTENT_ENTRY_SIZE)
  const runs = runsOf(huge.rest)
  t.is(runs.length, MAX_EXTENTS_PER_REPLY)
  t.deepEqual(runs.slice(0, 3), [[512, false], [512, true], [512, false]])
  device.fails = true
  const failed = await inProcessCall(p, frame(Op.EXTENTS, 2, 0, 4096, undefined, 0, 8))
  t.deepEqual([failed.op, failed.errno, failed.length], [Op.EXTENTS, EIO, 0])
  t.is((await inProcessCall(p, frame(Op.PING, 3, 0, 0))).errno, 0)
  t.is(p.exp.metrics.errors.extents, 1)
})

test.serial('a version 2 session (an old client): no EXTENTS flag, and EXTENTS is an unknown opcode (ENOTSUP), not a broken frame', async t => {
  const device = new MemoryDevice({ size: 64 * KiB })
  const p = sessionOf(device, 2)
  t.teardown(() => p.session.onClose())
  const hs = parseHandshake(p.session.handshake())
  t.is(hs.version, 2)
  t.is(hs.flags & HandshakeFlag.EXTENTS, 0)
  t.not(hs.flags & HandshakeFlag.HASH, 0)
  t.is((await inProcessCall(p, frame(Op.EXTENTS, 1, 0, 4096, undefined, 0, 8))).errno, ENOTSUP)
  t.is((await inProcessCall(p, frame(Op.READ, 2, 0, 4096))).errno, 0)
  t.is(p.transport.ended, null)
})
