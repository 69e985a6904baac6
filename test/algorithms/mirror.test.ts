// Tests for algorithms/mirror.ts: legs that each hold the whole array. Legs are MemoryDevices behind FaultDevices, so
// a test can fail a leg (`failing`), slow it (`delay`) and count its traffic (`counts`). What is checked: size and
// writes fan-out, reads only from legs that hold the range and balanced across them, degraded service while a leg is
// away, resync of only the dirty regions (and compare-first full sync for a new array or leg), crash recovery from the
// durable write-intent map, writes racing a resync, and add/remove/split of legs. A fast-check property runs random
// writes, reads, leg failures and returns against a Buffer model; a second lets every leg fail (the last in-sync one
// too) and the node crash, and checks that refusals are NOLEG, acknowledged writes survive and the array heals. Integrity: hash from one leg with failover, checksum
// resync (only differing chunks copied; `compare: false` copies whole regions), and online verify (mismatches found,
// reported, repaired from a leg or a majority; skipped regions; refusals), with a property of writes racing a verify.

import test, { type ExecutionContext } from 'ava'
import fc from 'fast-check'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { MirrorDevice, type MirrorOptions, type VerifyReport } from '../../algorithms/mirror'
import { FileIntentStore, MemoryIntentStore, type IntentState, type IntentStore } from '../../algorithms/intent-store'
import type { Member } from '../../algorithms/linear'
import { Device } from '../../node/core/device'
import { MemoryDevice } from '../../node/devices/memory-device'
import { ManualClock } from '../helpers/clock'
import { FaultDevice } from '../../node/devices/fault-device'
import { DstError, Errno } from '../../node/core/errors'
import { closeDefaultHasher } from '../../node/core/hasher'
import { digestsOf } from '../helpers/digests'

const KiB = 1024
const REGION = 4 * KiB

const sleep = (ms: number): Promise<void> => new Promise(resolve => setTimeout(resolve, ms))

/** Polls `cond` every few ms for at most `ms`; true when it held. */
async function waitFor (cond: () => boolean, ms = 5000): Promise<boolean> {
  const until = Date.now() + ms
  while (!cond()) {
    if (Date.now() > until) return false
    await sleep(5)
  }
  return true
}

function allInSync (m: MirrorDevice): boolean {
  return m.legStates().every(l => l.state === 'in-sync')
}

function legState (m: MirrorDevice, name: string): string {
  return m.legStates().find(l => l.name === name)?.state ?? 'absent'
}

/** Bytes that differ at every position, so a misplaced or stale piece shows up. */
function pattern (length: number, seed: number): Buffer {
  const b = Buffer.alloc(length)
  for (let i = 0; i < length; i++) b[i] = (seed * 31 + i * 7 + (i >> 9)) & 0xff
  return b
}

interface Rig { mems: MemoryDevice[], faults: FaultDevice[], members: Member[] }

function rig (sizes: number[]): Rig {
  const mems = sizes.map(size => new MemoryDevice({ size }))
  const faults = mems.map(m => new FaultDevice(m))
  return { mems, faults, members: faults.map((device, i) => ({ name: legName(i), device })) }
}

function legName (i: number): string { return String.fromCharCode(97 + i) } // a, b, c

/** Opens a mirror (fast timers by default) and closes it when the test ends, so its timers stop. */
async function openMirror (t: ExecutionContext, members: Member[], options: Partial<MirrorOptions> = {}): Promise<MirrorDevice> {
  const m = await MirrorDevice.open({
    name: 'm', legs: members, region: REGION, store: new MemoryIntentStore(), clearDelay: 10, probeInterval: 10, ...options,
  })
  t.teardown(() => closeSoon(m))
  return m
}

/** Closes a mirror: a close that fails fails the test, and one that does not finish within 10 s does too. */
async function closeSoon (m: Device): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error('close() did not finish within 10 s')), 10000) })
  try {
    await Promise.race([m.close(), late])
  } finally {
    clearTimeout(timer)
  }
}

/** Opens a new array and waits for its first (compare-only) sync of legs 2..n. */
async function openSynced (t: ExecutionContext, members: Member[], options: Partial<MirrorOptions> = {}): Promise<MirrorDevice> {
  const m = await openMirror(t, members, options)
  if (options.autoResync === false) for (const l of m.legNames) await m.startResync(l)
  t.true(await waitFor(() => allInSync(m)), 'the new array synced')
  return m
}

function regionsWithBits (state: IntentState, region: number): number {
  const regions = Math.ceil(state.superblock.size / region)
  let n = 0
  for (let r = 0; r < regions; r++) if (state.bits.some(b => (b[r >> 3] & (1 << (r & 7))) !== 0)) n++
  return n
}

/** A device that stops answering at a "crash": afterwards every request fails, so nothing reaches the disk below. */
class Crashable extends Device {
  readonly type = 'crashable'
  crashed = false
  constructor (readonly inner: Device) {
    super({ size: inner.size, blockSize: inner.blockSize, canFlush: inner.canFlush, canTrim: inner.canTrim })
    this.identity = inner.identity
  }

  protected override _read (offset: number, length: number, into: Uint8Array): Promise<void> {
    return this.crashed ? Promise.reject(gone()) : this.inner.read(offset, length, into)
  }

  protected override _write (offset: number, data: Uint8Array): Promise<void> {
    return this.crashed ? Promise.reject(gone()) : this.inner.write(offset, data)
  }

  protected override _flush (): Promise<void> { return this.crashed ? Promise.reject(gone()) : this.inner.flush() }
  protected override _trim (offset: number, length: number): Promise<void> {
    return this.crashed ? Promise.reject(gone()) : this.inner.trim(offset, length)
  }
}

function gone (): DstError { return new DstError('DST_ERR_EIO', 'crashed', Errno.EIO) }

/**
 * A store in front of a MemoryIntentStore whose saves take `delay` ms to become durable (as an fdatasync does); after
 * crash() nothing more becomes durable. `inner.saved` is then exactly what survived.
 */
class CrashableStore implements IntentStore {
  crashed = false
  /** Saves under way (not yet durable). */
  pending = 0
  constructor (readonly delay = 0, readonly inner = new MemoryIntentStore()) {}

  load (): Promise<IntentState | null> { return this.inner.load() }

  async create (state: IntentState): Promise<void> {
    const copy = snapshot(state)
    this.pending++
    try {
      if (this.delay > 0) await sleep(this.delay)
      if (!this.crashed) await this.inner.create(copy)
    } finally { this.pending-- }
  }

  async update (state: IntentState, pages: Map<number, Set<number>>): Promise<void> {
    const copy = snapshot(state)
    this.pending++
    try {
      if (this.delay > 0) await sleep(this.delay)
      if (!this.crashed) await this.inner.update(copy, pages)
    } finally { this.pending-- }
  }
}

function snapshot (s: IntentState): IntentState {
  return { superblock: JSON.parse(JSON.stringify(s.superblock)) as IntentState['superblock'], bits: s.bits.map(b => b.slice()) }
}

/** A device whose writes can be slowed on their own (reads stay fast) and observed as they are issued. */
class HookDevice extends Device {
  readonly type = 'hook'
  writeDelay = 0
  onWrite: ((offset: number) => void) | null = null
  constructor (readonly inner: Device) {
    super({ size: inner.size, blockSize: inner.blockSize })
    this.identity = inner.identity
  }

  protected override _read (offset: number, length: number, into: Uint8Array): Promise<void> {
    return this.inner.read(offset, length, into)
  }

  protected override async _write (offset: number, data: Uint8Array): Promise<void> {
    this.onWrite?.(offset)
    if (this.writeDelay > 0) await sleep(this.writeDelay)
    return this.inner.write(offset, data)
  }
}

// ---- opening -------------------------------------------------------------------------------------------------------

test('size is the smallest leg; a new array syncs legs 2..n from leg 1', async t => {
  const { mems, faults, members } = rig([64 * KiB, 64 * KiB + 3000, 80 * KiB])
  mems[0].data.set(pattern(64 * KiB, 1))
  const m = await openSynced(t, members)
  t.is(m.size, 64 * KiB)
  t.is(m.regions, 16)
  t.true(m.writable)
  t.is(m.status().state, 'online')
  for (const i of [1, 2]) t.true(mems[i].data.subarray(0, m.size).equals(mems[0].data), `leg ${legName(i)} holds leg a's data`)
  t.is(faults[0].counts.writeBytes, 0, 'leg 1 is the truth: nothing is written to it')
})

test('a new array compares before it copies: identical regions are not written', async t => {
  const { mems, faults, members } = rig([64 * KiB, 64 * KiB])
  const truth = pattern(64 * KiB, 5)
  mems[0].data.set(truth)
  mems[1].data.set(truth)
  // Three regions differ on leg b; one of them only in its last byte.
  mems[1].data.fill(0, 2 * REGION, 3 * REGION)
  mems[1].data[9 * REGION + REGION - 1] ^= 0xff
  mems[1].data.fill(0xee, 15 * REGION + 10, 15 * REGION + 20)
  // Leg b holds data, so the operator names the source (issue 12: a new array never guesses).
  const m = await openSynced(t, members, { syncFrom: 'a' })
  t.is(faults[1].counts.writeBytes, 3 * REGION)
  t.is(m.resyncedBytes, 3 * REGION)
  t.is(m.comparedBytes, 64 * KiB, 'every region was compared once')
  t.true(mems[1].data.equals(truth))
  t.true(mems[0].data.equals(truth))
})

test('a mirror needs at least one leg', async t => {
  const err = await t.throwsAsync(MirrorDevice.open({ name: 'none', legs: [], region: REGION, store: new MemoryIntentStore() }))
  t.is((err as DstError).code, 'DST_ERR_CONFIG')
})

// A mirror of one leg is what `dst array remove/split` can leave behind; it opens, degraded, and its last leg stays.
test('a mirror of one leg is degraded and its only leg can be neither removed nor split', async t => {
  const { mems, members } = rig([16 * KiB])
  const m = await openMirror(t, members)
  t.is(m.status().state, 'degraded')
  await m.write(100, Buffer.from('alone'))
  t.is(mems[0].data.subarray(100, 105).toString(), 'alone')
  await t.throwsAsync(m.removeLeg('a'), { code: 'DST_ERR_LASTLEG' })
  await t.throwsAsync(m.splitLeg('a'), { code: 'DST_ERR_LASTLEG' })
})

test('reopening after a clean close costs no resync (FileIntentStore)', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dst-mirror-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'm.intent')
  const { mems, faults, members } = rig([64 * KiB, 64 * KiB])
  const m1 = await openSynced(t, members, { store: new FileIntentStore(file) })
  await m1.write(5000, pattern(20000, 2))
  await m1.close()
  const before = faults[1].counts.writeBytes
  const m2 = await openMirror(t, members, { store: new FileIntentStore(file) })
  t.deepEqual(m2.legStates().map(l => l.state), ['in-sync', 'in-sync'])
  t.is(m2.identity, m1.identity, 'the array keeps its UUID')
  await sleep(30)
  t.is(m2.resyncedBytes + m2.comparedBytes, 0)
  t.is(faults[1].counts.writeBytes, before)
  t.true(mems[0].data.equals(mems[1].data))
  // A leg with a different identity in the same slot is new to the array: full (compare-first) sync.
  const fresh = new FaultDevice(new MemoryDevice({ size: 64 * KiB }))
  await m2.close()
  const m3 = await openMirror(t, [members[0], { name: 'b', device: fresh }], { store: new FileIntentStore(file) })
  t.true(await waitFor(() => allInSync(m3)))
  t.is(m3.comparedBytes, 64 * KiB)
  t.true((fresh.inner as MemoryDevice).data.equals(mems[0].data))
})

// ---- I/O ----------------------------------------------------------------------------------------------------------

test('writes go to every leg; reads come back', async t => {
  const { mems, members } = rig([64 * KiB, 64 * KiB, 64 * KiB])
  const m = await openSynced(t, members)
  const data = pattern(10000, 9)
  await m.write(3000, data)
  for (const mem of mems) t.true(mem.data.subarray(3000, 13000).equals(data))
  const into = Buffer.alloc(10000)
  await m.read(3000, 10000, into)
  t.true(into.equals(data))
})

