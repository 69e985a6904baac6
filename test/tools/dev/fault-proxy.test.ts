// tools/dev/fault-proxy.ts against real TCP echo servers on 127.0.0.1: pass forwards both ways, stall holds everything
// (no FIN, no RST) and releases it in order, drop closes old and new connections, cut resets old ones while new ones
// work, delay adds latency in order, errors close the pair, close() leaves no handle behind (a child process exits),
// and the CLI obeys its stdin. Every wait is bounded; every server, proxy and socket is closed in t.teardown.

import test, { type ExecutionContext } from 'ava'
import { spawn } from 'node:child_process'
import * as net from 'node:net'
import * as path from 'node:path'
import { randomBytes } from 'node:crypto'
import { FaultProxy } from '../../../tools/dev/fault-proxy'
import { freePort } from '../../helpers/ports'
import { until } from '../../helpers/wait'

const TOOL = path.join(__dirname, '..', '..', '..', 'tools', 'dev', 'fault-proxy.ts')

interface Echo { port: number, sockets: Set<net.Socket>, received: () => number }

/** Echoes what it receives, `lagMs` later if given (so a reply can be in flight towards the client). */
async function echoServer (t: ExecutionContext, lagMs = 0): Promise<Echo> {
  const sockets = new Set<net.Socket>()
  let received = 0
  const server = net.createServer(socket => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    socket.on('data', (c: Buffer) => { received += c.length })
    if (lagMs === 0) socket.pipe(socket)
    else socket.on('data', (c: Buffer) => setTimeout(() => socket.write(c), lagMs)).on('end', () => setTimeout(() => socket.end(), lagMs))
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>(resolve => { for (const s of sockets) s.destroy(); server.close(() => resolve()) }))
  return { port: (server.address() as net.AddressInfo).port, sockets, received: () => received }
}

async function proxyTo (t: ExecutionContext, port: number): Promise<FaultProxy> {
  const proxy = await FaultProxy.start({ target: { host: '127.0.0.1', port } })
  t.teardown(() => proxy.close())
  return proxy
}

/** A client connection that records what it receives and how it ended. */
interface Client { socket: net.Socket, received: () => Buffer, bytes: number, ended: boolean, closed: boolean, error: NodeJS.ErrnoException | null }

async function connect (t: ExecutionContext, port: number): Promise<Client> {
  const socket = net.connect({ host: '127.0.0.1', port })
  const chunks: Buffer[] = []
  const client: Client = { socket, received: () => Buffer.concat(chunks), bytes: 0, ended: false, closed: false, error: null }
  socket.on('data', (c: Buffer) => { chunks.push(c); client.bytes += c.length })
  socket.on('end', () => { client.ended = true })
  socket.on('close', () => { client.closed = true })
  socket.on('error', err => { client.error = err })
  t.teardown(() => { socket.destroy() })
  await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject) })
  return client
}

const sleep = (ms: number): Promise<void> => new Promise(resolve => setTimeout(resolve, ms))

async function roundTrip (client: Client, text: string): Promise<number> {
  const before = client.bytes
  const start = performance.now()
  client.socket.write(text)
  await until(`echo of '${text}'`, () => client.bytes >= before + text.length, 5000, 5)
  return performance.now() - start
}

test('pass forwards bytes both ways and counts them', async t => {
  const echo = await echoServer(t)
  const proxy = await proxyTo(t, echo.port)
  const client = await connect(t, proxy.port)
  const data = randomBytes(3 * 1024 * 1024) // more than socket buffers hold, so backpressure is exercised
  client.socket.write(data)
  await until('3 MiB echoed', () => client.bytes === data.length, 20000)
  t.true(client.received().equals(data))
  t.deepEqual(proxy.counters, { accepted: 1, bytesUp: data.length, bytesDown: data.length, corrupted: 0 })
  t.is(proxy.connections, 1)
  t.is(echo.sockets.size, 1)
})

test('stall holds everything without FIN or RST, then pass releases it in order', async t => {
  const echo = await echoServer(t)
  const proxy = await proxyTo(t, echo.port)
  const old = await connect(t, proxy.port)
  await roundTrip(old, 'before')
  proxy.stall()
  t.is(proxy.mode, 'stall')
  for (const part of ['one ', 'two ', 'three']) { old.socket.write(part); await sleep(20) }
  const late = await connect(t, proxy.port) // accepted, but not forwarded
  late.socket.write('late')
  await sleep(300)
  t.is(old.received().toString(), 'before')
  t.is(late.bytes, 0)
  t.false(old.ended || old.closed || late.ended || late.closed)
  t.is(old.error, null)
  t.is(echo.sockets.size, 1, 'the stalled new connection never reached the target')
  t.is(proxy.connections, 2)

  proxy.pass()
  await until('held bytes released', () => old.bytes === 'beforeone two three'.length && late.bytes === 4)
  t.is(old.received().toString(), 'beforeone two three')
  t.is(late.received().toString(), 'late')
  t.is(echo.sockets.size, 2)
})

