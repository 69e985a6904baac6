// The client side of the native protocol: one WebSocket connection to one export. Requests get a slot (the tag's low
// half is the slot number, the high half a sequence number, so a stale or forged reply is recognised); up to
// `maxInFlight` are on the wire at once and the rest wait in a bounded FIFO. A large READ reply is read from the socket
// straight into the caller's buffer (a small one is copied there once); a WRITE's payload is sent as the second
// fragment of its message, unmasked and uncopied. Request frames are written here, from a buffer per slot.

import * as net from 'node:net'
import * as tls from 'node:tls'
import WebSocket from 'ws'
import { DstError, Errno, errnoName, ErrorCode, RemoteError } from '../../node/core/errors'
import { Ring } from '../../node/core/ring'
import { defaultHasher, DIGEST_SIZE, HASH_ALGORITHM, type Hasher } from '../../node/core/hasher'
import {
  EXTENT_ENTRY_SIZE, EXTENTS_VERSION, FrameDecoder, HANDSHAKE_SIZE, HandshakeFlag, MAX_EXTENTS_PER_REPLY, MIN_PROTOCOL_VERSION, Op, opNames,
  PROTOCOL_VERSION, REQUEST_HEADER_SIZE, decodeExtents, digestFrames, parseHandshake, replyCarriesDigest, replyFrames, writeRequestHeader,
  type Handshake, type ReplyHeader,
} from './codec'
import type { Extent } from '../../node/core/device'
import { ProtocolError } from '../../node/core/errors'
import { WsTap, writeClientFrameHeader } from './ws-tap'
import { DIRECT_MIN, SocketReader } from './socket-reader'
import { formatDstUrl, type DstUrl } from '../../node/core/url'


export interface ConnectOptions {
  token?: string
  /** Most requests this side keeps on the wire; the server's announced maximum caps it. */
  queueDepth?: number
  /** Milliseconds to wait for the TCP connect plus handshake. */
  connectTimeout?: number
  /** Send a PING after this long without hearing from the server; give up after three times as long. */
  pingInterval?: number
  /** Most requests that may wait for a slot; one more gets an explicit error. */
  maxQueued?: number
  /** A request unanswered this long (ms) means the link is broken: the connection is dropped. */
  requestTimeout?: number
  /** Who writes through this connection: a stable id, so the export's write lease survives our reconnects. */
  owner?: string
  /** The node this connection is made for (its name names the lease holder in refusals; its id detects loops). */
  node?: { name: string, id: string }
  /** 'ro' asks for a read-only session and takes no write lease. */
  access?: 'rw' | 'ro'
  /** Counted across reconnects by the owner (a remote device): payloads that failed their wire digest. */
  counters?: { digestErrors: number }
  /** Where wire digests are computed (default: defaultHasher()). */
  hasher?: Hasher
  /**
   * TLS (a dsts:// url asks for it too): the CA the server's certificate must chain to (default: Node's CAs, with
   * NODE_EXTRA_CA_CERTS), the certificate and key this side presents, and the name the server's certificate must
   * carry (default: the url's host).
   */
  tls?: ClientTls
}

export interface ClientTls { ca?: Buffer, cert?: Buffer, key?: Buffer, passphrase?: string, servername?: string }

/** How long a TLS client waits for the server's hello after the TCP connect before it takes the peer for a plain listener. */
const TLS_HELLO_TIMEOUT = 3000

/** Times a payload that failed its wire digest is sent or asked for again before the request fails. */
const DIGEST_RETRIES = 3

interface Slot {
  index: number
  seq: number
  busy: boolean
  op: number
  offset: number
  length: number
  aux: number
  into: Uint8Array | null
  data: Uint8Array | null
  tries: number
  /** The WRITE payload's wire digest, computed once and kept for resends. */
  digest: Buffer | null
  digestTries: number
  sentAt: number
  resolve: (replied: number) => void
  reject: (err: Error) => void
  /**
   * The request as it goes on the wire: its WebSocket frame header (6 bytes), the request header (32), and room for
   * the frame header of a WRITE's payload (up to 14). Written in place per request, so sending allocates nothing.
   */
  wire: Buffer
  /** The request header inside `wire`. */
  header: Buffer
  /** The first frame of the message, header included: what a request without payload sends. */
  request: Buffer
}

/** Where the request header starts in a slot's `wire`, after its WebSocket frame header. */
const WIRE_HEAD = 6
/** Requests without payload packed into one message at most (64 x 32 bytes, well inside the server's limit). */
const REQUEST_BATCH = 64

interface Queued {
  op: number
  offset: number
  length: number
  aux: number
  into: Uint8Array | null
  data: Uint8Array | null
  resolve: (replied: number) => void
  reject: (err: Error) => void
}

