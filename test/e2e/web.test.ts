// The web view (GET / of a node) in a real browser: Debian's chromium driven by playwright-core loads the page of the
// top node of a 3-level tree of real nodes and shows every node and device; a leaf killed (under writes) is shown as
// a failed leg and an unreachable branch within seconds, without a reload; the leaf back is shown resyncing or in
// sync. A screenshot of each state is saved in a temporary folder of its own (dst-web-shots-*, kept after the test as
// its artifacts; the path is logged). The checks read the DOM, not pixels. A 50-node tree is drawn and timed.

import * as fs from 'node:fs'
import * as path from 'node:path'
import { chromium, type Browser, type Page } from 'playwright-core'
import { runDst } from '../helpers/node-process'
import { testNeeding, TOOLS, which } from '../helpers/requires'
import { startWatchTree } from '../helpers/watch-tree'
import { startBigTree } from '../helpers/big-tree'

const box = (node: string, device: string): string => `.device[data-node="${node}"][data-device="${device}"]`

async function shot (page: Page, dir: string, name: string, log: (m: string) => void): Promise<void> {
  const file = path.join(dir, `web-${name}.png`)
  await page.screenshot({ path: file, fullPage: true })
  log(`screenshot: ${file}`)
}

testNeeding([TOOLS.chromium])('the web view shows the whole tree, a leaf failing and coming back, live', async t => {
  const w = await startWatchTree(t)
  const shots = fs.mkdtempSync(path.join(path.dirname(w.dir), 'dst-web-shots-'))
  const browser: Browser = await chromium.launch({ executablePath: which('chromium') as string, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] })
  t.teardown(() => browser.close())
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } })
  const outside: string[] = []
  page.on('request', r => { if (!r.url().startsWith(w.top.http)) outside.push(r.url()) })
  await page.goto(`${w.top.http}/`)
  for (const node of ['top', 'mid', 'leaf1', 'leaf2']) await page.waitForSelector(`.node[data-node="${node}"]`, { timeout: 15000 })
  for (const [node, device] of [['top', 'all'], ['top', 'local'], ['top', 'far'], ['mid', 'm'], ['mid', 'a'], ['mid', 'b'], ['leaf1', 'disk'], ['leaf2', 'disk']]) {
    t.is(await page.locator(box(node, device)).count(), 1, `${node}/${device} drawn once`)
  }
  t.is(await page.getAttribute(box('mid', 'b'), 'data-state'), 'in-sync')
  t.is(await page.getAttribute(box('mid', 'm'), 'data-state'), 'online')
  await page.waitForSelector('#live.on', { timeout: 10000 })
  await shot(page, shots, '1-whole-tree', m => t.log(m))
  // A mark on the page: a reload would lose it.
  await page.evaluate(() => { (window as unknown as { mark: number }).mark = 42 })

  await w.killLeaf(1)
  const file = path.join(w.dir, 'data.bin')
  fs.writeFileSync(file, Buffer.alloc(256 * 1024, 7))
  const copied = await runDst(['copy', file, w.top.url('all'), '--offset', '4MiB', '--quiet'])
  t.is(copied.code, 0, copied.stderr)
  const killedAt = Date.now()
  await page.waitForSelector(`${box('mid', 'b')}[data-state="failed"]`, { timeout: 10000 })
  t.log(`leg failed shown ${Date.now() - killedAt} ms after the writes`)
  t.is(await page.getAttribute(box('mid', 'm'), 'data-state'), 'degraded')
  await page.waitForSelector(`.unreachable[data-address="127.0.0.1:${w.leaves[1].port}"]`, { timeout: 10000 })
  t.is(await page.locator(box('leaf2', 'disk')).count(), 0, 'the dead leaf is an unreachable branch')
  t.is(await page.locator(box('leaf1', 'disk')).count(), 1, 'the rest still drawn')
  t.is(await page.evaluate(() => (window as unknown as { mark: number }).mark), 42, 'no reload')
  await shot(page, shots, '2-leaf-failed', m => t.log(m))

  await w.restartLeaf(1)
  const state = await page.waitForFunction(sel => {
    const el = document.querySelector(sel)
    const s = el?.getAttribute('data-state')
    return s === 'resyncing' || s === 'in-sync' ? s : false
  }, box('mid', 'b'), { timeout: 20000 })
  t.log(`after the leaf came back, leg b shown ${String(await state.jsonValue())}`)
  await page.waitForSelector(box('leaf2', 'disk'), { timeout: 10000 })
  await shot(page, shots, '3-leaf-back', m => t.log(m))
  await page.waitForSelector(`${box('mid', 'b')}[data-state="in-sync"]`, { timeout: 20000 })
  t.is(await page.getAttribute(box('mid', 'm'), 'data-state'), 'online')
  await shot(page, shots, '4-in-sync', m => t.log(m))
  t.is(await page.evaluate(() => (window as unknown as { mark: number }).mark), 42, 'no reload')
  t.deepEqual(outside, [], 'nothing fetched from anywhere but the node')
})

testNeeding([TOOLS.chromium])('a tree of 50 nodes is drawn in the browser (the time it takes is logged)', async t => {
  const { top } = await startBigTree(t)
  const browser: Browser = await chromium.launch({ executablePath: which('chromium') as string, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] })
  t.teardown(() => browser.close())
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } })
  const times: number[] = []
  for (let i = 0; i < 3; i++) {
    await new Promise(resolve => setTimeout(resolve, 600)) // past GET /tree's cache
    const began = Date.now()
    await page.goto(`http://127.0.0.1:${top.port}/`)
    await page.waitForFunction(() => document.querySelectorAll('.node[data-node]').length >= 50, undefined, { timeout: 15000 })
    times.push(Date.now() - began)
  }
  t.is(await page.locator('.device[data-type="memory"]').count(), 42, 'every leaf disk')
  t.is(await page.locator('.node[data-node]').count(), 50, 'every node once')
  t.log(`page load to 50 nodes drawn: ${times.join(', ')} ms`)
})
