// RemoteDevice (export/native/remote-device.ts) against real node processes exporting files: what it learns from the
// handshake, many concurrent random reads and writes (some split into several requests) checked against an in-memory
// model and then against the exported file, identity across a restart, refusals, and a peer that dies mid-flight.

import test, { type ExecutionContext } from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { startNode, tempDir, type RunningNode } from '../helpers/node-process'
import { RawClient } from '../helpers/raw-client'
import { between, newSeed, prng, seededBytes } from '../helpers/random'
import { freePort } from '../helpers/ports'
import { RemoteDevice, type RemoteDeviceOptions } from '../../export/native/remote-device'
import type { DstError } from '../../node/core/errors'
import { closeDefaultHasher } from '../../node/core/hasher'
import { FaultProxy } from '../../tools/dev/fault-proxy'
import { digestsOf } from '../helpers/digests'
import { within } from '../helpers/wait'
import { loadNativeFs } from '../../node/devices/native'
import { HandshakeFlag, Op } from '../../export/native/codec'

const KiB = 1024
const MiB = 1024 * KiB

interface Fixture { dir: string, node: RunningNode, file: string }

/** A node exporting one file (`disk`, `size` bytes of seeded random data) with 16 pool buffers of 64 KiB. */
async function fileNode (t: { teardown: (fn: () => unknown) => void }, size: number, rand: () => number, extra: Record<string, unknown> = {}): Promise<Fixture> {
  const dir = tempDir('dst-remote-')
  const file = path.join(dir, 'disk.img')
  fs.writeFileSync(file, seededBytes(rand, size))
  const node = await startNode(dir, {
    name: 'rd',
    pool: { count: 16, size: '64KiB' },
    devices: { disk: { type: 'file', path: file, blockSize: 512 } },
    exports: [{ device: 'disk' }],
    ...extra,
  })
  t.teardown(() => node.kill())
  return { dir, node, file }
}

async function openDevice (t: { teardown: (fn: () => unknown) => void }, node: RunningNode, name: string, options: RemoteDeviceOptions = {}): Promise<RemoteDevice> {
  const dev = await RemoteDevice.open({ host: '127.0.0.1', port: node.port, export: name }, options)
  t.teardown(() => dev.close())
  return dev
}

test('size, block size and identity come from the handshake', async t => {
  const seed = newSeed()
  const { node } = await fileNode(t, 3 * MiB + 512, prng(seed))
  const dev = await openDevice(t, node, 'disk')
  t.is(dev.size, 3 * MiB + 512)
  t.is(dev.blockSize, 512)
  t.true(dev.writable)
  t.true(dev.canFlush)
  t.is(dev.canTrim, loadNativeFs() !== null) // a file device trims (punches holes) where the native addon is built, and the handshake says so
  t.is(dev.url, `dst://127.0.0.1:${node.port}/disk`)
  const raw = await RawClient.connect(node.port, 'disk')
  t.teardown(() => raw.terminate())
  t.is(dev.identity, raw.handshake.identity)
  t.regex(dev.identity, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/)
  t.not(dev.identity, '00000000-0000-0000-0000-000000000000')
  const st = dev.status()
  t.is(st.type, 'remote')
  t.is(st.connected, true)
  t.is(st.state, 'online')
})

