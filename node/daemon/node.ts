// A running dst node: opens the devices of its config, serves its exports on one port, reports status and metrics,
// and stops gracefully (stop accepting, answer what was received, flush, close).

import * as fs from 'node:fs'
import { BufferPool } from '../core/pool'
import { DeviceRegistry } from './registry'
import { Listener } from './listener'
import { renderMetrics, renderStateMetrics, type ArrayCounters, type DeviceGauge } from './metrics'
import type { NodeConfig } from './config'
import { ExportMetrics, type ServedExport } from '../../export/served'
import { dirtyMapsOf } from './dirty-maps'
import { REPLY_HEADER_SIZE } from '../../export/native/codec'
import { formatAddress, formatDstUrl } from '../core/url'
import { dstVersion } from '../core/version'
import { RemoteDevice } from '../../export/native/remote-device'
import { MirrorDevice } from '../../algorithms/mirror'
import { ParityDevice } from '../../algorithms/parity/parity'
import { XorEngine } from '../core/xor'
import { LinearDevice } from '../../algorithms/linear'
import { StripeDevice } from '../../algorithms/stripe'
import type { Device } from '../core/device'
import { ConfigError, DstError, ErrorCode } from '../core/errors'
import { RESERVED_EXPORT_NAMES, sameHost } from './config'
import { parseDstUrl } from '../core/url'
import { exportNameProblem, nameProblem } from '../core/names'
import { emptyOverlay, overlayFile, writeOverlay, type NodeOverlay } from './state'
import { writerId } from './registry'
import { nodeIdentity } from '../core/identity'
import { writeFileAtomicSync } from '../core/atomic-file'
import { DataDirLock, makeDir, type LockHolder } from '../core/lock'
import { LOOPBACK_ONLY, parseCidr, type Cidr } from '../core/acl'
import { WriteLease } from '../core/lease'
import { NbdServer } from '../../export/nbd/server'
import { readTls, type TlsMaterial } from '../core/tls'
import { clientTls } from './registry'
import { watchGc } from '../core/gc'
import { RemoteMemory } from './remotes'
import { Hasher, HASH_ALGORITHM } from '../core/hasher'
import * as path from 'node:path'
import { EventPublisher, type Sample } from './events'
import { addWatchRoutes } from './web/routes'

/** Reads, increments and durably stores the start counter in dataDir/generation. */
async function nextGeneration (dataDir: string): Promise<number> {
  const file = path.join(dataDir, 'generation')
  const last = Number((await fs.promises.readFile(file, 'utf8').catch(() => '0')).trim())
  const next = (Number.isSafeInteger(last) && last >= 0 ? last : 0) + 1
  writeFileAtomicSync(file, `${next}\n`)
  return next
}

export interface NodeOptions {
  log?: (message: string) => void
  /** How long to keep trying to reach remote devices' nodes at start (ms). */
  remoteOpenTimeout?: number
}

/** The body fields each admin action takes (POST /arrays/NAME/ACTION); anything else is refused (400). */
const ARRAY_ACTION_FIELDS: Record<string, string[] | undefined> = {
  add: ['device', 'name', 'token'],
  remove: ['device'],
  split: ['device', 'export', 'readOnly', 'writable'],
  replace: ['device'],
  verify: ['repair', 'from', 'rate', 'wait'],
}

/** Bad admin input: answered 400 (node/daemon/listener.ts), nothing changed. */
function usage (message: string): DstError {
  return new DstError(ErrorCode.USAGE, message)
}

function check (field: string, problem: string | null): void {
  if (problem !== null) throw usage(`"${field}": ${problem}`)
}

/**
 * How long a client may leave its replies unread (taking none) before its connection is closed and its pool buffers
 * come back (ms; `DST_STALL_TIMEOUT` for tests and drills).
 */
const STALL_TIMEOUT = Number(process.env.DST_STALL_TIMEOUT ?? '') > 0 ? Number(process.env.DST_STALL_TIMEOUT) : 30000

/** Pool slots keep this much room in front of the payload for a reply header (rounded up for alignment). */
const HEADROOM = 32

