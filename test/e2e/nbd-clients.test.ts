// The NBD server against real clients from Debian (qemu-img, qemu-io, nbdinfo, nbdsh, nbdcopy, fio), never written
// here, on files, remote devices and arrays. `.ci/run` installs them.

import test from 'ava'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as path from 'node:path'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { startExport, startMirrorTree, startNode, tempDir, type RunningNode } from '../helpers/node-process'
import { freePort } from '../helpers/ports'
import { until } from '../helpers/wait'
import { FaultProxy } from '../../tools/dev/fault-proxy'
import { testNeeding, TOOLS } from '../helpers/requires'

const MiB = 1024 * 1024
// Every test here drives a real client; on a machine without them they are skipped (under CI=true they fail).
const clientTest = testNeeding(Object.values(TOOLS))
// nbdsh runs the first python3 on PATH, which must be Debian's (it has the nbd module).
const env = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` }

function run (cmd: string, args: string[], timeout = 60000, cwd?: string): Promise<{ code: number, stdout: string, stderr: string }> {
  return new Promise(resolve => {
    execFile(cmd, args, { env, timeout, cwd, maxBuffer: 16 * MiB }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as NodeJS.ErrnoException & { code?: unknown }).code === 'number' ? (err as unknown as { code: number }).code : 1
      resolve({ code, stdout, stderr })
    })
  })
}

interface Rig { dir: string, node: RunningNode, nbd: (name: string) => string }

async function rig (t: { teardown: (fn: () => unknown) => void }, config: Record<string, unknown>): Promise<Rig> {
  const dir = tempDir('dst-nbd-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const node = await startNode(dir, { nbd: '127.0.0.1:0', dataDir: './state', ...config })
  t.teardown(() => node.kill())
  const m = /nbd {5}nbd:\/\/127\.0\.0\.1:(\d+)\//.exec(node.output())
  if (m === null) throw new Error(`no nbd address printed:\n${node.output()}`)
  return { dir, node, nbd: name => `nbd://127.0.0.1:${m[1]}/${name}` }
}

const fileNode = (size: number, extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  name: 'n',
  devices: { disk: { type: 'file', path: './disk.img', size }, ro: { type: 'file', path: './ro.img', size: 1 * MiB } },
  exports: [{ device: 'disk' }, { device: 'ro', readOnly: true }],
  ...extra,
})

// Wire values from doc/proto.md, spelled out here so the tests check the server's own tables too.
const REP = { ACK: 1, SERVER: 2, INFO: 3, ERR_UNSUP: 0x80000001, ERR_POLICY: 0x80000002, ERR_INVALID: 0x80000003, ERR_UNKNOWN: 0x80000006 }
const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8, LIST_META_CONTEXT: 9 }

/** An option as a client sends it: IHAVEOPT, the option, its length, its data. */
function optionBytes (option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(16)
  Buffer.from('IHAVEOPT').copy(head, 0)
  head.writeUInt32BE(option, 8)
  head.writeUInt32BE(data.length, 12)
  return Buffer.concat([head, data])
}

/** A transmission-phase request header (no flags; handles and offsets below 2^32). */
function requestBytes (type: number, handle: number, offset: number, length: number): Buffer {
  const h = Buffer.alloc(28)
  h.writeUInt32BE(0x25609513, 0)
  h.writeUInt16BE(type, 6)
  h.writeUInt32BE(handle, 12)
  h.writeUInt32BE(offset, 20)
  h.writeUInt32BE(length, 24)
  return h
}

clientTest('nbdinfo lists the exports and reports size, flags and block sizes', async t => {
  const { nbd } = await rig(t, fileNode(64 * MiB))
  const list = await run('nbdinfo', ['--list', nbd('')])
  t.is(list.code, 0, list.stderr)
  t.regex(list.stdout, /export="disk"/)
  t.regex(list.stdout, /export="ro"/)
  const info = await run('nbdinfo', ['--json', nbd('disk')])
  t.is(info.code, 0, info.stderr)
  const j = JSON.parse(info.stdout) as { exports: Array<Record<string, unknown>> }
  const e = j.exports[0]
  t.is(e['export-size'], 64 * MiB)
  t.is(e.is_read_only, false)
  t.is(e.can_flush, true)
  t.is(e.can_fua, true)
  t.is(e.can_multi_conn, true)
  t.is(e.block_size_maximum, 1 * MiB)
  const ro = JSON.parse((await run('nbdinfo', ['--json', nbd('ro')])).stdout) as { exports: Array<Record<string, unknown>> }
  t.is(ro.exports[0].is_read_only, true)
})

