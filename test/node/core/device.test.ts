// Tests for node/core/device.ts: what the Device base class owns for every backend (range checks that reject and never
// throw, capabilities derived from the overridden methods, read-only, close ordered after in-flight requests), and
// `hash`: digests of each chunk of a range, checked like a read.

import test from 'ava'
import { Device, type DeviceOptions } from '../../../node/core/device'
import { DstError, Errno } from '../../../node/core/errors'
import { MemoryDevice } from '../../../node/devices/memory-device'
import { DIGEST_SIZE, closeDefaultHasher } from '../../../node/core/hasher'
import { newSeed, prng, seededBytes } from '../../helpers/random'
import { digestsOf } from '../../helpers/digests'
import { until } from '../../helpers/wait'

/** Overrides only _read: a read-only backend by construction. Counts backend calls. */
class ReadOnlyBackend extends Device {
  readonly type = 'ro-test'
  reads = 0
  protected override _read (offset: number, length: number, into: Uint8Array): Promise<void> {
    this.reads++
    for (let i = 0; i < length; i++) into[i] = (offset + i) & 0xff
    return Promise.resolve()
  }
}

/** Overrides everything; each call resolves only when the test says so. */
class DeferredBackend extends Device {
  readonly type = 'deferred'
  readonly pending: Array<{ op: string, resolve: () => void, reject: (err: Error) => void }> = []
  closed = 0
  closedWithInFlight = -1
  private wait (op: string): Promise<void> {
    return new Promise((resolve, reject) => this.pending.push({ op, resolve, reject }))
  }

  protected override _read (_offset: number, length: number, into: Uint8Array): Promise<void> {
    return this.wait('read').then(() => { into.fill(0x5a, 0, length) })
  }

  protected override _write (): Promise<void> { return this.wait('write') }
  protected override _flush (): Promise<void> { return this.wait('flush') }
  protected override _trim (): Promise<void> { return this.wait('trim') }
  protected override _close (): Promise<void> {
    this.closed++
    this.closedWithInFlight = this.inFlight
    return Promise.resolve()
  }
}

/** Throws synchronously from the backend: the base class must still hand back a rejected promise. */
class ThrowingBackend extends Device {
  readonly type = 'throwing'
  protected override _read (): Promise<void> { throw new Error('boom (read)') }
  protected override _write (): Promise<void> { throw new Error('boom (write)') }
  protected override _flush (): Promise<void> { throw new Error('boom (flush)') }
}

/** Overrides _trim and _flush but not _write. */
class TrimButNoWrite extends Device {
  readonly type = 'trim-no-write'
  protected override _read (): Promise<void> { return Promise.resolve() }
  protected override _trim (): Promise<void> { return Promise.resolve() }
  protected override _flush (): Promise<void> { return Promise.resolve() }
}

const ticks = async (n = 10): Promise<void> => { for (let i = 0; i < n; i++) await new Promise(resolve => setImmediate(resolve)) }

/** Calls fn, fails the test if it throws synchronously, and returns its promise. */
function noSyncThrow<T> (t: import('ava').ExecutionContext, fn: () => Promise<T>, label: string): Promise<T> {
  let p: Promise<T> | undefined
  t.notThrows(() => { p = fn() }, `${label} threw synchronously`)
  t.true(p instanceof Promise, `${label} returned a promise`)
  return p as Promise<T>
}

test('capabilities follow the overridden methods: _read only means not writable, no flush, no trim', t => {
  const d = new ReadOnlyBackend({ size: 4096 })
  t.false(d.writable)
  t.false(d.canFlush)
  t.false(d.canTrim)
  t.is(d.blockSize, 512, 'block size defaults to 512')
  t.deepEqual(d.status(), { type: 'ro-test', size: 4096, blockSize: 512, state: 'online', writable: false })
})

test('capabilities: a backend overriding everything is writable, can flush and can trim', t => {
  const d = new DeferredBackend({ size: 4096, blockSize: 4096 })
  t.true(d.writable)
  t.true(d.canFlush)
  t.true(d.canTrim)
  t.is(d.blockSize, 4096)
})

