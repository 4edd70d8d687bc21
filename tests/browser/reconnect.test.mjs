// The server restarts mid-chat (a deployment): the page says it is reconnecting, comes back by
// itself under the same nickname, says that history was lost, and shows every message sent after
// the restart exactly once, including those sent while it was still reconnecting.

import assert from 'node:assert/strict';
import {
  countMessages,
  eventually,
  login,
  proxyWebSockets,
  say,
  scenario,
  send,
  suite,
  waitForMessage,
  waitForNodeMessage,
  waitForStatus,
  waitForUsers,
  waitInPage,
} from './browser-harness.mjs';

const h = suite();

// Fast rates so the other person can talk through the page's reconnect without being limited.
const SETTINGS = { BANTER_RECONNECT_GRACE_MS: 5000, BANTER_MESSAGE_RATE: 200, BANTER_MESSAGE_BURST: 200 };

/** Body texts of the messages in the page, in page order, with how often each shows. */
const messageBodies = (page) =>
  page.evaluate(() => [...document.querySelectorAll('#messages .message .body')].map((b) => b.textContent));

scenario(h, 'the page rides out a server restart and shows later messages exactly once', async (t) => {
  const first = await h.server(SETTINGS);
  const page = await h.page(first.url);
  await login(page, 'alice');
  const bob = await h.client(first.url, 'bob');
  await waitForUsers(page, ['alice', 'bob']);
  await say(bob, 'before the restart');
  await waitForMessage(page, 'before the restart', { from: 'bob' });
  await send(page, 'alice before the restart');
  await waitForNodeMessage(bob, 'alice before the restart', { from: 'alice' });

  // Restart. SIGTERM closes every socket; the page must notice and say so, visibly.
  const { port } = first;
  await first.stop();
  await waitForStatus(page, 'reconnecting');
  await page.locator('#status').waitFor({ state: 'visible' });
  assert.match(await page.locator('#status').innerText(), /reconnecting/i);

  // Hold the page back (its reconnect attempts fail as if the server were still starting) until
  // bob has rejoined the new server and talked, so those messages are sent while it is away.
  const holdBack = (route) => route.abort('connectionrefused');
  const socketIoRequests = (url) => url.pathname === '/socket.io/';
  await page.route(socketIoRequests, holdBack);
  const second = await h.server(SETTINGS, { port });
  const bob2 = await h.client(second.url, 'bob');
  const whileAway = [];
  for (let i = 1; i <= 3; i += 1) {
    whileAway.push(`sent while alice reconnects ${i}`);
    await say(bob2, whileAway.at(-1));
  }
  assert.equal(await page.locator('#status').getAttribute('data-state'), 'reconnecting');

  // Let the page through, and keep talking while it reconnects: whichever way each message
  // reaches it (in the rejoin history, or live), it must show once.
  await page.unroute(socketIoRequests, holdBack);
  const duringRejoin = [];
  const connected = waitForStatus(page, 'connected', { timeout: 20_000 });
  let rejoined = false;
  connected.then(() => {
    rejoined = true;
  }, () => {});
  for (let i = 1; !rejoined && i <= 400; i += 1) {
    duringRejoin.push(`sent during the rejoin ${i}`);
    await say(bob2, duringRejoin.at(-1));
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await connected;
  t.diagnostic(`${whileAway.length} messages sent while held back, ${duringRejoin.length} during the rejoin`);
  const afterRejoin = ['sent after alice is back 1', 'sent after alice is back 2'];
  for (const text of afterRejoin) await say(bob2, text);

  const expected = [...whileAway, ...duringRejoin, ...afterRejoin];
  await waitForMessage(page, afterRejoin.at(-1), { from: 'bob' });
  // Give a duplicate that would trail behind a moment to show up.
  await page.waitForTimeout(300);
  const bodies = await messageBodies(page);
  for (const text of [...expected, 'before the restart', 'alice before the restart']) {
    assert.equal(bodies.filter((b) => b === text).length, 1, `"${text}" shows exactly once`);
  }
  assert.deepEqual(
    bodies.filter((b) => expected.includes(b)),
    expected,
    'messages after the restart show in the order they were sent',
  );

  // The page kept its nickname, and says the server could not tell it what it missed.
  await waitForUsers(page, ['alice', 'bob']);
  assert.equal(await page.locator('#users li.me').textContent(), 'alice');
  await page
    .locator('#messages .notice', { hasText: 'Some messages were missed while you were away' })
    .waitFor();
  await send(page, 'alice is back');
  await waitForNodeMessage(bob2, 'alice is back', { from: 'alice' });
  assert.equal(await page.locator('#composer').isEnabled(), true);
  // "Reconnected" is shown briefly, then the banner empties again.
  await waitInPage(page, 'the status banner to empty', () => document.getElementById('status').textContent === '');
  assert.deepEqual(
    h.errors(page, [/ERR_CONNECTION_REFUSED/, /WebSocket connection to .* failed/]),
    [],
  );
});

scenario(h, 'a message typed while the server is down is not lost silently: it can be retried', async () => {
  const first = await h.server(SETTINGS);
  const page = await h.page(first.url);
  await login(page, 'carol');
  const { port } = first;
  await first.stop();
  await waitForStatus(page, 'reconnecting');

  await page.locator('#composer').fill('typed while offline');
  await page.locator('#composer').press('Enter');
  const own = page.locator('#messages .message.own', { hasText: 'typed while offline' });
  await eventually('the offline message to be marked failed', async () => (await own.getAttribute('data-status')) === 'failed');
  const retry = own.getByRole('button', { name: 'Retry' });
  await retry.waitFor();

  const second = await h.server(SETTINGS, { port });
  const dave = await h.client(second.url, 'dave');
  await waitForStatus(page, 'connected', { timeout: 20_000 });
  await waitForUsers(page, ['carol', 'dave']);
  await retry.click();
  await waitForNodeMessage(dave, 'typed while offline', { from: 'carol' });
  await eventually('the retried message to be marked sent', async () => (await own.getAttribute('data-status')) === 'sent');
  assert.equal(await page.locator('#messages .message .body', { hasText: 'typed while offline' }).count(), 1);
});

// ---------------------------------------------------------------------------------------------
// Connection drops (the server stays up): the person is kept for the grace period.

/** Record the presence events a Node client receives. */
function presenceLog(socket) {
  const seen = [];
  socket.on('user joined', (d) => seen.push(`${d.username} joined`));
  socket.on('user left', (d) => seen.push(`${d.username} left`));
  return seen;
}

scenario(h, 'a message that reaches the page both live and in its rejoin history shows once', async () => {
  const server = await h.server({ ...SETTINGS, BANTER_RECONNECT_GRACE_MS: 20_000 });
  let proxy;
  const page = await h.page(server.url, {
    path: '/?transports=websocket',
    beforeGoto: async ({ context }) => {
      proxy = await proxyWebSockets(context);
    },
  });
  await login(page, 'alice');
  const bob = await h.client(server.url, 'bob');
  const presence = presenceLog(bob);
  await say(bob, 'before the drop');
  await waitForMessage(page, 'before the drop', { from: 'bob' });

  // The network fails; while the page is away bob talks, so the rejoin history holds messages.
  proxy.refuse = true;
  proxy.cut();
  await waitForStatus(page, 'reconnecting');
  const missed = ['missed 1', 'missed 2', 'missed 3'];
  for (const text of missed) await say(bob, text);

  // The server subscribes a rejoining socket before reading the history, so a message sent in
  // between reaches the page twice: live, then again in the login history. Recreate that overlap
  // exactly: deliver the newest history message live just before the login.
  let injected = null;
  proxy.transform = (frame) => {
    const match = /^42\["login",/.test(frame) ? JSON.parse(frame.slice(2)) : null;
    if (!match || injected || !match[1].history?.length) return [frame];
    injected = match[1].history.at(-1);
    return [`42${JSON.stringify(['new message', injected])}`, frame];
  };
  proxy.refuse = false;
  await waitForStatus(page, 'connected', { timeout: 20_000 });
  await waitForMessage(page, 'missed 3', { from: 'bob' });
  assert.equal(injected?.message, 'missed 3', 'the overlap was staged');
  await say(bob, 'after the rejoin');
  await waitForMessage(page, 'after the rejoin', { from: 'bob' });

  const bodies = await messageBodies(page);
  assert.deepEqual(bodies, ['before the drop', ...missed, 'after the rejoin'], 'each message once, in order');
  // Nothing was lost, so the page does not claim otherwise; others saw no leave/join.
  assert.equal(await page.locator('#messages .notice', { hasText: 'missed' }).count(), 0);
  assert.deepEqual(presence, [], 'bob saw alice neither leave nor come back');
  await waitForUsers(page, ['alice', 'bob']);
});

scenario(h, 'an own message whose ack was lost with the connection is confirmed from history, not duplicated', async () => {
  const server = await h.server({ ...SETTINGS, BANTER_RECONNECT_GRACE_MS: 20_000 });
  let proxy;
  const page = await h.page(server.url, {
    path: '/?transports=websocket',
    beforeGoto: async ({ context }) => {
      proxy = await proxyWebSockets(context);
    },
  });
  await login(page, 'alice');
  const bob = await h.client(server.url, 'bob');
  await waitForUsers(page, ['alice', 'bob']);
  await send(page, 'confirmed normally');

  // The server stores the next message and acks it, but the ack is lost as the network fails.
  let ackDropped = false;
  proxy.transform = (frame) => {
    if (!ackDropped && /^43\d+\[\{"id":\d+,"ts":\d+\}\]$/.test(frame)) {
      ackDropped = true;
      proxy.refuse = true;
      setTimeout(() => proxy.cut(), 0);
      return [];
    }
    return [frame];
  };
  await page.locator('#composer').fill('did this get through?');
  await page.locator('#composer').press('Enter');
  await waitForNodeMessage(bob, 'did this get through?', { from: 'alice' });
  await waitForStatus(page, 'reconnecting');
  const own = page.locator('#messages .message.own', { hasText: 'did this get through?' });
  await eventually('the unconfirmed message to be marked failed', async () => (await own.getAttribute('data-status')) === 'failed');

  // Back online: the rejoin history holds the message, which confirms it.
  proxy.transform = null;
  proxy.refuse = false;
  await waitForStatus(page, 'connected', { timeout: 20_000 });
  await eventually('the message to be confirmed from the history', async () => (await own.getAttribute('data-status')) === 'sent');
  assert.equal(await countMessages(page, 'did this get through?'), 1, 'shown once');
  assert.match(await own.getAttribute('data-id'), /^\d+$/);
  assert.equal(await own.locator('.retry').count(), 0, 'no Retry left behind');
  assert.equal(bob.received.filter((m) => m.message === 'did this get through?').length, 1, 'sent once');
});
