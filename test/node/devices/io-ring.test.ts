// Tests for node/devices/io-ring.ts and its worker (node/devices/io-worker.js): positional I/O on shared-memory buffers served by
// worker threads over an Atomics ring. Data checked against a model; errors come back as DstErrors with errno names;
// a full ring makes callers wait (and past its waiters, an explicit error); close stops the workers and fails what
// is pending; a process that never closes still exits. Also the file device's use of it (pool buffers through the
// ring, any other buffer through fs).

import test from 'ava'
import { spawn } from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { IoRing } from '../../../node/devices/io-ring'
import { FileDevice } from '../../../node/devices/file-device'
import { BufferPool } from '../../../node/core/pool'
import { DstError } from '../../../node/core/errors'
import { tempDir } from '../../helpers/node-process'

const MiB = 1024 * 1024
const dirs: string[] = []
function dir (): string { const d = tempDir('dst-io-ring-'); dirs.push(d); return d }
test.after.always(() => { for (const d of dirs) fs.rmSync(d, { recursive: true, force: true }) })

function prng (seed: number): (n: number) => number {
  let x = seed >>> 0
  return n => { x = (Math.imul(x, 1664525) + 1013904223) >>> 0; return Math.floor((x / 0x100000000) * n) }
}

/** A file of `size` bytes with a recognisable pattern, and its bytes. */
function patternFile (size: number, seed = 1): { file: string, model: Buffer } {
  const model = Buffer.alloc(size)
  const rand = prng(seed)
  for (let i = 0; i < size; i += 4) model.writeUInt32LE(rand(0x100000000), i)
  const file = path.join(dir(), 'data.img')
  fs.writeFileSync(file, model)
  return { file, model }
}

test('reads and writes at random offsets land in place, in shared buffers at any offset, with 1 and 2 threads', async t => {
  for (const threads of [1, 2]) {
    const size = 4 * MiB
    const { file, model } = patternFile(size, threads)
    const fd = fs.openSync(file, 'r+')
    const ring = new IoRing({ name: 'test', threads, capacity: 16 })
    const memory = new SharedArrayBuffer(8 * 70000)
    const rand = prng(42 + threads)
    try {
      const ops: Array<Promise<void>> = []
      // Concurrent requests touch disjoint 64 KiB regions (8 lanes), so the model's order is the file's order.
      for (let lane = 0; lane < 8; lane++) {
        ops.push((async () => {
          const buf = new Uint8Array(memory, lane * 70000 + 3, 65536) // deliberately unaligned inside the memory
          for (let i = 0; i < 40; i++) {
            const region = (lane + 8 * rand(size / 65536 / 8)) * 65536
            const offset = region + rand(32768)
            const length = 1 + rand(65536 - (offset - region))
            if (rand(2) === 0) {
              await ring.read(fd, buf, offset, length)
              if (!Buffer.from(buf.buffer, buf.byteOffset, length).equals(model.subarray(offset, offset + length))) throw new Error(`read ${offset}+${length} differs`)
            } else {
              for (let j = 0; j < length; j++) buf[j] = rand(256)
              const data = buf.subarray(0, length)
              await ring.write(fd, data, offset)
              model.set(data, offset)
            }
          }
        })())
      }
      await Promise.all(ops)
      t.true(fs.readFileSync(file).equals(model), `${threads} thread(s): the file matches the model`)
      t.is(ring.inFlight, 0)
    } finally {
      await ring.close()
      fs.closeSync(fd)
    }
  }
})

test('a read past the end of the file fills the rest with zeros', async t => {
  const { file, model } = patternFile(10000)
  const fd = fs.openSync(file, 'r')
  const ring = new IoRing({ name: 'test' })
  try {
    const buf = new Uint8Array(new SharedArrayBuffer(8192)).fill(0xee)
    await ring.read(fd, buf, 8192)
    t.true(Buffer.from(buf.subarray(0, 10000 - 8192)).equals(model.subarray(8192)))
    t.true(buf.subarray(10000 - 8192).every(b => b === 0))
  } finally { await ring.close(); fs.closeSync(fd) }
})

test('errors come back as DstErrors named after the errno: EBADF (no such fd, write on a read-only fd), EISDIR', async t => {
  const { file } = patternFile(65536)
  const ring = new IoRing({ name: 'errors' })
  const buf = new Uint8Array(new SharedArrayBuffer(4096))
  const readOnly = fs.openSync(file, 'r')
  const closed = 1 << 20 // above any fd this process has open (a just-closed fd number could be reused)
  const folder = fs.openSync(dir(), 'r')
  try {
    const e1 = await t.throwsAsync(ring.write(readOnly, buf, 0), { instanceOf: DstError })
    t.is(e1?.code, 'DST_ERR_EBADF')
    t.regex(e1?.message ?? '', /'errors': write of 4096 bytes at 0 failed: EBADF/)
    const e2 = await t.throwsAsync(ring.read(closed, buf, 4096), { instanceOf: DstError })
    t.is(e2?.code, 'DST_ERR_EBADF')
    t.is((e2 as DstError).errno, 5, 'errnos without a wire number travel as EIO')
    const e3 = await t.throwsAsync(ring.read(folder, buf, 0), { instanceOf: DstError })
    t.is(e3?.code, 'DST_ERR_EISDIR')
    // The ring keeps serving after errors.
    await ring.read(readOnly, buf, 0)
    t.true(Buffer.from(buf).equals(fs.readFileSync(file).subarray(0, 4096)))
  } finally { await ring.close(); fs.closeSync(readOnly); fs.closeSync(folder) }
})

