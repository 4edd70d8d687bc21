#!/usr/bin/env node
'use strict';
// Builds report.md and latency.svg from the results.jsonl that bench/compare writes.
// Usage: node bench/report.js <results dir>
// No dependencies: the chart is a hand-written SVG.

const fs = require('fs');
const path = require('path');

const dir = process.argv[2];
if (!dir) {
  console.error('usage: node bench/report.js <results dir>');
  process.exit(2);
}

const lines = fs.readFileSync(path.join(dir, 'results.jsonl'), 'utf8').split('\n').filter(Boolean);
const rows = lines.map((l) => JSON.parse(l));
const meta = fs.existsSync(path.join(dir, 'meta.txt')) ? fs.readFileSync(path.join(dir, 'meta.txt'), 'utf8') : '';

// banter keeps its history in SQLite (the default), banter-memory in memory, banter-sync-normal
// in SQLite synced at checkpoints only.
const SERVERS = ['banter', 'banter-sync-normal', 'banter-memory', 'node'];
const NAMES = {
  banter: 'Banter',
  'banter-sync-normal': 'Banter (sync normal)',
  'banter-memory': 'Banter (memory)',
  node: 'Node',
  floor: 'Floor',
};
// Fan-out targets (docs/performance.md).
const P99_LIMIT_MS = 50;

function get(obj, dotted) {
  return dotted.split('.').reduce((o, k) => (o == null ? undefined : o[k]), obj);
}

