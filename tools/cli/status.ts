// `dst status`: fetches a node's /status and draws its devices as a tree with state and size.

import { formatSize } from '../../node/core/size'
import { DstError, ErrorCode } from '../../node/core/errors'
import { fetchFailure, skippedText, type DeviceView, type StatusView } from '../../node/daemon/tree'

export async function fetchStatus (base: string): Promise<StatusView> {
  const url = new URL('/status', base).toString()
  let res: Response
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(10000) })
  } catch (err) {
    throw new DstError(ErrorCode.HTTP, `${url}: ${fetchFailure(err)}`)
  }
  if (!res.ok) throw new DstError(ErrorCode.HTTP, `${url}: HTTP ${res.status}`)
  return await res.json() as StatusView
}

export { fetchFailure }

export function renderStatus (s: StatusView): string {
  const lines = [`node ${s.name}${s.listen !== undefined ? ` (${s.listen})` : ''}`]
  const memberNames = new Set<string>()
  for (const d of Object.values(s.devices)) for (const m of d.members ?? []) memberNames.add(m.name)
  const roots = Object.entries(s.devices).filter(([name]) => !memberNames.has(name))
  const draw = (name: string, d: DeviceView, prefix: string, last: boolean): void => {
    const detail = [d.type, formatSize(d.size), d.state]
    if (typeof d.path === 'string') detail.push(d.path)
    if (typeof d.url === 'string') detail.push(d.url)
    if (typeof d.layout === 'string') detail.push(String(d.layout))
    if (typeof d.chunk === 'number') detail.push(`chunk ${formatSize(d.chunk)}`)
    if (d.role === 'parity') detail.push('parity')
    if (d.writable === false) detail.push('read-only')
    if (typeof d.dirtyBytes === 'number' && d.dirtyBytes > 0) detail.push(`dirty ${formatSize(d.dirtyBytes)}`)
    if (typeof d.resyncSkippedBytes === 'number' && d.resyncSkippedBytes > 0) detail.push(`resync skipped ${formatSize(d.resyncSkippedBytes)} of holes`)
    if (typeof d.foundIdentity === 'string') detail.push(`found disk ${d.foundIdentity}`)
    if (typeof d.lastError === 'string') detail.push(`last error: ${d.lastError}`)
    lines.push(`${prefix}${last ? '└─ ' : '├─ '}${name}  ${detail.join('  ')}`)
    const resync = d.resync as { doneBytes: number, totalBytes: number, skippedBytes?: number } | undefined
    if (resync !== undefined) {
      const frac = resync.totalBytes > 0 ? Math.min(1, resync.doneBytes / resync.totalBytes) : 1
      const fill = Math.round(frac * 24)
      lines.push(`${prefix}${last ? '   ' : '│  '}   resync [${'#'.repeat(fill)}${'.'.repeat(24 - fill)}] ${(frac * 100).toFixed(0)}% ${formatSize(resync.doneBytes)} / ${formatSize(resync.totalBytes)}${skippedText(resync.skippedBytes)}`)
    }
    const verify = d.verify as { state: string, doneBytes: number, totalBytes: number, mismatches: number, repairedRegions: number, finishedAt: string | null, incomplete?: string | null } | undefined
    if (verify !== undefined) {
      const pct = verify.totalBytes > 0 ? Math.min(100, (100 * verify.doneBytes) / verify.totalBytes) : 100
      const when = verify.finishedAt !== null ? ` (${verify.finishedAt})` : ''
      lines.push(`${prefix}${last ? '   ' : '│  '}   verify ${verify.state} ${pct.toFixed(0)}%, ${verify.mismatches} mismatched region${verify.mismatches === 1 ? '' : 's'}` +
        `${verify.repairedRegions > 0 ? `, ${verify.repairedRegions} repaired` : ''}${typeof verify.incomplete === 'string' ? ` (${verify.incomplete})` : ''}${when}`)
    }
    const kids = d.members ?? []
    kids.forEach((m, i) => draw(m.name, m, prefix + (last ? '   ' : '│  '), i === kids.length - 1))
  }
  lines.push('devices')
  roots.forEach(([name, d], i) => draw(name, d, '', i === roots.length - 1))
  lines.push('exports')
  s.exports.forEach((e, i) => {
    const last = i === s.exports.length - 1
    lines.push(`${last ? '└─ ' : '├─ '}${e.url}  device ${e.device}  ${e.readOnly ? 'read-only' : 'read-write'}  ${e.connections} connection${e.connections === 1 ? '' : 's'}`)
  })
  if (s.exports.length === 0) lines.push('└─ (none)')
  return lines.join('\n')
}
