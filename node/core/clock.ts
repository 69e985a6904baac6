// clock: time as a dependency. Code that waits, paces or stamps takes a Clock instead of calling Date.now and the
// timers itself, so a test can drive time by hand (test/helpers/clock.ts) instead of sleeping. `realClock` is the
// process's clock; its intervals are unref'd, so a forgotten one never keeps the process alive.

/** A timer handle, opaque to its users: only passed back to the clock that made it. */
export type TimerHandle = unknown

export interface Clock {
  /** Milliseconds since the epoch. */
  now: () => number
  /** Resolves after `ms` milliseconds of this clock. */
  sleep: (ms: number) => Promise<void>
  /** Calls `fn` every `ms` milliseconds until cleared. */
  setInterval: (fn: () => void, ms: number) => TimerHandle
  clearInterval: (handle: TimerHandle) => void
}

export const realClock: Clock = {
  now: () => Date.now(),
  sleep: (ms: number) => new Promise<void>(resolve => setTimeout(resolve, ms)),
  setInterval (fn: () => void, ms: number): TimerHandle {
    const t = setInterval(fn, ms)
    t.unref()
    return t
  },
  clearInterval (handle: TimerHandle): void {
    clearInterval(handle as NodeJS.Timeout)
  },
}
