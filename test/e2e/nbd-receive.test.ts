// The NBD server's receive path (export/nbd/server.ts): socket reads land in the session's own buffer or, for the bulk of a
// large WRITE, straight in its pool buffer; when the pool is empty the connection pauses. A raw client sends batches
// of mixed requests cut into pieces of random sizes (1 byte to 300 KiB), to a node whose pool has only 2 buffers, and
// checks every reply's handle and error, and the data read back, against a model.

import test from 'ava'
import * as fs from 'node:fs'
import * as net from 'node:net'
import { startNode, tempDir } from '../helpers/node-process'

const MiB = 1024 * 1024
const SIZE = 16 * MiB

function prng (seed: number): (n: number) => number {
  let x = seed >>> 0
  return n => { x = (Math.imul(x, 1664525) + 1013904223) >>> 0; return Math.floor((x / 0x100000000) * n) }
}

/** A minimal NBD client: newstyle handshake (EXPORT_NAME, no zeroes), then raw requests and parsed simple replies. */
class RawNbd {
  private readonly socket: net.Socket
  private buf = Buffer.alloc(0)
  private handshaken = false
  private readonly readLengths = new Map<bigint, number>()
  readonly replies = new Map<bigint, { errno: number, data: Buffer }>()
  private waiter: (() => void) | null = null
  closed = false

  constructor (port: number, name: string) {
    this.socket = net.connect(port, '127.0.0.1')
    this.socket.on('data', c => { this.buf = Buffer.concat([this.buf, c]); this.parse() })
    this.socket.on('close', () => { this.closed = true; this.wake() })
    this.socket.on('error', () => {})
    const opt = Buffer.alloc(16 + name.length)
    Buffer.from('IHAVEOPT').copy(opt, 0)
    opt.writeUInt32BE(1, 8)
    opt.writeUInt32BE(name.length, 12)
    opt.write(name, 16)
    this.socket.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), opt]))
  }

  private wake (): void { const w = this.waiter; this.waiter = null; w?.() }

  private parse (): void {
    if (!this.handshaken) {
      if (this.buf.length < 18 + 10) return
      this.buf = this.buf.subarray(28)
      this.handshaken = true
    }
    for (;;) {
      if (this.buf.length < 16) break
      const handle = this.buf.readBigUInt64BE(8)
      const errno = this.buf.readUInt32BE(4)
      const length = errno === 0 ? this.readLengths.get(handle) ?? 0 : 0
      if (this.buf.length < 16 + length) break
      if (this.buf.readUInt32BE(0) !== 0x67446698) throw new Error('bad reply magic')
      this.replies.set(handle, { errno, data: Buffer.from(this.buf.subarray(16, 16 + length)) })
      this.buf = this.buf.subarray(16 + length)
    }
    this.wake()
  }

  static request (type: number, handle: bigint, offset: number, length: number): Buffer {
    const h = Buffer.alloc(28)
    h.writeUInt32BE(0x25609513, 0)
    h.writeUInt16BE(0, 4)
    h.writeUInt16BE(type, 6)
    h.writeBigUInt64BE(handle, 8)
    h.writeBigUInt64BE(BigInt(offset), 16)
    h.writeUInt32BE(length, 24)
    return h
  }

  expectRead (handle: bigint, length: number): void { this.readLengths.set(handle, length) }

  /** Sends `bytes` cut into pieces of random sizes, each its own socket write, some after a pause. */
  async sendInPieces (bytes: Buffer, rand: (n: number) => number): Promise<void> {
    let at = 0
    while (at < bytes.length) {
      const n = Math.min(bytes.length - at, rand(4) === 0 ? 1 + rand(40) : 1 + rand(300 * 1024))
      const piece = bytes.subarray(at, at + n)
      at += n
      if (!this.socket.write(piece)) await new Promise(resolve => this.socket.once('drain', resolve))
      if (rand(8) === 0) await new Promise(resolve => setImmediate(resolve))
    }
  }

  async waitFor (count: number): Promise<void> {
    for (let i = 0; i < 100000 && this.replies.size < count && !this.closed; i++) await new Promise<void>(resolve => { this.waiter = resolve })
  }

  end (): void { this.socket.destroy() }
}

test('mixed requests cut at random points, through a 2-buffer pool: right handles, right data, the connection paused', async t => {
  const dir = tempDir('dst-nbd-rx-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const node = await startNode(dir, {
    name: 'rx', nbd: '127.0.0.1:0', dataDir: './state', pool: { count: 2, size: '1MiB' },
    devices: { disk: { type: 'file', path: './disk.img', size: SIZE } }, exports: [{ device: 'disk' }],
  })
  t.teardown(() => node.kill())
  const port = Number(/nbd {5}nbd:\/\/127\.0\.0\.1:(\d+)\//.exec(node.output())?.[1])
  const client = new RawNbd(port, 'disk')
  t.teardown(() => client.end())
  const rand = prng(314159)
  const model = Buffer.alloc(SIZE)
  let handle = 0xfedcba9876543210n // high bits set: the handle must come back bit for bit
  let expected = 0
  for (let round = 0; round < 6; round++) {
    // Writes to disjoint 1 MiB regions (replies come in any order), sizes from 1 byte to 1 MiB.
    const parts: Buffer[] = []
    const writes: bigint[] = []
    const regions = new Set<number>()
    for (let i = 0; i < 10; i++) {
      const region = rand(SIZE / MiB)
      if (regions.has(region)) continue
      regions.add(region)
      const length = [1, 4096, 20000, 65536, 300000, MiB][rand(6)]
      const offset = region * MiB + rand(MiB - length + 1)
      const data = Buffer.alloc(length)
      for (let j = 0; j < length; j += 4096) data[j] = rand(256)
      data[length - 1] = rand(256)
      data.copy(model, offset)
      handle++
      writes.push(handle)
      parts.push(RawNbd.request(1, handle, offset, length), data)
    }
    // A read of every written region, and an out-of-range read (EINVAL) whose handle must come back too.
    const reads: Array<{ handle: bigint, offset: number, length: number }> = []
    await client.sendInPieces(Buffer.concat(parts), rand)
    expected += writes.length
    await client.waitFor(expected)
    for (const region of regions) {
      handle++
      reads.push({ handle, offset: region * MiB, length: MiB })
      client.expectRead(handle, MiB)
    }
    handle++
    const badRead = handle
    const readParts = reads.map(r => RawNbd.request(0, r.handle, r.offset, r.length))
    readParts.push(RawNbd.request(0, badRead, SIZE - 4096, 8192))
    await client.sendInPieces(Buffer.concat(readParts), rand)
    expected += reads.length + 1
    await client.waitFor(expected)
    t.false(client.closed, `round ${round}: the server kept the connection`)
    if (client.closed) return
    for (const w of writes) t.is(client.replies.get(w)?.errno, 0, `round ${round}: write ${w.toString(16)} answered without error`)
    t.is(client.replies.get(badRead)?.errno, 22, 'a read past the end is EINVAL')
    for (const r of reads) {
      const got = client.replies.get(r.handle)
      if (got === undefined || !got.data.equals(model.subarray(r.offset, r.offset + r.length))) { t.fail(`round ${round}: read of region at ${r.offset} differs`); return }
    }
  }
  const metrics = await (await fetch(`${node.http}/metrics`)).text()
  const paused = Number(/dst_pool_exhausted_total\{[^}]*\} (\d+)/.exec(metrics)?.[1] ?? -1)
  t.true(paused > 0, `the connection had to wait for pool buffers (${paused} times)`)
})
