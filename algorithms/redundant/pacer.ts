// pacer: keeps a background pass (resync, verify) at or under a byte rate. After each piece of work the pass says how
// many bytes it has done in all; the pacer sleeps, on the array's clock, for as long as the pass is ahead of the rate.

import type { Clock } from '../../node/core/clock'

export class Pacer {
  private readonly clock: Clock
  /** Bytes per second; 0 for no limit. */
  private readonly rate: number
  private readonly began: number

  constructor (clock: Clock, rate: number) {
    this.clock = clock
    this.rate = rate
    this.began = clock.now()
  }

  /** Milliseconds since the pass began. */
  elapsed (): number {
    return this.clock.now() - this.began
  }

  /** Waits until `doneBytes` is no more than the rate allows by now. */
  async pace (doneBytes: number): Promise<void> {
    if (this.rate <= 0) return
    const ahead = (doneBytes / this.rate) * 1000 - this.elapsed()
    if (ahead > 0) await this.clock.sleep(ahead)
  }
}
