// Tests for node/devices/memory-device.ts: the in-memory synthetic device, and the Device contract seen through it.

import test from 'ava'
import { MemoryDevice, PAGE_SIZE } from '../../../node/devices/memory-device'
import { DstError, Errno } from '../../../node/core/errors'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

test('a new memory device is zeroed, writable, can trim, has nothing to flush', async t => {
  const d = new MemoryDevice({ size: 8192 })
  t.is(d.type, 'memory')
  t.is(d.size, 8192)
  t.is(d.blockSize, 512)
  t.true(d.writable)
  t.true(d.canTrim)
  t.false(d.canFlush)
  const into = Buffer.alloc(8192, 0xff)
  await d.read(0, 8192, into)
  t.true(into.equals(Buffer.alloc(8192)))
  await t.notThrowsAsync(d.flush())
})

test('writes read back, at any offset, and land in the caller\'s buffer', async t => {
  const d = new MemoryDevice({ size: 4096 })
  const data = Buffer.from('hello, block device')
  await d.write(4096 - data.length, data)
  const into = Buffer.alloc(64, 0xee)
  await d.read(4096 - data.length, data.length, into)
  t.true(into.subarray(0, data.length).equals(data))
  t.true(into.subarray(data.length).every(b => b === 0xee), 'bytes past length are untouched')
  t.true(d.data.subarray(4096 - data.length).equals(data))
})

test('writes from a Uint8Array view of a larger buffer write only the view', async t => {
  const d = new MemoryDevice({ size: 1024 })
  const big = new Uint8Array(100).map((_, i) => i)
  await d.write(10, big.subarray(20, 30))
  t.deepEqual([...d.data.subarray(8, 22)], [0, 0, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 0, 0])
})

test('random writes match a Buffer model', async t => {
  const size = 64 * 1024
  const d = new MemoryDevice({ size })
  const model = Buffer.alloc(size)
  let seed = 7
  const rand = (n: number): number => { seed = (seed * 1103515245 + 12345) >>> 0; return seed % n }
  for (let i = 0; i < 300; i++) {
    const offset = rand(size)
    const length = 1 + rand(Math.min(4096, size - offset))
    const data = Buffer.alloc(length, rand(256))
    if (rand(5) === 0) { await d.trim(offset, length); model.fill(0, offset, offset + length) } else { await d.write(offset, data); data.copy(model, offset) }
  }
  const all = Buffer.alloc(size)
  await d.read(0, size, all)
  t.true(all.equals(model))
})

test('trim zeroes the range', async t => {
  const d = new MemoryDevice({ size: 4096 })
  await d.write(0, Buffer.alloc(4096, 7))
  await d.trim(100, 200)
  t.true(d.data.subarray(100, 300).every(b => b === 0))
  t.is(d.data[99], 7)
  t.is(d.data[300], 7)
})

test('out-of-range requests reject with DST_ERR_EINVAL and never throw synchronously', async t => {
  const d = new MemoryDevice({ size: 4096 })
  const calls: Array<[string, () => Promise<void>]> = [
    ['read past end', () => d.read(4000, 100, Buffer.alloc(100))],
    ['read negative', () => d.read(-1, 1, Buffer.alloc(1))],
    ['write past end', () => d.write(4096, Buffer.alloc(1))],
    ['write straddling end', () => d.write(4095, Buffer.alloc(2))],
    ['write fractional offset', () => d.write(0.5, Buffer.alloc(1))],
    ['trim past end', () => d.trim(0, 4097)],
  ]
  for (const [label, call] of calls) {
    let p: Promise<void> | undefined
    t.notThrows(() => { p = call() }, label)
    const err = await t.throwsAsync(p as Promise<void>, { instanceOf: DstError }, label)
    t.is(err.code, 'DST_ERR_EINVAL', label)
    t.is(err.errno, Errno.EINVAL, label)
    t.regex(err.message, /outside the memory device \(size 4096\)/, label)
  }
  t.true(d.data.every(b => b === 0), 'nothing was written')
})

