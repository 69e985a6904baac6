// Strong digests off the event loop: a piscina pool of worker threads (node/core/hash-worker.js) that digests each chunk
// of a byte range, for HASH requests, checksum resync, online verify and wire digests. Bytes in shared memory (the
// node's buffer pool, or this hasher's own buffers) reach a worker without a copy; the digests come back transferred.
// A digest of a few KiB is computed on the loop instead, because that costs less than the trip to a worker.
// A Hasher is an object its owner creates and closes: the node makes one from its config (`hash.threads`) and hands
// it to its devices, connections and servers; tests and tools make their own.

import * as path from 'node:path'
import { availableParallelism } from 'node:os'
import { createHash } from 'node:crypto'
import { Piscina } from 'piscina'
import { BufferPool } from './pool'
import { DstError, ErrorCode } from './errors'
import { settleAll } from './settle'

/** The digest every dst node uses, named in the native handshake. BLAKE2b-512: the fastest strong hash in Node here. */
export const HASH_ALGORITHM = 'blake2b512'
export const DIGEST_SIZE = 64
/** Chunks are a power of two between these (the request header carries the chunk size). */
export const MIN_HASH_CHUNK = 512
export const MAX_HASH_CHUNK = 1024 * 1024
/** At or below this many bytes a digest is computed on the loop (microseconds; a worker round trip costs more). */
const INLINE_LIMIT = 8 * 1024

export interface HasherOptions {
  /** Worker threads (default: one less than the CPUs, at least one, at most four). */
  threads?: number
  /** Tasks that may wait for a worker; one more is refused with DST_ERR_HASH_BUSY (EAGAIN). */
  maxQueue?: number
  /** Shared buffers for devices that hash by reading (count × 1 MiB). */
  buffers?: number
  /** Tests only: a digest the workers do not know, to see worker failures handled. */
  algorithm?: string
}

export interface HasherStats { tasks: number, inline: number, bytes: number, errors: number, busy: number }

export function isHashChunk (chunk: number): boolean {
  return Number.isInteger(chunk) && chunk >= MIN_HASH_CHUNK && chunk <= MAX_HASH_CHUNK && (chunk & (chunk - 1)) === 0
}

export function digestCount (length: number, chunk: number): number {
  return Math.ceil(length / chunk)
}

export class Hasher {
  readonly threads: number
  /** Shared-memory buffers a device reads into before its bytes are digested. */
  readonly buffers: BufferPool
  readonly stats: HasherStats = { tasks: 0, inline: 0, bytes: 0, errors: 0, busy: 0 }
  private readonly pool: Piscina
  private readonly algorithm: string
  private closed = false

  constructor (options: HasherOptions = {}) {
    this.threads = options.threads ?? Math.max(1, Math.min(4, availableParallelism() - 1))
    this.algorithm = options.algorithm ?? HASH_ALGORITHM
    this.pool = new Piscina({
      filename: path.join(__dirname, 'hash-worker.js'),
      minThreads: 0,
      maxThreads: this.threads,
      idleTimeout: 30000,
      maxQueue: options.maxQueue ?? 256 * this.threads,
    })
    this.buffers = new BufferPool({ count: options.buffers ?? 2 * this.threads + 2, size: MAX_HASH_CHUNK })
  }

  /** Digests of each `chunk`-byte piece of `data` (the last may be shorter), concatenated. */
  digest (data: Uint8Array, chunk: number): Promise<Buffer> {
    if (this.closed) return Promise.reject(new DstError(ErrorCode.CLOSED, 'hasher is closed'))
    this.stats.bytes += data.byteLength
    if (data.byteLength <= INLINE_LIMIT) {
      this.stats.inline++
      try {
        return Promise.resolve(digestHere(data, chunk, this.algorithm))
      } catch (err) {
        this.stats.errors++
        return Promise.reject(new DstError(ErrorCode.HASH, `digest failed: ${(err as Error).message}`))
      }
    }
    this.stats.tasks++
    const shared = data.buffer instanceof SharedArrayBuffer
    // Not shared memory: copy just the view's bytes (a view handed over as is would take its whole backing buffer
    // along) and transfer the copy.
    const bytes = shared ? null : Uint8Array.prototype.slice.call(data)
    const task = {
      buffer: shared ? data.buffer : bytes,
      offset: shared ? data.byteOffset : 0,
      length: data.byteLength,
      chunk,
      algorithm: this.algorithm,
      digestSize: DIGEST_SIZE,
    }
    let run: Promise<ArrayBuffer>
    try {
      run = this.pool.run(task, bytes === null ? undefined : { transferList: [bytes.buffer] }) as Promise<ArrayBuffer>
    } catch (err) {
      return Promise.reject(this.failure(err))
    }
    return run.then(out => Buffer.from(out), err => { throw this.failure(err) })
  }

