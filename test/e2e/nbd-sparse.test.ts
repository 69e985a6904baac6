// Holes through NBD, against real clients (qemu-img, nbdinfo, nbdcopy, nbdsh) and nbdkit on the same file: structured
// replies, base:allocation block status, trim and zeroes that punch, fast zero, cache, qemu:dirty-bitmap of a mirror
// leg that is down, and the malformed requests a hostile client may send. `.ci/run` installs the tools.

import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { execFile } from 'node:child_process'
import * as net from 'node:net'
import { randomBytes } from 'node:crypto'
import { startNode, tempDir, type RunningNode } from '../helpers/node-process'
import { freePort } from '../helpers/ports'
import { until } from '../helpers/wait'
import { testNeeding, TOOLS } from '../helpers/requires'
import { nbdOption } from '../helpers/raw-nbd'

const KiB = 1024
const MiB = 1024 * KiB
const nbdkit = { command: 'nbdkit', install: 'apt-get install nbdkit' }
const clientTest = testNeeding([...Object.values(TOOLS), nbdkit])
// nbdsh runs the first python3 on PATH, which must be Debian's (it has the nbd module).
const env = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` }

function run (cmd: string, args: string[], timeout = 60000): Promise<{ code: number, stdout: string, stderr: string }> {
  return new Promise(resolve => {
    execFile(cmd, args, { env, timeout, maxBuffer: 16 * MiB }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as unknown as { code?: unknown }).code === 'number' ? (err as unknown as { code: number }).code : 1
      resolve({ code, stdout, stderr })
    })
  })
}

/** The data runs of the sparse test image: [offset, length]. */
const DATA: Array<[number, number]> = [[8 * MiB, 4 * KiB], [20 * MiB, 2 * MiB], [40 * MiB + 64 * KiB, 192 * KiB]]
const SIZE = 64 * MiB
const DATA_BYTES = DATA.reduce((n, [, l]) => n + l, 0)

/** A sparse image with random data in DATA and holes elsewhere; returns its bytes. */
function sparseImage (file: string): Buffer {
  const fd = fs.openSync(file, 'w')
  fs.ftruncateSync(fd, SIZE)
  const whole = Buffer.alloc(SIZE)
  for (const [offset, length] of DATA) {
    const data = randomBytes(length)
    fs.writeSync(fd, data, 0, length, offset)
    data.copy(whole, offset)
  }
  fs.closeSync(fd)
  return whole
}

const allocated = (file: string): number => fs.statSync(file).blocks * 512

interface Rig { dir: string, node: RunningNode, uri: (name: string) => string, bytesRead: (name: string) => Promise<number> }

/** A node serving `devices` over NBD, each exported under its name (or only those in `exported`). */
async function rig (t: { teardown: (fn: () => unknown) => void }, devices: Record<string, unknown>, prepare?: (dir: string) => void, exported = Object.keys(devices)): Promise<Rig> {
  const dir = tempDir('dst-nbd-sparse-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  prepare?.(dir)
  const node = await startNode(dir, { name: 'n', nbd: '127.0.0.1:0', dataDir: './state', devices, exports: exported.map(device => ({ device })) })
  t.teardown(() => node.kill())
  const port = /nbd {5}nbd:\/\/127\.0\.0\.1:(\d+)\//.exec(node.output())?.[1]
  if (port === undefined) throw new Error(`no nbd address printed:\n${node.output()}`)
  const bytesRead = async (name: string): Promise<number> => {
    const text = await (await fetch(`${node.http}/metrics`)).text()
    const m = new RegExp(`dst_bytes_total\\{node="n",export="${name}",direction="read"\\} (\\d+)`).exec(text)
    if (m === null) throw new Error(`no read bytes of '${name}' in /metrics:\n${text}`)
    return Number(m[1])
  }
  return { dir, node, uri: name => `nbd://127.0.0.1:${port}/${name}`, bytesRead }
}

/** `nbdinfo --map` of nbdkit's file plugin over the same file (read-only, on a Unix socket of its own). */
async function nbdkitMap (file: string, context = 'base:allocation'): Promise<string> {
  const r = await run('nbdkit', ['-U', '-', '-r', 'file', file, '--run', `nbdinfo --map=${context} "$uri"`])
  if (r.code !== 0) throw new Error(`nbdkit file: ${r.stderr}`)
  return r.stdout
}

