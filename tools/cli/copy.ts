// `dst copy SRC DST`: copies between a local file (or block device), `-` (stdin/stdout) and dst:// URLs with many
// requests in flight, like dd/nbdcopy. `--offset` is the byte offset on the dst:// side(s).
//
// Sparse-aware, like nbdcopy: a dst:// source is asked for its holes (EXTENTS), which are not read; a chunk read as
// all zeros is not written either. Instead the destination is made to read zeros there as cheaply as it can: a file
// is left with a hole (past its old end) or punched (fallocate PUNCH_HOLE), a dst:// export is left alone where it is
// a hole already and trimmed where it can trim; only what cannot be made a hole (stdout, a block device, an export
// that cannot trim) gets zeros written.

import * as fs from 'node:fs'
import { parseDstUrl } from '../../node/core/url'
import { DstError, ErrorCode } from '../../node/core/errors'
import { formatSize } from '../../node/core/size'
import { RemoteDevice } from '../../export/native/remote-device'
import type { ClientTls } from '../../export/native/client'

/** dst:// or dsts:// (TLS). */
export function isDstUrl (spec: string): boolean { return spec.startsWith('dst://') || spec.startsWith('dsts://') }
import { blockDeviceSize } from '../../node/devices/file-device'
import { Hasher } from '../../node/core/hasher'
import type { Extent } from '../../node/core/device'

// fs-native-extensions' trim: fallocate(PUNCH_HOLE | KEEP_SIZE) on Linux; rejects where the filesystem cannot punch.
const { trim: punchHole } = require('fs-native-extensions') as { trim: (fd: number, offset: number, length: number) => Promise<void> }

/** How far ahead one extents() question looks (its answer is a bounded list of runs). */
const EXTENTS_WINDOW = 1024 * 1024 * 1024

/** What a copy skipped: source holes it did not read, and chunks read as zeros it did not write as data. */
export interface CopyStats { holeBytes: number, zeroBytes: number }

export interface CopyOptions {
  offset: number
  length?: number
  token?: string
  /** TLS for dsts:// (the CA to check the node against, and a client certificate to present). */
  tls?: ClientTls
  chunk: number
  inFlight: number
  progress: boolean
  /** Where wire digests are computed; by default copy() makes one for itself and closes it when done. */
  hasher?: Hasher
  /** Filled in with what the copy skipped (holes and zeros). */
  stats?: CopyStats
}

interface Source {
  name: string
  /** Bytes available from the start of the copy, or null when unknown until EOF (stdin). */
  size: number | null
  /** Positional sources can be read out of order; streams must be read one chunk after another. */
  positional: boolean
  read: (pos: number, into: Buffer, length: number) => Promise<number>
  /** Holes and data of [pos, pos + length) (positional sources that can tell; the rest is all data). */
  extents?: (pos: number, length: number) => Promise<Extent[]>
  close: () => Promise<void>
}

interface Sink {
  name: string
  size: number | null
  positional: boolean
  write: (pos: number, data: Buffer) => Promise<void>
  /** Makes [pos, pos + length) read as zeros, as cheaply as the sink can (a hole left or punched, a trim, or zeros written). */
  zero: (pos: number, length: number) => Promise<void>
  finish: (total: number) => Promise<void>
  close: () => Promise<void>
}

export async function copy (src: string, dst: string, given: CopyOptions): Promise<number> {
  // Workers start only if an export asks for wire digests.
  const own = given.hasher === undefined ? new Hasher() : null
  try {
    return await copyWith(src, dst, { ...given, hasher: given.hasher ?? own as Hasher })
  } finally {
    await own?.close()
  }
}

