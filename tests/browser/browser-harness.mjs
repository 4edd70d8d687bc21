// Harness for Banter's browser suite (Chromium driven by playwright-core, run by node:test).
//
// suite() registers the hooks of one test file and returns a handle whose helpers track what they
// start: Banter servers, browser contexts (each one a fresh profile) and Node socket.io clients.
// Everything a test started is closed after that test, pass or fail; the browser is closed after
// the file; any server still alive when Node exits is killed.
//
// scenario() wraps a test: a 60 s bound, and on failure a screenshot of every open page plus the
// server's output and the pages' console errors appended to the error.

import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, afterEach, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import { io } from 'socket.io-client';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BANTER_BIN = process.env.BANTER_BIN ?? path.join(repoRoot, 'target/debug/banter');
export const CHROMIUM = process.env.BANTER_CHROMIUM ?? '/usr/bin/chromium';
export const OUTPUT_DIR = path.join(repoRoot, 'test-output');
export const SCREENSHOT_DIR = path.join(OUTPUT_DIR, 'screenshots');
export const DOCS_SCREENSHOT_DIR = path.join(repoRoot, 'docs/screenshots');

export const TEST_TIMEOUT_MS = 60_000;
/** Bound of every single wait on the page (Playwright's default would be 30 s). */
export const WAIT_MS = 10_000;
const START_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 5_000;
const KEEP_OUTPUT_CHARS = 32 * 1024;

const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
  '--disable-sync',
  '--disable-quic',
];

export const DESKTOP = { viewport: { width: 1280, height: 800 }, deviceScaleFactor: 1 };
export const PHONE = {
  viewport: { width: 390, height: 844 },
  deviceScaleFactor: 1,
  isMobile: true,
  hasTouch: true,
  userAgent:
    'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 ' +
    '(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1',
};

// ---------------------------------------------------------------------------------------------
// Servers

const liveServers = new Set();
const dataDirs = new Set(); // temporary data directories of the servers, removed at exit
process.on('exit', () => {
  for (const dir of dataDirs) rmSync(dir, { recursive: true, force: true });
  for (const server of liveServers) {
    try {
      server.proc.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

const stripAnsi = (text) => text.replace(/\x1b\[[0-9;]*[A-Za-z]/g, ''); // eslint-disable-line no-control-regex
const tail = (text, n = 3000) => (text.length > n ? `…${text.slice(-n)}` : text);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function spawnServer(env, port) {
  if (!existsSync(BANTER_BIN)) {
    throw new Error(`Banter binary not found at ${BANTER_BIN}: run "cargo build --bins" or set BANTER_BIN`);
  }
  const settings = Object.fromEntries(Object.entries(env).map(([k, v]) => [k, String(v)]));
  // Its SQLite history goes to a temporary directory, removed when the tests end.
  if (settings.BANTER_DATA_DIR === undefined) {
    settings.BANTER_DATA_DIR = mkdtempSync(path.join(os.tmpdir(), 'banter-data-'));
    dataDirs.add(settings.BANTER_DATA_DIR);
  }
  const proc = spawn(BANTER_BIN, [], {
    cwd: repoRoot,
    env: { ...process.env, NO_COLOR: '1', RUST_LOG: 'info', ...settings, HOST: '127.0.0.1', PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  let exitInfo = null;
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  const server = {
    proc,
    env: settings,
    url: null,
    port: null,
    get running() {
      return exitInfo === null;
    },
    output: () => tail(output),
    /** SIGTERM (the server closes its sockets, clients reconnect); SIGKILL if it hangs. */
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
  exited.then((info) => {
    exitInfo = info;
    liveServers.delete(server);
  });
  proc.stdout.setEncoding('utf8');
  proc.stderr.setEncoding('utf8');
  const keep = (chunk) => {
    output = (output + stripAnsi(chunk)).slice(-KEEP_OUTPUT_CHARS);
  };
  proc.stderr.on('data', keep);
  const listening = new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`Banter did not print "listening on" within ${START_TIMEOUT_MS} ms\n${tail(output)}`));
    }, START_TIMEOUT_MS);
    proc.stdout.on('data', (chunk) => {
      keep(chunk);
      const match = /listening on (http:\/\/[^\s/]+)/.exec(output);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
    proc.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`Banter (${BANTER_BIN}) could not be started: ${err.message}`));
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`Banter exited (code ${code}, signal ${signal}) before listening\n${tail(output)}`));
    });
  });
  return { server, listening };
}

/**
 * Start Banter on 127.0.0.1 with `env` settings. `port` 0 (the default) lets the system pick one.
 * A fixed port (restarting on the port a previous server had) is retried for `bindRetryMs`, as the
 * old socket may linger for a moment.
 */
