// Tests for node/core/lease.ts, the write lease of an export: one writer at a time, fencing tokens, expiry after the holder
// left or at once when it closed for good; and end to end, with real nodes: refusals that name the holder, a clean stop
// that frees the lease, a start that waits for a lease about to expire, and two nodes with one config as two writers.

import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { WriteLease } from '../../node/core/lease'
import { startNode, tempDir, type RunningNode } from '../helpers/node-process'

test('the first named writer gets the lease; its reconnects keep it and its token', t => {
  const lease = new WriteLease(1000)
  const first = lease.acquire('a')
  t.deepEqual(first, { ok: true, token: 1 })
  t.deepEqual(lease.acquire('a'), { ok: true, token: 1 }, 'a second connection of the same writer')
  lease.release('a')
  lease.release('a')
  t.deepEqual(lease.acquire('a'), { ok: true, token: 1 }, 'a reconnect before the lease expired')
  t.true(lease.mayWrite('a', 1))
})

test('another writer is refused while the holder is connected or its lease has not expired', t => {
  const lease = new WriteLease(10000)
  lease.acquire('a')
  const refused = lease.acquire('b')
  t.false(refused.ok)
  if (!refused.ok) t.regex(refused.reason, /held by writer a while it is connected/)
  lease.release('a')
  const later = lease.acquire('b')
  t.false(later.ok)
  if (!later.ok) t.regex(later.reason, /held by writer a for \d+ s more/)
  t.false(lease.mayWrite('b', 1))
  t.false(lease.mayWrite(null, 0), 'anonymous writers may not write while a lease is held')
})

test('the lease expires after its holder is gone; the next holder gets a higher fencing token and the old one is fenced', async t => {
  const lease = new WriteLease(50)
  lease.acquire('a')
  lease.release('a')
  await new Promise(resolve => setTimeout(resolve, 120))
  t.deepEqual(lease.acquire('b'), { ok: true, token: 2 })
  t.false(lease.mayWrite('a', 1), 'the old holder\'s token no longer writes')
  t.true(lease.mayWrite('b', 2))
  t.true(new WriteLease(10).mayWrite(null, 0), 'with no holder, anonymous writers may write')
})

test('a refusal names the holding node and its address, and once it has left, when its lease expires', t => {
  const lease = new WriteLease(5000)
  t.like(lease.acquire('w1', { name: 'n1', address: '10.0.0.1' }), { ok: true })
  const busy = lease.acquire('w2', { name: 'n2', address: '10.0.0.2' })
  t.false(busy.ok)
  if (!busy.ok) {
    t.regex(busy.reason, /^held by node 'n1' at 10\.0\.0\.1 \(writer w1\) while it is connected/)
    t.is(busy.expiresIn, null, 'a connected holder does not expire')
  }
  lease.release('w1')
  const later = lease.acquire('w2')
  t.false(later.ok)
  if (!later.ok) {
    t.regex(later.reason, /held by node 'n1' at 10\.0\.0\.1 \(writer w1\) for 5 s more \(until \d{4}-.*Z, unless it comes back\)/)
    t.true(later.expiresIn !== null && later.expiresIn > 4000 && later.expiresIn <= 5000)
  }
  t.like(lease.describe(), { holder: 'w1', name: 'n1', address: '10.0.0.1', connections: 0 })
})

test('a holder that relinquishes (closed for good) frees the lease with its last connection, not leaseTimeout later', t => {
  const lease = new WriteLease(60000)
  lease.acquire('a')
  lease.acquire('a')
  lease.relinquish('a')
  lease.release('a')
  t.false(lease.acquire('b').ok, 'still held while another connection of the holder is open')
  lease.release('a')
  t.deepEqual(lease.acquire('b'), { ok: true, token: 2 }, 'free at once after the last one')
  lease.release('b')
  lease.relinquish('b')
  t.is(lease.owner, null, 'relinquished after the last connection closed: free at once too')
  lease.relinquish('nobody')
  t.is(lease.describe().holder, null)
})

