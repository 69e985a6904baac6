// Positional file I/O served by dedicated worker threads (node/devices/io-worker.js) over a ring in shared memory, instead
// of one libuv thread-pool round trip per request. Only buffers inside a SharedArrayBuffer can go through it (the
// worker reads and writes them in place: the node's buffer pool is one); callers check `accepts()` and use fs for
// anything else. Per request the main thread fills an entry, publishes it and wakes a worker only if one sleeps;
// workers serve every queued request per wake-up with readSync/writeSync and publish completions, which the main
// thread drains all at once from one Atomics.waitAsync. The ring is bounded: when every entry is in use, callers wait
// in a bounded FIFO (backpressure), and past that get an explicit DST_ERR_IO_BUSY.

import * as path from 'node:path'
import { getSystemErrorName } from 'node:util'
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads'
import { DstError, ErrorCode, systemErrorCode } from '../core/errors'
import { Ring } from '../core/ring'

// Layout shared with node/devices/io-worker.js.
const SQ_HEAD = 0
const SQ_TAIL = 1
const SLEEPERS = 2
const CQ_SEQ = 4
const CTL_WORDS = 8
const STRIDE = 8
const F_OP = 0; const F_FD = 1; const F_MEM = 2; const F_OFFSET = 3; const F_LENGTH = 4; const F_POSITION = 5; const F_RESULT = 6
const OP_READ = 1; const OP_WRITE = 2

/** Distinct shared memories one ring serves (the worker keeps each alive); buffers in further ones use fs. */
const MAX_MEMORIES = 8

// Typed here: TypeScript declares Atomics.waitAsync only from lib es2024, and the project targets ES2022 (Node 20 has it).
const waitAsync = (Atomics as unknown as {
  waitAsync: (array: Int32Array, index: number, value: number) => { async: false, value: string } | { async: true, value: Promise<string> }
}).waitAsync

const WORKER_FILE = path.join(__dirname, 'io-worker.js')

export interface IoRingOptions {
  /** Names the ring's owner in error messages, e.g. the file's path. */
  name: string
  /** Requests in the ring at once; a power of two. */
  capacity?: number
  /** Worker threads serving the ring. */
  threads?: number
  /** Callers that may wait for a free entry at once; a further one gets DST_ERR_IO_BUSY. */
  maxWaiters?: number
}

interface Waiter { op: number, fd: number, buf: Uint8Array, length: number, position: number, resolve: () => void, reject: (err: Error) => void }

export class IoRing {
  readonly name: string
  readonly capacity: number
  readonly threads: number
  /** Times a request found every entry in use and waited; exported as a metric. */
  waits = 0
  private readonly ctl: Int32Array
  private readonly sq: Int32Array
  private readonly cq: Int32Array
  private readonly entries: Float64Array
  private readonly ports: MessagePort[] = []
  private readonly workers: Worker[] = []
  private readonly memories = new Map<SharedArrayBuffer, number>()
  private readonly free: Int32Array
  private freeCount: number
  private readonly resolvers: Array<(() => void) | undefined>
  private readonly rejecters: Array<((err: Error) => void) | undefined>
  private readonly waiters: Ring<Waiter>
  private cqHead = 0
  private inflight = 0
  private armed = false
  private draining = false
  /** Requests published since the doorbell last rang. */
  private unrung = 0
  private referenced = false
  /** Set once the ring cannot serve any more: closed, or a worker died. */
  private failure: DstError | null = null
  private closing: Promise<void> | null = null
  private running = 0

