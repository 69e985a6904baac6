// Tests make their certificates with the same tool as the TLS bench (tools/dev/certs.ts).
export { TestCa, x509Dir, type Cert } from '../../tools/dev/certs'
