// End-to-end parity arrays (issue 14, point 10) with real node processes on loopback: five leaf processes export files,
// a sixth node makes them one array and exports it over NBD. fio writes and verifies every block through NBD while a
// leaf is killed by its pid and restarted; afterwards the array is in sync, `dst verify` finds no mismatch, and every
// member file holds exactly what the layout says (the array read back through NBD, cut into fragments or chunks with
// algorithms/parity/layout.ts, parity as their XOR). The array node killed mid-write comes back consistent; a byte
// changed in a member file behind the node's back (its leaf stopped, the file changed, the leaf restarted) is found
// by `dst verify`, mended by `dst verify --repair`, and a second verify is clean. Serial: six nodes and fio per test.

import test, { type ExecutionContext } from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { runDst, startNode, tempDir, type RunningNode } from '../helpers/node-process'
import { freePort } from '../helpers/ports'
import { inCI, missingTool, TOOLS } from '../helpers/requires'
import { until } from '../helpers/wait'
import { Raid35Layout, Raid5Layout } from '../../algorithms/parity/layout'
import { xorInto } from '../../node/core/xor'

const KiB = 1024
const MiB = 1024 * KiB
const MEMBER = 8 * MiB
const CHUNK = 64 * KiB
// raid35's block when none is given: one fragment of the members' block size (4 KiB files) per data member.
const BLOCK = 16 * KiB
const REGION = MiB

// One at a time (each starts six nodes and fio); skipped without fio or nbdcopy, as testNeeding does (failed under CI).
const missing = missingTool([TOOLS.fio, TOOLS.nbdcopy])
const serial = (title: string, fn: (t: ExecutionContext) => Promise<void>): void => {
  if (missing === null) test.serial(title, fn)
  else if (inCI) test.serial(title, t => { t.fail(`${missing} (CI=true: every tool must be installed; .ci/run installs them)`) })
  else test.skip(`${title} [skipped: ${missing}]`, fn)
}

function run (cmd: string, args: string[], timeout = 60000, cwd?: string): Promise<{ code: number, stdout: string, stderr: string }> {
  return new Promise(resolve => {
    execFile(cmd, args, { timeout, cwd, maxBuffer: 16 * MiB }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as unknown as { code: number }).code : 1
      resolve({ code, stdout, stderr })
    })
  })
}

type Kind = 'raid35' | 'raid5' | 'stripe'

function arrayConfig (kind: Kind, members: string[]): Record<string, unknown> {
  if (kind === 'stripe') return { type: 'stripe', members, chunk: '64KiB' }
  if (kind === 'raid35') return { type: 'parity', layout: 'raid35', members, region: '1MiB' }
  return { type: 'parity', layout: 'raid5', members, chunk: '64KiB', region: '1MiB' }
}

/** What each member file must hold, given the whole array's bytes: the layout's arithmetic, done here by hand. */
function expectedMembers (kind: Kind, members: number, array: Buffer): Buffer[] {
  if (kind === 'stripe') {
    const per = array.length / members
    const out = Array.from({ length: members }, () => Buffer.alloc(per))
    for (let c = 0; c * CHUNK < array.length; c++) array.copy(out[c % members], Math.floor(c / members) * CHUNK, c * CHUNK, (c + 1) * CHUNK)
    return out
  }
  if (kind === 'raid35') {
    const l = new Raid35Layout(members, BLOCK, MEMBER)
    const per = (array.length / BLOCK) * l.fragment
    const out = Array.from({ length: members }, () => Buffer.alloc(per))
    l.scatter(array, out.slice(0, l.data))
    xorInto(out[l.parity], out.slice(0, l.data))
    return out
  }
  const l = new Raid5Layout(members, CHUNK, MEMBER)
  const stripes = array.length / l.stripeBytes
  const out = Array.from({ length: members }, () => Buffer.alloc(stripes * CHUNK))
  for (let s = 0; s < stripes; s++) {
    const chunks: Buffer[] = []
    for (let j = 0; j < l.data; j++) {
      const chunk = array.subarray((s * l.data + j) * CHUNK, (s * l.data + j + 1) * CHUNK)
      chunk.copy(out[l.memberOf(s, j)], s * CHUNK)
      chunks.push(chunk)
    }
    xorInto(out[l.parityOf(s)].subarray(s * CHUNK, (s + 1) * CHUNK), chunks)
  }
  return out
}

