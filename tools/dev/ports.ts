// Loopback ports for tests and the soak that need to know a port before a node starts (to restart a node on the same address, or
// to point at an address where nothing listens). Ports come from below the kernel's ephemeral range: a client that
// keeps reconnecting to a dead node's ephemeral port can be handed that very port as its own source port (a TCP
// self-connect) and hold it, so the node could not listen there again. A candidate is checked by binding it.

import * as fs from 'node:fs'
import * as net from 'node:net'

function ephemeralStart (): number {
  try {
    const [low] = fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number)
    if (Number.isInteger(low) && low > 12000) return low
  } catch {}
  return 32768
}

function tryBind (port: number): Promise<boolean> {
  return new Promise(resolve => {
    const server = net.createServer()
    server.once('error', () => resolve(false))
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
  })
}

export async function freePort (): Promise<number> {
  const high = ephemeralStart() - 1
  const low = Math.max(10000, high - 20000)
  for (let i = 0; i < 200; i++) {
    const port = low + Math.floor(Math.random() * (high - low))
    if (await tryBind(port)) return port
  }
  throw new Error('no free loopback port below the ephemeral range')
}
