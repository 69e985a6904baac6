import test from 'ava'
import { WriteLease } from '../../node/lease'

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
