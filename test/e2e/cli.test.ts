// The `dst` command line (tools/cli/cli.ts, tools/cli/copy.ts, tools/cli/status.ts) run as a real process: help on every verb,
// usage errors exit 2, `dst copy` moves bytes exactly between files, stdin/stdout and dst:// exports (windows set by
// --offset/--length, nothing written when the copy would pass the end), and `dst status` draws a node.
// The copy tests share one node with one export each, killed by its pid when the file's tests are done.

import test from 'ava'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { randomBytes } from 'node:crypto'
import { runDst as spawnDst, startNode, tempDir, type RunningNode } from '../helpers/node-process'
import { freePort } from '../helpers/ports'

const KiB = 1024
const MiB = 1024 * KiB

let dir: string
let node: RunningNode
const files: Record<string, string> = {}
const sizes: Record<string, number> = { big: 64 * MiB, pipe: 8 * MiB, window: 8 * MiB, small: 1 * MiB, left: 2 * MiB, right: 2 * MiB, secret: 1 * MiB }
const TOKEN = 'cli-secret'

test.before(async () => {
  dir = tempDir('dst-cli-')
  for (const [name, size] of Object.entries(sizes)) {
    files[name] = path.join(dir, `${name}.img`)
    // `big` starts sparse; the others hold random bytes so "unchanged" is a real check.
    if (name === 'big') fs.writeFileSync(files[name], Buffer.alloc(0)); else fs.writeFileSync(files[name], randomBytes(size))
  }
  node = await startNode(dir, {
    name: 'cli',
    devices: {
      ...Object.fromEntries(Object.entries(sizes).map(([name, size]) => [name, { type: 'file', path: files[name], size }])),
      scratch: { type: 'memory', size: '2MiB' },
      l1: { type: 'memory', size: '1MiB' },
      l2: { type: 'memory', size: '1MiB' },
      joined: { type: 'linear', members: ['l1', 'l2'] },
    },
    exports: [
      ...Object.keys(sizes).map(device => device === 'secret' ? { device, token: TOKEN } : { device }),
      { device: 'scratch', readOnly: true },
      { device: 'joined' },
    ],
  })
})

test.after.always(async () => {
  await node?.kill()
})

// Each `dst` process costs a second or more of CPU to start; with the tests of this file all running at once, an
// unbounded number of them would starve each other past runDst's own timeout on a small machine.
const slots = Math.max(2, os.availableParallelism())
let running = 0
const waiting: Array<() => void> = []
async function runDst (...args: Parameters<typeof spawnDst>): ReturnType<typeof spawnDst> {
  while (running >= slots) await new Promise<void>(resolve => waiting.push(resolve))
  running++
  try {
    return await spawnDst(...args)
  } finally {
    running--
    waiting.shift()?.()
  }
}

const VERBS = ['node', 'export', 'copy', 'status']

test('dst --help prints the verbs and exits 0', async t => {
  const r = await runDst(['--help'])
  t.is(r.code, 0, r.stderr)
  const out = r.stdout.toString()
  t.regex(out, /usage: dst <verb>/)
  for (const verb of VERBS) t.regex(out, new RegExp(`^  ${verb} `, 'm'))
  t.is(r.stderr, '')
})

for (const verb of VERBS) {
  test(`dst ${verb} --help prints the verb's usage and exits 0`, async t => {
    const r = await runDst([verb, '--help'])
    t.is(r.code, 0, r.stderr)
    t.regex(r.stdout.toString(), new RegExp(`^usage: dst ${verb}`))
    t.regex(r.stdout.toString(), /--help/)
    t.is(r.stderr, '')
  })
}

test('dst --version and -V print package.json\'s version and exit 0', async t => {
  const version = (JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string }).version
  for (const flag of ['--version', '-V']) {
    const r = await runDst([flag])
    t.is(r.code, 0, r.stderr)
    t.is(r.stdout.toString(), `dst ${version}\n`, flag)
    t.is(r.stderr, '')
  }
})

