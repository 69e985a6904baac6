// Every error dst raises on purpose, in one catalogue (like undici's `UND_ERR_…`): each code a constant with the errno
// it travels as, and the errno's numbers on each wire, the native protocol's (export/native/PROTOCOL.md) and NBD's. Callers
// compare `err.code` with `ErrorCode.X`; no code is built at run time.
//
// Left outside on purpose: assertions of the program's own invariants (a buffer released twice, a reply batch over its
// bound; each says so where it is thrown); RangeErrors for arguments outside a function's contract (a ring or pool
// size, a read buffer too small, a size string, a handshake field: JavaScript's convention, which the tests match;
// the buffer pool's "too many waiting" and "connection closed" are among them and reach the wire as EIO); and the
// developer tools in tools/dev (benches, soak), whose errors end a developer's run and are matched by nobody.

/** The errnos dst sends. Their values are Linux's numbers, which is what the native protocol carries. */
export const Errno = {
  OK: 0,
  EPERM: 1,
  EIO: 5,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EINVAL: 22,
  ENOSPC: 28,
  EROFS: 30,
  EBADMSG: 74,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
  ETIMEDOUT: 110,
} as const

export type ErrnoName = keyof typeof Errno

/**
 * What NBD receives for each errno. NBD names only a few (the same numbers as Linux); a refusal to write (EROFS,
 * EACCES) is its EPERM, and everything else is EIO.
 */
export const NbdErrno: Readonly<Record<ErrnoName, number>> = {
  OK: 0,
  EPERM: Errno.EPERM,
  EIO: Errno.EIO,
  EAGAIN: Errno.EIO,
  ENOMEM: Errno.ENOMEM,
  EACCES: Errno.EPERM,
  EINVAL: Errno.EINVAL,
  ENOSPC: Errno.ENOSPC,
  EROFS: Errno.EPERM,
  EBADMSG: Errno.EIO,
  EOVERFLOW: Errno.EOVERFLOW,
  ENOTSUP: Errno.ENOTSUP,
  ESHUTDOWN: Errno.ESHUTDOWN,
  ETIMEDOUT: Errno.EIO,
}

interface Entry {
  readonly code: `DST_ERR_${string}`
  /** The errno a request failing with this code is answered with (a throw site may name another; few do). */
  readonly errno: ErrnoName
  /** Named after a system error (Node's `err.code`): a file's or an I/O worker's failure, or a peer's errno reply. */
  readonly system?: true
  readonly meaning: string
}