test('hundreds of concurrent random reads and writes match an in-memory model, and the file matches at the end', async t => {
  const seed = newSeed()
  t.log(`seed ${seed}`)
  const rand = prng(seed)
  const size = 4 * MiB
  const { node, file } = await fileNode(t, size, rand)
  const model = fs.readFileSync(file)
  const dev = await openDevice(t, node, 'disk')
  t.is(dev.size, size)

  const pickLength = (): number => {
    const r = rand()
    if (r < 0.5) return between(rand, 1, 4096) // small, unaligned
    if (r < 0.8) return between(rand, 4097, 64 * KiB) // up to one maxRequest
    return between(rand, 64 * KiB + 1, 320 * KiB) // split into 2..5 requests
  }
  const overlaps = (a: [number, number], b: [number, number]): boolean => a[0] < b[1] && b[0] < a[1]

  const ops = 320
  const wave = 24
  let done = 0
  let reads = 0
  let writes = 0
  let splits = 0
  let mismatches = 0
  for (let w = 0; done < ops && w < ops; w++) {
    // One wave: operations issued together, none of which conflicts with a write in the same wave, so the model's
    // answer does not depend on the order in which the node runs them.
    const writeRanges: Array<[number, number]> = []
    const readRanges: Array<[number, number]> = []
    const pending: Array<Promise<void>> = []
    for (let tries = 0; pending.length < wave && done < ops && tries < 10 * wave; tries++) {
      const length = pickLength()
      const offset = between(rand, 0, size - length)
      const range: [number, number] = [offset, offset + length]
      const isWrite = rand() < 0.5
      if (writeRanges.some(r => overlaps(r, range))) continue
      if (isWrite && readRanges.some(r => overlaps(r, range))) continue
      if (length > 64 * KiB) splits++
      done++
      if (isWrite) {
        writes++
        writeRanges.push(range)
        const data = seededBytes(rand, length)
        data.copy(model, offset)
        pending.push(dev.write(offset, data))
      } else {
        reads++
        readRanges.push(range)
        const expected = Buffer.from(model.subarray(offset, offset + length))
        // Read into the middle of a larger buffer: the device must fill exactly the view it is given.
        const outer = Buffer.alloc(length + 64, 0xee)
        const into = outer.subarray(32, 32 + length)
        pending.push(dev.read(offset, length, into).then(() => {
          if (!into.equals(expected) || outer[31] !== 0xee || outer[32 + length] !== 0xee) {
            mismatches++
            t.fail(`read ${offset}+${length} differs from the model`)
          }
        }))
      }
    }
    await within(Promise.all(pending), 30000, `wave ${w}`)
  }
  t.is(done, ops)
  t.true(reads > 50 && writes > 50 && splits > 20, `reads ${reads}, writes ${writes}, split requests ${splits}`)
  t.is(mismatches, 0)
  await dev.flush()
  const onDisk = fs.readFileSync(file)
  t.is(onDisk.length, size)
  t.true(onDisk.equals(model), 'the exported file equals the model')
})

test('identity is stable across a node restart on the same file, and differs for another file', async t => {
  const seed = newSeed()
  const rand = prng(seed)
  const { dir, node, file } = await fileNode(t, 1 * MiB, rand)
  const other = path.join(dir, 'other.img')
  fs.writeFileSync(other, seededBytes(rand, 1 * MiB))
  const config = {
    name: 'rd2',
    devices: { disk: { type: 'file', path: file }, other: { type: 'file', path: other } },
    exports: [{ device: 'disk' }, { device: 'other' }],
  }
  const first = await openDevice(t, node, 'disk')
  const identity = first.identity
  await first.close()
  t.is(await node.stop(), 0)

  const again = await startNode(dir, config)
  t.teardown(() => again.kill())
  const second = await openDevice(t, again, 'disk')
  t.is(second.identity, identity)
  const third = await openDevice(t, again, 'other')
  t.not(third.identity, identity)
})

test('a read-only export gives a device with writable=false whose writes are refused', async t => {
  const seed = newSeed()
  const { node, file } = await fileNode(t, 1 * MiB, prng(seed), { exports: [{ device: 'disk', readOnly: true }] })
  const dev = await openDevice(t, node, 'disk')
  t.false(dev.writable)
  t.false(dev.canTrim)
  const err = await t.throwsAsync(dev.write(0, Buffer.alloc(4096, 1)))
  t.is((err as DstError).code, 'DST_ERR_EROFS')
  const into = Buffer.alloc(8192)
  await dev.read(4096, 8192, into)
  t.true(into.equals(fs.readFileSync(file).subarray(4096, 4096 + 8192)))
})

test('a refused token gives DST_ERR_TOKEN at once, without retrying', async t => {
  const seed = newSeed()
  const { node } = await fileNode(t, 1 * MiB, prng(seed), { exports: [{ device: 'disk', token: 'right' }] })
  const started = Date.now()
  const wrong = await t.throwsAsync(RemoteDevice.open({ host: '127.0.0.1', port: node.port, export: 'disk' }, { token: 'wrong', openTimeout: 20000 }))
  t.is((wrong as DstError).code, 'DST_ERR_TOKEN')
  t.regex(wrong?.message ?? '', /401/)
  t.true(Date.now() - started < 5000, 'a refusal is not retried until the open timeout')
  const missing = await t.throwsAsync(RemoteDevice.open({ host: '127.0.0.1', port: node.port, export: 'disk' }))
  t.is((missing as DstError).code, 'DST_ERR_TOKEN')
  const dev = await openDevice(t, node, 'disk', { token: 'right' })
  t.is(dev.size, 1 * MiB)
  // The other refusals have codes of their own.
  const nosuch = await t.throwsAsync(RemoteDevice.open({ host: '127.0.0.1', port: node.port, export: 'nosuch' }, { openTimeout: 20000 }))
  t.is((nosuch as DstError).code, 'DST_ERR_NOEXPORT')
})

