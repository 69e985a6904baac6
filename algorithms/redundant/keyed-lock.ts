// keyed-lock: serialises work per key (a stripe, a group of blocks) for arrays whose writes must not interleave on
// the same stripe (parity: a read-modify-write reads old data and old parity, and a second writer between the read
// and the write would be lost). Keys are taken in ascending order, so two holders never deadlock.

export class KeyedLock {
  private readonly tails = new Map<number, Promise<void>>()

  /** Waits for every key (ascending order), and returns the release of all of them. */
  async take (keys: readonly number[]): Promise<() => void> {
    const releases: Array<() => void> = []
    for (const k of keys) {
      const before = this.tails.get(k) ?? Promise.resolve()
      let release!: () => void
      const mine = new Promise<void>(resolve => { release = resolve })
      const tail = before.then(() => mine)
      this.tails.set(k, tail)
      releases.push(() => { release(); if (this.tails.get(k) === tail) this.tails.delete(k) })
      await before
    }
    return () => { for (const r of releases) r() }
  }

  /** Keys held or waited for (tests). */
  get size (): number { return this.tails.size }
}
