// The client socket's reads, in buffers we choose. A client connection's TCP socket is created with Node's `onread`
// option, so libuv reads into the buffer this reader hands out instead of a new 64 KiB chunk per read:
//
// - Until `attach`, during the HTTP upgrade and the handshake, each read gets a fresh buffer and is pushed into the
//   socket as an ordinary 'data' chunk, so the HTTP client and `ws` see nothing unusual.
// - Once attached (the WsTap reads the server's frames itself), a read that falls inside a large reply payload lands
//   straight in that payload's destination (the caller's buffer: no copy at all), and everything else (frame headers,
//   small replies) lands in one reusable receive buffer and is fed to the tap. A 1 MiB READ reply then takes a few
//   large reads into its destination instead of sixteen 64 KiB allocations and copies.
// - `detach` stops both: the reusable buffer is put back under libuv at once (a destination handed out for the next
//   read may belong to a request that has just failed and been given back) and what still arrives is dropped.

import type * as net from 'node:net'

/** A read lands straight in a payload's destination when at least this much of it is still to come. */
export const DIRECT_MIN = 32 * 1024
const RECEIVE_BUFFER = 64 * 1024
/** After a direct read, the next read (a header and maybe the start of the next payload) is kept this small. */
const AFTER_DIRECT = 4096

export interface ReadSink {
  /** Where the next bytes may go directly (a view of a payload's destination), or null. */
  room: () => Uint8Array | null
  /** `n` bytes were read into the view `room` last returned. */
  direct: (n: number) => void
  /** Bytes read into the reader's own buffer; the view is valid only during the call. */
  chunk: (buf: Buffer) => void
}

export class SocketReader {
  socket: net.Socket | null = null
  /** True once libuv has asked for a buffer: the socket really reads through this reader. */
  installed = false
  private sink: ReadSink | null = null
  private detached = false
  private readonly rx = Buffer.allocUnsafeSlow(RECEIVE_BUFFER)
  private readonly rxSmall = this.rx.subarray(0, AFTER_DIRECT)
  private current: Uint8Array = this.rx
  /** What `current` is: a fresh chunk (before attach), the reader's own buffer, or a destination. */
  private kind: 'fresh' | 'own' | 'direct' = 'own'
  private lastWasDirect = false
  /** Reads that went straight into a destination, and bytes so read (tests, benchmarks). */
  directReads = 0
  directBytes = 0

  /** The `onread` option for net.connect. */
  readonly onread = {
    buffer: (): Uint8Array => this.next(),
    callback: (n: number): boolean => this.got(n),
  }

  /** From now on, reads go to `sink` (never as 'data' events). */
  attach (sink: ReadSink): void {
    if (this.detached) return
    this.sink = sink
  }

  /** Stops reading into destinations: the reader's own buffer goes under libuv now, and later bytes are dropped. */
  detach (): void {
    if (this.detached) return
    this.detached = true
    this.sink = null
    this.current = this.rx
    this.kind = 'own'
    const handle = (this.socket as unknown as { _handle?: { useUserBuffer?: (buf: Uint8Array) => void } | null } | null)?._handle
    if (handle !== undefined && handle !== null && typeof handle.useUserBuffer === 'function') handle.useUserBuffer(this.rx)
  }

  private next (): Uint8Array {
    this.installed = true
    const sink = this.sink
    if (this.detached) { this.current = this.rx; this.kind = 'own'; return this.rx }
    if (sink === null) {
      // Before attach: each chunk is pushed to the socket's consumers, who may keep it.
      this.current = Buffer.allocUnsafe(RECEIVE_BUFFER)
      this.kind = 'fresh'
      return this.current
    }
    const room = sink.room()
    if (room !== null && room.byteLength >= DIRECT_MIN) {
      this.lastWasDirect = true
      this.current = room
      this.kind = 'direct'
      return room
    }
    this.current = this.lastWasDirect ? this.rxSmall : this.rx
    this.kind = 'own'
    this.lastWasDirect = false
    return this.current
  }

  private got (n: number): boolean {
    if (this.detached) return true
    const sink = this.sink
    const buf = this.current
    if (sink === null) {
      const socket = this.socket as net.Socket
      return socket.push((buf as Buffer).subarray(0, n))
    }
    if (this.kind === 'fresh') {
      // The last read handed out before attach.
      sink.chunk((buf as Buffer).subarray(0, n))
    } else if (this.kind === 'own') {
      sink.chunk(this.rx.subarray(0, n))
    } else {
      this.directReads++
      this.directBytes += n
      sink.direct(n)
    }
    return true
  }
}
