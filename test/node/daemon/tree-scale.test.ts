// A tree of 50 real nodes (in this process, memory devices, small pools) crawled through GET /tree of the top one:
// every node is reached and drawn. The time it takes is logged (a measure, not asserted: the machine is shared).

import test from 'ava'
import { renderTree, TreeCrawler } from '../../../node/daemon/tree'
import { startBigTree } from '../../helpers/big-tree'

test('a tree of 50 nodes is crawled and drawn whole', async t => {
  const { top, nodes } = await startBigTree(t)
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