export class DstNode {
  readonly config: NodeConfig
  readonly registry = new DeviceRegistry()
  readonly pool: BufferPool
  /** The node's hash workers (`hash.threads`): its devices, connections and servers digest on them; closed at stop. */
  readonly hasher: Hasher
  private listener: Listener | null = null
  private nbd: NbdServer | null = null
  /** The node's TLS certificate, key and CA, read at start (config `tls`), or null. */
  private tls: TlsMaterial | null = null
  private readonly exports = new Map<string, ServedExport>()
  /** Device names of exports added while running (split-off legs). */
  private readonly exportDevices = new Map<string, string>()
  private readonly log: (message: string) => void
  private readonly startedAt = Date.now()
  private stopped: Promise<void> | null = null
  /** Held from start to stop: one node per dataDir. */
  private dataDirLock: DataDirLock | null = null

  constructor (config: NodeConfig, options: NodeOptions = {}) {
    if (HEADROOM < REPLY_HEADER_SIZE) throw new Error('pool headroom smaller than a reply header') // an assertion on two constants
    this.config = config
    this.log = options.log ?? (m => process.stderr.write(`[${config.name}] ${m}\n`))
    this.pool = new BufferPool({ count: config.pool.count, size: config.pool.size, headroom: HEADROOM, commit: true })
    this.hasher = new Hasher({ threads: config.hash.threads })
    this.remoteOpenTimeout = options.remoteOpenTimeout ?? 30000
    this.events = new EventPublisher({ node: config.name, sample: () => this.sample(), log: this.log })
  }

  private readonly remoteOpenTimeout: number
  /** XOR workers for parity arrays, made when the first one opens. */
  private xor: XorEngine | null = null

  private xorEngine (): XorEngine {
    this.xor ??= new XorEngine()
    return this.xor
  }
  /** What remote devices found at their last handshake (dataDir/remotes.json). */
  private remotes: RemoteMemory | null = null
  /** How many times this node (its dataDir) has started; in every handshake, so peers see restarts. */
  generation = 0

  async start (): Promise<void> {
    watchGc()
    const c = this.config
    let made: string[] = []
    if (c.dataDir !== null) {
      try {
        made = makeDir(c.dataDir)
      } catch (err) {
        throw new ConfigError(`dataDir '${c.dataDir}': cannot create it: ${(err as Error).message}`)
      }
      // Before anything in it is read or written: a second node on this dataDir would share its write-intent maps.
      this.dataDirLock = DataDirLock.acquire(c.dataDir, this.lockHolder(c.listen.port))
      // Live changes (dst array) kept in dataDir/arrays.json are laid over the config file: say which.
      for (const line of c.overlayChanges ?? []) this.log(`${overlayFile(c.dataDir)}: ${line}`)
    }
    try {
      c.nodeId = nodeIdentity(c.dataDir)
      if (c.dataDir !== null) this.generation = await nextGeneration(c.dataDir)
      await this.openAndListen()
    } catch (err) {
      this.dataDirLock?.release()
      this.dataDirLock = null
      await this.hasher.close()
      await this.xor?.close()
      // A bad config creates nothing: a dataDir this start made goes again.
      if (err instanceof ConfigError && made.length > 0) fs.rmSync(made[0], { recursive: true, force: true })
      throw err
    }
    this.dataDirLock?.update(this.lockHolder(this.port))
  }

  /** The node's identity (dataDir/node-id), known once it has started. */
  get nodeId (): string { return this.config.nodeId ?? nodeIdentity(null) }

  private lockHolder (port: number): LockHolder {
    return { name: this.config.name, pid: process.pid, listen: formatAddress(this.config.listen.host, port), since: new Date(this.startedAt).toISOString() }
  }

