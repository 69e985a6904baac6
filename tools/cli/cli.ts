// The `dst` command line: `dst <verb> ...` with --help on every verb, errors on stderr, exit 2 on bad usage or config.

import { parseArgs, type ParseArgsConfig } from 'node:util'
import * as path from 'node:path'
import { ConfigError, DstError, ErrorCode } from '../../node/core/errors'
import { DEFAULT_CONFIG, loadConfigFile, parseConfig, type NodeConfig } from '../../node/daemon/config'
import { formatSize, requireSize } from '../../node/core/size'
import * as fs from 'node:fs'
import { parseDuration } from '../../node/core/duration'
import { nodeBase } from '../../node/core/url'
import { DstNode } from '../../node/daemon/node'
import { dstVersion } from '../../node/core/version'
import { copy, isDstUrl, ProgressBar } from './copy'
import type { ClientTls } from '../../export/native/client'
import { fetchFailure, fetchStatus, renderStatus } from './status'
import { renderTree, TreeCrawler, treeJson } from '../../node/daemon/tree'
import { follow, treeNodes } from './events'

const USAGE = `dst: a distributed storage tree

usage: dst <verb> [options]

verbs:
  node     run a node from a config file
  export   export one file without a config
  copy     copy between files, stdin/stdout and dst:// URLs
  status   show a node's devices and exports
  array    add, remove, split off or replace a mirror leg on a running node
  verify   compare a mirror's legs by digest while it runs, and repair them
  events   print a node's state changes as they happen (or the whole tree's)

Run 'dst <verb> --help' for a verb's options; 'dst --version' prints the version.`

