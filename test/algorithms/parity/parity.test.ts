// Tests for algorithms/parity/parity.ts: raid35 and raid5 I/O paths against a byte model. Any single member may fail
// at any point (reads are reconstructed, writes go on) and come back through a rebuild; two down fail the array.
// After every run the members agree: at every member offset the XOR across all members is zero (parity holds).

import test from 'ava'
import fc from 'fast-check'
import { ParityDevice } from '../../../algorithms/parity/parity'
import type { Member } from '../../../algorithms/linear'
import { MemoryDevice } from '../../../node/devices/memory-device'
import { FaultDevice } from '../../../node/devices/fault-device'
import { DstError } from '../../../node/core/errors'

const K = 1024

function rig (n: number, memberSize: number): { faults: FaultDevice[], mems: MemoryDevice[], members: Member[] } {
  const mems = Array.from({ length: n }, () => new MemoryDevice({ size: memberSize }))
  const faults = mems.map(m => new FaultDevice(m))
  return { faults, mems, members: faults.map((device, i) => ({ name: `m${i}`, device })) }
}

function pattern (length: number, seed: number): Buffer {
  const b = Buffer.alloc(length)
  for (let i = 0; i < length; i++) b[i] = (seed * 29 + i * 7 + (i >> 9)) & 0xff
  return b
}

/** Parity holds: at every member offset the XOR across all members is zero. Returns the first offset where not. */
function parityBreak (mems: MemoryDevice[], upTo: number): number {
  for (let x = 0; x < upTo; x++) {
    let v = 0
    for (const m of mems) v ^= m.data[x]
    if (v !== 0) return x
  }
  return -1
}

const layouts = [
  { name: 'raid35 3 members', n: 3, options: { layout: 'raid35' as const, blockSize: 4096 } },
  { name: 'raid35 5 members', n: 5, options: { layout: 'raid35' as const, blockSize: 4096 } },
  { name: 'raid5 3 members', n: 3, options: { layout: 'raid5' as const, chunk: 4096 } },
  { name: 'raid5 5 members', n: 5, options: { layout: 'raid5' as const, chunk: 8192 } },
]

test('sizes: (n - 1) × the smallest member in whole fragments or chunks; bad member counts are config errors that say why', t => {
  const a = new ParityDevice({ name: 'p', members: rig(5, 64 * K + 100).members, layout: 'raid35' })
  t.is(a.size, 4 * 64 * K)
  t.is(a.blockSize, 4096)
  t.false(a.canTrim)
  const b = new ParityDevice({ name: 'p', members: rig(4, 100 * K).members, layout: 'raid5', chunk: 16 * K })
  t.is(b.size, 3 * 96 * K, 'six whole 16 KiB chunks per member')
  const four = t.throws(() => new ParityDevice({ name: 'p', members: rig(4, 64 * K).members, layout: 'raid35' }))
  t.is((four as DstError).code, 'DST_ERR_CONFIG')
  t.regex(four?.message ?? '', /parity 'p': raid35 needs 2\^k data members plus one parity member \(3, 5, 9 or 17 members\), got 4/)
  t.regex(t.throws(() => new ParityDevice({ name: 'p', members: rig(2, 64 * K).members, layout: 'raid5' }))?.message ?? '', /at least three members/)
})

