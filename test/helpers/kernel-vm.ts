// A throwaway Linux guest for testing the kernel's own NBD client (nbd.ko driven by nbd-client) against a node: the
// development and CI machines run a kernel without the nbd module, so a Debian kernel boots under qemu (software
// emulation; KVM when asked) from an initramfs built here of busybox, nbd-client and its libraries, and the modules
// it needs. The guest reaches the host only through qemu's user-mode network, whose
// gateway 10.0.2.2 is the host's own loopback: the guest's traffic arrives on 127.0.0.1 and goes nowhere else.
// `.ci/kernel.sh` (run by `.ci/run`) installs qemu-system-x86, nbd-client, busybox-static and e2fsprogs, and unpacks
// the kernel and the modules into KERNEL_DIR.

import { execFileSync, spawn } from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'

export const KERNEL_DIR = path.join(__dirname, '..', '..', 'node_modules', '.cache', 'dst-kernel')

/** Modules the guest loads, in this order (each after what it depends on): ext4 for a filesystem, e1000 for qemu's network card, nbd. */
export const GUEST_MODULES = ['lib/crc16.ko', 'fs/mbcache.ko', 'fs/jbd2/jbd2.ko', 'crypto/crc32c_generic.ko', 'fs/ext4/ext4.ko', 'drivers/net/ethernet/intel/e1000/e1000.ko', 'drivers/block/nbd.ko']

export interface GuestKernel { vmlinuz: string, modules: string[] }

/** The unpacked kernel and the modules the guest loads, or a sentence saying what is missing and how to get it. */
export function findKernel (): GuestKernel | string {
  const fix = 'run .ci/run (or .ci/kernel.sh) to install qemu-system-x86, nbd-client, busybox-static and e2fsprogs and unpack a Debian kernel'
  for (const tool of ['qemu-system-x86_64', 'nbd-client', 'busybox']) {
    if (which(tool) === null) return `${tool} is not installed: ${fix}`
  }
  const boot = path.join(KERNEL_DIR, 'boot')
  const vmlinuz = fs.existsSync(boot) ? fs.readdirSync(boot).find(f => f.startsWith('vmlinuz-')) : undefined
  if (vmlinuz === undefined) return `no kernel in ${boot}: ${fix}`
  const version = vmlinuz.slice('vmlinuz-'.length)
  const modules = GUEST_MODULES.map(rel => path.join(KERNEL_DIR, 'lib', 'modules', version, 'kernel', rel))
  for (const m of modules) if (!fs.existsSync(m)) return `module ${m} is missing: ${fix}`
  return { vmlinuz: path.join(boot, vmlinuz), modules }
}

function which (tool: string): string | null {
  for (const dir of (`/usr/sbin:/sbin:/usr/bin:/bin:${process.env.PATH ?? ''}`).split(':')) {
    const p = path.join(dir, tool)
    if (dir !== '' && fs.existsSync(p)) return p
  }
  return null
}

/** The shared libraries a binary needs (and the dynamic loader), as `ldd` lists them. */
function librariesOf (binary: string): string[] {
  const out = execFileSync('ldd', [binary], { encoding: 'utf8' })
  const libs: string[] = []
  for (const line of out.split('\n')) {
    const m = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line)
    if (m !== null) libs.push(m[1])
  }
  return libs
}

/**
 * Builds `dir/initrd.cpio` (newc, by busybox): busybox with its applets, nbd-client and its libraries, the modules,
 * and `/init`, which brings the network up and then runs `script` (busybox sh), printing its output on the console.
 */
export function buildInitramfs (dir: string, kernel: GuestKernel, script: string): string {
  const root = path.join(dir, 'root')
  for (const d of ['bin', 'sbin', 'lib', 'lib64', 'proc', 'sys', 'dev', 'mnt', 'tmp', 'etc']) fs.mkdirSync(path.join(root, d), { recursive: true })
  const busybox = which('busybox') as string
  fs.copyFileSync(busybox, path.join(root, 'bin', 'busybox'))
  fs.chmodSync(path.join(root, 'bin', 'busybox'), 0o755)
  const nbdClient = which('nbd-client') as string
  fs.copyFileSync(nbdClient, path.join(root, 'sbin', 'nbd-client'))
  fs.chmodSync(path.join(root, 'sbin', 'nbd-client'), 0o755)
  for (const lib of librariesOf(nbdClient)) {
    const target = path.join(root, lib)
    fs.mkdirSync(path.dirname(target), { recursive: true })
    fs.copyFileSync(fs.realpathSync(lib), target)
  }
  const loads: string[] = []
  for (const m of kernel.modules) {
    const name = path.basename(m)
    fs.copyFileSync(m, path.join(root, 'lib', name))
    loads.push(`insmod /lib/${name}${name === 'nbd.ko' ? ' nbds_max=4' : ''}`)
  }
  const init = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
${loads.join('\n')}
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo "== guest up"
( ${script.trim().split('\n').join('\n  ')}
) 2>&1
echo "== guest exit $?"
sync
poweroff -f
`
  fs.writeFileSync(path.join(root, 'init'), init, { mode: 0o755 })
  const out = path.join(dir, 'initrd.cpio')
  // busybox cpio takes the file list on stdin; paths relative to the root, as the kernel unpacks them.
  const files = execFileSync('find', ['.', '-mindepth', '1'], { cwd: root, encoding: 'utf8' })
  execFileSync(busybox, ['cpio', '-o', '-H', 'newc', '-F', out], { cwd: root, input: files, stdio: ['pipe', 'ignore', 'ignore'] })
  return out
}

/**
 * Boots the guest and resolves with its console output once it powers off. Killed (SIGKILL) after `timeout` ms,
 * or by the function handed to `onSpawn` (the test's teardown).
 */
export function runGuest (kernel: GuestKernel, initrd: string, timeout: number, onSpawn: (kill: () => void) => void): Promise<{ console: string, code: number | null, accel: string }> {
  // Software emulation by default: these machines are VMs whose /dev/kvm opens, but a nested guest hangs in its
  // first seconds (and `-cpu host` is refused). Booting takes about 10 s under emulation. DST_GUEST_ACCEL=kvm to try.
  const accel = process.env.DST_GUEST_ACCEL === 'kvm' ? 'kvm' : 'tcg'
  const args = [
    '-machine', `q35,accel=${accel}`, '-m', '256', '-smp', '1',
    '-kernel', kernel.vmlinuz, '-initrd', initrd,
    '-append', 'console=ttyS0 panic=-1 quiet loglevel=4',
    '-nographic', '-no-reboot', '-nodefaults', '-serial', 'stdio',
    '-netdev', 'user,id=n0,net=10.0.2.0/24,host=10.0.2.2,restrict=off', '-device', 'e1000,netdev=n0,romfile=',
  ]
  return new Promise(resolve => {
    const proc = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    proc.stdout.on('data', (c: Buffer) => { out += c.toString() })
    proc.stderr.on('data', (c: Buffer) => { out += c.toString() })
    const kill = (): void => { if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL') }
    onSpawn(kill)
    const timer = setTimeout(kill, timeout)
    proc.on('close', code => { clearTimeout(timer); resolve({ console: out, code, accel }) })
  })
}