function median(values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

// case -> server -> [result]
const cases = new Map();
for (const r of rows) {
  if (!cases.has(r.case)) cases.set(r.case, Object.fromEntries([...SERVERS, 'floor'].map((s) => [s, []])));
  const c = cases.get(r.case);
  (c[r.server] = c[r.server] || []).push({ ...r.result, server_warnings: r.server_warnings || 0 });
}

function med(caseName, server, field) {
  const c = cases.get(caseName);
  if (!c || !c[server]) return null;
  return median(c[server].map((r) => get(r, field)));
}

function runsOk(caseName, server) {
  const c = cases.get(caseName);
  if (!c || !c[server] || c[server].length === 0) return '-';
  return `${c[server].filter((r) => r.ok).length}/${c[server].length}`;
}

function sum(caseName, server, field) {
  const c = cases.get(caseName);
  if (!c || !c[server]) return null;
  return c[server].reduce((a, r) => a + (Number(get(r, field)) || 0), 0);
}

function fmt(x, digits = 2) {
  if (x == null) return '-';
  if (Math.abs(x) >= 1000) return Math.round(x).toLocaleString('en-US');
  return Number(x).toFixed(digits);
}

function ratio(a, b) {
  if (a == null || b == null || b === 0) return '-';
  return `${(a / b).toFixed(2)}x`;
}

const caseNames = [...cases.keys()];
const byPrefix = (prefix) =>
  caseNames
    .filter((n) => n.startsWith(prefix))
    .sort((a, b) => Number(a.split('-').pop()) - Number(b.split('-').pop()));

const out = [];
out.push('# Banter vs the Node reference');
out.push('');
out.push('```');
out.push(meta.trim());
out.push('```');
out.push('');
out.push('Medians of the runs of each case (`ok` = runs with no failure and no message lost). Ratios are Banter/Node.');
out.push('The machine is shared: the bench, the server and other work compete for 2 cores.');
out.push('');

// Idle.
const idleCases = [...byPrefix('idle-connect-'), ...byPrefix('idle-join-')];
if (idleCases.length) {
  out.push('## Idle connections');
  out.push('');
  out.push('| case | Banter KiB/conn | Node KiB/conn | RSS ratio | Banter ready p50/p99 ms | Node ready p50/p99 ms | Banter all ready s | Node all ready s | ok (B/N) |');
  out.push('|---|---|---|---|---|---|---|---|---|');
  for (const c of idleCases) {
    const rb = med(c, 'banter', 'server_rss_per_conn_kib');
    const rn = med(c, 'node', 'server_rss_per_conn_kib');
    out.push(
      `| ${c} | ${fmt(rb)} | ${fmt(rn)} | ${ratio(rb, rn)} | ${fmt(med(c, 'banter', 'ready_time.p50_ms'))} / ${fmt(med(c, 'banter', 'ready_time.p99_ms'))} | ` +
        `${fmt(med(c, 'node', 'ready_time.p50_ms'))} / ${fmt(med(c, 'node', 'ready_time.p99_ms'))} | ` +
        `${fmt(med(c, 'banter', 'ready_total_s'))} | ${fmt(med(c, 'node', 'ready_total_s'))} | ${runsOk(c, 'banter')} / ${runsOk(c, 'node')} |`,
    );
  }
  out.push('');
}

// Fan-out.
// Sustained: every run delivered everything (within the drain) and the median p99 is under the
// limit (which also keeps delivered/s at the offered rate).
function sustained(caseName, server) {
  const c = cases.get(caseName);
  if (!c || !c[server] || c[server].length === 0) return false;
  const p99 = med(caseName, server, 'latency.p99_ms');
  return c[server].every((r) => r.ok) && p99 != null && p99 < P99_LIMIT_MS;
}

function fanoutSection(transport) {
  const names = byPrefix(`fanout-${transport}-`);
  if (!names.length) return;
  out.push(`## Fan-out (${transport})`);
  out.push('');
  out.push('| offered/s | server | delivered/s | min ms | p50 ms | p90 ms | p99 ms | max ms | missing (all runs) | server warnings (all runs) | server CPU µs/delivery | sustained | ok |');
  out.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const c of names) {
    for (const s of [...SERVERS, 'floor']) {
      if (!cases.get(c)[s] || cases.get(c)[s].length === 0) continue;
      if (s === 'floor') {
        out.push(
          `| ${fmt(Number(c.split('-').pop()))} | Floor (one write() per delivery, no server) | ${fmt(med(c, s, 'delivered_per_s'))} | | | | | | | | ` +
            `${fmt(med(c, s, 'server_cpu_us_per_delivery'))} | | ${runsOk(c, s)} |`,
        );
        continue;
      }
      out.push(
        `| ${fmt(Number(c.split('-').pop()))} | ${NAMES[s]} | ${fmt(med(c, s, 'delivered_per_s'))} | ${fmt(med(c, s, 'latency.min_ms'))} | ${fmt(med(c, s, 'latency.p50_ms'))} | ` +
          `${fmt(med(c, s, 'latency.p90_ms'))} | ${fmt(med(c, s, 'latency.p99_ms'))} | ${fmt(med(c, s, 'latency.max_ms'))} | ` +
          `${fmt(sum(c, s, 'lost'), 0)} | ${fmt(sum(c, s, 'server_warnings'), 0)} | ${fmt(med(c, s, 'server_cpu_us_per_delivery'))} | ${sustained(c, s) ? 'yes' : 'no'} | ${runsOk(c, s)} |`,
      );
    }
  }
  out.push('');
  out.push('| offered/s | delivered/s ratio | p50 ratio | p99 ratio | CPU/delivery ratio | Banter CPU / floor | Node CPU / floor |');
  out.push('|---|---|---|---|---|---|---|');
  for (const c of names) {
    if (med(c, 'banter', 'delivered_per_s') == null && med(c, 'node', 'delivered_per_s') == null) continue;
    const floorCpu = med(c, 'floor', 'server_cpu_us_per_delivery');
    out.push(
      `| ${fmt(Number(c.split('-').pop()))} | ${ratio(med(c, 'banter', 'delivered_per_s'), med(c, 'node', 'delivered_per_s'))} | ` +
        `${ratio(med(c, 'banter', 'latency.p50_ms'), med(c, 'node', 'latency.p50_ms'))} | ` +
        `${ratio(med(c, 'banter', 'latency.p99_ms'), med(c, 'node', 'latency.p99_ms'))} | ` +
        `${ratio(med(c, 'banter', 'server_cpu_us_per_delivery'), med(c, 'node', 'server_cpu_us_per_delivery'))} | ` +
        `${ratio(med(c, 'banter', 'server_cpu_us_per_delivery'), floorCpu)} | ${ratio(med(c, 'node', 'server_cpu_us_per_delivery'), floorCpu)} |`,
    );
  }
  out.push('');
  // The same deliveries timed to when they reached the receivers' sockets (kernel stamps), which
  // leaves out the time a frame waited for the bench's one core to read it.
  const stamped = names.filter((c) => SERVERS.some((s) => med(c, s, 'arrival.count') > 0));
  if (stamped.length) {
    out.push(`### Arrival at the receivers' sockets (${transport}; kernel receive stamps)`);
    out.push('');
    out.push('| offered/s | server | min ms | p50 ms | p90 ms | p99 ms | p50 arrival / p50 read |');
    out.push('|---|---|---|---|---|---|---|');
    for (const c of stamped) {
      for (const s of SERVERS) {
        if (!(med(c, s, 'arrival.count') > 0)) continue;
        out.push(
          `| ${fmt(Number(c.split('-').pop()))} | ${NAMES[s]} | ${fmt(med(c, s, 'arrival.min_ms'))} | ${fmt(med(c, s, 'arrival.p50_ms'))} | ` +
            `${fmt(med(c, s, 'arrival.p90_ms'))} | ${fmt(med(c, s, 'arrival.p99_ms'))} | ${ratio(med(c, s, 'arrival.p50_ms'), med(c, s, 'latency.p50_ms'))} |`,
        );
      }
    }
    out.push('');
    const pairs = stamped.filter((c) => med(c, 'banter', 'arrival.count') > 0 && med(c, 'node', 'arrival.count') > 0);
    if (pairs.length) {
      out.push('| offered/s | arrival p50 Banter/Node | arrival p99 Banter/Node |');
      out.push('|---|---|---|');
    }
    for (const c of pairs) {
      out.push(
        `| ${fmt(Number(c.split('-').pop()))} | ${ratio(med(c, 'banter', 'arrival.p50_ms'), med(c, 'node', 'arrival.p50_ms'))} | ` +
          `${ratio(med(c, 'banter', 'arrival.p99_ms'), med(c, 'node', 'arrival.p99_ms'))} |`,
      );
    }
    if (pairs.length) out.push('');
  }
  return names;
}
const wsCases = fanoutSection('websocket') || [];
fanoutSection('polling');