test('a memory export can trim: the handshake says so and a trimmed range (larger than maxRequest) reads as zeros', async t => {
  const seed = newSeed()
  const rand = prng(seed)
  const { node } = await fileNode(t, 64 * KiB, rand, {
    devices: { mem: { type: 'memory', size: '4MiB' } },
    exports: [{ device: 'mem' }],
  })
  const dev = await openDevice(t, node, 'mem')
  t.true(dev.canTrim)
  const data = seededBytes(rand, 4 * MiB)
  await dev.write(0, data)
  await dev.trim(100000, 3 * MiB) // one request: TRIM is not limited to maxRequest
  const back = Buffer.alloc(4 * MiB)
  await dev.read(0, back.length, back)
  t.true(back.subarray(0, 100000).equals(data.subarray(0, 100000)))
  t.true(back.subarray(100000, 100000 + 3 * MiB).every(b => b === 0))
  t.true(back.subarray(100000 + 3 * MiB).equals(data.subarray(100000 + 3 * MiB)))
  const err = await t.throwsAsync(dev.trim(4 * MiB - 10, 20))
  t.is((err as DstError).code, 'DST_ERR_EINVAL')
})

test('when the peer is SIGKILLed and stays away past reconnectTimeout, every request settles with a clear error', async t => {
  const seed = newSeed()
  const rand = prng(seed)
  const { node } = await fileNode(t, 8 * MiB, rand)
  const dev = await openDevice(t, node, 'disk', { reconnectTimeout: 1500 })
  const data = seededBytes(rand, 64 * KiB)
  await dev.write(0, data)

  // Plenty in flight when the peer dies: every one of them must settle, none may hang.
  const inFlight: Array<Promise<unknown>> = []
  for (let i = 0; i < 200; i++) {
    const offset = (i % 120) * 64 * KiB
    inFlight.push(i % 2 === 0 ? dev.write(offset, data) : dev.read(offset, 64 * KiB, Buffer.alloc(64 * KiB)))
  }
  const killedAt = Date.now()
  await node.kill()
  const settled = await within(Promise.allSettled(inFlight), 10000, 'requests in flight when the peer died')
  const failures = settled.filter((s): s is PromiseRejectedResult => s.status === 'rejected').map(s => s.reason as DstError)
  t.true(failures.length > 0, 'some requests were cut off')
  for (const err of failures) t.is(err.code, 'DST_ERR_UNREACHABLE', err.message)
  t.true(Date.now() - killedAt >= 1000, 'requests waited for the peer before failing')

  // Past the timeout, new requests fail at once (no second wait) with the reason.
  const started = Date.now()
  const later = await within(dev.read(0, 4096, Buffer.alloc(4096)).then(() => null, (err: DstError) => err), 5000, 'read after the peer died')
  t.is(later?.code, 'DST_ERR_UNREACHABLE')
  t.true(Date.now() - started < 1000, 'failed at once')
  t.regex(later?.message ?? '', new RegExp(`127\\.0\\.0\\.1:${node.port}/disk: unreachable`))
  t.false(dev.connected)
  t.is(dev.status().state, 'connecting')
  // Closing a device whose peer is gone does not hang either.
  await within(dev.close(), 5000, 'close after the peer died')
})

