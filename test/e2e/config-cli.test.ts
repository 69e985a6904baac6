// The CLI's side of node/daemon/config.ts (the parser's own tests are test/node/daemon/config.test.ts): `dst node
// --config` with a bad, missing or unreadable config exits 2 with one line naming the field, and creates nothing.

import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { runDst, tempDir } from '../helpers/node-process'

const dirs: string[] = []
function dir (): string { const d = tempDir('dst-config-'); dirs.push(d); return d }
test.after.always(() => { for (const d of dirs) fs.rmSync(d, { recursive: true, force: true }) })

test('CLI: `dst node --config` with a bad config exits 2, prints one line naming the field, creates nothing', async t => {
  const d = dir()
  const file = path.join(d, 'node.json')
  fs.writeFileSync(file, JSON.stringify({
    name: 'bad',
    listen: '127.0.0.1:0',
    dataDir: './state-here',
    devices: {
      disk0: { type: 'file', path: './disk0.img', size: '64MiB' },
      far: { type: 'remote', url: 'http://127.0.0.1:1/x' },
    },
    exports: [{ device: 'disk0' }],
  }))
  const r = await runDst(['node', '--config', file], { cwd: d })
  t.is(r.code, 2, r.stderr)
  const lines = r.stderr.split('\n').filter(l => l !== '')
  t.is(lines.length, 1, r.stderr)
  t.true(lines[0].includes('devices.far.url'), lines[0])
  t.is(r.stdout.length, 0)
  t.false(fs.existsSync(path.join(d, 'disk0.img')), 'the file device was not created')
  t.false(fs.existsSync(path.join(d, 'state-here')), 'the dataDir was not created')
  t.deepEqual(fs.readdirSync(d), ['node.json'], 'nothing at all was created')
})

test('CLI: a bad config with the default dataDir creates no state folder either', async t => {
  const d = dir()
  const file = path.join(d, 'node.json')
  fs.writeFileSync(file, JSON.stringify({
    listen: '127.0.0.1:0',
    devices: { disk0: { type: 'file', path: 'disk0.img', size: '64MiB' } },
    exports: [{ device: 'disk0', name: 'status' }],
  }))
  const r = await runDst(['node', '--config', file])
  t.is(r.code, 2, r.stderr)
  t.is(r.stderr.trimEnd().split('\n').length, 1, r.stderr)
  t.true(r.stderr.includes('exports[0].name'), r.stderr)
  t.deepEqual(fs.readdirSync(d), ['node.json'])
})

test('CLI: a nonexistent config file exits 2 with one line', async t => {
  const d = dir()
  const r = await runDst(['node', '--config', path.join(d, 'missing.json')])
  t.is(r.code, 2, r.stderr)
  t.is(r.stderr.trimEnd().split('\n').length, 1, r.stderr)
  t.regex(r.stderr, /missing\.json: cannot read it/)
  t.deepEqual(fs.readdirSync(d), [])
})

test('CLI: an unreadable config file (a folder) exits 2 with one line', async t => {
  const d = dir()
  const r = await runDst(['node', '--config', d])
  t.is(r.code, 2, r.stderr)
  t.is(r.stderr.trimEnd().split('\n').length, 1, r.stderr)
  t.regex(r.stderr, /cannot read it/)
  t.deepEqual(fs.readdirSync(d), [])
})

test('CLI: a config file with invalid JSON exits 2 with one line', async t => {
  const d = dir()
  const file = path.join(d, 'node.json')
  fs.writeFileSync(file, '{ "listen": "127.0.0.1:0", "devices": { ')
  const r = await runDst(['node', '--config', file])
  t.is(r.code, 2, r.stderr)
  t.is(r.stderr.trimEnd().split('\n').length, 1, r.stderr)
  t.regex(r.stderr, /not valid JSON/)
  t.deepEqual(fs.readdirSync(d), ['node.json'])
})

// Regression (the malformed percent escape of test/node/daemon/config.test.ts, seen from the CLI): the URIError once
// escaped as a plain error, so `dst node` exited 1 with "URI malformed" instead of 2 with a line naming devices.far.url.
test('CLI: a dst:// url with a malformed percent escape exits 2 naming devices.far.url', async t => {
  const d = dir()
  const file = path.join(d, 'node.json')
  fs.writeFileSync(file, JSON.stringify({ listen: '127.0.0.1:0', devices: { far: { type: 'remote', url: 'dst://127.0.0.1:1/%E0%A4%A' } } }))
  const r = await runDst(['node', '--config', file])
  t.is(r.code, 2, r.stderr)
  t.true(r.stderr.includes('devices.far.url'), r.stderr)
})