/** The catalogue. export/native/PROTOCOL.md lists the errno-named codes with their wire numbers; a test keeps them equal. */
const catalogue = {
  // Named after an errno: requests refused at the protocol edge or by a device, a peer's error reply, system errors.
  EPERM: { code: 'DST_ERR_EPERM', errno: 'EPERM', system: true, meaning: 'not permitted: a WRITE or TRIM without the export\'s write lease' },
  EIO: { code: 'DST_ERR_EIO', errno: 'EIO', system: true, meaning: 'the device failed the request' },
  EAGAIN: { code: 'DST_ERR_EAGAIN', errno: 'EAGAIN', system: true, meaning: 'no buffer or worker free right now; resend later' },
  ENOMEM: { code: 'DST_ERR_ENOMEM', errno: 'ENOMEM', system: true, meaning: 'out of memory' },
  EACCES: { code: 'DST_ERR_EACCES', errno: 'EACCES', system: true, meaning: 'access denied' },
  EINVAL: { code: 'DST_ERR_EINVAL', errno: 'EINVAL', system: true, meaning: 'a range outside the device, or a malformed request' },
  ENOSPC: { code: 'DST_ERR_ENOSPC', errno: 'ENOSPC', system: true, meaning: 'the device ran out of space' },
  EROFS: { code: 'DST_ERR_EROFS', errno: 'EROFS', system: true, meaning: 'a write to something read-only' },
  EBADMSG: { code: 'DST_ERR_EBADMSG', errno: 'EBADMSG', system: true, meaning: 'a payload did not match its wire digest' },
  EOVERFLOW: { code: 'DST_ERR_EOVERFLOW', errno: 'EOVERFLOW', system: true, meaning: 'a request longer than maxRequest' },
  ENOTSUP: { code: 'DST_ERR_ENOTSUP', errno: 'ENOTSUP', system: true, meaning: 'an operation the device or protocol does not support' },
  ESHUTDOWN: { code: 'DST_ERR_ESHUTDOWN', errno: 'ESHUTDOWN', system: true, meaning: 'the node is stopping' },
  ETIMEDOUT: { code: 'DST_ERR_ETIMEDOUT', errno: 'ETIMEDOUT', system: true, meaning: 'timed out' },
  // System errors that travel as another errno (as toErrno always sent them).
  ENOENT: { code: 'DST_ERR_ENOENT', errno: 'EIO', system: true, meaning: 'no such file' },
  EBADF: { code: 'DST_ERR_EBADF', errno: 'EIO', system: true, meaning: 'a bad file descriptor' },
  EISDIR: { code: 'DST_ERR_EISDIR', errno: 'EIO', system: true, meaning: 'a folder where a file was expected' },
  ENOTDIR: { code: 'DST_ERR_ENOTDIR', errno: 'EIO', system: true, meaning: 'a file where a folder was expected' },
  EEXIST: { code: 'DST_ERR_EEXIST', errno: 'EIO', system: true, meaning: 'the file exists' },
  EBUSY: { code: 'DST_ERR_EBUSY', errno: 'EIO', system: true, meaning: 'the file or device is busy' },
  ENXIO: { code: 'DST_ERR_ENXIO', errno: 'EIO', system: true, meaning: 'no such device or address' },
  ENODEV: { code: 'DST_ERR_ENODEV', errno: 'EIO', system: true, meaning: 'no such device' },
  EMFILE: { code: 'DST_ERR_EMFILE', errno: 'EIO', system: true, meaning: 'too many open files in this process' },
  ENFILE: { code: 'DST_ERR_ENFILE', errno: 'EIO', system: true, meaning: 'too many open files in the system' },
  EINTR: { code: 'DST_ERR_EINTR', errno: 'EIO', system: true, meaning: 'interrupted' },
  EFAULT: { code: 'DST_ERR_EFAULT', errno: 'EIO', system: true, meaning: 'a bad address' },
  ESPIPE: { code: 'DST_ERR_ESPIPE', errno: 'EIO', system: true, meaning: 'a pipe where a seekable file was expected' },
  ELOOP: { code: 'DST_ERR_ELOOP', errno: 'EIO', system: true, meaning: 'too many symbolic links' },
  ENAMETOOLONG: { code: 'DST_ERR_ENAMETOOLONG', errno: 'EIO', system: true, meaning: 'a file name too long' },
  ETXTBSY: { code: 'DST_ERR_ETXTBSY', errno: 'EIO', system: true, meaning: 'the file is busy' },
  EDQUOT: { code: 'DST_ERR_EDQUOT', errno: 'EIO', system: true, meaning: 'disk quota exceeded' },
  ESTALE: { code: 'DST_ERR_ESTALE', errno: 'EIO', system: true, meaning: 'a stale file handle' },
  ECANCELED: { code: 'DST_ERR_ECANCELED', errno: 'EIO', system: true, meaning: 'cancelled' },
  EFBIG: { code: 'DST_ERR_EFBIG', errno: 'ENOSPC', system: true, meaning: 'the file would grow past what the filesystem takes' },
  EOPNOTSUPP: { code: 'DST_ERR_EOPNOTSUPP', errno: 'ENOTSUP', system: true, meaning: 'an operation the filesystem does not support' },
  IO: { code: 'DST_ERR_IO', errno: 'EIO', meaning: 'an I/O error without a system error name this catalogue knows' },

  // Devices, the I/O ring and the hasher.
  CLOSED: { code: 'DST_ERR_CLOSED', errno: 'ESHUTDOWN', meaning: 'the device, connection, ring or hasher is closed' },
  NOENT: { code: 'DST_ERR_NOENT', errno: 'EINVAL', meaning: 'a file device\'s file does not exist and cannot be created' },
  NOTFILE: { code: 'DST_ERR_NOTFILE', errno: 'EINVAL', meaning: 'neither a regular file nor a block device' },
  SIZE: { code: 'DST_ERR_SIZE', errno: 'EINVAL', meaning: 'a device or disk of the wrong size' },
  LOCKED: { code: 'DST_ERR_LOCKED', errno: 'EPERM', meaning: 'a dataDir or a backing file is in use by another process' },
  IO_BUSY: { code: 'DST_ERR_IO_BUSY', errno: 'EAGAIN', meaning: 'every I/O ring entry is in use and its wait queue is full' },
  IO_MEMORY: { code: 'DST_ERR_IO_MEMORY', errno: 'EINVAL', meaning: 'an I/O ring was handed too many shared memories' },
  IO_WORKER: { code: 'DST_ERR_IO_WORKER', errno: 'EIO', meaning: 'an I/O worker thread failed or exited' },
  HASH: { code: 'DST_ERR_HASH', errno: 'EIO', meaning: 'a digest failed' },
  HASH_BUSY: { code: 'DST_ERR_HASH_BUSY', errno: 'EAGAIN', meaning: 'the hash workers\' queue is full' },

  // The native protocol's client and remote devices.
  CONNECT: { code: 'DST_ERR_CONNECT', errno: 'EIO', meaning: 'could not connect to a node' },
  TOKEN: { code: 'DST_ERR_TOKEN', errno: 'EACCES', meaning: 'the export refused the token (HTTP 401)' },
  ACCESS: { code: 'DST_ERR_ACCESS', errno: 'EACCES', meaning: 'the export refused this address or client certificate (HTTP 403)' },
  TLS: { code: 'DST_ERR_TLS', errno: 'EACCES', meaning: 'the TLS handshake failed: a certificate was not accepted, or one side does not speak TLS' },
  NOEXPORT: { code: 'DST_ERR_NOEXPORT', errno: 'EACCES', meaning: 'the node has no such export (HTTP 404)' },
  LEASED: { code: 'DST_ERR_LEASED', errno: 'EACCES', meaning: 'another writer holds the export\'s write lease (HTTP 409)' },
  SELF: { code: 'DST_ERR_SELF', errno: 'EACCES', meaning: 'the connection would reach the node that makes it (HTTP 508)' },
  REFUSED: { code: 'DST_ERR_REFUSED', errno: 'EACCES', meaning: 'the node refused the connection' },
  PROTOCOL: { code: 'DST_ERR_PROTOCOL', errno: 'EINVAL', meaning: 'a peer broke the wire protocol; the connection is closed (the client side sends EIO)' },
  DISCONNECTED: { code: 'DST_ERR_DISCONNECTED', errno: 'EIO', meaning: 'the connection was lost' },
  TIMEOUT: { code: 'DST_ERR_TIMEOUT', errno: 'ETIMEDOUT', meaning: 'no handshake or no answer in time' },
  SILENT: { code: 'DST_ERR_SILENT', errno: 'ETIMEDOUT', meaning: 'the peer went silent' },
  QUEUE_FULL: { code: 'DST_ERR_QUEUE_FULL', errno: 'EAGAIN', meaning: 'the client\'s request queue is full' },
  DIGEST: { code: 'DST_ERR_DIGEST', errno: 'EBADMSG', meaning: 'a payload failed its wire digest on every try' },
  UNREACHABLE: { code: 'DST_ERR_UNREACHABLE', errno: 'EIO', meaning: 'a remote device\'s node has been away longer than reconnectTimeout' },
  FOREIGN: { code: 'DST_ERR_FOREIGN', errno: 'EIO', meaning: 'a remote device\'s peer serves another disk than the one it expects' },
  NOTFOREIGN: { code: 'DST_ERR_NOTFOREIGN', errno: 'EINVAL', meaning: 'replace asked of a device or leg that is not foreign' },

  // Arrays.
  NOLEG: { code: 'DST_ERR_NOLEG', errno: 'EINVAL', meaning: 'no such leg or member (the mirror\'s I/O sends EIO when no in-sync leg is left)' },
  LASTLEG: { code: 'DST_ERR_LASTLEG', errno: 'EINVAL', meaning: 'the only in-sync leg cannot go' },
  ONELEG: { code: 'DST_ERR_ONELEG', errno: 'EINVAL', meaning: 'a mirror of one leg has nothing to compare' },
  NOTSYNC: { code: 'DST_ERR_NOTSYNC', errno: 'EINVAL', meaning: 'the leg is not in sync' },
  NOTREADY: { code: 'DST_ERR_NOTREADY', errno: 'EAGAIN', meaning: 'the leg\'s device cannot be used yet' },
  SYNCSOURCE: { code: 'DST_ERR_SYNCSOURCE', errno: 'EIO', meaning: 'a new mirror cannot tell which leg to copy from' },
  BUSY: { code: 'DST_ERR_BUSY', errno: 'EAGAIN', meaning: 'a verify is already running' },
  REGION: { code: 'DST_ERR_REGION', errno: 'EINVAL', meaning: 'the mirror\'s region is too small to verify by digest' },
  REPAIR: { code: 'DST_ERR_REPAIR', errno: 'EIO', meaning: 'a repair could not finish' },
  DIRTYDEGRADED: { code: 'DST_ERR_DIRTYDEGRADED', errno: 'EIO', meaning: 'a parity array crashed while degraded: regions whose data cannot be trusted; refused unless forceDegradedStart' },
  NEWPARITY: { code: 'DST_ERR_NEWPARITY', errno: 'EINVAL', meaning: 'a new parity array over members that hold data (or cannot be read) would overwrite parity unasked' },
  INTENT: { code: 'DST_ERR_INTENT', errno: 'EIO', meaning: 'a mirror\'s write-intent file cannot be read or written' },

  // The node: config, dataDir, admin actions.
  CONFIG: { code: 'DST_ERR_CONFIG', errno: 'EINVAL', meaning: 'a bad config (the CLI exits 2)' },
  USAGE: { code: 'DST_ERR_USAGE', errno: 'EINVAL', meaning: 'bad command-line or admin input (exit 2; HTTP 400)' },
  STATE: { code: 'DST_ERR_STATE', errno: 'EIO', meaning: 'a file the node keeps in its dataDir cannot be read' },
  LISTEN: { code: 'DST_ERR_LISTEN', errno: 'EIO', meaning: 'cannot listen on the configured address' },
  NOTFOUND: { code: 'DST_ERR_NOTFOUND', errno: 'EINVAL', meaning: 'no device of that name (HTTP 404)' },
  NOTMIRROR: { code: 'DST_ERR_NOTMIRROR', errno: 'EINVAL', meaning: 'the action needs a mirror' },
  NOSTATE: { code: 'DST_ERR_NOSTATE', errno: 'EINVAL', meaning: 'the node has no dataDir to record the change in' },
  EXISTS: { code: 'DST_ERR_EXISTS', errno: 'EINVAL', meaning: 'the name is taken' },
  INUSE: { code: 'DST_ERR_INUSE', errno: 'EINVAL', meaning: 'the device already has a writer (an array or an export)' },
  CYCLE: { code: 'DST_ERR_CYCLE', errno: 'EINVAL', meaning: 'the change would make an array contain itself' },

  // The CLI.
  URL: { code: 'DST_ERR_URL', errno: 'EINVAL', meaning: 'not a dst:// URL' },
  RANGE: { code: 'DST_ERR_RANGE', errno: 'EINVAL', meaning: 'a copy would pass the end of its source or destination' },
  SHORT: { code: 'DST_ERR_SHORT', errno: 'EIO', meaning: 'the source ended before the length asked for' },
  OPEN: { code: 'DST_ERR_OPEN', errno: 'EIO', meaning: 'a copy\'s file cannot be opened' },
  HTTP: { code: 'DST_ERR_HTTP', errno: 'EIO', meaning: 'a node\'s HTTP port cannot be reached, or it answered an error' },
  VERIFY: { code: 'DST_ERR_VERIFY', errno: 'EIO', meaning: 'a verify the CLI follows failed, or the node stopped reporting it' },
} as const satisfies Record<string, Entry>

