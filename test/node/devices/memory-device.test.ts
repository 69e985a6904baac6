// Tests for node/devices/memory-device.ts: the in-memory synthetic device, and the Device contract seen through it.

import test from 'ava'
import { MemoryDevice } from '../../../node/devices/memory-device'
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