clientTest('qemu-img convert of a random image onto an export and back is byte-identical', async t => {
  const { dir, nbd } = await rig(t, fileNode(32 * MiB))
  const src = path.join(dir, 'src.raw')
  fs.writeFileSync(src, randomBytes(32 * MiB))
  const put = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, nbd('disk')])
  t.is(put.code, 0, put.stderr)
  const back = path.join(dir, 'back.raw')
  const get = await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', nbd('disk'), back])
  t.is(get.code, 0, get.stderr)
  t.true(fs.readFileSync(back).equals(fs.readFileSync(src)))
  t.true(fs.readFileSync(path.join(dir, 'disk.img')).equals(fs.readFileSync(src)), 'the file behind the export holds it')
  const copy = path.join(dir, 'copy.raw')
  const nc = await run('nbdcopy', [nbd('disk'), copy])
  t.is(nc.code, 0, nc.stderr)
  t.true(fs.readFileSync(copy).equals(fs.readFileSync(src)), 'nbdcopy reads the same bytes')
})

clientTest('nbdsh: a read past the end gets EINVAL and the same connection still works; a write to a read-only export gets EPERM', async t => {
  const { nbd } = await rig(t, fileNode(4 * MiB))
  const script = `
h.set_strict_mode(0)
h.connect_uri("${nbd('disk')}")
size = h.get_size()
try:
    h.pread(4096, size - 100)
    print("past-end: no error")
except nbd.Error as e:
    print("past-end:", e.errno)
h.pwrite(b"z" * 4096, 8192)
print("after:", h.pread(4096, 8192) == b"z" * 4096)
h.shutdown()
ro = nbd.NBD()
ro.set_strict_mode(0)
ro.connect_uri("${nbd('ro')}")
try:
    ro.pwrite(b"x" * 512, 0)
    print("ro-write: no error")
except nbd.Error as e:
    print("ro-write:", e.errno)
ro.shutdown()
`
  const r = await run('nbdsh', ['-c', script])
  t.is(r.code, 0, r.stderr)
  t.regex(r.stdout, /past-end: EINVAL/)
  t.regex(r.stdout, /after: True/)
  t.regex(r.stdout, /ro-write: EPERM/)
})

