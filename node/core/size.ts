// Sizes in config files and on the command line: a byte count, or a string such as "256MiB", "1.5GiB", "4096".
// Units are binary: KiB, MiB, GiB, TiB (and K, M, G, T for them, as in dd and qemu). Decimal units (KB, MB, GB, TB)
// are refused with the binary unit suggested: "12MB" taken as MiB would be wrong by 5%, taken as 12,000,000 bytes it
// would not be a whole number of blocks; a storage size should say which it means.

const units: Record<string, number> = {
  '': 1, B: 1,
  K: 1024, KIB: 1024,
  M: 1024 ** 2, MIB: 1024 ** 2,
  G: 1024 ** 3, GIB: 1024 ** 3,
  T: 1024 ** 4, TIB: 1024 ** 4,
}

const decimal: Record<string, string> = { KB: 'KiB', MB: 'MiB', GB: 'GiB', TB: 'TiB' }

/** Returns the size in bytes, or a string saying what is wrong with it. */
export function parseSize (value: unknown): number | string {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) return `${value} is not a whole number of bytes`
    return value
  }
  if (typeof value !== 'string') return `expected a byte count or a string like "256MiB", got ${JSON.stringify(value)}`
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value)
  if (m === null) return `"${value}" is not a size (use bytes or KiB/MiB/GiB/TiB)`
  const binary = decimal[m[2].toUpperCase()]
  if (binary !== undefined) return `"${value}": decimal units are not taken (did you mean ${m[1]}${binary}?)`
  const unit = units[m[2].toUpperCase()]
  if (unit === undefined) return `"${value}" has an unknown unit "${m[2]}" (use KiB, MiB, GiB or TiB)`
  const bytes = Number(m[1]) * unit
  if (!Number.isSafeInteger(bytes)) return `"${value}" is not a whole number of bytes`
  return bytes
}

/** Like parseSize, but throws with the given label; for the CLI. */
export function requireSize (value: unknown, label: string): number {
  const size = parseSize(value)
  if (typeof size === 'string') throw new RangeError(`${label}: ${size}`)
  return size
}

export function formatSize (bytes: number): string {
  const names = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  let n = bytes
  while (n >= 1024 && i < names.length - 1) { n /= 1024; i++ }
  return i === 0 ? `${bytes} B` : `${Number.isInteger(n) ? n : n.toFixed(1)} ${names[i]}`
}
