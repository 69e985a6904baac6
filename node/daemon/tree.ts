// The whole tree across nodes (`dst status --tree`, and GET /tree for the web view) across nodes. Starting from one node's /status, every remote device is followed
// to the node that serves it (the HTTP /status on the same port as its dst:// URL), and that node's exported device
// is drawn beneath the remote device, down to the leaves. A branch that cannot be reached is drawn as such and the
// rest is still drawn; a node export already drawn is not drawn again (cycles, and two paths to one export). Every
// fetch has a timeout, nodes are fetched once each, and the crawl stops after `maxNodes` nodes.

import { formatSize } from '../core/size'
import { parseDstUrl } from '../core/url'

/** A device as a node's /status shows it (what the tree and `dst status` read of it). */
export interface DeviceView {
  type: string
  size: number
  state: string
  members?: Array<DeviceView & { name: string }>
  [key: string]: unknown
}

/** A node's /status, the parts the tree and `dst status` read. */
export interface StatusView {
  name: string
  listen?: string
  devices: Record<string, DeviceView>
  exports: Array<{ name: string, device: string, url?: string, readOnly?: boolean, connections?: number }>
}

/** One device of the tree, as `--json` prints it: children under `children`, like lsblk --json. */
export interface TreeDevice {
  name: string
  /** The node that holds this device, and its address (HOST:PORT). */
  node: string
  address: string
  type: string
  size: number
  state: string
  details: Record<string, unknown>
  children: TreeDevice[]
  /** For a remote device: the device its peer exports, or why it could not be reached. */
  served?: { node: string, address: string, export: string, device: TreeDevice } | { address: string, export: string, error: string } | { address: string, export: string, shownAbove: true }
}

export interface TreeOptions { timeout?: number, maxNodes?: number }

/** Fields a person needs in the tree; the rest of a device's /status stays in the node's own /status. */
const DETAIL_FIELDS = ['path', 'url', 'writable', 'dirtyBytes', 'resync', 'verify', 'foundIdentity', 'lastError', 'chunk', 'layout', 'memberState', 'role', 'start']

/** A node's HTTP base from one of its export urls: https for dsts:// (its listener is TLS, /status with it). */
function httpBase (host: string, port: number, tls = false): string {
  return `${tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${port}`
}

