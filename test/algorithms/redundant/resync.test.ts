import test from 'ava'
import { IntentMap } from '../../../algorithms/redundant/intent-map'
import { Leg } from '../../../algorithms/redundant/leg'
import { LegSet } from '../../../algorithms/redundant/leg-set'
import { RegionGate } from '../../../algorithms/redundant/region-gate'
import { Resync } from '../../../algorithms/redundant/resync'
import type { ArrayContext } from '../../../algorithms/redundant/context'
import { MemoryIntentStore } from '../../../algorithms/intent-store'
import { MemoryDevice } from '../../../node/devices/memory-device'
import { ManualClock } from '../../helpers/clock'

const REGION = 256 * 1024 // four 64 KiB compare chunks
const REGIONS = 8
const SIZE = REGION * REGIONS

function rig (compare: boolean): { ctx: ArrayContext, resync: Resync, a: Leg, b: Leg, memA: MemoryDevice, memB: MemoryDevice, failed: string[] } {
  const log = (): void => {}
  let intent: IntentMap | null = null
  const hooks = { log, event: () => { intent?.event() } }
  const memA = new MemoryDevice({ size: SIZE })
  const memB = new MemoryDevice({ size: SIZE })
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
