// No layout jumps: transient things (errors, typing notices, hints, the status banner, delivery
// states) appear without moving what the reader is looking at or aiming for.

import assert from 'node:assert/strict';
import {
  login,
  scenario,
  send,
  suite,
  waitForStatus,
  waitForText,
  waitInPage,
} from './browser-harness.mjs';

const h = suite();

const boxes = (page, selectors) =>
  page.evaluate(
    (list) =>
      Object.fromEntries(
        list.map((sel) => {
          const r = document.querySelector(sel).getBoundingClientRect();
          return [sel, [r.x, r.y, r.width, r.height].map((v) => Math.round(v * 10) / 10)];
        }),
      ),
    selectors,
  );

scenario(h, 'errors, typing notices, hints and the status banner do not move the layout', async () => {
  const server = await h.server();
  const page = await h.page(server.url);

  // Login: the error line is reserved, so the Join button stays put.
  const loginBefore = await boxes(page, ['#nickname', '#join']);
  await page.locator('#join').click();
  await waitForText(page, '#login-error', 'Please enter a nickname.');
  assert.deepEqual(await boxes(page, ['#nickname', '#join']), loginBefore, 'the login error moved the form');

  await login(page, 'steady');
  const watched = ['.topbar', '#messages', '#composer', '#send', '#sidebar'];
  const chatBefore = await boxes(page, watched);

  const bob = await h.client(server.url, 'bob');
  await waitForText(page, '#participants', '2 participants');
  bob.emit('typing');
  await waitForText(page, '#typing', 'bob is typing');
  assert.deepEqual(await boxes(page, watched), chatBefore, 'the typing notice moved the layout');

  await page.locator('#composer').fill('y'.repeat(1900));
  await page.locator('#composer').dispatchEvent('input');
  await waitForText(page, '#composer-hint', '100 left');
  assert.deepEqual(await boxes(page, watched), chatBefore, 'the length hint moved the layout');
  await page.locator('#composer').fill('y'.repeat(2001));
  await page.locator('#composer').dispatchEvent('input');
  await waitForText(page, '#composer-hint', 'Too long: 2000 characters at most');
  assert.deepEqual(await boxes(page, watched), chatBefore, 'the over-the-limit hint moved the layout');

  // Many participants: the count grows a digit, the top bar keeps its height.
  const others = [];
  for (let i = 0; i < 9; i += 1) others.push(await h.client(server.url, `guest${i}`));
  await waitForText(page, '#participants', '11 participants');
  assert.deepEqual(await boxes(page, watched), chatBefore, 'a longer participant count moved the layout');

  await server.stop();
  await waitForStatus(page, 'reconnecting');
  await page.locator('#status').waitFor({ state: 'visible' });
  assert.deepEqual(await boxes(page, watched), chatBefore, 'the status banner moved the layout');
  // The banner floats over the top bar, not over the conversation or the composer.
  const banner = await page.locator('#status').boundingBox();
  const log = await page.locator('#messages').boundingBox();
  assert.ok(banner.y + banner.height <= log.y + 12, `the banner stays at the top: ${JSON.stringify(banner)}`);
});

scenario(h, 'a message does not change height when the server confirms it', async () => {
  const server = await h.server();
  const delayMs = 600;
  const page = await h.page(server.url, {
    // A slow network: everything from the server reaches the page 600 ms late.
    beforeGoto: ({ context }) =>
      context.routeWebSocket(/\/socket\.io\//, (ws) => {
        const upstream = ws.connectToServer();
        upstream.onMessage((message) => setTimeout(() => ws.send(message), delayMs));
      }),
  });
  await login(page, 'patient');
  await waitInPage(page, 'the upgrade to WebSocket', () => document.getElementById('status').dataset.state === 'connected');
  await send(page, 'warming up');

  // Measure the message and the log while the message is pending, then once it is sent.
  const measure = () =>
    page.evaluate(() => {
      const own = [...document.querySelectorAll('#messages .message.own')].at(-1);
      const log = document.getElementById('messages');
      return { status: own.dataset.status, height: own.getBoundingClientRect().height, logHeight: log.scrollHeight };
    });
  await page.locator('#composer').fill('a message on a slow line');
  await page.locator('#composer').press('Enter');
  const pending = await measure();
  assert.equal(pending.status, 'pending', 'measured while the message waits for its ack');
  await waitInPage(page, 'the ack', () => [...document.querySelectorAll('#messages .message.own')].at(-1).dataset.status === 'sent');
  const sent = await measure();
  assert.equal(sent.height, pending.height, `the message changed height from ${pending.height} to ${sent.height}px`);
  assert.equal(sent.logHeight, pending.logHeight, 'the log changed height when the ack came');
  // The pending state is still shown, just not on a line of its own.
  await page.locator('#composer').fill('another one');
  await page.locator('#composer').press('Enter');
  const note = page.locator('#messages .message.own[data-status="pending"] .delivery');
  assert.equal(await note.textContent(), 'Sending…');
});
