// An NBD server (doc/proto.md of the NetworkBlockDevice project) for the node's exports, so standard clients
// (the kernel's nbd-client, qemu, libnbd, fio) can use any device or array. Fixed newstyle negotiation with
// NBD_OPT_GO, INFO (NBD_INFO_EXPORT, NBD_INFO_BLOCK_SIZE), LIST, EXPORT_NAME and ABORT; simple replies, sent out of
// order as requests complete; READ, WRITE, FLUSH, TRIM, WRITE_ZEROES and DISC with FUA. The transmission phase reuses
// the native protocol's streaming decoder, buffer pool and reply-in-headroom trick: no per-request payload allocation.
// Exports keep their allow list and read-only flag; an export with a token is not offered (NBD cannot present one).

import * as net from 'node:net'
import type { BufferPool, PoolBuffer } from '../node/pool'
import { allowed } from '../node/acl'
import { Errno, toErrno } from '../node/errors'
import { FrameDecoder, ProtocolError, type FrameSpec } from './codec'
import type { ServedExport } from './server'

const NBDMAGIC = Buffer.from('NBDMAGIC', 'latin1')
const IHAVEOPT = Buffer.from('IHAVEOPT', 'latin1')
const OPT_REPLY_MAGIC_HI = 0x0003e889
const OPT_REPLY_MAGIC_LO = 0x045565a9
const REQUEST_MAGIC = 0x25609513
const SIMPLE_REPLY_MAGIC = 0x67446698
export const NBD_REQUEST_SIZE = 28
const SIMPLE_REPLY_SIZE = 16

const FLAG_FIXED_NEWSTYLE = 1
const FLAG_NO_ZEROES = 2

export const Opt = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, INFO: 6, GO: 7 } as const
const Rep = { ACK: 1, SERVER: 2, INFO: 3, ERR_UNSUP: 0x80000001, ERR_POLICY: 0x80000002, ERR_INVALID: 0x80000003, ERR_UNKNOWN: 0x80000006, ERR_SHUTDOWN: 0x80000007 } as const
const Info = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const
export const TxFlag = { HAS_FLAGS: 1, READ_ONLY: 2, SEND_FLUSH: 4, SEND_FUA: 8, SEND_TRIM: 32, SEND_WRITE_ZEROES: 64, CAN_MULTI_CONN: 256 } as const
export const Cmd = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, WRITE_ZEROES: 6 } as const
const CMD_FLAG_FUA = 1
const cmdNames: Record<number, string> = { 0: 'read', 1: 'write', 2: 'other', 3: 'flush', 4: 'trim', 6: 'write' }

/** Longest option payload accepted during negotiation, and longest WRITE payload skipped rather than refused. */
const MAX_OPTION = 64 * 1024
const MAX_DISCARD = 64 * 1024 * 1024

/** NBD's wire errors are Linux errno numbers for the few it names; anything else is EIO. */
function nbdErrno (errno: number): number {
  switch (errno) {
    case 0: case Errno.EPERM: case Errno.EIO: case Errno.ENOMEM: case Errno.EINVAL: case Errno.ENOSPC: case Errno.EOVERFLOW:
    case Errno.ENOTSUP: case Errno.ESHUTDOWN: return errno
    case Errno.EROFS: case Errno.EACCES: return Errno.EPERM
    default: return Errno.EIO
  }
}

interface NbdRequest { flags: number, type: number, handle: Buffer, offset: number, length: number }

const requestSpec: FrameSpec<NbdRequest> = {
  headerSize: NBD_REQUEST_SIZE,
  parse: (buf, at) => {
    const magic = buf.readUInt32BE(at)
    if (magic !== REQUEST_MAGIC) throw new ProtocolError(`bad NBD request magic 0x${magic.toString(16)}`)
    return {
      flags: buf.readUInt16BE(at + 4),
      type: buf.readUInt16BE(at + 6),
      // The handle is echoed byte for byte; it is copied out because the chunk it came in is not ours to keep.
      handle: Buffer.from(buf.subarray(at + 8, at + 16)),
      offset: buf.readUInt32BE(at + 16) * 0x100000000 + buf.readUInt32BE(at + 20),
      length: buf.readUInt32BE(at + 24),
    }
  },
  payloadLength: h => h.type === Cmd.WRITE ? h.length : 0,
}

