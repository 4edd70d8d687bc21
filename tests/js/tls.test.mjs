// Built-in HTTPS/WSS: Banter serves TLS itself with --tls-cert/--tls-key, and the official client
// chats over wss:// and over HTTPS long-polling, trusting a CA that this test generates.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { cleanup, connect, joinOk, once, startServer, stopAllServers } from './harness.mjs';

function haveOpenssl() {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** A CA and a certificate for 127.0.0.1 signed by it, in a temp folder. */
function makeCerts() {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'banter-tls-'));
  const run = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt',
    '-days', '2', '-subj', '/CN=Banter test CA');
  run('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr',
    '-subj', '/CN=localhost');
  writeFileSync(path.join(dir, 'san.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial',
    '-out', 'server.crt', '-days', '2', '-extfile', 'san.ext');
  return { dir, ca: readFileSync(path.join(dir, 'ca.crt')) };
}

function get(url, ca) {
  return new Promise((resolve, reject) => {
    https.get(url, { ca }, (res) => {
      res.resume();
      res.on('end', () => resolve(res));
    }).on('error', reject);
  });
}

after(async () => {
  await cleanup();
  await stopAllServers();
});

test('HTTPS and WSS with a certificate of our own', async (t) => {
  if (!haveOpenssl()) {
    if (process.env.BANTER_REQUIRE_ALL === '1') assert.fail('openssl is not installed');
    t.skip('!! SKIPPED: openssl is not installed');
    return;
  }
  const certs = makeCerts();
  t.after(() => rmSync(certs.dir, { recursive: true, force: true }));
  const server = await startServer({
    BANTER_TLS_CERT: path.join(certs.dir, 'server.crt'),
    BANTER_TLS_KEY: path.join(certs.dir, 'server.key'),
  });
  assert.match(server.url, /^https:\/\//);

  const health = await get(`${server.url}/healthz`, certs.ca);
  assert.equal(health.statusCode, 200);
  const page = await get(`${server.url}/`, certs.ca);
  assert.match(page.headers['content-security-policy'], /default-src 'self'/);

  const ws = await connect(server.url, { transports: ['websocket'], ca: certs.ca });
  const polling = await connect(server.url, { transports: ['polling'], ca: certs.ca });
  await joinOk(ws, 'secure-ws');
  const joined = once(ws, 'user joined');
  await joinOk(polling, 'secure-polling');
  assert.equal((await joined).username, 'secure-polling');
  const got = once(ws, 'new message');
  polling.emit('new message', 'over TLS');
  assert.equal((await got).message, 'over TLS');

  // A client that does not trust the certificate cannot connect.
  await assert.rejects(get(`${server.url}/healthz`, undefined));
});