test('an unknown verb exits 2 with a message on stderr', async t => {
  const r = await runDst(['frobnicate'])
  t.is(r.code, 2)
  t.regex(r.stderr, /unknown verb 'frobnicate'/)
  t.is(r.stdout.length, 0)
  const none = await runDst([])
  t.is(none.code, 2, 'no verb at all is a usage error too')
  t.regex(none.stdout.toString(), /usage: dst <verb>/)
})

test('bad options exit 2 with a message naming the problem', async t => {
  const src = path.join(dir, 'bad-options-src.bin')
  fs.writeFileSync(src, randomBytes(4096))
  const badJson = path.join(dir, 'bad.json')
  fs.writeFileSync(badJson, '{ "name": ')
  const cases: Array<[string[], RegExp]> = [
    [['copy', '--bogus', src, node.url('small')], /bogus/],
    [['copy', src], /SRC and DST/],
    [['copy', src, path.join(dir, 'x.bin'), '--offset', '1'], /--offset is the byte offset on a dst:\/\/ side/],
    [['copy', src, node.url('small'), '--chunk', '1'], /--chunk/],
    [['copy', src, node.url('small'), '--offset', 'lots'], /--offset/],
    [['copy', src, node.url('small'), '--in-flight', '0'], /--in-flight/],
    [['status', 'not-a-url'], /not a node address/],
    [['status', '--json', 'http://127.0.0.1:1', 'extra'], /unexpected argument/],
    [['node'], /--config/],
    [['node', '--config', path.join(dir, 'missing.json')], /cannot read/],
    [['export', '--listen', '127.0.0.1:0'], /FILE/],
    [['export', path.join(dir, 'e.img'), '--size', '1MiB'], /--listen/],
    [['export', path.join(dir, 'e.img'), '--listen', '127.0.0.1:0', '--size', 'huge'], /--size/],
    [['export', path.join(dir, 'e.img'), '--listen', '127.0.0.1:0', '--read-only'], /does not exist/],
    [['node', '--config', badJson], /not valid JSON/],
  ]
  const results = await Promise.all(cases.map(([args]) => runDst(args)))
  for (const [i, r] of results.entries()) {
    const [args, message] = cases[i]
    t.is(r.code, 2, `dst ${args.join(' ')}: ${r.stderr}`)
    t.regex(r.stderr, message, `dst ${args.join(' ')}`)
    t.regex(r.stderr, /^dst /, 'the message names the command')
  }
  t.false(fs.existsSync(path.join(dir, 'e.img')), 'a refused export creates no file')
})

test('dst copy moves 64 MiB of random data into dst:// and back out, byte for byte', async t => {
  const src = path.join(dir, 'big-src.bin')
  const back = path.join(dir, 'big-back.bin')
  const data = randomBytes(64 * MiB)
  fs.writeFileSync(src, data)
  const up = await runDst(['copy', src, node.url('big'), '--no-progress'])
  t.is(up.code, 0, up.stderr)
  t.true(fs.readFileSync(files.big).equals(data), 'the exported file holds the data')
  // Chunks larger than the export's maxRequest (1 MiB) are split by the client.
  const down = await runDst(['copy', node.url('big'), back, '--no-progress', '--chunk', '4MiB', '--in-flight', '4'])
  t.is(down.code, 0, down.stderr)
  const got = fs.readFileSync(back)
  t.is(got.length, data.length)
  t.true(got.equals(data), 'the copy back equals the source')
})

