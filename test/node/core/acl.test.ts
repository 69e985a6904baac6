// Tests for node/core/acl.ts: export allow lists of addresses and CIDR blocks, and the address forms a socket may report.

import test from 'ava'
import { LOOPBACK_ONLY, allowed, normalizeAddress, parseCidr, type Cidr } from '../../../node/core/acl'

function cidr (text: string): Cidr {
  const c = parseCidr(text)
  if (typeof c === 'string') throw new Error(c)
  return c
}
const list = (...texts: string[]): Cidr[] => texts.map(cidr)

test('parseCidr: IPv4 addresses and blocks', t => {
  t.deepEqual(cidr('10.0.0.0/8'), { family: 4, bits: 0x0a000000n, prefix: 8, text: '10.0.0.0/8' })
  t.deepEqual(cidr('192.168.1.7'), { family: 4, bits: 0xc0a80107n, prefix: 32, text: '192.168.1.7' })
  t.is(cidr('0.0.0.0/0').prefix, 0)
  t.is(cidr('255.255.255.255/32').bits, 0xffffffffn)
})

test('parseCidr: IPv6 addresses and blocks, compressed or not', t => {
  t.deepEqual(cidr('::1'), { family: 6, bits: 1n, prefix: 128, text: '::1' })
  t.deepEqual(cidr('fd00::/8'), { family: 6, bits: 0xfdn << 120n, prefix: 8, text: 'fd00::/8' })
  t.is(cidr('2001:db8::/32').bits, 0x20010db8n << 96n)
  t.is(cidr('2001:db8:0:0:0:0:0:1').bits, (0x20010db8n << 96n) | 1n)
  t.is(cidr('2001:db8::1').bits, cidr('2001:0db8:0000:0000:0000:0000:0000:0001').bits)
  t.is(cidr('::').bits, 0n)
  t.is(cidr('1::').bits, 1n << 112n)
  t.is(cidr('::/0').prefix, 0)
})

test('parseCidr: bad prefixes are refused with the text and the allowed range', t => {
  const cases: Array<[string, string]> = [
    ['10.0.0.0/33', '0..32'], ['10.0.0.0/-1', '0..32'], ['10.0.0.0/', '0..32'], ['10.0.0.0/8.0', '0..32'],
    ['10.0.0.0/ 8', '0..32'], ['10.0.0.0/0x8', '0..32'], ['10.0.0.0/abc', '0..32'], ['10.0.0.0/1e1', '0..32'],
    ['::1/129', '0..128'], ['fd00::/-8', '0..128'], ['::/', '0..128'],
  ]
  for (const [text, range] of cases) {
    const r = parseCidr(text)
    t.is(typeof r, 'string', text)
    t.true((r as string).includes(text) && (r as string).includes(range), `${text}: ${String(r)}`)
  }
})

test('parseCidr: things that are not addresses are refused', t => {
  for (const text of ['', 'localhost', '10.0.0', '10.0.0.256', '1.2.3.4.5', '10.0.0.0/8/8', 'fd00:::1', 'g::1', '::1::2']) {
    t.is(typeof parseCidr(text), 'string', text)
  }
  for (const v of [null, undefined, 42, ['10.0.0.0/8'], {}]) t.regex(parseCidr(v) as string, /expected an address or CIDR string/)
})

test('allowed: IPv4 blocks match their addresses only', t => {
  const acl = list('10.0.0.0/8', '192.168.1.7', '172.16.0.0/12')
  for (const a of ['10.0.0.1', '10.255.255.255', '192.168.1.7', '172.16.0.1', '172.31.255.254']) t.true(allowed(acl, a), a)
  for (const a of ['11.0.0.1', '9.255.255.255', '192.168.1.8', '172.32.0.1', '172.15.255.255', '127.0.0.1']) t.false(allowed(acl, a), a)
})

test('allowed: a block given with host bits set still matches its whole block', t => {
  const acl = list('10.1.2.3/8')
  t.true(allowed(acl, '10.200.0.1'))
  t.false(allowed(acl, '11.1.2.3'))
})

test('allowed: IPv6 blocks', t => {
  const acl = list('fd00::/8', '2001:db8:1::/48', '::1')
  for (const a of ['fd12:3456::1', 'fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', '2001:db8:1:ffff::9', '::1', '0:0:0:0:0:0:0:1']) t.true(allowed(acl, a), a)
  for (const a of ['fe00::1', '2001:db8:2::1', '::2', '2001:db9:1::1']) t.false(allowed(acl, a), a)
})

