// What an array tells its exports about the regions each of its members is missing (a mirror leg that was away, or
// is being resynced): read-only, asked by NBD's `qemu:dirty-bitmap:NAME` contexts. node/core holds only the shape; the
// daemon, which knows the arrays, makes one for each array it exports (export/ never looks into algorithms/).

/** A run of a member's map: `dirty` where the member does not (or may not) hold the array's data. */
export interface DirtyRun { offset: number, length: number, dirty: boolean }

export interface DirtyMaps {
  /** The members with a map, e.g. a mirror's leg names. */
  readonly names: readonly string[]
  /** Runs covering [offset, offset + length) exactly, adjacent runs of the same kind merged. `name` is one of `names`. */
  runs: (name: string, offset: number, length: number) => DirtyRun[]
}
