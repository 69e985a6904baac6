// The node's watching pages, on its one listener: GET /events (Server-Sent Events, node/daemon/events.ts), GET /tree
// (the whole tree from this node down, crawled server-side: a page cannot fetch other nodes, they are other origins)
// and GET / (the web view: index.html, app.js and app.css beside this file, read once at start; no build step,
// nothing from the network). Served to whoever may read /status.

import * as fs from 'node:fs'
import * as path from 'node:path'
import type * as uws from 'uWebSockets.js'
import { DEFAULT_EVENTS_MAX_QUEUED, EventStream, type EventPublisher } from '../events'
import { TreeCrawler, treeJson } from '../tree'

export interface WatchOptions {
  events: EventPublisher
  /** This node's own HTTP base (http://HOST:PORT), where the crawl of GET /tree starts. */
  base: () => string
  log: (message: string) => void
  /** Bound on what one event stream may queue for a client that does not read (bytes). */
  maxQueued?: number
}

type Guard = (res: uws.HttpResponse, what: string, fn: () => void) => void

const FILES: Record<string, { file: string, type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/web/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/web/app.css': { file: 'app.css', type: 'text/css; charset=utf-8' },
}

/** How long one crawl answers GET /tree (ms): many pages open on one node cost one crawl. */
const TREE_CACHE = 500

export function addWatchRoutes (app: uws.TemplatedApp, guard: Guard, options: WatchOptions): void {
  const maxQueued = options.maxQueued ?? (Number(process.env.DST_EVENTS_MAX_QUEUED ?? '') > 0 ? Number(process.env.DST_EVENTS_MAX_QUEUED) : DEFAULT_EVENTS_MAX_QUEUED)
  for (const [route, { file, type }] of Object.entries(FILES)) {
    const body = fs.readFileSync(path.join(__dirname, file))
    app.get(route, res => { guard(res, `GET ${route}`, () => { res.writeHeader('content-type', type).writeHeader('cache-control', 'no-cache').end(body) }) })
  }

  app.get('/events', res => {
    guard(res, 'GET /events', () => {
      const address = Buffer.from(res.getRemoteAddressAsText()).toString()
      let unsubscribe = (): void => {}
      const stream = new EventStream(res, maxQueued, queued => {
        options.log(`closing ${address}'s event stream: it does not read (${queued} bytes waiting, at most ${maxQueued})`)
        unsubscribe()
      })
      res.onAborted(() => { stream.closed = true; unsubscribe() })
      res.cork(() => {
        res.writeHeader('content-type', 'text/event-stream').writeHeader('cache-control', 'no-cache')
        res.write(': dst events\n\n')
      })
      // The node stopping ends every stream (a browser's EventSource then tries again by itself).
      unsubscribe = options.events.subscribe(e => stream.send(e), () => {
        if (stream.closed) return
        stream.closed = true
        res.cork(() => { res.end() })
      })
    })
  })

  let cached: { at: number, body: Promise<string> } | null = null
  app.get('/tree', res => {
    guard(res, 'GET /tree', () => {
      let done = false
      res.onAborted(() => { done = true })
      if (cached === null || Date.now() - cached.at > TREE_CACHE) {
        const body = new TreeCrawler({ timeout: 2000 }).crawl(options.base()).then(tree => JSON.stringify(treeJson(tree)) + '\n')
        cached = { at: Date.now(), body }
        body.catch(() => { cached = null })
      }
      cached.body.then(text => {
        if (!done) res.cork(() => { res.writeHeader('content-type', 'application/json').writeHeader('cache-control', 'no-cache').end(text) })
      }, (err: Error) => {
        if (!done) res.cork(() => { res.writeStatus('502 Bad Gateway').writeHeader('content-type', 'application/json').end(JSON.stringify({ error: err.message }) + '\n') })
      }).catch(err => options.log(`internal error answering GET /tree: ${(err as Error).stack ?? String(err)}`))
    })
  })
}
