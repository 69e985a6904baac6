// A 3-level tree of real nodes on loopback for the watching tests (events, web view): two leaves on fixed ports (so
// a leaf killed can come back where its peer looks for it), a mirror node of both, and a top node whose linear array
// holds a local file and a remote of the mirror. Every node is killed when the test ends.

import * as fs from 'node:fs'
import { startNode, tempDir, type RunningNode } from './node-process'
import { freePort } from './ports'

export interface WatchTree {
  dir: string
  leaves: RunningNode[]
  mid: RunningNode
  top: RunningNode
  /** Kills leaf `i` (SIGKILL). */
  killLeaf: (i: number) => Promise<void>
  /** Starts leaf `i` again on its port, with its file and dataDir. */
  restartLeaf: (i: number) => Promise<RunningNode>
}

export async function startWatchTree (t: { teardown: (fn: () => unknown) => void }, size = '4MiB'): Promise<WatchTree> {
  const dir = tempDir()
  const nodes: RunningNode[] = []
  t.teardown(async () => {
    await Promise.all(nodes.map(n => n.kill()))
    fs.rmSync(dir, { recursive: true, force: true })
  })
  const leafConfig = async (i: number, port: number): Promise<RunningNode> => {
    const name = `leaf${i + 1}`
    const n = await startNode(dir, { name, listen: `127.0.0.1:${port}`, dataDir: `./state/${name}`, devices: { disk: { type: 'file', path: `./${name}.img`, size } }, exports: [{ device: 'disk' }] })
    nodes.push(n)
    return n
  }
  const ports = [await freePort(), await freePort()]
  const leaves = [await leafConfig(0, ports[0]), await leafConfig(1, ports[1])]
  const mid = await startNode(dir, {
    name: 'mid', listen: '127.0.0.1:0', dataDir: './state/mid',
    devices: {
      a: { type: 'remote', url: leaves[0].url('disk'), reconnectTimeout: '1s' },
      b: { type: 'remote', url: leaves[1].url('disk'), reconnectTimeout: '1s' },
      m: { type: 'mirror', members: ['a', 'b'], region: '64KiB' },
    },
    exports: [{ device: 'm' }],
  })
  nodes.push(mid)
  const top = await startNode(dir, {
    name: 'top', listen: '127.0.0.1:0', dataDir: './state/top',
    devices: {
      local: { type: 'file', path: './top.img', size },
      far: { type: 'remote', url: mid.url('m') },
      all: { type: 'linear', members: ['local', 'far'] },
    },
    exports: [{ device: 'all' }],
  })
  nodes.push(top)
  return {
    dir,
    leaves,
    mid,
    top,
    killLeaf: async i => { await leaves[i].kill() },
    restartLeaf: async i => { leaves[i] = await leafConfig(i, ports[i]); return leaves[i] },
  }
}
