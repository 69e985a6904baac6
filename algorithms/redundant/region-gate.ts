// region-gate: who may do I/O on a redundant array, and when. Requests count themselves in and out (`enter`/`exit`);
// a write also counts in on its regions, and waits while any of them is locked by a resync or verify (`lockRegion`,
// which in turn waits for the writes already in those regions). `withIoHeld` pauses all new I/O, waits for what is in
// flight and runs a change of the array's layout (add, remove, replace a leg) with nothing moving.

export class RegionGate {
  /** Requests in flight. */
  private active = 0
  /** Regions with writes in flight, and how many. */
  private readonly inflight = new Map<number, number>()
  /** Regions written since the intent map's last clear pass: not yet quiet. */
  readonly touched = new Set<number>()
  /** Regions locked by a resync or verify, and by how many (several legs may resync at once). */
  private readonly locked = new Map<number, number>()
  private paused = false
  private readonly waiting: Array<() => void> = []
  private readonly idleWaiters = new Map<number, Array<() => void>>()
  private activeIdle: (() => void) | null = null

  /** True when a request may count itself in without waiting (then `enterNow` does, in the same step). */
  get open (): boolean { return !this.paused }

  /** Counts a request in; only when `open`. */
  enterNow (): void {
    this.active++
  }

  /**
   * Waits while I/O is paused or (for writes, r0 >= 0) while a region of the range is locked; then, in the same
   * synchronous step, counts the request in, so a lock taken afterwards waits for it.
   */
  async enter (r0 = -1, r1 = -1): Promise<void> {
    while (this.paused || (r0 >= 0 && this.anyLocked(r0, r1))) {
      await new Promise<void>(resolve => this.waiting.push(resolve))
    }
    this.active++
    for (let r = r0; r >= 0 && r <= r1; r++) { this.inflight.set(r, (this.inflight.get(r) ?? 0) + 1); this.touched.add(r) }
  }

  /** Counts a write out of its regions (waking locks waiting for them), before `exit`. */
  leaveRegions (r0: number, r1: number): void {
    for (let r = r0; r <= r1; r++) {
      const n = (this.inflight.get(r) ?? 1) - 1
      if (n === 0) {
        this.inflight.delete(r)
        const idle = this.idleWaiters.get(r)
        if (idle !== undefined) { this.idleWaiters.delete(r); for (const wake of idle) wake() }
      } else this.inflight.set(r, n)
    }
  }

  exit (): void {
    if (--this.active === 0 && this.activeIdle !== null) { const done = this.activeIdle; this.activeIdle = null; done() }
  }

  /** Bound for `promise.then(gate.exitOk, gate.exitErr)`: counts out without a closure per request. */
  readonly exitOk = (): void => { this.exit() }
  readonly exitErr = (err: unknown): never => {
    this.exit()
    throw err
  }

  busy (r: number): boolean {
    return this.inflight.has(r)
  }

  isLocked (r: number): boolean {
    return this.locked.has(r)
  }

  /** Locks a region against writes and waits for the writes in it to finish. */
  async lockRegion (r: number): Promise<void> {
    this.locked.set(r, (this.locked.get(r) ?? 0) + 1)
    if (this.inflight.has(r)) {
      await new Promise<void>(resolve => {
        const list = this.idleWaiters.get(r)
        if (list === undefined) this.idleWaiters.set(r, [resolve]); else list.push(resolve)
      })
    }
  }

  unlockRegion (r: number): void {
    const n = (this.locked.get(r) ?? 1) - 1
    if (n === 0) this.locked.delete(r); else this.locked.set(r, n)
    this.wake()
  }

  /** Holds new I/O and waits for what is in flight, runs `fn`, then lets I/O go on. */
  async withIoHeld <T>(fn: () => Promise<T>): Promise<T> {
    while (this.paused) await new Promise<void>(resolve => this.waiting.push(resolve))
    this.paused = true
    try {
      if (this.active > 0) await new Promise<void>(resolve => { this.activeIdle = resolve })
      return await fn()
    } finally {
      this.paused = false
      this.wake()
    }
  }

  private anyLocked (r0: number, r1: number): boolean {
    if (this.locked.size === 0) return false
    for (let r = r0; r <= r1; r++) if (this.locked.has(r)) return true
    return false
  }

  private wake (): void {
    for (const wake of this.waiting.splice(0)) wake()
  }
}
