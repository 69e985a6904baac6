// Tests take restartable loopback ports from the same place as the soak tool.
export { freePort } from '../../tools/dev/ports'
