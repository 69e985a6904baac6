// A fault-injection TCP proxy for tests and soak runs: sits between dst nodes on loopback (or inside network
// namespaces) and, on command, passes traffic, stalls it (a silent peer: no FIN, no RST, nothing delivered), drops
// connections, cuts them with RST, delays every chunk, or corrupts a byte of the next few large chunks (a link that
// flips bits behind TCP's checksum). Used as a class (FaultProxy) or as a process:
//   node -r ts-node/register/transpile-only tools/dev/fault-proxy.ts --target HOST:PORT [--listen HOST:PORT] [--allow-any]
// prints `ready PORT`, then reads `pass | stall | drop | cut | delay MS | corrupt N | stats` lines on stdin; stdin
// closing ends it.

import * as net from 'node:net'
import * as readline from 'node:readline'
import { parseArgs } from 'node:util'

export interface Address { host: string, port: number }
export type FaultMode = 'pass' | 'stall' | 'drop'

// Bytes held per direction before the proxy stops reading from the sender, so a stall or a long delay pushes back on
// the sender through TCP (as a stalled link would) instead of buffering without bound.
const HOLD_LIMIT = 4 * 1024 * 1024

/** What a sender sent, in order: data, its FIN, or its connection failing. */
type Item = Buffer | 'end' | 'reset'

function reset (socket: net.Socket): void {
  if (socket.destroyed) return
  // resetAndDestroy() on a socket still connecting would wait for the connection only to reset it. On a socket whose
  // end() was called, libuv refuses the reset while the shutdown is pending (EINVAL); a refused reset is the suspect
  // for a handle that never finished closing and kept a soak spinning at exit. Such a socket (its FIN already sent)
  // is destroyed instead.
  if (socket.connecting || socket.writableEnded) socket.destroy(); else socket.resetAndDestroy()
}

/** One direction of one connection: what `from` sent, held until it is due and the proxy passes, then written to `to`. */
class Flow {
  private items: Array<{ item: Item, due: number } | undefined> = []
  private head = 0 // items[head..] are pending; the array is emptied whenever it drains, so taking from it is O(1)
  private held = 0
  private timer: NodeJS.Timeout | null = null
  private draining = false

  constructor (private readonly link: Link, private readonly from: net.Socket, public to: net.Socket | null,
    private readonly sent: (bytes: number) => void, private readonly upstream: boolean) {
    from.on('data', (chunk: Buffer) => this.push(chunk))
    from.on('end', () => this.push('end'))
    from.on('error', () => this.push('reset'))
  }

  private push (item: Item): void {
    if (this.link.dead) return
    this.items.push({ item, due: Date.now() + this.link.proxy.delayMs })
    if (typeof item !== 'string' && (this.held += item.length) >= HOLD_LIMIT) this.from.pause()
    this.pump()
  }

  pump (): void {
    if (this.timer !== null || this.draining) return
    while (this.head < this.items.length && this.link.proxy.mode === 'pass' && this.to !== null && !this.link.dead) {
      const { item, due } = this.items[this.head] as { item: Item, due: number }
      const wait = due - Date.now()
      if (wait > 0) { this.timer = setTimeout(() => { this.timer = null; this.pump() }, wait); return }
      this.items[this.head++] = undefined
      if (item === 'reset') { this.link.kill('reset'); return }
      if (item === 'end') { this.to.end(); continue }
      const wasFull = this.held >= HOLD_LIMIT
      this.held -= item.length
      if (wasFull && this.held < HOLD_LIMIT) this.from.resume()
      if (this.to.destroyed || this.to.writableEnded) continue
      this.sent(item.length)
      this.link.proxy.maybeCorrupt(item, this.upstream)
      if (!this.to.write(item)) { this.draining = true; this.to.once('drain', () => { this.draining = false; this.pump() }); return }
    }
    if (this.head === this.items.length) { this.items = []; this.head = 0 }
  }

  stop (): void { if (this.timer !== null) clearTimeout(this.timer); this.timer = null }
}

/** An accepted connection and, once it is forwarded, its connection to the target. */
class Link {
  dead = false
  private server: net.Socket | null = null
  private readonly up: Flow
  private down: Flow | null = null

