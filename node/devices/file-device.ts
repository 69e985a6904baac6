// A device backed by a regular file or a block device. Positional I/O, short reads and writes looped, flush =
// fdatasync. A missing file is created sparse at the configured size. Requests whose buffer lies in shared memory (the
// node's buffer pool) go through a dedicated I/O worker thread (node/devices/io-ring.ts, started at the first such request,
// stopped on close); any other buffer goes through fs and the libuv thread pool. Holes come from the native addon
// (node/devices/native.ts, on the thread pool too): extents from SEEK_DATA/SEEK_HOLE, TRIM and zeroes that may trim
// punch holes, other zeroes are ZERO_RANGE; where the addon or the filesystem cannot, the capabilities say so (one
// data run, no TRIM, zeroes written). Block devices keep to reads and writes.

import * as fs from 'node:fs'
import { derivedIdentity } from '../core/identity'
import { Device, type Extent } from '../core/device'
import type { Hasher } from '../core/hasher'
import { ConfigError, DstError, Errno, ErrorCode, systemErrorCode } from '../core/errors'
import { lockBackingFile } from '../core/lock'
import { IoRing } from './io-ring'
import { loadNativeFs, type NativeFs } from './native'

export interface FileDeviceOptions {
  path: string
  /** Size to create a missing file with, or to grow a smaller one to; an existing larger file is exposed up to it. */
  size?: number
  blockSize?: number
  readOnly?: boolean
  /** Called with a human sentence when the file had to be grown or is larger than `size`. */
  warn?: (message: string) => void
  /**
   * Worker threads serving shared-memory buffers; 0 sends every request through fs. Default: the environment's
   * DST_IO_THREADS, else 2: on page-cache hits one would keep up (1 and 2 measured alike on 2 cores), but with one a
   * single disk miss would hold up every request queued behind it.
   */
  ioThreads?: number
  /** The hash workers HASH requests are digested on (default: defaultHasher()). */
  hasher?: Hasher
  /** The native addon; null runs without it (as on a machine where it was not built). Default: loadNativeFs(). */
  native?: NativeFs | null
}

/** What the file's filesystem can do with holes, found when it is opened (and narrowed by the first refusal). */
interface Sparse { native: NativeFs | null, extents: boolean, punch: boolean, zeroRange: boolean }

function defaultIoThreads (): number {
  const env = process.env.DST_IO_THREADS
  if (env === undefined || env === '') return 2
  const n = Number(env)
  return Number.isInteger(n) && n >= 0 && n <= 64 ? n : 2
}

export class FileDevice extends Device {
  readonly type = 'file'
  readonly path: string
  private readonly fd: number
  private readonly ioThreads: number
  private io: IoRing | null = null
  private readonly sparse: Sparse

  private constructor (path: string, fd: number, size: number, options: FileDeviceOptions, identity: string, sparse: Sparse) {
    super({ size, blockSize: options.blockSize ?? 4096, readOnly: options.readOnly, hasher: options.hasher, canTrim: sparse.punch, canZeroFast: sparse.punch })
    this.path = path
    this.fd = fd
    this.sparse = sparse
    this.identity = identity
    this.ioThreads = options.ioThreads ?? defaultIoThreads()
  }

  /** The I/O ring, when `buf` can go through it (started on first use). */
  private ringFor (buf: Uint8Array): IoRing | null {
    if (this.ioThreads === 0 || !(buf.buffer instanceof SharedArrayBuffer)) return null
    if (this.io === null) this.io = new IoRing({ name: `file device '${this.path}'`, threads: this.ioThreads })
    return this.io.accepts(buf) ? this.io : null
  }

  /** The I/O ring's state for status and tests: null until a shared-memory buffer was seen. */
  get ioRing (): IoRing | null { return this.io }

