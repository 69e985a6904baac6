// Tests for node/daemon/config.ts: a config is parsed and checked completely before anything is created; every problem is
// one ConfigError naming the field. The CLI's side of it (`dst node --config` exits 2 and leaves nothing behind) is in
// test/e2e/config-cli.test.ts.

import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { availableParallelism } from 'node:os'
import { DEFAULT_CONFIG, loadConfigFile, parseAddress, parseConfig, type DeviceConfig } from '../../../node/daemon/config'
import { parseDstUrl } from '../../../node/core/url'
import { ConfigError } from '../../../node/core/errors'
import { allowed } from '../../../node/core/acl'
import { tempDir } from '../../helpers/node-process'

const MiB = 1024 * 1024
const GiB = 1024 * MiB

const dirs: string[] = []
function dir (): string { const d = tempDir('dst-config-'); dirs.push(d); return d }
test.after.always(() => { for (const d of dirs) fs.rmSync(d, { recursive: true, force: true }) })

/** A minimal valid config; tests override parts of it. */
function base (extra: Record<string, unknown> = {}, devices: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    listen: '127.0.0.1:7001',
    devices: { m0: { type: 'memory', size: '1MiB' }, ...devices },
    ...extra,
  }
}

/** Parses `raw` expecting a ConfigError whose message names `field`; returns the message. */
function configError (t: import('ava').ExecutionContext, raw: unknown, field: string, baseDir = dir()): string {
  const err = t.throws(() => parseConfig(raw, baseDir, 'test.json'), { instanceOf: ConfigError })
  if (err === undefined) return ''
  t.is(err.code, 'DST_ERR_CONFIG')
  t.true(err.message.startsWith(`test.json: ${field}: `), `message should name ${field}: ${err.message}`)
  t.false(err.message.includes('\n'), 'one line')
  return err.message
}

// ---- happy path ---------------------------------------------------------------------------------------------------

test('parseConfig: a full config, relative paths resolved against baseDir, sizes parsed', t => {
  const baseDir = dir()
  fs.mkdirSync(path.join(baseDir, 'disks'))
  const existing = path.join(baseDir, 'disks', 'existing.img')
  fs.writeFileSync(existing, Buffer.alloc(8192))
  const c = parseConfig({
    name: 'alpha',
    listen: '[::1]:7002',
    nbd: '127.0.0.1:10809',
    dataDir: './var/state',
    pool: { count: 16, size: '256KiB' },
    maxInFlight: 32,
    pingInterval: 500,
    devices: {
      disk0: { type: 'file', path: './disks/disk0.img', size: '1.5GiB', blockSize: 4096 },
      old: { type: 'file', path: existing, readOnly: true },
      mem: { type: 'memory', size: 4 * MiB },
      far: { type: 'remote', url: 'dst://10.0.0.2:7001/disk%200', token: 'secret', queueDepth: 8 },
      v6: { type: 'remote', url: 'dst://[fd00::2]:7001/d' },
      both: { type: 'mirror', members: ['disk0', 'far'], region: '128KiB' },
      all: { type: 'linear', members: ['both', 'mem'] },
    },
    exports: [
      { device: 'all' },
      { device: 'old', name: 'archive', readOnly: true, allow: ['10.0.0.0/8', '::1'], token: 't0k' },
    ],
  }, baseDir, 'alpha.json')

  t.is(c.name, 'alpha')
  t.deepEqual(c.listen, { host: '::1', port: 7002 })
  t.deepEqual(c.nbd, { host: '127.0.0.1', port: 10809 })
  t.is(c.dataDir, path.join(baseDir, 'var', 'state'))
  t.deepEqual(c.pool, { count: 16, size: 256 * 1024 })
  t.is(c.maxInFlight, 32)
  t.is(c.pingInterval, 500)
  t.is(c.baseDir, baseDir)
  t.deepEqual([...c.devices.keys()], ['disk0', 'old', 'mem', 'far', 'v6', 'both', 'all'])
  t.deepEqual(c.devices.get('disk0'), { type: 'file', name: 'disk0', path: path.join(baseDir, 'disks', 'disk0.img'), size: 1.5 * GiB, readOnly: false, blockSize: 4096 })
  t.deepEqual(c.devices.get('old'), { type: 'file', name: 'old', path: existing, size: undefined, readOnly: true, blockSize: undefined })
  t.deepEqual(c.devices.get('mem'), { type: 'memory', name: 'mem', size: 4 * MiB, blockSize: undefined })
  t.deepEqual(c.devices.get('far'), { type: 'remote', name: 'far', url: 'dst://10.0.0.2:7001/disk%200', host: '10.0.0.2', port: 7001, export: 'disk 0', token: 'secret', queueDepth: 8, reconnectTimeout: undefined, requestTimeout: undefined })
  t.like(c.devices.get('v6') as DeviceConfig, { host: 'fd00::2', port: 7001, export: 'd', queueDepth: 32 })
  t.like(c.devices.get('both') as DeviceConfig, { type: 'mirror', name: 'both', members: ['disk0', 'far'], region: 128 * 1024 })
  t.deepEqual(c.devices.get('all'), { type: 'linear', name: 'all', members: ['both', 'mem'] })
  t.is(c.exports.length, 2)
  t.like(c.exports[0], { name: 'all', device: 'all', readOnly: false, token: undefined })
  t.like(c.exports[1], { name: 'archive', device: 'old', readOnly: true, token: 't0k' })
  t.deepEqual(c.exports[1].allow.map(a => a.text), ['10.0.0.0/8', '::1'])
  t.false(fs.existsSync(path.join(baseDir, 'disks', 'disk0.img')), 'parsing creates nothing')
  t.false(fs.existsSync(path.join(baseDir, 'var')), 'parsing creates nothing')
})

