// An NBD server (doc/proto.md of the NetworkBlockDevice project) for the node's exports, so standard clients
// (the kernel's nbd-client, qemu, libnbd, fio) can use any device or array. Fixed newstyle negotiation with
// NBD_OPT_GO, INFO (NBD_INFO_EXPORT, NBD_INFO_BLOCK_SIZE), LIST, EXPORT_NAME, ABORT, STRUCTURED_REPLY and
// LIST/SET_META_CONTEXT (base:allocation, and qemu:dirty-bitmap:LEG for arrays that keep per-member maps); replies
// sent out of order as requests complete; READ, WRITE, FLUSH, TRIM, WRITE_ZEROES (NO_HOLE, FAST_ZERO), CACHE,
// BLOCK_STATUS (REQ_ONE) and DISC with FUA. Simple replies unless the client asked for structured ones; then READ
// answers with OFFSET_DATA / OFFSET_HOLE chunks (holes from the device's extents, for reads of HOLE_MIN or more; DF:
// one chunk), BLOCK_STATUS with one chunk per context, and their errors with ERROR chunks. The transmission phase uses
// the node's buffer pool and the reply-in-headroom trick: no per-request payload allocation; each request is a
// reused NbdRequest record (up to the connection's in-flight cap) with bound completions and its own reply header
// buffer, so a READ or WRITE costs no request object or closure of ours. Requests are validated by the one validator
// of both protocols (export/requests.ts) with NBD's answers. Socket reads land in
// memory of ours (net.Socket `onread`), and the bulk of a WRITE's payload lands straight in its pool buffer (see
// `nextReadBuffer`); when the pool is empty the socket is paused until a buffer frees (backpressure).
// Exports keep their allow list and read-only flag; an export with a token is not offered (NBD cannot present one).
// TLS: NBD_OPT_STARTTLS when the node has `tls` (SELECTIVETLS: an export marked "tls": "require" is refused with
// NBD_REP_ERR_TLS_REQD and left out of LIST on a plain connection); client certificates are asked for and checked
// per export (clientCert, allowSubjects). A TLS connection reads through Node's TLS socket ('data' chunks, the plain
// path below) instead of `onread`: the bytes off the wire are ciphertext.

import * as net from 'node:net'
import * as tls from 'node:tls'
import { certRefusal, peerOf, type PeerCertificate, type TlsMaterial } from '../../node/core/tls'
import type { BufferPool, PoolBuffer } from '../../node/core/pool'
import { PoolShare, type BufferWaiter } from '../../node/core/pool-share'
import { allowed } from '../../node/core/acl'
import { Errno, nbdErrno, toErrno } from '../../node/core/errors'
import { DstError, ErrorCode, ProtocolError } from '../../node/core/errors'
import type { ServedExport } from '../served'
import { checkRequest, NBD_ANSWERS, RequestKind, type RequestRules } from '../requests'
import type { Extent } from '../../node/core/device'
import type { DirtyMaps } from '../../node/core/dirty'

const NBDMAGIC = Buffer.from('NBDMAGIC', 'latin1')
const IHAVEOPT = Buffer.from('IHAVEOPT', 'latin1')
const OPT_REPLY_MAGIC_HI = 0x0003e889
const OPT_REPLY_MAGIC_LO = 0x045565a9
const REQUEST_MAGIC = 0x25609513
const SIMPLE_REPLY_MAGIC = 0x67446698
export const NBD_REQUEST_SIZE = 28
const SIMPLE_REPLY_SIZE = 16
const STRUCTURED_REPLY_MAGIC = 0x668e33ef
const CHUNK_HEADER_SIZE = 20
/** An OFFSET_DATA chunk's header and offset: written in a READ slot's headroom (32 bytes) in front of the data. */
const DATA_CHUNK_HEAD = CHUNK_HEADER_SIZE + 8
/** An OFFSET_HOLE chunk: header, offset and hole size. */
const HOLE_CHUNK_SIZE = CHUNK_HEADER_SIZE + 12
/** An ERROR chunk without a message: header, error and message length 0. */
const ERROR_CHUNK_SIZE = CHUNK_HEADER_SIZE + 6
const Chunk = { NONE: 0, OFFSET_DATA: 1, OFFSET_HOLE: 2, BLOCK_STATUS: 5, ERROR: 32769 } as const
const CHUNK_DONE = 1

const FLAG_FIXED_NEWSTYLE = 1
const FLAG_NO_ZEROES = 2

export const Opt = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8, LIST_META_CONTEXT: 9, SET_META_CONTEXT: 10 } as const
const Rep = { ACK: 1, SERVER: 2, INFO: 3, META_CONTEXT: 4, ERR_UNSUP: 0x80000001, ERR_POLICY: 0x80000002, ERR_INVALID: 0x80000003, ERR_TLS_REQD: 0x80000005, ERR_UNKNOWN: 0x80000006, ERR_SHUTDOWN: 0x80000007 } as const
const Info = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const
export const TxFlag = { HAS_FLAGS: 1, READ_ONLY: 2, SEND_FLUSH: 4, SEND_FUA: 8, SEND_TRIM: 32, SEND_WRITE_ZEROES: 64, SEND_DF: 128, CAN_MULTI_CONN: 256, SEND_CACHE: 1024, SEND_FAST_ZERO: 2048 } as const
export const Cmd = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const
export const CmdFlag = { FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16 } as const
/** The flags each command may carry (FUA on any: clients send it on more than writes, and it only adds a flush). */
const FLAGS_OF: Record<number, number> = {
  [Cmd.READ]: CmdFlag.FUA | CmdFlag.DF,
  [Cmd.WRITE_ZEROES]: CmdFlag.FUA | CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO,
  [Cmd.BLOCK_STATUS]: CmdFlag.FUA | CmdFlag.REQ_ONE,
}
const cmdNames: Record<number, string> = { 0: 'read', 1: 'write', 2: 'other', 3: 'flush', 4: 'trim', 5: 'other', 6: 'write', 7: 'other' }
/** base:allocation's flags (proto.md, "Metadata contexts"), and qemu:dirty-bitmap's. */
const STATE_HOLE = 1
const STATE_ZERO = 2
const STATE_DIRTY = 1
const BASE_ALLOCATION = 'base:allocation'
const DIRTY_BITMAP = 'qemu:dirty-bitmap:'

/** A READ at least this long asks the device's extents first, so its holes go out as OFFSET_HOLE chunks unread. */
export const HOLE_MIN = 64 * 1024
/** Most chunks a READ is split into; a read with more runs than this is sent as one data chunk (holes read as zeros). */
const MAX_READ_CHUNKS = 8
/** BLOCK_STATUS: most bytes looked at per request, and most descriptors per context; the client asks again for the rest. */
const MAX_STATUS_LENGTH = 1024 * 1024 * 1024
const MAX_STATUS_DESCRIPTORS = 65536

/** Longest option payload accepted during negotiation, and longest WRITE payload skipped rather than refused. */
const MAX_OPTION = 64 * 1024
const MAX_DISCARD = 64 * 1024 * 1024
/** How long a stopping server waits for a client to take its last replies and close. */
const SHUTDOWN_GRACE = 2000
/** How long a client may leave replies unread (taking none at all) before its connection is closed. */
const DEFAULT_STALL_TIMEOUT = 30000
const EMPTY = Buffer.alloc(0)

