// Tests for export/native/codec.ts: header layouts round trip, and the streaming FrameDecoder gives the same frames however
// the byte stream is cut (at every byte boundary, one byte at a time, or all at once).

import test from 'ava'
import { EXTENT_ENTRY_SIZE, EXTENT_HOLE, EXTENTS_VERSION, MAX_EXTENTS_PER_REPLY, MIN_PROTOCOL_VERSION, agreedVersion, decodeExtents, encodeExtents, FrameDecoder, HANDSHAKE_MAGIC, HANDSHAKE_SIZE, HandshakeFlag, Op, PROTOCOL_VERSION, REPLY_HEADER_SIZE, REPLY_MAGIC, REQUEST_HEADER_SIZE, REQUEST_MAGIC, encodeHandshake, parseHandshake, parseReplyHeader, parseRequestHeader, replyFrames, requestFrames, writeReplyHeader, writeRequestHeader, type FrameSpec, type Handshake, type ReplyHeader, type RequestHeader } from '../../../export/native/codec'
import { ProtocolError } from '../../../node/core/errors'

const TWO_32 = 0x100000000

/** Deterministic bytes, so a failure is reproducible. */
function pattern (length: number, seed: number): Buffer {
  const b = Buffer.alloc(length)
  let x = seed * 2654435761 >>> 0
  for (let i = 0; i < length; i++) { x = (x * 1103515245 + 12345) >>> 0; b[i] = x >>> 24 }
  return b
}

function requestFrame (h: RequestHeader, payload?: Buffer): Buffer {
  const head = Buffer.alloc(REQUEST_HEADER_SIZE)
  writeRequestHeader(head, 0, h.op, h.flags, h.tagLo, h.tagHi, h.offset, h.length)
  return payload === undefined ? head : Buffer.concat([head, payload])
}

function replyFrame (h: ReplyHeader, payload?: Buffer): Buffer {
  const head = Buffer.alloc(REPLY_HEADER_SIZE)
  writeReplyHeader(head, 0, h.op, h.tagLo, h.tagHi, h.errno, h.length)
  return payload === undefined ? head : Buffer.concat([head, payload])
}

// ---- headers ------------------------------------------------------------------------------------------------------

test('request header round trips every field, at a non-zero position in a larger buffer', t => {
  const buf = Buffer.alloc(REQUEST_HEADER_SIZE + 10, 0xee)
  const h: RequestHeader = { op: Op.WRITE, flags: 0xff, tagLo: 0xffffffff, tagHi: 0x12345678, offset: 5 * TWO_32 + 0xdeadbeef, length: 0xfffffff0, aux: 0 }
  writeRequestHeader(buf, 7, h.op, h.flags, h.tagLo, h.tagHi, h.offset, h.length)
  t.deepEqual(parseRequestHeader(buf, 7), h)
  t.is(buf.readUInt32LE(7), REQUEST_MAGIC)
  t.is(buf.toString('latin1', 7, 11), 'DSTQ')
  // reserved fields are zero and nothing outside the 32 bytes was touched
  t.is(buf.readUInt16LE(7 + 6), 0)
  t.is(buf.readUInt32LE(7 + 28), 0)
  t.deepEqual([...buf.subarray(0, 7)], new Array(7).fill(0xee))
  t.deepEqual([...buf.subarray(7 + REQUEST_HEADER_SIZE)], new Array(3).fill(0xee))
})

test('request header: u64 offsets above 2^32 survive, up to Number.MAX_SAFE_INTEGER', t => {
  const buf = Buffer.alloc(REQUEST_HEADER_SIZE)
  for (const offset of [0, 1, TWO_32 - 1, TWO_32, TWO_32 + 1, 2 ** 40 + 4096, 2 ** 52 + 3, Number.MAX_SAFE_INTEGER]) {
    writeRequestHeader(buf, 0, Op.READ, 0, 1, 2, offset, 4096)
    t.is(parseRequestHeader(buf, 0).offset, offset, `offset ${offset}`)
    t.is(buf.readBigUInt64LE(16), BigInt(offset), `wire bytes of offset ${offset} are little-endian u64`)
  }
})

test('reply header round trips every field', t => {
  const buf = Buffer.alloc(REPLY_HEADER_SIZE + 4)
  const h: ReplyHeader = { op: Op.READ, tagLo: 0xfedcba98, tagHi: 0xffffffff, errno: 22, length: 1 << 20 }
  writeReplyHeader(buf, 4, h.op, h.tagLo, h.tagHi, h.errno, h.length)
  t.deepEqual(parseReplyHeader(buf, 4), h)
  t.is(buf.readUInt32LE(4), REPLY_MAGIC)
  t.is(buf.toString('latin1', 4, 8), 'DSTR')
})