for (const l of layouts) {
  test(`${l.name} property: random writes and reads, one member failing and rebuilt at any point, agree with the model; parity holds`, async t => {
    const memberSize = 64 * K
    await fc.assert(fc.asyncProperty(
      fc.array(fc.oneof(
        fc.record({ op: fc.constant('write' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 40 * K }), seed: fc.nat(255) }),
        fc.record({ op: fc.constant('read' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 40 * K }) }),
        fc.record({ op: fc.constant('fail' as const), member: fc.nat(l.n - 1) }),
        fc.record({ op: fc.constant('rebuild' as const) }),
      ), { minLength: 1, maxLength: 30 }),
      async ops => {
        const { faults, mems, members } = rig(l.n, memberSize)
        const dev = new ParityDevice({ name: 'p', members, ...l.options })
        const model = Buffer.alloc(dev.size)
        let failed = -1
        for (const o of ops) {
          if (o.op === 'fail') {
            if (failed === -1) { failed = o.member; faults[failed].failing = true }
          } else if (o.op === 'rebuild') {
            if (failed !== -1) {
              faults[failed].failing = false
              await dev.rebuild(`m${failed}`)
              failed = -1
            }
          } else {
            const at = o.at % dev.size
            const len = Math.min(o.len, dev.size - at)
            if (o.op === 'write') {
              const data = pattern(len, o.seed)
              await dev.write(at, data)
              data.copy(model, at)
            } else {
              const into = Buffer.alloc(len)
              await dev.read(at, len, into)
              if (!into.equals(model.subarray(at, at + len))) return false
            }
          }
        }
        if (failed !== -1) { faults[failed].failing = false; await dev.rebuild(`m${failed}`) }
        const all = Buffer.alloc(dev.size)
        await dev.read(0, dev.size, all)
        return all.equals(model) && parityBreak(mems, memberSize) === -1 && dev.status().state === 'online'
      }), { numRuns: 60 })
    t.pass('60 random runs agreed with the model')
  })

  test(`${l.name}: concurrent writes to different parts of the same stripes keep parity`, async t => {
    const { mems, members } = rig(l.n, 64 * K)
    const dev = new ParityDevice({ name: 'p', members, ...l.options })
    const model = Buffer.alloc(dev.size)
    const writes: Array<Promise<void>> = []
    // 1 KiB pieces, every other KiB of the first 96 KiB, all at once: many share a stripe or block.
    for (let i = 0; i < 48; i++) {
      const data = pattern(1024, i)
      data.copy(model, i * 2048)
      writes.push(dev.write(i * 2048, data))
    }
    await Promise.all(writes)
    t.is(parityBreak(mems, 64 * K), -1)
    const all = Buffer.alloc(dev.size)
    await dev.read(0, dev.size, all)
    t.true(all.equals(model))
  })

  test(`${l.name}: with two members down requests fail with NOLEG and the array shows failed; one down shows degraded`, async t => {
    const { faults, members } = rig(l.n, 64 * K)
    const dev = new ParityDevice({ name: 'p', members, ...l.options })
    await dev.write(0, pattern(dev.size, 3))
    faults[0].failing = true
    const into = Buffer.alloc(dev.size)
    await dev.read(0, dev.size, into)
    t.true(into.equals(pattern(dev.size, 3)), 'one down: everything reconstructed')
    t.is(dev.status().state, 'degraded')
    faults[1].failing = true
    await t.throwsAsync(dev.read(0, dev.size, into), { code: 'DST_ERR_NOLEG' })
    await t.throwsAsync(dev.write(0, Buffer.alloc(4096)), { code: 'DST_ERR_NOLEG' })
    t.is(dev.status().state, 'failed')
  })
}

test('raid35: a whole-block write reads nothing; a sub-block write reads its blocks once', async t => {
  const { faults, members } = rig(5, 64 * K)
  const dev = new ParityDevice({ name: 'p', members, layout: 'raid35' })
  await dev.write(0, pattern(16 * K, 1))
  t.is(dev.counters.preReads, 0)
  t.deepEqual(faults.map(f => f.counts.read), [0, 0, 0, 0, 0])
  t.deepEqual(faults.map(f => f.counts.writeBytes), [4 * K, 4 * K, 4 * K, 4 * K, 4 * K], 'a quarter of each block to each data member, parity the same size')
  await dev.write(4096 + 100, Buffer.from('x'))
  t.is(dev.counters.preReads, 1)
  t.is(dev.counters.preReadBytes, 4096)
})

test('raid5: full-stripe writes read nothing; small writes read old data and parity; counters say so', async t => {
  const { faults, members } = rig(5, 64 * K)
  const dev = new ParityDevice({ name: 'p', members, layout: 'raid5', chunk: 4096 })
  await dev.write(0, pattern(4 * 4096, 1))
  t.is(dev.counters.fullStripeWrites, 1)
  t.is(dev.counters.preReadBytes, 0)
  t.deepEqual(faults.map(f => f.counts.read), [0, 0, 0, 0, 0])
  await dev.write(100, Buffer.alloc(512, 7))
  t.is(dev.counters.preReadBytes, 1024, 'old data and old parity under 512 bytes')
})

for (const l of layouts) {
  test(`${l.name}: writes while a member is rebuilt reach it; the rebuild never undoes them; parity holds after`, async t => {
    const { faults, mems, members } = rig(l.n, 256 * K)
    const dev = new ParityDevice({ name: 'p', members, ...l.options })
    const model = pattern(dev.size, 9)
    await dev.write(0, model)
    faults[1].failing = true
    // Written while m1 is down: m1 misses these.
    const hole = pattern(64 * K, 4)
    await dev.write(100 * K, hole)
    hole.copy(model, 100 * K)
    faults[1].failing = false
    faults[1].delay = 1
    const rebuilding = dev.rebuild('m1', 16 * K)
    const writes: Array<Promise<void>> = []
    for (let i = 0; i < 20; i++) {
      const data = pattern(3000, 50 + i)
      const at = (i * 37 * K) % (dev.size - 3000)
      data.copy(model, at)
      writes.push(dev.write(at, data))
      await new Promise(resolve => setImmediate(resolve))
    }
    await Promise.all([rebuilding, ...writes])
    t.is(dev.states[1], 'up')
    t.is(parityBreak(mems, 256 * K), -1)
    const all = Buffer.alloc(dev.size)
    faults[0].failing = true // read m1's share for real: m0's is reconstructed from the rest
    await dev.read(0, dev.size, all)
    t.true(all.equals(model))
  })
}
