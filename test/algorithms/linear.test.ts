// Tests for algorithms/linear.ts: members placed end to end. The size is the sum of the members, a request crossing a
// member boundary is split and lands at the right member offsets, and a failing member fails only the requests that
// touch it. A fast-check property drives random reads and writes against a single Buffer model. `hash` is forwarded to
// the members when every member boundary in the range falls on a chunk boundary, and digested by reading otherwise;
// either way it is the digest of the bytes.

import test from 'ava'
import fc from 'fast-check'
import { LinearDevice, type Member } from '../../algorithms/linear'
import { Device } from '../../node/core/device'
import { MemoryDevice } from '../../node/devices/memory-device'
import { FaultDevice } from '../../node/devices/fault-device'
import { DstError } from '../../node/core/errors'
import { DIGEST_SIZE, closeDefaultHasher } from '../../node/core/hasher'
import { digestsOf } from '../helpers/digests'
import { memories, pattern } from '../helpers/members'

const sleep = (ms: number): Promise<void> => new Promise(resolve => setTimeout(resolve, ms))

test('size is the sum of the members; block size the largest; capabilities from the members', t => {
  const a = new MemoryDevice({ size: 4096 })
  const b = new MemoryDevice({ size: 10000, blockSize: 4096 })
  const c = new MemoryDevice({ size: 512 })
  const linear = new LinearDevice([{ name: 'a', device: a }, { name: 'b', device: b }, { name: 'c', device: c }])
  t.is(linear.type, 'linear')
  t.is(linear.size, 4096 + 10000 + 512)
  t.is(linear.blockSize, 4096)
  t.true(linear.writable)
  t.true(linear.canTrim)
  t.false(linear.canFlush, 'no member has anything to flush')
  const status = linear.status()
  t.deepEqual((status.members as Array<{ name: string, start: number }>).map(m => [m.name, m.start]), [['a', 0], ['b', 4096], ['c', 14096]])
})

test('a linear array needs at least one member', t => {
  const err = t.throws(() => new LinearDevice([]))
  t.true(err instanceof DstError)
  t.is((err as DstError).code, 'DST_ERR_CONFIG')
})

test('a read-only member makes the array read-only', async t => {
  const ro = new MemoryDevice({ size: 1024, readOnly: true })
  const linear = new LinearDevice([{ name: 'rw', device: new MemoryDevice({ size: 1024 }) }, { name: 'ro', device: ro }])
  t.false(linear.writable)
  await t.throwsAsync(linear.write(0, Buffer.alloc(10)), { code: 'DST_ERR_EROFS' })
})

test('a write crossing every boundary lands at the right member offsets', async t => {
  const { mems, members } = memories([1000, 300, 2000])
  const linear = new LinearDevice(members)
  const data = pattern(1500, 3)
  await linear.write(900, data) // 100 bytes in m0, all 300 of m1, 1100 in m2
  t.true(mems[0].data.subarray(900, 1000).equals(data.subarray(0, 100)))
  t.true(mems[0].data.subarray(0, 900).equals(Buffer.alloc(900)), 'nothing before the offset')
  t.true(mems[1].data.equals(data.subarray(100, 400)))
  t.true(mems[2].data.subarray(0, 1100).equals(data.subarray(400, 1500)))
  t.true(mems[2].data.subarray(1100).equals(Buffer.alloc(900)), 'nothing past the end')
  const back = Buffer.alloc(1500)
  await linear.read(900, 1500, back)
  t.true(back.equals(data))
})

test('requests inside one member touch only that member, at the member-local offset', async t => {
  const faults = [1024, 2048, 1024].map(size => new FaultDevice(new MemoryDevice({ size })))
  const linear = new LinearDevice(faults.map((device, i) => ({ name: `f${i}`, device })))
  await linear.write(1024 + 100, Buffer.from('middle'))
  t.deepEqual(faults.map(f => f.counts.write), [0, 1, 0])
  t.is((faults[1].inner as MemoryDevice).data.subarray(100, 106).toString(), 'middle')
  const into = Buffer.alloc(6)
  await linear.read(1024 + 100, 6, into)
  t.is(into.toString(), 'middle')
  t.deepEqual(faults.map(f => f.counts.read), [0, 1, 0])
  // Ending exactly on a boundary does not touch the next member; starting on one does not touch the previous.
  await linear.write(0, Buffer.alloc(1024, 1))
  await linear.write(3072, Buffer.alloc(1024, 2))
  t.deepEqual(faults.map(f => f.counts.write), [1, 1, 1])
})