test('handshake round trips, with size and generation above 2^32', t => {
  const h: Handshake = {
    version: PROTOCOL_VERSION,
    size: 3 * TWO_32 + 512,
    blockSize: 4096,
    maxRequest: 1 << 20,
    flags: HandshakeFlag.READ_ONLY | HandshakeFlag.FLUSH | HandshakeFlag.TRIM,
    maxInFlight: 128,
    identity: '0123abcd-4567-89ef-8123-456789abcdef',
    generation: 2 ** 45 + 7,
    leaseToken: 2 ** 40 + 3,
    hashAlgorithm: 'blake2b512',
    digestSize: 64,
  }
  const buf = encodeHandshake(h)
  t.is(buf.length, HANDSHAKE_SIZE)
  t.is(buf.readUInt32LE(0), HANDSHAKE_MAGIC)
  t.deepEqual(parseHandshake(buf), h)
})

test('handshake: an upper-case identity comes back lower-case; a non-UUID identity is refused', t => {
  const base: Handshake = { version: 1, size: 4096, blockSize: 512, maxRequest: 4096, flags: 0, maxInFlight: 1, identity: 'ABCDEF01-2345-4678-89AB-CDEF01234567', generation: 0, leaseToken: 0, hashAlgorithm: 'blake2b512', digestSize: 64 }
  t.is(parseHandshake(encodeHandshake(base)).identity, 'abcdef01-2345-4678-89ab-cdef01234567')
  t.throws(() => encodeHandshake({ ...base, identity: '' }), { instanceOf: RangeError })
  t.throws(() => encodeHandshake({ ...base, identity: 'not-a-uuid' }), { instanceOf: RangeError })
})

test('bad magic throws ProtocolError from every parser', t => {
  const req = Buffer.alloc(REQUEST_HEADER_SIZE)
  writeRequestHeader(req, 0, Op.READ, 0, 0, 0, 0, 0)
  const rep = Buffer.alloc(REPLY_HEADER_SIZE)
  writeReplyHeader(rep, 0, Op.READ, 0, 0, 0, 0)
  // a reply is not a request and vice versa
  const e1 = t.throws(() => parseRequestHeader(rep, 0), { instanceOf: ProtocolError })
  t.is(e1.code, 'DST_ERR_PROTOCOL')
  t.regex(e1.message, /0x52545344/)
  t.throws(() => parseReplyHeader(Buffer.concat([req]), 0), { instanceOf: ProtocolError })
  const hs = encodeHandshake({ version: 1, size: 1, blockSize: 512, maxRequest: 1, flags: 0, maxInFlight: 1, identity: '00000000-0000-4000-8000-000000000000', generation: 0, leaseToken: 0, hashAlgorithm: 'blake2b512', digestSize: 64 })
  hs[0] ^= 1
  t.throws(() => parseHandshake(hs), { instanceOf: ProtocolError })
  t.throws(() => parseHandshake(Buffer.alloc(HANDSHAKE_SIZE - 1)), { instanceOf: ProtocolError })
})

// ---- FrameDecoder -------------------------------------------------------------------------------------------------

interface Seen<H> { header: H, payload: Uint8Array | null, bytes: Buffer | null, target: Uint8Array | null }

/** A decoder that hands out a fresh buffer per payload (or null when `discard` says so) and records what it emits. */
function recorder<H> (spec: FrameSpec<H>, discard: (h: H) => boolean = () => false) {
  const seen: Array<Seen<H>> = []
  const targets: Array<Uint8Array | null> = []
  const boundaries: boolean[] = []
  const decoder: FrameDecoder<H> = new FrameDecoder<H>(
    spec,
    h => {
      const target = discard(h) ? null : Buffer.alloc(spec.payloadLength(h))
      targets.push(target)
      return target
    },
    (header, payload) => {
      seen.push({ header, payload, bytes: payload === null ? null : Buffer.from(payload), target: targets[targets.length - 1] ?? null })
      boundaries.push(decoder.atBoundary)
    },
  )
  return { decoder, seen, targets, boundaries }
}

