// The server side of the native protocol: one ExportSession per client connection. It validates every request once
// at the edge (export/requests.ts: opcode, range, size, read-only), moves payloads through the node's buffer pool,
// and answers each request by tag as soon as its device call completes, in whatever order that is. A request in
// flight is a NativeRequest record, one per request up to maxInFlight, made once per connection and reused, whose
// completions are bound methods: a READ or WRITE costs no request object and no closure of ours (what it still
// allocates: README, "Performance", "Allocations").

import { Errno, toErrno } from '../../node/core/errors'
import type { BufferPool, PoolBuffer } from '../../node/core/pool'
import { PoolShare, type BufferWaiter } from '../../node/core/pool-share'
import type { ServedExport } from '../served'
import { checkRequest, NATIVE_ANSWERS, RequestKind, type RequestRules } from '../requests'
import { defaultHasher, DIGEST_SIZE, HASH_ALGORITHM, type Hasher } from '../../node/core/hasher'
import { EXTENT_ENTRY_SIZE, EXTENTS_VERSION, FrameDecoder, HandshakeFlag, MAX_EXTENTS_PER_REPLY, Op, opNames, PROTOCOL_VERSION, REPLY_HEADER_SIZE, digestFrames, encodeExtents, encodeHandshake, requestFrames, writeCarriesDigest, writeReplyHeader, type RequestHeader } from './codec'
import type { Extent } from '../../node/core/device'
import { ProtocolError } from '../../node/core/errors'

/** What one connection may do: read only, or write as a named writer (holding the lease's token) or anonymously. */
export interface SessionAccess {
  readOnly: boolean
  owner: string | null
  token: number
  /** The protocol version agreed with the client at the upgrade (default: this side's, PROTOCOL_VERSION). */
  version?: number
}

export interface SessionLimits {
  maxRequest: number
  maxInFlight: number
  pingInterval: number
  /**
   * Reply bytes the transport may hold for a connection (sent, not yet taken by the client) before the session holds
   * its further replies itself; default 4 MiB. The listener sets the transport's own limit a little above it.
   */
  maxQueuedBytes?: number
  /** A connection whose client takes no reply for this long (ms) while replies wait for it is closed; default 30 s. */
  stallTimeout?: number
}

export const DEFAULT_MAX_QUEUED_BYTES = 4 * 1024 * 1024
const DEFAULT_STALL_TIMEOUT = 30000

/** What a session needs from its transport (a uWebSockets.js WebSocket in the node; a fake in tests). */
export interface SessionTransport {
  /** Sends one binary message; the transport copies it before returning, so the view may be reused at once. */
  send: (message: Uint8Array) => void
  /** Sends one binary message made of two parts (a READ reply and its wire digest), without joining them. */
  sendParts: (first: Uint8Array, last: Uint8Array) => void
  /** Runs `fn` with sends batched into one write. */
  cork: (fn: () => void) => void
  /** Closes the connection with a WebSocket close code and a reason. */
  end: (code: number, reason: string) => void
  /** Bytes sent and not yet taken by the client (uWebSockets.js drops a message sent above its limit: look first). */
  bufferedAmount: () => number
  /** Registers the session's handler for "the client took what was buffered" (uWebSockets.js's drain). */
  onDrain: (fn: () => void) => void
}

/** Header-only replies packed into one message at most. */
const HEADER_BATCH = 64

export const CloseCode = { NORMAL: 1000, GOING_AWAY: 1001, PROTOCOL: 1002, BAD_DATA: 1007, POLICY: 1008, INTERNAL: 1011 } as const

