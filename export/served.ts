// What a protocol serves: an export as the daemon hands it to the native and NBD listeners (a device, its access rules,
// its write lease and its counters). Both protocols read it; neither knows how the daemon made it.

import type { Device } from '../node/core/device'
import type { Cidr } from '../node/core/acl'
import type { WriteLease } from '../node/core/lease'
import type { DirtyMaps } from '../node/core/dirty'

export interface ExportOptions {
  name: string
  device: Device
  readOnly: boolean
  allow: Cidr[]
  token?: string
  /** Several writers allowed (no write lease). */
  shared?: boolean
  /** Wire digests: every WRITE and READ payload on this export's connections carries a digest checked on receipt. */
  digest?: boolean
  /** "require": served to NBD clients only after STARTTLS (hidden from plain connections). */
  tls?: 'require'
  /** "require": clients must present a certificate signed by the node's CA. */
  clientCert?: 'require'
  /** Client certificate subjects allowed ("CN=n2"); implies clientCert "require". */
  allowSubjects?: string[]
}

/** An export as the listener sees it: a device, its access rules, its write lease and its counters. */
export interface ServedExport extends ExportOptions {
  metrics: ExportMetrics
  lease: WriteLease
  /** Told to clients in the handshake: how many times this node has started (restarts are visible). */
  generation: number
  /** The regions each member of the exported array is missing (NBD's qemu:dirty-bitmap contexts); absent: none. */
  dirty?: DirtyMaps
}

/** Per-export counters, bumped on the hot path by either protocol and rendered by the daemon's /metrics. */
export class ExportMetrics {
  readonly requests: Record<string, number> = { read: 0, write: 0, flush: 0, trim: 0, ping: 0, hash: 0, extents: 0, other: 0 }
  readonly errors: Record<string, number> = { read: 0, write: 0, flush: 0, trim: 0, ping: 0, hash: 0, extents: 0, other: 0 }
  bytesRead = 0
  bytesWritten = 0
  inFlight = 0
  connections = 0
  refused = 0
  protocolErrors = 0
  poolExhausted = 0
  bytesHashed = 0
  /** WRITE payloads refused because they did not match their wire digest. */
  digestErrors = 0
  /** Connections closed because their client stopped taking replies (or kept sending far past its bounds). */
  stalled = 0
}
