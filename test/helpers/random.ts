// Seeded pseudo-random numbers for tests: a failing run can be replayed from the seed it logs.

import { randomBytes } from 'node:crypto'

/** mulberry32: small, fast, good enough to pick offsets and sizes. Returns floats in [0, 1). */
export function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** A whole number in [min, max]. */
export function between (rand: () => number, min: number, max: number): number {
  return min + Math.floor(rand() * (max - min + 1))
}

/** A fresh seed (logged by the tests that use it). */
export function newSeed (): number {
  return randomBytes(4).readUInt32LE(0)
}

/** `length` bytes from the seeded generator (cheap to rebuild, unlike crypto bytes). */
export function seededBytes (rand: () => number, length: number): Buffer {
  const buf = Buffer.allocUnsafe(length)
  let i = 0
  for (; i + 4 <= length; i += 4) buf.writeUInt32LE(Math.floor(rand() * 4294967296), i)
  for (; i < length; i++) buf[i] = Math.floor(rand() * 256)
  return buf
}
