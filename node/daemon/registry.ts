// The node's devices by name, opened from the config in dependency order and closed in reverse.

import { ConfigError, DstError, ErrorCode } from '../core/errors'
import type { Device, DeviceStatus } from '../core/device'
import { isArrayConfig, type DeviceConfig, type NodeConfig } from './config'
import { FileDevice } from '../devices/file-device'
import { MemoryDevice } from '../devices/memory-device'
import { RemoteDevice, type RemoteDisk } from '../../export/native/remote-device'
import type { ClientTls } from '../../export/native/client'
import type { TlsMaterial } from '../core/tls'
import { HandshakeFlag } from '../../export/native/codec'
import { LinearDevice, type Member } from '../../algorithms/linear'
import { StripeDevice, stripeChunkProblem } from '../../algorithms/stripe'
import { MirrorDevice } from '../../algorithms/mirror'
import { ParityDevice } from '../../algorithms/parity/parity'
import type { XorEngine } from '../core/xor'
import { FileIntentStore } from '../../algorithms/intent-store'
import * as path from 'node:path'
import { derivedIdentity, nodeIdentity } from '../core/identity'
import type { RemoteMemory } from './remotes'
import type { Hasher } from '../core/hasher'

export interface RegistryOptions {
  log: (message: string) => void
  /** How long to keep trying to reach a remote device's node at start (ms). */
  remoteOpenTimeout: number
  pingInterval: number
  /** What remote devices found at their last handshake (dataDir/remotes.json), or null without a dataDir. */
  remotes: RemoteMemory | null
  /** The node's hash workers, given to every device it opens. */
  hasher: Hasher
  /** The node's XOR workers, for parity arrays (made when the first one opens); without, XOR runs on the loop. */
  xor?: () => XorEngine
  /** The node's TLS material (config `tls`, read at start): dsts:// remote devices check servers against its CA and present its certificate. */
  tls?: TlsMaterial
}

/** What a dsts:// remote device connects with: the node's CA, its own certificate (as its client certificate), and a name to check. */
export function clientTls (tls: TlsMaterial | undefined, servername?: string): ClientTls {
  return {
    ...(tls?.ca !== undefined ? { ca: tls.ca } : {}),
    ...(tls !== undefined ? { cert: tls.cert, key: tls.key } : {}),
    ...(tls?.passphrase !== undefined ? { passphrase: tls.passphrase } : {}),
    ...(servername !== undefined ? { servername } : {}),
  }
}

export class DeviceRegistry {
  private readonly devices = new Map<string, Device>()
  private readonly order: string[] = []

  get (name: string): Device | undefined { return this.devices.get(name) }

  /** Registers a device opened while running (a remote leg added by URL). */
  add (name: string, device: Device): void {
    if (this.devices.has(name)) throw new DstError(ErrorCode.EXISTS, `device '${name}' already exists`)
    this.devices.set(name, device)
    this.order.push(name)
  }

  /** The array that has `name` as a member, if any. */
  ownerOf (name: string): string | undefined {
    for (const [owner, d] of this.devices) {
      if (memberNames(d).includes(name)) return owner
    }
    return undefined
  }

  /** True when `target` is somewhere inside the device tree of `name`. */
  contains (name: string, target: string): boolean {
    const d = this.devices.get(name)
    if (d === undefined) return false
    return memberNames(d).some(m => m === target || this.contains(m, target))
  }
  names (): string[] { return [...this.order] }

  /** Opens every device; on any failure closes what was opened and rethrows. */
  async open (config: NodeConfig, options: RegistryOptions): Promise<void> {
    try {
      // Leaves first (in parallel, so one slow peer does not serialise the rest), then arrays.
      const leaves = [...config.devices.values()].filter(d => !isArrayConfig(d))
      const opened = await Promise.allSettled(leaves.map(d => this.openLeaf(d, config, options)))
      for (const [i, r] of opened.entries()) {
        if (r.status === 'fulfilled') { this.devices.set(leaves[i].name, r.value); this.order.push(leaves[i].name) }
      }
      const failed = opened.find(r => r.status === 'rejected')
      if (failed !== undefined) throw (failed as PromiseRejectedResult).reason
      for (const d of arrayOrder(config)) {
        this.devices.set(d.name, await this.openArray(d, config, options))
        this.order.push(d.name)
      }
    } catch (err) {
      await this.close()
      throw err
    }
  }

