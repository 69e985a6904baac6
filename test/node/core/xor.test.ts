// Tests for node/core/xor.ts: XOR on the loop (aligned words and unaligned bytes) and on the workers over shared
// memory (split into slices), against a byte-by-byte model; dest may be one of the sources; a source too short is
// refused; a closed engine refuses.

import test from 'ava'
import fc from 'fast-check'
import { XorEngine, xorInto } from '../../../node/core/xor'

function model (sources: Uint8Array[], n: number): Buffer {
  const out = Buffer.alloc(n)
  for (const s of sources) for (let i = 0; i < n; i++) out[i] ^= s[i]
  return out
}

function shared (n: number, seed: number): Uint8Array {
  const b = new Uint8Array(new SharedArrayBuffer(n))
  for (let i = 0; i < n; i++) b[i] = (seed * 31 + i * 7 + (i >> 9)) & 0xff
  return b
}

test('xorInto: aligned and unaligned views agree with the byte model', t => {
  fc.assert(fc.property(fc.integer({ min: 1, max: 5 }), fc.integer({ min: 0, max: 3 }), fc.integer({ min: 1, max: 5000 }), (k, skew, n) => {
    const sources = Array.from({ length: k }, (_, i) => Buffer.from(shared(n + 8, i + 1)).subarray(skew, skew + n))
    const dest = Buffer.alloc(n + 4).subarray(skew % 2, (skew % 2) + n)
    xorInto(dest, sources)
    return dest.equals(model(sources, n))
  }), { numRuns: 200 })
  t.pass('200 random shapes agreed with the model')
})

test('xorInto: dest may be one of the sources (parity updated in place); no sources gives zeros; a short source is refused', t => {
  const a = Buffer.from([1, 2, 3, 4, 5, 6, 7, 8])
  const p = Buffer.from([9, 9, 9, 9, 9, 9, 9, 9])
  const expected = model([a, p], 8)
  xorInto(p, [a, p])
  t.deepEqual([...p], [...expected])
  const z = Buffer.alloc(4, 7)
  xorInto(z, [])
  t.deepEqual([...z], [0, 0, 0, 0])
  t.throws(() => xorInto(Buffer.alloc(8), [Buffer.alloc(4)]), { instanceOf: RangeError })
})

test('XorEngine: large shared buffers go to the workers in slices and agree with the model; small or unshared ones stay on the loop', async t => {
  const engine = new XorEngine({ threads: 2 })
  t.teardown(() => engine.close())
  const n = 1024 * 1024 + 4096
  const sources = [1, 2, 3, 4].map(s => shared(n, s))
  const dest = new Uint8Array(new SharedArrayBuffer(n))
  await engine.xor(dest, sources)
  t.true(Buffer.from(dest).equals(model(sources, n)))
  t.is(engine.stats.tasks, 2, 'two slices, one per thread')
  // In place: parity ^= a changes only dest, and undoes a's share.
  await engine.xor(dest, [sources[0], dest])
  t.true(Buffer.from(dest).equals(model(sources.slice(1), n)))
  t.is(engine.stats.tasks, 4)
  const small = Buffer.alloc(4096)
  await engine.xor(small, [Buffer.alloc(4096, 1), Buffer.alloc(4096, 2)])
  t.true(small.equals(Buffer.alloc(4096, 3)))
  const unshared = Buffer.alloc(n)
  await engine.xor(unshared, [Buffer.alloc(n, 5), Buffer.alloc(n, 6)])
  t.true(unshared.equals(Buffer.alloc(n, 3)))
  t.is(engine.stats.tasks, 4, 'the small and the unshared ones ran on the loop')
  t.is(engine.stats.inline, 2)
  await t.throwsAsync(engine.xor(dest, [shared(n - 4096, 1), shared(n, 2)]), { instanceOf: RangeError })
  await engine.close()
  await t.throwsAsync(engine.xor(small, [small]), { code: 'DST_ERR_CLOSED' })
})
