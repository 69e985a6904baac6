// Exclusive ownership of what a node writes: its dataDir (one node per dataDir, so one write-intent map per mirror)
// and the backing file of each file device (one node per file). Locks are Linux open-file-description locks
// (fs-native-extensions' tryLock: F_OFD_SETLK on Linux, flock elsewhere), held as long as the fd is open, so they are
// released by the kernel however the process ends, even by kill -9: there is never a stale lock to clean up.
//
// The dataDir's lock file holds the name, pid and listen address of the node that holds it, so the next node can be
// told who is in its way. A file's lock carries no name, so the holder is looked up among the processes that have the
// file open (/proc/PID/fd), where this process may look.

import * as fs from 'node:fs'
import * as path from 'node:path'
import { DstError, ErrorCode } from './errors'

// The package ships no type definitions; these are the two calls used here.
const { tryLock } = require('fs-native-extensions') as { tryLock: (fd: number, options?: { shared?: boolean }) => boolean }

export interface LockHolder { name: string, pid: number, listen: string, since: string }

/** The lock on a node's dataDir (dataDir/lock): taken at start, released when the node stops or its process dies. */
export class DataDirLock {
  readonly file: string
  private fd: number | null

  private constructor (file: string, fd: number) {
    this.file = file
    this.fd = fd
  }

  /** Takes the lock or throws DST_ERR_LOCKED naming the node that holds it. */
  static acquire (dataDir: string, holder: LockHolder): DataDirLock {
    const file = path.join(dataDir, 'lock')
    const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644)
    let locked = false
    try {
      locked = tryLock(fd)
    } finally {
      if (!locked) fs.closeSync(fd)
    }
    if (!locked) {
      let who = 'another process'
      try {
        const h = JSON.parse(fs.readFileSync(file, 'utf8')) as Partial<LockHolder>
        if (typeof h.name === 'string') who = `node '${h.name}' (pid ${String(h.pid)}, listening on ${String(h.listen)}, since ${String(h.since)})`
      } catch {}
      throw new DstError(ErrorCode.LOCKED, `dataDir '${dataDir}' is in use by ${who}; each node needs a dataDir of its own`)
    }
    const lock = new DataDirLock(file, fd)
    lock.update(holder)
    return lock
  }

  /** Rewrites who holds it (the listen address is known only once the port is bound). */
  update (holder: LockHolder): void {
    if (this.fd === null) return
    const text = JSON.stringify(holder) + '\n'
    fs.ftruncateSync(this.fd, 0)
    fs.writeSync(this.fd, text, 0)
  }

  release (): void {
    if (this.fd === null) return
    fs.closeSync(this.fd)
    this.fd = null
  }
}

/**
 * Locks an open backing file: exclusively for a writable device, shared for a read-only one (readers may share a
 * file, a writer has it alone). Throws DST_ERR_LOCKED naming the process that holds it, where it can be found.
 */
export function lockBackingFile (fd: number, file: string, shared: boolean): void {
  if (tryLock(fd, { shared })) return
  const st = fs.fstatSync(fd)
  const holder = processesWithOpen(st.dev, st.ino, fd)
  const who = holder.length > 0 ? holder.join('; ') : 'another process (not one this user may look at)'
  throw new DstError(ErrorCode.LOCKED, `file device '${file}' is in use: ${who} holds its lock; a file backs one device of one node`)
}

/** The processes (pid and command line) that have the file dev:ino open, besides our own fd; bounded and cheap. */
function processesWithOpen (dev: number, ino: number, ownFd: number): string[] {
  const found: string[] = []
  let pids: string[]
  try { pids = fs.readdirSync('/proc').filter(p => /^\d+$/.test(p)) } catch { return found }
  for (const pid of pids.slice(0, 4096)) {
    let fds: string[]
    try { fds = fs.readdirSync(`/proc/${pid}/fd`) } catch { continue }
    for (const n of fds.slice(0, 4096)) {
      if (Number(pid) === process.pid && Number(n) === ownFd) continue
      try {
        const st = fs.statSync(`/proc/${pid}/fd/${n}`)
        if (st.dev !== dev || st.ino !== ino) continue
      } catch { continue }
      found.push(describeProcess(Number(pid)))
      break
    }
    if (found.length >= 3) break
  }
  return found
}

function describeProcess (pid: number): string {
  if (pid === process.pid) return `this process (pid ${pid})`
  let cmd = ''
  try { cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' ') } catch {}
  return `pid ${pid}${cmd !== '' ? ` (${cmd.length > 160 ? cmd.slice(0, 157) + '...' : cmd})` : ''}`
}

/**
 * mkdir -p, one level at a time (returns the folders it made, outermost first): Node's recursive mkdir loops forever where mkdir answers ENOENT for a folder that
 * exists (under /proc), so each missing level is made on its own and the first refusal is final.
 */
export function makeDir (dir: string): string[] {
  const missing: string[] = []
  let at = path.resolve(dir)
  for (let depth = 0; depth < 4096; depth++) {
    try {
      if (!fs.statSync(at).isDirectory()) throw new DstError(ErrorCode.ENOTDIR, `'${at}' is not a folder`)
      break
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
      missing.push(at)
      const up = path.dirname(at)
      if (up === at) break
      at = up
    }
  }
  const made: string[] = []
  for (const d of missing.reverse()) {
    try { fs.mkdirSync(d); made.push(d) } catch (err) { if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err }
  }
  return made
}
