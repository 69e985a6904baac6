// SocketReader (export/native/socket-reader.ts): a client socket whose reads land in buffers we choose. Before attach the
// bytes arrive as ordinary 'data' chunks; once attached, reads inside a large payload land straight in its destination
// and the rest in the reader's own buffer; after detach nothing more is written into a destination. Then the whole
// receive path through a real node: many concurrent reads of mixed sizes are byte-exact and large replies arrive
// without a copy.

import test from 'ava'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as path from 'node:path'
import { DIRECT_MIN, SocketReader } from '../../../export/native/socket-reader'
import { Connection } from '../../../export/native/client'
import { Op } from '../../../export/native/codec'
import { startNode, tempDir } from '../../helpers/node-process'
import { between, newSeed, prng, seededBytes } from '../../helpers/random'
import { until } from '../../helpers/wait'

const KiB = 1024
const MiB = 1024 * KiB

/** A loopback pair: `server` is the accepted side, `client` reads through `reader`. */
async function pair (reader: SocketReader): Promise<{ server: net.Socket, client: net.Socket, close: () => void }> {
  const srv = net.createServer()
  await new Promise<void>(resolve => srv.listen(0, '127.0.0.1', resolve))
  const port = (srv.address() as net.AddressInfo).port
  const accepted = new Promise<net.Socket>(resolve => srv.once('connection', resolve))
  const client = net.connect({ host: '127.0.0.1', port, onread: reader.onread } as net.NetConnectOpts)
  reader.socket = client
  const server = await accepted
  await new Promise<void>(resolve => { if (client.connecting) client.once('connect', () => resolve()); else resolve() })
  return { server, client, close: () => { client.destroy(); server.destroy(); srv.close() } }
}

test('before attach, bytes arrive as ordinary data chunks', async t => {
  const reader = new SocketReader()
  const { server, client, close } = await pair(reader)
  t.teardown(close)
  const got: Buffer[] = []
  client.on('data', (chunk: Buffer) => got.push(Buffer.from(chunk)))
  const sent = seededBytes(prng(newSeed()), 200 * KiB)
  server.write(sent)
  await until('all bytes', () => got.reduce((n, b) => n + b.length, 0) >= sent.length, 5000, 5)
  t.true(reader.installed)
  t.true(Buffer.concat(got).equals(sent))
  t.is(reader.directReads, 0)
})

test('attached: a large payload lands straight in its destination, the rest in the own buffer; detach stops both', async t => {
  const reader = new SocketReader()
  const { server, client, close } = await pair(reader)
  t.teardown(close)
  client.on('data', () => t.fail('no data events once attached'))
  // The stream: a 16-byte "header" (to the own buffer), then a 300 KiB payload wanted in `dest`, then a 16-byte tail.
  const payload = seededBytes(prng(newSeed()), 300 * KiB)
  const dest = Buffer.alloc(payload.length)
  let fill = 0
  let headerBytes = 0
  let tail = Buffer.alloc(0)
  reader.attach({
    room: () => headerBytes === 16 && fill < dest.length ? dest.subarray(fill) : null,
    direct: n => { fill += n },
    chunk: buf => {
      let pos = 0
      if (headerBytes < 16) { const n = Math.min(16 - headerBytes, buf.length); headerBytes += n; pos += n }
      const n = Math.min(dest.length - fill, buf.length - pos)
      buf.copy(dest, fill, pos, pos + n)
      fill += n
      pos += n
      tail = Buffer.concat([tail, buf.subarray(pos)])
    },
  })
  server.write(Buffer.alloc(16, 0xee))
  // Let the header be read alone, so the payload is read with a destination in place.
  await until('header', () => headerBytes === 16, 5000, 5)
  server.write(payload)
  server.write(Buffer.alloc(16, 0xdd))
  await until('payload and tail', () => tail.length === 16, 5000, 5)
  t.true(dest.equals(payload))
  t.true(reader.directReads > 0)
  t.true(reader.directBytes >= payload.length - 64 * KiB, `${reader.directBytes} of ${payload.length} bytes read in place`)
  t.true(tail.equals(Buffer.alloc(16, 0xdd)))

  // Detach while a destination is handed out: later bytes go nowhere near it.
  const dest2 = Buffer.alloc(128 * KiB)
  let chunks = 0
  reader.attach({ room: () => dest2, direct: () => t.fail('no direct read after detach'), chunk: () => { chunks++ } })
  server.write(Buffer.alloc(1)) // a read, so that dest2 is what libuv holds next
  await until('a read', () => chunks === 1, 5000, 5)
  reader.detach()
  server.write(Buffer.alloc(DIRECT_MIN * 2, 0x77))
  await new Promise(resolve => setTimeout(resolve, 200))
  t.is(dest2.indexOf(0x77), -1, 'nothing written into the destination after detach')
})

test('through a node: concurrent reads of mixed sizes are byte-exact, and large replies are not copied', async t => {
  const seed = newSeed()
  const rand = prng(seed)
  const dir = tempDir('dst-reader-')
  const file = path.join(dir, 'disk.img')
  const size = 8 * MiB
  const data = seededBytes(rand, size)
  fs.writeFileSync(file, data)
  const node = await startNode(dir, {
    name: 'rd',
    pool: { count: 16, size: '1MiB' },
    devices: { disk: { type: 'file', path: file, blockSize: 512 } },
    exports: [{ device: 'disk' }],
  })
  t.teardown(() => node.kill())
  const conn = await Connection.connect({ host: '127.0.0.1', port: node.port, export: 'disk' }, { queueDepth: 8 })
  t.teardown(() => conn.close())
  const sizes = [512, 4 * KiB, 31 * KiB, DIRECT_MIN + 512, 200 * KiB, MiB]
  const reads: Array<Promise<void>> = []
  let bad = ''
  for (let i = 0; i < 200; i++) {
    const length = sizes[between(rand, 0, sizes.length - 1)]
    const offset = between(rand, 0, (size - length) / 512) * 512
    const into = Buffer.alloc(length + 7, 0xa5) // larger than the reply: the bytes after it must stay as they were
    reads.push(conn.request(Op.READ, offset, length, into, null).then(() => {
      if (!into.subarray(0, length).equals(data.subarray(offset, offset + length))) bad ||= `read ${offset}+${length} differs (seed ${seed})`
      if (into.subarray(length).some(b => b !== 0xa5)) bad ||= `read ${offset}+${length} wrote past its length (seed ${seed})`
    }))
  }
  await Promise.all(reads)
  t.is(bad, '')
  t.true(conn.directBytes > 0, 'some reply bytes were read straight into place')
})
