// Tests for node/core/tls.ts: allowSubjects entries, and the one decision both protocols take on a client certificate.

import test from 'ava'
import { certRefusal, parseSubject, subjectText, type PeerCertificate } from '../../../node/core/tls'
import { formatDstUrl, parseDstUrl } from '../../../node/core/url'

const n2: PeerCertificate = { authorized: true, error: null, subject: { CN: 'n2', O: 'lab' } }

test('parseSubject takes ATTRIBUTE=VALUE pairs and names what is wrong', t => {
  t.deepEqual(parseSubject('CN=n2'), [['CN', 'n2']])
  t.deepEqual(parseSubject(' CN = n2 , O=lab'), [['CN', 'n2'], ['O', 'lab']])
  t.regex(parseSubject('n2') as string, /"n2" is not ATTRIBUTE=VALUE/)
  t.regex(parseSubject('') as string, /expected a subject/)
  t.regex(parseSubject(7) as string, /expected a subject/)
})

test('certRefusal: an export without clientCert lets any peer in, even one a listener cannot see', t => {
  t.is(certRefusal({}, undefined, 'd'), null)
  t.is(certRefusal({}, { authorized: false, error: 'CERT_HAS_EXPIRED', subject: { CN: 'x' } }, 'd'), null)
})

test('certRefusal: "require" refuses no certificate, an unverified one, and a listener that cannot check', t => {
  const rules = { clientCert: 'require' as const }
  t.is(certRefusal(rules, n2, 'd'), null)
  t.regex(certRefusal(rules, { authorized: false, error: null, subject: null }, 'd') as string, /requires a client certificate; none was presented/)
  t.regex(certRefusal(rules, { authorized: false, error: 'CERT_HAS_EXPIRED', subject: { CN: 'n2' } }, 'd') as string, /\(CN=n2\) not accepted: CERT_HAS_EXPIRED/)
  t.regex(certRefusal(rules, undefined, 'd', 'dsts://h:1/d') as string, /cannot check; connect to dsts:\/\/h:1\/d/)
})

test('certRefusal: allowSubjects needs every attribute of one entry, and implies "require"', t => {
  t.is(certRefusal({ allowSubjects: ['CN=n2'] }, n2, 'd'), null)
  t.is(certRefusal({ allowSubjects: ['CN=n9', 'CN=n2,O=lab'] }, n2, 'd'), null)
  t.regex(certRefusal({ allowSubjects: ['CN=n2,O=other'] }, n2, 'd') as string, /subject CN=n2, O=lab is not in its allowSubjects/)
  t.regex(certRefusal({ allowSubjects: ['CN=n2'] }, { authorized: false, error: null, subject: null }, 'd') as string, /none was presented/)
  t.is(certRefusal({ allowSubjects: ['CN=b'] }, { authorized: true, error: null, subject: { CN: ['a', 'b'] } }, 'd'), null)
})

test('subjectText prints a subject as the refusals name it', t => {
  t.is(subjectText({ CN: 'n2', O: 'lab' }), 'CN=n2, O=lab')
  t.is(subjectText(null), '(no certificate)')
})

test('dsts:// urls parse with tls and print back as they came; dst:// ones stay without', t => {
  t.deepEqual(parseDstUrl('dsts://127.0.0.1:7443/disk0'), { host: '127.0.0.1', port: 7443, export: 'disk0', tls: true })
  t.deepEqual(parseDstUrl('dst://127.0.0.1:7001/disk0'), { host: '127.0.0.1', port: 7001, export: 'disk0' })
  t.is(formatDstUrl(parseDstUrl('dsts://[::1]:7443/a%20b') as never), 'dsts://[::1]:7443/a%20b')
  t.regex(parseDstUrl('dstx://h:1/d') as string, /is not a dst:\/\/HOST:PORT\/NAME url/)
})