const describe: Record<number, string> = {
  [Errno.EINVAL]: 'invalid request or range outside the export',
  [Errno.EROFS]: 'the export is read-only',
  [Errno.EPERM]: 'not permitted',
  [Errno.EOVERFLOW]: 'request larger than the export accepts',
  [Errno.ENOTSUP]: 'not supported by the export',
  [Errno.EIO]: 'I/O error on the exporting node',
  [Errno.ENOSPC]: 'no space left on the exporting node',
  [Errno.ESHUTDOWN]: 'the exporting node is shutting down',
  [Errno.EAGAIN]: 'the exporting node is out of buffers',
  [Errno.EBADMSG]: 'the payload did not match its wire digest',
}

/** Why a connect failed, in words: TLS failures and a plain/TLS mismatch are named as such. */
function connectFailure (err: NodeJS.ErrnoException, secure: boolean): { text: string, certificate: boolean } {
  const code = err.code ?? ''
  const what = `${code} ${err.message}`
  if (code === 'DST_NO_SERVER_HELLO') return { text: `TLS handshake failed: ${err.message} (a plain dst:// listener? use dst://)`, certificate: false }
  if (secure && /WRONG_VERSION_NUMBER|PACKET_LENGTH_TOO_LONG|HTTP_REQUEST/.test(what)) return { text: `TLS handshake failed: the listener does not speak TLS (a plain dst:// listener?) (${code || err.message})`, certificate: false }
  if (secure && /^(ERR_SSL_|ERR_TLS_CERT|CERT_|UNABLE_TO_|DEPTH_ZERO|SELF_SIGNED|HOSTNAME_MISMATCH)/.test(code)) {
    return { text: `TLS: certificate not accepted: ${code}: ${err.message.trim()}`, certificate: true }
  }
  if (secure && (code === 'ECONNRESET' || /socket hang up|disconnected before secure/i.test(err.message))) return { text: `TLS handshake failed: the connection was closed (a plain dst:// listener?) (${code || err.message})`, certificate: false }
  if (!secure && (code === 'ECONNRESET' || code.startsWith('HPE_') || /socket hang up|Parse Error/i.test(err.message))) {
    return { text: `no HTTP answer to the upgrade (${code || err.message}): is it a TLS listener? Use dsts://`, certificate: false }
  }
  return { text: code || err.message, certificate: false }
}

export class Connection {
  readonly url: string
  readonly handshake: Handshake
  readonly queueDepth: number
  /** Called once when the connection is gone, with the reason. */
  onClose: ((reason: Error) => void) | null = null

  private readonly ws: WebSocket
  private readonly slots: Slot[]
  private readonly freeSlots: number[]
  private readonly queue: Ring<Queued>
  private readonly decoder: FrameDecoder<ReplyHeader>
  private inFlight = 0
  private closed: Error | null = null
  private corked = false
  /** Requests without payload waiting for the end of the tick, to leave as one message (the first `batched`). */
  private readonly batch: Slot[] = []
  private batched = 0
  private lastHeard = Date.now()
  private pingOut = false
  private readonly pingTimer: NodeJS.Timeout | null = null
  /** Wire digests on this connection (the export asks for them in the handshake). */
  private readonly digest: boolean
  private readonly counters: { digestErrors: number }
  private readonly hasher: Hasher

  /** Reads the socket into buffers of our choosing once the tap is on (export/native/socket-reader.ts). */
  private readonly reader: SocketReader | null
  /** ws's TCP socket, which requests are written to directly (null: through ws.send). */
  private readonly socket: net.Socket | null
  /** The frame header of a wire digest (the last fragment of a WRITE message on a digest connection). */
  private readonly digestFrameHeader: Buffer

