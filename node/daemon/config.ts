// The node's JSON config: parsed and validated completely before anything is created, so a bad config gets exactly
// one message naming the field and the problem (the CLI prints it and exits 2) and leaves no file behind.

import { parseDstUrl } from '../core/url'
import { DEFAULT_CHUNK, stripeChunkProblem } from '../../algorithms/stripe'
import { raid35Problem, raid5Problem } from '../../algorithms/parity/layout'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { availableParallelism, networkInterfaces } from 'node:os'
import { ConfigError } from '../core/errors'
import { parseSize } from '../core/size'
import { parseDuration } from '../core/duration'
import { NAME, RESERVED_EXPORT_NAMES } from '../core/names'
import { LOOPBACK_ONLY, parseCidr, type Cidr } from '../core/acl'
import { parseSubject, type TlsFiles } from '../core/tls'
import { applyOverlay, describeOverlay, overlayFile, readOverlay, type NodeOverlay } from './state'

export interface Address { host: string, port: number }

export type DeviceConfig =
  | { type: 'file', name: string, path: string, size?: number, readOnly: boolean, blockSize?: number }
  | { type: 'memory', name: string, size: number, blockSize?: number }
  | { type: 'remote', name: string, url: string, host: string, port: number, export: string, token?: string, queueDepth: number, reconnectTimeout?: number, requestTimeout?: number, readOnly?: boolean, tls?: boolean, servername?: string }
  | { type: 'mirror', name: string, members: string[], region: number, resyncRate: number, checksumResync: boolean, syncFrom?: string, assumeClean: boolean }
  | { type: 'linear', name: string, members: string[] }
  | { type: 'stripe', name: string, members: string[], chunk: number }
  | { type: 'parity', name: string, layout: 'raid35' | 'raid5', members: string[], chunk: number, block?: number, region: number, resyncRate: number, forceDegradedStart: boolean, assumeClean: boolean, initialSync: boolean }

/** The arrays among the device kinds: those made of other devices of the config. */
export type ArrayConfig = Extract<DeviceConfig, { members: string[] }>

export function isArrayConfig (d: DeviceConfig): d is ArrayConfig {
  return d.type === 'mirror' || d.type === 'linear' || d.type === 'stripe' || d.type === 'parity'
}

export interface ExportConfig {
  name: string
  device: string
  readOnly: boolean
  allow: Cidr[]
  token?: string
  /** Several writers allowed: no write lease. */
  shared: boolean
  /** Wire digests on this export's connections (off by default). */
  digest: boolean
  /** "require": NBD clients must STARTTLS first (the export is hidden from plain connections). */
  tls?: 'require'
  /** "require": clients must present a certificate signed by tls.ca (and, with allowSubjects, one of those subjects). */
  clientCert?: 'require'
  allowSubjects?: string[]
}

/** The node's TLS (config `tls`): its certificate and key, the CA it trusts, and the listener that checks client certificates. */
export interface TlsConfig extends TlsFiles {
  /** HOST:PORT of the native listener with client certificates (node:tls), for exports with clientCert "require". */
  clientCertListen?: Address
}

export interface NodeConfig {
  name: string
  listen: Address
  nbd?: Address
  /** TLS on the listener, on NBD (STARTTLS) and for dsts:// remote devices. */
  tls?: TlsConfig
  /** Where the node keeps its state; null for a config-less `dst export`. */
  dataDir: string | null
  pool: { count: number, size: number }
  /** Worker threads that compute digests (HASH, checksum resync, verify, wire digests). */
  hash: { threads: number }
  maxInFlight: number
  pingInterval: number
  /** How long requests to a lost peer wait for it to come back (ms). */
  reconnectTimeout: number
  /** A request unanswered this long (ms) is sent again on a fresh connection. */
  requestTimeout: number
  /** How long a writer's lease on an export outlives its last connection (ms). */
  leaseTimeout: number
  devices: Map<string, DeviceConfig>
  exports: ExportConfig[]
  /** The config file's folder; relative paths were resolved against it. */
  baseDir: string
  /** Who may change arrays live (POST /arrays/...): addresses, and an optional token. */
  admin: { allow: Cidr[], token?: string }
  /** Live changes read from dataDir (see node/daemon/state.ts). */
  overlay?: NodeOverlay
  /** What the overlay changed over the config file, one line each (logged at start). */
  overlayChanges?: string[]
  /** This node's identity (node/core/identity.ts), set at start: writer ids derive from it. */
  nodeId?: string
}

export { NAME, RESERVED_EXPORT_NAMES }