/** The validator's kind of each native opcode (export/requests.ts); EXTENTS exists from version 3 on. */
function kindOf (op: number, version: number): number {
  switch (op) {
    case Op.READ: return RequestKind.READ
    case Op.WRITE: return RequestKind.WRITE
    case Op.TRIM: return RequestKind.TRIM
    case Op.FLUSH: return RequestKind.FLUSH
    case Op.PING: return RequestKind.PING
    case Op.HASH: return RequestKind.HASH
    case Op.EXTENTS: return version >= EXTENTS_VERSION ? RequestKind.EXTENTS : RequestKind.UNKNOWN
    default: return RequestKind.UNKNOWN
  }
}

/**
 * One request in flight on a connection: its header fields, its pool buffer, and its completions as methods bound
 * once, when the record is made. The session keeps up to maxInFlight of them and reuses them (a request is refused
 * EAGAIN before it would need one more).
 */
class NativeRequest implements BufferWaiter {
  op = 0
  tagLo = 0
  tagHi = 0
  offset = 0
  length = 0
  aux = 0
  opName = 'other'
  slot: PoolBuffer | null = null
  /** A WRITE's wire digest, copied out of the frame (this record's own buffer, made the first time it is needed). */
  private expected: Buffer | null = null

  constructor (private readonly s: ExportSession) {}

  load (h: RequestHeader, opName: string): void {
    this.op = h.op
    this.tagLo = h.tagLo
    this.tagHi = h.tagHi
    this.offset = h.offset
    this.length = h.length
    this.aux = h.aux
    this.opName = opName
  }

  /** A READ: a free buffer is taken at once (no promise turn); otherwise it waits for one in FIFO order. */
  read (): void {
    const slot = this.s.share.acquireFor(this)
    if (slot !== null) this.gotBuffer(slot)
  }

  gotBuffer (slot: PoolBuffer): void {
    this.slot = slot
    this.s.exp.device.read(this.offset, this.length, slot.data).then(this.onRead, this.onFailed)
  }

  noBuffer (err: Error): void { this.fail(toErrno(err)) }

  private readonly onRead = (): void => {
    const exp = this.s.exp
    exp.metrics.bytesRead += this.length
    if (exp.digest !== true) { this.s.finish(this, 0, this.length, null); return }
    this.s.hasher.digestOne((this.slot as PoolBuffer).data.subarray(0, this.length)).then(this.onReadDigest, this.onFailed)
  }

  private readonly onReadDigest = (digest: Buffer): void => { this.s.finish(this, 0, this.length, digest) }

  write (slot: PoolBuffer): void {
    this.slot = slot
    this.s.exp.device.write(this.offset, slot.data.subarray(0, this.length)).then(this.onWritten, this.onFailed)
  }

  /** A WRITE with a wire digest: written only if the payload matches it; a mismatch is EBADMSG and a counter. */
  checkedWrite (slot: PoolBuffer, trailer: Buffer): void {
    this.slot = slot
    if (this.expected === null) this.expected = Buffer.alloc(DIGEST_SIZE)
    trailer.copy(this.expected, 0, 0, DIGEST_SIZE)
    this.s.hasher.digestOne(slot.data.subarray(0, this.length)).then(this.onWriteDigest, this.onFailed)
  }

  private readonly onWriteDigest = (actual: Buffer): void => {
    if (actual.equals(this.expected as Buffer)) { this.write(this.slot as PoolBuffer); return }
    this.s.exp.metrics.digestErrors++
    this.fail(Errno.EBADMSG)
  }

  private readonly onWritten = (): void => {
    this.s.exp.metrics.bytesWritten += this.length
    this.releaseSlot()
    this.s.finish(this, 0, 0, null)
  }

  /** FLUSH and TRIM: answered when the device's promise settles. */
  settle (p: Promise<void>): void { p.then(this.onDone, this.onFailed) }

  private readonly onDone = (): void => { this.s.finish(this, 0, 0, null) }

  hash (): void {
    this.s.exp.device.hash(this.offset, this.length, this.aux).then(this.onHashed, this.onHashFailed)
  }

  private readonly onHashed = (digests: Buffer): void => {
    this.s.exp.metrics.bytesHashed += this.length
    this.s.finishHash(this, 0, digests)
  }

