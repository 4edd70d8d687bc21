// Test harness for Banter's Node.js end-to-end suite.
//
// - startServer(env) spawns the Banter binary on an ephemeral port and resolves once it prints
//   "listening on http://...".
// - connect(url, opts) opens a socket.io-client socket (always forceNew) and resolves once it is
//   connected (and, for the "upgrade" flavour, once it really runs over WebSocket).
// - once / collect / expectNoEvent / ack / join are small event helpers with clear timeouts.
// - Every socket, raw connection, pending wait and server started through this module is tracked,
//   and cleanup() closes them all: call it from afterEach (or use serverPerTest()).

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, afterEach, before, beforeEach } from 'node:test';
import { io } from 'socket.io-client';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BANTER_BIN = process.env.BANTER_BIN ?? path.join(repoRoot, 'target/debug/banter');
export const CLIENT_DIST = path.join(repoRoot, 'node_modules/socket.io-client/dist');

export const DEFAULT_TIMEOUT_MS = 5000;
const START_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 5000;
const OUTPUT_KEEP_CHARS = 64 * 1024;

// The three client flavours. "upgrade" is the client's default (HTTP long-polling first, then the
// upgrade to WebSocket); connect() checks that the upgrade really happened.
export const FLAVOURS = {
  websocket: { transports: ['websocket'] },
  polling: { transports: ['polling'] },
  upgrade: { expectUpgrade: true },
};
export const FLAVOUR_NAMES = Object.keys(FLAVOURS);

// ---------------------------------------------------------------------------------------------
// Tracking

const liveServers = new Set(); // every server still running
const testServers = new Set(); // servers to stop at the next cleanup()
const closeables = new Set(); // sockets and raw connections to close at the next cleanup()
const pendingWaits = new Set(); // cancel functions of pending once()/expectNoEvent()/... waits
const labels = new WeakMap();

let nameCounter = 0;
/** A nickname that no other test has used in this process: `${base}${n}`. */
export function uniqueName(base = 'user') {
  nameCounter += 1;
  return `${base}${nameCounter}`;
}

function labelOf(target) {
  return labels.get(target) ?? 'socket';
}

function registerWait(cancel) {
  pendingWaits.add(cancel);
  return () => pendingWaits.delete(cancel);
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Close every tracked socket and raw connection, cancel pending waits, stop per-test servers. */
export async function cleanup() {
  for (const cancel of [...pendingWaits]) cancel();
  pendingWaits.clear();
  for (const c of [...closeables]) {
    try {
      if (typeof c.disconnect === 'function') c.disconnect();
      else if (typeof c.terminate === 'function') c.terminate();
      else if (typeof c.close === 'function') c.close();
    } catch {
      // already closed
    }
  }
  closeables.clear();
  const servers = [...testServers];
  testServers.clear();
  await Promise.all(servers.map((s) => s.stop()));
}

/** Stop every server still running (for after() hooks). */
export async function stopAllServers() {
  await Promise.all([...liveServers].map((s) => s.stop()));
}

const dataDirs = new Set(); // temporary data directories made here, removed at exit

/** A new empty directory for a server's SQLite history, removed when the test process exits. */
export function tempDataDir() {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'banter-data-'));
  dataDirs.add(dir);
  return dir;
}