const HELP: Record<string, string> = {
  events: `usage: dst events [http://HOST:PORT] [--tree] [--json]

Prints a node's state changes as they happen (GET /events), one line each:
TIME NODE KIND key:value..., e.g.
  2026-12-02T14:54:07.055Z mid leg-failed device:m leg:a state:in-sync->failed
It starts with the node's state now ('exists' lines, then 'exists -'). A node
whose stream ends is reported ('unreachable') and tried again each second
(30 times in a row at most). Runs until interrupted.

  --tree   follow every node of the tree from this one down (dst status --tree)
  --json   print each event as the node sends it: one JSON object a line
  --help   this text`,
  node: `usage: dst node --config FILE
       dst node --default
       dst node --check --config FILE

Runs a node in the foreground: opens the config's devices and serves its exports
(native protocol over WebSocket, plus HTTP /status and /metrics on the same port).
SIGINT or SIGTERM stops accepting, finishes requests in flight, flushes and exits 0.

  --config FILE   the node's JSON config (see the README)
  --default       the embedded default config: ./data/disk0.img (1 GiB sparse)
                  exported as dst://127.0.0.1:7001/disk0 and
                  nbd://127.0.0.1:10809/disk0
  --check         check the config and the files it names, start nothing:
                  the same messages and exit codes as a start (2: bad config)
  --help          this text`,
  export: `usage: dst export FILE --listen HOST:PORT [--nbd HOST:PORT] [--name NAME] [--size SIZE]
                  [--read-only] [--allow CIDR]... [--token TOKEN] [--shared] [--digest]

Exports one file (or block device) without a config. A missing FILE is created
sparse with --size.

  --listen HOST:PORT  address to serve on (port 0 picks a free one)
  --nbd HOST:PORT     also serve it to NBD clients (qemu, nbd-client, libnbd, fio)
  --name NAME         export name (default: the file's base name)
  --size SIZE         size in bytes or KiB/MiB/GiB/TiB (creates or grows FILE)
  --read-only         refuse writes
  --allow CIDR        client addresses allowed (repeatable; default loopback only)
  --token TOKEN       shared secret clients must present
  --shared            allow several writers at once (no write lease)
  --digest            wire digests: every payload carries a digest checked on receipt
  --help              this text`,
  copy: `usage: dst copy SRC DST [--offset N] [--length N] [--token TOKEN] [--ca FILE] [--cert FILE --key FILE]

Copies bytes between local files or block devices, '-' (stdin or stdout) and
dst://HOST:PORT/NAME (dsts:// over TLS) URLs, with many requests in flight. Sparse-aware: holes of
a dst:// source or a sparse file are not read, zeros are not written; the destination gets holes
there (a file is left sparse or punched, an export trimmed). Shows a progress
bar when stderr is a terminal, and ends with one summary line on stderr (bytes,
seconds, MiB/s, holes and zeros skipped) unless --quiet.

  --offset N        byte offset on the dst:// side (both sides if both are dst://)
  --length N        bytes to copy (default: all of the source)
  --token TOKEN     token for the dst:// export(s)
  --ca FILE         dsts:// (TLS): the CA the node's certificate must chain to
                    (default: the system's, and NODE_EXTRA_CA_CERTS)
  --cert FILE, --key FILE
                    dsts://: the client certificate (PEM) and its key to present
  --chunk SIZE      bytes per request (default 1MiB)
  --in-flight N     requests in flight (default 16)
  --no-progress     never draw the progress bar
  --quiet           no progress bar and no summary line
  --help            this text`,
  array: `usage: dst array add     NODE_URL ARRAY DEVICE [--name NAME] [--token TOKEN]
       dst array remove  NODE_URL ARRAY LEG
       dst array split   NODE_URL ARRAY LEG [--export NAME [--writable]]
       dst array replace NODE_URL ARRAY LEG

Changes a mirror on a running node (NODE_URL is its http://HOST:PORT). I/O is held
only for the switch; the change is kept in the node's dataDir, so a restart keeps it.

  add      DEVICE is a device of that node not used elsewhere, or a dst:// URL (a
           remote device is created, named NAME); everything on the new leg is
           overwritten by a full sync
  remove   drops a leg (never the last in-sync one)
  split    detaches an in-sync leg as a consistent point-in-time copy, usable on
           its own; --export serves it under that name
  replace  takes on the disk now behind a foreign leg (another disk answers at its
           address, or a leg new to the array holds data): that disk is
           overwritten by a full sync. On a linear array, a foreign remote member
           takes on the disk found, with nothing copied

  --wait              add: wait until the new leg is in sync (a progress bar of its
                      resync on a terminal; exit 1 if the leg fails meanwhile)
  --no-progress       with --wait: no progress bar
  --name NAME         name for a remote device added by URL
  --token TOKEN       token of the dst:// export added
  --export NAME       export the split-off leg as NAME (read-only: a snapshot)
  --writable          with --export: export it read-write instead
  --admin-token T     the node's admin token, if it has one
  --help              this text`,
  verify: `usage: dst verify NODE_URL ARRAY [--repair [--from LEG]] [--rate SIZE] [--json]

Compares every region of a mirror on all its legs, by digests computed on the
nodes that hold the legs, while I/O goes on. Prints the regions that differ.
Exit status: 0 when every leg was compared and they agree (or every mismatch
was repaired), 1 when mismatches are left (or the verify failed), 2 on bad
usage, 3 when part of the array could not be compared on every leg (a leg
down, foreign or stale: "leg b down: 256 MiB not compared").

  --repair        mark mismatched regions stale on the legs that differ and
                  resync them from the reference leg; waits for that resync
  --from LEG      the reference leg (the one that is right); without it a
                  strict majority of 3+ legs decides, and 2 legs are only reported
  --rate SIZE     most bytes per second to compare (default: no limit)
  --json          print the final report as JSON
  --no-progress   never draw the progress bar (drawn when stderr is a terminal)
  --admin-token T the node's admin token, if it has one
  --help          this text`,
  status: `usage: dst status [http://HOST:PORT] [--json] [--tree [--timeout DURATION]]

Prints a node's devices as a tree with state and size, and its exports.

  URL        the node's listen address (default http://127.0.0.1:7001)
  --json     print the raw /status JSON (with --tree: the whole tree as one
             nested document, children under "children")
  --tree     follow every remote device to the node that serves it and draw
             the whole tree across nodes; a node that cannot be reached is
             drawn as unreachable, the rest is still drawn
  --timeout  with --tree: how long to wait for each node (default 3s)
  --help     this text`,
}

/** Bad command-line usage: the CLI prints the message and exits 2. */
class UsageError extends DstError {
  constructor (message: string) { super(ErrorCode.USAGE, message) }
}
/** `--help` was asked for: the verb stops and its help text is printed. Control flow, not an error (never leaves the CLI). */
class HelpShown extends Error {}