test('reads are balanced across in-sync legs', async t => {
  const { faults, members } = rig([64 * KiB, 64 * KiB])
  const m = await openSynced(t, members)
  await m.write(0, pattern(64 * KiB, 3))
  const before = faults.map(f => f.counts.read)
  await Promise.all(Array.from({ length: 100 }, (_, i) => m.read((i % 16) * REGION, REGION, Buffer.alloc(REGION))))
  const reads = faults.map((f, i) => f.counts.read - before[i])
  t.is(reads[0] + reads[1], 100)
  t.true(reads[0] >= 20 && reads[1] >= 20, `reads per leg: ${reads.join(', ')}`)
})

test('a large read is split across legs, and still succeeds when a leg fails under it', async t => {
  const size = 512 * KiB
  const { faults, members } = rig([size, size])
  const m = await openSynced(t, members, { region: 64 * KiB })
  const data = pattern(size, 4)
  await m.write(0, data)
  const before = faults.map(f => f.counts.read)
  const into = Buffer.alloc(256 * KiB)
  await m.read(100 * KiB, 256 * KiB, into)
  t.true(into.equals(data.subarray(100 * KiB, 356 * KiB)))
  t.true(faults.every((f, i) => f.counts.read > before[i]), 'both legs served part of it')
  faults[1].failing = true
  into.fill(0)
  await m.read(0, 256 * KiB, into)
  t.true(into.equals(data.subarray(0, 256 * KiB)))
  t.is(legState(m, 'b'), 'failed')
})

test('small reads whose leg fails under them are served by the other leg, and that leg is marked failed', async t => {
  const { faults, members } = rig([64 * KiB, 64 * KiB])
  const m = await openSynced(t, members)
  const data = pattern(64 * KiB, 5)
  await m.write(0, data)
  faults[0].failing = true
  // Both legs are equally idle, so the first read goes to leg a, which fails under it.
  const reads = await Promise.all(Array.from({ length: 16 }, async (_, i) => {
    const into = Buffer.alloc(4 * KiB)
    await m.read(i * 4 * KiB, 4 * KiB, into)
    return into.equals(data.subarray(i * 4 * KiB, (i + 1) * 4 * KiB))
  }))
  t.deepEqual(reads, reads.map(() => true))
  t.is(legState(m, 'a'), 'failed')
  t.is(legState(m, 'b'), 'in-sync')
  // With no leg left that holds the data, a read fails with a clear error instead of hanging.
  faults[1].failing = true
  await t.throwsAsync(m.read(0, 4 * KiB, Buffer.alloc(4 * KiB)), { message: /no in-sync leg left/ })
})

test('with a leg failed, reads and writes go on without error and the leg\'s missed regions are counted', async t => {
  const { mems, faults, members } = rig([64 * KiB, 64 * KiB])
  const m = await openSynced(t, members)
  const model = Buffer.alloc(64 * KiB)
  faults[1].failing = true
  const writes: Array<[number, Buffer]> = [
    [2 * REGION, pattern(REGION, 1)], // region 2
    [5000, pattern(4000, 2)], // regions 1 and 2
    [10 * REGION + 7, pattern(100, 3)], // part of region 10
  ]
  for (const [at, data] of writes) {
    await t.notThrowsAsync(m.write(at, data))
    data.copy(model, at)
  }
  const into = Buffer.alloc(64 * KiB)
  await m.read(0, 64 * KiB, into)
  t.true(into.equals(model))
  t.deepEqual(m.legStates(), [
    { name: 'a', state: 'in-sync', dirtyBytes: 0 },
    { name: 'b', state: 'failed', dirtyBytes: 3 * REGION },
  ])
  t.is(m.status().state, 'degraded')
  t.true(mems[1].data.equals(Buffer.alloc(64 * KiB)), 'nothing reached the failed leg')
})

test('a returning leg is resynced: only its dirty regions are copied', async t => {
  const { mems, faults, members } = rig([64 * KiB, 64 * KiB])
  const m = await openSynced(t, members)
  await m.write(0, pattern(64 * KiB, 7)) // both legs hold this
  faults[1].failing = true
  await m.write(2 * REGION, pattern(REGION, 1))
  await m.write(5000, pattern(4000, 2))
  await m.write(10 * REGION + 7, pattern(100, 3))
  t.is(m.legStates()[1].dirtyBytes, 3 * REGION)
  const writtenBefore = faults[1].counts.writeBytes
  const copiedBefore = m.resyncedBytes
  faults[1].failing = false
  t.true(await waitFor(() => allInSync(m)), 'the probe brought the leg back and resynced it')
  t.is(faults[1].counts.writeBytes - writtenBefore, 3 * REGION, 'only the dirty regions were written')
  t.is(m.resyncedBytes - copiedBefore, 3 * REGION)
  t.is(m.legStates()[1].dirtyBytes, 0)
  t.is(m.status().state, 'online')
  t.true(mems[0].data.equals(mems[1].data))
})

test('dirty bytes and resync of a last region shorter than a region', async t => {
  const size = 2 * REGION + 1808
  const { mems, faults, members } = rig([size, size])
  const m = await openSynced(t, members)
  faults[1].failing = true
  await m.write(size - 10, Buffer.alloc(10, 1))
  t.is(m.legStates()[1].dirtyBytes, 1808)
  const before = faults[1].counts.writeBytes
  faults[1].failing = false
  t.true(await waitFor(() => allInSync(m)))
  t.is(faults[1].counts.writeBytes - before, 1808)
  t.true(mems[0].data.equals(mems[1].data))
})

test('a stale leg never serves reads of the regions it misses', async t => {
  const { faults, members } = rig([64 * KiB, 64 * KiB])
  const m = await openSynced(t, members, { autoResync: false })
  await m.write(0, pattern(64 * KiB, 1))
  faults[1].failing = true
  const fresh = pattern(REGION, 2)
  await m.write(3 * REGION, fresh)
  faults[1].failing = false
  t.true(await waitFor(() => legState(m, 'b') === 'stale'), 'the probe found the leg back; no resync starts by itself')
  const readsBefore = faults[1].counts.read
  const into = Array.from({ length: 40 }, () => Buffer.alloc(REGION + 200))
  await Promise.all(into.map((b, i) => i % 2 === 0
    ? m.read(3 * REGION, REGION, b)
    : m.read(3 * REGION - 100, REGION + 200, b))) // spans a clean and the dirty region
  t.is(faults[1].counts.read, readsBefore, 'no read went to the stale leg')
  for (const [i, b] of into.entries()) {
    if (i % 2 === 0) t.true(b.subarray(0, REGION).equals(fresh))
    else t.true(b.subarray(100, 100 + REGION).equals(fresh))
  }
  t.is(legState(m, 'b'), 'stale')
  await m.startResync('b')
  t.is(legState(m, 'b'), 'in-sync')
  await Promise.all(Array.from({ length: 40 }, () => m.read(3 * REGION, REGION, Buffer.alloc(REGION))))
  t.true(faults[1].counts.read > readsBefore, 'once in sync the leg serves reads again')
})

test('writes fail only when no in-sync leg took them', async t => {
  const { faults, members } = rig([64 * KiB, 64 * KiB])
  const m = await openSynced(t, members)
  faults[0].failing = true
  faults[1].failing = true
  await t.throwsAsync(m.write(0, Buffer.alloc(10)), { code: 'DST_ERR_NOLEG' })
  await t.throwsAsync(m.read(0, 10, Buffer.alloc(10)), { code: 'DST_ERR_NOLEG' })
  t.is(m.status().state, 'failed')
})

test('the last in-sync leg failing while the other is stale: writes are refused untouched, and the array comes back whole', async t => {
  const { mems, faults, members } = rig([64 * KiB, 64 * KiB])
  const m = await openSynced(t, members, { autoResync: false })
  const model = pattern(64 * KiB, 1)
  await m.write(0, model)
  faults[0].failing = true
  const acked = pattern(REGION, 2)
  await m.write(3 * REGION, acked) // a misses region 3
  acked.copy(model, 3 * REGION)
  faults[0].failing = false
  t.true(await waitFor(() => legState(m, 'a') === 'stale'), 'a is back, not yet resynced')
  faults[1].failing = true
  // b fails under this write, and a does not hold region 3: nothing holds the array any more.
  await t.throwsAsync(m.write(3 * REGION, pattern(REGION, 3)), { code: 'DST_ERR_NOLEG' })
  t.is(legState(m, 'b'), 'failed')
  t.is(m.status().state, 'failed')
  const aWrites = faults[0].counts.write
  await t.throwsAsync(m.write(5 * REGION, pattern(REGION, 4)), { code: 'DST_ERR_NOLEG' })
  t.is(faults[0].counts.write, aWrites, 'a write with no in-sync leg touches no leg')
  t.is(m.legStates()[1].dirtyBytes, 0, 'b still holds every region: it missed no acknowledged write')
  faults[1].failing = false
  t.true(await waitFor(() => legState(m, 'b') === 'stale'), 'b is back')
  await m.startResync('b')
  t.is(legState(m, 'b'), 'in-sync')
  await m.startResync('a')
  t.true(allInSync(m), JSON.stringify(m.legStates()))
  t.true(mems[0].data.equals(model), 'a holds every acknowledged write')
  t.true(mems[1].data.equals(model), 'b holds every acknowledged write')
})

test('a resync that paused when its only source failed starts again by itself once that leg is back', async t => {
  const { mems, faults, members } = rig([64 * KiB, 64 * KiB])
  const m = await openSynced(t, members)
  const model = pattern(64 * KiB, 5)
  await m.write(0, model)
  // A slow source: a is still resyncing when b fails.
  faults[1].delay = 100
  faults[0].failing = true
  for (let r = 0; r < 8; r++) {
    const data = pattern(REGION, 10 + r)
    await m.write(r * 2 * REGION, data)
    data.copy(model, r * 2 * REGION)
  }
  faults[0].failing = false
  t.true(await waitFor(() => legState(m, 'a') === 'resyncing'), 'a is resyncing')
  faults[1].failing = true
  t.true(await waitFor(() => legState(m, 'b') === 'failed' && legState(m, 'a') === 'stale', 5000), `the resync paused: ${JSON.stringify(m.legStates())}`)
  await t.throwsAsync(m.write(REGION, pattern(REGION, 99)), { code: 'DST_ERR_NOLEG' })
  faults[1].failing = false
  faults[1].delay = 0
  t.true(await waitFor(() => allInSync(m), 10000), `both legs in sync again: ${JSON.stringify(m.legStates())}`)
  t.true(mems[0].data.equals(model))
  t.true(mems[1].data.equals(model))
})

test('a write racing a resync of its region is never overwritten by older data (slow source)', async t => {
  const { mems, faults, members } = rig([64 * KiB, 64 * KiB])
  const m = await openSynced(t, members)
  const model = pattern(64 * KiB, 1)
  await m.write(0, model)
  faults[1].failing = true
  const old = pattern(64 * KiB, 2)
  await m.write(0, old) // leg b misses all 16 regions
  old.copy(model)
  faults[0].delay = 15 // the source of the copy is slow
  faults[1].failing = false
  t.true(await waitFor(() => legState(m, 'b') === 'resyncing'))
  // New data into every region while the copy walks through them: some are copied already, one is being copied, the
  // rest are still to come.
  const news = Array.from({ length: 16 }, (_, r) => pattern(1000, 100 + r))
  await Promise.all(news.map((data, r) => m.write(r * REGION + 500, data).then(() => { data.copy(model, r * REGION + 500) })))
  t.true(await waitFor(() => allInSync(m)))
  faults[0].delay = 0
  t.true(mems[0].data.equals(model), 'leg a holds the newest data')
  t.true(mems[1].data.equals(model), 'leg b holds the newest data')
})

