// Banter behind the shipped HAProxy config (deploy/haproxy.cfg): three real instances sharing a
// redis-server of the test's own, HAProxy in front, and the official socket.io-client connecting
// THROUGH HAProxy from different source addresses (127.0.0.N: Linux routes all of 127.0.0.0/8 to
// the loopback interface).
//
// The config makes clients sticky in two ways, and the test exercises both: a cookie (SERVERID)
// that HAProxy adds to a client's first response and follows afterwards, and, for requests
// without it, a hash of the source address (`balance source`). socket.io-client under Node keeps
// cookies only with `withCredentials: true` (its own cookie jar, like a browser's), so some
// clients here keep cookies and some do not.
//
// How the test knows which instance served whom. Banter has no instance-name setting, so the
// test asks HAProxy: its copy of the config adds one response header, `X-Upstream: <address>:<port>`
// of the instance that answered, and a stats socket through which the test reads what the health
// checks concluded (nothing else of the shipped config is changed, see rewriteHaproxyCfg()). Each
// client's http.Agent (WitnessAgent) records that header, the Cookie it sent and the Set-Cookie it
// got on every response the official client itself receives. As an independent witness from the
// other side, each instance's log must show the client's socket id in its "user joined" line, on
// the instance HAProxy named.
//
// Before connecting, the test probes source addresses with raw Engine.IO handshakes and groups
// them by the instance their address hashes to, so that every instance gets clients whatever the
// hash looks like. What is asserted does not depend on that choice: each client's requests all
// reach ONE instance (no "Session ID unknown"), a cookie-keeping client stays there even when its
// address changes, clients on different instances chat as one room, the origin check accepts the
// page's own origin through HAProxy, an instance killed or stopped behind HAProxy is marked down by
// the health check on /healthz, and its clients reconnect to another instance with their session.
//
// Needs HAProxy (/usr/sbin/haproxy, or BANTER_HAPROXY) and redis-server (on PATH, or
// BANTER_REDIS_SERVER); without them the suite is skipped with a loud notice, or fails under
// BANTER_REQUIRE_ALL=1.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import {
  ack,
  cleanup,
  collect,
  connect,
  joinOk,
  once,
  sendOk,
  sleep,
  stopAllServers,
  uniqueName,
  waitForUpgrade,
} from './harness.mjs';
import {
  SHIPPED_HAPROXY_CFG,
  WitnessAgent,
  findProgram,
  httpRequest,
  assertEveryoneHearsEveryone,
  assertJoinsLoggedWhereServed,
  describeWithSoftware,
  lastHandshake,
  openMover,
  pollingOpenClose,
  soleUpstream as soleUpstreamOf,
  startInstances,
  startHaproxy,
  startRedis,
  stopAllProcesses,
  waitUntil,
} from './cluster-harness.mjs';

const HAPROXY = findProgram('haproxy', ['/usr/sbin/haproxy'], process.env.BANTER_HAPROXY);
const REDIS_SERVER = findProgram('redis-server', [], process.env.BANTER_REDIS_SERVER);

// A short heartbeat, so that every long-poll completes (and a new one is made) each second: a few
// seconds of "staying connected" then put many requests of each polling client through HAProxy.
// BANTER_TRUSTED_PROXIES is what the config's comments ask of instances behind HAProxy.
const INSTANCE_ENV = {
  BANTER_PING_INTERVAL_MS: 1000,
  BANTER_PING_TIMEOUT_MS: 5000,
  BANTER_RECONNECT_GRACE_MS: 3000,
  BANTER_TRUSTED_PROXIES: '127.0.0.0/8',
};
// The instance killed near the end is taken for dead 1 s after its last heartbeat, so that its
// clients that do not come back are reported left soon.
const INSTANCE_TIMEOUTS_MS = [1000, 10_000, 10_000];
const PER_INSTANCE = 3; // clients of the default transports per instance
const PROBE_ADDRESSES = Array.from({ length: 60 }, (_, i) => `127.0.0.${i + 2}`); // .2 to .61
// Addresses each instance's group must hold: the default clients, a polling client, two movers
// for the kill and one for the stop (see the tests).
const GROUP_MIN = PER_INSTANCE + 4;
const MAX_PAYLOAD_BYTES = 1_000_000; // BANTER_MAX_PAYLOAD_BYTES's default
const BODY_LIMIT_BYTES = 1_048_576; // the shipped config's limit (1 MiB)
const HEALTH_TIMEOUT_MS = 15_000; // the config checks every 2 s and needs 2 results in a row

