// The native protocol on a node:tls listener, for exports that require client certificates. uWebSockets.js (the
// node's main listener) verifies a certificate a client presents against its CA, but lets a client that presents none
// in, and shows the handler nothing of the certificate, so neither "require" nor `allowSubjects` can be checked there
// (README, "TLS"). Here Node's TLS asks every client for a certificate, and the upgrade sees Node's verdict and the
// subject; the same access check as the main listener (admitUpgrade) decides, then `ws` carries the session.
//
// What this costs against uWebSockets.js: each reply is copied once before it is written (the session gives its pool
// buffer back as soon as send returns, and a Node stream may still hold the view), and each request message comes as
// a Buffer of ws's. Measured in README, "Performance", "TLS".

import * as https from 'node:https'
import type * as net from 'node:net'
import type * as tls from 'node:tls'
import { WebSocketServer, type WebSocket } from 'ws'
import { DstError, ErrorCode } from '../../node/core/errors'
import { peerOf, type TlsMaterial } from '../../node/core/tls'
import { CloseCode, DEFAULT_MAX_QUEUED_BYTES, ExportSession, type SessionLimits } from './server'
import type { ServedExport } from '../served'
import { CLOSE_WRITER_DONE, REQUEST_HEADER_SIZE } from './codec'
import { admitUpgrade, type NativeTransportOptions } from './transport'

/** The main transport's session options (see NativeTransportOptions), and where and with what this one listens. */
export interface CertTransportOptions extends Pick<NativeTransportOptions, 'pool' | 'limits' | 'exports' | 'log' | 'nodeId' | 'hasher' | 'isStopping'> {
  host: string
  port: number
  tls: TlsMaterial
}

export class CertTransport {
  private readonly server: https.Server
  private readonly wss: WebSocketServer
  private readonly sessions = new Map<WebSocket, ExportSession>()
  port = 0