async function copyWith (src: string, dst: string, options: CopyOptions): Promise<number> {
  const source = await openSource(src, options)
  let sink: Sink
  try {
    sink = await openSink(dst, options)
  } catch (err) {
    await source.close()
    throw err
  }
  try {
    let length = options.length ?? source.size
    if (length !== null && source.size !== null && length > source.size) {
      throw new DstError(ErrorCode.RANGE, `${source.name}: ${length} bytes asked for, only ${source.size} available${isDstUrl(src) ? ` after offset ${options.offset}` : ''}`)
    }
    if (length !== null && sink.size !== null && length > sink.size) {
      throw new DstError(ErrorCode.RANGE, `${sink.name}: copying ${length} bytes${isDstUrl(dst) ? ` at offset ${options.offset}` : ''} would pass its end (${sink.size} bytes fit)`)
    }
    const total = await pump(source, sink, length, options)
    await sink.finish(total)
    return total
  } finally {
    await Promise.allSettled([source.close(), sink.close()])
  }
}

async function pump (source: Source, sink: Sink, length: number | null, options: CopyOptions): Promise<number> {
  const slots = Array.from({ length: options.inFlight }, () => Buffer.allocUnsafe(options.chunk))
  const busy: Array<Promise<void>> = slots.map(() => Promise.resolve())
  const bar = options.progress ? new ProgressBar(length) : null
  const stats = options.stats ?? { holeBytes: 0, zeroBytes: 0 }
  const zeros = Buffer.alloc(options.chunk)
  let copied = 0
  let failure: unknown = null
  let lastWrite: Promise<void> = Promise.resolve()
  let pos = 0
  let eof = false
  // The source's runs ahead of `pos` (a positional source that can tell its holes), asked a window at a time.
  const runs: Extent[] = []
  const extents = source.positional && length !== null ? source.extents : undefined
  for (let i = 0; !eof && (length === null || pos < length); i++) {
    const k = i % slots.length
    await busy[k]
    if (failure !== null) break
    const at = pos
    let hole = false
    let want = length === null ? options.chunk : Math.min(options.chunk, length - pos)
    if (extents !== undefined && length !== null) {
      if (runs.length === 0) {
        const span = Math.min(EXTENTS_WINDOW, length - pos)
        const got = await extents(pos, span)
        runs.push(...(got.length > 0 ? got : [{ offset: pos, length: span, hole: false }]))
      }
      const run = runs[0]
      hole = run.hole
      // A hole goes as one piece, however long; data in chunks.
      want = hole ? run.length : Math.min(want, run.length)
      if (want === run.length) runs.shift()
      else { run.offset += want; run.length -= want }
    }
    const buf = slots[k]
    let readDone: Promise<number>
    if (hole) {
      readDone = Promise.resolve(want)
    } else if (source.positional) {
      readDone = source.read(at, buf, want)
    } else {
      const n = await source.read(at, buf, want)
      if (n < want) { eof = true; if (length !== null) throw new DstError(ErrorCode.SHORT, `${source.name}: ended after ${at + n} bytes, ${length} expected`) }
      readDone = Promise.resolve(n)
    }
    pos += want
    const prev = lastWrite
    const written = readDone.then(async n => {
      if (n === 0) return
      if (sink.size !== null && at + n > sink.size) {
        throw new DstError(ErrorCode.RANGE, `${sink.name}: the input would pass its end (${sink.size} bytes fit); stopped after ${at} bytes`)
      }
      if (!sink.positional) await prev
      const data = hole ? null : n === buf.length ? buf : buf.subarray(0, n)
      if (data === null) {
        await sink.zero(at, n)
        stats.holeBytes += n
      } else if (data.equals(zeros.subarray(0, n))) {
        await sink.zero(at, n)
        stats.zeroBytes += n
      } else {
        await sink.write(at, data)
      }
      copied += n
      bar?.update(copied)
    })
    lastWrite = written
    busy[k] = written.catch(err => { if (failure === null) failure = err })
  }
  await Promise.all(busy)
  bar?.done(copied)
  if (failure !== null) throw failure
  return copied
}

/** Writes zeros over [pos, pos + length) with `write`, a chunk of `zeros` at a time. */
async function writeZeros (write: (pos: number, data: Buffer) => Promise<void>, zeros: Buffer, pos: number, length: number): Promise<void> {
  for (let done = 0; done < length; done += zeros.length) await write(pos + done, zeros.subarray(0, Math.min(zeros.length, length - done)))
}