// The cost of the durable history: Banter with SQLite against Banter in memory, same run.
for (const sqlite of ['banter', 'banter-sync-normal']) {
  storeSection(sqlite);
}
function storeSection(sqlite) {
  const storeCases = byPrefix('fanout-websocket-').filter(
    (c) => med(c, sqlite, 'delivered_per_s') != null && med(c, 'banter-memory', 'delivered_per_s') != null,
  );
  if (!storeCases.length) return;
  out.push(`## ${NAMES[sqlite]}: SQLite history against in memory (fan-out over WebSocket)`);
  out.push('');
  out.push('Targets: delivered/s within 10% of in memory; p50 added under 0.5 ms at 100,000 deliveries/s.');
  out.push('');
  out.push('| offered/s | delivered/s SQLite / memory | p50 ms SQLite / memory (added) | p99 ms SQLite / memory | server CPU µs/delivery SQLite / memory | ok (S/M) |');
  out.push('|---|---|---|---|---|---|');
  for (const c of storeCases) {
    const [ds, dm] = [med(c, sqlite, 'delivered_per_s'), med(c, 'banter-memory', 'delivered_per_s')];
    const [ps, pm] = [med(c, sqlite, 'latency.p50_ms'), med(c, 'banter-memory', 'latency.p50_ms')];
    const added = ps != null && pm != null ? `${ps - pm >= 0 ? '+' : ''}${(ps - pm).toFixed(2)}` : '-';
    out.push(
      `| ${fmt(Number(c.split('-').pop()))} | ${fmt(ds)} / ${fmt(dm)} (${ratio(ds, dm)}) | ${fmt(ps)} / ${fmt(pm)} (${added}) | ` +
        `${fmt(med(c, sqlite, 'latency.p99_ms'))} / ${fmt(med(c, 'banter-memory', 'latency.p99_ms'))} | ` +
        `${fmt(med(c, sqlite, 'server_cpu_us_per_delivery'))} / ${fmt(med(c, 'banter-memory', 'server_cpu_us_per_delivery'))} | ` +
        `${runsOk(c, sqlite)} / ${runsOk(c, 'banter-memory')} |`,
    );
  }
  out.push('');
}

