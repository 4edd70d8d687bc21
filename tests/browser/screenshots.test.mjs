// Pictures of the page for people: the login screen, the chat at desktop and phone size, and the
// reconnecting state. Always written to test-output/screenshots/ (build output). The four used
// by the docs are copied to docs/screenshots/ when missing there, or when
// BANTER_UPDATE_SCREENSHOTS=1 (they show wall-clock times, so every run would change them).

import assert from 'node:assert/strict';
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import {
  DOCS_SCREENSHOT_DIR,
  PHONE,
  login,
  say,
  scenario,
  screenshot,
  send,
  suite,
  waitForMessage,
  waitForStatus,
  waitForText,
  waitForUsers,
} from './browser-harness.mjs';

const h = suite();
const MAX_BYTES = 200 * 1024;
const DOCS = ['login', 'chat-desktop', 'chat-phone', 'reconnecting'];
const updateDocs = process.env.BANTER_UPDATE_SCREENSHOTS === '1';

/** Width and height from a PNG's IHDR chunk. */
function pngSize(file) {
  const bytes = readFileSync(file);
  assert.equal(bytes.toString('latin1', 1, 4), 'PNG', `${file} is a PNG`);
  return { width: bytes.readUInt32BE(16), height: bytes.readUInt32BE(20) };
}

async function shoot(page, name) {
  const toDocs = DOCS.includes(name) && (updateDocs || !existsSync(path.join(DOCS_SCREENSHOT_DIR, `${name}.png`)));
  const file = await screenshot(page, name, { toDocs });
  const { size } = statSync(file);
  assert.ok(size < MAX_BYTES, `${name}.png is ${size} bytes, over ${MAX_BYTES}`);
  assert.deepEqual(pngSize(file), page.viewportSize(), `${name}.png has the viewport's size (scale factor 1)`);
  return file;
}

scenario(h, 'screenshots: login, chat on desktop and phone, reconnecting', async (t) => {
  const server = await h.server({ BANTER_RECONNECT_GRACE_MS: 30_000 });
  const maya = await h.client(server.url, 'Maya');
  const jonas = await h.client(server.url, 'Jonas');
  await say(maya, 'Morning all! Is the release still planned for Thursday?');
  await say(jonas, 'Yes, the last fixes went in yesterday. Notes are here: https://example.com/releases/2.4');
  await say(maya, 'Great, I will tell the support team.');

  const desk = await h.page(server.url);
  await desk.locator('#nickname').fill('Sam');
  await shoot(desk, 'login');

  await login(desk, 'Sam');
  await waitForMessage(desk, 'Great, I will tell the support team.');
  await say(jonas, 'Welcome Sam! Could you double-check the migration guide before Thursday?');
  await waitForMessage(desk, 'Welcome Sam! Could you double-check the migration guide before Thursday?');
  await send(desk, 'Sure, I will read it this afternoon and leave comments in the doc.');
  const priya = await h.client(server.url, 'Priya');
  await say(priya, 'Sorry I am late, what did I miss?');
  await waitForMessage(desk, 'Sorry I am late, what did I miss?');
  priya.emit('typing');
  await waitForText(desk, '#typing', 'Priya is typing');
  await waitForUsers(desk, ['Jonas', 'Maya', 'Priya', 'Sam']);
  await shoot(desk, 'chat-desktop');

  const phone = await h.page(server.url, { contextOptions: PHONE });
  await login(phone, 'Lea');
  await waitForMessage(desk, 'Sure, I will read it this afternoon and leave comments in the doc.');
  await say(maya, 'Hi Lea! The release is on Thursday, details above.');
  await waitForMessage(phone, 'Hi Lea! The release is on Thursday, details above.');
  await send(phone, 'Thanks Maya, reading up now.');
  await shoot(phone, 'chat-phone');
  await phone.locator('#users-toggle').tap();
  await phone.locator('#sidebar').waitFor({ state: 'visible' });
  await shoot(phone, 'chat-phone-people');

  priya.emit('stop typing');
  await waitForText(desk, '#typing', '');
  await server.stop();
  await waitForStatus(desk, 'reconnecting');
  await desk.locator('#status').waitFor({ state: 'visible' });
  await shoot(desk, 'reconnecting');

  t.diagnostic(
    updateDocs ? `docs/screenshots updated: ${DOCS.join(', ')}` : 'docs/screenshots kept (BANTER_UPDATE_SCREENSHOTS=1 refreshes them)',
  );
  for (const name of DOCS) assert.ok(existsSync(path.join(DOCS_SCREENSHOT_DIR, `${name}.png`)), `docs/screenshots/${name}.png`);
});