const missing = [
  !HAPROXY && 'haproxy is not installed (apt-get install haproxy); the HAProxy suite did not run',
  !REDIS_SERVER && 'redis-server is not installed (apt-get install redis-server); the HAProxy suite did not run',
].filter(Boolean);

/** The value of the SERVERID cookie in a Set-Cookie or Cookie header (string or list), or null. */
function serverIdIn(header) {
  const m = /(?:^|[;,\s])SERVERID=([^;,\s]+)/.exec([].concat(header ?? []).join('; '));
  return m ? m[1] : null;
}

/**
 * Sends only a request's head with `Content-Length: length` (no body) and resolves with the
 * status line and headers of the answer. HAProxy decides on the head alone, so a refusal needs no
 * megabyte on the wire.
 */
function headOnly(url, path, length) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: hostname, port: Number(port) });
    let data = '';
    sock.setEncoding('utf8');
    sock.setTimeout(5000, () => sock.destroy(new Error('no answer within 5 s')));
    sock.on('connect', () => {
      sock.write(
        `POST ${path} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nContent-Type: text/plain;charset=UTF-8\r\n` +
          `Content-Length: ${length}\r\n\r\n`,
      );
    });
    sock.on('data', (chunk) => {
      data += chunk;
      if (data.includes('\r\n\r\n')) {
        sock.destroy();
        resolve(data.slice(0, data.indexOf('\r\n\r\n')));
      }
    });
    sock.on('error', reject);
    sock.on('close', () => reject(new Error(`closed without a complete answer: ${JSON.stringify(data)}`)));
  });
}

