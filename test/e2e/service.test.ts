// Running a node as a service (issue 18, point 6): contrib/dst@.service passes `systemd-analyze verify` (where systemd
// is installed; the unit's ExecStart is pointed at this checkout's dst for the check), and SIGTERM, what systemd sends,
// ends a node with requests in flight with its `stopped` line and exit 0.

import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { spawnSync } from 'node:child_process'
import { DST, startNode, tempDir } from '../helpers/node-process'
import { which } from '../helpers/requires'
import { RemoteDevice } from '../../export/native/remote-device'

const UNIT = path.join(__dirname, '..', '..', 'contrib', 'dst@.service')

const systemdAnalyze = which('systemd-analyze')
const verifyTest = systemdAnalyze === null ? test.skip : test

verifyTest(`contrib/dst@.service passes systemd-analyze verify${systemdAnalyze === null ? ' [skipped: needs systemd-analyze, part of systemd]' : ''}`, t => {
  const dir = tempDir()
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const text = fs.readFileSync(UNIT, 'utf8')
  t.regex(text, /^ExecStart=\/usr\/local\/bin\/dst node --config \/etc\/dst\/%i\.json$/m)
  t.regex(text, /^Restart=on-failure$/m)
  t.regex(text, /^KillSignal=SIGTERM$/m)
  // systemd-analyze checks that ExecStart's command exists: point it at this checkout's dst.
  fs.writeFileSync(path.join(dir, 'dst@test.service'), text.replace('/usr/local/bin/dst', DST))
  const r = spawnSync(systemdAnalyze as string, ['verify', path.join(dir, 'dst@test.service')], { encoding: 'utf8', timeout: 30000 })
  t.is(r.status, 0, r.stderr)
  t.is(r.stderr.trim(), '', 'no warning either')
})

test('SIGTERM with requests in flight: the node answers them, prints its stopped line last, and exits 0', async t => {
  const dir = tempDir()
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const n = await startNode(dir, { name: 'svc', dataDir: './state', devices: { d: { type: 'file', path: './d.img', size: '8MiB' } }, exports: [{ device: 'd' }] })
  t.teardown(() => n.kill())
  const dev = await RemoteDevice.open({ host: '127.0.0.1', port: n.port, export: 'd' }, { openTimeout: 10000, reconnectTimeout: 500 })
  t.teardown(() => dev.close())
  const writes = Array.from({ length: 32 }, (_, i) => dev.write(i * 65536, Buffer.alloc(65536, i + 1)).then(() => 'ok', () => 'failed'))
  await new Promise(resolve => setImmediate(resolve))
  const code = await n.stop()
  t.is(code, 0)
  const lines = n.output().trim().split('\n')
  t.is(lines[lines.length - 1], '[svc] stopped')
  t.true(lines.some(l => l === '[svc] SIGTERM: finishing requests in flight, flushing'))
  const results = await Promise.all(writes)
  const landed = fs.readFileSync(path.join(dir, 'd.img'))
  // Every write the node acknowledged is in the file.
  results.forEach((r, i) => { if (r === 'ok') t.true(landed.subarray(i * 65536, (i + 1) * 65536).every(b => b === i + 1), `write ${i}`) })
})
