// The server side of the native protocol: one ExportSession per client connection. It validates every request once
// at the edge (opcode, range, size, read-only), moves payloads through the node's buffer pool, and answers each
// request by tag as soon as its device call completes, in whatever order that is.

import type { Device } from '../../node/core/device'
import { Errno, toErrno } from '../../node/core/errors'
import type { BufferPool, PoolBuffer } from '../../node/core/pool'
import { PoolShare } from '../../node/core/pool-share'
import type { ServedExport } from '../served'
import { defaultHasher, DIGEST_SIZE, HASH_ALGORITHM, isHashChunk, type Hasher } from '../../node/core/hasher'
import { FrameDecoder, HandshakeFlag, Op, opNames, PROTOCOL_VERSION, REPLY_HEADER_SIZE, digestFrames, encodeHandshake, requestFrames, writeCarriesDigest, writeReplyHeader, type RequestHeader } from './codec'
import { ProtocolError } from '../../node/core/errors'

/** What one connection may do: read only, or write as a named writer (holding the lease's token) or anonymously. */
export interface SessionAccess {
  readOnly: boolean
  owner: string | null
  token: number
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

export class ExportSession {
  private readonly decoder: FrameDecoder<RequestHeader>
  private inFlight = 0
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
  private readonly share: PoolShare
  /** Told when the connection is closed for the client's behaviour (not reading, sending past its bounds). */
  onPolicyClose: ((reason: string) => void) | null = null
  /** Set by the node when it stops: new requests get ESHUTDOWN, running ones finish. */
  stopping = false

  constructor (
    private readonly exp: ServedExport,
    private readonly pool: BufferPool,
    private readonly limits: SessionLimits,
    private readonly transport: SessionTransport,
    private readonly access: SessionAccess = { readOnly: false, owner: null, token: 0 },
    /** Where wire digests are computed and checked. */
    private readonly hasher: Hasher = defaultHasher(),
  ) {
    const frames = exp.digest === true ? digestFrames(requestFrames, DIGEST_SIZE, writeCarriesDigest) : requestFrames
    this.decoder = new FrameDecoder(frames, h => this.payloadTarget(h), (h, payload, trailer) => this.onRequest(h, payload, trailer))
    this.share = new PoolShare(pool)
    this.maxQueuedBytes = limits.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES
    transport.onDrain(this.onTransportDrain)
    exp.metrics.connections++
  }

