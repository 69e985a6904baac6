// dst:// URLs, which name one export of one node: dst://HOST:PORT/NAME (an IPv6 host in brackets, the name %-escaped);
// dsts://HOST:PORT/NAME is the same export reached over TLS.

export interface DstUrl { host: string, port: number, export: string, /** dsts://: connect with TLS. */ tls?: boolean }

/** Parses a dst:// url; a string is the reason it is not one. */
export function parseDstUrl (value: unknown): DstUrl | string {
  if (typeof value !== 'string') return `expected a dst://HOST:PORT/NAME url, got ${JSON.stringify(value)}`
  const m = /^dst(s?):\/\/(\[[0-9a-fA-F:.]+\]|[^/:[\]]+):(\d{1,5})\/([^/?#]+)$/.exec(value)
  if (m === null) return `"${value}" is not a dst://HOST:PORT/NAME url`
  const port = Number(m[3])
  if (port < 1 || port > 65535) return `"${value}": port ${port} is out of range`
  const host = m[2].startsWith('[') ? m[2].slice(1, -1) : m[2]
  let name: string
  try {
    name = decodeURIComponent(m[4])
  } catch {
    return `"${value}": bad %-escape in the export name`
  }
  return m[1] === 's' ? { host, port, export: name, tls: true } : { host, port, export: name }
}

export function formatDstUrl (u: DstUrl): string {
  return `${u.tls === true ? 'dsts' : 'dst'}://${u.host.includes(':') ? `[${u.host}]` : u.host}:${u.port}/${encodeURIComponent(u.export)}`
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
