// A phone (390x844, touch): logging in and sending work, nothing scrolls sideways, the composer
// stays on screen, and the people list opens from its toggle.

import assert from 'node:assert/strict';
import {
  PHONE,
  login,
  say,
  scenario,
  send,
  suite,
  waitForMessage,
  waitForText,
  waitInPage,
} from './browser-harness.mjs';

const h = suite();

// Long unbroken content is what usually pushes a phone layout sideways.
const LONG_NAME = 'Maximilianus_Ferdinand_Rosenkranz'.slice(0, 32);
const LONG_WORD = `${'Donaudampfschifffahrtsgesellschaft'.repeat(4)}!`;
const LONG_URL = `https://example.com/${'very-long-path-segment/'.repeat(8)}index.html?query=${'x'.repeat(60)}`;

const horizontalOverflow = (page) =>
  page.evaluate(() => ({
    document: document.documentElement.scrollWidth - document.documentElement.clientWidth,
    body: document.body.scrollWidth - document.body.clientWidth,
    log: (() => {
      const log = document.getElementById('messages');
      return log.scrollWidth - log.clientWidth;
    })(),
  }));

/** The element's box lies inside the visual viewport. */
async function assertOnScreen(page, selector) {
  const box = await page.locator(selector).boundingBox();
  assert.ok(box, `${selector} is rendered`);
  const { width, height } = page.viewportSize();
  assert.ok(
    box.x >= 0 && box.y >= 0 && box.x + box.width <= width + 0.5 && box.y + box.height <= height + 0.5,
    `${selector} is on screen: ${JSON.stringify(box)} in ${width}x${height}`,
  );
}

scenario(h, 'on a phone, login and chat work without sideways scrolling and the people list opens', async () => {
  const server = await h.server();
  const friend = await h.client(server.url, LONG_NAME);
  await say(friend, LONG_WORD);
  const page = await h.page(server.url, { contextOptions: PHONE });
  assert.equal(await page.evaluate(() => navigator.maxTouchPoints > 0 && matchMedia('(pointer: coarse)').matches), true);

  assert.deepEqual(await horizontalOverflow(page), { document: 0, body: 0, log: 0 }, 'login: nothing overflows sideways');
  await assertOnScreen(page, '#nickname');
  await assertOnScreen(page, '#join');
  await page.locator('#nickname').tap();
  await page.locator('#nickname').fill('phone');
  await page.locator('#join').tap();
  await page.locator('#chat').waitFor({ state: 'visible' });
  await waitForMessage(page, LONG_WORD, { from: LONG_NAME });

  // Tapping into the composer and sending.
  await page.locator('#composer').tap();
  await page.locator('#composer').fill(`look: ${LONG_URL}`);
  await page.locator('#send').tap();
  await waitForMessage(page, `look: ${LONG_URL}`);
  assert.equal(
    await page.evaluate(() => document.activeElement?.id),
    'composer',
    'tapping Send leaves the focus (and the on-screen keyboard) in the composer',
  );
  await send(page, 'and a short one');
  await waitForMessage(page, `look: ${LONG_URL}`);
  await say(friend, `${LONG_URL} ${LONG_WORD}`);
  await waitForMessage(page, `${LONG_URL} ${LONG_WORD}`, { from: LONG_NAME });

  const overflow = await horizontalOverflow(page);
  assert.deepEqual(overflow, { document: 0, body: 0, log: 0 }, 'chat: nothing overflows sideways');
  for (const selector of ['#composer', '#send', '#users-toggle', '#participants']) await assertOnScreen(page, selector);
  const sendBox = await page.locator('#send').boundingBox();
  assert.ok(sendBox.height >= 44 && sendBox.width >= 44, `Send is a comfortable tap target: ${JSON.stringify(sendBox)}`);

  // The people list is behind the toggle on a phone.
  const toggle = page.locator('#users-toggle');
  assert.equal(await page.locator('#sidebar').isVisible(), false, 'the people list starts closed');
  assert.equal(await toggle.getAttribute('aria-expanded'), 'false');
  await toggle.tap();
  await page.locator('#sidebar').waitFor({ state: 'visible' });
  assert.equal(await toggle.getAttribute('aria-expanded'), 'true');
  const names = await page.locator('#users li').allTextContents();
  assert.deepEqual(names.sort(), [LONG_NAME, 'phone'].sort());
  await assertOnScreen(page, '#sidebar');
  assert.equal((await horizontalOverflow(page)).document, 0, 'the open list does not overflow sideways');
  await toggle.tap();
  await page.locator('#sidebar').waitFor({ state: 'hidden' });
  assert.equal(await toggle.getAttribute('aria-expanded'), 'false');

  await waitForText(page, '#participants', '2 participants');
  assert.deepEqual(h.errors(page), []);
});

scenario(h, 'on a phone the composer stays on screen with a long conversation', async () => {
  const server = await h.server({ BANTER_MESSAGE_RATE: 500, BANTER_MESSAGE_BURST: 500 });
  const friend = await h.client(server.url, 'chatty');
  for (let i = 1; i <= 40; i += 1) await say(friend, `message number ${i} with a little text to fill the line`);
  const page = await h.page(server.url, { contextOptions: PHONE });
  await login(page, 'reader');
  await waitForMessage(page, 'message number 40 with a little text to fill the line');
  await assertOnScreen(page, '#composer');
  await assertOnScreen(page, '#send');
  // The newest message is visible above the composer, not hidden behind it.
  await waitInPage(page, 'the newest message to be in view', () => {
    const log = document.getElementById('messages').getBoundingClientRect();
    const last = [...document.querySelectorAll('#messages .message')].at(-1).getBoundingClientRect();
    return last.bottom <= log.bottom + 1 && last.top >= log.top - 1;
  });
  assert.equal((await horizontalOverflow(page)).document, 0);
});
