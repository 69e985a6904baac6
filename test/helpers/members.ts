// Array members for the algorithm tests: memory devices named m0, m1, ..., and a byte pattern that differs at every
// position, so a piece that lands in the wrong place shows up.

import { MemoryDevice } from '../../node/devices/memory-device'
import type { Member } from '../../algorithms/pieces'

export function memories (sizes: number[]): { mems: MemoryDevice[], members: Member[] } {
  const mems = sizes.map(size => new MemoryDevice({ size }))
  return { mems, members: mems.map((device, i) => ({ name: `m${i}`, device })) }
}

/** Bytes that differ at every position, so a misplaced piece shows up. */
export function pattern (length: number, seed: number): Buffer {
  const b = Buffer.alloc(length)
  for (let i = 0; i < length; i++) b[i] = (seed + i * 7 + (i >> 8)) & 0xff
  return b
}
