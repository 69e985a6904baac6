// The native protocol's transport: its binary WebSocket route at /EXPORT on the node's uWebSockets.js app (the
// upgrade, where access is checked before any data moves, and the open/message/drain/close handlers that drive one
// ExportSession per connection). The daemon's listener owns the app and its HTTP routes and attaches this to it, as
// the NBD server owns its own listener (export/nbd/server.ts).

import * as uws from 'uWebSockets.js'
import { timingSafeEqual, createHash } from 'node:crypto'
import type { BufferPool } from '../../node/core/pool'
import type { Hasher } from '../../node/core/hasher'
import { allowed } from '../../node/core/acl'
import { certRefusal, type PeerCertificate } from '../../node/core/tls'
import { CloseCode, DEFAULT_MAX_QUEUED_BYTES, ExportSession, type SessionAccess, type SessionLimits } from './server'
import type { ServedExport } from '../served'
import { CLOSE_WRITER_DONE, REPLY_HEADER_SIZE, REQUEST_HEADER_SIZE, agreedVersion } from './codec'

interface UserData { session: ExportSession | null, exp: ServedExport, access: SessionAccess, drain: (() => void) | null, address: string }

export interface NativeTransportOptions {
  pool: BufferPool
  limits: SessionLimits
  exports: Map<string, ServedExport>
  log: (message: string) => void
  /** This node's identity: a client that presents it (x-dst-node) is this node itself, and is refused (508). */
  nodeId?: string
  /** The node's hash workers: sessions compute and check wire digests on them. */
  hasher: Hasher
  /** The node is stopping: upgrades are refused (503) and new sessions start stopping. */
  isStopping: () => boolean
  /** Answers 500 for a handler that threw (the listener's one way to do it; logged there). */
  failed: (res: uws.HttpResponse, what: string, err: unknown) => void
  /** Where an export that requires a client certificate is served instead (the node:tls listener's url), for refusals. */
  certElsewhere?: (exportName: string) => string
}

/** The native protocol's connections on one app: attached once, then stopped and closed with the node. */
export class NativeTransport {
  private readonly sessions = new Set<uws.WebSocket<UserData>>()

  constructor (app: uws.TemplatedApp, private readonly options: NativeTransportOptions) {
    const { pool } = options
    const limits: SessionLimits = { ...options.limits, maxQueuedBytes: options.limits.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES }
    const queuedBytes = limits.maxQueuedBytes as number
    app.ws<UserData>('/*', {
      compression: uws.DISABLED,
      // A WRITE above maxRequest still fits, so it can be answered EOVERFLOW instead of cutting the connection.
      maxPayloadLength: 4 * limits.maxRequest + 64 * REQUEST_HEADER_SIZE,
      // What uWebSockets.js may buffer for one connection. Above it, send() drops the message, so the session never
      // sends once maxQueuedBytes are buffered and holds its replies until `drain`; the margin is for the one message
      // sent last below that mark (a READ reply of maxRequest with its digest, or the batch of header-only replies).
      maxBackpressure: queuedBytes + limits.maxRequest + 2 * limits.maxInFlight * REPLY_HEADER_SIZE + 256 * 1024,
      idleTimeout: Math.max(16, Math.ceil((limits.pingInterval * 4) / 1000)),
      sendPingsAutomatically: true,
      upgrade: (res, req, context) => this.upgrade(res, req, context),
      open: ws => {
        const data = ws.getUserData()
        let session: ExportSession
        try {
          session = new ExportSession(data.exp, pool, limits, {
            send: message => { ws.send(message, true, false) },
            sendParts: (first, last) => { ws.sendFirstFragment(first, true, false); ws.sendLastFragment(last, false) },
            cork: fn => { ws.cork(fn) },
            end: (code, reason) => { ws.end(code, reason) },
            bufferedAmount: () => ws.getBufferedAmount(),
            onDrain: fn => { data.drain = fn },
          }, data.access, this.options.hasher)
        } catch (err) {
          this.options.log(`internal error opening a connection to '${data.exp.name}': ${(err as Error)?.stack ?? String(err)}`)
          ws.end(CloseCode.INTERNAL, 'internal error')
          return
        }
        session.onPolicyClose = reason => this.options.log(`closing ${data.address}'s connection to '${data.exp.name}': ${reason}`)
        data.session = session
        this.sessions.add(ws)
        if (this.options.isStopping()) session.stopping = true
        try {
          ws.send(session.handshake(), true, false)
        } catch (err) {
          this.internalError(ws, session, err)
        }
      },
      drain: ws => {
        const data = ws.getUserData()
        if (data.drain === null || data.session === null) return
        try {
          data.drain()
        } catch (err) {
          this.internalError(ws, data.session, err)
        }
      },
      message: (ws, message, isBinary) => {
        const session = ws.getUserData().session
        if (session === null) return
        if (!isBinary) {
          ws.getUserData().exp.metrics.protocolErrors++
          ws.end(CloseCode.BAD_DATA, 'text messages are not part of the protocol')
          session.onClose()
          return
        }
        try {
          session.onMessage(Buffer.from(message))
        } catch (err) {
          this.internalError(ws, session, err)
        }
      },
      close: (ws, code) => {
        this.sessions.delete(ws)
        try {
          const data = ws.getUserData()
          if (code === CLOSE_WRITER_DONE && data.access.owner !== null) data.exp.lease.relinquish(data.access.owner)
          data.session?.onClose()
        } catch (err) {
          this.options.log(`internal error closing a connection: ${(err as Error)?.stack ?? String(err)}`)
        }
      },
    })
  }