export type ErrorKey = keyof typeof catalogue

/** Every code, by name: `err.code === ErrorCode.FOREIGN`. */
export const ErrorCode = Object.freeze(Object.fromEntries(Object.entries(catalogue).map(([key, e]) => [key, e.code]))) as
  { readonly [K in ErrorKey]: (typeof catalogue)[K]['code'] }
export type ErrorCode = (typeof ErrorCode)[ErrorKey]

/** One code with everything it maps to: what `errorInfo` answers, and what the catalogue's test checks. */
export interface ErrorInfo {
  key: ErrorKey
  code: ErrorCode
  errno: ErrnoName
  /** The number in a native protocol reply's error field. */
  native: number
  /** The number in an NBD reply's error field. */
  nbd: number
  system: boolean
  meaning: string
}

const infos: ErrorInfo[] = Object.entries(catalogue).map(([key, e]: [string, Entry]) => ({
  key: key as ErrorKey, code: e.code as ErrorCode, errno: e.errno, native: Errno[e.errno], nbd: NbdErrno[e.errno],
  system: e.system === true, meaning: e.meaning,
}))
const byCode = new Map<string, ErrorInfo>(infos.map(i => [i.code, i]))
/** Node's `err.code` (ENOENT, EBADF, …) to the entry named after it. */
const bySystemName = new Map<string, ErrorInfo>(infos.filter(i => i.system).map(i => [i.key, i]))
const namesByNumber = new Map<number, ErrnoName>()
for (const [name, value] of Object.entries(Errno)) namesByNumber.set(value, name as ErrnoName)

