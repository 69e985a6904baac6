// Tests for algorithms/parity/layout.ts: the arithmetic of where a parity array keeps its bytes. raid35 fragments and
// their inverse; raid5's left-symmetric rotation (md's table for 4 members), every array byte at exactly one member
// offset, and the write planner's choice between full-stripe, read-modify-write and reconstruct-write, checked against
// a byte-level model of what each mode must read and write.

import test from 'ava'
import fc from 'fast-check'
import { Raid35Layout, Raid5Layout, raid35Problem, raid5Problem } from '../../../algorithms/parity/layout'

test('raid35: 2^k data members plus parity; fragments of at least 512 bytes that members can address', t => {
  t.is(raid35Problem(3, 4096, [512]), null)
  t.is(raid35Problem(5, 4096, [512]), null)
  t.is(raid35Problem(9, 4096, [512]), null)
  t.regex(raid35Problem(4, 4096, []) ?? '', /2\^k data members plus one parity member \(3, 5, 9 or 17 members\), got 4/)
  t.regex(raid35Problem(2, 4096, []) ?? '', /got 2/)
  t.regex(raid35Problem(17, 4096, []) ?? '', /fragments of 256 bytes/)
  t.regex(raid35Problem(5, 4096, [4096]) ?? '', /not a multiple of a member's block size 4096/)
})

test('raid5: at least three members and a chunk members can address', t => {
  t.is(raid5Problem(3, 65536, [512]), null)
  t.regex(raid5Problem(2, 65536, []) ?? '', /at least three members, got 2/)
  t.regex(raid5Problem(5, 3000, []) ?? '', /power of two/)
  t.regex(raid5Problem(5, 4096, [8192]) ?? '', /block size 8192/)
})

test('raid35: size, member ranges, scatter and gather are inverses', t => {
  const l = new Raid35Layout(5, 4096, 1024 * 1024 + 100)
  t.is(l.fragment, 1024)
  t.is(l.parity, 4)
  t.is(l.size, 1024 * 4096, 'every whole fragment of the smallest member holds a quarter block')
  t.deepEqual(l.memberRange(3, 2), { at: 3072, length: 2048 })
  t.deepEqual(l.widen(4095, 2), { first: 0, count: 2 })
  t.deepEqual(l.widen(8192, 4096), { first: 2, count: 1 })
  const data = Buffer.alloc(3 * 4096)
  for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (i >> 10)) & 0xff
  const parts = [0, 1, 2, 3].map(() => Buffer.alloc(3 * 1024))
  l.scatter(data, parts)
  t.true(parts[2].subarray(1024, 2048).equals(data.subarray(4096 + 2048, 4096 + 3072)), 'block 1, fragment 2')
  const back = Buffer.alloc(data.length)
  l.gather(parts, back)
  t.true(back.equals(data))
})

test('raid5: md\'s left-symmetric table for four members', t => {
  const l = new Raid5Layout(4, 4096, 1024 * 1024)
  // Rows are stripes, columns members; P is parity, numbers are the array's chunk indices.
  const table = [0, 1, 2, 3].map(s => {
    const row = ['', '', '', '']
    row[l.parityOf(s)] = 'P'
    for (let j = 0; j < 3; j++) row[l.memberOf(s, j)] = String(s * 3 + j)
    return row.join(' ')
  })
  t.deepEqual(table, ['0 1 2 P', '4 5 P 3', '8 P 6 7', 'P 9 10 11'])
  t.is(l.size, 256 * 3 * 4096)
})

test('raid5 property: every array byte has one home, off every parity chunk; read pieces tile the request', t => {
  fc.assert(fc.property(fc.integer({ min: 3, max: 7 }), fc.nat(), fc.integer({ min: 1, max: 200000 }), (n, at, len) => {
    const l = new Raid5Layout(n, 4096, 64 * 4096)
    const offset = at % l.size
    const length = Math.min(len, l.size - offset)
    const pieces = l.readPieces(offset, length)
    let done = 0
    for (const p of pieces) {
      if (p.done !== done) return false
      const home = l.locate(offset + p.done)
      if (home.member !== p.member || home.at !== p.at) return false
      if (l.parityOf(Math.floor(p.at / 4096)) === p.member) return false
      done += p.length
    }
    return done === length
  }), { numRuns: 300 })
  t.pass('300 random ranges')
})