  private readonly onHashFailed = (err: unknown): void => { this.s.finishHash(this, toErrno(err), null) }

  extents (): void {
    this.s.exp.device.extents(this.offset, this.length).then(this.onExtents, this.onHashFailed)
  }

  private readonly onExtents = (runs: Extent[]): void => { this.s.finishExtents(this, runs) }

  private readonly onFailed = (err: unknown): void => { this.fail(toErrno(err)) }

  private fail (errno: number): void {
    this.releaseSlot()
    this.s.finish(this, errno, 0, null)
  }

  private releaseSlot (): void {
    if (this.slot !== null) { this.s.share.release(this.slot); this.slot = null }
  }
}

export class ExportSession {
  private readonly decoder: FrameDecoder<RequestHeader>
  private inFlight = 0
  /** Records of requests not in flight, for reuse; at most maxInFlight records are ever made. */
  private readonly freeRecords: NativeRequest[] = []
  private readonly rules: RequestRules
  private closed = false
  private draining: (() => void) | null = null
  /** The pool slot (or the reason there is none) for the WRITE whose payload the decoder is reading. */
  private writeSlot: PoolBuffer | null = null
  private writeErrno = 0
  // Replies finished in one turn of the event loop leave together at its end, in one write: the header-only ones
  // (WRITE, FLUSH, errors...) packed as frames of one message, each READ reply as its own message from its pool buffer.
  // While the client does not take its replies (the transport holds maxQueuedBytes), they stay here, keeping their
  // pool slots, and go out when it drains; the outbox holds at most 2 x maxInFlight replies (see overrun()).
  private headerBatch = Buffer.alloc(REPLY_HEADER_SIZE * HEADER_BATCH)
  private headerFill = 0
  private readonly outViews: Uint8Array[] = []
  private readonly outDigests: Array<Buffer | null> = []
  private readonly outSlots: Array<PoolBuffer | null> = []
  /** Replies in the outbox (header-only and with payload): they count against maxInFlight until handed over. */
  private queued = 0
  private flushScheduled = false
  /** The transport is over maxQueuedBytes: replies wait for its drain. */
  private blocked = false
  private readonly maxQueuedBytes: number
  private stallTimer: NodeJS.Timeout | null = null
  /** Bytes of replies handed to the transport, ever; less what it still buffers, what the client took. */
  private handed = 0
  private stallMark = 0
  /** This connection's share of the pool: every buffer it takes and gives back goes through it. */
  readonly share: PoolShare
  /** Told when the connection is closed for the client's behaviour (not reading, sending past its bounds). */
  onPolicyClose: ((reason: string) => void) | null = null
  /** Set by the node when it stops: new requests get ESHUTDOWN, running ones finish. */
  stopping = false

  constructor (
    readonly exp: ServedExport,
    private readonly pool: BufferPool,
    private readonly limits: SessionLimits,
    private readonly transport: SessionTransport,
    private readonly access: SessionAccess = { readOnly: false, owner: null, token: 0 },
    /** Where wire digests are computed and checked. */
    readonly hasher: Hasher = defaultHasher(),
  ) {
    const frames = exp.digest === true ? digestFrames(requestFrames, DIGEST_SIZE, writeCarriesDigest) : requestFrames
    this.decoder = new FrameDecoder(frames, h => this.payloadTarget(h), (h, payload, trailer) => this.onRequest(h, payload, trailer))
    this.share = new PoolShare(pool)
    this.rules = { exp, readOnly: access.readOnly, owner: access.owner, token: access.token, maxRequest: limits.maxRequest, answers: NATIVE_ANSWERS }
    this.maxQueuedBytes = limits.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES
    transport.onDrain(this.onTransportDrain)
    exp.metrics.connections++
  }