describeWithSoftware({ title: 'Banter behind HAProxy (deploy/haproxy.cfg), three instances, one Redis', skipTitle: 'Banter behind HAProxy', needs: 'haproxy and redis-server', missing }, () => {
  let redis;
  let instances = []; // harness servers, with .log (their stderr, whole) and .upstream (host:port)
  let haproxy;
  const byUpstream = new Map(); // "127.0.0.1:port" -> instance
  const serverName = new Map(); // "127.0.0.1:port" -> HAProxy's name for it (banter1...)
  const cookieOf = new Map(); // "127.0.0.1:port" -> its SERVERID cookie value
  const groups = new Map(); // "127.0.0.1:port" -> the probed addresses that hash to it
  const clients = []; // {name, address, agent, socket, upstream, keepsCookies, disconnects}

  before(async () => {
    redis = await startRedis(REDIS_SERVER);
    instances = await startInstances(
      INSTANCE_TIMEOUTS_MS.map((timeout) => ({ ...INSTANCE_ENV, BANTER_INSTANCE_TIMEOUT_MS: timeout })),
      redis.url,
      byUpstream,
    );
    haproxy = await startHaproxy(HAPROXY, {
      upstreamPorts: instances.map((s) => Number(new URL(s.url).port)),
    });
    for (const line of await haproxy.stats()) {
      if (line.pxname === 'banter' && byUpstream.has(line.addr)) serverName.set(line.addr, line.svname);
    }
    assert.equal(serverName.size, 3, `HAProxy's stats name the three instances: ${JSON.stringify([...serverName])}`);
  });

  after(async () => {
    await cleanup();
    // Banter first, while Redis still answers: an instance stopped without Redis takes longer.
    await stopAllServers();
    await stopAllProcesses();
  });

  /** What HAProxy's health checks say of an instance: {status, check_status}. */
  async function health(upstream) {
    const line = await haproxy.server(serverName.get(upstream));
    return { status: line.status, check: line.check_status };
  }

  /** Where HAProxy sends `address` without a cookie: a raw polling handshake, then its close. */
  async function probe(address) {
    // The close carries no cookie: it reaches the session's instance only through the address hash.
    const { open, close } = await pollingOpenClose(haproxy.url, address);
    assert.equal(close.headers['x-upstream'], open.headers['x-upstream'], `${address} moved between requests`);
    return { upstream: open.headers['x-upstream'], cookie: serverIdIn(open.headers['set-cookie']) };
  }

  /**
   * A socket.io-client socket through HAProxy from `address`, sending the `Origin` a browser on
   * the page served through HAProxy would send; with `keepsCookies`, it keeps cookies as a
   * browser does. Every disconnect is recorded.
   */
  async function open(address, { keepsCookies, ...ioOptions }, label) {
    const agent = new WitnessAgent(address);
    const socket = await connect(haproxy.url, {
      label: `${label} from ${address}`,
      agent,
      withCredentials: keepsCookies,
      extraHeaders: { origin: haproxy.url },
      ...ioOptions,
    });
    const client = { name: uniqueName(label), address, agent, socket, keepsCookies, disconnects: [], upstream: null };
    socket.on('disconnect', (reason) => client.disconnects.push(reason));
    return client;
  }

  const soleUpstream = (client) => soleUpstreamOf(client, byUpstream);

  /** Fails unless every request of `client` was answered 200 (or 101, a WebSocket handshake). */
  function assertNoRefusal(client) {
    const bad = client.agent.responses.filter((r) => r.status !== 200 && r.status !== 101);
    assert.deepEqual(bad, [], `${client.name}: every request through HAProxy was accepted`);
  }

  it('the shipped config passes "haproxy -c", and HAProxy serves the page, /healthz and the client bundle', async () => {
    const check = spawnSync(HAPROXY, ['-c', '-f', SHIPPED_HAPROXY_CFG], { encoding: 'utf8' });
    assert.equal(check.status, 0, `haproxy -c -f deploy/haproxy.cfg:\n${check.stdout}\n${check.stderr}`);

    const page = await httpRequest(`${haproxy.url}/`);
    assert.equal(page.status, 200);
    assert.match(page.headers['content-type'], /text\/html/);
    const healthz = await httpRequest(`${haproxy.url}/healthz`);
    assert.deepEqual([healthz.status, JSON.parse(healthz.body)], [200, { status: 'ok' }]);
    const bundle = await httpRequest(`${haproxy.url}/socket.io/socket.io.min.js`);
    assert.equal(bundle.status, 200);
  });

  it("HAProxy's health checks on /healthz find the three instances up", async () => {
    // L7OK: the HTTP check got the status it expects (200); at start, a server is up before its
    // first check has run, so wait for every check to have passed.
    for (const upstream of byUpstream.keys()) {
      await waitUntil(`HAProxy's check of ${upstream} passes`, async () => {
        const h = await health(upstream);
        return h.status === 'UP' && h.check === 'L7OK';
      }, { timeoutMs: HEALTH_TIMEOUT_MS, details: () => JSON.stringify(serverName) });
    }
  });

  it("passes the browser's Host on, so that Banter's origin check accepts the page's own origin only", async () => {
    // A page loaded from HAProxy's address sends that as its Origin; Banter compares it with the
    // Host header it receives, which HAProxy must pass on unchanged, port included.
    const handshake = `${haproxy.url}/socket.io/?EIO=4&transport=polling`;
    const own = await httpRequest(handshake, { headers: { origin: haproxy.url } });
    assert.equal(own.status, 200, `same origin through HAProxy: ${own.status} ${own.body}`);
    const foreign = await httpRequest(handshake, { headers: { origin: 'http://elsewhere.example' } });
    assert.equal(foreign.status, 403, `foreign origin through HAProxy: ${foreign.status} ${foreign.body}`);
  });

  it('sends the instances the Host unchanged, exactly one X-Forwarded-For (the address HAProxy saw) and X-Forwarded-Proto', async () => {
    // Banter does not echo request headers, so a second HAProxy with the same config sits in
    // front of a small server that does (and answers the health check).
    const seen = [];
    const echo = http.createServer((req, res) => {
      if (req.url === '/healthz') {
        res.end('{"status":"ok"}');
        return;
      }
      seen.push(req.rawHeaders);
      res.end('ok');
    });
    await new Promise((resolve) => echo.listen(0, '127.0.0.1', resolve));
    const port = echo.address().port;
    const front = await startHaproxy(HAPROXY, { upstreamPorts: [port, port, port], label: 'haproxy (header echo)' });
    try {
      const host = new URL(front.url).host;
      const answer = await httpRequest(`${front.url}/socket.io/?EIO=4&transport=polling`, {
        localAddress: '127.0.0.91',
        headers: {
          // What a client may claim; HAProxy, as the edge, must not pass these on.
          'x-forwarded-for': '203.0.113.7',
          'x-forwarded-proto': 'https',
          cookie: 'SERVERID=b2; other=kept',
        },
      });
      assert.equal(answer.status, 200);
      assert.equal(seen.length, 1);
      const headers = [];
      for (let i = 0; i < seen[0].length; i += 2) headers.push([seen[0][i].toLowerCase(), seen[0][i + 1]]);
      const all = (name) => headers.filter(([n]) => n === name).map(([, v]) => v);
      assert.deepEqual(all('host'), [host], 'Host as the client sent it, port included');
      assert.deepEqual(all('x-forwarded-for'), ['127.0.0.91'], 'one X-Forwarded-For: the address HAProxy saw');
      assert.deepEqual(all('x-forwarded-proto'), ['http']);
      // `indirect`: the persistence cookie stays between the client and HAProxy.
      assert.deepEqual(all('cookie'), ['other=kept']);
    } finally {
      await front.stop();
      await new Promise((resolve) => echo.close(resolve));
    }
  });

  it("lets every packet that Banter accepts through, and refuses larger bodies itself", async () => {
    // A polling POST of exactly BANTER_MAX_PAYLOAD_BYTES: HAProxy passes it, the instance takes it.
    const address = '127.0.0.90';
    const hello = await httpRequest(`${haproxy.url}/socket.io/?EIO=4&transport=polling`, { localAddress: address });
    assert.equal(hello.status, 200);
    const { sid } = JSON.parse(hello.body.slice(1));
    const session = `${haproxy.url}/socket.io/?EIO=4&transport=polling&sid=${encodeURIComponent(sid)}`;
    const cookie = `SERVERID=${serverIdIn(hello.headers['set-cookie'])}`;
    const largest = await httpRequest(session, {
      method: 'POST',
      body: `4${'a'.repeat(MAX_PAYLOAD_BYTES - 1)}`, // an Engine.IO message packet of that size
      localAddress: address,
      headers: { 'content-type': 'text/plain;charset=UTF-8', cookie },
    });
    assert.deepEqual(
      [largest.status, largest.body, largest.headers['x-upstream']],
      [200, 'ok', hello.headers['x-upstream']],
      'a body of BANTER_MAX_PAYLOAD_BYTES reaches the session',
    );
    await httpRequest(session, { method: 'POST', body: '1', localAddress: address, headers: { cookie } });

    // Above the config's limit: HAProxy answers 413 itself, from the request's head alone.
    const refused = await headOnly(haproxy.url, '/socket.io/?EIO=4&transport=polling&sid=x', BODY_LIMIT_BYTES + 1);
    assert.match(refused, /^HTTP\/1\.1 413 /, refused);
    assert.doesNotMatch(refused, /x-upstream/i, 'no instance saw it');
  });

  it('hashes each cookie-less source address to one instance, the addresses over all three, and names the instance in a cookie', async () => {
    for (const u of byUpstream.keys()) groups.set(u, []);
    for (const address of PROBE_ADDRESSES) {
      const { upstream, cookie } = await probe(address);
      assert.ok(groups.has(upstream), `unknown X-Upstream ${upstream}`);
      groups.get(upstream).push(address);
      // Each handshake without a cookie gets one, naming the instance that answered.
      assert.ok(cookie, `a SERVERID cookie for ${address}`);
      if (!cookieOf.has(upstream)) cookieOf.set(upstream, cookie);
      assert.equal(cookie, cookieOf.get(upstream), `one cookie value per instance (${upstream})`);
    }
    assert.equal(new Set(cookieOf.values()).size, 3, `three distinct cookie values: ${JSON.stringify([...cookieOf])}`);
    // The same address again: the same instance (a hash, not chance).
    for (const [upstream, addresses] of groups) {
      for (const address of addresses.slice(0, PER_INSTANCE)) {
        assert.equal((await probe(address)).upstream, upstream, `${address} moved on its second handshake`);
      }
    }
    const sizes = [...groups.values()].map((a) => a.length);
    assert.ok(
      sizes.every((n) => n >= GROUP_MIN),
      `60 addresses over 3 instances gave ${JSON.stringify(sizes)}: the hash does not spread enough for this test`,
    );
  });

  it('clients of the default transports (polling, then the upgrade) each stay on one instance, with or without cookies, and joins are cluster-wide', async (t) => {
    assert.equal(groups.size, 3, 'the previous test grouped the addresses');
    // On each instance: two clients that keep cookies (as browsers do) and one that keeps none
    // (socket.io-client's default under Node), each from an address that hashes there.
    for (const [upstream, addresses] of groups) {
      for (const [i, address] of addresses.slice(0, PER_INSTANCE).entries()) {
        const c = await open(address, { keepsCookies: i < 2 }, i < 2 ? 'cookie' : 'nocookie');
        c.expected = upstream;
        await waitForUpgrade(c.socket);
        c.joined = collect(c.socket, 'user joined');
        c.messages = collect(c.socket, 'new message');
        clients.push(c);
      }
    }
    const names = [];
    for (const [i, c] of clients.entries()) {
      const login = await joinOk(c.socket, c.name);
      c.login = login;
      names.push(c.name);
      // Counted in Redis: the same whichever instance the joiner is on.
      assert.equal(login.numUsers, i + 1, `${c.name}'s login`);
      assert.deepEqual([...login.users].sort(), [...names].sort(), `${c.name}'s login lists everyone`);
    }
    // Everyone already there heard of each later joiner, with the cluster-wide count.
    // Not asserted here: Banter acks `add user` (the login) before it broadcasts `user joined`,
    // so a client that joins in between, on any instance, may also receive the announcement of
    // the person who joined just before it, although its own login already listed them (Banter
    // announces a join before it answers the joiner, which narrows that window but, across
    // instances, does not close it; docs/protocol.md). Such announcements are set apart and
    // shown as a diagnostic.
    const raced = [];
    for (const [i, c] of clients.entries()) {
      const expected = clients.slice(i + 1).map((later, k) => ({ username: later.name, numUsers: i + k + 2 }));
      const isEarlier = (d) => c.login.users.includes(d.username);
      await waitUntil(`${c.name} heard of the ${expected.length} later joiners`, () =>
        c.joined.filter((d) => !isEarlier(d)).length >= expected.length,
      { timeoutMs: 5000, details: () => JSON.stringify(c.joined) });
      const got = c.joined.filter((d) => !isEarlier(d)).slice(0, expected.length);
      // In order, each with (at least) the count right after that join.
      assert.deepEqual(got.map((d) => d.username), expected.map((e) => e.username), `user joined at ${c.name}`);
      for (const [k, d] of got.entries()) {
        assert.ok(d.numUsers >= expected[k].numUsers && d.numUsers <= clients.length, `count in ${JSON.stringify(d)}`);
      }
      for (const d of c.joined.filter(isEarlier)) raced.push(`${c.name} got ${JSON.stringify(d)} after its login`);
    }
    if (raced.length > 0) t.diagnostic(`user joined for an earlier joiner (server race): ${raced.join('; ')}`);

    for (const c of clients) {
      // The handshake, the polls and the WebSocket upgrade all reached one instance.
      c.upstream = soleUpstream(c);
      assert.equal(c.upstream, c.expected, `${c.name} from ${c.address} landed where its address hashes`);
      assertNoRefusal(c);
      assert.ok(c.agent.responses.some((r) => r.status === 101), `${c.name} upgraded through HAProxy`);
      assert.equal(c.socket.io.engine.transport.name, 'websocket');
      // After its first response, a cookie-keeping client sent the cookie naming its instance
      // with every request (the upgrade included); the other sent none and stayed by its address.
      const sent = c.agent.responses.slice(1).map((r) => serverIdIn(r.cookie));
      const want = c.keepsCookies ? cookieOf.get(c.upstream) : null;
      assert.deepEqual(sent, sent.map(() => want), `${c.name}: the SERVERID cookie it sent`);
    }
    assert.equal(new Set(clients.map((c) => c.upstream)).size, 3, 'every instance holds clients');

    // The other side's word: the instance HAProxy named logged this socket's join.
    await assertJoinsLoggedWhereServed(instances, clients);
  });

  it('every message reaches every other client, whichever instance each is on, in id order', async () => {
    assert.equal(clients.length, 3 * PER_INSTANCE);
    await assertEveryoneHearsEveryone(clients);
  });

  it('WebSocket-only clients work through HAProxy and chat with the others', async () => {
    assert.equal(clients.length, 3 * PER_INSTANCE);
    const wsClients = [];
    for (const address of ['127.0.0.100', '127.0.0.101', '127.0.0.102']) {
      const c = await open(address, { keepsCookies: false, transports: ['websocket'] }, 'ws');
      c.messages = collect(c.socket, 'new message');
      wsClients.push(c);
    }
    for (const c of wsClients) {
      const seen = clients.map((o) => once(o.socket, 'user joined', 5000, (d) => d.username === c.name));
      const login = await joinOk(c.socket, c.name);
      assert.equal(login.numUsers, clients.length + 1, `${c.name}'s login counts everyone`);
      for (const d of await Promise.all(seen)) assert.equal(d.numUsers, clients.length + 1);
      // One request, the WebSocket handshake, answered 101 by one instance.
      assert.deepEqual(c.agent.responses.map((r) => r.status), [101], `${c.name}: ${JSON.stringify(c.agent.responses)}`);
      c.upstream = soleUpstream(c);
      clients.push(c);
    }
    // Both ways: from a WebSocket-only client to everyone, and back.
    const text = `over websocket from ${wsClients[0].name}`;
    const arrivals = clients.filter((c) => c !== wsClients[0]).map((c) => once(c.socket, 'new message', 5000, (m) => m.message === text));
    await sendOk(wsClients[0].socket, text);
    for (const m of await Promise.all(arrivals)) assert.equal(m.username, wsClients[0].name);
    const back = `back from ${clients[0].name}`;
    const atWs = wsClients.map((c) => once(c.socket, 'new message', 5000, (m) => m.message === back));
    await sendOk(clients[0].socket, back);
    for (const m of await Promise.all(atWs)) assert.equal(m.username, clients[0].name);
  });

  it('a polling client that keeps cookies stays on its instance through many heartbeats, even when its address changes', async () => {
    const wsCount = clients.length;
    // One per instance, from an address of that instance's group; polling only, so that every
    // heartbeat is a new HTTP request through HAProxy.
    const pollers = [];
    for (const [upstream, addresses] of groups) {
      const c = await open(addresses[PER_INSTANCE], { keepsCookies: true, transports: ['polling'] }, 'poll');
      c.expected = upstream;
      await joinOk(c.socket, c.name);
      pollers.push(c);
    }
    const all = [...clients, ...pollers];
    const before = new Map(all.map((c) => [c, c.agent.responses.length]));
    // Heartbeats every second: each polling client completes and re-issues its long-poll.
    await sleep(2000);
    // The address changes to one that hashes to another instance (a phone moving from Wi-Fi to
    // mobile data): only the cookie can keep the client where its session is.
    const groupList = [...groups];
    const moved = new Map();
    for (const c of pollers) {
      const elsewhere = groupList.find(([u]) => u !== c.expected)[1].at(-1);
      c.agent.moveTo(elsewhere);
      moved.set(c, { address: elsewhere, from: c.agent.responses.length });
    }
    await sleep(3000);

    for (const c of all) {
      assert.deepEqual(c.disconnects, [], `${c.name} (${c.address}) was disconnected`);
      assert.ok(c.socket.connected, `${c.name} is connected`);
      assertNoRefusal(c);
      assert.equal(soleUpstream(c), c.upstream ?? c.expected, `${c.name} stayed on its instance`);
    }
    for (const c of pollers) {
      c.upstream = c.expected;
      const more = c.agent.responses.length - before.get(c);
      assert.ok(more >= 6, `${c.name} made ${more} requests in 5 s (expected a poll and a pong each second)`);
      const { address, from } = moved.get(c);
      const after = c.agent.responses.slice(from).filter((r) => r.local === address);
      assert.ok(after.length >= 3, `${c.name} made ${after.length} requests from its new address ${address}`);
      for (const r of after) {
        assert.equal(serverIdIn(r.cookie), cookieOf.get(c.upstream), `${c.name} sent its cookie from ${address}`);
        assert.equal(r.upstream, c.upstream, `${c.name}'s request from ${address} reached its instance`);
      }
    }
    clients.push(...pollers);
    const users = await ack(clients[0].socket, 'list users');
    assert.equal(users.numUsers, clients.length, `list users: ${JSON.stringify(users)}`);
    assert.equal(clients.length, wsCount + 3);
  });

  // The last two stop instances: first one is killed, then another is stopped with SIGTERM.
  it('when an instance is killed, the health check marks it down and its clients resume on another instance with their session', async () => {
    const doomed = instances[0];
    const watcher = clients.find((c) => c.upstream !== doomed.upstream);
    // Clients that reconnect as the chat page does, keeping cookies as a browser does.
    const movers = [];
    for (const address of groups.get(doomed.upstream).slice(PER_INSTANCE + 1, PER_INSTANCE + 3)) {
      movers.push(await openMover(haproxy.url, address, { withCredentials: true }));
    }
    for (const m of movers) assert.deepEqual(m.agent.upstreams(), [doomed.upstream], `${m.name} starts on the doomed instance`);
    const { id: lastSeen } = await sendOk(watcher.socket, 'before the kill');
    await waitUntil('the movers saw the last message', () => movers.every((m) => m.lastId === lastSeen));

    const lost = clients.filter((c) => c.upstream === doomed.upstream); // they do not reconnect
    assert.ok(lost.length >= PER_INSTANCE + 1, `clients on the doomed instance: ${lost.length}`);
    const left = collect(watcher.socket, 'user left');
    const joinedAgain = collect(watcher.socket, 'user joined');
    const reconnected = movers.map((m) => once(m.socket, 'connect', 15_000));
    const handshakesBefore = movers.map((m) => lastHandshake(m));
    doomed.proc.kill('SIGKILL');

    // Sent while the movers are between instances.
    const missed = [];
    for (const text of ['while moving 1', 'while moving 2']) missed.push((await sendOk(watcher.socket, text)).id);

    // HAProxy's active check, not a failed request, marks it down: connection refused (L4CON).
    await waitUntil(
      `HAProxy marks the killed instance ${doomed.upstream} down`,
      async () => {
        const h = await health(doomed.upstream);
        return h.status === 'DOWN' && h.check === 'L4CON';
      },
      { timeoutMs: HEALTH_TIMEOUT_MS, details: () => haproxy.output().slice(-2000) },
    );

    // A browser keeps its cookie across reconnections, so its new handshake names the dead
    // instance: HAProxy sends it to another one (redispatch) and replaces the cookie.
    const stale = await httpRequest(`${haproxy.url}/socket.io/?EIO=4&transport=polling`, {
      localAddress: movers[0].address,
      headers: { cookie: `SERVERID=${cookieOf.get(doomed.upstream)}`, origin: haproxy.url },
      timeoutMs: 10_000,
    });
    assert.equal(stale.status, 200, `a handshake with the dead instance's cookie: ${stale.status} ${stale.body}`);
    assert.ok(stale.headers['x-upstream'] !== doomed.upstream && byUpstream.has(stale.headers['x-upstream']));
    assert.equal(serverIdIn(stale.headers['set-cookie']), cookieOf.get(stale.headers['x-upstream']), 'the cookie is replaced');

    // socket.io-client under Node keeps its cookies per Engine.IO connection, so the movers'
    // new handshakes carry none: HAProxy places them by address, away from the dead instance,
    // and they keep the new instance's cookie from then on.
    await Promise.all(reconnected);
    for (const [i, m] of movers.entries()) {
      const login = await joinOk(m.socket, { username: m.name, lastId: m.lastId });
      assert.equal(login.username, m.name, `${m.name} keeps its nickname`);
      assert.deepEqual(login.history.map((h) => h.id), missed, `${m.name} gets exactly what it missed`);
      assert.equal(login.historyComplete, true);
      const handshake = lastHandshake(m);
      assert.notEqual(handshake, handshakesBefore[i], `${m.name} made a new handshake`);
      assert.ok(handshake.upstream !== doomed.upstream && byUpstream.has(handshake.upstream), `${m.name} reconnected through ${handshake.upstream}`);
      assert.equal(serverIdIn(handshake.setCookie), cookieOf.get(handshake.upstream), `${m.name} got the new instance's cookie`);
      // Its requests since then all reached that instance, with that cookie.
      const since = m.agent.responses.slice(m.agent.responses.indexOf(handshake));
      assert.deepEqual([...new Set(since.map((r) => r.upstream))], [handshake.upstream], `${m.name} stays there`);
      for (const r of since.slice(1)) assert.equal(serverIdIn(r.cookie), cookieOf.get(handshake.upstream));
      assertNoRefusal({ name: m.name, agent: { responses: since } });
    }

    // The ones that did not come back are reported left once the instance timeout (1 s after
    // its last heartbeat) and the grace period (3 s) are over; the movers never are.
    const gone = await left.until(lost.length, 15_000);
    assert.deepEqual(
      gone.map((g) => g.username).sort(),
      lost.map((c) => c.name).sort(),
      'exactly the clients of the killed instance that did not reconnect',
    );
    await sleep(300);
    assert.equal(left.length, lost.length, `no more user left: ${JSON.stringify(left)}`);
    assert.deepEqual(joinedAgain, [], 'a resumed person is not announced again');
    const list = await ack(watcher.socket, 'list users');
    assert.equal(list.numUsers, clients.length - lost.length + movers.length);
    for (const m of movers) assert.ok(list.users.includes(m.name), `${m.name} is listed`);

    // And they chat on: a mover's message reaches the watcher.
    const text = `still here, ${movers[0].name}`;
    const arrival = once(watcher.socket, 'new message', 5000, (msg) => msg.message === text);
    await sendOk(movers[0].socket, text);
    assert.equal((await arrival).username, movers[0].name);
    // They leave on purpose, so that the next test starts from known people.
    for (const m of movers) m.socket.disconnect();
    await left.until(lost.length + movers.length, 5000);
    instances.splice(0, 1);
    for (const c of lost) clients.splice(clients.indexOf(c), 1);
  });

  it('when an instance is stopped with SIGTERM, the health check marks it down, its clients move, and its cookie is redispatched at once', async () => {
    assert.equal(instances.length, 2, 'the previous test killed one instance');
    const [stopping, last] = instances;
    const mover = await openMover(haproxy.url, groups.get(stopping.upstream)[PER_INSTANCE + 3], { withCredentials: true });
    assert.deepEqual(mover.agent.upstreams(), [stopping.upstream]);
    const reconnected = once(mover.socket, 'connect', 15_000);

    const exit = await stopping.stop();
    assert.deepEqual(exit, { code: 0, signal: null }, 'SIGTERM: a clean exit');
    await reconnected;
    const login = await joinOk(mover.socket, { username: mover.name, lastId: mover.lastId });
    assert.equal(login.username, mover.name, 'the mover keeps its nickname');
    assert.equal(lastHandshake(mover).upstream, last.upstream, 'HAProxy sent the mover to the instance left');

    await waitUntil(
      `HAProxy marks the stopped instance ${stopping.upstream} down`,
      async () => {
        const h = await health(stopping.upstream);
        return h.status === 'DOWN' && h.check === 'L4CON';
      },
      { timeoutMs: HEALTH_TIMEOUT_MS, details: () => haproxy.output().slice(-2000) },
    );
    assert.deepEqual(await health(last.upstream), { status: 'UP', check: 'L7OK' }, 'the instance left stays up');

    // Marked down, the stopped instance is skipped at once: a browser that still carries its
    // cookie, and a cookie-less client whose address hashed to it, both reach the instance left.
    const stale = await httpRequest(`${haproxy.url}/socket.io/?EIO=4&transport=polling`, {
      headers: { cookie: `SERVERID=${cookieOf.get(stopping.upstream)}`, origin: haproxy.url },
    });
    assert.deepEqual([stale.status, stale.headers['x-upstream']], [200, last.upstream], 'a stale cookie is redispatched');
    assert.equal(serverIdIn(stale.headers['set-cookie']), cookieOf.get(last.upstream), 'and replaced');
    const hashed = await httpRequest(`${haproxy.url}/socket.io/?EIO=4&transport=polling`, {
      localAddress: groups.get(stopping.upstream)[0],
    });
    assert.deepEqual([hashed.status, hashed.headers['x-upstream']], [200, last.upstream], 'its addresses hash elsewhere');
  });
});
