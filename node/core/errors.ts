// One error class for the whole daemon, with stable string codes, and the single mapping from those codes to the
// errno-like numbers that travel on the wire (export/native/PROTOCOL.md lists them).

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

const namesByNumber = new Map<number, ErrnoName>()
for (const [name, value] of Object.entries(Errno)) namesByNumber.set(value, name as ErrnoName)

export function errnoName (errno: number): string {
  return namesByNumber.get(errno) ?? `E${errno}`
}

/** Every error dst raises on purpose. `code` is stable: tests and callers match on it, never on the message. */
export class DstError extends Error {
  readonly code: string
  readonly errno: number
  /** When waiting may help: ms after which the same request may succeed (a write lease about to expire). */
  retryAfter?: number

  constructor (code: string, message: string, errno: number = Errno.EIO) {
    super(message)
    this.name = 'DstError'
    this.code = code
    this.errno = errno
  }
}

/** A request the protocol edge refused (bad range, too large, read-only...). */
export function requestError (errno: number, message: string): DstError {
  return new DstError(`DST_ERR_${errnoName(errno)}`, message, errno)
}

/** A peer answered a request with an error. */
export class RemoteError extends DstError {
  constructor (errno: number, message: string) {
    super(`DST_ERR_${errnoName(errno)}`, message, errno)
    this.name = 'RemoteError'
  }
}

/** A peer broke the wire protocol (a malformed frame, a bad magic): the connection is closed. */
export class ProtocolError extends DstError {
  constructor (message: string) {
    super('DST_ERR_PROTOCOL', message, Errno.EINVAL)
    this.name = 'ProtocolError'
  }
}

/** A bad config file or bad command line: the CLI prints the message and exits 2. */
export class ConfigError extends DstError {
  constructor (message: string) {
    super('DST_ERR_CONFIG', message, Errno.EINVAL)
    this.name = 'ConfigError'
  }
}

/** Maps any thrown value to the errno the wire protocols send back. Node's fs errors carry their own name. */
export function toErrno (err: unknown): number {
  if (err instanceof DstError) return err.errno
  const code = (err as NodeJS.ErrnoException | null)?.code
  if (typeof code === 'string' && code in Errno) return Errno[code as ErrnoName]
  if (code === 'EFBIG') return Errno.ENOSPC
  if (code === 'EOPNOTSUPP') return Errno.ENOTSUP
  return Errno.EIO
}