  /** The protocol version of this connection (agreed at the upgrade). */
  get version (): number { return this.access.version ?? PROTOCOL_VERSION }

  /** The first message on every connection, in the version agreed with the client. */
  handshake (): Buffer {
    const d = this.exp.device
    const readOnly = this.exp.readOnly || !d.writable || this.access.readOnly
    let flags = readOnly ? HandshakeFlag.READ_ONLY : 0
    if (d.canFlush) flags |= HandshakeFlag.FLUSH
    if (d.canTrim && !readOnly) flags |= HandshakeFlag.TRIM
    flags |= HandshakeFlag.HASH
    if (this.exp.digest === true) flags |= HandshakeFlag.DIGEST
    if (this.version >= EXTENTS_VERSION) flags |= HandshakeFlag.EXTENTS
    return encodeHandshake({
      version: this.version,
      size: d.size,
      blockSize: d.blockSize,
      maxRequest: this.limits.maxRequest,
      flags,
      maxInFlight: this.limits.maxInFlight,
      identity: d.identity,
      generation: this.exp.generation,
      leaseToken: this.access.token,
      hashAlgorithm: HASH_ALGORITHM,
      digestSize: DIGEST_SIZE,
    })
  }

  get pending (): number { return this.inFlight }

  /** Feeds one received WebSocket message. A message must hold whole frames. */
  onMessage (message: Buffer): void {
    if (this.closed) return
    try {
      this.decoder.push(message)
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err
      this.protocolError(err.message)
      return
    }
    if (!this.decoder.atBoundary) this.protocolError('truncated frame: a message must end on a frame boundary')
  }

  /** The transport closed: requests still running finish, but their replies go nowhere. */
  onClose (): void {
    if (this.closed) return
    this.closed = true
    this.exp.metrics.connections--
    if (this.access.owner !== null && this.exp.shared !== true) this.exp.lease.release(this.access.owner)
    if (this.writeSlot !== null) { this.share.release(this.writeSlot); this.writeSlot = null }
    this.dropOutbox()
    this.share.close()
    this.stopStallTimer()
  }

  /** Resolves once every request received so far has been answered (graceful shutdown). */
  drain (): Promise<void> {
    if (this.inFlight === 0 && !this.flushScheduled) return Promise.resolve()
    return new Promise(resolve => { this.draining = resolve })
  }

  private internalFailure (err: unknown): void {
    try {
      this.transport.end(CloseCode.INTERNAL, `reply not sent: ${(err as Error)?.message ?? String(err)}`.slice(0, 120))
    } catch {
      // Already closed: nothing left to end.
    }
    this.onClose()
  }

  private protocolError (reason: string): void {
    this.exp.metrics.protocolErrors++
    this.transport.end(CloseCode.PROTOCOL, reason.slice(0, 120))
    this.onClose()
  }

  private payloadTarget (h: RequestHeader): Uint8Array | null {
    // Only WRITE carries a payload. Decide here whether it will be kept; onRequest answers the refusals.
    this.writeErrno = this.checkRequest(h)
    if (this.writeErrno !== 0) return null
    const slot = this.share.tryAcquire()
    if (slot === null) { this.writeErrno = Errno.EAGAIN; this.exp.metrics.poolExhausted++; return null }
    this.writeSlot = slot
    return slot.data
  }

  private checkRequest (h: RequestHeader): number {
    return checkRequest(this.rules, kindOf(h.op, this.version), h.offset, h.length, h.aux)
  }