  private async openAndListen (): Promise<void> {
    const c = this.config
    this.remotes = c.dataDir !== null ? RemoteMemory.load(c.dataDir) : null
    this.tls = c.tls !== undefined ? readTls(c.tls) : null
    this.warnCleartext(c)
    await this.registry.open(c, { log: this.log, remoteOpenTimeout: this.remoteOpenTimeout, pingInterval: c.pingInterval, remotes: this.remotes, hasher: this.hasher, xor: () => this.xorEngine(), ...(this.tls !== null ? { tls: this.tls } : {}) })
    for (const e of c.exports) {
      const device = this.registry.get(e.device)
      // An assertion: the config checks that every export names a device, and the registry opens all or throws.
      if (device === undefined) throw new Error(`export '${e.name}': device '${e.device}' did not open`)
      this.exports.set(e.name, { ...e, device, metrics: new ExportMetrics(), lease: new WriteLease(c.leaseTimeout), generation: this.generation, dirty: dirtyMapsOf(device) })
    }
    this.listener = new Listener({
      host: c.listen.host,
      port: c.listen.port,
      pool: this.pool,
      limits: { maxRequest: c.pool.size, maxInFlight: c.maxInFlight, pingInterval: c.pingInterval, stallTimeout: STALL_TIMEOUT },
      exports: this.exports,
      status: () => this.status(),
      metrics: () => renderMetrics(c.name, [...this.exports.values()], { count: this.pool.count, size: this.pool.size, available: this.pool.available, waits: this.pool.waits }, this.arrayCounters(), this.hasher.stats, this.deviceGauges()) + renderStateMetrics(c.name, this.status() as Parameters<typeof renderStateMetrics>[1]),
      log: this.log,
      admin: c.admin,
      onAdmin: (array, action, body) => this.changeArray(array, action, body),
      nodeId: c.nodeId,
      hasher: this.hasher,
      routes: (app, guard) => addWatchRoutes(app, guard, { events: this.events, base: () => this.httpBase(), log: this.log }),
      ...(this.tls !== null ? { tls: this.tls } : {}),
      ...(c.tls?.clientCertListen !== undefined ? { clientCertListen: c.tls.clientCertListen } : {}),
    })
    try {
      await this.listener.listen()
      if (c.nbd !== undefined) {
        this.nbd = new NbdServer({
          host: c.nbd.host, port: c.nbd.port, pool: this.pool, maxRequest: c.pool.size, exports: this.exports, log: this.log,
          maxInFlight: c.maxInFlight, stallTimeout: STALL_TIMEOUT,
          ...(this.tls !== null ? { tls: this.tls } : {}),
        })
        await this.nbd.listen()
      }
    } catch (err) {
      await this.listener.stop().catch(() => {})
      this.listener.closeAll()
      await this.registry.close()
      throw err
    }
  }

  /** A token sent without TLS crosses the network in clear: say so at start, once per export and remote device. */
  private warnCleartext (c: NodeConfig): void {
    for (const e of c.exports) {
      if (e.token !== undefined && c.tls === undefined) this.log(`warning: export '${e.name}' has a token but this node serves it without TLS: the token and every byte cross the network in clear (set "tls", see README "TLS")`)
    }
    for (const e of c.exports) {
      if (e.clientCert === 'require' && c.tls?.clientCertListen === undefined) this.log(`export '${e.name}' requires client certificates: served over NBD (STARTTLS) only; natively it needs tls.clientCertListen (the main listener cannot check certificates)`)
    }
    for (const d of c.devices.values()) {
      if (d.type === 'remote' && d.token !== undefined && d.tls !== true) this.log(`warning: device '${d.name}' sends its token to ${d.url} without TLS, in clear (use dsts://)`)
    }
  }

  /** State changes, sampled from status() while someone listens (GET /events). */
  readonly events: EventPublisher

  private sample (): Sample {
    const counters = [...this.exports.values()].map(e => ({ name: e.name, refused: e.metrics.refused, bytesRead: e.metrics.bytesRead, bytesWritten: e.metrics.bytesWritten }))
    return { status: this.status() as Sample['status'], counters }
  }

  /** Where this node answers HTTP, as a client on this machine reaches it (a wildcard listen address is loopback). */
  private httpBase (): string {
    const h = this.config.listen.host
    const host = h === '0.0.0.0' || h === '' ? '127.0.0.1' : h === '::' ? '::1' : h
    return `${this.config.tls !== undefined ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${this.port}`
  }

  /**
   * Where a client reaches an export: dsts:// on the listener when the node has TLS; an export that requires client
   * certificates on the client-certificate listener.
   */
  private exportUrl (e: ServedExport): string {
    const tls = this.config.tls
    if (tls?.clientCertListen !== undefined && e.clientCert === 'require') return formatDstUrl({ host: tls.clientCertListen.host, port: this.listener?.certPort ?? 0, export: e.name, tls: true })
    return formatDstUrl({ host: this.config.listen.host, port: this.port, export: e.name, ...(tls !== undefined ? { tls: true } : {}) })
  }

