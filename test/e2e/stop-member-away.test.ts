// A node stops cleanly (SIGTERM: requests answered, devices flushed, exit 0) while a remote member of its arrays is
// away: the member that cannot be reached is not waited for (its array marks it failed, and what it misses is in the
// intent map), so a stop never hangs until reconnectTimeout. Checked for a mirror and a parity array.

import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { startExport, startNode, tempDir, type RunningNode } from '../helpers/node-process'
import { within } from '../helpers/wait'

for (const kind of ['mirror', 'parity'] as const) {
  test(`a node with a ${kind} whose remote member is away stops at once on SIGTERM, saying which device it did not flush`, async t => {
    const dir = tempDir(`dst-stop-${kind}-`)
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
    const leaves: RunningNode[] = []
    for (let i = 0; i < 3; i++) {
      const file = path.join(dir, `l${i}.img`)
      fs.writeFileSync(file, '')
      fs.truncateSync(file, 16 * 1024 * 1024)
      leaves.push(await startExport([file, '--listen', '127.0.0.1:0', '--name', 'disk']))
    }
    t.teardown(async () => { for (const l of leaves) await l.kill() })
    const devices: Record<string, unknown> = {}
    leaves.forEach((l, i) => { devices[`r${i}`] = { type: 'remote', url: l.url('disk'), reconnectTimeout: '60s' } })
    devices.a = kind === 'mirror'
      ? { type: 'mirror', members: ['r0', 'r1', 'r2'], assumeClean: true }
      : { type: 'parity', layout: 'raid5', members: ['r0', 'r1', 'r2'] }
    const node = await startNode(dir, { name: 'top', listen: '127.0.0.1:0', devices, exports: [{ device: 'a' }] })
    t.teardown(() => node.kill())
    await leaves[1].kill()
    const code = await within(node.stop(), 20000, 'the node stopping (reconnectTimeout is 60 s: a stop waiting for the member would hang)')
      .catch(err => { t.log(node.output()); throw err })
    t.is(code, 0)
    t.regex(node.output(), /not flushed, their peers are away: r1 \(connecting\)/)
    t.regex(node.output(), /stopped/)
  })
}