  constructor (options: IoRingOptions) {
    const capacity = options.capacity ?? 256
    if (!Number.isInteger(capacity) || capacity < 1 || (capacity & (capacity - 1)) !== 0) throw new RangeError(`I/O ring capacity must be a power of two, got ${capacity}`)
    const threads = options.threads ?? 1
    if (!Number.isInteger(threads) || threads < 1 || threads > 64) throw new RangeError(`I/O ring threads must be between 1 and 64, got ${threads}`)
    this.name = options.name
    this.capacity = capacity
    this.threads = threads
    this.ctl = new Int32Array(new SharedArrayBuffer(CTL_WORDS * 4))
    this.sq = new Int32Array(new SharedArrayBuffer(capacity * 4))
    this.cq = new Int32Array(new SharedArrayBuffer(capacity * 4))
    this.entries = new Float64Array(new SharedArrayBuffer(capacity * STRIDE * 8))
    this.free = new Int32Array(capacity)
    for (let i = 0; i < capacity; i++) this.free[i] = capacity - 1 - i
    this.freeCount = capacity
    this.resolvers = new Array<(() => void) | undefined>(capacity).fill(undefined)
    this.rejecters = new Array<((err: Error) => void) | undefined>(capacity).fill(undefined)
    this.waiters = new Ring(options.maxWaiters ?? 65536)
    for (let i = 0; i < threads; i++) {
      // Each worker learns of shared memories on its own port (receiveMessageOnPort takes a message for one reader).
      const channel = new MessageChannel()
      this.ports.push(channel.port1)
      const worker = new Worker(WORKER_FILE, {
        workerData: { ctl: this.ctl, sq: this.sq, cq: this.cq, entries: this.entries, port: channel.port2 },
        transferList: [channel.port2],
      })
      worker.unref()
      worker.on('error', err => { void this.fail(new DstError(ErrorCode.IO_WORKER, `I/O worker of '${this.name}' failed: ${err.message}`)) })
      worker.on('exit', code => { this.running--; void this.fail(new DstError(ErrorCode.IO_WORKER, `I/O worker of '${this.name}' exited (code ${code})`)) })
      this.workers.push(worker)
      this.running++
    }
  }


  /** Requests submitted and not yet completed. */
  get inFlight (): number { return this.inflight }
  /** Callers waiting for a free entry. */
  get waiting (): number { return this.waiters.length }
  /** False once closed or after a worker died; callers then use fs. */
  get usable (): boolean { return this.failure === null }
  /** Worker threads not yet exited (0 once close() has resolved). */
  get threadsRunning (): number { return this.running }

  /** Whether `buf` can go through the ring: it lies in a SharedArrayBuffer, and the ring is usable. */
  accepts (buf: Uint8Array): boolean {
    if (this.failure !== null || !(buf.buffer instanceof SharedArrayBuffer)) return false
    return this.memories.has(buf.buffer) || this.memories.size < MAX_MEMORIES
  }

  /** Fills `into[0..length)` with the bytes of `fd` at `position` (zeros past the file's end). `accepts(into)` must hold. */
  read (fd: number, into: Uint8Array, position: number, length = into.byteLength): Promise<void> {
    return new Promise((resolve, reject) => this.submit(OP_READ, fd, into, length, position, resolve, reject))
  }

  /** Writes all of `data` to `fd` at `position`. `accepts(data)` must hold. */
  write (fd: number, data: Uint8Array, position: number): Promise<void> {
    return new Promise((resolve, reject) => this.submit(OP_WRITE, fd, data, data.byteLength, position, resolve, reject))
  }

  /** Stops the workers. Requests not completed by then, and any made later, fail with DST_ERR_CLOSED. */
  close (): Promise<void> {
    return this.fail(new DstError(ErrorCode.CLOSED, `I/O ring of '${this.name}' is closed`))
  }

  private submit (op: number, fd: number, buf: Uint8Array, length: number, position: number, resolve: () => void, reject: (err: Error) => void): void {
    if (this.failure !== null) { reject(this.failure); return }
    if (this.freeCount === 0) {
      if (this.waiters.full) {
        reject(new DstError(ErrorCode.IO_BUSY, `I/O ring of '${this.name}': all ${this.capacity} entries in use and ${this.waiters.capacity} requests waiting`))
        return
      }
      this.waits++
      this.waiters.push({ op, fd, buf, length, position, resolve, reject })
      return
    }
    const memory = buf.buffer as SharedArrayBuffer
    let mem = this.memories.get(memory)
    if (mem === undefined) {
      if (this.memories.size >= MAX_MEMORIES) { reject(new DstError(ErrorCode.IO_MEMORY, `I/O ring of '${this.name}': more than ${MAX_MEMORIES} shared memories`)); return }
      mem = this.memories.size
      this.memories.set(memory, mem)
      // Announced before the first request that uses it is published, so the worker finds it on its port.
      for (const p of this.ports) p.postMessage({ id: mem, memory })
    }
    const index = this.free[--this.freeCount]
    const e = index * STRIDE
    const entries = this.entries
    entries[e + F_OP] = op
    entries[e + F_FD] = fd
    entries[e + F_MEM] = mem
    entries[e + F_OFFSET] = buf.byteOffset
    entries[e + F_LENGTH] = length
    entries[e + F_POSITION] = position
    entries[e + F_RESULT] = 0
    this.resolvers[index] = resolve
    this.rejecters[index] = reject
    if (this.inflight++ === 0 && !this.referenced) {
      // A pending Atomics.waitAsync does not keep the process alive; the workers do, while requests are in flight.
      for (const w of this.workers) w.ref()
      this.referenced = true
    }
    const tail = Atomics.load(this.ctl, SQ_TAIL)
    Atomics.store(this.sq, tail & (this.capacity - 1), index)
    Atomics.store(this.ctl, SQ_TAIL, (tail + 1) | 0)
    // The doorbell rings once per burst: requests submitted in the same turn of the event loop (a socket read holds
    // many) wake a sleeping worker once, at the end of the turn's microtasks.
    if (this.unrung++ === 0) queueMicrotask(this.ring)
    this.arm()
  }

