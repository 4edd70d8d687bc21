// Accessibility basics: names for every control, a live message log, text contrast (WCAG AA,
// 4.5:1) in light and dark mode, timestamps in the reader's locale and time zone, and a long
// history that scrolls without yanking the reader around.

import assert from 'node:assert/strict';
import {
  login,
  proxyWebSockets,
  say,
  scenario,
  send,
  suite,
  waitForMessage,
  waitForText,
  waitInPage,
} from './browser-harness.mjs';

const h = suite();

// ---------------------------------------------------------------------------------------------
// Contrast (WCAG 2.x relative luminance and contrast ratio)

function parseColor(text) {
  const m = /^rgba?\(\s*([\d.]+)[,\s]+([\d.]+)[,\s]+([\d.]+)(?:\s*[,/]\s*([\d.]+%?))?\s*\)$/.exec(text.trim());
  if (!m) throw new Error(`cannot parse the colour ${JSON.stringify(text)}`);
  let alpha = m[4] === undefined ? 1 : parseFloat(m[4]);
  if (m[4]?.endsWith('%')) alpha /= 100;
  return { r: Number(m[1]), g: Number(m[2]), b: Number(m[3]), a: alpha };
}

/** `top` drawn over the opaque `bottom`. */
function over(top, bottom) {
  const mix = (c) => top[c] * top.a + bottom[c] * (1 - top.a);
  return { r: mix('r'), g: mix('g'), b: mix('b'), a: 1 };
}

