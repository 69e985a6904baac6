// Where a mirror keeps its write-intent map: a superblock (array UUID, each leg's identity, an event counter) and one
// bitmap per leg with a bit per region. A set bit means "this leg may not hold the array's data for this region". A
// bit is made durable before the data write it covers is issued, so after a crash the set bits are exactly the
// regions that may differ. The mirror algorithm sees only this interface; the node gives it a file in dataDir, tests
// give it memory (and can "crash" by dropping what was not yet saved).

import * as fs from 'node:fs'
import * as path from 'node:path'
import { writeFileAtomic } from '../node/core/atomic-file'
import { DstError, ErrorCode } from '../node/core/errors'

export interface LegRecord {
  name: string
  identity: string
  /** True when the leg was fully in sync at the last save (it may be chosen as the source after a crash). */
  inSync: boolean
}

export interface Superblock {
  uuid: string
  size: number
  region: number
  events: number
  legs: LegRecord[]
}

export interface IntentState {
  superblock: Superblock
  /** One bitmap per leg, in superblock leg order, ceil(regions / 8) bytes each. */
  bits: Uint8Array[]
}

export interface IntentStore {
  load: () => Promise<IntentState | null>
  /** Durably replaces everything (legs added, removed or reordered; a new array). */
  create: (state: IntentState) => Promise<void>
  /** Durably writes the superblock and the given byte ranges of the bitmaps (`pages`: leg index -> byte offsets). */
  update: (state: IntentState, pages: Map<number, Set<number>>) => Promise<void>
  close?: () => Promise<void>
}

export const PAGE = 4096

export function bitmapBytes (regions: number): number {
  return Math.ceil(regions / 8)
}

/** A store held in memory: `saved` is what would survive a crash. */
export class MemoryIntentStore implements IntentStore {
  saved: IntentState | null = null
  writes = 0

  load (): Promise<IntentState | null> {
    return Promise.resolve(this.saved === null ? null : clone(this.saved))
  }

  create (state: IntentState): Promise<void> {
    this.saved = clone(state)
    this.writes++
    return Promise.resolve()
  }

  update (state: IntentState, pages: Map<number, Set<number>>): Promise<void> {
    if (this.saved === null || this.saved.bits.length !== state.bits.length) return this.create(state)
    this.saved.superblock = JSON.parse(JSON.stringify(state.superblock)) as Superblock
    for (const [leg, offsets] of pages) {
      for (const at of offsets) this.saved.bits[leg].set(state.bits[leg].subarray(at, at + PAGE), at)
    }
    this.writes++
    return Promise.resolve()
  }
}

function clone (s: IntentState): IntentState {
  return { superblock: JSON.parse(JSON.stringify(s.superblock)) as Superblock, bits: s.bits.map(b => b.slice()) }
}

/**
 * The file format: page 0 holds the superblock as JSON (padded with spaces to 4 KiB, with a magic line first); then
 * each leg's bitmap, each starting on a page boundary. Updates rewrite only the changed pages, then fdatasync.
 * A new layout is written to a temporary file, synced and renamed over the old one.
 */
export class FileIntentStore implements IntentStore {
  private fd: number | null = null
  static readonly MAGIC = 'dst-mirror-intent v1\n'

  constructor (readonly file: string) {}

  async load (): Promise<IntentState | null> {
    let buf: Buffer
    try {
      buf = await fs.promises.readFile(this.file)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
      throw err
    }
    const head = buf.subarray(0, PAGE).toString('utf8')
    if (!head.startsWith(FileIntentStore.MAGIC)) throw new DstError(ErrorCode.INTENT, `${this.file}: not a dst mirror intent file`)
    let superblock: Superblock
    try {
      superblock = JSON.parse(head.slice(FileIntentStore.MAGIC.length).trim()) as Superblock
      if (!Number.isSafeInteger(superblock.size) || !Number.isSafeInteger(superblock.region) || superblock.region <= 0 || !Array.isArray(superblock.legs)) {
        throw new DstError(ErrorCode.INTENT, 'missing size, region or legs')
      }
    } catch (err) {
      throw new DstError(ErrorCode.INTENT, `${this.file}: damaged mirror superblock: ${(err as Error).message}`)
    }
    const bytes = bitmapBytes(Math.ceil(superblock.size / superblock.region))
    const stride = roundUp(bytes, PAGE)
    // Missing bitmap bytes would read as "clean" and hide regions that may differ: refuse instead.
    const needed = PAGE + stride * (superblock.legs.length - 1) + bytes
    if (superblock.legs.length > 0 && buf.length < needed) {
      throw new DstError(ErrorCode.INTENT, `${this.file}: truncated (${buf.length} bytes, the layout needs ${needed})`)
    }
    const bits = superblock.legs.map((_, i) => {
      const b = new Uint8Array(bytes)
      b.set(buf.subarray(PAGE + i * stride, PAGE + i * stride + bytes))
      return b
    })
    return { superblock, bits }
  }

  async create (state: IntentState): Promise<void> {
    await this.closeFd()
    await fs.promises.mkdir(path.dirname(this.file), { recursive: true })
    const bytes = state.bits[0]?.length ?? 0
    const stride = roundUp(bytes, PAGE)
    const buf = Buffer.alloc(PAGE + stride * state.bits.length)
    encodeSuperblock(state.superblock).copy(buf, 0)
    state.bits.forEach((b, i) => buf.set(b, PAGE + i * stride))
    await writeFileAtomic(this.file, buf)
  }

  async update (state: IntentState, pages: Map<number, Set<number>>): Promise<void> {
    const fd = await this.open()
    const bytes = state.bits[0]?.length ?? 0
    const stride = roundUp(bytes, PAGE)
    await write(fd, encodeSuperblock(state.superblock), 0)
    for (const [leg, offsets] of pages) {
      for (const at of offsets) {
        const chunk = state.bits[leg].subarray(at, Math.min(at + PAGE, bytes))
        await write(fd, chunk, PAGE + leg * stride + at)
      }
    }
    await new Promise<void>((resolve, reject) => fs.fdatasync(fd, err => err === null ? resolve() : reject(err)))
  }

  async close (): Promise<void> {
    await this.closeFd()
  }

  private async open (): Promise<number> {
    if (this.fd === null) {
      this.fd = await new Promise<number>((resolve, reject) => fs.open(this.file, 'r+', (err, fd) => err === null ? resolve(fd) : reject(err)))
    }
    return this.fd
  }

  private async closeFd (): Promise<void> {
    if (this.fd === null) return
    const fd = this.fd
    this.fd = null
    await new Promise<void>(resolve => fs.close(fd, () => resolve()))
  }
}

function encodeSuperblock (sb: Superblock): Buffer {
  const text = FileIntentStore.MAGIC + JSON.stringify(sb)
  if (Buffer.byteLength(text) > PAGE - 1) throw new DstError(ErrorCode.INTENT, 'mirror superblock does not fit in 4 KiB (too many legs or long names)')
  const page = Buffer.alloc(PAGE, 0x20)
  page.write(text, 0)
  page[PAGE - 1] = 0x0a
  return page
}

function roundUp (n: number, to: number): number {
  return Math.ceil(n / to) * to
}

function write (fd: number, data: Uint8Array, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    fs.write(fd, data, 0, data.byteLength, position, (err, n) => {
      if (err !== null) reject(err); else if (n !== data.byteLength) reject(new DstError(ErrorCode.INTENT, 'short write to the intent file')); else resolve()
    })
  })
}
