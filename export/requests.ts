// The one request validator of both protocols (native and NBD): opcode, range, size, read-only and lease checks,
// made once at the protocol edge so that devices and arrays trust what they are given. Each protocol maps its own
// opcodes to a RequestKind and says, in its WireAnswers, which errno it gives where the two protocols' specifications
// differ (export/PROTOCOL.md for the native one, doc/proto.md of the NBD project for NBD).

import { Errno } from '../node/core/errors'
import { isHashChunk } from '../node/core/hasher'
import type { ServedExport } from './served'

/**
 * What a request does, whichever protocol carried it. LOOKUP: a request about a range that carries no payload either
 * way and changes nothing (NBD's BLOCK_STATUS and CACHE): its length is not bounded by maxRequest but must not be 0.
 */
export const RequestKind = { READ: 0, WRITE: 1, TRIM: 2, WRITE_ZEROES: 3, FLUSH: 4, PING: 5, HASH: 6, UNKNOWN: 7, EXTENTS: 8, LOOKUP: 9 } as const
export type RequestKindValue = typeof RequestKind[keyof typeof RequestKind]

/**
 * The answers that differ between the protocols. Native: EROFS, ENOTSUP for an unknown opcode and for TRIM on a device
 * that cannot trim, and FLUSH/PING must carry a zero range (PROTOCOL.md, "Errors"). NBD: EPERM for a write to a
 * read-only export, EINVAL for an unknown command (proto.md: "SHOULD return NBD_EINVAL if it receives an unknown
 * command", "SHOULD NOT return NBD_ENOTSUP" but for fast zeroes) and so for a TRIM it did not advertise; a FLUSH's
 * reserved offset and length are not looked at.
 */
export interface WireAnswers {
  readOnly: number
  cannotTrim: number
  unknown: number
  /** The answer to a FLUSH or PING with a non-zero offset or length; 0: not checked. */
  flushRange: number
}

export const NATIVE_ANSWERS: WireAnswers = { readOnly: Errno.EROFS, cannotTrim: Errno.ENOTSUP, unknown: Errno.ENOTSUP, flushRange: Errno.EINVAL }
export const NBD_ANSWERS: WireAnswers = { readOnly: Errno.EPERM, cannotTrim: Errno.EINVAL, unknown: Errno.EINVAL, flushRange: 0 }

/** One connection's side of the checks: what it may do, fixed when it opened. */
export interface RequestRules {
  readonly exp: ServedExport
  /** The connection is read-only (asked for it, or could not have more). The export's own flags are looked at too. */
  readonly readOnly: boolean
  /** Its write lease (owner and token); null and 0 for an anonymous writer (NBD, or a native client without a name). */
  readonly owner: string | null
  readonly token: number
  readonly maxRequest: number
  readonly answers: WireAnswers
}

/**
 * 0 if the request may go to the device, else the errno to answer it with. `aux` is the HASH chunk size, or the most
 * runs an EXTENTS reply may carry (native only).
 * The order of the checks decides which answer a request wrong in several ways gets: access first, then capability,
 * size and range.
 */
export function checkRequest (rules: RequestRules, kind: number, offset: number, length: number, aux: number): number {
  const exp = rules.exp
  const d = exp.device
  switch (kind) {
    case RequestKind.READ:
    case RequestKind.WRITE:
    case RequestKind.TRIM:
    case RequestKind.WRITE_ZEROES:
      if (kind !== RequestKind.READ) {
        if (rules.readOnly || exp.readOnly || !d.writable) return rules.answers.readOnly
        // Fencing: only the lease holder's current connections (or anyone, on a shared export) may change data.
        if (exp.shared !== true && !exp.lease.mayWrite(rules.owner, rules.token)) return Errno.EPERM
        if (kind === RequestKind.TRIM && !d.canTrim) return rules.answers.cannotTrim
      }
      // TRIM and WRITE_ZEROES carry no payload: their length is not bounded by maxRequest.
      if ((kind === RequestKind.READ || kind === RequestKind.WRITE) && length > rules.maxRequest) return Errno.EOVERFLOW
      if (!Number.isSafeInteger(offset) || offset + length > d.size) return Errno.EINVAL
      return 0
    case RequestKind.LOOKUP:
      if (!Number.isSafeInteger(offset) || length === 0 || offset + length > d.size) return Errno.EINVAL
      return 0
    case RequestKind.HASH:
      if (length > rules.maxRequest) return Errno.EOVERFLOW
      if (!Number.isSafeInteger(offset) || offset + length > d.size || !isHashChunk(aux)) return Errno.EINVAL
      return 0
    case RequestKind.EXTENTS:
      // No payload either way but a bounded list of runs: the length is not bounded by maxRequest.
      if (!Number.isSafeInteger(offset) || offset + length > d.size || aux === 0) return Errno.EINVAL
      return 0
    case RequestKind.FLUSH:
    case RequestKind.PING:
      return (offset === 0 && length === 0) || rules.answers.flushRange === 0 ? 0 : rules.answers.flushRange
    default:
      return rules.answers.unknown
  }
}
