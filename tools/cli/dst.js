#!/usr/bin/env node
// Entry point of the `dst` command. The sources are TypeScript, transpiled by ts-node (transpile only; `npm test`
// type-checks). Transpiling every file at every start costs about 1.5 s of CPU, so the output is kept on disk, keyed by
// the TypeScript version, tsconfig.json, the file name and its source text: ts-node (and TypeScript) are loaded only
// when a file changed. Stack traces still point into the .ts sources (inline source maps).
'use strict'
const crypto = require('node:crypto')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const root = path.join(__dirname, '..', '..')
const project = path.join(root, 'tsconfig.json')

function cacheDir () {
  const preferred = path.join(root, 'node_modules', '.cache', 'dst-transpile')
  try {
    fs.mkdirSync(preferred, { recursive: true })
    fs.accessSync(preferred, fs.constants.W_OK)
    return preferred
  } catch {
    return path.join(os.tmpdir(), `dst-transpile-${process.getuid?.() ?? 'u'}`)
  }
}

function installLoader () {
  const tsVersion = require(require.resolve('typescript/package.json', { paths: [root] })).version
  const salt = `${tsVersion}\0${fs.readFileSync(project, 'utf8')}\0`
  const dir = cacheDir()
  let service = null
  process.setSourceMapsEnabled(true)
  require.extensions['.ts'] = function (m, filename) {
    const source = fs.readFileSync(filename, 'utf8')
    const key = crypto.createHash('sha256').update(salt).update(filename).update('\0').update(source).digest('hex')
    const file = path.join(dir, `${key}.js`)
    let output = null
    try { output = fs.readFileSync(file, 'utf8') } catch {}
    if (output === null) {
      if (service === null) service = require('ts-node').create({ transpileOnly: true, project })
      output = service.compile(source, filename)
      try {
        fs.mkdirSync(dir, { recursive: true })
        const tmp = `${file}.${process.pid}.tmp`
        fs.writeFileSync(tmp, output)
        fs.renameSync(tmp, file)
      } catch {}
    }
    m._compile(output, filename)
  }
}

if (process.env.DST_TRANSPILE_CACHE === '0') {
  require('ts-node').register({ transpileOnly: true, project })
} else {
  installLoader()
}
require('./cli.ts').main(process.argv.slice(2))