/**
 * Writes the last words and exits once they are out: writes to a pipe are asynchronous, and process.exit() right
 * after one can lose it. A write that never completes (a reader gone) does not hold the exit for long.
 */
function exitWith (code: number, stream: NodeJS.WriteStream, text: string): void {
  setTimeout(() => process.exit(code), 2000)
  stream.write(text, () => process.exit(code))
}

function parse (verb: string, argv: string[], options: ParseArgsConfig['options']): { values: Record<string, unknown>, positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({ args: argv, options: { ...options, help: { type: 'boolean' } }, allowPositionals: true, strict: true })
    if (values.help === true) throw new HelpShown(HELP[verb])
    return { values: values as Record<string, unknown>, positionals }
  } catch (err) {
    if (err instanceof HelpShown) throw err
    throw new UsageError(parseFailure(verb, err as NodeJS.ErrnoException, Object.keys(options ?? {})))
  }
}

/** A node's HTTP base from an argument (HOST:PORT, [V6]:PORT or http://HOST:PORT), or a usage error. */
function httpBase (value: string): string {
  const r = nodeBase(value)
  if (typeof r === 'string') throw new UsageError(r)
  return r.base
}

/** A node's http(s):// URL for the admin verbs (array, verify), which take only that form. */
function httpUrl (value: string): string {
  if (!/^https?:\/\//.test(value)) throw new UsageError(`'${value}' is not an http://HOST:PORT address`)
  return value
}

/** Node's parseArgs errors, said the way the rest of the CLI speaks: the option as typed, the nearest known one. */
function parseFailure (verb: string, err: NodeJS.ErrnoException, known: string[]): string {
  const help = `see 'dst ${verb} --help'`
  const typed = /'(-{1,2}[^' ]+)/.exec(err.message)?.[1]
  if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && typed !== undefined) {
    const near = nearest(typed.replace(/^-+/, ''), [...known, 'help'])
    return `unknown option '${typed}'${near !== null ? ` (did you mean --${near}?)` : ''}; ${help}`
  }
  if (err.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && typed !== undefined) {
    return /argument missing/.test(err.message) ? `${typed} needs a value; ${help}` : `${typed} takes no value; ${help}`
  }
  return `${err.message}; ${help}`
}

/** The known name closest to `typed` by edit distance, if it is close enough to be a typo (at most 2 edits, or 1 for short names). */
export function nearest (typed: string, known: string[]): string | null {
  let best: string | null = null
  let bestDistance = Infinity
  for (const k of known) {
    const d = editDistance(typed, k)
    if (d < bestDistance) { best = k; bestDistance = d }
  }
  return best !== null && bestDistance <= (best.length <= 4 ? 1 : 2) ? best : null
}

function editDistance (a: string, b: string): number {
  // Optimal string alignment: insertions, deletions, substitutions and swaps of two neighbours cost one each.
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => i === 0 ? j : j === 0 ? i : 0))
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1))
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1)
    }
  }
  return d[a.length][b.length]
}

export async function main (argv: string[]): Promise<void> {
  const [verb, ...rest] = argv
  try {
    switch (verb) {
      case undefined:
      case '-h':
      case '--help':
      case 'help':
        if (rest[0] !== undefined && HELP[rest[0]] !== undefined) { process.stdout.write(HELP[rest[0]] + '\n'); return }
        process.stdout.write(USAGE + '\n')
        if (verb === undefined) process.exitCode = 2
        return
      case '-V':
      case '--version':
        process.stdout.write(`dst ${dstVersion()}\n`)
        return
      case 'node': return await nodeVerb(rest)
      case 'export': return await exportVerb(rest)
      case 'copy': return await copyVerb(rest)
      case 'status': return await statusVerb(rest)
      case 'array': return await arrayVerb(rest)
      case 'verify': return await verifyVerb(rest)
      case 'events': return await eventsVerb(rest)
      default:
      {
        const near = nearest(verb, ['node', 'export', 'copy', 'status', 'array', 'verify', 'events'])
        throw new UsageError(`unknown verb '${verb}'${near !== null ? ` (did you mean '${near}'?)` : ''}; see 'dst --help'`)
      }
    }
  } catch (err) {
    if (err instanceof HelpShown) { exitWith(0, process.stdout, `${err.message}\n`); return }
    if (err instanceof UsageError) { exitWith(2, process.stderr, `dst ${verb ?? ''}: ${err.message}\n`); return }
    if (err instanceof ConfigError) { exitWith(2, process.stderr, `dst ${verb}: ${err.message}\n`); return }
    exitWith(1, process.stderr, `dst ${verb}: ${(err as Error).message}\n`)
  }
}

