// The one way a persisted file is replaced (node-id, generation, arrays.json, remotes.json, write-intent maps): write a
// temporary file beside it, fsync it, rename it over the old one, fsync the folder. After a crash the file is either
// the old one or the whole new one, never a mix, and once the call returns the new one survives a power cut.

import * as fs from 'node:fs'
import * as path from 'node:path'

function tempName (file: string): string {
  return `${file}.tmp`
}

/** Synchronous form, for small files written at start or by an admin action. Creates the folder if needed. */
export function writeFileAtomicSync (file: string, data: string | Uint8Array, mode = 0o644): void {
  const dir = path.dirname(file)
  fs.mkdirSync(dir, { recursive: true })
  const tmp = tempName(file)
  const fd = fs.openSync(tmp, 'w', mode)
  try {
    fs.writeFileSync(fd, data)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  fs.renameSync(tmp, file)
  const d = fs.openSync(dir, 'r')
  try { fs.fsyncSync(d) } finally { fs.closeSync(d) }
}

/** Asynchronous form, for files rewritten while serving. Callers serialize their own writes to one file. */
export async function writeFileAtomic (file: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  const dir = path.dirname(file)
  await fs.promises.mkdir(dir, { recursive: true })
  const tmp = tempName(file)
  const fh = await fs.promises.open(tmp, 'w', mode)
  try {
    await fh.writeFile(data)
    await fh.sync()
  } finally {
    await fh.close()
  }
  await fs.promises.rename(tmp, file)
  const d = await fs.promises.open(dir, 'r')
  try { await d.sync() } finally { await d.close() }
}
