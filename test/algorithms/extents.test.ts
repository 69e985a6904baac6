// extents() through the arrays (algorithms/pieces.ts, stripe.ts, mirror.ts) over sparse memory devices, checked with
// fast-check against a model (the bytes, and a mask of the bytes written and not trimmed since): the runs cover the
// range asked exactly, in order and merged; a hole always reads as zeros, on the model and on the device; and a byte
// written since its last trim is never called a hole.

import test from 'ava'
import fc from 'fast-check'
import { LinearDevice } from '../../algorithms/linear'
import { StripeDevice } from '../../algorithms/stripe'
import { MirrorDevice } from '../../algorithms/mirror'
import { MemoryIntentStore } from '../../algorithms/intent-store'
import type { Device, Extent } from '../../node/core/device'
import { MemoryDevice, PAGE_SIZE } from '../../node/devices/memory-device'
import { closeDefaultHasher } from '../../node/core/hasher'
import { memories } from '../helpers/members'

test.after.always(async () => { await closeDefaultHasher() })

const KiB = 1024

type Cmd =
  | { kind: 'write', at: number, length: number, seed: number }
  | { kind: 'trim', at: number, length: number }
  | { kind: 'ask', at: number, length: number }

const fraction = fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true })
const cmdArb: fc.Arbitrary<Cmd> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('write' as const), at: fraction, length: fc.integer({ min: 1, max: 3 * PAGE_SIZE }), seed: fc.nat(250) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('trim' as const), at: fraction, length: fc.integer({ min: 1, max: 6 * PAGE_SIZE }) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('ask' as const), at: fraction, length: fraction }) },
)

/** Checks one answer of extents() against the model; returns the first problem, or null. */
async function problem (device: Device, model: Buffer, written: Uint8Array, offset: number, length: number, runs: Extent[]): Promise<string | null> {
  let at = offset
  for (const [i, r] of runs.entries()) {
    if (r.offset !== at) return `run ${i} starts at ${r.offset}, expected ${at}`
    if (!(r.length > 0)) return `run ${i} is empty`
    if (i > 0 && runs[i - 1].hole === r.hole) return `runs ${i - 1} and ${i} are of one kind: not merged`
    if (r.hole) {
      const w = written.subarray(r.offset, r.offset + r.length).indexOf(1)
      if (w >= 0) return `hole ${r.offset}+${r.length} holds byte ${r.offset + w}, written since its last trim`
      if (!model.subarray(r.offset, r.offset + r.length).every(b => b === 0)) return `hole ${r.offset}+${r.length} is not zeros in the model`
      const back = Buffer.alloc(r.length, 0xee)
      await device.read(r.offset, r.length, back)
      if (!back.every(b => b === 0)) return `hole ${r.offset}+${r.length} does not read as zeros`
    }
    at += r.length
  }
  return at === offset + length ? null : `runs end at ${at}, the range at ${offset + length}`
}

async function check (t: { log: (m: string) => void }, build: () => Promise<{ device: Device, close: () => Promise<void> }>, cmds: Cmd[]): Promise<boolean> {
  const { device, close } = await build()
  try {
    const size = device.size
    const model = Buffer.alloc(size)
    const written = new Uint8Array(size)
    for (const c of cmds) {
      const at = Math.floor(c.at * size)
      if (c.kind === 'write') {
        const n = Math.min(c.length, size - at)
        const data = Buffer.alloc(n, 1 + c.seed) // never zeros: a written byte the device calls a hole would read wrong
        await device.write(at, data)
        data.copy(model, at)
        written.fill(1, at, at + n)
      } else if (c.kind === 'trim') {
        const n = Math.min(c.length, size - at)
        await device.trim(at, n)
        model.fill(0, at, at + n)
        written.fill(0, at, at + n)
      } else {
        const n = Math.floor(c.length * (size - at + 1))
        const runs = await device.extents(at, n)
        const p = await problem(device, model, written, at, n, runs)
        if (p !== null) { t.log(`extents(${at}, ${n}) = ${JSON.stringify(runs)}: ${p}`); return false }
      }
    }
    const runs = await device.extents(0, size)
    const p = await problem(device, model, written, 0, size, runs)
    if (p !== null) { t.log(`extents(0, ${size}) = ${JSON.stringify(runs)}: ${p}`); return false }
    return true
  } finally {
    await close()
  }
}