  static async open (options: FileDeviceOptions): Promise<FileDevice> {
    const { path } = options
    let fd: number
    let created = false
    try {
      fd = await fsOpen(path, options.readOnly === true ? 'r' : 'r+')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw fileError(path, err)
      if (options.size === undefined) throw new DstError(ErrorCode.NOENT, `file device '${path}' does not exist and no size was given to create it`)
      if (options.readOnly === true) throw new DstError(ErrorCode.NOENT, `file device '${path}' does not exist (read-only devices are never created)`)
      try {
        fd = await fsOpen(path, 'wx+')
        created = true
      } catch (err2) { throw fileError(path, err2) }
    }
    try {
      // Before the file is sized or read: a second node (or a second device) on one file is refused, untouched.
      lockBackingFile(fd, path, options.readOnly === true)
      const st = await fsFstat(fd)
      let size: number
      if (st.isBlockDevice()) {
        size = await blockDeviceSize(st.rdev)
        if (options.size !== undefined && options.size < size) size = options.size
      } else if (st.isFile()) {
        size = st.size
        if (options.size !== undefined && options.size !== size) {
          if (size < options.size) {
            if (options.readOnly === true) throw new DstError(ErrorCode.SIZE, `file device '${path}' is ${size} bytes, smaller than the configured ${options.size}, and read-only`)
            await fsFtruncate(fd, options.size).catch((err: NodeJS.ErrnoException) => {
              // A size the filesystem cannot hold (EFBIG, EINVAL) is a config problem, not an I/O failure.
              if (err.code === 'EFBIG' || err.code === 'EINVAL') throw new ConfigError(`file device '${path}': size ${options.size as number} is more than this filesystem takes for one file (${err.code})`)
              throw fileError(path, err)
            })
            if (!created) options.warn?.(`file '${path}' grown sparse from ${size} to ${options.size} bytes`)
          } else {
            options.warn?.(`file '${path}' is ${size} bytes; only the first ${options.size} are used`)
          }
          size = options.size
        }
      } else {
        throw new DstError(ErrorCode.NOTFILE, `'${path}' is neither a regular file nor a block device`)
      }
      if (size === 0) throw new DstError(ErrorCode.SIZE, `file device '${path}' has size 0`)
      const native = st.isFile() ? (options.native === undefined ? loadNativeFs() : options.native) : null
      const punch = native !== null && options.readOnly !== true && await canPunch(native, fd, Math.max(st.size, size))
      const sparse = { native, extents: native !== null, punch, zeroRange: native !== null && options.readOnly !== true }
      return new FileDevice(path, fd, size, options, identityOf(st), sparse)
    } catch (err) {
      await fsClose(fd).catch(() => {})
      // A file this start created and could not make into a device is removed again: a failed start leaves nothing.
      if (created) await fs.promises.unlink(path).catch(() => {})
      throw err
    }
  }

  // Not async: the ring's promise is handed back as is (one promise less per request on the hot path).
  protected override _read (offset: number, length: number, into: Uint8Array): Promise<void> {
    const io = this.ringFor(into)
    if (io !== null) return io.read(this.fd, into, offset, length)
    return this.readThroughFs(offset, length, into)
  }

  protected override _write (offset: number, data: Uint8Array): Promise<void> {
    const io = this.ringFor(data)
    if (io !== null) return io.write(this.fd, data, offset)
    return this.writeThroughFs(offset, data)
  }

  private async readThroughFs (offset: number, length: number, into: Uint8Array): Promise<void> {
    let done = 0
    while (done < length) {
      const n = await fsRead(this.fd, into, done, length - done, offset + done)
      if (n === 0) { into.fill(0, done, length); return } // past the file's end (truncated behind our back): holes read as zeros
      done += n
    }
  }

  private async writeThroughFs (offset: number, data: Uint8Array): Promise<void> {
    let done = 0
    while (done < data.byteLength) {
      done += await fsWrite(this.fd, data, done, data.byteLength - done, offset + done)
    }
  }

  protected override async _extents (offset: number, length: number): Promise<Extent[]> {
    const native = this.sparse.native
    if (native !== null && this.sparse.extents) {
      try {
        return await native.extents(this.fd, offset, length)
      } catch (err) {
        // A filesystem without SEEK_DATA (EINVAL, ENOTSUP): from now on one data run, which is always right.
        if (!unsupported(err)) throw err
        this.sparse.extents = false
      }
    }
    return [{ offset, length, hole: false }]
  }

  /** Punches a hole (canTrim is false where the filesystem cannot, so this is only called where it can). */
  protected override _trim (offset: number, length: number): Promise<void> {
    return (this.sparse.native as NativeFs).punchHole(this.fd, offset, length)
  }

