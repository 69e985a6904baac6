// The node's one listening port (uWebSockets.js): the native block protocol as binary WebSocket at /EXPORT (its route
// and upgrade-time access control are export/native/transport.ts, attached here), and HTTP GET /status (JSON),
// /metrics (Prometheus text) and the admin POST /arrays/NAME/ACTION. With `tls` it is uWebSockets.js's SSL app, all
// of it over TLS; exports that require client certificates are served natively on a second, node:tls listener
// (export/native/cert-transport.ts), since uWebSockets.js cannot show a handler the peer's certificate.

import * as uws from 'uWebSockets.js'
import type { BufferPool } from '../core/pool'
import type { Hasher } from '../core/hasher'
import { allowed, type Cidr } from '../core/acl'
import { DstError, ErrorCode } from '../core/errors'
import type { SessionLimits } from '../../export/native/server'
import { type ServedExport } from '../../export/served'
import { attachNativeTransport, sameSecret, type NativeTransport } from '../../export/native/transport'
import { CertTransport } from '../../export/native/cert-transport'
import type { TlsMaterial } from '../core/tls'
import { formatDstUrl } from '../core/url'

/** uSockets' listen option (declared only as a type-level enum in the package, so spelled out here). */
const LIBUS_LISTEN_EXCLUSIVE_PORT = 1

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
  /** TLS on this listener (its files go to uWebSockets.js), and on the client-certificate listener. */
  tls?: TlsMaterial
  /** Where exports that require client certificates are served natively (node:tls). */
  clientCertListen?: { host: string, port: number }
}

export class Listener {
  private readonly app: uws.TemplatedApp
  private socket: uws.us_listen_socket | null = null
  /** The native protocol's WebSocket route and its connections (export/native/transport.ts). */
  private readonly native: NativeTransport
  private stopping = false
  port = 0

  /** The node:tls listener for exports that require client certificates, if configured. */
  private readonly certs: CertTransport | null = null

  constructor (private readonly options: ListenerOptions) {
    const t = options.tls
    // A client that presents a certificate not signed by `ca` is refused in the handshake (uWebSockets.js verifies
    // what it is shown); one that presents none is let in, which is why "require" lives on the other listener.
    this.app = t === undefined
      ? uws.App()
      : uws.SSLApp({
        cert_file_name: t.files.cert,
        key_file_name: t.files.key,
        ...(t.files.ca !== undefined ? { ca_file_name: t.files.ca } : {}),
        ...(t.passphrase !== undefined ? { passphrase: t.passphrase } : {}),
      })
    // What every native session needs, on either listener.
    const sessions = {
      pool: options.pool, limits: options.limits, exports: options.exports, log: options.log, nodeId: options.nodeId,
      hasher: options.hasher, isStopping: () => this.stopping,
    }
    if (t !== undefined && options.clientCertListen !== undefined) {
      this.certs = new CertTransport({
        host: options.clientCertListen.host,
        port: options.clientCertListen.port,
        tls: t,
        ...sessions,
      })
    }
    this.native = attachNativeTransport(this.app, {
      certElsewhere: name => this.certs === null ? 'set tls.clientCertListen on that node, or use NBD with STARTTLS' : formatDstUrl({ host: options.clientCertListen?.host ?? '', port: this.certs.port, export: name, tls: true }),
      ...sessions,
      failed: (res, what, err) => { this.failed(res, what, err) },
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
        res.writeStatus('404 Not Found').end('not found: try GET / (the web view), GET /status, GET /tree, GET /events, GET /metrics, POST /arrays/NAME/ACTION, or a WebSocket upgrade at /EXPORT\n')
      })
    })
  }

  listen (): Promise<void> {
    const { host, port } = this.options
    // Exclusive: by default uWebSockets.js sets SO_REUSEPORT on a fixed port, so a second node started on the port of
    // a running one would listen too and the kernel would deal connections to either at random (a client, or a mirror
    // leg reconnecting, could reach the wrong node). Exclusive, the second one is refused.
    const listen = this.app.listen.bind(this.app) as unknown as (host: string, port: number, options: number, cb: (token: uws.us_listen_socket | false) => void) => void
    return new Promise<void>((resolve, reject) => {
      listen(host, port, LIBUS_LISTEN_EXCLUSIVE_PORT, token => {
        if (token === false) { reject(new DstError(ErrorCode.LISTEN, `cannot listen on ${host}:${port} (address in use or not available)`)); return }
        this.socket = token
        this.port = uws.us_socket_local_port(token)
        resolve()
      })
    }).then(async () => {
      if (this.certs === null) return
      try {
        await this.certs.listen()
      } catch (err) {
        if (this.socket !== null) { uws.us_listen_socket_close(this.socket); this.socket = null }
        throw err
      }
    })
  }

  /** The port of the client-certificate listener (0 when there is none). */
  get certPort (): number { return this.certs?.port ?? 0 }

  /** Stops accepting, lets every session answer what it received, and closes them. */
  async stop (): Promise<void> {
    this.stopping = true
    if (this.socket !== null) { uws.us_listen_socket_close(this.socket); this.socket = null }
    await Promise.all([this.native.stop(), this.certs?.stop()])
  }

  /** Closes every connection (after stop() drained them). */
  closeAll (): void {
    this.native.closeAll()
    this.certs?.closeAll()
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
}

/** Largest JSON body the admin endpoints read. */
const MAX_ADMIN_BODY = 65536

/** A name from the URL path, percent-decoded, if it is a valid device name (as in the config); else null. */
function pathName (raw: string): string | null {
  let name: string
  try { name = decodeURIComponent(raw) } catch { return null }
  return /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name) ? name : null
}
