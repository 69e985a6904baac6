// `dst copy SRC DST`: copies between a local file (or block device), `-` (stdin/stdout) and dst:// URLs with many
// requests in flight, like dd/nbdcopy. `--offset` is the byte offset on the dst:// side(s).

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
}

interface Source {
  name: string
  /** Bytes available from the start of the copy, or null when unknown until EOF (stdin). */
  size: number | null
  /** Positional sources can be read out of order; streams must be read one chunk after another. */
  positional: boolean
  read: (pos: number, into: Buffer, length: number) => Promise<number>
  close: () => Promise<void>
}

interface Sink {
  name: string
  size: number | null
  positional: boolean
  write: (pos: number, data: Buffer) => Promise<void>
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
  let copied = 0
  let failure: unknown = null
  let lastWrite: Promise<void> = Promise.resolve()
  let pos = 0
  let eof = false
  for (let i = 0; !eof && (length === null || pos < length); i++) {
    const k = i % slots.length
    await busy[k]
    if (failure !== null) break
    const at = pos
    const want = length === null ? options.chunk : Math.min(options.chunk, length - pos)
    const buf = slots[k]
    let readDone: Promise<number>
    if (source.positional) {
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
      await sink.write(at, n === buf.length ? buf : buf.subarray(0, n))
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
  if (spec === '-') {
    const out = process.stdout
    return {
      name: 'stdout',
      size: null,
      positional: false,
      write: (_pos, data) => new Promise<void>((resolve, reject) => { out.write(data, err => err == null ? resolve() : reject(err)) }),
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
  return {
    name: spec,
    size,
    positional: st.isFile() || st.isBlockDevice(),
    write: async (pos, data) => {
      let done = 0
      while (done < data.length) {
        const { bytesWritten } = await fd.write(data, done, data.length - done, st.isFile() || st.isBlockDevice() ? pos + done : null)
        done += bytesWritten
      }
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