// Issue 12: another disk at the address used to leave the device 'failed' for good; it is now 'foreign' (requests fail
// with DST_ERR_FOREIGN) and the device recovers by itself when its own disk is back.
test('a peer back on its port within reconnectTimeout: requests made during the outage complete; another disk there is foreign, its own disk back is used again', async t => {
  const seed = newSeed()
  const rand = prng(seed)
  const port = await freePort()
  const { dir, node, file } = await fileNode(t, 1 * MiB, rand, { listen: `127.0.0.1:${port}` })
  const logs: string[] = []
  const dev = await openDevice(t, node, 'disk', { log: m => logs.push(m), reconnectTimeout: 20000 })
  const identity = dev.identity
  const data = seededBytes(rand, 10000)
  await dev.write(5000, data)
  await node.kill()

  // Down: a read and a write made now wait for the peer instead of failing.
  const newer = seededBytes(rand, 4096)
  const duringRead = Buffer.alloc(data.length)
  const pending = Promise.all([dev.read(5000, data.length, duringRead), dev.write(200000, newer)])
  await new Promise(resolve => setTimeout(resolve, 300))
  t.is(dev.status().state, 'connecting')

  const again = await startNode(dir, { name: 'rd', listen: `127.0.0.1:${port}`, pool: { count: 16, size: '64KiB' }, devices: { disk: { type: 'file', path: file, blockSize: 512 } }, exports: [{ device: 'disk' }] })
  t.teardown(() => again.kill())
  await within(pending, 15000, 'requests made during the outage')
  t.true(duringRead.equals(data), 'the read made during the outage returns the data written before it')
  t.true(fs.readFileSync(file).subarray(200000, 200000 + 4096).equals(newer), 'the write made during the outage landed')
  t.true(dev.connected, `reconnected; log: ${logs.join(' | ')}`)
  t.is(dev.status().state, 'online')
  t.is(dev.identity, identity)

  // The same address now serving another file: the device must not talk to it.
  const other = path.join(dir, 'other.img')
  fs.writeFileSync(other, seededBytes(rand, 1 * MiB))
  await again.kill()
  const impostor = await startNode(dir, { name: 'imp', listen: `127.0.0.1:${port}`, devices: { disk: { type: 'file', path: other } }, exports: [{ device: 'disk' }] })
  t.teardown(() => impostor.kill())
  for (let i = 0; i < 100 && dev.status().state !== 'foreign'; i++) await new Promise(resolve => setTimeout(resolve, 100))
  t.is(dev.status().state, 'foreign')
  t.regex(String(dev.status().lastError), /different disk/)
  t.is(typeof dev.status().foundIdentity, 'string')
  t.not(dev.status().foundIdentity, identity)
  const refused = await dev.read(0, 512, Buffer.alloc(512)).then(() => null, (err: DstError) => err)
  t.is(refused?.code, 'DST_ERR_FOREIGN')
  t.regex(refused?.message ?? '', /different disk/)
  const otherBytes = fs.readFileSync(other)
  await dev.write(0, Buffer.alloc(512, 7)).catch(() => {})
  t.true(fs.readFileSync(other).equals(otherBytes), 'nothing was written to the other disk')
  // Its own disk back at the address: used again, by itself.
  await impostor.kill()
  const back = await startNode(dir, { name: 'rd', listen: `127.0.0.1:${port}`, pool: { count: 16, size: '64KiB' }, devices: { disk: { type: 'file', path: file, blockSize: 512 } }, exports: [{ device: 'disk' }] })
  t.teardown(() => back.kill())
  for (let i = 0; i < 150 && dev.status().state !== 'online'; i++) await new Promise(resolve => setTimeout(resolve, 100))
  t.is(dev.status().state, 'online')
  const got = Buffer.alloc(data.length)
  await dev.read(5000, data.length, got)
  t.true(got.equals(data))
})