// ---- end to end: real nodes on loopback ----------------------------------------------------------------------------

const MiB = 1024 * 1024

function dir (t: import('ava').ExecutionContext): string {
  const d = tempDir('dst-lease-')
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }))
  return d
}

/** A node whose only device is a remote one on `url` (it writes there: it takes the lease), exported again. */
function writerConfig (name: string, url: string, dataDir = `./state-${name}`): Record<string, unknown> {
  return { name, dataDir, devices: { far: { type: 'remote', url } }, exports: [{ device: 'far' }] }
}

test('SIGTERM of the holder frees the lease at once; a refusal names the holder and its address; a lease expiring soon is waited for', async t => {
  const d = dir(t)
  const nodes: RunningNode[] = []
  t.teardown(async () => { await Promise.all(nodes.map(n => n.kill())) })
  const leaf = await startNode(d, { name: 'leaf', dataDir: './state-leaf', leaseTimeout: '3s', devices: { disk: { type: 'file', path: './leaf.img', size: MiB } }, exports: [{ device: 'disk' }] })
  nodes.push(leaf)
  const b = await startNode(d, writerConfig('b', leaf.url('disk')))
  nodes.push(b)
  const refused = await startNode(d, writerConfig('c', leaf.url('disk'))).then(() => null, (err: Error) => err)
  t.regex(refused?.message ?? '', /exited with 1/)
  t.regex(refused?.message ?? '', /held by node 'b' at 127\.0\.0\.1 \(writer [0-9a-f-]+\) while it is connected/)
  t.is(await b.stop(), 0)
  // Freed by b's clean stop: c opens at once, with no wait for the 3 s leaseTimeout.
  const c = await startNode(d, writerConfig('c', leaf.url('disk')))
  nodes.push(c)
  t.notRegex(c.output(), /waiting/)
  const held = (await leaf.status()).exports[0].lease
  t.like(held, { name: 'c', address: '127.0.0.1', connections: 1 })
  // A crash keeps the lease for leaseTimeout; a node started meanwhile waits for it (its open timeout is longer).
  await c.kill()
  const started = Date.now()
  const e = await startNode(d, writerConfig('e', leaf.url('disk')))
  nodes.push(e)
  t.regex(e.output(), /for \d s more .*; waiting \d+ ms for it to expire/)
  t.true(Date.now() - started > 1000, 'it did wait')
  t.like((await leaf.status()).exports[0].lease, { name: 'e' })
})

test('two machines with one config (same name, same dataDir path, different node ids) are two writers: the second is refused', async t => {
  const d = dir(t)
  const nodes: RunningNode[] = []
  t.teardown(async () => { await Promise.all(nodes.map(n => n.kill())) })
  const leaf = await startNode(d, { name: 'leaf', dataDir: './state-leaf', leaseTimeout: '60s', devices: { disk: { type: 'file', path: './leaf.img', size: MiB } }, exports: [{ device: 'disk' }] })
  nodes.push(leaf)
  const stateDir = path.join(d, 'state-top')
  const first = await startNode(d, writerConfig('top', leaf.url('disk'), stateDir))
  nodes.push(first)
  const holder = (await leaf.status()).exports[0].lease.holder
  // The first machine dies; the second, configured the same, starts with an empty dataDir at the same path.
  await first.kill()
  fs.rmSync(stateDir, { recursive: true })
  const second = await startNode(d, writerConfig('top', leaf.url('disk'), stateDir)).then(() => null, (err: Error) => err)
  t.regex(second?.message ?? '', /refused \(409\).*held by node 'top' at 127\.0\.0\.1 \(writer [0-9a-f-]+\) for \d+ s more/)
  t.is((await leaf.status()).exports[0].lease.holder, holder, 'the lease stays with the first writer')
  t.not(fs.readFileSync(path.join(stateDir, 'node-id'), 'utf8').trim(), '', 'the second machine made its own node id')
})