// Regression test (fixed): a write used to pass the region gate while its region was unlocked but register itself as
// in flight one microtask later, so a resync locking the region in between copied concurrently with it and could land
// older data on the resyncing leg after the write. The gate (algorithms/redundant/region-gate.ts) now registers a
// write in the same synchronous step in which it finds the region unlocked.
test('a write entering just as the resync locks its region is not overwritten by older data', async t => {
  const bad: string[] = []
  // The window is one microtask wide; step the write's start across the resync's step from region 0 to region 1.
  for (let k = 0; k < 60; k++) {
    const memA = new MemoryDevice({ size: 64 * KiB })
    const memB = new MemoryDevice({ size: 64 * KiB })
    memA.data.fill(1) // leg a is the truth of the new array; leg b must get all of it
    const hookA = new HookDevice(memA)
    const hookB = new HookDevice(memB)
    const m = await MirrorDevice.open({
      name: 'race', legs: [{ name: 'a', device: hookA }, { name: 'b', device: hookB }], region: REGION,
      store: new MemoryIntentStore(), clearDelay: 60_000, probeInterval: 60_000, autoResync: false,
    })
    hookA.writeDelay = 20
    let writer: Promise<void> | null = null
    hookB.onWrite = offset => {
      if (offset !== 0 || writer !== null) return
      writer = (async () => {
        for (let i = 0; i < k; i++) await Promise.resolve()
        await m.write(REGION, Buffer.alloc(REGION, 2))
      })()
    }
    await m.startResync('b')
    await writer
    if (!memA.data.equals(memB.data)) {
      bad.push(`k=${k}: a[${REGION}]=${memA.data[REGION]} b[${REGION}]=${memB.data[REGION]}, legs ${m.legStates().map(l => l.state).join('/')}`)
    }
    await m.close()
  }
  t.deepEqual(bad, [], 'legs diverged')
})

// Regression test (fixed): a leg that failed while its resync waited on a copy, and came back before the copy
// returned, used to be left stale for good: the old resync ended on the state change and nothing started another.
// Health probes now leave a leg whose resync is still running for a later probe.
test('a leg that fails and returns while its resync waits on a copy is still resynced', async t => {
  const { mems, faults, members } = rig([64 * KiB, 64 * KiB])
  const m = await openSynced(t, members)
  faults[1].failing = true
  await m.write(0, pattern(64 * KiB, 1)) // leg b misses everything
  faults[0].delay = 250 // each copy waits 250 ms on the source
  faults[1].failing = false
  t.true(await waitFor(() => legState(m, 'b') === 'resyncing'))
  await sleep(10)
  // The copy of region 0 is waiting on leg a. Leg b fails under a write elsewhere, and is back at once.
  faults[1].failing = true
  const write = m.write(15 * REGION, Buffer.alloc(10, 9))
  t.true(await waitFor(() => legState(m, 'b') === 'failed', 50))
  faults[1].failing = false
  await write // by now the old resync has seen the leg 'stale' and returned
  faults[0].delay = 0
  const synced = await waitFor(() => allInSync(m), 3000)
  t.true(synced, `leg states: ${JSON.stringify(m.legStates())}`)
  t.true(mems[0].data.equals(mems[1].data))
})

// Regression test (fixed): resyncs of two legs at once used to share one lock slot, so one resync unlocking dropped
// the lock the other held, and a waiting write ran concurrently with a copy that then landed older data after it.
// The region gate (algorithms/redundant/region-gate.ts) now locks each region on its own, for every resync at once.
test('with three legs, a write during the first sync reaches every leg', async t => {
  const { mems, faults, members } = rig([64 * KiB, 64 * KiB, 64 * KiB])
  const m = await openMirror(t, members) // legs b and c are compared against leg a, both at once
  faults[0].delay = 2
  const data = pattern(2 * REGION, 6)
  await m.write(0, data) // regions 0 and 1
  t.true(await waitFor(() => allInSync(m)))
  for (const [i, mem] of mems.entries()) t.true(mem.data.subarray(0, 2 * REGION).equals(data), `leg ${legName(i)} holds the write`)
  const into = Buffer.alloc(2 * REGION)
  for (let i = 0; i < 6; i++) {
    await m.read(0, 2 * REGION, into)
    t.true(into.equals(data), 'every read returns the write')
  }
})

// Same cause as above, second symptom: two resyncs that wait for the same busy region both do
// `idleWaiters.set(r, resolve)`; the second replaces the first, which then waits forever. Its leg stays 'resyncing'
// for good, and close() never returns because _close() awaits every running resync.
test('two resyncs waiting on the same busy region both finish, and close() returns', async t => {
  const { mems, faults, members } = rig([64 * KiB, 64 * KiB, 64 * KiB])
  const m = await openSynced(t, members, { autoResync: false })
  faults[1].failing = true
  faults[2].failing = true
  await m.write(0, pattern(64 * KiB, 1)) // legs b and c miss everything
  faults[1].failing = false
  faults[2].failing = false
  t.true(await waitFor(() => legState(m, 'b') === 'stale' && legState(m, 'c') === 'stale'))
  faults[0].delay = 200
  const busy = m.write(10, Buffer.alloc(10, 2)) // region 0 is busy while both resyncs try to lock it
  await sleep(2)
  const resyncs = [m.startResync('b'), m.startResync('c')]
  await busy
  faults[0].delay = 0
  const finished = await Promise.race([Promise.all(resyncs).then(() => true), sleep(1000).then(() => false)])
  t.true(finished, `leg states: ${JSON.stringify(m.legStates())}`)
  t.true(mems[1].data.equals(mems[0].data) && mems[2].data.equals(mems[0].data))
  const closed = await Promise.race([m.close().then(() => true), sleep(1000).then(() => false)])
  t.true(closed, 'close() returned')
})

// ---- crash --------------------------------------------------------------------------------------------------------

test('after a crash with writes in flight, the reopened mirror resyncs only marked regions and the legs agree', async t => {
  const memA = new MemoryDevice({ size: 64 * KiB })
  const memB = new MemoryDevice({ size: 64 * KiB })
  const crashA = new Crashable(memA)
  const crashB = new Crashable(memB)
  const slowB = new FaultDevice(crashB)
  const store = new CrashableStore()
  const m1 = await openSynced(t, [{ name: 'a', device: new FaultDevice(crashA) }, { name: 'b', device: slowB }], { store })
  // Acknowledged writes to the lower half.
  const model = Buffer.alloc(64 * KiB)
  for (let r = 0; r < 8; r++) {
    const data = pattern(3000, r)
    await m1.write(r * REGION + 500, data)
    data.copy(model, r * REGION + 500)
  }
  t.true(await waitFor(() => store.inner.saved !== null && regionsWithBits(store.inner.saved, REGION) === 0), 'quiet: their intent bits are cleared')
  // Writes to the upper half are in flight at the crash: leg a has them, leg b (slow) never will.
  slowB.delay = 200
  const inflight = Array.from({ length: 6 }, (_, i) => m1.write((9 + i) * REGION, pattern(REGION + 100, 50 + i)).catch(() => {}))
  await sleep(5)
  store.crashed = true
  crashA.crashed = true
  crashB.crashed = true
  await Promise.all(inflight) // the old mirror's requests drain (those still going to the disks are dropped)
  t.false(memA.data.equals(memB.data), 'the crash left the legs different')
  const saved = store.inner.saved
  if (saved === null) return t.fail('nothing was saved')
  const marked = regionsWithBits(saved, REGION)
  t.true(marked >= 6 && marked <= 8, `marked regions: ${marked}`)

  const legs = [{ name: 'a', device: new FaultDevice(memA) }, { name: 'b', device: new FaultDevice(memB) }]
  const m2 = await openMirror(t, legs, { store: store.inner })
  t.is(m2.identity, m1.identity)
  t.true(await waitFor(() => allInSync(m2)))
  t.true(memA.data.equals(memB.data), 'the legs are identical')
  t.true(memA.data.subarray(0, 8 * REGION).equals(model.subarray(0, 8 * REGION)), 'acknowledged writes survived')
  t.true(m2.resyncedBytes > 0)
  t.true(m2.resyncedBytes <= marked * REGION, `copied ${m2.resyncedBytes} bytes for ${marked} marked regions`)
  // Checksum resync: each marked region is compared by digest first, and only chunks that differ are copied.
  t.true(m2.comparedBytes > 0 && m2.comparedBytes <= marked * REGION, `compared ${m2.comparedBytes} bytes for ${marked} marked regions`)
  await closeSoon(m1)
})

// Regression test (fixed): a write that a leg failed under used to be acknowledged before the save recording the
// leg's failure was on disk, so a crash in that window let the restart copy the failed leg's old data over the leg
// that took the write. The intent map's failure barrier (algorithms/redundant/intent-map.ts) now holds such a write's
// acknowledgement until that save is on disk.
test('a write acknowledged while a leg failed under it survives a crash', async t => {
  const memA = new MemoryDevice({ size: 64 * KiB })
  const memB = new MemoryDevice({ size: 64 * KiB })
  const crash = [new Crashable(memA), new Crashable(memB)]
  const faults = crash.map(c => new FaultDevice(c))
  const store = new CrashableStore(20) // a save takes 20 ms to be durable, like an fdatasync
  const m1 = await openMirror(t, [{ name: 'a', device: faults[0] }, { name: 'b', device: faults[1] }], { store, clearDelay: 60_000, probeInterval: 60_000 })
  t.true(await waitFor(() => allInSync(m1)))
  await m1.write(0, Buffer.alloc(REGION, 1))
  await sleep(30)
  t.true(await waitFor(() => store.pending === 0)) // every save so far is durable; region 0's bits stay set (clearDelay)
  t.is(store.inner.saved === null ? -1 : regionsWithBits(store.inner.saved, REGION), 1)
  t.true(store.inner.saved?.superblock.legs.every(l => l.inSync))
  faults[0].failing = true
  await m1.write(0, Buffer.alloc(REGION, 2)) // acknowledged: leg b took it
  t.is(memB.data[0], 2)
  store.crashed = true
  for (const c of crash) c.crashed = true

  const m2 = await openMirror(t, [{ name: 'a', device: new FaultDevice(memA) }, { name: 'b', device: new FaultDevice(memB) }], { store: store.inner })
  t.true(await waitFor(() => allInSync(m2)))
  const into = Buffer.alloc(REGION)
  await m2.read(0, REGION, into)
  t.true(into.equals(Buffer.alloc(REGION, 2)), `read back ${into[0]}: the acknowledged write was lost`)
  t.true(memA.data.equals(memB.data))
  await closeSoon(m1)
})

test('a crash after the last in-sync leg failed: regions marked on every leg are taken from that leg, not from the stale one', async t => {
  const memA = new MemoryDevice({ size: 64 * KiB })
  const memB = new MemoryDevice({ size: 64 * KiB })
  const faults = [new FaultDevice(memA), new FaultDevice(memB)]
  const store = new CrashableStore()
  // Bits stay set (clearDelay), and a returning leg is not resynced (autoResync: false), so region 0 ends up marked on
  // both legs with only b holding it.
  const m1 = await openMirror(t, [{ name: 'a', device: faults[0] }, { name: 'b', device: faults[1] }], { store, clearDelay: 60_000, autoResync: false })
  for (const l of m1.legNames) await m1.startResync(l)
  t.true(await waitFor(() => allInSync(m1)))
  await m1.write(0, Buffer.alloc(REGION, 1))
  faults[0].failing = true
  await m1.write(0, Buffer.alloc(REGION, 2)) // acknowledged: only b took it
  faults[0].failing = false
  t.true(await waitFor(() => legState(m1, 'a') === 'stale'), 'a is back, not resynced')
  faults[1].failing = true
  await t.throwsAsync(m1.write(REGION, Buffer.alloc(REGION, 3)), { code: 'DST_ERR_NOLEG' }) // b fails under it
  t.is(m1.status().state, 'failed')
  t.true(await waitFor(() => store.pending === 0))
  store.crashed = true
  t.deepEqual(store.inner.saved?.superblock.legs.map(l => l.inSync), [false, true], 'b, the last in-sync leg, is still the one to trust')

  const m2 = await openMirror(t, [{ name: 'a', device: new FaultDevice(memA) }, { name: 'b', device: new FaultDevice(memB) }], { store: store.inner })
  t.true(await waitFor(() => allInSync(m2)), JSON.stringify(m2.legStates()))
  const into = Buffer.alloc(REGION)
  await m2.read(0, REGION, into)
  t.true(into.equals(Buffer.alloc(REGION, 2)), `read back ${into[0]}: the acknowledged write was lost`)
  t.true(memA.data.equals(memB.data))
  await closeSoon(m1)
})

// ---- managing legs ------------------------------------------------------------------------------------------------

