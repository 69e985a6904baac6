// Two real nodes meeting on one image file or one dataDir (node/core/lock.ts; its unit tests are
// test/node/core/lock.test.ts): the second is refused naming the holder. Nodes on loopback, ports picked by the OS,
// killed by pid at the end.

import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { randomBytes } from 'node:crypto'
import { startNode, tempDir, type RunningNode } from '../helpers/node-process'

const MiB = 1024 * 1024

function dir (t: import('ava').ExecutionContext): string {
  const d = tempDir('dst-lock-')
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }))
  return d
}

test('two nodes on one image file: the second is refused naming the holder, exits non-zero, and the file is untouched', async t => {
  const d = dir(t)
  const nodes: RunningNode[] = []
  t.teardown(async () => { await Promise.all(nodes.map(n => n.kill())) })
  const image = path.join(d, 'disk.img')
  const data = randomBytes(MiB)
  fs.writeFileSync(image, data)
  nodes.push(await startNode(d, { name: 'first', dataDir: './state-first', devices: { disk: { type: 'file', path: image, size: MiB } }, exports: [{ device: 'disk' }] }))
  // The second asks for a larger size: had it opened the file, it would have grown it.
  const second = await startNode(d, { name: 'second', dataDir: './state-second', devices: { disk: { type: 'file', path: image, size: 2 * MiB } }, exports: [{ device: 'disk' }] }).then(n => { nodes.push(n); return null }, (err: Error) => err)
  t.truthy(second)
  t.regex(second?.message ?? '', /exited with 1/)
  t.regex(second?.message ?? '', new RegExp(`disk.img' is in use: pid ${String(nodes[0].proc.pid)} \\(.*dst\\.js node --config .*first\\.json\\) holds its lock`))
  t.true(fs.readFileSync(image).equals(data), 'same size, same bytes')
})

test('two nodes sharing a dataDir: the second is refused naming the first and its address', async t => {
  const d = dir(t)
  const nodes: RunningNode[] = []
  t.teardown(async () => { await Promise.all(nodes.map(n => n.kill())) })
  nodes.push(await startNode(d, { name: 'owner', dataDir: './state', devices: { m: { type: 'memory', size: '1MiB' } } }))
  const generation = fs.readFileSync(path.join(d, 'state', 'generation'), 'utf8')
  const second = await startNode(d, { name: 'intruder', dataDir: './state', devices: { m: { type: 'memory', size: '1MiB' } } }).then(n => { nodes.push(n); return null }, (err: Error) => err)
  t.regex(second?.message ?? '', /exited with 1/)
  t.regex(second?.message ?? '', new RegExp(`dataDir '.*state' is in use by node 'owner' \\(pid ${String(nodes[0].proc.pid)}, listening on 127\\.0\\.0\\.1:${nodes[0].port}`))
  t.is(fs.readFileSync(path.join(d, 'state', 'generation'), 'utf8'), generation, 'the refused node changed nothing in it')
  // Once the owner has stopped, the dataDir is free.
  t.is(await nodes[0].stop(), 0)
  nodes.push(await startNode(d, { name: 'next', dataDir: './state', devices: { m: { type: 'memory', size: '1MiB' } } }))
  t.pass()
})