test('dst copy from stdin to dst:// and from dst:// to stdout', async t => {
  const data = randomBytes(3 * MiB + 777) // not a whole number of chunks
  const before = fs.readFileSync(files.pipe)
  const up = await runDst(['copy', '-', node.url('pipe')], { input: data })
  t.is(up.code, 0, up.stderr)
  const after = fs.readFileSync(files.pipe)
  t.true(after.subarray(0, data.length).equals(data))
  t.true(after.subarray(data.length).equals(before.subarray(data.length)), 'bytes past the copy are untouched')

  const down = await runDst(['copy', node.url('pipe'), '-', '--length', String(data.length)])
  t.is(down.code, 0, down.stderr)
  t.is(down.stdout.length, data.length)
  t.true(down.stdout.equals(data))

  const all = await runDst(['copy', node.url('pipe'), '-'])
  t.is(all.code, 0, all.stderr)
  t.is(all.stdout.length, sizes.pipe, 'without --length the whole export')
  t.true(all.stdout.equals(after))

  const window = await runDst(['copy', node.url('pipe'), '-', '--offset', '1000', '--length', '5000'])
  t.is(window.code, 0, window.stderr)
  t.true(window.stdout.equals(after.subarray(1000, 6000)))
})

test('dst copy --offset and --length copy a window at an offset of the export', async t => {
  const src = path.join(dir, 'window-src.bin')
  const data = randomBytes(2 * MiB)
  fs.writeFileSync(src, data)
  const before = fs.readFileSync(files.window)
  const offset = 1 * MiB + 12345 // not block aligned
  const length = 300001
  const up = await runDst(['copy', src, node.url('window'), '--offset', String(offset), '--length', String(length)])
  t.is(up.code, 0, up.stderr)
  const after = fs.readFileSync(files.window)
  t.true(after.subarray(offset, offset + length).equals(data.subarray(0, length)))
  t.true(after.subarray(0, offset).equals(before.subarray(0, offset)), 'bytes before the window are untouched')
  t.true(after.subarray(offset + length).equals(before.subarray(offset + length)), 'bytes after the window are untouched')

  const out = path.join(dir, 'window-out.bin')
  const down = await runDst(['copy', node.url('window'), out, '--offset', String(offset), '--length', String(length)])
  t.is(down.code, 0, down.stderr)
  const got = fs.readFileSync(out)
  t.is(got.length, length)
  t.true(got.equals(data.subarray(0, length)))

  // Sizes with units work too.
  const unit = await runDst(['copy', node.url('window'), '-', '--offset', '4KiB', '--length', '1KiB'])
  t.is(unit.code, 0, unit.stderr)
  t.true(unit.stdout.equals(after.subarray(4096, 5120)))
})

test('dst copy between two dst:// exports applies --offset on both sides', async t => {
  const left = fs.readFileSync(files.left)
  const before = fs.readFileSync(files.right)
  const offset = 100000
  const length = 700001
  const r = await runDst(['copy', node.url('left'), node.url('right'), '--offset', String(offset), '--length', String(length), '--chunk', '64KiB'])
  t.is(r.code, 0, r.stderr)
  const after = fs.readFileSync(files.right)
  t.true(after.subarray(offset, offset + length).equals(left.subarray(offset, offset + length)))
  t.true(after.subarray(0, offset).equals(before.subarray(0, offset)))
  t.true(after.subarray(offset + length).equals(before.subarray(offset + length)))
  t.true(fs.readFileSync(files.left).equals(left), 'the source export is unchanged')
})

test('dst copy --token reaches a token-protected export; without it the copy fails with the refusal', async t => {
  const data = randomBytes(300000)
  const before = fs.readFileSync(files.secret)
  const refused = await runDst(['copy', '-', node.url('secret')], { input: data })
  t.is(refused.code, 1)
  t.regex(refused.stderr, /refused \(401\).*needs a token/)
  const wrong = await runDst(['copy', '-', node.url('secret'), '--token', 'nope'], { input: data })
  t.is(wrong.code, 1)
  t.regex(wrong.stderr, /refused \(401\).*wrong token/)
  t.true(fs.readFileSync(files.secret).equals(before), 'a refused copy writes nothing')

  const ok = await runDst(['copy', '-', node.url('secret'), '--token', TOKEN], { input: data })
  t.is(ok.code, 0, ok.stderr)
  const out = await runDst(['copy', node.url('secret'), '-', '--token', TOKEN, '--length', String(data.length)])
  t.is(out.code, 0, out.stderr)
  t.true(out.stdout.equals(data))
  t.true(fs.readFileSync(files.secret).subarray(0, data.length).equals(data))
})