test('capabilities: trim needs write (a backend with _trim but no _write cannot trim)', async t => {
  const d = new TrimButNoWrite({ size: 4096 })
  t.false(d.writable)
  t.false(d.canTrim)
  t.true(d.canFlush)
  const err = await t.throwsAsync(d.trim(0, 512), { instanceOf: DstError })
  t.is(err.code, 'DST_ERR_ENOTSUP')
  t.is(err.errno, Errno.ENOTSUP)
})

test('a backend without _write: write rejects with EROFS and never reaches the backend', async t => {
  const d = new ReadOnlyBackend({ size: 4096 })
  const err = await t.throwsAsync(noSyncThrow(t, () => d.write(0, Buffer.alloc(512)), 'write'), { instanceOf: DstError })
  t.is(err.code, 'DST_ERR_EROFS')
  t.is(err.errno, Errno.EROFS)
  t.is(d.inFlight, 0)
})

test('a backend without _flush: flush resolves at once', async t => {
  const d = new ReadOnlyBackend({ size: 4096 })
  await t.notThrowsAsync(d.flush())
})

test('readOnly option turns off write and trim but not flush', async t => {
  const d = new DeferredBackend({ size: 4096, readOnly: true })
  t.false(d.writable)
  t.false(d.canTrim)
  t.true(d.canFlush)
  t.is((await t.throwsAsync(d.write(0, Buffer.alloc(1)), { instanceOf: DstError })).code, 'DST_ERR_EROFS')
  t.is((await t.throwsAsync(d.trim(0, 1), { instanceOf: DstError })).code, 'DST_ERR_ENOTSUP')
  t.is(d.pending.length, 0, 'nothing reached the backend')
  t.false(d.status().writable)
})

test('out-of-range and malformed requests reject with DST_ERR_EINVAL, never throw synchronously, never reach the backend', async t => {
  const d = new DeferredBackend({ size: 4096 })
  const bad: Array<[number, number]> = [
    [4096, 1], [4095, 2], [0, 4097], [-1, 1], [0, -1], [1.5, 1], [0, 1.5], [NaN, 1], [0, NaN],
    [Infinity, 1], [Number.MAX_SAFE_INTEGER, 1], [2 ** 53, 0], [4097, 0],
  ]
  for (const [offset, length] of bad) {
    const label = `${offset}+${length}`
    const calls: Array<[string, () => Promise<void>]> = [
      ['read', () => d.read(offset, length, Buffer.alloc(8192))],
      ['trim', () => d.trim(offset, length)],
    ]
    // a write's length is its buffer's, so only well-formed lengths can be expressed
    if (Number.isSafeInteger(length) && length >= 0) calls.push(['write', () => d.write(offset, Buffer.alloc(length))])
    for (const [name, call] of calls) {
      const err = await t.throwsAsync(noSyncThrow(t, call, `${name} ${label}`), { instanceOf: DstError }, `${name} ${label}`)
      t.is(err.code, 'DST_ERR_EINVAL', `${name} ${label}`)
      t.is(err.errno, Errno.EINVAL)
    }
  }
  t.is(d.pending.length, 0)
  t.is(d.inFlight, 0)
})

test('out-of-range on a read-only backend also rejects EINVAL (reads), and EROFS wins for writes', async t => {
  const d = new ReadOnlyBackend({ size: 1024 })
  t.is((await t.throwsAsync(noSyncThrow(t, () => d.read(1024, 1, Buffer.alloc(1)), 'read'), { instanceOf: DstError })).code, 'DST_ERR_EINVAL')
  t.is((await t.throwsAsync(noSyncThrow(t, () => d.write(1024, Buffer.alloc(1)), 'write'), { instanceOf: DstError })).code, 'DST_ERR_EROFS')
  t.is(d.reads, 0)
})

test('requests touching the last byte are in range', async t => {
  const d = new ReadOnlyBackend({ size: 1024 })
  const into = Buffer.alloc(24)
  await d.read(1000, 24, into)
  t.is(into[0], 1000 & 0xff)
  t.is(into[23], 1023 & 0xff)
  t.is(d.reads, 1)
})

