// Live changes an operator made to a running node (`dst array add/remove/split`), kept in dataDir/arrays.json and laid
// over the config file at every start, so a restart keeps them. The config file itself is never rewritten.

import * as fs from 'node:fs'
import * as path from 'node:path'
import { makeDir } from '../core/lock'
import { writeFileAtomicSync } from '../core/atomic-file'
import { ConfigError } from '../core/errors'
import { exportNameProblem, nameProblem } from '../core/names'
import { parseDstUrl } from '../core/url'

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
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch (err) {
    throw new ConfigError(`${overlayFile(dataDir)}: not valid JSON: ${(err as Error).message}`)
  }
  return checkOverlay(raw, overlayFile(dataDir))
}

/**
 * Checks an overlay as the config checks names and URLs (node/core/names.ts), so what a node writes it can read at its next
 * start. Throws a ConfigError naming the file and the field.
 */
export function checkOverlay (raw: unknown, label: string): NodeOverlay {
  const fail = (field: string, problem: string): never => { throw new ConfigError(`${label}: ${field}: ${problem}`) }
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)
  const name = (v: unknown, field: string): string => { const p = nameProblem(v); return p === null ? v as string : fail(field, p) }
  if (!isObject(raw)) return fail('(top level)', 'expected a JSON object with arrays, devices and exports')
  for (const k of Object.keys(raw)) if (!['arrays', 'devices', 'exports'].includes(k)) fail(k, 'unknown field (expected one of arrays, devices, exports)')
  const out = emptyOverlay()
  if (raw.arrays !== undefined && !isObject(raw.arrays)) fail('arrays', 'expected an object mapping array names to { "members": [...] }')
  for (const [array, a] of Object.entries((raw.arrays ?? {}) as Record<string, unknown>)) {
    name(array, `arrays.${array}`)
    if (!isObject(a) || !Array.isArray(a.members)) return fail(`arrays.${array}.members`, 'expected an array of device names')
    out.arrays[array] = { members: (a.members as unknown[]).map((m, i) => name(m, `arrays.${array}.members[${i}]`)) }
  }
  if (raw.devices !== undefined && !isObject(raw.devices)) fail('devices', 'expected an object mapping device names to remote devices')
  for (const [device, d] of Object.entries((raw.devices ?? {}) as Record<string, unknown>)) {
    name(device, `devices.${device}`)
    if (!isObject(d) || d.type !== 'remote') return fail(`devices.${device}.type`, 'expected a remote device ({ "type": "remote", "url": ... })')
    const url = parseDstUrl(d.url)
    if (typeof url === 'string') fail(`devices.${device}.url`, url)
    if (d.token !== undefined && (typeof d.token !== 'string' || d.token === '')) fail(`devices.${device}.token`, 'expected a non-empty string')
    out.devices[device] = { type: 'remote', url: d.url as string, ...(d.token !== undefined ? { token: d.token as string } : {}) }
  }
  if (raw.exports !== undefined && !Array.isArray(raw.exports)) fail('exports', 'expected an array')
  for (const [i, e] of ((raw.exports ?? []) as unknown[]).entries()) {
    if (!isObject(e)) return fail(`exports[${i}]`, 'expected { "name", "device", "readOnly" }')
    const problem = exportNameProblem(e.name)
    if (problem !== null) fail(`exports[${i}].name`, problem)
    name(e.device, `exports[${i}].device`)
    if (typeof e.readOnly !== 'boolean') fail(`exports[${i}].readOnly`, 'expected true or false')
    out.exports.push({ name: e.name as string, device: e.device as string, readOnly: e.readOnly as boolean })
  }
  return out
}

/** Writes the overlay durably: temporary file, fsync, rename, fsync of the folder. */
export async function writeOverlay (dataDir: string, overlay: NodeOverlay): Promise<void> {
  // Never write what the next start could not read.
  checkOverlay(JSON.parse(JSON.stringify(overlay)), overlayFile(dataDir))
  makeDir(dataDir)
  writeFileAtomicSync(overlayFile(dataDir), JSON.stringify(overlay, null, 2) + '\n')
}

/** What the overlay changes in a raw config, one line each, for the node to log at start. */
export function describeOverlay (raw: Record<string, unknown>, overlay: NodeOverlay): string[] {
  const lines: string[] = []
  const devices = (raw.devices ?? {}) as Record<string, Record<string, unknown>>
  for (const [name, d] of Object.entries(overlay.devices)) {
    lines.push(`device '${name}' (${String(d.type)}${typeof d.url === 'string' ? ` ${d.url}` : ''}) added${devices[name] !== undefined ? ', replacing the config\'s' : ''}`)
  }
  for (const [name, a] of Object.entries(overlay.arrays)) {
    const before = devices[name]?.members
    const was = Array.isArray(before) ? before.join(', ') : '(not in the config)'
    if (JSON.stringify(before) !== JSON.stringify(a.members)) lines.push(`array '${name}' has members ${a.members.join(', ')} (the config says ${was})`)
  }
  for (const e of overlay.exports) lines.push(`export '${e.name}' of device '${e.device}' (${e.readOnly ? 'read-only' : 'read-write'}) added`)
  return lines
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
