// dst:// URLs, which name one export of one node: dst://HOST:PORT/NAME (an IPv6 host in brackets, the name %-escaped).

export interface DstUrl { host: string, port: number, export: string }

/** Parses a dst:// url; a string is the reason it is not one. */
export function parseDstUrl (value: unknown): DstUrl | string {
  if (typeof value !== 'string') return `expected a dst://HOST:PORT/NAME url, got ${JSON.stringify(value)}`
  const m = /^dst:\/\/(\[[0-9a-fA-F:.]+\]|[^/:[\]]+):(\d{1,5})\/([^/?#]+)$/.exec(value)
  if (m === null) return `"${value}" is not a dst://HOST:PORT/NAME url`
  const port = Number(m[2])
  if (port < 1 || port > 65535) return `"${value}": port ${port} is out of range`
  const host = m[1].startsWith('[') ? m[1].slice(1, -1) : m[1]
  let name: string
  try {
    name = decodeURIComponent(m[3])
  } catch {
    return `"${value}": bad %-escape in the export name`
  }
  return { host, port, export: name }
}

export function formatDstUrl (u: DstUrl): string {
  return `dst://${u.host.includes(':') ? `[${u.host}]` : u.host}:${u.port}/${encodeURIComponent(u.export)}`
}

/** HOST:PORT as the config takes it back: an IPv6 host in brackets ([::1]:7008). */
export function formatAddress (host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`
}

/**
 * A node's HTTP base from what a person types: http(s)://HOST:PORT as is, or HOST:PORT / [V6]:PORT. A string is
 * the reason it is neither.
 */
export function nodeBase (value: string): string | { base: string } {
  if (/^https?:\/\//.test(value)) return { base: value.replace(/\/+$/, '') }
  const m = /^(\[[0-9a-fA-F:.]+\]|[^/:[\]\s]+):(\d{1,5})$/.exec(value)
  if (m === null || Number(m[2]) < 1 || Number(m[2]) > 65535) return `'${value}' is not a node address (HOST:PORT, [IPv6]:PORT or http://HOST:PORT)`
  return { base: `http://${m[1]}:${m[2]}` }
}
