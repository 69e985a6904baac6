// State changes of one node as a stream of events (GET /events, `dst events`), like drbdsetup events2. Nothing in the
// devices or arrays reports to it: while someone listens, the publisher samples what the node already exposes (its
// /status document and its exports' counters) every `interval` ms, diffs each sample against the last one and emits
// one event per change. So the I/O path pays nothing, and nothing is sampled when nobody listens.
//
// One event is one JSON object (one line on the wire):
//   { time: ISO-8601, node: NAME, kind: KIND, device?: NAME, leg?: NAME, export?: NAME, from?: STATE, to?: STATE, ... }
// Kinds:
//   snapshot           the first event of every stream: `status` is the node's whole /status document
//   device-state       a device's state changed: device, from, to
//   leg-state          a mirror leg's state changed (device is the mirror): device, leg, from, to; and with the same
//   leg-failed         fields, when the new state is failed, foreign, or the leg comes back from one of those
//   leg-foreign
//   leg-returned
//   remote-connected / remote-disconnected   a remote device's link: device
//   resync-start / resync-progress / resync-finish   device, leg, doneBytes, totalBytes (progress at most once a second)
//   verify-start / verify-progress / verify-finish   device, state, doneBytes, totalBytes, mismatches
//   lease-taken / lease-released   export, holder, name (the writer's name), address
//   connections        export, from, to (open client connections)
//   connection-refused export, count (refused since the last sample), total
//   rates              once a second while any export moves bytes (and once when they stop): exports: { NAME: { readBytesPerSecond, writeBytesPerSecond } }

/** One event, as sent (one JSON object per line). */
export interface NodeEvent {
  time: string
  node: string
  kind: string
  device?: string
  leg?: string
  export?: string
  from?: string
  to?: string
  [key: string]: unknown
}

interface DeviceView { type?: string, state?: string, connected?: boolean, members?: MemberView[], verify?: VerifyView, [key: string]: unknown }
interface MemberView extends DeviceView { name: string, dirtyBytes?: number, resync?: { doneBytes: number, totalBytes: number } }
interface VerifyView { state: string, doneBytes: number, totalBytes: number, mismatches: number }
interface ExportView { name: string, lease?: { holder: string | null, name: string | null, address: string | null }, connections?: number }

/** What the publisher samples: the node's /status document and each export's counters. */
export interface Sample {
  status: { devices: Record<string, DeviceView>, exports: ExportView[], [key: string]: unknown }
  counters: Array<{ name: string, refused: number, bytesRead: number, bytesWritten: number }>
}

/** The parts of a sample that are compared, flattened to keys. */
interface Flat {
  devices: Map<string, { state: string, connected?: boolean }>
  legs: Map<string, { array: string, leg: string, state: string, resync?: { doneBytes: number, totalBytes: number } }>
  verifies: Map<string, VerifyView>
  exports: Map<string, { holder: string | null, name: string | null, address: string | null, connections: number, refused: number, read: number, written: number }>
}

function flatten (s: Sample): Flat {
  const f: Flat = { devices: new Map(), legs: new Map(), verifies: new Map(), exports: new Map() }
  for (const [name, d] of Object.entries(s.status.devices)) {
    f.devices.set(name, { state: String(d.state), ...(typeof d.connected === 'boolean' ? { connected: d.connected } : {}) })
    if (d.type === 'mirror' || d.type === 'parity') {
      for (const m of d.members ?? []) f.legs.set(`${name}\0${m.name}`, { array: name, leg: m.name, state: String(m.state), ...(m.resync !== undefined ? { resync: m.resync } : {}) })
      if (d.verify !== undefined) f.verifies.set(name, d.verify)
    }
  }
  const counters = new Map(s.counters.map(c => [c.name, c]))
  for (const e of s.status.exports) {
    const c = counters.get(e.name)
    f.exports.set(e.name, {
      holder: e.lease?.holder ?? null, name: e.lease?.name ?? null, address: e.lease?.address ?? null,
      connections: e.connections ?? 0, refused: c?.refused ?? 0, read: c?.bytesRead ?? 0, written: c?.bytesWritten ?? 0,
    })
  }
  return f
}

const PROGRESS_EVERY = 1000

/** An event before it is stamped with its time and node. */
type EventBody = { kind: string } & Omit<NodeEvent, 'time' | 'node' | 'kind'>

/**
 * The events between two samples. `progressAt` holds when each resync/verify last reported progress (it is updated),
 * so progress is reported at most once a `PROGRESS_EVERY` ms.
 */