  private constructor (url: string, ws: WebSocket, handshake: Handshake, options: ConnectOptions, reader: SocketReader | null) {
    this.url = url
    this.ws = ws
    this.reader = reader
    const socket = (ws as unknown as { _socket?: net.Socket })._socket
    this.socket = socket !== undefined && process.env.DST_WS_SEND !== '1' ? socket : null
    const head = Buffer.alloc(14)
    this.digestFrameHeader = head.subarray(0, writeClientFrameHeader(head, 0, true, OP_CONTINUATION, handshake.digestSize))
    this.handshake = handshake
    this.queueDepth = Math.max(1, Math.min(options.queueDepth ?? 32, handshake.maxInFlight))
    this.slots = []
    this.freeSlots = []
    for (let i = 0; i < this.queueDepth; i++) {
      this.slots.push({
        index: i, seq: 0, busy: false, op: 0, offset: 0, length: 0, aux: 0, into: null, data: null, tries: 0, digest: null,
        digestTries: 0, sentAt: 0, resolve: noop, reject: noop, ...slotWire(),
      })
      this.freeSlots.push(this.queueDepth - 1 - i)
    }
    this.queue = new Ring(options.maxQueued ?? 65536)
    this.digest = (handshake.flags & HandshakeFlag.DIGEST) !== 0
    this.counters = options.counters ?? { digestErrors: 0 }
    this.hasher = options.hasher ?? defaultHasher()
    const frames = this.digest ? digestFrames(replyFrames, handshake.digestSize, replyCarriesDigest) : replyFrames
    this.decoder = new FrameDecoder(frames, h => this.replyTarget(h), (h, payload, trailer) => this.onReply(h, payload, trailer), Math.max(64, handshake.digestSize))
    if (!this.tapSocket(ws)) ws.on('message', (data: Buffer, isBinary: boolean) => this.onMessage(data, isBinary))
    ws.on('close', (code: number, reason: Buffer) => {
      const why = reason.length > 0 ? `: ${reason.toString()}` : ''
      this.fail(new DstError(ErrorCode.DISCONNECTED, `${this.url}: connection closed (code ${code}${why})`))
    })
    ws.on('error', err => this.fail(new DstError(ErrorCode.DISCONNECTED, `${this.url}: ${err.message}`)))
    const interval = options.pingInterval ?? 10000
    const requestTimeout = options.requestTimeout ?? 30000
    if (interval > 0 || requestTimeout > 0) {
      const tick = Math.max(50, Math.min(interval > 0 ? interval : Infinity, requestTimeout > 0 ? requestTimeout : Infinity) / 2)
      this.pingTimer = setInterval(() => this.checkAlive(interval, requestTimeout), tick)
      this.pingTimer.unref()
    }
  }

