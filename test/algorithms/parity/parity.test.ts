// Tests for algorithms/parity/parity.ts: raid35 and raid5 on the redundancy parts, against a byte model. Any single
// member may fail at any point (reads are reconstructed, writes go on and mark the regions it misses) and come back
// (only those regions are rebuilt, from the others); two down fail the array; the array node may crash at any point
// (reopened on the same members and intent map: the parity of regions being written is recomputed). After every run
// the members agree: at every member offset the XOR across all members is zero (parity holds).

import test from 'ava'
import fc from 'fast-check'
import { ParityDevice } from '../../../algorithms/parity/parity'
import type { Member } from '../../../algorithms/linear'
import { MemoryDevice } from '../../../node/devices/memory-device'
import { FaultDevice } from '../../../node/devices/fault-device'
import { DstError } from '../../../node/core/errors'
import { MemoryIntentStore } from '../../../algorithms/intent-store'
import { ManualClock } from '../../helpers/clock'
import { until } from '../../helpers/wait'

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


type Opts = { layout: 'raid35', blockSize: number } | { layout: 'raid5', chunk: number }

/** Opens a parity array on a manual clock, rebuilds started by hand. */
async function open (members: Member[], options: Opts, store = new MemoryIntentStore(), extra: Record<string, unknown> = {}): Promise<{ dev: ParityDevice, clock: ManualClock, store: MemoryIntentStore, log: string[] }> {
  const clock = new ManualClock()
  const log: string[] = []
  const dev = await ParityDevice.open({ name: 'p', members, ...options, region: 8 * K, store, clock, autoResync: false, log: m => log.push(m), ...extra })
  return { dev, clock, store, log }
}

/** Brings a failed member back: its fault cleared, the probe takes it back as stale, the rebuild runs to the end. */
async function back (dev: ParityDevice, clock: ManualClock, fault: FaultDevice, name: string): Promise<void> {
  fault.failing = false
  const leg = dev.legs.named(name)
  for (let i = 0; i < 20 && leg.absent; i++) await clock.advance(1000)
  await until(`member ${name} back`, () => !leg.absent, 5000, 5)
  await dev.startResync(leg)
}