test('opened with the disk an earlier handshake found: connecting while the peer is away, foreign if another disk answers, and acceptFoundDisk takes that one on', async t => {
  const rand = prng(newSeed())
  const port = await freePort()
  const { dir, node } = await fileNode(t, 256 * KiB, rand, { listen: `127.0.0.1:${port}` })
  const remembered: unknown[] = []
  const first = await RemoteDevice.open({ host: '127.0.0.1', port, export: 'disk' }, { onDisk: d => remembered.push(d) })
  t.is(remembered.length, 1, 'the first handshake is reported to be remembered')
  const disk = first.status()
  await first.close()
  await node.kill()
  const expect = remembered[0] as NonNullable<RemoteDeviceOptions['expect']>
  const dev = await within(RemoteDevice.open({ host: '127.0.0.1', port, export: 'disk' }, { expect, reconnectTimeout: 20000, openTimeout: 60000 }), 3000, 'open while the peer is away')
  t.teardown(() => dev.close())
  t.is(dev.status().state, 'connecting')
  t.is(dev.size, disk.size)
  t.is(dev.identity, disk.identity as string)
  // Another disk comes up at the address: foreign, and a request waiting for the peer fails clearly.
  const waiting = dev.read(0, 512, Buffer.alloc(512)).then(() => null, (err: DstError) => err)
  const other = path.join(dir, 'other.img')
  fs.writeFileSync(other, seededBytes(rand, 512 * KiB))
  const imp = await startNode(dir, { name: 'imp', listen: `127.0.0.1:${port}`, devices: { disk: { type: 'file', path: other } }, exports: [{ device: 'disk' }] })
  t.teardown(() => imp.kill())
  t.is((await within(waiting, 10000, 'the waiting read'))?.code, 'DST_ERR_FOREIGN')
  t.is(dev.status().state, 'foreign')
  const accepted: unknown[] = []
  ;(dev as unknown as { options: RemoteDeviceOptions }).options.onDisk = d => accepted.push(d)
  await dev.acceptFoundDisk()
  t.is(dev.status().state, 'online')
  t.is(accepted.length, 1, 'the disk taken on is reported to be remembered')
  const got = Buffer.alloc(512)
  await dev.read(0, 512, got)
  t.true(got.equals(fs.readFileSync(other).subarray(0, 512)))
})

// ---- HASH and wire digests (protocol version 2) ----------------------------------------------------------------------

// Wire digests and hashes by reading run on this process's hash workers: let them go at the end.
test.after.always(async () => { await closeDefaultHasher() })


/** One sample of a node's /metrics (NaN when the line is missing, so a renamed family fails loudly). */
async function metricOf (node: RunningNode, name: string, labels: string): Promise<number> {
  const text = await (await fetch(`${node.http}/metrics`)).text()
  const line = text.split('\n').find(l => l.startsWith(`${name}{${labels}} `))
  return line === undefined ? NaN : Number(line.slice(line.lastIndexOf(' ') + 1))
}

test('RemoteDevice.hash equals local digests and is answered by HASH requests: no data crosses the network', async t => {
  const seed = newSeed()
  t.log(`seed ${seed}`)
  const { node, file } = await fileNode(t, 4 * MiB, prng(seed))
  const dev = await openDevice(t, node, 'disk')
  const disk = fs.readFileSync(file)
  const labels = 'node="rd",export="disk"'
  const counters = async (): Promise<number[]> => await Promise.all([
    metricOf(node, 'dst_requests_total', `${labels},op="hash"`),
    metricOf(node, 'dst_requests_total', `${labels},op="read"`),
    metricOf(node, 'dst_hashed_bytes_total', labels),
    metricOf(node, 'dst_bytes_total', `${labels},direction="read"`),
  ])
  const [hash0, read0, hashed0, readBytes0] = await counters()
  t.false([hash0, read0, hashed0, readBytes0].some(Number.isNaN), 'every metric is there')

  // Longer than maxRequest (64 KiB), unaligned, with a short last chunk: split into 17 HASH requests.
  const offset = 12345
  const length = 1 * MiB + 3000
  const digests = await dev.hash(offset, length, 4096)
  t.is(digests.length, Math.ceil(length / 4096) * 64)
  t.true(digests.equals(digestsOf(disk.subarray(offset, offset + length), 4096)))
  const [hash1, read1, hashed1, readBytes1] = await counters()
  t.is(hash1 - hash0, Math.ceil(length / (64 * KiB)), 'one HASH per maxRequest of the range')
  t.is(read1 - read0, 0, 'no READ was sent')
  t.is(readBytes1 - readBytes0, 0, 'no data was read for the client')
  t.is(hashed1 - hashed0, length, 'the node digested exactly the range')

  // The whole device in one call, and other chunk sizes.
  t.true((await dev.hash(0, dev.size, 64 * KiB)).equals(digestsOf(disk, 64 * KiB)))
  t.true((await dev.hash(dev.size - 5000, 5000, 512)).equals(digestsOf(disk.subarray(dev.size - 5000), 512)))
  t.is((await dev.hash(0, 0, 4096)).length, 0)
  // A chunk larger than the export's maxRequest cannot be asked for in one HASH; the digests are still right.
  t.true((await dev.hash(MiB, 512 * KiB, 256 * KiB)).equals(digestsOf(disk.subarray(MiB, MiB + 512 * KiB), 256 * KiB)))

  // Bad arguments are refused before anything is sent.
  t.is((await t.throwsAsync(dev.hash(0, 4096, 1000)) as DstError).code, 'DST_ERR_EINVAL')
  t.is((await t.throwsAsync(dev.hash(dev.size - 100, 4096, 4096)) as DstError).code, 'DST_ERR_EINVAL')
})

