// The node's one listening port (uWebSockets.js): the native block protocol as binary WebSocket at /EXPORT, and HTTP
// GET /status (JSON) and /metrics (Prometheus text). Access control happens at the upgrade, before any data moves.

import * as uws from 'uWebSockets.js'
import { timingSafeEqual, createHash } from 'node:crypto'
import type { BufferPool } from '../core/pool'
import type { Hasher } from '../core/hasher'
import { allowed, type Cidr } from '../core/acl'
import { DstError, ErrorCode } from '../core/errors'
import { CloseCode, DEFAULT_MAX_QUEUED_BYTES, ExportSession, type SessionAccess, type SessionLimits } from '../../export/native/server'
import { type ServedExport } from '../../export/served'
import { CLOSE_WRITER_DONE, REPLY_HEADER_SIZE, REQUEST_HEADER_SIZE } from '../../export/native/codec'

/** uSockets' listen option (declared only as a type-level enum in the package, so spelled out here). */
const LIBUS_LISTEN_EXCLUSIVE_PORT = 1

interface UserData { session: ExportSession | null, exp: ServedExport, access: SessionAccess, drain: (() => void) | null, address: string }

export interface ListenerOptions {
  host: string
  port: number
  pool: BufferPool
  limits: SessionLimits
  exports: Map<string, ServedExport>
  status: () => unknown
  metrics: () => string
  log: (message: string) => void
  /** Who may use the admin endpoints (POST /arrays/NAME/ACTION), and what they do. */
  admin: { allow: Cidr[], token?: string }
  onAdmin: (array: string, action: string, body: Record<string, unknown>) => Promise<unknown>
  /** This node's identity: a client that presents it (x-dst-node) is this node itself, and is refused (508). */
  nodeId?: string
  /** The node's hash workers: sessions compute and check wire digests on them. */
  hasher: Hasher
  /** More HTTP routes (the watching pages: node/daemon/web/routes.ts), each handler run inside `guard`. */
  routes?: (app: uws.TemplatedApp, guard: (res: uws.HttpResponse, what: string, fn: () => void) => void) => void
}

export class Listener {
  private readonly app: uws.TemplatedApp
  private socket: uws.us_listen_socket | null = null
  private readonly sessions = new Set<uws.WebSocket<UserData>>()
  private stopping = false
  port = 0

