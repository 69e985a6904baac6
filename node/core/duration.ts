// Durations in config files: a number of milliseconds, or a string such as "500ms", "3s", "2m", "1.5h", "3000".

const units: Record<string, number> = { '': 1, ms: 1, s: 1000, m: 60_000, min: 60_000, h: 3_600_000 }

/** Returns the duration in whole milliseconds, or a string saying what is wrong with it. */
export function parseDuration (value: unknown): number | string {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) return `${value} is not a whole number of milliseconds`
    return value
  }
  if (typeof value !== 'string') return `expected milliseconds or a string like "500ms", "3s", "2m", got ${JSON.stringify(value)}`
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value)
  if (m === null) return `"${value}" is not a duration (use ms, s, m or h, e.g. "3s")`
  const unit = units[m[2].toLowerCase()]
  if (unit === undefined) return `"${value}" has an unknown unit "${m[2]}" (use ms, s, m or h)`
  const ms = Number(m[1]) * unit
  if (!Number.isSafeInteger(ms)) return `"${value}" is not a whole number of milliseconds`
  return ms
}