test('a digest export round trip: 3 MiB of random data written and read back equal, status says digests', async t => {
  const seed = newSeed()
  t.log(`seed ${seed}`)
  const rand = prng(seed)
  const { node, file } = await fileNode(t, 4 * MiB, rand, { exports: [{ device: 'disk', digest: true }] })
  const dev = await openDevice(t, node, 'disk')
  t.is(dev.status().digests, true)
  t.is(dev.status().digestErrors, 0)
  const data = seededBytes(rand, 3 * MiB)
  const offset = 512 * KiB + 100 // unaligned, so the pieces are not all the same size
  await dev.write(offset, data)
  await dev.flush()
  const back = Buffer.alloc(data.length)
  await dev.read(offset, data.length, back)
  t.true(back.equals(data))
  t.true(fs.readFileSync(file).subarray(offset, offset + data.length).equals(data))
  // Small requests too (digested on the loop rather than on a worker).
  const small = seededBytes(rand, 100)
  await dev.write(7, small)
  const smallBack = Buffer.alloc(100)
  await dev.read(7, 100, smallBack)
  t.true(smallBack.equals(small))
  t.is(dev.counters.digestErrors, 0)
  t.is(dev.status().digestErrors, 0)
  t.is(await metricOf(node, 'dst_digest_errors_total', 'node="rd",export="disk"'), 0)
  const status = await node.status() as { exports: Array<{ name: string, digest: boolean }> }
  t.is(status.exports.find(e => e.name === 'disk')?.digest, true)

  // An export without digests says so too.
  const plain = await fileNode(t, 1 * MiB, rand)
  t.is((await openDevice(t, plain.node, 'disk')).status().digests, false)
})

interface Corrupting { node: RunningNode, file: string, proxy: FaultProxy, dev: RemoteDevice, rand: () => number }

/** A node exporting a file (wire digests or not) and a remote device reaching it through a fault proxy. */
async function throughProxy (t: ExecutionContext, digest: boolean): Promise<Corrupting> {
  const seed = newSeed()
  t.log(`seed ${seed}`)
  const rand = prng(seed)
  const { node, file } = await fileNode(t, 8 * MiB, rand, { pool: { count: 64, size: '64KiB' }, exports: [{ device: 'disk', digest }] })
  const proxy = await FaultProxy.start({ target: { host: '127.0.0.1', port: node.port } })
  t.teardown(() => proxy.close())
  const dev = await RemoteDevice.open({ host: '127.0.0.1', port: proxy.port, export: 'disk' })
  t.teardown(() => dev.close())
  t.is(dev.status().digests, digest)
  return { node, file, proxy, dev, rand }
}

/** Writes `data` at 0 in 1 MiB pieces, one after another. */
async function writePieces (dev: RemoteDevice, data: Buffer): Promise<void> {
  for (let at = 0; at < data.length; at += MiB) await within(dev.write(at, data.subarray(at, at + MiB)), 30000, `write at ${at}`)
  await dev.flush()
}

/** Positions where `a` and `b` differ (bounded: at most `limit`). */
function differences (a: Buffer, b: Buffer, limit = 100): number[] {
  const out: number[] = []
  for (let i = 0; i < a.length && out.length < limit; i++) if (a[i] !== b[i]) out.push(i)
  return out
}

