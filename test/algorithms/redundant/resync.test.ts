import test from 'ava'
import { IntentMap } from '../../../algorithms/redundant/intent-map'
import { Leg } from '../../../algorithms/redundant/leg'
import { LegSet } from '../../../algorithms/redundant/leg-set'
import { RegionGate } from '../../../algorithms/redundant/region-gate'
import { Resync } from '../../../algorithms/redundant/resync'
import type { ArrayContext } from '../../../algorithms/redundant/context'
import { MemoryIntentStore } from '../../../algorithms/intent-store'
import { MemoryDevice, PAGE_SIZE } from '../../../node/devices/memory-device'
import { FaultDevice } from '../../../node/devices/fault-device'
import { MirrorDevice } from '../../../algorithms/mirror'
import { ManualClock } from '../../helpers/clock'

const REGION = 256 * 1024 // four 64 KiB compare chunks
const REGIONS = 8
const SIZE = REGION * REGIONS

function rig (compare: boolean, memB = new MemoryDevice({ size: SIZE })): { ctx: ArrayContext, resync: Resync, a: Leg, b: Leg, memA: MemoryDevice, memB: MemoryDevice, failed: string[] } {
  const log = (): void => {}
  let intent: IntentMap | null = null
  const hooks = { log, event: () => { intent?.event() } }
  const memA = new MemoryDevice({ size: SIZE })
  const a = new Leg('a', memA, REGIONS, new Uint8Array(1), { name: 'a', identity: '', inSync: true }, 100, hooks)
  const b = new Leg('b', memB, REGIONS, new Uint8Array(1), { name: 'b', identity: '', inSync: true }, 100, hooks)
  const legs = new LegSet('m', [a, b])
  const gate = new RegionGate()
  intent = new IntentMap('m', { uuid: 'u', size: SIZE, region: REGION, events: 1, legs: [] }, new MemoryIntentStore(), legs, gate, REGIONS, log)
  const ctx: ArrayContext = {
    name: 'm', size: SIZE, region: REGION, regions: REGIONS, blockSize: 512, legs, gate, intent, stopping: false,
    config: { resyncRate: 0, clearDelay: 1000, probeInterval: 100, autoResync: true, compare, log, clock: new ManualClock() },
  }
  const failed: string[] = []
  const resync = new Resync(ctx, l => { failed.push(l.name) })
  return { ctx, resync, a, b, memA, memB, failed }
}

test('a resync copies the stale regions from a leg that holds them and puts the leg in sync', async t => {
  const { resync, b, memA, memB } = rig(false)
  memA.data.fill(7)
  b.markStale(2, 4)
  b.to('stale')
  await resync.start(b)
  t.is(b.state, 'in-sync')
  t.is(b.staleCount, 0)
  t.is(resync.copiedBytes, 3 * REGION)
  t.true(memB.data.subarray(2 * REGION, 5 * REGION).every(x => x === 7))
  t.true(memB.data.subarray(0, 2 * REGION).every(x => x === 0), 'regions it held are not copied')
})

test('checksum resync compares first and copies only the chunks that differ', async t => {
  const { resync, b, memA, memB } = rig(true)
  memA.data.fill(7, 0, REGION)
  memB.data.fill(7, 0, REGION)
  memA.data[100] = 1 // one chunk of region 0 differs
  b.markStale(0, 1)
  b.to('stale')
  await resync.start(b)
  t.is(b.state, 'in-sync')
  t.is(resync.comparedBytes, 2 * REGION)
  t.true(resync.copiedBytes < REGION, `copied ${resync.copiedBytes} bytes`)
  t.true(memA.data.equals(memB.data))
})

test('with no leg to copy from, the resync pauses and the leg stays stale', async t => {
  const { resync, ctx, a, b } = rig(false)
  b.markStale(0, 0)
  b.to('stale')
  a.to('failed')
  await resync.start(b)
  t.is(b.state, 'stale')
  t.is(b.pausedAt, ctx.intent.events)
  t.regex(b.lastError, /no leg holds region 0/)
})

// ---- sparse-aware resync: the source's holes ------------------------------------------------------------------------

async function whole (d: MemoryDevice): Promise<Buffer> {
  const b = Buffer.alloc(d.size)
  await d.read(0, d.size, b)
  return b
}

for (const compare of [false, true]) {
  test(`a full resync of a blank leg from a mostly empty source copies only the data: holes neither read nor written (compare ${String(compare)})`, async t => {
    const { resync, b, memA, memB } = rig(compare)
    await memA.write(REGION + 5, Buffer.alloc(1000, 3)) // one page of region 1
    await memA.write(5 * REGION + 2 * PAGE_SIZE, Buffer.alloc(PAGE_SIZE + 1, 4)) // two pages of region 5
    b.markStale(0, REGIONS - 1)
    b.to('stale')
    await resync.start(b)
    t.is(b.state, 'in-sync')
    t.is(resync.copiedBytes, 3 * PAGE_SIZE, 'the source\'s data pages, nothing else')
    t.is(resync.skippedBytes, SIZE - 3 * PAGE_SIZE)
    t.is(resync.comparedBytes, compare ? 3 * PAGE_SIZE : 0, 'only data ranges are digested')
    t.is(memB.allocatedBytes, 3 * PAGE_SIZE, 'the new leg stays sparse')
    t.true((await whole(memB)).equals(await whole(memA)))
  })
}

