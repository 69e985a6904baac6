// The node's listener (node/listener.ts) in this process: a report that throws answers that request with a 500 and
// is logged; the listener, and this process, go on serving. (uWebSockets.js aborts the whole process when an HTTP
// handler returns without answering, so a bug in a report once could have taken the node down.)

import test from 'ava'
import { Listener } from '../../node/listener'
import { BufferPool } from '../../node/pool'

test('a /status or /metrics report that throws is a 500 naming the error; the next requests are served', async t => {
  const logged: string[] = []
  let broken = true
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
  })
  await listener.listen()
  t.teardown(() => listener.stop())
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
