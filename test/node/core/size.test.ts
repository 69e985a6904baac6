// Tests for node/core/size.ts: sizes in config files and on the command line.

import test from 'ava'
import { formatSize, parseSize, requireSize } from '../../../node/core/size'

const KiB = 1024
const MiB = 1024 ** 2
const GiB = 1024 ** 3
const TiB = 1024 ** 4

test('parseSize: plain byte counts as numbers and strings', t => {
  t.is(parseSize(4096), 4096)
  t.is(parseSize(0), 0)
  t.is(parseSize('4096'), 4096)
  t.is(parseSize('0'), 0)
  t.is(parseSize(Number.MAX_SAFE_INTEGER), Number.MAX_SAFE_INTEGER)
})

test('parseSize: binary units, any case, with or without B, with spaces', t => {
  t.is(parseSize('256MiB'), 256 * MiB)
  t.is(parseSize('1.5GiB'), 1.5 * GiB)
  t.is(parseSize('1GiB'), GiB)
  t.is(parseSize('2TiB'), 2 * TiB)
  t.is(parseSize('4KiB'), 4 * KiB)
  t.is(parseSize('4k'), 4 * KiB)
  t.is(parseSize('4kib'), 4 * KiB)
  t.is(parseSize('1M'), MiB)
  t.is(parseSize('3G'), 3 * GiB)
  t.is(parseSize('1T'), TiB)
  t.is(parseSize('512B'), 512)
  t.is(parseSize('512b'), 512)
  t.is(parseSize(' 64 MiB '), 64 * MiB)
  t.is(parseSize('0.5KiB'), 512)
})

test('parseSize: decimal units are refused with the binary unit suggested (issue 18: 12MB is not 12MiB)', t => {
  t.is(parseSize('12MB'), '"12MB": decimal units are not taken (did you mean 12MiB?)')
  t.is(parseSize('1GB'), '"1GB": decimal units are not taken (did you mean 1GiB?)')
  t.is(parseSize('4kb'), '"4kb": decimal units are not taken (did you mean 4KiB?)')
  t.is(parseSize('2TB'), '"2TB": decimal units are not taken (did you mean 2TiB?)')
})

test('parseSize: bad strings are described, not thrown', t => {
  for (const bad of ['', ' ', 'MiB', 'abc', '1..5MiB', '1.5.2GiB', '.5GiB', '1,5GiB', '0x100', '1e3', '1 2MiB', 'Infinity', 'NaN']) {
    const r = parseSize(bad)
    t.is(typeof r, 'string', JSON.stringify(bad))
    t.true((r as string).includes(bad.trim() === '' ? '"' : bad), `message names the value: ${String(r)}`)
  }
})

test('parseSize: unknown units are named', t => {
  const r = parseSize('12XB')
  t.is(typeof r, 'string')
  t.regex(r as string, /unknown unit "XB"/)
  t.is(typeof parseSize('1PiB'), 'string')
  t.is(typeof parseSize('1EiB'), 'string')
  t.is(typeof parseSize('1 bytes'), 'string')
})

test('parseSize: negative sizes are refused', t => {
  t.is(typeof parseSize(-1), 'string')
  t.is(typeof parseSize(-4096), 'string')
  t.is(typeof parseSize('-1'), 'string')
  t.is(typeof parseSize('-1MiB'), 'string')
})

test('parseSize: fractions that are not whole bytes, and sizes past 2^53, are refused', t => {
  t.is(typeof parseSize(1.5), 'string')
  t.is(typeof parseSize('1.5'), 'string')
  t.is(typeof parseSize('0.3KiB'), 'string') // 307.2 bytes
  t.is(typeof parseSize(NaN), 'string')
  t.is(typeof parseSize(Infinity), 'string')
  t.is(typeof parseSize(2 ** 53), 'string')
  t.is(typeof parseSize('99999999TiB'), 'string')
})

test('parseSize: values of other types are refused with their JSON', t => {
  for (const v of [null, undefined, true, {}, [], [4096]]) {
    const r = parseSize(v)
    t.is(typeof r, 'string')
  }
  t.regex(parseSize(null) as string, /got null/)
  t.regex(parseSize({ a: 1 }) as string, /got \{"a":1\}/)
})

test('requireSize returns bytes or throws a RangeError that starts with the label', t => {
  t.is(requireSize('1MiB', '--size'), MiB)
  const err = t.throws(() => requireSize('lots', '--size'), { instanceOf: RangeError })
  t.true(err.message.startsWith('--size: '))
  t.throws(() => requireSize(-1, '--size'), { instanceOf: RangeError })
})

test('formatSize picks the largest unit and shows at most one decimal', t => {
  t.is(formatSize(0), '0 B')
  t.is(formatSize(1023), '1023 B')
  t.is(formatSize(1024), '1 KiB')
  t.is(formatSize(1536), '1.5 KiB')
  t.is(formatSize(256 * MiB), '256 MiB')
  t.is(formatSize(1.5 * GiB), '1.5 GiB')
  t.is(formatSize(3 * TiB), '3 TiB')
  t.is(formatSize(2048 * TiB), '2048 TiB')
})

test('formatSize output parses back to the same size when it is exact', t => {
  for (const n of [0, 512, KiB, 1536, 64 * MiB, 1.5 * GiB, 7 * TiB]) {
    t.is(parseSize(formatSize(n).replace(' ', '')), n, formatSize(n))
  }
})