/** The config `npm start` runs: one sparse file under ./data, exported to loopback, over NBD too (its usual port). */
export const DEFAULT_CONFIG = {
  name: 'dst',
  listen: '127.0.0.1:7001',
  nbd: '127.0.0.1:10809',
  dataDir: './data/state',
  devices: { disk0: { type: 'file', path: './data/disk0.img', size: '1GiB' } },
  exports: [{ device: 'disk0', name: 'disk0' }],
}

export function loadConfigFile (file: string): NodeConfig {
  let text: string
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (err) {
    throw new ConfigError(`config ${file}: cannot read it: ${(err as Error).message}`)
  }
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch (err) {
    throw new ConfigError(`config ${file}: not valid JSON: ${(err as Error).message}`)
  }
  const baseDir = path.dirname(path.resolve(file))
  const config = parseConfig(raw, baseDir, file)
  if (config.dataDir === null) return config
  // Array changes made live (dst array add/remove/split) are kept in dataDir and laid over the file.
  let overlay: NodeOverlay | null
  try {
    overlay = readOverlay(config.dataDir)
  } catch (err) {
    if (err instanceof ConfigError) throw err
    throw new ConfigError(`${overlayFile(config.dataDir)}: cannot read it: ${(err as Error).message}`)
  }
  if (overlay === null) return config
  const merged = parseConfig(applyOverlay(raw as Record<string, unknown>, overlay), baseDir, `${file} with ${overlayFile(config.dataDir)}`, { live: true })
  merged.overlay = overlay
  merged.overlayChanges = describeOverlay(raw as Record<string, unknown>, overlay)
  return merged
}

