// A tree of 50 real nodes in this process (memory devices, small pools, one hash thread each): a top node with a
// remote of each of 7 middle nodes, each a linear array of remotes of its 6 leaves. Stopped when the test ends.

import * as fs from 'node:fs'
import { DstNode } from '../../node/daemon/node'
import { parseConfig } from '../../node/daemon/config'
import { tempDir } from './node-process'

const SMALL = { pool: { count: 2, size: '64KiB' }, hash: { threads: 1 } }

async function start (dir: string, config: Record<string, unknown>): Promise<DstNode> {
  const node = new DstNode(parseConfig({ listen: '127.0.0.1:0', ...SMALL, ...config }, dir), { log: () => {} })
  await node.start()
  return node
}

export async function startBigTree (t: { teardown: (fn: () => unknown) => void }): Promise<{ top: DstNode, nodes: DstNode[] }> {
  const dir = tempDir()
  const nodes: DstNode[] = []
  t.teardown(async () => { await Promise.all(nodes.map(n => n.stop())); fs.rmSync(dir, { recursive: true, force: true }) })
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
  return { top, nodes }
}
