// The NBD server against real clients from Debian (qemu-img, qemu-io, nbdinfo, nbdsh, nbdcopy, fio), never written
// here, on files, remote devices and arrays. `.ci/run` installs them.

import test from 'ava'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as path from 'node:path'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { startNode, tempDir, type RunningNode } from '../helpers/node-process'
import { freePort } from '../helpers/ports'
import { until } from '../helpers/wait'

const MiB = 1024 * 1024
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

test('nbdinfo lists the exports and reports size, flags and block sizes', async t => {
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

test('qemu-img convert of a random image onto an export and back is byte-identical', async t => {
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

test('nbdsh: a read past the end gets EINVAL and the same connection still works; a write to a read-only export gets EPERM', async t => {
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

test('a broken handshake, garbage instead of an option, or a bad request magic closes that connection only; the server keeps serving', async t => {
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
  const name = Buffer.from('disk')
  const opt = Buffer.alloc(16)
  Buffer.from('IHAVEOPT').copy(opt, 0)
  opt.writeUInt32BE(1, 8)
  opt.writeUInt32BE(name.length, 12)
  const badRequest = Buffer.alloc(28, 0xee)
  const afterExport = await talk(Buffer.concat([Buffer.from([0, 0, 0, 3]), opt, name, badRequest]))
  t.is(afterExport.length, 18 + 10, 'greeting and export reply, then the connection closes without a reply')
  t.is(afterExport.readUInt32BE(18 + 4), 4 * MiB, 'the export reply carried the size')
  const info = await run('nbdinfo', [nbd('disk')])
  t.is(info.code, 0, 'a well-behaved client is still served')
  t.is(node.proc.exitCode, null)
})

test('qemu-io writes a pattern and reads it back through a mirror array', async t => {
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

test('fio (nbd engine) with verify=crc32c on a mirror of two remote nodes', async t => {
  const dir = tempDir('dst-nbd-fio-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const leaves: RunningNode[] = []
  t.teardown(async () => { await Promise.all(leaves.map(n => n.kill())) })
  for (const name of ['l1', 'l2']) {
    leaves.push(await startNode(dir, { name, dataDir: `./state-${name}`, devices: { disk: { type: 'file', path: `./${name}.img`, size: 32 * MiB } }, exports: [{ device: 'disk' }] }))
  }
  const top = await startNode(dir, {
    name: 'top', dataDir: './state-top', nbd: '127.0.0.1:0',
    devices: {
      a: { type: 'remote', url: leaves[0].url('disk') },
      b: { type: 'remote', url: leaves[1].url('disk') },
      m: { type: 'mirror', members: ['a', 'b'] },
    },
    exports: [{ device: 'm' }],
  })
  t.teardown(() => top.kill())
  const port = /nbd {5}nbd:\/\/127\.0\.0\.1:(\d+)\//.exec(top.output())?.[1]
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

test('fio (nbd engine) with verify on a mirror sees no error while one leaf is killed and restarted; the legs end identical', async t => {
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

test('clients that vanish mid-request (inside a WRITE payload, with READ replies unread) give every pool buffer back; the node keeps serving', async t => {
  const { nbd, node } = await rig(t, fileNode(16 * MiB, { pool: { count: 8, size: '1MiB' } }))
  const port = Number(/:(\d+)\//.exec(nbd('disk'))?.[1])
  const status = async (): Promise<any> => await node.status()
  // Fixed newstyle with NO_ZEROES, then NBD_OPT_EXPORT_NAME: the server's reply is 18 + 10 bytes.
  const name = Buffer.from('disk')
  const opt = Buffer.alloc(16)
  Buffer.from('IHAVEOPT').copy(opt, 0)
  opt.writeUInt32BE(1, 8)
  opt.writeUInt32BE(name.length, 12)
  const handshake = Buffer.concat([Buffer.from([0, 0, 0, 3]), opt, name])
  const request = (type: number, offset: number, length: number, handle: number): Buffer => {
    const r = Buffer.alloc(28)
    r.writeUInt32BE(0x25609513, 0)
    r.writeUInt16BE(type, 6)
    r.writeUInt32BE(handle, 12)
    r.writeUInt32BE(offset, 20)
    r.writeUInt32BE(length, 24)
    return r
  }
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
