import test from 'ava'
import { Health } from '../../../algorithms/redundant/health'
import { IntentMap } from '../../../algorithms/redundant/intent-map'
import { Leg } from '../../../algorithms/redundant/leg'
import { LegSet } from '../../../algorithms/redundant/leg-set'
import { RegionGate } from '../../../algorithms/redundant/region-gate'
import type { ArrayContext } from '../../../algorithms/redundant/context'
import { MemoryIntentStore } from '../../../algorithms/intent-store'
import { MemoryDevice } from '../../../node/devices/memory-device'
import { ManualClock } from '../../helpers/clock'

class Flaky extends MemoryDevice {
  failing = false
  reads = 0
  protected override _read (offset: number, length: number, into: Uint8Array): Promise<void> {
    this.reads++
    if (this.failing) return Promise.reject(new Error('EIO'))
    return super._read(offset, length, into)
  }
}

function rig (): { ctx: ArrayContext, health: Health, clock: ManualClock, a: Leg, b: Leg, dev: Flaky, resumed: string[], logs: string[] } {
  const clock = new ManualClock()
  const logs: string[] = []
  const resumed: string[] = []
  const log = (m: string): void => { logs.push(m) }
  let intent: IntentMap | null = null
  const hooks = { log, event: () => { intent?.event() } }
  const dev = new Flaky({ size: 8192 })
  const a = new Leg('a', new MemoryDevice({ size: 8192 }), 2, new Uint8Array(1), { name: 'a', identity: '', inSync: true }, 100, hooks)
  const b = new Leg('b', dev, 2, new Uint8Array(1), { name: 'b', identity: dev.identity, inSync: true }, 100, hooks)
  const legs = new LegSet('m', [a, b])
  const gate = new RegionGate()
  intent = new IntentMap('m', { uuid: 'u', size: 8192, region: 4096, events: 1, legs: [] }, new MemoryIntentStore(), legs, gate, 2, log)
  const ctx: ArrayContext = {
    name: 'm', size: 8192, region: 4096, regions: 2, blockSize: 512, legs, gate, intent, stopping: false,
    config: { resyncRate: 0, clearDelay: 1000, probeInterval: 100, autoResync: true, compare: true, log, clock },
  }
  const health = new Health(ctx, async l => { resumed.push(l.name) })
  return { ctx, health, clock, a, b, dev, resumed, logs }
}

const turn = (): Promise<void> => new Promise(resolve => setImmediate(resolve))

test('a failed leg is probed no sooner than its wait, which doubles while it does not answer, up to 5 s', async t => {
  const { health, clock, b, dev, ctx } = rig()
  dev.failing = true
  health.fail(b, new Error('EIO'))
  t.is(b.state, 'failed')
  t.is(ctx.intent.events, 2, 'a failure is an array event')
  health.probe()
  t.is(dev.reads, 0, 'not before probeInterval')
  const waits: number[] = []
  for (let i = 0; i < 8; i++) {
    await clock.advance(b.nextProbe - clock.now())
    health.probe()
    await turn()
    waits.push(b.probeWait)
  }
  t.deepEqual(waits, [200, 400, 800, 1600, 3200, 5000, 5000, 5000])
  t.is(dev.reads, 8)
})

test('a leg that answers again comes back stale and its resync is started; one with another disk is held foreign', async t => {
  const { health, clock, b, dev, resumed, logs } = rig()
  b.markStale(1, 1)
  health.fail(b, new Error('EIO'))
  await clock.advance(100)
  health.probe()
  for (let i = 0; i < 10 && resumed.length === 0; i++) await turn()
  t.is(b.state, 'stale')
  t.deepEqual(resumed, ['b'])
  t.true(logs.includes("leg 'b' is back: resyncing 4096 bytes"))
  health.fail(b, new Error('EIO'))
  dev.identity = 'another'
  await clock.advance(100)
  health.probe()
  for (let i = 0; i < 10 && b.state !== 'foreign'; i++) await turn()
  t.is(b.state, 'foreign')
  t.true(b.held)
  await clock.advance(10_000)
  health.probe()
  t.is(b.state, 'foreign', 'held until the operator replaces it')
})

test('the last in-sync leg to fail becomes the authority', t => {
  const { health, a, b } = rig()
  health.fail(a, new Error('EIO'))
  t.false(a.authority)
  health.fail(b, new Error('EIO'))
  t.true(b.authority)
})