test('only shared memory is accepted; a ring that is closed accepts nothing and rejects with DST_ERR_CLOSED', async t => {
  const { file } = patternFile(8192)
  const fd = fs.openSync(file, 'r')
  const ring = new IoRing({ name: 'test' })
  const shared = new Uint8Array(new SharedArrayBuffer(4096))
  t.false(ring.accepts(Buffer.alloc(4096)))
  t.false(ring.accepts(new Uint8Array(4096)))
  t.true(ring.accepts(shared))
  t.true(ring.accepts(new BufferPool({ count: 1, size: 4096, headroom: 32 }).tryAcquire()?.data as Buffer))
  await ring.close()
  fs.closeSync(fd)
  t.false(ring.usable)
  t.false(ring.accepts(shared))
  t.is(ring.threadsRunning, 0, 'the worker exited')
  const err = await t.throwsAsync(ring.read(fd, shared, 0), { instanceOf: DstError })
  t.is(err?.code, 'DST_ERR_CLOSED')
})

test('a full ring makes callers wait in order, and every request still lands', async t => {
  const size = 2 * MiB
  const { file, model } = patternFile(size, 7)
  const fd = fs.openSync(file, 'r')
  const ring = new IoRing({ name: 'test', capacity: 2 })
  const memory = new SharedArrayBuffer(50 * 4096)
  try {
    const reads = Array.from({ length: 50 }, (_, i) => ring.read(fd, new Uint8Array(memory, i * 4096, 4096), i * 40960))
    // 50 submitted in one tick into 2 entries: at least 48 had to wait.
    t.true(ring.waiting >= 40, `${ring.waiting} waiting`)
    await Promise.all(reads)
    t.true(ring.waits >= 48, `${ring.waits} waits counted`)
    for (let i = 0; i < 50; i++) {
      if (!Buffer.from(memory, i * 4096, 4096).equals(model.subarray(i * 40960, i * 40960 + 4096))) { t.fail(`read ${i} differs`); return }
    }
    t.is(ring.inFlight, 0)
    t.is(ring.waiting, 0)
  } finally { await ring.close(); fs.closeSync(fd) }
})

test('past the waiters\' limit a request is refused with DST_ERR_IO_BUSY, not dropped', async t => {
  const size = 64 * MiB
  const { file, model } = patternFile(size, 3)
  const fd = fs.openSync(file, 'r')
  const ring = new IoRing({ name: 'test', capacity: 2, maxWaiters: 3 })
  const memory = new SharedArrayBuffer(10 * 4 * MiB)
  try {
    // Large reads, submitted in one tick: none can complete before the last is submitted, so 2 run, 3 wait, 5 fail.
    const results = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => ring.read(fd, new Uint8Array(memory, i * 4 * MiB, 4 * MiB), i * 4 * MiB)))
    const busy = results.filter(r => r.status === 'rejected')
    t.true(busy.length >= 1, 'some requests were refused')
    for (const r of busy) t.is(((r as PromiseRejectedResult).reason as DstError).code, 'DST_ERR_IO_BUSY')
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') t.true(Buffer.from(memory, i * 4 * MiB, 4 * MiB).equals(model.subarray(i * 4 * MiB, (i + 1) * 4 * MiB)), `read ${i} is right`)
    })
  } finally { await ring.close(); fs.closeSync(fd) }
})

test('close stops the workers; requests still pending fail with DST_ERR_CLOSED, completed ones are right', async t => {
  const size = 64 * MiB
  const { file, model } = patternFile(size, 5)
  const fd = fs.openSync(file, 'r')
  const ring = new IoRing({ name: 'test', capacity: 4, threads: 2 })
  const memory = new SharedArrayBuffer(16 * 4 * MiB)
  const reads = Array.from({ length: 16 }, (_, i) => ring.read(fd, new Uint8Array(memory, i * 4 * MiB, 4 * MiB), i * 4 * MiB))
  // Closed in the same tick: at most 4 are in the ring, the 12 waiting cannot have been submitted.
  await ring.close()
  t.is(ring.threadsRunning, 0)
  const results = await Promise.allSettled(reads)
  const failed = results.filter(r => r.status === 'rejected')
  t.true(failed.length >= 12, `${failed.length} failed`)
  for (const r of failed) t.is(((r as PromiseRejectedResult).reason as DstError).code, 'DST_ERR_CLOSED')
  results.forEach((r, i) => {
    if (r.status === 'fulfilled') t.true(Buffer.from(memory, i * 4 * MiB, 4 * MiB).equals(model.subarray(i * 4 * MiB, (i + 1) * 4 * MiB)))
  })
  fs.closeSync(fd)
})