const requests: Array<{ h: RequestHeader, payload?: Buffer }> = [
  { h: { op: Op.WRITE, flags: 1, tagLo: 1, tagHi: 0, offset: 4096, length: 100, aux: 0 }, payload: pattern(100, 1) },
  { h: { op: Op.READ, flags: 0, tagLo: 2, tagHi: 0, offset: 2 ** 33 + 512, length: 65536, aux: 0 } },
  { h: { op: Op.FLUSH, flags: 0, tagLo: 3, tagHi: 7, offset: 0, length: 0, aux: 0 } },
  { h: { op: Op.WRITE, flags: 0, tagLo: 4, tagHi: 0, offset: 5 * TWO_32, length: 1, aux: 0 }, payload: pattern(1, 2) },
  { h: { op: Op.TRIM, flags: 0, tagLo: 5, tagHi: 0, offset: 8192, length: 1 << 20, aux: 0 } },
  { h: { op: Op.WRITE, flags: 2, tagLo: 6, tagHi: 0xffffffff, offset: 0, length: 77, aux: 0 }, payload: pattern(77, 3) },
  { h: { op: Op.PING, flags: 0, tagLo: 7, tagHi: 0, offset: 0, length: 0, aux: 0 } },
  { h: { op: Op.WRITE, flags: 0, tagLo: 8, tagHi: 0, offset: 512, length: 0, aux: 0 } }, // empty write: no payload
]
const requestStream = Buffer.concat(requests.map(r => requestFrame(r.h, r.payload)))

const replies: Array<{ h: ReplyHeader, payload?: Buffer }> = [
  { h: { op: Op.READ, tagLo: 1, tagHi: 0, errno: 0, length: 64 }, payload: pattern(64, 4) },
  { h: { op: Op.WRITE, tagLo: 2, tagHi: 0, errno: 0, length: 0 } },
  { h: { op: Op.READ, tagLo: 3, tagHi: 9, errno: 5, length: 0 } }, // failed read: no payload
  { h: { op: Op.READ, tagLo: 4, tagHi: 0, errno: 0, length: 3 }, payload: pattern(3, 5) },
  { h: { op: Op.FLUSH, tagLo: 5, tagHi: 0, errno: 0, length: 0 } },
  { h: { op: Op.READ, tagLo: 6, tagHi: 0, errno: 0, length: 130 }, payload: pattern(130, 6) },
]
const replyStream = Buffer.concat(replies.map(r => replyFrame(r.h, r.payload)))

type Feed = (decoder: { push: (c: Buffer) => void }, stream: Buffer) => void

function checkFrames<H> (t: import('ava').ExecutionContext, spec: FrameSpec<H>, stream: Buffer, expected: Array<{ h: H, payload?: Buffer }>, feed: Feed, label: string): void {
  const r = recorder(spec)
  feed(r.decoder, stream)
  t.is(r.seen.length, expected.length, `${label}: frame count`)
  let ok = r.seen.length === expected.length
  for (const [i, e] of expected.entries()) {
    const s = r.seen[i]
    if (s === undefined) { ok = false; break }
    if (JSON.stringify(s.header) !== JSON.stringify(e.h)) { ok = false; t.deepEqual(s.header, e.h, `${label}: header ${i}`) }
    if (e.payload === undefined) {
      if (s.payload !== null) { ok = false; t.fail(`${label}: frame ${i} should have no payload`) }
    } else {
      if (s.bytes === null || !s.bytes.equals(e.payload)) { ok = false; t.deepEqual(s.bytes, e.payload, `${label}: payload ${i}`) }
      // the payload is the very buffer `target` returned: no copy between the decoder and its owner
      if (s.payload !== s.target || s.payload === null) { ok = false; t.is(s.payload, s.target, `${label}: payload ${i} identity`) }
    }
  }
  t.true(r.decoder.atBoundary, `${label}: at a boundary after the last frame`)
  t.true(ok, label)
}

const wholeChunk: Feed = (d, s) => d.push(s)
const byteAtATime: Feed = (d, s) => { for (let i = 0; i < s.length; i++) d.push(s.subarray(i, i + 1)) }
const splitAt = (i: number): Feed => (d, s) => { d.push(s.subarray(0, i)); d.push(s.subarray(i)) }

test('FrameDecoder: requests (WRITE payloads and non-payload ops) as one chunk', t => {
  checkFrames(t, requestFrames, requestStream, requests, wholeChunk, 'one chunk')
})

test('FrameDecoder: requests split at every byte boundary', t => {
  for (let i = 0; i <= requestStream.length; i++) checkFrames(t, requestFrames, requestStream, requests, splitAt(i), `split at ${i}`)
})

