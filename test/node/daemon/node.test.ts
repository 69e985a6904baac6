// The node (node/daemon/node.ts) in this process: it owns its hash workers. Wire digests and HASH requests on its
// exports are computed on the Hasher it made from `hash.threads` (not on a process-wide one), and stop closes it.

import test from 'ava'
import * as fs from 'node:fs'
import { DstNode } from '../../../node/daemon/node'
import { parseConfig } from '../../../node/daemon/config'
import { Hasher } from '../../../node/core/hasher'
import { RemoteDevice } from '../../../export/native/remote-device'
import { tempDir } from '../../helpers/node-process'

const KiB = 1024

test('a node digests on the Hasher it owns (sized by hash.threads) and closes it at stop', async t => {
  const dir = tempDir()
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const config = parseConfig({
    name: 'hashing', listen: '127.0.0.1:0', hash: { threads: 1 },
    devices: { m: { type: 'memory', size: 256 * KiB } },
    exports: [{ device: 'm', name: 'm', digest: true }],
  }, dir)
  const node = new DstNode(config, { log: () => {} })
  await node.start()
  t.teardown(() => node.stop())
  t.is(node.hasher.threads, 1)
  // The client digests on a hasher of its own, so the node's counts only what the node computed.
  const mine = new Hasher({ threads: 1 })
  t.teardown(() => mine.close())
  const dev = await RemoteDevice.open({ host: '127.0.0.1', port: node.port, export: 'm' }, { hasher: mine })
  t.teardown(() => dev.close())

  const data = Buffer.alloc(64 * KiB, 0x5a)
  await dev.write(0, data)
  const before = node.hasher.stats.bytes
  const back = Buffer.alloc(64 * KiB)
  await dev.read(0, back.length, back)
  t.true(back.equals(data))
  t.is(node.hasher.stats.bytes - before, 64 * KiB, 'the READ reply\'s wire digest')
  const digests = await dev.hash(0, 256 * KiB, 4 * KiB)
  t.is(digests.length, 64 * 64)
  t.is(node.hasher.stats.bytes - before, 64 * KiB + 256 * KiB, 'and the HASH of the memory device, on the node\'s hasher')
  t.true(mine.stats.bytes >= 2 * 64 * KiB, 'the client checked its digests on its own hasher')

  await dev.close()
  await node.stop()
  await t.throwsAsync(node.hasher.digestOne(Buffer.alloc(10)), { code: 'DST_ERR_CLOSED' })
})
