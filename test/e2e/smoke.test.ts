import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { startExport, tempDir } from '../helpers/node-process'

test('smoke: dst export starts, serves /status, and stops with exit code 0 on SIGTERM', async t => {
  const dir = tempDir()
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const n = await startExport([path.join(dir, 'x.img'), '--listen', '127.0.0.1:0', '--size', '1MiB'])
  t.teardown(() => n.kill())
  const res = await fetch(`${n.http}/status`)
  t.is(res.status, 200)
  t.is(await n.stop(), 0)
})
