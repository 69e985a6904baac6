// TLS material and client-certificate rules shared by both protocols: the node's certificate, key and CA as files
// (what uWebSockets.js takes) and as their contents (what node:tls takes), and the `allowSubjects` check on a peer
// certificate's subject. Node's TLS does the cryptography and the chain check; this file only names and compares.

import * as fs from 'node:fs'

/** The node's TLS files (config `tls`), paths already resolved. */
export interface TlsFiles {
  cert: string
  key: string
  /** The CA that signs peers' certificates: checked on servers we connect to and on client certificates. */
  ca?: string
  passphrase?: string
}

/** The same files read, once, at start. */
export interface TlsMaterial {
  files: TlsFiles
  cert: Buffer
  key: Buffer
  ca?: Buffer
  passphrase?: string
}

export function readTls (files: TlsFiles): TlsMaterial {
  return {
    files,
    cert: fs.readFileSync(files.cert),
    key: fs.readFileSync(files.key),
    ...(files.ca !== undefined ? { ca: fs.readFileSync(files.ca) } : {}),
    ...(files.passphrase !== undefined ? { passphrase: files.passphrase } : {}),
  }
}

/** What a listener learned of the peer's certificate after the handshake (node:tls: `authorized`, `getPeerCertificate`). */
export interface PeerCertificate {
  /** The certificate chains to the node's CA, is within its validity, and so on (Node's verdict). */
  authorized: boolean
  /** Why not, when it is not (`CERT_HAS_EXPIRED`, `UNABLE_TO_VERIFY_LEAF_SIGNATURE`, …); null when authorized. */
  error: string | null
  /** The subject's attributes (CN, O, …), or null when the peer presented no certificate. */
  subject: Record<string, string | string[]> | null
}

/** What an export asks of a client's certificate (config `clientCert`, `allowSubjects`). */
export interface CertRules {
  clientCert?: 'require'
  allowSubjects?: string[]
}

/**
 * Parses an allowSubjects entry such as "CN=n2" or "CN=n2,O=lab": a list of attribute=value pairs, every one of which
 * the subject must carry. A string is the reason it is not one.
 */
export function parseSubject (text: unknown): Array<[string, string]> | string {
  if (typeof text !== 'string' || text.trim() === '') return `expected a subject like "CN=n2" or "CN=n2,O=lab", got ${JSON.stringify(text)}`
  const pairs: Array<[string, string]> = []
  for (const part of text.split(',')) {
    const m = /^\s*([A-Za-z][A-Za-z0-9.]*)\s*=\s*(.+?)\s*$/.exec(part)
    if (m === null) return text.includes(',') ? `"${text}": "${part.trim()}" is not ATTRIBUTE=VALUE` : `"${text}" is not ATTRIBUTE=VALUE`
    pairs.push([m[1], m[2]])
  }
  return pairs
}

/** The subject as text, for logs and refusals: "CN=n2, O=lab". */
export function subjectText (subject: Record<string, string | string[]> | null): string {
  if (subject === null) return '(no certificate)'
  return Object.entries(subject).map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('+') : v}`).join(', ')
}

function subjectMatches (pattern: Array<[string, string]>, subject: Record<string, string | string[]>): boolean {
  return pattern.every(([k, v]) => {
    const have = subject[k]
    return Array.isArray(have) ? have.includes(v) : have === v
  })
}

/**
 * Why `peer` may not use an export with `rules` (null: it may). `exportName` names the export in the reason. A peer of
 * `undefined` is a connection whose listener cannot see certificates at all (uWebSockets.js): refused when a
 * certificate is required, with `elsewhere` saying where to connect instead.
 */
export function certRefusal (rules: CertRules, peer: PeerCertificate | undefined, exportName: string, elsewhere = ''): string | null {
  const required = rules.clientCert === 'require' || (rules.allowSubjects !== undefined && rules.allowSubjects.length > 0)
  if (!required) return null
  if (peer === undefined) return `export '${exportName}' requires a client certificate, which this listener cannot check${elsewhere === '' ? '' : elsewhere.startsWith('dsts:') ? `; connect to ${elsewhere}` : `; ${elsewhere}`}`
  if (peer.subject === null) return `export '${exportName}' requires a client certificate; none was presented`
  if (!peer.authorized) return `export '${exportName}': client certificate (${subjectText(peer.subject)}) not accepted: ${peer.error ?? 'not signed by the node\'s CA'}`
  if (rules.allowSubjects !== undefined && rules.allowSubjects.length > 0) {
    const subject = peer.subject
    const ok = rules.allowSubjects.some(s => { const p = parseSubject(s); return typeof p !== 'string' && subjectMatches(p, subject) })
    if (!ok) return `export '${exportName}': client certificate subject ${subjectText(subject)} is not in its allowSubjects (${rules.allowSubjects.join('; ')})`
  }
  return null
}

/** A node:tls socket's certificate verdict as a PeerCertificate. */
export function peerOf (socket: { authorized: boolean, authorizationError?: Error | string | null, getPeerCertificate: (detailed?: false) => object | null }): PeerCertificate {
  const cert = socket.getPeerCertificate() as { subject?: Record<string, string | string[]> } | null
  const subject = cert !== null && cert.subject !== undefined && Object.keys(cert).length > 0 ? cert.subject : null
  const error = socket.authorizationError
  return { authorized: socket.authorized, error: socket.authorized ? null : error === undefined || error === null ? null : String(error instanceof Error ? ((error as NodeJS.ErrnoException).code ?? error.message) : error), subject }
}