async function nodeVerb (argv: string[]): Promise<void> {
  const { values, positionals } = parse('node', argv, { config: { type: 'string' }, default: { type: 'boolean' }, check: { type: 'boolean' } })
  if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}'`)
  if (values.check === true) {
    // The checks of a start that need nothing started: the config, the files it names, the dataDir's place.
    if (typeof values.config !== 'string') throw new UsageError('--check needs --config FILE')
    const config = loadConfigFile(values.config)
    const arrays = [...config.devices.values()].filter(d => 'members' in d).length
    process.stdout.write(`${values.config}: a valid config for node ${config.name}: ${config.devices.size} devices (${arrays} arrays), ${config.exports.length} exports; remote peers are not contacted\n`)
    return
  }
  let config: NodeConfig
  if (typeof values.config === 'string') {
    config = loadConfigFile(values.config)
  } else if (values.default === true) {
    const base = process.cwd()
    const fs = await import('node:fs')
    fs.mkdirSync(path.join(base, 'data'), { recursive: true })
    config = parseConfig(DEFAULT_CONFIG, base, 'default config')
  } else {
    throw new UsageError('give --config FILE (or --default for the embedded default config)')
  }
  await runNode(config)
}

async function exportVerb (argv: string[]): Promise<void> {
  const { values, positionals } = parse('export', argv, {
    listen: { type: 'string' }, name: { type: 'string' }, size: { type: 'string' }, 'read-only': { type: 'boolean' },
    allow: { type: 'string', multiple: true }, token: { type: 'string' }, shared: { type: 'boolean' },
    nbd: { type: 'string' }, digest: { type: 'boolean' },
  })
  if (positionals.length !== 1) throw new UsageError(positionals.length === 0 ? 'give the FILE to export' : `unexpected argument '${positionals[1]}'`)
  if (typeof values.listen !== 'string') throw new UsageError('give --listen HOST:PORT')
  const file = path.resolve(positionals[0])
  const name = typeof values.name === 'string' ? values.name : path.basename(file).replace(/[^A-Za-z0-9._-]/g, '_')
  let size: number | undefined
  if (typeof values.size === 'string') {
    try { size = requireSize(values.size, '--size') } catch (err) { throw new UsageError((err as Error).message) }
  }
  const raw = {
    name: 'export',
    listen: values.listen,
    ...(typeof values.nbd === 'string' ? { nbd: values.nbd } : {}),
    devices: { [name]: { type: 'file', path: file, ...(size !== undefined ? { size } : {}), ...(values['read-only'] === true ? { readOnly: true } : {}) } },
    exports: [{ device: name, name, readOnly: values['read-only'] === true, shared: values.shared === true, digest: values.digest === true, ...(values.allow !== undefined ? { allow: values.allow } : {}), ...(values.token !== undefined ? { token: values.token } : {}) }],
  }
  let config: NodeConfig
  try {
    config = parseConfig(raw, process.cwd(), 'dst export')
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(exportOption(err.message, name))
    throw err
  }
  config.dataDir = null
  await runNode(config)
}

/**
 * A config error of the config `dst export` builds, said in terms of what the user typed: `--size` rather than
 * devices.NAME.size (the config exists only inside the command).
 */