  private async openLeaf (d: DeviceConfig, config: NodeConfig, options: RegistryOptions): Promise<Device> {
    const log = (m: string): void => options.log(`device '${d.name}': ${m}`)
    try {
      switch (d.type) {
        case 'file':
          return await FileDevice.open({ path: d.path, size: d.size, readOnly: d.readOnly, blockSize: d.blockSize, warn: log, hasher: options.hasher })
        case 'memory':
          return new MemoryDevice({ size: d.size, blockSize: d.blockSize, hasher: options.hasher })
        case 'remote': {
          const remotes = options.remotes
          const url = d.url
          return await RemoteDevice.open({ host: d.host, port: d.port, export: d.export }, {
            token: d.token,
            queueDepth: d.queueDepth,
            ...(d.tls === true ? { tls: clientTls(options.tls, d.servername) } : {}),
            openTimeout: options.remoteOpenTimeout,
            pingInterval: config.pingInterval,
            reconnectTimeout: d.reconnectTimeout ?? config.reconnectTimeout,
            requestTimeout: d.requestTimeout ?? config.requestTimeout,
            owner: writerId(config, d.name),
            // Read-only: connects as a reader, so no write lease is asked for (the export's writer keeps it).
            ...(d.readOnly === true ? { access: 'ro' as const } : {}),
            node: { name: config.name, id: config.nodeId ?? nodeIdentity(null) },
            // A peer that cannot be reached now opens connecting with what it served last time, or (a mirror leg
            // this dataDir has no handshake of) with the size and identity its mirror's superblock records.
            expect: remotes?.get(d.name, url) ?? await legOfSuperblock(config, d.name, log),
            onDisk: disk => { remotes?.set(d.name, url, disk).catch(err => log(`cannot remember its disk: ${(err as Error).message}`)) },
            log,
            hasher: options.hasher,
          })
        }
        default:
          throw new Error(`not a leaf: ${d.type}`) // an assertion: the config's parser knows every type
      }
    } catch (err) {
      const e = err as Error & { code?: string }
      if (e.message.startsWith(`device '${d.name}'`)) throw err
      e.message = `device '${d.name}': ${e.message}`
      throw e
    }
  }

  private async openArray (d: DeviceConfig, config: NodeConfig, options: RegistryOptions): Promise<Device> {
    if (!isArrayConfig(d)) throw new Error(`not an array: ${d.type}`) // an assertion, as above
    const members: Member[] = d.members.map(name => ({ name, device: this.devices.get(name) as Device }))
    for (const m of members) {
      if (m.device.size === 0) throw new ConfigError(`devices.${d.name}.members: '${m.name}' has size 0`)
    }
    if (d.type === 'linear') return new LinearDevice(members, { hasher: options.hasher })
    if (d.type === 'stripe') {
      const problem = stripeChunkProblem(d.chunk, members.map(m => m.device.blockSize))
      if (problem !== null) throw new ConfigError(`devices.${d.name}.chunk: ${problem} (of member '${members.find(m => d.chunk % m.device.blockSize !== 0)?.name ?? '?'}')`)
      return new StripeDevice({ members, chunk: d.chunk, hasher: options.hasher })
    }
    if (config.dataDir === null) throw new ConfigError(`devices.${d.name}: a ${d.type === 'parity' ? 'parity array' : 'mirror'} needs the node's dataDir for its write-intent map`)
    const store = new FileIntentStore(intentPath(config.dataDir, d))
    try {
      if (d.type === 'parity') {
        const engine = options.xor?.()
        return await ParityDevice.open({
          name: d.name, members, layout: d.layout, chunk: d.chunk, blockSize: d.block, region: d.region, store,
          resyncRate: d.resyncRate, forceDegradedStart: d.forceDegradedStart, assumeClean: d.assumeClean, initialSync: d.initialSync,
          ...(engine !== undefined ? { xor: (dest: Uint8Array, sources: readonly Uint8Array[]) => engine.xor(dest, sources) } : {}),
          log: m => options.log(`parity '${d.name}': ${m}`),
        })
      }
      return await MirrorDevice.open({
        name: d.name, legs: members, region: d.region, store, resyncRate: d.resyncRate, compare: d.checksumResync,
        // Live changes may have removed the leg named at creation; it matters only when the array is created.
        syncFrom: d.syncFrom !== undefined && d.members.includes(d.syncFrom) ? d.syncFrom : undefined,
        assumeClean: d.assumeClean,
        log: m => options.log(`mirror '${d.name}': ${m}`),
      })
    } catch (err) {
      await store.close()
      throw err
    }
  }

  /** Every open device by name, members before the arrays that use them. */
  all (): Array<[string, Device]> {
    return this.order.map(name => [name, this.devices.get(name) as Device])
  }

