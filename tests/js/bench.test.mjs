// The performance tooling, end to end, at a size that takes seconds: `bench/compare` runs every
// scenario of `banter-bench` against Banter and the Node reference (each a real server on a free
// loopback port), and writes results.jsonl, report.md and latency.svg. Nothing here looks at
// timing: a run passes on correctness alone (every client in, every message delivered), which is
// what the bench itself checks. A second test shows that the bench does fail a run in which
// messages are refused, rather than report figures for it.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { BANTER_BIN, repoRoot, startServer, stopAllServers } from './harness.mjs';

const BENCH_BIN = process.env.BANTER_BENCH_BIN ?? path.join(repoRoot, 'target/debug/banter-bench');
const NODE_REFERENCE = path.join(repoRoot, 'bench/node-reference');

/** Runs a command to its end; resolves with its exit code and output (it must end in `ms`). */
function run(cmd, args, { env = {}, ms = 120_000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: repoRoot, env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd} did not finish within ${ms} ms\n${stdout}\n${stderr}`));
    }, ms);
    child.on('error', (err) => { clearTimeout(timer); reject(err); });
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
}

describe('bench/compare, at a small size', () => {
  test('runs every scenario against Banter and the Node reference and writes the report', async (t) => {
    assert.ok(existsSync(BENCH_BIN), `${BENCH_BIN} is missing: scripts/test builds it (cargo build --workspace --bins)`);
    assert.ok(
      existsSync(path.join(NODE_REFERENCE, 'node_modules/socket.io')),
      'bench/node-reference has no node_modules: scripts/test installs them (npm ci there)',
    );
    const out = mkdtempSync(path.join(tmpdir(), 'banter-compare-'));
    t.after(() => rmSync(out, { recursive: true, force: true }));

    const { code, stdout, stderr } = await run('bench/compare', [
      '--no-build', '--banter-bin', BANTER_BIN, '--bench-bin', BENCH_BIN,
      '--runs', '1', '--idle-counts', '30', '--idle-join-counts', '12',
      '--receivers', '12', '--senders', '2', '--loads', '130',
      '--polling-loads', '65', '--polling-receivers', '6',
      '--duration', '1', '--drain', '5', '--storm-clients', '25', '--timeout', '30',
      '--out', out,
    ]);
    assert.equal(code, 0, `bench/compare failed\n${stdout}\n${stderr}`);

    const rows = readFileSync(path.join(out, 'results.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const cases = ['idle-connect-30', 'idle-join-12', 'fanout-websocket-130', 'fanout-polling-65', 'storm-25'];
    for (const server of ['banter', 'node']) {
      for (const name of cases) {
        const row = rows.find((r) => r.server === server && r.case === name);
        assert.ok(row, `no result for ${server} ${name}`);
        const r = row.result;
        assert.equal(row.rc, 0, `${server} ${name} exited ${row.rc}: ${JSON.stringify(r)}`);
        assert.equal(r.ok, true, `${server} ${name}: ${JSON.stringify(r)}`);
        assert.equal(r.failed, 0, `${server} ${name}: clients failed`);
        if (name.startsWith('idle')) {
          const clients = Number(name.split('-').pop());
          assert.equal(r.ready, clients, `${server} ${name}: every client ready`);
          assert.ok(r.server_rss_after_kib > 0, `${server} ${name}: the server's RSS was read`);
        } else if (name.startsWith('fanout')) {
          assert.ok(r.sent > 0, `${server} ${name}: messages were sent`);
          assert.equal(r.acked, r.sent, `${server} ${name}: every message acknowledged`);
          assert.equal(r.refused, 0);
          // Every message reaches every joined socket but its sender.
          assert.equal(r.expected, r.sent * (r.joined - 1));
          assert.equal(r.received, r.expected, `${server} ${name}: every delivery arrived`);
          assert.equal(r.latency.count, r.received, `${server} ${name}: a latency sample per delivery`);
          assert.ok(r.latency.min_ms > 0 && r.latency.min_ms <= r.latency.p50_ms, `${server} ${name}: ${JSON.stringify(r.latency)}`);
          assert.ok(r.server_cpu_s !== null, `${server} ${name}: the server's CPU was read`);
          if (name.includes('websocket')) {
            // The kernel stamped every delivery as it reached its socket: never after it was read.
            assert.equal(r.arrival.count, r.received, `${server} ${name}: an arrival stamp per delivery`);
            assert.ok(r.arrival.min_ms > 0 && r.arrival.p50_ms <= r.latency.p50_ms && r.arrival.max_ms <= r.latency.max_ms,
              `${server} ${name}: arrival ${JSON.stringify(r.arrival)} read ${JSON.stringify(r.latency)}`);
          } else {
            assert.equal(r.arrival.count, 0, `${server} ${name}: polling has no socket of its own to stamp`);
          }
        } else {
          assert.equal(r.logged_in, 25, `${server} storm: every client logged in`);
          assert.ok(r.probe_all_s !== null, `${server} storm: the probe reached everyone`);
        }
      }
    }

    const report = readFileSync(path.join(out, 'report.md'), 'utf8');
    for (const heading of ['## Idle connections', '## Fan-out (websocket)', '## Fan-out (polling)', '## Join storm', '## Against the targets']) {
      assert.ok(report.includes(heading), `report.md has "${heading}"\n${report}`);
    }
    assert.match(report, /\| 130(\.00)? \| Banter \|/);
    assert.match(report, /\| 130(\.00)? \| Node \|/);
    assert.ok(report.includes("### Arrival at the receivers' sockets (websocket"), 'report.md has the arrival table');
    // The floor (no server): one write() per delivery to as many sockets as there are receivers.
    const floor = rows.find((r) => r.server === 'floor' && r.case === 'fanout-websocket-130');
    assert.ok(floor, 'the floor was measured at the fan-out load');
    assert.equal(floor.rc, 0, `floor: ${JSON.stringify(floor.result)}`);
    assert.equal(floor.result.sockets, 12);
    assert.ok(floor.result.frames > 0 && floor.result.writer_cpu_s !== null, `floor: ${JSON.stringify(floor.result)}`);
    assert.match(report, /\| 130(\.00)? \| Floor /);
    const svg = readFileSync(path.join(out, 'latency.svg'), 'utf8');
    assert.match(svg, /^<svg /);
    assert.ok((svg.match(/<path /g) ?? []).length >= 4, 'p50 and p99 lines for both servers');
  });

  test('--pin gives the server side and the load a CPU each', { skip: availableParallelism() < 2 && 'one CPU' }, async (t) => {
    const out = mkdtempSync(path.join(tmpdir(), 'banter-compare-pin-'));
    t.after(() => rmSync(out, { recursive: true, force: true }));
    const { code, stdout, stderr } = await run('bench/compare', [
      '--no-build', '--banter-bin', BANTER_BIN, '--bench-bin', BENCH_BIN, '--pin',
      '--runs', '1', '--servers', 'banter', '--scenarios', 'floor,fanout',
      '--receivers', '12', '--senders', '2', '--loads', '130',
      '--duration', '1', '--drain', '5', '--timeout', '30', '--out', out,
    ]);
    assert.equal(code, 0, `bench/compare --pin failed\n${stdout}\n${stderr}`);
    const rows = readFileSync(path.join(out, 'results.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const floor = rows.find((r) => r.server === 'floor');
    assert.equal(floor?.rc, 0, JSON.stringify(floor));
    assert.equal(floor.result.reader_cpus, '1', 'the floor reader ran on the other CPU');
    const fanout = rows.find((r) => r.server === 'banter' && r.case === 'fanout-websocket-130');
    assert.equal(fanout?.rc, 0, JSON.stringify(fanout));
    assert.equal(fanout.result.received, fanout.result.expected);
    // On the one CPU it may use, the bench runs its clients on one thread.
    assert.equal(fanout.result.bench_runtime, 'current_thread');
    assert.match(readFileSync(path.join(out, 'meta.txt'), 'utf8'), /--pin/);
  });

  test('a fan-out whose messages are refused fails, and says why', async (t) => {
    // Banter's default per-socket rate (5 messages/s, a burst of 10) refuses most of a sender's
    // 40 messages/s: the bench must count the refusals and exit 1, not report a clean run.
    t.after(stopAllServers);
    const server = await startServer({ BANTER_CONNECT_RATE_PER_IP: '0', BANTER_MAX_CONNECTIONS_PER_IP: '0' });
    const { code, stdout, stderr } = await run(BENCH_BIN, [
      'fanout', '--url', server.url, '--server-pid', String(server.proc.pid),
      '--receivers', '3', '--senders', '1', '--rate', '40', '--duration', '1', '--drain', '3', '--timeout', '20',
    ]);
    assert.equal(code, 1, `the bench should fail the run\n${stdout}\n${stderr}`);
    const result = JSON.parse(stdout.trim().split('\n').pop());
    assert.equal(result.ok, false);
    assert.ok(result.refused > 0, `refusals counted: ${JSON.stringify(result)}`);
    assert.equal(result.acked + result.refused, result.sent, 'every message answered');
    // What was accepted was delivered to every other socket.
    assert.equal(result.received, result.acked * (result.joined - 1));
  });
});