function exportOption (message: string, name: string): string {
  const m = /^dst export: ([^:]+): (.*)$/s.exec(message)
  if (m === null) return message
  const [, field, problem] = m
  const options: Array<[RegExp, string]> = [
    [new RegExp(`^devices\\.${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\.size$`), '--size'],
    [/^devices\..*\.path$/, 'FILE'],
    [/^devices/, '--name'],
    [/^exports\[0\]\.allow(\[\d+\])?$/, '--allow'],
    [/^exports\[0\]\.token$/, '--token'],
    [/^exports\[0\]\.name$/, '--name'],
    [/^listen$/, '--listen'],
    [/^nbd$/, '--nbd'],
  ]
  const option = options.find(([re]) => re.test(field))?.[1] ?? field
  return `${option}: ${problem.replace('give a size to create it', 'give --size to create it')}`
}

async function runNode (config: NodeConfig): Promise<void> {
  const node = new DstNode(config)
  // The handlers come first, so a signal during the start (systemd stopping a node that is still opening its
  // devices) also ends with a clean stop and the stopped line, never with the default kill.
  let stopping = false
  let starting: Promise<unknown> = Promise.resolve()
  const stop = (signal: string): void => {
    if (stopping) { exitWith(1, process.stderr, `[${config.name}] second ${signal}: exiting now\n`); return }
    stopping = true
    process.stderr.write(`[${config.name}] ${signal}: finishing requests in flight, flushing\n`)
    starting.catch(() => {}).then(() => node.stop()).then(
      () => exitWith(0, process.stderr, `[${config.name}] stopped\n`),
      err => exitWith(1, process.stderr, `[${config.name}] stop failed: ${(err as Error).message}\n`))
  }
  process.on('SIGINT', () => stop('SIGINT'))
  process.on('SIGTERM', () => stop('SIGTERM'))
  starting = node.start()
  await starting
  if (stopping) return
  for (const line of node.addresses()) process.stdout.write(`${line}\n`)
  process.stdout.write(`node ${config.name} ready\n`)
}

/** `dst copy`'s TLS files, read now (a missing one is a usage error naming the option). */
function copyTls (ca: string | undefined, cert: string | undefined, key: string | undefined): ClientTls | undefined {
  if (ca === undefined && cert === undefined) return undefined
  const read = (file: string, option: string): Buffer => {
    try { return fs.readFileSync(file) } catch (err) { throw new UsageError(`${option}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`) }
  }
  return {
    ...(ca !== undefined ? { ca: read(ca, '--ca') } : {}),
    ...(cert !== undefined && key !== undefined ? { cert: read(cert, '--cert'), key: read(key, '--key') } : {}),
  }
}

async function copyVerb (argv: string[]): Promise<void> {
  const { values, positionals } = parse('copy', argv, {
    offset: { type: 'string' }, length: { type: 'string' }, token: { type: 'string' },
    chunk: { type: 'string' }, 'in-flight': { type: 'string' }, 'no-progress': { type: 'boolean' }, quiet: { type: 'boolean' },
    ca: { type: 'string' }, cert: { type: 'string' }, key: { type: 'string' },
  })
  if (positionals.length !== 2) throw new UsageError('give SRC and DST')
  const [src, dst] = positionals
  if ((values.cert === undefined) !== (values.key === undefined)) throw new UsageError('give --cert and --key together (the client certificate and its key)')
  const tls = copyTls(values.ca as string | undefined, values.cert as string | undefined, values.key as string | undefined)
  if (!isDstUrl(src) && !isDstUrl(dst)) {
    if (values.offset !== undefined) throw new UsageError('--offset is the byte offset on a dst:// side, and neither SRC nor DST is one')
    if (src !== '-' && dst !== '-' && sameFile(src, dst)) throw new UsageError(`SRC and DST are the same file (${src})`)
  }
  let offset = 0
  let length: number | undefined
  let chunk = 1024 * 1024
  let inFlight = 16
  try {
    if (typeof values.offset === 'string') offset = requireSize(values.offset, '--offset')
    if (typeof values.length === 'string') length = requireSize(values.length, '--length')
    if (typeof values.chunk === 'string') chunk = requireSize(values.chunk, '--chunk')
    if (typeof values['in-flight'] === 'string') inFlight = requireSize(values['in-flight'], '--in-flight')
  } catch (err) { throw new UsageError((err as Error).message) }
  if (chunk < 512 || chunk > 64 * 1024 * 1024) throw new UsageError('--chunk must be between 512 and 64MiB')
  if (inFlight < 1 || inFlight > 1024) throw new UsageError('--in-flight must be between 1 and 1024')
  const began = performance.now()
  const stats = { holeBytes: 0, zeroBytes: 0 }
  const total = await copy(src, dst, {
    offset, length, chunk, inFlight, token: values.token as string | undefined, stats, ...(tls !== undefined ? { tls } : {}),
    progress: process.stderr.isTTY && values['no-progress'] !== true && values.quiet !== true,
  })
  const seconds = (performance.now() - began) / 1000
  const sparse = stats.holeBytes + stats.zeroBytes > 0 ? `; ${formatSize(stats.holeBytes)} of holes not read, ${formatSize(stats.zeroBytes)} of zeros not written` : ''
  // One summary line on stderr, terminal or not (scripts and logs see it too), unless --quiet.
  if (values.quiet !== true) process.stderr.write(`copied ${total} bytes (${formatSize(total)}) in ${seconds.toFixed(2)} s, ${(total / 1048576 / Math.max(seconds, 1e-6)).toFixed(1)} MiB/s${sparse}\n`)
}