export function diff (prev: Flat, next: Flat, now: number, progressAt: Map<string, number>): EventBody[] {
  const out: EventBody[] = []
  for (const [name, d] of next.devices) {
    const was = prev.devices.get(name)
    if (was === undefined) { out.push({ kind: 'device-state', device: name, from: 'absent', to: d.state }); continue }
    if (was.state !== d.state) out.push({ kind: 'device-state', device: name, from: was.state, to: d.state })
    if (was.connected !== undefined && d.connected !== undefined && was.connected !== d.connected) out.push({ kind: d.connected ? 'remote-connected' : 'remote-disconnected', device: name })
  }
  for (const [name, d] of prev.devices) if (!next.devices.has(name)) out.push({ kind: 'device-state', device: name, from: d.state, to: 'absent' })
  for (const [key, l] of next.legs) {
    const was = prev.legs.get(key)
    const from = was?.state ?? 'absent'
    if (from !== l.state) {
      const kind = l.state === 'failed' ? 'leg-failed' : l.state === 'foreign' ? 'leg-foreign' : (from === 'failed' || from === 'foreign') ? 'leg-returned' : 'leg-state'
      out.push({ kind, device: l.array, leg: l.leg, from, to: l.state })
    }
    // A leg's resync runs while it is resyncing (its last report may stay in its status after).
    const r = l.state === 'resyncing' ? l.resync : undefined
    const wasR = was?.state === 'resyncing' ? was.resync : undefined
    if (r !== undefined && wasR === undefined) {
      out.push({ kind: 'resync-start', device: l.array, leg: l.leg, doneBytes: r.doneBytes, totalBytes: r.totalBytes })
      progressAt.set(`resync\0${key}`, now)
    } else if (r !== undefined && wasR !== undefined && r.doneBytes !== wasR.doneBytes && now - (progressAt.get(`resync\0${key}`) ?? 0) >= PROGRESS_EVERY) {
      out.push({ kind: 'resync-progress', device: l.array, leg: l.leg, doneBytes: r.doneBytes, totalBytes: r.totalBytes })
      progressAt.set(`resync\0${key}`, now)
    } else if (r === undefined && wasR !== undefined) {
      out.push({ kind: 'resync-finish', device: l.array, leg: l.leg, doneBytes: wasR.totalBytes, totalBytes: wasR.totalBytes, state: l.state })
      progressAt.delete(`resync\0${key}`)
    }
  }
  for (const [key, l] of prev.legs) if (!next.legs.has(key)) out.push({ kind: 'leg-state', device: l.array, leg: l.leg, from: l.state, to: 'absent' })
  for (const [name, v] of next.verifies) {
    const was = prev.verifies.get(name)
    const fields = { device: name, state: v.state, doneBytes: v.doneBytes, totalBytes: v.totalBytes, mismatches: v.mismatches }
    const started = v.state === 'running' && (was === undefined || was.state !== 'running' || v.doneBytes < was.doneBytes)
    if (started) { out.push({ kind: 'verify-start', ...fields }); progressAt.set(`verify\0${name}`, now) } else if (v.state === 'running' && was !== undefined && v.doneBytes !== was.doneBytes && now - (progressAt.get(`verify\0${name}`) ?? 0) >= PROGRESS_EVERY) {
      out.push({ kind: 'verify-progress', ...fields })
      progressAt.set(`verify\0${name}`, now)
    }
    if (v.state !== 'running' && (was === undefined || was.state === 'running')) out.push({ kind: 'verify-finish', ...fields })
  }
  for (const [name, e] of next.exports) {
    const was = prev.exports.get(name)
    if (was === undefined) continue
    if (was.holder !== e.holder) {
      if (was.holder !== null) out.push({ kind: 'lease-released', export: name, holder: was.holder, name: was.name, address: was.address })
      if (e.holder !== null) out.push({ kind: 'lease-taken', export: name, holder: e.holder, name: e.name, address: e.address })
    }
    if (was.connections !== e.connections) out.push({ kind: 'connections', export: name, from: String(was.connections), to: String(e.connections) })
    if (e.refused > was.refused) out.push({ kind: 'connection-refused', export: name, count: e.refused - was.refused, total: e.refused })
  }
  return out
}

export interface PublisherOptions {
  node: string
  sample: () => Sample
  /** How often to sample while someone listens (ms). */
  interval?: number
  log?: (message: string) => void
}

/** Samples the node while it has subscribers, and hands each of them every event. */
export class EventPublisher {
  private readonly subscribers = new Set<(e: NodeEvent) => void>()
  private readonly closers = new Map<(e: NodeEvent) => void, () => void>()
  private timer: NodeJS.Timeout | null = null
  private last: Flat | null = null
  private ratesAt = 0
  private ratesBase: Flat | null = null
  private ratesMoving = false
  private readonly progressAt = new Map<string, number>()
  private readonly interval: number

  constructor (private readonly options: PublisherOptions) {
    this.interval = options.interval ?? 250
  }

  get listeners (): number { return this.subscribers.size }