test('copying past the end of the export fails with exit 1, a clear message, and writes nothing', async t => {
  const before = fs.readFileSync(files.small)
  const src = path.join(dir, 'past-src.bin')
  fs.writeFileSync(src, randomBytes(2 * MiB))

  const tooBig = await runDst(['copy', src, node.url('small')])
  t.is(tooBig.code, 1, tooBig.stderr)
  t.regex(tooBig.stderr, /would pass its end/)
  t.regex(tooBig.stderr, /1048576 bytes fit/)

  const straddles = await runDst(['copy', src, node.url('small'), '--offset', String(1 * MiB - 100), '--length', '200'])
  t.is(straddles.code, 1, straddles.stderr)
  t.regex(straddles.stderr, /at offset 1048476 would pass its end \(100 bytes fit\)/)

  const short = await runDst(['copy', src, node.url('window'), '--length', '3MiB'])
  t.is(short.code, 1, short.stderr)
  t.regex(short.stderr, /3145728 bytes asked for, only 2097152 available/)

  const beyond = await runDst(['copy', src, node.url('small'), '--offset', '2MiB', '--length', '1'])
  t.is(beyond.code, 1, beyond.stderr)
  t.regex(beyond.stderr, /past its end/)

  // Reading past the end of the export is refused the same way, and an existing output file is left alone.
  const out = path.join(dir, 'past-out.bin')
  const keep = randomBytes(1000)
  fs.writeFileSync(out, keep)
  const readPast = await runDst(['copy', node.url('small'), out, '--length', '2MiB'])
  t.is(readPast.code, 1, readPast.stderr)
  t.regex(readPast.stderr, /only 1048576 available/)
  t.true(fs.readFileSync(out).equals(keep))

  // A read-only export refuses before anything moves.
  const ro = await runDst(['copy', src, node.url('scratch'), '--length', '4096'])
  t.is(ro.code, 1, ro.stderr)
  t.regex(ro.stderr, /read-only/)

  // From stdin the size is unknown until the end, so the copy fails when it reaches the end of the export.
  const stdin = await runDst(['copy', '-', node.url('small'), '--offset', String(1 * MiB - 10)], { input: randomBytes(100) })
  t.is(stdin.code, 1, stdin.stderr)
  t.regex(stdin.stderr, /outside|pass its end|EINVAL/)

  t.true(fs.readFileSync(files.small).equals(before), 'nothing was written')
})

