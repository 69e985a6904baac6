// The CLI a person meets (issue 18), run as real processes: one-line errors in the user's terms with exit 2 for bad
// usage, the nearest option or verb suggested, decimal units refused with the binary one suggested, `dst node --check`,
// node addresses as HOST:PORT, a start banner that lists only what is served, `dst copy` between local files with a
// summary line, and the admin token named by its option.

import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { randomBytes } from 'node:crypto'
import { runDst, startExport, startNode, tempDir } from '../helpers/node-process'
import { freePort } from '../helpers/ports'
import { RemoteDevice } from '../../export/native/remote-device'
import { NbdTestClient } from '../helpers/raw-nbd'
import { until } from '../helpers/wait'

function dirFor (t: { teardown: (fn: () => unknown) => void }): string {
  const dir = tempDir()
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

test('a mistyped option or verb: one line naming it, the nearest known one, and where help is; exit 2', async t => {
  const cases: Array<[string[], string]> = [
    [['copy', '--lenght', '3', 'a', 'b'], "dst copy: unknown option '--lenght' (did you mean --length?); see 'dst copy --help'\n"],
    [['status', '--jsno'], "dst status: unknown option '--jsno' (did you mean --json?); see 'dst status --help'\n"],
    [['export', '--size'], "dst export: --size needs a value; see 'dst export --help'\n"],
    [['export', 'x.img', '--read-only=yes'], "dst export: --read-only takes no value; see 'dst export --help'\n"],
    [['nod'], "dst nod: unknown verb 'nod' (did you mean 'node'?); see 'dst --help'\n"],
    [['export', 'x.img', '--zzzzzz'], "dst export: unknown option '--zzzzzz'; see 'dst export --help'\n"],
  ]
  for (const [args, expected] of cases) {
    const r = await runDst(args)
    t.is(r.code, 2, args.join(' '))
    t.is(r.stderr, expected)
  }
})

test('dst export names the option at fault, never the config it builds, with one prefix', async t => {
  const dir = dirFor(t)
  const file = path.join(dir, 'z.img')
  const cases: Array<[string[], string]> = [
    [[file, '--listen', '127.0.0.1:0'], `dst export: --size: '${file}' does not exist; give --size to create it\n`],
    [[file, '--listen', '127.0.0.1:0', '--size', '1MiB', '--allow', '10.0.0.300/8'], 'dst export: --allow: "10.0.0.300/8" is not an IPv4 or IPv6 address\n'],
    [[file, '--listen', '127.0.0.1:99999', '--size', '1MiB'], 'dst export: --listen: port 99999 is out of range (0..65535)\n'],
    [[file, '--listen', '127.0.0.1:0', '--size', '1GB'], 'dst export: --size: "1GB": decimal units are not taken (did you mean 1GiB?)\n'],
  ]
  for (const [args, expected] of cases) {
    const r = await runDst(['export', ...args])
    t.is(r.code, 2, args.join(' '))
    t.is(r.stderr, expected)
  }
  t.false(fs.existsSync(file), 'nothing was created')
})

test('dst node --check: a valid config says so and starts nothing; a bad one fails as a start would (exit 2, same message)', async t => {
  const dir = dirFor(t)
  const port = await freePort()
  const good = path.join(dir, 'good.json')
  fs.writeFileSync(good, JSON.stringify({ name: 'n1', listen: `127.0.0.1:${port}`, dataDir: './state', devices: { d: { type: 'file', path: './d.img', size: '1MiB' }, m: { type: 'memory', size: '1MiB' }, l: { type: 'linear', members: ['d', 'm'] } }, exports: [{ device: 'l' }] }))
  const ok = await runDst(['node', '--check', '--config', good])
  t.is(ok.code, 0, ok.stderr)
  t.is(ok.stdout.toString(), `${good}: a valid config for node n1: 3 devices (1 arrays), 1 exports; remote peers are not contacted\n`)
  t.false(fs.existsSync(path.join(dir, 'd.img')), 'no file created')
  t.false(fs.existsSync(path.join(dir, 'state')), 'no dataDir created')
  const bad = path.join(dir, 'bad.json')
  fs.writeFileSync(bad, JSON.stringify({ listen: '127.0.0.1:0', devices: { m: { type: 'memory', size: '12MB' } }, exports: [{ device: 'm' }] }))
  const checked = await runDst(['node', '--check', '--config', bad])
  const started = await runDst(['node', '--config', bad])
  t.is(checked.code, 2)
  t.is(started.code, 2)
  t.is(checked.stderr, started.stderr)
  t.regex(checked.stderr, /devices\.m\.size: "12MB": decimal units are not taken \(did you mean 12MiB\?\)/)
  const none = await runDst(['node', '--check'])
  t.is(none.code, 2)
  t.regex(none.stderr, /--check needs --config FILE/)
})

test('node addresses: dst status takes HOST:PORT; /status says the version and the NBD address; a token export is not offered over NBD, and the banner says why', async t => {
  const dir = dirFor(t)
  const nbd = await freePort()
  const n = await startNode(dir, {
    name: 'tok', listen: '127.0.0.1:0', nbd: `127.0.0.1:${nbd}`, dataDir: './state',
    devices: { a: { type: 'memory', size: '1MiB' }, b: { type: 'memory', size: '1MiB' } },
    exports: [{ device: 'a' }, { device: 'b', token: 'sekrit' }],
  })
  t.teardown(() => n.kill())
  const banner = n.output()
  t.regex(banner, new RegExp(`nbd {5}nbd://127\\.0\\.0\\.1:${nbd}/a`))
  t.regex(banner, /nbd {5}\(export 'b' has a token: native protocol only, NBD cannot present one\)/)
  t.notRegex(banner, /nbd:\/\/[^ ]*\/b\b/)
  const version = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')).version
  const st = await n.status()
  t.is(st.version, version)
  t.is(st.nbd, `127.0.0.1:${nbd}`)
  t.is(st.listen, `127.0.0.1:${n.port}`)
  const shown = await runDst(['status', `127.0.0.1:${n.port}`])
  t.is(shown.code, 0, shown.stderr)
  t.regex(shown.stdout.toString(), /^node tok \(127\.0\.0\.1:\d+\)/)
  // An NBD client asking for the token export is refused, and the node logs why.
  await t.throwsAsync(NbdTestClient.connect(nbd, 'b', 5000))
  await until('the refusal in the log', () => /nbd: 127\.0\.0\.1(:\d+)?: refused: export 'b' needs a token, which NBD cannot present; use dst:\/\//.test(n.output()), 5000)
  const badAddr = await runDst(['status', '127.0.0.1'])
  t.is(badAddr.code, 2)
  t.regex(badAddr.stderr, /'127\.0\.0\.1' is not a node address \(HOST:PORT, \[IPv6\]:PORT or http:\/\/HOST:PORT\)/)
})

test('dst copy between local files, with one summary line on a non-terminal stderr; --quiet silences it; the same file twice is refused', async t => {
  const dir = dirFor(t)
  const a = path.join(dir, 'a.bin')
  const b = path.join(dir, 'b.bin')
  const data = randomBytes(3 * 1024 * 1024 + 17)
  fs.writeFileSync(a, data)
  const r = await runDst(['copy', a, b])
  t.is(r.code, 0, r.stderr)
  t.regex(r.stderr, /^copied 3145745 bytes \(3\.0 MiB\) in \d+\.\d\d s, \d+\.\d MiB\/s\n$/)
  t.true(fs.readFileSync(b).equals(data))
  const q = await runDst(['copy', '--quiet', a, '-'])
  t.is(q.stderr, '')
  t.true(q.stdout.equals(data))
  const same = await runDst(['copy', a, path.join(dir, '.', 'a.bin')])
  t.is(same.code, 2)
  t.regex(same.stderr, /SRC and DST are the same file/)
})

test('admin actions: a node with an admin token names --admin-token; a leg that does not exist is bad usage (exit 2)', async t => {
  const dir = dirFor(t)
  const n = await startNode(dir, {
    name: 'adm', listen: '127.0.0.1:0', dataDir: './state', admin: { token: 'root' },
    devices: { x: { type: 'memory', size: '1MiB' }, y: { type: 'memory', size: '1MiB' }, m: { type: 'mirror', members: ['x', 'y'] } },
    exports: [{ device: 'm' }],
  })
  t.teardown(() => n.kill())
  const noToken = await runDst(['verify', n.http, 'm', '--no-progress'])
  t.is(noToken.code, 1)
  t.is(noToken.stderr, 'dst verify: the node has an admin token: give it with --admin-token T (a verify)\n')
  const wrong = await runDst(['array', 'remove', n.http, 'm', 'x', '--admin-token', 'nope'])
  t.is(wrong.code, 1)
  t.regex(wrong.stderr, /the node refused the admin token given with --admin-token \(dst array remove\)/)
  const noLeg = await runDst(['verify', n.http, 'm', '--repair', '--from', 'nosuch', '--no-progress', '--admin-token', 'root'])
  t.is(noLeg.code, 2, noLeg.stderr)
  t.regex(noLeg.stderr, /no leg 'nosuch'/)
})

test('dst export on an existing file without --size still starts (the message is only for files that do not exist)', async t => {
  const dir = dirFor(t)
  const file = path.join(dir, 'e.img')
  fs.writeFileSync(file, Buffer.alloc(65536))
  const n = await startExport([file, '--listen', '127.0.0.1:0'])
  t.teardown(() => n.kill())
  const st = await n.status()
  t.is(st.devices['e.img'].size, 65536)
})

test('a split leg is exported read-only (a snapshot) unless --writable; both flags at once are bad usage', async t => {
  const dir = dirFor(t)
  const n = await startNode(dir, {
    name: 'snap', listen: '127.0.0.1:0', dataDir: './state',
    devices: { x: { type: 'memory', size: '1MiB' }, y: { type: 'memory', size: '1MiB' }, z: { type: 'memory', size: '1MiB' }, w: { type: 'memory', size: '1MiB' }, m: { type: 'mirror', members: ['x', 'y', 'z', 'w'] } },
    exports: [{ device: 'm' }],
  })
  t.teardown(() => n.kill())
  const ro = await runDst(['array', 'split', n.http, 'm', 'y', '--export', 'snap1'])
  t.is(ro.code, 0, ro.stderr)
  t.regex(ro.stdout.toString(), /exported read-only as dst:\/\/127\.0\.0\.1:\d+\/snap1/)
  const rw = await runDst(['array', 'split', n.http, 'm', 'z', '--export', 'snap2', '--writable'])
  t.is(rw.code, 0, rw.stderr)
  t.regex(rw.stdout.toString(), /exported read-write as/)
  const exports = (await n.status()).exports as Array<{ name: string, readOnly: boolean }>
  t.like(exports.find(e => e.name === 'snap1'), { readOnly: true })
  t.like(exports.find(e => e.name === 'snap2'), { readOnly: false })
  const both = await runDst(['array', 'split', n.http, 'm', 'w', '--export', 'snap3', '--writable', '--read-only'])
  t.is(both.code, 2)
  t.regex(both.stderr, /give --writable or --read-only, not both/)
})

test('dst array add --wait returns once the new leg is in sync; --wait elsewhere is bad usage', async t => {
  const dir = dirFor(t)
  const n = await startNode(dir, {
    name: 'wait', listen: '127.0.0.1:0', dataDir: './state',
    devices: { x: { type: 'memory', size: '32MiB' }, y: { type: 'memory', size: '32MiB' }, z: { type: 'memory', size: '32MiB' }, m: { type: 'mirror', members: ['x', 'y'], resyncRate: '64MiB' } },
    exports: [{ device: 'm' }],
  })
  t.teardown(() => n.kill())
  const r = await runDst(['array', 'add', n.http, 'm', 'z', '--wait'])
  t.is(r.code, 0, r.stderr)
  t.regex(r.stdout.toString(), /leg 'z' added to 'm'.*\nleg 'z' of 'm' is in sync\n$/)
  const legs = (await n.status()).devices.m.members as Array<{ name: string, state: string }>
  t.like(legs.find(l => l.name === 'z'), { state: 'in-sync' })
  const bad = await runDst(['array', 'remove', n.http, 'm', 'z', '--wait'])
  t.is(bad.code, 2)
  t.regex(bad.stderr, /--wait is for add/)
})

test('at start the node logs each live change from dataDir/arrays.json it lays over the config', async t => {
  const dir = dirFor(t)
  const config = {
    name: 'ovl', listen: '127.0.0.1:0', dataDir: './state',
    devices: { x: { type: 'memory', size: '1MiB' }, y: { type: 'memory', size: '1MiB' }, z: { type: 'memory', size: '1MiB' }, m: { type: 'mirror', members: ['x', 'y', 'z'] } },
    exports: [{ device: 'm' }],
  }
  let n = await startNode(dir, config)
  t.teardown(() => n.kill())
  t.notRegex(n.output(), /arrays\.json:/, 'nothing to lay over yet')
  t.is((await runDst(['array', 'split', n.http, 'm', 'z', '--export', 'snap'])).code, 0)
  t.is(await n.stop(), 0)
  n = await startNode(dir, config)
  const log = n.output()
  t.regex(log, /state\/arrays\.json: array 'm' has members x, y \(the config says x, y, z\)/)
  t.regex(log, /state\/arrays\.json: export 'snap' of device 'z' \(read-only\) added/)
})

test('a remote device with readOnly: true connects as a reader: no write lease taken, writes refused', async t => {
  const dir = dirFor(t)
  const leaf = await startNode(dir, { name: 'leaf', listen: '127.0.0.1:0', dataDir: './s-leaf', devices: { d: { type: 'file', path: './d.img', size: '1MiB' } }, exports: [{ device: 'd' }] })
  t.teardown(() => leaf.kill())
  const reader = await startNode(dir, { name: 'reader', listen: '127.0.0.1:0', dataDir: './s-reader', devices: { far: { type: 'remote', url: leaf.url('d'), readOnly: true } }, exports: [{ device: 'far' }] })
  t.teardown(() => reader.kill())
  const st = await reader.status()
  t.is(st.devices.far.writable, false)
  t.is(st.exports[0].readOnly, true)
  const lease = (await leaf.status()).exports[0].lease
  t.is(lease.holder, null, 'the leaf\'s write lease is free')
  t.is(lease.connections, 0)
  // A writer still gets the lease at the leaf, and what it writes is read through the reader.
  const w = await RemoteDevice.open({ host: '127.0.0.1', port: leaf.port, export: 'd' }, { openTimeout: 10000 })
  t.teardown(() => w.close())
  await w.write(0, Buffer.from('writer'))
  await w.flush()
  const r = await RemoteDevice.open({ host: '127.0.0.1', port: reader.port, export: 'far' }, { openTimeout: 10000 })
  t.teardown(() => r.close())
  const into = Buffer.alloc(6)
  await r.read(0, 6, into)
  t.is(into.toString(), 'writer')
  await t.throwsAsync(r.write(0, Buffer.from('nope')), { code: 'DST_ERR_EROFS' })
  const file = path.join(dir, 'bad.json')
  fs.writeFileSync(file, JSON.stringify({ listen: '127.0.0.1:0', devices: { r: { type: 'remote', url: leaf.url('d'), readOnly: 'yes' } }, exports: [] }))
  const bad = await runDst(['node', '--check', '--config', file])
  t.is(bad.code, 2)
  t.regex(bad.stderr, /devices\.r\.readOnly: expected true or false/)
})
