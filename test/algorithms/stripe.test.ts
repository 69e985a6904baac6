// Tests for algorithms/stripe.ts (raid 0): chunk c on member c mod n at member offset floor(c / n) × chunk. The size is
// members × the smallest member in whole chunks; requests split at chunk boundaries land at the right member offsets,
// all pieces issued at once; a failing member fails only the requests that touch it. A fast-check property drives random
// reads, writes and trims against a Buffer model and checks every member's bytes against the layout.

import test from 'ava'
import fc from 'fast-check'
import { StripeDevice, stripeChunkProblem } from '../../algorithms/stripe'
import type { Member } from '../../algorithms/linear'
import { MemoryDevice } from '../../node/devices/memory-device'
import { FaultDevice } from '../../node/devices/fault-device'
import { DstError } from '../../node/core/errors'
import { Device } from '../../node/core/device'
import { closeDefaultHasher } from '../../node/core/hasher'
import { digestsOf } from '../helpers/digests'
import { memories, pattern } from '../helpers/members'

const K = 4096

test.after.always(() => closeDefaultHasher())

/** What member `m` must hold, given the array's bytes: its chunks, row after row. */
function expectedMember (model: Buffer, m: number, n: number, chunk: number, memberSize: number): Buffer {
  const out = Buffer.alloc(memberSize)
  for (let c = m; c * chunk < model.length; c += n) model.copy(out, Math.floor(c / n) * chunk, c * chunk, (c + 1) * chunk)
  return out
}

test('size is members × the smallest member in whole chunks; block size the largest; capabilities from the members', t => {
  const a = new MemoryDevice({ size: 9 * K + 100 })
  const b = new MemoryDevice({ size: 20 * K, blockSize: 4096 })
  const c = new MemoryDevice({ size: 12 * K })
  const s = new StripeDevice({ members: [{ name: 'a', device: a }, { name: 'b', device: b }, { name: 'c', device: c }], chunk: 4 * K })
  t.is(s.type, 'stripe')
  t.is(s.size, 3 * 2 * 4 * K, 'the smallest member (9 KiB + 100) holds two whole 4 KiB chunks')
  t.is(s.blockSize, 4096)
  t.true(s.writable)
  t.true(s.canTrim)
  t.false(s.canFlush, 'no member has anything to flush')
  t.is(s.chunk, 4 * K)
  const status = s.status()
  t.is(status.chunk, 4 * K)
  t.deepEqual((status.members as Array<{ name: string }>).map(m => m.name), ['a', 'b', 'c'])
  t.is(new StripeDevice({ members: memories([K * 64, K * 64]).members }).chunk, 65536, 'the default chunk is 64 KiB')
})

test('the layout: chunk c on member c mod n at member offset floor(c / n) × chunk', async t => {
  const { mems, members } = memories([4 * K, 4 * K, 4 * K])
  const s = new StripeDevice({ members, chunk: K })
  t.deepEqual(s.locate(0), { member: 0, at: 0 })
  t.deepEqual(s.locate(K + 5), { member: 1, at: 5 })
  t.deepEqual(s.locate(3 * K + 7), { member: 0, at: K + 7 })
  t.deepEqual(s.locate(11 * K), { member: 2, at: 3 * K })
  for (let c = 0; c < 12; c++) await s.write(c * K, Buffer.alloc(K, c + 1))
  t.deepEqual([0, 1, 2, 3].map(r => mems[0].data[r * K]), [1, 4, 7, 10])
  t.deepEqual([0, 1, 2, 3].map(r => mems[1].data[r * K]), [2, 5, 8, 11])
  t.deepEqual([0, 1, 2, 3].map(r => mems[2].data[r * K]), [3, 6, 9, 12])
})

/** A member that holds every write until the test lets it go, so a test can see how many are in flight at once. */
class HeldDevice extends Device {
  readonly type = 'held'
  readonly held: Array<{ at: number, n: number, go: () => void }> = []
  constructor (size: number) { super({ size }) }
  protected override _read (): Promise<void> { return Promise.resolve() }
  protected override _write (at: number, data: Uint8Array): Promise<void> {
    return new Promise(resolve => this.held.push({ at, n: data.byteLength, go: resolve }))
  }
}

