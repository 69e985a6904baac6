// Test hosts for the benchmarks' "links" scenarios: network namespaces, each joined to this one by a veth pair whose
// leaf side is rate-limited (tc tbf), so each leaf sits behind its own link like a separate machine. Addresses are the
// namespaces' own (10.77.N.0/24); nothing leaves this machine. Needs root, `ip` and `tc`; BENCH_LINKS=0 skips it.

import { spawnSync } from 'node:child_process'

function run (cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr.trim()}`)
}

export function linksAvailable (): boolean {
  if (process.getuid?.() !== 0 || process.env.BENCH_LINKS === '0') return false
  try { run('ip', ['netns', 'list']); run('tc', ['-V']); return true } catch { return false }
}

/** Two namespaces dstbench1 and dstbench2 with hosts 10.77.1.2 and 10.77.2.2, each behind a link of `rate`. */
export function makeLinks (rate: string): { hosts: string[], cleanup: () => void } {
  const hosts: string[] = []
  const made: string[] = []
  const cleanup = (): void => {
    for (const ns of made) { try { run('ip', ['netns', 'del', ns]) } catch {} }
  }
  try {
    for (const n of [1, 2]) {
      const ns = `dstbench${n}`
      try { run('ip', ['netns', 'del', ns]) } catch {}
      run('ip', ['netns', 'add', ns])
      made.push(ns)
      run('ip', ['link', 'add', `dstb${n}h`, 'type', 'veth', 'peer', 'name', `dstb${n}l`])
      run('ip', ['link', 'set', `dstb${n}l`, 'netns', ns])
      run('ip', ['addr', 'add', `10.77.${n}.1/24`, 'dev', `dstb${n}h`])
      run('ip', ['link', 'set', `dstb${n}h`, 'up'])
      run('ip', ['netns', 'exec', ns, 'ip', 'addr', 'add', `10.77.${n}.2/24`, 'dev', `dstb${n}l`])
      run('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', `dstb${n}l`, 'up'])
      run('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up'])
      // Both directions of the link are limited: the leaf's side (reads) and ours (writes).
      run('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', `dstb${n}l`, 'root', 'tbf', 'rate', rate, 'burst', '256kb', 'latency', '20ms'])
      run('tc', ['qdisc', 'add', 'dev', `dstb${n}h`, 'root', 'tbf', 'rate', rate, 'burst', '256kb', 'latency', '20ms'])
      hosts.push(`10.77.${n}.2`)
    }
    return { hosts, cleanup }
  } catch (err) {
    cleanup()
    throw err
  }
}
