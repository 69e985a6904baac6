// Tests that need an outside tool (a real NBD client, qemu, the guest kernel...), like nbdkit's `requires`: on a
// machine without the tool the test is skipped, and its title says which tool is missing and how to get it, so
// `npm install && npm test` passes on a fresh machine with only Node. Under CI=true a missing tool is a failure
// instead, so CI (whose .ci/run installs everything) still runs every test.

import test, { type ExecutionContext, type ImplementationFn } from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'

export interface Tool {
  /** The command looked up on PATH (and the sbin folders). */
  command: string
  /** How to get it, e.g. 'apt-get install libnbd-bin'. */
  install: string
}

export const TOOLS = {
  nbdinfo: { command: 'nbdinfo', install: 'apt-get install libnbd-bin' },
  nbdcopy: { command: 'nbdcopy', install: 'apt-get install libnbd-bin' },
  nbdsh: { command: 'nbdsh', install: 'apt-get install python3-libnbd' },
  qemuImg: { command: 'qemu-img', install: 'apt-get install qemu-utils' },
  qemuIo: { command: 'qemu-io', install: 'apt-get install qemu-utils' },
  fio: { command: 'fio', install: 'apt-get install fio' },
  chromium: { command: 'chromium', install: 'apt-get install chromium' },
  openssl: { command: 'openssl', install: 'apt-get install openssl' },
} satisfies Record<string, Tool>

/** The full path of a command, or null. */
export function which (command: string): string | null {
  for (const dir of (`/usr/sbin:/sbin:/usr/bin:/bin:${process.env.PATH ?? ''}`).split(':')) {
    if (dir === '') continue
    const p = path.join(dir, command)
    try {
      fs.accessSync(p, fs.constants.X_OK)
      return p
    } catch {}
  }
  return null
}

/** One line naming the first missing tool and how to get it, or null when every tool is there. */
export function missingTool (tools: Tool[]): string | null {
  for (const tool of tools) if (which(tool.command) === null) return `needs ${tool.command}: ${tool.install}`
  return null
}

export const inCI = process.env.CI === 'true'

/**
 * `test`, for tests that need `tools`: registered as usual when they are all there; otherwise skipped with the reason
 * in the title, or (under CI=true) registered as a test that fails with that reason.
 */
export function testNeeding (tools: Tool[] | (() => string | null)): (title: string, fn: ImplementationFn<[]>) => void {
  const reason = typeof tools === 'function' ? tools() : missingTool(tools)
  return (title, fn) => {
    if (reason === null) { test(title, fn); return }
    if (inCI) { test(title, (t: ExecutionContext) => { t.fail(`${reason} (CI=true: every tool must be installed; .ci/run installs them)`) }); return }
    test.skip(`${title} [skipped: ${reason}]`, fn)
  }
}