  /** The port actually bound (useful when the config asked for port 0). */
  get port (): number { return this.listener?.port ?? 0 }

  /** The addresses this node serves, printed at start. */
  addresses (): string[] {
    const host = this.config.listen.host.includes(':') ? `[${this.config.listen.host}]` : this.config.listen.host
    const secure = this.config.tls !== undefined
    const lines = [`status  ${secure ? 'https' : 'http'}://${host}:${this.port}/status`]
    if (this.nbd !== null) {
      const nbdHost = this.config.nbd?.host.includes(':') === true ? `[${this.config.nbd.host}]` : this.config.nbd?.host ?? ''
      for (const e of this.exports.values()) {
        // NBD has no way to present a token: such an export is offered on the native protocol only.
        if (e.token !== undefined) lines.push(`nbd     (export '${e.name}' has a token: native protocol only, NBD cannot present one)`)
        else lines.push(`nbd     ${secure ? 'nbds' : 'nbd'}://${nbdHost}:${this.nbd.port}/${e.name}${e.tls === 'require' ? '  (TLS required)' : ''}`)
      }
    }
    for (const e of this.exports.values()) {
      lines.push(`export  ${this.exportUrl(e)}  (${e.device.type} device '${this.deviceName(e)}', ${e.readOnly || !e.device.writable ? 'read-only' : 'read-write'}${e.clientCert === 'require' ? ', client certificate required' : ''})`)
    }
    return lines
  }

  status (): unknown {
    return {
      name: this.config.name,
      id: this.nodeId,
      uptime: Math.round((Date.now() - this.startedAt) / 1000),
      version: dstVersion(),
      listen: formatAddress(this.config.listen.host, this.port),
      ...(this.nbd !== null && this.config.nbd !== undefined ? { nbd: formatAddress(this.config.nbd.host, this.nbd.port) } : {}),
      pool: { count: this.pool.count, size: this.pool.size, free: this.pool.available, waiting: this.pool.waiting },
      hash: { algorithm: HASH_ALGORITHM, threads: this.hasher.threads, queued: this.hasher.queued, ...this.hasher.stats },
      devices: this.registry.status(),
      verify: Object.fromEntries(this.mirrors().filter(([, m]) => m.lastVerify !== null).map(([name, m]) => [name, m.status().verify])),
      exports: [...this.exports.values()].map(e => ({
        name: e.name,
        device: this.deviceName(e),
        readOnly: e.readOnly || !e.device.writable,
        url: this.exportUrl(e),
        ...(e.clientCert === 'require' ? { clientCert: 'require', ...(e.allowSubjects !== undefined ? { allowSubjects: e.allowSubjects } : {}) } : {}),
        allow: e.allow.map(c => c.text),
        token: e.token !== undefined,
        shared: e.shared === true,
        ...(e.shared === true ? {} : { lease: e.lease.describe() }),
        connections: e.metrics.connections,
        inFlight: e.metrics.inFlight,
        digest: e.digest === true,
      })),
    }
  }

  /** Graceful stop: refuse new connections and requests, answer the ones received, flush, close. */
  stop (): Promise<void> {
    if (this.stopped === null) {
      this.stopped = (async () => {
        this.events.close()
        await Promise.all([this.listener?.stop(), this.nbd?.stop()])
        await this.registry.flushAll()
        this.listener?.closeAll()
        await this.registry.close()
        await this.hasher.close()
        await this.xor?.close()
        this.dataDirLock?.release()
        this.dataDirLock = null
      })()
    }
    return this.stopped
  }