test('under a source hole, a leg that holds data and can trim is trimmed, not written', async t => {
  const { resync, b, memA, memB } = rig(true)
  await memA.write(0, Buffer.alloc(PAGE_SIZE, 1))
  await memB.write(0, Buffer.alloc(PAGE_SIZE, 1))
  await memB.write(3 * REGION + 100, Buffer.alloc(2 * PAGE_SIZE, 0xee)) // stale junk where the source is a hole
  b.markStale(0, REGIONS - 1)
  b.to('stale')
  await resync.start(b)
  t.is(b.state, 'in-sync')
  t.is(resync.copiedBytes, 0, 'region 0 matched by digest; the junk was trimmed away')
  t.is(memB.allocatedBytes, PAGE_SIZE)
  t.deepEqual(await memB.extents(3 * REGION, REGION), [{ offset: 3 * REGION, length: REGION, hole: true }])
  t.true((await whole(memB)).equals(await whole(memA)))
})

for (const compare of [false, true]) {
  test(`a leg that cannot trim gets zeros only where it may hold data${compare ? ', and only in chunks whose digests are not zeros\'' : ''} (compare ${String(compare)})`, async t => {
    const target = new MemoryDevice({ size: SIZE, canTrim: false })
    const { resync, b, memA, memB } = rig(compare, target)
    t.false(memB.canTrim)
    await memA.write(0, Buffer.alloc(10, 1))
    await memB.write(2 * REGION, Buffer.alloc(PAGE_SIZE, 0xee)) // junk under a source hole
    await memB.write(6 * REGION, Buffer.alloc(PAGE_SIZE)) // zeros that are data: nothing to change, if compared
    b.markStale(0, REGIONS - 1)
    b.to('stale')
    await resync.start(b)
    t.is(b.state, 'in-sync')
    t.is(resync.copiedBytes, PAGE_SIZE + PAGE_SIZE + (compare ? 0 : PAGE_SIZE), 'region 0\'s data page, zeros over the junk, and over the zero page only without digests')
    t.is(resync.skippedBytes, SIZE - PAGE_SIZE - (compare ? PAGE_SIZE : 2 * PAGE_SIZE))
    t.true((await whole(memB)).equals(await whole(memA)))
  })
}

test('a new leg added to a mostly empty mirror of memory devices copies only the data; status and counters say what was skipped', async t => {
  const size = 64 * 1024 * 1024
  const region = 256 * 1024
  const a = new MemoryDevice({ size })
  const b = new MemoryDevice({ size })
  const m = await MirrorDevice.open({ name: 'm', legs: [{ name: 'a', device: a }, { name: 'b', device: b }], region, store: new MemoryIntentStore(), clearDelay: 10, probeInterval: 10 })
  t.teardown(() => m.close())
  const deadline = Date.now() + 10000
  while (m.legStates().some(l => l.state !== 'in-sync') && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 10))
  const pieces: Array<[number, number]> = [[0, 4096], [7 * 1024 * 1024 + 3, 1024 * 1024], [40 * 1024 * 1024, 3 * PAGE_SIZE], [size - 100, 100]]
  for (const [at, n] of pieces) await m.write(at, Buffer.alloc(n, 0x5a))
  const dataBytes = a.allocatedBytes
  t.is(dataBytes, (1 + 17 + 3 + 1) * PAGE_SIZE)
  const skippedBefore = m.skippedBytes
  const copiedBefore = m.resyncedBytes

  const fresh = new FaultDevice(new MemoryDevice({ size }))
  await m.addLeg({ name: 'c', device: fresh })
  while (m.legStates().some(l => l.state !== 'in-sync') && Date.now() < deadline + 20000) await new Promise(resolve => setTimeout(resolve, 10))
  t.deepEqual(m.legStates().map(l => l.state), ['in-sync', 'in-sync', 'in-sync'])
  t.is(fresh.counts.writeBytes, dataBytes, 'the new leg was written the data only')
  t.is(fresh.counts.trim, 0, 'a blank leg needs no trim')
  t.is(m.resyncedBytes - copiedBefore, dataBytes)
  t.is(m.skippedBytes - skippedBefore, size - dataBytes)
  t.is(m.status().resyncSkippedBytes, m.skippedBytes)
  t.is((fresh.inner as MemoryDevice).allocatedBytes, dataBytes)
  t.true((await whole(fresh.inner as MemoryDevice)).equals(await whole(a)), 'data identical afterwards')
})
