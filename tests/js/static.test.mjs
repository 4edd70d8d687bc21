// HTTP side: the official client bundle served like Node's Socket.IO server does, the page, the
// health check; the transports setting; the heartbeat settings in the handshake; SIGTERM.

import { after, afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import {
  CLIENT_DIST,
  cleanup,
  collect,
  connect,
  connectExpectingError,
  joinOk,
  once,
  pollingHandshake,
  sendOk,
  serverPerTest,
  sharedServer,
  sleep,
  startServer,
  stopAllServers,
} from './harness.mjs';

const JS_TYPE = /^(application|text)\/javascript\s*(;|$)/i;
const JSON_TYPE = /^application\/json\s*(;|$)/i;

const BUNDLES = ['socket.io.js', 'socket.io.min.js', 'socket.io.esm.min.js'];

describe('client bundle, page and health check', () => {
  const srv = sharedServer();

  for (const file of BUNDLES) {
    for (const name of [file, `${file}.map`]) {
      it(`GET /socket.io/${name} serves node_modules/socket.io-client/dist/${name}`, async () => {
        const res = await fetch(`${srv.url}/socket.io/${name}`);
        assert.equal(res.status, 200);
        const type = res.headers.get('content-type') ?? '';
        assert.match(type, name.endsWith('.map') ? JSON_TYPE : JS_TYPE, `content-type of ${name}`);
        const body = Buffer.from(await res.arrayBuffer());
        const expected = readFileSync(path.join(CLIENT_DIST, name));
        assert.equal(body.length, expected.length, `${name}: same length as the official file`);
        assert.ok(body.equals(expected), `${name}: same bytes as the official file`);
      });
    }
  }

  it('GET / serves the chat page (HTML)', async () => {
    const res = await fetch(`${srv.url}/`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/html/i);
    const body = await res.text();
    assert.match(body, /<!doctype html|<html/i);
  });

  it('GET /healthz → 200', async () => {
    const res = await fetch(`${srv.url}/healthz`);
    assert.equal(res.status, 200);
    await res.arrayBuffer();
  });

  it('by default the polling handshake offers the upgrade to websocket', async () => {
    const open = await pollingHandshake(srv.url);
    assert.deepEqual(open.upgrades, ['websocket']);
    assert.equal(open.maxPayload, 1_000_000, "Node's default maxPayload");
  });
});

describe('BANTER_TRANSPORTS=websocket', () => {
  const srv = serverPerTest({ BANTER_TRANSPORTS: 'websocket' });

  it('a polling-only client cannot connect (connect_error), a websocket client can and chats', async () => {
    const err = await connectExpectingError(srv.url, { flavour: 'polling', label: 'polling-only' });
    assert.ok(err instanceof Error);
    const alsoRefused = await connectExpectingError(srv.url, { label: 'default (polling first)' });
    assert.ok(alsoRefused instanceof Error);

    const a = await connect(srv.url, { flavour: 'websocket', label: 'ws a' });
    const b = await connect(srv.url, { flavour: 'websocket', label: 'ws b' });
    await joinOk(a, 'alice');
    await joinOk(b, 'bob');
    const atB = once(b, 'new message');
    await sendOk(a, 'websocket only');
    assert.equal((await atB).message, 'websocket only');
  });
});

describe('BANTER_TRANSPORTS=polling', () => {
  const srv = serverPerTest({ BANTER_TRANSPORTS: 'polling' });

  it('the polling handshake offers no upgrade', async () => {
    const open = await pollingHandshake(srv.url);
    assert.deepEqual(open.upgrades, [], 'no upgrade to a disabled transport is offered');
  });

  it('a websocket-only client cannot connect; polling clients chat and never upgrade', async () => {
    const err = await connectExpectingError(srv.url, { flavour: 'websocket', label: 'ws-only' });
    assert.ok(err instanceof Error);

    const a = await connect(srv.url, { flavour: 'polling', label: 'polling a' });
    const b = await connect(srv.url, { label: 'default b' });
    await joinOk(a, 'alice');
    await joinOk(b, 'bob');
    const atA = once(a, 'new message');
    await sendOk(b, 'polling only');
    assert.equal((await atA).message, 'polling only');
    await sleep(500);
    assert.equal(b.io.engine.transport.name, 'polling', 'the default client stayed on polling');
  });
});

describe('BANTER_TRANSPORTS=websocket,polling', () => {
  const srv = serverPerTest({ BANTER_TRANSPORTS: 'websocket,polling' });

  it('all three client flavours connect', async () => {
    const ws = await connect(srv.url, { flavour: 'websocket', label: 'ws' });
    const polling = await connect(srv.url, { flavour: 'polling', label: 'polling' });
    const upgraded = await connect(srv.url, { flavour: 'upgrade', label: 'upgrade' });
    assert.equal(ws.io.engine.transport.name, 'websocket');
    assert.equal(polling.io.engine.transport.name, 'polling');
    assert.equal(upgraded.io.engine.transport.name, 'websocket');
  });
});

describe('heartbeat settings', () => {
  const srv = serverPerTest({ BANTER_PING_INTERVAL_MS: 1234, BANTER_PING_TIMEOUT_MS: 4321 });

  it('the handshake carries BANTER_PING_INTERVAL_MS and BANTER_PING_TIMEOUT_MS', async () => {
    const open = await pollingHandshake(srv.url);
    assert.equal(open.pingInterval, 1234);
    assert.equal(open.pingTimeout, 4321);
  });
});

describe('shutdown', () => {
  afterEach(cleanup);
  after(stopAllServers);

  it('SIGTERM: clients see "transport close" and try to reconnect; the server exits 0', async () => {
    const server = await startServer({}, { perTest: true });
    const opts = { reconnection: true, reconnectionDelay: 100, reconnectionDelayMax: 200 };
    const ws = await connect(server.url, { ...opts, flavour: 'websocket', label: 'ws' });
    const polling = await connect(server.url, { ...opts, flavour: 'polling', label: 'polling' });
    await joinOk(ws, 'alice');
    await joinOk(polling, 'bob');
    const wsErrors = collect(ws, 'error message');

    const wsGone = once(ws, 'disconnect');
    const pollingGone = once(polling, 'disconnect');
    const wsRetry = once(ws.io, 'reconnect_attempt');
    const pollingRetry = once(polling.io, 'reconnect_attempt');
    const exit = await server.stop();
    assert.deepEqual(exit, { code: 0, signal: null }, 'exit status 0');
    assert.equal(await wsGone, 'transport close');
    // A long-polling client may see its pending poll fail rather than a close packet (Node's
    // Socket.IO server gives "transport error" here); either way it is a drop, not a kick.
    assert.ok(
      ['transport close', 'transport error'].includes(await pollingGone),
      'polling client: dropped at the transport level',
    );
    await wsRetry;
    await pollingRetry;
    assert.deepEqual(wsErrors, []);
  });
});
