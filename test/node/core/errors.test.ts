// The error catalogue (node/core/errors.ts): every code has an errno and a number on each wire, codes are unique and
// named after their key, the fixed tables replace the codes once built at run time, NBD gets what it always got, the
// protocol document lists the same numbers, and no source file outside the catalogue spells a code as a string.

import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import {
  codeOfErrno, ConfigError, DstError, Errno, ErrorCode, errorCatalogue, errorInfo, nbdErrno, NbdErrno, ProtocolError,
  RemoteError, systemErrorCode, toErrno, type ErrnoName,
} from '../../../node/core/errors'

const ROOT = path.join(__dirname, '..', '..', '..')

const errnoNames = Object.keys(Errno).filter(n => n !== 'OK') as ErrnoName[]

test('every code has an errno dst sends, its native number and its NBD number', t => {
  const entries = errorCatalogue()
  t.true(entries.length > 50)
  for (const e of entries) {
    t.true(e.errno in Errno && e.errno !== 'OK', `${e.code}: errno ${e.errno}`)
    t.is(e.native, Errno[e.errno], e.code)
    t.is(e.nbd, NbdErrno[e.errno], e.code)
    t.true(Number.isInteger(e.nbd) && e.nbd > 0, `${e.code}: NBD ${e.nbd}`)
    t.true(e.meaning.length > 0, e.code)
    t.is(errorInfo(e.code), e)
  }
})

test('codes are unique, each is DST_ERR_ and its key, and ErrorCode names each one', t => {
  const codes = errorCatalogue().map(e => e.code)
  t.is(new Set(codes).size, codes.length)
  for (const e of errorCatalogue()) {
    t.is(e.code, `DST_ERR_${e.key}`)
    t.is(ErrorCode[e.key], e.code)
  }
  t.deepEqual(Object.values(ErrorCode), codes)
  t.true(Object.isFrozen(ErrorCode))
})

test('a DstError takes its errno from the catalogue unless the throw site names one', t => {
  for (const e of errorCatalogue()) t.is(new DstError(e.code, 'x').errno, Errno[e.errno], e.code)
  t.is(new DstError(ErrorCode.FOREIGN, 'x').errno, Errno.EIO)
  t.is(new DstError(ErrorCode.CLOSED, 'x').errno, Errno.ESHUTDOWN)
  t.is(new DstError(ErrorCode.PROTOCOL, 'x', Errno.EIO).errno, Errno.EIO)
  const p = new ProtocolError('bad magic')
  t.true(p instanceof DstError)
  t.is(p.code, 'DST_ERR_PROTOCOL')
  t.is(p.errno, Errno.EINVAL)
  const c = new ConfigError('bad')
  t.true(c instanceof DstError)
  t.is(c.code, 'DST_ERR_CONFIG')
  t.is(c.errno, Errno.EINVAL)
})

test('a peer\'s errno names its code from a fixed table, and keeps its number', t => {
  for (const name of errnoNames) {
    t.is(codeOfErrno(Errno[name]) as string, `DST_ERR_${name}`)
    const err = new RemoteError(Errno[name], 'peer said no')
    t.is(err.code as string, `DST_ERR_${name}`)
    t.is(err.errno, Errno[name])
    t.true(err instanceof DstError)
  }
  // A number dst never sends: the code is EIO's, the number is passed on as it came.
  t.is(codeOfErrno(99), ErrorCode.EIO)
  const odd = new RemoteError(99, 'odd')
  t.is(odd.code, 'DST_ERR_EIO')
  t.is(odd.errno, 99)
})

