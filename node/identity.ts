// Stable identities (UUID-shaped) derived from what a device is made of: the same inputs always give the same id.

import { createHash } from 'node:crypto'

export function derivedIdentity (text: string): string {
  const h = createHash('sha256').update(text).digest('hex')
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-8${h.slice(17, 20)}-${h.slice(20, 32)}`
}
