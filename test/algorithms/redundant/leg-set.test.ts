import test from 'ava'
import { Leg } from '../../../algorithms/redundant/leg'
import { LegSet } from '../../../algorithms/redundant/leg-set'
import { MemoryDevice } from '../../../node/devices/memory-device'

const hooks = { log: () => {}, event: () => {} }

function legs (n: number): Leg[] {
  return Array.from({ length: n }, (_, i) => {
    const name = String.fromCharCode(97 + i)
    return new Leg(name, new MemoryDevice({ size: 8192 }), 4, new Uint8Array(1), { name, identity: '', inSync: true }, 1000, hooks)
  })
}

test('legs carry their index, kept when legs are added and removed', t => {
  const [a, b, c] = legs(3)
  const set = new LegSet('m', [a, b])
  t.deepEqual([a.index, b.index], [0, 1])
  set.add(c)
  set.remove(a)
  t.deepEqual(set.names, ['b', 'c'])
  t.deepEqual([b.index, c.index], [0, 1])
  t.false(set.has(a))
  t.true(set.has(c))
  t.throws(() => set.named('a'), { message: "mirror 'm': no leg 'a' (legs: b, c)" })
})

test('the reader is the least busy leg that holds the range; a reconnecting one only when no other will do', t => {
  const [a, b, c] = legs(3)
  const set = new LegSet('m', [a, b, c])
  a.outstanding = 2
  b.outstanding = 1
  c.outstanding = 3
  t.is(set.reader(0, 0), b)
  b.markStale(1, 1)
  t.is(set.reader(1, 1), a)
  t.is(set.reader(1, 1, a), c, 'except is never picked')
  a.device.state = 'connecting'
  t.is(set.reader(1, 1), c)
  t.deepEqual(set.readers(0, 0).map(l => l.name), ['b', 'c', 'a'])
  t.deepEqual(set.holders(0, 0).map(l => l.name), ['a', 'b', 'c'], 'holders stay in array order')
  c.to('failed')
  b.to('failed')
  t.is(set.reader(1, 1), a)
  a.to('foreign')
  t.is(set.reader(0, 0), null)
  t.is(set.arrayState(), 'failed')
  t.regex(set.noLegError('read 0+1').message, /no in-sync leg left \(a foreign; b failed; c failed\)/)
})

test('the array state: online with every leg in sync (and two or more), degraded otherwise', t => {
  const [a, b] = legs(2)
  t.is(new LegSet('m', [a]).arrayState(), 'degraded')
  const set = new LegSet('m', [a, b])
  t.is(set.arrayState(), 'online')
  b.to('stale')
  t.is(set.arrayState(), 'degraded')
  t.is(set.inSyncCount(), 1)
})