  static connect (target: DstUrl, options: ConnectOptions = {}): Promise<Connection> {
    const secure = target.tls === true || options.tls !== undefined
    const url = formatDstUrl(secure ? { ...target, tls: true } : target)
    const wsUrl = `${secure ? 'wss' : 'ws'}://${target.host.includes(':') ? `[${target.host}]` : target.host}:${target.port}/${encodeURIComponent(target.export)}`
    return new Promise((resolve, reject) => {
      const headers: Record<string, string> = { 'x-dst-version': String(PROTOCOL_VERSION) }
      if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`
      if (options.access === 'ro') headers['x-dst-access'] = 'ro'
      else if (options.owner !== undefined) headers['x-dst-writer'] = options.owner
      if (options.node !== undefined) { headers['x-dst-node'] = options.node.id; headers['x-dst-writer-name'] = options.node.name }
      // closeTimeout is a ws option its type definitions do not list yet.
      const wsOptions: WebSocket.ClientOptions & { closeTimeout: number } = {
        headers,
        perMessageDeflate: false,
        handshakeTimeout: options.connectTimeout ?? 10000,
        // An all-zero mask makes ws send payloads as they are, without a masked copy. The mask protects browser
        // traffic through caching proxies; a block device client has no use for it.
        generateMask: noop,
        maxPayload: 256 * 1024 * 1024,
        skipUTF8Validation: true,
        // A peer that is gone never answers our close frame; do not hold the process for ws's default 30 s.
        closeTimeout: 2000,
      }
      if (secure) {
        // The server's certificate is checked against the CA and the name (Node's defaults: rejectUnauthorized).
        const t = options.tls ?? {}
        Object.assign(wsOptions, {
          ...(t.ca !== undefined ? { ca: t.ca } : {}),
          ...(t.cert !== undefined ? { cert: t.cert, key: t.key } : {}),
          ...(t.passphrase !== undefined ? { passphrase: t.passphrase } : {}),
          ...(t.servername !== undefined ? { servername: t.servername } : {}),
          rejectUnauthorized: true,
        })
        // A plain listener does not answer a ClientHello (uWebSockets.js waits for an HTTP request that never ends,
        // 10 s): no ServerHello this long after the TCP connect ends the attempt, saying what it likely met.
        const tlsConnect = (opts: tls.ConnectionOptions & { host?: string }): tls.TLSSocket => {
          const host = opts.host ?? ''
          const socket = tls.connect({ ...opts, ...(opts.servername === undefined ? { servername: net.isIP(host) !== 0 ? '' : host } : {}) })
          let timer: NodeJS.Timeout | null = null
          socket.once('connect', () => {
            timer = setTimeout(() => socket.destroy(Object.assign(new Error(`no TLS answer within ${TLS_HELLO_TIMEOUT} ms of the TCP connect`), { code: 'DST_NO_SERVER_HELLO' })), TLS_HELLO_TIMEOUT)
          })
          const stop = (): void => { if (timer !== null) { clearTimeout(timer); timer = null } }
          socket.once('secureConnect', stop)
          socket.once('close', stop)
          return socket
        }
        wsOptions.createConnection = tlsConnect as unknown as typeof net.createConnection
      }
      // The TCP socket reads through a SocketReader, so that replies can later land straight in their destinations.
      // Not under TLS: the bytes off the socket are ciphertext, and the decrypted ones come as 'data' chunks.
      const reader = process.env.DST_DIRECT_READ === '0' || secure ? null : new SocketReader()
      if (reader !== null) {
        // As ws's own connect does: `path` in these options is the URL's path, `socketPath` the Unix socket's.
        const connect = (opts: Record<string, unknown>): net.Socket => {
          const socket = net.connect({ ...opts, path: opts.socketPath, onread: reader.onread } as unknown as net.NetConnectOpts)
          reader.socket = socket
          return socket
        }
        wsOptions.createConnection = connect as unknown as typeof net.createConnection
      }
      const ws = new WebSocket(wsUrl, wsOptions)
      let settled = false
      const done = (err: Error | null, conn?: Connection): void => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        if (err !== null) { ws.removeAllListeners(); ws.on('error', noop); ws.terminate(); reject(err) } else resolve(conn as Connection)
      }
      const timer = setTimeout(() => done(new DstError(ErrorCode.TIMEOUT, `${url}: no handshake within ${options.connectTimeout ?? 10000} ms`)), options.connectTimeout ?? 10000)
      ws.on('unexpected-response', (_req, res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => {
          const body = Buffer.concat(chunks).toString().trim()
          const code = res.statusCode === 401 ? ErrorCode.TOKEN : res.statusCode === 403 ? ErrorCode.ACCESS : res.statusCode === 404 ? ErrorCode.NOEXPORT : res.statusCode === 409 ? ErrorCode.LEASED : res.statusCode === 508 ? ErrorCode.SELF : ErrorCode.REFUSED
          const err = new DstError(code, `${url}: refused (${res.statusCode ?? '?'}): ${body || res.statusMessage || 'no reason given'}`, Errno.EACCES)
          const expiresIn = Number(res.headers['x-dst-lease-expires-in'])
          if (code === ErrorCode.LEASED && res.headers['x-dst-lease-expires-in'] !== undefined && Number.isSafeInteger(expiresIn) && expiresIn >= 0) err.retryAfter = expiresIn
          done(err)
        })
        res.on('error', () => done(new DstError(ErrorCode.REFUSED, `${url}: refused (${res.statusCode ?? '?'})`)))
      })
      ws.on('error', err => {
        const failure = connectFailure(err as NodeJS.ErrnoException, secure)
        // A certificate refused is refused again on retry; a connection that failed otherwise may be a peer restarting.
        done(new DstError(failure.certificate ? ErrorCode.TLS : ErrorCode.CONNECT, `${url}: ${failure.text}`, failure.certificate ? Errno.EACCES : undefined))
      })
      ws.on('close', (code, reason) => done(new DstError(ErrorCode.CONNECT, `${url}: closed before the handshake (code ${code}${reason.length > 0 ? `: ${reason.toString()}` : ''})`)))
      ws.once('message', (data: Buffer, isBinary: boolean) => {
        try {
          if (!isBinary || data.length !== HANDSHAKE_SIZE) throw new ProtocolError(`expected a ${HANDSHAKE_SIZE}-byte handshake, got ${data.length} bytes`)
          const h = parseHandshake(data)
          if (h.version < MIN_PROTOCOL_VERSION || h.version > PROTOCOL_VERSION) throw new ProtocolError(`server speaks protocol version ${h.version}, this client ${MIN_PROTOCOL_VERSION} to ${PROTOCOL_VERSION}`)
          if (h.maxRequest === 0 || h.maxInFlight === 0) throw new ProtocolError('handshake announces a zero request size or queue depth')
          if ((h.flags & HandshakeFlag.DIGEST) !== 0 && (h.hashAlgorithm !== HASH_ALGORITHM || h.digestSize !== DIGEST_SIZE)) {
            throw new ProtocolError(`export wants wire digests with ${h.hashAlgorithm}, this client computes ${HASH_ALGORITHM}`)
          }
          ws.removeAllListeners()
          done(null, new Connection(url, ws, h, options, reader))
        } catch (err) {
          done(new DstError(ErrorCode.PROTOCOL, `${url}: ${(err as Error).message}`, Errno.EIO))
        }
      })
    })
  }

  get readOnly (): boolean { return (this.handshake.flags & HandshakeFlag.READ_ONLY) !== 0 }
  get canFlush (): boolean { return (this.handshake.flags & HandshakeFlag.FLUSH) !== 0 }
  get canTrim (): boolean { return (this.handshake.flags & HandshakeFlag.TRIM) !== 0 }
  /** The export answers HASH with the digest this side computes too. */
  get canHash (): boolean {
    const h = this.handshake
    return (h.flags & HandshakeFlag.HASH) !== 0 && h.hashAlgorithm === HASH_ALGORITHM && h.digestSize === DIGEST_SIZE
  }
  /** The export answers EXTENTS (protocol version 3 and its flag); otherwise every range is taken as data. */
  get canExtents (): boolean { return this.handshake.version >= EXTENTS_VERSION && (this.handshake.flags & HandshakeFlag.EXTENTS) !== 0 }
  get digests (): boolean { return this.digest }
  /** Reply bytes that were read from the socket straight into the caller's buffer (no copy). */
  get directBytes (): number { return this.reader?.directBytes ?? 0 }
  get isClosed (): boolean { return this.closed !== null }
  get pending (): number { return this.inFlight + this.queue.length }

  /**
   * One request of at most `handshake.maxRequest` bytes (the caller splits larger ones). For READ, `into` receives
   * `length` bytes; for WRITE, `data` is sent; for HASH (chunk size in `aux`), `into` receives the digests; for EXTENTS
   * (the most runs in `aux`), `into` receives the runs. The promise settles when the server answers.
   */
  request (op: number, offset: number, length: number, into: Uint8Array | null, data: Uint8Array | null, aux = 0): Promise<void> {
    // The same promise, whose value (the reply's payload bytes) callers of request() have no use for: no extra turn.
    return this.issue(op, offset, length, into, data, aux) as Promise<unknown> as Promise<void>
  }

  /** A request whose promise resolves with the bytes of the reply's payload (how long an EXTENTS answer is). */
  private issue (op: number, offset: number, length: number, into: Uint8Array | null, data: Uint8Array | null, aux: number): Promise<number> {
    if (this.closed !== null) return Promise.reject(this.closed)
    return new Promise<number>((resolve, reject) => {
      const slotIndex = this.freeSlots.pop()
      if (slotIndex === undefined) {
        if (this.queue.full) { reject(new DstError(ErrorCode.QUEUE_FULL, `${this.url}: ${this.queue.capacity} requests already queued`)); return }
        this.queue.push({ op, offset, length, aux, into, data, resolve, reject })
        return
      }
      this.start(this.slots[slotIndex], op, offset, length, aux, into, data, resolve, reject)
    })
  }

  ping (): Promise<void> {
    return this.request(Op.PING, 0, 0, null, null)
  }

  /**
   * Which parts of [offset, offset + length) are holes, as the server sees them (length below 4 GiB): runs in order
   * from `offset`, at most `maxRuns` of them, covering the range or a prefix of it (ask again from where they end).
   * An export that cannot answer (an older version) gets no request: the range is one data run.
   */
  async extents (offset: number, length: number, maxRuns = MAX_EXTENTS_PER_REPLY): Promise<Extent[]> {
    if (length === 0) return []
    if (!this.canExtents) return [{ offset, length, hole: false }]
    const into = Buffer.allocUnsafe(maxRuns * EXTENT_ENTRY_SIZE)
    const replied = await this.issue(Op.EXTENTS, offset, length, into, null, maxRuns)
    return decodeExtents(into.subarray(0, replied), offset, length, maxRuns)
  }

  close (code = 1000, reason = 'client closing'): void {
    if (this.closed === null) this.ws.close(code, reason)
    this.fail(new DstError(ErrorCode.CLOSED, `${this.url}: connection closed by this side`))
  }

  /** Drops the TCP connection at once, like a crash (tests, and a peer that stopped answering). */
  terminate (): void {
    this.drop(new DstError(ErrorCode.DISCONNECTED, `${this.url}: connection dropped`))
  }

  private drop (reason: DstError): void {
    this.ws.terminate()
    this.fail(reason)
  }

  private start (slot: Slot, op: number, offset: number, length: number, aux: number, into: Uint8Array | null,
    data: Uint8Array | null, resolve: (replied: number) => void, reject: (err: Error) => void): void {
    slot.busy = true
    slot.seq = (slot.seq + 1) >>> 0
    slot.op = op
    slot.offset = offset
    slot.length = length
    slot.aux = aux
    slot.digest = null
    slot.digestTries = 0
    slot.into = into
    slot.data = data
    slot.tries = 0
    slot.resolve = resolve
    slot.reject = reject
    this.inFlight++
    this.send(slot)
  }

  private send (slot: Slot): void {
    slot.sentAt = Date.now()
    if (this.digest && slot.op === Op.WRITE && slot.data !== null && slot.data.byteLength > 0 && slot.digest === null) {
      // The payload's digest goes out right behind it; compute it (on a worker, for a large payload) first.
      const seq = slot.seq
      this.hasher.digestOne(slot.data).then(digest => {
        if (!slot.busy || slot.seq !== seq || this.closed !== null) return
        slot.digest = digest
        this.send(slot)
      }, (err: Error) => { if (slot.busy && slot.seq === seq) this.release(slot, err) })
      return
    }
    writeRequestHeader(slot.header, 0, slot.op, 0, slot.index, slot.seq, slot.offset, slot.length, slot.aux)
    const socket = this.socket
    if (socket === null) { this.sendThroughWs(slot); return }
    if (!this.corked) {
      // Requests issued in one tick leave in one write.
      this.corked = true
      socket.cork()
      process.nextTick(this.uncork)
    }
    // The frames are written here rather than by ws.send: the same bytes (all-zero mask, so no masked copy), without
    // a new frame header, options object and callback per request. ws still writes its own control frames (pong,
    // close) on this socket; a frame is always written whole, in one synchronous run, so they never interleave.
    const wire = slot.wire
    if (slot.op === Op.WRITE && slot.data !== null) {
      wire[0] = OP_BINARY // the message goes on: the payload follows as a continuation frame
      const n = writeClientFrameHeader(wire, WIRE_HEAD + REQUEST_HEADER_SIZE, slot.digest === null, OP_CONTINUATION, slot.data.byteLength)
      socket.write(wire.subarray(0, WIRE_HEAD + REQUEST_HEADER_SIZE + n))
      socket.write(slot.data)
      if (slot.digest !== null) {
        socket.write(this.digestFrameHeader)
        socket.write(slot.digest)
      }
    } else {
      // Requests without a payload issued in one tick go as the frames of one message: the server then takes them in
      // one call (and one wake-up of its I/O worker) instead of one per request.
      if (this.batched === REQUEST_BATCH) this.flushBatch()
      this.batch[this.batched++] = slot
    }
  }

  /**
   * Sends the batched requests as one message. A lone request goes from its slot's own wire buffer, as it always did;
   * several are copied into a buffer of their own (the socket may hold it a while, and it is new each time).
   */
  private flushBatch (): void {
    const n = this.batched
    if (n === 0) return
    this.batched = 0
    const socket = this.socket as net.Socket
    if (n === 1) {
      const slot = this.batch[0]
      slot.wire[0] = 0x80 | OP_BINARY
      socket.write(slot.request)
      return
    }
    const length = n * REQUEST_HEADER_SIZE
    const head = length < 126 ? 6 : 8
    const message = Buffer.allocUnsafe(head + length)
    writeClientFrameHeader(message, 0, true, OP_BINARY, length)
    for (let i = 0; i < n; i++) this.batch[i].header.copy(message, head + i * REQUEST_HEADER_SIZE)
    socket.write(message)
  }

  private readonly uncork = (): void => {
    this.corked = false
    if (this.closed === null) this.flushBatch()
    else this.batched = 0
    this.socket?.uncork()
  }

  /** Requests through ws's own sender, where its socket is not reachable. */
  private sendThroughWs (slot: Slot): void {
    if (slot.op === Op.WRITE && slot.data !== null) {
      this.ws.send(slot.header, { binary: true, fin: false })
      if (slot.digest !== null) {
        this.ws.send(slot.data, { binary: true, fin: false })
        this.ws.send(slot.digest, { binary: true, fin: true })
      } else {
        this.ws.send(slot.data, { binary: true, fin: true })
      }
    } else {
      this.ws.send(slot.header, { binary: true })
    }
  }

  /**
   * Reads replies straight off the socket (export/native/ws-tap.ts: no reassembly into a new buffer per message) when ws's
   * internals look as expected and nothing is buffered in its receiver; otherwise replies come through ws's 'message'
   * events. DST_WS_TAP=0 turns the tap off.
   */
  private tapSocket (ws: WebSocket): boolean {
    const internals = ws as unknown as { _socket?: net.Socket, _receiver?: { _bufferedBytes?: number, write: (frame: Buffer) => boolean } }
    const socket = internals._socket
    const receiver = internals._receiver
    if (process.env.DST_WS_TAP === '0' || socket === undefined || receiver === undefined || receiver._bufferedBytes !== 0) return false
    const listeners = socket.listeners('data')
    if (listeners.length !== 1) return false
    const tap = new WsTap({
      data: chunk => this.decoder.push(chunk),
      messageEnd: () => { if (!this.decoder.atBoundary) throw new ProtocolError('reply message ends inside a frame') },
      control: frame => { receiver.write(frame) },
    })
    // Bytes off the socket, into the tap (which hands data to the decoder and control frames to ws).
    const feed = (chunk: Buffer): void => {
      this.lastHeard = Date.now()
      this.pingOut = false
      if (this.closed !== null) return
      try {
        tap.push(chunk)
      } catch (err) {
        this.protocolFailure((err as Error).message)
      }
    }
    const reader = this.reader
    if (reader !== null && reader.installed && reader.socket === socket && socket.readableLength === 0) {
      // Reads land in the reader's buffers from now on: large payloads straight in their destination.
      reader.attach({
        room: () => {
          if (this.closed !== null) return null
          const left = tap.dataLeft
          return left < DIRECT_MIN ? null : this.decoder.payloadRoom(left)
        },
        direct: n => {
          this.lastHeard = Date.now()
          this.pingOut = false
          if (this.closed !== null) return
          try {
            // The decoder first: the tap's end of message checks that the decoder is at a frame boundary.
            this.decoder.payloadReceived(n)
            tap.skipData(n)
          } catch (err) {
            this.protocolFailure((err as Error).message)
          }
        },
        chunk: feed,
      })
      return true
    }
    socket.removeListener('data', listeners[0] as (chunk: Buffer) => void)
    socket.on('data', feed)
    return true
  }

  private onMessage (data: Buffer, isBinary: boolean): void {
    this.lastHeard = Date.now()
    this.pingOut = false
    if (this.closed !== null) return
    if (!isBinary) { this.protocolFailure('text message from server'); return }
    try {
      this.decoder.push(data)
    } catch (err) {
      this.protocolFailure((err as Error).message)
      return
    }
    if (!this.decoder.atBoundary) this.protocolFailure('reply message ends inside a frame')
  }

  /** Bytes a successful reply to this slot's request carries: the data of a READ, the digests of a HASH. */
  private replyLength (slot: Slot): number {
    if (slot.op === Op.READ) return slot.length
    if (slot.op === Op.HASH) return slot.into?.byteLength ?? 0
    return 0
  }

  private replyTarget (h: ReplyHeader): Uint8Array | null {
    const slot = this.slotFor(h)
    if (slot === null || h.op !== slot.op) return null
    // An EXTENTS reply's length varies, up to the room for the runs asked for; a longer one is discarded and refused.
    if (slot.op === Op.EXTENTS) return slot.into !== null && h.length <= slot.into.byteLength ? slot.into : null
    if ((slot.op !== Op.READ && slot.op !== Op.HASH) || h.length !== this.replyLength(slot)) return null
    return slot.into
  }

  private onReply (h: ReplyHeader, payload: Uint8Array | null, trailer: Buffer | null): void {
    const slot = this.slotFor(h)
    if (slot === null) { this.protocolFailure(`reply with unknown tag ${h.tagLo}:${h.tagHi}`); return }
    if (h.errno === Errno.EAGAIN && slot.tries < 20) {
      // The server's buffer pool (or its hash workers) were full: send the same request again shortly, keeping its slot.
      slot.tries++
      setTimeout(() => { if (this.closed === null) this.send(slot) }, Math.min(100, 2 ** slot.tries))
      return
    }
    if (h.errno === Errno.EBADMSG && slot.op === Op.WRITE && this.digest) {
      // The server got other bytes than we sent: the link corrupted them. Send them again.
      this.counters.digestErrors++
      if (slot.digestTries++ < DIGEST_RETRIES) { this.send(slot); return }
      this.release(slot, new DstError(ErrorCode.DIGEST, `${this.url}: write ${slot.offset}+${slot.length}: the node received other bytes than were sent ${DIGEST_RETRIES + 1} times (wire digest mismatch); nothing was written`))
      return
    }
    let err: Error | null = null
    if (h.errno !== 0) {
      err = new RemoteError(h.errno, `${this.url}: ${opNames[slot.op] ?? 'request'} ${slot.offset}+${slot.length}: ${errnoName(h.errno)} (${describe[h.errno] ?? 'error on the exporting node'})`)
    } else if ((slot.op === Op.READ || slot.op === Op.HASH) && (payload === null || h.length !== this.replyLength(slot))) {
      this.protocolFailure(`${opNames[slot.op]} reply carries ${h.length} bytes, ${this.replyLength(slot)} were expected`)
      return
    } else if (trailer !== null && slot.op === Op.READ) {
      this.checkReadDigest(slot, Buffer.from(trailer))
      return
    } else if (slot.op === Op.EXTENTS) {
      // Checked here, so that a malformed list of runs closes the connection like any broken reply.
      const runs = h.length > 0 && payload === null ? null : (payload ?? Buffer.alloc(0)).subarray(0, h.length)
      try {
        if (runs === null) throw new ProtocolError(`extents reply carries ${h.length} bytes, at most ${slot.into?.byteLength ?? 0} were asked for`)
        decodeExtents(runs, slot.offset, slot.length, slot.aux)
      } catch (e) {
        this.protocolFailure((e as Error).message)
        return
      }
      this.release(slot, null, h.length)
      return
    }
    this.release(slot, err, h.length)
  }

  /** A READ reply with a wire digest: the caller gets the data only if it matches; otherwise it is asked for again. */
  private checkReadDigest (slot: Slot, expected: Buffer): void {
    const seq = slot.seq
    this.hasher.digestOne((slot.into as Uint8Array).subarray(0, slot.length)).then(actual => {
      if (!slot.busy || slot.seq !== seq) return
      if (actual.equals(expected)) { this.release(slot, null); return }
      this.counters.digestErrors++
      if (slot.digestTries++ < DIGEST_RETRIES && this.closed === null) { this.send(slot); return }
      this.release(slot, new DstError(ErrorCode.DIGEST, `${this.url}: read ${slot.offset}+${slot.length}: the data did not match its wire digest ${DIGEST_RETRIES + 1} times`))
    }, (err: Error) => { if (slot.busy && slot.seq === seq) this.release(slot, err) })
  }

  private slotFor (h: ReplyHeader): Slot | null {
    const slot = this.slots[h.tagLo]
    return slot !== undefined && slot.busy && slot.seq === h.tagHi ? slot : null
  }

  private release (slot: Slot, err: Error | null, replied = 0): void {
    const { resolve, reject } = slot
    slot.busy = false
    slot.into = null
    slot.data = null
    slot.digest = null
    slot.resolve = noop
    slot.reject = noop
    this.inFlight--
    const next = this.queue.shift()
    if (next !== undefined) this.start(slot, next.op, next.offset, next.length, next.aux, next.into, next.data, next.resolve, next.reject)
    else this.freeSlots.push(slot.index)
    if (err === null) resolve(replied); else reject(err)
  }

  private checkAlive (interval: number, requestTimeout: number): void {
    if (this.closed !== null) return
    const now = Date.now()
    if (requestTimeout > 0) {
      for (const slot of this.slots) {
        if (slot.busy && now - slot.sentAt > requestTimeout) {
          this.drop(new DstError(ErrorCode.TIMEOUT, `${this.url}: no answer to a ${opNames[slot.op] ?? 'request'} within ${requestTimeout} ms`))
          return
        }
      }
    }
    if (interval <= 0) return
    const quiet = now - this.lastHeard
    if (quiet > 3 * interval) {
      this.drop(new DstError(ErrorCode.SILENT, `${this.url}: peer silent for ${quiet} ms`))
      return
    }
    if (quiet >= interval && !this.pingOut) {
      this.pingOut = true
      this.ping().catch(noop)
    }
  }

  private protocolFailure (reason: string): void {
    this.ws.close(1002, reason.slice(0, 120))
    this.fail(new DstError(ErrorCode.PROTOCOL, `${this.url}: ${reason}`, Errno.EIO))
  }

  private fail (err: Error): void {
    if (this.closed !== null) return
    this.closed = err
    // Before any caller's buffer is given back: no later read may land in one.
    this.reader?.detach()
    if (this.pingTimer !== null) clearInterval(this.pingTimer)
    for (const slot of this.slots) if (slot.busy) { slot.seq++; this.inFlight--; slot.busy = false; slot.reject(err) }
    for (const q of this.queue.drain()) q.reject(err)
    this.onClose?.(err)
  }
}

function noop (): void {}

function slotWire (): { wire: Buffer, header: Buffer, request: Buffer } {
  const wire = Buffer.alloc(WIRE_HEAD + REQUEST_HEADER_SIZE + 14)
  writeClientFrameHeader(wire, 0, true, OP_BINARY, REQUEST_HEADER_SIZE)
  return { wire, header: wire.subarray(WIRE_HEAD, WIRE_HEAD + REQUEST_HEADER_SIZE), request: wire.subarray(0, WIRE_HEAD + REQUEST_HEADER_SIZE) }
}

const OP_CONTINUATION = 0x0
const OP_BINARY = 0x2
