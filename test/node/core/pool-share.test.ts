// A connection's fair share of the buffer pool (node/core/pool-share.ts): one connection alone may use most of the pool
// but never its reserve; a newcomer always finds buffers however many the first holds; waiting connections are served
// as buffers come back, each within its share; a closed connection's waiting requests are refused.

import test from 'ava'
import { BufferPool, type PoolBuffer } from '../../../node/core/pool'
import { PoolShare } from '../../../node/core/pool-share'

function takeAll (share: PoolShare): PoolBuffer[] {
  const got: PoolBuffer[] = []
  for (let b = share.tryAcquire(); b !== null; b = share.tryAcquire()) got.push(b)
  return got
}

test('a connection alone may hold all but the reserve (an eighth); a newcomer finds buffers there, and the first gets no more', t => {
  const pool = new BufferPool({ count: 64, size: 4096 })
  const hog = new PoolShare(pool)
  t.is(takeAll(hog).length, 56)
  t.is(pool.available, 8)
  const other = new PoolShare(pool)
  t.is(takeAll(other).length, 4, 'from the reserve, a connection may hold up to half of it')
  t.is(other.limit, 32, 'two connections active: each may hold half the pool')
  const third = new PoolShare(pool)
  t.is(takeAll(third).length, 4, 'a third one still finds the rest of the reserve')
  t.is(hog.tryAcquire(), null, 'the first connection is far above its share (64 / 3) now')
  t.is(pool.activeShares, 3)
})

test('a waiting connection is served as buffers come back, once it is under its share', async t => {
  const pool = new BufferPool({ count: 8, size: 4096 })
  const a = new PoolShare(pool)
  const b = new PoolShare(pool)
  const held = takeAll(a)
  t.is(held.length, 7)
  const bHeld = b.tryAcquire() as PoolBuffer
  t.not(bHeld, null, 'b takes the reserve buffer')
  const order: string[] = []
  const aWaits = a.acquire().then(buf => { order.push('a'); return buf })
  const bWaits = b.acquire().then(buf => { order.push('b'); return buf })
  b.release(bHeld)
  await new Promise(resolve => setImmediate(resolve))
  t.deepEqual(order, ['b'], 'a asked first but holds more than its share (8 / 2); b gets the buffer')
  for (let i = 0; i < 3; i++) a.release(held.pop() as PoolBuffer)
  await new Promise(resolve => setImmediate(resolve))
  t.deepEqual(order, ['b'], 'a holds 4, its share: it still waits, though buffers are free')
  a.release(held.pop() as PoolBuffer)
  const fromA = await aWaits
  t.deepEqual(order, ['b', 'a'])
  a.release(fromA)
  for (const buf of held) a.release(buf)
  b.release(await bWaits)
  t.is(pool.available, 8)
  t.is(pool.activeShares, 0, 'connections holding nothing are not active')
})

test('close refuses the waiting requests; buffers held still come back', async t => {
  const pool = new BufferPool({ count: 2, size: 4096 })
  const s = new PoolShare(pool)
  const held = takeAll(s)
  t.is(held.length, 2, 'a pool of fewer than 8 has no reserve')
  const waits = [s.acquire(), s.acquire()]
  s.close()
  for (const w of waits) await t.throwsAsync(w, { message: /closed/ })
  for (const buf of held) s.release(buf)
  t.is(pool.available, 2)
  t.is(pool.activeShares, 0)
  await t.throwsAsync(s.acquire(), { message: /closed/ })
})

test('a connection that asks for too many at once gets an explicit error; the others are served in order', async t => {
  const pool = new BufferPool({ count: 2, size: 4096 })
  const s = new PoolShare(pool, 2)
  const held = takeAll(s)
  const order: number[] = []
  const waits = [s.acquire().then(b => { order.push(1); return b }), s.acquire().then(b => { order.push(2); return b })]
  await t.throwsAsync(s.acquire(), { message: /2 requests of this connection already waiting/ })
  s.release(held[0])
  s.release(held[1])
  for (const w of waits) s.release(await w)
  t.deepEqual(order, [1, 2])
  t.is(pool.available, 2)
})