  /** Waits (without blocking) for the next completion, unless already waiting; lets the process exit when idle. */
  private arm (): void {
    while (!this.armed && !this.draining && this.inflight > 0 && this.failure === null) {
      const seen = Atomics.load(this.ctl, CQ_SEQ)
      this.drain()
      if (this.inflight === 0 || this.failure !== null) break
      const wait = waitAsync(this.ctl, CQ_SEQ, seen)
      if (wait.async) {
        this.armed = true
        void wait.value.then(this.onWake)
      }
      // Not async: a completion came in meanwhile; drain again.
    }
    if (this.inflight === 0 && this.referenced && !this.draining) {
      for (const w of this.workers) w.unref()
      this.referenced = false
    }
  }

  private readonly ring = (): void => {
    const sleepers = Atomics.load(this.ctl, SLEEPERS)
    if (sleepers > 0) Atomics.notify(this.ctl, SQ_TAIL, Math.min(sleepers, this.unrung))
    this.unrung = 0
  }

  private readonly onWake = (): void => {
    this.armed = false
    this.arm()
  }

  /** Settles every published completion. */
  private drain (): void {
    this.draining = true
    try { this.drainAll() } finally { this.draining = false }
  }

  private drainAll (): void {
    const mask = this.capacity - 1
    for (;;) {
      const at = this.cqHead & mask
      const published = Atomics.load(this.cq, at)
      if (published === 0) return
      Atomics.store(this.cq, at, 0)
      this.cqHead = (this.cqHead + 1) | 0
      const index = published - 1
      const result = this.entries[index * STRIDE + F_RESULT]
      const resolve = this.resolvers[index] as () => void
      const reject = this.rejecters[index] as (err: Error) => void
      this.release(index)
      if (result === 0) resolve()
      else reject(this.errorOf(index, result))
    }
  }

  private release (index: number): void {
    this.resolvers[index] = undefined
    this.rejecters[index] = undefined
    this.free[this.freeCount++] = index
    this.inflight--
    const next = this.waiters.shift()
    if (next !== undefined) this.submit(next.op, next.fd, next.buf, next.length, next.position, next.resolve, next.reject)
  }

  private errorOf (index: number, errno: number): DstError {
    const e = index * STRIDE
    const code = getSystemErrorName(errno)
    const op = this.entries[e + F_OP] === OP_READ ? 'read' : 'write'
    return new DstError(systemErrorCode(code), `'${this.name}': ${op} of ${this.entries[e + F_LENGTH]} bytes at ${this.entries[e + F_POSITION]} failed: ${code}`)
  }

  /**
   * Takes no more requests, stops the workers, then fails everything in flight and waiting. The failures come only
   * after the workers are gone: until then one may still be filling a caller's buffer.
   */
  private fail (err: DstError): Promise<void> {
    if (this.closing !== null) return this.closing
    this.failure = err
    this.closing = Promise.all(this.workers.map(w => w.terminate())).then(() => {
      for (const p of this.ports) p.close()
      for (let i = 0; i < this.capacity; i++) {
        const reject = this.rejecters[i]
        if (reject === undefined) continue
        this.resolvers[i] = undefined
        this.rejecters[i] = undefined
        reject(err)
      }
      for (let w = this.waiters.shift(); w !== undefined; w = this.waiters.shift()) w.reject(err)
      this.inflight = 0
      // Releases a pending waitAsync so nothing holds on to the ring.
      Atomics.notify(this.ctl, CQ_SEQ)
    })
    return this.closing
  }
}
