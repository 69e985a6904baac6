// The native block protocol's byte layout (export/native/PROTOCOL.md): fixed little-endian headers written into caller
// buffers, and one streaming decoder, an explicit state machine over received chunks that copies a payload once,
// straight into the buffer its owner names (a pool slot on the server, the caller's read buffer on the client).

import { ProtocolError } from '../../node/core/errors'
import type { Extent } from '../../node/core/device'

/**
 * WebSocket close code a writer sends when it is gone for good (a clean stop, a device closed): the export releases
 * its write lease at once instead of keeping it for leaseTimeout (export/native/PROTOCOL.md).
 */
export const CLOSE_WRITER_DONE = 4000

/** The version this side speaks; it also answers peers of every version from MIN_PROTOCOL_VERSION (PROTOCOL.md). */
export const PROTOCOL_VERSION = 3
export const MIN_PROTOCOL_VERSION = 2
/** The first version with EXTENTS. */
export const EXTENTS_VERSION = 3

/**
 * The version a server speaks on a connection whose client sent `x-dst-version: asked`: the highest both know. A client
 * that names none, or one older than this server knows, gets MIN_PROTOCOL_VERSION (whose handshake every dst client
 * since version 2 reads); one newer gets PROTOCOL_VERSION, and it decides whether it still talks to us.
 */
export function agreedVersion (asked: string): number {
  const v = /^[0-9]{1,5}$/.test(asked) ? Number(asked) : 0
  if (v < MIN_PROTOCOL_VERSION) return MIN_PROTOCOL_VERSION
  return Math.min(v, PROTOCOL_VERSION)
}

export const REQUEST_MAGIC = 0x51545344 // "DSTQ" on the wire
export const REPLY_MAGIC = 0x52545344 // "DSTR"
export const HANDSHAKE_MAGIC = 0x48545344 // "DSTH"

export const REQUEST_HEADER_SIZE = 32
export const REPLY_HEADER_SIZE = 24
export const HANDSHAKE_SIZE = 96

export const Op = {
  READ: 1,
  WRITE: 2,
  FLUSH: 3,
  TRIM: 4,
  PING: 5,
  HASH: 6,
  EXTENTS: 7,
} as const

export const opNames: Record<number, string> = { 1: 'read', 2: 'write', 3: 'flush', 4: 'trim', 5: 'ping', 6: 'hash', 7: 'extents' }

export const HandshakeFlag = {
  READ_ONLY: 1,
  FLUSH: 2,
  TRIM: 4,
  /** The export answers HASH requests with digests of the algorithm named in the handshake. */
  HASH: 8,
  /** Wire digests: every WRITE payload and READ reply payload is followed by its digest. */
  DIGEST: 16,
  /** Version 3: the export answers EXTENTS (which parts of a range are holes). */
  EXTENTS: 32,
} as const

/** An EXTENTS reply is a list of runs of this many bytes each: length (u32), flags (u32). */
export const EXTENT_ENTRY_SIZE = 8
/** A run's flag: the run is a hole (reads as zeros, holds no space). */
export const EXTENT_HOLE = 1
/** The most runs one EXTENTS reply carries (8 KiB): a caller asks again from where a reply ended. */
export const MAX_EXTENTS_PER_REPLY = 1024
/** The longest range one EXTENTS request may ask about (its length is a u32): 4 GiB less 64 KiB. */
export const MAX_EXTENTS_SPAN = 0xffff0000

/** A frame that cannot be parsed: the connection is closed with this reason (WebSocket close code 1002). */
export interface RequestHeader {
  op: number
  flags: number
  tagLo: number
  tagHi: number
  offset: number
  length: number
  /** HASH: the chunk size; 0 for every other request. */
  aux: number
}

export interface ReplyHeader {
  op: number
  tagLo: number
  tagHi: number
  errno: number
  length: number
}

export interface Handshake {
  version: number
  size: number
  blockSize: number
  maxRequest: number
  flags: number
  maxInFlight: number
  identity: string
  generation: number
  /** The write lease's fencing token this connection holds (0: none). */
  leaseToken: number
  /** The digest HASH replies and wire digests use (e.g. 'blake2b512'), and its size in bytes. */
  hashAlgorithm: string
  digestSize: number
}

const TWO_32 = 0x100000000

function readU64 (buf: Buffer, at: number): number {
  return buf.readUInt32LE(at) + buf.readUInt32LE(at + 4) * TWO_32
}

function writeU64 (buf: Buffer, at: number, value: number): void {
  buf.writeUInt32LE(value >>> 0, at)
  buf.writeUInt32LE(Math.floor(value / TWO_32) >>> 0, at + 4)
}