test('addLeg: a new leg is compared and filled in the background while I/O goes on', async t => {
  const { mems, members } = rig([64 * KiB, 64 * KiB])
  const m = await openSynced(t, members)
  const model = pattern(64 * KiB, 8)
  await m.write(0, model)
  const memC = new MemoryDevice({ size: 128 * KiB })
  memC.data.set(model.subarray(0, 8 * REGION)) // half of it already matches
  const c = new FaultDevice(memC)
  await m.addLeg({ name: 'c', device: c })
  t.deepEqual(m.legNames, ['a', 'b', 'c'])
  const extra = pattern(REGION, 9)
  await m.write(12 * REGION, extra)
  extra.copy(model, 12 * REGION)
  t.true(await waitFor(() => allInSync(m)))
  t.true(memC.data.subarray(0, 64 * KiB).equals(model))
  t.true(mems[0].data.equals(model) && mems[1].data.equals(model))
  t.true(c.counts.writeBytes <= 8 * REGION + REGION, `matching regions were not copied (${c.counts.writeBytes} bytes written)`)
  await t.throwsAsync(m.addLeg({ name: 'c', device: new MemoryDevice({ size: 64 * KiB }) }), { code: 'DST_ERR_EXISTS' })
  await t.throwsAsync(m.addLeg({ name: 'd', device: new MemoryDevice({ size: 60 * KiB }) }), { code: 'DST_ERR_SIZE' })
  await t.throwsAsync(m.addLeg({ name: 'e', device: new MemoryDevice({ size: 64 * KiB, readOnly: true }) }), { code: 'DST_ERR_EROFS' })
})

test('removeLeg: the leg gets no more I/O and the store forgets it', async t => {
  const { faults, members } = rig([64 * KiB, 64 * KiB, 64 * KiB])
  const store = new MemoryIntentStore()
  const m = await openSynced(t, members, { store })
  const removed = await m.removeLeg('b')
  t.is(removed, faults[1])
  t.deepEqual(m.legNames, ['a', 'c'])
  t.deepEqual(store.saved?.superblock.legs.map(l => l.name), ['a', 'c'])
  t.is(store.saved?.bits.length, 2)
  const before = { ...faults[1].counts }
  await m.write(0, pattern(10000, 1))
  await Promise.all(Array.from({ length: 20 }, () => m.read(0, 10000, Buffer.alloc(10000))))
  t.deepEqual(faults[1].counts, before)
  await t.throwsAsync(m.removeLeg('zz'), { code: 'DST_ERR_NOLEG' })
})

test('removing the only in-sync leg is refused; a failed leg can be removed', async t => {
  const { faults, members } = rig([64 * KiB, 64 * KiB])
  const m = await openSynced(t, members)
  faults[1].failing = true
  await m.write(0, Buffer.alloc(100, 1))
  t.is(legState(m, 'b'), 'failed')
  const err = await t.throwsAsync(m.removeLeg('a'), { code: 'DST_ERR_LASTLEG' })
  t.regex(err?.message ?? '', /'a'/)
  t.deepEqual(m.legNames, ['a', 'b'])
  await m.removeLeg('b')
  t.deepEqual(m.legNames, ['a'])
  await t.notThrowsAsync(m.write(0, Buffer.alloc(100, 2)))
})

test('splitLeg leaves a point-in-time copy: writes in flight before it are on it, writes after it are not', async t => {
  const { mems, faults, members } = rig([64 * KiB, 64 * KiB, 64 * KiB])
  const m = await openSynced(t, members)
  const model = pattern(64 * KiB, 3)
  await m.write(0, model)
  for (const f of faults) f.delay = 5
  const inflight = Array.from({ length: 8 }, (_, i) => {
    const data = pattern(2000, 20 + i)
    data.copy(model, i * 8000)
    return m.write(i * 8000, data)
  })
  const split = await m.splitLeg('b')
  await Promise.all(inflight)
  t.is(split, faults[1])
  t.deepEqual(m.legNames, ['a', 'c'])
  const pointInTime = Buffer.from(model)
  t.true(mems[1].data.equals(pointInTime), 'the split leg holds every write made before the split')
  const writesBefore = faults[1].counts.write
  await m.write(100, pattern(5000, 77))
  t.is(faults[1].counts.write, writesBefore, 'no write after the split reached it')
  t.true(mems[1].data.equals(pointInTime))
  t.false(mems[0].data.equals(pointInTime))
  t.true(mems[0].data.equals(mems[2].data))
})

test('splitLeg refuses a leg that is not in sync, or the last in-sync leg', async t => {
  const { faults, members } = rig([64 * KiB, 64 * KiB])
  const m = await openSynced(t, members)
  faults[1].failing = true
  await m.write(0, Buffer.alloc(10))
  await t.throwsAsync(m.splitLeg('b'), { code: 'DST_ERR_NOTSYNC' })
  await t.throwsAsync(m.splitLeg('a'), { code: 'DST_ERR_LASTLEG' })
  await t.throwsAsync(m.splitLeg('x'), { code: 'DST_ERR_NOLEG' })
  t.deepEqual(m.legNames, ['a', 'b'])
})

// ---- property ------------------------------------------------------------------------------------------------------

type Cmd =
  | { kind: 'write', at: number, length: number, seed: number }
  | { kind: 'read', at: number, length: number }
  | { kind: 'fail', leg: number }
  | { kind: 'return', leg: number }
  | { kind: 'slow', leg: number, ms: number }
  | { kind: 'wait', ms: number }

const fraction = fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true })
const cmdArb: fc.Arbitrary<Cmd> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('write' as const), at: fraction, length: fc.integer({ min: 1, max: 12 * KiB }), seed: fc.nat(1000) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('read' as const), at: fraction, length: fc.integer({ min: 1, max: 12 * KiB }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('fail' as const), leg: fc.nat(2) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('return' as const), leg: fc.nat(2) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('slow' as const), leg: fc.nat(2), ms: fc.integer({ min: 0, max: 3 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('wait' as const), ms: fc.integer({ min: 0, max: 20 }) }) },
)

/** The commands both mirror properties run alike: a leg back, a leg slowed, a pause. */
async function faultCmd (c: Cmd, faults: FaultDevice[]): Promise<void> {
  switch (c.kind) {
    case 'return': faults[c.leg % faults.length].failing = false; break
    case 'slow': faults[c.leg % faults.length].delay = c.ms; break
    case 'wait': await sleep(c.ms); break
  }
}

/** Clears every fault and waits (at most 5 s) for every leg to be in sync. */
async function healAll (m: MirrorDevice, faults: FaultDevice[]): Promise<void> {
  for (const f of faults) { f.failing = false; f.delay = 0 }
  if (!await waitFor(() => allInSync(m), 5000)) throw new Error(`legs not in sync after 5 s: ${JSON.stringify(m.legStates())}`)
}

// Regression: several resyncs at once used to share one lock slot, and a three-leg run found that within a few dozen
// runs. With the per-region lock the property runs unrestricted; setting this to true keeps at most one leg away.
const ONE_LEG_AWAY = false

test('random writes, reads, leg failures and returns agree with a Buffer model (fast-check)', async t => {
  await fc.assert(fc.asyncProperty(
    fc.array(fc.constantFrom(64 * KiB, 64 * KiB + 3000, 60000), { minLength: 2, maxLength: 3 }),
    fc.array(cmdArb, { minLength: 5, maxLength: 40, size: 'max' }),
    async (sizes, cmds) => {
      const { mems, faults, members } = rig(sizes)
      const m = await MirrorDevice.open({ name: 'p', legs: members, region: REGION, store: new MemoryIntentStore(), clearDelay: 10, probeInterval: 10, autoResync: true })
      try {
        const size = Math.min(...sizes)
        if (m.size !== size) throw new Error(`size ${m.size}, expected ${size}`)
        const model = Buffer.alloc(size)
        if (ONE_LEG_AWAY && sizes.length > 2 && !await waitFor(() => allInSync(m))) throw new Error('the first sync did not finish')
        for (const [step, c] of cmds.entries()) {
          switch (c.kind) {
            case 'write': {
              const at = Math.floor(c.at * size)
              const data = pattern(Math.min(c.length, size - at), c.seed)
              await m.write(at, data)
              data.copy(model, at)
              break
            }
            case 'read': {
              const at = Math.floor(c.at * size)
              const length = Math.min(c.length, size - at)
              const into = Buffer.alloc(length)
              await m.read(at, length, into)
              if (!into.equals(model.subarray(at, at + length))) {
                throw new Error(`step ${step}: read ${at}+${length} differs from the model; legs ${JSON.stringify(m.legStates())}`)
              }
              break
            }
            case 'fail': {
              // Never fail the last working in-sync leg: the mirror promises service only while one remains. With
              // three legs, also keep at most one leg away (see ONE_LEG_AWAY).
              const i = c.leg % sizes.length
              const states = m.legStates()
              const others = states.map((s, j) => ({ j, ok: !faults[j].failing && s.state === 'in-sync' })).filter(o => o.j !== i)
              if (ONE_LEG_AWAY ? others.every(o => o.ok) : others.some(o => o.ok)) faults[i].failing = true
              break
            }
            default: await faultCmd(c, faults)
          }
        }
        await healAll(m, faults)
        for (const [i, mem] of mems.entries()) {
          if (!mem.data.subarray(0, size).equals(model)) throw new Error(`leg ${legName(i)} differs from the model`)
        }
        const all = Buffer.alloc(size)
        await m.read(0, size, all)
        if (!all.equals(model)) throw new Error('a full read differs from the model')
      } finally {
        await closeSoon(m)
      }
    },
  ), { numRuns: 50 })
  t.pass('fast-check found no counterexample') // fc.assert throws on failure
})

test('any leg may fail, the last in-sync one too, and the node may crash: refused writes and reads are NOLEG, acknowledged writes are never lost, and the array comes back whole (fast-check)', async t => {
  const crashArb = fc.record({ kind: fc.constant('crash' as const) })
  await fc.assert(fc.asyncProperty(
    fc.array(fc.constantFrom(64 * KiB, 60000), { minLength: 2, maxLength: 3 }),
    fc.array(fc.oneof({ weight: 13, arbitrary: cmdArb }, { weight: 1, arbitrary: crashArb }), { minLength: 5, maxLength: 40, size: 'max' }),
    async (sizes, cmds) => {
      const mems = sizes.map(size => new MemoryDevice({ size }))
      let store = new CrashableStore()
      let crashables: Crashable[] = []
      let faults: FaultDevice[] = []
      // Opens the array on the same memory after a crash, each leg keeping its fault.
      const open = async (): Promise<MirrorDevice> => {
        crashables = mems.map(mem => new Crashable(mem))
        faults = crashables.map((c, i) => Object.assign(new FaultDevice(c), { failing: faults[i]?.failing ?? false }))
        return await MirrorDevice.open({ name: 'p', legs: faults.map((device, i) => ({ name: legName(i), device })), region: REGION, store, clearDelay: 10, probeInterval: 10, autoResync: true })
      }
      let m = await open()
      try {
        const size = m.size
        const model = Buffer.alloc(size)
        // 1 where the model knows the bytes: a refused write may have reached some legs, so its range is unknown
        // until an acknowledged write covers it again.
        const known = Buffer.alloc(size, 1)
        const noLeg = (err: unknown): boolean => (err as DstError).code === 'DST_ERR_NOLEG'
        for (const [step, c] of cmds.entries()) {
          switch (c.kind) {
            case 'crash': {
              // Nothing more reaches the legs or the store from the old array (a resync may have been under way).
              store.crashed = true
              for (const x of crashables) x.crashed = true
              void closeSoon(m)
              store = new CrashableStore(0, store.inner)
              m = await open()
              break
            }
            case 'write': {
              const at = Math.floor(c.at * size)
              const data = pattern(Math.min(c.length, size - at), c.seed)
              try {
                await m.write(at, data)
                data.copy(model, at)
                known.fill(1, at, at + data.length)
              } catch (err) {
                if (!noLeg(err)) throw err
                known.fill(0, at, at + data.length)
              }
              break
            }
            case 'read': {
              const at = Math.floor(c.at * size)
              const length = Math.min(c.length, size - at)
              const into = Buffer.alloc(length)
              try {
                await m.read(at, length, into)
              } catch (err) {
                if (!noLeg(err)) throw err
                break
              }
              for (let i = 0; i < length; i++) {
                if (known[at + i] === 1 && into[i] !== model[at + i]) throw new Error(`step ${step}: read ${at}+${length} differs from the model at ${at + i}; legs ${JSON.stringify(m.legStates())}`)
              }
              break
            }
            case 'fail': faults[c.leg % sizes.length].failing = true; break
            default: await faultCmd(c, faults)
          }
        }
        await healAll(m, faults)
        for (const [i, mem] of mems.entries()) {
          if (!mem.data.subarray(0, size).equals(mems[0].data.subarray(0, size))) throw new Error(`leg ${legName(i)} differs from leg a`)
        }
        const all = Buffer.alloc(size)
        await m.read(0, size, all)
        for (let i = 0; i < size; i++) if (known[i] === 1 && all[i] !== model[i]) throw new Error(`byte ${i} differs from the model after the resync`)
      } finally {
        await closeSoon(m)
      }
    },
  ), { numRuns: 100 })
  t.pass('fast-check found no counterexample') // fc.assert throws on failure
})

