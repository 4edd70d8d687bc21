// The page still chats when WebSocket does not work (proxies that block it, old middleboxes):
// Socket.IO falls back to HTTP long-polling.

import assert from 'node:assert/strict';
import {
  eventually,
  login,
  scenario,
  send,
  suite,
  waitForMessage,
  waitForText,
  waitForUsers,
} from './browser-harness.mjs';

const h = suite();

const isSocketIo = (url) => new URL(url).pathname === '/socket.io/';

/** Record the page's Socket.IO traffic: polling requests and WebSocket connections. */
function watchTransports(page) {
  const seen = { polling: [], websockets: [] };
  page.on('request', (req) => {
    if (isSocketIo(req.url()) && req.url().includes('transport=polling')) seen.polling.push(req.url());
  });
  page.on('websocket', (ws) => seen.websockets.push(ws));
  return seen;
}

/** Chat both ways between `page` (as `name`) and a normal page, after a login on both. */
async function chatWithNormalPage(server, page, name) {
  const other = await h.page(server.url);
  await login(other, 'rosa');
  await waitForUsers(page, [name, 'rosa']);
  await waitForText(page, '#participants', '2 participants');
  await send(page, `hello from ${name}`);
  await waitForMessage(other, `hello from ${name}`, { from: name });
  await send(other, `hello ${name}, from rosa`);
  await waitForMessage(page, `hello ${name}, from rosa`, { from: 'rosa' });
  return other;
}

scenario(h, 'a page whose WebSocket is blocked falls back to polling and still chats', async () => {
  const server = await h.server();
  const refused = [];
  const page = await h.page(server.url, {
    // A proxy that kills every WebSocket: the connection opens, then closes at once.
    beforeGoto: ({ context }) =>
      context.routeWebSocket(/.*/, (ws) => {
        refused.push(ws.url());
        ws.close();
      }),
  });
  const traffic = watchTransports(page);
  await login(page, 'wendy');

  // The upgrade to WebSocket was attempted and failed before anything was chatted.
  await eventually('the page to try (and fail) the WebSocket upgrade', () => refused.length > 0);
  assert.ok(refused.every((url) => url.includes('transport=websocket')), refused.join(', '));

  const pollsBefore = traffic.polling.length;
  const other = await chatWithNormalPage(server, page, 'wendy');
  assert.ok(
    traffic.polling.length > pollsBefore,
    `the chat went over polling (${pollsBefore} polls before chatting, ${traffic.polling.length} after)`,
  );
  await waitForText(page, '#status', '');
  assert.equal(await page.locator('#status').getAttribute('data-state'), 'connected');
  assert.deepEqual(h.errors(page, [/WebSocket/]), []);
  assert.deepEqual(h.errors(other), []);
});

scenario(h, 'a browser without WebSocket at all chats over polling', async () => {
  const server = await h.server();
  const page = await h.page(server.url, {
    beforeGoto: ({ context }) =>
      context.addInitScript(() => {
        delete window.WebSocket;
        window.WebSocket = undefined;
      }),
  });
  const traffic = watchTransports(page);
  await login(page, 'otto');
  assert.equal(await page.evaluate(() => typeof window.WebSocket), 'undefined');
  await chatWithNormalPage(server, page, 'otto');
  assert.equal(traffic.websockets.length, 0);
  assert.ok(traffic.polling.length > 0);
  assert.deepEqual(h.errors(page), []);
});

scenario(h, '?transports=polling keeps the page on polling, and it chats', async () => {
  const server = await h.server();
  const page = await h.page(server.url, { path: '/?transports=polling' });
  const traffic = watchTransports(page);
  await login(page, 'polly');
  await chatWithNormalPage(server, page, 'polly');
  assert.equal(traffic.websockets.length, 0, 'no WebSocket was opened');
  assert.ok(traffic.polling.length > 0);
});