/** Whether two paths name one file (same device and inode); a path that does not exist yet is no file. */
function sameFile (a: string, b: string): boolean {
  try {
    const x = fs.statSync(a)
    const y = fs.statSync(b)
    return x.dev === y.dev && x.ino === y.ino
  } catch {
    return false
  }
}

async function statusVerb (argv: string[]): Promise<void> {
  const { values, positionals } = parse('status', argv, { json: { type: 'boolean' }, tree: { type: 'boolean' }, timeout: { type: 'string' } })
  if (positionals.length > 1) throw new UsageError(`unexpected argument '${positionals[1]}'`)
  const base = httpBase(positionals[0] ?? DEFAULT_CONFIG.listen)
  if (values.tree === true) {
    const timeout = values.timeout === undefined ? 3000 : parseDuration(values.timeout)
    if (typeof timeout === 'string' || timeout < 1 || timeout > 600000) throw new UsageError(`--timeout ${String(values.timeout)}: expected a duration like 3s or 500ms`)
    const tree = await new TreeCrawler({ timeout }).crawl(base.replace(/\/+$/, ''))
    process.stdout.write(values.json === true ? JSON.stringify(treeJson(tree), null, 2) + '\n' : renderTree(tree) + '\n')
    return
  }
  if (values.timeout !== undefined) throw new UsageError('--timeout is for --tree (how long to wait for each node)')
  const status = await fetchStatus(base)
  process.stdout.write(values.json === true ? JSON.stringify(status, null, 2) + '\n' : renderStatus(status) + '\n')
}

async function eventsVerb (argv: string[]): Promise<void> {
  const { values, positionals } = parse('events', argv, { json: { type: 'boolean' }, tree: { type: 'boolean' } })
  if (positionals.length > 1) throw new UsageError(`unexpected argument '${positionals[1]}'`)
  const base = httpBase(positionals[0] ?? DEFAULT_CONFIG.listen).replace(/\/+$/, '')
  const out = (line: string): void => { process.stdout.write(line + '\n') }
  const nodes = values.tree === true ? await treeNodes(base) : [base]
  await Promise.all(nodes.map(b => follow(b, { json: values.json === true, out })))
}

async function arrayVerb (argv: string[]): Promise<void> {
  const { values, positionals } = parse('array', argv, {
    name: { type: 'string' }, token: { type: 'string' }, export: { type: 'string' }, 'read-only': { type: 'boolean' }, writable: { type: 'boolean' },
    wait: { type: 'boolean' }, 'no-progress': { type: 'boolean' },
    'admin-token': { type: 'string' },
  })
  const [action, node, array, device, extra] = positionals
  if (action === undefined || !['add', 'remove', 'split', 'replace'].includes(action)) throw new UsageError('give add, remove, split or replace (try dst array --help)')
  if (node === undefined || array === undefined || device === undefined) throw new UsageError(`usage: dst array ${action} NODE_URL ARRAY ${action === 'add' ? 'DEVICE' : 'LEG'}`)
  if (extra !== undefined) throw new UsageError(`unexpected argument '${extra}'`)
  const base = httpUrl(node)
  const body: Record<string, unknown> = { device }
  if (typeof values.name === 'string') body.name = values.name
  if (typeof values.token === 'string') body.token = values.token
  if (typeof values.export === 'string') body.export = values.export
  if (values['read-only'] === true && values.writable === true) throw new UsageError('give --writable or --read-only, not both')
  if (values['read-only'] === true) body.readOnly = true
  if (values.writable === true) body.writable = true
  if (values.wait === true && action !== 'add') throw new UsageError('--wait is for add (a new leg comes in sync)')
  const answer = await postArrayAction(base, array, action, body, values['admin-token'], 120000) as { message?: string, leg?: string }
  process.stdout.write(`${answer.message ?? 'done'}\n`)
  if (values.wait === true) await waitInSync(base, array, answer.leg ?? device, values['no-progress'] !== true && process.stderr.isTTY)
}