interface Leaf { name: string, config: Record<string, unknown>, file: string, node: RunningNode }

interface Rig {
  t: ExecutionContext
  dir: string
  kind: Kind
  leaves: Leaf[]
  topConfig: Record<string, unknown>
  top: RunningNode
  nbdPort: number
  /** nbd://… of the array. */
  uri: string
}

/** Five (or `count`) leaves exporting `lN.img`, and the node `top` making them array `a`, exported over NBD. */
async function startRig (t: ExecutionContext, kind: Kind, count = 5): Promise<Rig> {
  const dir = tempDir(`dst-parity-${kind}-`)
  const leaves: Leaf[] = []
  let top: RunningNode | undefined
  t.teardown(async () => {
    await Promise.all([...leaves.map(l => l.node.kill()), top?.kill()])
    fs.rmSync(dir, { recursive: true, force: true })
  })
  await Promise.all(Array.from({ length: count }, async (_, i) => {
    const name = `l${i}`
    const config = {
      name, listen: `127.0.0.1:${await freePort()}`, dataDir: `./state/${name}`,
      devices: { disk: { type: 'file', path: `./${name}.img`, size: MEMBER } }, exports: [{ device: 'disk' }],
    }
    leaves[i] = { name, config, file: path.join(dir, `${name}.img`), node: await startNode(dir, config) }
  }))
  const nbdPort = await freePort()
  const members = leaves.map((_, i) => `m${i}`)
  const topConfig = {
    name: 'top', listen: `127.0.0.1:${await freePort()}`, nbd: `127.0.0.1:${nbdPort}`, dataDir: './state/top',
    pingInterval: 300, reconnectTimeout: 1000,
    devices: {
      ...Object.fromEntries(leaves.map((l, i) => [members[i], { type: 'remote', url: l.node.url('disk') }])),
      a: arrayConfig(kind, members),
    },
    exports: [{ device: 'a' }],
  }
  top = await startNode(dir, topConfig)
  const rig: Rig = { t, dir, kind, leaves, topConfig, top, nbdPort, uri: `nbd://127.0.0.1:${nbdPort}/a` }
  t.teardown(() => rig.top.kill())
  await inSync(rig)
  return rig
}

async function arrayStatus (rig: Rig): Promise<any> {
  return (await rig.top.status()).devices.a
}

/** Waits until the array is online with every member in sync (for a stripe: online). */
async function inSync (rig: Rig, ms = 60000): Promise<void> {
  await until('the array to be online and every member in sync', async () => {
    const a = await arrayStatus(rig)
    return a.state === 'online' && (rig.kind === 'stripe' || a.members.every((m: any) => m.state === 'in-sync'))
  }, ms, 100)
}

async function restartLeaf (rig: Rig, i: number): Promise<void> {
  rig.leaves[i].node = await startNode(rig.dir, rig.leaves[i].config)
}

async function restartTop (rig: Rig): Promise<void> {
  rig.top = await startNode(rig.dir, rig.topConfig)
}

/** The whole array, read through NBD by nbdcopy. */
async function readArray (rig: Rig): Promise<Buffer> {
  const out = path.join(rig.dir, `read-${Date.now()}.bin`)
  const r = await run('nbdcopy', [rig.uri, out], 60000)
  if (r.code !== 0) throw new Error(`nbdcopy ${rig.uri} ${out}: ${r.stderr}`)
  const bytes = fs.readFileSync(out)
  fs.rmSync(out)
  return bytes
}

