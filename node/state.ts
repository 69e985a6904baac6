// Live changes an operator made to a running node (`dst array add/remove/split`), kept in dataDir/arrays.json and laid
// over the config file at every start, so a restart keeps them. The config file itself is never rewritten.

import * as fs from 'node:fs'
import * as path from 'node:path'
import { makeDir } from './lock'

export interface NodeOverlay {
  /** Array name -> its members now. */
  arrays: Record<string, { members: string[] }>
  /** Remote devices added by URL (`dst array add … dst://…`). */
  devices: Record<string, { type: 'remote', url: string, token?: string }>
  /** Exports added for split-off legs. */
  exports: Array<{ name: string, device: string, readOnly: boolean }>
}

export function overlayFile (dataDir: string): string {
  return path.join(dataDir, 'arrays.json')
}

export function emptyOverlay (): NodeOverlay {
  return { arrays: {}, devices: {}, exports: [] }
}

/** Reads the overlay at start (before anything is served, so a synchronous read is fine). */
export function readOverlay (dataDir: string): NodeOverlay | null {
  let text: string
  try {
    text = fs.readFileSync(overlayFile(dataDir), 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw err
  }
  const o = JSON.parse(text) as Partial<NodeOverlay>
  return { arrays: o.arrays ?? {}, devices: o.devices ?? {}, exports: o.exports ?? [] }
}

/** Writes the overlay durably: temporary file, fsync, rename. */
export async function writeOverlay (dataDir: string, overlay: NodeOverlay): Promise<void> {
  makeDir(dataDir)
  const file = overlayFile(dataDir)
  const tmp = `${file}.tmp`
  const fh = await fs.promises.open(tmp, 'w')
  try {
    await fh.writeFile(JSON.stringify(overlay, null, 2) + '\n')
    await fh.sync()
  } finally {
    await fh.close()
  }
  await fs.promises.rename(tmp, file)
}

/** Lays the overlay over a raw config object (before validation, so the result is checked like any config). */
export function applyOverlay (raw: Record<string, unknown>, overlay: NodeOverlay): Record<string, unknown> {
  const devices = { ...(raw.devices as Record<string, Record<string, unknown>>) }
  for (const [name, d] of Object.entries(overlay.devices)) devices[name] = { ...d }
  for (const [name, a] of Object.entries(overlay.arrays)) {
    if (devices[name] !== undefined) devices[name] = { ...devices[name], members: [...a.members] }
  }
  const exports = [...((raw.exports as unknown[] | undefined) ?? [])]
  for (const e of overlay.exports) exports.push({ ...e })
  return { ...raw, devices, exports }
}
