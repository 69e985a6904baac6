// `dst events`: follows a node's GET /events (Server-Sent Events, node/daemon/events.ts) and prints each event as a
// line a person reads and a script splits on spaces, like `drbdsetup events2`:
//   2026-12-02T14:54:07.055Z mid leg-failed device:m leg:a state:in-sync->failed
// The stream's first event (the node's state) is printed as one `exists` line per device and leg, then `exists -`.
// With --tree, every node of the tree (found by the crawler, node/daemon/tree.ts) is followed; a node whose stream
// ends is reported and tried again, at most `retries` times in a row.

import { fetchFailure, TreeCrawler, treeJson } from '../../node/daemon/tree'
import type { NodeEvent } from '../../node/daemon/events'

interface FollowOptions { json: boolean, out: (line: string) => void, retries?: number, retryDelay?: number, signal?: AbortSignal }

/** Reads one node's event stream; resolves when it ends (or rejects when it cannot be opened). */
async function readStream (base: string, onEvent: (e: NodeEvent) => void, signal?: AbortSignal): Promise<void> {
  const res = await fetch(`${base}/events`, { signal })
  if (!res.ok || res.body === null) throw new Error(`HTTP ${res.status}`)
  const decoder = new TextDecoder()
  let text = ''
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    text += decoder.decode(chunk, { stream: true })
    let end = text.indexOf('\n\n')
    while (end >= 0) {
      const block = text.slice(0, end)
      text = text.slice(end + 2)
      const data = block.split('\n').filter(l => l.startsWith('data: ')).map(l => l.slice(6)).join('\n')
      if (data !== '') onEvent(JSON.parse(data) as NodeEvent)
      end = text.indexOf('\n\n')
    }
  }
}

const FIELD_ORDER = ['device', 'leg', 'export']

/** One event as a line: time, node, kind, then key:value pairs (from->to as `state:FROM->TO`). */
export function formatEvent (e: NodeEvent): string[] {
  if (e.kind === 'snapshot') return snapshotLines(e)
  const parts = [e.time, e.node, e.kind]
  for (const k of FIELD_ORDER) if (e[k] !== undefined) parts.push(`${k}:${String(e[k])}`)
  if (e.from !== undefined || e.to !== undefined) parts.push(`${e.kind === 'connections' ? 'connections' : 'state'}:${e.from ?? ''}->${e.to ?? ''}`)
  if (e.kind === 'rates') {
    for (const [name, r] of Object.entries(e.exports as Record<string, { readBytesPerSecond: number, writeBytesPerSecond: number }>)) parts.push(`export:${name}:read:${r.readBytesPerSecond}:write:${r.writeBytesPerSecond}`)
  }
  for (const [k, v] of Object.entries(e)) {
    if (['time', 'node', 'kind', 'from', 'to', 'exports', ...FIELD_ORDER].includes(k) || v === null || v === undefined) continue
    parts.push(`${k}:${typeof v === 'object' ? JSON.stringify(v) : String(v)}`)
  }
  return [parts.join(' ')]
}

function snapshotLines (e: NodeEvent): string[] {
  const status = e.status as { devices: Record<string, { type: string, state: string, members?: Array<{ name: string, state: string, dirtyBytes?: number }> }>, exports: Array<{ name: string, device: string, connections: number, lease?: { holder: string | null } }> }
  const lines: string[] = []
  for (const [name, d] of Object.entries(status.devices)) {
    lines.push(`${e.time} ${e.node} exists device:${name} type:${d.type} state:${d.state}`)
    if (d.type === 'mirror' || d.type === 'parity') for (const m of d.members ?? []) lines.push(`${e.time} ${e.node} exists device:${name} leg:${m.name} state:${m.state}${m.dirtyBytes !== undefined ? ` dirtyBytes:${m.dirtyBytes}` : ''}`)
  }
  for (const x of status.exports) lines.push(`${e.time} ${e.node} exists export:${x.name} device:${x.device} connections:${x.connections}${x.lease?.holder != null ? ` lease:${x.lease.holder}` : ''}`)
  lines.push(`${e.time} ${e.node} exists -`)
  return lines
}

/** Follows one node until its stream ends, trying again after a stream that ends; gives up after `retries` in a row. */
export async function follow (base: string, options: FollowOptions): Promise<void> {
  const retries = options.retries ?? 30
  const delay = options.retryDelay ?? 1000
  let failures = 0
  for (;;) {
    let got = false
    let why = 'the stream ended'
    try {
      await readStream(base, e => {
        got = true
        failures = 0
        if (options.json) options.out(JSON.stringify(e))
        else for (const l of formatEvent(e)) options.out(l)
      }, options.signal)
    } catch (err) {
      if (options.signal?.aborted === true) return
      why = fetchFailure(err)
    }
    if (options.signal?.aborted === true) return
    if (!got) failures++
    const stamp = new Date().toISOString()
    if (failures >= retries) {
      options.out(options.json ? JSON.stringify({ time: stamp, node: base, kind: 'unreachable', error: why, final: true }) : `${stamp} ${base} unreachable error:${JSON.stringify(why)} giving-up`)
      return
    }
    options.out(options.json ? JSON.stringify({ time: stamp, node: base, kind: 'unreachable', error: why }) : `${stamp} ${base} unreachable error:${JSON.stringify(why)} retrying`)
    await new Promise(resolve => setTimeout(resolve, delay))
  }
}

/** Every node of the tree from `base` down: their HTTP bases (the node at `base` first). */
export async function treeNodes (base: string, timeout = 3000): Promise<string[]> {
  const tree = treeJson(await new TreeCrawler({ timeout }).crawl(base)) as { address: string, children: Array<Record<string, unknown>> }
  const found = new Set<string>([tree.address])
  const walk = (d: Record<string, unknown>): void => {
    if (typeof d.address === 'string') found.add(d.address)
    const s = d.served as { address?: string } | undefined
    if (s?.address !== undefined && !s.address.startsWith('dst://')) found.add(s.address)
    for (const c of (d.children as Array<Record<string, unknown>> | undefined) ?? []) walk(c)
  }
  for (const c of tree.children) walk(c)
  const own = new URL(base).host
  return [...found].map(a => a === tree.address ? base : `http://${a}`).filter((b, i, all) => all.indexOf(b) === i && (b === base || new URL(b).host !== own))
}
