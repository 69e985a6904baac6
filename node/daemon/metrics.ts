// Counters for `/metrics` (Prometheus text format). Plain numbers bumped on the hot path; text is built on scrape.

import { gcCounts } from '../core/gc'
import { dstVersion } from '../core/version'
import type { HasherStats } from '../core/hasher'
import type { ExportMetrics } from '../../export/served'

function esc (value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')
}

export interface PoolGauges { count: number, size: number, available: number, waits: number }

/** What a mirror array counts: checksum resync and online verify. */
export interface ArrayCounters {
  name: string
  resyncCopiedBytes: number
  resyncComparedBytes: number
  /** Bytes of source holes resyncs skipped (neither read nor written). */
  resyncSkippedBytes: number
  verifyRuns: number
  verifyBytes: number
  verifyMismatches: number
  verifyRepaired: number
  verifyRunning: number
  /** How many legs are in each state (in-sync, stale, resyncing, failed, foreign). */
  legs: Record<string, number>
}

/** A device of the node and its state now (foreign: its peer serves another disk). */
export interface DeviceGauge { name: string, type: string, state: string }

const LEG_STATES = ['in-sync', 'stale', 'resyncing', 'failed', 'foreign']
const DEVICE_STATES = ['opening', 'online', 'degraded', 'connecting', 'foreign', 'failed', 'closing', 'closed']

interface StatusDevice { type?: string, state?: string, connected?: boolean, reconnects?: number, dirtyBytes?: number, resync?: { doneBytes: number, totalBytes: number }, members?: Array<StatusDevice & { name: string }> }

/**
 * State for alerting, read from the node's /status document (so it follows whatever the devices report, and knows
 * nothing of their insides): mirror legs by state, dirty and resync bytes per leg, remote links, write leases.
 */
