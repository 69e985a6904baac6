import test from 'ava'
import { authorities, reconcile } from '../../../algorithms/redundant/reconcile'
import type { IntentState } from '../../../algorithms/intent-store'

const REGION = 4096
const SIZE = 10 * REGION // 10 regions, 2 bitmap bytes

function saved (legs: Array<{ identity: string, inSync: boolean, bits: number[] }>, region = REGION, size = SIZE): IntentState {
  return {
    superblock: { uuid: 'u-1', size, region, events: 7, legs: legs.map((l, i) => ({ name: `leg${i}`, identity: l.identity, inSync: l.inSync })) },
    bits: legs.map(l => Uint8Array.from(l.bits)),
  }
}

const staleRegions = (s: Uint8Array): number[] => [...s.keys()].filter(r => s[r] !== 0)

test('no superblock: a new array', t => {
  const r = reconcile(null, [{ name: 'a', identity: 'A' }, { name: 'b', identity: 'B' }], REGION, SIZE)
  t.like(r, { kind: 'new', uuid: null, events: 0, layoutChanged: true })
  t.deepEqual(r.legs.map(l => l.record.inSync), [true, true])
})

test('known legs: bits carried over by identity, marked regions stale; one marked on every leg is kept by the first in-sync leg', t => {
  // Saved order b, a; region 1 marked on a only, region 3 marked on both (a write at the crash).
  const loaded = saved([{ identity: 'B', inSync: true, bits: [0b1000, 0] }, { identity: 'A', inSync: true, bits: [0b1010, 0] }])
  const r = reconcile(loaded, [{ name: 'a', identity: 'A' }, { name: 'b', identity: 'B' }], REGION, SIZE)
  t.like(r, { kind: 'known', uuid: 'u-1', events: 7, layoutChanged: true })
  t.deepEqual(staleRegions(r.legs[0].stale), [1], 'a keeps region 3 (the first in-sync leg)')
  t.deepEqual(staleRegions(r.legs[1].stale), [3])
  t.deepEqual([...r.legs[0].bits], [0b1010, 0])
})

test('a leg that was out of sync never keeps a region marked everywhere; a leg new to the array gets every region', t => {
  const loaded = saved([{ identity: 'A', inSync: false, bits: [0b1, 0] }, { identity: 'B', inSync: true, bits: [0b1, 0] }])
  const r = reconcile(loaded, [{ name: 'a', identity: 'A' }, { name: 'b', identity: 'B' }, { name: 'c', identity: 'C' }], REGION, SIZE)
  t.like(r, { kind: 'known', layoutChanged: true })
  t.deepEqual(staleRegions(r.legs[0].stale), [0])
  t.deepEqual(staleRegions(r.legs[1].stale), [], 'b was in sync: it keeps region 0')
  t.true(r.legs[2].newToArray)
  t.false(r.legs[2].record.inSync)
  t.is(staleRegions(r.legs[2].stale).length, 10)
  t.deepEqual([...r.legs[2].bits], [0xff, 0b11])
})

test('the same legs in the same order: the layout is unchanged', t => {
  const loaded = saved([{ identity: 'A', inSync: true, bits: [0, 0] }, { identity: 'B', inSync: true, bits: [0, 0] }])
  t.false(reconcile(loaded, [{ name: 'a', identity: 'A' }, { name: 'b', identity: 'B' }], REGION, SIZE).layoutChanged)
})

test('only the region changed, every leg in sync and nothing marked: kept; with a mark, or another size: new', t => {
  const clean = saved([{ identity: 'A', inSync: true, bits: [0, 0, 0] }, { identity: 'B', inSync: true, bits: [0, 0, 0] }], 2048)
  const legs = [{ name: 'a', identity: 'A' }, { name: 'b', identity: 'B' }]
  t.like(reconcile(clean, legs, REGION, SIZE), { kind: 'kept', uuid: 'u-1', events: 7 })
  const marked = saved([{ identity: 'A', inSync: true, bits: [1, 0, 0] }, { identity: 'B', inSync: true, bits: [0, 0, 0] }], 2048)
  t.like(reconcile(marked, legs, REGION, SIZE), { kind: 'new', uuid: null })
  t.like(reconcile(saved([{ identity: 'A', inSync: true, bits: [0, 0] }], REGION, SIZE * 2), legs, REGION, SIZE), { kind: 'new' })
})

test('authorities: legs out of I/O that were in sync, only while no present leg is in sync', t => {
  t.deepEqual(authorities([{ absent: true, inSync: true }, { absent: false, inSync: false }]), [true, false])
  t.deepEqual(authorities([{ absent: true, inSync: true }, { absent: false, inSync: true }]), [false, false])
})
