// Banter behind a proxy it does or does not trust (issue #14): one real instance, the shipped
// deploy/nginx.conf in front of it (its single-instance form, see rewriteNginxConf()), and the
// official socket.io-client connecting over WebSocket THROUGH nginx from several source
// addresses (127.0.0.2 and up stand for the browsers: Linux routes all of 127.0.0.0/8 to the
// loopback interface). nginx connects to Banter from 127.0.0.1 and appends each client's address
// to X-Forwarded-For, as App Service's front end does with its own addresses.
//
// 1. No BANTER_TRUSTED_PROXIES: the measured failure of the issue. 300 clients at 16 per second
//    (under the 20 per second of BANTER_CONNECT_RATE_PER_IP, so only the cap of 256 open
//    connections per address can refuse them): everyone counts as nginx, and the clients past the
//    cap are refused. What changed is that Banter now says so: one warning naming
//    BANTER_TRUSTED_PROXIES=127.0.0.1 (once, not per request), one more when that proxy's clients
//    start being refused, and the counters in /metrics.
// 2. The environment App Service gives every app (WEBSITE_SITE_NAME, WEBSITE_INSTANCE_ID) and no
//    setting: the front end's ranges are trusted by default (loopback among them, which is what
//    lets nginx on 127.0.0.1 stand in for the front end here; the private ranges themselves are
//    checked by the unit tests), and all 300 get in. The per-client bound still holds, per
//    forwarded address: with BANTER_MAX_CONNECTIONS_PER_IP=50 and 50 clients per address, one
//    more from a full address is refused while one from a new address gets in.
// 3. An explicit setting wins over that default: set to nothing (the App Service app setting
//    with an empty value), nobody is trusted and the warning comes back; set to 127.0.0.1, only
//    that is trusted.
//
// Banter's /readyz and /metrics are read directly, not through nginx, from an address of their
// own (127.0.0.250): in the first case nginx's address is over its bounds by then.
//
// Needs nginx (/usr/sbin/nginx, or BANTER_NGINX); without it the suite is skipped with a loud
// notice, or fails under BANTER_REQUIRE_ALL=1.

import { after, afterEach, it } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import { cleanup, sleep, startServer, stopAllServers, track } from './harness.mjs';
import {
  describeWithSoftware,
  findProgram,
  httpRequest,
  startNginx,
  stopAllProcesses,
  waitUntil,
} from './cluster-harness.mjs';

const NGINX = findProgram('nginx', ['/usr/sbin/nginx'], process.env.BANTER_NGINX);

const CLIENTS = 300;
const PER_SECOND = 16;
const DEFAULT_MAX_OPEN = 256; // BANTER_MAX_CONNECTIONS_PER_IP's default
// nginx keeps idle connections to Banter (its `keepalive` pool, from the /healthz probes through
// it) that count against the same per-address cap as the WebSockets.
const NGINX_IDLE_ALLOWANCE = 4;
const BROWSERS = Array.from({ length: 6 }, (_, i) => `127.0.0.${i + 2}`); // .2 to .7
const DIRECT = '127.0.0.250'; // the test's own requests to Banter, past nginx
const APP_SERVICE = { WEBSITE_SITE_NAME: 'banter-issue-14', WEBSITE_INSTANCE_ID: '5f0c2e9a7d41' };
const CONNECT_TIMEOUT_MS = 15_000;

const UNTRUSTED = /carry X-Forwarded-For, but 127\.0\.0\.1 is not a trusted proxy/g;
const REFUSING = /refusing connections from 127\.0\.0\.1, which is over its per-address bound/g;

// What this suite checks depends on these; the machine's own must not leak into the instances.
for (const name of ['WEBSITE_SITE_NAME', 'WEBSITE_INSTANCE_ID', 'BANTER_TRUSTED_PROXIES']) delete process.env[name];

