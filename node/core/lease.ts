// One writer per export: the first writer that names itself (a dst node's remote device sends a writer id derived
// from its node's identity) holds a lease on the export. The lease survives that writer's own reconnects, is refused
// to any other writer while held, and expires `timeout` ms after the holder's last connection closed, or at once when
// the holder said it is gone for good (a clean stop: `relinquish`). Each new holder gets a higher fencing token; a
// connection whose token is not the current one may not write. Anonymous clients (no writer id, e.g. a `dst copy`)
// may write only while nobody holds the lease, and never take it. Exports marked `shared` skip all this.

/** Who the holder is, as far as the export can tell: the node name it sent and the address it connected from. */
export interface LeaseHolder { name: string, address: string }

/** A refusal says whom the lease belongs to and, once the holder has left, in how many ms it expires. */
export type LeaseAnswer = { ok: true, token: number } | { ok: false, reason: string, expiresIn: number | null }

export class WriteLease {
  owner: string | null = null
  token = 0
  private holder: LeaseHolder | null = null
  private sessions = 0
  private leaving = false
  private expiry: NodeJS.Timeout | null = null
  private expiresAt = 0

  constructor (private readonly timeout: number) {}

  acquire (owner: string, holder: LeaseHolder | null = null): LeaseAnswer {
    if (this.owner !== null && this.owner !== owner) {
      const expiresIn = this.sessions > 0 ? null : Math.max(0, this.expiresAt - Date.now())
      const left = expiresIn === null ? 'while it is connected' : `for ${Math.ceil(expiresIn / 1000)} s more (until ${new Date(this.expiresAt).toISOString()}, unless it comes back)`
      return { ok: false, reason: `held by ${this.holderText()} ${left}; one writer per export (mark the export "shared" to allow several)`, expiresIn }
    }
    if (this.owner === null) { this.owner = owner; this.token++ }
    if (holder !== null) this.holder = holder
    if (this.expiry !== null) { clearTimeout(this.expiry); this.expiry = null }
    this.leaving = false
    this.sessions++
    return { ok: true, token: this.token }
  }

  release (owner: string): void {
    if (owner !== this.owner || this.sessions === 0) return
    if (--this.sessions > 0) return
    if (this.leaving) { this.free(); return }
    this.expiresAt = Date.now() + this.timeout
    this.expiry = setTimeout(() => {
      this.expiry = null
      if (this.sessions === 0) this.free()
    }, this.timeout)
    this.expiry.unref()
  }

  /** The holder is gone for good (it closed with "writer done"): the lease ends with its last connection. */
  relinquish (owner: string): void {
    if (owner !== this.owner) return
    this.leaving = true
    if (this.sessions === 0) this.free()
  }

  /** May a connection (with this writer id and token, or anonymous) write now? */
  mayWrite (owner: string | null, token: number): boolean {
    if (owner === null) return this.owner === null
    return owner === this.owner && token === this.token
  }

  /** "node 'n2' at 127.0.0.1 (writer 3f0c…)", or "writer 3f0c…" for a writer that did not name its node. */
  holderText (): string {
    if (this.owner === null) return 'nobody'
    const h = this.holder
    if (h === null) return `writer ${this.owner}`
    return `${h.name !== '' ? `node '${h.name}'` : 'a writer'} at ${h.address} (writer ${this.owner})`
  }

  describe (): { holder: string | null, name: string | null, address: string | null, token: number, connections: number, expiresIn: number | null } {
    const expiresIn = this.owner !== null && this.sessions === 0 ? Math.max(0, this.expiresAt - Date.now()) : null
    const h = this.owner !== null ? this.holder : null
    return { holder: this.owner, name: h?.name ?? null, address: h?.address ?? null, token: this.token, connections: this.sessions, expiresIn }
  }

  private free (): void {
    if (this.expiry !== null) { clearTimeout(this.expiry); this.expiry = null }
    this.owner = null
    this.holder = null
    this.leaving = false
  }
}