test('parseConfig: defaults (name, dataDir, pool, limits, export name, loopback-only allow)', t => {
  const baseDir = dir()
  const c = parseConfig({ listen: '127.0.0.1:0', devices: { d: { type: 'memory', size: 4096 } }, exports: [{ device: 'd' }] }, baseDir)
  t.is(c.name, 'dst')
  t.deepEqual(c.listen, { host: '127.0.0.1', port: 0 })
  t.is(c.nbd, undefined)
  t.is(c.dataDir, path.join(baseDir, 'state', 'dst'))
  t.deepEqual(c.pool, { count: 64, size: MiB })
  t.is(c.maxInFlight, 128)
  t.is(c.pingInterval, 10000)
  const e = c.exports[0]
  t.is(e.name, 'd')
  t.false(e.readOnly)
  t.deepEqual(e.allow.map(a => a.text), ['127.0.0.0/8', '::1/128'])
  t.true(allowed(e.allow, '127.0.0.1'))
  t.true(allowed(e.allow, '::1'))
  t.false(allowed(e.allow, '10.0.0.1'))
  t.deepEqual(parseConfig({ listen: '127.0.0.1:7001', name: 'n2', devices: { d: { type: 'memory', size: 4096 } } }, baseDir).exports, [])
})

test('parseConfig: the default dataDir follows the node name', t => {
  const baseDir = dir()
  t.is(parseConfig(base({ name: 'beta' }), baseDir).dataDir, path.join(baseDir, 'state', 'beta'))
  t.is(parseConfig(base({ dataDir: '/abs/where' }), baseDir).dataDir, '/abs/where')
})

test('parseConfig: the embedded default config parses', t => {
  const baseDir = dir()
  fs.mkdirSync(path.join(baseDir, 'data'))
  const c = parseConfig(DEFAULT_CONFIG, baseDir, 'default config')
  t.like(c.devices.get('disk0') as DeviceConfig, { type: 'file', path: path.join(baseDir, 'data', 'disk0.img'), size: GiB })
  t.is(c.dataDir, path.join(baseDir, 'data', 'state'))
  t.deepEqual(c.listen, { host: '127.0.0.1', port: 7001 })
  t.deepEqual(c.nbd, { host: '127.0.0.1', port: 10809 }, 'NBD clients can use it too, on loopback')
})

test('loadConfigFile resolves paths against the config file\'s folder', t => {
  const d = dir()
  fs.mkdirSync(path.join(d, 'etc'))
  const file = path.join(d, 'etc', 'node.json')
  fs.writeFileSync(file, JSON.stringify(base({ dataDir: 'st' }, { f: { type: 'file', path: 'f.img', size: '1MiB' } })))
  const c = loadConfigFile(file)
  t.is(c.baseDir, path.join(d, 'etc'))
  t.is(c.dataDir, path.join(d, 'etc', 'st'))
  t.like(c.devices.get('f') as DeviceConfig, { path: path.join(d, 'etc', 'f.img') })
})