test('a read buffer smaller than the length rejects (no overrun), without a synchronous throw', async t => {
  const d = new ReadOnlyBackend({ size: 4096 })
  await t.throwsAsync(noSyncThrow(t, () => d.read(0, 100, Buffer.alloc(99)), 'read'), { instanceOf: RangeError })
  t.is(d.reads, 0)
})

test('zero-length requests resolve without calling the backend', async t => {
  const d = new DeferredBackend({ size: 4096 })
  await d.read(4096, 0, Buffer.alloc(0))
  await d.write(4096, Buffer.alloc(0))
  await d.trim(0, 0)
  t.is(d.pending.length, 0)
})

test('a backend that throws synchronously still gives a rejected promise', async t => {
  const d = new ThrowingBackend({ size: 4096 })
  await t.throwsAsync(noSyncThrow(t, () => d.read(0, 1, Buffer.alloc(1)), 'read'), { message: 'boom (read)' })
  await t.throwsAsync(noSyncThrow(t, () => d.write(0, Buffer.alloc(1)), 'write'), { message: 'boom (write)' })
  await t.throwsAsync(noSyncThrow(t, () => d.flush(), 'flush'), { message: 'boom (flush)' })
  t.is(d.inFlight, 0)
  await d.close()
  t.is(d.state, 'closed')
})

test('inFlight counts requests until they settle, whether they resolve or reject', async t => {
  const d = new DeferredBackend({ size: 4096 })
  const r = d.read(0, 10, Buffer.alloc(10))
  const w = d.write(0, Buffer.alloc(10))
  const f = d.flush()
  t.is(d.inFlight, 3)
  t.deepEqual(d.pending.map(p => p.op), ['read', 'write', 'flush'])
  d.pending[1].reject(new Error('disk on fire'))
  await t.throwsAsync(w, { message: 'disk on fire' })
  t.is(d.inFlight, 2)
  d.pending[0].resolve()
  d.pending[2].resolve()
  await Promise.all([r, f])
  t.is(d.inFlight, 0)
})

test('close() waits for in-flight requests, then closes the backend once', async t => {
  const d = new DeferredBackend({ size: 4096 })
  const into = Buffer.alloc(16)
  const read = d.read(0, 16, into)
  const write = d.write(100, Buffer.alloc(8))
  let closed = false
  const closing = d.close().then(() => { closed = true })
  await ticks()
  t.false(closed, 'close resolved while requests were in flight')
  t.is(d.state, 'closing')
  t.is(d.closed, 0, '_close ran before in-flight requests finished')
  t.is(d.inFlight, 2)

  d.pending[1].resolve() // the write finishes first
  await write
  await ticks()
  t.false(closed)
  t.is(d.closed, 0)

  d.pending[0].resolve()
  await read
  t.true(into.every(b => b === 0x5a), 'the in-flight read completed with its data')
  await closing
  t.true(closed)
  t.is(d.closed, 1)
  t.is(d.closedWithInFlight, 0)
  t.is(d.state, 'closed')
  t.is(d.close(), d.close(), 'close() is idempotent: one promise')
  await d.close()
  t.is(d.closed, 1)
})

test('close() completes even when an in-flight request fails', async t => {
  const d = new DeferredBackend({ size: 4096 })
  const read = d.read(0, 1, Buffer.alloc(1))
  const closing = d.close()
  d.pending[0].reject(new Error('EIO'))
  await t.throwsAsync(read, { message: 'EIO' })
  await t.notThrowsAsync(closing)
  t.is(d.state, 'closed')
})

test('close() with nothing in flight closes at once', async t => {
  const d = new DeferredBackend({ size: 4096 })
  await d.close()
  t.is(d.closed, 1)
  t.is(d.state, 'closed')
})