test('dst status URL prints the device tree and exports; --json is the raw /status', async t => {
  const r = await runDst(['status', node.http])
  t.is(r.code, 0, r.stderr)
  const out = r.stdout.toString()
  t.regex(out, new RegExp(`^node cli \\(127\\.0\\.0\\.1:${node.port}\\)$`, 'm'))
  t.regex(out, /^devices$/m)
  t.regex(out, /^exports$/m)
  t.regex(out, new RegExp(`^[├└]─ big  file  64 MiB  online  ${files.big.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'))
  t.regex(out, /^[├└]─ small  file  1 MiB  online/m)
  t.regex(out, /^├─ scratch  memory  2 MiB  online$/m)
  // An array is drawn with its members under it, and the members are not repeated as roots.
  t.regex(out, /^└─ joined  linear  2 MiB  online\n   ├─ l1  memory  1 MiB  online\n   └─ l2  memory  1 MiB  online$/m)
  t.notRegex(out, /^[├└]─ l[12] /m)
  t.regex(out, new RegExp(`^├─ dst://127\\.0\\.0\\.1:${node.port}/big  device big  read-write  \\d+ connections?$`, 'm'))
  t.regex(out, new RegExp(`^├─ dst://127\\.0\\.0\\.1:${node.port}/scratch  device scratch  read-only`, 'm'))
  t.regex(out, new RegExp(`^└─ dst://127\\.0\\.0\\.1:${node.port}/joined  device joined  read-write`, 'm'))

  const j = await runDst(['status', node.http, '--json'])
  t.is(j.code, 0, j.stderr)
  const s = JSON.parse(j.stdout.toString()) as { name: string, devices: Record<string, { type: string, size: number, state: string, members?: Array<{ name: string }> }>, exports: Array<{ name: string, device: string, readOnly: boolean, url: string }> }
  t.is(s.name, 'cli')
  t.deepEqual(Object.keys(s.devices).sort(), ['big', 'joined', 'l1', 'l2', 'left', 'pipe', 'right', 'scratch', 'secret', 'small', 'window'])
  t.like(s.devices.big, { type: 'file', size: 64 * MiB, state: 'online' })
  t.like(s.devices.joined, { type: 'linear', size: 2 * MiB, state: 'online' })
  t.deepEqual(s.devices.joined.members?.map(m => m.name), ['l1', 'l2'])
  t.deepEqual(s.exports.map(e => e.name).sort(), ['big', 'joined', 'left', 'pipe', 'right', 'scratch', 'secret', 'small', 'window'])
  t.true(s.exports.find(e => e.name === 'scratch')?.readOnly)
  t.is(s.exports.find(e => e.name === 'big')?.url, node.url('big'))

  const port = await freePort() // nothing listens there
  const dead = await runDst(['status', `http://127.0.0.1:${port}`])
  t.is(dead.code, 1)
  t.regex(dead.stderr, new RegExp(`^dst status: http://127\\.0\\.0\\.1:${port}/status: ECONNREFUSED`))
})

// Regression (was a bug in tools/cli/status.ts, fetchStatus): when fetch fails, the message uses `err.cause.code` or else `err.message`, which
// for undici is always the bare "fetch failed"; causes without a code (here "bad port": fetch refuses port 1, as
// browsers do) are dropped, so the user is not told what is wrong. Suggested fix: fall back to `err.cause.message`
// before `err.message`.
test('dst status names the reason when fetch refuses the address', async t => {
  const r = await runDst(['status', 'http://127.0.0.1:1'])
  t.is(r.code, 1)
  t.regex(r.stderr, /bad port/)
})

// ---- issue 12: config edges exit 2 and create nothing; admin input is checked as the config is ---------------------

/** Writes `config` as NAME.json in a fresh folder and runs `dst node --config` on it to completion. */
async function runNodeConfig (t: import('ava').ExecutionContext, config: Record<string, unknown>, setup: (d: string) => void = () => {}): Promise<{ code: number | null, stderr: string, dir: string, ms: number }> {
  const d = tempDir('dst-cli-edge-')
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }))
  setup(d)
  const file = path.join(d, 'edge.json')
  fs.writeFileSync(file, JSON.stringify({ name: 'edge', listen: '127.0.0.1:0', ...config }))
  const started = Date.now()
  const r = await runDst(['node', '--config', file], { timeout: 30000 })
  return { code: r.code, stderr: r.stderr, dir: d, ms: Date.now() - started }
}

test('a file size the filesystem cannot hold ("1000TiB") exits 2 and leaves no file and no dataDir', async t => {
  const r = await runNodeConfig(t, { dataDir: './state', devices: { d: { type: 'file', path: './d.img', size: '1000TiB' } } })
  t.is(r.code, 2, r.stderr)
  t.regex(r.stderr, /file device '.*d\.img': size \d+ is more than this filesystem takes/)
  t.deepEqual(fs.readdirSync(r.dir), ['edge.json'])
})

test('a dataDir that cannot be made (under /proc) exits 2 at once', async t => {
  const r = await runNodeConfig(t, { dataDir: '/proc/dst-no-such/state', devices: { m: { type: 'memory', size: '1MiB' } } })
  t.is(r.code, 2, r.stderr)
  t.regex(r.stderr, /dataDir '\/proc\/dst-no-such\/state': cannot create it: ENOENT/)
  t.true(r.ms < 15000, `took ${r.ms} ms`)
})