test('a request crossing chunks is split at the boundaries and every piece is issued at once', async t => {
  const held = [new HeldDevice(16 * K), new HeldDevice(16 * K)]
  const s = new StripeDevice({ members: held.map((device, i) => ({ name: `h${i}`, device })), chunk: 4 * K })
  let done = false
  const writing = s.write(2 * K, Buffer.alloc(16 * K)).then(() => { done = true })
  await new Promise(resolve => setImmediate(resolve))
  // 2 KiB of chunk 0, chunks 1..3 whole, 2 KiB of chunk 4: five pieces, all at their members before any completes.
  t.deepEqual(held[0].held.map(h => [h.at, h.n]), [[2 * K, 2 * K], [4 * K, 4 * K], [8 * K, 2 * K]])
  t.deepEqual(held[1].held.map(h => [h.at, h.n]), [[0, 4 * K], [4 * K, 4 * K]])
  for (const h of held[0].held) h.go()
  await new Promise(resolve => setImmediate(resolve))
  t.false(done, 'the request completes only when every piece has')
  for (const h of held[1].held) h.go()
  await writing
  t.true(done)
})

test('pieces land at their member offsets and read back whole; a request inside one chunk is one member request', async t => {
  const faults = [16 * K, 16 * K].map(size => new FaultDevice(new MemoryDevice({ size })))
  const s = new StripeDevice({ members: faults.map((device, i) => ({ name: `f${i}`, device })), chunk: 4 * K })
  const data = pattern(16 * K, 5)
  await s.write(2 * K, data)
  t.deepEqual(faults.map(f => f.counts.write), [3, 2])
  t.deepEqual(faults.map(f => f.counts.writeBytes), [2 * K + 4 * K + 2 * K, 8 * K])
  const back = Buffer.alloc(16 * K)
  await s.read(2 * K, 16 * K, back)
  t.true(back.equals(data))
  await s.read(4 * K + 10, 100, Buffer.alloc(100))
  t.deepEqual(faults.map(f => f.counts.read), [3, 3])
})

test('a read lands only in the caller\'s buffer range', async t => {
  const { mems, members } = memories([8 * K, 8 * K])
  mems[0].data.fill(1); mems[1].data.fill(2)
  const s = new StripeDevice({ members, chunk: 4 * K })
  const into = Buffer.alloc(8 * K + 10, 0xee)
  await s.read(2 * K, 4 * K, into)
  t.true(into.subarray(0, 2 * K).every(b => b === 1))
  t.true(into.subarray(2 * K, 4 * K).every(b => b === 2))
  t.true(into.subarray(4 * K).every(b => b === 0xee))
})

test('out-of-range requests are refused before any member sees them', async t => {
  const faults = [8 * K, 8 * K].map(size => new FaultDevice(new MemoryDevice({ size })))
  const s = new StripeDevice({ members: faults.map((device, i) => ({ name: `f${i}`, device })), chunk: 4 * K })
  await t.throwsAsync(s.write(16 * K - 10, Buffer.alloc(11)), { code: 'DST_ERR_EINVAL' })
  await t.throwsAsync(s.read(-1, 2, Buffer.alloc(2)), { code: 'DST_ERR_EINVAL' })
  t.deepEqual(faults.map(f => f.counts.write + f.counts.read), [0, 0])
})

test('a read-only member makes the array read-only', async t => {
  const s = new StripeDevice({ members: [{ name: 'rw', device: new MemoryDevice({ size: 8 * K }) }, { name: 'ro', device: new MemoryDevice({ size: 8 * K, readOnly: true }) }], chunk: 4 * K })
  t.false(s.writable)
  await t.throwsAsync(s.write(0, Buffer.alloc(10)), { code: 'DST_ERR_EROFS' })
})

test('a failing member fails only the requests that touch it, and the array shows degraded', async t => {
  const faults = [8 * K, 8 * K, 8 * K].map(size => new FaultDevice(new MemoryDevice({ size })))
  const s = new StripeDevice({ members: faults.map((device, i) => ({ name: `f${i}`, device })), chunk: 4 * K })
  faults[1].failing = true
  t.is(s.status().state, 'degraded')
  // A request across f1 fails (its other pieces may have landed: a failed write leaves its range undefined).
  await t.throwsAsync(s.write(0, Buffer.alloc(12 * K)), { code: 'DST_ERR_EIO' })
  await t.throwsAsync(s.read(4 * K, 1, Buffer.alloc(1)), { code: 'DST_ERR_EIO' })
  await t.notThrowsAsync(s.write(0, Buffer.alloc(4 * K, 1)), 'chunk 0 is on f0')
  await t.notThrowsAsync(s.write(8 * K, Buffer.alloc(4 * K, 3)), 'chunk 2 is on f2')
  faults[1].failing = false
  t.is(s.status().state, 'online')
  const into = Buffer.alloc(4 * K)
  await s.read(8 * K, 4 * K, into)
  t.true(into.equals(Buffer.alloc(4 * K, 3)))
})

