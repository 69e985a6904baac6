// The piscina worker behind node/core/hasher.ts: BLAKE2b digests of each chunk of a byte range. Plain JavaScript so a
// worker starts in milliseconds (loading ts-node in every worker would cost about two seconds each). The bytes arrive
// as a SharedArrayBuffer (the node's buffer pool or the hasher's own buffers: shared, never copied) or, from callers
// whose buffer is not shared memory, as a copy; the digests go back as a transferred ArrayBuffer.
'use strict'
const { createHash } = require('node:crypto')
const { move } = require('piscina')

/**
 * @param {{ buffer: SharedArrayBuffer | Uint8Array, offset: number, length: number, chunk: number,
 *           algorithm: string, digestSize: number }} task
 */
module.exports = function digestChunks (task) {
  const { buffer, offset, length, chunk, algorithm, digestSize } = task
  const data = buffer instanceof Uint8Array
    ? Buffer.from(buffer.buffer, buffer.byteOffset + offset, length)
    : Buffer.from(buffer, offset, length)
  const count = Math.ceil(length / chunk)
  const out = new ArrayBuffer(count * digestSize)
  const view = Buffer.from(out)
  for (let i = 0; i < count; i++) {
    const piece = data.subarray(i * chunk, Math.min(length, (i + 1) * chunk))
    const digest = createHash(algorithm).update(piece).digest()
    if (digest.length !== digestSize) throw new Error(`${algorithm} gives ${digest.length}-byte digests, expected ${digestSize}`)
    digest.copy(view, i * digestSize)
  }
  return move(out)
}