test('loadConfigFile: a missing file, a folder, and invalid JSON are ConfigErrors naming the file', t => {
  const d = dir()
  const missing = path.join(d, 'nope.json')
  t.regex(t.throws(() => loadConfigFile(missing), { instanceOf: ConfigError }).message, new RegExp(`^config ${missing}: cannot read it`))
  t.regex(t.throws(() => loadConfigFile(d), { instanceOf: ConfigError }).message, /cannot read it/)
  const bad = path.join(d, 'bad.json')
  fs.writeFileSync(bad, '{ "listen": "127.0.0.1:1", ')
  t.regex(t.throws(() => loadConfigFile(bad), { instanceOf: ConfigError }).message, /not valid JSON/)
})

// ---- one test per error -------------------------------------------------------------------------------------------

test('error: unknown device type', t => {
  t.regex(configError(t, base({}, { x: { type: 'raid5', members: [] } }), 'devices.x.type'), /unknown type "raid5"/)
})

test('error: missing device type', t => {
  configError(t, base({}, { x: { size: 4096 } }), 'devices.x.type')
})

test('error: array member that does not exist', t => {
  t.regex(configError(t, base({}, { a: { type: 'linear', members: ['m0', 'ghost'] } }), 'devices.a.members[1]'), /no device named 'ghost'/)
})

test('error: bad size', t => {
  t.regex(configError(t, base({}, { big: { type: 'memory', size: '12XB' } }), 'devices.big.size'), /unknown unit/)
  configError(t, base({}, { f: { type: 'file', path: 'f.img', size: '-1MiB' } }), 'devices.f.size')
  configError(t, base({}, { z: { type: 'memory', size: 0 } }), 'devices.z.size')
  configError(t, base({ pool: { size: '1000' } }), 'pool.size')
})

test('error: memory device without a size, or over 16GiB', t => {
  configError(t, base({}, { x: { type: 'memory' } }), 'devices.x.size')
  configError(t, base({}, { x: { type: 'memory', size: '17GiB' } }), 'devices.x.size')
})

test('error: duplicate export name (explicit, or defaulted from the device name)', t => {
  t.regex(configError(t, base({ exports: [{ device: 'm0', name: 'e' }, { device: 'm0', name: 'e' }] }), 'exports[1].name'), /duplicate export name 'e'/)
  configError(t, base({ exports: [{ device: 'm0' }, { device: 'm1', name: 'm0' }] }, { m1: { type: 'memory', size: 4096 } }), 'exports[1].name')
})

test('error: unknown field, at every level', t => {
  t.regex(configError(t, base({ lisen: '1.2.3.4:5' }), 'lisen'), /unknown field/)
  configError(t, base({}, { x: { type: 'memory', size: 4096, sise: 1 } }), 'devices.x.sise')
  configError(t, base({}, { x: { type: 'file', path: 'a.img', size: 4096, readonly: true } }), 'devices.x.readonly')
  configError(t, base({ pool: { count: 1, slots: 2 } }), 'pool.slots')
  configError(t, base({ exports: [{ device: 'm0', readonly: true }] }), 'exports[0].readonly')
  configError(t, base({}, { l: { type: 'linear', members: ['m0'], region: 4096 } }), 'devices.l.region')
})

test('error: mirror of one member', t => {
  t.regex(configError(t, base({}, { mir: { type: 'mirror', members: ['m0'] } }), 'devices.mir.members'), /at least two members/)
})

test('error: empty or malformed members, and a device listed twice in one array', t => {
  configError(t, base({}, { l: { type: 'linear', members: [] } }), 'devices.l.members')
  configError(t, base({}, { l: { type: 'linear', members: 'm0' } }), 'devices.l.members')
  configError(t, base({}, { l: { type: 'linear', members: ['m0', 3] } }), 'devices.l.members')
  t.regex(configError(t, base({}, { l: { type: 'linear', members: ['m0', 'm0'] } }), 'devices.l.members'), /listed twice/)
})

test('error: cycle between arrays', t => {
  const msg = configError(t, base({}, {
    a: { type: 'linear', members: ['b', 'm0'] },
    b: { type: 'mirror', members: ['a', 'm1'] },
    m1: { type: 'memory', size: 4096 },
  }), 'devices.a.members')
  t.regex(msg, /cycle: a -> b -> a/)
})

test('error: an array containing itself', t => {
  t.regex(configError(t, base({}, { a: { type: 'linear', members: ['a'] } }), 'devices.a.members[0]'), /cannot contain itself/)
})