clientTest('nbdinfo --map of a sparse file export equals nbdkit file\'s map of the same file; qemu-img map agrees', async t => {
  const { dir, uri } = await rig(t, { disk: { type: 'file', path: './disk.img' } }, d => sparseImage(path.join(d, 'disk.img')))
  const ours = await run('nbdinfo', ['--map', uri('disk')])
  t.is(ours.code, 0, ours.stderr)
  t.is(ours.stdout, await nbdkitMap(path.join(dir, 'disk.img')))
  t.regex(ours.stdout, /^\s+0\s+8388608\s+3\s+hole,zero$/m)
  t.regex(ours.stdout, /^\s+20971520\s+2097152\s+0\s+data$/m)
  const map = await run('qemu-img', ['map', '--output=json', '-f', 'raw', uri('disk')])
  t.is(map.code, 0, map.stderr)
  const data = (JSON.parse(map.stdout) as Array<{ start: number, length: number, data: boolean }>).filter(e => e.data).map(e => [e.start, e.length])
  t.deepEqual(data, DATA)
})

clientTest('qemu-img convert out of a sparse export keeps the copy sparse and reads only the data; into an empty export, the target stays sparse', async t => {
  let image: Buffer = Buffer.alloc(0)
  const { dir, uri, bytesRead } = await rig(t, {
    disk: { type: 'file', path: './disk.img' },
    empty: { type: 'file', path: './empty.img', size: SIZE },
  }, d => { image = sparseImage(path.join(d, 'disk.img')) })
  const before = await bytesRead('disk')
  const out = path.join(dir, 'out.raw')
  const r = await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri('disk'), out])
  t.is(r.code, 0, r.stderr)
  t.true(fs.readFileSync(out).equals(image), 'the copy holds the same bytes')
  const read = await bytesRead('disk') - before
  t.true(read <= DATA_BYTES + 2 * MiB, `read ${read} bytes of ${SIZE} for ${DATA_BYTES} of data`)
  t.true(allocated(out) <= DATA_BYTES + 1 * MiB, `the copy allocates ${allocated(out)} bytes`)

  const src = path.join(dir, 'src.raw')
  fs.copyFileSync(out, src)
  const w = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, uri('empty')])
  t.is(w.code, 0, w.stderr)
  const target = path.join(dir, 'empty.img')
  t.true(fs.readFileSync(target).equals(image), 'the export received the same bytes')
  t.true(allocated(target) <= DATA_BYTES + 1 * MiB, `the target allocates ${allocated(target)} bytes`)
})

clientTest('nbdcopy out of and into sparse exports: the bytes are the same and both copies stay sparse', async t => {
  let image: Buffer = Buffer.alloc(0)
  const { dir, uri, bytesRead } = await rig(t, {
    disk: { type: 'file', path: './disk.img' },
    empty: { type: 'file', path: './empty.img', size: SIZE },
  }, d => { image = sparseImage(path.join(d, 'disk.img')) })
  const out = path.join(dir, 'out.raw')
  const before = await bytesRead('disk')
  const r = await run('nbdcopy', [uri('disk'), out])
  t.is(r.code, 0, r.stderr)
  t.true(fs.readFileSync(out).equals(image))
  t.true(await bytesRead('disk') - before <= DATA_BYTES + 2 * MiB, 'only the data was read')
  t.true(allocated(out) <= DATA_BYTES + 1 * MiB, `the copy allocates ${allocated(out)} bytes`)
  const w = await run('nbdcopy', [out, uri('empty')])
  t.is(w.code, 0, w.stderr)
  const target = path.join(dir, 'empty.img')
  t.true(fs.readFileSync(target).equals(image))
  t.true(allocated(target) <= DATA_BYTES + 1 * MiB, `the target allocates ${allocated(target)} bytes`)
})

