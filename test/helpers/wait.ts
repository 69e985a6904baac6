// Bounded waiting for tests: a condition that never comes true, or a promise that never settles, becomes a clear
// failure naming what was awaited instead of a test timeout.

/** Polls `check` every `every` ms until it is true; throws after `ms`. */
export async function until (what: string, check: () => boolean | Promise<boolean>, ms = 30000, every = 50): Promise<void> {
  const deadline = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, every))
  }
}

/** Settles `p` or fails after `ms`. */
export function within<T> (p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`${what}: still pending after ${ms} ms`)), ms) })
  return Promise.race([p, late]).finally(() => clearTimeout(timer))
}
