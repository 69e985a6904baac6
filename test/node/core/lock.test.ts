// Tests for node/core/lock.ts: one node per dataDir and per backing file, refusals that name the holder, and a mkdir -p that
// cannot loop. Two real nodes meeting on one file or dataDir: test/e2e/locks.test.ts.

import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { DataDirLock, lockBackingFile, makeDir } from '../../../node/core/lock'
import { tempDir } from '../../helpers/node-process'

function dir (t: import('ava').ExecutionContext): string {
  const d = tempDir('dst-lock-')
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }))
  return d
}

test('a dataDir lock is exclusive, names its holder, and is free again once released', t => {
  const d = dir(t)
  const first = DataDirLock.acquire(d, { name: 'n1', pid: 1234, listen: '127.0.0.1:7001', since: 'then' })
  const err = t.throws(() => DataDirLock.acquire(d, { name: 'n2', pid: 5678, listen: '127.0.0.1:7002', since: 'now' }))
  t.is((err as { code?: string }).code, 'DST_ERR_LOCKED')
  t.regex(err?.message ?? '', /dataDir '.*' is in use by node 'n1' \(pid 1234, listening on 127\.0\.0\.1:7001/)
  first.update({ name: 'n1', pid: 1234, listen: '127.0.0.1:40001', since: 'then' })
  t.regex(t.throws(() => DataDirLock.acquire(d, { name: 'n2', pid: 1, listen: '', since: '' }))?.message ?? '', /listening on 127\.0\.0\.1:40001/)
  first.release()
  const second = DataDirLock.acquire(d, { name: 'n2', pid: 5678, listen: '127.0.0.1:7002', since: 'now' })
  t.like(JSON.parse(fs.readFileSync(path.join(d, 'lock'), 'utf8')), { name: 'n2', pid: 5678 })
  second.release()
})

test('a backing file: one writer alone, readers together; the refusal names the process holding it', t => {
  const file = path.join(dir(t), 'disk.img')
  fs.writeFileSync(file, Buffer.alloc(4096))
  const fds = [fs.openSync(file, 'r+'), fs.openSync(file, 'r+'), fs.openSync(file, 'r'), fs.openSync(file, 'r')]
  t.teardown(() => { for (const fd of fds) fs.closeSync(fd) })
  lockBackingFile(fds[0], file, false)
  const err = t.throws(() => lockBackingFile(fds[1], file, false))
  t.regex(err?.message ?? '', new RegExp(`file device '.*disk.img' is in use: this process \\(pid ${process.pid}\\) holds its lock`))
  t.throws(() => lockBackingFile(fds[2], file, true), undefined, 'no reader beside a writer')
  fs.closeSync(fds.shift() as number)
  lockBackingFile(fds[1], file, true)
  lockBackingFile(fds[2], file, true)
  t.pass('two readers share it once the writer is gone')
})

test('makeDir makes every missing level, and fails at once where mkdir cannot (under /proc), instead of looping', t => {
  const d = dir(t)
  t.deepEqual(makeDir(path.join(d, 'a', 'b')), [path.join(d, 'a'), path.join(d, 'a', 'b')])
  t.deepEqual(makeDir(path.join(d, 'a', 'b')), [], 'nothing to make')
  const started = Date.now()
  t.throws(() => makeDir('/proc/dst-no-such-folder/state'), { code: 'ENOENT' })
  t.true(Date.now() - started < 1000)
  fs.writeFileSync(path.join(d, 'file'), '')
  t.throws(() => makeDir(path.join(d, 'file')), { message: /is not a folder/ })
  t.throws(() => makeDir(path.join(d, 'file', 'x')), { code: 'ENOTDIR' })
})
