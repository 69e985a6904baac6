// Tests for node/core/hasher.ts: BLAKE2b-512 digests of each chunk of a byte range, computed on the loop for a few KiB and
// on a piscina worker above that. What is checked: the digests are node:crypto's, chunk by chunk (a short last chunk
// included), whether the bytes live in shared memory (passed without a copy) or not (copied), at any byte offset of
// their buffer; digestOne; digestByReading over the hasher's shared buffers; a failing digest is DST_ERR_HASH (EIO) on
// both paths and leaves other hashers working; a full queue is DST_ERR_HASH_BUSY (EAGAIN); a closed hasher refuses.

import test, { type ExecutionContext } from 'ava'
import { createHash } from 'node:crypto'
import { Piscina } from 'piscina'
import {
  closeDefaultHasher, defaultHasher, DIGEST_SIZE, digestByReading, digestCount, HASH_ALGORITHM, Hasher, type HasherOptions,
  isHashChunk, MAX_HASH_CHUNK, MIN_HASH_CHUNK,
} from '../../../node/core/hasher'
import { DstError, Errno } from '../../../node/core/errors'
import { between, newSeed, prng, seededBytes } from '../../helpers/random'
import { digestsOf as expected } from '../../helpers/digests'

const KiB = 1024
const MiB = 1024 * KiB
/** The hasher digests up to this many bytes on the loop (not exported: the stats tell the paths apart). */
const INLINE = 8 * KiB


/** A hasher closed when the test ends, so its worker threads go. */
function newHasher (t: ExecutionContext, options: HasherOptions = {}): Hasher {
  const h = new Hasher({ threads: 1, ...options })
  t.teardown(() => h.close())
  return h
}

/** Random bytes from a logged seed, so a failure can be replayed. */
function bytes (t: ExecutionContext, length: number): Buffer {
  const seed = newSeed()
  t.log(`seed ${seed}`)
  return seededBytes(prng(seed), length)
}

/** Copies `data` into shared memory at `offset` and returns the view. */
function shared (data: Uint8Array, offset: number): Uint8Array {
  const view = new Uint8Array(new SharedArrayBuffer(offset + data.byteLength + 100), offset, data.byteLength)
  view.set(data)
  return view
}

test.after.always(async () => {
  // Some tests use the default hasher (of code given none); let it go as well.
  await closeDefaultHasher()
})

// ---- constants and helpers ------------------------------------------------------------------------------------------

test('the algorithm is BLAKE2b-512 with 64-byte digests', t => {
  t.is(HASH_ALGORITHM, 'blake2b512')
  t.is(DIGEST_SIZE, 64)
  t.is(createHash(HASH_ALGORITHM).update('x').digest().length, DIGEST_SIZE)
  t.is(MIN_HASH_CHUNK, 512)
  t.is(MAX_HASH_CHUNK, MiB)
})

test('isHashChunk: powers of two from 512 bytes to 1 MiB, nothing else', t => {
  for (let c = MIN_HASH_CHUNK; c <= MAX_HASH_CHUNK; c *= 2) t.true(isHashChunk(c), `${c}`)
  for (const c of [0, -512, 1, 256, 511, 513, 3000, 4095, 12 * KiB, MiB - 512, 2 * MiB, 512.5, NaN, Infinity]) {
    t.false(isHashChunk(c), `${c}`)
  }
})

test('digestCount: one digest per chunk, the last one possibly short', t => {
  t.is(digestCount(0, 4096), 0)
  t.is(digestCount(1, 4096), 1)
  t.is(digestCount(4096, 4096), 1)
  t.is(digestCount(4097, 4096), 2)
  t.is(digestCount(3 * MiB + 100, MiB), 4)
})

// ---- digests --------------------------------------------------------------------------------------------------------

test('digests equal node:crypto\'s for every chunk, inline and on a worker, at sizes around the chunk edges', async t => {
  const h = newHasher(t)
  const data = bytes(t, 3 * MiB + 100)
  const cases: Array<[number, number]> = [
    [1, 512], [511, 512], [512, 512], [513, 512], [4000, 4096], [INLINE, 512], [INLINE, 4096], // inline
    [INLINE + 1, 512], [INLINE + 1, 4096], [100 * KiB + 17, 4096], [256 * KiB, 64 * KiB], [MiB + 1, MiB], [3 * MiB + 100, MiB], // worker
  ]
  let inline = 0
  let tasks = 0
  for (const [length, chunk] of cases) {
    const piece = data.subarray(0, length)
    const got = await h.digest(piece, chunk)
    t.is(got.length, digestCount(length, chunk) * DIGEST_SIZE, `${length}/${chunk}: digest count`)
    t.true(got.equals(expected(piece, chunk)), `${length}/${chunk}: digests`)
    if (length <= INLINE) inline++; else tasks++
  }
  t.is(h.stats.inline, inline, 'a few KiB are digested on the loop')
  t.is(h.stats.tasks, tasks, 'more goes to a worker')
  t.is(h.stats.bytes, cases.reduce((sum, [length]) => sum + length, 0))
  t.is(h.stats.errors, 0)
})

