// Names of nodes, devices and exports, checked the same way wherever they enter: the config file, the admin
// endpoints (POST /arrays/...) and the state a node keeps in its dataDir.

export const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/
export const RESERVED_EXPORT_NAMES = ['status', 'metrics', 'events', 'tree', 'web']

/** Why `value` is not a device or node name, or null when it is one. */
export function nameProblem (value: unknown): string | null {
  if (typeof value === 'string' && NAME.test(value)) return null
  return `expected a name of letters, digits, '.', '_' or '-' (at most 64, not starting with '.', '_' or '-'), got ${JSON.stringify(value)}`
}

/** Why `value` is not an export name (a name that is not reserved for the node's HTTP pages), or null. */
export function exportNameProblem (value: unknown): string | null {
  const problem = nameProblem(value)
  if (problem !== null) return problem
  return RESERVED_EXPORT_NAMES.includes(value as string) ? `'${value as string}' is reserved for the node's HTTP pages` : null
}
