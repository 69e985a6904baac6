// Online verify of a mirror end to end (algorithms/mirror.ts verify, POST /arrays/NAME/verify, `dst verify`): real
// node processes, two leaves exporting files and a third node mirroring them. Bytes are changed on one leaf's file
// behind the array's back; a verify finds exactly those regions on both legs, a repair from the good leg makes the
// files identical again, and /status and /metrics say so. Writes during a verify cause no false mismatch, a mirror of
// local devices is verified on its node's hash workers behind the admin token, the node stays responsive while a large
// verify runs, and a `dst export --digest` export copies in and out byte for byte. Serial: several nodes per test,
// digests on every CPU.

import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { randomBytes } from 'node:crypto'
import { runDst, startExport, startNode, tempDir, type RunningNode } from '../helpers/node-process'
import { between, newSeed, prng, seededBytes } from '../helpers/random'
import { RemoteDevice } from '../../export/native/remote-device'
import { until } from '../helpers/wait'

const KiB = 1024
const MiB = 1024 * KiB
const REGION = MiB // the mirror's default region
const LEG_SIZE = 32 * MiB

interface Tree { dir: string, la: RunningNode, lb: RunningNode, mn: RunningNode, fileA: string, fileB: string }

/** Two leaves exporting files of `legSize` bytes, and a node mirroring them (legs 'a' and 'b') as array 'm'. */
async function startTree (prefix: string, legSize: number): Promise<Tree> {
  const dir = tempDir(prefix)
  const fileA = path.join(dir, 'a.img')
  const fileB = path.join(dir, 'b.img')
  const [la, lb] = await Promise.all([
    startNode(dir, { name: 'la', devices: { disk: { type: 'file', path: fileA, size: legSize } }, exports: [{ device: 'disk' }] }),
    startNode(dir, { name: 'lb', devices: { disk: { type: 'file', path: fileB, size: legSize } }, exports: [{ device: 'disk' }] }),
  ])
  let mn: RunningNode
  try {
    mn = await startNode(dir, {
      name: 'mn', dataDir: './state/mn',
      devices: {
        a: { type: 'remote', url: la.url('disk') },
        b: { type: 'remote', url: lb.url('disk') },
        m: { type: 'mirror', members: ['a', 'b'] },
      },
      exports: [{ device: 'm' }],
    })
  } catch (err) {
    await Promise.all([la.kill(), lb.kill()])
    throw err
  }
  const tree = { dir, la, lb, mn, fileA, fileB }
  // A new array compares (and if needed copies) its second leg once: wait for that to finish.
  try {
    await until('mirror in sync', async () => (await mn.status()).devices.m.state === 'online', 60000)
  } catch (err) {
    await stopTree(tree)
    throw err
  }
  return tree
}

async function stopTree (tree: Tree | undefined): Promise<void> {
  if (tree === undefined) return
  await Promise.all([tree.mn.kill(), tree.la.kill(), tree.lb.kill()])
  fs.rmSync(tree.dir, { recursive: true, force: true })
}

async function metricsOf (n: RunningNode): Promise<string> {
  return await (await fetch(`${n.http}/metrics`)).text()
}

/** One sample from /metrics text; NaN when the line is missing, so a renamed family fails loudly. */
function metric (text: string, name: string, labels: string): number {
  const line = text.split('\n').find(l => l.startsWith(`${name}{${labels}} `))
  return line === undefined ? NaN : Number(line.slice(line.lastIndexOf(' ') + 1))
}

async function postVerify (n: RunningNode, array: string, body: Record<string, unknown>): Promise<{ status: number, body: any }> {
  const res = await fetch(`${n.http}/arrays/${encodeURIComponent(array)}/verify`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  })
  return { status: res.status, body: await res.json() }
}