test('stall holds a reply already on its way back from the target', async t => {
  const echo = await echoServer(t, 100)
  const proxy = await proxyTo(t, echo.port)
  const client = await connect(t, proxy.port)
  client.socket.write('ping')
  await until('target got ping', () => echo.received() === 4)
  proxy.stall() // the target answers 100 ms later, into the stall
  await sleep(300)
  t.is(client.bytes, 0)
  t.is(proxy.counters.bytesDown, 0)
  proxy.pass()
  await until('reply released', () => client.received().toString() === 'ping')
  t.is(proxy.counters.bytesDown, 4)
})

test('a stall pushes back on the sender past the hold limit and loses nothing', async t => {
  const echo = await echoServer(t)
  const proxy = await proxyTo(t, echo.port)
  const client = await connect(t, proxy.port)
  proxy.stall()
  const data = randomBytes(32 * 1024 * 1024)
  client.socket.write(data)
  await sleep(500)
  t.true(client.socket.writableLength > 0, 'the sender is blocked, not buffered for without bound')
  t.is(echo.received(), 0)
  proxy.pass()
  await until('32 MiB echoed', () => client.bytes === data.length, 60000)
  t.true(client.received().equals(data))
})

test('stall holds a FIN back until pass', async t => {
  const echo = await echoServer(t)
  const proxy = await proxyTo(t, echo.port)
  const client = await connect(t, proxy.port)
  await roundTrip(client, 'x')
  proxy.stall()
  client.socket.end('bye') // half-close: the echo server ends its side only once it sees our FIN
  await sleep(200)
  t.false(client.ended)
  proxy.pass()
  await until('echo server FIN', () => client.ended)
  t.is(client.received().toString(), 'xbye')
  await until('both sides closed', () => proxy.connections === 0 && echo.sockets.size === 0)
})

test('a client reset during a stall reaches the target only after pass', async t => {
  const echo = await echoServer(t)
  const proxy = await proxyTo(t, echo.port)
  const client = await connect(t, proxy.port)
  await roundTrip(client, 'hi')
  const [target] = echo.sockets
  let targetError: string | undefined
  target.on('error', (err: NodeJS.ErrnoException) => { targetError = err.code })
  proxy.stall()
  client.socket.resetAndDestroy()
  await sleep(300)
  t.false(target.destroyed, 'a silent peer: the target is not told')
  proxy.pass()
  await until('target reset', () => target.destroyed)
  t.is(targetError, 'ECONNRESET')
  t.is(proxy.connections, 0)
})

test('drop closes existing connections and every new one', async t => {
  const echo = await echoServer(t)
  const proxy = await proxyTo(t, echo.port)
  const old = await connect(t, proxy.port)
  await roundTrip(old, 'hi')
  proxy.drop()
  t.is(proxy.mode, 'drop')
  await until('old connection closed', () => old.closed)
  const fresh = await connect(t, proxy.port)
  fresh.socket.write('anyone?')
  await until('new connection closed', () => fresh.closed)
  t.is(fresh.bytes, 0)
  await until('target sees no connections', () => echo.sockets.size === 0)
  t.is(proxy.connections, 0)
  t.is(proxy.counters.accepted, 2)
  proxy.pass()
  await roundTrip(await connect(t, proxy.port), 'back')
})

test('cut resets existing connections and new ones work', async t => {
  const echo = await echoServer(t)
  const proxy = await proxyTo(t, echo.port)
  const old = await connect(t, proxy.port)
  await roundTrip(old, 'hi')
  proxy.cut()
  await until('old connection reset', () => old.closed)
  t.is(old.error?.code, 'ECONNRESET')
  t.false(old.ended, 'a reset, not a FIN')
  await until('target side closed', () => echo.sockets.size === 0)
  t.is(proxy.mode, 'pass')
  const fresh = await connect(t, proxy.port)
  await roundTrip(fresh, 'still here')
  t.is(fresh.received().toString(), 'still here')
  t.is(proxy.connections, 1)
})

