// Tests for node/core/duration.ts: durations in config files.

import test from 'ava'
import { parseDuration } from '../../../node/core/duration'

test('parseDuration: plain milliseconds as numbers and strings', t => {
  t.is(parseDuration(3000), 3000)
  t.is(parseDuration(0), 0)
  t.is(parseDuration('3000'), 3000)
})

test('parseDuration: ms, s, m and h, any case, with spaces and fractions', t => {
  t.is(parseDuration('500ms'), 500)
  t.is(parseDuration('3s'), 3000)
  t.is(parseDuration('2m'), 120_000)
  t.is(parseDuration('2min'), 120_000)
  t.is(parseDuration('1h'), 3_600_000)
  t.is(parseDuration(' 1.5S '), 1500)
  t.is(parseDuration('0.25s'), 250)
})

test('parseDuration: refusals say what is wrong', t => {
  t.regex(parseDuration('3 days') as string, /unknown unit "days"/)
  t.regex(parseDuration('fast') as string, /not a duration/)
  t.regex(parseDuration('1.5ms') as string, /whole number of milliseconds/)
  t.regex(parseDuration(-1) as string, /whole number of milliseconds/)
  t.regex(parseDuration(1.5) as string, /whole number of milliseconds/)
  t.regex(parseDuration(true) as string, /expected milliseconds/)
})