test('error: a device used as a member of two arrays', t => {
  t.regex(configError(t, base({}, {
    m1: { type: 'memory', size: 4096 },
    a: { type: 'linear', members: ['m0'] },
    b: { type: 'linear', members: ['m1', 'm0'] },
  }), 'devices.b.members[1]'), /'m0' is already a member of 'a'/)
})

test('error: reserved export names (status, metrics), also when defaulted from the device name', t => {
  t.regex(configError(t, base({ exports: [{ device: 'm0', name: 'status' }] }), 'exports[0].name'), /reserved/)
  configError(t, base({ exports: [{ device: 'm0', name: 'metrics' }] }), 'exports[0].name')
  configError(t, base({ exports: [{ device: 'status' }] }, { status: { type: 'memory', size: 4096 } }), 'exports[0].name')
})

test('error: bad listen address', t => {
  for (const listen of ['127.0.0.1', '127.0.0.1:99999', '127.0.0.1:port', 7001, '::1:7001', 'http://127.0.0.1:7001']) {
    configError(t, base({ listen }), 'listen')
  }
  t.regex(configError(t, { devices: base().devices }, 'listen'), /missing/)
  configError(t, base({ nbd: '127.0.0.1:7001' }), 'nbd')
})

test('error: bad dst:// url', t => {
  for (const url of ['http://10.0.0.2:7001/d', 'dst://10.0.0.2/d', 'dst://10.0.0.2:7001/', 'dst://10.0.0.2:0/d', 'dst://10.0.0.2:70000/d', 'dst://10.0.0.2:7001/a/b', 'dst://fd00::2:7001/d', 42]) {
    configError(t, base({}, { far: { type: 'remote', url } }), 'devices.far.url')
  }
  configError(t, base({}, { far: { type: 'remote' } }), 'devices.far.url')
})

// Regression: parseDstUrl (now node/core/url.ts) once decoded the export name unguarded, so a url with a bad percent
// escape threw URIError ("URI malformed") out of parseConfig instead of a ConfigError naming the field, and the CLI
// exited 1 with "dst node: URI malformed".
test('error: a dst:// url with a malformed percent escape names devices.far.url', t => {
  configError(t, base({}, { far: { type: 'remote', url: 'dst://10.0.0.2:7001/disk%zz' } }), 'devices.far.url')
})

test('error: a file device that is missing and has no size', t => {
  const d = dir()
  t.regex(configError(t, base({}, { f: { type: 'file', path: 'nope.img' } }), 'devices.f.size', d), /does not exist; give a size/)
  t.false(fs.existsSync(path.join(d, 'nope.img')))
})

test('error: a file device whose parent folder is missing', t => {
  const d = dir()
  const msg = configError(t, base({}, { f: { type: 'file', path: 'no/such/folder/f.img', size: '1MiB' } }), 'devices.f.path', d)
  t.true(msg.includes(path.join(d, 'no', 'such', 'folder')), msg)
  t.false(fs.existsSync(path.join(d, 'no')))
})

test('error: file devices that are read-only and missing, a folder, empty without size, or sharing a path', t => {
  const d = dir()
  configError(t, base({}, { f: { type: 'file', path: 'ro.img', size: 4096, readOnly: true } }), 'devices.f.path', d)
  configError(t, base({}, { f: { type: 'file', path: '.', size: 4096 } }), 'devices.f.path', d)
  fs.writeFileSync(path.join(d, 'empty.img'), '')
  configError(t, base({}, { f: { type: 'file', path: 'empty.img' } }), 'devices.f.size', d)
  t.regex(configError(t, base({}, { f: { type: 'file', path: 'x.img', size: 4096 }, g: { type: 'file', path: './x.img', size: 4096 } }), 'devices.g.path', d), /also the path of device 'f'/)
  configError(t, base({}, { f: { type: 'file', path: '', size: 4096 } }), 'devices.f.path', d)
})