/** The validator's kind of each NBD command (export/requests.ts). */
function kindOf (type: number): number {
  switch (type) {
    case Cmd.READ: return RequestKind.READ
    case Cmd.WRITE: return RequestKind.WRITE
    case Cmd.TRIM: return RequestKind.TRIM
    case Cmd.WRITE_ZEROES: return RequestKind.WRITE_ZEROES
    case Cmd.FLUSH: return RequestKind.FLUSH
    case Cmd.CACHE:
    case Cmd.BLOCK_STATUS: return RequestKind.LOOKUP
    default: return RequestKind.UNKNOWN
  }
}

/**
 * One request of a connection, from its header until its reply is written: the header's fields (the 8-byte handle
 * kept as two numbers and echoed from them), its pool buffer, a 16-byte buffer for a reply without one, and its
 * completions as methods bound once, when the record is made. A connection reuses its records; it reads no further
 * header while maxInFlight requests are in flight or unwritten, so it never makes more than maxInFlight + 1.
 */
class NbdRequest implements BufferWaiter {
  flags = 0
  type = 0
  handleHi = 0
  handleLo = 0
  offset = 0
  length = 0
  op = 'other'
  /** A READ's data, or the buffer a WRITE came in: the reply's header goes in its headroom. */
  slot: PoolBuffer | null = null
  /** The header of a reply without a slot (written once the record is free again, after its write completed). */
  readonly head = Buffer.alloc(Math.max(SIMPLE_REPLY_SIZE, ERROR_CHUNK_SIZE))
  /** The view of `head` a simple reply is sent from. */
  readonly simpleHead = this.head.subarray(0, SIMPLE_REPLY_SIZE)
  /** A structured READ split at holes: its runs, and (made at the first such READ) the chunk headers they go out with. */
  runs: Extent[] | null = null
  chunkHeads: Buffer | null = null
  /** A BLOCK_STATUS reply (its chunks, made per request: not the data path). */
  status: Buffer | null = null

  constructor (private readonly s: NbdSession) {}

  parse (buf: Buffer, at: number): void {
    const magic = buf.readUInt32BE(at)
    if (magic !== REQUEST_MAGIC) throw new ProtocolError(`bad NBD request magic 0x${magic.toString(16)}`)
    this.flags = buf.readUInt16BE(at + 4)
    this.type = buf.readUInt16BE(at + 6)
    this.handleHi = buf.readUInt32BE(at + 8)
    this.handleLo = buf.readUInt32BE(at + 12)
    this.offset = buf.readUInt32BE(at + 16) * 0x100000000 + buf.readUInt32BE(at + 20)
    this.length = buf.readUInt32BE(at + 24)
    this.op = cmdNames[this.type] ?? 'other'
  }

  get fua (): boolean { return (this.flags & CmdFlag.FUA) !== 0 }

  /**
   * A READ: a free buffer is taken at once (no promise turn); otherwise it waits for one in FIFO order. On a
   * structured connection a long READ (not DF) asks for the range's holes first: one wholly a hole needs no buffer.
   */
  read (): void {
    this.runs = null
    if (this.type === Cmd.READ && this.s.structured && this.length >= HOLE_MIN && (this.flags & CmdFlag.DF) === 0) {
      this.s.device.extents(this.offset, this.length).then(this.onExtents, this.onFailed)
      return
    }
    this.takeBuffer()
  }

  private takeBuffer (): void {
    const slot = this.s.share.acquireFor(this)
    if (slot !== null) this.gotBuffer(slot)
  }

  private readonly onExtents = (runs: Extent[]): void => {
    if (runs.length === 1 && runs[0].hole) { this.runs = runs; this.s.finish(this, 0, 0); return }
    // All data, or too fragmented to be worth chunks: one data chunk.
    this.runs = runs.length === 1 || runs.length > MAX_READ_CHUNKS ? null : runs
    this.takeBuffer()
  }

  gotBuffer (slot: PoolBuffer): void {
    this.slot = slot
    if (this.type === Cmd.CACHE) { this.cache(slot).then(this.onDone, this.onFailed); return }
    const runs = this.runs
    if (runs === null) { this.s.device.read(this.offset, this.length, slot.data).then(this.onRead, this.onFailed); return }
    const parts: Array<Promise<void>> = []
    let bytes = 0
    for (const run of runs) {
      if (run.hole) continue
      bytes += run.length
      parts.push(this.s.device.read(run.offset, run.length, slot.data.subarray(run.offset - this.offset)))
    }
    Promise.all(parts).then(() => { this.s.metrics.bytesRead += bytes; this.s.finish(this, 0, this.length) }, this.onFailed)
  }

  /** CACHE, done as nbdkit's cache=emulate does it: the range is read (into one pool buffer, piece by piece) and dropped. */
  private async cache (slot: PoolBuffer): Promise<void> {
    const piece = slot.data.length
    for (let done = 0; done < this.length; done += piece) {
      const n = Math.min(piece, this.length - done)
      await this.s.device.read(this.offset + done, n, slot.data)
    }
  }

  noBuffer (err: Error): void { this.s.finish(this, toErrno(err), 0) }

  private readonly onRead = (): void => {
    this.s.metrics.bytesRead += this.length
    this.s.finish(this, 0, this.length)
  }

  /** BLOCK_STATUS: answered with its reply's chunks, or the error. */
  blockStatus (p: Promise<Buffer>): void {
    p.then(this.onStatus, this.onFailed)
  }

  private readonly onStatus = (reply: Buffer): void => {
    this.status = reply
    this.s.finish(this, 0, 0)
  }

  /** A WRITE whose payload is in `slot`, kept until the reply is sent: its headroom carries the reply header. */
  write (): void {
    this.s.device.write(this.offset, (this.slot as PoolBuffer).data.subarray(0, this.length)).then(this.onWritten, this.onFailed)
  }

  private readonly onWritten = (): void => {
    this.s.metrics.bytesWritten += this.length
    this.onApplied()
  }

  /** TRIM and WRITE_ZEROES: answered when the device's promise settles (and a flush, with FUA). */
  apply (p: Promise<void>): void { p.then(this.onApplied, this.onFailed) }

  /** FLUSH: answered when the flush settles. */
  settle (p: Promise<void>): void { p.then(this.onDone, this.onFailed) }

  private readonly onApplied = (): void => {
    if (this.fua) this.s.device.flush().then(this.onDone, this.onFailed)
    else this.s.finish(this, 0, 0)
  }

  private readonly onDone = (): void => { this.s.finish(this, 0, 0) }

  private readonly onFailed = (err: unknown): void => { this.s.finish(this, toErrno(err), 0) }

  /** The reply's write completed (or failed with its connection): the slot goes back, then the record. */
  readonly onReplyWritten = (): void => {
    if (this.slot !== null) { this.s.share.release(this.slot); this.slot = null }
    this.runs = null
    this.status = null
    this.s.replyWritten(this)
  }
}

/**
 * Reply bytes a connection may have queued in its socket (not yet taken by the kernel) before it stops reading
 * requests; and, in the option phase, before it stops reading options. Its READ replies are sent from pool buffers,
 * which its fair share bounds; this bounds the rest (header-only replies and option replies are our own memory).
 */
const MAX_QUEUED_BYTES = 4 * 1024 * 1024
const MAX_QUEUED_OPTION_BYTES = 64 * 1024

/** Bytes each connection reads into at once (headers, small payloads, the start of large ones). */
const RECEIVE_BUFFER = 256 * 1024
/** A WRITE payload with at least this much still to come is read straight into its pool buffer. */
const DIRECT_MIN = 16 * 1024

