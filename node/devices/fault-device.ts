// A wrapper that injects faults into another device: the `error` and `delay` synthetic devices of our tests in one.
// While `failing` is set every request fails with EIO (a dead disk or peer); `delay` holds each request that many ms.

import { Device, type DeviceStatus, type Extent } from '../core/device'
import { DstError, ErrorCode } from '../core/errors'

export class FaultDevice extends Device {
  readonly type = 'fault'
  failing = false
  delay = 0
  /** Requests seen, by kind (tests assert on traffic, e.g. bytes a resync wrote). */
  readonly counts = { read: 0, write: 0, readBytes: 0, writeBytes: 0, flush: 0, trim: 0, trimBytes: 0, extents: 0 }

  constructor (readonly inner: Device) {
    super({ size: inner.size, blockSize: inner.blockSize, readOnly: !inner.writable, canFlush: inner.canFlush, canTrim: inner.canTrim })
    this.identity = inner.identity
  }

  protected override async _read (offset: number, length: number, into: Uint8Array): Promise<void> {
    await this.gate()
    this.counts.read++
    this.counts.readBytes += length
    return this.inner.read(offset, length, into)
  }

  protected override async _write (offset: number, data: Uint8Array): Promise<void> {
    await this.gate()
    this.counts.write++
    this.counts.writeBytes += data.byteLength
    return this.inner.write(offset, data)
  }

  protected override async _flush (): Promise<void> {
    await this.gate()
    this.counts.flush++
    return this.inner.flush()
  }

  protected override async _trim (offset: number, length: number): Promise<void> {
    await this.gate()
    this.counts.trim++
    this.counts.trimBytes += length
    return this.inner.trim(offset, length)
  }

  /** Passed through, as a filter passes what it does not change: the holes are the inner device's. */
  protected override async _extents (offset: number, length: number): Promise<Extent[]> {
    await this.gate()
    this.counts.extents++
    return this.inner.extents(offset, length)
  }

  override status (): DeviceStatus {
    return { ...this.inner.status(), ...(this.failing ? { state: 'failed' as const } : {}) }
  }

  private async gate (): Promise<void> {
    if (this.delay > 0) await new Promise(resolve => setTimeout(resolve, this.delay))
    if (this.failing) throw new DstError(ErrorCode.EIO, 'injected fault')
  }
}