test('error: bad names, blockSize, region, pool, limits, exports', t => {
  configError(t, base({ name: 'has space' }), 'name')
  configError(t, base({}, { 'bad name': { type: 'memory', size: 4096 } }), 'devices.bad name')
  configError(t, base({}, { x: { type: 'memory', size: 4096, blockSize: 1000 } }), 'devices.x.blockSize')
  configError(t, base({}, { x: { type: 'mirror', members: ['m0', 'm1'], region: '3KiB' } }, ), 'devices.x.region')
  configError(t, base({ pool: { count: 0 } }), 'pool.count')
  configError(t, base({ pool: [] }), 'pool')
  configError(t, base({ maxInFlight: 0 }), 'maxInFlight')
  configError(t, base({ pingInterval: 10 }), 'pingInterval')
  configError(t, base({ exports: {} }), 'exports')
  configError(t, base({ exports: ['m0'] }), 'exports[0]')
  configError(t, base({ exports: [{}] }), 'exports[0].device')
  configError(t, base({ exports: [{ device: 'nope' }] }), 'exports[0].device')
  configError(t, base({ exports: [{ device: 'm0', readOnly: 'yes' }] }), 'exports[0].readOnly')
  configError(t, base({ exports: [{ device: 'm0', allow: '10.0.0.0/8' }] }), 'exports[0].allow')
  configError(t, base({ exports: [{ device: 'm0', allow: ['10.0.0.0/8', '10.0.0.0/40'] }] }), 'exports[0].allow[1]')
  configError(t, base({ exports: [{ device: 'm0', token: '' }] }), 'exports[0].token')
  configError(t, base({}, { far: { type: 'remote', url: 'dst://h:1/d', queueDepth: 0 } }), 'devices.far.queueDepth')
  configError(t, { listen: '127.0.0.1:1' }, 'devices')
  configError(t, { listen: '127.0.0.1:1', devices: {} }, 'devices')
  configError(t, [], '(top level)')
})

// Regression: the power-of-two check of a mirror's region is `(region & (region - 1)) !== 0`, and JavaScript's & works
// on 32 bits, so without an upper bound a region above 4GiB that is not a power of two (4GiB + 4KiB, 12GiB) passed.
test('error: a mirror region above 4GiB that is not a power of two', t => {
  const mirror = (region: number): Record<string, unknown> => base({}, { m1: { type: 'memory', size: 4096 }, x: { type: 'mirror', members: ['m0', 'm1'], region } })
  configError(t, mirror(4 * GiB + 4096), 'devices.x.region')
  configError(t, mirror(12 * GiB), 'devices.x.region')
})

// ---- hash workers and wire digests (issue 6) ------------------------------------------------------------------------

test('parseConfig: hash.threads from 1 to 64; by default one less than the CPUs, from 1 to 4', t => {
  const baseDir = dir()
  t.deepEqual(parseConfig(base(), baseDir).hash, { threads: Math.max(1, Math.min(4, availableParallelism() - 1)) })
  t.deepEqual(parseConfig(base({ hash: {} }), baseDir).hash, parseConfig(base(), baseDir).hash, 'an empty hash object keeps the default')
  for (const threads of [1, 2, 7, 64]) t.deepEqual(parseConfig(base({ hash: { threads } }), baseDir).hash, { threads })
})

test('error: hash.threads that is not a whole number from 1 to 64', t => {
  for (const threads of [0, -1, 65, 1000, 1.5, '2', null, true, [2], NaN]) {
    t.regex(configError(t, base({ hash: { threads } }), 'hash.threads'), /1 to 64/, `threads ${JSON.stringify(threads)}`)
  }
})

test('error: hash that is not an object, or with an unknown field', t => {
  for (const hash of [2, 'fast', [], null, true]) configError(t, base({ hash }), 'hash')
  t.regex(configError(t, base({ hash: { threads: 2, workers: 3 } }), 'hash.workers'), /unknown field/)
  configError(t, base({ hash: { algorithm: 'sha256' } }), 'hash.algorithm')
  configError(t, base({ hashes: { threads: 2 } }), 'hashes')
})

test('parseConfig: export digest is true or false, off by default', t => {
  const baseDir = dir()
  const c = parseConfig(base({
    exports: [{ device: 'm0', name: 'on', digest: true }, { device: 'm0', name: 'off', digest: false }, { device: 'm0', name: 'default' }],
  }), baseDir)
  t.deepEqual(c.exports.map(e => [e.name, e.digest]), [['on', true], ['off', false], ['default', false]])
})

test('error: export digest that is not a boolean names exports[i].digest', t => {
  for (const digest of ['yes', 'true', 1, 0, null, {}, []]) {
    t.regex(configError(t, base({ exports: [{ device: 'm0', name: 'a' }, { device: 'm0', name: 'b', digest }] }), 'exports[1].digest'), /true or false/, `digest ${JSON.stringify(digest)}`)
  }
  configError(t, base({ exports: [{ device: 'm0', digests: true }] }), 'exports[0].digests')
})

