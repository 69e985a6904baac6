// Where a parity array keeps its bytes: pure arithmetic, no I/O, so every rule here is tested against a model.
//
// raid35 (DDRaid's raid 3.5): 2^k data members and one parity member. Every array block (blockSize bytes) is split into
// 2^k fragments, fragment i on data member i, and the parity member holds their XOR; block b's fragments are at offset
// b × fragment on every member, so a run of whole blocks is one contiguous range on each member and a write of whole
// blocks needs no read at all.
//
// raid5 (md's left-symmetric): the array's chunks striped over n - 1 members per row (a stripe), the parity chunk
// rotating: stripe s has parity on member (n - 1) - (s mod n), and its data chunk j on member (parity + 1 + j) mod n;
// every chunk of stripe s is at offset s × chunk on its member.

export type ParityLayoutName = 'raid35' | 'raid5'

/** Why these members cannot make a raid35 array, or null. */
export function raid35Problem (members: number, blockSize: number, memberBlockSizes: number[]): string | null {
  const data = members - 1
  if (members < 3 || (data & (data - 1)) !== 0) {
    return `raid35 needs 2^k data members plus one parity member (3, 5, 9 or 17 members), got ${members}: every block is split into one equal fragment per data member`
  }
  const fragment = blockSize / data
  if (!Number.isInteger(fragment) || fragment < 512) return `block size ${blockSize} split over ${data} data members gives fragments of ${fragment} bytes; a fragment must be at least 512 bytes`
  const big = memberBlockSizes.find(b => fragment % b !== 0)
  if (big !== undefined) return `fragments of ${fragment} bytes are not a multiple of a member's block size ${big}`
  return null
}

/** Why these members cannot make a raid5 array, or null. */
export function raid5Problem (members: number, chunk: number, memberBlockSizes: number[]): string | null {
  if (members < 3) return `raid5 needs at least three members, got ${members}`
  if (!Number.isInteger(chunk) || chunk < 4096 || chunk > 16 * 1024 * 1024 || (chunk & (chunk - 1)) !== 0) return `chunk ${chunk} is not a power of two from 4KiB to 16MiB`
  const big = memberBlockSizes.find(b => chunk % b !== 0)
  if (big !== undefined) return `chunk ${chunk} is not a multiple of a member's block size ${big}`
  return null
}

/** A piece of an array request on one member: `length` bytes at member offset `at`, buffer offset `done`. */
export interface Piece { member: number, at: number, length: number, done: number }

export class Raid35Layout {
  readonly data: number
  readonly fragment: number
  /** The parity member's index: the last one. */
  readonly parity: number
  readonly size: number

  constructor (readonly members: number, readonly blockSize: number, memberSize: number) {
    this.data = members - 1
    this.parity = members - 1
    this.fragment = blockSize / this.data
    this.size = Math.floor(memberSize / this.fragment) * blockSize
  }

  /** Member range holding blocks [first, first + count): the same on every member. */
  memberRange (first: number, count: number): { at: number, length: number } {
    return { at: first * this.fragment, length: count * this.fragment }
  }

  /** Spreads whole blocks of `data` (count × blockSize bytes) into one buffer per data member (fragments in order). */
  scatter (data: Uint8Array, into: Uint8Array[]): void {
    const f = this.fragment
    const count = data.byteLength / this.blockSize
    for (let b = 0; b < count; b++) {
      for (let i = 0; i < this.data; i++) into[i].set(data.subarray(b * this.blockSize + i * f, b * this.blockSize + (i + 1) * f), b * f)
    }
  }

  /** The inverse of scatter: whole blocks from one buffer per data member. */
  gather (from: Uint8Array[], into: Uint8Array): void {
    const f = this.fragment
    const count = into.byteLength / this.blockSize
    for (let b = 0; b < count; b++) {
      for (let i = 0; i < this.data; i++) into.set(from[i].subarray(b * f, (b + 1) * f), b * this.blockSize + i * f)
    }
  }

  /** The pieces of array bytes [offset, offset + length) on the data members: one per fragment touched. */
  fragmentPieces (offset: number, length: number): Piece[] {
    const out: Piece[] = []
    const f = this.fragment
    for (let pos = offset; pos < offset + length;) {
      const b = Math.floor(pos / this.blockSize)
      const inBlock = pos - b * this.blockSize
      const member = Math.floor(inBlock / f)
      const inFragment = inBlock - member * f
      const n = Math.min(f - inFragment, offset + length - pos)
      out.push({ member, at: b * f + inFragment, length: n, done: pos - offset })
      pos += n
    }
    return out
  }

