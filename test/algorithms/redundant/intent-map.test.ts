import test from 'ava'
import { IntentMap, getBit } from '../../../algorithms/redundant/intent-map'
import { Leg } from '../../../algorithms/redundant/leg'
import { LegSet } from '../../../algorithms/redundant/leg-set'
import { RegionGate } from '../../../algorithms/redundant/region-gate'
import { MemoryIntentStore, type IntentState } from '../../../algorithms/intent-store'
import { MemoryDevice } from '../../../node/devices/memory-device'

const REGIONS = 16

function rig (): { map: IntentMap, legs: LegSet, gate: RegionGate, store: MemoryIntentStore, a: Leg, b: Leg } {
  const hooks = { log: () => {}, event: () => {} }
  const mk = (name: string): Leg => new Leg(name, new MemoryDevice({ size: 4096 }), REGIONS, new Uint8Array(2), { name, identity: name, inSync: true }, 1000, hooks)
  const a = mk('a')
  const b = mk('b')
  const legs = new LegSet('m', [a, b])
  const gate = new RegionGate()
  const store = new MemoryIntentStore()
  const map = new IntentMap('m', { uuid: 'u', size: REGIONS * 4096, region: 4096, events: 1, legs: [] }, store, legs, gate, REGIONS, () => {})
  return { map, legs, gate, store, a, b }
}

const bitsOf = (s: IntentState | null, leg: number): number[] => [...Array(REGIONS).keys()].filter(r => s !== null && getBit(s.bits[leg], r))

test('markIntent sets every leg\'s bit and says whether a save is needed; save writes them with each leg\'s in-sync record', async t => {
  const { map, store, b } = rig()
  t.true(map.markIntent(2, 3))
  t.false(map.markIntent(3, 3), 'already marked')
  b.to('failed')
  await map.save()
  t.deepEqual(bitsOf(store.saved, 0), [2, 3])
  t.deepEqual(bitsOf(store.saved, 1), [2, 3])
  t.deepEqual(store.saved?.superblock.legs.map(l => [l.name, l.inSync]), [['a', true], ['b', false]])
})

test('clearQuiet clears a region only after a pass without writes, and only on legs that hold it', async t => {
  const { map, gate, store, b } = rig()
  await gate.enter(5, 5)
  map.markIntent(5, 5)
  gate.leaveRegions(5, 5)
  gate.exit()
  b.markStale(5, 5)
  t.false(map.clearQuiet(), 'touched since the last pass')
  t.true(map.clearQuiet(), 'quiet for a pass: a holds it')
  await map.save()
  t.deepEqual(bitsOf(store.saved, 0), [])
  t.deepEqual(bitsOf(store.saved, 1), [5], 'b does not hold region 5: its bit stays')
})

test('concurrent saves share: one running, one queued for everyone who came after', async t => {
  const { map, store } = rig()
  map.markIntent(0, 0)
  const first = map.save()
  map.markIntent(1, 1)
  const second = map.save()
  const third = map.save()
  t.is(second, third)
  await Promise.all([first, second])
  t.is(store.writes, 2)
  t.deepEqual(bitsOf(store.saved, 0), [0, 1])
})

test('the failure barrier is the save recording a leg failure, until it is on disk', async t => {
  const { map } = rig()
  t.is(map.failureBarrier(), null)
  map.recordFailure()
  const barrier = map.failureBarrier()
  t.not(barrier, null)
  await barrier
  t.is(map.failureBarrier(), null)
})

test('rewrite writes the layout from the legs as they are now', async t => {
  const { map, legs, store, a } = rig()
  legs.remove(a)
  await map.rewrite()
  t.deepEqual(store.saved?.superblock.legs.map(l => l.name), ['b'])
  t.is(store.saved?.bits.length, 1)
})