test('readOnly: reads work, write rejects EROFS, trim rejects ENOTSUP, data unchanged', async t => {
  const d = new MemoryDevice({ size: 4096, readOnly: true })
  t.false(d.writable)
  t.false(d.canTrim)
  const w = await t.throwsAsync(d.write(0, Buffer.alloc(1, 1)), { instanceOf: DstError })
  t.is(w.code, 'DST_ERR_EROFS')
  t.regex(w.message, /memory device is read-only/)
  t.is((await t.throwsAsync(d.trim(0, 1), { instanceOf: DstError })).code, 'DST_ERR_ENOTSUP')
  const into = Buffer.alloc(1, 9)
  await d.read(0, 1, into)
  t.is(into[0], 0)
  t.false(d.status().writable)
})

test('each memory device has its own UUID identity', t => {
  const a = new MemoryDevice({ size: 512 })
  const b = new MemoryDevice({ size: 512 })
  t.regex(a.identity, UUID)
  t.regex(b.identity, UUID)
  t.not(a.identity, b.identity)
})

test('blockSize option is kept and reported in status', t => {
  const d = new MemoryDevice({ size: 1 << 20, blockSize: 4096 })
  t.deepEqual(d.status(), { type: 'memory', size: 1 << 20, blockSize: 4096, state: 'online', writable: true })
})

test('after close, requests reject with DST_ERR_CLOSED', async t => {
  const d = new MemoryDevice({ size: 4096 })
  await d.write(0, Buffer.from('x'))
  await d.close()
  t.is(d.state, 'closed')
  for (const p of [d.read(0, 1, Buffer.alloc(1)), d.write(0, Buffer.alloc(1)), d.trim(0, 1), d.flush()]) {
    t.is((await t.throwsAsync(p, { instanceOf: DstError })).code, 'DST_ERR_CLOSED')
  }
})

test('extents: a new device is one hole; written pages are data, merged, clipped to the range asked', async t => {
  const d = new MemoryDevice({ size: 16 * PAGE_SIZE })
  t.deepEqual(await d.extents(0, d.size), [{ offset: 0, length: d.size, hole: true }])
  t.deepEqual(await d.extents(5, 0), [])
  await d.write(3 * PAGE_SIZE + 10, Buffer.alloc(PAGE_SIZE, 1)) // pages 3 and 4
  await d.write(5 * PAGE_SIZE, Buffer.alloc(1, 2)) // page 5: merged with them
  await d.write(9 * PAGE_SIZE - 1, Buffer.alloc(1, 3)) // page 8
  t.deepEqual(await d.extents(0, d.size), [
    { offset: 0, length: 3 * PAGE_SIZE, hole: true },
    { offset: 3 * PAGE_SIZE, length: 3 * PAGE_SIZE, hole: false },
    { offset: 6 * PAGE_SIZE, length: 2 * PAGE_SIZE, hole: true },
    { offset: 8 * PAGE_SIZE, length: PAGE_SIZE, hole: false },
    { offset: 9 * PAGE_SIZE, length: 7 * PAGE_SIZE, hole: true },
  ])
  t.deepEqual(await d.extents(3 * PAGE_SIZE + 7, 100), [{ offset: 3 * PAGE_SIZE + 7, length: 100, hole: false }])
  t.deepEqual(await d.extents(PAGE_SIZE - 1, 2 * PAGE_SIZE + 2), [
    { offset: PAGE_SIZE - 1, length: 2 * PAGE_SIZE + 1, hole: true },
    { offset: 3 * PAGE_SIZE, length: 1, hole: false },
  ])
  t.is(d.allocatedBytes, 4 * PAGE_SIZE)
})

test('trim frees the pages it covers whole and zeroes the rest: freed pages are holes again', async t => {
  const d = new MemoryDevice({ size: 8 * PAGE_SIZE })
  await d.write(0, Buffer.alloc(8 * PAGE_SIZE, 9))
  await d.trim(PAGE_SIZE + 100, 3 * PAGE_SIZE) // frees pages 2 and 3; zeroes the ends of pages 1 and 4
  t.is(d.allocatedBytes, 6 * PAGE_SIZE)
  t.deepEqual(await d.extents(0, d.size), [
    { offset: 0, length: 2 * PAGE_SIZE, hole: false },
    { offset: 2 * PAGE_SIZE, length: 2 * PAGE_SIZE, hole: true },
    { offset: 4 * PAGE_SIZE, length: 4 * PAGE_SIZE, hole: false },
  ])
  const back = Buffer.alloc(d.size)
  await d.read(0, d.size, back)
  const model = Buffer.alloc(8 * PAGE_SIZE, 9).fill(0, PAGE_SIZE + 100, 4 * PAGE_SIZE + 100)
  t.true(back.equals(model))
})

