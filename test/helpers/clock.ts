// A clock a test drives by hand (node/core/clock.ts): time moves only when the test calls `advance`, so a test of
// pacing, probes or clear passes asserts what happens at a given time without sleeping for it.

import type { Clock, TimerHandle } from '../../node/core/clock'

interface Timer { at: number, every: number, fn: () => void, cleared: boolean }

export class ManualClock implements Clock {
  private time: number
  private readonly timers: Timer[] = []

  constructor (start = 1_700_000_000_000) {
    this.time = start
  }

  now (): number {
    return this.time
  }

  sleep (ms: number): Promise<void> {
    return new Promise(resolve => { this.timers.push({ at: this.time + Math.max(0, ms), every: 0, fn: resolve, cleared: false }) })
  }

  setInterval (fn: () => void, ms: number): TimerHandle {
    const t: Timer = { at: this.time + ms, every: Math.max(1, ms), fn, cleared: false }
    this.timers.push(t)
    return t
  }

  clearInterval (handle: TimerHandle): void {
    const t = handle as Timer
    t.cleared = true
    const i = this.timers.indexOf(t)
    if (i >= 0) this.timers.splice(i, 1)
  }

  /** Sleepers and interval timers waiting now. */
  get waiting (): number {
    return this.timers.length
  }

  /**
   * Moves time forward by `ms`, firing every timer due on the way in time order; after each, lets the promise jobs
   * (and I/O callbacks) it started run, so work a timer wakes can reach its next wait before time moves on.
   */
  async advance (ms: number): Promise<void> {
    const until = this.time + ms
    for (let fired = 0; fired < 1_000_000; fired++) {
      let next: Timer | null = null
      for (const t of this.timers) if (t.at <= until && (next === null || t.at < next.at)) next = t
      if (next === null) break
      this.time = Math.max(this.time, next.at)
      if (next.every > 0) next.at += next.every
      else this.timers.splice(this.timers.indexOf(next), 1)
      next.fn()
      await settle()
    }
    this.time = until
    await settle()
  }
}

/** Lets pending promise jobs and immediate callbacks run. */
function settle (): Promise<void> {
  return new Promise(resolve => setImmediate(resolve))
}