  /**
   * Live array changes (dst array add/remove/split/replace): applied with I/O paused only for the switch, then recorded in
   * dataDir so a restart keeps them.
   */
  async changeArray (array: string, action: string, body: Record<string, unknown>): Promise<unknown> {
    const c = this.config
    // Checked as the config checks the same names (node/core/names.ts), before anything changes: what is recorded in
    // dataDir must load at the next start.
    const fields = ARRAY_ACTION_FIELDS[action]
    if (fields === undefined) throw usage(`unknown array action '${action}' (add, remove, split, replace, verify)`)
    for (const k of Object.keys(body)) if (!fields.includes(k)) throw usage(`"${k}": unknown field for ${action} (expected one of ${fields.join(', ')})`)
    const device = this.registry.get(array)
    if (device === undefined) throw new DstError(ErrorCode.NOTFOUND, `no device named '${array}' on node ${c.name}`)
    if (action === 'replace' && (device instanceof LinearDevice || device instanceof StripeDevice)) {
      if (typeof body.device !== 'string' || body.device === '') throw usage('give "device": the member to replace')
      check('device', nameProblem(body.device))
      return await this.replaceMember(array, device, body.device)
    }
    if (device instanceof ParityDevice && (action === 'verify' || action === 'replace')) {
      if (action === 'verify') return await this.startVerify(array, device, body)
      if (typeof body.device !== 'string' || body.device === '') throw usage('give "device": the member to replace')
      check('device', nameProblem(body.device))
      if (!device.legNames.includes(body.device)) throw usage(`parity '${array}': no member '${body.device}' (members: ${device.legNames.join(', ')})`)
      const member = this.registry.get(body.device)
      if (member instanceof RemoteDevice && member.state === 'foreign') await member.acceptFoundDisk()
      const detail = await device.replaceLeg(body.device)
      this.log(detail)
      return { ok: true, message: detail, array: device.status() }
    }
    if (!(device instanceof MirrorDevice)) {
      const what = action === 'verify' ? 'only mirror and parity arrays have redundancy to verify' : device instanceof ParityDevice ? 'a parity array keeps its members (replace one that is foreign with \'dst array replace\')' : 'only mirror arrays change members while running'
      throw new DstError(ErrorCode.NOTMIRROR, `'${array}' is a ${device.type} device; ${what}`)
    }
    if (action === 'verify') return await this.startVerify(array, device, body)
    if (c.dataDir === null) throw new DstError(ErrorCode.NOSTATE, 'this node has no dataDir to record array changes in')
    const leg = body.device
    if (typeof leg !== 'string' || leg === '') throw usage('give "device": a device name or a dst:// URL')
    if (!(action === 'add' && leg.startsWith('dst://'))) check('device', nameProblem(leg))
    if (body.name !== undefined) check('name', nameProblem(body.name))
    if (body.token !== undefined && (typeof body.token !== 'string' || body.token === '')) throw usage('"token": expected a non-empty string')
    if (body.export !== undefined) check('export', exportNameProblem(body.export))
    if (body.readOnly !== undefined && typeof body.readOnly !== 'boolean') throw usage('"readOnly": expected true or false')
    if (body.writable !== undefined && typeof body.writable !== 'boolean') throw usage('"writable": expected true or false')
    if (body.writable === true && body.readOnly === true) throw usage('give "writable" or "readOnly", not both')
    // A copy: a change that fails half-way leaves the recorded state as it was.
    const overlay: NodeOverlay = JSON.parse(JSON.stringify(c.overlay ?? emptyOverlay()))
    let detail: string
    let added: string | undefined
    if (action !== 'add' && !device.legNames.includes(leg)) throw usage(`mirror '${array}': no leg '${leg}' (legs: ${device.legNames.join(', ')})`)
    switch (action) {
      case 'add': {
        let name = leg
        let member: Device
        if (leg.startsWith('dst://') || leg.startsWith('dsts://')) {
          const target = parseDstUrl(leg)
          if (typeof target === 'string') throw usage(`"device": ${target}`)
          if (target.port === this.port && sameHost(target.host, c.listen.host)) throw usage(`"device": ${leg} is this node's own address; a remote leg is another node's export`)
          name = typeof body.name === 'string' ? body.name : `${target.export}@${target.host}_${target.port}`.replace(/[^A-Za-z0-9._-]/g, '_')
          if (nameProblem(name) !== null) throw usage(`"name": the name made from the URL, '${name}', is not a device name; give one with "name"`)
          if (this.registry.get(name) !== undefined) throw new DstError(ErrorCode.EXISTS, `a device named '${name}' already exists; pick another with "name"`)
          const token = typeof body.token === 'string' ? body.token : undefined
          member = await RemoteDevice.open(target, {
            ...(target.tls === true ? { tls: clientTls(this.tls ?? undefined) } : {}),
            token, pingInterval: c.pingInterval, reconnectTimeout: c.reconnectTimeout, requestTimeout: c.requestTimeout,
            owner: writerId(c, name), node: { name: c.name, id: this.nodeId }, log: m => this.log(`device '${name}': ${m}`),
            hasher: this.hasher,
            onDisk: disk => { this.remotes?.set(name, leg, disk).catch(err => this.log(`device '${name}': cannot remember its disk: ${(err as Error).message}`)) },
          })
          this.registry.add(name, member)
          overlay.devices[name] = { type: 'remote', url: leg, ...(token !== undefined ? { token } : {}) }
        } else {
          const found = this.registry.get(leg)
          if (found === undefined) throw new DstError(ErrorCode.NOTFOUND, `no device named '${leg}' on node ${c.name}`)
          const owner = this.registry.ownerOf(leg)
          if (owner !== undefined) throw new DstError(ErrorCode.INUSE, `'${leg}' is already a member of '${owner}'`)
          if (this.registry.contains(leg, array) || leg === array) throw new DstError(ErrorCode.CYCLE, `'${leg}' contains '${array}': adding it would make a cycle`)
          const exported = [...this.exports.values()].find(e => e.device === found)
          if (exported !== undefined) throw new DstError(ErrorCode.INUSE, `'${leg}' is exported as '${exported.name}'; a leg must have one writer, the mirror`)
          member = found
        }
        await device.addLeg({ name, device: member })
        added = name
        detail = `leg '${name}' added to '${array}': everything on it is overwritten by a full sync (started)`
        break
      }
      case 'replace': {
        // The operator takes on the disk now behind a foreign leg: a remote device is told to accept it first.
        const member = this.registry.get(leg)
        if (member instanceof RemoteDevice && member.state === 'foreign' && device.legNames.includes(leg)) await member.acceptFoundDisk()
        detail = await device.replaceLeg(leg)
        break
      }
      case 'remove': {
        await device.removeLeg(leg)
        detail = `leg '${leg}' removed from '${array}'`
        break
      }
      case 'split': {
        const exportName = typeof body.export === 'string' ? body.export : undefined
        if (exportName !== undefined && (this.exports.has(exportName) || RESERVED_EXPORT_NAMES.includes(exportName))) {
          throw new DstError(ErrorCode.EXISTS, `export name '${exportName}' is taken`)
        }
        const detached = await device.splitLeg(leg)
        detail = `leg '${leg}' split off '${array}' as a point-in-time copy`
        if (exportName !== undefined) {
          // A split leg is a point-in-time copy (DST's snapshot): exported read-only unless asked for writable.
          const readOnly = body.writable !== true
          this.exports.set(exportName, {
            name: exportName, device: detached, readOnly, allow: LOOPBACK_ONLY.map(x => parseCidr(x) as Cidr),
            metrics: new ExportMetrics(), lease: new WriteLease(c.leaseTimeout), generation: this.generation,
          })
          this.exportDevices.set(exportName, leg)
          overlay.exports.push({ name: exportName, device: leg, readOnly })
          detail += `, exported ${readOnly ? 'read-only' : 'read-write'} as ${formatDstUrl({ host: c.listen.host, port: this.port, export: exportName })}`
        }
        break
      }
      default:
        throw usage(`unknown array action '${action}' (add, remove, split, replace, verify)`)
    }
    overlay.arrays[array] = { members: device.legNames }
    await writeOverlay(c.dataDir, overlay)
    c.overlay = overlay
    this.log(detail)
    return { ok: true, message: detail, ...(added !== undefined ? { leg: added } : {}), array: device.status() }
  }

