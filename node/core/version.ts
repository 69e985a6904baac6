// The version of dst this process runs: package.json's, read once.

import * as fs from 'node:fs'
import * as path from 'node:path'

let known: string | null = null

export function dstVersion (): string {
  if (known === null) {
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version?: unknown }
    known = typeof pkg.version === 'string' ? pkg.version : 'unknown'
  }
  return known
}
