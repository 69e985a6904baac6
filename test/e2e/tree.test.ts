// `dst status --tree` across real nodes on loopback: a 3-level tree (two leaves, a mirror node of both, a top node
// with a remote of the mirror) drawn top-down through every node; with a leaf killed, its branch is drawn as
// unreachable and the rest still is; --json nests the same tree under children; a node answering garbage or nothing
// is a branch error, never a hang.

import test from 'ava'
import * as fs from 'node:fs'
import * as http from 'node:http'
import { runDst, startNode, tempDir, type RunningNode } from '../helpers/node-process'
import { freePort } from '../helpers/ports'
import { startWatchTree } from '../helpers/watch-tree'

test('the whole tree across three levels of nodes, then a leaf gone: its branch unreachable, the rest drawn', async t => {
  const { leaves, mid, top } = await startWatchTree(t)
  const shown = await runDst(['status', '--tree', top.http])
  t.is(shown.code, 0, shown.stderr)
  const text = shown.stdout.toString()
  t.log(text)
  t.regex(text, /^node top \(127\.0\.0\.1:\d+\)/)
  t.regex(text, /└─ all {2}linear {2}8 MiB {2}online/)
  t.regex(text, new RegExp(`far {2}remote {2}4 MiB {2}online {2}dst://127\\.0\\.0\\.1:${mid.port}/m`))
  t.regex(text, new RegExp(`node mid \\(127\\.0\\.0\\.1:${mid.port}\\) export m`))
  t.regex(text, /m {2}mirror {2}4 MiB {2}online/)
  t.regex(text, new RegExp(`node leaf1 \\(127\\.0\\.0\\.1:${leaves[0].port}\\) export disk`))
  t.regex(text, new RegExp(`node leaf2 \\(127\\.0\\.0\\.1:${leaves[1].port}\\) export disk`))
  t.is(text.match(/disk {2}file {2}4 MiB {2}online/g)?.length, 2, 'both leaf disks')

  const json = await runDst(['status', '--tree', '--json', top.http])
  const doc = JSON.parse(json.stdout.toString())
  t.is(doc.node, 'top')
  const all = doc.children[0]
  t.deepEqual(all.children.map((c: any) => c.name), ['local', 'far'])
  const mirror = all.children[1].children[0]
  t.like(mirror, { name: 'm', node: 'mid', type: 'mirror' })
  t.deepEqual(mirror.children.map((c: any) => c.children[0].node), ['leaf1', 'leaf2'])

  await leaves[1].kill()
  const after = await runDst(['status', '--tree', '--timeout', '2s', top.http])
  t.is(after.code, 0, after.stderr)
  const broken = after.stdout.toString()
  t.log(broken)
  t.regex(broken, new RegExp(`127\\.0\\.0\\.1:${leaves[1].port} export disk: unreachable: ECONNREFUSED`))
  t.regex(broken, new RegExp(`node leaf1 \\(127\\.0\\.0\\.1:${leaves[0].port}\\) export disk`), 'the other leaf is still drawn')
})

test('a peer that answers garbage, or nothing, is an unreachable branch within the timeout', async t => {
  const dir = tempDir()
  const nodes: RunningNode[] = []
  const garbage = http.createServer((_req, res) => { res.end('not json at all') })
  const silent = http.createServer(() => { /* never answers */ })
  const gport = await freePort()
  const sport = await freePort()
  await new Promise<void>(resolve => garbage.listen(gport, '127.0.0.1', resolve))
  await new Promise<void>(resolve => silent.listen(sport, '127.0.0.1', resolve))
  t.teardown(async () => {
    await Promise.all(nodes.map(n => n.kill()))
    garbage.closeAllConnections(); silent.closeAllConnections()
    garbage.close(); silent.close()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  // The fakes speak no dst, so no node can use them as a remote device: the crawl is pointed at them directly.
  const top = await startNode(dir, { name: 'top', listen: '127.0.0.1:0', dataDir: './state', devices: { m: { type: 'memory', size: '1MiB' } }, exports: [{ device: 'm' }] })
  nodes.push(top)
  const g = await runDst(['status', '--tree', `http://127.0.0.1:${gport}`])
  t.is(g.code, 1)
  t.regex(g.stderr, /not a dst node's \/status \(not JSON\)/)
  const began = Date.now()
  const s = await runDst(['status', '--tree', '--timeout', '500ms', `http://127.0.0.1:${sport}`])
  t.is(s.code, 1)
  t.regex(s.stderr, /no answer within 500 ms/)
  t.true(Date.now() - began < 15000, 'bounded by the timeout, not hung')
  const ok = await runDst(['status', '--tree', top.http])
  t.regex(ok.stdout.toString(), /└─ m {2}memory {2}1 MiB {2}online/)
})