export async function startServer(env = {}, { port = 0, bindRetryMs = 8000 } = {}) {
  const deadline = Date.now() + bindRetryMs;
  for (;;) {
    const { server, listening } = spawnServer(env, port);
    try {
      server.url = await listening;
      server.port = Number(new URL(server.url).port);
      return server;
    } catch (err) {
      if (port === 0 || Date.now() > deadline || server.running) throw err;
      await sleep(200); // most likely "address in use": try again
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Node clients (the "other person" when a browser page is not needed)

/**
 * A socket.io-client socket that has joined as `name`. Resolves with the socket; its `login`
 * property holds the `add user` answer and `received` every `new message` payload.
 */
export async function nodeClient(url, name, { reconnection = false, timeoutMs = WAIT_MS, ...options } = {}) {
  const socket = io(url, { forceNew: true, reconnection, ...options });
  socket.received = [];
  socket.on('new message', (msg) => socket.received.push(msg));
  try {
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${name}: no connect within ${timeoutMs} ms`)), timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve();
      });
      socket.once('connect_error', (err) => {
        clearTimeout(timer);
        reject(new Error(`${name}: cannot connect to ${url}: ${err.message}`));
      });
    });
    const login = await socket.timeout(timeoutMs).emitWithAck('add user', name);
    if (!login || login.error) throw new Error(`${name}: add user refused: ${JSON.stringify(login)}`);
    socket.login = login;
    return socket;
  } catch (err) {
    socket.disconnect();
    throw err;
  }
}

/** Send a chat message from a Node client; resolves with the ack {id, ts}. */
export async function say(socket, text, timeoutMs = WAIT_MS) {
  const res = await socket.timeout(timeoutMs).emitWithAck('new message', text);
  if (!res || res.error || typeof res.id !== 'number') {
    throw new Error(`message ${JSON.stringify(text).slice(0, 60)} refused: ${JSON.stringify(res)}`);
  }
  return res;
}

/**
 * Poll a Node-side condition every 25 ms until `fn()` returns something truthy (which is
 * returned); fail after `timeoutMs` with `what` and, if given, `describe()`.
 */
export async function eventually(what, fn, { timeoutMs = WAIT_MS, describe } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${describe ? `; ${describe()}` : ''}`);
    }
    await sleep(25);
  }
}

/** Resolve once a Node client has received a message with this text from `from` (if given). */
export function waitForNodeMessage(socket, text, { from, timeoutMs = WAIT_MS } = {}) {
  return eventually(
    `the Node client to receive ${JSON.stringify(text)}${from ? ` from ${from}` : ''}`,
    () => socket.received.find((m) => m.message === text && (from === undefined || m.username === from)),
    { timeoutMs, describe: () => `got ${JSON.stringify(socket.received.slice(-5))}` },
  );
}

// ---------------------------------------------------------------------------------------------
// Pages

/**
 * Wait until `fn(arg)` is truthy in the page; on timeout, fail with `what` and, if `describe` is
 * given, what the page looked like then (describe runs in the page too).
 */
export async function waitInPage(page, what, fn, arg, { timeout = WAIT_MS, describe } = {}) {
  try {
    return await page.waitForFunction(fn, arg, { timeout, polling: 50 });
  } catch (err) {
    let state = '';
    if (describe) {
      state = await page.evaluate(describe, arg).then((s) => JSON.stringify(s), () => '(page gone)');
    }
    throw new Error(`waiting for ${what} failed: ${err.message.split('\n')[0]}${state ? `\npage: ${state}` : ''}`);
  }
}

/** Wait until the element matched by `selector` has exactly `text` (trimmed) as its text. */
export function waitForText(page, selector, text, options = {}) {
  return waitInPage(
    page,
    `${selector} to read ${JSON.stringify(text)}`,
    ([sel, want]) => document.querySelector(sel)?.textContent.trim() === want,
    [selector, text],
    { describe: ([sel]) => document.querySelector(sel)?.textContent ?? '(no element)', ...options },
  );
}

/** How many chat messages in #messages have exactly this body text. */
export function countMessages(page, text) {
  return page.evaluate(
    (want) => [...document.querySelectorAll('#messages .message .body')].filter((b) => b.textContent === want).length,
    text,
  );
}

/** Wait until a message with this body text (and author, if given) is in #messages. */
export function waitForMessage(page, text, { from, ...options } = {}) {
  return waitInPage(
    page,
    `a message ${JSON.stringify(text)}${from ? ` from ${from}` : ''}`,
    ([want, author]) =>
      [...document.querySelectorAll('#messages .message')].some(
        (m) =>
          m.querySelector('.body')?.textContent === want &&
          (author == null || m.querySelector('.author')?.textContent === author),
      ),
    [text, from ?? null],
    {
      describe: () =>
        [...document.querySelectorAll('#messages > *')].slice(-6).map((m) => m.textContent.replace(/\s+/g, ' ')),
      ...options,
    },
  );
}

/** Wait until #status has this data-state. */
export function waitForStatus(page, state, options = {}) {
  return waitInPage(
    page,
    `#status data-state=${state}`,
    (want) => document.getElementById('status')?.dataset.state === want,
    state,
    { describe: () => ({ ...document.getElementById('status')?.dataset, text: document.getElementById('status')?.textContent }), ...options },
  );
}

/** Wait until #users lists exactly these names (in any order). */
export function waitForUsers(page, names, options = {}) {
  const want = [...names].sort();
  return waitInPage(
    page,
    `#users to list ${JSON.stringify(want)}`,
    (list) => {
      const shown = [...document.querySelectorAll('#users li')].map((li) => li.textContent.trim()).sort();
      return JSON.stringify(shown) === JSON.stringify(list);
    },
    want,
    { describe: () => [...document.querySelectorAll('#users li')].map((li) => li.textContent), ...options },
  );
}

/** Log in through the form (typing the name, then Enter or a click) and wait for the chat. */
export async function login(page, name, { submit = 'click' } = {}) {
  await page.locator('#nickname').fill(name);
  if (submit === 'enter') await page.locator('#nickname').press('Enter');
  else await page.locator('#join').click();
  await page.locator('#chat').waitFor({ state: 'visible' });
  await waitInPage(
    page,
    `${name} to be in the users list`,
    (me) => [...document.querySelectorAll('#users li.me')].some((li) => li.textContent.trim() === me),
    name,
  );
}

/** Send a message through the composer and wait until the server confirmed it (data-status=sent). */
export async function send(page, text) {
  await page.locator('#composer').fill(text);
  await page.locator('#composer').press('Enter');
  await waitInPage(
    page,
    `own message ${JSON.stringify(text)} to be sent`,
    (want) =>
      [...document.querySelectorAll('#messages .message.own')].some(
        (m) => m.dataset.status === 'sent' && m.querySelector('.body')?.textContent === want,
      ),
    text,
    {
      describe: () =>
        [...document.querySelectorAll('#messages .message.own')].slice(-3).map((m) => ({ ...m.dataset, text: m.textContent })),
    },
  );
}

/** Save a PNG of the page under test-output/screenshots/ (and docs/screenshots/ with toDocs). */
export async function screenshot(page, name, { toDocs = false, ...options } = {}) {
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  const file = path.join(SCREENSHOT_DIR, `${name}.png`);
  // Stable pictures: no caret blinking, no animation mid-frame.
  await page.screenshot({ path: file, type: 'png', animations: 'disabled', caret: 'hide', ...options });
  if (toDocs) {
    mkdirSync(DOCS_SCREENSHOT_DIR, { recursive: true });
    await page.screenshot({
      path: path.join(DOCS_SCREENSHOT_DIR, `${name}.png`),
      type: 'png',
      animations: 'disabled',
      caret: 'hide',
      ...options,
    });
  }
  return file;
}

/**
 * Put the context's Socket.IO WebSockets through a proxy in the test (Playwright's
 * routeWebSocket, connected to the real server). The returned controller can:
 * - `refuse = true`: new connections are closed at once (the network is down);
 * - `cut()`: drop the live connections, as a network failure would (the server sees the
 *   transport close and keeps the person for the grace period);
 * - `transform(frame)`: rewrite what the server sends (return an array of frames to deliver).
 * Use it with `?transports=websocket`, so that every frame goes through the proxy.
 */
export async function proxyWebSockets(context) {
  const links = new Set();
  const proxy = {
    refuse: false,
    transform: null,
    connections: 0,
    get live() {
      return links.size;
    },
    cut() {
      for (const link of [...links]) link.close();
    },
  };
  await context.routeWebSocket(/\/socket\.io\//, (page) => {
    if (proxy.refuse) {
      page.close({ code: 1011, reason: 'network down' });
      return;
    }
    proxy.connections += 1;
    const server = page.connectToServer();
    const link = {
      close() {
        links.delete(link);
        page.close({ code: 4000, reason: 'cut' }).catch(() => {});
        server.close().catch(() => {});
      },
    };
    links.add(link);
    server.onMessage((frame) => {
      if (!links.has(link)) return; // cut: nothing more gets through
      const out = proxy.transform ? proxy.transform(frame) : [frame];
      for (const f of out) page.send(f);
    });
    page.onMessage((frame) => {
      if (links.has(link)) server.send(frame);
    });
    page.onClose(() => link.close());
    server.onClose(() => link.close());
  });
  return proxy;
}