clientTest('a broken handshake, garbage instead of an option, or a bad request magic closes that connection only; the server keeps serving', async t => {
  const { nbd, node } = await rig(t, fileNode(4 * MiB))
  const port = Number(/:(\d+)\//.exec(nbd('disk'))?.[1])
  const talk = (bytes: Buffer): Promise<Buffer> => new Promise(resolve => {
    const s = net.connect(port, '127.0.0.1')
    const got: Buffer[] = []
    s.on('data', c => got.push(c))
    s.on('connect', () => s.write(bytes))
    s.on('close', () => resolve(Buffer.concat(got)))
    s.on('error', () => {})
    setTimeout(() => s.destroy(), 3000)
  })
  // Client flags without FIXED_NEWSTYLE: the server closes after its greeting.
  const noFixed = await talk(Buffer.from([0, 0, 0, 0]))
  t.is(noFixed.subarray(0, 8).toString('latin1'), 'NBDMAGIC')
  // Garbage where an option should be.
  const garbage = await talk(Buffer.concat([Buffer.from([0, 0, 0, 3]), Buffer.from('this is not IHAVEOPT at all')]))
  t.is(garbage.length, 18, 'only the greeting, then the connection closes')
  // A full handshake (NBD_OPT_EXPORT_NAME), then a request with a bad magic: the server closes that connection.
  const badRequest = Buffer.alloc(28, 0xee)
  const afterExport = await talk(Buffer.concat([Buffer.from([0, 0, 0, 3]), optionBytes(OPT.EXPORT_NAME, Buffer.from('disk')), badRequest]))
  t.is(afterExport.length, 18 + 10, 'greeting and export reply, then the connection closes without a reply')
  t.is(afterExport.readUInt32BE(18 + 4), 4 * MiB, 'the export reply carried the size')
  const info = await run('nbdinfo', [nbd('disk')])
  t.is(info.code, 0, 'a well-behaved client is still served')
  t.is(node.proc.exitCode, null)
})

clientTest('qemu-io writes a pattern and reads it back through a mirror array', async t => {
  const { nbd } = await rig(t, {
    name: 'mir',
    devices: {
      a: { type: 'file', path: './a.img', size: 8 * MiB },
      b: { type: 'file', path: './b.img', size: 8 * MiB },
      m: { type: 'mirror', members: ['a', 'b'] },
    },
    exports: [{ device: 'm' }],
  })
  const r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xa5 1000000 300000', '-c', 'read -P 0xa5 1000000 300000', '-c', 'flush', nbd('m')])
  t.is(r.code, 0, r.stderr)
  t.regex(r.stdout, /wrote 300000\/300000 bytes/)
  t.regex(r.stdout, /read 300000\/300000 bytes/)
  t.notRegex(r.stdout + r.stderr, /Pattern verification failed/)
})

clientTest('fio (nbd engine) with verify=crc32c on a mirror of two remote nodes', async t => {
  const dir = tempDir('dst-nbd-fio-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const { top, nbdPort: port } = await startMirrorTree(t, dir, 32 * MiB)
  const r = await run('fio', ['--name=verify', '--ioengine=nbd', `--uri=nbd://127.0.0.1:${port}/m`, '--rw=randrw', '--bs=4k', '--iodepth=16',
    '--size=16m', '--verify=crc32c', '--do_verify=1', '--verify_fatal=1', '--output-format=json'], 120000, dir) // fio leaves a verify state file in its cwd
  t.is(r.code, 0, r.stderr)
  // fio may print a line of its own before the JSON document.
  const job = (JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: Array<{ error: number, read: { io_bytes: number }, write: { io_bytes: number } }> }).jobs[0]
  t.is(job.error, 0)
  t.true(job.write.io_bytes > 0 && job.read.io_bytes > 0)
  await top.stop()
  t.true(fs.readFileSync(path.join(dir, 'l1.img')).equals(fs.readFileSync(path.join(dir, 'l2.img'))), 'both legs hold the same bytes')
})

clientTest('fio (nbd engine) with verify on a mirror sees no error while one leaf is killed and restarted; the legs end identical', async t => {
  const dir = tempDir('dst-nbd-fault-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const nodes: RunningNode[] = []
  t.teardown(async () => { await Promise.all(nodes.map(n => n.kill())) })
  const leafConfig = async (name: string): Promise<Record<string, unknown>> => ({
    name, listen: `127.0.0.1:${await freePort()}`, dataDir: `./state-${name}`,
    devices: { disk: { type: 'file', path: `./${name}.img`, size: 16 * MiB } }, exports: [{ device: 'disk' }],
  })
  const configs = [await leafConfig('l1'), await leafConfig('l2')]
  const leaves = [await startNode(dir, configs[0]), await startNode(dir, configs[1])]
  nodes.push(...leaves)
  const top = await startNode(dir, {
    name: 'top', dataDir: './state-top', nbd: '127.0.0.1:0', pingInterval: 300, reconnectTimeout: 1000,
    devices: {
      a: { type: 'remote', url: leaves[0].url('disk') },
      b: { type: 'remote', url: leaves[1].url('disk') },
      m: { type: 'mirror', members: ['a', 'b'], region: '64KiB' },
    },
    exports: [{ device: 'm' }],
  })
  nodes.push(top)
  const port = /nbd {5}nbd:\/\/127\.0\.0\.1:(\d+)\//.exec(top.output())?.[1]
  const mirror = async (): Promise<any> => (await top.status()).devices.m
  await until('the mirror to be online', async () => (await mirror()).state === 'online')
  // Writes paced at 4 MiB/s over 16 MiB, so the leaf is down (longer than reconnectTimeout) in the middle of them;
  // then fio reads every block back and checks it.
  const fio = run('fio', ['--name=verify', '--ioengine=nbd', `--uri=nbd://127.0.0.1:${port}/m`, '--rw=randwrite', '--bs=4k', '--iodepth=16',
    '--size=16m', '--rate=4m', '--verify=crc32c', '--do_verify=1', '--verify_fatal=1', '--output-format=json'], 120000, dir)
  await new Promise(resolve => setTimeout(resolve, 1000))
  await leaves[1].kill()
  await until('the mirror to go on without the killed leaf', async () => (await mirror()).state === 'degraded', 10000)
  nodes.push(await startNode(dir, configs[1]))
  const r = await fio
  t.is(r.code, 0, r.stderr)
  const job = (JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: Array<{ error: number, write: { io_bytes: number }, read: { io_bytes: number } }> }).jobs[0]
  t.is(job.error, 0)
  t.is(job.write.io_bytes, 16 * MiB)
  t.is(job.read.io_bytes, 16 * MiB, 'fio read every block back and found it right')
  await until('the restarted leg to be back in sync', async () => (await mirror()).members.every((l: any) => l.state === 'in-sync'), 60000, 100)
  await top.stop()
  t.true(fs.readFileSync(path.join(dir, 'l1.img')).equals(fs.readFileSync(path.join(dir, 'l2.img'))), 'both legs hold the same bytes')
})

clientTest('clients that vanish mid-request (inside a WRITE payload, with READ replies unread) give every pool buffer back; the node keeps serving', async t => {
  const { nbd, node } = await rig(t, fileNode(16 * MiB, { pool: { count: 8, size: '1MiB' } }))
  const port = Number(/:(\d+)\//.exec(nbd('disk'))?.[1])
  const status = async (): Promise<any> => await node.status()
  // Fixed newstyle with NO_ZEROES, then NBD_OPT_EXPORT_NAME: the server's reply is 18 + 10 bytes.
  const handshake = Buffer.concat([Buffer.from([0, 0, 0, 3]), optionBytes(OPT.EXPORT_NAME, Buffer.from('disk'))])
  const request = (type: number, offset: number, length: number, handle: number): Buffer => requestBytes(type, handle, offset, length)
  /** Connects, sends `bytes` after the handshake, waits until `after` bytes of replies came (or a moment), then vanishes. */
  const vanish = (bytes: Buffer, after: number): Promise<void> => new Promise(resolve => {
    const s = net.connect(port, '127.0.0.1')
    let got = 0
    const done = (): void => { s.destroy(); resolve() }
    s.on('data', c => { got += c.length; if (got >= 28 + after) { s.pause(); setTimeout(done, 20) } })
    s.on('connect', () => s.write(Buffer.concat([handshake, bytes])))
    s.on('error', () => {})
    s.on('close', resolve)
    setTimeout(done, 2000)
  })
  const payload = Buffer.alloc(MiB, 0x5a)
  for (let round = 0; round < 6; round++) {
    // A WRITE whose payload stops half way.
    await vanish(Buffer.concat([request(1, round * MiB, MiB, 1), payload.subarray(0, MiB / 2)]), 0)
    // Sixteen 1 MiB READs (twice the pool), the replies left unread once the first bytes came.
    await vanish(Buffer.concat(Array.from({ length: 16 }, (_, i) => request(0, i * MiB, MiB, i))), 1)
    // Whole WRITEs, then READs, then a WRITE cut short: some of each are in flight when the client goes.
    await vanish(Buffer.concat([request(1, 0, MiB, 1), payload, request(0, 0, MiB, 2), request(0, MiB, MiB, 3), request(1, MiB, MiB, 4), payload.subarray(0, 1000)]), 16)
  }
  await until('every pool buffer to be free and every connection gone', async () => {
    const s = await status()
    return s.pool.free === s.pool.count && s.exports.every((e: any) => e.connections === 0)
  }, 10000)
  const info = await run('nbdinfo', [nbd('disk')])
  t.is(info.code, 0, 'a well-behaved client is served afterwards')
  t.is(node.proc.exitCode, null)
})

/** A raw client for the option phase: reads the greeting, sends the client flags, then options; parses option replies. */
class OptionClient {
  private readonly socket: net.Socket
  private buf = Buffer.alloc(0)
  private waiter: (() => void) | null = null
  closed = false

  constructor (port: number) {
    this.socket = net.connect(port, '127.0.0.1')
    this.socket.on('data', c => { this.buf = Buffer.concat([this.buf, c]); this.wake() })
    this.socket.on('close', () => { this.closed = true; this.wake() })
    this.socket.on('error', () => {})
    this.socket.write(Buffer.from([0, 0, 0, 3])) // FIXED_NEWSTYLE | NO_ZEROES
  }

  private wake (): void { const w = this.waiter; this.waiter = null; w?.() }

  /** Resolves with `n` bytes, or null once the connection closed before they came. */
  async take (n: number): Promise<Buffer | null> {
    const deadline = Date.now() + 5000
    while (this.buf.length < n) {
      if (this.closed || Date.now() > deadline) return null
      await new Promise<void>(resolve => { this.waiter = resolve; setTimeout(resolve, 100) })
    }
    const out = this.buf.subarray(0, n)
    this.buf = this.buf.subarray(n)
    return out
  }

  send (option: number, data: Buffer = Buffer.alloc(0)): void {
    this.socket.write(optionBytes(option, data))
  }

  /** The next option reply: its option, type and data. */
  async reply (): Promise<{ option: number, type: number, data: Buffer }> {
    const head = await this.take(20)
    if (head === null) throw new Error('the connection closed instead of an option reply')
    if (head.readUInt32BE(0) !== 0x0003e889 || head.readUInt32BE(4) !== 0x045565a9) throw new Error('bad option reply magic')
    const data = await this.take(head.readUInt32BE(16))
    if (data === null) throw new Error('the connection closed inside an option reply')
    return { option: head.readUInt32BE(8), type: head.readUInt32BE(12), data: Buffer.from(data) }
  }

  /** Replies up to and including the final one (ACK or an error) of the option sent last. */
  async replies (): Promise<Array<{ option: number, type: number, data: Buffer }>> {
    const all = []
    for (;;) {
      const r = await this.reply()
      all.push(r)
      if (r.type !== 2 && r.type !== 3) return all // not NBD_REP_SERVER or NBD_REP_INFO
    }
  }

  /** Sends a transmission-phase request header (after NBD_OPT_EXPORT_NAME). */
  request (type: number, handle: number, offset: number, length: number): void {
    this.socket.write(requestBytes(type, handle, offset, length))
  }

  /** The next simple reply: its handle and error (the caller knows how much data follows a good READ reply). */
  async simpleReply (): Promise<{ handle: number, errno: number }> {
    const r = await this.take(16)
    if (r === null) throw new Error('the connection closed instead of a reply')
    if (r.readUInt32BE(0) !== 0x67446698) throw new Error('bad simple reply magic')
    return { handle: r.readUInt32BE(12), errno: r.readUInt32BE(4) }
  }

  end (): void { this.socket.destroy() }
}

/** The data of NBD_OPT_INFO / NBD_OPT_GO: name, then the information requests. */
function infoRequest (name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name)
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length)
  b.writeUInt32BE(n.length, 0)
  n.copy(b, 4)
  b.writeUInt16BE(infos.length, 4 + n.length)
  infos.forEach((x, i) => b.writeUInt16BE(x, 4 + n.length + 2 + 2 * i))
  return b
}

