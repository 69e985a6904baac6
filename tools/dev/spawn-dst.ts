// Starts a `dst` process for the benchmarks, the soak and the end-to-end tests, optionally inside a network namespace,
// and waits for its ` ready` line. Output is kept (the last 64 KiB) for error messages and for the addresses the process prints.

import { spawn, type ChildProcess } from 'node:child_process'
import * as path from 'node:path'

const DST = path.join(__dirname, '..', 'cli', 'dst.js')
const KEEP = 64 * 1024

export interface StartedDst {
  proc: ChildProcess
  /** Everything the process printed so far (the last 64 KiB). */
  out: () => string
  /** The port of its HTTP status address, when it printed one. */
  statusPort: number | null
}

export interface SpawnOptions {
  /** Run inside this network namespace (`ip netns exec`). */
  netns?: string
  /** Names the process in errors; default the arguments. */
  what?: string
  /** Every spawned process is added here, so the caller can kill them all at the end. */
  procs?: ChildProcess[]
  /** Milliseconds to wait for ` ready`; a process not ready by then is killed. */
  timeout?: number
  /** Bytes of output kept (the last ones); default 64 KiB. */
  keep?: number
}

export function spawnDst (args: string[], options: SpawnOptions = {}): Promise<StartedDst> {
  const what = options.what ?? `dst ${args.join(' ')}`
  const proc = options.netns === undefined
    ? spawn(process.execPath, [DST, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn('ip', ['netns', 'exec', options.netns, process.execPath, DST, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  options.procs?.push(proc)
  let out = ''
  const keep = options.keep ?? KEEP
  const take = (c: Buffer): void => {
    out += c.toString()
    if (out.length > 2 * keep) out = out.slice(-keep)
  }
  return new Promise((resolve, reject) => {
    const timeout = options.timeout ?? 60000
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`${what} did not start within ${timeout} ms: ${out}`)) }, timeout)
    let ready = false
    proc.stdout?.on('data', (c: Buffer) => {
      take(c)
      if (ready || !out.includes(' ready\n')) return
      ready = true
      clearTimeout(timer)
      const m = /status {2}https?:\/\/[^\s/]+:(\d+)\/status/.exec(out)
      resolve({ proc, out: () => out, statusPort: m === null ? null : Number(m[1]) })
    })
    proc.stderr?.on('data', take)
    // After ` ready`, an exit settles nothing: the promise has resolved. Before it, the error carries what the process
    // printed: 'exit' can come before the last of its output has been read, so the message waits for 'close' (the
    // pipes drained), or a second at most.
    proc.on('exit', code => {
      clearTimeout(timer)
      const fail = (): void => reject(new Error(`${what} exited with ${code} before it was ready: ${out}`))
      const late = setTimeout(fail, 1000)
      proc.once('close', () => { clearTimeout(late); fail() })
    })
  })
}
