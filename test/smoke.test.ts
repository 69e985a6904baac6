import test from 'ava'
import { startExport, tempDir } from './helpers/node-process'
import * as path from 'node:path'

test('smoke: export starts and stops', async t => {
  const dir = tempDir()
  const n = await startExport([path.join(dir, 'x.img'), '--listen', '127.0.0.1:0', '--size', '1MiB'])
  const res = await fetch(`${n.http}/status`)
  t.is(res.status, 200)
  t.is(await n.stop(), 0)
})