  /** One digest of all of `data` (a wire digest). */
  digestOne (data: Uint8Array): Promise<Buffer> {
    return this.digest(data, Math.max(MIN_HASH_CHUNK, data.byteLength))
  }

  get queued (): number { return this.pool.queueSize }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.pool.destroy()
  }

  private failure (err: unknown): DstError {
    const message = (err as Error)?.message ?? String(err)
    if (/queue is at limit/i.test(message)) {
      this.stats.busy++
      return new DstError(ErrorCode.HASH_BUSY, `hash workers busy: ${this.pool.queueSize} tasks already queued`)
    }
    this.stats.errors++
    return new DstError(ErrorCode.HASH, `hash worker failed: ${message}`)
  }
}

function digestHere (data: Uint8Array, chunk: number, algorithm: string): Buffer {
  const count = Math.max(1, digestCount(data.byteLength, chunk))
  const out = Buffer.allocUnsafe(count * DIGEST_SIZE)
  for (let i = 0; i < count; i++) {
    const piece = data.subarray(i * chunk, Math.min(data.byteLength, (i + 1) * chunk))
    const d = createHash(algorithm).update(piece).digest()
    // An assertion (only a test's unknown algorithm trips it); the caller turns it into DST_ERR_HASH.
    if (d.length !== DIGEST_SIZE) throw new Error(`${algorithm} gives ${d.length}-byte digests, expected ${DIGEST_SIZE}`)
    d.copy(out, i * DIGEST_SIZE)
  }
  return out
}

let fallback: Hasher | null = null

/**
 * The hasher of code that was given none: a device or a connection built by hand (tests, tools, a library user), which
 * must still be able to digest without knowing about worker pools, and shares one pool instead of starting its own.
 * Created on first use; whoever made such devices closes it (`closeDefaultHasher`). A node never uses it: it creates
 * its own Hasher and gives it to every device, connection and server it makes.
 */
export function defaultHasher (): Hasher {
  if (fallback === null) fallback = new Hasher()
  return fallback
}

/** Closes the default hasher if it was created (the next defaultHasher() makes a new one). */
export async function closeDefaultHasher (): Promise<void> {
  const h = fallback
  fallback = null
  await h?.close()
}

/**
 * Digests of a range of any readable thing, by reading it piece by piece into the hasher's shared buffers: what a
 * device without a cheaper way (a file, memory, a linear array whose members do not line up with the chunks) does.
 */
export async function digestByReading (read: (offset: number, length: number, into: Uint8Array) => Promise<void>,
  offset: number, length: number, chunk: number, h: Hasher): Promise<Buffer> {
  const out = Buffer.alloc(digestCount(length, chunk) * DIGEST_SIZE)
  const step = Math.floor(h.buffers.size / chunk) * chunk
  const pieces: Array<Promise<void>> = []
  for (let done = 0; done < length; done += step) {
    const n = Math.min(step, length - done)
    const at = done
    pieces.push(h.buffers.acquire().then(async buf => {
      try {
        const view = buf.data.subarray(0, n)
        await read(offset + at, n, view)
        const digests = await h.digest(view, chunk)
        digests.copy(out, (at / chunk) * DIGEST_SIZE)
      } finally {
        h.buffers.release(buf)
      }
    }))
  }
  await settleAll(pieces)
  return out
}