clientTest('option phase: LIST names only the exports this client may use; INFO answers EXPORT, BLOCK_SIZE and NAME; refusals name the reason; other options are ERR_UNSUP; ABORT is acknowledged', async t => {
  const { nbd } = await rig(t, {
    name: 'n',
    devices: {
      disk: { type: 'file', path: './disk.img', size: 4 * MiB },
      ro: { type: 'file', path: './ro.img', size: 1 * MiB },
      sec: { type: 'memory', size: 1 * MiB },
      far: { type: 'memory', size: 1 * MiB },
    },
    exports: [{ device: 'disk' }, { device: 'ro', readOnly: true }, { device: 'sec', token: 'secret' }, { device: 'far', allow: ['10.0.0.0/8'] }],
  })
  const port = Number(/:(\d+)\//.exec(nbd('disk'))?.[1])
  const c = new OptionClient(port)
  t.teardown(() => c.end())
  const greeting = await c.take(18)
  t.is(greeting?.subarray(0, 16).toString('latin1'), 'NBDMAGICIHAVEOPT')
  t.is(greeting?.readUInt16BE(16), 3, 'handshake flags: FIXED_NEWSTYLE and NO_ZEROES')

  c.send(OPT.LIST)
  const list = await c.replies()
  t.deepEqual(list.map(r => r.type), [REP.SERVER, REP.SERVER, REP.ACK])
  t.deepEqual(list.slice(0, 2).map(r => r.data.subarray(4, 4 + r.data.readUInt32BE(0)).toString()), ['disk', 'ro'], 'neither the token export nor the one whose allow list refuses us')

  c.send(OPT.INFO, infoRequest('ro', [1 /* NBD_INFO_NAME */, 3 /* NBD_INFO_BLOCK_SIZE */]))
  const info = await c.replies()
  t.is(info[info.length - 1].type, REP.ACK)
  const infos = new Map(info.filter(r => r.type === REP.INFO).map(r => [r.data.readUInt16BE(0), r.data]))
  const exportInfo = infos.get(0) as Buffer
  t.is(exportInfo.readUInt32BE(2) * 2 ** 32 + exportInfo.readUInt32BE(6), 1 * MiB, 'NBD_INFO_EXPORT carries the size')
  const flags = exportInfo.readUInt16BE(10)
  t.true((flags & 1) !== 0 && (flags & 2) !== 0, 'HAS_FLAGS and READ_ONLY')
  t.is((flags & 64), 0, 'no WRITE_ZEROES on a read-only export')
  t.is(infos.get(1)?.subarray(2).toString(), 'ro', 'NBD_INFO_NAME when asked')
  const block = infos.get(3) as Buffer
  t.deepEqual([block.readUInt32BE(2), block.readUInt32BE(6), block.readUInt32BE(10)], [1, 4096, 1 * MiB], 'minimum, preferred (the file device\'s 4 KiB blocks) and maximum (the pool buffer) block size')

  const refused = async (name: string): Promise<{ type: number, message: string }> => {
    c.send(OPT.INFO, infoRequest(name))
    const [r] = await c.replies()
    return { type: r.type, message: r.data.toString() }
  }
  t.deepEqual(await refused('nope'), { type: REP.ERR_UNKNOWN, message: "no export named 'nope'" })
  const far = await refused('far')
  t.is(far.type, REP.ERR_POLICY)
  t.regex(far.message, /not in the allow list of export 'far'/)
  const sec = await refused('sec')
  t.is(sec.type, REP.ERR_POLICY)
  t.regex(sec.message, /needs a token/)

  for (const option of [OPT.STARTTLS, 0x1234]) {
    c.send(option)
    const [r] = await c.replies()
    t.deepEqual([r.option, r.type], [option, REP.ERR_UNSUP], `option ${option} is not supported`)
  }
  c.send(OPT.LIST_META_CONTEXT)
  t.is((await c.replies())[0].type, REP.ERR_INVALID, 'LIST_META_CONTEXT without its export name is invalid')
  c.send(OPT.LIST, Buffer.from('junk'))
  t.is((await c.replies())[0].type, REP.ERR_INVALID, 'LIST with data is invalid')
  c.send(OPT.INFO, Buffer.from([0, 0, 0, 9, 1]))
  t.is((await c.replies())[0].type, REP.ERR_INVALID, 'a malformed INFO is invalid, and the negotiation goes on')

  c.send(OPT.ABORT)
  const [ack] = await c.replies()
  t.deepEqual([ack.option, ack.type], [OPT.ABORT, REP.ACK])
  t.is(await c.take(1), null, 'the server closes the connection after acknowledging ABORT')
  t.is((await run('nbdinfo', [nbd('disk')])).code, 0, 'and keeps serving')
})

test('option phase: an INFO asking for NBD_INFO_NAME thousands of times is answered with one NAME (no amplification)', async t => {
  const { nbd } = await rig(t, fileNode(4 * MiB))
  const port = Number(/:(\d+)\//.exec(nbd('disk'))?.[1])
  const c = new OptionClient(port)
  t.teardown(() => c.end())
  await c.take(18)
  c.send(OPT.INFO, infoRequest('disk', Array.from({ length: 30000 }, (_, i) => i % 7 === 0 ? 3 : 1)))
  const info = await c.replies()
  t.deepEqual(info.map(r => r.type), [REP.INFO, REP.INFO, REP.INFO, REP.ACK])
  t.deepEqual(info.slice(0, 3).map(r => r.data.readUInt16BE(0)).sort(), [0, 1, 3], 'EXPORT, NAME and BLOCK_SIZE once each')
  c.send(OPT.GO, infoRequest('disk', [1, 1, 1]))
  const go = await c.replies()
  t.is(go.filter(r => r.type === REP.INFO && r.data.readUInt16BE(0) === 1).length, 1)
  t.is(go[go.length - 1].type, REP.ACK)
})

clientTest('nbdsh: FUA writes, FLUSH, WRITE_ZEROES and TRIM land (a file export trims by punching holes); READ and WRITE above the maximum get EOVERFLOW and the connection goes on', async t => {
  const { nbd, node } = await rig(t, {
    name: 'n',
    devices: { disk: { type: 'file', path: './disk.img', size: 4 * MiB }, mem: { type: 'memory', size: 4 * MiB } },
    exports: [{ device: 'disk' }, { device: 'mem' }],
  })
  // libnbd's argument order is (count, offset).
  const script = `
import re
for name in ["mem", "disk"]:
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.connect_uri("${nbd('')}".rstrip("/") + "/" + name)
    print(name, "flags:", h.can_fua(), h.can_flush(), h.can_zero(), h.can_trim(), h.can_multi_conn())
    h.pwrite(b"a" * 262144, 0, nbd.CMD_FLAG_FUA)
    h.flush()
    h.zero(8192, 4096)
    h.zero(4096, 65536, nbd.CMD_FLAG_FUA)
    if h.can_trim():
        h.trim(16384, 131072)
    else:
        try:
            h.trim(4096, 0)
            print(name, "trim: no error")
        except nbd.Error as e:
            print(name, "trim:", e.errno)
    d = h.pread(262144, 0)
    print(name, "zeros:", [(m.start(), m.end() - m.start()) for m in re.finditer(b"\\0+", d)])
    for what, call in [("read", lambda: h.pread(2 * 1048576, 0)), ("write", lambda: h.pwrite(b"x" * (2 * 1048576), 0)), ("zero-past-end", lambda: h.zero(8192, 4 * 1048576 - 4096))]:
        try:
            call()
            print(name, what, "no error")
        except nbd.Error as e:
            print(name, what, e.errno)
    print(name, "after:", h.pread(4096, 0) == b"a" * 4096)
    h.shutdown()
`
  const r = await run('nbdsh', ['-c', script])
  t.is(r.code, 0, r.stderr)
  t.regex(r.stdout, /mem flags: True True True True True/)
  t.regex(r.stdout, /disk flags: True True True True True/)
  for (const name of ['mem', 'disk']) t.regex(r.stdout, new RegExp(`${name} zeros: \\[\\(4096, 8192\\), \\(65536, 4096\\), \\(131072, 16384\\)\\]`))
  for (const name of ['mem', 'disk']) {
    t.regex(r.stdout, new RegExp(`${name} read EOVERFLOW`))
    t.regex(r.stdout, new RegExp(`${name} write EOVERFLOW`))
    t.regex(r.stdout, new RegExp(`${name} zero-past-end EINVAL`))
    t.regex(r.stdout, new RegExp(`${name} after: True`))
  }
  const s = await node.status()
  t.is(s.pool.free, s.pool.count, 'every pool buffer is back')
})

clientTest('replies leave as requests complete: a READ from a slow member is answered after a later READ from a fast one; while a dst node holds the write lease, NBD clients see the export read-only; on SIGTERM the READ in flight is answered and later requests get ESHUTDOWN', async t => {
  const dir = tempDir('dst-nbd-order-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const leaf = await startNode(dir, { name: 'leaf', dataDir: './state-leaf', nbd: '127.0.0.1:0', devices: { disk: { type: 'file', path: './leaf.img', size: 1 * MiB } }, exports: [{ device: 'disk' }] })
  t.teardown(() => leaf.kill())
  const proxy = await FaultProxy.start({ target: { host: '127.0.0.1', port: leaf.port } })
  t.teardown(() => proxy.close())
  const top = await startNode(dir, {
    name: 'top', dataDir: './state-top', nbd: '127.0.0.1:0',
    devices: {
      far: { type: 'remote', url: `dst://127.0.0.1:${proxy.port}/disk` },
      near: { type: 'memory', size: 1 * MiB },
      lin: { type: 'linear', members: ['far', 'near'] },
    },
    exports: [{ device: 'lin' }],
  })
  t.teardown(() => top.kill())
  const port = Number(/nbd {5}nbd:\/\/127\.0\.0\.1:(\d+)\//.exec(top.output())?.[1])
  proxy.delay(300)
  const c = new OptionClient(port)
  t.teardown(() => c.end())
  await c.take(18)
  c.send(OPT.EXPORT_NAME, Buffer.from('lin'))
  const tail = await c.take(10)
  t.is(tail?.readUInt32BE(4), 2 * MiB, 'the linear array is both members long')
  c.request(0, 1, 4096, 4096) // READ from far: 300 ms each way through the proxy
  c.request(0, 2, MiB + 4096, 4096) // READ from near: at once
  const first = await c.simpleReply()
  t.deepEqual(first, { handle: 2, errno: 0 }, 'the later, faster READ is answered first')
  await c.take(4096)
  const second = await c.simpleReply()
  t.deepEqual(second, { handle: 1, errno: 0 })
  t.not(await c.take(4096), null)
  proxy.delay(0)

  // The top node writes to the leaf's export under its write lease: NBD clients of the leaf may only read.
  const leafNbd = /nbd {5}(nbd:\/\/\S+)/.exec(leaf.output())?.[1] as string
  const info = JSON.parse((await run('nbdinfo', ['--json', leafNbd])).stdout) as { exports: Array<Record<string, unknown>> }
  t.is(info.exports[0].is_read_only, true)
  const w = await run('nbdsh', ['-c', `h.set_strict_mode(0)\nh.connect_uri("${leafNbd}")\ntry:\n    h.pwrite(b"x" * 512, 0)\n    print("write: no error")\nexcept nbd.Error as e:\n    print("write:", e.errno)\nprint("read:", len(h.pread(512, 0)))\nh.shutdown()`])
  t.is(w.code, 0, w.stderr)
  t.regex(w.stdout, /write: EPERM/)
  t.regex(w.stdout, /read: 512/)

  // SIGTERM with a READ in flight: that READ is answered, a request sent after the signal gets ESHUTDOWN. An idle
  // client that never closes does not keep the node from exiting.
  const idle = new OptionClient(port)
  t.teardown(() => idle.end())
  await idle.take(18)
  idle.send(OPT.EXPORT_NAME, Buffer.from('lin'))
  t.not(await idle.take(10), null)
  proxy.delay(300)
  c.request(0, 3, 8192, 4096)
  await new Promise(resolve => setTimeout(resolve, 100))
  top.proc.kill('SIGTERM')
  await new Promise(resolve => setTimeout(resolve, 150))
  c.request(0, 4, MiB, 4096)
  t.deepEqual(await c.simpleReply(), { handle: 4, errno: 108 }, 'NBD_ESHUTDOWN for the request that came after the signal')
  t.deepEqual(await c.simpleReply(), { handle: 3, errno: 0 }, 'the READ in flight is answered')
  t.not(await c.take(4096), null)
  c.end()
  await until('the node to exit after its last client left', () => top.proc.exitCode !== null, 10000)
  t.is(top.proc.exitCode, 0, `the node exits cleanly: ${top.output()}`)
  t.is(await idle.take(1), null, 'the idle client was disconnected')
})

clientTest('dst export FILE --nbd serves the file to NBD clients; --read-only is read-only there too', async t => {
  const dir = tempDir('dst-nbd-cli-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'plain.img')
  const data = randomBytes(2 * MiB)
  fs.writeFileSync(file, data)
  const rw = await startExport([file, '--listen', '127.0.0.1:0', '--nbd', '127.0.0.1:0', '--name', 'plain'])
  t.teardown(() => rw.kill())
  const uri = /nbd {5}(nbd:\/\/\S+)/.exec(rw.output())?.[1] as string
  t.regex(uri, /\/plain$/)
  const out = path.join(dir, 'out.raw')
  const get = await run('nbdcopy', [uri, out])
  t.is(get.code, 0, get.stderr)
  t.true(fs.readFileSync(out).equals(data))
  const put = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3c 4096 8192', uri])
  t.is(put.code, 0, put.stderr)
  await rw.stop()
  t.true(fs.readFileSync(file).subarray(4096, 12288).equals(Buffer.alloc(8192, 0x3c)), 'the write reached the file')
  const ro = await startExport([file, '--listen', '127.0.0.1:0', '--nbd', '127.0.0.1:0', '--read-only'])
  t.teardown(() => ro.kill())
  const roUri = /nbd {5}(nbd:\/\/\S+)/.exec(ro.output())?.[1] as string
  const info = JSON.parse((await run('nbdinfo', ['--json', roUri])).stdout) as { exports: Array<Record<string, unknown>> }
  t.is(info.exports[0].is_read_only, true)
  t.is(info.exports[0]['export-size'], 2 * MiB)
})
