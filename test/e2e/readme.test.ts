// The README's examples, run as written, so the docs cannot drift from the code. A fenced block is an example when the
// line before it (blank lines apart) is `<!-- test: NAME [OPTION...] -->`; the blocks of one NAME run in README order
// in one temp folder, on loopback, with every README port (127.0.0.1:7001, :10809, ...) swapped for a free one:
//
// - `file=X` (a json block): written to X, which `dst node --check --config X` must accept.
// - `serve` (a sh block): each line is a node that keeps running (the README runs it in a terminal of its own); it is
//   started in the background and awaited until it prints `node NAME ready`, then killed by its pid when the test ends.
// - `output` (a plain block): every line must be in what the test's nodes printed.
// - `needs=TOOL,...`: the blocks need outside tools; without them the test is skipped, naming the tool
//   (test/helpers/requires.ts). Blocks with other needs form a test of their own.
// - otherwise (a sh block): run by `bash -e -o pipefail`, bounded, and must exit 0.
//
// `npx dst` and `dst` resolve to this checkout's tools/cli/dst.js (shims on PATH, `exec`ing node, so a pid is the
// node's); `tools` in the folder links to the checkout's, for `node tools/cli/dst.js`. `npm start` runs the embedded
// default config (package.json's start script); the tests named in NEEDS_DEFAULT_NODE start that config first.

import test, { type ExecutionContext } from 'ava'
import { spawn, type ChildProcess } from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { DEFAULT_CONFIG } from '../../node/daemon/config'
import { DST, tempDir } from '../helpers/node-process'
import { freePort } from '../helpers/ports'
import { TOOLS, testNeeding, type Tool } from '../helpers/requires'
import { within } from '../helpers/wait'

const ROOT = path.join(__dirname, '..', '..')
const README = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8')

/** The tests that run against the node `npm start` runs. */
const NEEDS_DEFAULT_NODE = new Set(['quick-start', 'nbd-clients'])

interface Block { name: string, options: Map<string, string>, lang: string, text: string, line: number }

export function markedBlocks (markdown: string): Block[] {
  const blocks: Block[] = []
  const re = /<!-- test: ([^\n]*?) -->\n(?:[ \t]*\n)*```(\w*)\n([\s\S]*?)^```/gm
  for (let m = re.exec(markdown); m !== null; m = re.exec(markdown)) {
    const [name, ...rest] = m[1].trim().split(/\s+/)
    const options = new Map(rest.map(o => { const i = o.indexOf('='); return i < 0 ? [o, ''] as [string, string] : [o.slice(0, i), o.slice(i + 1)] as [string, string] }))
    blocks.push({ name, options, lang: m[2], text: m[3], line: markdown.slice(0, m.index).split('\n').length })
  }
  return blocks
}

const TOOL_BY_COMMAND = new Map<string, Tool>(Object.values(TOOLS).map(tool => [tool.command, tool]))

function toolsNamed (needs: string): Tool[] {
  if (needs === '') return []
  return needs.split(',').map(command => {
    const tool = TOOL_BY_COMMAND.get(command)
    if (tool === undefined) throw new Error(`README: needs=${command}: not a tool test/helpers/requires.ts knows`)
    return tool
  })
}

/** Every README port in `texts`, mapped to a free loopback port. */
async function portMap (texts: string[]): Promise<Map<string, string>> {
  const map = new Map<string, string>()
  for (const text of texts) {
    for (const m of text.matchAll(/127\.0\.0\.1:(\d{2,5})\b/g)) {
      if (m[1] !== '0' && !map.has(m[1])) map.set(m[1], String(await freePort()))
    }
  }
  return map
}

function swapPorts (text: string, ports: Map<string, string>): string {
  return text.replace(/127\.0\.0\.1:(\d{2,5})\b/g, (all, port: string) => `127.0.0.1:${ports.get(port) ?? port}`)
}

/** A folder with `dst` and `npx dst` shims, and `tools` linked to the checkout's. */
function workDir (): { dir: string, env: NodeJS.ProcessEnv } {
  const dir = tempDir('dst-readme-')
  const bin = path.join(dir, '.bin')
  fs.mkdirSync(bin)
  fs.writeFileSync(path.join(bin, 'dst'), `#!/bin/sh\nexec "${process.execPath}" "${DST}" "$@"\n`, { mode: 0o755 })
  const realNpx = (process.env.PATH ?? '').split(':').map(d => path.join(d, 'npx')).find(p => fs.existsSync(p)) ?? 'npx'
  fs.writeFileSync(path.join(bin, 'npx'), `#!/bin/sh\nif [ "$1" = dst ]; then shift; exec "${process.execPath}" "${DST}" "$@"; fi\nexec "${realNpx}" "$@"\n`, { mode: 0o755 })
  fs.symlinkSync(path.join(ROOT, 'tools'), path.join(dir, 'tools'))
  return { dir, env: { ...process.env, PATH: `${bin}:${path.dirname(process.execPath)}:${process.env.PATH ?? ''}` } }
}

interface Served { proc: ChildProcess, output: () => string, exited: Promise<number | null> }

