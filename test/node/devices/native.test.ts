// Tests for node/devices/native.ts and the holes of node/devices/file-device.ts: extents from SEEK_DATA/SEEK_HOLE,
// TRIM and zeroes that may trim punch holes (the file's allocated blocks shrink), zeroes without may-trim keep the
// space, and the pure-JS fallback (the addon absent) reports every capability absent and still reads and writes.

import test from 'ava'
import fc from 'fast-check'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { FileDevice } from '../../../node/devices/file-device'
import { loadNativeFs } from '../../../node/devices/native'
import { DstError, ErrorCode } from '../../../node/core/errors'
import { tempDir } from '../../helpers/node-process'
import { inCI } from '../../helpers/requires'

const KiB = 1024
const MiB = 1024 * KiB
const dirs: string[] = []
function file (): string { const d = tempDir('dst-native-'); dirs.push(d); return path.join(d, 'disk.img') }
test.after.always(() => { for (const d of dirs) fs.rmSync(d, { recursive: true, force: true }) })

const native = loadNativeFs()
// The addon is built by `npm install`; a machine without a compiler skips these (CI, which has one, fails instead).
const nativeTest = native !== null ? test : inCI ? (title: string) => test(title, t => t.fail('the native addon was not built (npm install runs native/build.js)')) : test.skip

const allocated = (p: string): number => fs.statSync(p).blocks * 512

nativeTest('extents of a sparse file: holes and data runs as the filesystem has them, merged and covering the range', async t => {
  const p = file()
  const d = await FileDevice.open({ path: p, size: 16 * MiB })
  t.teardown(() => d.close())
  await d.write(1 * MiB, Buffer.alloc(64 * KiB, 1))
  await d.write(8 * MiB, Buffer.alloc(4 * KiB, 2))
  t.deepEqual(await d.extents(0, 16 * MiB), [
    { offset: 0, length: 1 * MiB, hole: true },
    { offset: 1 * MiB, length: 64 * KiB, hole: false },
    { offset: 1 * MiB + 64 * KiB, length: 7 * MiB - 64 * KiB, hole: true },
    { offset: 8 * MiB, length: 4 * KiB, hole: false },
    { offset: 8 * MiB + 4 * KiB, length: 8 * MiB - 4 * KiB, hole: true },
  ])
  t.deepEqual(await d.extents(1 * MiB + 4 * KiB, 8 * KiB), [{ offset: 1 * MiB + 4 * KiB, length: 8 * KiB, hole: false }], 'a range inside data')
  t.deepEqual(await d.extents(2 * MiB, 4 * KiB), [{ offset: 2 * MiB, length: 4 * KiB, hole: true }], 'a range inside a hole')
  t.deepEqual(await d.extents(16 * MiB - 4 * KiB, 4 * KiB), [{ offset: 16 * MiB - 4 * KiB, length: 4 * KiB, hole: true }], 'the last block, a hole up to the end')
  await t.throwsAsync(d.extents(16 * MiB, 1), { instanceOf: DstError, code: ErrorCode.EINVAL })
})

nativeTest('many runs (more than one addon call answers) come back merged and in order', async t => {
  const p = file()
  const d = await FileDevice.open({ path: p, size: 64 * MiB })
  t.teardown(() => d.close())
  const runs = 5000 // every other 4 KiB block holds data: 10000 runs, three calls of 4096
  const block = Buffer.alloc(4 * KiB, 7)
  for (let i = 0; i < runs; i += 50) await Promise.all(Array.from({ length: 50 }, (_, j) => d.write((i + j) * 8 * KiB, block)))
  const ext = await d.extents(0, 64 * MiB)
  t.is(ext.length, 2 * runs)
  let at = 0
  for (const [i, e] of ext.entries()) {
    t.is(e.offset, at)
    t.is(e.hole, i % 2 === 1)
    if (i < 2 * runs - 1) t.is(e.length, 4 * KiB)
    at += e.length
  }
  t.is(at, 64 * MiB)
})

nativeTest('TRIM punches a hole: the blocks are freed, the range reads as zeros and is reported a hole', async t => {
  const p = file()
  const d = await FileDevice.open({ path: p, size: 8 * MiB })
  t.teardown(() => d.close())
  t.true(d.canTrim)
  t.true(d.canZeroFast)
  await d.write(0, Buffer.alloc(2 * MiB, 0xab))
  await d.flush()
  const before = allocated(p)
  await d.trim(512 * KiB, 1 * MiB)
  t.is(before - allocated(p), 1 * MiB, 'one MiB freed')
  const back = Buffer.alloc(2 * MiB, 1)
  await d.read(0, 2 * MiB, back)
  t.true(back.subarray(512 * KiB, 1536 * KiB).every(b => b === 0))
  t.true(back.subarray(0, 512 * KiB).every(b => b === 0xab))
  t.true(back.subarray(1536 * KiB).every(b => b === 0xab))
  t.deepEqual((await d.extents(0, 2 * MiB)).map(e => e.hole), [false, true, false])
})