test('requests made while closing and after close reject with DST_ERR_CLOSED and never reach the backend', async t => {
  const d = new DeferredBackend({ size: 4096 })
  const inflight = d.read(0, 1, Buffer.alloc(1))
  const closing = d.close()
  const expectClosed = async (when: string): Promise<void> => {
    for (const [name, call] of [
      ['read', () => d.read(0, 1, Buffer.alloc(1))],
      ['write', () => d.write(0, Buffer.alloc(1))],
      ['flush', () => d.flush()],
      ['trim', () => d.trim(0, 1)],
      ['zero-length read', () => d.read(0, 0, Buffer.alloc(0))],
    ] as Array<[string, () => Promise<void>]>) {
      const err = await t.throwsAsync(noSyncThrow(t, call, `${name} ${when}`), { instanceOf: DstError }, `${name} ${when}`)
      t.is(err.code, 'DST_ERR_CLOSED', `${name} ${when}`)
      t.is(err.errno, Errno.ESHUTDOWN)
    }
  }
  await expectClosed('while closing')
  t.is(d.pending.length, 1, 'only the request made before close reached the backend')
  d.pending[0].resolve()
  await inflight
  await closing
  await expectClosed('after close')
  t.is(d.pending.length, 1)
})

test('options are kept: size and blockSize', t => {
  const opts: DeviceOptions = { size: 1 << 20, blockSize: 4096 }
  const d = new ReadOnlyBackend(opts)
  t.is(d.size, 1 << 20)
  t.is(d.blockSize, 4096)
  t.is(d.identity, '')
  t.is(d.state, 'online')
})

// ---- hash -----------------------------------------------------------------------------------------------------------

const KiB = 1024
const MiB = 1024 * KiB

// Devices without a hash of their own digest on the process's hasher: let its worker threads go at the end.
test.after.always(async () => { await closeDefaultHasher() })


test('hash on a memory device: each chunk of the range digested, the last possibly short', async t => {
  const seed = newSeed()
  t.log(`seed ${seed}`)
  const size = 3 * MiB + 1000
  const d = new MemoryDevice({ size })
  d.data.set(seededBytes(prng(seed), size))
  const ranges: Array<[number, number, number]> = [
    [0, size, 64 * KiB], // whole device, worker path, short last chunk
    [0, size, MiB],
    [1000, 5000, 512], // small: digested on the loop
    [4097, 2 * MiB + 3, MiB],
    [size - 100, 100, 4096], // the last bytes, one short chunk
    [size - 1, 1, 512],
    [12345, 8 * KiB, 8 * KiB], // exactly one chunk
  ]
  for (const [offset, length, chunk] of ranges) {
    const got = await d.hash(offset, length, chunk)
    t.is(got.length, Math.ceil(length / chunk) * DIGEST_SIZE, `${offset}+${length}/${chunk}: digest count`)
    t.true(got.equals(digestsOf(d.data.subarray(offset, offset + length), chunk)), `${offset}+${length}/${chunk}`)
  }
  t.is(d.inFlight, 0)
})

test('hash follows writes: a changed byte changes exactly its chunk\'s digest', async t => {
  const d = new MemoryDevice({ size: 64 * KiB })
  const before = await d.hash(0, 64 * KiB, 4096)
  await d.write(5 * 4096 + 17, Buffer.from([1]))
  const after = await d.hash(0, 64 * KiB, 4096)
  const changed: number[] = []
  for (let i = 0; i < 16; i++) {
    if (!before.subarray(i * DIGEST_SIZE, (i + 1) * DIGEST_SIZE).equals(after.subarray(i * DIGEST_SIZE, (i + 1) * DIGEST_SIZE))) changed.push(i)
  }
  t.deepEqual(changed, [5])
})

test('hash on a backend that only reads digests what it reads (the default _hash)', async t => {
  const d = new ReadOnlyBackend({ size: 256 * KiB })
  const want = Buffer.alloc(256 * KiB)
  for (let i = 0; i < want.length; i++) want[i] = i & 0xff
  const got = await d.hash(0, 256 * KiB, 4096)
  t.true(got.equals(digestsOf(want, 4096)))
  t.true(d.reads > 0)
  t.true((await d.hash(100, 3000, 512)).equals(digestsOf(want.subarray(100, 3100), 512)))
})

