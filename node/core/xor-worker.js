// The piscina worker behind node/core/xor.ts: dest = XOR of the sources over one slice of shared memory. Plain
// JavaScript so a worker starts in milliseconds. Every buffer is a SharedArrayBuffer (the node's pool or the caller's
// shared buffers): nothing is copied in or out; the result is in dest when the task resolves.
'use strict'

/**
 * @param {{ dest: { buffer: SharedArrayBuffer, offset: number }, sources: Array<{ buffer: SharedArrayBuffer, offset: number }>, length: number, destIsFirst: boolean }} task
 */
module.exports = function xorSlice (task) {
  const { dest, sources, length, destIsFirst } = task
  // destIsFirst: dest is sources[0] (the caller put it first), so the others are XORed into it.
  const own = destIsFirst ? 0 : -1
  const aligned = length % 4 === 0 && dest.offset % 4 === 0 && sources.every(s => s.offset % 4 === 0)
  if (aligned) {
    const words = length >> 2
    const d = new Int32Array(dest.buffer, dest.offset, words)
    const first = new Int32Array(sources[0].buffer, sources[0].offset, words)
    if (own < 0) d.set(first)
    for (let k = 1; k < sources.length; k++) {
      const s = new Int32Array(sources[k].buffer, sources[k].offset, words)
      for (let i = 0; i < words; i++) d[i] ^= s[i]
    }
    return 0
  }
  const d = new Uint8Array(dest.buffer, dest.offset, length)
  const first = new Uint8Array(sources[0].buffer, sources[0].offset, length)
  if (own < 0) d.set(first)
  for (let k = 1; k < sources.length; k++) {
    const s = new Uint8Array(sources[k].buffer, sources[k].offset, length)
    for (let i = 0; i < length; i++) d[i] ^= s[i]
  }
  return 0
}
