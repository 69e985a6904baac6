// The dst web view: GET /tree (the whole tree from this node down, crawled by the node) drawn as nested boxes, kept
// live from GET /events (Server-Sent Events): a change re-fetches the tree (at most every 300 ms), and since this
// node's stream sees only its own devices, the tree is also re-fetched every 2 s for changes deeper down. Rates of
// this node's exports come from the stream's `rates` events and are drawn as sparklines. Plain DOM, no library.
'use strict'

const $ = id => document.getElementById(id)
const RATE_POINTS = 60

function h (tag, attrs, ...children) {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') el.className = v
    else if (k.startsWith('data-')) el.setAttribute(k, v)
    else el[k] = v
  }
  for (const c of children) if (c !== null && c !== undefined) el.append(c)
  return el
}

function size (n) {
  if (typeof n !== 'number') return ''
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']
  let i = 0
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++ }
  return `${Number.isInteger(n) ? n : n.toFixed(1)} ${units[i]}`
}

function bar (label, done, total, extra) {
  const frac = total > 0 ? Math.min(1, done / total) : 1
  return h('div', { class: `progress ${label}` }, `${label} `,
    h('span', { class: 'bar' }, h('span', { style: `width:${(frac * 100).toFixed(1)}%` })),
    ` ${(frac * 100).toFixed(0)}% ${size(done)} / ${size(total)}${extra || ''}`)
}

function device (d) {
  const box = h('div', { class: `device st-${d.state}`, 'data-node': d.node, 'data-device': d.name, 'data-state': d.state, 'data-type': d.type })
  const head = h('div', { class: 'head' }, h('span', { class: 'name' }, d.name), h('span', { class: 'type' }, d.type), h('span', { class: 'size' }, size(d.size)), h('span', { class: 'state' }, d.state))
  if (typeof d.url === 'string') head.append(h('span', { class: 'detail' }, d.url))
  if (typeof d.path === 'string') head.append(h('span', { class: 'detail' }, d.path))
  if (typeof d.dirtyBytes === 'number' && d.dirtyBytes > 0) head.append(h('span', { class: 'detail dirty' }, `dirty ${size(d.dirtyBytes)}`))
  if (typeof d.lastError === 'string') head.append(h('span', { class: 'detail' }, `last error: ${d.lastError}`))
  box.append(head)
  if (d.resync) box.append(bar('resync', d.resync.doneBytes, d.resync.totalBytes))
  if (d.verify && d.verify.state === 'running') box.append(bar('verify', d.verify.doneBytes, d.verify.totalBytes, `, ${d.verify.mismatches} mismatched`))
  const s = d.served
  for (const c of d.children || []) {
    if (s && s.node !== undefined && c.node === s.node && c.node !== d.node) {
      box.append(h('div', { class: 'node', 'data-node': s.node }, h('div', { class: 'label' }, `node ${s.node} (${s.address}) export ${s.export}`), device(c)))
    } else box.append(device(c))
  }
  if (s && s.error !== undefined) box.append(h('div', { class: 'unreachable', 'data-address': s.address }, `${s.address} export ${s.export}: unreachable: ${s.error}`))
  if (s && s.shownAbove) box.append(h('div', { class: 'shown-above' }, `${s.address} export ${s.export} (shown above)`))
  return box
}

function draw (tree) {
  $('title').textContent = `${tree.node} (${tree.address})`
  document.title = `dst ${tree.node}`
  const top = h('div', { class: 'node', 'data-node': tree.node }, h('div', { class: 'label' }, `node ${tree.node} (${tree.address})`))
  for (const d of tree.children) top.append(device(d))
  $('tree').replaceChildren(top)
  $('updated').textContent = `updated ${new Date().toLocaleTimeString()}`
}

let fetching = false
let again = false
let lastFetch = 0
async function refresh () {
  if (fetching) { again = true; return }
  fetching = true
  lastFetch = Date.now()
  try {
    const res = await fetch('/tree', { cache: 'no-store' })
    const body = await res.json()
    if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`)
    draw(body)
  } catch (err) {
    $('updated').textContent = `cannot fetch the tree: ${err.message}`
  } finally {
    fetching = false
    if (again) { again = false; setTimeout(refresh, 300) }
  }
}

let pending = null
function soon () {
  if (pending !== null) return
  pending = setTimeout(() => { pending = null; refresh() }, Math.max(0, 300 - (Date.now() - lastFetch)))
}

const rates = new Map()
function sparkline (points) {
  const w = 120
  const ht = 24
  const max = Math.max(1, ...points)
  const xy = points.map((v, i) => `${(i * w / (RATE_POINTS - 1)).toFixed(1)},${(ht - 1 - v / max * (ht - 2)).toFixed(1)}`).join(' ')
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg')
  svg.setAttribute('width', w); svg.setAttribute('height', ht)
  const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline')
  line.setAttribute('points', xy); line.setAttribute('fill', 'none'); line.setAttribute('stroke', '#37c')
  svg.append(line)
  return svg
}
function drawRates (exports) {
  for (const [name, r] of Object.entries(exports)) {
    const p = rates.get(name) || { read: [], write: [] }
    p.read.push(r.readBytesPerSecond); p.write.push(r.writeBytesPerSecond)
    if (p.read.length > RATE_POINTS) { p.read.shift(); p.write.shift() }
    rates.set(name, p)
  }
  $('rates').replaceChildren(...[...rates].map(([name, p]) => h('div', { class: 'rate', 'data-export': name },
    `${name} read ${size(p.read[p.read.length - 1])}/s `, sparkline(p.read), ` write ${size(p.write[p.write.length - 1])}/s `, sparkline(p.write))))
}

function describe (e) {
  const parts = [e.kind]
  if (e.device) parts.push(`device:${e.device}`)
  if (e.leg) parts.push(`leg:${e.leg}`)
  if (e.export) parts.push(`export:${e.export}`)
  if (e.from !== undefined || e.to !== undefined) parts.push(`${e.from}->${e.to}`)
  if (typeof e.doneBytes === 'number') parts.push(`${size(e.doneBytes)}/${size(e.totalBytes)}`)
  return `${e.time.slice(11, 23)} ${parts.join(' ')}`
}

function listen () {
  const source = new EventSource('/events')
  source.onopen = () => { $('live').textContent = 'live'; $('live').className = 'live on' }
  source.onerror = () => { $('live').textContent = 'reconnecting…'; $('live').className = 'live off' }
  source.onmessage = m => {
    let e
    try { e = JSON.parse(m.data) } catch { return }
    if (e.kind === 'rates') { drawRates(e.exports); return }
    if (e.kind !== 'snapshot') {
      const list = $('events')
      list.prepend(h('li', {}, describe(e)))
      while (list.children.length > 100) list.lastChild.remove()
    }
    soon()
  }
}

refresh()
listen()
setInterval(() => { if (Date.now() - lastFetch > 1800) refresh() }, 2000)