/** Every entry of the catalogue, in its order. */
export function errorCatalogue (): readonly ErrorInfo[] { return infos }

export function errorInfo (code: ErrorCode): ErrorInfo { return byCode.get(code) as ErrorInfo }

export function errnoName (errno: number): string {
  return namesByNumber.get(errno) ?? `E${errno}`
}

/** The code named after a wire errno (a peer's error reply): EAGAIN is DST_ERR_EAGAIN; a number dst never sends, EIO. */
export function codeOfErrno (errno: number): ErrorCode {
  const name = namesByNumber.get(errno)
  return name === undefined || name === 'OK' ? ErrorCode.EIO : catalogue[name].code
}

/** The code of a system error by its name (Node's `err.code`); a name the catalogue does not know is DST_ERR_IO. */
export function systemErrorCode (name: string | undefined): ErrorCode {
  return (name !== undefined ? bySystemName.get(name)?.code : undefined) ?? ErrorCode.IO
}

/** What NBD receives for an errno (NbdErrno; a number dst never sends is EIO). */
export function nbdErrno (errno: number): number {
  const name = namesByNumber.get(errno)
  return name === undefined ? Errno.EIO : NbdErrno[name]
}

/** Every error dst raises on purpose. `code` is stable: tests and callers match on it, never on the message. */
export class DstError extends Error {
  readonly code: ErrorCode
  /** The errno the wire protocols answer with: the catalogue's for the code, unless the throw site names another. */
  readonly errno: number
  /** When waiting may help: ms after which the same request may succeed (a write lease about to expire). */
  retryAfter?: number

