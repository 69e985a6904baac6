import test from 'ava'
import { Leg } from '../../../algorithms/redundant/leg'
import { MemoryDevice } from '../../../node/devices/memory-device'

function leg (logs: string[] = [], events = { n: 0 }): Leg {
  return new Leg('a', new MemoryDevice({ size: 8192 }), 4, new Uint8Array(1), { name: 'a', identity: '', inSync: true }, 1000,
    { log: m => logs.push(m), event: () => { events.n++ } })
}

test('a transition changes the state, counts it per from>to, logs it and counts an array event when asked', t => {
  const logs: string[] = []
  const events = { n: 0 }
  const l = leg(logs, events)
  l.to('failed', { why: 'EIO', event: true })
  t.is(l.state, 'failed')
  t.is(l.lastError, 'EIO')
  t.true(l.absent)
  l.to('stale', { why: '', log: "leg 'a' is back" })
  t.is(l.lastError, '')
  l.to('resyncing', { log: false })
  t.deepEqual(l.transitions, { 'in-sync>failed': 1, 'failed>stale': 1, 'stale>resyncing': 1 })
  t.deepEqual(logs, ["leg 'a' failed (was in-sync): EIO", "leg 'a' is back"])
  t.is(events.n, 1)
})

test('a transition the array does not know throws and leaves the state alone', t => {
  const l = leg()
  t.throws(() => l.to('resyncing'), { message: /no transition from in-sync to resyncing/ })
  t.is(l.state, 'in-sync')
  l.to('failed')
  t.throws(() => l.to('in-sync'))
  t.throws(() => l.to('failed'))
  t.deepEqual(l.transitions, { 'in-sync>failed': 1 })
})

test('stale regions: holds, markStale, markHeld, and stale bytes with a short last region', t => {
  const l = leg()
  t.true(l.holds(0, 3))
  l.markStale(1, 3)
  l.markStale(2, 2) // already stale: not counted twice
  t.is(l.staleCount, 3)
  t.true(l.holds(0, 0))
  t.false(l.holds(0, 1))
  l.markHeld(2)
  l.markHeld(2)
  t.is(l.staleCount, 2)
  // 4 regions of 4096 over 14000 bytes: the last region has 1712 bytes.
  t.is(l.staleBytes(4096, 14000), 4096 + 1712)
  l.markAllStale()
  t.is(l.staleCount, 4)
  l.stale[0] = 0
  l.countStale()
  t.is(l.staleCount, 3)
})
