// digests: what resync and verify share about comparing legs by chunk digests computed where each leg's data lives.

import { createHash } from 'node:crypto'
import { DIGEST_SIZE, HASH_ALGORITHM, digestCount, isHashChunk } from '../../node/core/hasher'
import { type DstError, Errno, ErrorCode } from '../../node/core/errors'

/** Resync and verify compare digests of chunks this long (at most a region). */
export const COMPARE_CHUNK = 64 * 1024

/** The chunk a region of `region` bytes is compared in, or 0 when digests cannot be taken at that size. */
export function compareChunk (region: number): number {
  const chunk = Math.min(COMPARE_CHUNK, region)
  return isHashChunk(chunk) ? chunk : 0
}

/** Errors of the hash workers (busy, broken), not of a leg's data: they never fail a leg. */
export function hashTrouble (err: unknown): boolean {
  const e = err as DstError
  return e?.code === ErrorCode.HASH_BUSY || e?.code === ErrorCode.HASH || e?.errno === Errno.EAGAIN
}

/** Byte ranges [from, to) of a region of `n` bytes whose chunk digests differ, adjacent chunks joined. */
export function differingRuns (a: Buffer, b: Buffer, chunk: number, n: number): Array<[number, number]> {
  const runs: Array<[number, number]> = []
  for (let c = 0; c * chunk < n; c++) {
    const d = c * DIGEST_SIZE
    if (a.compare(b, d, d + DIGEST_SIZE, d, d + DIGEST_SIZE) === 0) continue
    const from = c * chunk
    const to = Math.min(n, from + chunk)
    const last = runs[runs.length - 1]
    if (last !== undefined && last[1] === from) last[1] = to; else runs.push([from, to])
  }
  return runs
}

/** Chunks whose digests differ between any of `digests`. */
export function differingChunks (digests: Buffer[]): number {
  let chunks = 0
  for (let c = 0; c * DIGEST_SIZE < digests[0].length; c++) {
    const a = c * DIGEST_SIZE
    if (!digests.every(d => d.compare(digests[0], a, a + DIGEST_SIZE, a, a + DIGEST_SIZE) === 0)) chunks++
  }
  return chunks
}

const zeroChunkDigests = new Map<number, Buffer>()

/** The digests hash() gives for `length` zero bytes in chunks of `chunk` (what a hole digests to). */
export function zeroDigests (length: number, chunk: number): Buffer {
  const one = (n: number): Buffer => {
    let d = zeroChunkDigests.get(n)
    if (d === undefined) {
      d = createHash(HASH_ALGORITHM).update(Buffer.alloc(n)).digest()
      if (zeroChunkDigests.size < 64) zeroChunkDigests.set(n, d)
    }
    return d
  }
  const count = digestCount(length, chunk)
  const out = Buffer.alloc(count * DIGEST_SIZE)
  for (let c = 0; c < count; c++) one(Math.min(chunk, length - c * chunk)).copy(out, c * DIGEST_SIZE)
  return out
}