test('resyncRate bounds how fast a resync copies', async t => {
  const { faults, members } = rig([64 * KiB, 64 * KiB])
  const clock = new ManualClock()
  const m = await openSynced(t, members, { resyncRate: 64 * KiB, clock })
  faults[1].failing = true
  await m.write(0, pattern(32 * KiB, 5)) // 8 regions dirty for leg b
  t.is(legState(m, 'b'), 'failed')
  const began = clock.now()
  faults[1].failing = false
  // Time moves only here, 10 ms at a time (probes, pacing), with a real moment between steps for the hash workers.
  for (let step = 0; step < 500 && !allInSync(m); step++) {
    await clock.advance(10)
    await sleep(1)
  }
  t.true(allInSync(m), 'resynced')
  const took = clock.now() - began
  // 32 KiB at 64 KiB/s is half a second; the probe adds a little.
  t.true(took >= 400, `a rate-limited resync of 32 KiB at 64 KiB/s took ${took} ms`)
})

test('a full sync interrupted by a restart resumes where it stopped', async t => {
  const size = 64 * KiB
  const a = new FaultDevice(new MemoryDevice({ size }))
  await a.write(0, pattern(size, 9))
  const b = new FaultDevice(new MemoryDevice({ size }))
  const store = new MemoryIntentStore()
  // A new array: leg b gets a full sync, slowed so that it is stopped part-way by a clean close (a restart).
  const clock = new ManualClock()
  const first = await MirrorDevice.open({ name: 'm', legs: [{ name: 'a', device: a }, { name: 'b', device: b }], region: REGION, store, clearDelay: 10, probeInterval: 10, resyncRate: 32 * KiB, clock })
  // 700 ms of the array's clock, 10 ms at a time, with a real moment between steps for the copies.
  for (let step = 0; step < 70; step++) {
    await clock.advance(10)
    await sleep(1)
  }
  // The resync stops at its next region; its pacing sleep is on the array's clock, so time goes on while it closes.
  let closed = false
  const closing = first.close().then(() => { closed = true })
  for (let step = 0; step < 1000 && !closed; step++) {
    await clock.advance(10)
    await sleep(1)
  }
  await closing
  const remaining = regionsWithBits(store.saved!, REGION)
  t.true(remaining > 0 && remaining < size / REGION, `the sync stopped part-way: ${remaining} of ${size / REGION} regions left`)
  const writesBefore = b.counts.writeBytes
  const second = await MirrorDevice.open({ name: 'm', legs: [{ name: 'a', device: a }, { name: 'b', device: b }], region: REGION, store, clearDelay: 10, probeInterval: 10 })
  t.teardown(() => closeSoon(second))
  t.true(await waitFor(() => allInSync(second)), 'the resumed sync finished')
  t.true(b.counts.writeBytes - writesBefore <= remaining * REGION, `the second run wrote ${b.counts.writeBytes - writesBefore} bytes for ${remaining} regions left`)
  const got = Buffer.alloc(size)
  await (b.inner as MemoryDevice).read(0, size, got)
  t.true(got.equals(pattern(size, 9)), 'leg b holds the array')
})

// Issue 12: a leg that came back with another disk used to be overwritten by a full sync; now it is foreign.
test('a leg that comes back with a different disk (new identity) is foreign: never written, until replaceLeg takes it with a full sync', async t => {
  const size = 64 * KiB
  const { faults, members } = rig([size, size])
  const m = await openSynced(t, members)
  await m.write(0, pattern(size, 3))
  faults[1].failing = true
  await m.write(8 * KiB, pattern(4 * KiB, 4)) // one region dirty while b is away
  t.is(legState(m, 'b'), 'failed')
  // b's place is taken by another disk, holding its own data, with its own identity.
  const theirs = pattern(size, 99)
  await (faults[1].inner as MemoryDevice).write(0, theirs)
  faults[1].identity = '11111111-2222-4333-8444-555555555555'
  const before = faults[1].counts.writeBytes
  faults[1].failing = false
  t.true(await waitFor(() => legState(m, 'b') === 'foreign'), 'leg b is foreign')
  t.is(m.status().state, 'degraded')
  await m.write(0, pattern(4 * KiB, 5))
  await sleep(50)
  t.is(legState(m, 'b'), 'foreign', 'it stays foreign')
  t.is(faults[1].counts.writeBytes, before, 'nothing was written to the other disk')
  t.true((faults[1].inner as MemoryDevice).data.equals(theirs))
  t.regex(String((m.status().members as Array<{ lastError?: string }>)[1].lastError), /another disk answers/)
  await t.throwsAsync(m.replaceLeg('a'), { code: 'DST_ERR_NOTFOREIGN' })
  t.regex(await m.replaceLeg('b'), /overwritten by a full sync/)
  t.true(await waitFor(() => allInSync(m)), 'resynced')
  const want = pattern(size, 3)
  pattern(4 * KiB, 4).copy(want, 8 * KiB)
  pattern(4 * KiB, 5).copy(want, 0)
  t.true((faults[1].inner as MemoryDevice).data.equals(want), 'the new disk holds the array')
})

// ---- issue 12: the open decision ------------------------------------------------------------------------------------

test('a new array whose second leg holds data is refused, naming the leg, syncFrom and assumeClean; nothing is written', async t => {
  const { mems, faults, members } = rig([64 * KiB, 64 * KiB])
  mems[1].data.set(pattern(64 * KiB, 60))
  const store = new MemoryIntentStore()
  const err = await t.throwsAsync(MirrorDevice.open({ name: 'm', legs: members, region: REGION, store }), { code: 'DST_ERR_SYNCSOURCE' })
  t.regex(err?.message ?? '', /'b' \(data at byte 0\) holds data/)
  t.regex(err?.message ?? '', /syncFrom/)
  t.regex(err?.message ?? '', /assumeClean/)
  t.is(faults[0].counts.writeBytes + faults[1].counts.writeBytes, 0)
  t.true(mems[1].data.equals(pattern(64 * KiB, 60)))
  t.is(store.saved, null, 'no superblock was written')
})

test('a new array with syncFrom overwrites the other legs from the named one', async t => {
  const { mems, faults, members } = rig([64 * KiB, 64 * KiB])
  mems[0].data.set(pattern(64 * KiB, 61))
  mems[1].data.set(pattern(64 * KiB, 62))
  const m = await openSynced(t, members, { syncFrom: 'b' })
  t.true(mems[0].data.equals(pattern(64 * KiB, 62)), 'a holds b\'s data')
  t.is(faults[1].counts.writeBytes, 0, 'the source is not written')
  t.is(m.status().state, 'online')
})

test('a new array with assumeClean copies and compares nothing; an array of blank legs needs neither', async t => {
  const { mems, faults, members } = rig([64 * KiB, 64 * KiB])
  mems[0].data.set(pattern(64 * KiB, 63))
  mems[1].data.set(pattern(64 * KiB, 63))
  const m = await openMirror(t, members, { assumeClean: true })
  t.true(allInSync(m))
  await sleep(30)
  t.is(m.resyncedBytes + m.comparedBytes, 0)
  t.is(faults[0].counts.writeBytes + faults[1].counts.writeBytes, 0)
  const blank = await openMirror(t, rig([64 * KiB, 64 * KiB]).members)
  t.true(allInSync(blank), 'blank legs are in sync at once')
  t.is(blank.comparedBytes, 0)
  await t.throwsAsync(MirrorDevice.open({ name: 'x', legs: rig([4096, 4096]).members, region: REGION, store: new MemoryIntentStore(), syncFrom: 'zz' }), { code: 'DST_ERR_CONFIG' })
})

test('a leg new to an existing array is overwritten only when blank; one that holds data is foreign until replaceLeg', async t => {
  const size = 64 * KiB
  const { mems, members } = rig([size, size])
  const store = new MemoryIntentStore()
  mems[0].data.set(pattern(size, 64))
  const m1 = await openSynced(t, members, { store })
  await m1.close()
  const full = new FaultDevice(new MemoryDevice({ size }))
  ;(full.inner as MemoryDevice).data.set(pattern(size, 65))
  const m2 = await openMirror(t, [members[0], { name: 'b', device: full }], { store })
  t.is(legState(m2, 'b'), 'foreign')
  t.is(m2.status().state, 'degraded')
  await m2.write(0, pattern(4096, 66))
  await sleep(30)
  t.is(full.counts.writeBytes, 0, 'the leg holding data was not written')
  await m2.replaceLeg('b')
  t.true(await waitFor(() => allInSync(m2)))
  t.true((full.inner as MemoryDevice).data.equals(mems[0].data))
})

test('a leg unreachable at open: the array starts degraded, serves I/O, and resyncs only what it missed once the leg answers', async t => {
  const size = 64 * KiB
  const { mems, faults, members } = rig([size, size])
  const store = new MemoryIntentStore()
  const m1 = await openSynced(t, members, { store })
  await m1.write(0, pattern(size, 67))
  await m1.close()
  faults[1].state = 'connecting'
  const m2 = await openMirror(t, members, { store })
  t.is(legState(m2, 'b'), 'failed')
  t.is(m2.status().state, 'degraded')
  await m2.write(REGION, pattern(100, 68))
  const before = faults[1].counts.writeBytes
  faults[1].state = 'online'
  t.true(await waitFor(() => allInSync(m2)))
  t.is(faults[1].counts.writeBytes - before, REGION, 'only the region of the missed write was copied')
  t.true(mems[0].data.equals(mems[1].data))
})

test('no in-sync leg reachable at open: the array starts failed, refuses I/O, and comes back by itself', async t => {
  const size = 64 * KiB
  const { faults, members } = rig([size, size])
  const store = new MemoryIntentStore()
  const m1 = await openSynced(t, members, { store })
  await m1.write(0, pattern(size, 69))
  await m1.close()
  faults[0].state = 'connecting'
  faults[1].state = 'connecting'
  const m2 = await openMirror(t, members, { store })
  t.is(m2.status().state, 'failed')
  await t.throwsAsync(m2.read(0, 512, Buffer.alloc(512)), { code: 'DST_ERR_NOLEG' })
  t.true(store.saved!.superblock.legs.every(l => l.inSync), 'the superblock still calls both legs in sync')
  faults[1].state = 'online'
  t.true(await waitFor(() => legState(m2, 'b') === 'in-sync'), 'b is back in sync at once')
  const got = Buffer.alloc(size)
  await m2.read(0, size, got)
  t.true(got.equals(pattern(size, 69)))
})

test('a new array whose other leg cannot be reached is refused without syncFrom; with it, that leg is filled when it answers', async t => {
  const { mems, faults, members } = rig([64 * KiB, 64 * KiB])
  mems[0].data.set(pattern(64 * KiB, 70))
  faults[1].state = 'connecting'
  await t.throwsAsync(MirrorDevice.open({ name: 'm', legs: members, region: REGION, store: new MemoryIntentStore() }), { code: 'DST_ERR_SYNCSOURCE', message: /cannot be reached/ })
  await t.throwsAsync(MirrorDevice.open({ name: 'm', legs: members, region: REGION, store: new MemoryIntentStore(), syncFrom: 'b' }), { code: 'DST_ERR_SYNCSOURCE', message: /the sync source/ })
  const m = await openMirror(t, members, { syncFrom: 'a' })
  t.is(legState(m, 'b'), 'failed')
  faults[1].state = 'online'
  t.true(await waitFor(() => allInSync(m)))
  t.true(mems[1].data.equals(mems[0].data))
})

// ---- integrity: hash, checksum resync, online verify ----------------------------------------------------------------

