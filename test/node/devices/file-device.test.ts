// Tests for node/devices/file-device.ts: a device over a regular file (created sparse, grown, truncated view, read-only,
// identity), checked against an in-memory model of the bytes.

import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { FileDevice } from '../../../node/devices/file-device'
import { DstError } from '../../../node/core/errors'
import { tempDir } from '../../helpers/node-process'
import { loadNativeFs } from '../../../node/devices/native'

const MiB = 1024 * 1024
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

const dirs: string[] = []
function dir (): string { const d = tempDir('dst-file-device-'); dirs.push(d); return d }
test.after.always(() => { for (const d of dirs) fs.rmSync(d, { recursive: true, force: true }) })

function prng (seed: number): (n: number) => number {
  let x = seed >>> 0
  return n => { x = (Math.imul(x, 1664525) + 1013904223) >>> 0; return Math.floor((x / 0x100000000) * n) }
}

test('a missing file is created sparse at the configured size, without a warning', async t => {
  const file = path.join(dir(), 'disk.img')
  const warnings: string[] = []
  const d = await FileDevice.open({ path: file, size: 256 * MiB, warn: m => warnings.push(m) })
  try {
    const st = fs.statSync(file)
    t.is(st.size, 256 * MiB)
    t.true(st.blocks * 512 < MiB, `allocated ${st.blocks * 512} bytes: the file is not sparse`)
    t.is(d.size, 256 * MiB)
    t.is(d.type, 'file')
    t.is(d.blockSize, 4096, 'file devices default to 4096-byte blocks')
    t.true(d.writable)
    t.true(d.canFlush)
    t.is(d.canTrim, loadNativeFs() !== null, 'a file trims (punches holes) when the native addon is built')
    t.deepEqual(warnings, [])
    const sparse = loadNativeFs() !== null
    t.deepEqual(d.status(), { type: 'file', size: 256 * MiB, blockSize: 4096, state: 'online', writable: true, path: file, holes: sparse, punch: sparse })
    const into = Buffer.alloc(4096, 0xff)
    await d.read(128 * MiB, 4096, into)
    t.true(into.equals(Buffer.alloc(4096)), 'holes read as zeros')
  } finally { await d.close() }
})

test('random writes and reads at random offsets match a Buffer model, and persist after close and reopen', async t => {
  const file = path.join(dir(), 'disk.img')
  const size = 2 * MiB
  const model = Buffer.alloc(size)
  const rand = prng(20240601)
  let d = await FileDevice.open({ path: file, size })
  try {
    for (let i = 0; i < 300; i++) {
      const offset = rand(size)
      const length = 1 + rand(Math.min(64 * 1024, size - offset))
      if (rand(3) === 0) {
        const into = Buffer.alloc(length)
        await d.read(offset, length, into)
        if (!into.equals(model.subarray(offset, offset + length))) { t.fail(`read ${offset}+${length} differs from the model`); return }
      } else {
        const data = Buffer.alloc(length)
        for (let j = 0; j < length; j++) data[j] = rand(256)
        await d.write(offset, data)
        data.copy(model, offset)
      }
    }
    // concurrent writes to disjoint ranges and reads in one batch
    const batch: Array<Promise<void>> = []
    for (let k = 0; k < 16; k++) {
      const data = Buffer.alloc(4096, k + 1)
      batch.push(d.write(k * 8192, data))
      data.copy(model, k * 8192)
    }
    await Promise.all(batch)
    const all = Buffer.alloc(size)
    await d.read(0, size, all)
    t.true(all.equals(model), 'whole device equals the model')
    await d.flush()
  } finally { await d.close() }

  t.true(fs.readFileSync(file).equals(model), 'the file on disk equals the model')
  d = await FileDevice.open({ path: file })
  try {
    t.is(d.size, size, 'an existing file opened without a size keeps its own size')
    const all = Buffer.alloc(size)
    await d.read(0, size, all)
    t.true(all.equals(model), 'data persisted across close and reopen')
  } finally { await d.close() }
})

