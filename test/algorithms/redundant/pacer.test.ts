import test from 'ava'
import { Pacer } from '../../../algorithms/redundant/pacer'
import { ManualClock } from '../../helpers/clock'

test('the pacer sleeps, on its clock, for as long as the pass is ahead of the rate', async t => {
  const clock = new ManualClock()
  const pacer = new Pacer(clock, 1000) // bytes per second
  let done = false
  const paced = pacer.pace(500).then(() => { done = true }) // 500 bytes: due at 500 ms
  await clock.advance(499)
  t.false(done)
  await clock.advance(1)
  await paced
  t.true(done)
  t.is(pacer.elapsed(), 500)
  await pacer.pace(400) // behind the rate: no wait
  t.is(clock.waiting, 0)
})

test('a rate of 0 never waits', async t => {
  const clock = new ManualClock()
  await new Pacer(clock, 0).pace(1e12)
  t.is(clock.waiting, 0)
})