export function parseConfig (raw: unknown, baseDir: string, label = 'config', options: { live?: boolean } = {}): NodeConfig {
  const fail = (field: string, problem: string): never => { throw new ConfigError(`${label}: ${field}: ${problem}`) }
  if (!isObject(raw)) return fail('(top level)', 'expected a JSON object')
  allowKeys(raw, ['name', 'listen', 'nbd', 'dataDir', 'pool', 'hash', 'maxInFlight', 'pingInterval', 'reconnectTimeout', 'requestTimeout', 'leaseTimeout', 'admin', 'devices', 'exports', 'tls'], '', fail)

  const name = raw.name ?? 'dst'
  if (typeof name !== 'string' || !NAME.test(name)) fail('name', `expected a name of letters, digits, '.', '_' or '-', got ${JSON.stringify(raw.name)}`)
  if (raw.listen === undefined) fail('listen', 'missing (for example "127.0.0.1:7001")')
  const listen = parseAddress(raw.listen, 'listen', fail)
  const nbd = raw.nbd === undefined ? undefined : parseAddress(raw.nbd, 'nbd', fail)
  if (nbd !== undefined && nbd.port !== 0 && nbd.host === listen.host && nbd.port === listen.port) fail('nbd', 'must differ from listen')
  const dataDir = raw.dataDir === undefined ? path.join(baseDir, 'state', name as string) : resolvePath(raw.dataDir, 'dataDir', baseDir, fail)

  const pool = { count: 64, size: 1024 * 1024 }
  if (raw.pool !== undefined) {
    if (!isObject(raw.pool)) fail('pool', 'expected an object like { "count": 64, "size": "1MiB" }')
    const p = raw.pool as Record<string, unknown>
    allowKeys(p, ['count', 'size'], 'pool.', fail)
    if (p.count !== undefined) pool.count = positiveInt(p.count, 'pool.count', 1, 1 << 20, fail)
    if (p.size !== undefined) {
      const size = sizeOf(p.size, 'pool.size', fail)
      if (size < 4096 || size > 64 * 1024 * 1024 || size % 512 !== 0) fail('pool.size', `must be a multiple of 512 between 4KiB and 64MiB, got ${size}`)
      pool.size = size
    }
  }
  const hash = { threads: Math.max(1, Math.min(4, availableParallelism() - 1)) }
  if (raw.hash !== undefined) {
    if (!isObject(raw.hash)) fail('hash', 'expected an object like { "threads": 2 }')
    const h = raw.hash as Record<string, unknown>
    allowKeys(h, ['threads'], 'hash.', fail)
    if (h.threads !== undefined) hash.threads = positiveInt(h.threads, 'hash.threads', 1, 64, fail)
  }
  const maxInFlight = raw.maxInFlight === undefined ? 128 : positiveInt(raw.maxInFlight, 'maxInFlight', 1, 65536, fail)
  const pingInterval = raw.pingInterval === undefined ? 10000 : durationOf(raw.pingInterval, 'pingInterval', 100, 3600000, fail)
  const reconnectTimeout = raw.reconnectTimeout === undefined ? 30000 : durationOf(raw.reconnectTimeout, 'reconnectTimeout', 100, 86400000, fail)
  const requestTimeout = raw.requestTimeout === undefined ? 30000 : durationOf(raw.requestTimeout, 'requestTimeout', 100, 3600000, fail)
  const leaseTimeout = raw.leaseTimeout === undefined ? reconnectTimeout : durationOf(raw.leaseTimeout, 'leaseTimeout', 100, 86400000, fail)

  const admin = parseAccess(raw.admin, 'admin', fail)
  const tls = raw.tls === undefined ? undefined : parseTls(raw.tls, baseDir, listen, nbd, fail)

  if (raw.devices === undefined) fail('devices', 'missing: a node needs at least one device')
  if (!isObject(raw.devices)) fail('devices', 'expected an object mapping device names to devices')
  const devices = new Map<string, DeviceConfig>()
  for (const [dname, d] of Object.entries(raw.devices as Record<string, unknown>)) {
    const field = `devices.${dname}`
    if (!NAME.test(dname)) fail(field, 'a device name is letters, digits, \'.\', \'_\' or \'-\' (at most 64)')
    devices.set(dname, parseDevice(dname, d, field, baseDir, fail, options.live === true))
  }
  if (devices.size === 0) fail('devices', 'empty: a node needs at least one device')
  checkMembers(devices, fail)
  checkFiles(devices, fail)

  const exportList: ExportConfig[] = []
  if (raw.exports !== undefined && !Array.isArray(raw.exports)) fail('exports', 'expected an array')
  const seen = new Set<string>()
  for (const [i, e] of ((raw.exports ?? []) as unknown[]).entries()) {
    const field = `exports[${i}]`
    if (!isObject(e)) fail(field, 'expected an object like { "device": "disk0" }')
    const x = e as Record<string, unknown>
    allowKeys(x, ['device', 'name', 'readOnly', 'allow', 'token', 'shared', 'digest', 'tls', 'clientCert', 'allowSubjects'], `${field}.`, fail)
    if (typeof x.device !== 'string') fail(`${field}.device`, 'missing: name the device to export')
    if (!devices.has(x.device as string)) fail(`${field}.device`, `no device named '${x.device as string}' in devices`)
    const ename = x.name ?? x.device
    if (typeof ename !== 'string' || !NAME.test(ename)) fail(`${field}.name`, `expected a name of letters, digits, '.', '_' or '-', got ${JSON.stringify(x.name)}`)
    if (RESERVED_EXPORT_NAMES.includes(ename as string)) fail(`${field}.name`, `'${ename as string}' is reserved for the node's HTTP pages`)
    if (seen.has(ename as string)) fail(`${field}.name`, `duplicate export name '${ename as string}'`)
    seen.add(ename as string)
    if (x.readOnly !== undefined && typeof x.readOnly !== 'boolean') fail(`${field}.readOnly`, 'expected true or false')
    const { allow, token } = parseAccess({ allow: x.allow, token: x.token }, field, fail)
    if (x.shared !== undefined && typeof x.shared !== 'boolean') fail(`${field}.shared`, 'expected true or false')
    if (x.digest !== undefined && typeof x.digest !== 'boolean') fail(`${field}.digest`, 'expected true or false')
    const certs = parseExportTls(x, field, tls, fail)
    exportList.push({ name: ename as string, device: x.device as string, readOnly: x.readOnly === true, allow, token, shared: x.shared === true, digest: x.digest === true, ...certs })
  }

  checkLegsNotExported(devices, exportList, fail)
  checkNotSelf(devices, listen, fail)

  return { name: name as string, listen, nbd, ...(tls !== undefined ? { tls } : {}), dataDir, pool, hash, maxInFlight, pingInterval, reconnectTimeout, requestTimeout, leaseTimeout, devices, exports: exportList, baseDir, admin }
}