  /**
   * A linear member whose peer serves another disk takes that disk on: nothing is copied (a linear array keeps one
   * copy); the operator says the disk found is the member now. Nothing about the array's layout changes.
   */
  private async replaceMember (array: string, linear: LinearDevice | StripeDevice, leg: unknown): Promise<unknown> {
    const kind = linear.type
    const member = linear.members.find(m => m.name === leg)
    if (member === undefined) throw new DstError(ErrorCode.NOLEG, `${kind} '${array}': no member '${String(leg)}' (members: ${linear.members.map(m => m.name).join(', ')})`)
    if (!(member.device instanceof RemoteDevice) || member.device.state !== 'foreign') {
      throw new DstError(ErrorCode.NOTFOREIGN, `${kind} '${array}': member '${member.name}' is ${member.device.state}; replace takes on the other disk of a foreign remote member`)
    }
    const found = member.device.found?.identity ?? ''
    await member.device.acceptFoundDisk()
    const held = kind === 'linear' ? 'its range holds' : 'its chunks hold'
    const detail = `${kind} '${array}': member '${member.name}' now uses disk ${found}; ${held} whatever that disk holds (nothing was copied)`
    this.log(detail)
    return { ok: true, message: detail, array: linear.status() }
  }

  /**
   * Starts an online verify of a mirror (POST /arrays/NAME/verify). Answers at once with the report as it starts;
   * progress and the result are in /status under `verify`. With "wait": true, answers when it is done.
   */
  private async startVerify (array: string, mirror: MirrorDevice | ParityDevice, body: Record<string, unknown>): Promise<unknown> {
    const from = body.from
    if (from !== undefined && (typeof from !== 'string' || from === '')) throw new DstError(ErrorCode.USAGE, '"from" must name a leg')
    if (body.repair !== undefined && typeof body.repair !== 'boolean') throw new DstError(ErrorCode.USAGE, '"repair" must be true or false')
    if (from !== undefined && body.repair !== true) throw new DstError(ErrorCode.USAGE, '"from" names the leg to repair from; it needs "repair": true')
    // A leg that is not there is a mistake in the request (400), not a state of the array.
    if (typeof from === 'string' && mirror instanceof ParityDevice) throw new DstError(ErrorCode.USAGE, `parity '${array}': a repair rewrites parity from the data members; "from" does not apply`)
    if (typeof from === 'string' && !mirror.legNames.includes(from)) throw new DstError(ErrorCode.USAGE, `mirror '${array}': no leg '${from}' (legs: ${mirror.legNames.join(', ')})`)
    const rate = body.rate
    if (rate !== undefined && (typeof rate !== 'number' || !Number.isFinite(rate) || rate < 0)) throw new DstError(ErrorCode.USAGE, '"rate" must be bytes per second (0: no limit)')
    const before = mirror.lastVerify
    const run = mirror.verify({ repair: body.repair === true, from: from as string | undefined, rate: rate as number | undefined })
    const started = mirror.lastVerify
    // A verify refused at the start (busy, unknown leg) rejects before it has a report of its own.
    if (started === null || started === before) return await run
    run.catch(() => {})
    if (body.wait === true) return { ok: true, message: `verify of '${array}' done`, verify: await run }
    this.log(`verify of '${array}' started${body.repair === true ? ` (repair${from !== undefined ? ` from '${String(from)}'` : ''})` : ''}`)
    return { ok: true, message: `verify of '${array}' started`, verify: started }
  }

