// Unit tests for node/daemon/tree.ts against fake nodes (plain HTTP servers answering crafted /status documents): a
// cycle between two nodes is drawn once, each node is fetched once however many devices point at it, an export that
// does not exist is a branch error, and the crawl stops at maxNodes.

import test from 'ava'
import * as http from 'node:http'
import type { AddressInfo } from 'node:net'
import { renderTree, TreeCrawler, treeJson } from '../../../node/daemon/tree'

interface Fake { port: number, hits: number, close: () => void }

async function fake (status: (port: number) => unknown): Promise<Fake> {
  const f: Fake = { port: 0, hits: 0, close: () => {} }
  const server = http.createServer((req, res) => {
    f.hits++
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify(status(f.port)))
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  f.port = (server.address() as AddressInfo).port
  f.close = () => { server.closeAllConnections(); server.close() }
  return f
}

const remote = (port: number, name: string): Record<string, unknown> => ({ type: 'remote', size: 1048576, state: 'online', url: `dst://127.0.0.1:${port}/${name}` })

test('a cycle between two nodes is drawn once; a node is fetched once; a missing export is a branch error', async t => {
  let bPort = 0
  const a = await fake(port => ({
    name: 'A', listen: `127.0.0.1:${port}`,
    devices: { x: { type: 'memory', size: 1048576, state: 'online' }, toB: remote(bPort, 'y'), toB2: remote(bPort, 'y'), nowhere: remote(bPort, 'nosuch') },
    exports: [{ name: 'x', device: 'x' }],
  }))
  const b = await fake(port => ({
    name: 'B', listen: `127.0.0.1:${port}`,
    devices: { back: remote(a.port, 'x'), y: { type: 'linear', size: 1048576, state: 'online', members: [{ name: 'back', ...remote(a.port, 'x') }] } },
    exports: [{ name: 'y', device: 'y' }],
  }))
  bPort = b.port
  t.teardown(() => { a.close(); b.close() })
  const tree = await new TreeCrawler({ timeout: 2000 }).crawl(`http://127.0.0.1:${a.port}`)
  const text = renderTree(tree)
  t.log(text)
  t.is(b.hits, 1, 'B fetched once for three remote devices')
  t.is(a.hits, 1, 'A fetched once: as the start, and its answer reused as B\'s peer')
  t.regex(text, new RegExp(`node B \\(127\\.0\\.0\\.1:${b.port}\\) export y`))
  t.regex(text, new RegExp(`127\\.0\\.0\\.1:${b.port} export y \\(shown above\\)`), 'the second path to B/y')
  t.regex(text, /node B has no export 'nosuch'/)
  t.regex(text, new RegExp(`node A \\(127\\.0\\.0\\.1:${a.port}\\) export x`), 'B\'s device back leads to A/x, drawn once')
  const doc = treeJson(tree) as { children: Array<{ name: string, served?: Record<string, unknown> }> }
  t.deepEqual(doc.children.map(c => c.name), ['x', 'toB', 'toB2', 'nowhere'])
  t.like(doc.children[2].served, { shownAbove: true })
  t.like(doc.children[3].served, { error: "node B has no export 'nosuch'" })
})

test('the crawl stops after maxNodes nodes and says so', async t => {
  const fakes: Fake[] = []
  // A chain of 5 nodes, each with a remote of the next.
  for (let i = 0; i < 5; i++) {
    const idx = i
    fakes.push(await fake(port => ({
      name: `n${idx}`, listen: `127.0.0.1:${port}`,
      devices: idx < 4 ? { d: remote(fakes[idx + 1]?.port ?? 1, 'd') } : { d: { type: 'memory', size: 1, state: 'online' } },
      exports: [{ name: 'd', device: 'd' }],
    })))
  }
  t.teardown(() => { for (const f of fakes) f.close() })
  const text = renderTree(await new TreeCrawler({ maxNodes: 3 }).crawl(`http://127.0.0.1:${fakes[0].port}`))
  t.log(text)
  t.regex(text, /node n2/)
  t.notRegex(text, /node n3/)
  t.regex(text, /not fetched: the tree has more than 3 nodes/)
})

test('a node that answers slowly is drawn when within the timeout, and is a branch error past it', async t => {
  const slowBody = (port: number): unknown => ({ name: 'slow', listen: `127.0.0.1:${port}`, devices: { d: { type: 'memory', size: 1048576, state: 'online' } }, exports: [{ name: 'd', device: 'd' }] })
  let slowPort = 0
  const server = http.createServer((_req, res) => { setTimeout(() => { res.setHeader('content-type', 'application/json'); res.end(JSON.stringify(slowBody(slowPort))) }, 700) })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  slowPort = (server.address() as AddressInfo).port
  const top = await fake(port => ({ name: 'top', listen: `127.0.0.1:${port}`, devices: { far: remote(slowPort, 'd') }, exports: [] }))
  t.teardown(() => { top.close(); server.closeAllConnections(); server.close() })
  const patient = renderTree(await new TreeCrawler({ timeout: 3000 }).crawl(`http://127.0.0.1:${top.port}`))
  t.regex(patient, /node slow \(127\.0\.0\.1:\d+\) export d/)
  const began = Date.now()
  const hasty = renderTree(await new TreeCrawler({ timeout: 200 }).crawl(`http://127.0.0.1:${top.port}`))
  t.regex(hasty, /export d: unreachable: no answer within 200 ms/)
  t.true(Date.now() - began < 650, 'the crawl does not wait for the slow node')
})
