// XOR for parity arrays: parity is the XOR of the data fragments, and a lost fragment is the XOR of parity and the
// others. Small blocks are XORed on the event loop (a worker round trip costs more than the work); large ones (a full
// stripe, a rebuild's region) go to a piscina pool of worker threads (node/core/xor-worker.js), split into one slice
// per thread. Buffers in shared memory (the node's pool, the engine's own buffers) reach the workers without a copy;
// a request whose buffers are not all shared memory is XORed on the loop instead, never copied.

import * as path from 'node:path'
import { availableParallelism } from 'node:os'
import { Piscina } from 'piscina'
import { DstError, ErrorCode } from './errors'

/** At or below this many bytes per buffer the XOR runs on the loop (measured by tools/dev/xor-bench.ts). */
export const XOR_INLINE_LIMIT = 64 * 1024
/** A worker slice is never smaller than this (slices are whole multiples of 4 KiB). */
const MIN_SLICE = 64 * 1024

export interface XorOptions {
  /** Worker threads (default: one less than the CPUs, at least one, at most four). */
  threads?: number
  /** At or below this many bytes per buffer, XOR on the loop. */
  inlineLimit?: number
}

export interface XorStats { inline: number, tasks: number, bytes: number }

/**
 * dest[i] = sources[0][i] ^ sources[1][i] ^ … for i < dest.byteLength, on the calling thread. Every source must be at
 * least as long as dest; dest may be one of the sources, but must not partially overlap one. Works a 32-bit word at a time where the views are aligned.
 */
export function xorInto (dest: Uint8Array, sources: readonly Uint8Array[]): void {
  const n = dest.byteLength
  for (const s of sources) if (s.byteLength < n) throw new RangeError(`xor source holds ${s.byteLength} bytes, ${n} needed`)
  if (sources.length === 0) { dest.fill(0); return }
  // dest may be one of the sources: XOR the others into it, rather than copy another source over it first.
  const own = sources.findIndex(s => s.buffer === dest.buffer && s.byteOffset === dest.byteOffset)
  if (own > 0) sources = [sources[own], ...sources.slice(0, own), ...sources.slice(own + 1)]
  const aligned = n % 4 === 0 && dest.byteOffset % 4 === 0 && sources.every(s => s.byteOffset % 4 === 0)
  if (aligned) {
    const d = new Int32Array(dest.buffer, dest.byteOffset, n >> 2)
    const first = new Int32Array(sources[0].buffer, sources[0].byteOffset, n >> 2)
    if (own < 0) d.set(first)
    for (let k = 1; k < sources.length; k++) {
      const s = new Int32Array(sources[k].buffer, sources[k].byteOffset, n >> 2)
      for (let i = 0; i < d.length; i++) d[i] ^= s[i]
    }
    return
  }
  if (own < 0) dest.set(sources[0].subarray(0, n))
  for (let k = 1; k < sources.length; k++) {
    const s = sources[k]
    for (let i = 0; i < n; i++) dest[i] ^= s[i]
  }
}

export class XorEngine {
  readonly threads: number
  readonly stats: XorStats = { inline: 0, tasks: 0, bytes: 0 }
  private readonly pool: Piscina
  private readonly inlineLimit: number
  private closed = false

  constructor (options: XorOptions = {}) {
    this.threads = options.threads ?? Math.max(1, Math.min(4, availableParallelism() - 1))
    this.inlineLimit = options.inlineLimit ?? XOR_INLINE_LIMIT
    this.pool = new Piscina({
      filename: path.join(__dirname, 'xor-worker.js'),
      minThreads: 0,
      maxThreads: this.threads,
      idleTimeout: 30000,
    })
  }

  /** dest = XOR of sources (see xorInto), on the loop or on the workers; resolves when dest holds the result. */
  xor (dest: Uint8Array, sources: readonly Uint8Array[]): Promise<void> {
    if (this.closed) return Promise.reject(new DstError(ErrorCode.CLOSED, 'xor engine is closed'))
    const n = dest.byteLength
    this.stats.bytes += n * sources.length
    const shared = dest.buffer instanceof SharedArrayBuffer && sources.every(s => s.buffer instanceof SharedArrayBuffer)
    if (n <= this.inlineLimit || !shared || sources.length === 0) {
      this.stats.inline++
      try {
        xorInto(dest, sources)
        return Promise.resolve()
      } catch (err) {
        return Promise.reject(err)
      }
    }
    for (const s of sources) if (s.byteLength < n) return Promise.reject(new RangeError(`xor source holds ${s.byteLength} bytes, ${n} needed`))
    // dest may be one of the sources (found here: identity of shared buffers does not survive the trip to a worker).
    const own = sources.findIndex(s => s.buffer === dest.buffer && s.byteOffset === dest.byteOffset)
    const ordered = own > 0 ? [sources[own], ...sources.slice(0, own), ...sources.slice(own + 1)] : sources
    const slices = Math.max(1, Math.min(this.threads, Math.floor(n / MIN_SLICE)))
    const per = Math.ceil(n / slices / 4096) * 4096
    const runs: Array<Promise<unknown>> = []
    for (let at = 0; at < n; at += per) {
      const len = Math.min(per, n - at)
      this.stats.tasks++
      runs.push(this.pool.run({
        dest: { buffer: dest.buffer, offset: dest.byteOffset + at },
        sources: ordered.map(s => ({ buffer: s.buffer, offset: s.byteOffset + at })),
        length: len,
        destIsFirst: own >= 0,
      }))
    }
    return Promise.all(runs).then(() => undefined, (err: unknown) => {
      throw new DstError(ErrorCode.EIO, `xor worker failed: ${(err as Error)?.message ?? String(err)}`)
    })
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.pool.destroy()
  }
}
