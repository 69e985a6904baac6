// The client connection (export/native/client.ts) against a small server written here with `ws`, which records how the
// requests arrive: requests without a payload issued in one tick leave as the frames of one message (so a node takes
// them in one call), at most 64 to a message; a WRITE is a message of its own; every reply still reaches its request.

import test from 'ava'
import { WebSocketServer, type WebSocket } from 'ws'
import type { AddressInfo } from 'node:net'
import { randomUUID } from 'node:crypto'
import { Connection } from '../../../export/native/client'
import { type DstError, ErrorCode } from '../../../node/core/errors'
import {
  EXTENT_ENTRY_SIZE, HandshakeFlag, Op, PROTOCOL_VERSION, REPLY_HEADER_SIZE, REQUEST_HEADER_SIZE, encodeHandshake, parseRequestHeader, writeReplyHeader,
} from '../../../export/native/codec'
import { DIGEST_SIZE, HASH_ALGORITHM } from '../../../node/core/hasher'

const KiB = 1024

interface Arrival { requests: number[], bytes: number }

/** A server that answers READs with bytes equal to the low byte of (offset / 4 KiB) and WRITEs with success. */
async function server (t: { teardown: (fn: () => unknown) => void }): Promise<{ port: number, arrivals: Arrival[] }> {
  const arrivals: Arrival[] = []
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
  await new Promise<void>(resolve => wss.once('listening', resolve))
  t.teardown(() => new Promise<void>(resolve => { for (const c of wss.clients) c.terminate(); wss.close(() => resolve()) }))
  wss.on('connection', (ws: WebSocket) => {
    ws.send(encodeHandshake({
      version: PROTOCOL_VERSION, size: 64 * 1024 * KiB, blockSize: 4096, maxRequest: 1024 * KiB, flags: HandshakeFlag.FLUSH,
      maxInFlight: 256, identity: randomUUID(), generation: 1, leaseToken: 0, hashAlgorithm: HASH_ALGORITHM, digestSize: DIGEST_SIZE,
    }))
    ws.on('message', (data: Buffer) => {
      const arrival: Arrival = { requests: [], bytes: data.length }
      arrivals.push(arrival)
      for (let at = 0; at < data.length;) {
        const h = parseRequestHeader(data, at)
        arrival.requests.push(h.op)
        at += REQUEST_HEADER_SIZE + (h.op === Op.WRITE ? h.length : 0)
        const length = h.op === Op.READ ? h.length : 0
        const reply = Buffer.alloc(REPLY_HEADER_SIZE + length, (h.offset / (4 * KiB)) & 0xff)
        writeReplyHeader(reply, 0, h.op, h.tagLo, h.tagHi, 0, length)
        ws.send(reply)
      }
    })
  })
  return { port: (wss.address() as AddressInfo).port, arrivals }
}

test('requests without payload issued in one tick leave as one message; a WRITE goes in a message of its own; replies reach their requests', async t => {
  const { port, arrivals } = await server(t)
  const conn = await Connection.connect({ host: '127.0.0.1', port, export: 'x' }, { queueDepth: 200, pingInterval: 0 })
  t.teardown(() => conn.close())

  const reads = (from: number, n: number): Array<{ into: Buffer, done: Promise<void> }> => Array.from({ length: n }, (_, i) => {
    const into = Buffer.alloc(4 * KiB)
    return { into, done: conn.request(Op.READ, (from + i) * 4 * KiB, 4 * KiB, into, null) }
  })
  const first = reads(0, 20)
  await Promise.all(first.map(r => r.done))
  t.deepEqual(arrivals.map(a => a.requests.length), [20], 'twenty READs, one message')
  first.forEach((r, i) => t.true(r.into.every(b => b === i), `read ${i} got its own bytes`))

  arrivals.length = 0
  const lone = reads(50, 1)
  await lone[0].done
  t.deepEqual(arrivals.map(a => a.requests.length), [1], 'a lone READ is a message of its own')
  t.true(lone[0].into.every(b => b === 50))

  arrivals.length = 0
  const many = reads(100, 150)
  await Promise.all(many.map(r => r.done))
  t.deepEqual(arrivals.map(a => a.requests.length), [64, 64, 22], 'at most 64 to a message')
  many.forEach((r, i) => t.true(r.into.every(b => b === ((100 + i) & 0xff))))

  arrivals.length = 0
  const mixed = [...reads(7, 3).map(r => r.done), conn.request(Op.WRITE, 0, 8 * KiB, null, Buffer.alloc(8 * KiB, 1)), conn.request(Op.FLUSH, 0, 0, null, null), ...reads(9, 2).map(r => r.done)]
  await Promise.all(mixed)
  const byKind = arrivals.map(a => a.requests.map(op => op === Op.WRITE ? 'W' : op === Op.FLUSH ? 'F' : 'R').join(''))
  t.deepEqual(byKind.sort(), ['RRRFRR', 'W'].sort(), 'the WRITE with its payload alone; the rest, FLUSH among them, in one message')
  t.is(arrivals.find(a => a.requests[0] === Op.WRITE)?.bytes, REQUEST_HEADER_SIZE + 8 * KiB)
})

// ---- EXTENTS and version agreement --------------------------------------------------------------------------------