/** `tls`: { cert, key, ca, passphrase, clientCertListen }; the files must be readable (they are read at start). */
function parseTls (value: unknown, baseDir: string, listen: Address, nbd: Address | undefined, fail: Fail): TlsConfig {
  if (!isObject(value)) return fail('tls', 'expected an object like { "cert": "n1-cert.pem", "key": "n1-key.pem", "ca": "ca-cert.pem" }')
  allowKeys(value, ['cert', 'key', 'ca', 'passphrase', 'clientCertListen'], 'tls.', fail)
  const file = (k: 'cert' | 'key' | 'ca'): string => {
    const p = resolvePath(value[k], `tls.${k}`, baseDir, fail)
    try { fs.accessSync(p, fs.constants.R_OK) } catch (err) { fail(`tls.${k}`, `cannot read ${p}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`) }
    return p
  }
  if (value.cert === undefined) fail('tls.cert', 'missing: the node\'s certificate (PEM)')
  if (value.key === undefined) fail('tls.key', 'missing: the node\'s private key (PEM)')
  if (value.passphrase !== undefined && (typeof value.passphrase !== 'string' || value.passphrase === '')) fail('tls.passphrase', 'expected a non-empty string')
  const out: TlsConfig = { cert: file('cert'), key: file('key') }
  if (value.ca !== undefined) out.ca = file('ca')
  if (value.passphrase !== undefined) out.passphrase = value.passphrase as string
  if (value.clientCertListen !== undefined) {
    const a = parseAddress(value.clientCertListen, 'tls.clientCertListen', fail)
    if (a.port !== 0 && a.host === listen.host && a.port === listen.port) fail('tls.clientCertListen', 'must differ from listen')
    if (a.port !== 0 && nbd !== undefined && a.host === nbd.host && a.port === nbd.port) fail('tls.clientCertListen', 'must differ from nbd')
    if (out.ca === undefined) fail('tls.clientCertListen', 'needs tls.ca: client certificates are checked against it')
    out.clientCertListen = a
  }
  return out
}

/** An export's `tls`, `clientCert` and `allowSubjects`, which need the node's `tls` (and its `ca`). */
function parseExportTls (x: Record<string, unknown>, field: string, tls: TlsConfig | undefined, fail: Fail): Pick<ExportConfig, 'tls' | 'clientCert' | 'allowSubjects'> {
  const out: Pick<ExportConfig, 'tls' | 'clientCert' | 'allowSubjects'> = {}
  if (x.tls !== undefined) {
    if (x.tls !== 'require') fail(`${field}.tls`, 'expected "require" (NBD clients must STARTTLS; the native listener is TLS whenever the node has tls)')
    if (tls === undefined) fail(`${field}.tls`, 'needs the node\'s tls (cert and key)')
    out.tls = 'require'
  }
  if (x.allowSubjects !== undefined) {
    if (!Array.isArray(x.allowSubjects) || x.allowSubjects.length === 0) fail(`${field}.allowSubjects`, 'expected a non-empty array of subjects like ["CN=n2"]')
    for (const [j, s] of (x.allowSubjects as unknown[]).entries()) {
      const p = parseSubject(s)
      if (typeof p === 'string') fail(`${field}.allowSubjects[${j}]`, p)
    }
    out.allowSubjects = x.allowSubjects as string[]
  }
  if (x.clientCert !== undefined && x.clientCert !== 'require') fail(`${field}.clientCert`, 'expected "require"')
  if (x.clientCert === 'require' || out.allowSubjects !== undefined) {
    const what = x.clientCert === 'require' ? `${field}.clientCert` : `${field}.allowSubjects`
    if (tls?.ca === undefined) fail(what, 'needs the node\'s tls with a ca: client certificates are checked against it')
    out.clientCert = 'require'
  }
  return out
}

type Fail = (field: string, problem: string) => never

/** `allow` (addresses/CIDRs, default loopback only) and `token` of an export or of the admin endpoints. */
function parseAccess (value: unknown, field: string, fail: Fail): { allow: Cidr[], token?: string } {
  if (value === undefined) return { allow: LOOPBACK_ONLY.map(c => parseCidr(c) as Cidr) }
  if (!isObject(value)) return fail(field, 'expected an object like { "allow": ["127.0.0.0/8"], "token": "secret" }')
  const x = value
  let allow: Cidr[]
  if (x.allow === undefined) {
    allow = LOOPBACK_ONLY.map(c => parseCidr(c) as Cidr)
  } else {
    if (!Array.isArray(x.allow)) fail(`${field}.allow`, 'expected an array of addresses or CIDR blocks, like ["127.0.0.0/8"]')
    allow = (x.allow as unknown[]).map((c, j) => {
      const cidr = parseCidr(c)
      return typeof cidr === 'string' ? fail(`${field}.allow[${j}]`, cidr) : cidr
    })
  }
  if (x.token !== undefined && (typeof x.token !== 'string' || x.token.length === 0)) fail(`${field}.token`, 'expected a non-empty string')
  return { allow, token: x.token as string | undefined }
}