// Serial: ava runs serial tests before the concurrent ones, so the timings are not skewed by the 32 MiB tests.
test.serial('delay(100) adds about 100 ms each way, keeps order, and delay(0) removes it', async t => {
  const echo = await echoServer(t)
  const proxy = await proxyTo(t, echo.port)
  const client = await connect(t, proxy.port)
  const base = await roundTrip(client, 'warm')
  proxy.delay(100)
  const slow = await roundTrip(client, 'slow')
  t.true(slow >= 190, `round trip with 100 ms each way took ${slow.toFixed(1)} ms`)
  const parts = Array.from({ length: 10 }, (_, i) => `<${i}>`)
  for (const part of parts) { client.socket.write(part); await sleep(5) }
  await until('ordered parts', () => client.bytes === 'warmslow'.length + parts.join('').length)
  t.is(client.received().toString(), 'warmslow' + parts.join(''))
  proxy.delay(0)
  const fast = await roundTrip(client, 'fast')
  t.true(fast < 100, `round trip after delay(0) took ${fast.toFixed(1)} ms (baseline ${base.toFixed(1)} ms)`)
  t.throws(() => proxy.delay(-1), { instanceOf: RangeError })
})

test('a refused target and a reset from the target just close the pair', async t => {
  const nobody = await freePort()
  const dead = await proxyTo(t, nobody)
  const refused = await connect(t, dead.port)
  await until('refused connection closed', () => refused.closed)
  t.is(dead.connections, 0)

  const echo = await echoServer(t)
  const proxy = await proxyTo(t, echo.port)
  const client = await connect(t, proxy.port)
  await roundTrip(client, 'hi')
  for (const s of echo.sockets) s.resetAndDestroy()
  await until('reset passed on', () => client.closed)
  t.is(client.error?.code, 'ECONNRESET')
  t.is(proxy.connections, 0)
})

test('only loopback addresses unless allowAny', async t => {
  await t.throwsAsync(FaultProxy.start({ target: { host: '10.1.2.3', port: 80 } }), { message: /not a loopback address/ })
  await t.throwsAsync(FaultProxy.start({ target: { host: '127.0.0.1', port: 80 }, listen: { host: '0.0.0.0', port: 0 } }), { message: /not a loopback/ })
  const proxy = await FaultProxy.start({ target: { host: '::1', port: 80 }, listen: { host: '127.0.0.2', port: 0 } })
  t.teardown(() => proxy.close())
  t.true(proxy.port > 0)
})

test('close() destroys every connection and the target sees none left', async t => {
  const echo = await echoServer(t)
  const proxy = await proxyTo(t, echo.port)
  const a = await connect(t, proxy.port)
  await roundTrip(a, 'a')
  proxy.delay(5000)
  a.socket.write('in flight') // sits in a delay timer when close() runs
  proxy.stall()
  const b = await connect(t, proxy.port) // never forwarded
  await until('both accepted', () => proxy.connections === 2)
  await proxy.close()
  t.is(proxy.connections, 0)
  await until('clients closed', () => a.closed && b.closed)
  await until('target connections gone', () => echo.sockets.size === 0)
  await t.throwsAsync(connect(t, proxy.port), { code: 'ECONNREFUSED' })
})

function runNode (args: string[], input: (write: (line: string) => void, out: () => string) => Promise<void>, timeout = 20000): Promise<{ code: number | null, out: string, err: string }> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, ['-r', 'ts-node/register/transpile-only', ...args], { stdio: ['pipe', 'pipe', 'pipe'], cwd: path.join(__dirname, '..', '..', '..') })
    let out = ''
    let err = ''
    proc.stdout.on('data', (c: Buffer) => { out += c.toString() })
    proc.stderr.on('data', (c: Buffer) => { err += c.toString() })
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`node ${args.join(' ')} did not exit within ${timeout} ms; stdout: ${out}; stderr: ${err}`)) }, timeout)
    proc.on('close', code => { clearTimeout(timer); resolve({ code, out, err }) })
    proc.stdin.on('error', () => {})
    input(line => proc.stdin.write(line + '\n'), () => out).then(() => proc.stdin.end(), e => { proc.kill('SIGKILL'); reject(e) })
  })
}

