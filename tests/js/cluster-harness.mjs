// Helpers for the scale-out suites: a redis-server and nginx of the test's own (on free ports, in a
// temporary directory, never the machine's 6379 or /var), the shipped deploy/nginx.conf rewritten
// only where a test must, an http.Agent that records which instance answered each request, and
// the "skipped or failed" rule for missing software.
//
// Every process started here is tracked: stopAllProcesses() ends them (after() hooks), and a
// synchronous exit handler kills whatever is left if the test process ends some other way.

import { spawn } from 'node:child_process';
import { accessSync, constants, chmodSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { repoRoot, sleep } from './harness.mjs';

export const SHIPPED_NGINX_CONF = path.join(repoRoot, 'deploy/nginx.conf');

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
 * An http.Agent that connects from `localAddress` and records every response it carries: method,
 * path, status, and the instance that answered (from the `X-Upstream` header that the test's
 * nginx adds). WebSocket handshakes (101) are recorded too. Give one to socket.io-client as its
 * `agent`: the records are then the official client's own requests, not a separate probe's.
 */
export class WitnessAgent extends http.Agent {
  constructor(localAddress) {
    super({ localAddress });
    this.localAddress = localAddress;
    this.responses = [];
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

/** Replaces what `pattern` matches exactly `times` times, or throws naming the config's change. */
function replaceExactly(text, pattern, replacement, times, what) {
  const found = text.match(new RegExp(pattern.source, pattern.flags.includes('g') ? pattern.flags : `${pattern.flags}g`));
  const count = found ? found.length : 0;
  if (count !== times) {
    throw new Error(
      `deploy/nginx.conf: expected ${times} × ${what} (${pattern}), found ${count}. ` +
        'The shipped config changed shape: update rewriteNginxConf() in tests/js/cluster-harness.mjs.',
    );
  }
  return text.replace(pattern, replacement);
}

/**
 * The shipped config, rewritten only for a test run:
 * - the three placeholder instances (127.0.0.1:3001..3003) become `upstreamPorts`;
 * - `listen 8080` becomes 127.0.0.1:`listenPort`;
 * - the access log and every temp directory go to `dir` (nothing under /var);
 * - `X-Upstream: $upstream_addr` is added to /socket.io/ responses, so a test can see which
 *   instance served each request (the shipped config does not reveal that to clients);
 * - with `sticky: false`, the `hash` line is removed: plain round robin, for the negative check.
 * Everything else (hash, timeouts, headers, buffering) is the shipped text, unchanged.
 */
export function rewriteNginxConf(text, { upstreamPorts, listenPort, dir, sticky = true }) {
  if (upstreamPorts.length !== 3) throw new Error('rewriteNginxConf needs three upstream ports');
  let conf = text;
  let n = 0;
  conf = replaceExactly(
    conf,
    /^(\s*server\s+)127\.0\.0\.1:300[123]\b/gm,
    (_, head) => `${head}127.0.0.1:${upstreamPorts[n++]}`,
    3,
    'placeholder instance lines "server 127.0.0.1:300N"',
  );
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