// ---------------------------------------------------------------------------------------------
// Suites

/** Launch Debian's Chromium (Playwright's own download is not used) with the suite's flags. */
export function launchBrowser(extraArgs = []) {
  return chromium.launch({ executablePath: CHROMIUM, args: [...CHROMIUM_ARGS, ...extraArgs], timeout: 30_000 });
}

/**
 * Register the hooks of one test file: one Chromium for the file, and everything a test starts
 * through the returned handle is closed after that test.
 */
export function suite() {
  const tracked = { contexts: new Set(), clients: new Set(), servers: new Set(), browsers: new Set() };
  const pageErrors = new WeakMap();
  const handle = {
    browser: null,

    async server(env = {}, options = {}) {
      const server = await startServer(env, options);
      tracked.servers.add(server);
      return server;
    },

    /**
     * A page in a fresh context (its own profile: storage, cookies, cache) opened at `url`.
     * `beforeGoto({context, page})` runs before the navigation (routes, init scripts, CDP).
     */
    async page(url, { path: pagePath = '/', contextOptions = {}, beforeGoto, browser = handle.browser } = {}) {
      const context = await browser.newContext({ ...DESKTOP, ...contextOptions });
      tracked.contexts.add(context);
      context.setDefaultTimeout(WAIT_MS);
      context.setDefaultNavigationTimeout(WAIT_MS);
      const page = await context.newPage();
      const errors = [];
      pageErrors.set(page, errors);
      page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}`));
      page.on('console', (msg) => {
        if (msg.type() === 'error') errors.push(`console: ${msg.text()} (${msg.location()?.url ?? ''})`);
      });
      if (beforeGoto) await beforeGoto({ context, page });
      await page.goto(new URL(pagePath, url).href);
      return page;
    },

    /**
     * Uncaught exceptions and console errors the page reported so far, minus those matching
     * `allow` (regexes).
     */
    errors(page, allow = []) {
      return (pageErrors.get(page) ?? []).filter((e) => !allow.some((re) => re.test(e)));
    },

    async client(url, name, options) {
      const socket = await nodeClient(url, name, options);
      tracked.clients.add(socket);
      return socket;
    },

    track(kind, thing) {
      tracked[kind].add(thing);
      return thing;
    },

    async cleanup() {
      const contexts = [...tracked.contexts];
      tracked.contexts.clear();
      await Promise.all(contexts.map((c) => c.close().catch(() => {})));
      for (const socket of tracked.clients) socket.disconnect();
      tracked.clients.clear();
      const servers = [...tracked.servers];
      tracked.servers.clear();
      await Promise.all(servers.map((s) => s.stop()));
      const browsers = [...tracked.browsers];
      tracked.browsers.clear();
      await Promise.all(browsers.map((b) => b.close().catch(() => {})));
    },

    /** A screenshot of every open page plus server output, for a failed test's report. */
    async diagnostics(testName) {
      const lines = [];
      const dir = path.join(OUTPUT_DIR, 'failures');
      mkdirSync(dir, { recursive: true });
      const slug = testName.replace(/[^a-z0-9]+/gi, '-').toLowerCase().slice(0, 60);
      let n = 0;
      for (const context of tracked.contexts) {
        for (const page of context.pages()) {
          n += 1;
          const file = path.join(dir, `${slug}-${n}.png`);
          try {
            await page.screenshot({ path: file, timeout: 3000 });
            lines.push(`screenshot: ${path.relative(repoRoot, file)}`);
          } catch {
            // the page is gone
          }
          const errors = pageErrors.get(page) ?? [];
          if (errors.length) lines.push(`page ${n} errors:\n  ${errors.join('\n  ')}`);
        }
      }
      for (const server of tracked.servers) {
        lines.push(`server ${server.url ?? ''} (${server.running ? 'running' : 'exited'}) output:\n${server.output()}`);
      }
      return lines.join('\n');
    },
  };

  before(async () => {
    handle.browser = await launchBrowser();
  });
  afterEach(() => handle.cleanup());
  after(async () => {
    await handle.cleanup();
    await handle.browser?.close();
  });
  return handle;
}

/**
 * A test bounded to TEST_TIMEOUT_MS. If it fails, the error carries screenshots of the open
 * pages and the servers' output.
 */
export function scenario(h, name, fn, { timeout = TEST_TIMEOUT_MS } = {}) {
  test(name, { timeout }, async (t) => {
    try {
      await fn(t);
    } catch (err) {
      let extra = '';
      try {
        extra = await h.diagnostics(name);
      } catch (diagErr) {
        extra = `(diagnostics failed: ${diagErr.message})`;
      }
      if (extra) err.message = `${err.message}\n--- diagnostics ---\n${extra}`;
      throw err;
    }
  });
}

export { sleep };