export function writeRequestHeader (buf: Buffer, at: number, op: number, flags: number, tagLo: number, tagHi: number, offset: number, length: number, aux = 0): void {
  buf.writeUInt32LE(REQUEST_MAGIC, at)
  buf[at + 4] = op
  buf[at + 5] = flags
  buf.writeUInt16LE(0, at + 6)
  buf.writeUInt32LE(tagLo, at + 8)
  buf.writeUInt32LE(tagHi, at + 12)
  writeU64(buf, at + 16, offset)
  buf.writeUInt32LE(length, at + 24)
  buf.writeUInt32LE(aux, at + 28)
}

export function parseRequestHeader (buf: Buffer, at: number): RequestHeader {
  const magic = buf.readUInt32LE(at)
  if (magic !== REQUEST_MAGIC) throw new ProtocolError(`bad request magic 0x${magic.toString(16).padStart(8, '0')}`)
  return {
    op: buf[at + 4],
    flags: buf[at + 5],
    tagLo: buf.readUInt32LE(at + 8),
    tagHi: buf.readUInt32LE(at + 12),
    offset: readU64(buf, at + 16),
    length: buf.readUInt32LE(at + 24),
    aux: buf.readUInt32LE(at + 28),
  }
}

export function writeReplyHeader (buf: Buffer, at: number, op: number, tagLo: number, tagHi: number, errno: number, length: number): void {
  buf.writeUInt32LE(REPLY_MAGIC, at)
  buf[at + 4] = op
  buf[at + 5] = 0
  buf.writeUInt16LE(0, at + 6)
  buf.writeUInt32LE(tagLo, at + 8)
  buf.writeUInt32LE(tagHi, at + 12)
  buf.writeUInt32LE(errno, at + 16)
  buf.writeUInt32LE(length, at + 20)
}

export function parseReplyHeader (buf: Buffer, at: number): ReplyHeader {
  const magic = buf.readUInt32LE(at)
  if (magic !== REPLY_MAGIC) throw new ProtocolError(`bad reply magic 0x${magic.toString(16).padStart(8, '0')}`)
  return {
    op: buf[at + 4],
    tagLo: buf.readUInt32LE(at + 8),
    tagHi: buf.readUInt32LE(at + 12),
    errno: buf.readUInt32LE(at + 16),
    length: buf.readUInt32LE(at + 20),
  }
}

export function encodeHandshake (h: Handshake): Buffer {
  const buf = Buffer.alloc(HANDSHAKE_SIZE)
  buf.writeUInt32LE(HANDSHAKE_MAGIC, 0)
  buf.writeUInt16LE(h.version, 4)
  writeU64(buf, 8, h.size)
  buf.writeUInt32LE(h.blockSize, 16)
  buf.writeUInt32LE(h.maxRequest, 20)
  buf.writeUInt32LE(h.flags, 24)
  buf.writeUInt32LE(h.maxInFlight, 28)
  const hex = h.identity.replace(/-/g, '')
  if (!/^[0-9a-f]{32}$/i.test(hex)) throw new RangeError(`identity '${h.identity}' is not a UUID`)
  buf.write(hex, 32, 'hex')
  writeU64(buf, 48, h.generation)
  writeU64(buf, 56, h.leaseToken)
  if (!/^[a-z0-9-]{1,16}$/.test(h.hashAlgorithm)) throw new RangeError(`hash algorithm name '${h.hashAlgorithm}' does not fit the handshake`)
  buf.write(h.hashAlgorithm, 64, 'latin1')
  buf.writeUInt16LE(h.digestSize, 80)
  return buf
}

export function parseHandshake (buf: Buffer): Handshake {
  if (buf.length < HANDSHAKE_SIZE) throw new ProtocolError(`handshake is ${buf.length} bytes, expected ${HANDSHAKE_SIZE}`)
  const magic = buf.readUInt32LE(0)
  if (magic !== HANDSHAKE_MAGIC) throw new ProtocolError(`bad handshake magic 0x${magic.toString(16).padStart(8, '0')}`)
  const hex = buf.toString('hex', 32, 48)
  return {
    version: buf.readUInt16LE(4),
    size: readU64(buf, 8),
    blockSize: buf.readUInt32LE(16),
    maxRequest: buf.readUInt32LE(20),
    flags: buf.readUInt32LE(24),
    maxInFlight: buf.readUInt32LE(28),
    identity: `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`,
    generation: readU64(buf, 48),
    leaseToken: readU64(buf, 56),
    hashAlgorithm: buf.toString('latin1', 64, 80).replace(/\0+$/, ''),
    digestSize: buf.readUInt16LE(80),
  }
}