  private onRequest (h: RequestHeader, payload: Uint8Array | null, trailer: Buffer | null): void {
    // Closed by an earlier frame of the same message (a policy close): the rest of it is dropped.
    if (this.closed) { this.releaseWriteSlot(); return }
    const m = this.exp.metrics
    const opName = opNames[h.op] ?? 'other'
    m.requests[opName]++
    // Only a WRITE with a payload went through payloadTarget; a zero-length one is checked like any other request.
    let errno = h.op === Op.WRITE && h.length > 0 ? this.writeErrno : this.checkRequest(h)
    if (errno === 0 && this.stopping) errno = Errno.ESHUTDOWN
    // Replies not yet handed to the transport count too: a client that does not read cannot have more outstanding.
    if (errno === 0 && this.inFlight + this.queued >= this.limits.maxInFlight) errno = Errno.EAGAIN
    if (errno !== 0) {
      if (h.op === Op.WRITE) this.releaseWriteSlot()
      m.errors[opName]++
      this.reply(h.op, h.tagLo, h.tagHi, errno, null, 0, null)
      return
    }
    this.inFlight++
    m.inFlight++
    const rec = this.freeRecords.pop() ?? new NativeRequest(this)
    rec.load(h, opName)
    switch (h.op) {
      case Op.READ: rec.read(); break
      case Op.WRITE:
        if (h.length === 0) this.finish(rec, 0, 0, null)
        else if (trailer !== null) rec.checkedWrite(this.takeWriteSlot(), trailer)
        else rec.write(this.takeWriteSlot())
        break
      case Op.HASH: rec.hash(); break
      case Op.EXTENTS: rec.extents(); break
      case Op.FLUSH: rec.settle(this.exp.device.flush()); break
      case Op.TRIM: rec.settle(this.exp.device.trim(h.offset, h.length)); break
      case Op.PING: this.finish(rec, 0, 0, null); break
    }
  }

  /**
   * Answers a HASH or an EXTENTS that failed. Not the hot path: its reply is a few digests, joined with the header in
   * one small buffer.
   */
  finishHash (rec: NativeRequest, errno: number, digests: Buffer | null): void {
    if (this.closed) { this.finishSmall(rec, errno, null); return }
    // It leaves with this turn's other replies (or waits with them while the client does not read).
    const message = Buffer.allocUnsafe(REPLY_HEADER_SIZE + (digests?.length ?? 0))
    writeReplyHeader(message, 0, rec.op, rec.tagLo, rec.tagHi, errno, digests?.length ?? 0)
    digests?.copy(message, REPLY_HEADER_SIZE)
    this.finishSmall(rec, errno, message)
  }

  /**
   * Answers an EXTENTS with the device's runs: at most the number the client asked for (`aux`) and never more than
   * MAX_EXTENTS_PER_REPLY, so a device with a million runs costs a bounded reply; the client asks again from where
   * this one ends.
   */
  finishExtents (rec: NativeRequest, runs: Extent[]): void {
    if (this.closed) { this.finishSmall(rec, 0, null); return }
    const maxRuns = Math.min(rec.aux, MAX_EXTENTS_PER_REPLY, runs.length)
    const message = Buffer.allocUnsafe(REPLY_HEADER_SIZE + maxRuns * EXTENT_ENTRY_SIZE)
    const length = encodeExtents(runs, maxRuns, message, REPLY_HEADER_SIZE)
    writeReplyHeader(message, 0, rec.op, rec.tagLo, rec.tagHi, 0, length)
    this.finishSmall(rec, 0, message.subarray(0, REPLY_HEADER_SIZE + length))
  }

  private finishSmall (rec: NativeRequest, errno: number, message: Buffer | null): void {
    this.inFlight--
    this.exp.metrics.inFlight--
    if (errno !== 0) this.exp.metrics.errors[rec.opName]++
    if (message !== null && !this.closed) this.queue(message, null, null)
    this.freeRecords.push(rec)
    this.checkDrained()
  }

  private takeWriteSlot (): PoolBuffer {
    const slot = this.writeSlot as PoolBuffer
    this.writeSlot = null
    return slot
  }

  private releaseWriteSlot (): void {
    if (this.writeSlot !== null) { this.share.release(this.writeSlot); this.writeSlot = null }
  }

