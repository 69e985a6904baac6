// The client's receive path, taken off `ws` once the connection is open. `ws` would reassemble every message into a
// newly allocated buffer (a 1 MiB READ reply: a 1 MiB allocation and copy, and most of a hop's garbage collection)
// before our decoder copies it again. WsTap reads the server's frames straight from the socket's chunks instead: the
// payload of each binary or continuation frame goes to the sink as views of those chunks (so a READ reply's data is
// copied once, into the caller's buffer), and each control frame (ping, pong, close) is handed whole to ws's own
// receiver, so ws still answers pings and runs the closing handshake as before. Frames from a server are never masked
// and, without extensions, never have RSV bits: either is a protocol error.

import { ProtocolError } from '../../node/core/errors'

export interface TapSink {
  /** Bytes of a data frame's payload, in order; the view is valid only during the call. */
  data: (chunk: Buffer) => void
  /** A message ended (the last fragment's payload has been passed to `data`). */
  messageEnd: () => void
  /** A whole control frame, header included, for ws's receiver. */
  control: (frame: Buffer) => void
}

const OP_CONTINUATION = 0x0
const OP_TEXT = 0x1
const OP_BINARY = 0x2

export class WsTap {
  /** Header bytes gathered so far (2 to 10 for a server frame). */
  private readonly head = Buffer.alloc(10)
  private headFill = 0
  private headNeed = 2
  private inPayload = false
  private fin = false
  private opcode = 0
  private left = 0
  /** A control frame being gathered: at most 10 header bytes and 125 payload bytes. */
  private control: Buffer | null = null
  private controlFill = 0
  private inMessage = false

  constructor (private readonly sink: TapSink) {}

  /** Feeds one socket chunk. Throws ProtocolError on a frame a client must refuse; the tap is unusable after that. */
  push (chunk: Buffer): void {
    let pos = 0
    const end = chunk.length
    while (pos < end) {
      if (!this.inPayload) {
        const n = Math.min(this.headNeed - this.headFill, end - pos)
        chunk.copy(this.head, this.headFill, pos, pos + n)
        this.headFill += n
        pos += n
        if (this.headFill === 2) this.headNeed = 2 + this.extendedLengthBytes()
        if (this.headFill < this.headNeed) continue
        this.startFrame()
        continue
      }
      const n = Math.min(this.left, end - pos)
      if (this.control !== null) {
        chunk.copy(this.control, this.controlFill, pos, pos + n)
        this.controlFill += n
      } else if (n > 0) {
        this.sink.data(chunk.subarray(pos, pos + n))
      }
      this.left -= n
      pos += n
      if (this.left === 0) this.endFrame()
    }
  }

  /** Payload bytes of the current data frame still to come; 0 outside a data frame's payload. */
  get dataLeft (): number {
    return this.inPayload && this.control === null ? this.left : 0
  }

  /** `n` bytes (at most `dataLeft`) of the current data frame's payload were received elsewhere, straight into place. */
  skipData (n: number): void {
    this.left -= n
    if (this.left === 0) this.endFrame()
  }

  private extendedLengthBytes (): number {
    const b0 = this.head[0]
    const b1 = this.head[1]
    if ((b0 & 0x70) !== 0) throw new ProtocolError('server frame with RSV bits set (no extension was agreed)')
    if ((b1 & 0x80) !== 0) throw new ProtocolError('masked frame from the server')
    const len7 = b1 & 0x7f
    return len7 === 126 ? 2 : len7 === 127 ? 8 : 0
  }

  private startFrame (): void {
    const b0 = this.head[0]
    const len7 = this.head[1] & 0x7f
    let length = len7
    if (len7 === 126) length = this.head.readUInt16BE(2)
    else if (len7 === 127) {
      const hi = this.head.readUInt32BE(2)
      if (hi > 0x1fffff) throw new ProtocolError('frame length beyond 2^53')
      length = hi * 0x100000000 + this.head.readUInt32BE(6)
    }
    this.fin = (b0 & 0x80) !== 0
    this.opcode = b0 & 0x0f
    this.left = length
    if (this.opcode >= 0x8) {
      if (length > 125 || !this.fin) throw new ProtocolError('control frame longer than 125 bytes or fragmented')
      this.control = Buffer.allocUnsafe(this.headNeed + length)
      this.head.copy(this.control, 0, 0, this.headNeed)
      this.controlFill = this.headNeed
    } else {
      if (this.opcode === OP_TEXT) throw new ProtocolError('text message from server')
      if (this.opcode !== OP_BINARY && this.opcode !== OP_CONTINUATION) throw new ProtocolError(`unknown frame opcode ${this.opcode}`)
      if ((this.opcode === OP_CONTINUATION) !== this.inMessage) {
        throw new ProtocolError(this.inMessage ? 'new message before the last one ended' : 'continuation frame outside a message')
      }
      this.inMessage = true
    }
    this.headFill = 0
    this.headNeed = 2
    this.inPayload = true
    if (length === 0) this.endFrame()
  }

  private endFrame (): void {
    this.inPayload = false
    if (this.control !== null) {
      const frame = this.control
      this.control = null
      this.sink.control(frame)
      return
    }
    if (this.fin) {
      this.inMessage = false
      this.sink.messageEnd()
    }
  }
}

/**
 * Writes a client frame's header at `at` (FIN bit, opcode, payload length, and the all-zero mask, so the payload goes
 * as it is) and returns its size: 6, 8 or 14 bytes.
 */
export function writeClientFrameHeader (buf: Buffer, at: number, fin: boolean, opcode: number, length: number): number {
  buf[at] = (fin ? 0x80 : 0) | opcode
  let p = at + 2
  if (length < 126) {
    buf[at + 1] = 0x80 | length
  } else if (length < 65536) {
    buf[at + 1] = 0x80 | 126
    buf.writeUInt16BE(length, p)
    p += 2
  } else {
    buf[at + 1] = 0x80 | 127
    buf.writeUInt32BE(Math.floor(length / 0x100000000), p)
    buf.writeUInt32BE(length >>> 0, p + 4)
    p += 8
  }
  buf.writeUInt32BE(0, p)
  return p + 4 - at
}