// Storm.
const stormCases = byPrefix('storm-');
if (stormCases.length) {
  out.push('## Join storm');
  out.push('');
  out.push('| case | server | all logged in s | probe reached all s | events delivered | server warnings (all runs) | server CPU s | ok |');
  out.push('|---|---|---|---|---|---|---|---|');
  for (const c of stormCases) {
    for (const s of SERVERS) {
      if (!cases.get(c)[s] || cases.get(c)[s].length === 0) continue;
      out.push(
        `| ${c} | ${NAMES[s]} | ${fmt(med(c, s, 'all_logged_in_s'))} | ${fmt(med(c, s, 'probe_all_s'))} | ` +
          `${fmt(med(c, s, 'events'), 0)} | ${fmt(sum(c, s, 'server_warnings'), 0)} | ${fmt(med(c, s, 'server_cpu_s'))} | ${runsOk(c, s)} |`,
      );
    }
    out.push(`| ${c} | Node/Banter | ${ratio(med(c, 'node', 'all_logged_in_s'), med(c, 'banter', 'all_logged_in_s'))} | ${ratio(med(c, 'node', 'probe_all_s'), med(c, 'banter', 'probe_all_s'))} | | | | |`);
  }
  out.push('');
}

// Targets.
out.push('## Against the targets');
out.push('');
function bestSustained(server) {
  let best = null;
  for (const c of wsCases) {
    if (sustained(c, server)) {
      const d = med(c, server, 'delivered_per_s');
      if (best == null || d > best.delivered) best = { case: c, delivered: d };
    }
  }
  return best;
}
const bb = bestSustained('banter');
const bn = bestSustained('node');
out.push(
  `- Fan-out, highest sustained load (every run ok, median p99 < ${P99_LIMIT_MS} ms) among the loads tried: ` +
    `Banter ${bb ? fmt(bb.delivered) + '/s' : 'none'}, Node ${bn ? fmt(bn.delivered) + '/s' : 'none'}` +
    (bb && bn ? ` (ratio ${ratio(bb.delivered, bn.delivered)}; target >= 4x).` : '.') +
    (bb && wsCases.length && bb.case === wsCases[wsCases.length - 1] ? ' Banter sustained the highest load tried: its limit is higher.' : ''),
);
// Latency at every load that Node sustains and both servers ran.
const both = wsCases.filter((c) => sustained(c, 'node') && med(c, 'banter', 'latency.p50_ms') != null);
if (both.length) {
  const at = both.map((c) => {
    const [b50, n50, b99, n99] = [
      med(c, 'banter', 'latency.p50_ms'), med(c, 'node', 'latency.p50_ms'),
      med(c, 'banter', 'latency.p99_ms'), med(c, 'node', 'latency.p99_ms'),
    ];
    return { c, b50, n50, b99, n99 };
  });
  const lower = at.filter((x) => x.b50 < x.n50 && x.b99 < x.n99).length;
  out.push(
    `- Latency at the loads Node sustains (target: Banter lower at p50 and p99): lower at both in ${lower} of ${at.length}; ` +
      at.map((x) => `${fmt(Number(x.c.split('-').pop()))}/s p50 ${fmt(x.b50)} vs ${fmt(x.n50)} ms, p99 ${fmt(x.b99)} vs ${fmt(x.n99)} ms`).join('; ') +
      ' (Banter vs Node).',
  );
  const stampedAt = at.filter((x) => med(x.c, 'banter', 'arrival.p50_ms') != null && med(x.c, 'node', 'arrival.p50_ms') != null);
  if (stampedAt.length) {
    out.push(
      "- Arrival at the receivers' sockets, p50 (kernel stamps; target: at most half of Node's): " +
        stampedAt
          .map((x) => {
            const [b, n] = [med(x.c, 'banter', 'arrival.p50_ms'), med(x.c, 'node', 'arrival.p50_ms')];
            return `${fmt(Number(x.c.split('-').pop()))}/s ${fmt(b)} vs ${fmt(n)} ms (${ratio(b, n)})`;
          })
          .join('; ') +
        '.',
    );
  }
}
for (const c of idleCases) {
  out.push(
    `- ${c}: RSS per connection ${ratio(med(c, 'banter', 'server_rss_per_conn_kib'), med(c, 'node', 'server_rss_per_conn_kib'))} of Node's (target <= 0.33x).`,
  );
}
for (const c of stormCases) {
  out.push(
    `- ${c}: Node/Banter time until the probe reached everyone ${ratio(med(c, 'node', 'probe_all_s'), med(c, 'banter', 'probe_all_s'))} (target >= 5x, at 5,000 clients).`,
  );
}
for (const s of SERVERS) {
  const lost = [...byPrefix('fanout-')].reduce((a, c) => a + (sum(c, s, 'lost') || 0), 0);
  const runs = [...byPrefix('fanout-')].reduce((a, c) => a + ((cases.get(c)[s] || []).length), 0);
  if (runs) out.push(`- ${NAMES[s]}: ${lost} deliveries missing after the drain over ${runs} fan-out runs (target: 0; at overload some are late rather than lost, see \`still_arriving\`).`);
}
out.push('');
out.push('![latency vs offered load](latency.svg)');
out.push('');
fs.writeFileSync(path.join(dir, 'report.md'), out.join('\n'));