  /**
   * Calls `fn` with a snapshot now, then with every change until the returned function is called; `onClose` when the
   * publisher closes first (the node stops).
   */
  subscribe (fn: (e: NodeEvent) => void, onClose?: () => void): () => void {
    const sample = this.options.sample()
    if (this.subscribers.size === 0) {
      this.last = flatten(sample)
      this.ratesBase = this.last
      this.ratesAt = Date.now()
      this.timer = setInterval(() => this.tick(), this.interval)
      this.timer.unref()
    }
    this.subscribers.add(fn)
    if (onClose !== undefined) this.closers.set(fn, onClose)
    fn(this.event({ kind: 'snapshot', status: sample.status }))
    return () => {
      this.subscribers.delete(fn)
      this.closers.delete(fn)
      if (this.subscribers.size === 0 && this.timer !== null) { clearInterval(this.timer); this.timer = null; this.last = null }
    }
  }

  /** Stops sampling and drops every subscriber (the node is stopping). */
  close (): void {
    const closers = [...this.closers.values()]
    this.subscribers.clear()
    this.closers.clear()
    for (const c of closers) {
      try {
        c()
      } catch (err) {
        this.options.log?.(`events: closing a stream failed: ${(err as Error).message}`)
      }
    }
    if (this.timer !== null) { clearInterval(this.timer); this.timer = null }
  }

  private event (e: EventBody): NodeEvent {
    return { time: new Date().toISOString(), node: this.options.node, ...e }
  }

  private tick (): void {
    let next: Flat
    try {
      next = flatten(this.options.sample())
    } catch (err) {
      this.options.log?.(`events: cannot sample the node's status: ${(err as Error).message}`)
      return
    }
    const now = Date.now()
    const changes = this.last === null ? [] : diff(this.last, next, now, this.progressAt)
    this.last = next
    if (now - this.ratesAt >= 1000 && this.ratesBase !== null) {
      const seconds = (now - this.ratesAt) / 1000
      const exports: Record<string, { readBytesPerSecond: number, writeBytesPerSecond: number }> = {}
      for (const [name, e] of next.exports) {
        const was = this.ratesBase.exports.get(name)
        exports[name] = { readBytesPerSecond: Math.max(0, Math.round((e.read - (was?.read ?? e.read)) / seconds)), writeBytesPerSecond: Math.max(0, Math.round((e.written - (was?.written ?? e.written)) / seconds)) }
      }
      // Sent while something moves, and once when it stops: an idle node says nothing.
      const moving = Object.values(exports).some(r => r.readBytesPerSecond > 0 || r.writeBytesPerSecond > 0)
      if (moving || this.ratesMoving) changes.push({ kind: 'rates', exports })
      this.ratesMoving = moving
      this.ratesBase = next
      this.ratesAt = now
    }
    for (const c of changes) {
      const e = this.event(c)
      for (const fn of [...this.subscribers]) {
        try {
          fn(e)
        } catch (err) {
          this.options.log?.(`events: a subscriber failed: ${(err as Error).stack ?? String(err)}`)
          this.subscribers.delete(fn)
        }
      }
    }
  }
}

/** What an event stream needs of an HTTP response (uWebSockets.js's HttpResponse has these). */
export interface StreamResponse {
  write: (chunk: string) => boolean
  onWritable: (fn: (offset: number) => boolean) => unknown
  cork: (fn: () => void) => unknown
  close: () => unknown
}

/** Default bound on what one event stream may hold for a client that does not read (bytes). */
export const DEFAULT_EVENTS_MAX_QUEUED = 1024 * 1024

/**
 * One Server-Sent Events stream: each event is a `data:` line. When the socket pushes back, events wait in a queue of
 * at most `maxQueued` bytes; a client that lets it fill (one that never reads) is closed, so it costs the node a
 * bounded amount of memory.
 */
export class EventStream {
  private readonly queue: string[] = []
  private queued = 0
  private blocked = false
  closed = false

  constructor (private readonly res: StreamResponse, private readonly maxQueued: number, private readonly onOverflow: (queued: number) => void) {
    res.onWritable(() => this.flush())
  }

  send (e: NodeEvent): void {
    if (this.closed) return
    const chunk = `data: ${JSON.stringify(e)}\n\n`
    if (this.blocked) {
      this.queue.push(chunk)
      this.queued += chunk.length
      if (this.queued > this.maxQueued) {
        this.closed = true
        this.onOverflow(this.queued)
        this.queue.length = 0
        this.res.close()
      }
      return
    }
    this.res.cork(() => { if (!this.res.write(chunk)) this.blocked = true })
  }

  /** The socket can take more: write what waits, until it pushes back again. */
  private flush (): boolean {
    if (this.closed) return true
    this.blocked = false
    let i = 0
    this.res.cork(() => {
      while (i < this.queue.length && !this.blocked) {
        const chunk = this.queue[i++]
        this.queued -= chunk.length
        if (!this.res.write(chunk)) this.blocked = true
      }
    })
    this.queue.splice(0, i)
    return !this.blocked
  }
}