export interface NbdServerOptions {
  host: string
  port: number
  pool: BufferPool
  maxRequest: number
  exports: Map<string, ServedExport>
  log: (message: string) => void
  /** Most requests a connection may have received and not yet seen answered (reply written); at the cap it stops reading. */
  maxInFlight?: number
  /** A connection whose replies stay unread this long (ms, no byte taken by its client meanwhile) is closed. */
  stallTimeout?: number
  /** The node's certificate, key and CA: NBD_OPT_STARTTLS is offered when given. */
  tls?: TlsMaterial
}

export class NbdServer {
  private readonly server: net.Server
  private readonly sessions = new Set<NbdSession>()
  private stopping = false
  port = 0
  /**
   * Never listens: a connection that sent NBD_OPT_STARTTLS is handed to it ('connection'), so that Node's server path
   * wraps it and computes the client certificate's verdict (`authorized`), which a bare server TLSSocket does not.
   */
  readonly tlsServer: tls.Server | null
  /** Connections between STARTTLS and the end of their handshake, by the client's address and port. */
  private readonly handshaking = new Map<string, NbdSession>()

  constructor (readonly options: NbdServerOptions) {
    const t = options.tls
    this.tlsServer = t === undefined
      ? null
      : tls.createServer({
        cert: t.cert,
        key: t.key,
        ...(t.ca !== undefined ? { ca: t.ca } : {}),
        ...(t.passphrase !== undefined ? { passphrase: t.passphrase } : {}),
        requestCert: t.ca !== undefined,
        rejectUnauthorized: false,
      })
    this.tlsServer?.on('secureConnection', (socket: tls.TLSSocket) => {
      const key = `${socket.remoteAddress ?? ''}:${socket.remotePort ?? 0}`
      const session = this.handshaking.get(key)
      this.handshaking.delete(key)
      if (session === undefined) { socket.destroy(); return }
      session.tlsReady(socket)
    })
    this.tlsServer?.on('tlsClientError', (err: NodeJS.ErrnoException, socket: tls.TLSSocket) => {
      const key = `${socket.remoteAddress ?? ''}:${socket.remotePort ?? 0}`
      const session = this.handshaking.get(key)
      this.handshaking.delete(key)
      options.log(`nbd: ${socket.remoteAddress ?? '?'}: TLS handshake failed: ${err.code ?? err.message}; closing`)
      session?.close()
      socket.destroy()
    })
    // Paused at accept so that the connection can be rewrapped with `onread` before any byte is read.
    this.server = net.createServer({ pauseOnConnect: true }, accepted => {
      if (this.stopping) { accepted.destroy(); return }
      const session = new NbdSession(this, accepted)
      this.sessions.add(session)
    })
  }

  listen (): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', err => reject(new DstError(ErrorCode.LISTEN, `cannot listen for NBD on ${this.options.host}:${this.options.port}: ${err.message}`)))
      this.server.listen(this.options.port, this.options.host, () => {
        this.port = (this.server.address() as net.AddressInfo).port
        resolve()
      })
    })
  }

  /**
   * Stops accepting, lets every session answer what it received (requests that come meanwhile get ESHUTDOWN), then
   * ends each connection once its replies are sent.
   */
  async stop (): Promise<void> {
    this.stopping = true
    this.server.close()
    await Promise.all([...this.sessions].map(s => s.drain()))
    await Promise.all([...this.sessions].map(s => s.shutdown()))
  }

  get isStopping (): boolean { return this.stopping }

  /** A session closed (its socket, plain or TLS, is gone). */
  forget (session: NbdSession): void {
    this.sessions.delete(session)
    // One that closed mid-handshake (few are ever in this map at once).
    for (const [key, s] of this.handshaking) if (s === session) this.handshaking.delete(key)
  }

  /** Hands a plain connection that asked for STARTTLS to the TLS server path; `tlsReady` follows its handshake. */
  startTls (session: NbdSession, plain: net.Socket): void {
    this.handshaking.set(`${plain.remoteAddress ?? ''}:${plain.remotePort ?? 0}`, session)
    ;(this.tlsServer as tls.Server).emit('connection', plain)
  }
}

class NbdSession {
  private phase: 'flags' | 'options' | 'transmission' | 'closed' = 'flags'
  private pending: Buffer = Buffer.alloc(0)
  private noZeroes = false
  private exp: ServedExport | null = null
  private readOnly = true
  private inFlight = 0
  private drained: (() => void) | null = null
  private disconnecting = false
  private corked = false
  /** The connection is being ended: what arrives is read and dropped, nothing more is sent. */
  private ending = false
  private readonly address: string
  /** The connection: the accepted TCP socket, or after STARTTLS the TLS socket over it. */
  socket: net.Socket
  /** STARTTLS done: the connection is TLS from here on. */
  private secure = false
  /** The client's certificate as the TLS handshake saw it (null before STARTTLS). */
  private peer: PeerCertificate | null = null
  // Receive state of the transmission phase: a request header being gathered, then its WRITE payload.
  private readonly rx: Buffer
  private readonly headerScratch = Buffer.alloc(NBD_REQUEST_SIZE)
  private headerFill = 0
  /** The request whose header (and payload) is being received. */
  private request: NbdRequest | null = null
  /** Records not in use, for reuse (see NbdRequest). */
  private readonly freeRecords: NbdRequest[] = []
  /** What this connection may do, for the validator; set when the transmission phase starts. */
  private rules: RequestRules | null = null
  private requestErrno = 0
  /** Where the current WRITE payload goes: its pool buffer, or null to skip it (refused request). */
  private payloadSlot: PoolBuffer | null = null
  private payloadFill = 0
  /** The view of `payloadSlot` last offered for a direct socket read. */
  private direct: Buffer | null = null
  /**
   * The first 4 KiB of `rx`, read into while a header is expected after a large WRITE: another large WRITE then has
   * only its first few KiB copied out of `rx`, the rest lands in its pool buffer. Small requests keep the whole `rx`.
   */
  private readonly rxSmall: Buffer
  private lastWasLarge = false
  /**
   * Received bytes not yet taken (the socket is paused meanwhile): while waiting for a pool buffer for a WRITE, or
   * while the connection is at its bounds (requests in flight, queued reply bytes).
   */
  private held: { buf: Buffer, at: number, end: number } | null = null
  private heldBusy = false
  /** This connection's share of the pool: every buffer it takes and gives back goes through it. */
  readonly share: PoolShare
  /** Replies handed to the socket whose write has not completed (the client has not taken them yet). */
  private unwritten = 0
  /** Replies whose write completed, ever: the stall check's measure of progress. */
  private written = 0
  private readonly maxInFlight: number
  private stallTimer: NodeJS.Timeout | null = null
  private stallMark = 0
  private optionsPaused = false
  /** The client asked for structured replies (NBD_OPT_STRUCTURED_REPLY). */
  structured = false
  /** The metadata contexts the client selected (SET_META_CONTEXT), and the export it selected them on. */
  private contexts: MetaContext[] = []
  private contextsOf: ServedExport | null = null

