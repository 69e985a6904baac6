// `npm run bench` (XOR part): parity throughput of node/core/xor.ts, on the event loop per core and on the worker
// pool, for the block sizes parity arrays use (a 4 KiB block's fragments, a 64 KiB chunk, a 1 MiB region); it is what
// XOR_INLINE_LIMIT is chosen from. Bounded: each measurement runs for BENCH_XOR_MS (default 400 ms).

import { XorEngine, xorInto, XOR_INLINE_LIMIT } from '../../node/core/xor'

const MS = Number(process.env.BENCH_XOR_MS ?? 400)
const SOURCES = 4 // a 4+1 array: parity is the XOR of four data fragments

function shared (n: number, seed: number): Uint8Array {
  const b = new Uint8Array(new SharedArrayBuffer(n))
  for (let i = 0; i < n; i++) b[i] = (seed + i * 13) & 0xff
  return b
}

async function measure (fn: () => Promise<void> | void, bytesPerCall: number): Promise<number> {
  const until = performance.now() + MS
  let bytes = 0
  const began = performance.now()
  while (performance.now() < until) { await fn(); bytes += bytesPerCall }
  return bytes / ((performance.now() - began) / 1000) / (1024 * 1024)
}

async function main (): Promise<void> {
  const engine = new XorEngine()
  console.log(`\n== XOR (parity of ${SOURCES} sources): MiB/s of source bytes, ${MS} ms per row, inline limit ${XOR_INLINE_LIMIT / 1024} KiB, ${engine.threads} worker thread(s)`)
  console.log('size      on the loop (1 core)   on the workers')
  try {
    for (const size of [1024, 16 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024]) {
      const sources = Array.from({ length: SOURCES }, (_, i) => shared(size, i))
      const dest = new Uint8Array(new SharedArrayBuffer(size))
      const loop = await measure(() => xorInto(dest, sources), size * SOURCES)
      // Force the workers with an inline limit of 0 for this row.
      const forced = new XorEngine({ inlineLimit: 0 })
      const workers = await measure(() => forced.xor(dest, sources), size * SOURCES)
      await forced.close()
      const label = size >= 1024 * 1024 ? `${size / (1024 * 1024)} MiB` : `${size / 1024} KiB`
      console.log(`${label.padEnd(10)}${loop.toFixed(0).padStart(8)}               ${workers.toFixed(0).padStart(8)}`)
    }
  } finally {
    await engine.close()
  }
}

main().catch(err => { console.error(err); process.exit(1) })