  constructor (private readonly options: CertTransportOptions) {
    const t = options.tls
    this.server = https.createServer({
      cert: t.cert,
      key: t.key,
      ...(t.passphrase !== undefined ? { passphrase: t.passphrase } : {}),
      ca: t.ca,
      // Every client is asked for a certificate; the verdict is read at the upgrade, so that a refusal is an HTTP
      // answer naming the reason rather than a bare TLS alert.
      requestCert: true,
      rejectUnauthorized: false,
    }, (_req, res) => {
      res.writeHead(404, { 'content-type': 'text/plain' })
      res.end('this listener serves the native protocol only (WebSocket upgrades at /EXPORT, with a client certificate); /status and /metrics are on the node\'s listen address\n')
    })
    this.server.on('tlsClientError', (err: NodeJS.ErrnoException, socket: tls.TLSSocket) => {
      options.log(`tls: ${socket.remoteAddress ?? '?'}: handshake failed: ${err.code ?? err.message}`)
    })
    this.wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 4 * options.limits.maxRequest + 64 * REQUEST_HEADER_SIZE })
    this.server.on('upgrade', (req, socket: net.Socket, head: Buffer) => {
      try {
        this.upgrade(req, socket as tls.TLSSocket, head)
      } catch (err) {
        options.log(`internal error in an upgrade on the client-certificate listener: ${(err as Error).stack ?? String(err)}`)
        socket.destroy()
      }
    })
  }

  listen (): Promise<void> {
    const { host, port } = this.options
    return new Promise((resolve, reject) => {
      this.server.once('error', err => reject(new DstError(ErrorCode.LISTEN, `cannot listen (client certificates) on ${host}:${port}: ${err.message}`)))
      this.server.listen({ host, port, exclusive: true }, () => {
        this.port = (this.server.address() as net.AddressInfo).port
        resolve()
      })
    })
  }

  async stop (): Promise<void> {
    this.server.close()
    const sessions = [...this.sessions.values()]
    for (const s of sessions) s.stopping = true
    await Promise.all(sessions.map(s => s.drain()))
  }

  closeAll (): void {
    for (const ws of [...this.sessions.keys()]) ws.close(CloseCode.GOING_AWAY, 'node shutting down')
    this.sessions.clear()
    this.server.closeAllConnections()
  }

  private upgrade (req: import('node:http').IncomingMessage, socket: tls.TLSSocket, head: Buffer): void {
    const header = (k: string): string => { const v = req.headers[k]; return Array.isArray(v) ? v[0] : v ?? '' }
    const address = socket.remoteAddress ?? ''
    const verdict = admitUpgrade(this.options, {
      url: req.url ?? '/',
      address: address.startsWith('::ffff:') ? address.slice(7) : address,
      auth: header('authorization'),
      writer: header('x-dst-writer'),
      writerName: header('x-dst-writer-name'),
      peerNode: header('x-dst-node'),
      readOnlyAsked: header('x-dst-access') === 'ro',
      version: header('x-dst-version'),
      peer: peerOf(socket),
    })
    if (!verdict.ok) {
      const body = verdict.reason + '\n'
      const extra = Object.entries(verdict.headers).map(([k, v]) => `${k}: ${v}\r\n`).join('')
      socket.end(`HTTP/1.1 ${verdict.status}\r\ncontent-type: text/plain\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n${extra}\r\n${body}`)
      return
    }
    const { exp, access } = verdict
    this.wss.handleUpgrade(req, socket, head, ws => { this.open(ws, socket, exp, access) })
  }

  private open (ws: WebSocket, socket: tls.TLSSocket, exp: ServedExport, access: import('./server').SessionAccess): void {
    const limits: SessionLimits = { ...this.options.limits, maxQueuedBytes: this.options.limits.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES }
    let drain: (() => void) | null = null
    const session = new ExportSession(exp, this.options.pool, limits, {
      // Copied: the session reuses the view (its pool buffer) as soon as send returns.
      send: message => { ws.send(Buffer.from(message), { binary: true }) },
      sendParts: (first, last) => {
        ws.send(Buffer.from(first), { binary: true, fin: false })
        ws.send(Buffer.from(last), { binary: true, fin: true })
      },
      cork: fn => { socket.cork(); try { fn() } finally { socket.uncork() } },
      end: (code, reason) => { ws.close(code, reason) },
      bufferedAmount: () => ws.bufferedAmount,
      onDrain: fn => { drain = fn },
    }, access, this.options.hasher)
    session.onPolicyClose = reason => this.options.log(`closing ${socket.remoteAddress ?? '?'}'s connection to '${exp.name}': ${reason}`)
    this.sessions.set(ws, session)
    if (this.options.isStopping()) session.stopping = true
    socket.on('drain', () => { try { drain?.() } catch (err) { this.internalError(ws, session, err) } })
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) {
        exp.metrics.protocolErrors++
        ws.close(CloseCode.BAD_DATA, 'text messages are not part of the protocol')
        session.onClose()
        return
      }
      try { session.onMessage(data) } catch (err) { this.internalError(ws, session, err) }
    })
    ws.on('error', () => { ws.terminate() })
    ws.on('close', (code: number) => {
      this.sessions.delete(ws)
      try {
        if (code === CLOSE_WRITER_DONE && access.owner !== null) exp.lease.relinquish(access.owner)
        session.onClose()
      } catch (err) {
        this.options.log(`internal error closing a connection: ${(err as Error)?.stack ?? String(err)}`)
      }
    })
    try {
      ws.send(Buffer.from(session.handshake()), { binary: true })
    } catch (err) {
      this.internalError(ws, session, err)
    }
  }

  private internalError (ws: WebSocket, session: ExportSession, err: unknown): void {
    this.options.log(`internal error on a client-certificate connection: ${(err as Error).stack ?? String(err)}`)
    session.onClose()
    ws.close(CloseCode.INTERNAL, 'internal error')
  }
}
