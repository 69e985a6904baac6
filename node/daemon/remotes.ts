// What each remote device of a node found at its last handshake (size, block size, identity, flags), kept in
// dataDir/remotes.json so that the node can start while a peer is away: the device opens `connecting` with these
// values, and a peer that later answers with another disk is recognised as foreign. Written atomically (temporary
// file, fsync, rename, fsync of the folder); writes are queued, so the file always holds the latest of them.

import * as fs from 'node:fs'
import * as path from 'node:path'
import type { RemoteDisk } from '../../export/native/remote-device'
import { writeFileAtomic } from '../core/atomic-file'
import { DstError, ErrorCode } from '../core/errors'

interface Entry extends RemoteDisk { url: string }

export class RemoteMemory {
  private readonly entries: Record<string, Entry>
  private writing: Promise<void> = Promise.resolve()

  private constructor (readonly file: string, entries: Record<string, Entry>) {
    this.entries = entries
  }

  /** Reads dataDir/remotes.json at start (before anything is served, so a synchronous read is fine). */
  static load (dataDir: string): RemoteMemory {
    const file = path.join(dataDir, 'remotes.json')
    let text: string
    try {
      text = fs.readFileSync(file, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return new RemoteMemory(file, {})
      throw new DstError(ErrorCode.STATE, `${file}: cannot read it: ${(err as Error).message}`)
    }
    let raw: unknown
    try {
      raw = JSON.parse(text)
    } catch (err) {
      throw new DstError(ErrorCode.STATE, `${file}: not valid JSON (${(err as Error).message}); remove it to forget what the remote devices' peers served`)
    }
    const entries: Record<string, Entry> = {}
    for (const [name, e] of Object.entries((raw as { devices?: Record<string, Entry> }).devices ?? {})) {
      if (typeof e?.url === 'string' && Number.isSafeInteger(e.size) && e.size > 0 && typeof e.identity === 'string' &&
          Number.isInteger(e.blockSize) && Number.isInteger(e.maxRequest) && Number.isInteger(e.flags)) entries[name] = e
    }
    return new RemoteMemory(file, entries)
  }

  /** The disk device `name` found at its last handshake, if it pointed at the same URL then. */
  get (name: string, url: string): RemoteDisk | undefined {
    const e = this.entries[name]
    if (e === undefined || e.url !== url) return undefined
    return { size: e.size, blockSize: e.blockSize, maxRequest: e.maxRequest, identity: e.identity, flags: e.flags }
  }

  /** Records what device `name` (at `url`) found; resolves once it is durable. */
  set (name: string, url: string, disk: RemoteDisk): Promise<void> {
    this.entries[name] = { url, ...disk }
    const text = JSON.stringify({ devices: this.entries }, null, 2) + '\n'
    this.writing = this.writing.catch(() => {}).then(() => writeFileAtomic(this.file, text))
    return this.writing
  }
}
