// Keyboard only, no mouse: the nickname field has focus on arrival, Enter logs in, focus moves to
// the composer, Enter sends, Tab reaches Send; on a narrow screen Escape closes the people list.

import assert from 'node:assert/strict';
import {
  PHONE,
  scenario,
  suite,
  waitForMessage,
  waitInPage,
  waitForNodeMessage,
  waitForUsers,
} from './browser-harness.mjs';

const h = suite();

const focused = (page) =>
  page.evaluate(() => {
    const el = document.activeElement;
    return el && el !== document.body ? el.id || `${el.tagName.toLowerCase()}.${el.className}` : null;
  });

const waitForFocus = (page, id) =>
  waitInPage(page, `focus on #${id}`, (want) => document.activeElement?.id === want, id, {
    describe: () => document.activeElement?.outerHTML.slice(0, 120),
  });

scenario(h, 'keyboard only: log in, send, and reach Send with Tab', async (t) => {
  const server = await h.server();
  const friend = await h.client(server.url, 'friend');
  const page = await h.page(server.url);

  await waitForFocus(page, 'nickname');
  await page.keyboard.type('kiki');
  await page.keyboard.press('Enter');
  await page.locator('#chat').waitFor({ state: 'visible' });
  await waitForFocus(page, 'composer');
  await waitForUsers(page, ['friend', 'kiki']);

  await page.keyboard.type('typed, not clicked');
  await page.keyboard.press('Enter');
  await waitForNodeMessage(friend, 'typed, not clicked', { from: 'kiki' });
  assert.equal(await page.locator('#composer').inputValue(), '', 'the composer is emptied after sending');
  assert.equal(await focused(page), 'composer', 'focus stays in the composer for the next message');

  // Tab goes from the composer to Send, and Send works from the keyboard too.
  await page.keyboard.type('sent with the button');
  await page.keyboard.press('Tab');
  assert.equal(await focused(page), 'send');
  assert.equal(
    await page.evaluate(() => document.activeElement.matches(':focus-visible')),
    true,
    'keyboard focus on Send is visible',
  );
  const outline = await page.locator('#send').evaluate((el) => getComputedStyle(el).outlineStyle);
  assert.notEqual(outline, 'none', 'the focused Send button shows an outline');
  await page.keyboard.press('Enter');
  await waitForNodeMessage(friend, 'sent with the button', { from: 'kiki' });
  await waitForFocus(page, 'composer'); // back in the composer, ready for the next message

  // Tab cycles through the chat in reading order: the log (to scroll it), the composer, Send.
  await page.keyboard.press('Tab'); // to Send
  const order = [];
  for (let i = 0; i < 10 && order.at(-1) !== 'send'; i += 1) {
    await page.keyboard.press('Tab');
    order.push(await focused(page) ?? '(browser)');
  }
  t.diagnostic(`tab order after Send: ${order.join(' → ')}`);
  assert.deepEqual(order.slice(-3), ['messages', 'composer', 'send'], `tab order: ${order.join(' → ')}`);

  // Messages arrive while typing without stealing focus.
  await page.locator('#composer').focus();
  await page.keyboard.type('half a thou');
  await friend.emit('new message', 'interrupting');
  await waitForMessage(page, 'interrupting', { from: 'friend' });
  assert.equal(await focused(page), 'composer');
  assert.equal(await page.locator('#composer').inputValue(), 'half a thou');
});

scenario(h, 'keyboard only on a narrow screen: the people toggle opens with Enter and Escape closes it', async () => {
  const server = await h.server();
  await h.client(server.url, 'friend');
  const page = await h.page(server.url, { contextOptions: { ...PHONE, isMobile: false, hasTouch: false } });
  await waitForFocus(page, 'nickname');
  await page.keyboard.type('kbd');
  await page.keyboard.press('Enter');
  await waitForFocus(page, 'composer');
  const back = [];
  for (let i = 0; i < 6 && back.at(-1) !== 'users-toggle'; i += 1) {
    await page.keyboard.press('Shift+Tab');
    back.push(await focused(page));
  }
  assert.equal(back.at(-1), 'users-toggle', `Shift+Tab from the composer: ${back.join(' → ')}`);
  await page.keyboard.press('Enter');
  await page.locator('#sidebar').waitFor({ state: 'visible' });
  assert.equal(await page.locator('#users-toggle').getAttribute('aria-expanded'), 'true');
  await page.keyboard.press('Escape');
  await page.locator('#sidebar').waitFor({ state: 'hidden' });
  assert.equal(await focused(page), 'users-toggle', 'focus returns to the toggle');
  assert.equal(await page.locator('#users-toggle').getAttribute('aria-expanded'), 'false');
});