test('hash: a chunk that is not a power of two from 512 B to 1 MiB rejects EINVAL, without reaching the backend', async t => {
  const d = new ReadOnlyBackend({ size: 4 * MiB })
  for (const chunk of [0, 3000, 2 * MiB, 256, 511, -512, 1.5, NaN, 12 * KiB]) {
    const err = await t.throwsAsync(noSyncThrow(t, () => d.hash(0, 4096, chunk), `chunk ${chunk}`), { instanceOf: DstError }, `chunk ${chunk}`)
    t.is(err.code, 'DST_ERR_EINVAL', `chunk ${chunk}`)
    t.is(err.errno, Errno.EINVAL)
  }
  t.is(d.reads, 0)
  t.is(d.inFlight, 0)
})

test('hash: a range outside the device rejects EINVAL, without reaching the backend', async t => {
  const d = new ReadOnlyBackend({ size: 64 * KiB })
  const m = new MemoryDevice({ size: 64 * KiB })
  for (const [offset, length] of [[64 * KiB, 1], [0, 64 * KiB + 1], [64 * KiB - 100, 4096], [-1, 10], [0, -1], [1.5, 10], [NaN, 10], [65 * KiB, 0]]) {
    for (const dev of [d, m] as Device[]) {
      const label = `${dev.type} ${offset}+${length}`
      const err = await t.throwsAsync(noSyncThrow(t, () => dev.hash(offset, length, 4096), label), { instanceOf: DstError }, label)
      t.is(err.code, 'DST_ERR_EINVAL', label)
    }
  }
  t.is(d.reads, 0)
})

test('hash of length 0 is an empty buffer and reaches no backend', async t => {
  const d = new ReadOnlyBackend({ size: 4096 })
  for (const offset of [0, 100, 4096]) {
    const got = await d.hash(offset, 0, 4096)
    t.true(Buffer.isBuffer(got))
    t.is(got.length, 0)
  }
  t.is((await new MemoryDevice({ size: 4096 }).hash(0, 0, 512)).length, 0)
  t.is(d.reads, 0)
})

test('hash counts as in flight: close() waits for it', async t => {
  const d = new DeferredBackend({ size: 64 * KiB })
  const hashing = d.hash(0, 64 * KiB, 4096)
  t.is(d.inFlight, 1)
  let closed = false
  const closing = d.close().then(() => { closed = true })
  // The read behind the hash is issued once a buffer of the hasher is free (other tests here share them).
  await until('the read behind the hash to be issued', () => d.pending.length > 0, 5000, 5)
  t.is(d.pending.length, 1)
  t.false(closed, 'close resolved while a hash was in flight')
  t.is(d.closed, 0)
  d.pending[0].resolve()
  const got = await hashing
  t.true(got.equals(digestsOf(Buffer.alloc(64 * KiB, 0x5a), 4096)), 'the hash completed with the digests of what was read')
  await closing
  t.true(closed)
  t.is(d.closedWithInFlight, 0)
})

test('hash rejects with the backend\'s read error', async t => {
  const d = new ThrowingBackend({ size: 64 * KiB })
  await t.throwsAsync(noSyncThrow(t, () => d.hash(0, 64 * KiB, 4096), 'hash'), { message: 'boom (read)' })
  t.is(d.inFlight, 0)
})

test('hash on a closed or closing device rejects with DST_ERR_CLOSED', async t => {
  const m = new MemoryDevice({ size: 64 * KiB })
  await m.close()
  for (const [offset, length] of [[0, 64 * KiB], [0, 100], [0, 0]]) {
    const err = await t.throwsAsync(noSyncThrow(t, () => m.hash(offset, length, 4096), `hash ${offset}+${length}`), { instanceOf: DstError })
    t.is(err.code, 'DST_ERR_CLOSED')
    t.is(err.errno, Errno.ESHUTDOWN)
  }
  const d = new DeferredBackend({ size: 4096 })
  const inflight = d.read(0, 1, Buffer.alloc(1))
  const closing = d.close()
  await t.throwsAsync(d.hash(0, 4096, 4096), { code: 'DST_ERR_CLOSED' })
  d.pending[0].resolve()
  await inflight
  await closing
  t.is(d.pending.length, 1, 'the hash never reached the backend')
})