test('a short last chunk is digested on its own: length 3 chunks + 100 bytes gives 4 digests', async t => {
  const h = newHasher(t)
  for (const chunk of [512, 64 * KiB]) {
    const data = bytes(t, 3 * chunk + 100)
    const got = await h.digest(data, chunk)
    t.is(got.length, 4 * DIGEST_SIZE)
    for (let i = 0; i < 3; i++) {
      const want = createHash('blake2b512').update(data.subarray(i * chunk, (i + 1) * chunk)).digest()
      t.true(got.subarray(i * DIGEST_SIZE, (i + 1) * DIGEST_SIZE).equals(want), `chunk ${i} of ${chunk}`)
    }
    const last = createHash('blake2b512').update(data.subarray(3 * chunk)).digest()
    t.true(got.subarray(3 * DIGEST_SIZE).equals(last), `the 100-byte last chunk of ${chunk}`)
  }
})

test('views of shared memory at an offset are digested in place, and stay usable', async t => {
  const h = newHasher(t)
  const data = bytes(t, 300 * KiB + 5)
  for (const [length, offset, chunk] of [[5000, 0, 512], [5000, 777, 4096], [300 * KiB + 5, 0, 4096], [300 * KiB + 5, 12345, 64 * KiB], [200 * KiB, 3, MiB]]) {
    const view = shared(data.subarray(0, length), offset)
    t.true(view.buffer instanceof SharedArrayBuffer)
    const got = await h.digest(view, chunk)
    t.true(got.equals(expected(data.subarray(0, length), chunk)), `${length} bytes at ${offset}, chunk ${chunk}`)
    t.is(view.byteLength, length, 'the shared memory was not transferred away')
    t.true(Buffer.from(view.buffer, view.byteOffset, view.byteLength).equals(data.subarray(0, length)), 'the bytes are unchanged')
  }
  t.is(h.stats.tasks, 3)
  t.is(h.stats.inline, 2)
})

test('plain buffers (a Buffer, a Uint8Array view at an offset of a larger ArrayBuffer) are digested right and left intact', async t => {
  const h = newHasher(t)
  const data = bytes(t, 200 * KiB)
  // A view in the middle of a larger ArrayBuffer: only the view's bytes count, wherever they start.
  const big = new Uint8Array(new ArrayBuffer(1000 + data.length + 1000))
  big.fill(0xab)
  big.set(data, 1000)
  const view = big.subarray(1000, 1000 + data.length)
  for (const [what, input] of [['Buffer', data], ['Uint8Array view at 1000', view], ['inline view', view.subarray(10, 3010)]] as Array<[string, Uint8Array]>) {
    const want = expected(Buffer.from(input), 4096)
    const got = await h.digest(input, 4096)
    t.true(got.equals(want), what)
    t.false(input.buffer instanceof SharedArrayBuffer)
    t.true(input.buffer.byteLength > 0, `${what}: its buffer was not transferred away`)
  }
  t.true(Buffer.from(view).equals(data), 'the caller\'s bytes are unchanged')
  t.true(big.subarray(0, 1000).every(b => b === 0xab) && big.subarray(1000 + data.length).every(b => b === 0xab))
})

/** Bytes a message would copy to a worker: what structured clone copies of each buffer in it (shared memory: none). */
function copiedBytes (task: unknown): number {
  let n = 0
  for (const v of Object.values(task as Record<string, unknown>)) {
    if (v instanceof SharedArrayBuffer) continue
    if (v instanceof ArrayBuffer) n += v.byteLength
    else if (ArrayBuffer.isView(v) && !(v.buffer instanceof SharedArrayBuffer)) n += v.buffer.byteLength // a view takes its whole buffer along
  }
  return n
}

/** Runs `fn` while recording what each task posted to a piscina pool would copy to the worker. */
async function recordingPosts (fn: () => Promise<void>): Promise<number[]> {
  const posted: number[] = []
  const run = Piscina.prototype.run
  Piscina.prototype.run = function (this: Piscina, task: unknown, options?: Parameters<Piscina['run']>[1]) {
    posted.push(copiedBytes(task))
    return run.call(this, task, options)
  }
  try {
    await fn()
  } finally {
    Piscina.prototype.run = run
  }
  return posted
}