/**
 * The payload of an EXTENTS reply for the range starting at `offset`: the first `maxRuns` of `runs` (in order, covering
 * a prefix of the range), adjacent runs of one kind merged. Each run is shorter than 4 GiB (the request's length is).
 */
export function encodeExtents (runs: readonly Extent[], maxRuns: number, into: Buffer, at: number): number {
  let n = 0
  let hole = false
  let length = 0
  for (const r of runs) {
    if (length > 0 && r.hole === hole) { length += r.length; continue }
    if (length > 0) {
      if (n === maxRuns) return n * EXTENT_ENTRY_SIZE
      writeExtent(into, at + n++ * EXTENT_ENTRY_SIZE, length, hole)
    }
    hole = r.hole
    length = r.length
  }
  if (length > 0 && n < maxRuns) writeExtent(into, at + n++ * EXTENT_ENTRY_SIZE, length, hole)
  return n * EXTENT_ENTRY_SIZE
}

function writeExtent (buf: Buffer, at: number, length: number, hole: boolean): void {
  buf.writeUInt32LE(length, at)
  buf.writeUInt32LE(hole ? EXTENT_HOLE : 0, at + 4)
}

/**
 * The runs of an EXTENTS reply to a request for [offset, offset + length) that asked for at most `maxRuns`. A reply a
 * client must refuse (not whole entries, too many, an empty run, unknown flags, more bytes than were asked about, or
 * nothing at all for a non-empty range) throws ProtocolError. The runs may cover only a prefix of the range.
 */
export function decodeExtents (payload: Uint8Array, offset: number, length: number, maxRuns: number): Extent[] {
  const buf = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength)
  if (buf.length % EXTENT_ENTRY_SIZE !== 0) throw new ProtocolError(`extents reply of ${buf.length} bytes is not whole ${EXTENT_ENTRY_SIZE}-byte runs`)
  const count = buf.length / EXTENT_ENTRY_SIZE
  if (count > maxRuns) throw new ProtocolError(`extents reply carries ${count} runs, at most ${maxRuns} were asked for`)
  if (count === 0 && length > 0) throw new ProtocolError('extents reply carries no run for a non-empty range')
  const runs: Extent[] = []
  let at = offset
  for (let i = 0; i < count; i++) {
    const n = buf.readUInt32LE(i * EXTENT_ENTRY_SIZE)
    const flags = buf.readUInt32LE(i * EXTENT_ENTRY_SIZE + 4)
    if (n === 0) throw new ProtocolError(`extents reply: run ${i} is empty`)
    if ((flags & ~EXTENT_HOLE) !== 0) throw new ProtocolError(`extents reply: run ${i} has unknown flags 0x${flags.toString(16)}`)
    if (at + n > offset + length) throw new ProtocolError(`extents reply covers past the ${length} bytes asked about`)
    const hole = (flags & EXTENT_HOLE) !== 0
    const last = runs[runs.length - 1]
    if (last !== undefined && last.hole === hole) last.length += n
    else runs.push({ offset: at, length: n, hole })
    at += n
  }
  return runs
}

/** Which frames a decoder reads: header size, parser, and how many payload bytes follow a header. */
export interface FrameSpec<H> {
  headerSize: number
  parse: (buf: Buffer, at: number) => H
  payloadLength: (header: H) => number
  /** Bytes after the payload that are not part of it (a wire digest), gathered apart from the payload. */
  trailerLength?: (header: H) => number
}

export const requestFrames: FrameSpec<RequestHeader> = {
  headerSize: REQUEST_HEADER_SIZE,
  parse: parseRequestHeader,
  payloadLength: h => h.op === Op.WRITE ? h.length : 0,
}

export const replyFrames: FrameSpec<ReplyHeader> = {
  headerSize: REPLY_HEADER_SIZE,
  parse: parseReplyHeader,
  payloadLength: h => h.length,
}

/** Frames of a connection with wire digests: each WRITE request and each READ reply with data carries one. */
export function digestFrames <H>(spec: FrameSpec<H>, digestSize: number, carries: (h: H) => boolean): FrameSpec<H> {
  return { ...spec, trailerLength: h => carries(h) ? digestSize : 0 }
}

export const writeCarriesDigest = (h: RequestHeader): boolean => h.op === Op.WRITE && h.length > 0
export const replyCarriesDigest = (h: ReplyHeader): boolean => h.op === Op.READ && h.errno === 0 && h.length > 0

