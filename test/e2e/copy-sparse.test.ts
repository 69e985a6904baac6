// `dst copy` is sparse-aware (tools/cli/copy.ts): a dst:// source's holes are not read (EXTENTS), chunks of zeros are
// not written, and the destination gets holes there: a new file is left sparse, an existing one punched, a dst://
// export left alone where it is a hole and trimmed where it holds old data. Checked by content, by the files'
// allocated blocks (`stat`), by the exports' extents and by the node's byte counters.

import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { randomBytes } from 'node:crypto'
import { runDst, startNode, tempDir, type RunningNode } from '../helpers/node-process'
import { RemoteDevice } from '../../export/native/remote-device'
import { closeDefaultHasher } from '../../node/core/hasher'

const KiB = 1024
const MiB = 1024 * KiB
const SIZE = 64 * MiB
/** Where the test data lies: three pieces, 5 MiB in all, in a 64 MiB disk that is otherwise holes. */
const PIECES: Array<[number, number]> = [[0, MiB], [20 * MiB + 4096, 3 * MiB], [SIZE - MiB, MiB]]
const DATA = PIECES.reduce((n, [, len]) => n + len, 0)

let dir: string
let node: RunningNode
const pieces = PIECES.map(([, n]) => randomBytes(n))

test.before(async () => {
  dir = tempDir('dst-copy-sparse-')
  node = await startNode(dir, {
    name: 'sp',
    devices: {
      src: { type: 'memory', size: '64MiB' },
      dst: { type: 'memory', size: '64MiB' },
      fresh: { type: 'memory', size: '64MiB' },
    },
    exports: [{ device: 'src' }, { device: 'dst' }, { device: 'fresh' }],
  })
  const dev = await RemoteDevice.open({ host: '127.0.0.1', port: node.port, export: 'src' })
  for (const [i, [at]] of PIECES.entries()) await dev.write(at, pieces[i])
  await dev.close()
})

test.after.always(async () => {
  await node?.kill()
  await closeDefaultHasher()
})

function expected (): Buffer {
  const b = Buffer.alloc(SIZE)
  for (const [i, [at]] of PIECES.entries()) pieces[i].copy(b, at)
  return b
}

/** Bytes the file really holds on disk. */
function allocated (file: string): number {
  return fs.statSync(file).blocks * 512
}

async function metric (name: string, labels: string): Promise<number> {
  const text = await (await fetch(`${node.http}/metrics`)).text()
  const line = text.split('\n').find(l => l.startsWith(`${name}{${labels}} `))
  return line === undefined ? NaN : Number(line.slice(line.lastIndexOf(' ') + 1))
}

async function extentsOf (name: string): Promise<Array<[number, number, boolean]>> {
  const dev = await RemoteDevice.open({ host: '127.0.0.1', port: node.port, export: name }, { access: 'ro' })
  try {
    return (await dev.extents(0, dev.size)).map(e => [e.offset, e.length, e.hole])
  } finally {
    await dev.close()
  }
}

test.serial('dst copy of a sparse export to a new file reads only the data and writes a sparse file with the same bytes', async t => {
  const out = path.join(dir, 'out.img')
  const readBefore = await metric('dst_bytes_total', 'node="sp",export="src",direction="read"')
  const r = await runDst(['copy', node.url('src'), out, '--no-progress'])
  t.is(r.code, 0, r.stderr)
  t.regex(r.stderr, /^copied 67108864 bytes \(64 MiB\) in \d+\.\d\d s, \d+\.\d MiB\/s; 58\.9 MiB of holes not read, 0 B of zeros not written\n$/, 'holes: all but the 64 KiB pages holding data')
  const readAfter = await metric('dst_bytes_total', 'node="sp",export="src",direction="read"')
  // The memory device keeps 64 KiB pages: the data's pages are read, the holes are not.
  t.is(readAfter - readBefore, DATA + 64 * KiB, 'only the pages holding data were read')
  t.is(fs.statSync(out).size, SIZE)
  t.true(fs.readFileSync(out).equals(expected()), 'same bytes')
  const held = allocated(out)
  t.log(`output holds ${held} bytes on disk for ${SIZE}`)
  t.true(held <= DATA + 2 * MiB, `sparse: ${held} bytes allocated for ${DATA} of data`)
})

test.serial('dst copy of a sparse file into a fresh export writes only the data: zeros are not written, the export stays sparse', async t => {
  const file = path.join(dir, 'sparse-in.img')
  const fd = fs.openSync(file, 'w')
  for (const [i, [at]] of PIECES.entries()) fs.writeSync(fd, pieces[i], 0, pieces[i].length, at)
  fs.ftruncateSync(fd, SIZE)
  fs.closeSync(fd)
  const writtenBefore = await metric('dst_bytes_total', 'node="sp",export="fresh",direction="write"')
  const r = await runDst(['copy', file, node.url('fresh'), '--no-progress'])
  t.is(r.code, 0, r.stderr)
  t.regex(r.stderr, /0 B of holes not read, 58 MiB of zeros not written/, 'every 1 MiB chunk without data')
  const writtenAfter = await metric('dst_bytes_total', 'node="sp",export="fresh",direction="write"')
  t.is(writtenAfter - writtenBefore, 6 * MiB, 'the six 1 MiB chunks holding data, nothing else')
  t.deepEqual(await extentsOf('fresh'), [[0, MiB, false], [MiB, 19 * MiB, true], [20 * MiB, 4 * MiB, false], [24 * MiB, 39 * MiB, true], [63 * MiB, MiB, false]],
    'holes wherever a whole chunk was zeros')
})

test.serial('into an existing file holding other data, dst copy punches holes where the source has them; into an export, it trims them', async t => {
  const out = path.join(dir, 'old.img')
  fs.writeFileSync(out, randomBytes(SIZE + MiB)) // fully allocated, longer than the copy
  t.true(allocated(out) >= SIZE)
  const r = await runDst(['copy', node.url('src'), out, '--no-progress'])
  t.is(r.code, 0, r.stderr)
  t.true(fs.readFileSync(out).equals(expected()), 'same bytes, and as long as the copy')
  t.true(allocated(out) <= DATA + 2 * MiB, `punched: ${allocated(out)} bytes allocated`)

  // An export full of junk: the copy trims it where the source is a hole.
  const dev = await RemoteDevice.open({ host: '127.0.0.1', port: node.port, export: 'dst' })
  for (let at = 0; at < SIZE; at += 4 * MiB) await dev.write(at, randomBytes(4 * MiB))
  await dev.close()
  const c = await runDst(['copy', node.url('src'), node.url('dst'), '--no-progress'])
  t.is(c.code, 0, c.stderr)
  t.deepEqual(await extentsOf('dst'), await extentsOf('src'), 'trimmed where the source has holes')
  const back = await runDst(['copy', node.url('dst'), '-', '--quiet'])
  t.true(back.stdout.equals(expected()), 'same bytes, read back')
})