/**
 * `dst array add --wait`: follows the node's /status until the new leg is in sync, with a progress bar of its resync
 * on a terminal. A leg that fails, an array that goes away or a node that stops answering ends the wait with exit 1.
 */
async function waitInSync (base: string, array: string, leg: string, progress: boolean): Promise<void> {
  let bar: ProgressBar | null = null
  let failures = 0
  for (;;) {
    let st: { devices: Record<string, { members?: Array<{ name: string, state: string, resync?: { doneBytes: number, totalBytes: number } }> }> }
    try {
      st = await fetchStatus(base) as typeof st
      failures = 0
    } catch (err) {
      if (++failures >= 20) throw new Error(`lost the node while waiting for leg '${leg}': ${(err as Error).message}`)
      await new Promise(resolve => setTimeout(resolve, 250))
      continue
    }
    const l = st.devices[array]?.members?.find(m => m.name === leg)
    if (l === undefined) throw new Error(`the node no longer reports leg '${leg}' of '${array}'`)
    if (l.state === 'in-sync') {
      bar?.done(l.resync?.totalBytes ?? 0)
      process.stdout.write(`leg '${leg}' of '${array}' is in sync\n`)
      return
    }
    if (l.state === 'failed' || l.state === 'foreign') throw new Error(`leg '${leg}' of '${array}' is ${l.state}; it will not come in sync by itself`)
    if (progress && l.resync !== undefined) {
      bar ??= new ProgressBar(l.resync.totalBytes)
      bar.update(l.resync.doneBytes)
    }
    await new Promise(resolve => setTimeout(resolve, 250))
  }
}

/** POST /arrays/ARRAY/ACTION on a node (the admin endpoints); the node's error message becomes the thrown error. */
async function postArrayAction (node: string, array: string, action: string, body: Record<string, unknown>,
  adminToken: unknown, timeout: number): Promise<Record<string, unknown>> {
  const url = new URL(`/arrays/${encodeURIComponent(array)}/${action}`, node).toString()
  const headers: Record<string, string> = { 'content-type': 'application/json' }
  if (typeof adminToken === 'string') headers.authorization = `Bearer ${adminToken}`
  let res: Response
  try {
    res = await fetch(url, { method: 'POST', headers, body: JSON.stringify(body), signal: AbortSignal.timeout(timeout) })
  } catch (err) {
    throw new DstError(ErrorCode.HTTP, `${url}: ${fetchFailure(err)}`)
  }
  const answer = await res.json().catch(() => ({})) as Record<string, unknown>
  if (res.status === 401) {
    const what = action === 'verify' ? 'a verify' : `dst array ${action}`
    throw new DstError(ErrorCode.HTTP, typeof adminToken === 'string' ? `the node refused the admin token given with --admin-token (${what})` : `the node has an admin token: give it with --admin-token T (${what})`)
  }
  const reason = typeof answer.error === 'string' ? answer.error : `HTTP ${res.status}`
  // 400: the request itself is wrong (a leg that does not exist, a bad field): bad usage, exit 2.
  if (res.status === 400) throw new UsageError(reason)
  if (!res.ok) throw new DstError(ErrorCode.HTTP, reason)
  return answer
}