  status (): Record<string, DeviceStatus> {
    const out: Record<string, DeviceStatus> = {}
    for (const name of this.order) out[name] = (this.devices.get(name) as Device).status()
    return out
  }

  /**
   * Flushes every device that can be reached, at a stop. A device whose peer is away (reconnecting, failed, another
   * disk) is not waited for: what it has not made durable is what its array's intent map marks for it. Returns the
   * names of the devices left unflushed.
   */
  async flushAll (patience = 3000): Promise<string[]> {
    const skipped: string[] = []
    const reachable = (d: Device): boolean => d.state === 'online' || d.state === 'degraded'
    const flushes = Promise.all([...this.devices.entries()].filter(([, d]) => d.writable && d.state !== 'closed').map(([name, d]) => {
      if (!reachable(d)) { skipped.push(`${name} (${d.state})`); return Promise.resolve() }
      return d.flush().catch(() => {})
    }))
    // A peer lost while its flush was under way: after a short wait, what waits for it to come back fails instead.
    let timer: NodeJS.Timeout | undefined
    const late = await Promise.race([flushes.then(() => false), new Promise<boolean>(resolve => { timer = setTimeout(() => resolve(true), patience) })])
    clearTimeout(timer)
    if (late) {
      for (const [name, d] of this.devices) {
        if (d instanceof RemoteDevice && !reachable(d) && d.abandonWaiting('the node is stopping and its peer is away') > 0) skipped.push(`${name} (${d.state})`)
      }
      await Promise.race([flushes, new Promise<void>(resolve => { timer = setTimeout(resolve, patience) })])
      clearTimeout(timer)
    }
    return skipped
  }

  async close (): Promise<void> {
    for (const name of [...this.order].reverse()) {
      await (this.devices.get(name) as Device).close().catch(() => {})
    }
    this.devices.clear()
    this.order.length = 0
  }
}

/** Arrays in an order where every member opens before the array that uses it (the config has no cycles). */
function arrayOrder (config: NodeConfig): DeviceConfig[] {
  const out: DeviceConfig[] = []
  const done = new Set<string>()
  const visit = (name: string): void => {
    if (done.has(name)) return
    done.add(name)
    const d = config.devices.get(name) as DeviceConfig
    if (!isArrayConfig(d)) return
    for (const m of d.members) visit(m)
    out.push(d)
  }
  for (const name of config.devices.keys()) visit(name)
  return out
}

/**
 * The writer id this node presents for a remote device: derived from the node's identity (dataDir/node-id), so it is
 * stable across restarts (the node gets its lease back) and differs between two machines that run the same config.
 */
export function writerId (config: NodeConfig, device: string): string {
  return derivedIdentity(`writer:${config.nodeId ?? nodeIdentity(null)}:${device}`)
}

/**
 * What a mirror's superblock says of leg `name` (the array's size, the leg's identity), as the disk to expect of a
 * remote leg never reached from this dataDir. The block size is only advice on the wire; 4 KiB, as a file's. Trim
 * is not assumed (a leg that cannot trim would fail the mirror's trims); the first handshake tells the rest.
 */
async function legOfSuperblock (config: NodeConfig, name: string, log: (m: string) => void): Promise<RemoteDisk | undefined> {
  const mirror = [...config.devices.values()].find(d => (d.type === 'mirror' || d.type === 'parity') && d.members.includes(name))
  if (mirror === undefined || config.dataDir === null) return undefined
  const loaded = await new FileIntentStore(intentPath(config.dataDir, mirror)).load().catch(() => null)
  const record = loaded?.superblock.legs.find(l => l.name === name && l.identity !== '')
  if (loaded == null || record === undefined) return undefined
  log(`no handshake remembered; if unreachable, it opens with ${mirror.type} '${mirror.name}''s superblock: ${loaded.superblock.size} bytes, identity ${record.identity}`)
  return { size: loaded.superblock.size, blockSize: 4096, maxRequest: 64 * 1024, identity: record.identity, flags: HandshakeFlag.FLUSH }
}

/** Where a redundant array keeps its write-intent map in dataDir. */
function intentPath (dataDir: string, d: DeviceConfig): string {
  return path.join(dataDir, `${d.type === 'parity' ? 'parity' : 'mirror'}-${d.name}.intent`)
}

function memberNames (d: Device): string[] {
  if (d instanceof MirrorDevice || d instanceof ParityDevice) return d.legNames
  if (d instanceof LinearDevice || d instanceof StripeDevice) return d.members.map(m => m.name)
  return []
}
