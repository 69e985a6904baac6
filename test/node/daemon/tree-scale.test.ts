// A tree of 50 real nodes (in this process, memory devices, small pools) crawled through GET /tree of the top one:
// every node is reached and drawn. The time it takes is logged (a measure, not asserted: the machine is shared).

import test from 'ava'
import * as fs from 'node:fs'
import { DstNode } from '../../../node/daemon/node'
import { parseConfig } from '../../../node/daemon/config'
import { renderTree, TreeCrawler } from '../../../node/daemon/tree'
import { tempDir } from '../../helpers/node-process'

const SMALL = { pool: { count: 2, size: '64KiB' }, hash: { threads: 1 } }

async function start (dir: string, config: Record<string, unknown>): Promise<DstNode> {
  const node = new DstNode(parseConfig({ listen: '127.0.0.1:0', ...SMALL, ...config }, dir), { log: () => {} })
  await node.start()
  return node
}

test('a tree of 50 nodes is crawled and drawn whole', async t => {
  const dir = tempDir()
  const nodes: DstNode[] = []
  t.teardown(async () => { await Promise.all(nodes.map(n => n.stop())); fs.rmSync(dir, { recursive: true, force: true }) })
  // 1 top, 7 middle nodes, 6 leaves under each: 50 nodes.
  const mids: DstNode[] = []
  for (let m = 0; m < 7; m++) {
    const leaves: DstNode[] = []
    for (let l = 0; l < 6; l++) {
      const leaf = await start(dir, { name: `leaf${m}-${l}`, devices: { disk: { type: 'memory', size: '64KiB' } }, exports: [{ device: 'disk' }] })
      nodes.push(leaf)
      leaves.push(leaf)
    }
    const devices: Record<string, unknown> = {}
    leaves.forEach((leaf, l) => { devices[`r${l}`] = { type: 'remote', url: `dst://127.0.0.1:${leaf.port}/disk` } })
    devices.all = { type: 'linear', members: leaves.map((_, l) => `r${l}`) }
    const mid = await start(dir, { name: `mid${m}`, devices, exports: [{ device: 'all' }] })
    nodes.push(mid)
    mids.push(mid)
  }
  const devices: Record<string, unknown> = {}
  mids.forEach((mid, m) => { devices[`far${m}`] = { type: 'remote', url: `dst://127.0.0.1:${mid.port}/all` } })
  const top = await start(dir, { name: 'top', devices, exports: [] })
  nodes.push(top)
  t.is(nodes.length, 50)

  const times: number[] = []
  let body: { children: unknown[] } | null = null
  for (let i = 0; i < 3; i++) {
    await new Promise(resolve => setTimeout(resolve, 600)) // past GET /tree's cache
    const began = performance.now()
    const res = await fetch(`http://127.0.0.1:${top.port}/tree`)
    body = await res.json() as { children: unknown[] }
    times.push(performance.now() - began)
  }
  const text = JSON.stringify(body)
  for (let m = 0; m < 7; m++) for (let l = 0; l < 6; l++) t.true(text.includes(`"node":"leaf${m}-${l}"`), `leaf${m}-${l} in the tree`)
  const began = performance.now()
  const drawn = renderTree(await new TreeCrawler().crawl(`http://127.0.0.1:${top.port}`))
  const cli = performance.now() - began
  t.is(drawn.match(/└─ node leaf\d-\d/g)?.length, 42)
  t.log(`GET /tree of 50 nodes: ${times.map(x => x.toFixed(0)).join(', ')} ms; crawl + draw as text: ${cli.toFixed(0)} ms`)
})