/** Starts `command` in the background (its own process group) and waits for its `node NAME ready` line. */
async function serve (command: string, dir: string, env: NodeJS.ProcessEnv, procs: Served[]): Promise<Served> {
  const proc = spawn('bash', ['-c', `exec ${command}`], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  let out = ''
  let onData: () => void = () => {}
  const collect = (c: Buffer): void => { out += c.toString(); onData() }
  proc.stdout!.on('data', collect)
  proc.stderr!.on('data', collect)
  const exited = new Promise<number | null>(resolve => proc.on('exit', code => resolve(code)))
  const served = { proc, output: () => out, exited }
  procs.push(served)
  const ready = new Promise<void>((resolve, reject) => {
    onData = () => { if (/^node \S+ ready$/m.test(out)) resolve() }
    void exited.then(code => reject(new Error(`${command} exited (${String(code)}) before it was ready:\n${out}`)))
  })
  await within(ready, 60000, `${command}: its ready line`)
  return served
}

/** SIGTERM to each served node's group (by its pid), SIGKILL if it is not gone within 10 s; in reverse order. */
async function stopAll (procs: Served[]): Promise<void> {
  for (const served of procs.reverse()) {
    if (served.proc.exitCode !== null || served.proc.signalCode !== null) continue
    try { process.kill(-served.proc.pid!, 'SIGTERM') } catch {}
    const timer = setTimeout(() => { try { process.kill(-served.proc.pid!, 'SIGKILL') } catch {} }, 10000)
    await served.exited
    clearTimeout(timer)
  }
}

/** Runs a shell block to its end, bounded; resolves with its exit code and output. */
function runShell (script: string, dir: string, env: NodeJS.ProcessEnv, ms = 180000): Promise<{ code: number | null, output: string }> {
  return new Promise((resolve, reject) => {
    const proc = spawn('bash', ['-e', '-o', 'pipefail', '-c', script], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
    let output = ''
    proc.stdout.on('data', (c: Buffer) => { output += c.toString() })
    proc.stderr.on('data', (c: Buffer) => { output += c.toString() })
    const timer = setTimeout(() => {
      try { process.kill(-proc.pid!, 'SIGKILL') } catch {}
      reject(new Error(`still running after ${ms} ms:\n${script}\n${output}`))
    }, ms)
    proc.on('error', reject)
    proc.on('close', code => { clearTimeout(timer); resolve({ code, output }) })
  })
}

async function runExamples (t: ExecutionContext, name: string, blocks: Block[]): Promise<void> {
  const { dir, env } = workDir()
  const procs: Served[] = []
  t.teardown(() => stopAll(procs))
  const defaultConfig = JSON.stringify(DEFAULT_CONFIG)
  const ports = await portMap([defaultConfig, ...blocks.map(b => b.text)])
  if (NEEDS_DEFAULT_NODE.has(name)) {
    // What `npm start` runs (`dst node --default`), on this test's ports: the same config, written out.
    fs.mkdirSync(path.join(dir, 'data'))
    fs.writeFileSync(path.join(dir, 'dst.json'), swapPorts(defaultConfig, ports))
    await serve(`"${process.execPath}" "${DST}" node --config dst.json`, dir, env, procs)
  }
  for (const block of blocks) {
    const where = `README.md:${block.line} (${name})`
    const text = swapPorts(block.text, ports)
    const file = block.options.get('file')
    if (file !== undefined) {
      fs.writeFileSync(path.join(dir, file), text)
      const r = await runShell(`dst node --check --config ${file}`, dir, env, 60000)
      t.is(r.code, 0, `${where}: ${file} does not load:\n${r.output}`)
      t.regex(r.output, /a valid config/, where)
    } else if (block.options.has('serve')) {
      for (const line of text.split('\n').map(l => l.replace(/\s+#.*$/, '').trim()).filter(l => l !== '')) {
        await serve(line, dir, env, procs)
      }
    } else if (block.options.has('output')) {
      const printed = procs.map(p => p.output()).join('')
      for (const line of text.split('\n').filter(l => l.trim() !== '')) {
        t.true(printed.includes(line), `${where}: the node did not print ${JSON.stringify(line)}; it printed:\n${printed}`)
      }
    } else {
      t.is(block.lang, 'sh', `${where}: an example to run is a sh block`)
      const r = await runShell(text, dir, env)
      t.log(`${where}:\n${r.output.trim().slice(-1000)}`)
      t.is(r.code, 0, `${where}: exit ${String(r.code)}:\n${text}\n${r.output}`)
    }
  }
  await stopAll(procs)
  for (const served of procs) t.regex(served.output(), /stopped/, `README (${name}): a node did not stop cleanly:\n${served.output()}`)
  fs.rmSync(dir, { recursive: true, force: true })
}

const groups = new Map<string, Block[]>()
for (const block of markedBlocks(README)) {
  const key = `${block.name}\0${block.options.get('needs') ?? ''}`
  groups.set(key, [...(groups.get(key) ?? []), block])
}

test('the README marks its examples: every section with commands or configs to run has some', t => {
  const names = new Set([...groups.keys()].map(k => k.split('\0')[0]))
  for (const name of ['quick-start', 'two-nodes', 'arrays', 'nbd-clients', 'config-reference']) t.true(names.has(name), name)
  for (const block of markedBlocks(README)) {
    t.true(block.options.has('file') || block.options.has('output') || block.lang === 'sh', `README.md:${block.line}`)
  }
})

test('every example in the README, marked or not, uses loopback 127.0.0.1 only', t => {
  for (const m of README.matchAll(/^```\w*\n([\s\S]*?)^```/gm)) {
    const line = README.slice(0, m.index).split('\n').length
    for (const address of m[1].matchAll(/\b\d+\.\d+\.\d+\.\d+\b(?!\/)|\blocalhost\b|\[[0-9a-f:]+\]:\d+/g)) {
      t.is(address[0], '127.0.0.1', `README.md:${line}: ${address[0]}`)
    }
  }
})

for (const [key, blocks] of groups) {
  const [name, needs] = key.split('\0')
  testNeeding(toolsNamed(needs))(`README examples '${name}'${needs !== '' ? ` (${needs})` : ''} run as written`, async t => {
    await runExamples(t, name, blocks)
  })
}