test('hash: members digest their own pieces when digest chunks fit in stripe chunks; otherwise read; the digests of the bytes either way', async t => {
  const { mems, members } = memories([64 * K, 64 * K])
  const s = new StripeDevice({ members, chunk: 16 * K })
  const data = pattern(128 * K, 11)
  await s.write(0, data)
  const hashCalls = [0, 0]
  mems.forEach((m, i) => {
    const own = m.hash.bind(m)
    m.hash = (at, n, chunk) => { hashCalls[i]++; return own(at, n, chunk) }
  })
  const inside = await s.hash(0, 128 * K, 4 * K)
  t.deepEqual(hashCalls, [4, 4], 'forwarded: each member digests its four 16 KiB chunks')
  t.true(inside.equals(digestsOf(data, 4 * K)))
  const across = await s.hash(0, 128 * K, 64 * K)
  t.deepEqual(hashCalls, [4, 4], 'a 64 KiB digest chunk spans members: read and digested by the array')
  t.true(across.equals(digestsOf(data, 64 * K)))
  const unaligned = await s.hash(8 * K, 32 * K, 16 * K)
  t.deepEqual(hashCalls, [4, 4], 'a range not on a digest chunk boundary is read')
  t.true(unaligned.equals(digestsOf(data.subarray(8 * K, 40 * K), 16 * K)))
})

test('property: random writes, reads and trims agree with a byte model, and every member holds its chunks', async t => {
  await fc.assert(fc.asyncProperty(
    fc.integer({ min: 2, max: 5 }),
    fc.constantFrom(K, 2 * K, 8 * K),
    fc.array(fc.record({
      op: fc.constantFrom('write', 'read', 'trim'),
      at: fc.nat(),
      len: fc.integer({ min: 1, max: 40 * K }),
      seed: fc.nat(255),
    }), { minLength: 1, maxLength: 25 }),
    async (n, chunk, ops) => {
      const memberSize = 10 * K + 300
      const { mems, members } = memories(Array.from({ length: n }, () => memberSize))
      const s = new StripeDevice({ members, chunk })
      const model = Buffer.alloc(s.size)
      for (const o of ops) {
        const at = o.at % s.size
        const len = Math.min(o.len, s.size - at)
        if (o.op === 'write') {
          const data = pattern(len, o.seed)
          await s.write(at, data)
          data.copy(model, at)
        } else if (o.op === 'trim') {
          await s.trim(at, len)
          model.fill(0, at, at + len)
        } else {
          const into = Buffer.alloc(len)
          await s.read(at, len, into)
          if (!into.equals(model.subarray(at, at + len))) return false
        }
      }
      return mems.every((m, i) => m.data.equals(expectedMember(model, i, n, chunk, memberSize)))
    }), { numRuns: 150 })
  t.pass('150 random runs agreed with the model')
})
test('chunk rules: a power of two from 4 KiB to 16 MiB, a multiple of every block size; at least two members', t => {
  t.is(stripeChunkProblem(65536, [512, 4096]), null)
  t.regex(stripeChunkProblem(3 * K, [512]) ?? '', /power of two/)
  t.regex(stripeChunkProblem(2048, [512]) ?? '', /power of two from 4KiB/)
  t.regex(stripeChunkProblem(32 * 1024 * 1024, [512]) ?? '', /power of two/)
  t.regex(stripeChunkProblem(4096, [512, 8192]) ?? '', /block size 8192/)
  const one = t.throws(() => new StripeDevice({ members: memories([K * 4]).members }))
  t.true(one instanceof DstError)
  t.is((one as DstError).code, 'DST_ERR_CONFIG')
  t.regex(one?.message ?? '', /at least two members/)
  const bad = t.throws(() => new StripeDevice({ members: memories([K * 4, K * 4]).members, chunk: 6000 }))
  t.is((bad as DstError).code, 'DST_ERR_CONFIG')
})
