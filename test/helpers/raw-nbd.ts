// NBD from a test's side, written from doc/proto.md: a small well-behaved client (fixed newstyle, EXPORT_NAME, simple
// replies matched by handle, many requests in flight) that times each request, and a hostile one that sends what it
// is given and never reads a byte of what comes back.

import * as net from 'node:net'

export const NBD_CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, WRITE_ZEROES: 6 } as const

/** A transmission-phase request header (handles below 2^32, offsets below 2^53). */
export function nbdRequest (type: number, handle: number, offset: number, length: number, flags = 0): Buffer {
  const h = Buffer.alloc(28)
  h.writeUInt32BE(0x25609513, 0)
  h.writeUInt16BE(flags, 4)
  h.writeUInt16BE(type, 6)
  h.writeUInt32BE(handle, 12)
  h.writeUInt32BE(Math.floor(offset / 2 ** 32), 16)
  h.writeUInt32BE(offset >>> 0, 20)
  h.writeUInt32BE(length, 24)
  return h
}

/** An option as a client sends it: IHAVEOPT, the option, its length, its data. */
export function nbdOption (option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(16)
  Buffer.from('IHAVEOPT').copy(head, 0)
  head.writeUInt32BE(option, 8)
  head.writeUInt32BE(data.length, 12)
  return Buffer.concat([head, data])
}

/** Client flags (FIXED_NEWSTYLE | NO_ZEROES) and NBD_OPT_EXPORT_NAME: after it, the server's reply is 18 + 10 bytes. */
export function nbdHandshake (name: string): Buffer {
  return Buffer.concat([Buffer.from([0, 0, 0, 3]), nbdOption(1, Buffer.from(name))])
}

interface Pending { length: number, started: number, resolve: (r: { errno: number, data: Buffer, ms: number }) => void }

export class NbdTestClient {
  private buf = Buffer.alloc(0)
  private handshaken = false
  private next = 1
  private readonly pending = new Map<number, Pending>()
  private ready: (() => void) | null = null
  size = 0
  closed = false

  private constructor (private readonly socket: net.Socket) {
    socket.on('data', c => { this.buf = this.buf.length === 0 ? c : Buffer.concat([this.buf, c]); this.parse() })
    socket.on('close', () => {
      this.closed = true
      for (const p of this.pending.values()) p.resolve({ errno: -1, data: Buffer.alloc(0), ms: Date.now() - p.started })
      this.pending.clear()
    })
    socket.on('error', () => {})
  }

  static connect (port: number, name: string, timeout = 10000): Promise<NbdTestClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1')
      const c = new NbdTestClient(socket)
      const timer = setTimeout(() => { socket.destroy(); reject(new Error(`no NBD handshake from ${name} within ${timeout} ms`)) }, timeout)
      c.ready = () => { clearTimeout(timer); resolve(c) }
      socket.on('close', () => { clearTimeout(timer); reject(new Error('the server closed the connection during the handshake')) })
      socket.write(nbdHandshake(name))
    })
  }

  private parse (): void {
    if (!this.handshaken) {
      if (this.buf.length < 28) return
      this.size = this.buf.readUInt32BE(18) * 2 ** 32 + this.buf.readUInt32BE(22)
      this.buf = this.buf.subarray(28)
      this.handshaken = true
      this.ready?.()
    }
    while (this.buf.length >= 16) {
      if (this.buf.readUInt32BE(0) !== 0x67446698) { this.socket.destroy(); return }
      const errno = this.buf.readUInt32BE(4)
      const handle = this.buf.readUInt32BE(12)
      const p = this.pending.get(handle)
      const length = errno === 0 && p !== undefined ? p.length : 0
      if (this.buf.length < 16 + length) return
      this.pending.delete(handle)
      p?.resolve({ errno, data: Buffer.from(this.buf.subarray(16, 16 + length)), ms: Date.now() - (p?.started ?? 0) })
      this.buf = this.buf.subarray(16 + length)
    }
  }

  /** One request; resolves with its errno (-1: the connection closed), the data of a READ and how long it took. */
  request (type: number, offset: number, length: number, payload?: Buffer): Promise<{ errno: number, data: Buffer, ms: number }> {
    const handle = this.next++
    return new Promise(resolve => {
      if (this.closed) { resolve({ errno: -1, data: Buffer.alloc(0), ms: 0 }); return }
      this.pending.set(handle, { length: type === NBD_CMD.READ ? length : 0, started: Date.now(), resolve })
      this.socket.write(payload === undefined ? nbdRequest(type, handle, offset, length) : Buffer.concat([nbdRequest(type, handle, offset, length), payload]))
    })
  }

  close (): void { this.socket.destroy() }
}

/**
 * A client that sends `bytes` (after the handshake, unless `raw`) and never reads: the socket is paused before it
 * connects, so everything the server sends stays in the kernel's buffers and then in the server.
 */
export function neverReading (port: number, bytes: Buffer, raw = false): net.Socket {
  const socket = net.connect(port, '127.0.0.1')
  socket.pause()
  socket.on('error', () => {})
  socket.write(raw ? bytes : Buffer.concat([nbdHandshake('disk'), bytes]))
  return socket
}

/** The `q` quantile (0..1) of some numbers. */
export function quantile (values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
}