  constructor (readonly proxy: FaultProxy, private readonly client: net.Socket) {
    client.setNoDelay(true)
    this.up = new Flow(this, client, null, bytes => { proxy.counters.bytesUp += bytes }, true)
    // A connection never forwarded has nobody to hold a close back from.
    client.on('close', () => { if (this.server === null) this.kill('destroy'); else this.closed() })
  }

  get forwarded (): boolean { return this.server !== null }

  connect (target: Address): void {
    const server = this.server = net.connect({ ...target, allowHalfOpen: true, noDelay: true })
    this.down = new Flow(this, server, this.client, bytes => { this.proxy.counters.bytesDown += bytes }, false)
    server.on('close', () => this.closed())
    this.up.to = server
    this.up.pump()
  }

  pump (): void { this.up.pump(); this.down?.pump() }

  private closed (): void {
    if (this.client.closed && this.server?.closed === true) this.kill('destroy')
  }

  kill (how: 'destroy' | 'reset'): void {
    if (this.dead) return
    this.dead = true
    this.up.stop()
    this.down?.stop()
    for (const socket of [this.client, this.server]) if (socket !== null) { if (how === 'reset') reset(socket); else socket.destroy() }
    this.proxy.links.delete(this)
  }

  /** Resolves when both sockets have closed (for close(): nothing left behind). */
  async gone (): Promise<void> {
    await Promise.all([this.client, this.server].map(s => s === null || s.closed ? undefined : new Promise(r => s.once('close', r))))
  }
}

export interface FaultProxyOptions { target: Address, listen?: Address, allowAny?: boolean }

export class FaultProxy {
  /** Connections accepted (dropped ones too) and bytes forwarded (written on), client to target and back. */
  readonly counters = { accepted: 0, bytesUp: 0, bytesDown: 0, corrupted: 0 }
  /** @internal */ readonly links = new Set<Link>()
  private current: FaultMode = 'pass'
  private delayed = 0
  private corruptLeft = 0
  private corruptWhich: 'up' | 'down' | 'both' = 'both'

  private constructor (private readonly server: net.Server, readonly target: Address, readonly port: number) {
    server.on('connection', socket => this.accept(socket))
    server.on('error', () => {}) // a failed accept() (EMFILE) is no reason to crash a test
  }

  static async start (options: FaultProxyOptions): Promise<FaultProxy> {
    const listen = options.listen ?? { host: '127.0.0.1', port: 0 }
    if (options.allowAny !== true) for (const { host } of [options.target, listen]) assertLoopback(host)
    const server = net.createServer({ allowHalfOpen: true })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(listen.port, listen.host, () => { server.off('error', reject); resolve() })
    })
    // 'connection' comes in a later turn of the event loop than 'listening', so the constructor attaches accept() in time.
    return new FaultProxy(server, { ...options.target }, (server.address() as net.AddressInfo).port)
  }

  get mode (): FaultMode { return this.current }
  get delayMs (): number { return this.delayed }
  get connections (): number { return this.links.size }

  /** Forwards normally; whatever a stall held back is released in order. */
  pass (): void {
    this.current = 'pass'
    for (const link of this.links) { if (link.forwarded) link.pump(); else link.connect(this.target) }
  }

  /** Forwards nothing and closes nothing; new connections are accepted and left hanging. */
  stall (): void { this.current = 'stall' }

  /** Closes every connection, and every new one as soon as it is accepted. */
  drop (): void {
    this.current = 'drop'
    for (const link of this.links) link.kill('destroy')
  }

  /** Resets every current connection (both sides) once; the mode stays as it is. */
  cut (): void { for (const link of this.links) link.kill('reset') }

  /** Adds `ms` of one-way delay to each chunk (and FIN) in both directions from now on; 0 removes it. */
  delay (ms: number): void {
    if (!Number.isFinite(ms) || ms < 0) throw new RangeError(`fault-proxy: delay must be a non-negative number of ms, got ${ms}`)
    this.delayed = ms
  }

  /**
   * Flips one byte three quarters into each of the next `count` chunks of at least 16 KiB forwarded in `direction`
   * ('up': client to target). Large chunks are mostly payload, so this models a link corrupting data, not framing.
   */
  corrupt (count: number, direction: 'up' | 'down' | 'both' = 'both'): void {
    if (!Number.isInteger(count) || count < 0) throw new RangeError(`fault-proxy: corrupt needs a whole number of chunks, got ${count}`)
    this.corruptLeft = count
    this.corruptWhich = direction
  }

  /** @internal */
  maybeCorrupt (chunk: Buffer, upstream: boolean): void {
    if (this.corruptLeft === 0 || chunk.length < 16384) return
    if (this.corruptWhich !== 'both' && (this.corruptWhich === 'up') !== upstream) return
    this.corruptLeft--
    this.counters.corrupted++
    chunk[Math.floor(chunk.length * 0.75)] ^= 0x5a
  }

  async close (): Promise<void> {
    this.current = 'drop'
    const gone = [...this.links].map(link => link.gone())
    this.drop()
    await Promise.all([...gone, new Promise(resolve => this.server.close(resolve))])
  }

  private accept (socket: net.Socket): void {
    this.counters.accepted++
    if (this.current === 'drop') { socket.on('error', () => {}); socket.destroy(); return }
    const link = new Link(this, socket)
    this.links.add(link)
    if (this.current === 'pass') link.connect(this.target)
  }
}