export interface NbdServerOptions {
  host: string
  port: number
  pool: BufferPool
  maxRequest: number
  exports: Map<string, ServedExport>
  log: (message: string) => void
}

export class NbdServer {
  private readonly server: net.Server
  private readonly sessions = new Set<NbdSession>()
  private stopping = false
  port = 0
  /** Zeros for WRITE_ZEROES, allocated once. */
  readonly zeros: Buffer

  constructor (readonly options: NbdServerOptions) {
    this.zeros = Buffer.alloc(Math.min(options.maxRequest, 1024 * 1024))
    this.server = net.createServer(socket => {
      if (this.stopping) { socket.destroy(); return }
      const session = new NbdSession(this, socket)
      this.sessions.add(session)
      socket.on('close', () => this.sessions.delete(session))
    })
  }

  listen (): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', err => reject(new Error(`cannot listen for NBD on ${this.options.host}:${this.options.port}: ${err.message}`)))
      this.server.listen(this.options.port, this.options.host, () => {
        this.port = (this.server.address() as net.AddressInfo).port
        resolve()
      })
    })
  }

  /** Stops accepting, lets every session answer what it received, then closes them. */
  async stop (): Promise<void> {
    this.stopping = true
    this.server.close()
    await Promise.all([...this.sessions].map(s => s.drain()))
    for (const s of this.sessions) s.close()
  }

  get isStopping (): boolean { return this.stopping }
}

class NbdSession {
  private phase: 'flags' | 'options' | 'transmission' | 'closed' = 'flags'
  private pending: Buffer = Buffer.alloc(0)
  private noZeroes = false
  private exp: ServedExport | null = null
  private readOnly = true
  private decoder: FrameDecoder<NbdRequest> | null = null
  private writeSlot: PoolBuffer | null = null
  private writeErrno = 0
  private inFlight = 0
  private drained: (() => void) | null = null
  private disconnecting = false
  /** The WRITE payload's own buffer when the pool had none free (NBD has no "try again" answer). */
  private overflow: Buffer | null = null
  private corked = false
  private readonly address: string