const noClose = async (): Promise<void> => {}

test('linear of memory devices: extents() against the model', async t => {
  await fc.assert(fc.asyncProperty(
    fc.array(fc.constantFrom(2 * PAGE_SIZE, 3 * PAGE_SIZE + 4096, 5 * PAGE_SIZE - 512, 100 * KiB), { minLength: 1, maxLength: 4 }),
    fc.array(cmdArb, { minLength: 1, maxLength: 30 }),
    async (sizes, cmds) => await check(t, async () => ({ device: new LinearDevice(memories(sizes).members), close: noClose }), cmds),
  ), { numRuns: 60 })
  t.pass('fast-check found no counterexample')
})

test('stripe of memory devices: extents() against the model', async t => {
  await fc.assert(fc.asyncProperty(
    fc.integer({ min: 2, max: 4 }),
    fc.constantFrom(4 * KiB, 16 * KiB, 64 * KiB, 128 * KiB),
    fc.constantFrom(8 * PAGE_SIZE, 5 * PAGE_SIZE + 8192),
    fc.array(cmdArb, { minLength: 1, maxLength: 30 }),
    async (n, chunk, size, cmds) => await check(t, async () => ({ device: new StripeDevice({ members: memories(new Array(n).fill(size)).members, chunk }), close: noClose }), cmds),
  ), { numRuns: 60 })
  t.pass('fast-check found no counterexample')
})

test('mirror of memory devices: extents() against the model (asked of an in-sync leg)', async t => {
  await fc.assert(fc.asyncProperty(
    fc.integer({ min: 2, max: 3 }),
    fc.array(cmdArb, { minLength: 1, maxLength: 30 }),
    async (n, cmds) => await check(t, async () => {
      const m = await MirrorDevice.open({ name: 'm', legs: memories(new Array(n).fill(8 * PAGE_SIZE)).members, region: 64 * KiB, store: new MemoryIntentStore(), clearDelay: 10, probeInterval: 10 })
      return { device: m, close: () => m.close() }
    }, cmds),
  ), { numRuns: 40 })
  t.pass('fast-check found no counterexample')
})

test('a stripe whose members are mostly holes answers from a handful of member runs, not one per chunk (1 TiB, 4 KiB chunks)', async t => {
  const { mems, members } = memories([2 ** 38, 2 ** 38, 2 ** 38, 2 ** 38])
  const asked: number[] = []
  for (const m of mems) {
    const inner = m.extents.bind(m)
    m.extents = async (o, l) => { asked.push(l); return await inner(o, l) }
  }
  const s = new StripeDevice({ members, chunk: 4 * KiB })
  await s.write(2 ** 39 + 4096, Buffer.alloc(4096, 1)) // chunk 2^27 + 1: member 1, row 2^25
  const started = Date.now()
  const runs = await s.extents(0, s.size)
  t.true(Date.now() - started < 2000, `took ${Date.now() - started} ms`)
  t.is(asked.length, 4, 'each member asked once')
  // Member 1's page (64 KiB) is data: its chunks in rows 2^25 .. 2^25 + 15, each between holes of the other members.
  const data = runs.filter(r => !r.hole)
  t.is(runs.length, 33)
  t.deepEqual(data, Array.from({ length: 16 }, (_, k) => ({ offset: ((2 ** 25 + k) * 4 + 1) * 4 * KiB, length: 4 * KiB, hole: false })))
})

test('a mirror with no leg that holds the range, or whose leg cannot tell, answers all data', async t => {
  const { mems, members } = memories([4 * PAGE_SIZE, 4 * PAGE_SIZE])
  const m = await MirrorDevice.open({ name: 'm', legs: members, region: 64 * KiB, store: new MemoryIntentStore(), clearDelay: 10, probeInterval: 10, autoResync: false })
  t.teardown(() => m.close())
  t.deepEqual(await m.extents(0, m.size), [{ offset: 0, length: m.size, hole: true }])
  for (const mem of mems) mem.extents = () => Promise.reject(new Error('cannot tell'))
  t.deepEqual(await m.extents(0, m.size), [{ offset: 0, length: m.size, hole: false }])
  t.is(m.status().state, 'online', 'no leg failed for it')
  const single = new MemoryDevice({ size: 4096 })
  t.deepEqual(await single.extents(0, 4096), [{ offset: 0, length: 4096, hole: true }])
})