const MiB = 1024 * KiB
/** A region of four 64 KiB compare chunks, so a checksum resync or a verify can tell chunks of one region apart. */
const BIG_REGION = 256 * KiB
const CHUNK = 64 * KiB

// Legs hash by reading, on the process's hasher; big regions put that on worker threads. Let them go at the end.
test.after.always(async () => { await closeDefaultHasher() })


function bitSet (state: IntentState, leg: number, r: number): boolean {
  return (state.bits[leg][r >> 3] & (1 << (r & 7))) !== 0
}

/** Mismatched regions in region order (verify workers finish regions in any order). */
function mismatched (report: VerifyReport): VerifyReport['mismatchedRegions'] {
  return [...report.mismatchedRegions].sort((x, y) => x.region - y.region)
}

/** A leg whose hash can be made to fail the way busy hash workers do (EAGAIN), while its data is fine. */
class BusyHashDevice extends Device {
  readonly type = 'busy-hash'
  busy = false
  /** Hashes still to refuse as busy (on top of `busy`). */
  busyFor = 0
  hashes = 0
  constructor (readonly inner: Device) {
    super({ size: inner.size, blockSize: inner.blockSize })
    this.identity = inner.identity
  }

  protected override _read (offset: number, length: number, into: Uint8Array): Promise<void> {
    return this.inner.read(offset, length, into)
  }

  protected override _write (offset: number, data: Uint8Array): Promise<void> { return this.inner.write(offset, data) }

  protected override _hash (offset: number, length: number, chunk: number): Promise<Buffer> {
    this.hashes++
    if (this.busy || this.busyFor-- > 0) return Promise.reject(new DstError('DST_ERR_HASH_BUSY', 'hash workers busy', Errno.EAGAIN))
    return this.inner.hash(offset, length, chunk)
  }
}

/** A leg whose reads (and so its hashes) of the range `held` wait until open(); `waiting` counts them. */
class GatedDevice extends Device {
  readonly type = 'gated'
  held: [number, number] | null = null
  waiting = 0
  private readonly release: Array<() => void> = []
  constructor (readonly inner: Device) {
    super({ size: inner.size, blockSize: inner.blockSize })
    this.identity = inner.identity
  }

  open (): void {
    this.held = null
    for (const go of this.release.splice(0)) go()
  }

  protected override async _read (offset: number, length: number, into: Uint8Array): Promise<void> {
    if (this.held !== null && offset < this.held[1] && offset + length > this.held[0]) {
      this.waiting++
      await new Promise<void>(resolve => this.release.push(resolve))
      this.waiting--
    }
    return this.inner.read(offset, length, into)
  }

  protected override _write (offset: number, data: Uint8Array): Promise<void> { return this.inner.write(offset, data) }
}

// -- hash

test('hash: digests of the mirror\'s data, from one leg', async t => {
  const { faults, members } = rig([64 * KiB, 64 * KiB])
  const m = await openSynced(t, members)
  const data = pattern(64 * KiB, 21)
  await m.write(0, data)
  const before = faults.map(f => f.counts.read)
  t.true((await m.hash(0, 64 * KiB, 4096)).equals(digestsOf(data, 4096)))
  const reads = faults.map((f, i) => f.counts.read - before[i])
  t.deepEqual([...reads].sort(), [0, 1], `one leg read the range to digest it: ${reads.join(', ')}`)
  t.true((await m.hash(1000, 10000, 512)).equals(digestsOf(data.subarray(1000, 11000), 512)))
  await t.throwsAsync(m.hash(0, 64 * KiB + 1, 4096), { code: 'DST_ERR_EINVAL' })
  await t.throwsAsync(m.hash(0, 4096, 1000), { code: 'DST_ERR_EINVAL' })
})

test('hash falls over to another leg when a leg\'s device fails, and that leg is marked failed', async t => {
  const { faults, members } = rig([64 * KiB, 64 * KiB, 64 * KiB])
  const m = await openSynced(t, members, { probeInterval: 60_000 })
  const data = pattern(64 * KiB, 22)
  await m.write(0, data)
  faults[0].failing = true
  faults[2].failing = true
  // Several at once, so whichever leg is least busy gets asked: every answer is right, from the healthy leg.
  const got = await Promise.all(Array.from({ length: 6 }, () => m.hash(0, 64 * KiB, 8192)))
  for (const d of got) t.true(d.equals(digestsOf(data, 8192)))
  t.is(legState(m, 'a'), 'failed')
  t.is(legState(m, 'b'), 'in-sync')
  t.is(legState(m, 'c'), 'failed')
  faults[1].failing = true
  await t.throwsAsync(m.hash(0, 4096, 4096), { code: 'DST_ERR_NOLEG' })
})

test('hash: busy hash workers fail the hash but not the leg', async t => {
  const mems = [new MemoryDevice({ size: 64 * KiB }), new MemoryDevice({ size: 64 * KiB })]
  const legs = mems.map(mem => new BusyHashDevice(mem))
  const m = await openSynced(t, legs.map((device, i) => ({ name: legName(i), device })))
  legs[0].busy = true
  legs[1].busy = true
  const err = await t.throwsAsync(m.hash(0, 64 * KiB, 4096), { instanceOf: DstError })
  t.is(err?.code, 'DST_ERR_HASH_BUSY')
  t.deepEqual(m.legStates().map(l => l.state), ['in-sync', 'in-sync'], 'no leg was failed for it')
  legs[0].busy = false
  legs[1].busy = false
  t.true((await m.hash(0, 64 * KiB, 4096)).equals(digestsOf(Buffer.alloc(64 * KiB), 4096)))
})

test('hash of a range a stale leg misses is answered by the leg that holds it', async t => {
  const { faults, members } = rig([64 * KiB, 64 * KiB])
  const m = await openSynced(t, members, { autoResync: false })
  faults[1].failing = true
  const fresh = pattern(REGION, 23)
  await m.write(3 * REGION, fresh)
  faults[1].failing = false
  t.true(await waitFor(() => legState(m, 'b') === 'stale'))
  const before = faults[1].counts.read
  const got = await Promise.all(Array.from({ length: 8 }, () => m.hash(2 * REGION, 2 * REGION, 4096)))
  for (const d of got) t.true(d.equals(digestsOf(Buffer.concat([Buffer.alloc(REGION), fresh]), 4096)))
  t.is(faults[1].counts.read, before, 'the stale leg was not asked')
})

// -- checksum resync

test('a resync after a crash whose marked regions were in fact equal copies nothing', async t => {
  const { mems, faults, members } = rig([64 * KiB, 64 * KiB])
  const store = new MemoryIntentStore()
  const m1 = await openSynced(t, members, { store })
  const data = pattern(64 * KiB, 31)
  await m1.write(0, data)
  await m1.close()
  // The crash: writes to regions 2, 5 and 6 had their intent bits made durable on both legs, and both legs took the
  // data before the power went. The bits say "may differ"; the data does not.
  const saved = store.saved
  if (saved === null) return t.fail('nothing was saved')
  t.is(regionsWithBits(saved, REGION), 0, 'a clean close clears every bit')
  for (const r of [2, 5, 6]) for (const bits of saved.bits) bits[r >> 3] |= 1 << (r & 7)
  const writesBefore = faults.map(f => f.counts.writeBytes)
  const m2 = await openMirror(t, members, { store })
  t.true(await waitFor(() => allInSync(m2)), 'the marked regions were resynced')
  t.is(m2.resyncedBytes, 0, 'nothing copied')
  t.is(m2.comparedBytes, 3 * REGION, 'each marked region compared once')
  t.deepEqual(faults.map((f, i) => f.counts.writeBytes - writesBefore[i]), [0, 0], 'no leg was written')
  t.is(m2.status().resyncedBytes, 0)
  t.is(m2.status().resyncComparedBytes, 3 * REGION)
  t.true(mems[0].data.equals(data) && mems[1].data.equals(data))
  t.true(await waitFor(() => store.saved !== null && regionsWithBits(store.saved, REGION) === 0), 'the bits are cleared again')
})

test('a returning leg with one differing chunk in a dirty region gets exactly that chunk copied', async t => {
  const size = MiB
  const { mems, faults, members } = rig([size, size])
  const m = await openSynced(t, members, { region: BIG_REGION })
  const data = pattern(size, 32)
  await m.write(0, data)
  faults[1].failing = true
  // Region 1: 100 bytes in its chunk 2. Region 3: 100 bytes across its chunks 0 and 1.
  const writes: Array<[number, Buffer]> = [[BIG_REGION + 2 * CHUNK + 10, pattern(100, 33)], [3 * BIG_REGION + CHUNK - 50, pattern(100, 34)]]
  for (const [at, piece] of writes) {
    await m.write(at, piece)
    piece.copy(data, at)
  }
  t.is(m.legStates()[1].dirtyBytes, 2 * BIG_REGION)
  const written = { ...faults[1].counts }
  const copied = m.resyncedBytes
  const compared = m.comparedBytes
  faults[1].failing = false
  t.true(await waitFor(() => allInSync(m)), 'resynced')
  t.is(m.comparedBytes - compared, 2 * BIG_REGION, 'both dirty regions were compared')
  t.is(m.resyncedBytes - copied, 3 * CHUNK, 'one chunk of region 1, two of region 3')
  t.is(faults[1].counts.writeBytes - written.writeBytes, 3 * CHUNK)
  t.is(faults[1].counts.write - written.write, 2, 'adjacent differing chunks are copied in one write')
  t.true(mems[0].data.equals(data))
  t.true(mems[1].data.equals(data))
})

test('a running resync shows its progress in the status of its leg', async t => {
  const size = MiB
  const { mems, faults, members } = rig([size, size])
  const m = await openSynced(t, members, { region: BIG_REGION })
  faults[1].failing = true
  await m.write(0, pattern(size, 35)) // leg b misses all four regions
  faults[0].delay = 40 // the source is slow, so the resync can be seen running
  faults[1].failing = false
  type Progress = { doneBytes: number, totalBytes: number, copiedBytes: number, comparedBytes: number }
  const resyncOf = (): Progress | undefined => (m.status().members as Array<{ resync?: Progress }>)[1].resync
  t.true(await waitFor(() => resyncOf() !== undefined), 'the status shows the resync')
  const p = resyncOf()
  t.is(p?.totalBytes, size)
  t.true(p !== undefined && p.doneBytes <= p.totalBytes && p.copiedBytes <= p.comparedBytes + p.doneBytes, JSON.stringify(p))
  t.is((m.status().members as Array<{ resync?: Progress }>)[0].resync, undefined, 'the in-sync leg has none')
  faults[0].delay = 0
  t.true(await waitFor(() => allInSync(m)))
  t.is(resyncOf(), undefined, 'gone once in sync')
  t.true(mems[0].data.equals(mems[1].data))
})

test('a last region shorter than a region: only its differing short chunk is copied', async t => {
  const size = 3 * BIG_REGION + CHUNK + 6003 // the last region: one whole chunk and one of 6003 bytes
  const { mems, faults, members } = rig([size, size])
  const m = await openSynced(t, members, { region: BIG_REGION })
  const data = pattern(size, 38)
  await m.write(0, data)
  faults[1].failing = true
  await m.write(size - 10, Buffer.alloc(10, 0xab))
  data.fill(0xab, size - 10)
  t.is(m.legStates()[1].dirtyBytes, CHUNK + 6003)
  const written = faults[1].counts.writeBytes
  const copied = m.resyncedBytes
  const compared = m.comparedBytes
  faults[1].failing = false
  t.true(await waitFor(() => allInSync(m)))
  t.is(m.comparedBytes - compared, CHUNK + 6003)
  t.is(m.resyncedBytes - copied, 6003)
  t.is(faults[1].counts.writeBytes - written, 6003)
  t.true(mems[0].data.equals(data) && mems[1].data.equals(data))
})