clientTest('nbdsh: block status with and without REQ_ONE, structured reads split at holes, fast zero refused and accepted, trim frees blocks, cache', async t => {
  const { dir, uri } = await rig(t, {
    disk: { type: 'file', path: './disk.img' },
    mem: { type: 'memory', size: 4 * MiB },
  }, d => sparseImage(path.join(d, 'disk.img')))
  const script = `
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri("${uri('disk')}")
print("structured:", h.get_structured_replies_negotiated(), "meta:", h.can_meta_context("base:allocation"), "df:", h.can_df(), "cache:", h.can_cache(), "fast_zero:", h.can_fast_zero(), "trim:", h.can_trim())
def status(flags):
    got = []
    def cb(ctx, offset, entries, err):
        got.append((ctx, offset, list(entries)))
    h.block_status(4 * 1048576, 20 * 1048576 - 65536, cb, flags)
    return got
print("status:", status(0))
print("status one:", status(nbd.CMD_FLAG_REQ_ONE))
chunks = []
def chunk(buf, offset, status, err):
    chunks.append((offset, len(buf), status))
    return 0
buf = bytearray(1048576)
h.pread_structured(1048576, 20 * 1048576 - 524288, chunk)
print("chunks:", chunks)
chunks.clear()
h.pread_structured(1048576, 20 * 1048576 - 524288, chunk, nbd.CMD_FLAG_DF)
print("df chunks:", chunks)
h.zero(65536, 20 * 1048576, nbd.CMD_FLAG_FAST_ZERO)
print("fast zero file: ok")
h.cache(4 * 1048576, 0)
print("cache: ok")
h.flush()
h.shutdown()
m = nbd.NBD()
m.connect_uri("${uri('mem')}")
try:
    m.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO)
    print("fast zero mem: no error")
except nbd.Error as e:
    print("fast zero mem:", e.errno)
m.zero(4096, 0)
print("slow zero mem: ok")
m.shutdown()
`
  const r = await run('nbdsh', ['-c', script])
  t.is(r.code, 0, r.stderr)
  t.regex(r.stdout, /structured: True meta: True df: True cache: True fast_zero: True trim: True/)
  // From 20 MiB - 64 KiB: a hole up to the data at 20 MiB (2 MiB), then a hole; REQ_ONE: the first run only.
  t.regex(r.stdout, /status: \[\('base:allocation', 20905984, \[65536, 3, 2097152, 0, 2031616, 3\]\)\]/)
  t.regex(r.stdout, /status one: \[\('base:allocation', 20905984, \[65536, 3\]\)\]/)
  t.regex(r.stdout, /chunks: \[\(20447232, 524288, 2\), \(20971520, 524288, 1\)\]/, 'a hole chunk (2) then a data chunk (1)')
  t.regex(r.stdout, /df chunks: \[\(20447232, 1048576, 1\)\]/, 'DF: one data chunk')
  t.regex(r.stdout, /fast zero file: ok/)
  t.regex(r.stdout, /cache: ok/)
  t.regex(r.stdout, /fast zero mem: ENOTSUP/)
  t.regex(r.stdout, /slow zero mem: ok/)

  const file = path.join(dir, 'disk.img')
  const before = allocated(file)
  const trim = await run('nbdsh', ['-u', uri('disk'), '-c', 'h.trim(2097152, 20 * 1048576)\nh.flush()'])
  t.is(trim.code, 0, trim.stderr)
  // The fast zero above (may trim: no NO_HOLE) already punched the first 64 KiB of the data at 20 MiB.
  t.is(before - allocated(file), 2 * MiB - 64 * KiB, 'TRIM freed the data it covered')
  const map = await run('nbdinfo', ['--map', uri('disk')])
  t.is(map.stdout, await nbdkitMap(file))
  t.notRegex(map.stdout, /^\s+20971520\s/m, 'the trimmed data is a hole now')
})

clientTest('hostile or mistaken requests: block status without a negotiated context, out of range or of length 0, and flags a command does not take get EINVAL; the connection goes on', async t => {
  const { uri } = await rig(t, { disk: { type: 'file', path: './disk.img', size: 8 * MiB } })
  const script = `
def cb(ctx, offset, entries, err):
    return 0
def chunk(buf, offset, status, err):
    return 0
def attempt(name, call):
    try:
        call()
        print(name, "no error")
    except nbd.Error as e:
        print(name, e.errno)
plain = nbd.NBD()
plain.set_strict_mode(0)
plain.set_request_structured_replies(False)
plain.connect_uri("${uri('disk')}")
attempt("no context", lambda: plain.block_status(65536, 0, cb))
attempt("df without structured", lambda: plain.pread(4096, 0, nbd.CMD_FLAG_DF))
plain.shutdown()
h = nbd.NBD()
h.set_strict_mode(0)
h.add_meta_context("base:allocation")
h.connect_uri("${uri('disk')}")
attempt("past end", lambda: h.block_status(65536, 8 * 1048576, cb))
attempt("length 0", lambda: h.block_status(0, 0, cb))
attempt("read with REQ_ONE", lambda: h.pread(4096, 0, nbd.CMD_FLAG_REQ_ONE))
attempt("write with NO_HOLE", lambda: h.pwrite(b"x" * 4096, 0, nbd.CMD_FLAG_NO_HOLE))
attempt("trim with FAST_ZERO", lambda: h.trim(4096, 0, nbd.CMD_FLAG_FAST_ZERO))
attempt("unknown flag", lambda: h.flush(1 << 9))
attempt("structured read past end", lambda: h.pread_structured(4096, 8 * 1048576, chunk))
print("after:", len(h.pread(4096, 0)))
h.shutdown()
`
  const r = await run('nbdsh', ['-c', script])
  t.is(r.code, 0, r.stderr)
  for (const what of ['no context', 'df without structured', 'past end', 'length 0', 'read with REQ_ONE', 'write with NO_HOLE', 'trim with FAST_ZERO', 'unknown flag', 'structured read past end']) {
    t.regex(r.stdout, new RegExp(`^${what} EINVAL$`, 'm'), what)
  }
  t.regex(r.stdout, /after: 4096/)
})