function addressOf (host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`
}

export class TreeCrawler {
  private readonly statuses = new Map<string, Promise<StatusView | string>>()
  private readonly shown = new Set<string>()
  private readonly timeout: number
  private readonly maxNodes: number

  constructor (options: TreeOptions = {}) {
    this.timeout = options.timeout ?? 3000
    this.maxNodes = options.maxNodes ?? 200
  }

  /** The roots of the tree as seen from the node at `base` (devices that are nobody's member). */
  async crawl (base: string): Promise<{ node: string, address: string, roots: TreeDevice[] }> {
    const status = await this.status(base)
    if (typeof status === 'string') throw new Error(`${base}: ${status}`)
    const address = status.listen ?? new URL(base).host
    const memberNames = new Set<string>()
    for (const d of Object.values(status.devices)) for (const m of d.members ?? []) memberNames.add(m.name)
    const roots = Object.entries(status.devices).filter(([name]) => !memberNames.has(name))
    return { node: status.name, address, roots: await Promise.all(roots.map(([name, d]) => this.device(name, d, status.name, address))) }
  }

  private status (base: string): Promise<StatusView | string> {
    let known = this.statuses.get(base)
    if (known === undefined) {
      known = this.statuses.size >= this.maxNodes
        ? Promise.resolve(`not fetched: the tree has more than ${this.maxNodes} nodes`)
        : fetchJson(`${base}/status`, this.timeout)
      this.statuses.set(base, known)
    }
    return known
  }

  private async device (name: string, d: DeviceView, node: string, address: string): Promise<TreeDevice> {
    const details: Record<string, unknown> = {}
    for (const k of DETAIL_FIELDS) if (d[k] !== undefined) details[k] = d[k]
    const out: TreeDevice = { name, node, address, type: d.type, size: d.size, state: d.state, details, children: [] }
    out.children = await Promise.all((d.members ?? []).map(m => this.device(m.name, m, node, address)))
    if (d.type === 'remote' && typeof d.url === 'string') out.served = await this.follow(d.url)
    return out
  }

  private async follow (url: string): Promise<TreeDevice['served']> {
    const target = parseDstUrl(url)
    if (typeof target === 'string') return { address: url, export: '', error: target }
    const address = addressOf(target.host, target.port)
    const key = `${address}/${target.export}`
    if (this.shown.has(key)) return { address, export: target.export, shownAbove: true }
    this.shown.add(key)
    const status = await this.status(httpBase(target.host, target.port, target.tls === true))
    if (typeof status === 'string') return { address, export: target.export, error: status }
    const e = status.exports.find(x => x.name === target.export)
    if (e === undefined) return { address, export: target.export, error: `node ${status.name} has no export '${target.export}'` }
    const dev = status.devices[e.device] ?? findMember(status.devices, e.device)
    if (dev === undefined) return { address, export: target.export, error: `node ${status.name}: export '${e.name}' names device '${e.device}', not in its /status` }
    return { node: status.name, address: status.listen ?? address, export: e.name, device: await this.device(e.device, dev, status.name, status.listen ?? address) }
  }
}

function findMember (devices: Record<string, DeviceView>, name: string): DeviceView | undefined {
  for (const d of Object.values(devices)) {
    for (const m of d.members ?? []) {
      if (m.name === name) return m
      const deeper = findMember({ x: m }, name)
      if (deeper !== undefined) return deeper
    }
  }
  return undefined
}

async function fetchJson (url: string, timeout: number): Promise<StatusView | string> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeout) })
    if (!res.ok) return `HTTP ${res.status}`
    const body = await res.json() as StatusView
    if (typeof body !== 'object' || body === null || typeof body.devices !== 'object' || !Array.isArray(body.exports)) return 'not a dst node\'s /status'
    return body
  } catch (err) {
    const e = err as Error
    if (e.name === 'TimeoutError') return `no answer within ${timeout} ms`
    if (e instanceof SyntaxError) return 'not a dst node\'s /status (not JSON)'
    return fetchFailure(err)
  }
}

/** Why a fetch() failed, in words: undici's own message is only "fetch failed"; the cause says what happened. */
export function fetchFailure (err: unknown): string {
  const cause = (err as { cause?: { code?: string, message?: string } }).cause
  return cause?.code ?? cause?.message ?? (err as Error).message
}

function line (d: TreeDevice): string {
  const parts = [d.type, formatSize(d.size), d.state]
  const x = d.details
  if (typeof x.path === 'string') parts.push(x.path)
  if (typeof x.url === 'string') parts.push(x.url)
  if (typeof x.layout === 'string') parts.push(x.layout)
  if (typeof x.chunk === 'number') parts.push(`chunk ${formatSize(x.chunk)}`)
  if (x.writable === false) parts.push('read-only')
  if (typeof x.dirtyBytes === 'number' && x.dirtyBytes > 0) parts.push(`dirty ${formatSize(x.dirtyBytes)}`)
  if (typeof x.foundIdentity === 'string') parts.push(`found disk ${x.foundIdentity}`)
  if (typeof x.lastError === 'string') parts.push(`last error: ${x.lastError}`)
  return `${d.name}  ${parts.join('  ')}`
}

/** ", N in holes skipped" when a resync skipped any of its source's holes (sparse-aware copies). */
export function skippedText (skipped: number | undefined): string {
  return typeof skipped === 'number' && skipped > 0 ? `, ${formatSize(skipped)} in holes skipped` : ''
}

function bar (done: number, total: number): string {
  const frac = total > 0 ? Math.min(1, done / total) : 1
  const fill = Math.round(frac * 24)
  return `[${'#'.repeat(fill)}${'.'.repeat(24 - fill)}] ${(frac * 100).toFixed(0)}% ${formatSize(done)} / ${formatSize(total)}`
}

/** The tree as text, top-down: each device, its members, and under a remote device the node and device it reaches. */
export function renderTree (tree: { node: string, address: string, roots: TreeDevice[] }): string {
  const lines = [`node ${tree.node} (${tree.address})`]
  const draw = (d: TreeDevice, prefix: string, last: boolean): void => {
    lines.push(`${prefix}${last ? '└─ ' : '├─ '}${line(d)}`)
    const inner = prefix + (last ? '   ' : '│  ')
    const resync = d.details.resync as { doneBytes: number, totalBytes: number, skippedBytes?: number } | undefined
    if (resync !== undefined) lines.push(`${inner}   resync ${bar(resync.doneBytes, resync.totalBytes)}${skippedText(resync.skippedBytes)}`)
    const verify = d.details.verify as { state: string, doneBytes: number, totalBytes: number, mismatches: number } | undefined
    if (verify !== undefined && verify.state === 'running') lines.push(`${inner}   verify ${bar(verify.doneBytes, verify.totalBytes)}, ${verify.mismatches} mismatched`)
    const kids: Array<() => void> = d.children.map((c, i) => () => draw(c, inner, i === d.children.length - 1 && d.served === undefined))
    const s = d.served
    if (s !== undefined) {
      kids.push(() => {
        if ('device' in s) {
          lines.push(`${inner}└─ node ${s.node} (${s.address}) export ${s.export}`)
          draw(s.device, inner + '   ', true)
        } else if ('error' in s) {
          lines.push(`${inner}└─ ${s.address} export ${s.export}: unreachable: ${s.error}`)
        } else {
          lines.push(`${inner}└─ ${s.address} export ${s.export} (shown above)`)
        }
      })
    }
    for (const k of kids) k()
  }
  tree.roots.forEach((d, i) => draw(d, '', i === tree.roots.length - 1))
  return lines.join('\n')
}

/** The tree as one nested JSON document: a remote device's child is the device its peer exports. */
export function treeJson (tree: { node: string, address: string, roots: TreeDevice[] }): unknown {
  const conv = (d: TreeDevice): Record<string, unknown> => {
    const children = d.children.map(conv)
    const out: Record<string, unknown> = { name: d.name, node: d.node, address: d.address, type: d.type, size: d.size, state: d.state, ...d.details }
    const s = d.served
    if (s !== undefined) {
      if ('device' in s) {
        out.served = { node: s.node, address: s.address, export: s.export }
        children.push(conv(s.device))
      } else if ('error' in s) out.served = { address: s.address, export: s.export, error: s.error }
      else out.served = { address: s.address, export: s.export, shownAbove: true }
    }
    out.children = children
    return out
  }
  return { node: tree.node, address: tree.address, children: tree.roots.map(conv) }
}
