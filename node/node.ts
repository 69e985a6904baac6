// A running dst node: opens the devices of its config, serves its exports on one port, reports status and metrics,
// and stops gracefully (stop accepting, answer what was received, flush, close).

import * as fs from 'node:fs'
import { BufferPool } from './pool'
import { DeviceRegistry } from './registry'
import { Listener } from './listener'
import { ExportMetrics, renderMetrics } from './metrics'
import type { NodeConfig } from './config'
import type { ServedExport } from '../export/server'
import { REPLY_HEADER_SIZE } from '../export/codec'
import { formatDstUrl } from '../export/client'

export interface NodeOptions {
  log?: (message: string) => void
  /** How long to keep trying to reach remote devices' nodes at start (ms). */
  remoteOpenTimeout?: number
}

/** Pool slots keep this much room in front of the payload for a reply header (rounded up for alignment). */
const HEADROOM = 32

export class DstNode {
  readonly config: NodeConfig
  readonly registry = new DeviceRegistry()
  readonly pool: BufferPool
  private listener: Listener | null = null
  private readonly exports = new Map<string, ServedExport>()
  private readonly log: (message: string) => void
  private readonly startedAt = Date.now()
  private stopped: Promise<void> | null = null

  constructor (config: NodeConfig, options: NodeOptions = {}) {
    if (HEADROOM < REPLY_HEADER_SIZE) throw new Error('pool headroom smaller than a reply header')
    this.config = config
    this.log = options.log ?? (m => process.stderr.write(`[${config.name}] ${m}\n`))
    this.pool = new BufferPool({ count: config.pool.count, size: config.pool.size, headroom: HEADROOM })
    this.remoteOpenTimeout = options.remoteOpenTimeout ?? 30000
  }

  private readonly remoteOpenTimeout: number

  async start (): Promise<void> {
    const c = this.config
    if (c.nbd !== undefined) this.log(`config 'nbd' (${c.nbd.host}:${c.nbd.port}) is reserved: this version serves only the native protocol`)
    if (c.dataDir !== null) await fs.promises.mkdir(c.dataDir, { recursive: true })
    await this.registry.open(c, { log: this.log, remoteOpenTimeout: this.remoteOpenTimeout, pingInterval: c.pingInterval })
    for (const e of c.exports) {
      const device = this.registry.get(e.device)
      if (device === undefined) throw new Error(`export '${e.name}': device '${e.device}' did not open`)
      this.exports.set(e.name, { ...e, device, metrics: new ExportMetrics() })
    }
    this.listener = new Listener({
      host: c.listen.host,
      port: c.listen.port,
      pool: this.pool,
      limits: { maxRequest: c.pool.size, maxInFlight: c.maxInFlight, pingInterval: c.pingInterval },
      exports: this.exports,
      status: () => this.status(),
      metrics: () => renderMetrics(c.name, [...this.exports.values()], { count: this.pool.count, size: this.pool.size, available: this.pool.available, waits: this.pool.waits }),
      log: this.log,
    })
    try {
      await this.listener.listen()
    } catch (err) {
      await this.registry.close()
      throw err
    }
  }

  /** The port actually bound (useful when the config asked for port 0). */
  get port (): number { return this.listener?.port ?? 0 }

  /** The addresses this node serves, printed at start. */
  addresses (): string[] {
    const host = this.config.listen.host.includes(':') ? `[${this.config.listen.host}]` : this.config.listen.host
    const lines = [`status  http://${host}:${this.port}/status`]
    for (const e of this.exports.values()) {
      lines.push(`export  ${formatDstUrl({ host: this.config.listen.host, port: this.port, export: e.name })}  (${e.device.type} device '${this.deviceName(e)}', ${e.readOnly || !e.device.writable ? 'read-only' : 'read-write'})`)
    }
    return lines
  }

  status (): unknown {
    return {
      name: this.config.name,
      uptime: Math.round((Date.now() - this.startedAt) / 1000),
      listen: `${this.config.listen.host}:${this.port}`,
      pool: { count: this.pool.count, size: this.pool.size, free: this.pool.available, waiting: this.pool.waiting },
      devices: this.registry.status(),
      exports: [...this.exports.values()].map(e => ({
        name: e.name,
        device: this.deviceName(e),
        readOnly: e.readOnly || !e.device.writable,
        url: formatDstUrl({ host: this.config.listen.host, port: this.port, export: e.name }),
        allow: e.allow.map(c => c.text),
        token: e.token !== undefined,
        connections: e.metrics.connections,
        inFlight: e.metrics.inFlight,
      })),
    }
  }

  /** Graceful stop: refuse new connections and requests, answer the ones received, flush, close. */
  stop (): Promise<void> {
    if (this.stopped === null) {
      this.stopped = (async () => {
        if (this.listener !== null) await this.listener.stop()
        await this.registry.flushAll()
        this.listener?.closeAll()
        await this.registry.close()
      })()
    }
    return this.stopped
  }

  private deviceName (e: ServedExport): string {
    return this.config.exports.find(x => x.name === e.name)?.device ?? '?'
  }
}
