// One writer per export: the first writer that names itself (a dst node's remote device sends a stable writer id)
// holds a lease on the export. The lease survives that writer's own reconnects, is refused to any other writer while
// held, and expires `timeout` ms after the holder's last connection closed. Each new holder gets a higher fencing
// token; a connection whose token is not the current one may not write. Anonymous clients (no writer id, e.g. a
// `dst copy`) may write only while nobody holds the lease, and never take it. Exports marked `shared` skip all this.

export type LeaseAnswer = { ok: true, token: number } | { ok: false, reason: string }

export class WriteLease {
  owner: string | null = null
  token = 0
  private sessions = 0
  private expiry: NodeJS.Timeout | null = null
  private expiresAt = 0

  constructor (private readonly timeout: number) {}

  acquire (owner: string): LeaseAnswer {
    if (this.owner !== null && this.owner !== owner) {
      const left = this.sessions > 0 ? 'while it is connected' : `for ${Math.max(0, Math.ceil((this.expiresAt - Date.now()) / 1000))} s more`
      return { ok: false, reason: `held by writer ${this.owner} ${left}; one writer per export (mark the export "shared" to allow several)` }
    }
    if (this.owner === null) { this.owner = owner; this.token++ }
    if (this.expiry !== null) { clearTimeout(this.expiry); this.expiry = null }
    this.sessions++
    return { ok: true, token: this.token }
  }

  release (owner: string): void {
    if (owner !== this.owner || this.sessions === 0) return
    if (--this.sessions > 0) return
    this.expiresAt = Date.now() + this.timeout
    this.expiry = setTimeout(() => {
      this.expiry = null
      if (this.sessions === 0) this.owner = null
    }, this.timeout)
    this.expiry.unref()
  }

  /** May a connection (with this writer id and token, or anonymous) write now? */
  mayWrite (owner: string | null, token: number): boolean {
    if (owner === null) return this.owner === null
    return owner === this.owner && token === this.token
  }

  describe (): { holder: string | null, token: number, connections: number } {
    return { holder: this.owner, token: this.token, connections: this.sessions }
  }
}