  constructor (code: ErrorCode, message: string, errno: number = Errno[(byCode.get(code) as ErrorInfo).errno]) {
    super(message)
    this.name = 'DstError'
    this.code = code
    this.errno = errno
  }
}

/** A peer answered a request with an error: the code named after its errno, which it keeps as it came. */
export class RemoteError extends DstError {
  constructor (errno: number, message: string) {
    super(codeOfErrno(errno), message, errno)
    this.name = 'RemoteError'
  }
}

/** A peer broke the wire protocol (a malformed frame, a bad magic): the connection is closed. */
export class ProtocolError extends DstError {
  constructor (message: string) {
    super(ErrorCode.PROTOCOL, message)
    this.name = 'ProtocolError'
  }
}

/** A bad config file or bad command line: the CLI prints the message and exits 2. */
export class ConfigError extends DstError {
  constructor (message: string) {
    super(ErrorCode.CONFIG, message)
    this.name = 'ConfigError'
  }
}

/** Maps any thrown value to the errno the wire protocols send back. Node's system errors go by their name. */
export function toErrno (err: unknown): number {
  if (err instanceof DstError) return err.errno
  const code = (err as NodeJS.ErrnoException | null)?.code
  const known = typeof code === 'string' ? bySystemName.get(code) : undefined
  return known !== undefined ? known.native : Errno.EIO
}
