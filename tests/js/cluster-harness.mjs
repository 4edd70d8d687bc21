// Helpers for the scale-out suites: a redis-server, nginx and HAProxy of the test's own (on free
// ports, in a temporary directory, never the machine's 6379 or /var), the shipped
// deploy/nginx.conf and deploy/haproxy.cfg rewritten only where a test must, an http.Agent that
// records which instance answered each request, the "skipped or failed" rule for missing
// software, and the instances and cross-instance checks that the load-balancer suites share.
//
// Every process started here is tracked: stopAllProcesses() ends them (after() hooks), and a
// synchronous exit handler kills whatever is left if the test process ends some other way.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { accessSync, constants, chmodSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { io } from 'socket.io-client';
import { joinOk, once, repoRoot, sendOk, sleep, startServer, track, uniqueName } from './harness.mjs';

export const SHIPPED_NGINX_CONF = path.join(repoRoot, 'deploy/nginx.conf');
export const SHIPPED_HAPROXY_CFG = path.join(repoRoot, 'deploy/haproxy.cfg');

const START_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 5_000;

// ---------------------------------------------------------------------------------------------
// Software that may be missing

function isExecutable(file) {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * The path of an executable, or null: `override` (an environment setting) when given, else the
 * first of `candidates` that exists, else `name` on PATH.
 */
export function findProgram(name, candidates = [], override = undefined) {
  if (override) return isExecutable(override) ? override : null;
  for (const c of candidates) if (isExecutable(c)) return c;
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir && isExecutable(path.join(dir, name))) return path.join(dir, name);
  }
  return null;
}

/**
 * For a suite that cannot run without some software: prints a loud notice and returns
 * {message, required}. `required` is true under BANTER_REQUIRE_ALL=1 (CI): the caller must then
 * fail instead of skipping.
 */
export function missingSoftware(what) {
  const message = `!! SKIPPED: ${what}`;
  const line = '!'.repeat(Math.min(message.length, 100));
  process.stderr.write(`\n${line}\n${message}\n${line}\n\n`);
  return { message, required: process.env.BANTER_REQUIRE_ALL === '1' };
}

/**
 * `describe(title, body)` when nothing in `missing` (notices of missing software, falsy entries
 * ignored) is missing. Otherwise the suite is skipped with the notices, or, under
 * BANTER_REQUIRE_ALL=1, one test that fails with them.
 */