  /** Marks every session stopping (new requests get ESHUTDOWN) and resolves once each answered what it received. */
  async stop (): Promise<void> {
    const sessions = [...this.sessions].map(ws => ws.getUserData().session).filter((s): s is ExportSession => s !== null)
    for (const s of sessions) s.stopping = true
    await Promise.all(sessions.map(s => s.drain()))
  }

  /** Closes every connection (after stop() drained them). */
  closeAll (): void {
    for (const ws of [...this.sessions]) {
      ws.end(CloseCode.GOING_AWAY, 'node shutting down')
    }
    this.sessions.clear()
  }

  /** A bug must cost one connection, never the node: log it and close that connection (1011). */
  private internalError (ws: uws.WebSocket<UserData>, session: ExportSession, err: unknown): void {
    this.options.log(`internal error on a connection to '${ws.getUserData().exp.name}': ${(err as Error).stack ?? String(err)}`)
    session.onClose()
    ws.end(CloseCode.INTERNAL, 'internal error')
  }

  private upgrade (res: uws.HttpResponse, req: uws.HttpRequest, context: uws.us_socket_context_t): void {
    try {
      this.tryUpgrade(res, req, context)
    } catch (err) {
      this.options.failed(res, `the upgrade to ${req.getUrl()}`, err)
    }
  }

  private tryUpgrade (res: uws.HttpResponse, req: uws.HttpRequest, context: uws.us_socket_context_t): void {
    const url = req.getUrl()
    const key = req.getHeader('sec-websocket-key')
    const protocol = req.getHeader('sec-websocket-protocol')
    const extensions = req.getHeader('sec-websocket-extensions')
    const address = Buffer.from(res.getRemoteAddressAsText()).toString()
    // uWebSockets.js shows no peer certificate: an export that requires one is refused here (peer undefined).
    const verdict = admitUpgrade(this.options, {
      url,
      address,
      auth: req.getHeader('authorization'),
      writer: req.getHeader('x-dst-writer'),
      writerName: req.getHeader('x-dst-writer-name'),
      peerNode: req.getHeader('x-dst-node'),
      readOnlyAsked: req.getHeader('x-dst-access') === 'ro',
      version: req.getHeader('x-dst-version'),
    })
    if (!verdict.ok) {
      res.writeStatus(verdict.status).writeHeader('content-type', 'text/plain')
      for (const [k, v] of Object.entries(verdict.headers)) res.writeHeader(k, v)
      res.end(verdict.reason + '\n')
      return
    }
    res.upgrade<UserData>({ session: null, exp: verdict.exp, access: verdict.access, drain: null, address }, key, protocol, extensions, context)
  }
}

/** What an upgrade request asks for, as either listener reads it. */
export interface UpgradeRequest {
  url: string
  address: string
  auth: string
  writer: string
  writerName: string
  peerNode: string
  readOnlyAsked: boolean
  /** The client's x-dst-version header ('' when absent): the protocol version the session speaks. */
  version: string
  /** The client's certificate, as a node:tls listener saw it; undefined on uWebSockets.js, which cannot tell. */
  peer?: PeerCertificate
}

