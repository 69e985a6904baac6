// `npm install` / `npm ci` runs this (package.json "install"): builds native/dst_native.c with node-gyp. A machine
// without a compiler or Node's headers still installs and runs dst: the build failing is a warning, not an error, and
// node/devices/native.ts then reports holes, punching and zeroing as absent.
'use strict'
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const root = path.join(__dirname, '..')
// npm tells its scripts where its own node-gyp is; otherwise the one on PATH.
const gyp = process.env.npm_config_node_gyp
const args = ['rebuild']
// Headers next to this node (Debian's nodejs, or a tarball install) spare node-gyp a download.
const prefix = path.resolve(path.dirname(process.execPath), '..')
if (process.env.npm_config_nodedir === undefined && fs.existsSync(path.join(prefix, 'include', 'node', 'node_api.h'))) args.push(`--nodedir=${prefix}`)
const r = gyp !== undefined && gyp !== ''
  ? spawnSync(process.execPath, [gyp, ...args], { cwd: root, stdio: 'inherit' })
  : spawnSync('node-gyp', args, { cwd: root, stdio: 'inherit' })
if (r.status !== 0) {
  console.warn('dst: the native addon (native/dst_native.c) was not built; files will report no holes and cannot punch or zero ranges (see README, "How it is built")')
}