clientTest('option phase: LIST_META_CONTEXT lists base:allocation (and a mirror\'s qemu:dirty-bitmap contexts); SET_META_CONTEXT needs structured replies first', async t => {
  const { uri } = await rig(t, {
    disk: { type: 'file', path: './disk.img', size: 8 * MiB },
    m1: { type: 'memory', size: 8 * MiB },
    m2: { type: 'memory', size: 8 * MiB },
    mir: { type: 'mirror', members: ['m1', 'm2'] },
  }, undefined, ['disk', 'mir'])
  const script = `
def listed(name, queries):
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri("${uri('')}".rstrip("/") + "/" + name)
    h.set_export_name(name)
    for q in queries:
        h.add_meta_context(q)
    got = []
    h.opt_list_meta_context(lambda ctx: got.append(ctx))
    h.opt_abort()
    return sorted(got)
print("disk all:", listed("disk", []))
print("mir all:", listed("mir", []))
print("mir qemu:", listed("mir", ["qemu:"]))
print("mir one:", listed("mir", ["qemu:dirty-bitmap:m2", "nope:x"]))
h = nbd.NBD()
h.set_request_structured_replies(False)
h.add_meta_context("base:allocation")
h.connect_uri("${uri('disk')}")
print("without structured:", h.can_meta_context("base:allocation"))
h.shutdown()
`
  const r = await run('nbdsh', ['-c', script])
  t.is(r.code, 0, r.stderr)
  t.regex(r.stdout, /disk all: \['base:allocation'\]/)
  t.regex(r.stdout, /mir all: \['base:allocation', 'qemu:dirty-bitmap:m1', 'qemu:dirty-bitmap:m2'\]/)
  t.regex(r.stdout, /mir qemu: \['qemu:dirty-bitmap:m1', 'qemu:dirty-bitmap:m2'\]/)
  t.regex(r.stdout, /mir one: \['qemu:dirty-bitmap:m2'\]/)
  t.regex(r.stdout, /without structured: False/)
})