// Serial, like the next one: both watch every piscina pool in the process while they run.
test.serial('shared memory reaches a worker without a copy; a plain Buffer is copied at most once', async t => {
  const h = newHasher(t)
  const data = bytes(t, 64 * KiB)
  const inShared = shared(data, 4096)
  const posted = await recordingPosts(async () => {
    t.true((await h.digest(inShared, 4096)).equals(expected(data, 4096)))
    t.true((await h.digest(data, 4096)).equals(expected(data, 4096)))
  })
  t.is(posted.length, 2, 'both went to a worker')
  t.is(posted[0], 0, 'shared memory is not copied')
  t.true(posted[1] <= 64 * KiB, `a 64 KiB Buffer posted ${posted[1]} bytes`)
})

// Regression: Hasher.digest() (node/core/hasher.ts) once posted bytes that are not in shared memory to the worker as
// the Uint8Array view itself, and structured clone copies a view's WHOLE ArrayBuffer, not the view's bytes: a 64 KiB
// view of a 256 MiB buffer copied 256 MiB per digest (~800 ms, against ~1 ms for a 64 KiB Buffer). Callers hash views
// of their callers' buffers (the native client's wire digests of WRITE and READ payloads, pieces of a linear or mirror
// request), so every piece copied the whole buffer. It now posts a copy of the view's bytes only.
test.serial('a plain view of a large buffer sends only its own bytes to a worker, not the whole buffer behind it', async t => {
  const h = newHasher(t)
  const data = bytes(t, 64 * KiB)
  const big = Buffer.alloc(16 * MiB)
  data.copy(big, MiB)
  const view = big.subarray(MiB, MiB + data.length)
  const posted = await recordingPosts(async () => {
    t.true((await h.digest(view, 4096)).equals(expected(data, 4096)), 'the digests are right')
  })
  t.is(posted.length, 1, 'one task went to a worker')
  t.true(posted.every(n => n <= data.length), `a ${data.length}-byte view posted ${posted.join(', ')} bytes to the worker`)
})

test('random lengths and chunks agree with node:crypto (seeded)', async t => {
  const h = newHasher(t)
  const seed = newSeed()
  t.log(`seed ${seed}`)
  const rand = prng(seed)
  const data = seededBytes(rand, 2 * MiB)
  const work: Array<Promise<void>> = []
  for (let i = 0; i < 30; i++) {
    const chunk = 2 ** between(rand, 9, 20)
    const start = between(rand, 0, 1000)
    const length = between(rand, 1, rand() < 0.5 ? INLINE + 1000 : 2 * MiB - start)
    const piece = rand() < 0.5 ? data.subarray(start, start + length) : shared(data.subarray(start, start + length), start)
    work.push(h.digest(piece, chunk).then(got => {
      t.true(got.equals(expected(data.subarray(start, start + length), chunk)), `${length} bytes from ${start}, chunk ${chunk}`)
    }))
  }
  await Promise.all(work)
  t.is(h.stats.inline + h.stats.tasks, 30)
})

test('digestOne is one digest of all the bytes, on both paths', async t => {
  const h = newHasher(t)
  const data = bytes(t, 3 * MiB)
  for (const length of [1, 100, 512, INLINE, INLINE + 1, 64 * KiB, MiB, 3 * MiB]) {
    const got = await h.digestOne(data.subarray(0, length))
    t.true(got.equals(createHash('blake2b512').update(data.subarray(0, length)).digest()), `${length} bytes`)
  }
  const empty = await h.digestOne(Buffer.alloc(0))
  t.true(empty.equals(createHash('blake2b512').digest()), 'an empty payload has the digest of nothing')
})

test('digestByReading: digests of a range read piece by piece into the hasher\'s shared buffers', async t => {
  const h = newHasher(t, { buffers: 2 })
  const source = bytes(t, 3 * MiB + 4096)
  const reads: Array<[number, number]> = []
  const read = (offset: number, length: number, into: Uint8Array): Promise<void> => {
    reads.push([offset, length])
    if (!(into.buffer instanceof SharedArrayBuffer)) return Promise.reject(new Error('not read into shared memory'))
    into.set(source.subarray(offset, offset + length))
    return Promise.resolve()
  }
  for (const [offset, length, chunk] of [[0, 4096, 512], [100, 3 * MiB - 100, 4096], [4096, 2 * MiB + 1, 64 * KiB], [7, 3 * MiB, MiB], [3 * MiB, 4096, 4096]]) {
    reads.length = 0
    const got = await digestByReading(read, offset, length, chunk, h)
    t.true(got.equals(expected(source.subarray(offset, offset + length), chunk)), `${offset}+${length}, chunk ${chunk}`)
    t.is(reads.reduce((sum, [, n]) => sum + n, 0), length, 'every byte read once')
    t.true(reads.every(([, n]) => n <= MiB), 'each piece fits one buffer')
  }
  t.is(h.buffers.available, 2, 'every buffer went back')
  t.deepEqual(await digestByReading(read, 0, 0, 4096, h), Buffer.alloc(0))
})