test('a read lands only in the caller\'s buffer range, pieces at their buffer offsets', async t => {
  const { mems, members } = memories([10, 10, 10])
  mems[0].data.fill(1); mems[1].data.fill(2); mems[2].data.fill(3)
  const linear = new LinearDevice(members)
  const into = Buffer.alloc(40, 0xee)
  await linear.read(5, 20, into)
  t.deepEqual([...into.subarray(0, 20)], [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3])
  t.true(into.subarray(20).every(b => b === 0xee))
})

test('a zero-size member in the middle is skipped', async t => {
  const { mems, members } = memories([100, 0, 100])
  const linear = new LinearDevice(members)
  t.is(linear.size, 200)
  await linear.write(50, pattern(100, 9))
  t.true(mems[0].data.subarray(50).equals(pattern(100, 9).subarray(0, 50)))
  t.true(mems[2].data.subarray(0, 50).equals(pattern(100, 9).subarray(50)))
  const into = Buffer.alloc(100)
  await linear.read(100, 100, into)
  t.true(into.equals(mems[2].data))
})

test('out-of-range requests are refused before any member sees them', async t => {
  const faults = [100, 100].map(size => new FaultDevice(new MemoryDevice({ size })))
  const linear = new LinearDevice(faults.map((device, i) => ({ name: `f${i}`, device })))
  await t.throwsAsync(linear.write(150, Buffer.alloc(51)), { code: 'DST_ERR_EINVAL' })
  await t.throwsAsync(linear.read(-1, 2, Buffer.alloc(2)), { code: 'DST_ERR_EINVAL' })
  t.deepEqual(faults.map(f => f.counts.write + f.counts.read), [0, 0])
})

test('trim crosses boundaries like a write', async t => {
  const { mems, members } = memories([64, 64])
  mems[0].data.fill(9); mems[1].data.fill(9)
  const linear = new LinearDevice(members)
  await linear.trim(60, 8)
  t.deepEqual([...mems[0].data.subarray(58)], [9, 9, 0, 0, 0, 0])
  t.deepEqual([...mems[1].data.subarray(0, 6)], [0, 0, 0, 0, 9, 9])
})

test('a failing member fails only the requests that touch it', async t => {
  const faults = [4096, 4096, 4096].map(size => new FaultDevice(new MemoryDevice({ size })))
  const linear = new LinearDevice(faults.map((device, i) => ({ name: `f${i}`, device })))
  faults[1].failing = true
  // Untouched members keep working, for reads and writes, right up to the boundary.
  await t.notThrowsAsync(linear.write(0, Buffer.alloc(4096, 1)))
  await t.notThrowsAsync(linear.write(8192, Buffer.alloc(4096, 3)))
  const into = Buffer.alloc(4096)
  await linear.read(8192, 4096, into)
  t.true(into.equals(Buffer.alloc(4096, 3)))
  // Inside the failing member, and across its edges, the request fails with the member's error.
  await t.throwsAsync(linear.read(4096, 1, Buffer.alloc(1)), { code: 'DST_ERR_EIO' })
  await t.throwsAsync(linear.write(4000, Buffer.alloc(200)), { code: 'DST_ERR_EIO' })
  await t.throwsAsync(linear.read(8100, 200, Buffer.alloc(200)), { code: 'DST_ERR_EIO' })
  // Once the member answers again, so does the array.
  faults[1].failing = false
  await linear.write(4000, Buffer.alloc(200, 7))
  const back = Buffer.alloc(200)
  await linear.read(4000, 200, back)
  t.true(back.equals(Buffer.alloc(200, 7)))
})

test('concurrent requests on different members complete independently', async t => {
  const faults = [4096, 4096].map(size => new FaultDevice(new MemoryDevice({ size })))
  const linear = new LinearDevice(faults.map((device, i) => ({ name: `f${i}`, device })))
  faults[0].delay = 30
  let slowDone = false
  const slow = linear.write(0, Buffer.alloc(10, 1)).then(() => { slowDone = true })
  await linear.write(4096, Buffer.alloc(10, 2))
  t.false(slowDone, 'the fast member did not wait for the slow one')
  await slow
  t.true(slowDone)
})