  /** The block-aligned range covering [offset, offset + length): the only widening raid35 ever does. */
  widen (offset: number, length: number): { first: number, count: number } {
    const first = Math.floor(offset / this.blockSize)
    const end = Math.ceil((offset + length) / this.blockSize)
    return { first, count: end - first }
  }
}

/** What one stripe of a raid5 write touches, and how its parity is best brought up to date. */
export interface StripeWrite {
  stripe: number
  parityMember: number
  /** Member offset of the stripe's chunks. */
  base: number
  /** The data pieces written, member-local, with their offsets into the request's buffer. */
  pieces: Array<Piece & { inChunk: number }>
  /** In-chunk byte range whose parity changes: the union of the pieces' in-chunk ranges. */
  lo: number
  hi: number
  /**
   * full: every data chunk of the stripe is written whole, parity comes from the new data alone. rmw: read the old
   * data under the pieces and the old parity [lo, hi). rcw: read the rest of the stripe's data in [lo, hi).
   */
  mode: 'full' | 'rmw' | 'rcw'
  /** Bytes read before the write, in the chosen mode. */
  readBytes: number
}

export class Raid5Layout {
  readonly data: number
  readonly size: number
  readonly stripeBytes: number

  constructor (readonly members: number, readonly chunk: number, memberSize: number) {
    this.data = members - 1
    this.stripeBytes = this.data * chunk
    this.size = Math.floor(memberSize / chunk) * this.stripeBytes
  }

  parityOf (stripe: number): number {
    return (this.members - 1) - (stripe % this.members)
  }

  /** The member holding data chunk j of stripe s. */
  memberOf (stripe: number, j: number): number {
    return (this.parityOf(stripe) + 1 + j) % this.members
  }

  /** Where array offset `offset` lives. */
  locate (offset: number): { stripe: number, j: number, member: number, at: number } {
    const q = Math.floor(offset / this.chunk)
    const stripe = Math.floor(q / this.data)
    const j = q % this.data
    return { stripe, j, member: this.memberOf(stripe, j), at: stripe * this.chunk + (offset - q * this.chunk) }
  }

  /** The pieces of a read: one per chunk touched. */
  readPieces (offset: number, length: number): Piece[] {
    const out: Piece[] = []
    for (let pos = offset; pos < offset + length;) {
      const inChunk = pos % this.chunk
      const n = Math.min(this.chunk - inChunk, offset + length - pos)
      const { member, at } = this.locate(pos)
      out.push({ member, at, length: n, done: pos - offset })
      pos += n
    }
    return out
  }

  /** A write cut into stripes, each with its parity plan (full stripe, read-modify-write, or reconstruct-write). */
  writePlan (offset: number, length: number): StripeWrite[] {
    const out: StripeWrite[] = []
    for (let pos = offset; pos < offset + length;) {
      const stripe = Math.floor(pos / this.stripeBytes)
      const stop = Math.min(offset + length, (stripe + 1) * this.stripeBytes)
      const pieces: StripeWrite['pieces'] = []
      let lo = this.chunk
      let hi = 0
      for (let p = pos; p < stop;) {
        const inChunk = p % this.chunk
        const n = Math.min(this.chunk - inChunk, stop - p)
        const { member, at } = this.locate(p)
        pieces.push({ member, at, length: n, done: p - offset, inChunk })
        lo = Math.min(lo, inChunk)
        hi = Math.max(hi, inChunk + n)
        p += n
      }
      const written = stop - pos
      const full = written === this.stripeBytes
      // rmw reads the old data under every piece and the old parity; rcw reads, in every data chunk, what of [lo, hi)
      // the write leaves as it is.
      const rmw = written + (hi - lo)
      const rcw = this.data * (hi - lo) - written
      const mode = full ? 'full' : rcw < rmw ? 'rcw' : 'rmw'
      out.push({ stripe, parityMember: this.parityOf(stripe), base: stripe * this.chunk, pieces, lo, hi, mode, readBytes: full ? 0 : Math.min(rmw, rcw) })
      pos = stop
    }
    return out
  }
}