async function openSource (spec: string, options: CopyOptions): Promise<Source> {
  if (spec === '-') {
    const stdin = process.stdin
    const iterator = stdin[Symbol.asyncIterator]() as AsyncIterator<Buffer>
    let pending: Buffer | null = null
    return {
      name: 'stdin',
      size: null,
      positional: false,
      read: async (_pos, into, length) => {
        let filled = 0
        while (filled < length) {
          if (pending === null || pending.length === 0) {
            const next = await iterator.next()
            if (next.done === true) break
            pending = next.value
          }
          const n = Math.min(length - filled, pending.length)
          pending.copy(into, filled, 0, n)
          pending = pending.subarray(n)
          filled += n
        }
        return filled
      },
      close: async () => { stdin.pause() },
    }
  }
  if (isDstUrl(spec)) {
    const dev = await openRemote(spec, options, 'ro')
    if (options.offset > dev.size) { await dev.close(); throw new DstError(ErrorCode.RANGE, `${spec}: offset ${options.offset} is past its end (${dev.size} bytes)`) }
    return {
      name: spec,
      size: dev.size - options.offset,
      positional: true,
      read: async (pos, into, length) => { await dev.read(options.offset + pos, length, into); return length },
      extents: async (pos, length) => (await dev.extents(options.offset + pos, length)).map(e => ({ offset: e.offset - options.offset, length: e.length, hole: e.hole })),
      close: () => dev.close(),
    }
  }
  const fd = await fs.promises.open(spec, 'r').catch((err: Error) => { throw new DstError(ErrorCode.OPEN, `${spec}: ${err.message}`) })
  const st = await fd.stat()
  const size = st.isBlockDevice() ? await blockSize(fd) : st.size
  return {
    name: spec,
    size,
    positional: st.isFile() || st.isBlockDevice(),
    read: async (pos, into, length) => {
      let done = 0
      while (done < length) {
        const { bytesRead } = await fd.read(into, done, length - done, st.isFile() || st.isBlockDevice() ? pos + done : null)
        if (bytesRead === 0) break
        done += bytesRead
      }
      return done
    },
    close: () => fd.close(),
  }
}

