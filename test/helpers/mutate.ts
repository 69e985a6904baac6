// Structured mutations of valid messages for the fuzz tests: byte flips, random bytes, 32-bit fields set to boundary
// values, truncation, duplication and insertion, all from a seeded generator so that a failing case can be replayed.

import { between, seededBytes } from './random'

const BOUNDARY = [0, 1, 0x7fffffff, 0x80000000, 0xffffffff, 0xfffffffe, 4096, 4097, 1024 * 1024, 1024 * 1024 + 1, 64 * 1024 * 1024]

/** `message` with 1 to `most` random mutations. */
export function mutate (rand: () => number, message: Buffer, most = 4): Buffer {
  let out: Buffer = Buffer.from(message)
  const n = between(rand, 1, most)
  for (let i = 0; i < n; i++) {
    if (out.length === 0) { out = seededBytes(rand, between(rand, 1, 64)); continue }
    const at = between(rand, 0, out.length - 1)
    switch (between(rand, 0, 6)) {
      case 0: out[at] ^= 1 << between(rand, 0, 7); break
      case 1: out[at] = between(rand, 0, 255); break
      case 2: {
        const word = at - (at % 4)
        if (word + 4 <= out.length) {
          const value = BOUNDARY[between(rand, 0, BOUNDARY.length - 1)]
          if (rand() < 0.5) out.writeUInt32BE(value, word); else out.writeUInt32LE(value, word)
        }
        break
      }
      case 3: out = out.subarray(0, at); break
      case 4: out = Buffer.concat([out, out.subarray(at, Math.min(out.length, at + between(rand, 1, 256)))]); break
      case 5: out = Buffer.concat([out.subarray(0, at), seededBytes(rand, between(rand, 1, 64)), out.subarray(at)]); break
      default: out = Buffer.concat([out.subarray(0, at), out.subarray(Math.min(out.length, at + between(rand, 1, 32)))])
    }
  }
  return out
}

/** Splits `bytes` into 1 to `most` pieces at random points (each piece is written on its own). */
export function pieces (rand: () => number, bytes: Buffer, most = 4): Buffer[] {
  const cuts = Array.from({ length: between(rand, 0, most - 1) }, () => between(rand, 0, bytes.length)).sort((a, b) => a - b)
  const out: Buffer[] = []
  let last = 0
  for (const c of cuts) { out.push(bytes.subarray(last, c)); last = c }
  out.push(bytes.subarray(last))
  return out.filter(p => p.length > 0)
}
