// The kernel's own NBD client against a node: a Linux guest (test/helpers/kernel-vm.ts) attaches a dst mirror of two
// remote nodes as /dev/nbd0 with nbd-client over two connections (CAN_MULTI_CONN), makes an ext2 filesystem on it,
// mounts it, writes a file and unmounts. Then, on the host, both legs' files hold the same bytes, the filesystem in
// them checks clean, and the file in it is the one the guest wrote. `.ci/run` (through .ci/kernel.sh) installs qemu,
// nbd-client, busybox, e2fsprogs and the kernel.

import * as fs from 'node:fs'
import * as path from 'node:path'
import { createHash } from 'node:crypto'
import { execFileSync } from 'node:child_process'
import { startMirrorTree, tempDir } from '../helpers/node-process'
import { buildInitramfs, findKernel, runGuest } from '../helpers/kernel-vm'
import { testNeeding } from '../helpers/requires'

const MiB = 1024 * 1024
// Needs the guest kernel and qemu (.ci/kernel.sh): skipped without them, a failure under CI=true.
const kernelTest = testNeeding(() => { const k = findKernel(); return typeof k === 'string' ? k : null })

kernelTest('the kernel nbd client mounts an ext2 filesystem on a mirror of two remote nodes; both legs hold it, and the file the guest wrote', async t => {
  t.timeout(240000)
  const kernel = findKernel()
  if (typeof kernel === 'string') { t.fail(kernel); return }
  const dir = tempDir('dst-nbd-kernel-')
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  // The guest's traffic arrives from 127.0.0.1 (qemu's user network), which the default allow list admits.
  const { top, nbdPort: port } = await startMirrorTree(t, dir, 64 * MiB)
  const script = `
nbd-client 10.0.2.2 ${String(port)} /dev/nbd0 -N m -b 4096 -C 2 || { echo "== nbd-client failed"; exit 1; }
echo "== sectors $(cat /sys/block/nbd0/size)"
mke2fs -q -b 4096 /dev/nbd0 && echo "== mkfs ok"
mount -t ext2 /dev/nbd0 /mnt && echo "== mounted"
dd if=/dev/urandom of=/mnt/data bs=65536 count=160 2>/dev/null
echo "== sha $(sha256sum /mnt/data | cut -d' ' -f1)"
umount /mnt && echo "== unmounted"
nbd-client -d /dev/nbd0 && echo "== detached"
`
  const initrd = buildInitramfs(dir, kernel, script)
  let kill = (): void => {}
  t.teardown(() => kill())
  const guest = await runGuest(kernel, initrd, 200000, k => { kill = k })
  t.log(`guest ran under ${guest.accel}`)
  if (process.env.DST_GUEST_CONSOLE === '1') t.log(guest.console)
  const out = guest.console
  t.regex(out, /== guest up/, out)
  t.is(out.match(/Negotiation: /g)?.length, 2, `nbd-client -C 2 opened two connections (the export offers CAN_MULTI_CONN): ${out}`)
  t.regex(out, /== sectors 131072/, out)
  t.regex(out, /== mkfs ok/, out)
  t.regex(out, /== mounted/, out)
  t.regex(out, /== unmounted/, out)
  t.regex(out, /== detached/, out)
  t.regex(out, /== guest exit 0/, out)
  const sha = /== sha ([0-9a-f]{64})/.exec(out)?.[1]
  t.truthy(sha, out)

  const s = await top.status()
  t.is(s.exports[0].connections, 0, 'the guest detached; both of its connections are gone')
  t.is(s.devices.m.state, 'online', 'the mirror stayed whole')
  t.is(s.pool.free, s.pool.count, 'every pool buffer is back')
  t.is(await top.stop(), 0)
  const l1 = path.join(dir, 'l1.img')
  t.true(fs.readFileSync(l1).equals(fs.readFileSync(path.join(dir, 'l2.img'))), 'both legs hold the same bytes')
  execFileSync('/usr/sbin/e2fsck', ['-fn', l1], { stdio: 'ignore' }) // throws unless the filesystem is clean
  const copy = path.join(dir, 'data.out')
  execFileSync('/usr/sbin/debugfs', ['-R', `dump /data ${copy}`, l1], { stdio: 'ignore' })
  t.is(fs.statSync(copy).size, 160 * 65536)
  t.is(createHash('sha256').update(fs.readFileSync(copy)).digest('hex'), sha ?? '', 'the file in the leg is the one the guest wrote')
})