test('a device far larger than memory holds only what was written (1 TiB, one page)', async t => {
  const d = new MemoryDevice({ size: 2 ** 40 })
  await d.write(2 ** 39 + 5, Buffer.from('middle'))
  const into = Buffer.alloc(16, 0xff)
  await d.read(2 ** 39, 16, into)
  t.is(into.subarray(5, 11).toString(), 'middle')
  t.is(into[0], 0)
  t.is(d.allocatedBytes, PAGE_SIZE)
  t.deepEqual(await d.extents(0, d.size), [
    { offset: 0, length: 2 ** 39, hole: true },
    { offset: 2 ** 39, length: PAGE_SIZE, hole: false },
    { offset: 2 ** 39 + PAGE_SIZE, length: 2 ** 39 - PAGE_SIZE, hole: true },
  ])
  await d.trim(0, d.size)
  t.is(d.allocatedBytes, 0)
  t.throws(() => d.data, { instanceOf: RangeError })
})

test('a device whose size is not a multiple of the page: its last page is short, and reads and extents stop at the end', async t => {
  const d = new MemoryDevice({ size: PAGE_SIZE + 1000 })
  await d.write(PAGE_SIZE + 990, Buffer.alloc(10, 4))
  t.is(d.allocatedBytes, 1000)
  t.deepEqual(await d.extents(0, d.size), [{ offset: 0, length: PAGE_SIZE, hole: true }, { offset: PAGE_SIZE, length: 1000, hole: false }])
  await d.trim(PAGE_SIZE, 1000)
  t.is(d.allocatedBytes, 0)
})

test('taking `data` makes the device flat: it keeps its bytes and reports all data from then on', async t => {
  const d = new MemoryDevice({ size: 4 * PAGE_SIZE })
  await d.write(PAGE_SIZE, Buffer.from('kept'))
  const flat = d.data
  t.is(flat.subarray(PAGE_SIZE, PAGE_SIZE + 4).toString(), 'kept')
  flat[3 * PAGE_SIZE] = 7 // behind the device's back: it cannot call that page a hole any more
  t.deepEqual(await d.extents(0, d.size), [{ offset: 0, length: d.size, hole: false }])
  await d.write(0, Buffer.from('x'))
  t.is(flat[0], 'x'.charCodeAt(0), 'writes land in the same Buffer')
  t.is(d.data, flat)
  t.is(d.allocatedBytes, d.size)
})

test('random writes and trims: holes always read as zeros and runs cover the range in order, merged', async t => {
  const size = 40 * PAGE_SIZE + 123
  const d = new MemoryDevice({ size })
  const model = Buffer.alloc(size)
  let seed = 11
  const rand = (n: number): number => { seed = (seed * 1103515245 + 12345) >>> 0; return seed % n }
  for (let i = 0; i < 200; i++) {
    const offset = rand(size)
    const length = 1 + rand(Math.min(3 * PAGE_SIZE, size - offset))
    if (rand(3) === 0) { await d.trim(offset, length); model.fill(0, offset, offset + length) } else { const b = Buffer.alloc(length, 1 + rand(255)); await d.write(offset, b); b.copy(model, offset) }
    const from = rand(size)
    const n = rand(size - from + 1)
    const runs = await d.extents(from, n)
    let at = from
    for (const [k, r] of runs.entries()) {
      t.is(r.offset, at)
      t.true(r.length > 0)
      if (k > 0) t.not(r.hole, runs[k - 1].hole, 'adjacent runs differ')
      if (r.hole) t.true(model.subarray(r.offset, r.offset + r.length).every(b => b === 0), `hole ${r.offset}+${r.length} reads as zeros`)
      at += r.length
    }
    t.is(at, from + n)
  }
  const all = Buffer.alloc(size)
  await d.read(0, size, all)
  t.true(all.equals(model))
})