// The chart: p50 (dashed) and p99 (solid) latency against offered load, log latency axis.
function chart() {
  const W = 760, H = 440, L = 70, R = 170, T = 40, B = 60;
  const series = [];
  const colors = { banter: '#d9480f', node: '#2b8a3e' };
  let maxX = 0, minY = Infinity, maxY = 0;
  for (const s of SERVERS) {
    for (const q of ['p50', 'p99']) {
      const pts = [];
      for (const c of wsCases) {
        const x = med(c, s, 'offered_deliveries_per_s') ?? Number(c.split('-').pop());
        const y = med(c, s, `latency.${q}_ms`);
        if (y == null) continue;
        pts.push({ x, y, ok: sustained(c, s) || q === 'p50' });
        maxX = Math.max(maxX, x);
        minY = Math.min(minY, y);
        maxY = Math.max(maxY, y);
      }
      if (pts.length) series.push({ s, q, pts });
    }
  }
  if (!series.length) return null;
  // The range always shows the p99 target line.
  const y0 = Math.pow(10, Math.floor(Math.log10(Math.max(Math.min(minY, P99_LIMIT_MS * 0.99), 0.01))));
  const y1 = Math.pow(10, Math.ceil(Math.log10(Math.max(maxY, P99_LIMIT_MS * 1.01))));
  const xs = (x) => L + (x / (maxX * 1.05)) * (W - L - R);
  const ys = (y) => T + (1 - (Math.log10(Math.max(y, y0)) - Math.log10(y0)) / (Math.log10(y1) - Math.log10(y0))) * (H - T - B);
  const svg = [];
  svg.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  svg.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  svg.push(`<text x="${W / 2 - R / 2}" y="22" text-anchor="middle" font-size="15">Fan-out latency vs offered load (${wsCases.length} loads, medians)</text>`);
  for (let d = y0; d <= y1 * 1.0001; d *= 10) {
    for (const m of [1, 2, 5]) {
      const v = d * m;
      if (v > y1 * 1.0001) break;
      svg.push(`<line x1="${L}" x2="${W - R}" y1="${ys(v)}" y2="${ys(v)}" stroke="#e5e5e5"/>`);
      svg.push(`<text x="${L - 6}" y="${ys(v) + 4}" text-anchor="end">${v >= 1 ? v : v.toPrecision(1)}</text>`);
    }
  }
  const step = Math.pow(10, Math.floor(Math.log10(maxX || 1)));
  const tick = maxX / step > 5 ? step : step / 2;
  for (let x = 0; x <= maxX * 1.05; x += tick) {
    svg.push(`<line x1="${xs(x)}" x2="${xs(x)}" y1="${T}" y2="${H - B}" stroke="#f0f0f0"/>`);
    svg.push(`<text x="${xs(x)}" y="${H - B + 16}" text-anchor="middle">${x / 1000}k</text>`);
  }
  svg.push(`<line x1="${L}" x2="${W - R}" y1="${ys(P99_LIMIT_MS)}" y2="${ys(P99_LIMIT_MS)}" stroke="#888" stroke-dasharray="2,3"/>`);
  svg.push(`<text x="${W - R - 4}" y="${ys(P99_LIMIT_MS) - 4}" text-anchor="end" fill="#666">p99 target ${P99_LIMIT_MS} ms</text>`);
  svg.push(`<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="none" stroke="#333"/>`);
  svg.push(`<text x="${(L + W - R) / 2}" y="${H - 18}" text-anchor="middle">offered load (deliveries/s)</text>`);
  svg.push(`<text transform="translate(18 ${(T + H - B) / 2}) rotate(-90)" text-anchor="middle">latency (ms, log scale)</text>`);
  for (const { s, q, pts } of series) {
    const d = pts.map((p, i) => `${i ? 'L' : 'M'}${xs(p.x).toFixed(1)},${ys(p.y).toFixed(1)}`).join(' ');
    const dash = q === 'p50' ? ' stroke-dasharray="6,4"' : '';
    svg.push(`<path d="${d}" fill="none" stroke="${colors[s]}" stroke-width="2"${dash}/>`);
    for (const p of pts) {
      svg.push(`<circle cx="${xs(p.x).toFixed(1)}" cy="${ys(p.y).toFixed(1)}" r="3.5" fill="${p.ok ? colors[s] : 'white'}" stroke="${colors[s]}" stroke-width="1.5"/>`);
    }
  }
  let ly = T + 10;
  for (const { s, q } of series) {
    const dash = q === 'p50' ? ' stroke-dasharray="6,4"' : '';
    svg.push(`<line x1="${W - R + 14}" x2="${W - R + 44}" y1="${ly}" y2="${ly}" stroke="${colors[s]}" stroke-width="2"${dash}/>`);
    svg.push(`<text x="${W - R + 50}" y="${ly + 4}">${NAMES[s]} ${q}</text>`);
    ly += 20;
  }
  svg.push(`<circle cx="${W - R + 29}" cy="${ly + 4}" r="3.5" fill="white" stroke="#333" stroke-width="1.5"/>`);
  svg.push(`<text x="${W - R + 50}" y="${ly + 8}">not sustained</text>`);
  svg.push('</svg>');
  return svg.join('\n');
}
const svg = chart();
if (svg) fs.writeFileSync(path.join(dir, 'latency.svg'), svg + '\n');
console.log(`wrote ${path.join(dir, 'report.md')}${svg ? ' and latency.svg' : ''}`);
