// Unit tests for the state metrics of node/daemon/metrics.ts (renderStateMetrics): read from a /status document, one
// gauge per state (1 for the state now, 0 for the others), per-leg dirty and resync bytes, remote links, leases.

import test from 'ava'
import { renderMetrics, renderStateMetrics } from '../../../node/daemon/metrics'

const status = {
  devices: {
    m: {
      type: 'mirror', state: 'degraded',
      members: [
        { name: 'a', type: 'remote', state: 'in-sync', dirtyBytes: 0, connected: true, reconnects: 2 },
        { name: 'b', type: 'remote', state: 'resyncing', dirtyBytes: 65536, resync: { doneBytes: 4096, totalBytes: 65536 }, connected: true, reconnects: 0 },
      ],
    },
    a: { type: 'remote', state: 'online', connected: true, reconnects: 2 },
    b: { type: 'remote', state: 'connecting', connected: false, reconnects: 0 },
  },
  exports: [{ name: 'm', lease: { holder: 'w1' } }, { name: 'free', lease: { holder: null } }, { name: 'many', shared: true }],
}

test('leg states, dirty and resync bytes, remote links and leases, from a /status document', t => {
  const text = renderStateMetrics('n', status)
  t.log(text)
  t.regex(text, /^dst_leg_state\{node="n",array="m",leg="b",state="resyncing"\} 1$/m)
  t.regex(text, /^dst_leg_state\{node="n",array="m",leg="b",state="in-sync"\} 0$/m)
  t.is(text.match(/^dst_leg_state\{/gm)?.length, 10, 'five states for each of two legs')
  t.regex(text, /^dst_leg_dirty_bytes\{node="n",array="m",leg="b"\} 65536$/m)
  t.regex(text, /^dst_resync_done_bytes\{node="n",array="m",leg="b"\} 4096$/m)
  t.regex(text, /^dst_resync_total_bytes\{node="n",array="m",leg="b"\} 65536$/m)
  t.regex(text, /^dst_resync_total_bytes\{node="n",array="m",leg="a"\} 0$/m)
  t.regex(text, /^dst_remote_connected\{node="n",device="a"\} 1$/m)
  t.regex(text, /^dst_remote_connected\{node="n",device="b"\} 0$/m)
  t.regex(text, /^dst_remote_reconnects_total\{node="n",device="a"\} 2$/m)
  t.regex(text, /^dst_lease_held\{node="n",export="m"\} 1$/m)
  t.regex(text, /^dst_lease_held\{node="n",export="free"\} 0$/m)
  t.notRegex(text, /export="many"/, 'a shared export has no lease')
  t.regex(text, /^# TYPE dst_remote_reconnects_total counter$/m)
})

test('dst_device_state: 1 for the state now, 0 for every other state', t => {
  const text = renderMetrics('n', [], { count: 1, size: 4096, available: 1, waits: 0 }, [], undefined, [{ name: 'm', type: 'mirror', state: 'degraded' }])
  t.regex(text, /^dst_device_state\{node="n",device="m",type="mirror",state="degraded"\} 1$/m)
  t.regex(text, /^dst_device_state\{node="n",device="m",type="mirror",state="online"\} 0$/m)
  t.is(text.match(/^dst_device_state\{.*\} 1$/gm)?.length, 1)
  t.is(text.match(/^dst_device_state\{/gm)?.length, 8)
})