test('system errors get the code named after them, and the errno they always travelled as', t => {
  t.is(systemErrorCode('EBADF'), 'DST_ERR_EBADF')
  t.is(systemErrorCode('EISDIR'), 'DST_ERR_EISDIR')
  t.is(systemErrorCode('ENOENT'), 'DST_ERR_ENOENT')
  t.is(systemErrorCode('ENOSPC'), 'DST_ERR_ENOSPC')
  t.is(systemErrorCode('EWHATEVER'), 'DST_ERR_IO')
  t.is(systemErrorCode(undefined), 'DST_ERR_IO')
  // Not a system error name: own codes are never looked up by Node's err.code.
  t.is(systemErrorCode('CLOSED'), 'DST_ERR_IO')
  const sys = (code: string): unknown => Object.assign(new Error(code), { code })
  for (const name of errnoNames) t.is(toErrno(sys(name)), Errno[name], name)
  t.is(toErrno(sys('EFBIG')), Errno.ENOSPC)
  t.is(toErrno(sys('EOPNOTSUPP')), Errno.ENOTSUP)
  t.is(toErrno(sys('ENOENT')), Errno.EIO)
  t.is(toErrno(sys('EBADF')), Errno.EIO)
  t.is(toErrno(sys('CLOSED')), Errno.EIO)
  t.is(toErrno(new Error('plain')), Errno.EIO)
  t.is(toErrno(null), Errno.EIO)
  t.is(toErrno(new DstError(ErrorCode.EINVAL, 'x')), Errno.EINVAL)
  for (const e of errorCatalogue().filter(e => e.system)) t.is(new DstError(systemErrorCode(e.key), 'x').errno, toErrno(sys(e.key)), e.key)
})

test('NBD gets what export/nbd/server.ts always sent: its few errnos as they are, refused writes EPERM, the rest EIO', t => {
  const before = (errno: number): number => {
    switch (errno) {
      case 0: case Errno.EPERM: case Errno.EIO: case Errno.ENOMEM: case Errno.EINVAL: case Errno.ENOSPC: case Errno.EOVERFLOW:
      case Errno.ENOTSUP: case Errno.ESHUTDOWN: return errno
      case Errno.EROFS: case Errno.EACCES: return Errno.EPERM
      default: return Errno.EIO
    }
  }
  for (let errno = 0; errno < 300; errno++) t.is(nbdErrno(errno), before(errno), `errno ${errno}`)
})

test('export/native/PROTOCOL.md lists every errno with the catalogue\'s native number, NBD number and code', t => {
  const doc = fs.readFileSync(path.join(ROOT, 'export', 'native', 'PROTOCOL.md'), 'utf8')
  const section = doc.slice(doc.indexOf('## Error codes'), doc.indexOf('\n## ', doc.indexOf('## Error codes') + 5))
  const rows = [...section.matchAll(/^\| (\d+) \| (E[A-Z]+) \| (\d+) \| `(DST_ERR_[A-Z_]+)` \|/gm)]
  t.deepEqual(rows.map(r => r[2]).sort(), [...errnoNames].sort())
  for (const [, native, name, nbd, code] of rows) {
    const e = errorInfo(codeOfErrno(Number(native)))
    t.is(e.key as string, name)
    t.is(Number(native), e.native, name)
    t.is(Number(nbd), e.nbd, name)
    t.is(code, e.code, name)
  }
  // Every code the document names elsewhere is one of the catalogue's.
  const known = new Set<string>(errorCatalogue().map(e => e.code))
  for (const m of doc.matchAll(/DST_ERR_[A-Z_]+/g)) t.true(known.has(m[0]), m[0])
})

/** Source files under the project's folders, tests and docs excluded. */
function sources (dir: string): string[] {
  const out: string[] = []
  for (const entry of fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
    const rel = path.posix.join(dir, entry.name)
    if (entry.isDirectory()) out.push(...sources(rel))
    else if (/\.(ts|js)$/.test(entry.name)) out.push(rel)
  }
  return out
}

test('no source file outside the catalogue spells a code as a string or builds one', t => {
  const files = ['node', 'algorithms', 'export', 'tools'].flatMap(sources)
  t.true(files.length > 30)
  const offenders: string[] = []
  for (const file of files) {
    if (file.startsWith('node/core/errors')) continue
    const lines = fs.readFileSync(path.join(ROOT, file), 'utf8').split('\n')
    lines.forEach((line, i) => { if (/['"`]DST_ERR_|DST_ERR_\$\{/.test(line)) offenders.push(`${file}:${i + 1}: ${line.trim()}`) })
  }
  t.deepEqual(offenders, [])
})

test('the README names only codes of the catalogue', t => {
  const known = new Set<string>(errorCatalogue().map(e => e.code))
  for (const m of fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8').matchAll(/DST_ERR_[A-Z_]+/g)) t.true(known.has(m[0]), m[0])
})