test('parseDstUrl and parseAddress on their own', t => {
  t.deepEqual(parseDstUrl('dst://node-b.example:7001/disk0'), { host: 'node-b.example', port: 7001, export: 'disk0' })
  t.deepEqual(parseDstUrl('dst://[::1]:1/x'), { host: '::1', port: 1, export: 'x' })
  t.is(typeof parseDstUrl('dst://h:65536/x'), 'string')
  const fail = (field: string, problem: string): never => { throw new ConfigError(`${field}: ${problem}`) }
  t.deepEqual(parseAddress('0.0.0.0:65535', 'listen', fail), { host: '0.0.0.0', port: 65535 })
  t.deepEqual(parseAddress('[::]:0', 'listen', fail), { host: '::', port: 0 })
  t.throws(() => parseAddress('0.0.0.0:65536', 'listen', fail), { message: /^listen: port 65536 is out of range/ })
})

// ---- issue 12: durations, one file per device, legs not exported, no remote device at the node itself -------------

test('durations: every duration field takes "500ms", "3s", "2m" as well as milliseconds', t => {
  const c = parseConfig(base({ pingInterval: '500ms', reconnectTimeout: '3s', requestTimeout: '2m', leaseTimeout: 1500 }, {
    far: { type: 'remote', url: 'dst://10.0.0.2:7001/d', reconnectTimeout: '1.5s', requestTimeout: '10s' },
  }), dir(), 'test.json')
  t.is(c.pingInterval, 500)
  t.is(c.reconnectTimeout, 3000)
  t.is(c.requestTimeout, 120000)
  t.is(c.leaseTimeout, 1500)
  t.like(c.devices.get('far'), { reconnectTimeout: 1500, requestTimeout: 10000 })
  t.is(parseConfig(base({ reconnectTimeout: '3s' }), dir(), 'test.json').leaseTimeout, 3000, 'leaseTimeout defaults to reconnectTimeout')
  t.regex(configError(t, base({ reconnectTimeout: '3 weeks' }), 'reconnectTimeout'), /unknown unit "weeks"/)
  t.regex(configError(t, base({ pingInterval: '10ms' }), 'pingInterval'), /from 100 ms to 3600000 ms/)
  configError(t, base({}, { far: { type: 'remote', url: 'dst://10.0.0.2:7001/d', requestTimeout: 'soon' } }), 'devices.far.requestTimeout')
})

test('error: one file behind two devices, through a symlink, a hard link or a symlinked folder', t => {
  const d = dir()
  fs.writeFileSync(path.join(d, 'a.img'), Buffer.alloc(4096))
  fs.symlinkSync(path.join(d, 'a.img'), path.join(d, 'alias.img'))
  fs.linkSync(path.join(d, 'a.img'), path.join(d, 'hard.img'))
  fs.symlinkSync(d, path.join(d, 'same-folder'))
  const msg = configError(t, base({}, { a: { type: 'file', path: 'a.img' }, b: { type: 'file', path: 'alias.img' } }), 'devices.b.path', d)
  t.regex(msg, /is the same file as device 'a'/)
  configError(t, base({}, { a: { type: 'file', path: 'a.img' }, b: { type: 'file', path: 'hard.img' } }), 'devices.b.path', d)
  configError(t, base({}, { a: { type: 'file', path: 'new.img', size: 4096 }, b: { type: 'file', path: 'same-folder/new.img', size: 4096 } }), 'devices.b.path', d)
  t.false(fs.existsSync(path.join(d, 'new.img')), 'nothing created')
})

test('error: a mirror leg (or a device inside one) exported directly names the leg and the mirror', t => {
  const devices = { a: { type: 'memory', size: '1MiB' }, b: { type: 'memory', size: '1MiB' }, c: { type: 'memory', size: '1MiB' }, lin: { type: 'linear', members: ['b', 'c'] }, m: { type: 'mirror', members: ['a', 'lin'] } }
  t.regex(configError(t, base({ exports: [{ device: 'm' }, { device: 'a', name: 'raw' }] }, devices), 'exports[1].device'), /'a' is a leg of mirror 'm'.*export 'm' instead/)
  configError(t, base({ exports: [{ device: 'c' }] }, devices), 'exports[0].device')
  t.notThrows(() => parseConfig(base({ exports: [{ device: 'm' }, { device: 'm0' }] }, devices), dir(), 'test.json'))
})