test('flush resolves (fdatasync) and the written bytes are in the file', async t => {
  const file = path.join(dir(), 'disk.img')
  const d = await FileDevice.open({ path: file, size: MiB })
  try {
    await d.write(12345, Buffer.from('durable'))
    await t.notThrowsAsync(d.flush())
    const fd = fs.openSync(file, 'r')
    const b = Buffer.alloc(7)
    fs.readSync(fd, b, 0, 7, 12345)
    fs.closeSync(fd)
    t.is(b.toString(), 'durable')
  } finally { await d.close() }
})

test('a smaller existing file is grown sparse to the configured size, with a warning, keeping its data', async t => {
  const file = path.join(dir(), 'disk.img')
  const start = Buffer.alloc(4096, 0xab)
  fs.writeFileSync(file, start)
  const warnings: string[] = []
  const d = await FileDevice.open({ path: file, size: MiB, warn: m => warnings.push(m) })
  try {
    t.is(d.size, MiB)
    t.is(fs.statSync(file).size, MiB)
    t.is(warnings.length, 1)
    t.true(warnings[0].includes(file) && warnings[0].includes('4096') && warnings[0].includes(String(MiB)), warnings[0])
    const into = Buffer.alloc(8192)
    await d.read(0, 8192, into)
    t.true(into.subarray(0, 4096).equals(start))
    t.true(into.subarray(4096).equals(Buffer.alloc(4096)))
  } finally { await d.close() }
})

test('a larger existing file exposes only `size` bytes, with a warning, and is not truncated', async t => {
  const file = path.join(dir(), 'disk.img')
  const content = Buffer.alloc(8192)
  for (let i = 0; i < content.length; i++) content[i] = i & 0xff
  fs.writeFileSync(file, content)
  const warnings: string[] = []
  const d = await FileDevice.open({ path: file, size: 4096, warn: m => warnings.push(m) })
  try {
    t.is(d.size, 4096)
    t.is(warnings.length, 1)
    t.regex(warnings[0], /8192 bytes; only the first 4096 are used/)
    const into = Buffer.alloc(4096)
    await d.read(0, 4096, into)
    t.true(into.equals(content.subarray(0, 4096)))
    t.is((await t.throwsAsync(d.read(4096, 1, Buffer.alloc(1)), { instanceOf: DstError })).code, 'DST_ERR_EINVAL')
    t.is((await t.throwsAsync(d.write(4000, Buffer.alloc(200)), { instanceOf: DstError })).code, 'DST_ERR_EINVAL')
  } finally { await d.close() }
  t.true(fs.readFileSync(file).equals(content), 'the file keeps all its bytes')
})

test('a missing file without a size is an error, and nothing is created', async t => {
  const file = path.join(dir(), 'missing.img')
  const err = await t.throwsAsync(FileDevice.open({ path: file }), { instanceOf: DstError })
  t.is(err.code, 'DST_ERR_NOENT')
  t.true(err.message.includes(file))
  t.false(fs.existsSync(file))
})

test('a missing file in a missing folder is an error naming the path', async t => {
  const file = path.join(dir(), 'no-such-folder', 'disk.img')
  const err = await t.throwsAsync(FileDevice.open({ path: file, size: MiB }), { instanceOf: DstError })
  t.is(err.code, 'DST_ERR_ENOENT')
  t.true(err.message.includes(file))
})

test('a directory path is an error (read-write and read-only)', async t => {
  const d = dir()
  const rw = await t.throwsAsync(FileDevice.open({ path: d, size: MiB }), { instanceOf: DstError })
  t.is(rw.code, 'DST_ERR_EISDIR')
  t.true(rw.message.includes(d))
  const ro = await t.throwsAsync(FileDevice.open({ path: d, readOnly: true }), { instanceOf: DstError })
  t.is(ro.code, 'DST_ERR_NOTFILE')
  t.regex(ro.message, /neither a regular file nor a block device/)
})