export type UpgradeVerdict =
  | { ok: true, exp: ServedExport, access: SessionAccess }
  | { ok: false, status: string, reason: string, headers: Record<string, string> }

/**
 * The one access check of an upgrade, for both listeners: the export, the allow list, the token, the client
 * certificate, the node stopping, a loop to this node, and the write lease (taken here when granted). A refusal is
 * logged and counted.
 */
export function admitUpgrade (options: Pick<NativeTransportOptions, 'exports' | 'log' | 'nodeId' | 'isStopping' | 'certElsewhere'>, r: UpgradeRequest): UpgradeVerdict {
  const { url, address, auth, writer, writerName, peerNode, readOnlyAsked } = r
  const refuse = (status: string, reason: string, exp?: ServedExport, headers: Record<string, string> = {}): UpgradeVerdict => {
    if (exp !== undefined) exp.metrics.refused++
    options.log(`refused ${address} for ${url}: ${reason}`)
    return { ok: false, status, reason, headers }
  }
  let name: string
  try { name = decodeURIComponent(url.slice(1)) } catch { return refuse('400 Bad Request', 'bad export name in the URL') }
  const exp = options.exports.get(name)
  if (exp === undefined) return refuse('404 Not Found', `no export named '${name}' on this node`)
  if (!allowed(exp.allow, address)) return refuse('403 Forbidden', `address ${address} is not in the allow list of export '${name}'`, exp)
  const certProblem = certRefusal(exp, r.peer, name, r.peer === undefined ? options.certElsewhere?.(name) : '')
  if (certProblem !== null) return refuse('403 Forbidden', certProblem, exp)
  if (exp.token !== undefined) {
    const given = auth.startsWith('Bearer ') ? auth.slice(7) : ''
    if (given === '') return refuse('401 Unauthorized', `export '${name}' needs a token`, exp)
    if (!sameSecret(given, exp.token)) return refuse('401 Unauthorized', `wrong token for export '${name}'`, exp)
  }
  if (options.isStopping()) return refuse('503 Service Unavailable', 'node is shutting down', exp)
  if (exp.device.state === 'closed' || exp.device.state === 'closing') return refuse('503 Service Unavailable', `device of export '${name}' is ${exp.device.state}`, exp)
  if (options.nodeId !== undefined && peerNode === options.nodeId) {
    return refuse('508 Loop Detected', `export '${name}' is on the node that asks for it: a remote device cannot point at its own node`, exp)
  }
  const access: SessionAccess = { readOnly: readOnlyAsked || exp.readOnly || !exp.device.writable, owner: null, token: 0, version: agreedVersion(r.version) }
  if (!access.readOnly && exp.shared !== true && writer !== '') {
    if (!/^[A-Za-z0-9._:-]{1,128}$/.test(writer)) return refuse('400 Bad Request', 'bad x-dst-writer id', exp)
    const lease = exp.lease.acquire(writer, { name: /^[A-Za-z0-9._-]{1,64}$/.test(writerName) ? writerName : '', address })
    if (!lease.ok) {
      // How long until it expires (the holder has left): a remote device opening waits that long instead of failing.
      return refuse('409 Conflict', `export '${name}' is leased for writing: ${lease.reason}`, exp, lease.expiresIn !== null ? { 'x-dst-lease-expires-in': String(lease.expiresIn) } : {})
    }
    access.owner = writer
    access.token = lease.token
  } else if (!access.readOnly && exp.shared !== true && exp.lease.owner !== null) {
    return refuse('409 Conflict', `export '${name}' is leased for writing by ${exp.lease.holderText()}; connect read-only or mark the export "shared"`, exp)
  }
  return { ok: true, exp, access }
}

/** Attaches the native protocol's WebSocket route to `app` (before its catch-all HTTP route). */
export function attachNativeTransport (app: uws.TemplatedApp, options: NativeTransportOptions): NativeTransport {
  return new NativeTransport(app, options)
}

/** Compares two secrets in constant time (whatever their lengths). */
export function sameSecret (a: string, b: string): boolean {
  const ha = createHash('sha256').update(a).digest()
  const hb = createHash('sha256').update(b).digest()
  return timingSafeEqual(ha, hb)
}