  /**
   * Answers a request and takes its record back. The record's slot (a READ's data, `length` bytes; every other request
   * has given its slot back) is the reply's from here on and goes back to the pool once sent.
   */
  finish (rec: NativeRequest, errno: number, length: number, digest: Buffer | null): void {
    this.inFlight--
    this.exp.metrics.inFlight--
    const slot = rec.slot
    rec.slot = null
    if (errno !== 0) this.exp.metrics.errors[rec.opName]++
    this.reply(rec.op, rec.tagLo, rec.tagHi, errno, slot, length, digest)
    this.freeRecords.push(rec)
    this.checkDrained()
  }

  /** The graceful stop waits until every request is answered and its reply has left. */
  private checkDrained (): void {
    if (this.inFlight === 0 && !this.flushScheduled && this.draining !== null) { const done = this.draining; this.draining = null; done() }
  }

  /**
   * Queues a reply for the end of this turn. With a pool slot, the header goes in the slot's headroom so header and
   * payload leave as one view, straight from the slot; without, the header joins this turn's header-only batch.
   */
  private reply (op: number, tagLo: number, tagHi: number, errno: number, slot: PoolBuffer | null, length: number, digest: Buffer | null): void {
    if (this.closed) { if (slot !== null) this.share.release(slot); return }
    if (slot !== null) {
      const at = this.pool.headroom - REPLY_HEADER_SIZE
      writeReplyHeader(slot.frame, at, op, tagLo, tagHi, 0, length)
      this.queue(slot.frame.subarray(at, this.pool.headroom + length), digest, slot)
      return
    }
    if (this.headerFill === this.headerBatch.length) {
      if (!this.blocked) this.flush()
      if (this.headerFill === this.headerBatch.length) this.growHeaderBatch()
    }
    writeReplyHeader(this.headerBatch, this.headerFill, op, tagLo, tagHi, errno, 0)
    this.headerFill += REPLY_HEADER_SIZE
    this.queued++
    this.overrun()
    this.scheduleFlush()
  }

  /** A reply with a payload view (from `slot`, given back once sent, or a small buffer of its own). */
  private queue (view: Uint8Array, digest: Buffer | null, slot: PoolBuffer | null): void {
    this.outViews.push(view)
    this.outDigests.push(digest)
    this.outSlots.push(slot)
    this.queued++
    this.overrun()
    this.scheduleFlush()
  }

  private scheduleFlush (): void {
    if (!this.flushScheduled && !this.blocked && !this.closed) {
      this.flushScheduled = true
      process.nextTick(this.flushTurn)
    }
  }

  /**
   * Requests counted against maxInFlight are at most maxInFlight replies; the rest of the outbox are refusals (EAGAIN
   * for requests past maxInFlight). A client that makes the outbox hold twice maxInFlight keeps sending while it does
   * not read: it has been slowed (EAGAIN) and is now closed, so that it cannot make the node hold more for it.
   */
  private overrun (): void {
    if (this.queued <= 2 * this.limits.maxInFlight || this.closed) return
    this.policyClose(`client sent past maxInFlight (${this.limits.maxInFlight}) while not reading its replies (${this.queued} replies, ${this.transport.bufferedAmount()} bytes waiting for it)`)
  }

  private policyClose (reason: string): void {
    this.exp.metrics.stalled++
    this.onPolicyClose?.(reason)
    try {
      this.transport.end(CloseCode.POLICY, reason.slice(0, 120))
    } catch {
      // Already closed.
    }
    this.onClose()
  }

  /** Only while the client does not read (rare): room for the header-only replies held for it, up to the outbox's bound. */
  private growHeaderBatch (): void {
    const bigger = Buffer.alloc(Math.max(this.headerBatch.length, Math.min(2 * this.headerBatch.length, REPLY_HEADER_SIZE * (2 * this.limits.maxInFlight + HEADER_BATCH))))
    if (bigger.length === this.headerBatch.length) throw new Error(`reply batch full (${this.headerFill / REPLY_HEADER_SIZE} replies)`)
    this.headerBatch.copy(bigger, 0, 0, this.headerFill)
    this.headerBatch = bigger
  }