test('error: a remote device at the node\'s own listen address (localhost, 127.0.0.1, a wildcard listen)', t => {
  t.regex(configError(t, base({ listen: '127.0.0.1:7001' }, { me: { type: 'remote', url: 'dst://127.0.0.1:7001/m0' } }), 'devices.me.url'), /this node's own listen address/)
  configError(t, base({ listen: '127.0.0.1:7001' }, { me: { type: 'remote', url: 'dst://localhost:7001/m0' } }), 'devices.me.url')
  configError(t, base({ listen: '0.0.0.0:7001' }, { me: { type: 'remote', url: 'dst://127.0.0.1:7001/m0' } }), 'devices.me.url')
  configError(t, base({ listen: 'localhost:7001' }, { me: { type: 'remote', url: 'dst://127.0.0.1:7001/m0' } }), 'devices.me.url')
  t.notThrows(() => parseConfig(base({ listen: '127.0.0.1:7001' }, { peer: { type: 'remote', url: 'dst://127.0.0.1:7002/m0' } }), dir(), 'test.json'), 'another port')
  t.notThrows(() => parseConfig(base({ listen: '127.0.0.1:7001' }, { peer: { type: 'remote', url: 'dst://10.0.0.9:7001/m0' } }), dir(), 'test.json'), 'another host')
})

// ---- parity arrays ------------------------------------------------------------------------------------------------

function parityConfig (p: Record<string, unknown>, n = 5): Record<string, unknown> {
  const devices: Record<string, unknown> = {}
  for (let i = 0; i < n; i++) devices[`d${i}`] = { type: 'memory', size: '1MiB' }
  return base({}, { ...devices, p: { type: 'parity', members: Object.keys(devices), ...p } })
}

test('parity: a raid35 and a raid5 array parse with their defaults', t => {
  const a = parseConfig(parityConfig({ layout: 'raid35' }), dir()).devices.get('p')
  t.like(a, { type: 'parity', layout: 'raid35', region: 1024 * 1024, forceDegradedStart: false, assumeClean: false, initialSync: false })
  t.is((a as { block?: number }).block, undefined, 'raid35 block defaults once the members are open')
  const b = parseConfig(parityConfig({ layout: 'raid5', chunk: '128KiB', region: '4MiB', forceDegradedStart: true }, 4), dir()).devices.get('p')
  t.like(b, { type: 'parity', layout: 'raid5', chunk: 128 * 1024, region: 4 * 1024 * 1024, forceDegradedStart: true })
})

test('parity: member counts, blocks, chunks and regions a layout cannot take, a member twice: errors naming the field and the rule', t => {
  t.regex(configError(t, parityConfig({ layout: 'raid35' }, 4), 'devices.p.members'), /raid35 needs 2\^k data members plus one parity member \(3, 5, 9 or 17 members\), got 4/)
  t.regex(configError(t, parityConfig({ layout: 'raid5' }, 2), 'devices.p.members'), /raid5 needs at least three members, got 2/)
  t.regex(configError(t, parityConfig({ layout: 'raid35', block: '1000' }), 'devices.p.block'), /fragments of 250 bytes/)
  t.regex(configError(t, parityConfig({ layout: 'raid35', chunk: '64KiB' }), 'devices.p.chunk'), /raid35 has no chunks/)
  t.regex(configError(t, parityConfig({ layout: 'raid5', block: '4KiB' }), 'devices.p.block'), /raid5 splits chunks/)
  t.regex(configError(t, parityConfig({ layout: 'raid5', chunk: '3KiB' }), 'devices.p.chunk'), /not a power of two/)
  t.regex(configError(t, parityConfig({ layout: 'raid5', chunk: '1MiB', region: '64KiB' }), 'devices.p.region'), /must hold whole chunks/)
  t.regex(configError(t, parityConfig({ layout: 'raid6' }), 'devices.p.layout'), /expected "raid35".*or "raid5"/)
  t.regex(configError(t, parityConfig({ layout: 'raid5', initialSync: true, assumeClean: true }), 'devices.p.initialSync'), /not both/)
  const twice = parityConfig({ layout: 'raid5' })
  ;((twice.devices as Record<string, { members: string[] }>).p).members = ['d0', 'd1', 'd1']
  t.regex(configError(t, twice, 'devices.p.members'), /a device is listed twice \(d1\)/)
  const exported = { ...parityConfig({ layout: 'raid5' }), exports: [{ device: 'd2' }] }
  t.regex(configError(t, exported, 'exports[0].device'), /'d2' is a member of parity array 'p'.*export 'p' instead/)
})

/** A config dir with empty PEM files where `tls` points (parseConfig checks that they can be read, not what they hold). */
function tlsDir (): string {
  const d = dir()
  for (const f of ['n1-cert.pem', 'n1-key.pem', 'ca-cert.pem']) fs.writeFileSync(path.join(d, f), '')
  return d
}
const TLS = { cert: 'n1-cert.pem', key: 'n1-key.pem', ca: 'ca-cert.pem', clientCertListen: '127.0.0.1:7443' }

test('parseConfig: tls files resolved against baseDir, exports with tls, clientCert and allowSubjects', t => {
  const d = tlsDir()
  const c = parseConfig(base({ tls: TLS, exports: [{ device: 'm0', tls: 'require', allowSubjects: ['CN=n2'] }] }), d)
  t.deepEqual(c.tls, { cert: path.join(d, 'n1-cert.pem'), key: path.join(d, 'n1-key.pem'), ca: path.join(d, 'ca-cert.pem'), clientCertListen: { host: '127.0.0.1', port: 7443 } })
  t.like(c.exports[0], { tls: 'require', clientCert: 'require', allowSubjects: ['CN=n2'] })
})

test('parseConfig: a remote device is TLS with a dsts:// url or tls: true, and a contradiction is refused', t => {
  const d = tlsDir()
  const c = parseConfig(base({ tls: TLS }, { far: { type: 'remote', url: 'dsts://127.0.0.1:7002/disk0' }, near: { type: 'remote', url: 'dst://127.0.0.1:7003/disk0', tls: true, servername: 'n3' } }), d)
  t.like(c.devices.get('far'), { tls: true, port: 7002 })
  t.like(c.devices.get('near'), { tls: true, servername: 'n3' })
  t.throws(() => parseConfig(base({}, { far: { type: 'remote', url: 'dsts://127.0.0.1:7002/disk0', tls: false } }), d), { instanceOf: ConfigError, message: /devices\.far\.tls: false, but the url .* is dsts:\/\// })
})

test('parseConfig: clientCert without tls.clientCertListen is an export for NBD (STARTTLS) only, natively refused', t => {
  const c = parseConfig(base({ tls: { cert: 'n1-cert.pem', key: 'n1-key.pem', ca: 'ca-cert.pem' }, exports: [{ device: 'm0', clientCert: 'require' }] }), tlsDir())
  t.is(c.exports[0].clientCert, 'require')
  t.is(c.tls?.clientCertListen, undefined)
})

test('parseConfig: TLS mistakes name the field', t => {
  const d = tlsDir()
  const bad = (extra: Record<string, unknown>, message: RegExp): void => { t.throws(() => parseConfig(base(extra), d), { instanceOf: ConfigError, message }) }
  bad({ tls: { key: 'n1-key.pem' } }, /tls\.cert: missing/)
  bad({ tls: { cert: 'nope.pem', key: 'n1-key.pem' } }, /tls\.cert: cannot read .*nope\.pem: ENOENT/)
  bad({ tls: { ...TLS, color: 1 } }, /tls\.color: unknown field/)
  bad({ tls: { cert: 'n1-cert.pem', key: 'n1-key.pem', clientCertListen: '127.0.0.1:7443' } }, /tls\.clientCertListen: needs tls\.ca/)
  bad({ tls: { ...TLS, clientCertListen: '127.0.0.1:7001' } }, /tls\.clientCertListen: must differ from listen/)
  bad({ exports: [{ device: 'm0', tls: 'require' }] }, /exports\[0\]\.tls: needs the node's tls/)
  bad({ tls: TLS, exports: [{ device: 'm0', tls: true }] }, /exports\[0\]\.tls: expected "require"/)
  bad({ tls: { cert: 'n1-cert.pem', key: 'n1-key.pem' }, exports: [{ device: 'm0', clientCert: 'require' }] }, /exports\[0\]\.clientCert: needs the node's tls with a ca/)
  bad({ tls: TLS, exports: [{ device: 'm0', allowSubjects: ['n2'] }] }, /exports\[0\]\.allowSubjects\[0\]: "n2" is not ATTRIBUTE=VALUE/)
  bad({ tls: TLS, exports: [{ device: 'm0', allowSubjects: [] }] }, /exports\[0\]\.allowSubjects: expected a non-empty array/)
})
