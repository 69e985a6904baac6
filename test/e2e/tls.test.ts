// TLS end to end (README, "TLS"): real NBD clients over STARTTLS with x509 credentials (nbdinfo, nbdcopy, qemu-img),
// the native protocol over dsts:// with client certificates, a two-node tree over dsts:// that rides out a restart of
// its leaf, and every refusal: no TLS, no certificate, another CA, an expired certificate, another subject, a plain
// client at a TLS listener and the reverse (a clear error, never a hang). Certificates are made here with openssl.

import test from 'ava'
import * as fs from 'node:fs'
import * as https from 'node:https'
import * as path from 'node:path'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { runDst, startNode, tempDir, type RunningNode } from '../helpers/node-process'
import { freePort } from '../helpers/ports'
import { until, within } from '../helpers/wait'
import { testNeeding, TOOLS } from '../helpers/requires'
import { TestCa, x509Dir, type Cert } from '../helpers/certs'
import { Connection, type ClientTls } from '../../export/native/client'
import { Op } from '../../export/native/codec'
import { parseDstUrl, type DstUrl } from '../../node/core/url'

const MiB = 1024 * 1024
const tlsTest = testNeeding([TOOLS.openssl])
const nbdTest = testNeeding([TOOLS.openssl, TOOLS.nbdinfo, TOOLS.nbdcopy, TOOLS.qemuImg])
const env = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` }

function run (cmd: string, args: string[], timeout = 60000): Promise<{ code: number, stdout: string, stderr: string }> {
  return new Promise(resolve => {
    execFile(cmd, args, { env, timeout, maxBuffer: 16 * MiB }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as unknown as { code: unknown }).code === 'number' ? (err as unknown as { code: number }).code : 1
      resolve({ code, stdout, stderr })
    })
  })
}

interface Pki { dir: string, ca: TestCa, n1: Cert, n2: Cert, n3: Cert, expired: Cert, otherCa: Cert, read: (c: Cert) => ClientTls }

let pki: Pki | null = null
function certs (): Pki {
  if (pki !== null) return pki
  const dir = tempDir('dst-tls-pki-')
  const ca = new TestCa(dir)
  const other = new TestCa(dir, 'other', '/CN=another CA')
  pki = {
    dir,
    ca,
    n1: ca.issue('n1', 'n1'),
    n2: ca.issue('n2', 'n2'),
    n3: ca.issue('n3', 'n3'),
    expired: ca.issue('expired', 'n2', -1),
    otherCa: other.issue('wrong', 'n2'),
    read: c => ({ ca: fs.readFileSync(ca.cert), cert: fs.readFileSync(c.cert), key: fs.readFileSync(c.key) }),
  }
  return pki
}
test.after.always(() => { if (pki !== null) fs.rmSync(pki.dir, { recursive: true, force: true }) })

/** The node's `tls` config block for `cert`, with the test CA. */
function tlsOf (cert: Cert, clientCertListen?: string): Record<string, unknown> {
  return { cert: cert.cert, key: cert.key, ca: certs().ca.cert, ...(clientCertListen !== undefined ? { clientCertListen } : {}) }
}

function httpsGet (url: string, ca: string, maxBytes = 64 * 1024): Promise<{ status: number, body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { ca: fs.readFileSync(ca) }, res => {
      let body = ''
      res.on('data', (c: Buffer) => {
        body += c.toString()
        // /events never ends: the first event is enough.
        if (body.length >= maxBytes || (url.endsWith('/events') && body.includes('"kind"'))) { req.destroy(); resolve({ status: res.statusCode ?? 0, body }) }
      })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on('error', reject)
    req.setTimeout(10000, () => req.destroy(new Error(`${url}: no answer in 10 s`)))
  })
}

/** Connects in-process (what a remote device does) and gives the error message, or 'connected'. */
async function tryConnect (url: string, options: Parameters<typeof Connection.connect>[1] = {}): Promise<string> {
  try {
    const conn = await Connection.connect(parseDstUrl(url) as DstUrl, { connectTimeout: 10000, pingInterval: 0, requestTimeout: 0, access: 'ro', ...options })
    conn.close()
    return 'connected'
  } catch (err) {
    return (err as Error).message
  }
}

/** The shared leaf: TLS listener, client-certificate listener, NBD with STARTTLS, one export of each kind. */
interface Leaf { node: RunningNode, dir: string, nbdPort: number, certPort: number, nbd: (name: string, creds?: string) => string }
let leafStarting: Promise<Leaf> | null = null
function leaf (): Promise<Leaf> {
  leafStarting ??= (async () => {
    const p = certs()
    const dir = tempDir('dst-tls-')
    const certPort = await freePort()
    const node = await startNode(dir, {
      name: 'n1', dataDir: './state', nbd: '127.0.0.1:0', tls: tlsOf(p.n1, `127.0.0.1:${certPort}`),
      devices: { disk: { type: 'file', path: './disk.img', size: '32MiB' }, sec: { type: 'memory', size: '8MiB' }, pub: { type: 'memory', size: '4MiB' }, tok: { type: 'memory', size: '4MiB' } },
      exports: [
        { device: 'disk', tls: 'require' },
        { device: 'sec', tls: 'require', clientCert: 'require', allowSubjects: ['CN=n2'] },
        { device: 'pub' },
        { device: 'tok', token: 'secret' },
      ],
    })
    const m = /nbd {5}nbds:\/\/127\.0\.0\.1:(\d+)\//.exec(node.output())
    if (m === null) throw new Error(`no nbds address printed:\n${node.output()}`)
    const nbdPort = Number(m[1])
    return { node, dir, nbdPort, certPort, nbd: (name, creds) => creds === undefined ? `nbd://127.0.0.1:${nbdPort}/${name}` : `nbds://127.0.0.1:${nbdPort}/${name}?tls-certificates=${creds}` }
  })()
  return leafStarting
}
test.after.always(async () => {
  if (leafStarting === null) return
  const l = await leafStarting.catch(() => null)
  if (l === null) return
  await l.node.kill()
  fs.rmSync(l.dir, { recursive: true, force: true })
})