test('allowed: prefix 0 matches every address of its family and none of the other', t => {
  t.true(allowed(list('0.0.0.0/0'), '203.0.113.9'))
  t.false(allowed(list('0.0.0.0/0'), '2001:db8::1'))
  t.true(allowed(list('::/0'), '2001:db8::1'))
  t.false(allowed(list('::/0'), '203.0.113.9'))
})

test('allowed: an empty list and unparseable addresses allow nothing', t => {
  t.false(allowed([], '127.0.0.1'))
  const all = list('0.0.0.0/0', '::/0')
  for (const a of ['', 'localhost', 'not an address', '1.2.3']) t.false(allowed(all, a), JSON.stringify(a))
})

test('LOOPBACK_ONLY allows 127.0.0.0/8 and ::1, nothing else', t => {
  const acl = LOOPBACK_ONLY.map(cidr)
  for (const a of ['127.0.0.1', '127.1.2.3', '::1', '::ffff:127.0.0.1']) t.true(allowed(acl, a), a)
  for (const a of ['10.0.0.1', '128.0.0.1', '::2', 'fe80::1', '0.0.0.0']) t.false(allowed(acl, a), a)
})

test('normalizeAddress: ::ffff:127.0.0.1 (IPv4-mapped) becomes IPv4', t => {
  const v4 = { family: 4, bits: 0x7f000001n }
  t.deepEqual(normalizeAddress('::ffff:127.0.0.1'), v4)
  t.deepEqual(normalizeAddress('::FFFF:127.0.0.1'), v4)
  t.deepEqual(normalizeAddress('0:0:0:0:0:ffff:127.0.0.1'), v4)
  t.deepEqual(normalizeAddress('::ffff:7f00:1'), v4)
  t.deepEqual(normalizeAddress(' 127.0.0.1 '), v4)
})

test('normalizeAddress: the long hex form 0000:0000:0000:0000:0000:ffff:7f00:0001 is 127.0.0.1', t => {
  t.deepEqual(normalizeAddress('0000:0000:0000:0000:0000:ffff:7f00:0001'), { family: 4, bits: 0x7f000001n })
  t.deepEqual(normalizeAddress('0000:0000:0000:0000:0000:FFFF:0A00:0001'), { family: 4, bits: 0x0a000001n })
  t.deepEqual(normalizeAddress('0000:0000:0000:0000:0000:0000:0000:0001'), { family: 6, bits: 1n })
})

test('allowed: IPv4-mapped and long hex forms of a client address match IPv4 rules', t => {
  const acl = list('127.0.0.0/8')
  t.true(allowed(acl, '::ffff:127.0.0.1'))
  t.true(allowed(acl, '0000:0000:0000:0000:0000:ffff:7f00:0001'))
  t.false(allowed(acl, '0000:0000:0000:0000:0000:ffff:0a00:0001'))
  t.true(allowed(list('::1'), '0000:0000:0000:0000:0000:0000:0000:0001'))
  t.false(allowed(list('::1'), '0000:0000:0000:0000:0000:ffff:7f00:0001'), 'mapped 127.0.0.1 is not ::1')
})

test('normalizeAddress: not an address gives null; plain IPv6 stays IPv6', t => {
  t.is(normalizeAddress('nope'), null)
  t.is(normalizeAddress(''), null)
  t.is(normalizeAddress('::ffff:999.0.0.1'), null)
  t.deepEqual(normalizeAddress('2001:db8::1'), { family: 6, bits: (0x20010db8n << 96n) | 1n })
  t.deepEqual(normalizeAddress('::1'), { family: 6, bits: 1n })
})

// Regression: node/core/acl.ts parseCidr keeps an IPv4-mapped allow entry ("::ffff:127.0.0.1", "::ffff:10.0.0.0/104") as
// family 6, but normalizeAddress turns every mapped client address into family 4, so such an entry can never match
// any client. parseCidr should map it to IPv4 the same way (family 4, prefix - 96), or refuse it.
test('allowed: an IPv4-mapped allow entry matches the IPv4 client it names', t => {
  t.true(allowed(list('::ffff:127.0.0.1'), '127.0.0.1'))
  t.true(allowed(list('::ffff:10.0.0.0/104'), '::ffff:10.1.2.3'))
})
