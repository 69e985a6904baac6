// Tests for node/core/pool.ts: the preallocated, fixed-size buffer pool of the request loop (one SharedArrayBuffer, FIFO
// waiters, never grows, misuse is an explicit error).

import test from 'ava'
import { BufferPool, type PoolBuffer } from '../../../node/core/pool'

/** Lets already-settled promise callbacks run. */
const ticks = async (n = 5): Promise<void> => { for (let i = 0; i < n; i++) await Promise.resolve() }

function takeAll (pool: BufferPool): PoolBuffer[] {
  const out: PoolBuffer[] = []
  for (let b = pool.tryAcquire(); b !== null; b = pool.tryAcquire()) out.push(b)
  return out
}

test('layout: count slots of headroom + size bytes, frame and data views, all in one SharedArrayBuffer', t => {
  const pool = new BufferPool({ count: 4, size: 4096, headroom: 32 })
  t.is(pool.count, 4)
  t.is(pool.size, 4096)
  t.is(pool.headroom, 32)
  t.true(pool.memory instanceof SharedArrayBuffer)
  t.is(pool.memory.byteLength, 4 * (32 + 4096))
  t.is(pool.available, 4)
  const bufs = takeAll(pool)
  t.is(bufs.length, 4)
  t.deepEqual(bufs.map(b => b.index).sort(), [0, 1, 2, 3])
  for (const b of bufs) {
    t.is(b.frame.buffer, pool.memory, 'frame is a view of the pool memory')
    t.is(b.data.buffer, pool.memory, 'data is a view of the pool memory')
    t.is(b.frame.length, 32 + 4096)
    t.is(b.data.length, 4096)
    t.is(b.data.byteOffset, b.frame.byteOffset + 32, 'data starts headroom bytes into the frame')
    t.is(b.frame.byteOffset, b.index * (32 + 4096), 'slot i sits at i * stride')
  }
})

test('layout: data and frame share memory (a header written in the headroom sits right before the payload)', t => {
  const pool = new BufferPool({ count: 2, size: 16, headroom: 8 })
  const b = pool.tryAcquire() as PoolBuffer
  b.data.fill(0x11)
  b.frame.fill(0x22, 0, 8)
  t.deepEqual([...b.frame], [...new Array(8).fill(0x22), ...new Array(16).fill(0x11)])
  b.frame[8] = 0x33
  t.is(b.data[0], 0x33)
})

test('layout: slots are distinct and do not overlap', t => {
  const pool = new BufferPool({ count: 8, size: 100, headroom: 12 })
  const bufs = takeAll(pool)
  const ranges = bufs.map(b => [b.frame.byteOffset, b.frame.byteOffset + b.frame.length]).sort((a, b) => a[0] - b[0])
  for (let i = 1; i < ranges.length; i++) t.true(ranges[i][0] >= ranges[i - 1][1], `slot ranges ${i - 1} and ${i} overlap`)
  t.is(ranges[ranges.length - 1][1], pool.memory.byteLength)
  // writing every slot with its own value leaves every other slot intact
  for (const b of bufs) b.frame.fill(b.index + 1)
  for (const b of bufs) t.true(b.frame.every(x => x === b.index + 1), `slot ${b.index} was overwritten`)
  t.is(new Set(bufs).size, 8)
  t.is(new Set(bufs.map(b => b.frame)).size, 8)
})

test('layout: headroom defaults to 0 (frame and data are the same bytes)', t => {
  const pool = new BufferPool({ count: 1, size: 512 })
  const b = pool.tryAcquire() as PoolBuffer
  t.is(pool.headroom, 0)
  t.is(b.frame.length, 512)
  t.is(b.data.byteOffset, b.frame.byteOffset)
  t.is(b.data.length, 512)
})

test('constructor refuses a bad count or size', t => {
  for (const count of [0, -1, 1.5, NaN]) t.throws(() => new BufferPool({ count, size: 512 }), { instanceOf: RangeError }, `count ${count}`)
  for (const size of [0, -1, 2.5, NaN]) t.throws(() => new BufferPool({ count: 1, size }), { instanceOf: RangeError }, `size ${size}`)
})

