// A rolling restart under steady chat load: three Banter instances share a redis-server of the
// test's own, nginx runs in front with the shipped deploy/nginx.conf, and 18 official
// socket.io-client clients chat through it while each instance in turn is stopped with SIGTERM
// and replaced by a new process on the same port.
//
// Why nginx rather than clients that know all three URLs: a rolling restart is an operator's
// procedure, and what moves a client to another instance in production is the load balancer, not
// the client. With nginx the clients are exactly the chat page's (one URL, the library's normal
// reconnection), and the test also covers what nginx does during a restart: it skips the stopped
// instance's port (`max_fails=1`), and sends its share of addresses back to the replacement once
// `fail_timeout` has passed, which moves the polling-only clients a second time (their old
// sessions are then taken over with their session token, the `replaced` path). Clients connect
// from different source addresses (127.0.0.0/8 all reaches the loopback interface), probed
// first so that every instance holds six of them, whatever the hash ring looks like this run.
// The instances get BANTER_TRUSTED_PROXIES=127.0.0.0/8, so that behind nginx each client counts
// under its own address for the per-address connection limits, as it would in production.
//
// Each client behaves like the chat page (web/app.js): it sends `add user` on every `connect`, with
// `{username, lastId}` after the first login, presents its session token in the handshake `auth`,
// holds the `new message` events that arrive before its login and shows them after the login's
// `history`, drops a copy by id, and notes the highest id it has received (its own acked messages
// count as shown, but not towards lastId, as in the page's markSent). Four in six use the client's default transports
// (polling, then the upgrade to WebSocket), two are polling only. Two clients per instance send a
// message every SEND_EVERY_MS with an ack, and record every acked id.
//
// Each restart: SIGTERM; the instance must exit 0 within BANTER_SHUTDOWN_TIMEOUT_MS plus a margin;
// every client is back in the chat, those of the stopped instance on the other two (the port is
// closed until the replacement starts, so "another instance" is not left to chance); then the
// replacement starts on the same port (same settings) and answers /readyz; the load runs on until
// nginx has taken the port back (its fail_timeout), every client is in the chat again, and a
// little longer. Then the next instance.
//
// What is asserted at the end, for every client (none leaves):
// - every message another client sent and got an ack for was shown exactly once, live or through
//   the `history` of a rejoin with `lastId`, with the text and sender that were acked;
// - no message arrived twice, except the one copy the contract allows: a message that a
//   rejoining socket's login `history` holds and that also reaches that socket live, because
//   the socket was subscribed before the history was read (ARCHITECTURE.md, "a message in that
//   window may arrive twice (the page drops the copy by id)"). Those copies are counted and
//   reported, not hidden; any other second arrival (a live copy of something an earlier
//   connection already had, a history reaching below `lastId`, two live copies) fails the test;
// - each connection received the live messages in id order;
// - every rejoin kept the nickname and said `historyComplete: true` (BANTER_HISTORY_LEN is far
//   above what the run sends, so `lastId` always reaches back);
// - nobody was announced as left or joined during the restarts, and every client's participant
//   count converges to the number of clients (`list users` agrees);
// - the stopped instances logged the graceful path (SIGTERM received, sockets closed, Redis told,
//   stopped), and no instance logged a panic, an error or a dropped packet.
// Messages that were never acked may or may not arrive, but never twice.
//
// Needs nginx (/usr/sbin/nginx, or BANTER_NGINX) and redis-server (on PATH, or
// BANTER_REDIS_SERVER); without them the suite is skipped with a loud notice, or fails under
// BANTER_REQUIRE_ALL=1.

import { existsSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import { BANTER_BIN, ack, cleanup, repoRoot, sleep, track } from './harness.mjs';
import {
  WitnessAgent,
  answeredBy,
  findProgram,
  freePort,
  httpRequest,
  describeWithSoftware,
  pollingOpenClose,
  spawnTracked,
  startNginx,
  startRedis,
  stopAllProcesses,
  waitUntil,
} from './cluster-harness.mjs';

const NGINX = findProgram('nginx', ['/usr/sbin/nginx'], process.env.BANTER_NGINX);
const REDIS_SERVER = findProgram('redis-server', [], process.env.BANTER_REDIS_SERVER);

// The drain bound under test, and the margin allowed on top of it for a debug build on a busy
// machine (the process must also start its exit and be reaped).
const SHUTDOWN_TIMEOUT_MS = 5000;
const EXIT_MARGIN_MS = 3000;
// Far above what a run sends (about 75 messages a second for under a minute), so that a rejoin's
// `lastId` is always within the history: any `historyComplete: false` is then a fault.
const HISTORY_LEN = 20_000;
const INSTANCE_ENV = {
  BANTER_HISTORY_LEN: HISTORY_LEN,
  // A sender posts every SEND_EVERY_MS (12.5 a second); the default limit is 5 a second.
  BANTER_MESSAGE_RATE: 40,
  BANTER_MESSAGE_BURST: 40,
  BANTER_SHUTDOWN_TIMEOUT_MS: SHUTDOWN_TIMEOUT_MS,
  // The default, written out: every client must come back well within it, so that nobody is
  // announced as left.
  BANTER_RECONNECT_GRACE_MS: 10_000,
  // nginx is the TCP peer of every request: believe its X-Forwarded-For (see the header).
  BANTER_TRUSTED_PROXIES: '127.0.0.0/8',
};
const CLIENTS_PER_INSTANCE = 6;
const POLLING_FROM = 4; // in each instance's group of six, clients 4 and 5 are polling only
const SENDER_INDEXES = [0, POLLING_FROM]; // one default-transport and one polling sender per group
const SEND_EVERY_MS = 80;
const ACK_TIMEOUT_MS = 10_000; // the page's
const SOAK_MS = 1500; // load after each restart has settled, before the next one
const PROBE_ADDRESSES = Array.from({ length: 120 }, (_, i) => `127.0.1.${i + 1}`);
// Shutdown log lines (src/ops/shutdown.rs, src/server.rs), in the order they must appear.
const GRACEFUL_LINES = ['received SIGTERM', 'shutting down: no new connections; closing sockets', 'stopped'];
const NOT_GRACEFUL = [
  'could not tell Redis that this instance is leaving',
  'connections still open after the shutdown timeout; exiting anyway',
];

const missing = [
  !NGINX && 'nginx is not installed (apt-get install nginx); the rolling-restart suite did not run',
  !REDIS_SERVER && 'redis-server is not installed (apt-get install redis-server); the rolling-restart suite did not run',
].filter(Boolean);

describeWithSoftware({ title: 'rolling restart: three instances behind nginx, each restarted with SIGTERM under chat load', skipTitle: 'rolling restart behind nginx', needs: 'nginx and redis-server', missing }, () => {
  let redis;
  let nginx;
  let failTimeoutMs;
  const instances = []; // the current process on each port (replacements take their place)
  const retired = []; // stopped instances, with their whole logs
  const clients = [];
  const restarts = []; // what each restart did, for the report
  let steady = false; // set once everyone has joined: presence events after it are faults
  let sending = false;
  let senderLoops = [];

  /**
   * Starts Banter on `port` (the harness's startServer always picks a free port; a replacement
   * must take over its predecessor's). Resolves once /readyz answers 200, that is once it is
   * listening and has reached Redis. The whole log is kept for the graceful-path checks.
   */
  async function startInstance(port, label) {
    const env = {
      ...process.env,
      NO_COLOR: '1',
      ...Object.fromEntries(Object.entries(INSTANCE_ENV).map(([k, v]) => [k, String(v)])),
      BANTER_REDIS_URL: redis.url,
      HOST: '127.0.0.1',
      PORT: String(port),
    };
    const p = spawnTracked(label, BANTER_BIN, [], { cwd: repoRoot, env });
    const inst = { label, port, url: `http://127.0.0.1:${port}`, upstream: `127.0.0.1:${port}`, p, log: '' };
    p.proc.stdout.on('data', (chunk) => {
      inst.log += chunk;
    });
    p.proc.stderr.on('data', (chunk) => {
      inst.log += chunk;
    });
    await waitUntil(`${label} on port ${port} says ready`, async () => (await httpRequest(`${inst.url}/readyz`)).status === 200, {
      timeoutMs: 20_000,
      details: () => `--- ${label} log ---\n${inst.log.slice(-4000)}`,
      giveUp: () => (p.running ? null : `${label} exited`),
    });
    return inst;
  }

  /** Where nginx sends `address`: a raw polling handshake from it, then its close ("1"). */
  async function probe(address) {
    const { open } = await pollingOpenClose(nginx.url, address, { origin: nginx.url });
    return answeredBy(open);
  }

  // -----------------------------------------------------------------------------------------
  // A client that behaves like the chat page (web/app.js).

  function openClient({ name, address, home, polling, sender }) {
    const c = {
      name,
      address,
      home, // the instance its address hashes to
      polling,
      sender,
      username: name,
      session: null,
      agent: new WitnessAgent(address),
      conn: 0, // connections so far; each `connect` starts a new one
      connUpstream: null, // the instance that answered this connection's handshake
      joined: false, // this connection has its login
      joinedOnce: false,
      pendingJoin: null, // {conn, lastId, lastIdFromOwnAck} of the `add user` in flight
      lastId: 0,
      lastIdFromOwnAck: false, // whether lastId was last raised by an own ack (diagnostics)
      early: [],
      historyIds: new Set(), // the current connection's login history
      lastLiveId: 0, // per connection, for the order check
      shown: new Map(), // id -> {username, message, via, conn}: what the page shows, once each
      windowCopies: [], // the allowed second copies (see the header and receive())
      duplicates: [], // every other second arrival
      outOfOrder: [],
      malformed: [], // `new message` events without a numeric id
      logins: [], // {conn, at, lastIdSent, lastIdFromOwnAck, historyIds, complete, username, renamedFrom, numUsers}
      joinFailures: [],
      errorMessages: [],
      disconnects: [], // {at, reason, conn, responsesBefore}
      presence: [], // user joined / user left after `steady`
      numUsers: null,
      acked: [], // {id, text, at}
      refused: [],
      unacked: [],
      pending: 0,
    };
    const options = {
      forceNew: true,
      agent: c.agent,
      // The Origin a browser on the page served through nginx sends.
      extraHeaders: { origin: nginx.url },
      // As the page: a function, so that each reconnect presents the newest session token.
      auth: (cb) => cb(c.session ? { session: c.session } : {}),
      tryAllTransports: true,
    };
    if (polling) options.transports = ['polling'];
    c.socket = track(io(nginx.url, options), name);

    c.socket.on('connect', () => {
      c.conn += 1;
      // The handshake that opened this connection has been answered by now.
      c.connUpstream = handshakes(c).at(-1) ?? null;
      c.early = [];
      c.historyIds = new Set();
      c.lastLiveId = 0;
      join(c);
    });
    c.socket.on('disconnect', (reason) => {
      c.joined = false;
      c.disconnects.push({ at: Date.now(), reason, conn: c.conn, responsesBefore: c.agent.responses.length });
    });
    c.socket.on('login', (data) => applyLogin(c, data));
    c.socket.on('new message', (msg) => {
      if (typeof msg?.id !== 'number') {
        c.malformed.push(msg);
        return;
      }
      // Live messages of one connection come in id order, those held back for the login too.
      if (msg.id <= c.lastLiveId) c.outOfOrder.push({ conn: c.conn, id: msg.id, after: c.lastLiveId });
      c.lastLiveId = Math.max(c.lastLiveId, msg.id);
      if (!c.joined) c.early.push(msg);
      else receive(c, msg, 'live');
    });
    for (const event of ['user joined', 'user left']) {
      c.socket.on(event, (data) => {
        if (Number.isFinite(data?.numUsers)) c.numUsers = data.numUsers;
        if (steady) c.presence.push({ event, ...data, at: Date.now() });
      });
    }
    c.socket.on('error message', (err) => {
      c.errorMessages.push({ ...err, at: Date.now() });
      // As the page: another tab took the session over, so stop competing for it.
      if (err?.code === 'replaced') c.socket.disconnect();
    });
    return c;
  }

  function join(c) {
    const socket = c.socket;
    const conn = c.conn;
    const payload = { username: c.username };
    if (c.joinedOnce && c.lastId > 0) payload.lastId = c.lastId;
    c.pendingJoin = { conn, lastId: payload.lastId ?? null, lastIdFromOwnAck: c.lastIdFromOwnAck };
    socket.timeout(ACK_TIMEOUT_MS).emit('add user', payload, (err, res) => {
      if (conn !== c.conn) return; // an answer for an older connection
      if (err) {
        if (socket.connected) c.joinFailures.push({ conn, at: Date.now(), error: err.message });
      } else if (res?.error) c.joinFailures.push({ conn, at: Date.now(), error: res.error });
      else applyLogin(c, res);
    });
  }

  // The `login` event and the `add user` ack carry the same payload; the first one wins.
  function applyLogin(c, data) {
    if (c.joined || typeof data?.username !== 'string') return;
    c.joined = true;
    c.joinedOnce = true;
    if (typeof data.session === 'string') c.session = data.session;
    c.username = data.username;
    if (Number.isFinite(data.numUsers)) c.numUsers = data.numUsers;
    const history = Array.isArray(data.history) ? data.history : [];
    c.historyIds = new Set(history.map((m) => m.id));
    c.logins.push({
      conn: c.conn,
      at: Date.now(),
      lastIdSent: c.pendingJoin?.lastId ?? null,
      lastIdFromOwnAck: c.pendingJoin?.lastIdFromOwnAck ?? false,
      historyIds: history.map((m) => m.id),
      complete: data.historyComplete,
      username: data.username,
      renamedFrom: data.renamedFrom,
      numUsers: data.numUsers,
    });
    for (const msg of history) receive(c, msg, 'history');
    const early = c.early;
    c.early = [];
    for (const msg of early) receive(c, msg, 'early');
  }

  function noteId(c, id, ownAck) {
    if (typeof id === 'number' && id > c.lastId) {
      c.lastId = id;
      c.lastIdFromOwnAck = ownAck;
    }
  }

  function receive(c, msg, via) {
    const seen = c.shown.get(msg.id);
    if (seen?.via === 'own') return; // its own message, back in a history: dropped by id
    if (seen) {
      const record = { id: msg.id, via, conn: c.conn, first: { via: seen.via, conn: seen.conn } };
      // The allowed copy: this connection's login history holds it, and it also came live on
      // this connection, because the instance delivered it after subscribing the socket (before
      // the login, or after it when the instance's delivery ran behind the history read).
      if (via !== 'history' && c.historyIds.has(msg.id)) c.windowCopies.push(record);
      else c.duplicates.push(record);
      return;
    }
    noteId(c, msg.id, false);
    c.shown.set(msg.id, { username: msg.username, message: msg.message, via, conn: c.conn });
  }

  /** Posts like the page: only while joined, with an ack, without waiting for the ack. */
  async function sendLoop(c) {
    let seq = 0;
    while (sending) {
      if (c.joined && c.socket.connected) {
        seq += 1;
        const text = `${c.name} #${seq}`;
        c.pending += 1;
        c.socket.timeout(ACK_TIMEOUT_MS).emit('new message', text, (err, res) => {
          c.pending -= 1;
          if (err) c.unacked.push({ text, why: err.message });
          else if (res?.error) c.refused.push({ text, error: res.error });
          else if (typeof res?.id === 'number') {
            c.acked.push({ id: res.id, text, at: Date.now() });
            // The page's markSent: the id counts as shown (a copy in a later history is
            // dropped) but does not raise lastId; the ack can overtake earlier messages of
            // others still on their way to this client.
            c.shown.set(res.id, { username: c.name, message: text, via: 'own', conn: c.conn });
          } else c.unacked.push({ text, why: `unexpected ack ${JSON.stringify(res)}` });
        });
      }
      await sleep(SEND_EVERY_MS);
    }
  }

  const allJoined = () => clients.every((c) => c.joined && c.socket.connected);
  const describeClients = () =>
    clients
      .map(
        (c) =>
          `${c.name}: joined=${c.joined} connected=${c.socket.connected} conn=${c.conn} via=${JSON.stringify(handshakes(c))} ` +
          `disconnects=${JSON.stringify(c.disconnects.map((d) => d.reason))} joinFailures=${JSON.stringify(c.joinFailures)} ` +
          `errors=${JSON.stringify(c.errorMessages)}`,
      )
      .join('\n');

  /** The instance that answered each of a client's Engine.IO handshakes (requests without sid). */
  function handshakes(c, from = 0) {
    return c.agent.responses
      .slice(from)
      .filter((r) => (r.status === 200 || r.status === 101) && !/[?&]sid=/.test(r.path))
      .map((r) => r.upstream);
  }

  // -----------------------------------------------------------------------------------------

  before(async () => {
    if (!existsSync(BANTER_BIN)) {
      throw new Error(`Banter binary not found at ${BANTER_BIN} (run "cargo build" or set BANTER_BIN)`);
    }
    redis = await startRedis(REDIS_SERVER);
    const ports = [];
    while (ports.length < 3) {
      const port = await freePort();
      if (!ports.includes(port)) ports.push(port);
    }
    instances.push(...(await Promise.all(ports.map((port, i) => startInstance(port, `instance ${i + 1}`)))));
    nginx = await startNginx(NGINX, { upstreamPorts: ports });
    // How long nginx skips a port after a failed request: it then tries it again, which is
    // when a replacement gets its share of addresses back.
    const m = /fail_timeout=(\d+)s/.exec(nginx.conf);
    assert.ok(m, 'deploy/nginx.conf sets fail_timeout on its servers');
    failTimeoutMs = Number(m[1]) * 1000;
  });

  after(async () => {
    sending = false;
    await Promise.all(senderLoops);
    await cleanup();
    // Banter first, while Redis still answers: an instance stopped without Redis takes longer.
    await Promise.all(instances.map((inst) => inst.p.stop()));
    await stopAllProcesses();
  });

  it('spreads 18 clients over the three instances through nginx, all in one chat', async () => {
    const groups = new Map(instances.map((inst) => [inst.upstream, []]));
    for (const address of PROBE_ADDRESSES) {
      if ([...groups.values()].every((g) => g.length >= CLIENTS_PER_INSTANCE)) break;
      const upstream = await probe(address);
      assert.ok(groups.has(upstream), `unknown X-Upstream ${upstream}`);
      if (groups.get(upstream).length < CLIENTS_PER_INSTANCE) groups.get(upstream).push(address);
    }
    assert.ok(
      [...groups.values()].every((g) => g.length === CLIENTS_PER_INSTANCE),
      `${PROBE_ADDRESSES.length} addresses did not give ${CLIENTS_PER_INSTANCE} per instance: ` +
        JSON.stringify([...groups.values()].map((g) => g.length)),
    );

    // One at a time, as people arrive: each waits for its login.
    for (const [i, inst] of instances.entries()) {
      for (const [k, address] of groups.get(inst.upstream).entries()) {
        const c = openClient({
          name: `r${i + 1}-${k}${k >= POLLING_FROM ? 'p' : ''}`,
          address,
          home: inst.upstream,
          polling: k >= POLLING_FROM,
          sender: SENDER_INDEXES.includes(k),
        });
        clients.push(c);
        await waitUntil(`${c.name} joins`, () => c.joined, { details: describeClients });
      }
    }
    const n = clients.length;
    for (const c of clients) {
      assert.equal(c.username, c.name, `${c.name} got its own nickname`);
      assert.deepEqual(handshakes(c), [c.home], `${c.name} from ${c.address} reached the instance its address hashes to`);
    }
    await waitUntil('every client counts everyone', () => clients.every((c) => c.numUsers === n), {
      details: () => JSON.stringify(clients.map((c) => [c.name, c.numUsers])),
    });
    steady = true;
  });

  it('restarts each instance in turn under steady chat load: each exits 0 within the drain bound, and every client comes back', { timeout: 150_000 }, async (t) => {
    assert.equal(clients.length, 3 * CLIENTS_PER_INSTANCE, 'the previous test opened the clients');
    sending = true;
    senderLoops = clients.filter((c) => c.sender).map((c) => sendLoop(c));
    await sleep(SOAK_MS);

    for (const [i, old] of [...instances].entries()) {
      const siblings = instances.filter((inst) => inst !== old).map((inst) => inst.upstream);
      // Its clients: those whose current connection it answered.
      await waitUntil(`every client is in the chat before ${old.label} stops`, allJoined, {
        timeoutMs: 20_000,
        details: describeClients,
      });
      const held = clients.filter((c) => c.connUpstream === old.upstream);
      assert.ok(held.length > 0, `${old.label} holds clients when it is stopped`);
      const stopAt = Date.now();
      old.p.proc.kill('SIGTERM');
      const bound = SHUTDOWN_TIMEOUT_MS + EXIT_MARGIN_MS;
      const exit = await Promise.race([old.p.exited, sleep(bound).then(() => null)]);
      const exitMs = Date.now() - stopAt;
      if (!exit) old.p.proc.kill('SIGKILL');
      assert.ok(exit, `${old.label} did not exit within ${bound} ms of SIGTERM\n--- log ---\n${old.log.slice(-4000)}`);
      assert.deepEqual(exit, { code: 0, signal: null }, `${old.label} exits 0 on SIGTERM\n--- log ---\n${old.log.slice(-4000)}`);
      retired.push(old);

      // Its clients are disconnected and reconnect, onto the two others since its port stays
      // closed until the replacement starts.
      await waitUntil(`the clients of ${old.label} see the disconnect`, () => held.every((c) => c.disconnects.some((d) => d.at >= stopAt)), {
        timeoutMs: 10_000,
        details: () =>
          `${old.label} (${old.upstream}) exited ${JSON.stringify(exit)} ${exitMs} ms after SIGTERM; ` +
          `still connected: ${held.filter((c) => !c.disconnects.some((d) => d.at >= stopAt)).map((c) => `${c.name} (${c.socket.io.engine?.transport?.name})`).join(', ')}\n` +
          `${describeClients()}\n--- ${old.label} log ---\n${old.log.slice(-6000)}`,
      });
      await waitUntil(`every client is back in the chat after ${old.label} stopped`, allJoined, {
        timeoutMs: 20_000,
        details: describeClients,
      });
      for (const c of held) {
        const d = c.disconnects.find((x) => x.at >= stopAt);
        // A Socket.IO disconnect would tell the client not to reconnect: shutdown must close
        // the transport instead.
        assert.notEqual(d.reason, 'io server disconnect', `${c.name} was told not to reconnect`);
        const landed = handshakes(c, d.responsesBefore)[0];
        assert.ok(siblings.includes(landed), `${c.name} reconnected through ${landed}, not one of ${siblings}`);
      }

      const replacement = await startInstance(old.port, `instance ${i + 1} (replacement)`);
      instances[instances.indexOf(old)] = replacement;
      // nginx tries the port again once fail_timeout has passed since its last failure there
      // (which is before the replacement was ready); by then the polling clients whose address
      // hashes to it move back.
      await sleep(failTimeoutMs + 1000);
      await waitUntil(`every client is in the chat after ${replacement.label} started`, allJoined, {
        timeoutMs: 20_000,
        details: describeClients,
      });
      await sleep(SOAK_MS);
      const onReplacement = clients.filter((c) => c.connUpstream === old.upstream).length;
      restarts.push({ label: old.label, exitMs, moved: held.length, onReplacement });
      t.diagnostic(
        `${old.label}: exited 0 after ${exitMs} ms; its ${held.length} clients moved to the others; ` +
          `${onReplacement} moved back to the replacement`,
      );
    }
  });

  it('every acked message reached every other client exactly once, live or through lastId history, in order', async (t) => {
    assert.equal(restarts.length, 3, 'the previous test restarted the three instances');
    sending = false;
    await Promise.all(senderLoops);
    const senders = clients.filter((c) => c.sender);
    await waitUntil('every send has its answer', () => senders.every((c) => c.pending === 0), {
      timeoutMs: ACK_TIMEOUT_MS + 5000,
    });
    const acked = new Map(); // id -> {sender, text, at}
    for (const s of senders) {
      for (const a of s.acked) {
        assert.ok(!acked.has(a.id), `id ${a.id} acked twice (to ${acked.get(a.id)?.sender} and ${s.name})`);
        acked.set(a.id, { sender: s.name, text: a.text, at: a.at });
      }
    }
    const expectedBy = (c) => [...acked].filter(([, a]) => a.sender !== c.name).map(([id]) => id);
    // Delivery settles: wait until nothing is missing (or give up and report what is).
    await waitUntil('every client has every acked message', () => clients.every((c) => expectedBy(c).every((id) => c.shown.has(id))), {
      timeoutMs: 15_000,
    }).catch(() => {});
    await sleep(1000); // late copies would show up here

    const refused = senders.flatMap((s) => s.refused.map((r) => `${s.name}: ${JSON.stringify(r)}`));
    assert.deepEqual(refused, [], 'no message was refused (rate limit, store failure, not joined)');
    assert.ok(acked.size < HISTORY_LEN, `the run sent ${acked.size} messages, within BANTER_HISTORY_LEN`);
    assert.ok(acked.size > 300, `only ${acked.size} messages were acked: the load did not run`);

    const problems = [];
    for (const c of clients) {
      const missing = expectedBy(c).filter((id) => !c.shown.has(id));
      for (const id of missing) {
        const a = acked.get(id);
        // The rejoin that should have brought it back: the first login after the ack.
        const rejoin = c.logins.find((l) => l.at >= a.at && l.lastIdSent !== null);
        problems.push(
          `${c.name} is missing ${id} ("${a.text}", acked to ${a.sender} at ${a.at}); ` +
            (rejoin
              ? `its next rejoin (connection ${rejoin.conn}) sent lastId ${rejoin.lastIdSent}` +
                `${rejoin.lastIdSent >= id ? ` >= ${id}` : ''}` +
                `${rejoin.lastIdFromOwnAck ? ' (raised last by its own ack)' : ''}`
              : 'no rejoin after the ack') +
            `; disconnects at ${JSON.stringify(c.disconnects.map((d) => [d.at, d.reason]))}`,
        );
      }
      for (const d of c.duplicates) problems.push(`${c.name} received ${JSON.stringify(d.id)} twice: ${JSON.stringify(d)}`);
      for (const m of c.malformed) problems.push(`${c.name}: a new message without a numeric id: ${JSON.stringify(m)}`);
      for (const o of c.outOfOrder) problems.push(`${c.name}: live message ${o.id} after ${o.after} on connection ${o.conn}`);
      for (const [id, shown] of c.shown) {
        const a = acked.get(id);
        if (a && (shown.username !== a.sender || shown.message !== a.text)) {
          problems.push(`${c.name}: ${id} shown as ${JSON.stringify(shown)}, acked as ${JSON.stringify(a)}`);
        }
      }
    }
    assert.deepEqual(problems.slice(0, 40), [], `${problems.length} delivery faults (first 40 shown)`);

    const rejoins = clients.flatMap((c) => c.logins.filter((l) => l.lastIdSent !== null).map((l) => ({ c, l })));
    const incomplete = rejoins.filter(({ l }) => l.complete !== true).map(({ c, l }) => `${c.name}: ${JSON.stringify({ ...l, historyIds: l.historyIds.length })}`);
    assert.deepEqual(incomplete, [], 'every rejoin says historyComplete: true');
    const renamed = clients.flatMap((c) => c.logins.filter((l) => l.username !== c.name).map((l) => `${c.name} came back as ${l.username}`));
    assert.deepEqual(renamed, [], 'every rejoin keeps the nickname');
    // Every client was on some instance when it was stopped.
    const unmoved = clients.filter((c) => !c.logins.some((l) => l.lastIdSent !== null)).map((c) => c.name);
    assert.deepEqual(unmoved, [], 'every client rejoined at least once');

    const recovered = rejoins.reduce((n, { l }) => n + l.historyIds.length, 0);
    const windowCopies = clients.reduce((n, c) => n + c.windowCopies.length, 0);
    const unacked = senders.reduce((n, s) => n + s.unacked.length, 0);
    t.diagnostic(
      `${acked.size} messages acked (${unacked} sent without an ack); ${rejoins.length} rejoins with lastId, ` +
        `all historyComplete; ${recovered} messages recovered through history; ` +
        `${windowCopies} join-window copies dropped by id (allowed); no duplicate, none missing`,
    );
  });

  it('the participant count converges and nobody was announced as left or joined during the restarts', async () => {
    const n = clients.length;
    await waitUntil('every client is in the chat', allJoined, { timeoutMs: 20_000, details: describeClients });
    const presence = clients.flatMap((c) => c.presence.map((p) => `${c.name} saw ${p.event} ${p.username} (${p.numUsers})`));
    assert.deepEqual(presence, [], 'a person who comes back within the grace period is not announced');
    const errors = clients.flatMap((c) => c.errorMessages.map((e) => `${c.name}: ${JSON.stringify(e)}`));
    assert.deepEqual(errors, [], 'no client received an error message (a `replaced` would stop it)');
    const failures = clients.flatMap((c) => c.joinFailures.map((f) => `${c.name}: ${JSON.stringify(f)}`));
    assert.deepEqual(failures, [], 'every rejoin was accepted');
    await waitUntil('every client counts everyone', () => clients.every((c) => c.numUsers === n), {
      details: () => JSON.stringify(clients.map((c) => [c.name, c.numUsers])),
    });
    for (const c of [clients[0], clients.at(-1)]) {
      const list = await ack(c.socket, 'list users');
      assert.equal(list.numUsers, n, `list users from ${c.name}: ${JSON.stringify(list)}`);
      assert.deepEqual([...list.users].sort(), clients.map((x) => x.name).sort());
    }
  });

  it('the instances logged the graceful path, and nothing went wrong', () => {
    assert.equal(retired.length, 3);
    for (const inst of retired) {
      let from = 0;
      for (const line of GRACEFUL_LINES) {
        const at = inst.log.indexOf(line, from);
        assert.ok(at >= 0, `${inst.label} logged "${line}" (after the previous step)\n--- log ---\n${inst.log.slice(-4000)}`);
        from = at + line.length;
      }
      for (const line of NOT_GRACEFUL) {
        assert.ok(!inst.log.includes(line), `${inst.label} logged "${line}"\n--- log ---\n${inst.log.slice(-4000)}`);
      }
    }
    // A panic in a task does not end the process (tokio catches it), so the exit status does not
    // show it: the log does.
    for (const inst of [...retired, ...instances]) {
      const lines = inst.log.split('\n');
      const bad = lines.flatMap((line, i) => {
        if (/ panicked at /.test(line)) return [`${line} ${lines[i + 1] ?? ''}`];
        return /\bERROR\b|packet dropped/.test(line) ? [line] : [];
      });
      assert.deepEqual(bad, [], `${inst.label} logged no panic, no error and no dropped packet`);
    }
    for (const inst of instances) {
      assert.match(inst.log, /joined the cluster/, `${inst.label} joined the cluster`);
    }
  });
});
