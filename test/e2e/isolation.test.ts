// Isolation between clients (issue 12): one client that never reads its replies must not stall the others, nor make
// the node hold more than a bounded amount of memory for it. Real node processes on loopback; the hostile clients are
// raw sockets (NBD) and a raw WebSocket (native) whose sockets are paused, so they never read a byte.

import test from 'ava'
import * as fs from 'node:fs'
import { randomBytes } from 'node:crypto'
import { startNode, tempDir, type RunningNode } from '../helpers/node-process'
import { NBD_CMD, NbdTestClient, nbdOption, nbdRequest, neverReading, quantile } from '../helpers/raw-nbd'
import { RawClient, frame } from '../helpers/raw-client'
import { Op } from '../../export/native/codec'
import { until } from '../helpers/wait'

const KiB = 1024
const MiB = 1024 * KiB
const SIZE = 64 * MiB

async function nodeWithNbd (t: { teardown: (fn: () => unknown) => void }, extra: Record<string, unknown> = {}): Promise<{ node: RunningNode, nbdPort: number }> {
  const dir = tempDir('dst-isolation-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const node = await startNode(dir, { name: 'iso', nbd: '127.0.0.1:0', devices: { disk: { type: 'file', path: './disk.img', size: SIZE } }, exports: [{ device: 'disk' }], ...extra })
  t.teardown(() => node.kill())
  const port = /nbd {5}nbd:\/\/127\.0\.0\.1:(\d+)\//.exec(node.output())?.[1]
  if (port === undefined) throw new Error(`no NBD address printed:\n${node.output()}`)
  return { node, nbdPort: Number(port) }
}

async function memory (node: RunningNode, kind = 'rss'): Promise<number> {
  const text = await (await fetch(`${node.http}/metrics`)).text()
  const m = new RegExp(`^dst_memory_bytes\\{[^}]*kind="${kind}"\\} (\\d+)`, 'm').exec(text)
  if (m === null) throw new Error(`no dst_memory_bytes ${kind} in /metrics`)
  return Number(m[1])
}

/** `count` 4 KiB READs at random offsets, `depth` at a time; every one must succeed. Returns each one's latency. */
async function normalReads (c: NbdTestClient, count: number, depth: number): Promise<number[]> {
  const latencies: number[] = []
  let issued = 0
  const worker = async (): Promise<void> => {
    while (issued < count) {
      issued++
      const r = await c.request(NBD_CMD.READ, Math.floor(Math.random() * (SIZE / 4096)) * 4096, 4096)
      if (r.errno !== 0) throw new Error(`a normal READ got errno ${r.errno}`)
      latencies.push(r.ms)
    }
  }
  await Promise.all(Array.from({ length: depth }, worker))
  return latencies
}

test('NBD: a client that sends 200 1 MiB READs and never reads does not stall a second client; its 4 KiB reads keep a p99 under 1 s', async t => {
  const { node, nbdPort } = await nodeWithNbd(t)
  const hostile = neverReading(nbdPort, Buffer.concat(Array.from({ length: 200 }, (_, i) => nbdRequest(NBD_CMD.READ, i + 1, (i % 64) * MiB, MiB))))
  t.teardown(() => hostile.destroy())
  // It has taken what it may of the pool before the second client comes.
  await until('the hostile client to hold pool buffers', async () => (await node.status()).pool.free <= 16, 10000)
  const c = await NbdTestClient.connect(nbdPort, 'disk')
  t.teardown(() => c.close())
  const data = randomBytes(64 * KiB)
  t.is((await c.request(NBD_CMD.WRITE, 5 * MiB, data.length, data)).errno, 0)
  const back = await c.request(NBD_CMD.READ, 5 * MiB, data.length)
  t.true(back.data.equals(data), 'the second client reads back what it wrote')
  const latencies = await normalReads(c, 400, 4)
  const p99 = quantile(latencies, 0.99)
  t.log(`4 KiB reads beside a never-reading client: p50 ${quantile(latencies, 0.5)} ms, p99 ${p99} ms, max ${Math.max(...latencies)} ms; pool free ${(await node.status()).pool.free}`)
  t.true(p99 < 1000, `p99 ${p99} ms`)
  t.false(hostile.destroyed)
})

test('native: a raw WebSocket client that never reads 1 MiB READ replies does not stall a second client; one that keeps sending past maxInFlight is closed', async t => {
  const { node } = await nodeWithNbd(t)
  const hostile = await RawClient.connect(node.port, 'disk')
  t.teardown(() => hostile.terminate())
  ;(hostile.ws as unknown as { _socket: { pause: () => void } })._socket.pause()
  hostile.send(Buffer.concat(Array.from({ length: 200 }, (_, i) => frame(Op.READ, i + 1, (i % 64) * MiB, MiB))))
  await until('the hostile client to hold pool buffers', async () => (await node.status()).pool.free <= 16, 10000)
  const c = await RawClient.connect(node.port, 'disk')
  t.teardown(() => c.terminate())
  const data = randomBytes(64 * KiB)
  t.is((await c.call(Op.WRITE, 1, 5 * MiB, data.length, data)).errno, 0)
  t.true((await c.call(Op.READ, 2, 5 * MiB, data.length)).payload.equals(data), 'the second client reads back what it wrote')
  const latencies: number[] = []
  for (let i = 0; i < 300; i++) {
    const started = Date.now()
    const r = await c.call(Op.READ, 100 + i, Math.floor(Math.random() * (SIZE / 4096)) * 4096, 4096)
    t.is(r.errno, 0)
    latencies.push(Date.now() - started)
  }
  const p99 = quantile(latencies, 0.99)
  t.log(`4 KiB reads beside a never-reading native client: p50 ${quantile(latencies, 0.5)} ms, p99 ${p99} ms`)
  t.true(p99 < 1000, `p99 ${p99} ms`)
  // The hostile one goes on sending while its replies wait: it is answered EAGAIN (held for it too), then closed.
  for (let i = 0; i < 4; i++) hostile.send(Buffer.concat(Array.from({ length: 100 }, (_, j) => frame(Op.READ, 1000 + 100 * i + j, 0, 4096))))
  await until('the node to close the client that sends past maxInFlight without reading', () => /closing 127\.0\.0\.1's connection to 'disk': client sent past maxInFlight \(128\) while not reading its replies/.test(node.output()), 10000)
  await until('the closed client\'s pool buffers to come back', async () => (await node.status()).pool.free === 64, 10000)
  t.is((await c.call(Op.READ, 9999, 5 * MiB, data.length)).payload.equals(data), true, 'and the second client is still served')
})

test('NBD: up to a million small requests in 4 s from a client that never reads leave the node\'s RSS within 200 MiB of where it was; the node serves others after', async t => {
  const { node, nbdPort } = await nodeWithNbd(t)
  const before = await memory(node)
  // 4 KiB READs, FLUSHes and out-of-range READs (error replies), as one stream, written as fast as the node takes it.
  const kinds = [nbdRequest(NBD_CMD.READ, 0, 8192, 4096), nbdRequest(NBD_CMD.FLUSH, 0, 0, 0), nbdRequest(NBD_CMD.READ, 0, SIZE, 4096)]
  const chunk = Buffer.concat(Array.from({ length: 3000 }, (_, i) => { const r = Buffer.from(kinds[i % 3]); r.writeUInt32BE(i + 1, 12); return r }))
  const hostile = neverReading(nbdPort, Buffer.alloc(0))
  t.teardown(() => hostile.destroy())
  let sent = 0
  const deadline = Date.now() + 4000
  while (sent < 1_000_000 && Date.now() < deadline) {
    sent += 3000
    if (!hostile.write(chunk)) {
      await new Promise<void>(resolve => {
        const done = (): void => { clearTimeout(timer); hostile.off('drain', done); resolve() }
        const timer = setTimeout(done, 200)
        hostile.on('drain', done)
      })
    }
  }
  hostile.write(Buffer.alloc(48 * MiB, chunk.subarray(0, 28)))
  await new Promise(resolve => setTimeout(resolve, 500))
  const accepted = sent * 28 + 48 * MiB - hostile.writableLength
  const after = await memory(node)
  t.log(`sent ${sent} requests (${(accepted / MiB).toFixed(1)} MiB taken by the node's socket); RSS ${(before / MiB).toFixed(0)} -> ${(after / MiB).toFixed(0)} MiB`)
  t.true(after - before < 200 * MiB, `RSS grew ${((after - before) / MiB).toFixed(0)} MiB`)
  t.true(hostile.writableLength > 0, 'the node stopped reading (our own socket holds what it would not take)')
  const c = await NbdTestClient.connect(nbdPort, 'disk')
  t.teardown(() => c.close())
  const latencies = await normalReads(c, 100, 2)
  t.true(quantile(latencies, 0.99) < 1000)
})

// Serial: ava runs it before the others, so that no other test's node is started while DST_STALL_TIMEOUT is set.
test.serial('NBD: a client that leaves its replies unread for the stall timeout is closed with a log line, and its buffers come back', async t => {
  const previous = process.env.DST_STALL_TIMEOUT
  process.env.DST_STALL_TIMEOUT = '1500'
  let started: { node: RunningNode, nbdPort: number }
  try { started = await nodeWithNbd(t) } finally { if (previous === undefined) delete process.env.DST_STALL_TIMEOUT; else process.env.DST_STALL_TIMEOUT = previous }
  const { node, nbdPort } = started
  const hostile = neverReading(nbdPort, Buffer.concat(Array.from({ length: 100 }, (_, i) => nbdRequest(NBD_CMD.READ, i + 1, i * MiB % SIZE, MiB))))
  t.teardown(() => hostile.destroy())
  await until('the hostile client to hold pool buffers', async () => (await node.status()).pool.free < 64, 10000)
  await until('the node to close it', () => /nbd: 127\.0\.0\.1: client took no reply for 1500 ms/.test(node.output()), 10000).catch(err => { throw new Error(`${(err as Error).message}; node output:\n${node.output()}`) })
  await until('its pool buffers to come back', async () => (await node.status()).pool.free === 64, 10000)
  const text = await (await fetch(`${node.http}/metrics`)).text()
  t.regex(text, /dst_connections_stalled_total\{node="iso",export="disk"\} 1/)
})

test('NBD option phase: a client that floods options and never reads the replies is stopped being read; RSS stays within 100 MiB', async t => {
  const { node, nbdPort } = await nodeWithNbd(t)
  const before = await memory(node)
  // LIST (a reply per export and an ACK for 16 bytes), INFO asking for NAME a thousand times, and unknown options.
  const info = Buffer.alloc(4 + 4 + 2 + 2000)
  info.writeUInt32BE(4, 0)
  info.write('disk', 4)
  info.writeUInt16BE(1000, 8)
  for (let i = 0; i < 1000; i++) info.writeUInt16BE(1, 10 + 2 * i)
  const chunk = Buffer.concat(Array.from({ length: 300 }, (_, i) => i % 3 === 0 ? nbdOption(3) : i % 3 === 1 ? nbdOption(6, info) : nbdOption(0x4242)))
  const hostile = neverReading(nbdPort, Buffer.from([0, 0, 0, 3]), true)
  t.teardown(() => hostile.destroy())
  const deadline = Date.now() + 3000
  let sent = 0
  while (Date.now() < deadline) {
    sent += 300
    if (!hostile.write(chunk)) {
      await new Promise<void>(resolve => {
        const done = (): void => { clearTimeout(timer); hostile.off('drain', done); resolve() }
        const timer = setTimeout(done, 200)
        hostile.on('drain', done)
      })
    }
  }
  // More than the kernel's buffers on both ends can hold: if the node still reads, it takes it; if not, it stays ours.
  hostile.write(Buffer.alloc(48 * MiB, chunk.subarray(0, 16)))
  await new Promise(resolve => setTimeout(resolve, 500))
  const after = await memory(node)
  t.log(`${sent} options sent; RSS ${(before / MiB).toFixed(0)} -> ${(after / MiB).toFixed(0)} MiB`)
  t.true(after - before < 100 * MiB, `RSS grew ${((after - before) / MiB).toFixed(0)} MiB`)
  t.true(hostile.writableLength > 0, 'the node stopped reading options')
  const c = await NbdTestClient.connect(nbdPort, 'disk')
  t.teardown(() => c.close())
  t.is((await c.request(NBD_CMD.READ, 0, 4096)).errno, 0)
})