  private mirrors (): Array<[string, MirrorDevice | ParityDevice]> {
    return this.registry.all().filter((x): x is [string, MirrorDevice | ParityDevice] => x[1] instanceof MirrorDevice || x[1] instanceof ParityDevice)
  }

  private arrayCounters (): ArrayCounters[] {
    return this.mirrors().map(([name, m]) => ({
      name,
      resyncCopiedBytes: m.resyncedBytes,
      resyncComparedBytes: m.comparedBytes,
      resyncSkippedBytes: m.skippedBytes,
      verifyRuns: m.verifyTotals.runs,
      verifyBytes: m.verifyTotals.bytes,
      verifyMismatches: m.verifyTotals.mismatches,
      verifyRepaired: m.verifyTotals.repaired,
      verifyRunning: m.lastVerify?.state === 'running' ? 1 : 0,
      legs: m.legStates().reduce<Record<string, number>>((acc, l) => { acc[l.state] = (acc[l.state] ?? 0) + 1; return acc }, {}),
    }))
  }

  private deviceGauges (): DeviceGauge[] {
    return this.registry.all().map(([name, d]) => ({ name, type: d.type, state: String(d.status().state) }))
  }

  private deviceName (e: ServedExport): string {
    const added = this.exportDevices.get(e.name)
    if (added !== undefined) return added
    return this.config.exports.find(x => x.name === e.name)?.device ?? '?'
  }
}
