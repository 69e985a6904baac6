// Whether a device holds anything but zeros, for a mirror deciding if a leg may be overwritten. The device digests its
// own data (a remote leg on its own node, a file on the hash workers), so only digests move; they are compared with
// the digest of a zero chunk, and the scan stops at the first chunk that holds data. A fresh sparse file reads as
// zeros, so it counts as blank.

import { createHash } from 'node:crypto'
import type { Device } from '../node/core/device'
import { DIGEST_SIZE, HASH_ALGORITHM, MAX_HASH_CHUNK } from '../node/core/hasher'
import { Errno, ErrorCode, type DstError } from '../node/core/errors'
import { realClock, type Clock } from '../node/core/clock'

/** Bytes digested per request: large enough to keep the workers busy, small enough to stop soon after data. */
const STEP = 64 * 1024 * 1024
/** Busy hash workers are waited out this many times before the scan gives up. */
const BUSY_RETRIES = 20

const zeroDigests = new Map<number, Buffer>()

function zeroDigest (length: number): Buffer {
  let d = zeroDigests.get(length)
  if (d === undefined) {
    d = createHash(HASH_ALGORITHM).update(Buffer.alloc(length)).digest()
    zeroDigests.set(length, d)
  }
  return d
}

/** The offset of the first chunk of `device[0, length)` that is not all zeros, or -1 when every byte is zero. */
export async function firstData (device: Device, length: number, clock: Clock = realClock): Promise<number> {
  const chunk = MAX_HASH_CHUNK
  for (let at = 0; at < length; at += STEP) {
    const n = Math.min(STEP, length - at)
    const digests = await hashPatiently(device, at, n, chunk, clock)
    for (let c = 0; c * chunk < n; c++) {
      const zero = zeroDigest(Math.min(chunk, n - c * chunk))
      if (zero.compare(digests, c * DIGEST_SIZE, (c + 1) * DIGEST_SIZE) !== 0) return at + c * chunk
    }
  }
  return -1
}

async function hashPatiently (device: Device, at: number, n: number, chunk: number, clock: Clock): Promise<Buffer> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await device.hash(at, n, chunk)
    } catch (err) {
      const e = err as DstError
      const busy = e?.code === ErrorCode.HASH_BUSY || e?.errno === Errno.EAGAIN
      if (!busy || attempt >= BUSY_RETRIES) throw err
      await clock.sleep(Math.min(1000, 10 * 2 ** attempt))
    }
  }
}