function parseDevice (name: string, d: unknown, field: string, baseDir: string, fail: Fail, live: boolean): DeviceConfig {
  if (!isObject(d)) return fail(field, 'expected an object with a "type"')
  const x = d as Record<string, unknown>
  switch (x.type) {
    case 'file': {
      allowKeys(x, ['type', 'path', 'size', 'readOnly', 'blockSize'], `${field}.`, fail)
      if (x.path === undefined) fail(`${field}.path`, 'missing: a file device needs a path')
      const p = resolvePath(x.path, `${field}.path`, baseDir, fail)
      const size = x.size === undefined ? undefined : sizeOf(x.size, `${field}.size`, fail)
      if (size === 0) fail(`${field}.size`, 'a device cannot have size 0')
      if (x.readOnly !== undefined && typeof x.readOnly !== 'boolean') fail(`${field}.readOnly`, 'expected true or false')
      return { type: 'file', name, path: p, size, readOnly: x.readOnly === true, blockSize: blockSizeOf(x.blockSize, field, fail) }
    }
    case 'memory': {
      allowKeys(x, ['type', 'size', 'blockSize'], `${field}.`, fail)
      if (x.size === undefined) fail(`${field}.size`, 'missing: a memory device needs a size')
      const size = sizeOf(x.size, `${field}.size`, fail)
      if (size === 0) fail(`${field}.size`, 'a device cannot have size 0')
      if (size > 16 * 1024 ** 3) fail(`${field}.size`, 'a memory device is at most 16GiB')
      return { type: 'memory', name, size, blockSize: blockSizeOf(x.blockSize, field, fail) }
    }
    case 'remote': {
      allowKeys(x, ['type', 'url', 'token', 'queueDepth', 'reconnectTimeout', 'requestTimeout', 'readOnly', 'tls', 'servername'], `${field}.`, fail)
      if (x.tls !== undefined && typeof x.tls !== 'boolean') fail(`${field}.tls`, 'expected true or false (true: connect with TLS, as a dsts:// url does)')
      if (x.servername !== undefined && (typeof x.servername !== 'string' || x.servername === '')) fail(`${field}.servername`, 'expected the name the server\'s certificate carries')
      if (x.readOnly !== undefined && typeof x.readOnly !== 'boolean') fail(`${field}.readOnly`, 'expected true or false')
      if (x.url === undefined) fail(`${field}.url`, 'missing: a remote device needs a dst://HOST:PORT/NAME url')
      const url = parseDstUrl(x.url)
      if (typeof url === 'string') return fail(`${field}.url`, url)
      if (x.token !== undefined && (typeof x.token !== 'string' || x.token.length === 0)) fail(`${field}.token`, 'expected a non-empty string')
      const queueDepth = x.queueDepth === undefined ? 32 : positiveInt(x.queueDepth, `${field}.queueDepth`, 1, 4096, fail)
      const reconnectTimeout = x.reconnectTimeout === undefined ? undefined : durationOf(x.reconnectTimeout, `${field}.reconnectTimeout`, 100, 86400000, fail)
      const requestTimeout = x.requestTimeout === undefined ? undefined : durationOf(x.requestTimeout, `${field}.requestTimeout`, 100, 3600000, fail)
      const tls = url.tls === true || x.tls === true
      if (url.tls === true && x.tls === false) fail(`${field}.tls`, `false, but the url "${x.url as string}" is dsts://`)
      return { type: 'remote', name, url: x.url as string, ...url, token: x.token as string | undefined, queueDepth, reconnectTimeout, requestTimeout, ...(x.readOnly === true ? { readOnly: true } : {}), ...(tls ? { tls: true } : {}), ...(typeof x.servername === 'string' ? { servername: x.servername } : {}) }
    }
    case 'mirror':
    case 'linear': {
      allowKeys(x, x.type === 'mirror' ? ['type', 'members', 'region', 'resyncRate', 'checksumResync', 'syncFrom', 'assumeClean'] : ['type', 'members'], `${field}.`, fail)
      if (!Array.isArray(x.members) || x.members.length === 0 || !x.members.every(m => typeof m === 'string')) {
        fail(`${field}.members`, 'expected a non-empty array of device names')
      }
      const members = x.members as string[]
      // A mirror left with one leg by `dst array remove/split` is allowed (degraded); a config must give two.
      if (x.type === 'mirror' && members.length < 2 && !live) fail(`${field}.members`, 'a mirror needs at least two members')
      if (new Set(members).size !== members.length) fail(`${field}.members`, 'a device is listed twice')
      if (x.type === 'linear') return { type: 'linear', name, members }
      const region = x.region === undefined ? 1024 * 1024 : sizeOf(x.region, `${field}.region`, fail)
      if (region < 4096 || region > 64 * 1024 * 1024 || (region & (region - 1)) !== 0) fail(`${field}.region`, 'expected a power of two from 4KiB to 64MiB')
      const resyncRate = x.resyncRate === undefined ? 0 : sizeOf(x.resyncRate, `${field}.resyncRate`, fail)
      if (x.checksumResync !== undefined && typeof x.checksumResync !== 'boolean') fail(`${field}.checksumResync`, 'expected true or false')
      // How a new array's first sync goes (see MirrorOptions): the leg the others are overwritten from, or none.
      if (x.syncFrom !== undefined && (typeof x.syncFrom !== 'string' || (!live && !members.includes(x.syncFrom)))) fail(`${field}.syncFrom`, `expected the name of one of its members (${members.join(', ')})`)
      if (x.assumeClean !== undefined && typeof x.assumeClean !== 'boolean') fail(`${field}.assumeClean`, 'expected true or false')
      if (x.syncFrom !== undefined && x.assumeClean === true) fail(`${field}.assumeClean`, 'give syncFrom or assumeClean, not both')
      return { type: 'mirror', name, members, region, resyncRate, checksumResync: x.checksumResync !== false, syncFrom: x.syncFrom as string | undefined, assumeClean: x.assumeClean === true }
    }
    case 'stripe': {
      allowKeys(x, ['type', 'members', 'chunk'], `${field}.`, fail)
      if (!Array.isArray(x.members) || !x.members.every(m => typeof m === 'string')) fail(`${field}.members`, 'expected an array of device names')
      const members = x.members as string[]
      if (members.length < 2) fail(`${field}.members`, `a stripe needs at least two members, got ${members.length}`)
      if (new Set(members).size !== members.length) fail(`${field}.members`, 'a device is listed twice')
      const chunk = x.chunk === undefined ? DEFAULT_CHUNK : sizeOf(x.chunk, `${field}.chunk`, fail)
      // The members' block sizes are known only once they are open (a remote's comes with its handshake).
      const problem = stripeChunkProblem(chunk, [])
      if (problem !== null) fail(`${field}.chunk`, problem)
      return { type: 'stripe', name, members, chunk }
    }
    case 'parity': {
      allowKeys(x, ['type', 'layout', 'members', 'chunk', 'block', 'region', 'resyncRate', 'forceDegradedStart', 'assumeClean', 'initialSync'], `${field}.`, fail)
      if (x.layout !== 'raid35' && x.layout !== 'raid5') fail(`${field}.layout`, `expected "raid35" (DDRaid: whole blocks split over 2^k data members plus a parity member) or "raid5" (chunks with rotating parity), got ${JSON.stringify(x.layout)}`)
      const layout = x.layout as 'raid35' | 'raid5'
      if (!Array.isArray(x.members) || !x.members.every(m => typeof m === 'string')) fail(`${field}.members`, 'expected an array of device names')
      const members = x.members as string[]
      if (new Set(members).size !== members.length) fail(`${field}.members`, `a device is listed twice (${members.filter((m, i) => members.indexOf(m) !== i).join(', ')}): each member holds its own share`)
      const chunk = x.chunk === undefined ? 64 * 1024 : sizeOf(x.chunk, `${field}.chunk`, fail)
      // raid35's block: given, or (when the members are open) 4 KiB or the data members × their block size if larger.
      const block = x.block === undefined ? undefined : sizeOf(x.block, `${field}.block`, fail)
      if (layout === 'raid35') {
        if (x.chunk !== undefined) fail(`${field}.chunk`, 'raid35 has no chunks: every block is split over the data members (give "block" instead)')
        const problem = raid35Problem(members.length, block ?? Math.max(4096, (members.length - 1) * 512), [])
        if (problem !== null) fail(`${field}.${members.length < 3 || ((members.length - 1) & (members.length - 2)) !== 0 ? 'members' : 'block'}`, problem)
      } else {
        if (x.block !== undefined) fail(`${field}.block`, 'raid5 splits chunks, not blocks (give "chunk" instead)')
        const problem = raid5Problem(members.length, chunk, [])
        if (problem !== null) fail(`${field}.${members.length < 3 ? 'members' : 'chunk'}`, problem)
      }
      const region = x.region === undefined ? 1024 * 1024 : sizeOf(x.region, `${field}.region`, fail)
      if (region < 4096 || region > 64 * 1024 * 1024 || (region & (region - 1)) !== 0) fail(`${field}.region`, 'expected a power of two from 4KiB to 64MiB (bytes of each member per region of the write-intent map)')
      if (layout === 'raid5' && region % chunk !== 0) fail(`${field}.region`, `a region (${region} bytes of each member) must hold whole chunks (${chunk})`)
      const resyncRate = x.resyncRate === undefined ? 0 : sizeOf(x.resyncRate, `${field}.resyncRate`, fail)
      for (const k of ['forceDegradedStart', 'assumeClean', 'initialSync']) if (x[k] !== undefined && typeof x[k] !== 'boolean') fail(`${field}.${k}`, 'expected true or false')
      if (x.assumeClean === true && x.initialSync === true) fail(`${field}.initialSync`, 'give assumeClean or initialSync, not both')
      return { type: 'parity', name, layout, members, chunk, ...(block !== undefined ? { block } : {}), region, resyncRate, forceDegradedStart: x.forceDegradedStart === true, assumeClean: x.assumeClean === true, initialSync: x.initialSync === true }
    }
    case undefined:
      return fail(`${field}.type`, 'missing (one of file, remote, memory, mirror, linear, stripe, parity)')
    default:
      return fail(`${field}.type`, `unknown type ${JSON.stringify(x.type)} (one of file, remote, memory, mirror, linear, stripe, parity)`)
  }
}