  /** The first message on every connection. */
  handshake (): Buffer {
    const d = this.exp.device
    const readOnly = this.exp.readOnly || !d.writable || this.access.readOnly
    let flags = readOnly ? HandshakeFlag.READ_ONLY : 0
    if (d.canFlush) flags |= HandshakeFlag.FLUSH
    if (d.canTrim && !readOnly) flags |= HandshakeFlag.TRIM
    flags |= HandshakeFlag.HASH
    if (this.exp.digest === true) flags |= HandshakeFlag.DIGEST
    return encodeHandshake({
      version: PROTOCOL_VERSION,
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
    const d = this.exp.device
    switch (h.op) {
      case Op.READ:
      case Op.WRITE:
      case Op.TRIM:
        if (h.op !== Op.READ && (this.exp.readOnly || !d.writable || this.access.readOnly)) return Errno.EROFS
        // Fencing: only the lease holder's current connections (or anyone, on a shared export) may change data.
        if (h.op !== Op.READ && this.exp.shared !== true && !this.exp.lease.mayWrite(this.access.owner, this.access.token)) return Errno.EPERM
        if (h.op === Op.TRIM && !d.canTrim) return Errno.ENOTSUP
        if (h.op !== Op.TRIM && h.length > this.limits.maxRequest) return Errno.EOVERFLOW
        if (h.offset + h.length > d.size || !Number.isSafeInteger(h.offset)) return Errno.EINVAL
        return 0
      case Op.HASH:
        if (h.length > this.limits.maxRequest) return Errno.EOVERFLOW
        if (h.offset + h.length > d.size || !Number.isSafeInteger(h.offset) || !isHashChunk(h.aux)) return Errno.EINVAL
        return 0
      case Op.FLUSH:
      case Op.PING:
        return h.offset === 0 && h.length === 0 ? 0 : Errno.EINVAL
      default:
        return Errno.ENOTSUP
    }
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
      this.reply(h, opName, errno, null, 0)
      return
    }
    this.inFlight++
    m.inFlight++
    switch (h.op) {
      case Op.READ: this.read(h); break
      case Op.WRITE:
        if (h.length === 0) this.finish(h, opName, 0, null, 0)
        else if (trailer !== null) this.checkedWrite(h, this.takeWriteSlot(), Buffer.from(trailer))
        else this.write(h, this.takeWriteSlot())
        break
      case Op.HASH: this.hash(h); break
      case Op.FLUSH: this.settle(h, opName, this.exp.device.flush()); break
      case Op.TRIM: this.settle(h, opName, this.exp.device.trim(h.offset, h.length)); break
      case Op.PING: this.finish(h, opName, 0, null, 0); break
    }
  }

  private read (h: RequestHeader): void {
    // A free buffer is taken at once (no promise turn); otherwise the READ waits for one in FIFO order.
    const free = this.share.tryAcquire()
    if (free !== null) this.readInto(h, free)
    else this.share.acquire().then(slot => this.readInto(h, slot), err => this.finish(h, 'read', toErrno(err), null, 0))
  }

  private readInto (h: RequestHeader, slot: PoolBuffer): void {
    this.exp.device.read(h.offset, h.length, slot.data).then(() => {
      this.exp.metrics.bytesRead += h.length
      if (this.exp.digest !== true) { this.finish(h, 'read', 0, slot, h.length); return }
      this.hasher.digestOne(slot.data.subarray(0, h.length)).then(digest => this.finish(h, 'read', 0, slot, h.length, digest), err => {
        this.share.release(slot)
        this.finish(h, 'read', toErrno(err), null, 0)
      })
    }, err => {
      this.share.release(slot)
      this.finish(h, 'read', toErrno(err), null, 0)
    })
  }

  /** A WRITE with a wire digest: written only if the payload matches it; a mismatch is EBADMSG and a counter. */
  private checkedWrite (h: RequestHeader, slot: PoolBuffer, expected: Buffer): void {
    this.hasher.digestOne(slot.data.subarray(0, h.length)).then(actual => {
      if (actual.equals(expected)) { this.write(h, slot); return }
      this.exp.metrics.digestErrors++
      this.share.release(slot)
      this.finish(h, 'write', Errno.EBADMSG, null, 0)
    }, err => {
      this.share.release(slot)
      this.finish(h, 'write', toErrno(err), null, 0)
    })
  }

  private hash (h: RequestHeader): void {
    this.exp.device.hash(h.offset, h.length, h.aux).then(digests => {
      this.exp.metrics.bytesHashed += h.length
      this.finishHash(h, 0, digests)
    }, err => this.finishHash(h, toErrno(err), null))
  }

  private finishHash (h: RequestHeader, errno: number, digests: Buffer | null): void {
    this.inFlight--
    this.exp.metrics.inFlight--
    if (errno !== 0) this.exp.metrics.errors.hash++
    if (!this.closed) {
      // Not the hot path: a HASH reply is a few digests, so header and digests are joined in one small buffer, which
      // leaves with this turn's other replies (or waits with them while the client does not read).
      const message = Buffer.allocUnsafe(REPLY_HEADER_SIZE + (digests?.length ?? 0))
      writeReplyHeader(message, 0, h.op, h.tagLo, h.tagHi, errno, digests?.length ?? 0)
      digests?.copy(message, REPLY_HEADER_SIZE)
      this.queue(message, null, null)
    }
    this.checkDrained()
  }

  private write (h: RequestHeader, slot: PoolBuffer): void {
    this.exp.device.write(h.offset, slot.data.subarray(0, h.length)).then(() => {
      this.exp.metrics.bytesWritten += h.length
      this.share.release(slot)
      this.finish(h, 'write', 0, null, 0)
    }, err => {
      this.share.release(slot)
      this.finish(h, 'write', toErrno(err), null, 0)
    })
  }

  private settle (h: RequestHeader, opName: string, p: Promise<void>): void {
    p.then(() => this.finish(h, opName, 0, null, 0), err => this.finish(h, opName, toErrno(err), null, 0))
  }

  private takeWriteSlot (): PoolBuffer {
    const slot = this.writeSlot as PoolBuffer
    this.writeSlot = null
    return slot
  }

  private releaseWriteSlot (): void {
    if (this.writeSlot !== null) { this.share.release(this.writeSlot); this.writeSlot = null }
  }

  /** Answers a request; `slot` (a READ's data, `length` bytes) is the reply's from here on and goes back to the pool once sent. */
  private finish (h: RequestHeader, opName: string, errno: number, slot: PoolBuffer | null, length: number, digest: Buffer | null = null): void {
    this.inFlight--
    this.exp.metrics.inFlight--
    this.reply(h, opName, errno, slot, length, digest)
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
  private reply (h: RequestHeader, opName: string, errno: number, slot: PoolBuffer | null, length: number, digest: Buffer | null = null): void {
    if (errno !== 0) this.exp.metrics.errors[opName]++
    if (this.closed) { if (slot !== null) this.share.release(slot); return }
    if (slot !== null) {
      const at = this.pool.headroom - REPLY_HEADER_SIZE
      writeReplyHeader(slot.frame, at, h.op, h.tagLo, h.tagHi, 0, length)
      this.queue(slot.frame.subarray(at, this.pool.headroom + length), digest, slot)
      return
    }
    if (this.headerFill === this.headerBatch.length) {
      if (!this.blocked) this.flush()
      if (this.headerFill === this.headerBatch.length) this.growHeaderBatch()
    }
    writeReplyHeader(this.headerBatch, this.headerFill, h.op, h.tagLo, h.tagHi, errno, 0)
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
    if (bigger.length === this.headerBatch.length) throw new Error(`reply batch full (${this.headerFill / REPLY_HEADER_SIZE} replies)`) // an assertion: overrun() bounds the outbox
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
