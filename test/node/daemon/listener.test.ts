// The node's listener (node/daemon/listener.ts) in this process: a report that throws answers that request with a 500 and
// is logged; the listener, and this process, go on serving. (uWebSockets.js aborts the whole process when an HTTP
// handler returns without answering, so a bug in a report once could have taken the node down.)

import test from 'ava'
import { Listener } from '../../../node/daemon/listener'
import { BufferPool } from '../../../node/core/pool'
import { Hasher } from '../../../node/core/hasher'
import { parseCidr, type Cidr } from '../../../node/core/acl'
import { attemptUpgrade } from '../../helpers/raw-client'

test('a /status or /metrics report that throws is a 500 naming the error; the next requests are served', async t => {
  const logged: string[] = []
  let broken = true
  const hasher = new Hasher({ threads: 1 })
  const listener = new Listener({
    host: '127.0.0.1',
    port: 0,
    pool: new BufferPool({ count: 2, size: 4096 }),
    limits: { maxRequest: 4096, maxInFlight: 4, pingInterval: 1000 },
    exports: new Map(),
    status: () => { if (broken) throw new Error('status exploded'); return { ok: true } },
    metrics: () => { if (broken) throw new Error('metrics exploded'); return 'dst_up 1\n' },
    log: m => logged.push(m),
    admin: { allow: [] },
    onAdmin: async () => await Promise.reject(new Error('no arrays here')),
    hasher,
  })
  await listener.listen()
  t.teardown(async () => { await listener.stop(); await hasher.close() })
  const base = `http://127.0.0.1:${listener.port}`
  const status = await fetch(`${base}/status`)
  t.is(status.status, 500)
  t.regex(await status.text(), /internal error: status exploded/)
  const metrics = await fetch(`${base}/metrics`)
  t.is(metrics.status, 500)
  t.regex(await metrics.text(), /metrics exploded/)
  t.true(logged.some(m => m.includes('status exploded')) && logged.some(m => m.includes('metrics exploded')), 'both errors are logged with their stack')
  broken = false
  const again = await fetch(`${base}/status`)
  t.is(again.status, 200)
  t.deepEqual(await again.json(), { ok: true })
  t.is(await (await fetch(`${base}/metrics`)).text(), 'dst_up 1\n')
})

/** A listener in this process with hooks a test can break; stopped when the test ends. */
async function listenerFor (t: { teardown: (fn: () => unknown) => void }, options: { allow?: string[], token?: string, onAdmin?: (array: string, action: string, body: Record<string, unknown>) => Promise<unknown>, exports?: Map<string, never> } = {}): Promise<{ base: string, logged: string[] }> {
  const logged: string[] = []
  const hasher = new Hasher({ threads: 1 })
  const listener = new Listener({
    host: '127.0.0.1',
    port: 0,
    pool: new BufferPool({ count: 2, size: 4096 }),
    limits: { maxRequest: 4096, maxInFlight: 4, pingInterval: 1000 },
    exports: options.exports ?? new Map(),
    status: () => ({ ok: true }),
    metrics: () => 'dst_up 1\n',
    log: m => logged.push(m),
    admin: { allow: (options.allow ?? ['127.0.0.0/8']).map(c => parseCidr(c) as Cidr), token: options.token },
    onAdmin: options.onAdmin ?? (async (array, action) => ({ array, action })),
    hasher,
  })
  await listener.listen()
  t.teardown(async () => { await listener.stop(); await hasher.close() })
  return { base: `http://127.0.0.1:${listener.port}`, logged }
}

test('POST /arrays with a malformed percent-escape in the name is a 400 naming it; the node goes on serving', async t => {
  const { base } = await listenerFor(t)
  const bad = await fetch(`${base}/arrays/%E0%A4%A/add`, { method: 'POST', body: '{}' })
  t.is(bad.status, 400)
  t.regex((await bad.json() as { error: string }).error, /bad array name in the path: "%E0%A4%A"/)
  const badAction = await fetch(`${base}/arrays/m/%zz`, { method: 'POST', body: '{}' })
  t.is(badAction.status, 400)
  t.regex((await badAction.json() as { error: string }).error, /bad action in the path/)
  const slash = await fetch(`${base}/arrays/a%2Fb/add`, { method: 'POST', body: '{}' })
  t.is(slash.status, 400, 'a decoded name must still be a device name')
  const good = await fetch(`${base}/arrays/m%2Dx/add`, { method: 'POST', body: '{"device":"d"}' })
  t.is(good.status, 200)
  t.deepEqual(await good.json(), { array: 'm-x', action: 'add' })
  t.is((await fetch(`${base}/status`)).status, 200)
})

test('the admin allow list and token are checked before the path is parsed', async t => {
  const far = await listenerFor(t, { allow: ['10.0.0.0/8'] })
  const refused = await fetch(`${far.base}/arrays/%E0%A4%A/add`, { method: 'POST', body: '{}' })
  t.is(refused.status, 403, 'an address outside the allow list learns nothing about its path')
  const locked = await listenerFor(t, { token: 'sekrit' })
  t.is((await fetch(`${locked.base}/arrays/%E0%A4%A/add`, { method: 'POST', body: '{}' })).status, 401)
  const ok = await fetch(`${locked.base}/arrays/%E0%A4%A/add`, { method: 'POST', body: '{}', headers: { authorization: 'Bearer sekrit' } })
  t.is(ok.status, 400)
})

test('an admin handler that throws at once, or answers what cannot be sent, costs that request only (409 or 500, logged)', async t => {
  let mode: 'throw' | 'circular' | 'ok' = 'throw'
  const { base, logged } = await listenerFor(t, {
    onAdmin: (() => {
      if (mode === 'throw') throw new Error('sync boom')
      if (mode === 'circular') { const o: Record<string, unknown> = {}; o.self = o; return Promise.resolve(o) }
      return Promise.resolve({ fine: true })
    }) as never,
  })
  const thrown = await fetch(`${base}/arrays/m/add`, { method: 'POST', body: '{}' })
  t.is(thrown.status, 409)
  t.regex(await thrown.text(), /sync boom/)
  mode = 'circular'
  const circular = await fetch(`${base}/arrays/m/add`, { method: 'POST', body: '{}' })
  t.is(circular.status, 500)
  t.regex(await circular.text(), /internal error: .*circular/i)
  t.true(logged.some(m => /internal error in POST \/arrays/.test(m)), 'logged with its stack')
  mode = 'ok'
  const fine = await fetch(`${base}/arrays/m/add`, { method: 'POST', body: '' })
  t.deepEqual(await fine.json(), { fine: true })
  const big = await fetch(`${base}/arrays/m/add`, { method: 'POST', body: 'x'.repeat(70000) })
  t.is(big.status, 413)
  const junk = await fetch(`${base}/arrays/m/add`, { method: 'POST', body: '[1,2]' })
  t.is(junk.status, 400)
})

test('an upgrade whose handling throws is a 500 and a log line; the node goes on serving', async t => {
  const exports = new Map<string, never>()
  exports.get = () => { throw new Error('export table exploded') }
  const { base, logged } = await listenerFor(t, { exports })
  const port = Number(new URL(base).port)
  const refusal = await attemptUpgrade(port, 'disk')
  t.is(refusal.status, 500)
  t.regex(refusal.body, /export table exploded/)
  t.true(logged.some(m => m.includes('export table exploded')))
  t.is((await fetch(`${base}/status`)).status, 200)
  t.is((await fetch(`${base}/nope`)).status, 404)
})