test('with digests, a link corrupting writes is caught: EBADMSG, sent again, the file holds exactly what was written', async t => {
  const { node, file, proxy, dev, rand } = await throughProxy(t, true)
  const data = seededBytes(rand, 6 * MiB)
  proxy.corrupt(4, 'up')
  await writePieces(dev, data)
  t.is(proxy.counters.corrupted, 4, 'the proxy corrupted four chunks on their way to the node')
  const onDisk = fs.readFileSync(file).subarray(0, data.length)
  t.deepEqual(differences(onDisk, data), [], 'no corrupted byte reached the file')
  t.true(dev.counters.digestErrors > 0, `digest errors seen by the client: ${dev.counters.digestErrors}`)
  t.is(dev.status().digestErrors, dev.counters.digestErrors)
  t.true(await metricOf(node, 'dst_digest_errors_total', 'node="rd",export="disk"') > 0)
})

test('with digests, a link corrupting reads is caught: the reader gets the right data after asking again', async t => {
  const { file, proxy, dev } = await throughProxy(t, true)
  const disk = fs.readFileSync(file)
  const before = dev.counters.digestErrors
  proxy.corrupt(4, 'down')
  const back = Buffer.alloc(4 * MiB)
  for (let at = 0; at < back.length; at += MiB) await within(dev.read(at, MiB, back.subarray(at, at + MiB)), 30000, `read at ${at}`)
  t.is(proxy.counters.corrupted, 4, 'the proxy corrupted four chunks on their way to the client')
  t.deepEqual(differences(back, disk.subarray(0, back.length)), [], 'every byte read is the byte on disk')
  t.true(dev.counters.digestErrors > before, `digest errors seen by the client: ${dev.counters.digestErrors}`)
  t.is(dev.status().digestErrors, dev.counters.digestErrors)
})

// The control: the same corruption without wire digests goes unnoticed (TCP's checksum was computed after the flip).
test('without digests, the same corrupting link silently changes the data written', async t => {
  const { file, proxy, dev, rand } = await throughProxy(t, false)
  const data = seededBytes(rand, 6 * MiB)
  proxy.corrupt(4, 'up')
  await writePieces(dev, data) // every write "succeeds"
  t.is(proxy.counters.corrupted, 4)
  t.is(dev.counters.digestErrors, 0)
  const onDisk = fs.readFileSync(file).subarray(0, data.length)
  const diff = differences(onDisk, data)
  t.false(onDisk.equals(data), 'the file does not hold what was written')
  t.true(diff.length >= 1 && diff.length <= 4, `differing bytes at ${diff.join(', ')}`)
  for (const at of diff) t.is(onDisk[at] ^ data[at], 0x5a, `byte ${at} is the proxy's flip`)
})

test('a link that corrupts every try: the write fails with DST_ERR_DIGEST (EBADMSG) after 4 tries and writes nothing', async t => {
  const { node, file, proxy, dev, rand } = await throughProxy(t, true)
  const before = fs.readFileSync(file)
  proxy.corrupt(1000, 'up')
  const data = seededBytes(rand, 64 * KiB) // one request: each try is one message of more than 16 KiB
  const err = await within(dev.write(MiB, data).then(() => null, (e: DstError) => e), 30000, 'write over a corrupting link')
  t.not(err, null, 'the write must fail')
  t.is(err?.code, 'DST_ERR_DIGEST', err?.message)
  t.is(err?.errno, 74)
  t.is(dev.counters.digestErrors, 4, 'the first try and 3 more')
  t.is(await metricOf(node, 'dst_digest_errors_total', 'node="rd",export="disk"'), 4)
  t.true(fs.readFileSync(file).equals(before), 'nothing was written')
  // The link heals: the same write goes through.
  proxy.corrupt(0)
  await within(dev.write(MiB, data), 30000, 'write after the link healed')
  t.true(fs.readFileSync(file).subarray(MiB, MiB + data.length).equals(data))
})

test('a link that corrupts every try: the read fails with DST_ERR_DIGEST (EBADMSG) after 4 tries', async t => {
  const { file, proxy, dev } = await throughProxy(t, true)
  proxy.corrupt(1000, 'down')
  const into = Buffer.alloc(64 * KiB)
  const err = await within(dev.read(MiB, into.length, into).then(() => null, (e: DstError) => e), 30000, 'read over a corrupting link')
  t.not(err, null, 'the read must fail')
  t.is(err?.code, 'DST_ERR_DIGEST', err?.message)
  t.is(err?.errno, 74)
  t.is(dev.counters.digestErrors, 4, 'the first try and 3 more')
  proxy.corrupt(0)
  await within(dev.read(MiB, into.length, into), 30000, 'read after the link healed')
  t.true(into.equals(fs.readFileSync(file).subarray(MiB, MiB + into.length)))
})