test('a process that used the proxy in every mode exits on its own after close()', async t => {
  // No process.exit(): the child only ends if close() left no socket, server or timer behind.
  const script = `
    const net = require('node:net')
    const { FaultProxy } = require(${JSON.stringify(TOOL)})
    const sleep = ms => new Promise(r => setTimeout(r, ms))
    ;(async () => {
      const echo = net.createServer(s => { s.on('error', () => {}); s.pipe(s) })
      await new Promise(r => echo.listen(0, '127.0.0.1', r))
      const proxy = await FaultProxy.start({ target: { host: '127.0.0.1', port: echo.address().port } })
      const open = () => { const s = net.connect(proxy.port, '127.0.0.1'); s.on('error', () => {}); s.on('data', () => {}); s.write('x'); return s }
      open(); await sleep(50)
      proxy.cut(); open(); await sleep(50)
      proxy.delay(60000); open(); await sleep(50)
      proxy.stall(); open(); await sleep(50)
      await proxy.close()
      await new Promise(r => echo.close(r))
      console.log('closed')
    })()`
  const { code, out, err } = await runNode(['-e', script], async () => {})
  t.is(err, '')
  t.is(out, 'closed\n')
  t.is(code, 0)
})

test('the CLI prints ready PORT, obeys stdin and exits when stdin closes', async t => {
  const echo = await echoServer(t)
  const { code, out, err } = await runNode([TOOL, '--target', `127.0.0.1:${echo.port}`], async (write, output) => {
    await until('ready', () => /^ready \d+\n/.test(output()), 15000)
    const port = Number(/^ready (\d+)/.exec(output())?.[1])
    const client = await connect(t, port)
    await roundTrip(client, 'via cli')
    write('stall')
    await until('ok stall', () => output().includes('ok stall\n'))
    client.socket.write('held')
    await sleep(100)
    t.is(client.received().toString(), 'via cli')
    write('delay 10')
    write('pass')
    await until('released', () => client.received().toString() === 'via cliheld')
    write('stats')
    await until('stats', () => output().includes('stats {'))
    write('nonsense')
  })
  t.is(code, 0)
  const stats = JSON.parse(/stats (\{.*\})/.exec(out)?.[1] ?? '{}')
  t.like(stats, { mode: 'pass', delayMs: 10, connections: 1, accepted: 1, bytesUp: 11, bytesDown: 11 })
  t.regex(err, /unknown command 'nonsense'/)
  await until('target connection closed', () => echo.sockets.size === 0)
})

/** An echo target that also keeps every byte it received, to compare with what the client sent and got back. */
interface Sink { port: number, received: () => Buffer }

async function sinkServer (t: ExecutionContext): Promise<Sink> {
  const sockets = new Set<net.Socket>()
  const chunks: Buffer[] = []
  const server = net.createServer(socket => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    socket.on('data', (c: Buffer) => { chunks.push(Buffer.from(c)); socket.write(c) })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>(resolve => { for (const s of sockets) s.destroy(); server.close(() => resolve()) }))
  return { port: (server.address() as net.AddressInfo).port, received: () => Buffer.concat(chunks) }
}

/** Positions where `a` and `b` differ (bounded). */
function differences (a: Buffer, b: Buffer, limit = 100): number[] {
  const out: number[] = []
  for (let i = 0; i < Math.min(a.length, b.length) && out.length < limit; i++) if (a[i] !== b[i]) out.push(i)
  return out
}

/** Sends `count` small writes one at a time (each echoed before the next), so each is a chunk of its own. */
async function smallRoundTrips (client: Client, count: number, size: number): Promise<Buffer> {
  const sent: Buffer[] = []
  for (let i = 0; i < count; i++) {
    const part = randomBytes(size)
    sent.push(part)
    const before = client.bytes
    client.socket.write(part)
    await until(`small write ${i} echoed`, () => client.bytes >= before + size)
  }
  return Buffer.concat(sent)
}

test('corrupt(N, up) flips exactly one byte (XOR 0x5a) in each of the next N large chunks and leaves small ones alone', async t => {
  const sink = await sinkServer(t)
  const proxy = await proxyTo(t, sink.port)
  const client = await connect(t, proxy.port)
  proxy.corrupt(3, 'up')
  // Small chunks (under 16 KiB) pass untouched and do not use up the count.
  const small = await smallRoundTrips(client, 20, 4000)
  t.true(client.received().equals(small))
  t.true(sink.received().equals(small))
  t.is(proxy.counters.corrupted, 0)
  // A large write arrives as many chunks of 16 KiB or more: exactly three of them get one byte flipped.
  const large = randomBytes(4 * 1024 * 1024)
  client.socket.write(large)
  await until('4 MiB echoed', () => client.bytes === small.length + large.length, 20000)
  t.is(proxy.counters.corrupted, 3)
  const arrived = sink.received().subarray(small.length)
  const diff = differences(arrived, large)
  t.is(diff.length, 3, `flipped bytes at ${diff.join(', ')}`)
  for (const at of diff) t.is(arrived[at] ^ large[at], 0x5a, `byte ${at}`)
  // Upstream only: the echo came back as the target sent it (with the target's copy of the flips, no new ones).
  t.true(client.received().subarray(small.length).equals(arrived))
  // The count is used up: more large traffic passes unchanged.
  const more = randomBytes(1024 * 1024)
  client.socket.write(more)
  await until('1 MiB more echoed', () => client.bytes === small.length + large.length + more.length, 20000)
  t.true(client.received().subarray(small.length + large.length).equals(more))
  t.is(proxy.counters.corrupted, 3)
})

