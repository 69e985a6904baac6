// A synthetic device held in memory: the `memory` plugin of our tests (and config type "memory").

import { Device, type DeviceOptions } from '../core/device'
import { randomUUID } from 'node:crypto'

export class MemoryDevice extends Device {
  readonly type = 'memory'
  readonly data: Buffer

  constructor (options: DeviceOptions) {
    super(options)
    this.data = Buffer.alloc(options.size)
    this.identity = randomUUID()
  }

  protected override _read (offset: number, length: number, into: Uint8Array): Promise<void> {
    this.data.copy(into, 0, offset, offset + length)
    return Promise.resolve()
  }

  protected override _write (offset: number, data: Uint8Array): Promise<void> {
    this.data.set(data, offset)
    return Promise.resolve()
  }

  protected override _trim (offset: number, length: number): Promise<void> {
    this.data.fill(0, offset, offset + length)
    return Promise.resolve()
  }
}