/** Every member must exist, belong to one array only, and arrays must not form a cycle. */
function checkMembers (devices: Map<string, DeviceConfig>, fail: Fail): void {
  const owner = new Map<string, string>()
  for (const d of devices.values()) {
    if (!isArrayConfig(d)) continue
    for (const [i, m] of d.members.entries()) {
      if (!devices.has(m)) fail(`devices.${d.name}.members[${i}]`, `no device named '${m}'`)
      if (m === d.name) fail(`devices.${d.name}.members[${i}]`, 'an array cannot contain itself')
      const other = owner.get(m)
      if (other !== undefined) fail(`devices.${d.name}.members[${i}]`, `'${m}' is already a member of '${other}'`)
      owner.set(m, d.name)
    }
  }
  const state = new Map<string, 'visiting' | 'done'>()
  const visit = (name: string, trail: string[]): void => {
    const s = state.get(name)
    if (s === 'done') return
    if (s === 'visiting') fail(`devices.${name}.members`, `cycle: ${[...trail, name].join(' -> ')}`)
    state.set(name, 'visiting')
    const d = devices.get(name) as DeviceConfig
    if (isArrayConfig(d)) for (const m of d.members) visit(m, [...trail, name])
    state.set(name, 'done')
  }
  for (const name of devices.keys()) visit(name, [])
}