test('busy hash workers during a resync: the region is copied whole and the leg is not failed', async t => {
  const mems = [new MemoryDevice({ size: 64 * KiB }), new MemoryDevice({ size: 64 * KiB })]
  const faults = mems.map(mem => new FaultDevice(mem))
  const legs = faults.map(f => new BusyHashDevice(f))
  const m = await openSynced(t, legs.map((device, i) => ({ name: legName(i), device })), { autoResync: false })
  faults[1].failing = true
  const data = pattern(2 * REGION, 39)
  await m.write(4 * REGION, data)
  faults[1].failing = false
  t.true(await waitFor(() => legState(m, 'b') === 'stale'))
  legs[1].busy = true
  const copied = m.resyncedBytes
  const compared = m.comparedBytes
  await m.startResync('b')
  t.is(legState(m, 'b'), 'in-sync')
  t.true(legs[1].hashes > 0, 'the resync tried to compare')
  t.is(m.resyncedBytes - copied, 2 * REGION, 'the regions were copied whole')
  t.is(m.comparedBytes, compared, 'nothing counts as compared')
  t.true(mems[1].data.equals(mems[0].data))
})

test('compare: false copies stale regions whole and compares nothing', async t => {
  const size = MiB
  const { mems, faults, members } = rig([size, size])
  // Leg a holds data and b only zeros: b is filled from a (an array of blank legs would copy nothing).
  mems[0].data.fill(7)
  const m = await openSynced(t, members, { region: BIG_REGION, compare: false })
  t.is(m.resyncedBytes, size, 'the first sync of a new array copied everything')
  const data = pattern(size, 36)
  await m.write(0, data)
  faults[1].failing = true
  const piece = pattern(100, 37)
  await m.write(BIG_REGION + 2 * CHUNK + 10, piece)
  piece.copy(data, BIG_REGION + 2 * CHUNK + 10)
  const written = faults[1].counts.writeBytes
  const copied = m.resyncedBytes
  faults[1].failing = false
  t.true(await waitFor(() => allInSync(m)))
  t.is(m.resyncedBytes - copied, BIG_REGION, 'the whole dirty region')
  t.is(faults[1].counts.writeBytes - written, BIG_REGION)
  t.is(m.comparedBytes, 0)
  t.is(m.status().resyncComparedBytes, 0)
  t.true(mems[0].data.equals(data) && mems[1].data.equals(data))
})

// -- online verify

test('verify finds a leg corrupted behind the array\'s back and, without repair, only reports it', async t => {
  const size = MiB
  const { mems, members } = rig([size, size])
  const m = await openSynced(t, members, { region: BIG_REGION })
  const data = pattern(size, 41)
  await m.write(0, data)
  // Bit rot on leg b: one byte in region 0 (chunk 1), two bytes in region 2 (chunks 0 and 3).
  mems[1].data[CHUNK + 5] ^= 0x01
  mems[1].data[2 * BIG_REGION + 7] ^= 0x80
  mems[1].data[2 * BIG_REGION + 3 * CHUNK + 9] ^= 0x10
  const corrupted = Buffer.from(mems[1].data)
  const progress: Array<VerifyReport['state']> = []
  const shown: unknown[] = []
  const report = await m.verify({ onProgress: r => { progress.push(r.state); shown.push((m.status().verify as { state?: string } | undefined)?.state) } })
  t.like(report, {
    state: 'done', repair: false, from: null, totalBytes: size, doneBytes: size, comparedBytes: size, skippedBytes: 0,
    mismatches: 2, repairedRegions: 0, error: null,
  })
  t.deepEqual(mismatched(report), [
    { region: 0, offset: 0, length: BIG_REGION, chunks: 1, legs: ['a', 'b'], reference: null, repaired: false },
    { region: 2, offset: 2 * BIG_REGION, length: BIG_REGION, chunks: 2, legs: ['a', 'b'], reference: null, repaired: false },
  ])
  t.true(typeof report.startedAt === 'string' && typeof report.finishedAt === 'string')
  t.true(report.seconds >= 0)
  t.is(progress[progress.length - 1], 'done', 'the last progress call sees the end')
  t.true(progress.length >= 4, 'progress was reported as regions were done')
  t.is(shown[0], 'running', 'the status shows a running verify')
  t.is(m.lastVerify, report)
  t.like(m.status().verify as Record<string, unknown>, { state: 'done', mismatches: 2 })
  t.deepEqual(m.verifyTotals, { runs: 1, bytes: size, mismatches: 2, repaired: 0 })
  t.true(mems[0].data.equals(data), 'leg a untouched')
  t.true(mems[1].data.equals(corrupted), 'leg b not repaired')
  t.true(allInSync(m), 'a report marks nothing stale')
  // With a reference but no repair: the differing leg is named, still nothing changes.
  const named = await m.verify({ from: 'a' })
  t.deepEqual(mismatched(named).map(x => [x.region, x.legs, x.reference, x.repaired]), [[0, ['b'], 'a', false], [2, ['b'], 'a', false]])
  t.true(mems[1].data.equals(corrupted))
  t.deepEqual(m.verifyTotals, { runs: 2, bytes: 2 * size, mismatches: 4, repaired: 0 })
})

test('verify with repair from a leg makes the legs byte-identical, copying only the differing chunks', async t => {
  const size = MiB
  const { mems, faults, members } = rig([size, size])
  const store = new MemoryIntentStore()
  const m = await openSynced(t, members, { region: BIG_REGION, store })
  const data = pattern(size, 42)
  await m.write(0, data)
  mems[1].data.fill(0xee, CHUNK + 100, CHUNK + 200) // region 0, chunk 1
  mems[1].data[3 * BIG_REGION + 3 * CHUNK] ^= 0xff // region 3, chunk 3
  const written = faults.map(f => f.counts.writeBytes)
  const report = await m.verify({ repair: true, from: 'a' })
  t.like(report, { state: 'done', repair: true, from: 'a', mismatches: 2, repairedRegions: 2, error: null })
  t.deepEqual(mismatched(report), [
    { region: 0, offset: 0, length: BIG_REGION, chunks: 1, legs: ['b'], reference: 'a', repaired: true },
    { region: 3, offset: 3 * BIG_REGION, length: BIG_REGION, chunks: 1, legs: ['b'], reference: 'a', repaired: true },
  ])
  t.true(allInSync(m), 'the repair resync finished before verify returned')
  t.true(mems[1].data.equals(data), 'leg b holds leg a\'s data again')
  t.true(mems[0].data.equals(data), 'leg a untouched')
  t.deepEqual(faults.map((f, i) => f.counts.writeBytes - written[i]), [0, 2 * CHUNK], 'only the two differing chunks were written')
  t.deepEqual(m.verifyTotals, { runs: 1, bytes: size, mismatches: 2, repaired: 2 })
  const again = await m.verify()
  t.like(again, { state: 'done', mismatches: 0, comparedBytes: size })
  t.deepEqual(again.mismatchedRegions, [])
  t.true(await waitFor(() => store.saved !== null && regionsWithBits(store.saved, BIG_REGION) === 0), 'the repair\'s intent bits are cleared')
})

test('verify with repair from the leg that differs copies its data to the others', async t => {
  const { mems, members } = rig([64 * KiB, 64 * KiB])
  const m = await openSynced(t, members)
  await m.write(0, pattern(64 * KiB, 43))
  mems[1].data.fill(7, 5 * REGION, 5 * REGION + 10) // the operator knows leg b is right here
  const want = Buffer.from(mems[1].data)
  const report = await m.verify({ repair: true, from: 'b' })
  t.deepEqual(mismatched(report).map(x => [x.region, x.legs, x.reference, x.repaired]), [[5, ['a'], 'b', true]])
  t.true(mems[0].data.equals(want) && mems[1].data.equals(want))
  const into = Buffer.alloc(64 * KiB)
  await m.read(0, 64 * KiB, into)
  t.true(into.equals(want))
})

test('a repair on a leg that is resyncing is taken into its running resync', async t => {
  const mems = [new MemoryDevice({ size: 64 * KiB }), new MemoryDevice({ size: 64 * KiB })]
  const gatedA = new GatedDevice(mems[0])
  const faultB = new FaultDevice(mems[1])
  const m = await openSynced(t, [{ name: 'a', device: gatedA }, { name: 'b', device: faultB }], { autoResync: false })
  const data = pattern(64 * KiB, 53)
  await m.write(0, data)
  faultB.failing = true
  const late = pattern(8 * REGION, 54)
  await m.write(8 * REGION, late) // leg b misses regions 8..15
  late.copy(data, 8 * REGION)
  faultB.failing = false
  t.true(await waitFor(() => legState(m, 'b') === 'stale'))
  mems[1].data[2 * REGION + 9] ^= 4 // and rots in region 2, which it holds
  gatedA.held = [15 * REGION, 16 * REGION] // the resync (and the verify) wait at region 15 until the repair is seen
  const resync = m.startResync('b')
  t.is(legState(m, 'b'), 'resyncing')
  let seen = ''
  const verify = m.verify({ repair: true, from: 'a', onProgress: r => { if (r.mismatches > 0 && seen === '') seen = legState(m, 'b') } })
  t.true(await waitFor(() => seen !== ''), 'the verify found region 2')
  t.is(seen, 'resyncing', 'found while leg b was resyncing')
  gatedA.open()
  const report = await verify
  await resync
  t.like(report, { state: 'done', error: null, mismatches: 1, repairedRegions: 1 })
  t.deepEqual(mismatched(report).map(x => [x.region, x.legs, x.repaired]), [[2, ['b'], true]])
  t.is(legState(m, 'b'), 'in-sync')
  t.true(mems[0].data.equals(data), 'leg a')
  t.true(mems[1].data.equals(data), 'leg b: the resynced regions and the repaired one')
})

test('verify of two legs without a reference cannot repair: it reports and leaves the data alone', async t => {
  const { mems, members } = rig([64 * KiB, 64 * KiB])
  const m = await openSynced(t, members)
  await m.write(0, pattern(64 * KiB, 44))
  mems[0].data[9 * REGION] ^= 1
  const before = mems.map(x => Buffer.from(x.data))
  const report = await m.verify({ repair: true })
  t.like(report, { state: 'done', repair: true, mismatches: 1, repairedRegions: 0 })
  t.deepEqual(mismatched(report), [{ region: 9, offset: 9 * REGION, length: REGION, chunks: 1, legs: ['a', 'b'], reference: null, repaired: false }])
  t.true(mems.every((x, i) => x.data.equals(before[i])))
  t.true(allInSync(m))
})

test('verify of three legs repairs from the majority, even when the first leg is the odd one', async t => {
  const size = 64 * KiB
  const { mems, faults, members } = rig([size, size, size])
  const m = await openSynced(t, members)
  const data = pattern(size, 45)
  await m.write(0, data)
  mems[0].data.fill(0, 4 * REGION, 4 * REGION + 300) // leg a rots in region 4
  mems[2].data[12 * REGION + 1] ^= 0x40 // leg c in region 12
  const written = faults.map(f => f.counts.writeBytes)
  const report = await m.verify({ repair: true })
  t.like(report, { state: 'done', mismatches: 2, repairedRegions: 2 })
  t.deepEqual(mismatched(report), [
    { region: 4, offset: 4 * REGION, length: REGION, chunks: 1, legs: ['a'], reference: 'majority', repaired: true },
    { region: 12, offset: 12 * REGION, length: REGION, chunks: 1, legs: ['c'], reference: 'majority', repaired: true },
  ])
  for (const [i, mem] of mems.entries()) t.true(mem.data.equals(data), `leg ${legName(i)} holds the majority's data`)
  t.deepEqual(faults.map((f, i) => f.counts.writeBytes - written[i]), [REGION, 0, REGION])
  t.true(allInSync(m))
  t.is((await m.verify()).mismatches, 0)
})

test('verify of three legs that all differ finds no majority and repairs nothing', async t => {
  const { mems, members } = rig([64 * KiB, 64 * KiB, 64 * KiB])
  const m = await openSynced(t, members)
  await m.write(0, pattern(64 * KiB, 46))
  mems[0].data[REGION + 1] = 1
  mems[1].data[REGION + 1] = 2
  mems[2].data[REGION + 1] = 3
  const report = await m.verify({ repair: true })
  t.deepEqual(mismatched(report), [{ region: 1, offset: REGION, length: REGION, chunks: 1, legs: ['a', 'b', 'c'], reference: null, repaired: false }])
  t.deepEqual(mems.map(x => x.data[REGION + 1]), [1, 2, 3])
})