function luminance({ r, g, b }) {
  const channel = (v) => {
    const s = v / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
}

function contrastRatio(fg, bg) {
  const [hi, lo] = [luminance(fg), luminance(bg)].sort((a, b) => b - a);
  return (hi + 0.05) / (lo + 0.05);
}

/**
 * Runs in the page: for each [label, element, pseudo?] sample, the text colour and the stack of
 * background colours from the element up to the root (the test composites them).
 */
function colourSamples() {
  const samples = [];
  const backgrounds = (el) => {
    const stack = [];
    for (let node = el; node && node.nodeType === 1; node = node.parentElement) {
      stack.push(getComputedStyle(node).backgroundColor);
    }
    return stack;
  };
  const add = (label, el, pseudo) => {
    if (!el) throw new Error(`no element for ${label}`);
    const style = getComputedStyle(el, pseudo);
    samples.push({ label, color: style.color, backgrounds: backgrounds(el), size: style.fontSize });
  };
  const log = document.getElementById('messages');
  // A probe: a copy of a real entry (so it gets the page's real rules), removed afterwards.
  const probes = [];
  const probe = (original, setup) => {
    const copy = original.cloneNode(true);
    setup?.(copy);
    original.parentElement.append(copy);
    probes.push(copy);
    return copy;
  };

  const other = log.querySelector('.message:not(.own):not(.mention)');
  const own = log.querySelector('.message.own');
  const mention = log.querySelector('.message.mention');
  for (const [kind, message] of [['message', other], ['own message', own], ['mention', mention]]) {
    add(`${kind} body`, message.querySelector('.body'));
    add(`${kind} time`, message.querySelector('time'));
    add(`${kind} link`, message.querySelector('.body a'));
    for (let i = 0; i < 12; i += 1) {
      const copy = probe(message, (c) => { c.querySelector('.author').dataset.color = String(i); });
      add(`${kind} author colour ${i}`, copy.querySelector('.author'));
    }
  }
  const pending = probe(own, (c) => {
    c.classList.add('pending');
    c.dataset.status = 'pending';
    c.querySelector('.meta').insertAdjacentHTML('beforeend', '<span class="delivery">Sending…</span>');
  });
  add('pending message body', pending.querySelector('.body'));
  add('pending delivery note', pending.querySelector('.delivery'));
  const failed = probe(own, (c) => {
    c.classList.add('failed');
    c.insertAdjacentHTML('beforeend', '<p class="delivery">Not sent: connection lost. <button class="retry" type="button">Retry</button></p>');
  });
  add('failed delivery note', failed.querySelector('.delivery'));
  add('retry button', failed.querySelector('.retry'));

  const notice = log.querySelector('.notice');
  add('notice', notice);
  add('warning notice', probe(notice, (c) => c.classList.add('warning')));
  add('error notice', probe(notice, (c) => c.classList.add('error')));
  add('divider', log.querySelector('.divider'));
  add('typing', document.getElementById('typing'));
  add('composer hint', document.getElementById('composer-hint'));
  add('composer hint (over the limit)', probe(document.getElementById('composer-hint'), (c) => {
    c.removeAttribute('id');
    c.classList.add('error');
  }));
  add('composer text', document.getElementById('composer'));
  add('composer placeholder', document.getElementById('composer'), '::placeholder');
  add('send button', document.getElementById('send'));
  add('participants', document.getElementById('participants'));
  add('brand', document.querySelector('.topbar .brand'));
  add('users heading', document.getElementById('users-heading'));
  const me = document.querySelector('#users li.me');
  add('users list "(you)"', me, '::after');
  for (let i = 0; i < 12; i += 1) {
    add(`users list colour ${i}`, probe(me, (c) => { c.className = ''; c.dataset.color = String(i); }));
  }
  const newMessages = document.getElementById('new-messages');
  add('new messages button', probe(newMessages, (c) => { c.removeAttribute('id'); c.hidden = false; }));
  const status = document.getElementById('status');
  for (const state of ['connected', 'reconnecting', 'disconnected']) {
    add(`status banner (${state})`, probe(status, (c) => {
      c.removeAttribute('id');
      c.removeAttribute('role');
      c.dataset.state = state;
      c.textContent = 'Connection lost. Reconnecting…';
    }));
  }
  for (const copy of probes) copy.remove();
  return samples;
}

function ratios(samples) {
  return samples.map(({ label, color, backgrounds }) => {
    // Composite the background stack from the root down, over a white canvas.
    let bg = { r: 255, g: 255, b: 255, a: 1 };
    for (const layer of [...backgrounds].reverse()) bg = over(parseColor(layer), bg);
    const fg = over(parseColor(color), bg);
    return { label, ratio: Math.round(contrastRatio(fg, bg) * 100) / 100, color, background: bg };
  });
}

/** A chat with every kind of entry the contrast check looks at. */
async function busyChat(page, server) {
  const bob = await h.client(server.url, 'bob');
  await say(bob, 'this was said before you came: https://example.com/earlier');
  await login(page, 'ada');
  await send(page, 'my own message with a link https://example.com/own');
  await say(bob, 'a plain message https://example.com/plain');
  await say(bob, 'a message that mentions ada https://example.com/mention');
  await waitForMessage(page, 'a message that mentions ada https://example.com/mention', { from: 'bob' });
  bob.emit('typing');
  await waitForText(page, '#typing', 'bob is typing');
  await page.locator('#composer').fill('x'.repeat(1850));
  await page.locator('#composer').dispatchEvent('input');
  await waitForText(page, '#composer-hint', '150 left');
  return bob;
}

for (const colorScheme of ['light', 'dark']) {
  scenario(h, `text contrast is at least 4.5:1 in ${colorScheme} mode`, async (t) => {
    const server = await h.server();
    const page = await h.page(server.url, { contextOptions: { colorScheme } });

    // The login screen first.
    await page.locator('#nickname').fill('');
    await page.locator('#join').click(); // shows the error text
    await waitForText(page, '#login-error', 'Please enter a nickname.');
    const loginSamples = await page.evaluate(() => {
      const out = [];
      const backgrounds = (el) => {
        const stack = [];
        for (let node = el; node && node.nodeType === 1; node = node.parentElement) stack.push(getComputedStyle(node).backgroundColor);
        return stack;
      };
      for (const [label, sel] of [
        ['login heading', '.login-card .brand'],
        ['tagline', '.tagline'],
        ['nickname label', 'label[for="nickname"]'],
        ['nickname text', '#nickname'],
        ['login error', '#login-error'],
        ['join button', '#join'],
      ]) {
        const el = document.querySelector(sel);
        out.push({ label, color: getComputedStyle(el).color, backgrounds: backgrounds(el) });
      }
      return out;
    });

    await busyChat(page, server);
    const all = ratios([...loginSamples, ...(await page.evaluate(colourSamples))]);
    const failing = all.filter((s) => !(s.ratio >= 4.5));
    t.diagnostic(`lowest: ${[...all].sort((a, b) => a.ratio - b.ratio).slice(0, 3).map((s) => `${s.label} ${s.ratio}`).join(', ')}`);
    assert.deepEqual(failing, [], `text below 4.5:1 in ${colorScheme} mode`);
    assert.ok(all.length > 60, `checked ${all.length} text samples`);

    // Non-text contrast (WCAG 1.4.11, 3:1): the composer's border and the keyboard focus ring.
    const ui = await page.evaluate(() => {
      const composer = document.getElementById('composer');
      const surface = getComputedStyle(composer.closest('.conversation')).backgroundColor;
      const border = getComputedStyle(composer).borderTopColor;
      document.getElementById('send').focus({ focusVisible: true });
      const ring = getComputedStyle(document.getElementById('send')).outlineColor;
      return { surface, border, ring };
    });
    const surface = parseColor(ui.surface);
    assert.ok(contrastRatio(parseColor(ui.border), surface) >= 3, `input border ${ui.border} on ${ui.surface}`);
    assert.ok(contrastRatio(parseColor(ui.ring), surface) >= 3, `focus ring ${ui.ring} on ${ui.surface}`);
  });
}

scenario(h, 'every control has an accessible name, and the log and status are live regions', async () => {
  const server = await h.server();
  const page = await h.page(server.url);

  // Roles and names as assistive technology computes them (Playwright's accessibility tree).
  const unnamed = (snapshot) =>
    snapshot
      .split('\n')
      .filter((line) => /^\s*- (textbox|button|combobox|checkbox|radio|link|log|list|complementary|region)\b(?! ")/.test(line))
      .filter((line) => !/^\s*- list:?$/.test(line)); // a plain list needs no name
  const loginTree = await page.locator('body').ariaSnapshot();
  assert.deepEqual(unnamed(loginTree), [], `unnamed controls on the login screen:\n${loginTree}`);
  assert.equal(await page.getByRole('textbox', { name: 'Nickname', exact: true }).count(), 1);
  assert.equal(await page.getByRole('button', { name: 'Join chat', exact: true }).count(), 1);
  assert.equal(await page.locator('#nickname').getAttribute('aria-describedby'), 'login-error');
  assert.equal(await page.locator('#login-error').getAttribute('role'), 'alert');

  await login(page, 'lin');
  await page.locator('#composer').fill('x'.repeat(1900));
  await page.locator('#composer').dispatchEvent('input');
  const chatTree = await page.locator('body').ariaSnapshot();
  assert.deepEqual(unnamed(chatTree), [], `unnamed controls in the chat:\n${chatTree}`);
  assert.equal(await page.getByRole('textbox', { name: 'Message', exact: true }).count(), 1);
  assert.equal(await page.getByRole('button', { name: 'Send', exact: true }).count(), 1);
  assert.equal(await page.getByRole('complementary', { name: 'Online' }).count(), 1);

  // Every form control in the document has a label, whether shown now or not.
  const controls = await page.evaluate(() =>
    [...document.querySelectorAll('input, textarea, select, button')].map((el) => ({
      id: el.id || el.outerHTML.slice(0, 60),
      labelled:
        [...(el.labels ?? [])].some((l) => l.textContent.trim()) ||
        Boolean(el.getAttribute('aria-label')?.trim()) ||
        Boolean(el.getAttribute('aria-labelledby')) ||
        (el.tagName === 'BUTTON' && el.textContent.trim() !== ''),
    })),
  );
  assert.deepEqual(controls.filter((c) => !c.labelled), []);

  // The log announces new messages politely; the status banner too.
  const log = page.getByRole('log', { name: 'Messages' });
  assert.equal(await log.count(), 1);
  assert.equal(await log.getAttribute('id'), 'messages');
  assert.equal(await log.getAttribute('aria-live'), 'polite');
  assert.equal(await page.locator('#status').getAttribute('role'), 'status');
  assert.match((await page.locator('#composer-hint').getAttribute('aria-live')) ?? '', /polite|assertive/);
  assert.equal(await page.locator('#composer').getAttribute('aria-describedby'), 'composer-hint');
  assert.equal(await page.locator('html').getAttribute('lang'), 'en');
  assert.equal(await page.locator('#messages').getAttribute('tabindex'), '0', 'the log can be scrolled with the keyboard');
});

/** Epoch ms of today's `hour`:`minute` wall-clock time in `timeZone`. */
function todayAt(hour, minute, timeZone) {
  const parts = (ts) =>
    Object.fromEntries(
      new Intl.DateTimeFormat('en-CA', {
        timeZone, hourCycle: 'h23', year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', minute: 'numeric',
      }).formatToParts(ts).map((p) => [p.type, Number(p.value)]),
    );
  const now = parts(Date.now());
  const guess = Date.UTC(now.year, now.month - 1, now.day, hour, minute);
  const there = parts(guess);
  const offset = Date.UTC(there.year, there.month - 1, there.day, there.hour, there.minute) - guess;
  return guess - offset;
}

scenario(h, 'timestamps follow the reader’s locale and time zone (de-DE, Europe/Berlin)', async () => {
  const timeZone = 'Europe/Berlin';
  const server = await h.server();
  const bob = await h.client(server.url, 'bob');
  const early = await say(bob, 'Guten Morgen aus dem Verlauf');
  let proxy;
  const page = await h.page(server.url, {
    path: '/?transports=websocket',
    contextOptions: { locale: 'de-DE', timezoneId: timeZone },
    beforeGoto: async ({ context }) => {
      proxy = await proxyWebSockets(context);
    },
  });
  await login(page, 'jana');
  const live = await say(bob, 'Und eine neue Nachricht');
  await waitForMessage(page, 'Und eine neue Nachricht', { from: 'bob' });
  await send(page, 'Hallo!');

  // Two early-morning times whatever the hour of the run (the server stamps messages with the
  // real time): the proxy rewrites their ts on the way to the page.
  const forced = {
    'Frühstück heute': todayAt(7, 5, timeZone),
    'Frühstück im Januar': Date.UTC(2026, 0, 15, 6, 5), // 07:05 in Berlin (CET)
  };
  proxy.transform = (frame) => {
    if (!frame.startsWith('42["new message",')) return [frame];
    const [event, msg] = JSON.parse(frame.slice(2));
    if (!(msg.message in forced)) return [frame];
    return [`42${JSON.stringify([event, { ...msg, ts: forced[msg.message] }])}`];
  };
  const forcedIds = {};
  for (const text of Object.keys(forced)) forcedIds[text] = (await say(bob, text)).id;
  await waitForMessage(page, 'Frühstück im Januar', { from: 'bob' });

  // What a German reader expects: the locale's own short time ("07:05", never "7:05 AM"), or day
  // and time for another day; the machine-readable time in `datetime`; the full date on hover.
  const clock = new Intl.DateTimeFormat('de-DE', { timeStyle: 'short', timeZone });
  const withDay = new Intl.DateTimeFormat('de-DE', { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', timeZone });
  const full = new Intl.DateTimeFormat('de-DE', { dateStyle: 'full', timeStyle: 'medium', timeZone });
  const shown = async (id) => {
    const time = page.locator(`#messages .message[data-id="${id}"] time`);
    return { text: await time.textContent(), datetime: await time.getAttribute('datetime'), title: await time.getAttribute('title') };
  };
  const ownId = await page.locator('#messages .message.own').getAttribute('data-id');
  const ownTs = Date.parse(await page.locator('#messages .message.own time').getAttribute('datetime'));
  assert.ok(Math.abs(ownTs - Date.now()) < 60_000, 'the own message carries the server time');
  const cases = [
    ['history', early.id, early.ts],
    ['live', live.id, live.ts],
    ['own', ownId, ownTs],
    ['07:05 today', forcedIds['Frühstück heute'], forced['Frühstück heute']],
    ['07:05 on 15 January', forcedIds['Frühstück im Januar'], forced['Frühstück im Januar']],
  ];
  for (const [what, id, ts] of cases) {
    const got = await shown(id);
    assert.equal(got.datetime, new Date(ts).toISOString(), `${what}: datetime holds the time in ISO form`);
    assert.ok(
      got.text === clock.format(ts) || got.text === withDay.format(ts),
      `${what}: "${got.text}" is the de-DE time in Berlin (${clock.format(ts)} or ${withDay.format(ts)})`,
    );
    assert.equal(got.title, full.format(ts), `${what}: the tooltip has the full German date`);
  }
  assert.equal((await shown(forcedIds['Frühstück heute'])).text, '07:05');
  assert.equal((await shown(forcedIds['Frühstück im Januar'])).text, '15. Jan., 07:05');
});

scenario(h, 'a long history scrolls, follows new messages at the bottom, and never yanks a reader who scrolled up', async () => {
  const server = await h.server({ BANTER_HISTORY_LEN: 200, BANTER_MESSAGE_RATE: 1000, BANTER_MESSAGE_BURST: 1000 });
  const bob = await h.client(server.url, 'bob');
  for (let i = 1; i <= 150; i += 1) await say(bob, `history line ${i}`);
  const page = await h.page(server.url);
  await login(page, 'reader');
  await waitForMessage(page, 'history line 150');
  assert.equal(await page.locator('#messages .message').count(), 150);

  const geometry = () =>
    page.evaluate(() => {
      const log = document.getElementById('messages');
      return {
        scrollTop: log.scrollTop,
        scrollHeight: log.scrollHeight,
        clientHeight: log.clientHeight,
        fromBottom: log.scrollHeight - log.scrollTop - log.clientHeight,
        buttonShown: !document.getElementById('new-messages').hidden,
      };
    });
  const atBottom = (what) =>
    waitInPage(page, what, () => {
      const log = document.getElementById('messages');
      return log.scrollHeight - log.scrollTop - log.clientHeight <= 1;
    }, undefined, { describe: () => { const l = document.getElementById('messages'); return [l.scrollTop, l.scrollHeight, l.clientHeight]; } });

  const start = await geometry();
  assert.ok(start.scrollHeight > start.clientHeight * 3, `the log is scrollable: ${JSON.stringify(start)}`);
  assert.equal(await page.evaluate(() => getComputedStyle(document.body).overflow), 'hidden', 'only the log scrolls');
  await atBottom('the log to open at the newest message');

  // At the bottom: a new message keeps the view at the bottom, no button.
  await say(bob, 'new while at the bottom');
  await waitForMessage(page, 'new while at the bottom');
  await atBottom('the log to follow the new message');
  assert.equal((await geometry()).buttonShown, false);

  // Scrolled up (with the mouse wheel): a new message does not move the view; the button shows.
  const box = await page.locator('#messages').boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.wheel(0, -1500);
  await waitInPage(page, 'the log to scroll up', () => {
    const log = document.getElementById('messages');
    return log.scrollHeight - log.scrollTop - log.clientHeight > 1000;
  });
  // Let smooth scrolling (if any) settle: two frames with the same scrollTop.
  await waitInPage(page, 'the scroll position to settle', () => new Promise((resolve) => {
    const log = document.getElementById('messages');
    const before = log.scrollTop;
    requestAnimationFrame(() => requestAnimationFrame(() => resolve(log.scrollTop === before)));
  }));
  const anchor = () =>
    page.evaluate(() => {
      const log = document.getElementById('messages');
      const top = log.getBoundingClientRect().top;
      const first = [...log.querySelectorAll('.message')].find((m) => m.getBoundingClientRect().bottom > top);
      return { id: first.dataset.id, offset: Math.round(first.getBoundingClientRect().top - top), scrollTop: log.scrollTop };
    });
  const before = await anchor();
  await say(bob, 'new while reading old ones');
  await waitForMessage(page, 'new while reading old ones');
  await page.locator('#new-messages').waitFor({ state: 'visible' });
  const afterMessage = await anchor();
  assert.deepEqual(afterMessage, before, 'the view did not move');
  const buttonBox = await page.locator('#new-messages').boundingBox();
  assert.ok(buttonBox.y + buttonBox.height <= box.y + box.height, 'the button sits over the log, not over the composer');

  // The button takes the reader to the newest message and hands focus back to the composer.
  await page.locator('#new-messages').click();
  await atBottom('the button to scroll to the newest message');
  await page.locator('#new-messages').waitFor({ state: 'hidden' });
  assert.equal(await page.evaluate(() => document.activeElement.id), 'composer');

  // Scrolled up again: reaching the bottom by hand hides the button too.
  await page.mouse.wheel(0, -1500);
  await waitInPage(page, 'the log to scroll up again', () => {
    const log = document.getElementById('messages');
    return log.scrollHeight - log.scrollTop - log.clientHeight > 1000;
  });
  await say(bob, 'another one while reading');
  await page.locator('#new-messages').waitFor({ state: 'visible' });
  await page.mouse.wheel(0, 5000);
  await page.locator('#new-messages').waitFor({ state: 'hidden' });

  // Sending your own message while scrolled up takes you to it.
  await page.mouse.wheel(0, -1500);
  await waitInPage(page, 'the log to scroll up once more', () => {
    const log = document.getElementById('messages');
    return log.scrollHeight - log.scrollTop - log.clientHeight > 1000;
  });
  await send(page, 'my reply');
  await atBottom('the log to show the own message');
});