test('FrameDecoder: requests fed one byte at a time', t => {
  checkFrames(t, requestFrames, requestStream, requests, byteAtATime, 'byte at a time')
})

test('FrameDecoder: replies (READ payloads, errors, non-payload ops) as one chunk', t => {
  checkFrames(t, replyFrames, replyStream, replies, wholeChunk, 'one chunk')
})

test('FrameDecoder: replies split at every byte boundary', t => {
  for (let i = 0; i <= replyStream.length; i++) checkFrames(t, replyFrames, replyStream, replies, splitAt(i), `split at ${i}`)
})

test('FrameDecoder: replies fed one byte at a time', t => {
  checkFrames(t, replyFrames, replyStream, replies, byteAtATime, 'byte at a time')
})

test('FrameDecoder: requests split at every pair of boundaries (three chunks)', t => {
  // a header or payload may be cut twice; a smaller stream keeps this O(n^2) loop quick
  const small = requests.slice(0, 4)
  const stream = Buffer.concat(small.map(r => requestFrame(r.h, r.payload)))
  for (let i = 0; i <= stream.length; i++) {
    for (let j = i; j <= stream.length; j++) {
      const feed: Feed = (d, s) => { d.push(s.subarray(0, i)); d.push(s.subarray(i, j)); d.push(s.subarray(j)) }
      checkFrames(t, requestFrames, stream, small, feed, `split at ${i} and ${j}`)
    }
  }
})

test('FrameDecoder: the payload lands in the buffer target returned, at its start, and nothing past the payload is touched', t => {
  const payload = pattern(50, 9)
  const stream = requestFrame({ op: Op.WRITE, flags: 0, tagLo: 1, tagHi: 0, offset: 0, length: 50, aux: 0 }, payload)
  const slot = Buffer.alloc(80, 0xaa) // a pool slot is usually larger than the payload
  let emitted = null as Uint8Array | null
  let asked = 0
  const d = new FrameDecoder(requestFrames, () => { asked++; return slot }, (_h, p) => { emitted = p })
  d.push(stream.subarray(0, 40))
  d.push(stream.subarray(40))
  t.is(asked, 1)
  t.is(emitted, slot)
  t.true(slot.subarray(0, 50).equals(payload))
  t.true(slot.subarray(50).equals(Buffer.alloc(30, 0xaa)))
})

test('FrameDecoder: a target of null discards the payload but still emits, and the stream stays in step', t => {
  const r = recorder(requestFrames, h => h.tagLo === 1)
  // split inside the discarded payload, and inside the following header
  for (const feed of [wholeChunk, byteAtATime, splitAt(REQUEST_HEADER_SIZE + 30), splitAt(REQUEST_HEADER_SIZE + 100 + 5)]) {
    r.seen.length = 0
    feed(r.decoder, requestStream)
    t.is(r.seen.length, requests.length)
    t.is(r.seen[0].payload, null)
    t.deepEqual(r.seen[0].header, requests[0].h)
    t.deepEqual(r.seen[1].header, requests[1].h)
    t.true(r.seen[3].bytes?.equals(requests[3].payload as Buffer))
    t.true(r.seen[5].bytes?.equals(requests[5].payload as Buffer))
    t.true(r.decoder.atBoundary)
  }
})

test('FrameDecoder: a target smaller than the payload is treated as null (the payload is discarded, never overrun)', t => {
  const small = Buffer.alloc(10, 0x55)
  const seen: Array<Uint8Array | null> = []
  const d = new FrameDecoder(replyFrames, h => h.tagLo === 1 ? small : Buffer.alloc(h.length), (_h, p) => seen.push(p))
  d.push(replyStream)
  t.is(seen.length, replies.length)
  t.is(seen[0], null)
  t.true(small.equals(Buffer.alloc(10, 0x55)))
  t.true(Buffer.from(seen[3] as Uint8Array).equals(replies[3].payload as Buffer))
})

test('FrameDecoder: target is asked only for frames that carry a payload', t => {
  const asked: number[] = []
  const d = new FrameDecoder(requestFrames, h => { asked.push(h.tagLo); return Buffer.alloc(h.length) }, () => {})
  d.push(requestStream)
  t.deepEqual(asked, [1, 4, 6]) // READ, FLUSH, TRIM, PING and the empty WRITE have no payload in a request
})