clientTest('qemu:dirty-bitmap:LEG of a mirror while a leg is down: its dirty extents are the regions written meanwhile; the other leg\'s map is clean', async t => {
  const dir = tempDir('dst-nbd-dirty-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const nodes: RunningNode[] = []
  t.teardown(async () => { await Promise.all(nodes.map(n => n.kill())) })
  const leaves: RunningNode[] = []
  for (const name of ['l1', 'l2']) {
    leaves.push(await startNode(dir, { name, listen: `127.0.0.1:${await freePort()}`, dataDir: `./state-${name}`, devices: { disk: { type: 'file', path: `./${name}.img`, size: 16 * MiB } }, exports: [{ device: 'disk' }] }))
  }
  nodes.push(...leaves)
  const top = await startNode(dir, {
    name: 'top', dataDir: './state-top', nbd: '127.0.0.1:0', pingInterval: 300, reconnectTimeout: 1000,
    devices: { a: { type: 'remote', url: leaves[0].url('disk') }, b: { type: 'remote', url: leaves[1].url('disk') }, m: { type: 'mirror', members: ['a', 'b'], region: '64KiB' } },
    exports: [{ device: 'm' }],
  })
  nodes.push(top)
  const port = /nbd {5}nbd:\/\/127\.0\.0\.1:(\d+)\//.exec(top.output())?.[1] as string
  const uri = `nbd://127.0.0.1:${port}/m`
  const mirror = async (): Promise<any> => (await top.status()).devices.m
  await until('the mirror to be online', async () => (await mirror()).state === 'online')
  await leaves[1].kill()
  // Two writes while b is away: 4 KiB at 1 MiB + 8 KiB (one 64 KiB region) and 100 KiB at 5 MiB (two regions).
  const w = await run('nbdsh', ['-u', uri, '-c', 'h.pwrite(b"x" * 4096, 1048576 + 8192)\nh.pwrite(b"y" * 102400, 5 * 1048576)\nh.flush()'])
  t.is(w.code, 0, w.stderr)
  await until('the mirror to go on without leg b', async () => (await mirror()).state === 'degraded', 15000)
  const b = await run('nbdinfo', ['--map=qemu:dirty-bitmap:b', uri])
  t.is(b.code, 0, b.stderr)
  const dirty = b.stdout.trim().split('\n').map(l => l.trim().split(/\s+/)).filter(f => f[2] === '1').map(f => [Number(f[0]), Number(f[1])])
  t.deepEqual(dirty, [[1 * MiB, 64 * KiB], [5 * MiB, 128 * KiB]], b.stdout)
  const a = await run('nbdinfo', ['--map=qemu:dirty-bitmap:a', uri])
  t.is(a.code, 0, a.stderr)
  t.regex(a.stdout, /^\s+0\s+16777216\s+0\s+clean$/m)
})

/** SET/LIST_META_CONTEXT's data: the export name, then each query. */
function metaQuery (name: string, queries: string[]): Buffer {
  const parts = [Buffer.alloc(4), Buffer.from(name), Buffer.alloc(4)]
  parts[0].writeUInt32BE(Buffer.byteLength(name), 0)
  parts[2].writeUInt32BE(queries.length, 0)
  for (const q of queries) { const l = Buffer.alloc(4); l.writeUInt32BE(Buffer.byteLength(q), 0); parts.push(l, Buffer.from(q)) }
  return Buffer.concat(parts)
}

test('option phase, byte by byte: SET_META_CONTEXT before STRUCTURED_REPLY is ERR_INVALID; after it, a context asked a thousand times is answered once', async t => {
  const { uri } = await rig(t, { disk: { type: 'file', path: './disk.img', size: 1 * MiB } })
  const port = Number(/:(\d+)\//.exec(uri('disk'))?.[1])
  const socket = net.connect(port, '127.0.0.1')
  t.teardown(() => socket.destroy())
  let got = Buffer.alloc(0)
  let wake: (() => void) | null = null
  socket.on('data', c => { got = Buffer.concat([got, c]); wake?.() })
  socket.on('error', () => {})
  const take = async (n: number): Promise<Buffer> => {
    for (let i = 0; got.length < n && i < 200; i++) await new Promise<void>(resolve => { wake = resolve; setTimeout(resolve, 50) })
    if (got.length < n) throw new Error(`wanted ${n} bytes, got ${got.length}`)
    const out = got.subarray(0, n)
    got = got.subarray(n)
    return out
  }
  /** Option replies up to and including the first that is not META_CONTEXT (4): [type, data]. */
  const replies = async (): Promise<Array<[number, Buffer]>> => {
    const out: Array<[number, Buffer]> = []
    for (;;) {
      const head = await take(20)
      const r: [number, Buffer] = [head.readUInt32BE(12), await take(head.readUInt32BE(16))]
      out.push(r)
      if (r[0] !== 4) return out
    }
  }
  await take(18)
  socket.write(Buffer.from([0, 0, 0, 3]))
  socket.write(nbdOption(10, metaQuery('disk', ['base:allocation'])))
  t.deepEqual((await replies()).map(r => r[0]), [0x80000003], 'SET_META_CONTEXT without structured replies: ERR_INVALID')
  socket.write(nbdOption(8))
  t.deepEqual((await replies()).map(r => r[0]), [1], 'STRUCTURED_REPLY: ACK')
  socket.write(nbdOption(10, metaQuery('disk', Array.from({ length: 1000 }, () => 'base:allocation'))))
  const set = await replies()
  t.deepEqual(set.map(r => r[0]), [4, 1], 'one META_CONTEXT, then ACK')
  t.is(set[0][1].subarray(4).toString(), 'base:allocation')
  socket.write(nbdOption(10, metaQuery('nope', ['base:allocation'])))
  t.deepEqual((await replies()).map(r => r[0]), [0x80000006], 'an unknown export: ERR_UNKNOWN')
  socket.write(nbdOption(9, Buffer.from([0, 0, 0, 4, 0x64])))
  t.deepEqual((await replies()).map(r => r[0]), [0x80000003], 'a truncated LIST_META_CONTEXT: ERR_INVALID')
})