test('random reads and writes across boundaries agree with one Buffer (fast-check)', async t => {
  const op = fc.oneof(
    fc.record({ kind: fc.constant('write' as const), at: fc.double({ min: 0, max: 1, noNaN: true }), length: fc.integer({ min: 0, max: 6000 }), seed: fc.nat(255) }),
    fc.record({ kind: fc.constant('read' as const), at: fc.double({ min: 0, max: 1, noNaN: true }), length: fc.integer({ min: 0, max: 6000 }), seed: fc.constant(0) }),
    fc.record({ kind: fc.constant('trim' as const), at: fc.double({ min: 0, max: 1, noNaN: true }), length: fc.integer({ min: 0, max: 3000 }), seed: fc.constant(0) }),
  )
  await fc.assert(fc.asyncProperty(
    fc.array(fc.integer({ min: 1, max: 5000 }), { minLength: 2, maxLength: 4 }),
    fc.array(op, { maxLength: 40 }),
    async (sizes, ops) => {
      const { mems, members } = memories(sizes)
      const linear = new LinearDevice(members)
      const total = sizes.reduce((a, b) => a + b, 0)
      if (linear.size !== total) return false
      const model = Buffer.alloc(total)
      for (const o of ops) {
        const offset = Math.min(total, Math.floor(o.at * total))
        const length = Math.min(o.length, total - offset)
        if (o.kind === 'write') {
          const data = pattern(length, o.seed)
          await linear.write(offset, data)
          data.copy(model, offset)
        } else if (o.kind === 'trim') {
          await linear.trim(offset, length)
          model.fill(0, offset, offset + length)
        } else {
          const into = Buffer.alloc(length + 1, 0xa5)
          await linear.read(offset, length, into)
          if (!into.subarray(0, length).equals(model.subarray(offset, offset + length))) return false
          if (into[length] !== 0xa5) return false
        }
      }
      // The members, laid end to end, are exactly the model.
      return Buffer.concat(mems.map(m => m.data)).equals(model)
    },
  ), { numRuns: 200 })
  t.pass('fast-check found no counterexample') // fc.assert throws on failure
})

// Regression test (fixed): a split request used to settle as soon as ONE piece failed (`Promise.all`), while the
// other pieces were still in flight, so the caller owned its buffer again (and close() could proceed) while a late
// piece still filled it. Pieces now all settle first (node/core/settle.ts), then the first error is thrown.
test('a split read that fails settles only after all its pieces (the caller\'s buffer is not written later)', async t => {
  const fast = new FaultDevice(new MemoryDevice({ size: 4096 }))
  const slow = new FaultDevice(new MemoryDevice({ size: 4096 }))
  ;(slow.inner as MemoryDevice).data.fill(0x77)
  const linear = new LinearDevice([{ name: 'fast', device: fast }, { name: 'slow', device: slow }])
  fast.failing = true
  slow.delay = 40
  const into = Buffer.alloc(200, 0)
  await t.throwsAsync(linear.read(4000, 200, into), { code: 'DST_ERR_EIO' })
  const piecesStillInFlight = slow.inFlight
  const snapshot = Buffer.from(into)
  await sleep(80)
  t.is(piecesStillInFlight, 0, 'the slow piece was still in flight when the request settled')
  t.true(into.equals(snapshot), 'the caller\'s buffer changed after the read had failed')
})

// ---- hash -----------------------------------------------------------------------------------------------------------

const KiB = 1024

// Members without a hash of their own digest on the process's hasher: let its worker threads go at the end.
test.after.always(async () => { await closeDefaultHasher() })


/** Wraps a device's hash() to record each call (member-local offset, length, chunk). */
function spyHash (d: Device): Array<[number, number, number]> {
  const calls: Array<[number, number, number]> = []
  const hash = d.hash.bind(d)
  d.hash = (offset, length, chunk) => {
    calls.push([offset, length, chunk])
    return hash(offset, length, chunk)
  }
  return calls
}

/** Members with distinct bytes, a spy on each one's hash, and the array's bytes end to end. */
function hashRig (sizes: number[]): { linear: LinearDevice, mems: MemoryDevice[], calls: Array<Array<[number, number, number]>>, bytes: () => Buffer } {
  const { mems, members } = memories(sizes)
  mems.forEach((m, i) => m.data.set(pattern(m.size, 11 * i + 1)))
  const calls = mems.map(spyHash)
  return { linear: new LinearDevice(members), mems, calls, bytes: () => Buffer.concat(mems.map(m => m.data)) }
}