test('FrameDecoder: atBoundary is true only between frames', t => {
  const frames = requests.map(r => requestFrame(r.h, r.payload))
  const ends = new Set<number>([0])
  let at = 0
  for (const f of frames) { at += f.length; ends.add(at) }
  const d = new FrameDecoder(requestFrames, h => Buffer.alloc(h.length), () => {})
  t.true(d.atBoundary)
  for (let i = 0; i < requestStream.length; i++) {
    d.push(requestStream.subarray(i, i + 1))
    t.is(d.atBoundary, ends.has(i + 1), `after byte ${i + 1}`)
  }
})

test('FrameDecoder: atBoundary as seen from inside emit is true (the frame is complete)', t => {
  const r = recorder(replyFrames)
  byteAtATime(r.decoder, replyStream)
  t.is(r.boundaries.length, replies.length)
  t.true(r.boundaries.every(b => b))
})

test('FrameDecoder: bad magic throws ProtocolError, whether the header arrives whole or in pieces', t => {
  const bad = requestFrame({ op: Op.READ, flags: 0, tagLo: 1, tagHi: 0, offset: 0, length: 0, aux: 0 })
  bad.writeUInt32LE(0xdeadbeef, 0)
  for (const feed of [wholeChunk, byteAtATime, splitAt(3), splitAt(31)]) {
    const d = new FrameDecoder(requestFrames, () => null, () => t.fail('no frame should be emitted'))
    const err = t.throws(() => feed(d, bad), { instanceOf: ProtocolError })
    t.is(err.code, 'DST_ERR_PROTOCOL')
  }
})

test('FrameDecoder: bad magic after good frames throws once the good frames are emitted', t => {
  const junk = Buffer.alloc(REPLY_HEADER_SIZE, 0x41)
  const stream = Buffer.concat([replyStream, junk])
  for (const feed of [wholeChunk, byteAtATime, splitAt(replyStream.length + 2)]) {
    const r = recorder(replyFrames)
    t.throws(() => feed(r.decoder, stream), { instanceOf: ProtocolError })
    t.is(r.seen.length, replies.length)
  }
})

test('FrameDecoder: a request stream fed to a reply decoder is refused (the two magics differ)', t => {
  const d = new FrameDecoder(replyFrames, () => null, () => {})
  t.throws(() => d.push(requestStream), { instanceOf: ProtocolError })
})

test('FrameDecoder: offsets above 2^32 survive the decoder, also when the u64 is split across chunks', t => {
  const offset = 2 ** 44 + 0x1234_5678
  const frame = requestFrame({ op: Op.READ, flags: 0, tagLo: 1, tagHi: 0, offset, length: 4096, aux: 0 })
  for (let i = 16; i <= 24; i++) {
    const got: number[] = []
    const d = new FrameDecoder(requestFrames, () => null, h => got.push(h.offset))
    splitAt(i)(d, frame)
    t.deepEqual(got, [offset], `split at ${i}`)
  }
})

test('FrameDecoder: empty chunks change nothing', t => {
  const r = recorder(requestFrames)
  r.decoder.push(Buffer.alloc(0))
  t.true(r.decoder.atBoundary)
  r.decoder.push(requestStream.subarray(0, 10))
  r.decoder.push(Buffer.alloc(0))
  r.decoder.push(requestStream.subarray(10))
  r.decoder.push(Buffer.alloc(0))
  t.is(r.seen.length, requests.length)
  t.true(r.decoder.atBoundary)
})

// ---- EXTENTS (protocol version 3) ---------------------------------------------------------------------------------

test('EXTENTS runs round trip: lengths and hole flags, merged, offsets rebuilt from the request offset', t => {
  const offset = 3 * TWO_32 + 4096
  const runs = [
    { offset, length: 4096, hole: false },
    { offset: offset + 4096, length: TWO_32 - 8192, hole: true },
    { offset: offset + TWO_32 - 4096, length: 1, hole: false },
    { offset: offset + TWO_32 - 4095, length: 4095, hole: false }, // same kind as the one before: merged on the wire
  ]
  const buf = Buffer.alloc(10 + 4 * EXTENT_ENTRY_SIZE, 0xee)
  const n = encodeExtents(runs, MAX_EXTENTS_PER_REPLY, buf, 10)
  t.is(n, 3 * EXTENT_ENTRY_SIZE)
  t.deepEqual([buf.readUInt32LE(10), buf.readUInt32LE(14), buf.readUInt32LE(18), buf.readUInt32LE(22)], [4096, 0, TWO_32 - 8192, EXTENT_HOLE])
  t.deepEqual(decodeExtents(buf.subarray(10, 10 + n), offset, TWO_32, MAX_EXTENTS_PER_REPLY), [
    { offset, length: 4096, hole: false },
    { offset: offset + 4096, length: TWO_32 - 8192, hole: true },
    { offset: offset + TWO_32 - 4096, length: 4096, hole: false },
  ])
  t.deepEqual([...buf.subarray(0, 10)], new Array(10).fill(0xee), 'nothing before `at` written')
})