test('corrupt(N, down) corrupts only what the target sends back; both counts each direction', async t => {
  const sink = await sinkServer(t)
  const proxy = await proxyTo(t, sink.port)
  const client = await connect(t, proxy.port)
  proxy.corrupt(2, 'down')
  const data = randomBytes(2 * 1024 * 1024)
  client.socket.write(data)
  await until('2 MiB echoed', () => client.bytes === data.length, 20000)
  t.true(sink.received().equals(data), 'the target got every byte right')
  const diff = differences(client.received(), data)
  t.is(diff.length, 2, `flipped bytes at ${diff.join(', ')}`)
  for (const at of diff) t.is(client.received()[at] ^ data[at], 0x5a)
  t.is(proxy.counters.corrupted, 2)

  // 'both' (the default): the next N large chunks either way, N flips in all between the two directions.
  proxy.corrupt(4)
  const data2 = randomBytes(2 * 1024 * 1024)
  client.socket.write(data2)
  await until('2 MiB more echoed', () => client.bytes === data.length + data2.length, 20000)
  const atTarget = sink.received().subarray(data.length)
  const atClient = client.received().subarray(data.length)
  const up = differences(atTarget, data2).length
  const down = differences(atClient, atTarget).length
  t.is(proxy.counters.corrupted, 6)
  t.is(up + down, 4, `${up} flipped on the way up, ${down} on the way down`)
  // corrupt(0) stops it; a count that is not a whole number is refused.
  proxy.corrupt(0)
  t.throws(() => proxy.corrupt(-1), { instanceOf: RangeError })
  t.throws(() => proxy.corrupt(1.5), { instanceOf: RangeError })
})

test('the CLI obeys corrupt N [up|down|both]: answers ok, corrupts, and counts it in stats', async t => {
  const sink = await sinkServer(t)
  const data = randomBytes(1024 * 1024)
  let received: Buffer = Buffer.alloc(0)
  const { code, out, err } = await runNode([TOOL, '--target', `127.0.0.1:${sink.port}`], async (write, output) => {
    await until('ready', () => /^ready \d+\n/.test(output()), 45000)
    const port = Number(/^ready (\d+)/.exec(output())?.[1])
    const client = await connect(t, port)
    write('corrupt 2 up')
    await until('ok corrupt 2 up', () => output().includes('ok corrupt 2 up\n'), 15000)
    client.socket.write(data)
    await until('1 MiB echoed', () => client.bytes === data.length, 20000)
    received = client.received()
    write('corrupt 1 sideways')
    write('stats')
    await until('stats', () => output().includes('stats {'), 15000)
  }, 60000) // a ts-node process on a busy machine can take many seconds to start
  t.is(code, 0)
  t.regex(out, /^ok corrupt 2 up$/m)
  const diff = differences(received, data)
  t.is(diff.length, 2, `flipped bytes at ${diff.join(', ')}`)
  t.true(sink.received().equals(received), 'flipped on the way up: the target echoed what it got')
  const stats = JSON.parse(/stats (\{.*\})/.exec(out)?.[1] ?? '{}')
  t.like(stats, { corrupted: 2, bytesUp: data.length, bytesDown: data.length })
  t.regex(err, /unknown command 'corrupt 1 sideways'/)
  t.notRegex(out, /ok corrupt 1 sideways/)
})

test('the CLI exits 2 on bad usage', async t => {
  const cases = [[], ['--target', 'nowhere'], ['--target', '192.0.2.1:80'], ['--target', '127.0.0.1:80', '--bogus']]
  await Promise.all(cases.map(async args => {
    const { code, err } = await runNode([TOOL, ...args], async () => {})
    t.is(code, 2, args.join(' '))
    t.regex(err, /usage: fault-proxy/)
  }))
})