  private readonly flushTurn = (): void => {
    this.flushScheduled = false
    this.flush()
    this.checkDrained()
  }

  private readonly onTransportDrain = (): void => {
    if (!this.blocked || this.closed) return
    this.blocked = false
    this.flush()
    if (!this.blocked) this.stopStallTimer()
    this.checkDrained()
  }

  /**
   * Sends queued replies in one corked write (the transport copies), then gives their slots back. It sends only while
   * the transport holds less than maxQueuedBytes for this connection (above its own limit uWebSockets.js would drop
   * the message); what is left waits for the transport's drain, keeping its slots.
   */
  private flush (): void {
    if (this.closed) { this.dropOutbox(); return }
    const views = this.outViews
    const digests = this.outDigests
    let room = this.maxQueuedBytes - this.transport.bufferedAmount()
    let sent = 0
    let headersSent = false
    try {
      if (room > 0) {
        this.transport.cork(() => {
          if (this.headerFill > 0) {
            this.transport.send(this.headerBatch.subarray(0, this.headerFill))
            room -= this.headerFill
            this.handed += this.headerFill
            headersSent = true
          }
          for (; sent < views.length; sent++) {
            if (room <= 0) {
              room = this.maxQueuedBytes - this.transport.bufferedAmount()
              if (room <= 0) break
            }
            const digest = digests[sent]
            if (digest !== null) this.transport.sendParts(views[sent], digest)
            else this.transport.send(views[sent])
            room -= views[sent].length
            this.handed += views[sent].length
          }
        })
      }
    } catch (err) {
      // The transport refused to send (its connection went away under us). The connection is ended, if it is still
      // there, and the replies go nowhere, as after onClose: the client sends its requests again on a new connection.
      this.internalFailure(err)
      this.dropOutbox()
      return
    }
    if (headersSent) { this.queued -= this.headerFill / REPLY_HEADER_SIZE; this.headerFill = 0 }
    if (sent === views.length) {
      this.queued -= sent
      this.dropOutbox()
      return
    }
    for (let i = 0; i < sent; i++) { const slot = this.outSlots[i]; if (slot !== null) this.share.release(slot) }
    views.splice(0, sent)
    digests.splice(0, sent)
    this.outSlots.splice(0, sent)
    this.queued -= sent
    this.hold()
  }

  /** The client does not take its replies: wait for the transport's drain; close a client that takes none for long. */
  private hold (): void {
    if (this.headerFill === 0 && this.outViews.length === 0) return
    this.blocked = true
    if (this.stallTimer !== null) return
    this.stallMark = this.handed - this.transport.bufferedAmount()
    this.stallTimer = setTimeout(this.stallCheck, this.limits.stallTimeout ?? DEFAULT_STALL_TIMEOUT)
    this.stallTimer.unref()
  }

  private readonly stallCheck = (): void => {
    this.stallTimer = null
    if (this.closed || !this.blocked) return
    const buffered = this.transport.bufferedAmount()
    if (this.handed - buffered <= this.stallMark) {
      this.policyClose(`client took no reply for ${this.limits.stallTimeout ?? DEFAULT_STALL_TIMEOUT} ms (${this.queued} replies, ${buffered} bytes waiting for it)`)
      return
    }
    this.hold()
  }

  private stopStallTimer (): void {
    if (this.stallTimer !== null) { clearTimeout(this.stallTimer); this.stallTimer = null }
  }

  private dropOutbox (): void {
    this.headerFill = 0
    for (const slot of this.outSlots) if (slot !== null) this.share.release(slot)
    this.outViews.length = 0
    this.outDigests.length = 0
    this.outSlots.length = 0
    this.queued = 0
  }
}