test('raid5 property: each stripe plan, executed on a byte model, leaves parity the XOR of the data, reading what it says', t => {
  fc.assert(fc.property(fc.integer({ min: 3, max: 6 }), fc.nat(), fc.integer({ min: 1, max: 60000 }), fc.nat(255), (n, at, len, seed) => {
    const chunk = 4096
    const l = new Raid5Layout(n, chunk, 8 * chunk)
    const disks = Array.from({ length: n }, (_, m) => Buffer.alloc(8 * chunk, m * 17 + 1))
    // Make parity consistent first.
    for (let s = 0; s < 8; s++) {
      const p = disks[l.parityOf(s)].subarray(s * chunk, (s + 1) * chunk)
      p.fill(0)
      for (let j = 0; j < n - 1; j++) { const d = disks[l.memberOf(s, j)]; for (let i = 0; i < chunk; i++) p[i] ^= d[s * chunk + i] }
    }
    const offset = at % l.size
    const length = Math.min(len, l.size - offset)
    const data = Buffer.alloc(length)
    for (let i = 0; i < length; i++) data[i] = (seed + i * 3) & 0xff
    for (const w of l.writePlan(offset, length)) {
      let read = 0
      const parity = disks[w.parityMember]
      if (w.mode === 'rmw') {
        for (const p of w.pieces) {
          read += p.length
          for (let i = 0; i < p.length; i++) parity[p.at + i] ^= disks[p.member][p.at + i] ^ data[p.done + i]
        }
        read += w.hi - w.lo
        for (const p of w.pieces) data.copy(disks[p.member], p.at, p.done, p.done + p.length)
      } else {
        for (const p of w.pieces) data.copy(disks[p.member], p.at, p.done, p.done + p.length)
        for (let j = 0; j < n - 1; j++) {
          const m = l.memberOf(w.stripe, j)
          const mine = w.pieces.filter(p => p.member === m)
          const untouched = (w.hi - w.lo) - mine.reduce((a, p) => a + Math.max(0, Math.min(w.hi, p.inChunk + p.length) - Math.max(w.lo, p.inChunk)), 0)
          read += untouched
        }
        for (let i = w.lo; i < w.hi; i++) {
          let x = 0
          for (let j = 0; j < n - 1; j++) x ^= disks[l.memberOf(w.stripe, j)][w.base + i]
          parity[w.base + i] = x
        }
        if (w.mode === 'full' && (w.lo !== 0 || w.hi !== chunk)) return false
      }
      if (w.mode !== 'full' && read !== w.readBytes) return false
      if (w.mode !== 'full' && w.readBytes > (w.pieces.reduce((a, p) => a + p.length, 0) + w.hi - w.lo)) return false
    }
    // Every stripe's parity is the XOR of its data, and the data reads back.
    for (let s = 0; s < 8; s++) {
      for (let i = 0; i < chunk; i++) {
        let x = 0
        for (let j = 0; j < n - 1; j++) x ^= disks[l.memberOf(s, j)][s * chunk + i]
        if (disks[l.parityOf(s)][s * chunk + i] !== x) return false
      }
    }
    for (const p of l.readPieces(offset, length)) if (!disks[p.member].subarray(p.at, p.at + p.length).equals(data.subarray(p.done, p.done + p.length))) return false
    return true
  }), { numRuns: 300 })
  t.pass('300 random writes kept parity consistent')
})

test('raid5: a full-stripe write reads nothing; a small write reads its data and parity; a near-full one reconstructs', t => {
  const l = new Raid5Layout(5, 4096, 64 * 4096)
  const [full] = l.writePlan(0, 4 * 4096)
  t.is(full.mode, 'full')
  t.is(full.readBytes, 0)
  const [small] = l.writePlan(100, 512)
  t.is(small.mode, 'rmw')
  t.is(small.readBytes, 1024, 'old data and old parity under 512 bytes')
  const [most] = l.writePlan(0, 3 * 4096)
  t.is(most.mode, 'rcw', 'three of four chunks written: read the fourth instead of three old chunks and parity')
  t.is(most.readBytes, 4096)
  const plans = l.writePlan(4 * 4096 - 10, 20)
  t.deepEqual(plans.map(p => p.stripe), [0, 1], 'a write across a stripe boundary is one plan per stripe')
})
