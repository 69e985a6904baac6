// The native addon (native/dst_native.c, built by `npm install`) behind a typed, promise-returning face: SEEK_DATA /
// SEEK_HOLE runs of a file and fallocate PUNCH_HOLE / ZERO_RANGE, each run on the libuv thread pool. When the addon
// was not built (no compiler at install), `loadNativeFs()` answers null and file devices report the capabilities
// absent: no holes known (one data run), no trim, zeroes written as zeros.

import * as path from 'node:path'
import { getSystemErrorName } from 'node:util'
import type { Extent } from '../core/device'
import { DstError, systemErrorCode } from '../core/errors'

type Callback = (errno: number, runs?: Float64Array) => void
interface Addon {
  extents: (fd: number, offset: number, length: number, maxRuns: number, cb: Callback) => void
  punchHole: (fd: number, offset: number, length: number, cb: Callback) => void
  zeroRange: (fd: number, offset: number, length: number, cb: Callback) => void
}

/** Runs the addon answers per call; a longer answer takes more calls. */
const MAX_RUNS_PER_CALL = 4096

export class NativeFs {
  constructor (private readonly addon: Addon) {}

  /** Holes and data runs of [offset, offset + length) of `fd`, merged, covering the range exactly. */
  async extents (fd: number, offset: number, length: number): Promise<Extent[]> {
    const out: Extent[] = []
    const end = offset + length
    let at = offset
    while (at < end) {
      const runs = await new Promise<Float64Array>((resolve, reject) => {
        this.addon.extents(fd, at, end - at, MAX_RUNS_PER_CALL, (errno, r) => errno === 0 ? resolve(r as Float64Array) : reject(nativeError('lseek(SEEK_DATA)', errno)))
      })
      if (runs.length === 0) throw new Error(`extents of fd ${fd} at ${at}: no run answered`) // an assertion on the addon
      for (let i = 0; i < runs.length; i += 3) {
        const run = { offset: runs[i], length: runs[i + 1], hole: runs[i + 2] === 1 }
        const last = out[out.length - 1]
        if (last !== undefined && last.hole === run.hole) last.length += run.length
        else out.push(run)
        at = run.offset + run.length
      }
    }
    return out
  }

  /** Frees [offset, offset + length): it reads as zeros and takes no space (the file's size is kept). */
  punchHole (fd: number, offset: number, length: number): Promise<void> {
    return new Promise((resolve, reject) => this.addon.punchHole(fd, offset, length, errno => errno === 0 ? resolve() : reject(nativeError('fallocate(PUNCH_HOLE)', errno))))
  }

  /** Zeroes [offset, offset + length) without writing it, keeping it allocated. */
  zeroRange (fd: number, offset: number, length: number): Promise<void> {
    return new Promise((resolve, reject) => this.addon.zeroRange(fd, offset, length, errno => errno === 0 ? resolve() : reject(nativeError('fallocate(ZERO_RANGE)', errno))))
  }
}

function nativeError (call: string, errno: number): DstError {
  const name = getSystemErrorName(-errno)
  return new DstError(systemErrorCode(name), `${call} failed: ${name}`)
}

const ADDON_FILE = path.join(__dirname, '..', '..', 'build', 'Release', 'dst_native.node')
let loaded: NativeFs | null | undefined

/**
 * The addon, or null when it is not there (not built) or DST_NATIVE=0 asks to run without it. Loaded once. `file`:
 * another build of it (tests load a missing one to take the fallback).
 */
export function loadNativeFs (file = ADDON_FILE): NativeFs | null {
  if (file === ADDON_FILE && loaded !== undefined) return loaded
  let result: NativeFs | null = null
  if (process.env.DST_NATIVE !== '0') {
    try {
      result = new NativeFs(require(file) as Addon) // eslint-disable-line @typescript-eslint/no-require-imports
    } catch {
      result = null
    }
  }
  if (file === ADDON_FILE) loaded = result
  return result
}
