// Certificates for the TLS tests and tools/dev/tls-bench.ts, made with `openssl` in a temporary folder: a CA, one certificate per node (used as
// its server certificate, with 127.0.0.1 and localhost as names, and as its client certificate), and the bad ones each
// refusal needs: signed by another CA, expired, and a right one with another subject. P-256 keys: fast to make.

import { execFileSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'

function openssl (dir: string, args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], timeout: 30000 })
}

export interface Cert { cert: string, key: string }

export class TestCa {
  readonly cert: string
  private readonly key: string
  private serial = 1

  constructor (readonly dir: string, readonly name = 'ca', subject = '/CN=dst test CA') {
    fs.mkdirSync(dir, { recursive: true })
    this.cert = path.join(dir, `${name}-cert.pem`)
    this.key = path.join(dir, `${name}-key.pem`)
    openssl(dir, ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', this.key, '-out', this.cert, '-days', '30', '-subj', subject])
  }

  /** A certificate for `cn` signed by this CA, valid for `days` (negative: already expired), named 127.0.0.1 and localhost. */
  issue (file: string, cn: string, days = 30): Cert {
    const key = path.join(this.dir, `${file}-key.pem`)
    const cert = path.join(this.dir, `${file}-cert.pem`)
    const csr = path.join(this.dir, `${file}.csr`)
    const ext = path.join(this.dir, `${file}.ext`)
    fs.writeFileSync(ext, 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n')
    openssl(this.dir, ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', csr, '-subj', `/CN=${cn}`])
    openssl(this.dir, ['x509', '-req', '-in', csr, '-CA', this.cert, '-CAkey', this.key, '-set_serial', String(this.serial++), '-out', cert, '-days', String(days), '-extfile', ext])
    return { cert, key }
  }
}

/**
 * A folder as libnbd (gnutls) and qemu's tls-creds-x509 read it: ca-cert.pem, and for a client client-cert.pem and
 * client-key.pem.
 */
export function x509Dir (dir: string, ca: string, client?: Cert): string {
  fs.mkdirSync(dir, { recursive: true })
  fs.copyFileSync(ca, path.join(dir, 'ca-cert.pem'))
  if (client !== undefined) {
    fs.copyFileSync(client.cert, path.join(dir, 'client-cert.pem'))
    fs.copyFileSync(client.key, path.join(dir, 'client-key.pem'))
  }
  return dir
}