// Regression: node/core/pool.ts validates count and size but not headroom; a negative headroom silently gives `data` views
// of the wrong length (frame.subarray(-4) is the frame's last 4 bytes) instead of failing like a bad count or size.
test('constructor refuses a negative or fractional headroom', t => {
  t.throws(() => new BufferPool({ count: 2, size: 8, headroom: -4 }), { instanceOf: RangeError })
  t.throws(() => new BufferPool({ count: 2, size: 8, headroom: 1.5 }), { instanceOf: RangeError })
})

test('tryAcquire returns null when every slot is taken, and a slot again after release', t => {
  const pool = new BufferPool({ count: 3, size: 512 })
  const a = pool.tryAcquire()
  const b = pool.tryAcquire()
  const c = pool.tryAcquire()
  t.not(a, null); t.not(b, null); t.not(c, null)
  t.is(pool.available, 0)
  t.is(pool.tryAcquire(), null)
  t.is(pool.tryAcquire(), null)
  pool.release(b as PoolBuffer)
  t.is(pool.available, 1)
  t.is(pool.tryAcquire(), b, 'the released slot is handed out again')
  t.is(pool.tryAcquire(), null)
})

test('acquire resolves at once while slots are free', async t => {
  const pool = new BufferPool({ count: 2, size: 512 })
  const a = await pool.acquire()
  const b = await pool.acquire()
  t.not(a, b)
  t.is(pool.available, 0)
  t.is(pool.waits, 0)
})

test('acquire waits when the pool is empty and is served by release, in FIFO order', async t => {
  const pool = new BufferPool({ count: 2, size: 512 })
  const held = takeAll(pool)
  const order: Array<[number, PoolBuffer]> = []
  const waiters = [0, 1, 2].map(i => pool.acquire().then(b => { order.push([i, b]) }))
  await ticks()
  t.is(order.length, 0, 'nobody is served while the pool is empty')
  t.is(pool.waiting, 3)
  t.is(pool.waits, 3)

  pool.release(held[1])
  await ticks()
  t.deepEqual(order, [[0, held[1]]], 'the first waiter gets the released slot')
  t.is(pool.available, 0, 'a slot handed to a waiter never passes through the free list')

  pool.release(held[0])
  await ticks()
  t.deepEqual(order.map(o => o[0]), [0, 1])
  t.is(order[1][1], held[0])

  pool.release(order[0][1])
  await Promise.all(waiters)
  t.deepEqual(order.map(o => o[0]), [0, 1, 2])
  t.is(order[2][1], held[1])
  t.is(pool.waiting, 0)
})

test('a slot released while callers wait goes to the oldest waiter, not to a later acquire or tryAcquire', async t => {
  const pool = new BufferPool({ count: 1, size: 512 })
  const first = pool.tryAcquire() as PoolBuffer
  const order: string[] = []
  const w1 = pool.acquire().then(b => { order.push('w1'); return b })
  pool.release(first)
  t.is(pool.tryAcquire(), null, 'the released slot already belongs to the waiter')
  const w2 = pool.acquire().then(b => { order.push('w2'); return b })
  const b1 = await w1
  t.is(b1, first)
  pool.release(b1)
  await w2
  t.deepEqual(order, ['w1', 'w2'])
})

test('the pool never grows: after many acquire/release cycles, count, memory and slots are unchanged', async t => {
  const pool = new BufferPool({ count: 4, size: 1024, headroom: 16 })
  const memory = pool.memory
  const slots = new Set(takeAll(pool))
  for (const b of slots) pool.release(b)
  const seen = new Set<PoolBuffer>()
  let rng = 12345
  const rand = (n: number): number => { rng = (rng * 1103515245 + 12345) >>> 0; return rng % n }
  const held: PoolBuffer[] = []
  const pending: Array<Promise<void>> = []
  for (let i = 0; i < 5000; i++) {
    if (held.length > 0 && rand(2) === 0) {
      pool.release(held.splice(rand(held.length), 1)[0])
    } else {
      pending.push(pool.acquire().then(b => { seen.add(b); held.push(b) }))
    }
    if (i % 50 === 0) await ticks()
  }
  // hand back everything until all waiters are served and every slot is free
  for (;;) {
    await ticks()
    if (held.length === 0 && pool.waiting === 0) break
    const b = held.pop()
    if (b !== undefined) pool.release(b)
  }
  await Promise.all(pending)
  t.is(pool.count, 4)
  t.is(pool.memory, memory)
  t.is(pool.memory.byteLength, 4 * (16 + 1024))
  t.is(pool.available, 4)
  t.true(seen.size <= 4)
  for (const b of seen) t.true(slots.has(b), 'every buffer handed out is one of the original slots')
  t.is(new Set(takeAll(pool)).size, 4)
  t.is(pool.tryAcquire(), null)
})