/** A server speaking `version` with `flags`, answering each EXTENTS with what `answer` builds (null: no reply). */
async function extentsServer (t: { teardown: (fn: () => unknown) => void }, version: number, flags: number, answer: (offset: number, length: number, maxRuns: number) => Buffer | null):
Promise<{ port: number, asked: number[], versions: string[] }> {
  const asked: number[] = []
  const versions: string[] = []
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
  await new Promise<void>(resolve => wss.once('listening', resolve))
  t.teardown(() => new Promise<void>(resolve => { for (const c of wss.clients) c.terminate(); wss.close(() => resolve()) }))
  wss.on('connection', (ws: WebSocket, req) => {
    versions.push(String(req.headers['x-dst-version'] ?? ''))
    ws.send(encodeHandshake({
      version, size: 1 << 30, blockSize: 4096, maxRequest: 64 * KiB, flags, maxInFlight: 16, identity: randomUUID(),
      generation: 1, leaseToken: 0, hashAlgorithm: HASH_ALGORITHM, digestSize: DIGEST_SIZE,
    }))
    ws.on('message', (data: Buffer) => {
      for (let at = 0; at < data.length; at += REQUEST_HEADER_SIZE) {
        const h = parseRequestHeader(data, at)
        asked.push(h.op)
        const payload = h.op === Op.EXTENTS ? answer(h.offset, h.length, h.aux) : Buffer.alloc(0)
        if (payload === null) continue
        const reply = Buffer.alloc(REPLY_HEADER_SIZE + payload.length)
        writeReplyHeader(reply, 0, h.op, h.tagLo, h.tagHi, 0, payload.length)
        payload.copy(reply, REPLY_HEADER_SIZE)
        ws.send(reply)
      }
    })
  })
  return { port: (wss.address() as AddressInfo).port, asked, versions }
}

function runs (...entries: Array<[number, number]>): Buffer {
  const b = Buffer.alloc(entries.length * EXTENT_ENTRY_SIZE)
  entries.forEach(([length, flags], i) => { b.writeUInt32LE(length, i * 8); b.writeUInt32LE(flags, i * 8 + 4) })
  return b
}

test('a version 2 server (no EXTENTS): the client connects, and extents() is one data run without asking', async t => {
  const s = await extentsServer(t, 2, HandshakeFlag.HASH, () => { throw new Error('never asked') })
  const conn = await Connection.connect({ host: '127.0.0.1', port: s.port, export: 'x' }, { pingInterval: 0 })
  t.teardown(() => conn.close())
  t.deepEqual(s.versions, [String(PROTOCOL_VERSION)], 'the client names its version at the upgrade')
  t.false(conn.canExtents)
  t.deepEqual(await conn.extents(4096, 1 << 20), [{ offset: 4096, length: 1 << 20, hole: false }])
  await conn.ping()
  t.deepEqual(s.asked, [Op.PING], 'no EXTENTS went on the wire')
})

test('a version 3 server without the EXTENTS flag is not asked either; a server of an unknown version is refused', async t => {
  const noFlag = await extentsServer(t, 3, 0, () => { throw new Error('never asked') })
  const conn = await Connection.connect({ host: '127.0.0.1', port: noFlag.port, export: 'x' }, { pingInterval: 0 })
  t.teardown(() => conn.close())
  t.false(conn.canExtents)
  t.deepEqual(await conn.extents(0, 512), [{ offset: 0, length: 512, hole: false }])
  for (const version of [1, PROTOCOL_VERSION + 1]) {
    const s = await extentsServer(t, version, 0, () => null)
    const err = await t.throwsAsync(Connection.connect({ host: '127.0.0.1', port: s.port, export: 'x' }, { pingInterval: 0 }))
    t.regex(err?.message ?? '', new RegExp(`server speaks protocol version ${version}, this client 2 to ${PROTOCOL_VERSION}`))
  }
})

test('EXTENTS from a version 3 server: runs decoded from the request offset, at most the runs asked for', async t => {
  const s = await extentsServer(t, 3, HandshakeFlag.EXTENTS, (_offset, length, maxRuns) => {
    t.is(maxRuns, 4)
    return runs([100, 0], [length - 100 - 5, 1], [5, 0]).subarray(0, Math.min(3, maxRuns) * EXTENT_ENTRY_SIZE)
  })
  const conn = await Connection.connect({ host: '127.0.0.1', port: s.port, export: 'x' }, { pingInterval: 0 })
  t.teardown(() => conn.close())
  t.true(conn.canExtents)
  t.deepEqual(await conn.extents(2 ** 33, 4096, 4), [
    { offset: 2 ** 33, length: 100, hole: false },
    { offset: 2 ** 33 + 100, length: 3991, hole: true },
    { offset: 2 ** 33 + 4091, length: 5, hole: false },
  ])
})

test('a malformed EXTENTS reply closes the connection with a protocol error; the request fails, nothing hangs', async t => {
  const bad: Array<[string, Buffer]> = [
    ['more runs than asked', runs([1, 0], [1, 1], [1, 0], [1, 1], [1, 0])],
    ['past the range', runs([4096, 0], [1, 1])],
    ['an empty run', runs([0, 0])],
    ['unknown flags', runs([512, 0x80])],
    ['half a run', Buffer.alloc(12)],
    ['no run', Buffer.alloc(0)],
  ]
  for (const [label, payload] of bad) {
    const s = await extentsServer(t, 3, HandshakeFlag.EXTENTS, () => payload)
    const conn = await Connection.connect({ host: '127.0.0.1', port: s.port, export: 'x' }, { pingInterval: 0 })
    const closed = new Promise<Error>(resolve => { conn.onClose = resolve })
    const err = await t.throwsAsync(conn.extents(0, 4096, 4), undefined, label)
    t.is((err as DstError).code, ErrorCode.PROTOCOL, label)
    t.true(conn.isClosed, label)
    t.regex((await closed).message, /extents reply/, label)
  }
})
