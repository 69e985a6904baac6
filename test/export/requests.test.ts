// The one request validator of both protocols: the same checks, each protocol's own answer where they differ.

import test from 'ava'
import { checkRequest, NATIVE_ANSWERS, NBD_ANSWERS, RequestKind, type RequestRules, type WireAnswers } from '../../export/requests'
import { ExportMetrics, type ServedExport } from '../../export/served'
import { MemoryDevice } from '../../node/devices/memory-device'
import { WriteLease } from '../../node/core/lease'
import { Errno } from '../../node/core/errors'

const SIZE = 1024 * 1024
const MAX = 64 * 1024

function rules (answers: WireAnswers, opts: { readOnly?: boolean, canTrim?: boolean, exportReadOnly?: boolean, shared?: boolean } = {}): RequestRules {
  const device = new MemoryDevice({ size: SIZE, canTrim: opts.canTrim ?? true })
  const exp: ServedExport = {
    name: 'disk', device, readOnly: opts.exportReadOnly ?? false, allow: [], shared: opts.shared,
    metrics: new ExportMetrics(), lease: new WriteLease(1000), generation: 0,
  }
  return { exp, readOnly: opts.readOnly ?? false, owner: null, token: 0, maxRequest: MAX, answers }
}

test('requests inside the device and its limits pass, for both protocols', t => {
  for (const answers of [NATIVE_ANSWERS, NBD_ANSWERS]) {
    const r = rules(answers)
    t.is(checkRequest(r, RequestKind.READ, 0, MAX, 0), 0)
    t.is(checkRequest(r, RequestKind.WRITE, SIZE - 4096, 4096, 0), 0)
    t.is(checkRequest(r, RequestKind.TRIM, 0, SIZE, 0), 0, 'TRIM is not bounded by maxRequest')
    t.is(checkRequest(r, RequestKind.WRITE_ZEROES, 0, SIZE, 0), 0, 'nor is WRITE_ZEROES')
    t.is(checkRequest(r, RequestKind.FLUSH, 0, 0, 0), 0)
  }
})

test('the answers both protocols share: EOVERFLOW above maxRequest, EINVAL past the end, EPERM without the lease', t => {
  for (const answers of [NATIVE_ANSWERS, NBD_ANSWERS]) {
    const r = rules(answers)
    t.is(checkRequest(r, RequestKind.READ, 0, MAX + 1, 0), Errno.EOVERFLOW)
    t.is(checkRequest(r, RequestKind.WRITE, 0, MAX + 1, 0), Errno.EOVERFLOW)
    t.is(checkRequest(r, RequestKind.READ, SIZE - 100, 4096, 0), Errno.EINVAL)
    t.is(checkRequest(r, RequestKind.WRITE, 2 ** 60, 4096, 0), Errno.EINVAL)
    t.is(checkRequest(r, RequestKind.TRIM, SIZE, 1, 0), Errno.EINVAL)
    r.exp.lease.acquire('someone-else')
    t.is(checkRequest(r, RequestKind.WRITE, 0, 4096, 0), Errno.EPERM, 'fenced: another writer holds the lease')
    t.is(checkRequest(r, RequestKind.READ, 0, 4096, 0), 0, 'reads are not fenced')
  }
})

test('where the protocols differ each keeps its own answer: read-only, TRIM that cannot trim, unknown opcode, FLUSH with a range', t => {
  const cases: Array<[WireAnswers, number, number, number, number]> = [
    // answers, read-only write, trim on a device that cannot, unknown opcode, flush with a range
    [NATIVE_ANSWERS, Errno.EROFS, Errno.ENOTSUP, Errno.ENOTSUP, Errno.EINVAL],
    [NBD_ANSWERS, Errno.EPERM, Errno.EINVAL, Errno.EINVAL, 0],
  ]
  for (const [answers, readOnly, cannotTrim, unknown, flushRange] of cases) {
    t.is(checkRequest(rules(answers, { readOnly: true }), RequestKind.WRITE, 0, 4096, 0), readOnly)
    t.is(checkRequest(rules(answers, { exportReadOnly: true }), RequestKind.TRIM, 0, 4096, 0), readOnly)
    t.is(checkRequest(rules(answers, { canTrim: false }), RequestKind.TRIM, 0, 4096, 0), cannotTrim)
    t.is(checkRequest(rules(answers), RequestKind.UNKNOWN, 0, 0, 0), unknown)
    t.is(checkRequest(rules(answers), RequestKind.FLUSH, 0, 512, 0), flushRange)
  }
})

test('HASH (native): bounded by maxRequest, inside the device, with a power-of-two chunk', t => {
  const r = rules(NATIVE_ANSWERS)
  t.is(checkRequest(r, RequestKind.HASH, 0, MAX, 4096), 0)
  t.is(checkRequest(r, RequestKind.HASH, 0, MAX + 512, 4096), Errno.EOVERFLOW)
  t.is(checkRequest(r, RequestKind.HASH, SIZE - 512, 4096, 4096), Errno.EINVAL)
  t.is(checkRequest(r, RequestKind.HASH, 0, 4096, 1000), Errno.EINVAL)
})