test('double release throws', t => {
  const pool = new BufferPool({ count: 2, size: 512 })
  const b = pool.tryAcquire() as PoolBuffer
  pool.release(b)
  const err = t.throws(() => pool.release(b))
  t.regex(err.message, /released twice/)
  t.is(pool.available, 2, 'the failed release did not add a second free entry')
  // the free list is not corrupted: two acquires give two different slots
  const x = pool.tryAcquire()
  const y = pool.tryAcquire()
  t.not(x, y)
  t.is(pool.tryAcquire(), null)
})

test('releasing a foreign buffer throws, even one with a valid index from another pool', t => {
  const pool = new BufferPool({ count: 2, size: 512 })
  const other = new BufferPool({ count: 2, size: 512 })
  pool.tryAcquire()
  const foreign = other.tryAcquire() as PoolBuffer
  t.throws(() => pool.release(foreign), { message: /not from this pool/ })
  const fake: PoolBuffer = { index: 0, frame: Buffer.alloc(512), data: Buffer.alloc(512) }
  t.throws(() => pool.release(fake), { message: /not from this pool/ })
  const outOfRange: PoolBuffer = { index: 99, frame: Buffer.alloc(512), data: Buffer.alloc(512) }
  t.throws(() => pool.release(outOfRange), { message: /not from this pool/ })
  t.is(pool.available, 1)
})

test('maxWaiters: one caller too many gets an explicit error, the others are still served', async t => {
  const pool = new BufferPool({ count: 1, size: 512, maxWaiters: 2 })
  const held = pool.tryAcquire() as PoolBuffer
  const w1 = pool.acquire()
  const w2 = pool.acquire()
  t.is(pool.waiting, 2)
  const err = await t.throwsAsync(pool.acquire(), { instanceOf: RangeError })
  t.regex(err.message, /2 callers already waiting/)
  t.is(pool.waiting, 2)
  pool.release(held)
  const b1 = await w1
  t.is(b1, held)
  pool.release(b1)
  t.is(await w2, held)
  // with room in the queue again, waiting works again
  const w3 = pool.acquire()
  t.is(pool.waiting, 1)
  pool.release(held)
  t.is(await w3, held)
})

test('acquire never throws synchronously when the waiter queue is full', t => {
  const pool = new BufferPool({ count: 1, size: 512, maxWaiters: 1 })
  pool.tryAcquire()
  void pool.acquire()
  let p: Promise<PoolBuffer> | undefined
  t.notThrows(() => { p = pool.acquire() })
  return t.throwsAsync(p as Promise<PoolBuffer>, { instanceOf: RangeError })
})

test.serial('commit: a committed pool is resident from the start; an uncommitted one only as slots are used', t => {
  const MiB = 1024 * 1024
  const rss = (): number => process.memoryUsage().rss
  const before = rss()
  const lazy = new BufferPool({ count: 64, size: 2 * MiB })
  const lazyGrowth = rss() - before
  const start = rss()
  const committed = new BufferPool({ count: 64, size: 2 * MiB, commit: true })
  const committedGrowth = rss() - start
  t.true(lazyGrowth < 32 * MiB, `an uncommitted 128 MiB pool added ${Math.round(lazyGrowth / MiB)} MiB`)
  t.true(committedGrowth >= 120 * MiB, `a committed 128 MiB pool added ${Math.round(committedGrowth / MiB)} MiB`)
  t.true(committed.tryAcquire()?.data.every(b => b === 0), 'committed slots read as zeros')
  t.is(lazy.available, 64)
})
