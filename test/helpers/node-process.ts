// Starts real `dst` processes for end-to-end tests: each on loopback, on a port the OS picks (listen port 0), killed
// by its own pid when the test ends. The port is read from the node's start-up lines.

import { spawn, type ChildProcess } from 'node:child_process'
import { spawnDst } from '../../tools/dev/spawn-dst'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'

export const DST = path.join(__dirname, '..', '..', 'tools', 'cli', 'dst.js')

export interface RunningNode {
  proc: ChildProcess
  port: number
  /** Base HTTP address, e.g. http://127.0.0.1:40123 */
  http: string
  /** dst:// URL of an export on this node. */
  url: (exportName: string) => string
  output: () => string
  /**
   * GET /status as JSON. When the node cannot answer, the error says whether the process is gone and what it printed
   * last, so that a failure in CI names its cause instead of just 'fetch failed'.
   */
  status: () => Promise<any>
  /** SIGTERM and wait for exit; resolves with the exit code. */
  stop: () => Promise<number | null>
  /** SIGKILL and wait for exit. */
  kill: () => Promise<void>
}

const live = new Set<ChildProcess>()
process.on('exit', () => { for (const p of live) { try { p.kill('SIGKILL') } catch {} } })

export function tempDir (prefix = 'dst-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix))
}

/** Runs `dst ARGS...` to completion; for CLI tests. */
export function runDst (args: string[], options: { input?: Buffer, cwd?: string, timeout?: number } = {}): Promise<{ code: number | null, stdout: Buffer, stderr: string }> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [DST, ...args], { cwd: options.cwd, stdio: ['pipe', 'pipe', 'pipe'] })
    live.add(proc)
    const out: Buffer[] = []
    let err = ''
    proc.stdout.on('data', (c: Buffer) => out.push(c))
    proc.stderr.on('data', (c: Buffer) => { err += c.toString() })
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`dst ${args.join(' ')} timed out; stderr: ${err}`)) }, options.timeout ?? 60000)
    proc.on('error', reject)
    proc.on('close', code => { clearTimeout(timer); live.delete(proc); resolve({ code, stdout: Buffer.concat(out), stderr: err }) })
    proc.stdin.on('error', () => {})
    if (options.input !== undefined) proc.stdin.end(options.input); else proc.stdin.end()
  })
}

/** Writes `config` (listen defaults to 127.0.0.1:0) into `dir/NAME.json` and starts `dst node --config` on it. */
export function startNode (dir: string, config: Record<string, unknown>, options: { timeout?: number } = {}): Promise<RunningNode> {
  const full: Record<string, unknown> = { listen: '127.0.0.1:0', ...config }
  const file = path.join(dir, `${String(full.name ?? 'node')}.json`)
  fs.writeFileSync(file, JSON.stringify(full, null, 2))
  return startProcess(['node', '--config', file], options.timeout)
}

/** Starts `dst export ...` (give --listen 127.0.0.1:0 to let the OS pick the port). */
export function startExport (args: string[], options: { timeout?: number } = {}): Promise<RunningNode> {
  return startProcess(['export', ...args], options.timeout)
}

async function startProcess (args: string[], timeout = 40000): Promise<RunningNode> {
  const spawned: ChildProcess[] = []
  const starting = spawnDst(args, { timeout, procs: spawned, keep: Number.POSITIVE_INFINITY })
  const proc = spawned[0]
  live.add(proc)
  let exited = false
  const exit = new Promise<number | null>(res => proc.on('exit', code => { exited = true; live.delete(proc); res(code) }))
  const started = await starting
  const port = started.statusPort
  if (port === null) { proc.kill('SIGKILL'); throw new Error(`dst ${args.join(' ')} printed no status address; output:\n${started.out()}`) }
  // A node with `tls` serves https and dsts:// (its status() below still asks over plain http: TLS tests query it themselves).
  const secure = /status {2}https:/.test(started.out())
  return {
    proc,
    port,
    http: `${secure ? 'https' : 'http'}://127.0.0.1:${port}`,
    url: name => `${secure ? 'dsts' : 'dst'}://127.0.0.1:${port}/${name}`,
    output: started.out,
    status: async () => {
      try {
        const res = await fetch(`http://127.0.0.1:${port}/status`)
        if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${await res.text()}`)
        return await res.json()
      } catch (err) {
        const cause = (err as { cause?: { code?: string, message?: string } }).cause
        const gone = exited ? `the process exited (code ${String(proc.exitCode)}, signal ${String(proc.signalCode)})` : 'the process is still running'
        throw new Error(`GET /status of dst ${args.join(' ')} failed: ${(err as Error).message}${cause !== undefined ? ` (${cause.code ?? ''} ${cause.message ?? ''})` : ''}; ${gone}; its last output:\n${started.out().slice(-4000)}`)
      }
    },
    stop: async () => { if (!exited) proc.kill('SIGTERM'); return await exit },
    kill: async () => { if (!exited) proc.kill('SIGKILL'); await exit },
  }
}

export interface MirrorTree {
  /** The two leaf nodes, exporting `disk` from `l1.img` and `l2.img` in the directory. */
  leaves: RunningNode[]
  /** The node whose mirror `m` has a remote leg on each leaf, exported as `m`, over NBD too. */
  top: RunningNode
  /** The port of the top node's NBD server. */
  nbdPort: number
}

/**
 * Starts two leaf nodes and a top node that mirrors them and serves the mirror over NBD, all in `dir`. Every node is
 * killed when the test ends (`teardown`).
 */
export async function startMirrorTree (t: { teardown: (fn: () => unknown) => void }, dir: string, legSize: number): Promise<MirrorTree> {
  const leaves: RunningNode[] = []
  t.teardown(async () => { await Promise.all(leaves.map(n => n.kill())) })
  for (const name of ['l1', 'l2']) {
    leaves.push(await startNode(dir, { name, dataDir: `./state-${name}`, devices: { disk: { type: 'file', path: `./${name}.img`, size: legSize } }, exports: [{ device: 'disk' }] }))
  }
  const top = await startNode(dir, {
    name: 'top', dataDir: './state-top', nbd: '127.0.0.1:0',
    devices: {
      a: { type: 'remote', url: leaves[0].url('disk') },
      b: { type: 'remote', url: leaves[1].url('disk') },
      m: { type: 'mirror', members: ['a', 'b'] },
    },
    exports: [{ device: 'm' }],
  })
  t.teardown(() => top.kill())
  const port = /nbd {5}nbd:\/\/127\.0\.0\.1:(\d+)\//.exec(top.output())?.[1]
  if (port === undefined) throw new Error(`the top node printed no NBD address:\n${top.output()}`)
  return { leaves, top, nbdPort: Number(port) }
}
