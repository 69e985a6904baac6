// Unit tests for node/daemon/events.ts: the events between two samples of a node's status, progress throttled, and
// an event stream whose client never reads: bounded, then closed.

import test from 'ava'
import { diff, EventPublisher, EventStream, type NodeEvent, type Sample, type StreamResponse } from '../../../node/daemon/events'

function sample (legs: Record<string, { state: string, resync?: { doneBytes: number, totalBytes: number } }>, extra: { holder?: string | null, refused?: number, remote?: boolean } = {}): Sample {
  return {
    status: {
      devices: {
        m: { type: 'mirror', state: Object.values(legs).every(l => l.state === 'in-sync') ? 'online' : 'degraded', members: Object.entries(legs).map(([name, l]) => ({ name, ...l })) },
        far: { type: 'remote', state: extra.remote === false ? 'connecting' : 'online', connected: extra.remote !== false },
      },
      exports: [{ name: 'm', lease: { holder: extra.holder ?? null, name: extra.holder != null ? 'writer' : null, address: null }, connections: extra.holder != null ? 1 : 0 }],
    },
    counters: [{ name: 'm', refused: extra.refused ?? 0, bytesRead: 0, bytesWritten: 0 }],
  }
}

/** Runs samples through a publisher and returns the events it emitted (sampling driven by hand, not by the timer). */
function run (samples: Sample[]): NodeEvent[] {
  let i = 0
  const pub = new EventPublisher({ node: 'n', sample: () => samples[Math.min(i, samples.length - 1)], interval: 1e9 })
  const got: NodeEvent[] = []
  const stop = pub.subscribe(e => got.push(e))
  for (i = 1; i < samples.length; i++) (pub as unknown as { tick: () => void }).tick()
  stop()
  return got.filter(e => e.kind !== 'rates')
}

test('a stream starts with a snapshot, then one event per change: leg failed, returned, resync start and finish', t => {
  const events = run([
    sample({ a: { state: 'in-sync' }, b: { state: 'in-sync' } }),
    sample({ a: { state: 'in-sync' }, b: { state: 'failed' } }, { remote: false }),
    sample({ a: { state: 'in-sync' }, b: { state: 'resyncing', resync: { doneBytes: 0, totalBytes: 100 } } }),
    sample({ a: { state: 'in-sync' }, b: { state: 'in-sync' } }),
  ])
  t.is(events[0].kind, 'snapshot')
  t.like(events[0], { node: 'n' })
  const brief = events.slice(1).map(e => [e.kind, e.device, e.leg, e.from, e.to].filter(x => x !== undefined).join(' '))
  t.deepEqual(brief, [
    'device-state m online degraded',
    'device-state far online connecting',
    'remote-disconnected far',
    'leg-failed m b in-sync failed',
    'device-state far connecting online',
    'remote-connected far',
    'leg-returned m b failed resyncing',
    'resync-start m b',
    'device-state m degraded online',
    'leg-state m b resyncing in-sync',
    'resync-finish m b',
  ])
})

test('lease taken and released, connections refused', t => {
  const events = run([sample({ a: { state: 'in-sync' } }), sample({ a: { state: 'in-sync' } }, { holder: 'w1', refused: 2 }), sample({ a: { state: 'in-sync' } }, { refused: 2 })])
  const kinds = events.slice(1).map(e => e.kind)
  t.deepEqual(kinds, ['lease-taken', 'connections', 'connection-refused', 'lease-released', 'connections'])
  t.like(events.find(e => e.kind === 'connection-refused'), { export: 'm', count: 2, total: 2 })
  t.like(events.find(e => e.kind === 'lease-taken'), { export: 'm', holder: 'w1', name: 'writer' })
})

test('resync progress is reported at most once a second', t => {
  const flat = (done: number): Parameters<typeof diff>[0] => ({
    devices: new Map(), verifies: new Map(), exports: new Map(),
    legs: new Map([['m\0b', { array: 'm', leg: 'b', state: 'resyncing', resync: { doneBytes: done, totalBytes: 100 } }]]),
  })
  const at = new Map<string, number>([['resync\0m\0b', 0]])
  t.deepEqual(diff(flat(1), flat(2), 500, at), [], 'half a second after the last report: nothing')
  t.like(diff(flat(2), flat(3), 1000, at)[0], { kind: 'resync-progress', doneBytes: 3, totalBytes: 100 })
  t.deepEqual(diff(flat(3), flat(4), 1500, at), [])
})

test('a client that never reads is bounded, then closed', t => {
  let written = 0
  let closed = 0
  // A socket that takes the first write and then pushes back for ever (onWritable never fires).
  const res: StreamResponse = {
    write: chunk => { written += chunk.length; return false },
    onWritable: () => {},
    cork: fn => fn(),
    close: () => { closed++ },
  }
  const overflows: number[] = []
  const stream = new EventStream(res, 4096, q => overflows.push(q))
  const e: NodeEvent = { time: new Date().toISOString(), node: 'n', kind: 'leg-state', device: 'm', leg: 'b', from: 'in-sync', to: 'failed' }
  for (let i = 0; i < 1000; i++) stream.send(e)
  t.is(closed, 1, 'closed once')
  t.true(stream.closed)
  t.is(overflows.length, 1)
  t.true(overflows[0] > 4096 && overflows[0] < 4096 + 200, `queued ${overflows[0]} bytes at the close`)
  t.true(written < 200, 'only the first event reached the socket')
})

test('a stream that pushes back writes what waits once the socket drains, in order', t => {
  const out: string[] = []
  let writable: ((offset: number) => boolean) | null = null
  let full = true
  const res: StreamResponse = {
    write: chunk => { out.push(chunk); return !full },
    onWritable: fn => { writable = fn },
    cork: fn => fn(),
    close: () => t.fail('closed'),
  }
  const stream = new EventStream(res, 1 << 20, () => t.fail('overflow'))
  for (let i = 0; i < 5; i++) stream.send({ time: '', node: 'n', kind: 'k', n: i } as NodeEvent)
  t.is(out.length, 1)
  full = false
  t.true((writable as unknown as (o: number) => boolean)(0))
  t.deepEqual(out.map(c => JSON.parse(c.slice(6)).n), [0, 1, 2, 3, 4])
})

test('closing the publisher (the node stops) ends every stream', t => {
  const pub = new EventPublisher({ node: 'n', sample: () => sample({ a: { state: 'in-sync' } }), interval: 1e9 })
  let ended = 0
  pub.subscribe(() => {}, () => { ended++ })
  pub.subscribe(() => {}, () => { ended++ })
  const gone = pub.subscribe(() => {}, () => { ended += 100 })
  gone()
  pub.close()
  t.is(ended, 2, 'each open stream once; one already unsubscribed is not called')
  t.is(pub.listeners, 0)
})
