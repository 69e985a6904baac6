// Tests for node/core/ring.ts: the bounded O(1) FIFO used for in-flight requests and pool waiters.

import test from 'ava'
import fc from 'fast-check'
import { Ring } from '../../../node/core/ring'

test('capacity must be a positive integer', t => {
  for (const capacity of [0, -1, 1.5, NaN, Infinity]) t.throws(() => new Ring(capacity), { instanceOf: RangeError }, `capacity ${capacity}`)
  t.is(new Ring(1).capacity, 1)
})

test('push and shift are FIFO; shift and peek on an empty ring give undefined', t => {
  const r = new Ring<number>(3)
  t.is(r.shift(), undefined)
  t.is(r.peek(), undefined)
  r.push(1); r.push(2); r.push(3)
  t.is(r.length, 3)
  t.true(r.full)
  t.is(r.peek(), 1)
  t.is(r.shift(), 1)
  t.is(r.shift(), 2)
  t.false(r.full)
  t.is(r.shift(), 3)
  t.is(r.length, 0)
  t.is(r.shift(), undefined)
})

test('push on a full ring throws and leaves the ring unchanged', t => {
  const r = new Ring<string>(2)
  r.push('a'); r.push('b')
  t.throws(() => r.push('c'), { instanceOf: RangeError, message: /full \(2 items\)/ })
  t.throws(() => r.unshift('z'), { instanceOf: RangeError })
  t.deepEqual(r.drain(), ['a', 'b'])
})

test('wraps around the end of its array many times without growing or losing order', t => {
  const r = new Ring<number>(4)
  let next = 0
  let expect = 0
  for (let round = 0; round < 1000; round++) {
    while (!r.full) r.push(next++)
    t.is(r.length, 4)
    const take = 1 + (round % 4)
    for (let i = 0; i < take; i++) t.is(r.shift(), expect++)
  }
  t.is(r.capacity, 4)
})

test('unshift puts an item back at the front, also across the wrap point', t => {
  const r = new Ring<number>(3)
  r.push(1); r.push(2)
  t.is(r.shift(), 1)
  r.unshift(1)
  t.is(r.peek(), 1)
  r.unshift(0) // head wraps from 0 to capacity-1
  t.true(r.full)
  t.deepEqual(r.drain(), [0, 1, 2])
})

test('drain empties the ring oldest first and the ring is reusable', t => {
  const r = new Ring<number>(5)
  for (let i = 0; i < 5; i++) r.push(i)
  r.shift(); r.shift(); r.push(5); r.push(6)
  t.deepEqual(r.drain(), [2, 3, 4, 5, 6])
  t.is(r.length, 0)
  t.deepEqual(r.drain(), [])
  r.push(7)
  t.is(r.shift(), 7)
})

test('behaves like an array model under random push/unshift/shift', t => {
  type Cmd = { kind: 'push' | 'unshift', value: number } | { kind: 'shift' }
  const cmd = fc.oneof(
    fc.record({ kind: fc.constant('push' as const), value: fc.integer() }),
    fc.record({ kind: fc.constant('unshift' as const), value: fc.integer() }),
    fc.record({ kind: fc.constant('shift' as const) }),
  )
  fc.assert(fc.property(fc.integer({ min: 1, max: 8 }), fc.array(cmd, { maxLength: 200 }), (capacity, cmds: Cmd[]) => {
    const r = new Ring<number>(capacity)
    const model: number[] = []
    for (const c of cmds) {
      if (c.kind === 'shift') {
        if (r.shift() !== model.shift()) return false
      } else if (model.length === capacity) {
        try { r[c.kind](c.value); return false } catch (err) { if (!(err instanceof RangeError)) return false }
      } else {
        r[c.kind](c.value)
        if (c.kind === 'push') model.push(c.value); else model.unshift(c.value)
      }
      if (r.length !== model.length || r.full !== (model.length === capacity) || r.peek() !== model[0]) return false
    }
    return JSON.stringify(r.drain()) === JSON.stringify(model)
  }))
  t.pass('fast-check found no counterexample') // fc.assert throws on failure
})
