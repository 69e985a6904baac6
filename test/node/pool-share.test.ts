// A connection's fair share of the buffer pool (node/pool-share.ts): one connection alone gets half the pool, a
// second one always finds buffers however many the first holds, waiters are served in order, and a closed
// connection's waiting requests are refused while what it holds comes back.

import test from 'ava'
import { BufferPool, type PoolBuffer } from '../../node/pool'
import { PoolShare } from '../../node/pool-share'

test('a connection alone may hold half the pool; the rest stays for the next one', t => {
  const pool = new BufferPool({ count: 8, size: 4096 })
  const hog = new PoolShare(pool)
  const got: PoolBuffer[] = []
  for (let b = hog.tryAcquire(); b !== null; b = hog.tryAcquire()) got.push(b)
  t.is(got.length, 4)
  t.is(pool.available, 4)
  const other = new PoolShare(pool)
  t.is(other.limit, 2, 'with two connections active, each may hold a third (8 / 3)')
  t.not(other.tryAcquire(), null)
  t.not(other.tryAcquire(), null)
  t.is(other.tryAcquire(), null, 'its share is full')
  t.is(pool.available, 2, 'and a reserve is left for a third')
  t.is(hog.tryAcquire(), null, 'the first connection is above its new share and gets nothing more')
})

test('a waiting request is served when a buffer comes back, once its connection is back under its share', async t => {
  const pool = new BufferPool({ count: 6, size: 4096 })
  const a = new PoolShare(pool)
  const b = new PoolShare(pool)
  const held = [a.tryAcquire(), a.tryAcquire(), a.tryAcquire()] as PoolBuffer[]
  t.is(a.tryAcquire(), null, 'alone, a holds half the pool')
  const bHeld = b.tryAcquire() as PoolBuffer
  t.not(bHeld, null)
  t.is(pool.available, 2)
  const order: string[] = []
  const aWaits = a.acquire().then(buf => { order.push('a'); return buf })
  const bWaits = b.acquire().then(buf => { order.push('b'); return buf })
  await new Promise(resolve => setImmediate(resolve))
  t.deepEqual(order, ['b'], 'b is under its share (6 / 3) and takes a free buffer; a is above it and waits')
  a.release(held[0])
  await new Promise(resolve => setImmediate(resolve))
  t.deepEqual(order, ['b'], 'a holds 2, its share: still waiting though a buffer is free')
  a.release(held[1])
  const fromA = await aWaits
  t.deepEqual(order, ['b', 'a'])
  a.release(fromA)
  a.release(held[2])
  b.release(await bWaits)
  b.release(bHeld)
  t.is(pool.available, 6)
  t.is(pool.activeShares, 0, 'connections holding nothing are not active')
})

test('close refuses the waiting requests; buffers held still come back', async t => {
  const pool = new BufferPool({ count: 2, size: 4096 })
  const s = new PoolShare(pool)
  const one = s.tryAcquire() as PoolBuffer
  const waits = [s.acquire(), s.acquire()]
  s.close()
  for (const w of waits) await t.throwsAsync(w, { message: /closed/ })
  s.release(one)
  t.is(pool.available, 2)
  t.is(pool.activeShares, 0)
  await t.throwsAsync(s.acquire().then(b => { s.release(b); return Promise.reject(new Error('closed: but got one')) }), { message: /closed/ })
})

test('a connection that asks for too many at once gets an explicit error', async t => {
  const pool = new BufferPool({ count: 2, size: 4096 })
  const s = new PoolShare(pool, 2)
  const one = s.tryAcquire() as PoolBuffer
  const waits = [s.acquire(), s.acquire()]
  await t.throwsAsync(s.acquire(), { message: /2 requests of this connection already waiting/ })
  s.release(one)
  const next = await waits[0]
  s.release(next)
  s.release(await waits[1])
  t.is(pool.available, 2)
})
