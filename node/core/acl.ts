// Access control for exports: client addresses matched against an allow list of addresses and CIDR blocks.

import { isIPv4, isIPv6 } from 'node:net'

export interface Cidr { family: 4 | 6, bits: bigint, prefix: number, text: string }

export const LOOPBACK_ONLY = ['127.0.0.0/8', '::1/128']

/** Parses "10.0.0.0/8", "192.168.1.7", "::1", "fd00::/8"; returns a message naming the problem when it cannot. */
export function parseCidr (text: unknown): Cidr | string {
  if (typeof text !== 'string') return `expected an address or CIDR string, got ${JSON.stringify(text)}`
  const [addr, prefixText, extra] = text.split('/')
  if (extra !== undefined) return `"${text}" is not an address or CIDR block`
  const family = isIPv4(addr) ? 4 : isIPv6(addr) ? 6 : 0
  if (family === 0) return `"${text}" is not an IPv4 or IPv6 address`
  const width = family === 4 ? 32 : 128
  const prefix = prefixText === undefined ? width : Number(prefixText)
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > width || (prefixText !== undefined && !/^\d+$/.test(prefixText))) {
    return `"${text}" has a bad prefix length (0..${width})`
  }
  const bits = addressBits(addr, family)
  // An IPv4-mapped IPv6 entry (::ffff:a.b.c.d) names IPv4 clients, which is how clients are compared.
  if (family === 6 && (bits >> 32n) === 0xffffn) {
    if (prefix < 96) return `"${text}" mixes IPv4-mapped and other IPv6 addresses; write the IPv4 form`
    return { family: 4, bits: bits & 0xffffffffn, prefix: prefix - 96, text }
  }
  return { family, bits, prefix, text }
}

export function allowed (list: readonly Cidr[], address: string): boolean {
  const norm = normalizeAddress(address)
  if (norm === null) return false
  for (const c of list) {
    if (c.family !== norm.family) continue
    const width = c.family === 4 ? 32 : 128
    const shift = BigInt(width - c.prefix)
    if ((c.bits >> shift) === (norm.bits >> shift)) return true
  }
  return false
}

/** Turns "::ffff:127.0.0.1" into IPv4, and the long hex form uWebSockets.js may report into a normal address. */
export function normalizeAddress (address: string): { family: 4 | 6, bits: bigint } | null {
  let a = address.trim()
  const mapped = /^(?:0{0,4}:){0,5}(?::|0{0,4}:)?ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(a)
  if (mapped !== null) a = mapped[1]
  if (isIPv4(a)) return { family: 4, bits: addressBits(a, 4) }
  if (isIPv6(a)) {
    const bits = addressBits(a, 6)
    if ((bits >> 32n) === 0xffffn) return { family: 4, bits: bits & 0xffffffffn }
    return { family: 6, bits }
  }
  return null
}

function addressBits (addr: string, family: 4 | 6): bigint {
  if (family === 4) return addr.split('.').reduce((acc, part) => (acc << 8n) | BigInt(Number(part)), 0n)
  let [head, tail] = addr.includes('::') ? addr.split('::') : [addr, undefined]
  const parse = (s: string | undefined): string[] => (s === undefined || s === '') ? [] : s.split(':')
  let h = parse(head)
  let t = parse(tail)
  const expandV4 = (parts: string[]): string[] => {
    const last = parts[parts.length - 1]
    if (last === undefined || !last.includes('.')) return parts
    const n = addressBits(last, 4)
    return [...parts.slice(0, -1), (n >> 16n).toString(16), (n & 0xffffn).toString(16)]
  }
  if (tail === undefined) h = expandV4(h); else t = expandV4(t)
  const groups = tail === undefined ? h : [...h, ...new Array(8 - h.length - t.length).fill('0'), ...t]
  head = ''; tail = ''
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n)
}
