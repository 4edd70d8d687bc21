// What people type is text, never markup: a nickname and messages full of HTML and script render
// literally and run nothing, on the sender's page and on everyone else's. And the page works under
// the strict Content-Security-Policy the server sends with it, which really is enforced.

import assert from 'node:assert/strict';
import {
  login,
  scenario,
  send,
  suite,
  waitForMessage,
  waitForUsers,
  waitInPage,
} from './browser-harness.mjs';

const h = suite();

// 29 characters: fits the 32-character nickname limit.
const EVIL_NAME = '<img src=x onerror=__pwned=1>';
const EVIL_MESSAGE =
  '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>' +
  '<b>bold?</b> &lt;i&gt; https://example.com/"><svg onload=window.__pwned=3>';
const EVIL_REPLY = '<iframe src="javascript:window.parent.__pwned=4"></iframe><a href="javascript:__pwned=5">x</a>';

/** Everything that would show that markup was interpreted, in one look at the page. */
const inspect = (page) =>
  page.evaluate(() => ({
    pwned: window.__pwned,
    markupInLog: document.querySelectorAll('#messages img, #messages script, #messages svg, #messages iframe, #messages b, #messages i').length,
    markupInUsers: document.querySelectorAll('#users *:not(li)').length,
    links: [...document.querySelectorAll('#messages a')].map((a) => a.getAttribute('href')),
  }));

scenario(h, 'HTML and script in a nickname and in messages render as literal text and run nothing', async () => {
  const server = await h.server();
  const mallory = await h.page(server.url);
  const victim = await h.page(server.url);
  await login(victim, 'victim');
  await login(mallory, EVIL_NAME);
  await waitForUsers(victim, ['victim', EVIL_NAME]);
  await victim.locator('#messages .notice', { hasText: `${EVIL_NAME} joined` }).waitFor();

  await send(mallory, EVIL_MESSAGE);
  await waitForMessage(victim, EVIL_MESSAGE, { from: EVIL_NAME });
  await send(victim, EVIL_REPLY);
  await waitForMessage(mallory, EVIL_REPLY, { from: 'victim' });
  // onerror/onload would fire asynchronously once the broken image "loaded": give it a moment.
  await victim.waitForTimeout(500);

  for (const [who, page] of [['sender', mallory], ['receiver', victim]]) {
    const seen = await inspect(page);
    assert.equal(seen.pwned, undefined, `no script ran on the ${who}'s page`);
    assert.equal(seen.markupInLog, 0, `no element was created from message text on the ${who}'s page`);
    assert.equal(seen.markupInUsers, 0, `the users list holds text only on the ${who}'s page`);
    // The one URL becomes a link, cut before the quote: the rest stays text.
    assert.deepEqual(seen.links, ['https://example.com/'], `only the http(s) URL is a link on the ${who}'s page`);
    const bodies = await page.locator('#messages .message .body').allTextContents();
    assert.deepEqual(bodies, [EVIL_MESSAGE, EVIL_REPLY], `message text is shown as typed on the ${who}'s page`);
    const authors = await page.locator('#messages .message .author').allTextContents();
    assert.deepEqual(authors, [EVIL_NAME, 'victim']);
    const users = await page.locator('#users li').allTextContents();
    assert.ok(users.includes(EVIL_NAME), `the nickname is listed as typed on the ${who}'s page: ${users}`);
  }
  // The link really points where its text says, and opens safely.
  const link = victim.locator('#messages a');
  assert.equal(await link.getAttribute('rel'), 'noopener noreferrer nofollow');
  assert.equal(await link.getAttribute('target'), '_blank');
  assert.deepEqual(h.errors(victim), []);
  assert.deepEqual(h.errors(mallory), []);
});

scenario(h, "the page works under the Content-Security-Policy the server sends", async () => {
  const server = await h.server();
  // The server sends the policy with the page (src/http/guard.rs); the browser enforces what it got.
  const served = (await fetch(`${server.url}/`)).headers.get('content-security-policy') ?? '';
  for (const directive of ["default-src 'self'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"]) {
    assert.ok(served.split(';').map((d) => d.trim()).includes(directive), `${directive} in ${served}`);
  }
  const page = await h.page(server.url);
  const other = await h.page(server.url);
  let websocketFrames = 0;
  page.on('websocket', (ws) => ws.on('framereceived', () => { websocketFrames += 1; }));
  await login(page, 'strict');
  await login(other, 'relaxed');
  await send(page, 'sent under a strict CSP');
  await waitForMessage(other, 'sent under a strict CSP', { from: 'strict' });
  await send(other, 'and received under it');
  await waitForMessage(page, 'and received under it', { from: 'relaxed' });
  // The upgrade to WebSocket is allowed too ('self' covers ws: to the same host in CSP 3).
  await waitInPage(page, 'the page to be online', () => document.getElementById('status').dataset.state === 'connected');
  assert.ok(websocketFrames > 0, 'the page upgraded to WebSocket and received over it');
  const violations = h.errors(page).filter((e) => /Content Security Policy|Refused to/i.test(e));
  assert.deepEqual(violations, [], 'no CSP violations');
  assert.deepEqual(h.errors(page), []);

  // And the policy really is in force (else this test would prove nothing): inline script is refused.
  const inlineRefused = await page.evaluate(
    () =>
      new Promise((resolve) => {
        document.addEventListener('securitypolicyviolation', (e) => resolve(e.effectiveDirective), { once: true });
        const script = document.createElement('script');
        script.textContent = 'window.__inlineRan = true';
        document.head.append(script);
        setTimeout(() => resolve(window.__inlineRan ? 'ran' : 'no event'), 2000);
      }),
  );
  assert.equal(inlineRefused, 'script-src-elem');
});