test('sizes: (n - 1) × the smallest member in whole fragments or chunks; bad member counts are config errors that say why', async t => {
  const { dev: a } = await open(rig(5, 64 * K + 100).members, { layout: 'raid35', blockSize: 4096 })
  t.is(a.size, 4 * 64 * K)
  t.is(a.blockSize, 4096)
  t.false(a.canTrim)
  const { dev: b } = await open(rig(4, 100 * K).members, { layout: 'raid5', chunk: 16 * K }, undefined, { region: 16 * K })
  t.is(b.size, 3 * 96 * K, 'six whole 16 KiB chunks per member')
  const four = await t.throwsAsync(open(rig(4, 64 * K).members, { layout: 'raid35', blockSize: 4096 }))
  t.is((four as DstError).code, 'DST_ERR_CONFIG')
  t.regex(four?.message ?? '', /parity 'p': raid35 needs 2\^k data members plus one parity member \(3, 5, 9 or 17 members\), got 4/)
  t.regex((await t.throwsAsync(open(rig(2, 64 * K).members, { layout: 'raid5', chunk: 4096 })))?.message ?? '', /at least three members/)
  t.regex((await t.throwsAsync(open(rig(5, 64 * K).members, { layout: 'raid5', chunk: 16 * K })))?.message ?? '', /region 8192 is not a multiple of 16384/)
  t.regex((await t.throwsAsync(open(rig(5, 64 * K).members, { layout: 'raid35', blockSize: 1000 })))?.message ?? '', /fragments of 250 bytes/)
  const mixed = rig(5, 64 * K).members
  mixed[3] = { name: 'big', device: new MemoryDevice({ size: 64 * K, blockSize: 4096 }) }
  t.regex((await t.throwsAsync(open(mixed, { layout: 'raid35', blockSize: 4096 })))?.message ?? '', /fragments of 1024 bytes are not a multiple of a member's block size 4096 \(member 'big'\)/)
  const { dev: wide } = await open(mixed, { layout: 'raid35', blockSize: undefined as unknown as number }, undefined, { region: 16 * K })
  t.is(wide.blockSize, 16 * K, 'default block: one 4 KiB member block per data member')
  const twice = rig(3, 64 * K).members
  twice[2] = { ...twice[2], name: 'm0' }
  t.regex((await t.throwsAsync(open(twice, { layout: 'raid5', chunk: 4096 })))?.message ?? '', /member 'm0' is named twice/)
})

for (const l of layouts) {
  test(`${l.name} property: writes and reads, one member failing and returning at any point, the array node crashing and reopening, agree with the model; parity holds`, async t => {
    const memberSize = 64 * K
    await fc.assert(fc.asyncProperty(
      fc.array(fc.oneof(
        fc.record({ op: fc.constant('write' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 40 * K }), seed: fc.nat(255) }),
        fc.record({ op: fc.constant('read' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 40 * K }) }),
        fc.record({ op: fc.constant('fail' as const), member: fc.nat(l.n - 1) }),
        fc.record({ op: fc.constant('return' as const) }),
        fc.record({ op: fc.constant('crash' as const), torn: fc.nat(3) }),
      ), { minLength: 1, maxLength: 30 }),
      async ops => {
        const { faults, mems, members } = rig(l.n, memberSize)
        const store = new MemoryIntentStore()
        let { dev, clock } = await open(members, l.options, store)
        const model = Buffer.alloc(dev.size)
        let failed = -1
        for (const o of ops) {
          if (o.op === 'fail') {
            if (failed === -1) { failed = o.member; faults[failed].failing = true }
          } else if (o.op === 'return') {
            if (failed !== -1) { await back(dev, clock, faults[failed], `m${failed}`); failed = -1 }
          } else if (o.op === 'crash') {
            // The node dies (nothing closed, nothing flushed past what the store holds). With no member missing, a
            // write torn at the crash (data on some members, not yet on others) is what recovery must mend: the
            // region's bits are still set, and its parity is recomputed from the data at reopen.
            if (failed === -1 && o.torn > 0) {
              const at = (o.torn * 13 * K) % (dev.size - 4096)
              const torn = pattern(4096, 200 + o.torn)
              dev.intent.markIntent(0, dev.regions - 1)
              await dev.intent.save()
              await tornWrite(dev, mems, l.options, at, torn)
              torn.copy(model, at)
            }
            await dev.intent.save()
            dev.stopping = true
            try {
              ;({ dev, clock } = await open(members, l.options, store))
            } catch (err) {
              // A crash while a member was missing, with regions still marked: refused, as md refuses a dirty
              // degraded array; every acknowledged write is whole on the members present, so forcing keeps them.
              if ((err as DstError).code !== 'DST_ERR_DIRTYDEGRADED' || failed === -1) throw err
              ;({ dev, clock } = await open(members, l.options, store, { forceDegradedStart: true }))
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
        if (failed !== -1) await back(dev, clock, faults[failed], `m${failed}`)
        const all = Buffer.alloc(dev.size)
        await dev.read(0, dev.size, all)
        const ok = all.equals(model) && parityBreak(mems, memberSize) === -1 && dev.status().state === 'online'
        await dev.close()
        return ok
      }), { numRuns: Number(process.env.PARITY_RUNS ?? 40) })
    t.pass('40 random runs agreed with the model')
  })

  test(`${l.name}: concurrent writes to different parts of the same stripes keep parity`, async t => {
    const { mems, members } = rig(l.n, 64 * K)
    const { dev } = await open(members, l.options)
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

  test(`${l.name}: with two members down requests fail with NOLEG and the array shows failed; one down shows degraded; it recovers by itself when one returns`, async t => {
    const { faults, members } = rig(l.n, 64 * K)
    const { dev, clock } = await open(members, l.options, undefined, { autoResync: true })
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
    faults[1].failing = false
    for (let i = 0; i < 10 && dev.legs.named('m1').state !== 'in-sync'; i++) await clock.advance(1000)
    await until('m1 back in sync', () => dev.legs.named('m1').state === 'in-sync', 5000, 5)
    t.is(dev.status().state, 'degraded', 'one member still down')
    await dev.read(0, dev.size, into)
    t.true(into.equals(pattern(dev.size, 3)))
  })

  test(`${l.name}: a member that returns gets only the regions written while it was away, reconstructed from the others`, async t => {
    const { faults, mems, members } = rig(l.n, 256 * K)
    const { dev, clock } = await open(members, l.options)
    const model = pattern(dev.size, 9)
    await dev.write(0, model)
    await clock.advance(6000)
    faults[1].failing = true
    const piece = pattern(8 * K * (l.n - 1), 4)
    await dev.write(8 * K * (l.n - 1) * 3, piece) // region 3: 8 KiB of each member
    piece.copy(model, 8 * K * (l.n - 1) * 3)
    t.is(dev.legs.named('m1').state, 'failed')
    t.is(dev.legStates()[1].dirtyBytes, 8 * K, 'one region missed')
    const before = faults[1].counts.writeBytes
    await back(dev, clock, faults[1], 'm1')
    t.is(dev.legs.named('m1').state, 'in-sync')
    t.is(faults[1].counts.writeBytes - before, 8 * K, 'only the region it missed was written to it')
    t.is(parityBreak(mems, 256 * K), -1)
    faults[0].failing = true // read m1 for real: m0 is reconstructed
    const all = Buffer.alloc(dev.size)
    await dev.read(0, dev.size, all)
    t.true(all.equals(model))
  })
}

test('raid35: a whole-block write reads nothing; a sub-block write reads its blocks once', async t => {
  const { faults, members } = rig(5, 64 * K)
  const { dev } = await open(members, { layout: 'raid35', blockSize: 4096 }, undefined, { assumeClean: true })
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
  const { dev } = await open(members, { layout: 'raid5', chunk: 4096 }, undefined, { assumeClean: true })
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
    const { dev, clock } = await open(members, l.options)
    const model = pattern(dev.size, 9)
    await dev.write(0, model)
    faults[1].failing = true
    // Written while m1 is down: m1 misses these.
    const hole = pattern(64 * K, 4)
    await dev.write(100 * K, hole)
    hole.copy(model, 100 * K)
    faults[1].failing = false
    const leg = dev.legs.named('m1')
    for (let i = 0; i < 20 && leg.absent; i++) await clock.advance(1000)
    await until('m1 back', () => !leg.absent, 5000, 5)
    faults[1].delay = 1
    const rebuilding = dev.startResync('m1')
    const writes: Array<Promise<void>> = []
    for (let i = 0; i < 20; i++) {
      const data = pattern(3000, 50 + i)
      const at = (i * 37 * K) % (dev.size - 3000)
      data.copy(model, at)
      writes.push(dev.write(at, data))
      await new Promise(resolve => setImmediate(resolve))
    }
    await Promise.all([rebuilding, ...writes])
    t.is(leg.state, 'in-sync')
    t.is(parityBreak(mems, 256 * K), -1)
    const all = Buffer.alloc(dev.size)
    faults[0].failing = true // read m1's share for real: m0's is reconstructed from the rest
    await dev.read(0, dev.size, all)
    t.true(all.equals(model))
  })

  test(`${l.name}: a crash while degraded with a region being written is refused at reopen, clearly; forceDegradedStart starts it`, async t => {
    const { faults, members } = rig(l.n, 64 * K)
    const store = new MemoryIntentStore()
    const { dev } = await open(members, l.options, store)
    await dev.write(0, pattern(dev.size, 5))
    faults[0].failing = true
    await dev.write(0, pattern(4096, 6))
    // The crash: a write was being made to region 2 when the node died, with m0 missing.
    dev.intent.markIntent(2, 2)
    await dev.intent.save()
    dev.stopping = true
    faults[0].failing = false
    // m0 is back by the restart, but it missed what was written: it cannot vouch for region 2 either.
    const refused = await t.throwsAsync(open(members, l.options, store))
    t.is((refused as DstError).code, 'DST_ERR_DIRTYDEGRADED')
    t.regex(refused?.message ?? '', /were being written when the array stopped while 'm0' \(stale\) was missing/)
    t.regex(refused?.message ?? '', /forceDegradedStart/)
    const { dev: forced, clock, log } = await open(members, l.options, store, { forceDegradedStart: true })
    t.true(log.some(m => /forceDegradedStart/.test(m)))
    await back(forced, clock, faults[0], 'm0')
    const all = Buffer.alloc(4096)
    await forced.read(0, 4096, all)
    t.true(all.equals(pattern(4096, 6)), 'the write made while m0 was away survived')
  })
}

test('a new parity array over members that hold data is refused; initialSync computes parity; assumeClean takes it as is', async t => {
  const { mems, members } = rig(5, 64 * K)
  mems[2].data.fill(9, 1000, 2000)
  const refused = await t.throwsAsync(open(members, { layout: 'raid5', chunk: 4096 }))
  t.is((refused as DstError).code, 'DST_ERR_NEWPARITY')
  t.regex(refused?.message ?? '', /'m2' \(data at byte 0\) holds data.*initialSync/)
  t.not(parityBreak(mems, 64 * K), -1)
  const { dev } = await open(members, { layout: 'raid5', chunk: 4096 }, undefined, { initialSync: true })
  await dev.initialSyncDone()
  t.is(parityBreak(mems, 64 * K), -1, 'parity computed over the whole array')
  t.is(dev.status().state, 'online')
  await dev.close()
})

test('verify finds a corrupted byte on a member, repair rewrites parity from the data, and a second verify is clean', async t => {
  for (const options of [{ layout: 'raid35' as const, blockSize: 4096 }, { layout: 'raid5' as const, chunk: 4096 }]) {
    const { mems, members } = rig(5, 64 * K)
    const { dev } = await open(members, options)
    await dev.write(0, pattern(dev.size, 11))
    mems[4].data[20 * K + 5] ^= 0x40 // behind the array's back
    const found = await dev.verify()
    t.is(found.state, 'done')
    t.is(found.mismatches, 1)
    t.is(found.mismatchedRegions[0].region, 2)
    t.false(found.mismatchedRegions[0].repaired)
    const fixed = await dev.verify({ repair: true })
    t.is(fixed.repairedRegions, 1)
    t.is(parityBreak(mems, 64 * K), -1)
    const clean = await dev.verify()
    t.is(clean.mismatches, 0)
    t.is(clean.comparedBytes, dev.size)
    await t.throwsAsync(dev.verify({ from: 'm0' }), { message: /no member to take it "from"/ })
  }
})

/** A write torn by a crash: the new bytes reach the data members but parity is not updated. */
async function tornWrite (dev: ParityDevice, mems: MemoryDevice[], options: Opts, at: number, data: Buffer): Promise<void> {
  // Which member bytes hold the array's bytes is the layout's business: write through a scratch array over copies of
  // the members, then copy only the data members' bytes back (parity stays old).
  const copies = mems.map(m => { const c = new MemoryDevice({ size: m.size }); c.data.set(m.data); return c })
  const { dev: scratch } = await open(copies.map((device, i) => ({ name: `m${i}`, device })), options, undefined, { assumeClean: true })
  await scratch.write(at, data)
  for (const [i, m] of mems.entries()) {
    for (let x = 0; x < m.size; x++) {
      if (copies[i].data[x] === m.data[x]) continue
      if (!isParityByte(options, mems.length, i, x)) m.data[x] = copies[i].data[x]
    }
  }
}

function isParityByte (options: Opts, n: number, member: number, x: number): boolean {
  if (options.layout === 'raid35') return member === n - 1
  const stripe = Math.floor(x / options.chunk)
  return member === (n - 1) - (stripe % n)
}

test('extents: holes where every member has a hole over whole blocks (raid35) or stripes (raid5); data elsewhere; all data while a member is missing', async t => {
  for (const options of [{ layout: 'raid35' as const, blockSize: 4096 }, { layout: 'raid5' as const, chunk: 4096 }]) {
    const { faults, members } = rig(5, 256 * K)
    const { dev, clock } = await open(members, options)
    // The memory members keep 64 KiB pages: member page 2 is array bytes [512 KiB, 768 KiB) in both layouts.
    await dev.write(512 * K + 1000, pattern(100, 1))
    const runs = await dev.extents(0, dev.size)
    t.deepEqual(runs, [{ offset: 0, length: 512 * K, hole: true }, { offset: 512 * K, length: 256 * K, hole: false }, { offset: 768 * K, length: 256 * K, hole: true }], options.layout)
    t.is(runs.reduce((n, r) => n + r.length, 0), dev.size, 'the runs cover the range')
    const into = Buffer.alloc(runs[0].length)
    await dev.read(runs[0].offset, runs[0].length, into)
    t.true(into.every(b => b === 0), 'a hole reads as zeros')
    faults[1].failing = true
    t.deepEqual(await dev.extents(0, dev.size), [{ offset: 0, length: dev.size, hole: false }], 'a member cannot answer: all data')
    t.is(dev.legs.named('m1').state, 'failed')
    t.deepEqual(await dev.extents(0, dev.size), [{ offset: 0, length: dev.size, hole: false }], 'a member is missing: all data')
    await back(dev, clock, faults[1], 'm1')
    await dev.close()
  }
})

test('a member that comes back with another disk is foreign and never written; replace takes the disk on and rebuilds it whole from the others', async t => {
  const { faults, mems, members } = rig(5, 64 * K)
  const { dev, clock } = await open(members, { layout: 'raid5', chunk: 4096 })
  const model = pattern(dev.size, 3)
  await dev.write(0, model)
  faults[2].failing = true
  const piece = pattern(8 * K * 4, 4)
  await dev.write(0, piece)
  piece.copy(model, 0)
  t.is(dev.legs.named('m2').state, 'failed')
  // m2's place is taken by another disk holding its own data.
  const theirs = pattern(64 * K, 99)
  mems[2].data.set(theirs)
  faults[2].identity = '11111111-2222-4333-8444-555555555555'
  const before = faults[2].counts.writeBytes
  faults[2].failing = false
  for (let i = 0; i < 10 && dev.legs.named('m2').state !== 'foreign'; i++) await clock.advance(1000)
  await until('m2 foreign', () => dev.legs.named('m2').state === 'foreign', 5000, 5)
  await dev.write(40 * K, pattern(4096, 5))
  pattern(4096, 5).copy(model, 40 * K)
  t.is(faults[2].counts.writeBytes, before, 'nothing was written to the other disk')
  t.true(mems[2].data.equals(theirs))
  await t.throwsAsync(dev.replaceLeg('m0'), { code: 'DST_ERR_NOTFOREIGN' })
  t.regex(await dev.replaceLeg('m2'), /taken on in place of .*rebuilt from the other members/)
  await dev.startResync('m2')
  t.is(dev.legs.named('m2').state, 'in-sync')
  t.is(dev.legStates()[2].dirtyBytes, 0)
  t.is(parityBreak(mems, 64 * K), -1, 'the new disk holds its share of the array')
  faults[0].failing = true
  const all = Buffer.alloc(dev.size)
  await dev.read(0, dev.size, all)
  t.true(all.equals(model))
})

test('members listed in another order than the array was made with are refused, naming both orders; nothing is written', async t => {
  const { faults, members } = rig(5, 64 * K)
  const store = new MemoryIntentStore()
  const { dev } = await open(members, { layout: 'raid5', chunk: 4096 }, store)
  await dev.write(0, pattern(dev.size, 8))
  await dev.close()
  const swapped = [members[1], members[0], ...members.slice(2)]
  const before = faults.map(f => f.counts.writeBytes)
  const err = await t.throwsAsync(open(swapped, { layout: 'raid5', chunk: 4096 }, store))
  t.is((err as DstError).code, 'DST_ERR_CONFIG')
  t.regex(err?.message ?? '', /'m1' was member 2, now 1; 'm0' was member 1, now 2.*list them as before \(m0, m1, m2, m3, m4\)/)
  t.deepEqual(faults.map(f => f.counts.writeBytes), before, 'nothing written')
  const { dev: again } = await open(members, { layout: 'raid5', chunk: 4096 }, store)
  const all = Buffer.alloc(again.size)
  await again.read(0, again.size, all)
  t.true(all.equals(pattern(again.size, 8)))
})