nbdTest('NBD: STARTTLS with x509 credentials for nbdinfo, nbdcopy and qemu-img; a plain client is refused and not shown the export', async t => {
  const l = await leaf()
  const p = certs()
  const creds = x509Dir(path.join(p.dir, 'nbd-anon'), p.ca.cert)
  // Plain: LIST shows only what needs no TLS; GO on a TLS export is NBD_REP_ERR_TLS_REQD.
  const list = await run('nbdinfo', ['--list', l.nbd('')])
  t.is(list.code, 0, list.stderr)
  t.regex(list.stdout, /export="pub"/)
  t.notRegex(list.stdout, /export="disk"/)
  t.notRegex(list.stdout, /export="sec"/)
  const plain = await run('qemu-img', ['info', l.nbd('disk')])
  t.not(plain.code, 0)
  t.regex(plain.stderr, /TLS negotiation required|requires TLS/)
  // Over TLS (the server's certificate checked against ca-cert.pem): every client works.
  const info = await run('nbdinfo', [l.nbd('disk', creds)])
  t.is(info.code, 0, info.stderr)
  t.regex(info.stdout, /with TLS/)
  t.regex(info.stdout, /export-size: 33554432/)
  const data = randomBytes(4 * MiB)
  const src = path.join(l.dir, 'in.bin')
  const back = path.join(l.dir, 'out.bin')
  fs.writeFileSync(src, data)
  const put = await run('nbdcopy', [src, l.nbd('disk', creds)])
  t.is(put.code, 0, put.stderr)
  const get = await run('nbdcopy', ['--', l.nbd('disk', creds), back])
  t.is(get.code, 0, get.stderr)
  t.true(fs.readFileSync(back).subarray(0, data.length).equals(data))
  const qemu = await run('qemu-img', ['info', '--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${creds}`, '--image-opts', `driver=nbd,host=127.0.0.1,port=${l.nbdPort},export=disk,tls-creds=tls0`])
  t.is(qemu.code, 0, qemu.stderr)
  t.regex(qemu.stdout, /virtual size: 32 MiB/)
  // A server certificate from a CA the client does not trust: the client refuses it.
  const otherCreds = x509Dir(path.join(p.dir, 'nbd-other'), path.join(p.dir, 'other-cert.pem'))
  t.not((await run('nbdinfo', [l.nbd('disk', otherCreds)])).code, 0)
})

nbdTest('NBD: an export with clientCert and allowSubjects takes n2\'s certificate and refuses no certificate, another subject, an expired one', async t => {
  const l = await leaf()
  const p = certs()
  const ok = await run('nbdinfo', [l.nbd('sec', x509Dir(path.join(p.dir, 'nbd-n2'), p.ca.cert, p.n2))])
  t.is(ok.code, 0, ok.stderr)
  t.regex(ok.stdout, /export-size: 8388608/)
  const cases: Array<[string, Cert | undefined, RegExp]> = [
    ['none', undefined, /export 'sec' requires a client certificate; none was presented/],
    ['n3', p.n3, /client certificate subject CN=n3 is not in its allowSubjects \(CN=n2\)/],
    ['expired', p.expired, /client certificate \(CN=n2\) not accepted: CERT_HAS_EXPIRED/],
  ]
  for (const [name, cert, reason] of cases) {
    const r = await run('nbdinfo', [l.nbd('sec', x509Dir(path.join(p.dir, `nbd-${name}`), p.ca.cert, cert))])
    t.not(r.code, 0, `${name}: ${r.stdout}`)
    await until(`the node logs why ${name} was refused`, () => reason.test(l.node.output()), 5000)
  }
  // With a valid certificate the LIST shows the export; without, it is hidden.
  t.regex((await run('nbdinfo', ['--list', l.nbd('', x509Dir(path.join(p.dir, 'nbd-n2'), p.ca.cert, p.n2))])).stdout, /export="sec"/)
  t.notRegex((await run('nbdinfo', ['--list', l.nbd('', x509Dir(path.join(p.dir, 'nbd-none'), p.ca.cert))])).stdout, /export="sec"/)
})

tlsTest('native: /status, /metrics and /events over https on the TLS listener; a plain client gets a clear error at once', async t => {
  const l = await leaf()
  const ca = certs().ca.cert
  const status = await httpsGet(`https://127.0.0.1:${l.node.port}/status`, ca)
  t.is(status.status, 200)
  const s = JSON.parse(status.body) as { exports: Array<{ name: string, url: string }> }
  t.is(s.exports.find(e => e.name === 'pub')?.url, `dsts://127.0.0.1:${l.node.port}/pub`)
  t.is(s.exports.find(e => e.name === 'sec')?.url, `dsts://127.0.0.1:${l.certPort}/sec`)
  const metrics = await httpsGet(`https://127.0.0.1:${l.node.port}/metrics`, ca)
  t.is(metrics.status, 200)
  t.regex(metrics.body, /dst_requests_total\{node="n1"/)
  const events = await httpsGet(`https://127.0.0.1:${l.node.port}/events`, ca)
  t.regex(events.body, /"kind":"snapshot"/)
  // A plain dst:// client at the TLS listener: refused quickly, and the message says what to do.
  const began = Date.now()
  t.regex(await tryConnect(`dst://127.0.0.1:${l.node.port}/pub`), /is it a TLS listener\? Use dsts:\/\//)
  t.true(Date.now() - began < 5000)
  // dsts:// checks the server's certificate against the CA and the name.
  t.is(await tryConnect(`dsts://127.0.0.1:${l.node.port}/pub`, { tls: { ca: fs.readFileSync(ca) } }), 'connected')
  t.is(await tryConnect(`dsts://localhost:${l.node.port}/pub`, { tls: { ca: fs.readFileSync(ca) } }), 'connected')
  t.regex(await tryConnect(`dsts://127.0.0.1:${l.node.port}/pub`, { tls: { ca: fs.readFileSync(path.join(certs().dir, 'other-cert.pem')) } }), /TLS: certificate not accepted: UNABLE_TO_VERIFY_LEAF_SIGNATURE/)
  t.regex(await tryConnect(`dsts://127.0.0.1:${l.node.port}/pub`, { tls: { ca: fs.readFileSync(ca), servername: 'n9.example' } }), /TLS: certificate not accepted: ERR_TLS_CERT_ALTNAME_INVALID/)
  // Tokens keep working over TLS.
  t.is(await tryConnect(`dsts://127.0.0.1:${l.node.port}/tok`, { token: 'secret', tls: { ca: fs.readFileSync(ca) } }), 'connected')
  t.regex(await tryConnect(`dsts://127.0.0.1:${l.node.port}/tok`, { tls: { ca: fs.readFileSync(ca) } }), /refused \(401\)/)
})

tlsTest('native: client certificates on the client-certificate listener: n2 in; none, another CA, expired, another subject refused by name', async t => {
  const l = await leaf()
  const p = certs()
  const url = `dsts://127.0.0.1:${l.certPort}/sec`
  t.is(await tryConnect(url, { tls: p.read(p.n2) }), 'connected')
  t.regex(await tryConnect(url, { tls: { ca: fs.readFileSync(p.ca.cert) } }), /refused \(403\): export 'sec' requires a client certificate; none was presented/)
  t.regex(await tryConnect(url, { tls: p.read(p.otherCa) }), /refused \(403\): export 'sec': client certificate \(CN=n2\) not accepted: UNABLE_TO_VERIFY_LEAF_SIGNATURE/)
  t.regex(await tryConnect(url, { tls: p.read(p.expired) }), /refused \(403\): export 'sec': client certificate \(CN=n2\) not accepted: CERT_HAS_EXPIRED/)
  t.regex(await tryConnect(url, { tls: p.read(p.n3) }), /refused \(403\): export 'sec': client certificate subject CN=n3 is not in its allowSubjects/)
  // The main listener cannot see certificates: it sends the client to the other one.
  t.regex(await tryConnect(`dsts://127.0.0.1:${l.node.port}/sec`, { tls: p.read(p.n2) }), new RegExp(`cannot check; connect to dsts://127\\.0\\.0\\.1:${l.certPort}/sec`))
  // uWebSockets.js does check a certificate it is shown: one of another CA is refused in the handshake.
  t.regex(await tryConnect(`dsts://127.0.0.1:${l.node.port}/pub`, { tls: { ...p.read(p.otherCa), ca: fs.readFileSync(p.ca.cert) } }), /TLS: certificate not accepted: ERR_SSL_TLSV1_ALERT_UNKNOWN_CA/)
})

tlsTest('a two-node tree over dsts:// with client certificates rides out a restart of its leaf', async t => {
  const p = certs()
  const dir = tempDir('dst-tls-tree-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const [listen, certPort] = [await freePort(), await freePort()]
  const leafConfig = {
    name: 'leaf', listen: `127.0.0.1:${listen}`, dataDir: './state-leaf', tls: tlsOf(p.n1, `127.0.0.1:${certPort}`),
    devices: { disk: { type: 'file', path: './leaf.img', size: '16MiB' } },
    exports: [{ device: 'disk', clientCert: 'require', allowSubjects: ['CN=n2'] }],
  }
  let leafNode = await startNode(dir, leafConfig)
  t.teardown(() => leafNode.kill())
  const top = await startNode(dir, {
    name: 'n2', dataDir: './state-n2', tls: tlsOf(p.n2), reconnectTimeout: '30s',
    devices: { far: { type: 'remote', url: `dsts://127.0.0.1:${certPort}/disk` } },
    exports: [{ device: 'far' }],
  })
  t.teardown(() => top.kill())
  const tls = { ca: fs.readFileSync(p.ca.cert) }
  const topUrl = parseDstUrl(`dsts://127.0.0.1:${top.port}/far`) as DstUrl
  const conn = await Connection.connect(topUrl, { tls, pingInterval: 0, requestTimeout: 0 })
  t.teardown(() => conn.close())
  const a = randomBytes(MiB)
  await conn.request(Op.WRITE, 0, a.length, null, a)
  await conn.request(Op.FLUSH, 0, 0, null, null)
  // It landed in the leaf's file, across the TLS hop.
  t.true(fs.readFileSync(path.join(dir, 'leaf.img')).subarray(0, MiB).equals(a))
  // The leaf restarts: the top node's remote device reconnects over TLS with its certificate; a write meanwhile waits.
  await leafNode.kill()
  const b = randomBytes(MiB)
  const writing = conn.request(Op.WRITE, MiB, b.length, null, b)
  leafNode = await startNode(dir, leafConfig)
  await within(writing, 30000, 'the write across the restart')
  const back = Buffer.alloc(2 * MiB)
  await Promise.all([conn.request(Op.READ, 0, MiB, back.subarray(0, MiB), null), conn.request(Op.READ, MiB, MiB, back.subarray(MiB), null)])
  t.true(back.equals(Buffer.concat([a, b])))
  t.regex(top.output(), /reconnect|connected/i)
})

tlsTest('a node whose certificate the leaf refuses stops at start, naming why: another CA, expired, another subject', async t => {
  const l = await leaf()
  const p = certs()
  const dir = tempDir('dst-tls-bad-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const cases: Array<[string, Cert, RegExp]> = [
    ['wrongca', p.otherCa, /not accepted: UNABLE_TO_VERIFY_LEAF_SIGNATURE/],
    ['expired', p.expired, /not accepted: CERT_HAS_EXPIRED/],
    ['wrongsubject', p.n3, /subject CN=n3 is not in its allowSubjects/],
  ]
  await Promise.all(cases.map(async ([name, cert, reason]) => {
    const file = path.join(dir, `${name}.json`)
    fs.writeFileSync(file, JSON.stringify({
      name, listen: '127.0.0.1:0', dataDir: `./state-${name}`, tls: tlsOf(cert),
      devices: { far: { type: 'remote', url: `dsts://127.0.0.1:${l.certPort}/sec` } }, exports: [{ device: 'far' }],
    }))
    const r = await runDst(['node', '--config', file], { timeout: 40000 })
    t.is(r.code, 1, `${name}: ${r.stderr}`)
    t.regex(r.stderr, reason, name)
  }))
})

tlsTest('a TLS client at a plain listener gets a clear error at once, and a token export served without TLS is warned about', async t => {
  const dir = tempDir('dst-tls-plain-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const node = await startNode(dir, { name: 'plain', dataDir: './state', devices: { m: { type: 'memory', size: '1MiB' } }, exports: [{ device: 'm', token: 'secret' }] })
  t.teardown(() => node.kill())
  t.regex(node.output(), /warning: export 'm' has a token but this node serves it without TLS/)
  const began = Date.now()
  t.regex(await tryConnect(`dsts://127.0.0.1:${node.port}/m`, { token: 'secret', tls: { ca: fs.readFileSync(certs().ca.cert) } }), /TLS handshake failed: no TLS answer within 3000 ms .*a plain dst:\/\/ listener\? use dst:\/\//)
  t.true(Date.now() - began < 5000)
})