  protected override async _zero (offset: number, length: number, mayTrim: boolean, fast: boolean): Promise<void> {
    const native = this.sparse.native
    if (native !== null && mayTrim && this.sparse.punch) return await native.punchHole(this.fd, offset, length)
    if (native !== null && this.sparse.zeroRange) {
      try {
        return await native.zeroRange(this.fd, offset, length)
      } catch (err) {
        if (!unsupported(err)) throw err
        this.sparse.zeroRange = false // e.g. tmpfs: punches, but has no ZERO_RANGE
      }
    }
    if (fast) throw new DstError(ErrorCode.ENOTSUP, `file device '${this.path}': the filesystem cannot zero a range without writing it`)
    return await super._zero(offset, length, mayTrim, fast)
  }

  protected override _flush (): Promise<void> {
    return new Promise((resolve, reject) => fs.fdatasync(this.fd, err => err === null ? resolve() : reject(err)))
  }

  protected override async _close (): Promise<void> {
    // Nothing is in flight (Device.close waits); the workers stop before the fd they use is closed.
    if (this.io !== null) await this.io.close()
    await fsClose(this.fd)
  }

  override status () {
    return { ...super.status(), path: this.path, holes: this.sparse.extents, punch: this.sparse.punch }
  }
}

/**
 * Whether the filesystem punches holes: a hole punched past the file's end (`end` or beyond, size kept) frees nothing
 * and changes nothing, but is refused by a filesystem that cannot punch.
 */
async function canPunch (native: NativeFs, fd: number, end: number): Promise<boolean> {
  try {
    await native.punchHole(fd, Math.ceil(end / 4096) * 4096, 4096)
    return true
  } catch (err) {
    if (unsupported(err)) return false
    throw err
  }
}

/** The answers of a filesystem (or kernel) that does not do an operation, as opposed to one that failed at it. */
function unsupported (err: unknown): boolean {
  const code = (err as DstError).code
  return code === ErrorCode.EOPNOTSUPP || code === ErrorCode.ENOTSUP || code === ErrorCode.EINVAL
}

/** The identity of a file is its inode and birth time: the same file keeps it, a replaced file gets a new one. */
function identityOf (st: fs.Stats): string {
  return derivedIdentity(`${st.dev}:${st.ino}:${st.rdev}:${st.birthtimeMs}`)
}

/** Size of a block device from its device number (Node has no lseek or BLKGETSIZE64; the kernel reports it in /sys). */
export async function blockDeviceSize (rdev: number): Promise<number> {
  const major = Math.floor(rdev / 256) & 0xfff
  const minor = (rdev & 0xff) | ((Math.floor(rdev / 4096) & 0xfff00))
  const sectors = await fs.promises.readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')
  return Number(sectors.trim()) * 512
}

function fileError (path: string, err: unknown): DstError {
  const e = err as NodeJS.ErrnoException
  // A file that cannot be opened is EIO whatever the system said (it fails the node's start, not a request).
  return new DstError(systemErrorCode(e.code), `file device '${path}': ${e.message}`, Errno.EIO)
}

function fsOpen (path: string, flags: string): Promise<number> {
  return new Promise((resolve, reject) => fs.open(path, flags, 0o644, (err, fd) => err === null ? resolve(fd) : reject(err)))
}
function fsFstat (fd: number): Promise<fs.Stats> {
  return new Promise((resolve, reject) => fs.fstat(fd, (err, st) => err === null ? resolve(st) : reject(err)))
}
function fsFtruncate (fd: number, size: number): Promise<void> {
  return new Promise((resolve, reject) => fs.ftruncate(fd, size, err => err === null ? resolve() : reject(err)))
}
function fsClose (fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.close(fd, err => err === null ? resolve() : reject(err)))
}
function fsRead (fd: number, buf: Uint8Array, at: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => fs.read(fd, buf, at, len, pos, (err, n) => err === null ? resolve(n) : reject(err)))
}
function fsWrite (fd: number, buf: Uint8Array, at: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => fs.write(fd, buf, at, len, pos, (err, n) => err === null ? resolve(n) : reject(err)))
}
