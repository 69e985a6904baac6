import test from 'ava'
import { insertMismatch, pickReference, type VerifyMismatch } from '../../../algorithms/redundant/verify'
import { differingChunks, differingRuns } from '../../../algorithms/redundant/digests'
import { DIGEST_SIZE } from '../../../node/core/hasher'

const d = (...bytes: number[]): Buffer => Buffer.concat(bytes.map(b => Buffer.alloc(DIGEST_SIZE, b)))

test('the reference: the operator\'s leg, else a strict majority of three or more, else none', t => {
  t.deepEqual(pickReference(['a', 'b'], [d(1), d(2)], 'b'), { reference: 1, referenceName: 'b' })
  t.deepEqual(pickReference(['a', 'b'], [d(1), d(2)], null), { reference: -1, referenceName: null })
  t.deepEqual(pickReference(['a', 'b', 'c'], [d(1), d(2), d(2)], null), { reference: 1, referenceName: 'majority' })
  t.deepEqual(pickReference(['a', 'b', 'c'], [d(1), d(2), d(3)], null), { reference: -1, referenceName: null })
})

test('mismatches are listed in region order whatever order they finish in, at most 1000', t => {
  const list: VerifyMismatch[] = []
  const m = (region: number): VerifyMismatch => ({ region, offset: 0, length: 1, chunks: 1, legs: [], reference: null, repaired: false })
  for (const r of [5, 1, 3]) insertMismatch(list, m(r))
  t.deepEqual(list.map(x => x.region), [1, 3, 5])
  for (let r = 10; r < 1010; r++) insertMismatch(list, m(r))
  t.is(list.length, 1000)
  insertMismatch(list, m(0))
  t.is(list[0].region, 0)
  t.is(list.length, 1000)
})

test('differing chunks and runs: adjacent chunks joined, the last one cut at the region\'s end', t => {
  t.is(differingChunks([d(1, 2, 3), d(1, 9, 9)]), 2)
  t.deepEqual(differingRuns(d(1, 2, 3, 4), d(1, 9, 9, 4), 100, 400), [[100, 300]])
  t.deepEqual(differingRuns(d(1, 2, 3), d(9, 2, 9), 100, 250), [[0, 100], [200, 250]])
})