/** Every member file holds what the layout says of the array's bytes; the first difference is named. */
async function membersAsLayout (rig: Rig, array?: Buffer): Promise<void> {
  const bytes = array ?? await readArray(rig)
  const want = expectedMembers(rig.kind, rig.leaves.length, bytes)
  for (const [i, leaf] of rig.leaves.entries()) {
    const file = fs.readFileSync(leaf.file)
    const got = file.subarray(0, want[i].length)
    if (!got.equals(want[i])) {
      let at = 0
      while (at < got.length && got[at] === want[i][at]) at++
      rig.t.fail(`member ${leaf.name}: byte ${at} of ${leaf.file} is ${got[at]}, the layout says ${want[i][at]}`)
    }
  }
  rig.t.pass(`every member file is as the ${rig.kind} layout says`)
}

async function verify (rig: Rig, repair = false): Promise<{ code: number | null, out: string }> {
  const r = await runDst(['verify', rig.top.http, 'a', '--no-progress', ...(repair ? ['--repair'] : [])], { timeout: 60000 })
  return { code: r.code, out: `${r.stdout.toString()}${r.stderr}` }
}

/** Bytes written through the top node's export 'a' so far (its /metrics). */
async function bytesWritten (rig: Rig): Promise<number> {
  const text = await (await fetch(`${rig.top.http}/metrics`)).text()
  const line = text.split('\n').find(l => l.startsWith('dst_bytes_total{') && l.includes('export="a"') && l.includes('direction="write"'))
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1))
}

function fioArgs (rig: Rig, extra: string[]): string[] {
  return ['--name=verify', '--ioengine=nbd', `--uri=${rig.uri}`, '--output-format=json', ...extra]
}

interface FioJob { error: number, read: { io_bytes: number }, write: { io_bytes: number } }

function fioJob (stdout: string): FioJob {
  return (JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: FioJob[] }).jobs[0]
}