async function openSink (spec: string, options: CopyOptions): Promise<Sink> {
  const zeros = Buffer.alloc(options.chunk)
  if (spec === '-') {
    const out = process.stdout
    const write = (_pos: number, data: Buffer): Promise<void> => new Promise<void>((resolve, reject) => { out.write(data, err => err == null ? resolve() : reject(err)) })
    return {
      name: 'stdout',
      size: null,
      positional: false,
      write,
      // A stream has no holes: zeros are written (Node copies each write's buffer into the stream as it goes).
      zero: (pos, length) => writeZeros(write, zeros, pos, length),
      finish: async () => {},
      close: async () => {},
    }
  }
  if (isDstUrl(spec)) {
    const dev = await openRemote(spec, options, 'rw')
    if (!dev.writable) { await dev.close(); throw new DstError(ErrorCode.EROFS, `${spec}: the export is read-only`) }
    if (options.offset > dev.size) { await dev.close(); throw new DstError(ErrorCode.RANGE, `${spec}: offset ${options.offset} is past its end (${dev.size} bytes)`) }
    return {
      name: spec,
      size: dev.size - options.offset,
      positional: true,
      write: (pos, data) => dev.write(options.offset + pos, data),
      // Left alone where the export is a hole already, trimmed where it can trim (and asked again: a trim need not
      // leave zeros), zeros written where data is left.
      zero: async (pos, length) => {
        const dataIn = async (from: number, n: number): Promise<Extent[]> => (await dev.extents(from, n)).filter(e => !e.hole)
        let data = await dataIn(options.offset + pos, length)
        if (data.length > 0 && dev.canTrim) {
          for (const e of data) await dev.trim(e.offset, e.length)
          const left: Extent[] = []
          for (const e of data) left.push(...await dataIn(e.offset, e.length))
          data = left
        }
        for (const e of data) await writeZeros((at, z) => dev.write(at, z), zeros, e.offset, e.length)
      },
      finish: () => dev.flush(),
      close: () => dev.close(),
    }
  }
  let fd: fs.promises.FileHandle
  let isFile = true
  let created = false
  try {
    const st = await fs.promises.stat(spec).catch(() => null)
    isFile = st === null || st.isFile()
    created = st === null
    fd = await fs.promises.open(spec, st === null ? 'w' : 'r+')
  } catch (err) {
    throw new DstError(ErrorCode.OPEN, `${spec}: ${(err as Error).message}`)
  }
  const st = await fd.stat()
  const size = st.isBlockDevice() ? await blockSize(fd) : null
  let finished = false
  const write = async (pos: number, data: Buffer): Promise<void> => {
    let done = 0
    while (done < data.length) {
      const { bytesWritten } = await fd.write(data, done, data.length - done, st.isFile() || st.isBlockDevice() ? pos + done : null)
      done += bytesWritten
    }
  }
  // A regular file reads zeros past the end it had: what the copy does not write there stays a hole (the final
  // truncate gives the file its length). Below it, old bytes are punched out, or overwritten where punching fails.
  const oldEnd = st.isFile() ? st.size : Infinity
  let canPunch = st.isFile()
  return {
    name: spec,
    size,
    positional: st.isFile() || st.isBlockDevice(),
    write,
    zero: async (pos, length) => {
      const n = Math.min(length, Math.max(0, oldEnd - pos))
      if (n === 0) return
      if (canPunch) {
        try {
          await punchHole(fd.fd, pos, n)
          return
        } catch {
          canPunch = false // this filesystem (or file) cannot punch: zeros from now on
        }
      }
      await writeZeros(write, zeros, pos, n)
    },
    // A regular file ends up exactly as long as what was copied, like cp.
    finish: async total => { if (isFile) await fd.truncate(total); await fd.datasync().catch(() => {}); finished = true },
    // A file this copy created is removed again when the copy failed.
    close: async () => { await fd.close(); if (created && !finished) await fs.promises.rm(spec, { force: true }) },
  }
}

async function openRemote (url: string, options: CopyOptions, access: 'ro' | 'rw'): Promise<RemoteDevice> {
  const target = parseDstUrl(url)
  if (typeof target === 'string') throw new DstError(ErrorCode.URL, target)
  return RemoteDevice.open(target, { token: options.token, ...(target.tls === true && options.tls !== undefined ? { tls: options.tls } : {}), access, queueDepth: options.inFlight * Math.ceil(options.chunk / (256 * 1024)), hasher: options.hasher })
}

async function blockSize (fd: fs.promises.FileHandle): Promise<number> {
  return blockDeviceSize((await fd.stat()).rdev)
}

/** A one-line progress bar on stderr (callers draw it only when stderr is a terminal); `extra` follows the rate. */
export class ProgressBar {
  private readonly start = Date.now()
  private last = 0
  constructor (private readonly total: number | null) {}

  update (done: number, extra = ''): void {
    const now = Date.now()
    if (now - this.last < 100) return
    this.last = now
    this.draw(done, extra)
  }

  done (done: number, extra = ''): void {
    this.draw(done, extra)
    process.stderr.write('\n')
  }

  private draw (done: number, extra: string): void {
    const secs = Math.max(0.001, (Date.now() - this.start) / 1000)
    const rate = `${formatSize(Math.round(done / secs))}/s`
    if (this.total === null || this.total === 0) {
      process.stderr.write(`\r${formatSize(done)} copied, ${rate}${extra}   `)
      return
    }
    const width = 30
    const frac = Math.min(1, done / this.total)
    const fill = Math.round(frac * width)
    process.stderr.write(`\r[${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${(frac * 100).toFixed(0).padStart(3)}% ${formatSize(done)} / ${formatSize(this.total)}  ${rate}${extra}   `)
  }
}