test('digestByReading: a failing read rejects with its error and returns every buffer', async t => {
  const h = newHasher(t, { buffers: 2 })
  const boom = new DstError('DST_ERR_EIO', 'bad sector', Errno.EIO)
  const read = (offset: number, _length: number, into: Uint8Array): Promise<void> => {
    if (offset >= MiB) return Promise.reject(boom)
    into.fill(1)
    return Promise.resolve()
  }
  const err = await t.throwsAsync(digestByReading(read, 0, 4 * MiB, 4096, h))
  t.is(err, boom)
  t.is(h.buffers.available, 2)
})

// ---- failures -------------------------------------------------------------------------------------------------------

test('a digest that fails is DST_ERR_HASH (EIO) inline and on a worker; healthy hashers keep working', async t => {
  const bad = newHasher(t, { algorithm: 'nope' })
  const good = newHasher(t)
  const data = bytes(t, 100 * KiB)
  for (const length of [100, INLINE, INLINE + 1, 100 * KiB, 100]) {
    const err = await t.throwsAsync(bad.digest(data.subarray(0, length), 4096), { instanceOf: DstError })
    t.is(err?.code, 'DST_ERR_HASH', `${length} bytes`)
    t.is(err?.errno, Errno.EIO)
  }
  t.is(bad.stats.errors, 5)
  t.is(bad.stats.busy, 0)
  await t.throwsAsync(bad.digestOne(data), { code: 'DST_ERR_HASH' })
  // The failures took nothing else down: another hasher, and the default one, still give right digests.
  t.true((await good.digest(data, 4096)).equals(expected(data, 4096)))
  t.true((await good.digest(data.subarray(0, 1000), 512)).equals(expected(data.subarray(0, 1000), 512)))
  t.true((await defaultHasher().digest(data, 8192)).equals(expected(data, 8192)))
  t.is(good.stats.errors, 0)
})

test('a full queue is DST_ERR_HASH_BUSY (EAGAIN); the digests that were taken are right', async t => {
  const h = newHasher(t, { threads: 1, maxQueue: 1 })
  const data = bytes(t, 4 * MiB)
  const want = expected(data, 64 * KiB)
  const results = await Promise.allSettled(Array.from({ length: 20 }, () => h.digest(data, 64 * KiB)))
  const busy = results.filter(r => r.status === 'rejected')
  const done = results.filter((r): r is PromiseFulfilledResult<Buffer> => r.status === 'fulfilled')
  t.true(busy.length > 0, 'some were refused')
  t.true(done.length > 0, 'some were digested')
  t.true(done.length <= 3, `one worker and a queue of one take only a few at once (${done.length} taken)`)
  for (const r of busy) {
    const err = (r as PromiseRejectedResult).reason as DstError
    t.true(err instanceof DstError)
    t.is(err.code, 'DST_ERR_HASH_BUSY')
    t.is(err.errno, Errno.EAGAIN)
  }
  for (const r of done) t.true(r.value.equals(want))
  t.is(h.stats.busy, busy.length)
  t.is(h.stats.errors, 0)
  // Once the queue drains the hasher takes work again.
  t.true((await h.digest(data, 64 * KiB)).equals(want))
  t.is(h.queued, 0)
})

test('a closed hasher rejects with DST_ERR_CLOSED; close() twice is fine', async t => {
  const h = new Hasher({ threads: 1 })
  const data = Buffer.alloc(64 * KiB, 7)
  t.true((await h.digest(data, 4096)).equals(expected(data, 4096)), 'works before close')
  await h.close()
  await t.notThrowsAsync(h.close())
  for (const length of [100, 64 * KiB]) {
    const err = await t.throwsAsync(h.digest(data.subarray(0, length), 4096), { instanceOf: DstError })
    t.is(err?.code, 'DST_ERR_CLOSED')
    t.is(err?.errno, Errno.ESHUTDOWN)
  }
  await t.throwsAsync(h.digestOne(data), { code: 'DST_ERR_CLOSED' })
})

// Serial (ava runs these first): other tests use the default hasher, which this one closes and replaces.
test.serial('defaultHasher() is one per process until closeDefaultHasher closes it; the next call makes a new one', async t => {
  t.is(defaultHasher(), defaultHasher())
  const old = defaultHasher()
  await closeDefaultHasher()
  const h = defaultHasher()
  t.not(h, old)
  t.is(defaultHasher(), h)
  await t.throwsAsync(old.digest(Buffer.alloc(10), 512), { code: 'DST_ERR_CLOSED' })
  const data = Buffer.alloc(20 * KiB, 3)
  t.true((await defaultHasher().digest(data, 4096)).equals(expected(data, 4096)))
  // A hasher of one's own is sized as asked (what the node does with hash.threads).
  const own = newHasher(t, { threads: 2 })
  t.is(own.threads, 2)
  t.true((await own.digest(data, 4096)).equals(expected(data, 4096)))
})
