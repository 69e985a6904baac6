// The test oracle for digests: what any device's hash(), a HASH reply or the hasher must give, computed independently
// with node:crypto.

import { createHash } from 'node:crypto'

/** BLAKE2b-512 of each `chunk`-byte piece of `data`, the last possibly shorter, concatenated. */
export function digestsOf (data: Uint8Array, chunk: number): Buffer {
  const out: Buffer[] = []
  for (let at = 0; at < data.byteLength; at += chunk) {
    out.push(createHash('blake2b512').update(data.subarray(at, Math.min(data.byteLength, at + chunk))).digest())
  }
  return Buffer.concat(out)
}
