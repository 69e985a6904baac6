// Tests for node/core/identity.ts: derived identities, and the node's own identity kept in its dataDir.

import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { derivedIdentity, nodeIdentity } from '../../../node/core/identity'
import { writerId } from '../../../node/daemon/registry'
import { parseConfig } from '../../../node/daemon/config'
import { tempDir } from '../../helpers/node-process'

test('a node id is made at the first start, kept in dataDir/node-id, and differs between dataDirs', t => {
  const a = tempDir('dst-id-')
  const b = tempDir('dst-id-')
  t.teardown(() => { fs.rmSync(a, { recursive: true, force: true }); fs.rmSync(b, { recursive: true, force: true }) })
  const id = nodeIdentity(a)
  t.regex(id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/)
  t.is(fs.readFileSync(path.join(a, 'node-id'), 'utf8'), `${id}\n`)
  t.false(fs.existsSync(path.join(a, 'node-id.tmp')), 'written through a temporary file, renamed')
  t.is(nodeIdentity(a), id, 'the same at every start')
  t.not(nodeIdentity(b), id)
  t.is(nodeIdentity(null), nodeIdentity(null), 'without a dataDir: one id for this process')
  t.not(nodeIdentity(null), id)
})

test('writer ids derive from the node id: the same config on two machines is two writers', t => {
  const config = parseConfig({ name: 'top', listen: '127.0.0.1:7001', dataDir: '/srv/dst', devices: { far: { type: 'remote', url: 'dst://10.0.0.1:7001/d' } } }, '/srv', 'top.json')
  const machine1 = { ...config, nodeId: '11111111-1111-4111-8111-111111111111' }
  const machine2 = { ...config, nodeId: '22222222-2222-4222-8222-222222222222' }
  t.not(writerId(machine1, 'far'), writerId(machine2, 'far'))
  t.is(writerId(machine1, 'far'), writerId({ ...machine1 }, 'far'), 'stable for one node')
  t.not(writerId(machine1, 'far'), writerId(machine1, 'other'))
  t.is(derivedIdentity('x'), derivedIdentity('x'))
})