/** Overwrites `length` bytes of a file at `offset` with bytes that all differ from what was there. */
function corruptFile (file: string, offset: number, length: number): void {
  const fd = fs.openSync(file, 'r+')
  try {
    const old = Buffer.alloc(length)
    fs.readSync(fd, old, 0, length, offset)
    const changed = Buffer.from(old.map(b => b ^ 0xff))
    fs.writeSync(fd, changed, 0, length, offset)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

// ---- one tree for the find / report / repair story (its tests run in order and build on each other) ---------------

let tree: Tree | undefined
let model: Buffer
// Two 4 KiB ranges on leg b, in regions 5 and 20, each inside one 64 KiB compare chunk.
const DAMAGE = [5 * REGION + 8192, 20 * REGION + 3 * 4096]

test.before(async () => {
  tree = await startTree('dst-verify-', LEG_SIZE)
  // Random data into the mirror with `dst copy`, as an operator would.
  model = randomBytes(LEG_SIZE)
  const src = path.join(tree.dir, 'model.bin')
  fs.writeFileSync(src, model)
  const copied = await runDst(['copy', src, tree.mn.url('m'), '--no-progress'])
  if (copied.code !== 0) throw new Error(`dst copy into the mirror failed (${String(copied.code)}): ${copied.stderr}`)
})

test.after.always(async () => {
  await stopTree(tree)
})

test.serial('the data copied into the mirror is on both leaves, and a verify of agreeing legs exits 0', async t => {
  const { mn, fileA, fileB } = tree as Tree
  t.true(fs.readFileSync(fileA).equals(model), 'leaf a holds the data')
  t.true(fs.readFileSync(fileB).equals(model), 'leaf b holds the data')
  const r = await runDst(['verify', mn.http, 'm', '--no-progress'])
  t.is(r.code, 0, r.stderr)
  const out = r.stdout.toString()
  t.regex(out, /^verify of 'm' done: 32\.0 MiB compared in /m)
  t.regex(out, /^0 mismatched region\(s\)$/m)
  t.notRegex(out, /mismatch at/)
})

test.serial('after two 4 KiB ranges of leaf b change behind its back, dst verify exits 1 and lists both regions on both legs', async t => {
  const { la, lb, mn, fileB } = tree as Tree
  for (const at of DAMAGE) corruptFile(fileB, at, 4096)
  const hashed = async (): Promise<number[]> => await Promise.all(([['la', la], ['lb', lb]] as const).map(async ([name, n]) =>
    metric(await metricsOf(n), 'dst_hashed_bytes_total', `node="${name}",export="disk"`)))
  const hashedBefore = await hashed()
  const r = await runDst(['verify', mn.http, 'm', '--no-progress'])
  t.is(r.code, 1, `stdout: ${r.stdout.toString()} stderr: ${r.stderr}`)
  const out = r.stdout.toString()
  t.regex(out, /^verify of 'm' done: 32\.0 MiB compared in [\d.]+ s \([\d.]+ MiB\/s\), 0 bytes skipped/m)
  const lines = out.split('\n').filter(l => l.startsWith('  mismatch at '))
  t.deepEqual(lines, DAMAGE.map(at => {
    const region = Math.floor(at / REGION) * REGION
    return `  mismatch at ${region}+${REGION}: 1 chunk(s) differ on a, b (no reference: repair with --from LEG)`
  }))
  t.regex(out, /^2 mismatched region\(s\)$/m)
  // Each leaf digested its whole file where it lives: the verify moved digests, not data.
  const hashedAfter = await hashed()
  t.is(hashedAfter[0] - hashedBefore[0], LEG_SIZE, 'leaf a hashed its file once')
  t.is(hashedAfter[1] - hashedBefore[1], LEG_SIZE, 'leaf b hashed its file once')
  // Nothing was repaired: leaf b still has the damage.
  t.false(fs.readFileSync(fileB).equals(model))
})

test.serial('/status and /metrics report the verify that found the mismatches; --json prints the same report', async t => {
  const { mn } = tree as Tree
  const s = await mn.status()
  const v = s.verify.m
  t.like(v, {
    state: 'done', repair: false, from: null, totalBytes: LEG_SIZE, doneBytes: LEG_SIZE, comparedBytes: LEG_SIZE,
    skippedBytes: 0, mismatches: 2, repairedRegions: 0, error: null,
  })
  t.is(typeof v.startedAt, 'string')
  t.is(typeof v.finishedAt, 'string')
  t.true(v.seconds >= 0)
  t.deepEqual(v.mismatchedRegions, DAMAGE.map(at => {
    const region = Math.floor(at / REGION)
    return { region, offset: region * REGION, length: REGION, chunks: 1, legs: ['a', 'b'], reference: null, repaired: false }
  }))
  t.deepEqual(s.devices.m.verify, v, 'the mirror device shows the same report')
  t.is(typeof s.devices.m.resyncComparedBytes, 'number')
  t.is(s.hash.algorithm, 'blake2b512')
  for (const key of ['threads', 'tasks', 'inline', 'bytes', 'errors', 'busy', 'queued']) t.is(typeof s.hash[key], 'number', `hash.${key}`)
  t.is(s.hash.errors, 0)

  const m = await metricsOf(mn)
  const labels = 'node="mn",array="m"'
  t.is(metric(m, 'dst_verify_runs_total', labels), 2, 'the clean verify and this one')
  t.is(metric(m, 'dst_verify_bytes_total', labels), 2 * LEG_SIZE)
  t.is(metric(m, 'dst_verify_mismatches_total', labels), 2)
  t.is(metric(m, 'dst_verify_repaired_total', labels), 0)
  t.is(metric(m, 'dst_verify_running', labels), 0)
  for (const family of ['dst_resync_copied_bytes_total', 'dst_resync_compared_bytes_total']) t.false(Number.isNaN(metric(m, family, labels)), family)
  t.false(Number.isNaN(metric(m, 'dst_hash_tasks_total', 'node="mn",where="worker"')))
  t.false(Number.isNaN(metric(m, 'dst_hash_tasks_total', 'node="mn",where="inline"')))
  t.false(Number.isNaN(metric(m, 'dst_hash_bytes_total', 'node="mn"')))
  t.is(metric(m, 'dst_hash_errors_total', 'node="mn",kind="failed"'), 0)

  // --json: the report of a new run, with the same findings.
  const r = await runDst(['verify', mn.http, 'm', '--json', '--no-progress'])
  t.is(r.code, 1, r.stderr)
  const report = JSON.parse(r.stdout.toString())
  t.like(report, { state: 'done', mismatches: 2, repairedRegions: 0, comparedBytes: LEG_SIZE })
  t.deepEqual(report.mismatchedRegions.map((x: { offset: number }) => x.offset), DAMAGE.map(at => Math.floor(at / REGION) * REGION))
})

test.serial('dst verify --repair --from a repairs leg b: exit 0, the leaf files are identical again, and a new verify finds nothing', async t => {
  const { mn, fileA, fileB } = tree as Tree
  const before = await metricsOf(mn)
  const labels = 'node="mn",array="m"'
  const r = await runDst(['verify', mn.http, 'm', '--repair', '--from', 'a', '--no-progress'])
  t.is(r.code, 0, `stdout: ${r.stdout.toString()} stderr: ${r.stderr}`)
  const out = r.stdout.toString()
  const lines = out.split('\n').filter(l => l.startsWith('  mismatch at '))
  t.deepEqual(lines, DAMAGE.map(at => `  mismatch at ${Math.floor(at / REGION) * REGION}+${REGION}: 1 chunk(s) differ on b, repaired from a`))
  t.regex(out, /^2 mismatched region\(s\), 2 repaired$/m)

  const a = fs.readFileSync(fileA)
  t.true(a.equals(fs.readFileSync(fileB)), 'the two leaf files are byte-identical')
  t.true(a.equals(model), 'and hold what was copied in')
  const s = await mn.status()
  t.like(s.verify.m, { state: 'done', repair: true, from: 'a', mismatches: 2, repairedRegions: 2, error: null })
  t.true(s.verify.m.mismatchedRegions.every((x: { repaired: boolean, reference: string, legs: string[] }) => x.repaired && x.reference === 'a' && x.legs.join() === 'b'))
  t.is(s.devices.m.state, 'online')
  const after = await metricsOf(mn)
  const delta = (name: string): number => metric(after, name, labels) - metric(before, name, labels)
  t.is(delta('dst_verify_runs_total'), 1)
  t.is(delta('dst_verify_mismatches_total'), 2)
  t.is(delta('dst_verify_repaired_total'), 2)
  // Checksum resync: the two regions were compared by digest and only the differing 64 KiB chunk of each copied.
  t.is(delta('dst_resync_compared_bytes_total'), 2 * REGION)
  t.is(delta('dst_resync_copied_bytes_total'), 2 * 64 * KiB)

  const again = await runDst(['verify', mn.http, 'm', '--no-progress'])
  t.is(again.code, 0, again.stderr)
  t.regex(again.stdout.toString(), /^0 mismatched region\(s\)$/m)
  t.like((await mn.status()).verify.m, { state: 'done', mismatches: 0, comparedBytes: LEG_SIZE })
})

test.serial('dst verify exits 2 on bad usage, before asking the node anything', async t => {
  const { mn } = tree as Tree
  const runsBefore = metric(await metricsOf(mn), 'dst_verify_runs_total', 'node="mn",array="m"')
  const cases: Array<[string[], RegExp]> = [
    [[], /usage: dst verify NODE_URL ARRAY/],
    [[mn.http], /usage: dst verify NODE_URL ARRAY/],
    [[mn.http, 'm', '--from', 'a'], /--from names the leg to repair from: give --repair too/],
    [[`127.0.0.1:${mn.port}`, 'm'], /is not an http:\/\/HOST:PORT address/],
    [[`dst://127.0.0.1:${mn.port}/m`, 'm'], /is not an http:\/\/HOST:PORT address/],
    [[mn.http, 'm', 'extra'], /unexpected argument 'extra'/],
    [[mn.http, 'm', '--bogus'], /bogus/],
    [[mn.http, 'm', '--rate', 'fast'], /rate/],
  ]
  for (const [args, message] of cases) {
    const r = await runDst(['verify', ...args])
    t.is(r.code, 2, `dst verify ${args.join(' ')}: ${r.stderr}`)
    t.regex(r.stderr, message, `dst verify ${args.join(' ')}`)
    t.regex(r.stderr, /^dst verify: /)
  }
  const help = await runDst(['verify', '--help'])
  t.is(help.code, 0)
  t.regex(help.stdout.toString(), /usage: dst verify NODE_URL ARRAY \[--repair \[--from LEG\]\]/)
  t.is(metric(await metricsOf(mn), 'dst_verify_runs_total', 'node="mn",array="m"'), runsBefore, 'no verify was started')
})

test.serial('a verify of something that is not a mirror, or of no device, is refused with a clear message (CLI exit 1, HTTP 409/404, bad input 400)', async t => {
  const { mn } = tree as Tree
  const notMirror = await runDst(['verify', mn.http, 'a', '--no-progress'])
  t.is(notMirror.code, 1)
  t.regex(notMirror.stderr, /'a' is a remote device; only mirror and parity arrays have redundancy to verify/)
  const none = await runDst(['verify', mn.http, 'nosuch', '--no-progress'])
  t.is(none.code, 1)
  t.regex(none.stderr, /no device named 'nosuch'/)
  const noLeg = await runDst(['verify', mn.http, 'm', '--repair', '--from', 'zz', '--no-progress'])
  t.is(noLeg.code, 2, 'a leg that does not exist is bad usage')
  t.regex(noLeg.stderr, /no leg 'zz'/)

  const http = await postVerify(mn, 'a', {})
  t.is(http.status, 409)
  t.is(http.body.code, 'DST_ERR_NOTMIRROR')
  t.regex(http.body.error, /only mirror (and parity )?arrays/)
  const missing = await postVerify(mn, 'nosuch', {})
  t.is(missing.status, 404)
  t.regex(missing.body.error, /nosuch/)
  const fromAlone = await postVerify(mn, 'm', { from: 'a' })
  t.is(fromAlone.status, 400)
  t.regex(fromAlone.body.error, /"from".*"repair": true/)
  const badRate = await postVerify(mn, 'm', { rate: -1 })
  t.is(badRate.status, 400)
  t.regex(badRate.body.error, /rate/)
  // wait: true answers with the finished report.
  const waited = await postVerify(mn, 'm', { wait: true })
  t.is(waited.status, 200)
  t.true(waited.body.ok)
  t.like(waited.body.verify, { state: 'done', mismatches: 0, comparedBytes: LEG_SIZE })
})

test.serial('more mismatched regions than /status lists: the CLI prints the first 20 and how many more, and repairs them all', async t => {
  const { mn, fileA, fileB } = tree as Tree
  // 25 regions (3 to 27) with a few bytes changed, on leg a this time.
  for (let r = 3; r < 28; r++) corruptFile(fileA, r * REGION + 777, 10)
  const found = await runDst(['verify', mn.http, 'm', '--no-progress'])
  t.is(found.code, 1, found.stderr)
  const out = found.stdout.toString()
  // The first 20 regions that differ, in region order, whatever order the parallel compare found them in.
  const listed = out.split('\n').filter(l => l.startsWith('  mismatch at ')).map(l => Number(/at (\d+)\+/.exec(l)?.[1]) / REGION)
  t.deepEqual(listed, Array.from({ length: 20 }, (_, i) => 3 + i))
  t.regex(out, /^ {2}\.\.\. 5 more$/m)
  t.regex(out, /^25 mismatched region\(s\)$/m)
  const s = await mn.status()
  t.is(s.verify.m.mismatches, 25)
  t.is(s.verify.m.mismatchedRegions.length, 20, '/status lists the first 20')

  // Two legs and no --from: nothing says which is right, so --repair repairs nothing and the exit status says so.
  const undecided = await runDst(['verify', mn.http, 'm', '--repair', '--no-progress'])
  t.is(undecided.code, 1, undecided.stderr)
  t.regex(undecided.stdout.toString(), /^25 mismatched region\(s\)$/m)
  t.regex(undecided.stdout.toString(), /differ on a, b \(no reference: repair with --from LEG\)/)
  t.like((await mn.status()).verify.m, { repair: true, mismatches: 25, repairedRegions: 0 })
  t.false(fs.readFileSync(fileA).equals(model), 'leg a still has the damage')

  const repaired = await runDst(['verify', mn.http, 'm', '--repair', '--from', 'b', '--no-progress'])
  t.is(repaired.code, 0, repaired.stderr)
  t.regex(repaired.stdout.toString(), /^25 mismatched region\(s\), 25 repaired$/m)
  t.regex(repaired.stdout.toString(), /differ on a, repaired from b/)
  const a = fs.readFileSync(fileA)
  t.true(a.equals(fs.readFileSync(fileB)))
  t.true(a.equals(model))
})

test.serial('a verify while writes go on through the mirror finds no mismatch, and the writes land on both legs', async t => {
  const { mn, fileA, fileB } = tree as Tree
  const seed = newSeed()
  t.log(`seed ${seed}`)
  const rand = prng(seed)
  const dev = await RemoteDevice.open({ host: '127.0.0.1', port: mn.port, export: 'm' })
  t.teardown(() => dev.close())
  // Slowed down so that it overlaps many writes (a rate is what an operator gives on a busy array).
  const started = await postVerify(mn, 'm', { rate: 16 * MiB })
  t.is(started.status, 200, JSON.stringify(started.body))
  let writes = 0
  let state = 'running'
  for (let i = 0; i < 2000 && state === 'running'; i++) {
    // A few writes at once (one per quarter, so none overlaps another and the model is exact), some straddling
    // region boundaries.
    const quarter = LEG_SIZE / 4
    const batch = Array.from({ length: 4 }, (_, q) => {
      const length = between(rand, 1, 96 * KiB)
      const offset = q * quarter + between(rand, 0, quarter - length)
      const data = seededBytes(rand, length)
      data.copy(model, offset)
      return dev.write(offset, data)
    })
    await Promise.all(batch)
    writes += batch.length
    state = (await mn.status()).verify.m.state
  }
  await dev.flush()
  await until('verify done', async () => (await mn.status()).verify.m.state !== 'running', 60000)
  const v = (await mn.status()).verify.m
  t.log(`${writes} writes while the verify ran`)
  t.true(writes >= 20, `only ${writes} writes overlapped the verify`)
  t.like(v, { state: 'done', mismatches: 0, comparedBytes: LEG_SIZE, error: null })
  t.deepEqual(v.mismatchedRegions, [])
  const a = fs.readFileSync(fileA)
  t.true(a.equals(model), 'leaf a holds every write')
  t.true(a.equals(fs.readFileSync(fileB)), 'leaf b is identical')
})

// ---- a mirror of local devices, behind an admin token ---------------------------------------------------------------

test.serial('a mirror of local devices is verified on the node\'s own hash workers; the admin token is required', async t => {
  const dir = tempDir('dst-verify-local-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const token = 'verify-admin-secret'
  const n = await startNode(dir, {
    name: 'loc', dataDir: './state',
    admin: { token },
    devices: {
      x: { type: 'memory', size: '8MiB' }, y: { type: 'memory', size: '8MiB' },
      lm: { type: 'mirror', members: ['x', 'y'], region: '256KiB' },
    },
    exports: [{ device: 'lm' }],
  })
  t.teardown(() => n.kill())
  await until('local mirror in sync', async () => (await n.status()).devices.lm.state === 'online')
  const dev = await RemoteDevice.open({ host: '127.0.0.1', port: n.port, export: 'lm' })
  t.teardown(() => dev.close())
  await dev.write(0, randomBytes(8 * MiB))
  await dev.flush()

  const refused = await postVerify(n, 'lm', {})
  t.is(refused.status, 401)
  t.regex(refused.body.error, /admin token/)
  const noToken = await runDst(['verify', n.http, 'lm', '--no-progress'])
  t.is(noToken.code, 1)
  t.regex(noToken.stderr, /admin token/)
  const wrong = await runDst(['verify', n.http, 'lm', '--admin-token', 'nope', '--no-progress'])
  t.is(wrong.code, 1)

  const before = await metricsOf(n)
  const ok = await runDst(['verify', n.http, 'lm', '--admin-token', token, '--rate', '64MiB', '--no-progress'])
  t.is(ok.code, 0, ok.stderr)
  t.regex(ok.stdout.toString(), /^verify of 'lm' done: 8\.0 MiB compared in /m)
  t.regex(ok.stdout.toString(), /^0 mismatched region\(s\)$/m)
  const after = await metricsOf(n)
  t.is(metric(after, 'dst_verify_runs_total', 'node="loc",array="lm"'), 1, 'only the verify with the token ran')
  t.is(metric(after, 'dst_verify_bytes_total', 'node="loc",array="lm"'), 8 * MiB)
  // Local legs are digested here: both legs' bytes went through this node's hasher, on worker threads.
  t.true(metric(after, 'dst_hash_bytes_total', 'node="loc"') - metric(before, 'dst_hash_bytes_total', 'node="loc"') >= 2 * 8 * MiB)
  t.true(metric(after, 'dst_hash_tasks_total', 'node="loc",where="worker"') > metric(before, 'dst_hash_tasks_total', 'node="loc",where="worker"'))
  const s = await n.status()
  t.true(s.hash.bytes >= 2 * 8 * MiB)
  t.is(s.hash.errors, 0)
  t.like(s.verify.lm, { state: 'done', mismatches: 0, comparedBytes: 8 * MiB })
})

// ---- responsiveness -------------------------------------------------------------------------------------------------

test.serial('the node answers native PINGs and /status quickly while a verify of 256 MiB legs runs', async t => {
  const big = await startTree('dst-verify-big-', 256 * MiB)
  t.teardown(() => stopTree(big))
  // Some data (the rest of the legs stays sparse), through the mirror so both leaves get it.
  const writer = await RemoteDevice.open({ host: '127.0.0.1', port: big.mn.port, export: 'm' })
  t.teardown(() => writer.close())
  for (let i = 0; i < 16; i++) await writer.write(i * 16 * MiB + 4096, randomBytes(MiB))
  await writer.flush()
  await writer.close()

  const mirrorPing = await RemoteDevice.open({ host: '127.0.0.1', port: big.mn.port, export: 'm' }, { access: 'ro' })
  t.teardown(() => mirrorPing.close())
  const leafPing = await RemoteDevice.open({ host: '127.0.0.1', port: big.lb.port, export: 'disk' }, { access: 'ro' })
  t.teardown(() => leafPing.close())

  const started = await postVerify(big.mn, 'm', {})
  t.is(started.status, 200, JSON.stringify(started.body))
  t.is(started.body.verify.state, 'running')
  t.regex(started.body.message, /verify of 'm' started/)
  // A second verify while one runs is refused.
  const busy = await postVerify(big.mn, 'm', {})
  t.is(busy.status, 409)
  t.regex(busy.body.error, /already running/)

  let pingsWhileRunning = 0
  let slowest = 0
  let sawRunning = false
  let state = 'running'
  for (let i = 0; i < 200 && state === 'running'; i++) {
    for (const dev of [mirrorPing, leafPing]) {
      const t0 = performance.now()
      await dev.ping()
      const took = performance.now() - t0
      slowest = Math.max(slowest, took)
      t.true(took < 1000, `ping ${i} to ${dev.url} took ${took.toFixed(0)} ms`)
    }
    // Metrics first: if /status still says running afterwards, the verify was running when the metrics were taken.
    const running = metric(await metricsOf(big.mn), 'dst_verify_running', 'node="mn",array="m"')
    const s = await big.mn.status()
    state = s.verify.m.state
    if (state === 'running') {
      sawRunning = true
      pingsWhileRunning++
      t.true(s.verify.m.doneBytes <= s.verify.m.totalBytes)
      t.is(running, 1)
    }
  }
  t.log(`${pingsWhileRunning} ping rounds while the verify ran; slowest ping ${slowest.toFixed(1)} ms`)
  t.true(sawRunning)
  t.true(pingsWhileRunning >= 5, `only ${pingsWhileRunning} ping rounds were answered while the verify ran`)
  await until('verify done', async () => (await big.mn.status()).verify.m.state !== 'running', 120000)
  const done = (await big.mn.status()).verify.m
  t.like(done, { state: 'done', mismatches: 0, comparedBytes: 256 * MiB, error: null })
})

// ---- wire digests end to end -----------------------------------------------------------------------------------------

test.serial('dst export --digest: dst copy in and out gives back the same bytes', async t => {
  const dir = tempDir('dst-verify-digest-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'disk.img')
  const exp = await startExport([file, '--listen', '127.0.0.1:0', '--size', '8MiB', '--name', 'dig', '--digest'])
  t.teardown(() => exp.kill())
  const s = await exp.status()
  t.is(s.exports.find((e: { name: string }) => e.name === 'dig')?.digest, true)

  const data = randomBytes(5 * MiB + 123)
  const src = path.join(dir, 'src.bin')
  const out = path.join(dir, 'out.bin')
  fs.writeFileSync(src, data)
  const into = await runDst(['copy', src, exp.url('dig'), '--offset', '4096', '--no-progress'])
  t.is(into.code, 0, into.stderr)
  const back = await runDst(['copy', exp.url('dig'), out, '--offset', '4096', '--length', String(data.length), '--no-progress'])
  t.is(back.code, 0, back.stderr)
  t.true(fs.readFileSync(out).equals(data), 'copied out equals copied in')
  t.true(fs.readFileSync(file).subarray(4096, 4096 + data.length).equals(data), 'the exported file holds the data')
  const m = await metricsOf(exp)
  t.is(metric(m, 'dst_digest_errors_total', 'node="export",export="dig"'), 0)
  t.true(metric(m, 'dst_bytes_total', 'node="export",export="dig",direction="write"') >= data.length)
})