export function describeWithSoftware({ title, skipTitle, needs, missing }, body) {
  const absent = missing.filter(Boolean);
  if (absent.length === 0) {
    describe(title, body);
    return;
  }
  const notices = absent.map(missingSoftware);
  const required = notices.some((n) => n.required);
  describe(skipTitle, { skip: required ? false : notices.map((n) => n.message).join('; ') }, () => {
    it(`needs ${needs} (BANTER_REQUIRE_ALL=1 makes a skip a failure)`, () => {
      assert.fail(`${notices.map((n) => n.message).join('; ')} (BANTER_REQUIRE_ALL=1)`);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Banter instances behind a load balancer

/**
 * Starts one harness server per env (each on a free port, on the Redis at `redisUrl`) and waits
 * until each says ready. Each gets `.log` (its stderr, whole) and `.upstream` (host:port, as the
 * balancer names it); `byUpstream` maps the latter to the instance.
 */
export async function startInstances(envs, redisUrl, byUpstream) {
  const instances = await Promise.all(envs.map((env) => startServer({ ...env, BANTER_REDIS_URL: redisUrl })));
  for (const server of instances) {
    server.log = '';
    server.proc.stderr.on('data', (chunk) => {
      server.log += chunk;
    });
    server.upstream = new URL(server.url).host;
    byUpstream.set(server.upstream, server);
    // The listening line comes before the instance has reached Redis; /readyz says when.
    await waitUntil(`${server.url}/readyz says ready`, async () => {
      return (await httpRequest(`${server.url}/readyz`)).status === 200;
    });
  }
  return instances;
}

/** The single instance that answered all of a client's requests; fails if there were more. */
export function soleUpstream(client, byUpstream) {
  const answered = client.agent.upstreams();
  assert.equal(
    answered.length,
    1,
    `${client.name} (${client.address}) was served by ${JSON.stringify(answered)}: ` +
      JSON.stringify(client.agent.responses),
  );
  assert.ok(byUpstream.has(answered[0]), `X-Upstream ${answered[0]} is one of the three instances`);
  return answered[0];
}

/**
 * The other side's word: the instance the balancer named for each client (`.upstream`) is the
 * one, and the only one, whose log shows that socket's join.
 */
export async function assertJoinsLoggedWhereServed(instances, clients) {
  await waitUntil('every join appears in its instance log', () =>
    clients.every((c) => instances.some((s) => s.log.includes(`sid=${c.socket.id}`))),
  );
  for (const c of clients) {
    const holders = instances
      .filter((s) => s.log.split('\n').some((line) => line.includes('user joined') && line.includes(`sid=${c.socket.id}`)))
      .map((s) => s.upstream);
    assert.deepEqual(holders, [c.upstream], `the instance logs for ${c.name} (socket ${c.socket.id})`);
  }
}

/**
 * Each client says hello; every other client gets every hello (in its `.messages`, a harness
 * `collect`), in id order, whichever instance it is on.
 */
export async function assertEveryoneHearsEveryone(clients) {
  for (const c of clients) await sendOk(c.socket, `hello from ${c.name}`);
  for (const c of clients) {
    const others = clients.filter((o) => o !== c);
    const got = await c.messages.until(others.length);
    assert.deepEqual(
      got.map((m) => m.message).sort(),
      others.map((o) => `hello from ${o.name}`).sort(),
      `messages at ${c.name} (on ${c.upstream})`,
    );
    for (const m of got) assert.equal(m.message, `hello from ${m.username}`);
    const ids = got.map((m) => m.id);
    assert.deepEqual(ids, [...ids].sort((a, b) => a - b), `ids arrive in order at ${c.name}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Processes

const liveProcs = new Set();
const tempDirs = new Set();

/** The pids of `pid`'s children (an nginx master's workers), from /proc. */
function childrenOf(pid) {
  const out = [];
  let entries = [];
  try {
    entries = readdirSync('/proc');
  } catch {
    return out;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

function killHard(p) {
  // Children first: an nginx master killed with SIGKILL would leave its workers listening.
  for (const child of childrenOf(p.proc.pid)) {
    try {
      process.kill(child, 'SIGKILL');
    } catch {
      // gone
    }
  }
  try {
    p.proc.kill('SIGKILL');
  } catch {
    // gone
  }
}

process.on('exit', () => {
  for (const p of liveProcs) killHard(p);
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

/**
 * Spawns a tracked process. Returns {proc, label, output(), running, exited, stop()}; stop() sends
 * `stopSignal`, then SIGKILL (to it and its children) after 5 s.
 */
export function spawnTracked(label, command, args, { stopSignal = 'SIGTERM', ...options } = {}) {
  const proc = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  let text = '';
  const keep = (chunk) => {
    text = (text + chunk).slice(-32 * 1024);
  };
  proc.stdout.setEncoding('utf8').on('data', keep);
  proc.stderr.setEncoding('utf8').on('data', keep);
  let exitInfo = null;
  let settle;
  const exited = new Promise((resolve) => {
    settle = (info) => {
      if (exitInfo) return;
      exitInfo = info;
      liveProcs.delete(p);
      resolve(info);
    };
  });
  proc.once('exit', (code, signal) => settle({ code, signal }));
  proc.once('error', (err) => {
    keep(`\n[${command}: ${err.message}]\n`);
    // A process that could not be started never emits 'exit'.
    if (proc.pid === undefined) settle({ code: null, signal: null, error: err.message });
  });
  const p = {
    proc,
    label,
    output: () => text,
    get running() {
      return exitInfo === null;
    },
    exited,
    async stop() {
      if (exitInfo) return exitInfo;
      try {
        proc.kill(stopSignal);
      } catch {
        // gone
      }
      const killer = setTimeout(() => killHard(p), STOP_TIMEOUT_MS);
      const info = await p.exited;
      clearTimeout(killer);
      return info;
    },
  };
  liveProcs.add(p);
  return p;
}

/** Stops every process started through this module (for after() hooks), and removes temp dirs. */
export async function stopAllProcesses() {
  await Promise.all([...liveProcs].map((p) => p.stop()));
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

function tempDir(prefix) {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

// ---------------------------------------------------------------------------------------------
// Network

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * One plain HTTP request. Resolves with {status, headers, body}. `localAddress` chooses the
 * source address (any of 127.0.0.0/8 works on Linux), which is what nginx hashes.
 */
export function httpRequest(url, { method = 'GET', body = null, localAddress, headers = {}, timeoutMs = 5000 } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, localAddress, agent: false, headers, timeout: timeoutMs }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        data += chunk;
      });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: data }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${url} timed out after ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body ?? undefined);
  });
}

/**
 * Resolves once `check()` resolves truthy; rejects with `what` (and `details()`) after timeoutMs,
 * or at once when `giveUp()` returns a reason (a process that exited will not come up).
 */
export async function waitUntil(
  what,
  check,
  { timeoutMs = START_TIMEOUT_MS, every = 100, details = () => '', giveUp = () => null } = {},
) {
  const deadline = Date.now() + timeoutMs;
  let lastError = null;
  for (;;) {
    const reason = giveUp();
    if (reason) throw new Error(`${what}: ${reason}\n${details()}`);
    try {
      if (await check()) return;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `${what}: not within ${timeoutMs} ms${lastError ? ` (last error: ${lastError.message})` : ''}\n${details()}`,
      );
    }
    await sleep(every);
  }
}

/**
 * A raw polling session from `address` through a load balancer at `url`: the Engine.IO handshake,
 * then its close ("1"), each of which must answer 200. Returns both responses, from which the
 * caller reads which instance answered each (`X-Upstream`) and any cookie.
 */
export async function pollingOpenClose(url, address, headers = {}) {
  const open = await httpRequest(`${url}/socket.io/?EIO=4&transport=polling`, { localAddress: address, headers });
  assert.equal(open.status, 200, `handshake from ${address}: ${open.status} ${open.body}`);
  const { sid } = JSON.parse(open.body.slice(1));
  const close = await httpRequest(`${url}/socket.io/?EIO=4&transport=polling&sid=${encodeURIComponent(sid)}`, {
    method: 'POST',
    body: '1',
    localAddress: address,
    headers: { ...headers, 'content-type': 'text/plain;charset=UTF-8' },
  });
  assert.equal(close.status, 200, `close from ${address}: ${close.status} ${close.body}`);
  return { open, close };
}

/**
 * The instance that answered a raw response through the test's nginx: the last of the
 * `X-Upstream` list (nginx appends one name per upstream it tried).
 */
export function answeredBy(response) {
  return (response.headers['x-upstream'] ?? '').split(',').at(-1).trim();
}

/**
 * A polling socket.io-client from `address` through the load balancer at `url` that reconnects as
 * the chat page does: with its session token in the handshake (the caller then sends `add user`
 * again with the last id it saw, `m.lastId`). Its WitnessAgent (`m.agent`) records every request.
 * `ioOptions` adds client options (HAProxy's cookie stickiness needs `withCredentials`).
 */
export async function openMover(url, address, ioOptions = {}) {
  const m = { address, name: uniqueName('mover'), session: null, lastId: 0, agent: new WitnessAgent(address) };
  m.socket = track(
    io(url, {
      forceNew: true,
      transports: ['polling'],
      agent: m.agent,
      extraHeaders: { origin: url },
      reconnectionDelay: 100,
      reconnectionDelayMax: 500,
      auth: (cb) => cb(m.session ? { session: m.session } : {}),
      ...ioOptions,
    }),
    m.name,
  );
  m.socket.on('new message', (msg) => {
    m.lastId = Math.max(m.lastId, msg.id);
  });
  await once(m.socket, 'connect');
  m.session = (await joinOk(m.socket, m.name)).session;
  return m;
}

/** A mover's latest Engine.IO handshake (a polling GET without sid) that an instance answered. */
export function lastHandshake(m) {
  return m.agent.responses.filter((r) => r.status === 200 && !/[?&]sid=/.test(r.path)).at(-1);
}

/**
 * An http.Agent that connects from `localAddress` and records every response it carries: method,
 * path, status, and the instance that answered (from the `X-Upstream` header that the test's
 * nginx or HAProxy adds), the address the request really left from, the Cookie header sent and
 * any Set-Cookie received. WebSocket handshakes (101) are recorded too. Give one to
 * socket.io-client as its `agent`: the records are then the official client's own requests, not
 * a separate probe's.
 */
export class WitnessAgent extends http.Agent {
  constructor(localAddress) {
    super({ localAddress });
    this.localAddress = localAddress;
    this.responses = [];
  }

  /**
   * Makes later connections leave from `address` (a client whose address changes mid-session,
   * like a phone moving from Wi-Fi to mobile data). The agent keeps no idle connections, and it
   * names its connections by their local address, so the next request opens a new one from there.
   */
  moveTo(address) {
    this.options.localAddress = address;
    this.localAddress = address;
  }

  addRequest(req, options) {
    const record = (res) => {
      // $upstream_addr lists every instance nginx tried, comma separated, when it had to retry
      // (the first refused the connection, say); the last one answered.
      const tried = (res.headers['x-upstream'] ?? '').split(',').map((a) => a.trim()).filter(Boolean);
      this.responses.push({
        method: req.method,
        path: req.path,
        status: res.statusCode,
        upstream: tried.at(-1) ?? null,
        tried,
        local: req.socket?.localAddress ?? null,
        cookie: req.getHeader('cookie') ?? null,
        setCookie: res.headers['set-cookie'] ?? null,
      });
    };
    req.once('response', record);
    req.once('upgrade', record);
    return super.addRequest(req, options);
  }

  /** The distinct instances that answered, in first-seen order. */
  upstreams() {
    return [...new Set(this.responses.map((r) => r.upstream))];
  }
}

// ---------------------------------------------------------------------------------------------
// Redis

/** Answers whether a Redis on `port` says PONG. */
function redisPing(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host: '127.0.0.1' });
    let data = '';
    const done = (ok) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(1000, () => done(false));
    sock.on('error', () => done(false));
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (chunk) => {
      data += chunk;
      if (data.includes('\r\n')) done(data.startsWith('+PONG'));
    });
  });
}

/** A redis-server of the test's own on a free port, without persistence. Resolves {url, port, stop()}. */
export async function startRedis(redisServer) {
  const port = await freePort();
  const p = spawnTracked('redis-server', redisServer, [
    '--port', String(port),
    '--bind', '127.0.0.1',
    '--save', '',
    '--appendonly', 'no',
  ]);
  await waitUntil(`redis-server on port ${port} answers PING`, () => redisPing(port), {
    details: () => p.output(),
    giveUp: () => (p.running ? null : 'redis-server exited'),
  });
  return { url: `redis://127.0.0.1:${port}`, port, stop: () => p.stop(), proc: p };
}

// ---------------------------------------------------------------------------------------------
// nginx

/**
 * Replaces what `pattern` matches exactly `times` times, or throws naming the config's change
 * (`shipped`: which config, `rewriter`: the function to update).
 */
function replaceExactly(
  text,
  pattern,
  replacement,
  times,
  what,
  { shipped = 'deploy/nginx.conf', rewriter = 'rewriteNginxConf()' } = {},
) {
  const found = text.match(new RegExp(pattern.source, pattern.flags.includes('g') ? pattern.flags : `${pattern.flags}g`));
  const count = found ? found.length : 0;
  if (count !== times) {
    throw new Error(
      `${shipped}: expected ${times} × ${what} (${pattern}), found ${count}. ` +
        `The shipped config changed shape: update ${rewriter} in tests/js/cluster-harness.mjs.`,
    );
  }
  return text.replace(pattern, replacement);
}

/**
 * The shipped config, rewritten only for a test run:
 * - the three placeholder instances (127.0.0.1:3001..3003) become `upstreamPorts`; with a single
 *   port, the other two lines are removed (one instance behind nginx: nginx never marks a lone
 *   server down, so every request reaches it, refusals included);
 * - `listen 8080` becomes 127.0.0.1:`listenPort`;
 * - the access log and every temp directory go to `dir` (nothing under /var);
 * - `X-Upstream: $upstream_addr` is added to /socket.io/ responses, so a test can see which
 *   instance served each request (the shipped config does not reveal that to clients);
 * - with `sticky: false`, the `hash` line is removed: plain round robin, for the negative check.
 * Everything else (hash, timeouts, headers, buffering) is the shipped text, unchanged.
 */
export function rewriteNginxConf(text, { upstreamPorts, listenPort, dir, sticky = true }) {
  if (upstreamPorts.length !== 3 && upstreamPorts.length !== 1) {
    throw new Error('rewriteNginxConf needs one or three upstream ports');
  }
  let conf = text;
  let n = 0;
  conf = replaceExactly(
    conf,
    /^(\s*server\s+)127\.0\.0\.1:300[123]\b/gm,
    (_, head) => `${head}127.0.0.1:${upstreamPorts[n++] ?? 'unused'}`,
    3,
    'placeholder instance lines "server 127.0.0.1:300N"',
  );
  if (upstreamPorts.length === 1) {
    conf = replaceExactly(conf, /^\s*server\s+127\.0\.0\.1:unused\b.*\n/gm, '', 2, 'the two unused instance lines');
  }
  conf = replaceExactly(conf, /^(\s*listen\s+)8080;/m, `$1127.0.0.1:${listenPort};`, 1, '"listen 8080;"');
  conf = replaceExactly(conf, /^(\s*access_log\s+)\/\S+/m, `$1${dir}/access.log`, 1, 'an access_log with a path');
  conf = replaceExactly(
    conf,
    /^http \{$/m,
    [
      'http {',
      `    client_body_temp_path ${dir}/client_body;`,
      `    proxy_temp_path ${dir}/proxy;`,
      `    fastcgi_temp_path ${dir}/fastcgi;`,
      `    uwsgi_temp_path ${dir}/uwsgi;`,
      `    scgi_temp_path ${dir}/scgi;`,
    ].join('\n'),
    1,
    '"http {"',
  );
  conf = replaceExactly(
    conf,
    /^(\s*)location \/socket\.io\/ \{$/m,
    '$1location /socket.io/ {\n$1    add_header X-Upstream $upstream_addr always;',
    1,
    '"location /socket.io/ {"',
  );
  if (!sticky) {
    conf = replaceExactly(conf, /^\s*hash \$remote_addr consistent;\n/m, '', 1, '"hash $remote_addr consistent;"');
  }
  return conf;
}

/**
 * Runs nginx with the shipped config rewritten by rewriteNginxConf() (see there), in a temp
 * directory, in the foreground. Resolves once /healthz answers through it:
 * {url, dir, conf, stop(), errorLog()}.
 */
export async function startNginx(nginxBin, { upstreamPorts, sticky = true, label = 'nginx' }) {
  const dir = tempDir('banter-nginx-');
  // As root, nginx workers run as an unprivileged user; they must be able to enter the directory.
  chmodSync(dir, 0o755);
  const listenPort = await freePort();
  const conf = rewriteNginxConf(readFileSync(SHIPPED_NGINX_CONF, 'utf8'), { upstreamPorts, listenPort, dir, sticky });
  const confPath = path.join(dir, 'nginx.conf');
  writeFileSync(confPath, conf);
  const errorLog = () => {
    try {
      return readFileSync(path.join(dir, 'error.log'), 'utf8');
    } catch {
      return '';
    }
  };
  const p = spawnTracked(
    label,
    nginxBin,
    ['-p', dir, '-c', confPath, '-g', `daemon off; pid ${dir}/nginx.pid; error_log ${dir}/error.log;`],
    // SIGQUIT would wait for open long-polls and WebSockets; SIGTERM is nginx's fast shutdown.
    { stopSignal: 'SIGTERM' },
  );
  const url = `http://127.0.0.1:${listenPort}`;
  await waitUntil(`${label} serves /healthz on ${url}`, async () => (await httpRequest(`${url}/healthz`)).status === 200, {
    details: () => `--- ${label} output ---\n${p.output()}\n--- error.log ---\n${errorLog()}`,
    giveUp: () => (p.running ? null : `${label} exited`),
  });
  return { url, dir, conf, stop: () => p.stop(), errorLog, proc: p };
}

// ---------------------------------------------------------------------------------------------
// HAProxy

/**
 * The shipped deploy/haproxy.cfg, rewritten only for a test run:
 * - the three placeholder instances (127.0.0.1:3001..3003) become `upstreamPorts`;
 * - `bind :8080` becomes 127.0.0.1:`listenPort`;
 * - a stats socket in `dir` (global section), through which a test reads each instance's state as
 *   HAProxy's health checks see it (haproxyStats()); at level `operator`, since `user` hides the
 *   instances' addresses;
 * - `X-Upstream: <address>:<port>` of the instance that answered is added to every response, so a
 *   test can see which instance served each request (the shipped config does not reveal that to
 *   clients, except through the SERVERID cookie's value).
 * Everything else (stickiness, health checks, timeouts, headers, limits, logging on stdout) is the
 * shipped text, unchanged.
 */
export function rewriteHaproxyCfg(text, { upstreamPorts, listenPort, dir }) {
  if (upstreamPorts.length !== 3) throw new Error('rewriteHaproxyCfg needs three upstream ports');
  const where = { shipped: 'deploy/haproxy.cfg', rewriter: 'rewriteHaproxyCfg()' };
  let cfg = text;
  let n = 0;
  cfg = replaceExactly(
    cfg,
    /^(\s*server\s+\S+\s+)127\.0\.0\.1:300[123]\b/gm,
    (_, head) => `${head}127.0.0.1:${upstreamPorts[n++]}`,
    3,
    'placeholder instance lines "server <name> 127.0.0.1:300N"',
    where,
  );
  cfg = replaceExactly(cfg, /^(\s*bind\s+):8080$/m, `$1127.0.0.1:${listenPort}`, 1, '"bind :8080"', where);
  cfg = replaceExactly(cfg, /^global$/m, `global\n    stats socket ${dir}/admin.sock mode 600 level operator`, 1, '"global"', where);
  cfg = replaceExactly(
    cfg,
    /^backend banter$/m,
    'backend banter\n    http-response set-header X-Upstream "%si:%sp"',
    1,
    '"backend banter"',
    where,
  );
  return cfg;
}

/**
 * One command on HAProxy's stats socket (`show stat`, `show servers state`...): resolves with the
 * whole answer (HAProxy closes the connection after a single command).
 */
export function haproxyCommand(socketPath, command, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ path: socketPath });
    let data = '';
    sock.setEncoding('utf8');
    sock.setTimeout(timeoutMs, () => sock.destroy(new Error(`"${command}" on ${socketPath}: no answer in ${timeoutMs} ms`)));
    sock.on('connect', () => sock.write(`${command}\n`));
    sock.on('data', (chunk) => {
      data += chunk;
    });
    sock.on('end', () => resolve(data));
    sock.on('error', reject);
  });
}

/**
 * HAProxy's `show stat` as objects, one per line (frontend, backend, each server), keyed by the
 * CSV header's names: `pxname`, `svname`, `status` (UP, DOWN, "DOWN 1/2" while going down...),
 * `check_status` (L7OK: the HTTP check got the expected status; L4CON: connection refused...).
 */
export async function haproxyStats(socketPath) {
  const text = await haproxyCommand(socketPath, 'show stat');
  const lines = text.split('\n').filter((line) => line.trim() !== '');
  if (lines.length === 0 || !lines[0].startsWith('# ')) throw new Error(`unexpected "show stat" answer: ${text.slice(0, 200)}`);
  const names = lines[0].slice(2).split(',');
  return lines.slice(1).map((line) => Object.fromEntries(line.split(',').map((value, i) => [names[i], value])));
}

/**
 * Runs HAProxy with the shipped config rewritten by rewriteHaproxyCfg() (see there), in a temp
 * directory, in the foreground. Resolves once /healthz answers through it:
 * {url, dir, cfg, stats(), server(name), stop(), output()}.
 */
export async function startHaproxy(haproxyBin, { upstreamPorts, label = 'haproxy' }) {
  const dir = tempDir('banter-haproxy-');
  const listenPort = await freePort();
  const cfg = rewriteHaproxyCfg(readFileSync(SHIPPED_HAPROXY_CFG, 'utf8'), { upstreamPorts, listenPort, dir });
  const cfgPath = path.join(dir, 'haproxy.cfg');
  writeFileSync(cfgPath, cfg);
  const socketPath = path.join(dir, 'admin.sock');
  // -db: stay in the foreground (the shipped config sets no `daemon`, this makes it explicit).
  // SIGTERM is HAProxy's immediate stop; SIGUSR1 would wait for open long-polls and WebSockets.
  const p = spawnTracked(label, haproxyBin, ['-db', '-f', cfgPath], { stopSignal: 'SIGTERM' });
  const url = `http://127.0.0.1:${listenPort}`;
  await waitUntil(`${label} serves /healthz on ${url}`, async () => (await httpRequest(`${url}/healthz`)).status === 200, {
    details: () => `--- ${label} output ---\n${p.output()}`,
    giveUp: () => (p.running ? null : `${label} exited`),
  });
  const stats = () => haproxyStats(socketPath);
  return {
    url,
    dir,
    cfg,
    socketPath,
    stats,
    /** The `show stat` line of one server of `backend banter` (banter1, banter2, banter3). */
    async server(name) {
      const line = (await stats()).find((l) => l.pxname === 'banter' && l.svname === name);
      if (!line) throw new Error(`no server ${name} in HAProxy's backend banter`);
      return line;
    },
    stop: () => p.stop(),
    output: () => p.output(),
    proc: p,
  };
}