  constructor (private readonly options: ListenerOptions) {
    const { pool } = options
    const limits: SessionLimits = { ...options.limits, maxQueuedBytes: options.limits.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES }
    const queuedBytes = limits.maxQueuedBytes as number
    this.app = uws.App()
    this.app.ws<UserData>('/*', {
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
        if (this.stopping) session.stopping = true
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
    // A handler that throws would abort the whole process (uWebSockets.js refuses a handler that returns without
    // answering): every HTTP handler runs inside `guard`, so a bug costs that request a 500 and a log line, never the node.
    this.app.get('/status', res => {
      this.guard(res, 'GET /status', () => this.report(res, 'application/json', () => JSON.stringify(this.options.status(), null, 2) + '\n'))
    })
    this.app.get('/metrics', res => {
      this.guard(res, 'GET /metrics', () => this.report(res, 'text/plain; version=0.0.4', () => this.options.metrics()))
    })
    this.app.post('/arrays/:name/:action', (res, req) => { this.guard(res, 'POST /arrays', () => this.admin(res, req)) })
    options.routes?.(this.app, (res, what, fn) => this.guard(res, what, fn))
    this.app.any('/*', res => {
      this.guard(res, 'a request', () => {
        res.writeStatus('404 Not Found').end('not found: try GET /status, GET /metrics, POST /arrays/NAME/ACTION, or a WebSocket upgrade at /EXPORT\n')
      })
    })
  }

  listen (): Promise<void> {
    const { host, port } = this.options
    // Exclusive: by default uWebSockets.js sets SO_REUSEPORT on a fixed port, so a second node started on the port of
    // a running one would listen too and the kernel would deal connections to either at random (a client, or a mirror
    // leg reconnecting, could reach the wrong node). Exclusive, the second one is refused.
    const listen = this.app.listen.bind(this.app) as unknown as (host: string, port: number, options: number, cb: (token: uws.us_listen_socket | false) => void) => void
    return new Promise((resolve, reject) => {
      listen(host, port, LIBUS_LISTEN_EXCLUSIVE_PORT, token => {
        if (token === false) { reject(new DstError(ErrorCode.LISTEN, `cannot listen on ${host}:${port} (address in use or not available)`)); return }
        this.socket = token
        this.port = uws.us_socket_local_port(token)
        resolve()
      })
    })
  }

  /** Stops accepting, lets every session answer what it received, and closes them. */
  async stop (): Promise<void> {
    this.stopping = true
    if (this.socket !== null) { uws.us_listen_socket_close(this.socket); this.socket = null }
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

  private report (res: uws.HttpResponse, type: string, body: () => string): void {
    let text: string
    try {
      text = body()
    } catch (err) {
      this.options.log(`internal error building a report: ${(err as Error).stack ?? String(err)}`)
      res.writeStatus('500 Internal Server Error').writeHeader('content-type', 'text/plain').end(`internal error: ${(err as Error).message}\n`)
      return
    }
    res.writeHeader('content-type', type).end(text)
  }

  /** A bug must cost one connection, never the node: log it and close that connection (1011). */
  private internalError (ws: uws.WebSocket<UserData>, session: ExportSession, err: unknown): void {
    this.options.log(`internal error on a connection to '${ws.getUserData().exp.name}': ${(err as Error).stack ?? String(err)}`)
    session.onClose()
    ws.end(CloseCode.INTERNAL, 'internal error')
  }

  /**
   * Runs an HTTP handler so that nothing it throws reaches uWebSockets.js (which would abort the process): the error is
   * logged with its stack and the request answered 500, if it was not answered already.
   */
  private guard (res: uws.HttpResponse, what: string, fn: () => void): void {
    try {
      fn()
    } catch (err) {
      this.failed(res, what, err)
    }
  }

  /** Answers 500 for a handler that failed (once; a response already ended or aborted is left alone). */
  private failed (res: uws.HttpResponse, what: string, err: unknown): void {
    this.options.log(`internal error in ${what}: ${(err as Error)?.stack ?? String(err)}`)
    try {
      res.cork(() => {
        res.writeStatus('500 Internal Server Error').writeHeader('content-type', 'text/plain').end(`internal error: ${(err as Error)?.message ?? String(err)}\n`)
      })
    } catch {
      // Already answered, or the client went away: nothing left to tell it.
    }
  }

  /**
   * POST /arrays/NAME/ACTION with a JSON body: live array changes, for the admin allow list and token only. Who asks
   * is checked before anything else of the request is looked at; then the names in the path, then the body.
   */
  private admin (res: uws.HttpResponse, req: uws.HttpRequest): void {
    // Everything needed from `req` is read now: it is valid only during this call.
    const rawArray = req.getParameter(0) ?? ''
    const rawAction = req.getParameter(1) ?? ''
    const auth = req.getHeader('authorization')
    const address = Buffer.from(res.getRemoteAddressAsText()).toString()
    let done = false
    res.onAborted(() => { done = true })
    const answer = (status: string, body: unknown): void => {
      if (done) return
      done = true
      let text: string
      try {
        text = JSON.stringify(body, null, 2) + '\n'
      } catch (err) {
        done = false
        this.failed(res, 'POST /arrays (the answer)', err)
        done = true
        return
      }
      res.cork(() => { res.writeStatus(status).writeHeader('content-type', 'application/json').end(text) })
    }
    const { allow, token } = this.options.admin
    if (!allowed(allow, address)) { answer('403 Forbidden', { error: `address ${address} may not change arrays on this node` }); return }
    if (token !== undefined && !(auth.startsWith('Bearer ') && sameSecret(auth.slice(7), token))) {
      answer('401 Unauthorized', { error: 'this node needs the admin token to change arrays' })
      return
    }
    const array = pathName(rawArray)
    if (array === null) { answer('400 Bad Request', { error: `bad array name in the path: ${JSON.stringify(rawArray.slice(0, 80))} (expected letters, digits, '.', '_' or '-', at most 64)` }); return }
    if (!/^[a-z]{1,32}$/.test(rawAction)) { answer('400 Bad Request', { error: `bad action in the path: ${JSON.stringify(rawAction.slice(0, 80))} (expected a word such as add, remove, split or verify)` }); return }
    const action = rawAction
    const chunks: Buffer[] = []
    let size = 0
    res.onData((chunk, isLast) => {
      try {
        if (done) return
        size += chunk.byteLength
        if (size > MAX_ADMIN_BODY) {
          done = true
          res.cork(() => res.writeStatus('413 Payload Too Large').writeHeader('content-type', 'text/plain').end(`request body larger than ${MAX_ADMIN_BODY} bytes\n`))
          return
        }
        chunks.push(Buffer.from(chunk.slice(0)))
        if (!isLast) return
        let body: Record<string, unknown>
        try {
          const text = Buffer.concat(chunks).toString()
          body = text.trim() === '' ? {} : JSON.parse(text) as Record<string, unknown>
          if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new DstError(ErrorCode.USAGE, 'expected a JSON object')
        } catch (err) {
          answer('400 Bad Request', { error: `bad request body: ${(err as Error).message}` })
          return
        }
        // Started in a promise turn, so that a handler that throws at once is caught like one that rejects.
        Promise.resolve().then(() => this.options.onAdmin(array, action, body)).then(result => { answer('200 OK', result) }, (err: Error & { code?: string }) => {
          this.options.log(`array ${action} on '${array}' refused: ${err?.message ?? String(err)}`)
          answer(err?.code === ErrorCode.NOTFOUND ? '404 Not Found' : err?.code === ErrorCode.USAGE ? '400 Bad Request' : '409 Conflict', { error: err?.message ?? String(err), code: err?.code })
        }).catch(err => {
          if (!done) { this.failed(res, 'POST /arrays', err); done = true }
        })
      } catch (err) {
        if (!done) { this.failed(res, 'POST /arrays (the body)', err); done = true }
      }
    })
  }

  private upgrade (res: uws.HttpResponse, req: uws.HttpRequest, context: uws.us_socket_context_t): void {
    try {
      this.tryUpgrade(res, req, context)
    } catch (err) {
      this.failed(res, `the upgrade to ${req.getUrl()}`, err)
    }
  }

  private tryUpgrade (res: uws.HttpResponse, req: uws.HttpRequest, context: uws.us_socket_context_t): void {
    const url = req.getUrl()
    const key = req.getHeader('sec-websocket-key')
    const protocol = req.getHeader('sec-websocket-protocol')
    const extensions = req.getHeader('sec-websocket-extensions')
    const auth = req.getHeader('authorization')
    const writer = req.getHeader('x-dst-writer')
    const writerName = req.getHeader('x-dst-writer-name')
    const peerNode = req.getHeader('x-dst-node')
    const readOnlyAsked = req.getHeader('x-dst-access') === 'ro'
    const address = Buffer.from(res.getRemoteAddressAsText()).toString()
    const refuse = (status: string, reason: string, exp?: ServedExport, headers: Record<string, string> = {}): void => {
      if (exp !== undefined) exp.metrics.refused++
      this.options.log(`refused ${address} for ${url}: ${reason}`)
      res.writeStatus(status).writeHeader('content-type', 'text/plain')
      for (const [k, v] of Object.entries(headers)) res.writeHeader(k, v)
      res.end(reason + '\n')
    }
    let name: string
    try { name = decodeURIComponent(url.slice(1)) } catch { refuse('400 Bad Request', 'bad export name in the URL'); return }
    const exp = this.options.exports.get(name)
    if (exp === undefined) { refuse('404 Not Found', `no export named '${name}' on this node`); return }
    if (!allowed(exp.allow, address)) { refuse('403 Forbidden', `address ${address} is not in the allow list of export '${name}'`, exp); return }
    if (exp.token !== undefined) {
      const given = auth.startsWith('Bearer ') ? auth.slice(7) : ''
      if (given === '') { refuse('401 Unauthorized', `export '${name}' needs a token`, exp); return }
      if (!sameSecret(given, exp.token)) { refuse('401 Unauthorized', `wrong token for export '${name}'`, exp); return }
    }
    if (this.stopping) { refuse('503 Service Unavailable', 'node is shutting down', exp); return }
    if (exp.device.state === 'closed' || exp.device.state === 'closing') { refuse('503 Service Unavailable', `device of export '${name}' is ${exp.device.state}`, exp); return }
    if (this.options.nodeId !== undefined && peerNode === this.options.nodeId) {
      refuse('508 Loop Detected', `export '${name}' is on the node that asks for it: a remote device cannot point at its own node`, exp)
      return
    }
    const access: SessionAccess = { readOnly: readOnlyAsked || exp.readOnly || !exp.device.writable, owner: null, token: 0 }
    if (!access.readOnly && exp.shared !== true && writer !== '') {
      if (!/^[A-Za-z0-9._:-]{1,128}$/.test(writer)) { refuse('400 Bad Request', 'bad x-dst-writer id', exp); return }
      const lease = exp.lease.acquire(writer, { name: /^[A-Za-z0-9._-]{1,64}$/.test(writerName) ? writerName : '', address })
      if (!lease.ok) {
        // How long until it expires (the holder has left): a remote device opening waits that long instead of failing.
        refuse('409 Conflict', `export '${name}' is leased for writing: ${lease.reason}`, exp, lease.expiresIn !== null ? { 'x-dst-lease-expires-in': String(lease.expiresIn) } : {})
        return
      }
      access.owner = writer
      access.token = lease.token
    } else if (!access.readOnly && exp.shared !== true && exp.lease.owner !== null) {
      refuse('409 Conflict', `export '${name}' is leased for writing by ${exp.lease.holderText()}; connect read-only or mark the export "shared"`, exp)
      return
    }
    res.upgrade<UserData>({ session: null, exp, access, drain: null, address }, key, protocol, extensions, context)
  }
}

/** Largest JSON body the admin endpoints read. */
const MAX_ADMIN_BODY = 65536

/** A name from the URL path, percent-decoded, if it is a valid device name (as in the config); else null. */
function pathName (raw: string): string | null {
  let name: string
  try { name = decodeURIComponent(raw) } catch { return null }
  return /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name) ? name : null
}

function sameSecret (a: string, b: string): boolean {
  const ha = createHash('sha256').update(a).digest()
  const hb = createHash('sha256').update(b).digest()
  return timingSafeEqual(ha, hb)
}