// ---- EXTENTS (protocol version 3) ---------------------------------------------------------------------------------

test('RemoteDevice.extents asks its peer: a memory export\'s holes and data, thousands of runs over several bounded replies', async t => {
  const rand = prng(newSeed())
  const { node } = await fileNode(t, 64 * KiB, rand, {
    devices: { mem: { type: 'memory', size: '1GiB' } },
    exports: [{ device: 'mem' }],
  })
  const dev = await openDevice(t, node, 'mem')
  const PAGE = 64 * KiB
  t.deepEqual(await dev.extents(0, dev.size), [{ offset: 0, length: dev.size, hole: true }], 'nothing written: one hole')
  // One byte in every other page from page 1 on: 2 x 1200 runs, more than one reply (1024 runs) holds.
  const pages = 1200
  const writes: Array<Promise<void>> = []
  for (let i = 0; i < pages; i++) writes.push(dev.write((2 * i + 1) * PAGE + between(rand, 0, PAGE - 1), Buffer.from([1 + i % 255])))
  await Promise.all(writes)
  const before = await metricOf(node, 'dst_requests_total', 'node="rd",export="mem",op="extents"')
  const runs = await dev.extents(0, dev.size)
  const after = await metricOf(node, 'dst_requests_total', 'node="rd",export="mem",op="extents"')
  t.is(runs.length, 2 * pages + 1)
  t.true(after - before >= 3, `${after - before} EXTENTS requests: each asked from where the last reply ended`)
  let at = 0
  for (const [i, r] of runs.entries()) {
    t.is(r.offset, at)
    t.is(r.hole, i % 2 === 0)
    t.is(r.length, i === runs.length - 1 ? dev.size - at : PAGE)
    at += r.length
  }
  t.is(at, dev.size)
  // A range inside, unaligned; and trims make holes again.
  t.deepEqual(await dev.extents(PAGE - 10, 20), [{ offset: PAGE - 10, length: 10, hole: true }, { offset: PAGE, length: 10, hole: false }])
  await dev.trim(0, 8 * PAGE)
  t.deepEqual(await dev.extents(0, 9 * PAGE), [{ offset: 0, length: 9 * PAGE, hole: true }])
  t.is((await t.throwsAsync(dev.extents(dev.size - 1, 2)) as DstError).code, 'DST_ERR_EINVAL')
})

test('a client naming version 3 gets EXTENTS; one naming none gets the version 2 handshake, where EXTENTS is unknown (ENOTSUP)', async t => {
  const { node } = await fileNode(t, 64 * KiB, prng(newSeed()), {
    devices: { mem: { type: 'memory', size: '1MiB' } },
    exports: [{ device: 'mem' }],
  })
  const v3 = await RawClient.connect(node.port, 'mem', { 'x-dst-version': '3' })
  t.teardown(() => v3.terminate())
  t.is(v3.handshake.version, 3)
  t.not(v3.handshake.flags & HandshakeFlag.EXTENTS, 0)
  await v3.call(Op.WRITE, 1, 65536, 1, Buffer.from([7]))
  const reply = await v3.call(Op.EXTENTS, 2, 0, 1 << 20, undefined, 16)
  t.is(reply.errno, 0)
  t.deepEqual([0, 8, 16].map(at => [reply.payload.readUInt32LE(at), reply.payload.readUInt32LE(at + 4)]), [[65536, 1], [65536, 0], [(1 << 20) - 131072, 1]])
  const range = await v3.call(Op.EXTENTS, 3, (1 << 20) - 512, 1024, undefined, 16)
  t.is(range.errno, 22, 'past the end: EINVAL')

  const old = await RawClient.connect(node.port, 'mem')
  t.teardown(() => old.terminate())
  t.is(old.handshake.version, 2)
  t.is(old.handshake.flags & HandshakeFlag.EXTENTS, 0)
  t.is((await old.call(Op.EXTENTS, 4, 0, 4096, undefined, 16)).errno, 95)
  t.is((await old.call(Op.READ, 5, 65536, 1)).payload[0], 7, 'the old client goes on as before')
  t.false(old.isClosed)
})
