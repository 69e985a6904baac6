// Identities (UUID-shaped): derived ones, the same inputs always giving the same id (devices, writers), and the node's
// own, random, made at its first start and kept in its dataDir (so two machines with one config are two nodes).

import { createHash, randomUUID } from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { writeFileAtomicSync } from './atomic-file'

export function derivedIdentity (text: string): string {
  const h = createHash('sha256').update(text).digest('hex')
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-8${h.slice(17, 20)}-${h.slice(20, 32)}`
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

/** A node without a dataDir (a config-less `dst export`) is a new node in every process. */
const processNodeId = randomUUID()

/**
 * This node's identity: read from dataDir/node-id, or made at the first start and written there atomically (temporary
 * file, fsync, rename, fsync of the folder), so a crash leaves either no file or a whole one. Null dataDir: an id for
 * this process only.
 */
export function nodeIdentity (dataDir: string | null): string {
  if (dataDir === null) return processNodeId
  const file = path.join(dataDir, 'node-id')
  try {
    const text = fs.readFileSync(file, 'utf8').trim()
    if (UUID.test(text)) return text
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  const id = randomUUID()
  writeFileAtomicSync(file, `${id}\n`)
  return id
}
