import test from 'ava'
import { WsTap, writeClientFrameHeader } from '../../../export/native/ws-tap'

/** One server frame: FIN bit, opcode, payload (lengths 0-125, 126-65535 and above use the three length forms). */
function wsFrame (opcode: number, payload: Buffer, fin = true, extra = 0): Buffer {
  const len = payload.length
  const head = len < 126 ? Buffer.alloc(2) : len < 65536 ? Buffer.alloc(4) : Buffer.alloc(10)
  head[0] = (fin ? 0x80 : 0) | extra | opcode
  if (len < 126) head[1] = len
  else if (len < 65536) { head[1] = 126; head.writeUInt16BE(len, 2) } else { head[1] = 127; head.writeUInt32BE(0, 2); head.writeUInt32BE(len, 6) }
  return Buffer.concat([head, payload])
}

function bytes (n: number, seed: number): Buffer {
  const b = Buffer.alloc(n)
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff
  return b
}

interface Seen { data: Buffer[], ends: number, controls: Buffer[], events: string[] }

function tap (): { tap: WsTap, seen: Seen } {
  const seen: Seen = { data: [], ends: 0, controls: [], events: [] }
  const t = new WsTap({
    data: chunk => { seen.data.push(Buffer.from(chunk)); seen.events.push('data') },
    messageEnd: () => { seen.ends++; seen.events.push('end') },
    control: frame => { seen.controls.push(frame); seen.events.push('control') },
  })
  return { tap: t, seen }
}

// A message in two fragments with a ping between them, a short message, a 16-bit and a 64-bit length, a close.
const small = bytes(100, 1)
const mid = bytes(70000 - 65000, 2)
const big = bytes(70000, 3)
const part1 = bytes(300, 4)
const part2 = bytes(20, 5)
const ping = wsFrame(0x9, Buffer.from('hi'))
const close = wsFrame(0x8, Buffer.from([0x03, 0xe8, 0x6f, 0x6b]))
const stream = Buffer.concat([
  wsFrame(0x2, part1, false), ping, wsFrame(0x0, part2, true),
  wsFrame(0x2, small), wsFrame(0x2, mid), wsFrame(0x2, big), wsFrame(0x2, Buffer.alloc(0)), close,
])

function check (t: import('ava').ExecutionContext, seen: Seen, label: string): void {
  t.true(Buffer.concat(seen.data).equals(Buffer.concat([part1, part2, small, mid, big])), `${label}: payload bytes in order`)
  t.is(seen.ends, 5, `${label}: five messages ended`)
  t.deepEqual(seen.controls.map(c => c.toString('hex')), [ping.toString('hex'), close.toString('hex')], `${label}: control frames whole`)
  // The ping arrives inside the first message, before it ends.
  t.true(seen.events.indexOf('control') < seen.events.indexOf('end'), `${label}: ping before the first message ends`)
}

test('payloads come out in order and control frames whole, fed in one piece', t => {
  const { tap: x, seen } = tap()
  x.push(stream)
  check(t, seen, 'one piece')
})

test('the same stream split at every byte boundary gives the same result', t => {
  for (let i = 0; i <= stream.length; i += (i < 400 ? 1 : 997)) {
    const { tap: x, seen } = tap()
    x.push(stream.subarray(0, i))
    x.push(stream.subarray(i))
    check(t, seen, `split at ${i}`)
  }
})

test('byte by byte through the headers and small frames', t => {
  const { tap: x, seen } = tap()
  const head = stream.subarray(0, 1000)
  for (let i = 0; i < head.length; i++) x.push(head.subarray(i, i + 1))
  x.push(stream.subarray(1000))
  check(t, seen, 'byte by byte')
})

test('payload views point into the pushed chunk (no copy on the tap)', t => {
  const chunks: Uint8Array[] = []
  const x = new WsTap({ data: c => chunks.push(c), messageEnd: () => {}, control: () => {} })
  const frame = wsFrame(0x2, bytes(5000, 9))
  x.push(frame)
  t.is(chunks.length, 1)
  t.is(chunks[0].buffer, frame.buffer, 'the view shares the chunk\'s memory')
})

test('frames a client must refuse throw a protocol error', t => {
  const cases: Array<[string, Buffer, RegExp]> = [
    ['text', wsFrame(0x1, Buffer.from('x')), /text message/],
    ['masked', (() => { const f = wsFrame(0x2, Buffer.alloc(4)); f[1] |= 0x80; return f })(), /masked/],
    ['rsv', wsFrame(0x2, Buffer.alloc(4), true, 0x40), /RSV/],
    ['continuation first', wsFrame(0x0, Buffer.alloc(4)), /continuation frame outside/],
    ['new message inside one', Buffer.concat([wsFrame(0x2, Buffer.alloc(4), false), wsFrame(0x2, Buffer.alloc(4))]), /before the last one ended/],
    ['long control', wsFrame(0x9, Buffer.alloc(126)), /control frame/],
    ['fragmented control', wsFrame(0x9, Buffer.alloc(2), false), /control frame/],
    ['unknown opcode', wsFrame(0x3, Buffer.alloc(2)), /unknown frame opcode/],
  ]
  for (const [name, frame, message] of cases) {
    const { tap: x } = tap()
    const err = t.throws(() => x.push(frame), undefined, name)
    t.regex(err?.message ?? '', message, name)
    t.is((err as { code?: string } | undefined)?.code, 'DST_ERR_PROTOCOL', name)
  }
})

test('writeClientFrameHeader: the three length forms, FIN and opcode, the mask bit with an all-zero mask', t => {
  const buf = Buffer.alloc(20, 0xff)
  t.is(writeClientFrameHeader(buf, 1, true, 0x2, 32), 6)
  t.deepEqual([...buf.subarray(1, 7)], [0x82, 0x80 | 32, 0, 0, 0, 0])
  t.is(buf[0], 0xff, 'nothing written before `at`')
  t.is(buf[7], 0xff, 'nothing written after the header')
  buf.fill(0xff)
  t.is(writeClientFrameHeader(buf, 0, false, 0x0, 300), 8)
  t.deepEqual([...buf.subarray(0, 8)], [0x00, 0x80 | 126, 0x01, 0x2c, 0, 0, 0, 0])
  buf.fill(0xff)
  t.is(writeClientFrameHeader(buf, 0, true, 0x0, 2 ** 32 + 70000), 14)
  t.deepEqual([...buf.subarray(0, 14)], [0x80, 0x80 | 127, 0, 0, 0, 1, 0, 0x01, 0x11, 0x70, 0, 0, 0, 0])
  t.is(writeClientFrameHeader(buf, 0, true, 0x2, 125), 6)
  t.is(buf[1], 0x80 | 125)
  t.is(writeClientFrameHeader(buf, 0, true, 0x2, 65535), 8)
  t.is(writeClientFrameHeader(buf, 0, true, 0x2, 65536), 14)
})