test('a remote device at the node\'s own listen address, and one file named twice through a symlink, exit 2', async t => {
  const port = await freePort()
  const self = await runNodeConfig(t, { listen: `127.0.0.1:${port}`, devices: { me: { type: 'remote', url: `dst://localhost:${port}/m` }, m: { type: 'memory', size: '1MiB' } } })
  t.is(self.code, 2, self.stderr)
  t.regex(self.stderr, /devices\.me\.url: "dst:\/\/localhost:\d+\/m" is this node's own listen address/)
  const twice = await runNodeConfig(t, { devices: { a: { type: 'file', path: './a.img' }, b: { type: 'file', path: './link.img' } } }, d => {
    fs.writeFileSync(path.join(d, 'a.img'), Buffer.alloc(4096))
    fs.symlinkSync('a.img', path.join(d, 'link.img'))
  })
  t.is(twice.code, 2, twice.stderr)
  t.regex(twice.stderr, /devices\.b\.path: '.*link\.img' is the same file as device 'a'/)
})

test('admin: bad names and fields are refused with 400 and change nothing; durations like "3s" are accepted; the node restarts fine', async t => {
  const d = tempDir('dst-cli-admin-')
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }))
  const config = {
    name: 'adm', dataDir: './state', reconnectTimeout: '3s', pingInterval: '500ms',
    devices: { a: { type: 'memory', size: '1MiB' }, b: { type: 'memory', size: '1MiB' }, spare: { type: 'memory', size: '1MiB' }, m: { type: 'mirror', members: ['a', 'b'] } },
    exports: [{ device: 'm' }],
  }
  let n = await startNode(d, config)
  t.teardown(async () => { await n.kill() })
  const post = async (action: string, body: Record<string, unknown>): Promise<{ status: number, error: string }> => {
    const res = await fetch(`${n.http}/arrays/m/${action}`, { method: 'POST', body: JSON.stringify(body) })
    return { status: res.status, error: ((await res.json()) as { error: string }).error }
  }
  const badExport = await runDst(['array', 'split', n.http, 'm', 'b', '--export', 'bad name!'])
  t.is(badExport.code, 2, 'the node answered 400: bad usage')
  t.regex(badExport.stderr, /"export": expected a name of letters/)
  const badName = await runDst(['array', 'add', n.http, 'm', 'dst://127.0.0.1:1/x', '--name', '../x'])
  t.is(badName.code, 2, 'the node answered 400: bad usage')
  t.regex(badName.stderr, /"name": expected a name/)
  t.like(await post('split', { device: 'b', export: 'status' }), { status: 400, error: '"export": \'status\' is reserved for the node\'s HTTP pages' })
  t.like(await post('add', { device: 'spare', color: 'red' }), { status: 400 })
  t.like(await post('add', { device: '../spare' }), { status: 400 })
  t.like(await post('add', { device: `dst://127.0.0.1:${n.port}/m` }), { status: 400 })
  t.like(await post('frobnicate', { device: 'b' }), { status: 400 })
  t.like(await post('split', { device: 'b', readOnly: 'yes' }), { status: 400 })
  t.false(fs.existsSync(path.join(d, 'state', 'arrays.json')), 'nothing recorded')
  t.is((await n.status()).devices.m.members.length, 2, 'nothing changed')
  // A good change is recorded, and the node starts again on it.
  const split = await runDst(['array', 'split', n.http, 'm', 'b', '--export', 'snap'])
  t.is(split.code, 0, split.stderr)
  t.is(await n.stop(), 0)
  n = await startNode(d, config)
  t.true((await n.status()).exports.some((e: { name: string }) => e.name === 'snap'))
  // A hand-edited arrays.json that the config could not load is a config error naming the file and the field.
  t.is(await n.stop(), 0)
  const file = path.join(d, 'state', 'arrays.json')
  const recorded = JSON.parse(fs.readFileSync(file, 'utf8'))
  recorded.exports[0].name = 'bad name!'
  fs.writeFileSync(file, JSON.stringify(recorded))
  const bad = await runDst(['node', '--config', path.join(d, 'adm.json')])
  t.is(bad.code, 2)
  t.regex(bad.stderr, /arrays\.json: exports\[0\]\.name: expected a name/)
})