nativeTest('zero with may-trim punches; without it the range reads as zeros and stays allocated (ZERO_RANGE)', async t => {
  const p = file()
  const d = await FileDevice.open({ path: p, size: 8 * MiB })
  t.teardown(() => d.close())
  await d.write(0, Buffer.alloc(4 * MiB, 0xcd))
  await d.flush()
  const full = allocated(p)
  await d.zero(0, 1 * MiB, false, true)
  t.is(allocated(p), full, 'no space freed without may-trim')
  await d.zero(2 * MiB, 1 * MiB, true, true)
  t.is(allocated(p), full - 1 * MiB, 'may-trim freed the range')
  const back = Buffer.alloc(4 * MiB, 1)
  await d.read(0, 4 * MiB, back)
  t.true(back.subarray(0, 1 * MiB).every(b => b === 0))
  t.true(back.subarray(1 * MiB, 2 * MiB).every(b => b === 0xcd))
  t.true(back.subarray(2 * MiB, 3 * MiB).every(b => b === 0))
  t.true(back.subarray(3 * MiB).every(b => b === 0xcd))
})

test('without the addon (the fallback): one data run, no TRIM, no fast zero, and zeroes are written', async t => {
  t.is(loadNativeFs(path.join(tempDir('dst-native-none-'), 'missing.node')), null, 'a missing addon loads as null')
  const p = file()
  const d = await FileDevice.open({ path: p, size: 8 * MiB, native: null })
  t.teardown(() => d.close())
  t.false(d.canTrim)
  t.false(d.canZeroFast)
  t.like(d.status(), { holes: false, punch: false })
  t.deepEqual(await d.extents(0, 8 * MiB), [{ offset: 0, length: 8 * MiB, hole: false }])
  await t.throwsAsync(d.trim(0, 4096), { instanceOf: DstError, code: ErrorCode.ENOTSUP })
  await t.throwsAsync(d.zero(0, 4096, true, true), { instanceOf: DstError, code: ErrorCode.ENOTSUP })
  await d.write(0, Buffer.alloc(3 * MiB, 0xee))
  await d.zero(4096, 2 * MiB + 4096, true)
  const back = Buffer.alloc(3 * MiB, 1)
  await d.read(0, 3 * MiB, back)
  t.true(back.subarray(0, 4096).every(b => b === 0xee))
  t.true(back.subarray(4096, 2 * MiB + 8192).every(b => b === 0))
  t.true(back.subarray(2 * MiB + 8192).every(b => b === 0xee))
})

test('DST_NATIVE=0 runs without the addon', async t => {
  const { execFileSync } = await import('node:child_process')
  const out = execFileSync(process.execPath, ['-r', 'ts-node/register/transpile-only', '-e', "console.log(require('./node/devices/native').loadNativeFs() === null)"], { env: { ...process.env, DST_NATIVE: '0' }, cwd: path.join(__dirname, '..', '..', '..') }).toString().trim()
  t.is(out, 'true')
})

test('a read-only file device neither trims nor zeroes', async t => {
  const p = file()
  fs.writeFileSync(p, Buffer.alloc(1 * MiB))
  const d = await FileDevice.open({ path: p, readOnly: true })
  t.teardown(() => d.close())
  t.false(d.canTrim)
  t.false(d.canZeroFast)
  await t.throwsAsync(d.zero(0, 4096, true), { instanceOf: DstError, code: ErrorCode.EROFS })
})

nativeTest('random writes, trims and zeroes: extents cover the range in merged runs, holes read as zeros, and bytes match a Buffer model (fast-check)', async t => {
  const SIZE = 2 * MiB
  const BLOCK = 4 * KiB
  const op = fc.record({
    kind: fc.constantFrom('write', 'trim', 'zero', 'zero-no-hole'),
    block: fc.integer({ min: 0, max: SIZE / BLOCK - 1 }),
    blocks: fc.integer({ min: 1, max: 64 }),
    seed: fc.integer({ min: 1, max: 255 }),
  })
  await fc.assert(fc.asyncProperty(fc.array(op, { maxLength: 24 }), fc.integer({ min: 0, max: SIZE - 1 }), fc.integer({ min: 1, max: SIZE }), async (ops, from, span) => {
    const p = file()
    const d = await FileDevice.open({ path: p, size: SIZE })
    try {
      const model = Buffer.alloc(SIZE)
      for (const o of ops) {
        const offset = o.block * BLOCK
        const length = Math.min(o.blocks * BLOCK, SIZE - offset)
        if (o.kind === 'write') {
          const data = Buffer.alloc(length, o.seed)
          await d.write(offset, data)
          data.copy(model, offset)
        } else {
          if (o.kind === 'trim') await d.trim(offset, length)
          else await d.zero(offset, length, o.kind === 'zero')
          model.fill(0, offset, offset + length)
        }
      }
      const length = Math.min(span, SIZE - from)
      const ext = await d.extents(from, length)
      let at = from
      for (const [i, e] of ext.entries()) {
        if (e.offset !== at || e.length <= 0) return false
        if (i > 0 && ext[i - 1].hole === e.hole) return false // merged
        if (e.hole && !model.subarray(e.offset, e.offset + e.length).every(b => b === 0)) return false
        at += e.length
      }
      if (at !== from + length) return false
      const back = Buffer.alloc(SIZE)
      await d.read(0, SIZE, back)
      return back.equals(model)
    } finally {
      await d.close()
      fs.rmSync(p, { force: true })
    }
  }), { numRuns: 60 })
  t.pass('fast-check found no counterexample') // fc.assert throws on failure
})