interface VerifyAnswer {
  state: 'running' | 'done' | 'incomplete' | 'failed'
  incomplete: string | null
  startedAt: string
  totalBytes: number
  doneBytes: number
  comparedBytes: number
  skippedBytes: number
  seconds: number
  mismatches: number
  repairedRegions: number
  mismatchedRegions: Array<{ offset: number, length: number, chunks: number, legs: string[], reference: string | null, repaired: boolean }>
  error: string | null
}

async function verifyVerb (argv: string[]): Promise<void> {
  const { values, positionals } = parse('verify', argv, {
    repair: { type: 'boolean' }, from: { type: 'string' }, rate: { type: 'string' }, json: { type: 'boolean' },
    'no-progress': { type: 'boolean' }, 'admin-token': { type: 'string' },
  })
  const [node, array, extra] = positionals
  if (node === undefined || array === undefined) throw new UsageError('usage: dst verify NODE_URL ARRAY [--repair [--from LEG]]')
  if (extra !== undefined) throw new UsageError(`unexpected argument '${extra}'`)
  const base = httpUrl(node)
  if (values.from !== undefined && values.repair !== true) throw new UsageError('--from names the leg to repair from: give --repair too')
  const body: Record<string, unknown> = { repair: values.repair === true }
  if (typeof values.from === 'string') body.from = values.from
  if (typeof values.rate === 'string') {
    try { body.rate = requireSize(values.rate, '--rate') } catch (err) { throw new UsageError((err as Error).message) }
  }
  const answer = await postArrayAction(base, array, 'verify', body, values['admin-token'], 30000) as { verify?: VerifyAnswer }
  if (answer.verify === undefined) throw new DstError(ErrorCode.VERIFY, `${base}: the node's answer has no verify report`)
  let report = answer.verify
  const bar = process.stderr.isTTY && values['no-progress'] !== true ? new ProgressBar(report.totalBytes) : null
  // Progress and the result are in the node's /status; a node that goes away mid-verify is an error, not a hang.
  let failures = 0
  while (report.state === 'running') {
    await new Promise(resolve => setTimeout(resolve, 250))
    try {
      const status = await fetchStatus(base) as { verify?: Record<string, VerifyAnswer> }
      const now = status.verify?.[array]
      if (now === undefined || now.startedAt !== report.startedAt) throw new DstError(ErrorCode.VERIFY, `the node no longer reports this verify of '${array}' (restarted?)`)
      report = now
      failures = 0
    } catch (err) {
      if (++failures >= 20) throw new DstError(ErrorCode.VERIFY, `lost the node while verifying: ${(err as Error).message}`)
    }
    bar?.update(report.doneBytes, `  ${report.mismatches} mismatched`)
  }
  bar?.done(report.doneBytes, `  ${report.mismatches} mismatched`)
  if (values.json === true) {
    process.stdout.write(JSON.stringify(report, null, 2) + '\n')
  } else {
    const mib = report.comparedBytes / 1048576
    process.stdout.write(`verify of '${array}' ${report.state}: ${mib.toFixed(1)} MiB compared in ${report.seconds.toFixed(1)} s` +
      ` (${(mib / Math.max(0.001, report.seconds)).toFixed(1)} MiB/s), ${report.skippedBytes} bytes skipped (not held by enough legs or members to compare)\n`)
    for (const m of report.mismatchedRegions) {
      process.stdout.write(`  mismatch at ${m.offset}+${m.length}: ${m.chunks} chunk(s) differ on ${m.legs.join(', ')}` +
        `${m.reference === null ? ' (no reference: repair with --from LEG)' : m.repaired ? `, repaired from ${m.reference}` : ''}\n`)
    }
    if (report.mismatches > report.mismatchedRegions.length) process.stdout.write(`  ... ${report.mismatches - report.mismatchedRegions.length} more\n`)
    process.stdout.write(`${report.mismatches} mismatched region(s)${report.repairedRegions > 0 ? `, ${report.repairedRegions} repaired` : ''}\n`)
  }
  if (report.state === 'failed') throw new DstError(ErrorCode.VERIFY, `verify failed: ${report.error ?? 'unknown error'}`)
  if (report.mismatches > report.repairedRegions) process.exitCode = 1
  else if (report.state === 'incomplete') {
    process.stderr.write(`dst verify: incomplete: ${report.incomplete ?? 'part of the array was not compared'}\n`)
    process.exitCode = 3
  }
}
