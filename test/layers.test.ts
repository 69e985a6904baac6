// The layers of the tree, checked: every relative import of every source file must point to a layer its own layer may
// use (README, "Architecture"). A new import that crosses a layer the wrong way fails here, naming both files.

import test from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'

const ROOT = path.join(__dirname, '..')

interface Layer { name: string, dir: string, may: string[] }

/** Most specific folder first: a file belongs to the first layer whose folder holds it. */
const LAYERS: Layer[] = [
  { name: 'core', dir: 'node/core', may: [] },
  { name: 'devices', dir: 'node/devices', may: ['core'] },
  { name: 'algorithms', dir: 'algorithms', may: ['core', 'devices'] },
  { name: 'protocol-native', dir: 'export/native', may: ['core', 'devices', 'protocol-shared'] },
  { name: 'protocol-nbd', dir: 'export/nbd', may: ['core', 'devices', 'protocol-shared'] },
  { name: 'protocol-shared', dir: 'export', may: ['core', 'devices'] },
  { name: 'daemon', dir: 'node/daemon', may: ['core', 'devices', 'algorithms', 'protocol-native', 'protocol-nbd', 'protocol-shared'] },
  { name: 'cli', dir: 'tools/cli', may: ['core', 'devices', 'algorithms', 'protocol-native', 'protocol-nbd', 'protocol-shared', 'daemon'] },
  { name: 'dev-tools', dir: 'tools/dev', may: ['core', 'devices', 'algorithms', 'protocol-native', 'protocol-nbd', 'protocol-shared', 'daemon'] },
]

function layerOf (file: string): Layer | null {
  const rel = path.relative(ROOT, file).split(path.sep).join('/')
  return LAYERS.find(l => rel.startsWith(l.dir + '/')) ?? null
}

function sources (dir: string): string[] {
  const out: string[] = []
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name)
    if (e.isDirectory()) out.push(...sources(p))
    else if (/\.(ts|js)$/.test(e.name)) out.push(p)
  }
  return out
}

/** Relative module specifiers of a file: import/export ... from, import(), require(). */
export function relativeImports (text: string): string[] {
  const out: string[] = []
  const re = /(?:\bfrom\s*|\bimport\s*\(\s*|\brequire\s*\(\s*|^\s*import\s+)(['"])(\.{1,2}\/[^'"]*)\1/gm
  for (let m = re.exec(text); m !== null; m = re.exec(text)) out.push(m[2])
  return out
}

function resolve (from: string, spec: string): string {
  const base = path.resolve(path.dirname(from), spec)
  for (const candidate of [base, `${base}.ts`, `${base}.js`, path.join(base, 'index.ts')]) {
    if (fs.existsSync(candidate) && fs.statSync(candidate).isFile()) return candidate
  }
  return base
}

test('the checker sees every kind of import', t => {
  const text = "import { a } from './a'\nimport type { B } from '../b'\nexport { c } from './c'\nconst d = require('./d')\nimport './e'\nconst f = import('../f')\nimport { g } from 'node:fs'\n"
  t.deepEqual(relativeImports(text), ['./a', '../b', './c', './d', './e', '../f'])
})

test('every file belongs to a layer, and no import crosses a layer the wrong way', t => {
  const files = ['node', 'algorithms', 'export', 'tools'].flatMap(d => sources(path.join(ROOT, d)))
  t.true(files.length > 40, 'the source tree was found')
  const wrong: string[] = []
  for (const file of files) {
    const layer = layerOf(file)
    if (layer === null) { wrong.push(`${path.relative(ROOT, file)} is in no layer`); continue }
    for (const spec of relativeImports(fs.readFileSync(file, 'utf8'))) {
      const target = resolve(file, spec)
      const to = layerOf(target)
      if (to === null) { wrong.push(`${path.relative(ROOT, file)} imports ${spec}, outside every layer`); continue }
      if (to !== layer && !layer.may.includes(to.name)) {
        wrong.push(`${path.relative(ROOT, file)} (${layer.name}) imports ${path.relative(ROOT, target)} (${to.name})`)
      }
    }
  }
  t.deepEqual(wrong, [])
})