  constructor (private readonly server: NbdServer, accepted: net.Socket) {
    this.address = accepted.remoteAddress ?? ''
    this.share = new PoolShare(server.options.pool)
    this.maxInFlight = server.options.maxInFlight ?? 128
    this.rx = Buffer.allocUnsafeSlow(RECEIVE_BUFFER)
    this.rxSmall = this.rx.subarray(0, 4096)
    this.socket = adoptWithOnread(accepted, () => this.nextReadBuffer(), (n, buf) => this.onRead(n, buf))
    const socket = this.socket
    socket.setNoDelay(true)
    if (socket !== accepted) socket.resume()
    else socket.on('data', (chunk: Buffer) => this.onRead(chunk.length, chunk))
    this.watch(socket)
    const hello = Buffer.alloc(18)
    NBDMAGIC.copy(hello, 0)
    IHAVEOPT.copy(hello, 8)
    hello.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16)
    socket.write(hello)
  }

  private watch (socket: net.Socket): void {
    socket.on('error', () => this.close())
    socket.on('close', () => this.close())
    socket.on('drain', () => this.onDrain())
  }

  /**
   * NBD_OPT_STARTTLS was acknowledged: the TCP socket is wrapped in a server TLSSocket (which takes its handle over;
   * the `onread` buffers are no longer read into) and negotiation goes on over TLS. A client certificate is asked for
   * and its verdict kept, each export checking it as it is asked for (`find`).
   */
  private startTls (): void {
    if (this.pending.length > 0) {
      // The client must wait for our ACK before its handshake: bytes already here are not part of the protocol.
      this.server.options.log(`nbd: ${this.address}: data after NBD_OPT_STARTTLS before its reply; closing`)
      this.close()
      return
    }
    const plain = this.socket
    plain.removeAllListeners('data')
    // What was negotiated in clear (a man in the middle could have done it) is forgotten, as the spec asks.
    this.structured = false
    this.contexts = []
    this.contextsOf = null
    this.secure = true
    this.server.startTls(this, plain)
  }

  /** The TLS handshake after STARTTLS is done: negotiation goes on over `secure`, with the client's certificate known. */
  tlsReady (secure: tls.TLSSocket): void {
    if (this.phase === 'closed') { secure.destroy(); return }
    this.socket = secure
    this.peer = peerOf(secure)
    secure.setNoDelay(true)
    secure.on('error', (err: NodeJS.ErrnoException) => {
      if (this.phase !== 'closed') this.server.options.log(`nbd: ${this.address}: TLS: ${err.code ?? err.message}; closing`)
    })
    secure.on('data', (chunk: Buffer) => this.onRead(chunk.length, chunk))
    this.watch(secure)
  }

  /** The export's device and counters (transmission phase only). */
  get device (): ServedExport['device'] { return (this.exp as ServedExport).device }
  get metrics (): ServedExport['metrics'] { return (this.exp as ServedExport).metrics }

  drain (): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve()
    return new Promise(resolve => { this.drained = resolve })
  }

  /**
   * Ends the connection after the replies queued for it (a plain destroy would drop corked ones, and a reset can make
   * the client discard what it received but had not yet read). Bounded: a client that does not read or close is cut.
   */
  shutdown (): Promise<void> {
    if (this.phase === 'closed') return Promise.resolve()
    return new Promise(resolve => {
      const timer = setTimeout(() => this.close(), SHUTDOWN_GRACE)
      this.socket.once('close', () => { clearTimeout(timer); resolve() })
      this.ending = true
      this.socket.end()
    })
  }

  close (): void {
    if (this.phase === 'closed') return
    this.phase = 'closed'
    if (this.payloadSlot !== null) { this.share.release(this.payloadSlot); this.payloadSlot = null }
    this.direct = null
    this.held = null
    this.share.close()
    this.stopStallTimer()
    if (this.exp !== null) this.exp.metrics.connections--
    this.socket.destroy()
    this.server.forget(this)
  }

  /** Where the socket's next read lands: straight in the current WRITE's pool buffer when much is still to come. */
  private nextReadBuffer (): Buffer {
    const slot = this.payloadSlot
    const req = this.request
    if (slot !== null && req !== null && this.held === null && req.length - this.payloadFill >= DIRECT_MIN) {
      this.direct = slot.data.subarray(this.payloadFill, req.length)
      return this.direct
    }
    this.direct = null
    return this.lastWasLarge && req === null && this.held === null ? this.rxSmall : this.rx
  }

  /** `n` bytes arrived in `buf` (our receive buffer, a direct payload view, or a chunk of the plain 'data' path). */
  private onRead (n: number, buf: Buffer): void {
    if (this.phase === 'closed' || this.ending) return
    if (buf === this.direct) {
      this.direct = null
      this.payloadFill += n
      if (this.payloadFill === (this.request as NbdRequest).length) this.finishRequest()
      return
    }
    if (buf === this.rxSmall) buf = this.rx
    if (this.phase !== 'transmission') {
      // Negotiation: the receive buffer is reused by the next read, so what is kept is copied.
      this.onData(buf === this.rx ? Buffer.from(buf.subarray(0, n)) : buf.subarray(0, n))
      return
    }
    this.take(buf, 0, n)
  }

  /** Runs the request state machine over `buf[at..end)`; stops early (holding the rest) to wait for a pool buffer. */
  private take (buf: Buffer, at: number, end: number): void {
    try {
      while (at < end && this.phase === 'transmission') {
        const req = this.request
        if (req === null) {
          // At its bounds the connection stops reading until replies drain (client isolation): what came is kept.
          if (this.inFlight + this.unwritten >= this.maxInFlight || this.socket.writableLength > MAX_QUEUED_BYTES) {
            this.holdBusy(buf, at, end)
            return
          }
          const h = this.freeRecords.pop() ?? new NbdRequest(this)
          if (this.headerFill === 0 && end - at >= NBD_REQUEST_SIZE) {
            this.parseInto(h, buf, at)
            at += NBD_REQUEST_SIZE
          } else {
            const n = Math.min(NBD_REQUEST_SIZE - this.headerFill, end - at)
            buf.copy(this.headerScratch, this.headerFill, at, at + n)
            this.headerFill += n
            at += n
            if (this.headerFill < NBD_REQUEST_SIZE) { this.freeRecords.push(h); return }
            this.headerFill = 0
            this.parseInto(h, this.headerScratch, 0)
          }
          this.request = h
          this.payloadFill = 0
          if (h.type !== Cmd.WRITE || h.length === 0) { this.finishRequest(); continue }
          this.requestErrno = this.check(h)
          if (this.requestErrno !== 0) {
            if (h.length > MAX_DISCARD) {
              this.server.options.log(`nbd: ${this.address}: refused WRITE of ${h.length} bytes; closing`)
              this.close()
              return
            }
            continue // the payload is skipped
          }
          const slot = this.share.tryAcquire()
          if (slot !== null) { this.payloadSlot = slot; continue }
          // No buffer free: stop reading until one is (backpressure), keeping what was already received.
          ;(this.exp as ServedExport).metrics.poolExhausted++
          this.hold(buf, at, end)
          return
        }
        const n = Math.min(req.length - this.payloadFill, end - at)
        if (this.payloadSlot !== null) buf.copy(this.payloadSlot.data, this.payloadFill, at, at + n)
        this.payloadFill += n
        at += n
        if (this.payloadFill === req.length) this.finishRequest()
      }
    } catch (err) {
      // A bad request costs its connection; so does a bug here (it is logged with its stack), never the node.
      if (err instanceof ProtocolError) {
        this.server.options.log(`nbd: ${this.address}: ${err.message}; closing`)
        if (this.exp !== null) this.exp.metrics.protocolErrors++
      } else {
        this.server.options.log(`nbd: ${this.address}: internal error: ${(err as Error).stack ?? String(err)}; closing`)
      }
      this.close()
    }
  }

  /** Pauses the socket until a pool buffer is free for the WRITE whose header was just read, then carries on. */
  private hold (buf: Buffer, at: number, end: number): void {
    // The rest of `buf` must survive until then: the receive buffer is not read into while paused; any other buffer
    // (the plain 'data' path's chunks) is ours already.
    this.held = { buf, at, end }
    this.socket.pause()
    this.share.acquire().then(slot => {
      if (this.phase === 'closed') { this.share.release(slot); return }
      this.payloadSlot = slot
      this.resumeHeld()
    }, () => {
      if (this.phase === 'closed') return
      // Too many waiting for the pool: the payload is skipped and the WRITE answered ENOMEM.
      this.requestErrno = Errno.ENOMEM
      this.resumeHeld()
    })
  }

  private resumeHeld (): void {
    const held = this.held as { buf: Buffer, at: number, end: number }
    this.held = null
    this.take(held.buf, held.at, held.end)
    if (this.held === null && this.phase === 'transmission') this.socket.resume()
  }

  /** Pauses the socket while the connection is at its bounds; `maybeResume` carries on once replies drained. */
  private holdBusy (buf: Buffer, at: number, end: number): void {
    this.held = { buf, at, end }
    this.heldBusy = true
    this.socket.pause()
    this.startStallTimer()
  }

  /** A reply was written or a request finished: carry on reading if the connection is back under its bounds. */
  private maybeResume (): void {
    if (!this.heldBusy || this.phase !== 'transmission') return
    if (this.inFlight + this.unwritten >= this.maxInFlight || this.socket.writableLength > MAX_QUEUED_BYTES) return
    this.heldBusy = false
    this.stopStallTimer()
    this.resumeHeld()
  }

  private onDrain (): void {
    if (this.optionsPaused) {
      this.optionsPaused = false
      this.stopStallTimer()
      this.socket.resume()
      this.onData(EMPTY)
      return
    }
    this.maybeResume()
  }

  /**
   * While replies wait for the client (or the connection is held), checks now and then that the client takes them;
   * one that took none for a whole `stallTimeout` while some were waiting for it is closed, so that its pool buffers
   * come back. One timer per connection, re-armed at most once per `stallTimeout`.
   */
  private startStallTimer (): void {
    if (this.stallTimer !== null) return
    this.stallMark = this.written
    this.stallTimer = setTimeout(this.stallCheck, this.server.options.stallTimeout ?? DEFAULT_STALL_TIMEOUT)
    this.stallTimer.unref()
  }

  private stopStallTimer (): void {
    if (this.stallTimer !== null) { clearTimeout(this.stallTimer); this.stallTimer = null }
  }

  private readonly stallCheck = (): void => {
    this.stallTimer = null
    if (this.phase === 'closed') return
    const waiting = this.unwritten > 0 || this.socket.writableLength > 0
    if (waiting && this.written === this.stallMark) {
      const timeout = this.server.options.stallTimeout ?? DEFAULT_STALL_TIMEOUT
      this.server.options.log(`nbd: ${this.address}: client took no reply for ${timeout} ms (${this.unwritten} replies, ${this.socket.writableLength} bytes queued); closing`)
      if (this.exp !== null) this.exp.metrics.stalled++
      this.close()
      return
    }
    if (this.unwritten > 0 || this.heldBusy || this.optionsPaused) this.startStallTimer()
  }

  /** A bad header costs the connection; its record goes back first. */
  private parseInto (h: NbdRequest, buf: Buffer, at: number): void {
    try {
      h.parse(buf, at)
    } catch (err) {
      this.freeRecords.push(h)
      throw err
    }
  }

  /** A reply's write completed (its record's bound onReplyWritten, which gave its slot back): the record is free. */
  replyWritten (rec: NbdRequest): void {
    this.unwritten--
    this.written++
    this.freeRecords.push(rec)
    if (this.heldBusy) this.maybeResume()
  }

  /** The current request is complete (header, and payload if any): dispatch it. */
  private finishRequest (): void {
    const h = this.request as NbdRequest
    this.request = null
    this.lastWasLarge = h.type === Cmd.WRITE && h.length >= DIRECT_MIN
    const slot = this.payloadSlot
    this.payloadSlot = null
    this.onRequest(h, slot)
  }

  private onData (chunk: Buffer): void {
    // Negotiation is not the hot path: gather bytes and take whole messages.
    if (chunk.length > 0) this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk])
    while (this.phase === 'flags' || this.phase === 'options') {
      if (this.phase === 'flags') {
        if (this.pending.length < 4) return
        const flags = this.pending.readUInt32BE(0)
        this.pending = this.pending.subarray(4)
        if ((flags & FLAG_FIXED_NEWSTYLE) === 0 || (flags & ~(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)) !== 0) {
          this.server.options.log(`nbd: ${this.address}: unsupported client flags 0x${flags.toString(16)}; closing`)
          this.close()
          return
        }
        this.noZeroes = (flags & FLAG_NO_ZEROES) !== 0
        this.phase = 'options'
        continue
      }
      if (this.pending.length < 16) return
      if (this.socket.writableLength > MAX_QUEUED_OPTION_BYTES) {
        // The client does not read our option replies: read no more options until it does.
        if (!this.optionsPaused) { this.optionsPaused = true; this.socket.pause(); this.startStallTimer() }
        return
      }
      if (!this.pending.subarray(0, 8).equals(IHAVEOPT)) {
        this.server.options.log(`nbd: ${this.address}: bad option magic; closing`)
        this.close()
        return
      }
      const option = this.pending.readUInt32BE(8)
      const length = this.pending.readUInt32BE(12)
      if (length > MAX_OPTION) { this.server.options.log(`nbd: ${this.address}: option of ${length} bytes; closing`); this.close(); return }
      if (this.pending.length < 16 + length) return
      const data = Buffer.from(this.pending.subarray(16, 16 + length))
      this.pending = this.pending.subarray(16 + length)
      this.option(option, data)
    }
    // Bytes that came with the last option already belong to the transmission phase.
    if ((this.phase as string) === 'transmission' && this.pending.length > 0) {
      const rest = this.pending
      this.pending = Buffer.alloc(0)
      this.take(rest, 0, rest.length)
    }
  }

  private reply (option: number, type: number, data: Buffer = Buffer.alloc(0)): void {
    const head = Buffer.alloc(20)
    head.writeUInt32BE(OPT_REPLY_MAGIC_HI, 0)
    head.writeUInt32BE(OPT_REPLY_MAGIC_LO, 4)
    head.writeUInt32BE(option, 8)
    head.writeUInt32BE(type, 12)
    head.writeUInt32BE(data.length, 16)
    this.socket.write(data.length > 0 ? Buffer.concat([head, data]) : head)
  }

  private error (option: number, type: number, message: string): void {
    this.reply(option, type, Buffer.from(message))
  }

  /** A refusal of an export, logged with its reason (the client gets the same text). */
  private refuse (type: number, message: string): { type: number, message: string } {
    this.server.options.log(`nbd: ${this.address}: refused: ${message}`)
    return { type, message }
  }

  /** The export a client asked for, or why it cannot have it. */
  private find (name: string): { exp: ServedExport } | { type: number, message: string } {
    const exports = this.server.options.exports
    const exp = name === '' ? exports.values().next().value as ServedExport | undefined : exports.get(name)
    if (exp === undefined) return this.refuse(Rep.ERR_UNKNOWN, `no export named '${name}'`)
    if (!allowed(exp.allow, this.address)) { exp.metrics.refused++; return this.refuse(Rep.ERR_POLICY, `address ${this.address} is not in the allow list of export '${exp.name}'`) }
    if (exp.token !== undefined) { exp.metrics.refused++; return this.refuse(Rep.ERR_POLICY, `export '${exp.name}' needs a token, which NBD cannot present; use dst://`) }
    if (!this.secure && (exp.tls === 'require' || exp.clientCert === 'require')) {
      exp.metrics.refused++
      return this.refuse(Rep.ERR_TLS_REQD, `export '${exp.name}' requires TLS (NBD_OPT_STARTTLS; nbds:// with x509 credentials)`)
    }
    const certProblem = certRefusal(exp, this.peer ?? undefined, exp.name)
    if (certProblem !== null) { exp.metrics.refused++; return this.refuse(Rep.ERR_POLICY, certProblem) }
    if (this.server.isStopping) return { type: Rep.ERR_SHUTDOWN, message: 'node is shutting down' }
    return { exp }
  }

  private transmissionFlags (exp: ServedExport): number {
    // Writes are refused while a dst node holds the export's write lease (NBD clients write anonymously).
    const readOnly = exp.readOnly || !exp.device.writable || (exp.shared !== true && exp.lease.owner !== null)
    let flags = TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH | TxFlag.SEND_FUA
    // Every device here flushes for the whole device, not per connection, so a flush on one connection covers
    // writes completed on all of them: the promise of CAN_MULTI_CONN holds.
    flags |= TxFlag.CAN_MULTI_CONN
    flags |= TxFlag.SEND_CACHE
    // DF only means something to a client that gets structured replies (and the spec allows it only then).
    if (this.structured) flags |= TxFlag.SEND_DF
    if (readOnly) flags |= TxFlag.READ_ONLY
    else {
      flags |= TxFlag.SEND_WRITE_ZEROES | TxFlag.SEND_FAST_ZERO
      if (exp.device.canTrim) flags |= TxFlag.SEND_TRIM
    }
    return flags
  }

  private option (option: number, data: Buffer): void {
    switch (option) {
      case Opt.ABORT:
        this.reply(option, Rep.ACK)
        this.socket.end()
        this.phase = 'closed'
        return
      case Opt.LIST: {
        if (data.length !== 0) { this.error(option, Rep.ERR_INVALID, 'NBD_OPT_LIST takes no data'); return }
        for (const exp of this.server.options.exports.values()) {
          if (!allowed(exp.allow, this.address) || exp.token !== undefined) continue
          // SELECTIVETLS: what needs TLS (or a certificate this client lacks) is not listed to it.
          if (!this.secure && (exp.tls === 'require' || exp.clientCert === 'require')) continue
          if (this.secure && certRefusal(exp, this.peer ?? undefined, exp.name) !== null) continue
          // NBD_REP_SERVER: u32 name length, then the name.
          const head = Buffer.alloc(4)
          head.writeUInt32BE(Buffer.byteLength(exp.name), 0)
          this.reply(option, Rep.SERVER, withName(head, exp.name))
        }
        this.reply(option, Rep.ACK)
        return
      }
      case Opt.STARTTLS:
        if (this.server.tlsServer === null) { this.error(option, Rep.ERR_UNSUP, 'this node has no TLS configured'); return }
        if (data.length !== 0) { this.error(option, Rep.ERR_INVALID, 'NBD_OPT_STARTTLS takes no data'); return }
        if (this.secure) { this.error(option, Rep.ERR_INVALID, 'TLS is already on'); return }
        this.reply(option, Rep.ACK)
        this.startTls()
        return
      case Opt.EXPORT_NAME: {
        const found = this.find(data.toString())
        // The spec leaves no way to refuse NBD_OPT_EXPORT_NAME but to close the connection.
        if (!('exp' in found)) { this.server.options.log(`nbd: ${this.address}: ${found.message}; closing`); this.close(); return }
        const tail = Buffer.alloc(this.noZeroes ? 10 : 134)
        writeU64(tail, 0, found.exp.device.size)
        tail.writeUInt16BE(this.transmissionFlags(found.exp), 8)
        this.socket.write(tail)
        this.start(found.exp)
        return
      }
      case Opt.INFO:
      case Opt.GO: {
        if (data.length < 6) { this.error(option, Rep.ERR_INVALID, 'malformed request'); return }
        const nameLength = data.readUInt32BE(0)
        if (4 + nameLength + 2 > data.length) { this.error(option, Rep.ERR_INVALID, 'malformed request'); return }
        const name = data.toString('utf8', 4, 4 + nameLength)
        const count = data.readUInt16BE(4 + nameLength)
        if (data.length !== 4 + nameLength + 2 + 2 * count) { this.error(option, Rep.ERR_INVALID, 'malformed information request list'); return }
        const found = this.find(name)
        if (!('exp' in found)) { this.error(option, found.type, found.message); return }
        const exp = found.exp
        const info = Buffer.alloc(12)
        info.writeUInt16BE(Info.EXPORT, 0)
        writeU64(info, 2, exp.device.size)
        info.writeUInt16BE(this.transmissionFlags(exp), 10)
        this.reply(option, Rep.INFO, info)
        const block = Buffer.alloc(14)
        block.writeUInt16BE(Info.BLOCK_SIZE, 0)
        block.writeUInt32BE(1, 2)
        block.writeUInt32BE(Math.min(exp.device.blockSize, this.server.options.maxRequest), 6)
        block.writeUInt32BE(this.server.options.maxRequest, 10)
        this.reply(option, Rep.INFO, block)
        // Each information type is answered once, however often it is asked (a request list of thousands of
        // NBD_INFO_NAME would otherwise be amplified into as many replies).
        for (let i = 0; i < count; i++) {
          if (data.readUInt16BE(4 + nameLength + 2 + 2 * i) === Info.NAME) {
            const head = Buffer.alloc(2)
            head.writeUInt16BE(Info.NAME, 0)
            this.reply(option, Rep.INFO, withName(head, exp.name))
            break
          }
        }
        this.reply(option, Rep.ACK)
        if (option === Opt.GO) this.start(exp)
        return
      }
      case Opt.STRUCTURED_REPLY:
        if (data.length !== 0) { this.error(option, Rep.ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data'); return }
        this.structured = true
        this.reply(option, Rep.ACK)
        return
      case Opt.LIST_META_CONTEXT:
      case Opt.SET_META_CONTEXT:
        this.metaContext(option, data)
        return
      default:
        this.error(option, Rep.ERR_UNSUP, `option ${option} is not supported`)
    }
  }

  /**
   * LIST_META_CONTEXT and SET_META_CONTEXT: u32 name length, export name, u32 query count, then each query as u32
   * length and string. LIST answers the contexts each query names (a query ending in ':' names every context under
   * it; no query names them all); SET selects those named exactly and replaces any earlier selection. Each context is
   * answered once however often it is asked.
   */
  private metaContext (option: number, data: Buffer): void {
    const set = option === Opt.SET_META_CONTEXT
    if (set && !this.structured) { this.error(option, Rep.ERR_INVALID, 'NBD_OPT_SET_META_CONTEXT needs structured replies (NBD_OPT_STRUCTURED_REPLY) first'); return }
    const queries: string[] = []
    let at = 0
    if (data.length < 8) { this.error(option, Rep.ERR_INVALID, 'malformed request'); return }
    const nameLength = data.readUInt32BE(0)
    at = 4 + nameLength
    if (at + 4 > data.length) { this.error(option, Rep.ERR_INVALID, 'malformed request'); return }
    const name = data.toString('utf8', 4, at)
    const count = data.readUInt32BE(at)
    at += 4
    for (let i = 0; i < count; i++) {
      if (at + 4 > data.length) { this.error(option, Rep.ERR_INVALID, 'malformed query list'); return }
      const n = data.readUInt32BE(at)
      if (at + 4 + n > data.length) { this.error(option, Rep.ERR_INVALID, 'malformed query list'); return }
      queries.push(data.toString('utf8', at + 4, at + 4 + n))
      at += 4 + n
    }
    if (at !== data.length) { this.error(option, Rep.ERR_INVALID, 'malformed query list'); return }
    const found = this.find(name)
    if (!('exp' in found)) { this.error(option, found.type, found.message); return }
    const offered = contextsOf(found.exp)
    const chosen = offered.filter(c => set
      ? queries.includes(c.name)
      : queries.length === 0 || queries.some(q => q === c.name || (q.endsWith(':') && c.name.startsWith(q))))
    if (set) { this.contexts = chosen; this.contextsOf = found.exp }
    for (const c of chosen) {
      const head = Buffer.alloc(4)
      head.writeUInt32BE(c.id, 0)
      this.reply(option, Rep.META_CONTEXT, withName(head, c.name))
    }
    this.reply(option, Rep.ACK)
  }

  private start (exp: ServedExport): void {
    this.exp = exp
    // Contexts selected on another export than the one finally chosen do not apply to it.
    if (this.contextsOf !== exp) this.contexts = []
    this.readOnly = (this.transmissionFlags(exp) & TxFlag.READ_ONLY) !== 0
    this.rules = { exp, readOnly: this.readOnly, owner: null, token: 0, maxRequest: this.server.options.maxRequest, answers: NBD_ANSWERS }
    exp.metrics.connections++
    this.phase = 'transmission'
  }

  private check (h: NbdRequest): number {
    // Flags a command does not take (or DF without structured replies) are refused, like an unknown command.
    if ((h.flags & ~(FLAGS_OF[h.type] ?? CmdFlag.FUA)) !== 0 || ((h.flags & CmdFlag.DF) !== 0 && !this.structured)) return Errno.EINVAL
    if (h.type === Cmd.BLOCK_STATUS && this.contexts.length === 0) return Errno.EINVAL
    return checkRequest(this.rules as RequestRules, kindOf(h.type), h.offset, h.length, 0)
  }

  /** A whole request: `slot` holds a WRITE's payload (null when refused or when there is none). */
  private onRequest (h: NbdRequest, slot: PoolBuffer | null): void {
    h.slot = slot
    if (this.phase !== 'transmission') { if (slot !== null) { this.share.release(slot); h.slot = null } this.freeRecords.push(h); return }
    const exp = this.exp as ServedExport
    const op = h.op
    if (h.type === Cmd.DISC) {
      this.freeRecords.push(h)
      this.disconnecting = true
      if (this.inFlight === 0) this.close()
      return
    }
    exp.metrics.requests[op]++
    // A WRITE with a payload was checked when its header came (to know where the payload goes). Once the node is
    // shutting down, requests still in flight are answered, and new ones get ESHUTDOWN, as the spec asks.
    const errno = this.server.isStopping ? Errno.ESHUTDOWN : h.type === Cmd.WRITE && h.length > 0 ? this.requestErrno : this.check(h)
    if (errno !== 0) {
      exp.metrics.errors[op]++
      this.send(h, nbdErrno(errno), 0)
      return
    }
    this.inFlight++
    exp.metrics.inFlight++
    const device = exp.device
    switch (h.type) {
      case Cmd.READ: h.read(); return
      case Cmd.WRITE:
        if (slot === null) { this.finish(h, 0, 0); return } // zero-length
        h.write()
        return
      case Cmd.FLUSH: h.settle(device.flush()); return
      case Cmd.TRIM: h.apply(device.trim(h.offset, h.length)); return
      case Cmd.WRITE_ZEROES:
        // Without NO_HOLE the range may become a hole; FAST_ZERO: ENOTSUP at once unless zeroing is fast.
        h.apply(device.zero(h.offset, h.length, (h.flags & CmdFlag.NO_HOLE) === 0, (h.flags & CmdFlag.FAST_ZERO) !== 0))
        return
      case Cmd.CACHE: h.read(); return
      case Cmd.BLOCK_STATUS: h.blockStatus(this.blockStatus(h.offset, h.length, (h.flags & CmdFlag.REQ_ONE) !== 0))
    }
  }

  /** The BLOCK_STATUS reply: one chunk per selected context (the last one DONE), the handle filled in by send(). */
  private async blockStatus (offset: number, length: number, one: boolean): Promise<Buffer> {
    const exp = this.exp as ServedExport
    const span = Math.min(length, MAX_STATUS_LENGTH)
    const max = one ? 1 : MAX_STATUS_DESCRIPTORS
    const answers: Array<{ id: number, runs: Array<{ length: number, flags: number }> }> = []
    for (const c of this.contexts) {
      const runs = c.leg === null
        ? (await exp.device.extents(offset, span)).map(e => ({ length: e.length, flags: e.hole ? STATE_HOLE | STATE_ZERO : 0 }))
        : (exp.dirty as DirtyMaps).runs(c.leg, offset, span).map(r => ({ length: r.length, flags: r.dirty ? STATE_DIRTY : 0 }))
      answers.push({ id: c.id, runs: runs.length > max ? runs.slice(0, max) : runs })
    }
    let size = 0
    for (const a of answers) size += CHUNK_HEADER_SIZE + 4 + 8 * a.runs.length
    const reply = Buffer.allocUnsafe(size)
    let at = 0
    for (const [i, a] of answers.entries()) {
      const bytes = 4 + 8 * a.runs.length
      chunkHeader(reply, at, i === answers.length - 1 ? CHUNK_DONE : 0, Chunk.BLOCK_STATUS, bytes)
      reply.writeUInt32BE(a.id, at + CHUNK_HEADER_SIZE)
      let d = at + CHUNK_HEADER_SIZE + 4
      for (const r of a.runs) { reply.writeUInt32BE(r.length, d); reply.writeUInt32BE(r.flags, d + 4); d += 8 }
      at += CHUNK_HEADER_SIZE + bytes
    }
    return reply
  }

  /** A request is done (`errno` 0 or why not): answer it. */
  finish (h: NbdRequest, errno: number, length: number): void {
    const exp = this.exp as ServedExport
    this.inFlight--
    exp.metrics.inFlight--
    if (errno !== 0) exp.metrics.errors[h.op]++
    this.send(h, nbdErrno(errno), length)
    if (this.inFlight === 0) {
      if (this.drained !== null) { const done = this.drained; this.drained = null; done() }
      if (this.disconnecting) this.socket.end(() => this.close())
    }
    if (this.heldBusy) this.maybeResume()
  }

  /**
   * A simple reply. With a slot (a READ's data, or the buffer a WRITE came in) the header goes in the slot's headroom
   * and header and data leave as one write from the slot; without one (errors, FLUSH, TRIM) the header is written into
   * the record's own buffer. The record (and its slot) is taken back once the socket has written the reply.
   */
  private send (h: NbdRequest, errno: number, length: number): void {
    const pool = this.server.options.pool
    const slot = h.slot
    if (this.phase === 'closed') {
      if (slot !== null) { this.share.release(slot); h.slot = null }
      h.runs = null
      h.status = null
      this.freeRecords.push(h)
      return
    }
    if (this.structured && (h.type === Cmd.READ || h.type === Cmd.BLOCK_STATUS)) { this.sendStructured(h, errno, length); return }
    const head = slot !== null ? slot.frame : h.head
    const at = slot !== null ? pool.headroom - SIMPLE_REPLY_SIZE : 0
    head.writeUInt32BE(SIMPLE_REPLY_MAGIC, at)
    head.writeUInt32BE(errno, at + 4)
    head.writeUInt32BE(h.handleHi, at + 8)
    head.writeUInt32BE(h.handleLo, at + 12)
    this.cork()
    this.unwritten++
    if (this.stallTimer === null) this.startStallTimer()
    // The socket sends from the slot (or the record's header buffer) itself, so both are reused only once it is done.
    if (slot === null) this.socket.write(h.simpleHead, h.onReplyWritten)
    else this.socket.write(slot.frame.subarray(at, pool.headroom + length), h.onReplyWritten)
  }

  /**
   * A structured reply (READ, BLOCK_STATUS). An error is one ERROR chunk; a READ's data one OFFSET_DATA chunk whose
   * header goes in the slot's headroom, or, split at holes, a chunk per run (hole chunks carry no data); a
   * BLOCK_STATUS its prepared chunks. Several writes of one reply leave corked; the last one's completion frees it.
   */
  private sendStructured (h: NbdRequest, errno: number, length: number): void {
    this.cork()
    this.unwritten++
    if (this.stallTimer === null) this.startStallTimer()
    if (errno !== 0) {
      chunkHeader(h.head, 0, CHUNK_DONE, Chunk.ERROR, 6, h)
      h.head.writeUInt32BE(errno, CHUNK_HEADER_SIZE)
      h.head.writeUInt16BE(0, CHUNK_HEADER_SIZE + 4)
      this.socket.write(h.head.subarray(0, ERROR_CHUNK_SIZE), h.onReplyWritten)
      return
    }
    if (h.status !== null) {
      // Each chunk carries the handle: filled in here, where the record's handle is known to be this request's.
      for (let at = 0; at < h.status.length; at += CHUNK_HEADER_SIZE + h.status.readUInt32BE(at + 16)) {
        h.status.writeUInt32BE(h.handleHi, at + 8)
        h.status.writeUInt32BE(h.handleLo, at + 12)
      }
      this.socket.write(h.status, h.onReplyWritten)
      return
    }
    const runs = h.runs
    const slot = h.slot
    if (runs === null) {
      const frame = (slot as PoolBuffer).frame
      const at = this.server.options.pool.headroom - DATA_CHUNK_HEAD
      chunkHeader(frame, at, CHUNK_DONE, Chunk.OFFSET_DATA, 8 + length, h)
      writeU64(frame, at + CHUNK_HEADER_SIZE, h.offset)
      this.socket.write(frame.subarray(at, at + DATA_CHUNK_HEAD + length), h.onReplyWritten)
      return
    }
    if (h.chunkHeads === null) h.chunkHeads = Buffer.alloc(MAX_READ_CHUNKS * HOLE_CHUNK_SIZE)
    const heads = h.chunkHeads
    for (let i = 0; i < runs.length; i++) {
      const run = runs[i]
      const at = i * HOLE_CHUNK_SIZE
      const flags = i === runs.length - 1 ? CHUNK_DONE : 0
      const done = flags === CHUNK_DONE ? h.onReplyWritten : undefined
      writeU64(heads, at + CHUNK_HEADER_SIZE, run.offset)
      if (run.hole) {
        chunkHeader(heads, at, flags, Chunk.OFFSET_HOLE, 12, h)
        heads.writeUInt32BE(run.length, at + CHUNK_HEADER_SIZE + 8)
        this.socket.write(heads.subarray(at, at + HOLE_CHUNK_SIZE), done)
      } else {
        chunkHeader(heads, at, flags, Chunk.OFFSET_DATA, 8 + run.length, h)
        this.socket.write(heads.subarray(at, at + DATA_CHUNK_HEAD))
        const from = run.offset - h.offset
        this.socket.write((slot as PoolBuffer).data.subarray(from, from + run.length), done)
      }
    }
  }

  /** Replies finishing in the same tick leave in one write. */
  private cork (): void {
    if (this.corked) return
    this.corked = true
    this.socket.cork()
    process.nextTick(this.uncork)
  }

  private readonly uncork = (): void => {
    this.corked = false
    this.socket.uncork()
  }
}

/**
 * The accepted connection rewrapped as a socket whose reads land in buffers we choose (`onread`), so that receiving
 * allocates no buffer and large payloads can be read straight into pool buffers. Node offers `onread` only to sockets it
 * creates for connect() or with a handle, not to those net.Server accepts; so the accepted socket (paused at accept,
 * nothing read yet) gives its handle to a new Socket, as Node's own accept path does (`new Socket({ handle })`), and
 * is destroyed without it (the server's connection count stays right). Where that private handle is not there, the
 * accepted socket is kept and its 'data' chunks take the same path.
 */
function adoptWithOnread (accepted: net.Socket, buffer: () => Buffer, callback: (n: number, buf: Buffer) => void): net.Socket {
  const withHandle = accepted as unknown as { _handle?: { readStart?: unknown } | null }
  const handle = withHandle._handle
  if (handle === undefined || handle === null || typeof handle.readStart !== 'function') return accepted
  withHandle._handle = null
  accepted.destroy()
  const options = { handle, readable: true, writable: true, onread: { buffer, callback: (n: number, buf: Uint8Array) => { callback(n, buf as Buffer); return true } } }
  return new net.Socket(options as unknown as net.SocketConstructorOpts)
}

/** A metadata context an export offers: base:allocation (leg null), or the dirty map of one member. */
interface MetaContext { id: number, name: string, leg: string | null }

/** The contexts of an export, with ids stable for the export: 1 for base:allocation, 2 on for its members' maps. */
function contextsOf (exp: ServedExport): MetaContext[] {
  const list: MetaContext[] = [{ id: 1, name: BASE_ALLOCATION, leg: null }]
  if (exp.dirty !== undefined) for (const [i, leg] of exp.dirty.names.entries()) list.push({ id: 2 + i, name: DIRTY_BITMAP + leg, leg })
  return list
}

/** A structured reply chunk's header at `at`; the handle is written from `h`, or later (BLOCK_STATUS). */
function chunkHeader (buf: Buffer, at: number, flags: number, type: number, length: number, h?: NbdRequest): void {
  buf.writeUInt32BE(STRUCTURED_REPLY_MAGIC, at)
  buf.writeUInt16BE(flags, at + 4)
  buf.writeUInt16BE(type, at + 6)
  if (h !== undefined) { buf.writeUInt32BE(h.handleHi, at + 8); buf.writeUInt32BE(h.handleLo, at + 12) }
  buf.writeUInt32BE(length, at + 16)
}

function withName (head: Buffer, name: string): Buffer {
  return Buffer.concat([head, Buffer.from(name)])
}

function writeU64 (buf: Buffer, at: number, value: number): void {
  buf.writeUInt32BE(Math.floor(value / 0x100000000), at)
  buf.writeUInt32BE(value >>> 0, at + 4)
}