test('verify skips regions that fewer than two legs hold (stale or failed legs)', async t => {
  const { faults, members } = rig([64 * KiB, 64 * KiB])
  const m = await openSynced(t, members, { autoResync: false })
  faults[1].failing = true
  await m.write(REGION + 10, pattern(100, 47))
  await m.write(7 * REGION, pattern(2 * REGION, 48)) // regions 7 and 8
  // While leg b is away nothing can be compared, and the verify says so (issue 12: it is incomplete, not done).
  const away = await m.verify()
  t.like(away, { state: 'incomplete', comparedBytes: 0, skippedBytes: 64 * KiB, doneBytes: 64 * KiB, mismatches: 0 })
  t.deepEqual(away.notCompared, [{ leg: 'b', state: 'failed', bytes: 64 * KiB }])
  t.is(away.incomplete, 'leg b down: 64 KiB not compared')
  faults[1].failing = false
  t.true(await waitFor(() => legState(m, 'b') === 'stale'))
  // Back but stale in three regions: those are skipped (they do differ), the rest compared and equal.
  const stale = await m.verify()
  t.like(stale, { state: 'incomplete', comparedBytes: 13 * REGION, skippedBytes: 3 * REGION, doneBytes: 64 * KiB, mismatches: 0, incomplete: 'leg b stale: 12 KiB not compared' })
  await m.startResync('b')
  t.like(await m.verify(), { state: 'done', comparedBytes: 64 * KiB, skippedBytes: 0, mismatches: 0, notCompared: [], incomplete: null })
})

test('a repair that cannot finish gives a failed report; the region stays marked for the leg', async t => {
  const memA = new MemoryDevice({ size: 64 * KiB })
  const memB = new MemoryDevice({ size: 64 * KiB })
  const hookB = new HookDevice(memB)
  const store = new MemoryIntentStore()
  const m = await openSynced(t, [{ name: 'a', device: new FaultDevice(memA) }, { name: 'b', device: hookB }], { store, probeInterval: 60_000 })
  await m.write(0, pattern(64 * KiB, 49))
  memB.data[6 * REGION + 3] ^= 1
  hookB.onWrite = () => { throw new DstError('DST_ERR_EIO', 'write refused', Errno.EIO) }
  const report = await m.verify({ repair: true, from: 'a' })
  t.is(report.state, 'failed')
  t.is(typeof report.error, 'string')
  t.regex(report.error ?? '', /b/)
  t.like(mismatched(report)[0], { region: 6, legs: ['b'], reference: 'a', repaired: true })
  t.is(legState(m, 'b'), 'failed')
  t.true(store.saved !== null && bitSet(store.saved, 1, 6), 'leg b\'s bit for the region is durable')
  t.false(memB.data.equals(memA.data))
  t.is(m.lastVerify?.state, 'failed')
})

test('verify of an array whose last region is short reports that region with its own length', async t => {
  const size = 2 * BIG_REGION + CHUNK + 6003
  const { mems, members } = rig([size, size])
  const m = await openSynced(t, members, { region: BIG_REGION })
  await m.write(0, pattern(size, 50))
  mems[1].data[size - 1] ^= 1 // in the short last chunk
  const report = await m.verify({ repair: true, from: 'a' })
  t.like(report, { state: 'done', totalBytes: size, doneBytes: size, comparedBytes: size, mismatches: 1, repairedRegions: 1 })
  t.deepEqual(mismatched(report), [{ region: 2, offset: 2 * BIG_REGION, length: CHUNK + 6003, chunks: 1, legs: ['b'], reference: 'a', repaired: true }])
  t.true(mems[0].data.equals(mems[1].data))
})

test('busy hash workers during a verify are waited out: no leg is failed and the verify finishes', async t => {
  const mems = [new MemoryDevice({ size: 64 * KiB }), new MemoryDevice({ size: 64 * KiB })]
  const legs = mems.map(mem => new BusyHashDevice(mem))
  const m = await openSynced(t, legs.map((device, i) => ({ name: legName(i), device })))
  await m.write(0, pattern(64 * KiB, 51))
  mems[0].data[11 * REGION] ^= 2
  legs[0].busyFor = 3
  legs[1].busyFor = 2
  const report = await m.verify({ concurrency: 2 })
  t.like(report, { state: 'done', comparedBytes: 64 * KiB, skippedBytes: 0, mismatches: 1 })
  t.is(mismatched(report)[0]?.region, 11)
  t.deepEqual(m.legStates().map(l => l.state), ['in-sync', 'in-sync'])
  t.true(legs[0].busyFor <= 0 && legs[1].busyFor <= 0, 'the busy answers were all given')
})

test('verify refuses: one already running (BUSY), an unknown (NOLEG) or failed (NOTSYNC) reference, one leg (ONELEG)', async t => {
  const { faults, members } = rig([64 * KiB, 64 * KiB])
  const m = await openSynced(t, members, { probeInterval: 60_000 })
  faults[0].delay = 5
  faults[1].delay = 5
  const first = m.verify({ concurrency: 1 })
  const busy = await t.throwsAsync(m.verify(), { instanceOf: DstError })
  t.is(busy?.code, 'DST_ERR_BUSY')
  t.is(busy?.errno, Errno.EAGAIN)
  t.like(await first, { state: 'done', mismatches: 0 }, 'the running verify is not disturbed')
  faults[0].delay = 0
  faults[1].delay = 0
  const last = m.lastVerify
  await t.throwsAsync(m.verify({ from: 'zz' }), { code: 'DST_ERR_NOLEG' })
  t.is(m.lastVerify, last, 'a refused verify leaves no report')
  faults[1].failing = true
  await m.write(0, Buffer.alloc(10, 1))
  t.is(legState(m, 'b'), 'failed')
  await t.throwsAsync(m.verify({ from: 'b' }), { code: 'DST_ERR_NOTSYNC' })
  t.is(m.verifyTotals.runs, 1, 'refused verifies are not counted as runs')
  t.like(await m.verify({ from: 'a' }), { state: 'incomplete', skippedBytes: 64 * KiB }, 'a verify after the refusals runs (and cannot compare leg b)')
  const tiny = await openSynced(t, rig([16 * KiB, 16 * KiB]).members, { region: 256 })
  await t.throwsAsync(tiny.verify(), { code: 'DST_ERR_REGION' }, 'a region under 512 bytes cannot be compared by digest')
  const one = await openMirror(t, rig([16 * KiB]).members)
  await t.throwsAsync(one.verify(), { code: 'DST_ERR_ONELEG' })
  await t.throwsAsync(one.verify({ repair: true }), { code: 'DST_ERR_ONELEG' })
})

// Regression test (fixed): a leg removed while a verify awaited its digests used to make the verify mark a leg that was
// no longer in the array (index -1) and fail with a TypeError. Legs now carry their own index and bits
// (algorithms/redundant/leg.ts), so there is no index to look up; this test keeps the verify from failing again.
test('a leg removed while a verify digests it does not make the verify fail', async t => {
  const mems = [0, 1, 2].map(() => new MemoryDevice({ size: 64 * KiB }))
  const gated = new GatedDevice(mems[2])
  const m = await openSynced(t, [{ name: 'a', device: mems[0] }, { name: 'b', device: mems[1] }, { name: 'c', device: gated }])
  await m.write(0, pattern(64 * KiB, 52))
  mems[2].data[5 * REGION] ^= 1 // leg c, the one about to be removed, differs in region 5
  gated.held = [5 * REGION, 6 * REGION]
  const verify = m.verify({ repair: true, concurrency: 1 })
  t.true(await waitFor(() => gated.waiting === 1), 'leg c is digesting region 5')
  const removal = m.removeLeg('c').then(() => 'removed', (err: DstError) => err.code)
  await waitFor(() => !m.legNames.includes('c'), 1000) // a mirror may also make the removal wait for the verify
  gated.open()
  const report = await verify
  t.log(`removal: ${await removal}`)
  t.is(report.error, null)
  t.is(report.state, 'done')
  t.true(mems[0].data.equals(mems[1].data))
  t.true(m.legStates().filter(l => l.name !== 'c').every(l => l.state === 'in-sync'))
})

type Write = { at: number, length: number, seed: number, pause: number }

test('random writes while a verify runs never show up as mismatches, and the legs equal a model (fast-check)', async t => {
  const writeArb: fc.Arbitrary<Write> = fc.record({
    at: fraction, length: fc.integer({ min: 1, max: 3 * REGION }), seed: fc.nat(1000), pause: fc.integer({ min: 0, max: 3 }),
  })
  await fc.assert(fc.asyncProperty(
    fc.integer({ min: 2, max: 3 }),
    fc.integer({ min: 1, max: 4 }),
    fc.array(fc.integer({ min: 0, max: 2 }), { minLength: 3, maxLength: 3 }),
    fc.array(writeArb, { minLength: 1, maxLength: 25 }),
    async (legs, concurrency, delays, writes) => {
      const size = 64 * KiB
      const { mems, faults, members } = rig(Array.from({ length: legs }, () => size))
      const m = await MirrorDevice.open({ name: 'v', legs: members, region: REGION, store: new MemoryIntentStore(), clearDelay: 10, probeInterval: 10 })
      try {
        if (!await waitFor(() => allInSync(m))) throw new Error('the first sync did not finish')
        const model = pattern(size, 3)
        await m.write(0, model)
        faults.forEach((f, i) => { f.delay = delays[i] })
        const verify = m.verify({ concurrency })
        for (const w of writes) {
          const at = Math.floor(w.at * size)
          const data = pattern(Math.min(w.length, size - at), w.seed)
          await m.write(at, data)
          data.copy(model, at)
          if (w.pause > 0) await sleep(w.pause)
        }
        const report = await verify
        for (const f of faults) f.delay = 0
        if (report.state !== 'done' || report.mismatches !== 0 || report.comparedBytes !== size) {
          throw new Error(`verify: ${JSON.stringify({ ...report, mismatchedRegions: report.mismatchedRegions.slice(0, 3) })}`)
        }
        if (!allInSync(m)) throw new Error(`legs: ${JSON.stringify(m.legStates())}`)
        for (const [i, mem] of mems.entries()) if (!mem.data.equals(model)) throw new Error(`leg ${legName(i)} differs from the model`)
        const all = Buffer.alloc(size)
        await m.read(0, size, all)
        if (!all.equals(model)) throw new Error('a full read differs from the model')
        const after = await m.verify()
        if (after.mismatches !== 0) throw new Error('a verify after the writes found mismatches')
      } finally {
        await closeSoon(m)
      }
    },
  ), { numRuns: 25 })
  t.pass('fast-check found no counterexample') // fc.assert throws on failure
})

test('a region change of an array whose legs were all in sync keeps them in sync; a size change is a new array (refused while a leg holds data)', async t => {
  const size = 64 * KiB
  const { mems, faults, members } = rig([size, size])
  const store = new MemoryIntentStore()
  const m1 = await openSynced(t, members, { store })
  await m1.write(0, pattern(size, 71))
  await m1.close()
  const before = faults[1].counts.writeBytes
  const m2 = await openMirror(t, members, { store, region: 2 * REGION })
  t.true(allInSync(m2))
  t.is(m2.identity, m1.identity, 'the array keeps its UUID')
  await m2.close()
  t.is(faults[1].counts.writeBytes, before)
  // Both legs grew (same disks, same identities): the array's size changes, and a new array never guesses.
  const sized = mems.map((mem, i) => {
    const big = new MemoryDevice({ size: 2 * size })
    big.data.set(mem.data)
    big.identity = mem.identity
    return { name: legName(i), device: big }
  })
  await t.throwsAsync(MirrorDevice.open({ name: 'm', legs: sized, region: REGION, store }), { code: 'DST_ERR_SYNCSOURCE' })
})

test('a leg new to the array that was unreachable at open is checked when it answers: holding data, it is foreign and untouched', async t => {
  const size = 64 * KiB
  const { members } = rig([size, size])
  const store = new MemoryIntentStore()
  const m1 = await openSynced(t, members, { store })
  await m1.close()
  const other = new FaultDevice(new MemoryDevice({ size }))
  ;(other.inner as MemoryDevice).data.set(pattern(size, 72))
  other.state = 'connecting'
  const m2 = await openMirror(t, [members[0], { name: 'b', device: other }], { store })
  t.is(legState(m2, 'b'), 'failed')
  await m2.write(0, pattern(4096, 73))
  other.state = 'online'
  t.true(await waitFor(() => legState(m2, 'b') === 'foreign'))
  await sleep(30)
  t.is(other.counts.writeBytes, 0)
  t.true((other.inner as MemoryDevice).data.equals(pattern(size, 72)))
})
