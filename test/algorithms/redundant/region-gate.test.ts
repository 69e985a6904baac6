import test from 'ava'
import { RegionGate } from '../../../algorithms/redundant/region-gate'

const turn = (): Promise<void> => new Promise(resolve => setImmediate(resolve))

test('a write waits while its region is locked; the lock waits for the writes already in it', async t => {
  const gate = new RegionGate()
  await gate.enter(2, 3) // a write in regions 2..3
  t.true(gate.busy(2))
  let locked = false
  const lock = gate.lockRegion(3).then(() => { locked = true })
  await turn()
  t.false(locked, 'the lock waits for the write in region 3')
  gate.leaveRegions(2, 3)
  gate.exit()
  await lock
  t.true(locked)
  let entered = false
  const write = gate.enter(3, 3).then(() => { entered = true })
  await turn()
  t.false(entered, 'a write into a locked region waits')
  const other = await gate.enter(0, 1).then(() => true)
  t.true(other, 'a write elsewhere goes on')
  gate.unlockRegion(3)
  await write
  t.true(entered)
})

test('withIoHeld pauses new I/O, waits for what is in flight, and lets I/O go on after', async t => {
  const gate = new RegionGate()
  gate.enterNow()
  const order: string[] = []
  const held = gate.withIoHeld(async () => { order.push('held') })
  await turn()
  t.false(gate.open)
  const late = gate.enter().then(() => { order.push('late') })
  await turn()
  t.deepEqual(order, [])
  gate.exit()
  await held
  await late
  t.deepEqual(order, ['held', 'late'])
  t.true(gate.open)
})

test('locks are counted: two holders of a region, the second unlock frees it', async t => {
  const gate = new RegionGate()
  await gate.lockRegion(1)
  await gate.lockRegion(1)
  gate.unlockRegion(1)
  t.true(gate.isLocked(1))
  gate.unlockRegion(1)
  t.false(gate.isLocked(1))
})