function assertLoopback (host: string): void {
  if ((net.isIPv4(host) && host.startsWith('127.')) || host === '::1') return
  throw new RangeError(`fault-proxy: '${host}' is not a loopback address (127.x.x.x or ::1); pass allowAny for others`)
}

function parseAddress (text: string, option: string): Address {
  const m = /^\[?([^[\]]+?)\]?:(\d+)$/.exec(text)
  if (m === null || Number(m[2]) > 65535) throw new RangeError(`fault-proxy: ${option} '${text}' is not HOST:PORT`)
  return { host: m[1], port: Number(m[2]) }
}

const USAGE = `usage: fault-proxy --target HOST:PORT [--listen HOST:PORT] [--allow-any]

Forwards every connection on --listen (default 127.0.0.1:0) to --target; prints
'ready PORT', then obeys one command per line on stdin and answers 'ok COMMAND':
  pass | stall | drop | cut | delay MS | corrupt N [up|down|both] | stats
Closing stdin (or SIGINT/SIGTERM) closes every connection and exits.`

async function main (argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { target: { type: 'string' }, listen: { type: 'string' }, 'allow-any': { type: 'boolean' }, help: { type: 'boolean' } } })
  if (values.help === true) { process.stdout.write(USAGE + '\n'); return }
  if (values.target === undefined) throw new RangeError('fault-proxy: --target is required')
  const proxy = await FaultProxy.start({
    target: parseAddress(values.target, '--target'),
    listen: values.listen === undefined ? undefined : parseAddress(values.listen, '--listen'),
    allowAny: values['allow-any'],
  })
  process.stdout.write(`ready ${proxy.port}\n`)
  const lines = readline.createInterface({ input: process.stdin })
  lines.on('line', text => {
    const line = text.trim()
    const [command, arg] = line.split(/\s+/)
    if (command === 'pass' || command === 'stall' || command === 'drop' || command === 'cut') proxy[command]()
    else if (command === 'delay' && /^\d+$/.test(arg ?? '')) proxy.delay(Number(arg))
    else if (command === 'corrupt' && /^\d+$/.test(arg ?? '') && ['up', 'down', 'both', undefined].includes(line.split(/\s+/)[2])) {
      proxy.corrupt(Number(arg), (line.split(/\s+/)[2] ?? 'both') as 'up' | 'down' | 'both')
    }
    else if (command === 'stats') {
      const stats = { mode: proxy.mode, delayMs: proxy.delayMs, connections: proxy.connections, ...proxy.counters }
      return process.stdout.write(`stats ${JSON.stringify(stats)}\n`)
    } else if (line === '') return
    else return process.stderr.write(`fault-proxy: unknown command '${line}'\n`)
    process.stdout.write(`ok ${line}\n`)
  })
  lines.once('close', () => { void proxy.close().then(() => process.stdin.destroy()) })
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => lines.close())
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((err: Error) => {
    // Bad options (parseArgs' TypeErrors, our RangeErrors) are usage errors: exit 2 like the dst CLI.
    const usage = err instanceof RangeError || err instanceof TypeError
    process.stderr.write(`${err.message.startsWith('fault-proxy') ? '' : 'fault-proxy: '}${err.message}\n${usage ? USAGE + '\n' : ''}`)
    process.exit(usage ? 2 : 1)
  })
}