/** Overwrites one byte of `file` at `offset` with a different one. */
function corruptByte (file: string, offset: number): void {
  const fd = fs.openSync(file, 'r+')
  try {
    const b = Buffer.alloc(1)
    fs.readSync(fd, b, 0, 1, offset)
    b[0] ^= 0x5a
    fs.writeSync(fd, b, 0, 1, offset)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

async function killLeafDuringFio (rig: Rig, victim: number, size: string): Promise<void> {
  const { t } = rig
  // Writes paced at 4 MiB/s, so the leaf is down (longer than reconnectTimeout) in the middle of them; then fio reads
  // every block back and checks its crc32c.
  const fio = run('fio', fioArgs(rig, ['--rw=randwrite', '--bs=4k', '--iodepth=16', `--size=${size}`, '--rate=4m',
    '--verify=crc32c', '--do_verify=1', '--verify_fatal=1']), 150000, rig.dir) // fio leaves a verify state file in its cwd
  await new Promise(resolve => setTimeout(resolve, 1000))
  await rig.leaves[victim].node.kill()
  await until('the array to go on without the killed leaf', async () => (await arrayStatus(rig)).state === 'degraded', 15000)
  await new Promise(resolve => setTimeout(resolve, 1000))
  await restartLeaf(rig, victim)
  const r = await fio
  t.is(r.code, 0, r.stderr)
  const job = fioJob(r.stdout)
  t.is(job.error, 0, 'fio saw no error')
  const bytes = Number.parseInt(size) * MiB
  t.is(job.write.io_bytes, bytes)
  t.is(job.read.io_bytes, bytes, 'fio read every block back and found it right')
}

for (const kind of ['raid35', 'raid5'] as const) {
  serial(`${kind} of five leaf processes over NBD: fio --verify=crc32c sees no error while a leaf is killed and restarted; then in sync, dst verify clean, every member file as the layout says`, async t => {
    t.timeout(240000)
    const rig = await startRig(t, kind)
    const a = await arrayStatus(rig)
    t.is(a.type, 'parity')
    t.is(a.size, 4 * MEMBER)
    t.is(a.members.length, 5)
    if (kind === 'raid35') t.is(a.fragment, BLOCK / 4, 'blocks of 16 KiB: a 4 KiB fragment on each data member')
    else t.is(a.chunk, CHUNK)
    // A data member for raid35 (the parity member is the last); any member for raid5.
    await killLeafDuringFio(rig, 1, kind === 'raid35' ? '16m' : '8m')
    await inSync(rig)
    const v = await verify(rig)
    t.is(v.code, 0, v.out)
    t.regex(v.out, /^0 mismatched region\(s\)$/m)
    await membersAsLayout(rig)
  })
}

serial('raid35: the array node killed (SIGKILL) mid-write comes back, in sync, parity consistent (dst verify clean), members as the layout says', async t => {
  t.timeout(240000)
  const rig = await startRig(t, 'raid35')
  const model = path.join(rig.dir, 'model.bin')
  fs.writeFileSync(model, randomBytes(4 * MEMBER))
  // Large sequential writes, so many regions are in flight on every member when the node dies.
  const writer = run('fio', fioArgs(rig, ['--rw=randwrite', '--bs=256k', '--iodepth=8', '--size=32m', '--time_based', '--runtime=30']), 60000, rig.dir)
  await until('4 MiB written through the export', async () => await bytesWritten(rig) >= 4 * MiB, 20000, 50)
  await rig.top.kill()
  const w = await writer
  t.not(w.code, 0, 'fio lost its server')
  await restartTop(rig)
  await inSync(rig)
  const v = await verify(rig)
  t.is(v.code, 0, v.out)
  t.regex(v.out, /^0 mismatched region\(s\)$/m)
  await membersAsLayout(rig)
  // And it serves again: data in and out.
  const c = await run('nbdcopy', [model, rig.uri])
  t.is(c.code, 0, c.stderr)
  const back = await readArray(rig)
  t.true(back.equals(fs.readFileSync(model)), 'the array reads back what nbdcopy wrote after the restart')
  await membersAsLayout(rig, back)
})

for (const [kind, victim] of [['raid35', 4], ['raid5', 2]] as const) {
  serial(`${kind}: a byte changed in a member file behind the node's back (leaf stopped, file changed, leaf restarted) is reported by dst verify, mended by --repair, and a second verify is clean`, async t => {
    t.timeout(240000)
    const rig = await startRig(t, kind)
    const model = randomBytes(4 * MEMBER)
    const src = path.join(rig.dir, 'model.bin')
    fs.writeFileSync(src, model)
    const c = await run('nbdcopy', [src, rig.uri])
    t.is(c.code, 0, c.stderr)
    await rig.top.stop()
    await restartTop(rig)
    await inSync(rig)
    // Member offset 5 MiB + 1234 lies in region 5: regions are 1 MiB of every member, 4 MiB of the array (which
    // verify reports, in array offsets).
    const at = 5 * REGION + 1234
    await rig.leaves[victim].node.stop()
    corruptByte(rig.leaves[victim].file, at)
    await restartLeaf(rig, victim)
    await inSync(rig)
    const found = await verify(rig)
    t.is(found.code, 1, found.out)
    t.regex(found.out, /^1 mismatched region\(s\)$/m)
    t.regex(found.out, new RegExp(`mismatch at ${5 * 4 * REGION}\\+${4 * REGION}: .*differ on .*m${victim}`))
    const repaired = await verify(rig, true)
    t.is(repaired.code, 0, repaired.out)
    t.regex(repaired.out, /1 repaired/)
    const again = await verify(rig)
    t.is(again.code, 0, again.out)
    t.regex(again.out, /^0 mismatched region\(s\)$/m)
    const back = await readArray(rig)
    // raid35's member 4 is its parity: repair rewrote it from the data, which is the model's.
    if (kind === 'raid35') t.true(back.equals(model), 'the array reads back the model')
    await membersAsLayout(rig, back)
  })
}