/**
 * Checks what can be checked about file devices without creating anything. Two devices on one file are refused
 * however they name it: by the file's device and inode when it exists (symlinks, hard links, `..`), else by the real
 * path of its folder.
 */
function checkFiles (devices: Map<string, DeviceConfig>, fail: Fail): void {
  const files = new Map<string, string>()
  const same = (key: string, d: DeviceConfig & { path: string }): void => {
    const other = files.get(key)
    if (other !== undefined) {
      const otherPath = (devices.get(other) as { path: string }).path
      fail(`devices.${d.name}.path`, otherPath === d.path ? `'${d.path}' is also the path of device '${other}'` : `'${d.path}' is the same file as device '${other}' ('${otherPath}'); a file backs one device only`)
    }
    files.set(key, d.name)
  }
  for (const d of devices.values()) {
    if (d.type !== 'file') continue
    const field = `devices.${d.name}.path`
    let st: fs.Stats
    try {
      st = fs.statSync(d.path)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') fail(field, `cannot stat '${d.path}': ${(err as Error).message}`)
      if (d.size === undefined) fail(`devices.${d.name}.size`, `'${d.path}' does not exist; give a size to create it`)
      if (d.readOnly) fail(field, `'${d.path}' does not exist (a read-only device is never created)`)
      const dir = path.dirname(d.path)
      if (!fs.existsSync(dir)) fail(field, `folder '${dir}' does not exist`)
      let real = d.path
      try { real = path.join(fs.realpathSync(dir), path.basename(d.path)) } catch {}
      same(`path:${real}`, d)
      continue
    }
    same(`inode:${st.dev}:${st.ino}`, d)
    if (!st.isFile() && !st.isBlockDevice()) fail(field, `'${d.path}' is neither a regular file nor a block device`)
    if (st.isFile() && st.size === 0 && d.size === undefined) fail(`devices.${d.name}.size`, `'${d.path}' is empty; give a size`)
    try {
      fs.accessSync(d.path, d.readOnly ? fs.constants.R_OK : fs.constants.R_OK | fs.constants.W_OK)
    } catch {
      fail(field, `'${d.path}' is not ${d.readOnly ? 'readable' : 'readable and writable'} by this process`)
    }
  }
}