export function renderStateMetrics (node: string, status: { devices: Record<string, StatusDevice>, exports: Array<{ name: string, shared?: boolean, lease?: { holder: string | null } }> }): string {
  const lines: string[] = []
  const family = (name: string, type: string, help: string, rows: Array<[string, number]>): void => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`)
    for (const [labels, value] of rows) lines.push(`${name}{${labels}} ${value}`)
  }
  const n = `node="${esc(node)}"`
  const legs: Array<{ array: string, leg: StatusDevice & { name: string } }> = []
  for (const [name, d] of Object.entries(status.devices)) if (d.type === 'mirror' || d.type === 'parity') for (const leg of d.members ?? []) legs.push({ array: name, leg })
  const leg = (a: { array: string, leg: { name: string } }): string => `${n},array="${esc(a.array)}",leg="${esc(a.leg.name)}"`
  family('dst_leg_state', 'gauge', 'Each leg of each mirror and each state it may be in: 1 for its state now, 0 for the others.',
    legs.flatMap(a => LEG_STATES.map((st): [string, number] => [`${leg(a)},state="${st}"`, a.leg.state === st ? 1 : 0])))
  family('dst_leg_dirty_bytes', 'gauge', 'Bytes of a leg that differ from the mirror (written while it was away), to copy by a resync.', legs.map(a => [leg(a), a.leg.dirtyBytes ?? 0]))
  family('dst_resync_done_bytes', 'gauge', 'Bytes the running resync of a leg has done (0 when none runs).', legs.map(a => [leg(a), a.leg.resync?.doneBytes ?? 0]))
  family('dst_resync_total_bytes', 'gauge', 'Bytes the running resync of a leg has to do (0 when none runs).', legs.map(a => [leg(a), a.leg.resync?.totalBytes ?? 0]))
  const remotes = Object.entries(status.devices).filter(([, d]) => d.type === 'remote')
  family('dst_remote_connected', 'gauge', 'A remote device has a live link to its peer (1) or not (0).', remotes.map(([name, d]) => [`${n},device="${esc(name)}"`, d.connected === true ? 1 : 0]))
  family('dst_remote_reconnects_total', 'counter', 'Times the link of a remote device came back after it dropped.', remotes.map(([name, d]) => [`${n},device="${esc(name)}"`, d.reconnects ?? 0]))
  family('dst_lease_held', 'gauge', 'A writer holds the write lease of an export (1) or not (0); shared exports have no lease.',
    status.exports.filter(e => e.shared !== true).map(e => [`${n},export="${esc(e.name)}"`, e.lease?.holder != null ? 1 : 0]))
  return lines.join('\n') + '\n'
}

export function renderMetrics (node: string, exports: ReadonlyArray<{ name: string, metrics: ExportMetrics }>, pool: PoolGauges,
  arrays: ArrayCounters[] = [], hash?: HasherStats, devices: DeviceGauge[] = []): string {
  const lines: string[] = []
  const family = (name: string, type: string, help: string, rows: Array<[string, number]>): void => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`)
    for (const [labels, value] of rows) lines.push(`${name}{${labels}} ${value}`)
  }
  const per = (fn: (m: ExportMetrics) => Array<[string, number]>): Array<[string, number]> =>
    exports.flatMap(e => fn(e.metrics).map(([l, v]): [string, number] => [`node="${esc(node)}",export="${esc(e.name)}"${l}`, v]))
  family('dst_requests_total', 'counter', 'Requests received, by operation.',
    per(m => Object.entries(m.requests).map(([op, v]): [string, number] => [`,op="${op}"`, v])))
  family('dst_request_errors_total', 'counter', 'Requests answered with an error, by operation.',
    per(m => Object.entries(m.errors).map(([op, v]): [string, number] => [`,op="${op}"`, v])))
  family('dst_bytes_total', 'counter', 'Payload bytes moved, by direction.',
    per(m => [[',direction="read"', m.bytesRead], [',direction="write"', m.bytesWritten]]))
  family('dst_requests_in_flight', 'gauge', 'Requests received and not yet answered.', per(m => [['', m.inFlight]]))
  family('dst_connections', 'gauge', 'Open client connections.', per(m => [['', m.connections]]))
  family('dst_connections_refused_total', 'counter', 'Connections refused by the allow list, the token or the export state.', per(m => [['', m.refused]]))
  family('dst_protocol_errors_total', 'counter', 'Connections closed for a malformed frame.', per(m => [['', m.protocolErrors]]))
  family('dst_pool_exhausted_total', 'counter', 'Writes that found every pool buffer in use, or their connection at its share of the pool (native protocol: answered EAGAIN; NBD: the connection pauses until one frees).', per(m => [['', m.poolExhausted]]))
  family('dst_connections_stalled_total', 'counter', 'Connections closed because their client did not read its replies (or kept sending past its bounds while it did not).', per(m => [['', m.stalled]]))
  family('dst_hashed_bytes_total', 'counter', 'Bytes digested for HASH requests.', per(m => [['', m.bytesHashed]]))
  family('dst_digest_errors_total', 'counter', 'WRITE payloads refused because they did not match their wire digest.', per(m => [['', m.digestErrors]]))
  const n = `node="${esc(node)}"`
  family('dst_build_info', 'gauge', 'The version of dst this node runs (always 1).', [[`${n},version="${esc(dstVersion())}"`, 1]])
  family('dst_pool_buffers', 'gauge', 'Buffers in the preallocated pool.', [[n, pool.count]])
  family('dst_pool_buffer_bytes', 'gauge', 'Size of each pool buffer.', [[n, pool.size]])
  family('dst_pool_buffers_free', 'gauge', 'Pool buffers free now.', [[n, pool.available]])
  family('dst_pool_waits_total', 'counter', 'Times a request waited for a pool buffer (backpressure).', [[n, pool.waits]])
  family('dst_gc_total', 'counter', 'Garbage collections of the node, by kind (minor = young generation).',
    [[`${n},kind="minor"`, gcCounts.minor], [`${n},kind="major"`, gcCounts.major], [`${n},kind="other"`, gcCounts.other]])
  const mem = process.memoryUsage()
  family('dst_memory_bytes', 'gauge', 'Memory of the node process: resident set, JavaScript heap used and reserved (main thread), and memory outside it (buffers; array_buffers is the part in ArrayBuffers, the pool among them).',
    [[`${n},kind="rss"`, mem.rss], [`${n},kind="heap_used"`, mem.heapUsed], [`${n},kind="heap_total"`, mem.heapTotal], [`${n},kind="external"`, mem.external], [`${n},kind="array_buffers"`, mem.arrayBuffers]])
  const arr = (fn: (a: ArrayCounters) => number): Array<[string, number]> => arrays.map(a => [`${n},array="${esc(a.name)}"`, fn(a)])
  family('dst_resync_copied_bytes_total', 'counter', 'Bytes resyncs copied to legs.', arr(a => a.resyncCopiedBytes))
  family('dst_resync_skipped_bytes_total', 'counter', 'Bytes of source holes resyncs skipped: neither read nor written to the leg.', arr(a => a.resyncSkippedBytes))
  family('dst_resync_compared_bytes_total', 'counter', 'Bytes resyncs compared by digest before copying.', arr(a => a.resyncComparedBytes))
  family('dst_verify_runs_total', 'counter', 'Online verifies started.', arr(a => a.verifyRuns))
  family('dst_verify_bytes_total', 'counter', 'Bytes an online verify compared on two legs or more.', arr(a => a.verifyBytes))
  family('dst_verify_mismatches_total', 'counter', 'Regions an online verify found different between legs.', arr(a => a.verifyMismatches))
  family('dst_verify_repaired_total', 'counter', 'Mismatched regions marked for resync by a verify repair.', arr(a => a.verifyRepaired))
  family('dst_verify_running', 'gauge', 'An online verify is running (1) or not (0).', arr(a => a.verifyRunning))
  family('dst_mirror_legs', 'gauge', 'Legs of a mirror by state (foreign: another disk answers where the leg was; it is never written).',
    arrays.flatMap(a => LEG_STATES.map((st): [string, number] => [`${n},array="${esc(a.name)}",state="${st}"`, a.legs[st] ?? 0])))
  family('dst_device_state', 'gauge', 'Each device of the node and each state it may be in: 1 for its state now, 0 for the others (like node_md_state).',
    devices.flatMap(d => (DEVICE_STATES.includes(d.state) ? DEVICE_STATES : [...DEVICE_STATES, d.state])
      .map((st): [string, number] => [`${n},device="${esc(d.name)}",type="${esc(d.type)}",state="${esc(st)}"`, st === d.state ? 1 : 0])))
  if (hash !== undefined) {
    family('dst_hash_tasks_total', 'counter', 'Digest tasks run, by where (worker thread, or inline on the loop for a few KiB).',
      [[`${n},where="worker"`, hash.tasks], [`${n},where="inline"`, hash.inline]])
    family('dst_hash_bytes_total', 'counter', 'Bytes digested.', [[n, hash.bytes]])
    family('dst_hash_errors_total', 'counter', 'Digest tasks that failed (busy: refused because the queue was full).',
      [[`${n},kind="failed"`, hash.errors], [`${n},kind="busy"`, hash.busy]])
  }
  return lines.join('\n') + '\n'
}