  constructor (private readonly server: NbdServer, private readonly socket: net.Socket) {
    this.address = socket.remoteAddress ?? ''
    socket.setNoDelay(true)
    socket.on('data', chunk => this.onData(chunk))
    socket.on('error', () => this.close())
    socket.on('close', () => this.close())
    const hello = Buffer.alloc(18)
    NBDMAGIC.copy(hello, 0)
    IHAVEOPT.copy(hello, 8)
    hello.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16)
    socket.write(hello)
  }

  drain (): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve()
    return new Promise(resolve => { this.drained = resolve })
  }

  close (): void {
    if (this.phase === 'closed') return
    this.phase = 'closed'
    if (this.writeSlot !== null) { this.server.options.pool.release(this.writeSlot); this.writeSlot = null }
    if (this.exp !== null) this.exp.metrics.connections--
    this.socket.destroy()
  }

  private onData (chunk: Buffer): void {
    if (this.phase === 'transmission') {
      try {
        (this.decoder as FrameDecoder<NbdRequest>).push(chunk)
      } catch (err) {
        if (!(err instanceof ProtocolError)) throw err
        this.server.options.log(`nbd: ${this.address}: ${err.message}; closing`)
        if (this.exp !== null) this.exp.metrics.protocolErrors++
        this.close()
      }
      return
    }
    // Negotiation is not the hot path: gather bytes and take whole messages.
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk])
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
      this.onData(rest)
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

  /** The export a client asked for, or why it cannot have it. */
  private find (name: string): { exp: ServedExport } | { type: number, message: string } {
    const exports = this.server.options.exports
    const exp = name === '' ? exports.values().next().value as ServedExport | undefined : exports.get(name)
    if (exp === undefined) return { type: Rep.ERR_UNKNOWN, message: `no export named '${name}'` }
    if (!allowed(exp.allow, this.address)) { exp.metrics.refused++; return { type: Rep.ERR_POLICY, message: `address ${this.address} is not in the allow list of export '${exp.name}'` } }
    if (exp.token !== undefined) { exp.metrics.refused++; return { type: Rep.ERR_POLICY, message: `export '${exp.name}' needs a token, which NBD cannot present; use dst://` } }
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
    if (readOnly) flags |= TxFlag.READ_ONLY
    else {
      flags |= TxFlag.SEND_WRITE_ZEROES
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
          // NBD_REP_SERVER: u32 name length, then the name.
          const head = Buffer.alloc(4)
          head.writeUInt32BE(Buffer.byteLength(exp.name), 0)
          this.reply(option, Rep.SERVER, withName(head, exp.name))
        }
        this.reply(option, Rep.ACK)
        return
      }
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
        for (let i = 0; i < count; i++) {
          if (data.readUInt16BE(4 + nameLength + 2 + 2 * i) === Info.NAME) {
            const head = Buffer.alloc(2)
            head.writeUInt16BE(Info.NAME, 0)
            this.reply(option, Rep.INFO, withName(head, exp.name))
          }
        }
        this.reply(option, Rep.ACK)
        if (option === Opt.GO) this.start(exp)
        return
      }
      default:
        this.error(option, Rep.ERR_UNSUP, `option ${option} is not supported`)
    }
  }

  private start (exp: ServedExport): void {
    this.exp = exp
    this.readOnly = (this.transmissionFlags(exp) & TxFlag.READ_ONLY) !== 0
    exp.metrics.connections++
    this.phase = 'transmission'
    this.decoder = new FrameDecoder(requestSpec, h => this.payloadTarget(h), (h, payload) => this.onRequest(h, payload))
  }

  private check (h: NbdRequest): number {
    const exp = this.exp as ServedExport
    const size = exp.device.size
    switch (h.type) {
      case Cmd.READ:
      case Cmd.WRITE:
      case Cmd.TRIM:
      case Cmd.WRITE_ZEROES:
        if (h.type !== Cmd.READ && this.readOnly) return Errno.EPERM
        if (h.type !== Cmd.READ && exp.shared !== true && !exp.lease.mayWrite(null, 0)) return Errno.EPERM
        if (h.type === Cmd.TRIM && !exp.device.canTrim) return Errno.EINVAL
        if ((h.type === Cmd.READ || h.type === Cmd.WRITE) && h.length > this.server.options.maxRequest) return Errno.EOVERFLOW
        if (!Number.isSafeInteger(h.offset) || h.offset + h.length > size) return Errno.EINVAL
        return 0
      case Cmd.FLUSH:
        return 0
      default:
        return Errno.EINVAL
    }
  }

  private payloadTarget (h: NbdRequest): Uint8Array | null {
    this.writeErrno = this.check(h)
    if (this.writeErrno === 0) {
      const slot = this.server.options.pool.tryAcquire()
      if (slot !== null) { this.writeSlot = slot; return slot.data }
      // No buffer free: NBD has no "try again" answer, so the payload lands in a buffer of its own (counted).
      ;(this.exp as ServedExport).metrics.poolExhausted++
      this.writeSlot = null
      this.overflow = Buffer.allocUnsafe(h.length)
      return this.overflow
    }
    if (h.length > MAX_DISCARD) {
      this.server.options.log(`nbd: ${this.address}: refused WRITE of ${h.length} bytes; closing`)
      this.close()
    }
    return null
  }

  private onRequest (h: NbdRequest, payload: Uint8Array | null): void {
    if (this.phase !== 'transmission') return
    const exp = this.exp as ServedExport
    const op = cmdNames[h.type] ?? 'other'
    if (h.type === Cmd.DISC) {
      this.disconnecting = true
      if (this.inFlight === 0) this.close()
      return
    }
    exp.metrics.requests[op]++
    const errno = h.type === Cmd.WRITE ? this.writeErrno : this.check(h)
    if (errno !== 0) {
      if (h.type === Cmd.WRITE) this.releaseWriteBuffer()
      exp.metrics.errors[op]++
      this.send(h.handle, nbdErrno(errno), null, 0)
      return
    }
    this.inFlight++
    exp.metrics.inFlight++
    const fua = (h.flags & CMD_FLAG_FUA) !== 0
    const device = exp.device
    switch (h.type) {
      case Cmd.READ: {
        this.server.options.pool.acquire().then(slot => device.read(h.offset, h.length, slot.data).then(() => {
          exp.metrics.bytesRead += h.length
          this.finish(h, op, 0, slot, h.length)
        }, err => {
          this.server.options.pool.release(slot)
          this.finish(h, op, toErrno(err), null, 0)
        }), err => this.finish(h, op, toErrno(err), null, 0))
        return
      }
      case Cmd.WRITE: {
        const slot = this.writeSlot
        const buf = slot !== null ? slot.data.subarray(0, h.length) : (this.overflow as Buffer)
        this.writeSlot = null
        this.overflow = null
        this.settle(h, op, device.write(h.offset, buf).then(() => {
          exp.metrics.bytesWritten += h.length
          if (fua) return device.flush()
        }).finally(() => { if (slot !== null) this.server.options.pool.release(slot) }))
        return
      }
      case Cmd.FLUSH:
        this.settle(h, op, device.flush())
        return
      case Cmd.TRIM:
        this.settle(h, op, device.trim(h.offset, h.length).then(() => { if (fua) return device.flush() }))
        return
      case Cmd.WRITE_ZEROES:
        this.settle(h, op, this.writeZeroes(h.offset, h.length).then(() => { if (fua) return device.flush() }))
    }
  }

  private async writeZeroes (offset: number, length: number): Promise<void> {
    const device = (this.exp as ServedExport).device
    const zeros = this.server.zeros
    const parts: Array<Promise<void>> = []
    for (let done = 0; done < length; done += zeros.length) {
      const n = Math.min(zeros.length, length - done)
      parts.push(device.write(offset + done, zeros.subarray(0, n)))
    }
    await Promise.all(parts)
  }

  private releaseWriteBuffer (): void {
    if (this.writeSlot !== null) { this.server.options.pool.release(this.writeSlot); this.writeSlot = null }
    this.overflow = null
  }

  private settle (h: NbdRequest, op: string, p: Promise<unknown>): void {
    p.then(() => this.finish(h, op, 0, null, 0), err => this.finish(h, op, toErrno(err), null, 0))
  }

  private finish (h: NbdRequest, op: string, errno: number, slot: PoolBuffer | null, length: number): void {
    const exp = this.exp as ServedExport
    this.inFlight--
    exp.metrics.inFlight--
    if (errno !== 0) exp.metrics.errors[op]++
    this.send(h.handle, nbdErrno(errno), slot, length)
    if (this.inFlight === 0) {
      if (this.drained !== null) { const done = this.drained; this.drained = null; done() }
      if (this.disconnecting) this.socket.end(() => this.close())
    }
  }

  /** A simple reply; a READ's header goes in the slot's headroom and header and data leave as one write. */
  private send (handle: Buffer, errno: number, slot: PoolBuffer | null, length: number): void {
    const pool = this.server.options.pool
    if (this.phase === 'closed') { if (slot !== null) pool.release(slot); return }
    if (slot !== null) {
      const at = pool.headroom - SIMPLE_REPLY_SIZE
      slot.frame.writeUInt32BE(SIMPLE_REPLY_MAGIC, at)
      slot.frame.writeUInt32BE(0, at + 4)
      handle.copy(slot.frame, at + 8)
      // The socket sends from the slot itself, so the slot goes back to the pool only once the write is done.
      this.cork()
      this.socket.write(slot.frame.subarray(at, pool.headroom + length), () => pool.release(slot))
      return
    }
    const head = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE)
    head.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0)
    head.writeUInt32BE(errno, 4)
    handle.copy(head, 8)
    this.cork()
    this.socket.write(head)
  }

  /** Replies finishing in the same tick leave in one write. */
  private cork (): void {
    if (this.corked) return
    this.corked = true
    this.socket.cork()
    process.nextTick(() => { this.corked = false; this.socket.uncork() })
  }
}

function withName (head: Buffer, name: string): Buffer {
  return Buffer.concat([head, Buffer.from(name)])
}

function writeU64 (buf: Buffer, at: number, value: number): void {
  buf.writeUInt32BE(Math.floor(value / 0x100000000), at)
  buf.writeUInt32BE(value >>> 0, at + 4)
}
