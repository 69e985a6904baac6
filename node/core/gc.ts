// Counts the node's garbage collections by kind, for /metrics and the benchmark ("young-generation GCs per 100k
// requests" shows whether the request path allocates).

import { PerformanceObserver, constants } from 'node:perf_hooks'

export const gcCounts = { minor: 0, major: 0, other: 0 }
let observer: PerformanceObserver | null = null

export function watchGc (): void {
  if (observer !== null) return
  observer = new PerformanceObserver(list => {
    for (const entry of list.getEntries()) {
      const kind = (entry as unknown as { detail?: { kind?: number } }).detail?.kind
      if (kind === constants.NODE_PERFORMANCE_GC_MINOR) gcCounts.minor++
      else if (kind === constants.NODE_PERFORMANCE_GC_MAJOR) gcCounts.major++
      else gcCounts.other++
    }
  })
  observer.observe({ entryTypes: ['gc'] })
}