test('hash: members whose boundaries fall on chunk boundaries digest their own pieces', async t => {
  const { linear, calls, bytes } = hashRig([64 * KiB, 128 * KiB, 64 * KiB])
  const whole = await linear.hash(0, 256 * KiB, 4096)
  t.true(whole.equals(digestsOf(bytes(), 4096)), 'the whole array')
  t.deepEqual(calls, [[[0, 64 * KiB, 4096]], [[0, 128 * KiB, 4096]], [[0, 64 * KiB, 4096]]], 'each member hashed its piece, once')
  for (const c of calls) c.length = 0
  // Starting 4 KiB before the first boundary: both boundaries are whole chunks from the start; the last chunk is short.
  const part = await linear.hash(60 * KiB, 140 * KiB + 100, 4096)
  t.true(part.equals(digestsOf(bytes().subarray(60 * KiB, 200 * KiB + 100), 4096)), 'a range across two boundaries')
  t.deepEqual(calls, [[[60 * KiB, 4096, 4096]], [[0, 128 * KiB, 4096]], [[0, 8 * KiB + 100, 4096]]])
  for (const c of calls) c.length = 0
  // A range inside one member goes to that member alone.
  const inner = await linear.hash(70 * KiB, 10 * KiB, 8 * KiB)
  t.true(inner.equals(digestsOf(bytes().subarray(70 * KiB, 80 * KiB), 8 * KiB)))
  t.deepEqual(calls, [[], [[6 * KiB, 10 * KiB, 8 * KiB]], []])
})

test('hash: members that do not line up with the chunks are read and digested by the array', async t => {
  const { linear, calls, bytes } = hashRig([12 * KiB, 12 * KiB, 12 * KiB])
  const whole = await linear.hash(0, 36 * KiB, 8 * KiB)
  t.is(whole.length, 5 * DIGEST_SIZE)
  t.true(whole.equals(digestsOf(bytes(), 8 * KiB)), 'chunks straddling members are digested whole')
  t.deepEqual(calls, [[], [], []], 'no member was asked to hash')
  // From 4 KiB in, the first boundary is one chunk away but the second (20 KiB) is not: still read here.
  const part = await linear.hash(4 * KiB, 30 * KiB, 8 * KiB)
  t.true(part.equals(digestsOf(bytes().subarray(4 * KiB, 34 * KiB), 8 * KiB)))
  t.deepEqual(calls, [[], [], []])
  // From 4 KiB in, up to before the second boundary: the one boundary lines up, so the members digest.
  const aligned = await linear.hash(4 * KiB, 16 * KiB, 8 * KiB)
  t.true(aligned.equals(digestsOf(bytes().subarray(4 * KiB, 20 * KiB), 8 * KiB)))
  t.deepEqual(calls, [[[4 * KiB, 8 * KiB, 8 * KiB]], [[0, 8 * KiB, 8 * KiB]], []])
})

test('hash: random ranges and chunks over uneven members equal the digests of the bytes (fast-check)', async t => {
  await fc.assert(fc.asyncProperty(
    fc.array(fc.constantFrom(4 * KiB, 8 * KiB, 12 * KiB, 16 * KiB, 1000, 0), { minLength: 1, maxLength: 4 }).filter(s => s.some(n => n > 0)),
    fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true }),
    fc.double({ min: 0, max: 1, noNaN: true }),
    fc.constantFrom(512, 1024, 4096, 8192, 16384),
    async (sizes, at, len, chunk) => {
      const { linear, bytes } = hashRig(sizes)
      const offset = Math.floor(at * linear.size)
      const length = Math.floor(len * (linear.size - offset))
      const got = await linear.hash(offset, length, chunk)
      return got.equals(digestsOf(bytes().subarray(offset, offset + length), chunk))
    },
  ), { numRuns: 100 })
  t.pass('fast-check found no counterexample') // fc.assert throws on failure
})

test('hash: a failing member fails the hash that touches it, forwarded or read', async t => {
  const faults = [8 * KiB, 8 * KiB, 12 * KiB].map(size => new FaultDevice(new MemoryDevice({ size })))
  const linear = new LinearDevice(faults.map((device, i) => ({ name: `f${i}`, device })))
  faults[1].failing = true
  await t.throwsAsync(linear.hash(0, 16 * KiB, 8 * KiB), { code: 'DST_ERR_EIO' }) // forwarded to members 0 and 1
  await t.throwsAsync(linear.hash(4 * KiB, 8 * KiB, 8 * KiB), { code: 'DST_ERR_EIO' }) // read: 4 KiB from each
  t.is((await linear.hash(0, 8 * KiB, 4096)).length, 2 * DIGEST_SIZE, 'the healthy member alone still hashes')
  t.is((await linear.hash(16 * KiB, 12 * KiB, 4096)).length, 3 * DIGEST_SIZE)
  await t.throwsAsync(linear.hash(0, 28 * KiB + 1, 4096), { code: 'DST_ERR_EINVAL' })
  await t.throwsAsync(linear.hash(0, 4096, 3000), { code: 'DST_ERR_EINVAL' })
})