test('EXTENTS: a reply holds at most maxRuns runs and then covers only a prefix of the range', t => {
  const runs = Array.from({ length: 10 }, (_, i) => ({ offset: i * 512, length: 512, hole: i % 2 === 1 }))
  const buf = Buffer.alloc(10 * EXTENT_ENTRY_SIZE)
  const n = encodeExtents(runs, 3, buf, 0)
  t.is(n, 3 * EXTENT_ENTRY_SIZE)
  const back = decodeExtents(buf.subarray(0, n), 0, 5120, 3)
  t.deepEqual(back, runs.slice(0, 3))
  t.is(encodeExtents([], 3, buf, 0), 0)
})

test('EXTENTS: a client refuses a reply it must not trust', t => {
  const entry = (length: number, flags: number): Buffer => { const b = Buffer.alloc(8); b.writeUInt32LE(length, 0); b.writeUInt32LE(flags, 4); return b }
  const cases: Array<[string, Buffer, number, number, RegExp]> = [
    ['not whole runs', Buffer.alloc(12), 4096, 4, /not whole 8-byte runs/],
    ['more runs than asked', Buffer.concat([entry(1, 0), entry(1, 1), entry(1, 0)]), 4096, 2, /carries 3 runs, at most 2/],
    ['an empty run', Buffer.concat([entry(1, 0), entry(0, 1)]), 4096, 4, /run 1 is empty/],
    ['unknown flags', entry(512, 2), 4096, 4, /unknown flags 0x2/],
    ['past the range asked', Buffer.concat([entry(4000, 0), entry(97, 1)]), 4096, 4, /past the 4096 bytes/],
    ['a u32 run past the range', entry(0xffffffff, 0), 4096, 4, /past the 4096 bytes/],
    ['nothing for a non-empty range', Buffer.alloc(0), 4096, 4, /no run/],
  ]
  for (const [label, payload, length, maxRuns, message] of cases) {
    t.throws(() => decodeExtents(payload, 8192, length, maxRuns), { instanceOf: ProtocolError, message }, label)
  }
  t.deepEqual(decodeExtents(Buffer.alloc(0), 0, 0, 4), [], 'an empty range has no run')
})

test('EXTENTS replies decode the same however the stream is cut', t => {
  const payload = Buffer.alloc(3 * EXTENT_ENTRY_SIZE)
  encodeExtents([{ offset: 0, length: 100, hole: true }, { offset: 100, length: 28, hole: false }, { offset: 128, length: 900, hole: true }], 8, payload, 0)
  const frames = [
    replyFrame({ op: Op.EXTENTS, tagLo: 1, tagHi: 2, errno: 0, length: payload.length }, payload),
    replyFrame({ op: Op.EXTENTS, tagLo: 3, tagHi: 0, errno: 22, length: 0 }),
  ]
  const stream = Buffer.concat(frames)
  for (let cut = 0; cut <= stream.length; cut++) {
    const { decoder, seen } = recorder(replyFrames)
    decoder.push(stream.subarray(0, cut))
    decoder.push(stream.subarray(cut))
    t.is(seen.length, 2, `cut at ${cut}`)
    t.deepEqual(decodeExtents(seen[0].bytes as Buffer, 0, 1028, 8).map(r => [r.length, r.hole]), [[100, true], [28, false], [900, true]], `cut at ${cut}`)
    t.is(seen[1].header.errno, 22)
  }
})

test('version agreement: the highest both know; a client naming none (or an old one) gets version 2', t => {
  t.is(agreedVersion(''), MIN_PROTOCOL_VERSION)
  t.is(agreedVersion('2'), 2)
  t.is(agreedVersion('1'), MIN_PROTOCOL_VERSION)
  t.is(agreedVersion(String(PROTOCOL_VERSION)), PROTOCOL_VERSION)
  t.is(agreedVersion('99'), PROTOCOL_VERSION)
  t.is(agreedVersion('3x'), MIN_PROTOCOL_VERSION)
  t.is(agreedVersion('-3'), MIN_PROTOCOL_VERSION)
  t.is(PROTOCOL_VERSION, 3)
  t.is(EXTENTS_VERSION, 3)
})
