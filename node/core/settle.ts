// Waiting on the pieces of a split request.

/** Like Promise.all, but rejects only after every piece has settled, so no piece still writes into a buffer (or
 *  counts as in flight) after the caller got its answer. Rejects with the first failure. */
export async function settleAll (work: Array<Promise<void>>): Promise<void> {
  const results = await Promise.allSettled(work)
  for (const r of results) if (r.status === 'rejected') throw r.reason
}