test('an empty existing file without a size is an error', async t => {
  const file = path.join(dir(), 'empty.img')
  fs.writeFileSync(file, '')
  const err = await t.throwsAsync(FileDevice.open({ path: file }), { instanceOf: DstError })
  t.is(err.code, 'DST_ERR_SIZE')
})

test('a read-only device refuses writes with EROFS and leaves the file unchanged', async t => {
  const file = path.join(dir(), 'ro.img')
  const content = Buffer.alloc(8192, 0x42)
  fs.writeFileSync(file, content)
  const d = await FileDevice.open({ path: file, readOnly: true })
  try {
    t.false(d.writable)
    t.false(d.status().writable)
    t.true(d.canFlush)
    const err = await t.throwsAsync(d.write(0, Buffer.alloc(10)), { instanceOf: DstError })
    t.is(err.code, 'DST_ERR_EROFS')
    const into = Buffer.alloc(8192)
    await d.read(0, 8192, into)
    t.true(into.equals(content))
  } finally { await d.close() }
  t.true(fs.readFileSync(file).equals(content))
})

test('a read-only device is never created, and a too-small read-only file is not grown', async t => {
  const base = dir()
  const missing = path.join(base, 'missing.img')
  t.is((await t.throwsAsync(FileDevice.open({ path: missing, size: MiB, readOnly: true }), { instanceOf: DstError })).code, 'DST_ERR_NOENT')
  t.false(fs.existsSync(missing))
  const small = path.join(base, 'small.img')
  fs.writeFileSync(small, Buffer.alloc(4096))
  t.is((await t.throwsAsync(FileDevice.open({ path: small, size: MiB, readOnly: true }), { instanceOf: DstError })).code, 'DST_ERR_SIZE')
  t.is(fs.statSync(small).size, 4096)
})

test('identity is a UUID, stable across reopen, and different for a different file', async t => {
  const base = dir()
  const a = path.join(base, 'a.img')
  const b = path.join(base, 'b.img')
  const da = await FileDevice.open({ path: a, size: MiB })
  const id = da.identity
  await da.close()
  t.regex(id, UUID)
  const again = await FileDevice.open({ path: a })
  t.is(again.identity, id, 'same file, same identity')
  await again.close()
  const ro = await FileDevice.open({ path: a, readOnly: true })
  t.is(ro.identity, id, 'read-only open of the same file, same identity')
  await ro.close()
  const db = await FileDevice.open({ path: b, size: MiB })
  t.regex(db.identity, UUID)
  t.not(db.identity, id, 'a different file has a different identity')
  await db.close()
})

test('after close, requests reject with DST_ERR_CLOSED (the fd is not used again)', async t => {
  const file = path.join(dir(), 'disk.img')
  const d = await FileDevice.open({ path: file, size: MiB })
  await d.close()
  t.is(d.state, 'closed')
  t.is((await t.throwsAsync(d.read(0, 1, Buffer.alloc(1)), { instanceOf: DstError })).code, 'DST_ERR_CLOSED')
  t.is((await t.throwsAsync(d.write(0, Buffer.alloc(1)), { instanceOf: DstError })).code, 'DST_ERR_CLOSED')
  t.is((await t.throwsAsync(d.flush(), { instanceOf: DstError })).code, 'DST_ERR_CLOSED')
})

test('a read past a file truncated behind the device\'s back returns zeros', async t => {
  const file = path.join(dir(), 'disk.img')
  const d = await FileDevice.open({ path: file, size: 8192 })
  try {
    await d.write(0, Buffer.alloc(8192, 0x77))
    fs.truncateSync(file, 4096)
    const into = Buffer.alloc(8192, 0xff)
    await d.read(0, 8192, into)
    t.true(into.subarray(0, 4096).every(x => x === 0x77))
    t.true(into.subarray(4096).every(x => x === 0))
  } finally { await d.close() }
})