/**
 * Reads a stream of frames delivered in chunks of any size. For each header it asks `target` where the payload
 * should land (a buffer of at least the payload's length, or null to discard it), copies the payload there as it
 * arrives, gathers a trailer (a wire digest) if the spec has one, then calls `emit`. A header or trailer split across
 * chunks is gathered in a small scratch buffer; a payload is never gathered or concatenated. The trailer handed to
 * `emit` is the decoder's own scratch, valid only during the call. Throws ProtocolError on a bad header; the decoder
 * is unusable after that.
 */
export class FrameDecoder<H> {
  private readonly scratch: Buffer
  private scratchFill = 0
  private header: H | null = null
  private payloadTarget: Uint8Array | null = null
  private payloadLength = 0
  private payloadFill = 0
  private readonly trailer: Buffer
  private trailerLength = 0
  private trailerFill = 0

  constructor (
    private readonly spec: FrameSpec<H>,
    private readonly target: (header: H) => Uint8Array | null,
    private readonly emit: (header: H, payload: Uint8Array | null, trailer: Buffer | null) => void,
    maxTrailer = 64,
  ) {
    this.scratch = Buffer.alloc(spec.headerSize)
    this.trailer = Buffer.alloc(spec.trailerLength !== undefined ? maxTrailer : 0)
  }

  /** True between frames: a transport whose messages must hold whole frames checks this after each message. */
  get atBoundary (): boolean {
    return this.header === null && this.scratchFill === 0
  }

  push (chunk: Buffer): void {
    let pos = 0
    const end = chunk.length
    while (pos < end) {
      if (this.header === null) {
        const need = this.spec.headerSize - this.scratchFill
        if (this.scratchFill === 0 && end - pos >= need) {
          this.startFrame(this.spec.parse(chunk, pos))
          pos += need
        } else {
          const n = Math.min(need, end - pos)
          chunk.copy(this.scratch, this.scratchFill, pos, pos + n)
          this.scratchFill += n
          pos += n
          if (this.scratchFill < this.spec.headerSize) return
          this.scratchFill = 0
          this.startFrame(this.spec.parse(this.scratch, 0))
        }
      } else if (this.payloadFill < this.payloadLength) {
        const n = Math.min(this.payloadLength - this.payloadFill, end - pos)
        if (this.payloadTarget !== null) chunk.copy(this.payloadTarget, this.payloadFill, pos, pos + n)
        this.payloadFill += n
        pos += n
        if (this.payloadFill === this.payloadLength && this.trailerLength === 0) this.finishFrame()
      } else {
        const n = Math.min(this.trailerLength - this.trailerFill, end - pos)
        chunk.copy(this.trailer, this.trailerFill, pos, pos + n)
        this.trailerFill += n
        pos += n
        if (this.trailerFill === this.trailerLength) this.finishFrame()
      }
    }
  }

  /**
   * A view of the current payload's destination where up to `max` of its next bytes can be received directly
   * (without passing through `push`), or null when no payload with a destination is being read.
   */
  payloadRoom (max: number): Uint8Array | null {
    if (this.header === null || this.payloadTarget === null || this.payloadFill >= this.payloadLength) return null
    return this.payloadTarget.subarray(this.payloadFill, this.payloadFill + Math.min(max, this.payloadLength - this.payloadFill))
  }

  /** `n` bytes were received straight into the view `payloadRoom` returned. */
  payloadReceived (n: number): void {
    this.payloadFill += n
    if (this.payloadFill === this.payloadLength && this.trailerLength === 0) this.finishFrame()
  }

  private startFrame (header: H): void {
    this.header = header
    this.payloadLength = this.spec.payloadLength(header)
    this.payloadFill = 0
    this.trailerLength = this.spec.trailerLength?.(header) ?? 0
    this.trailerFill = 0
    if (this.trailerLength > this.trailer.length) throw new ProtocolError(`frame trailer of ${this.trailerLength} bytes is larger than ${this.trailer.length}`)
    if (this.payloadLength === 0) {
      this.payloadTarget = null
      if (this.trailerLength === 0) this.finishFrame()
      return
    }
    const target = this.target(header)
    this.payloadTarget = target !== null && target.byteLength >= this.payloadLength ? target : null
  }

  private finishFrame (): void {
    const header = this.header as H
    const payload = this.payloadTarget
    this.header = null
    this.payloadTarget = null
    this.emit(header, payload, this.trailerLength > 0 ? this.trailer.subarray(0, this.trailerLength) : null)
  }
}