describeWithSoftware(
  {
    title: 'Banter behind nginx: which proxy it trusts, and what it says when it does not (issue #14)',
    skipTitle: 'Banter behind nginx: trusted proxies',
    needs: 'nginx',
    missing: [!NGINX && 'nginx is not installed (apt-get install nginx); the trusted-proxies suite did not run'],
  },
  () => {
    let banter = null;
    let nginx = null;

    /** One Banter with `env` (its stderr kept whole in `.log`), and nginx in front of it. */
    async function start(env) {
      banter = await startServer(env);
      banter.log = '';
      banter.proc.stderr.on('data', (chunk) => {
        banter.log += chunk;
      });
      nginx = await startNginx(NGINX, { upstreamPorts: [Number(new URL(banter.url).port)] });
    }

    afterEach(async () => {
      await cleanup();
      await nginx?.stop();
      await banter?.stop();
      nginx = null;
      banter = null;
    });

    after(async () => {
      await stopAllServers();
      await stopAllProcesses();
    });

    /** A request straight to Banter, from the test's own address. */
    async function direct(path) {
      const res = await httpRequest(`${banter.url}${path}`, { localAddress: DIRECT });
      assert.equal(res.status, 200, `${path}: ${res.status} ${res.body}`);
      return res.body;
    }

    async function readyTrust() {
      return JSON.parse(await direct('/readyz')).trustedProxies;
    }

    /** A counter's value (summed over its labels) from /metrics. */
    async function counter(name, label = '') {
      const text = await direct('/metrics');
      const lines = text.split('\n').filter((l) => l.startsWith(`${name}${label}`) && !l.startsWith('#'));
      assert.ok(lines.length > 0, `${name}${label} in /metrics:\n${text}`);
      return lines.reduce((sum, l) => sum + Number(l.split(' ').at(-1)), 0);
    }

    /**
     * One WebSocket client through nginx from `address`: resolves {socket, address, connected}
     * once it is connected or refused (reconnection off: one attempt, one outcome).
     */
    function connectFrom(address) {
      const socket = track(
        io(nginx.url, {
          forceNew: true,
          transports: ['websocket'],
          localAddress: address,
          reconnection: false,
          timeout: CONNECT_TIMEOUT_MS,
          extraHeaders: { origin: nginx.url },
        }),
        `client from ${address}`,
      );
      return new Promise((resolve) => {
        socket.once('connect', () => resolve({ socket, address, connected: true }));
        socket.once('connect_error', (err) => resolve({ socket, address, connected: false, error: err.message }));
      });
    }

    /**
     * `count` clients at PER_SECOND, from `addresses` in turn, each started on schedule whatever
     * the ones before it are doing (people arriving, not a queue). Resolves with the outcomes.
     */
    async function arrive(count, addresses) {
      const outcomes = [];
      const startedAt = Date.now();
      for (let i = 0; i < count; i += 1) {
        const due = startedAt + (i * 1000) / PER_SECOND;
        const wait = due - Date.now();
        if (wait > 0) await sleep(wait);
        outcomes.push(connectFrom(addresses[i % addresses.length]));
      }
      const all = await Promise.all(outcomes);
      return { connected: all.filter((o) => o.connected), refused: all.filter((o) => !o.connected) };
    }

    const count = (text, pattern) => (text.match(pattern) ?? []).length;

    it('without BANTER_TRUSTED_PROXIES: the clients past one address\'s cap are refused, and the log says why, once', async (t) => {
      await start({});
      assert.deepEqual(await readyTrust(), { source: 'unset', networks: [] });

      const { connected, refused } = await arrive(CLIENTS, BROWSERS);
      assert.equal(connected.length + refused.length, CLIENTS);
      t.diagnostic(`${connected.length} connected, ${refused.length} refused`);
      // The measurement: everyone shares nginx's bound of 256 (less the idle connections
      // nginx keeps to Banter, which count against it too).
      assert.ok(
        connected.length <= DEFAULT_MAX_OPEN && connected.length >= DEFAULT_MAX_OPEN - NGINX_IDLE_ALLOWANCE,
        `${connected.length} connected`,
      );
      assert.ok(refused.length >= CLIENTS - DEFAULT_MAX_OPEN, `${refused.length} refused`);
      for (const c of connected) assert.ok(c.socket.connected, `a client from ${c.address} stayed connected`);

      // The refusals are counted, each at least once (at the TCP accept or the handshake); so
      // are the forwarded requests that Banter ignored (each client's handshake at least).
      assert.ok((await counter('banter_connections_refused_total')) >= refused.length);
      assert.ok((await counter('banter_untrusted_forwarded_total')) >= connected.length);

      // The log: one warning that names the setting and the value (not one per request, not one
      // per client), and one when that proxy's clients started being refused.
      await waitUntil('the refusal warning in the log', () => count(banter.log, REFUSING) > 0, {
        details: () => banter.log,
      });
      const log = banter.log;
      assert.equal(count(log, UNTRUSTED), 1, `the warning, once:\n${log}`);
      assert.match(log, /WARN.*set BANTER_TRUSTED_PROXIES=127\.0\.0\.1 /);
      assert.equal(count(log, REFUSING), 1, `the refusal warning, once:\n${log}`);
      assert.match(log, /trusting no proxy \(BANTER_TRUSTED_PROXIES is unset\)/);
      for (const line of log.split('\n').filter((l) => l.includes(' WARN '))) t.diagnostic(line);
    });

    it('on Azure App Service without the setting: all 300 get in, and the per-client bound holds per forwarded address', async (t) => {
      const perAddress = CLIENTS / BROWSERS.length; // 50
      await start({ ...APP_SERVICE, BANTER_MAX_CONNECTIONS_PER_IP: perAddress });
      const trust = await readyTrust();
      assert.equal(trust.source, 'azure-app-service-default');
      for (const net of ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '169.254.0.0/16', '127.0.0.0/8']) {
        assert.ok(trust.networks.includes(net), `${net} in ${JSON.stringify(trust.networks)}`);
      }

      const { connected, refused } = await arrive(CLIENTS, BROWSERS);
      assert.deepEqual(
        refused.map((r) => `${r.address}: ${r.error}`),
        [],
        'every client is counted under its own address, none under nginx\'s',
      );
      assert.equal(connected.length, CLIENTS);
      t.diagnostic(`${connected.length} connected, ${refused.length} refused`);

      // Each browser address now holds exactly its bound: one more from it is refused, while a
      // browser at a new address gets in.
      const over = await connectFrom(BROWSERS[0]);
      assert.equal(over.connected, false, `the ${perAddress + 1}th connection from ${BROWSERS[0]}`);
      const fresh = await connectFrom('127.0.0.8');
      assert.equal(fresh.connected, true, `a new address: ${fresh.error}`);
      assert.equal(await counter('banter_connections_refused_total'), 1);
      assert.equal(await counter('banter_untrusted_forwarded_total'), 0);

      const log = banter.log;
      assert.match(log, /on Azure App Service \(app banter-issue-14\): trusting X-Forwarded-For/);
      assert.equal(count(log, UNTRUSTED), 0, log);
      assert.equal(count(log, REFUSING), 0, log);
    });

    it('an explicit BANTER_TRUSTED_PROXIES wins over the App Service default, an empty one included', async () => {
      const cap = 8;
      const browsers = Array.from({ length: 12 }, (_, i) => `127.0.1.${i + 2}`);
      for (const [value, networks] of [
        ['', []],
        ['127.0.0.1', ['127.0.0.1']],
      ]) {
        await start({ ...APP_SERVICE, BANTER_TRUSTED_PROXIES: value, BANTER_MAX_CONNECTIONS_PER_IP: cap });
        assert.deepEqual(await readyTrust(), { source: 'setting', networks }, `BANTER_TRUSTED_PROXIES=${JSON.stringify(value)}`);

        const { connected, refused } = await arrive(browsers.length, browsers);
        if (networks.length === 0) {
          // Nobody trusted: the twelve browsers are one address again, nginx's.
          assert.ok(connected.length <= cap, `${connected.length} connected with nginx untrusted`);
          assert.ok(refused.length >= browsers.length - cap);
          await waitUntil('the warning in the log', () => count(banter.log, UNTRUSTED) > 0, { details: () => banter.log });
          assert.equal(count(banter.log, UNTRUSTED), 1, banter.log);
          assert.match(banter.log, /trusting no proxy \(BANTER_TRUSTED_PROXIES is set to none\)/);
        } else {
          assert.equal(connected.length, browsers.length, JSON.stringify(refused.map((r) => r.error)));
          assert.equal(count(banter.log, UNTRUSTED), 0, banter.log);
          assert.match(banter.log, /trusting X-Forwarded-For and X-Forwarded-Proto from 127\.0\.0\.1 \(BANTER_TRUSTED_PROXIES; it replaces the Azure App Service default\)/);
        }
        await cleanup();
        await nginx.stop();
        await banter.stop();
        nginx = null;
        banter = null;
      }
    });
  },
);
