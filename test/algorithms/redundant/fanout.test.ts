import test from 'ava'
import { FanoutPool, type Fanout } from '../../../algorithms/redundant/fanout'
import { Leg } from '../../../algorithms/redundant/leg'
import { MemoryDevice } from '../../../node/devices/memory-device'

const hooks = { log: () => {}, event: () => {} }
const mk = (name: string): Leg => new Leg(name, new MemoryDevice({ size: 4096 }), 1, new Uint8Array(1), { name, identity: '', inSync: true }, 1000, hooks)

test('a leg that fails is reported at once, before the slow leg answers; outstanding counts follow the answers', async t => {
  const failed: string[] = []
  const pool = new FanoutPool((f: Fanout, i: number, err: unknown) => { failed.push(`${f.legs[i].name}: ${(err as Error).message}`) })
  const a = mk('a')
  const b = mk('b')
  const f = pool.take(0, 0)
  let release = (): void => {}
  f.issue(a, new Promise<void>(resolve => { release = resolve }))
  f.issue(b, Promise.reject(new Error('EIO')))
  t.is(a.outstanding, 1)
  await new Promise(resolve => setImmediate(resolve))
  t.deepEqual(failed, ['b: EIO'])
  t.is(b.outstanding, 0)
  t.is(a.outstanding, 1)
  release()
  await f.wait()
  t.deepEqual(f.failed, [false, true])
  t.true(f.anyInSyncOk())
  f.release()
  t.is(pool.take(1, 1), f, 'the record is reused')
})

test('wait with nothing issued resolves at once', async t => {
  const f = new FanoutPool(() => {}).take(0, 0)
  await f.wait()
  t.false(f.anyInSyncOk())
})
