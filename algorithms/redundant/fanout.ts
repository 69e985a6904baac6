// fanout: one request issued to several legs at once and answered per leg as each answer comes, so a leg that fails
// is taken out at once, not when the slowest leg has answered. Nothing is allocated per leg or per request in the
// steady state: a Fanout and its per-leg answer records are pooled, each with its completion methods bound once when
// it is made (like the client's request slots); what remains per request is the leg's own promise, the one `then`
// on it, and the promise the caller awaits.

import type { Leg } from './leg'

/** Called when leg `i` of `f` fails its part (before the request as a whole is answered). */
export type LegFailed = (f: Fanout, i: number, err: unknown) => void

export class Fanout {
  /** The legs the request went to, and which of them failed it. */
  readonly legs: Leg[] = []
  readonly failed: boolean[] = []
  /** The request's regions, for the owner's failure handling. */
  r0 = 0
  r1 = 0
  /** What the owner keeps per failing leg (the mirror: regions it held before), made only when a leg fails. */
  held: Array<number[] | null> | null = null
  private pending = 0
  private done: (() => void) | null = null
  private readonly answers: LegAnswer[] = []
  private readonly onFail: LegFailed
  private readonly pool: FanoutPool
  private readonly capture = (resolve: () => void): void => { this.done = resolve }

  constructor (pool: FanoutPool, onFail: LegFailed) {
    this.pool = pool
    this.onFail = onFail
  }

  /** Sends leg `leg` its part: `request` is what its device returned. */
  issue (leg: Leg, request: Promise<void>): void {
    const i = this.legs.length
    this.legs.push(leg)
    this.failed.push(false)
    leg.outstanding++
    this.pending++
    let a = this.answers[i]
    if (a === undefined) { a = new LegAnswer(this, i); this.answers[i] = a }
    request.then(a.ok, a.err)
  }

  /** Resolves once every leg has answered (never rejects: see `failed`). */
  wait (): Promise<void> {
    if (this.pending === 0) return Promise.resolve()
    return new Promise(this.capture)
  }

  /** True if some leg that answered well is `in-sync` now. */
  anyInSyncOk (): boolean {
    for (let i = 0; i < this.legs.length; i++) if (!this.failed[i] && this.legs[i].state === 'in-sync') return true
    return false
  }

  answered (i: number, ok: boolean, err: unknown): void {
    this.legs[i].outstanding--
    if (!ok) {
      this.failed[i] = true
      this.onFail(this, i, err)
    }
    if (--this.pending === 0 && this.done !== null) { const done = this.done; this.done = null; done() }
  }

  /** Gives the record back to its pool; the caller must not touch it after. */
  release (): void {
    this.legs.length = 0
    this.failed.length = 0
    this.held = null
    this.pool.free.push(this)
  }
}

/** One leg's answer slot of a Fanout, with its completions bound once. */
class LegAnswer {
  private readonly fanout: Fanout
  private readonly index: number
  readonly ok = (): void => { this.fanout.answered(this.index, true, null) }
  readonly err = (err: unknown): void => { this.fanout.answered(this.index, false, err) }

  constructor (fanout: Fanout, index: number) {
    this.fanout = fanout
    this.index = index
  }
}

/** Fanouts not in use; grows to the most requests in flight at once, and is reused from then on. */
export class FanoutPool {
  readonly free: Fanout[] = []
  private readonly onFail: LegFailed

  constructor (onFail: LegFailed) {
    this.onFail = onFail
  }

  take (r0: number, r1: number): Fanout {
    const f = this.free.pop() ?? new Fanout(this, this.onFail)
    f.r0 = r0
    f.r1 = r1
    return f
  }
}
