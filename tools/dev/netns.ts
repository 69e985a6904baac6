// Test hosts for the benchmarks' "links" scenarios: network namespaces, each joined to this one by a veth pair whose
// leaf side is rate-limited (tc tbf), so each leaf sits behind its own link like a separate machine. Addresses are the
// namespaces' own (10.NET.N.0/24, 10.77 unless told); nothing leaves this machine. Needs root, `ip` and `tc`; BENCH_LINKS=0 skips it.

import { spawnSync } from 'node:child_process'

function run (cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr.trim()}`)
}

export function linksAvailable (): boolean {
  if (process.getuid?.() !== 0 || process.env.BENCH_LINKS === '0') return false
  try { run('ip', ['netns', 'list']); run('tc', ['-V']); return true } catch { return false }
}

export interface LinkOptions {
  /** How many namespaces (leaves); default 2, at most 9. */
  count?: number
  /** Namespace names are PREFIX1, PREFIX2, ...; default 'dstbench'. */
  prefix?: string
  /** Veth names are VETH1h (ours) and VETH1l (the leaf's); at most 10 characters; default 'dstb'. */
  veth?: string
  /** Addresses are 10.NET.N.0/24; default 77. */
  net?: number
}

/**
 * `count` namespaces (default two: dstbench1 and dstbench2 with hosts 10.77.1.2 and 10.77.2.2), each behind a link of
 * `rate`. A bench that may run beside another gives its own prefix, veth and net so the two never share a name.
 */
export function makeLinks (rate: string, options: LinkOptions = {}): { hosts: string[], namespaces: string[], cleanup: () => void } {
  const { count = 2, prefix = 'dstbench', veth = 'dstb', net = 77 } = options
  if (!Number.isInteger(count) || count < 1 || count > 9) throw new Error(`makeLinks: count ${count} is not 1 to 9`)
  if (veth.length > 10) throw new Error(`makeLinks: veth prefix '${veth}' is longer than 10 characters (interface names end at 15)`)
  const hosts: string[] = []
  const made: string[] = []
  const cleanup = (): void => {
    for (const ns of made) { try { run('ip', ['netns', 'del', ns]) } catch {} }
  }
  try {
    for (let n = 1; n <= count; n++) {
      const ns = `${prefix}${n}`
      try { run('ip', ['netns', 'del', ns]) } catch {}
      run('ip', ['netns', 'add', ns])
      made.push(ns)
      run('ip', ['link', 'add', `${veth}${n}h`, 'type', 'veth', 'peer', 'name', `${veth}${n}l`])
      run('ip', ['link', 'set', `${veth}${n}l`, 'netns', ns])
      run('ip', ['addr', 'add', `10.${net}.${n}.1/24`, 'dev', `${veth}${n}h`])
      run('ip', ['link', 'set', `${veth}${n}h`, 'up'])
      run('ip', ['netns', 'exec', ns, 'ip', 'addr', 'add', `10.${net}.${n}.2/24`, 'dev', `${veth}${n}l`])
      run('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', `${veth}${n}l`, 'up'])
      run('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up'])
      // Both directions of the link are limited: the leaf's side (reads) and ours (writes).
      run('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', `${veth}${n}l`, 'root', 'tbf', 'rate', rate, 'burst', '256kb', 'latency', '20ms'])
      run('tc', ['qdisc', 'add', 'dev', `${veth}${n}h`, 'root', 'tbf', 'rate', rate, 'burst', '256kb', 'latency', '20ms'])
      hosts.push(`10.${net}.${n}.2`)
    }
    return { hosts, namespaces: made.slice(), cleanup }
  } catch (err) {
    cleanup()
    throw err
  }
}