/** A mirror leg has one writer, the mirror: neither it nor anything inside it may also be exported directly. */
function checkLegsNotExported (devices: Map<string, DeviceConfig>, exportList: ExportConfig[], fail: Fail): void {
  const mirrorOf = new Map<string, string>()
  const mark = (name: string, mirror: string): void => {
    mirrorOf.set(name, mirror)
    const d = devices.get(name)
    if (d !== undefined && isArrayConfig(d)) for (const m of d.members) mark(m, mirror)
  }
  for (const d of devices.values()) if (d.type === 'mirror' || d.type === 'parity') for (const m of d.members) mark(m, d.name)
  for (const [i, e] of exportList.entries()) {
    const mirror = mirrorOf.get(e.device)
    const kind = devices.get(mirror ?? '')?.type === 'parity' ? 'parity array' : 'mirror'
    if (mirror !== undefined) fail(`exports[${i}].device`, `'${e.device}' is a ${kind === 'mirror' ? 'leg' : 'member'} of ${kind} '${mirror}' (or inside one); it has one writer, the ${kind}: export '${mirror}' instead`)
  }
}

/** A remote device at this node's own listen address would wait for itself forever. */
function checkNotSelf (devices: Map<string, DeviceConfig>, listen: Address, fail: Fail): void {
  if (listen.port === 0) return
  for (const d of devices.values()) {
    if (d.type !== 'remote' || d.port !== listen.port || !sameHost(d.host, listen.host)) continue
    fail(`devices.${d.name}.url`, `"${d.url}" is this node's own listen address (${listen.host}:${listen.port}); a remote device is another node's export`)
  }
}

const LOOPBACK = new Set(['localhost', '::1', '0.0.0.0', '::'])

/**
 * Does `host` (of a URL) reach a node listening on `listen`? Names and loopback addresses are compared as the kernel
 * would route them: 'localhost' and 127.x are this machine; a wildcard listen address (0.0.0.0, ::) takes every
 * address of this machine.
 */
export function sameHost (host: string, listen: string): boolean {
  const local = (h: string): boolean => LOOPBACK.has(h.toLowerCase()) || /^127\./.test(h) || /^::ffff:127\./i.test(h) || ownAddresses().has(h)
  const norm = (h: string): string => { const x = h.toLowerCase().replace(/^::ffff:/, ''); return x === 'localhost' ? '127.0.0.1' : x }
  if (listen === '0.0.0.0' || listen === '::') return local(host)
  if (norm(host) === norm(listen)) return true
  // 'localhost' resolves to 127.0.0.1 or ::1: either is the same loopback listener only when listen is loopback too.
  return host.toLowerCase() === 'localhost' && (norm(listen) === '127.0.0.1' || listen === '::1')
}

function ownAddresses (): Set<string> {
  const out = new Set<string>()
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) out.add(a.address)
  return out
}

export function parseAddress (value: unknown, field: string, fail: Fail): Address {
  if (typeof value !== 'string') return fail(field, `expected "HOST:PORT", got ${JSON.stringify(value)}`)
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]]+):(\d{1,5})$/.exec(value)
  if (m === null) return fail(field, `"${value}" is not HOST:PORT`)
  const port = Number(m[2])
  if (port > 65535) fail(field, `port ${port} is out of range (0..65535)`)
  return { host: m[1].startsWith('[') ? m[1].slice(1, -1) : m[1], port }
}

function resolvePath (value: unknown, field: string, baseDir: string, fail: Fail): string {
  if (typeof value !== 'string' || value.length === 0) return fail(field, `expected a path, got ${JSON.stringify(value)}`)
  return path.resolve(baseDir, value)
}

function sizeOf (value: unknown, field: string, fail: Fail): number {
  const size = parseSize(value)
  return typeof size === 'string' ? fail(field, size) : size
}

/** A duration field: milliseconds, or a string like "500ms", "3s", "2m" (node/core/duration.ts), within [min, max] ms. */
function durationOf (value: unknown, field: string, min: number, max: number, fail: Fail): number {
  const ms = parseDuration(value)
  if (typeof ms === 'string') return fail(field, ms)
  if (ms < min || ms > max) return fail(field, `expected a duration from ${min} ms to ${max} ms, got ${JSON.stringify(value)}`)
  return ms
}

function blockSizeOf (value: unknown, field: string, fail: Fail): number | undefined {
  if (value === undefined) return undefined
  const size = sizeOf(value, `${field}.blockSize`, fail)
  if (size < 512 || size > 65536 || (size & (size - 1)) !== 0) fail(`${field}.blockSize`, 'expected a power of two between 512 and 64KiB')
  return size
}

function positiveInt (value: unknown, field: string, min: number, max: number, fail: Fail): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    return fail(field, `expected a whole number from ${min} to ${max}, got ${JSON.stringify(value)}`)
  }
  return value
}

function isObject (v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function allowKeys (x: Record<string, unknown>, keys: string[], prefix: string, fail: Fail): void {
  for (const k of Object.keys(x)) if (!keys.includes(k)) fail(`${prefix}${k}`, `unknown field (expected one of ${keys.join(', ')})`)
}