test('a process that used a ring and never closed it still exits (idle workers do not hold the event loop)', async t => {
  const { file } = patternFile(65536)
  const script = `
    const { IoRing } = require(${JSON.stringify(path.join(__dirname, '..', '..', '..', 'node', 'devices', 'io-ring.ts'))})
    const fs = require('node:fs')
    const ring = new IoRing({ name: 'leak' })
    const buf = new Uint8Array(new SharedArrayBuffer(4096))
    ring.read(fs.openSync(${JSON.stringify(file)}, 'r'), buf, 0).then(() => console.log('read', buf[0] + buf[1] > 0 || buf.some(b => b > 0)))
  `
  const proc = spawn(process.execPath, ['-r', 'ts-node/register/transpile-only', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  proc.stdout.on('data', (c: Buffer) => { out += c.toString() })
  proc.stderr.on('data', (c: Buffer) => { out += c.toString() })
  const killer = setTimeout(() => proc.kill('SIGKILL'), 60000)
  const code = await new Promise<number | null>(resolve => proc.on('exit', c => resolve(c)))
  clearTimeout(killer)
  t.is(code, 0, out)
  t.is(out.trim(), 'read true')
})

test('file device: pool buffers go through the I/O ring, other buffers through fs; both see the same bytes', async t => {
  const size = 4 * MiB
  const file = path.join(dir(), 'disk.img')
  const d = await FileDevice.open({ path: file, size, ioThreads: 1 })
  const pool = new BufferPool({ count: 4, size: 65536, headroom: 32 })
  const model = Buffer.alloc(size)
  const rand = prng(99)
  try {
    for (let i = 0; i < 200; i++) {
      const offset = rand(size - 65536)
      const length = 1 + rand(65536)
      const pooled = rand(2) === 0
      const slot = pooled ? pool.tryAcquire() : null
      const buf = slot !== null ? slot.data : Buffer.alloc(65536)
      if (rand(2) === 0) {
        await d.read(offset, length, buf)
        if (!buf.subarray(0, length).equals(model.subarray(offset, offset + length))) { t.fail(`read ${offset}+${length} (${pooled ? 'pool' : 'plain'}) differs`); return }
      } else {
        for (let j = 0; j < length; j++) buf[j] = rand(256)
        await d.write(offset, buf.subarray(0, length))
        buf.copy(model, offset, 0, length)
      }
      if (slot !== null) pool.release(slot)
    }
    const ring = d.ioRing
    t.not(ring, null, 'a pool buffer started the ring')
    t.is(ring?.threadsRunning, 1)
    await d.close()
    t.is(ring?.threadsRunning, 0, 'closing the device stopped its worker')
    t.true(fs.readFileSync(file).equals(model))
  } finally { await d.close() }
})

test('file device: without pool buffers no worker starts; ioThreads 0 keeps even pool buffers on fs', async t => {
  const file = path.join(dir(), 'disk.img')
  const pool = new BufferPool({ count: 1, size: 4096 })
  for (const ioThreads of [undefined, 0]) {
    const d = await FileDevice.open({ path: file, size: MiB, ioThreads })
    try {
      await d.write(0, Buffer.alloc(4096, 1))
      t.is(d.ioRing, null)
      if (ioThreads === 0) {
        const slot = pool.tryAcquire() as NonNullable<ReturnType<BufferPool['tryAcquire']>>
        await d.read(0, 4096, slot.data)
        t.true(slot.data.every(b => b === 1))
        t.is(d.ioRing, null)
        pool.release(slot)
      }
    } finally { await d.close() }
  }
})

test('file device: an I/O error through the ring is a DstError naming the file', async t => {
  const file = path.join(dir(), 'disk.img')
  const d = await FileDevice.open({ path: file, size: MiB })
  const pool = new BufferPool({ count: 1, size: 4096 })
  const slot = pool.tryAcquire() as NonNullable<ReturnType<BufferPool['tryAcquire']>>
  try {
    await d.read(0, 4096, slot.data)
    // Close the fd behind the device's back: the worker's pread gets EBADF.
    fs.closeSync((d as unknown as { fd: number }).fd)
    const err = await t.throwsAsync(d.read(0, 4096, slot.data), { instanceOf: DstError })
    t.is(err?.code, 'DST_ERR_EBADF')
    t.true(err?.message.includes(`file device '${file}'`), err?.message)
  } finally {
    await d.close().catch(() => {}) // the fd is already closed: close reports EBADF
  }
})