process.on('exit', () => {
  for (const s of liveServers) {
    try {
      s.proc.kill('SIGKILL');
    } catch {
      // gone
    }
  }
  for (const dir of dataDirs) rmSync(dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// Server

function stripAnsi(text) {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');
}

function tail(text, n = 4000) {
  return text.length > n ? `...${text.slice(-n)}` : text;
}

/** A stream's output for error messages: its beginning (where errors usually are) and its end. */
function excerpt(head, rest, n = 3000) {
  if (rest.length === 0) return head;
  return `${head.slice(0, n)}\n[...]\n${tail(rest, n)}`;
}

/**
 * Start Banter with HOST=127.0.0.1 PORT=0 and the given extra settings. Its SQLite history goes
 * to a new temporary directory unless `env` sets BANTER_DATA_DIR (pass the same one to a second
 * server to restart on the same history).
 * Resolves to {url, proc, stop(), output()}; stop() sends SIGTERM (SIGKILL after 5 s) and resolves
 * to {code, signal}. With {perTest: true} the server is stopped by the next cleanup().
 */
export async function startServer(env = {}, { perTest = false } = {}) {
  if (!existsSync(BANTER_BIN)) {
    throw new Error(`Banter binary not found at ${BANTER_BIN} (run "cargo build" or set BANTER_BIN)`);
  }
  const settings = Object.fromEntries(Object.entries(env).map(([k, v]) => [k, String(v)]));
  settings.BANTER_DATA_DIR ??= tempDataDir();
  const proc = spawn(BANTER_BIN, [], {
    cwd: repoRoot,
    env: { ...process.env, NO_COLOR: '1', ...settings, HOST: '127.0.0.1', PORT: '0' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // The first few KB of each stream are kept apart, the rest as a rolling tail.
  const HEAD = 4000;
  let stdoutHead = '';
  let stdout = '';
  let stderrHead = '';
  let stderr = '';
  const exited = new Promise((resolve) => {
    proc.once('exit', (code, signal) => resolve({ code, signal }));
  });
  let exitInfo = null;
  exited.then((info) => {
    exitInfo = info;
    liveServers.delete(server);
  });

  const output = () => ({
    stdout: excerpt(stdoutHead, stdout),
    stderr: excerpt(stderrHead, stderr),
  });
  const server = {
    url: null,
    proc,
    env: settings,
    output,
    get running() {
      return exitInfo === null;
    },
    get exitInfo() {
      return exitInfo;
    },
    async stop() {
      if (exitInfo) return exitInfo;
      proc.kill('SIGTERM');
      const killer = setTimeout(() => proc.kill('SIGKILL'), STOP_TIMEOUT_MS);
      const info = await exited;
      clearTimeout(killer);
      return info;
    },
  };
  liveServers.add(server);

  const url = await new Promise((resolve, reject) => {
    let done = false;
    const finish = (err, value) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (err) reject(err);
      else resolve(value);
    };
    const describeFailure = (what) =>
      new Error(
        `Banter (${BANTER_BIN}) ${what}; env ${JSON.stringify(settings)}\n` +
          `--- stdout ---\n${output().stdout}\n--- stderr ---\n${output().stderr}`,
      );
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      finish(describeFailure(`did not print "listening on http://..." within ${START_TIMEOUT_MS} ms`));
    }, START_TIMEOUT_MS);
    proc.stdout.setEncoding('utf8');
    proc.stderr.setEncoding('utf8');
    let scan = ''; // stdout seen so far, until the line is found
    proc.stdout.on('data', (chunk) => {
      if (stdoutHead.length < HEAD) stdoutHead += chunk;
      else stdout = (stdout + chunk).slice(-OUTPUT_KEEP_CHARS);
      if (done) return;
      scan = (scan + chunk).slice(-OUTPUT_KEEP_CHARS);
      const m = /listening on (https?:\/\/\S+)/.exec(stripAnsi(scan));
      if (m) finish(null, m[1].replace(/\/+$/, ''));
    });
    proc.stderr.on('data', (chunk) => {
      if (stderrHead.length < HEAD) stderrHead += chunk;
      else stderr = (stderr + chunk).slice(-OUTPUT_KEEP_CHARS);
    });
    proc.once('error', (err) => finish(describeFailure(`could not be started: ${err.message}`)));
    exited.then(({ code, signal }) =>
      finish(describeFailure(`exited (code ${code}, signal ${signal}) before listening`)),
    );
  });
  server.url = url;
  if (perTest) testServers.add(server);
  return server;
}

/** Throw if the server is no longer running (it crashed during the test). */
export function assertRunning(server) {
  if (!server.running) {
    const { stdout, stderr } = server.output();
    throw new Error(
      `Banter exited during the test (${JSON.stringify(server.exitInfo)})\n` +
        `--- stdout ---\n${stdout}\n--- stderr ---\n${stderr}`,
    );
  }
}

/**
 * Inside a describe(): start a fresh server with `env` before each test and stop it after each
 * test (after closing the test's sockets). Returns an object whose .url/.server are the current
 * test's. A server that died during the test fails that test.
 */
export function serverPerTest(env = {}) {
  const current = { url: null, server: null };
  beforeEach(async () => {
    current.server = await startServer(env, { perTest: true });
    current.url = current.server.url;
  });
  afterEach(async () => {
    const server = current.server;
    const crashed = server && !server.running;
    await cleanup();
    if (crashed) assertRunning(server);
  });
  after(stopAllServers);
  return current;
}

/** Inside a describe(): one server for all its tests, stopped in after(); sockets closed after each test. */
export function sharedServer(env = {}) {
  const current = { url: null, server: null };
  before(async () => {
    current.server = await startServer(env);
    current.url = current.server.url;
  });
  afterEach(cleanup);
  after(async () => {
    const server = current.server;
    const crashed = server && !server.running;
    await cleanup();
    await stopAllServers();
    if (crashed) assertRunning(server);
  });
  return current;
}

// ---------------------------------------------------------------------------------------------
// Clients

/**
 * Open a socket.io-client socket and resolve once it is connected. Options are io() options plus:
 * - label: a name used in timeout messages;
 * - flavour: 'websocket' | 'polling' | 'upgrade' (merged in from FLAVOURS);
 * - expectUpgrade: wait for the Engine.IO upgrade and check the transport is WebSocket.
 * Reconnection is off unless asked for. Rejects on connect_error.
 */
export async function connect(url, opts = {}) {
  const { label, flavour, timeoutMs = DEFAULT_TIMEOUT_MS, ...rest } = opts;
  const merged = { ...(flavour ? FLAVOURS[flavour] : {}), ...rest };
  if (flavour && !FLAVOURS[flavour]) throw new Error(`unknown flavour ${flavour}`);
  const { expectUpgrade = false, ...ioOpts } = merged;
  const socket = io(url, { forceNew: true, reconnection: false, ...ioOpts });
  labels.set(socket, label ?? `socket(${flavour ?? 'default'})`);
  closeables.add(socket);
  await new Promise((resolve, reject) => {
    const onConnect = () => done(null);
    const onError = (err) => done(err);
    const done = (err) => {
      clearTimeout(timer);
      unregister();
      socket.off('connect', onConnect);
      socket.off('connect_error', onError);
      if (err) {
        socket.disconnect();
        reject(new Error(`${labelOf(socket)} could not connect to ${url}: ${err.message}`, { cause: err }));
      } else resolve();
    };
    const timer = setTimeout(
      () => done(new Error(`no "connect" within ${timeoutMs} ms`)),
      timeoutMs,
    );
    const unregister = registerWait(() => {
      clearTimeout(timer);
      socket.off('connect', onConnect);
      socket.off('connect_error', onError);
    });
    socket.on('connect', onConnect);
    socket.on('connect_error', onError);
  });
  if (expectUpgrade) await waitForUpgrade(socket, timeoutMs);
  return socket;
}

/** Resolve once the socket's Engine.IO connection runs over WebSocket (after the 'upgrade' event). */
export async function waitForUpgrade(socket, timeoutMs = DEFAULT_TIMEOUT_MS) {
  const engine = socket.io.engine;
  if (engine.transport.name !== 'websocket') {
    labels.set(engine, `${labelOf(socket)}.io.engine`);
    await once(engine, 'upgrade', timeoutMs);
  }
  if (socket.io.engine.transport.name !== 'websocket') {
    throw new Error(
      `${labelOf(socket)} did not upgrade: transport is ${socket.io.engine.transport.name}`,
    );
  }
}

/**
 * Open a socket that is expected NOT to connect; resolves with the connect_error.
 */
export async function connectExpectingError(url, opts = {}, timeoutMs = DEFAULT_TIMEOUT_MS) {
  const { label, flavour, ...rest } = opts;
  const { expectUpgrade: _ignored, ...ioOpts } = { ...(flavour ? FLAVOURS[flavour] : {}), ...rest };
  const socket = io(url, { forceNew: true, reconnection: false, ...ioOpts });
  labels.set(socket, label ?? `socket(${flavour ?? 'default'})`);
  closeables.add(socket);
  const outcome = await Promise.race([
    once(socket, 'connect_error', timeoutMs).then((err) => ({ err })),
    once(socket, 'connect', timeoutMs).then(() => ({ connected: true })),
  ]);
  socket.disconnect();
  if (outcome.connected) {
    throw new Error(`${labelOf(socket)} connected to ${url} but was expected to fail`);
  }
  return outcome.err;
}

/** Give a target (socket, engine, manager...) a name for timeout messages. */
export function setLabel(target, label) {
  labels.set(target, label);
  return target;
}

/** Track any object with close()/terminate()/disconnect() so cleanup() closes it. */
export function track(closeable, label) {
  closeables.add(closeable);
  if (label) labels.set(closeable, label);
  return closeable;
}

// ---------------------------------------------------------------------------------------------
// Event helpers

/**
 * Resolve with the first argument of the next `event` on `target` (a socket, a Manager
 * (socket.io) or an Engine.IO socket); reject with a clear message after timeoutMs.
 * With a predicate, only an event whose first argument satisfies it counts.
 */
export function once(target, event, timeoutMs = DEFAULT_TIMEOUT_MS, predicate = null) {
  return new Promise((resolve, reject) => {
    const handler = (...args) => {
      if (predicate && !predicate(args[0])) return;
      stop();
      resolve(args[0]);
    };
    const stop = () => {
      clearTimeout(timer);
      target.off(event, handler);
      unregister();
    };
    const timer = setTimeout(() => {
      stop();
      reject(
        new Error(
          `timed out after ${timeoutMs} ms waiting for "${event}" on ${labelOf(target)}` +
            (predicate ? ' (with a matching payload)' : ''),
        ),
      );
    }, timeoutMs);
    // A cancelled wait (cleanup) never settles: no stray rejections after a test ended.
    const unregister = registerWait(() => {
      clearTimeout(timer);
      target.off(event, handler);
    });
    target.on(event, handler);
  });
}

/**
 * Start recording `event` on `socket` now. Returns an array that fills up with each event's first
 * argument; its (non-enumerable) method until(n, timeoutMs) resolves once it holds n entries.
 */
export function collect(socket, event) {
  const items = [];
  const waiters = new Set();
  socket.on(event, (...args) => {
    items.push(args[0]);
    for (const w of [...waiters]) w();
  });
  Object.defineProperty(items, 'until', {
    enumerable: false,
    value: (n, timeoutMs = DEFAULT_TIMEOUT_MS) =>
      new Promise((resolve, reject) => {
        if (items.length >= n) {
          resolve(items);
          return;
        }
        const check = () => {
          if (items.length >= n) {
            stop();
            resolve(items);
          }
        };
        const stop = () => {
          clearTimeout(timer);
          waiters.delete(check);
          unregister();
        };
        const timer = setTimeout(() => {
          stop();
          reject(
            new Error(
              `timed out after ${timeoutMs} ms waiting for ${n} "${event}" on ${labelOf(socket)}; ` +
                `got ${items.length}: ${JSON.stringify(items)}`,
            ),
          );
        }, timeoutMs);
        const unregister = registerWait(() => {
          clearTimeout(timer);
          waiters.delete(check);
        });
        waiters.add(check);
      }),
  });
  return items;
}

/**
 * Resolve after `ms` if no `event` (matching the predicate, if any) arrives on `target`; reject as
 * soon as one does.
 */
export function expectNoEvent(target, event, ms = 400, predicate = null) {
  return new Promise((resolve, reject) => {
    const handler = (...args) => {
      if (predicate && !predicate(args[0])) return;
      stop();
      reject(
        new Error(
          `unexpected "${event}" on ${labelOf(target)} within ${ms} ms: ${JSON.stringify(args)}`,
        ),
      );
    };
    const stop = () => {
      clearTimeout(timer);
      target.off(event, handler);
      unregister();
    };
    const timer = setTimeout(() => {
      stop();
      resolve();
    }, ms);
    const unregister = registerWait(() => {
      clearTimeout(timer);
      target.off(event, handler);
    });
    target.on(event, handler);
  });
}

/** Resolve with `promise`'s value, or reject with `message` if it takes longer than `ms`. */
export function withTimeout(promise, ms, message) {
  let timer;
  let unregister = () => {};
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${message} (after ${ms} ms)`)), ms);
    unregister = registerWait(() => clearTimeout(timer));
  });
  return Promise.race([promise, timeout]).finally(() => {
    clearTimeout(timer);
    unregister();
  });
}

/** Emit with an ack and resolve with the ack's first argument; clear error on timeout. */
export async function ack(socket, event, ...args) {
  try {
    return await socket.timeout(DEFAULT_TIMEOUT_MS).emitWithAck(event, ...args);
  } catch (err) {
    throw new Error(
      `no ack for "${event}" ${JSON.stringify(args).slice(0, 200)} on ${labelOf(socket)} ` +
        `within ${DEFAULT_TIMEOUT_MS} ms (${err.message})`,
      { cause: err },
    );
  }
}

/** `add user` with an ack (string or {username, lastId}); resolves with the ack. */
export function join(socket, nameOrObj) {
  return ack(socket, 'add user', nameOrObj);
}

/** Classic join: `add user` without an ack, resolves with the `login` event's payload. */
export async function classicJoin(socket, name) {
  const login = once(socket, 'login');
  socket.emit('add user', name);
  return login;
}

/** Join with an ack and fail with the server's error if the join was refused. */
export async function joinOk(socket, nameOrObj) {
  const res = await join(socket, nameOrObj);
  if (!res || res.error || typeof res.username !== 'string') {
    throw new Error(`add user ${JSON.stringify(nameOrObj)} was refused: ${JSON.stringify(res)}`);
  }
  return res;
}

/** Send a message with an ack and fail if it was refused; resolves with {id, ts}. */
export async function sendOk(socket, text) {
  const res = await ack(socket, 'new message', text);
  if (!res || res.error || typeof res.id !== 'number') {
    throw new Error(`new message ${JSON.stringify(text).slice(0, 80)} was refused: ${JSON.stringify(res)}`);
  }
  return res;
}

// ---------------------------------------------------------------------------------------------
// Raw Engine.IO access (for malformed-packet and heartbeat tests)

/** Engine.IO v4 polling handshake over plain HTTP: resolves with the parsed open packet. */
export async function pollingHandshake(url) {
  const res = await fetch(`${url}/socket.io/?EIO=4&transport=polling`);
  const body = await res.text();
  if (res.status !== 200 || !body.startsWith('0')) {
    throw new Error(`polling handshake failed: ${res.status} ${body.slice(0, 200)}`);
  }
  return JSON.parse(body.slice(1));
}

let WebSocketImpl = null;
if (existsSync(path.join(repoRoot, 'node_modules/ws'))) {
  // `ws` comes with socket.io-client (through engine.io-client); Node 20 has no global WebSocket.
  try {
    WebSocketImpl = (await import('ws')).default;
  } catch {
    WebSocketImpl = null;
  }
}
export const HAVE_WS = WebSocketImpl !== null;

/**
 * A raw Engine.IO WebSocket connection (no socket.io-client). Resolves once the Engine.IO open
 * packet has arrived. `answerPings` (default true) answers "2" with "3".
 * Returns {ws, open, messages, next(predicate, ms), send(text), closed, close()}.
 */
export async function rawWebSocket(url, { answerPings = true, label = 'raw ws' } = {}) {
  if (!WebSocketImpl) throw new Error('the ws package is not installed');
  const wsUrl = `${url.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket`;
  const ws = new WebSocketImpl(wsUrl);
  track(ws, label);
  const messages = [];
  const waiters = new Set();
  let isClosed = false;
  const closed = new Promise((resolve) => {
    ws.on('close', (code, reason) => {
      isClosed = true;
      resolve({ code, reason: reason.toString() });
      for (const w of [...waiters]) w();
    });
  });
  ws.on('error', () => {
    // reported through 'close'
  });
  ws.on('message', (data, isBinary) => {
    const text = isBinary ? data : data.toString();
    if (answerPings && text === '2') ws.send('3');
    messages.push(text);
    for (const w of [...waiters]) w();
  });
  const conn = {
    ws,
    messages,
    closed,
    get isClosed() {
      return isClosed;
    },
    send: (data) => ws.send(data),
    close: () => ws.terminate(),
    /** Resolve with (and consume) the first message matching predicate (a string prefix or function). */
    next(predicate, timeoutMs = DEFAULT_TIMEOUT_MS) {
      const match = typeof predicate === 'string' ? (m) => typeof m === 'string' && m.startsWith(predicate) : predicate;
      return new Promise((resolve, reject) => {
        const check = () => {
          const i = messages.findIndex(match);
          if (i >= 0) {
            stop();
            resolve(messages.splice(i, 1)[0]);
          } else if (isClosed) {
            stop();
            reject(new Error(`${label} closed while waiting for a message; got ${JSON.stringify(messages)}`));
          }
        };
        const stop = () => {
          clearTimeout(timer);
          waiters.delete(check);
          unregister();
        };
        const timer = setTimeout(() => {
          stop();
          reject(new Error(`${label}: no matching message within ${timeoutMs} ms; got ${JSON.stringify(messages)}`));
        }, timeoutMs);
        const unregister = registerWait(() => {
          clearTimeout(timer);
          waiters.delete(check);
        });
        waiters.add(check);
        check();
      });
    },
  };
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  const openPacket = await conn.next('0');
  conn.open = JSON.parse(openPacket.slice(1));
  return conn;
}

/** Parse a Socket.IO EVENT packet text like `42["name",{...}]` -> [name, ...args], or null. */
export function parseEventPacket(text) {
  const m = /^42(\d*)(\[.*)$/s.exec(text);
  return m ? JSON.parse(m[2]) : null;
}
