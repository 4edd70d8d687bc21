// Two people in two browser profiles: presence, messages both ways, typing, leaving.

import assert from 'node:assert/strict';
import {
  login,
  say,
  scenario,
  send,
  suite,
  waitForMessage,
  waitForText,
  waitForUsers,
  waitInPage,
} from './browser-harness.mjs';

const h = suite();

const noticeShown = (page, text) =>
  waitInPage(
    page,
    `the notice ${JSON.stringify(text)}`,
    (want) => [...document.querySelectorAll('#messages .notice')].some((n) => n.textContent === want),
    text,
    { describe: () => [...document.querySelectorAll('#messages .notice')].map((n) => n.textContent) },
  );

scenario(h, 'two people chat both ways, see each other come and go, and see each other typing', async () => {
  // A long grace period: "left" can only show at once if the page leaves on purpose when closed.
  const server = await h.server({ BANTER_RECONNECT_GRACE_MS: 30_000 });
  const alice = await h.page(server.url);
  const bob = await h.page(server.url);

  await login(alice, 'alice');
  await waitForText(alice, '#participants', '1 participant');
  await noticeShown(alice, 'You joined as alice');

  await login(bob, 'bob');
  for (const page of [alice, bob]) {
    await waitForText(page, '#participants', '2 participants');
    await waitForUsers(page, ['alice', 'bob']);
  }
  await noticeShown(alice, 'bob joined');
  assert.equal(
    await bob.locator('#messages .notice', { hasText: /^bob joined$/ }).count(),
    0,
    'bob is told "You joined as bob", not that he joined',
  );
  assert.equal(await alice.locator('#users li.me').textContent(), 'alice');
  assert.equal(await bob.locator('#users li.me').textContent(), 'bob');

  // Messages both ways: the sender's copy is confirmed, the other side shows it under the author.
  await send(alice, 'Hi Bob, how was the trip?');
  await waitForMessage(bob, 'Hi Bob, how was the trip?', { from: 'alice' });
  await send(bob, 'Long, but the view was worth it.');
  await waitForMessage(alice, 'Long, but the view was worth it.', { from: 'bob' });
  for (const page of [alice, bob]) {
    const bodies = await page.locator('#messages .message .body').allTextContents();
    assert.deepEqual(bodies, ['Hi Bob, how was the trip?', 'Long, but the view was worth it.']);
  }
  const aliceOwn = alice.locator('#messages .message.own');
  assert.equal(await aliceOwn.count(), 1);
  assert.equal(await aliceOwn.getAttribute('data-status'), 'sent');
  assert.match(await aliceOwn.getAttribute('data-id'), /^\d+$/, 'a confirmed message carries the server id');
  assert.equal(
    await alice.locator('#messages .message:not(.own) .author').textContent(),
    'bob',
  );

  // Typing: shows on the other side while bob types, goes away once he pauses...
  await bob.locator('#composer').pressSequentially('I will send', { delay: 30 });
  await waitForText(alice, '#typing', 'bob is typing');
  assert.equal(await bob.locator('#typing').textContent(), '', 'nobody is told about their own typing');
  await waitForText(alice, '#typing', '', { timeout: 5000 });

  // ...and goes away at once when he sends.
  await bob.locator('#composer').pressSequentially(' photos', { delay: 30 });
  await waitForText(alice, '#typing', 'bob is typing');
  // What alice's typing line says at the very moment bob's message lands (not 1.5 s later, when
  // the idle timer would clear it anyway).
  const typingWhenMessageLands = alice.evaluate(
    ([want, ms]) =>
      new Promise((resolve, reject) => {
        const log = document.getElementById('messages');
        const check = () => {
          const bodies = [...log.querySelectorAll('.message .body')];
          if (!bodies.some((b) => b.textContent === want)) return false;
          observer.disconnect();
          clearTimeout(timer);
          resolve(document.getElementById('typing').textContent);
          return true;
        };
        const observer = new MutationObserver(check);
        const timer = setTimeout(() => {
          observer.disconnect();
          reject(new Error(`no message ${want} within ${ms} ms`));
        }, ms);
        if (!check()) observer.observe(log, { childList: true, subtree: true });
      }),
    ['I will send photos', 10_000],
  );
  await bob.locator('#composer').press('Enter');
  assert.equal(await typingWhenMessageLands, '', 'the typing notice goes away together with the message');
  await waitForMessage(alice, 'I will send photos', { from: 'bob' });

  // Closing the page leaves the chat on purpose: "left" shows at once, well within the grace period.
  await bob.close();
  await noticeShown(alice, 'bob left');
  await waitForText(alice, '#participants', '1 participant', { timeout: 3000 });
  await waitForUsers(alice, ['alice']);

  assert.deepEqual(h.errors(alice), [], 'no script errors in the page');
});

scenario(h, 'a nickname that is taken gets a free variant, and the page says so', async () => {
  const server = await h.server();
  const first = await h.page(server.url);
  const second = await h.page(server.url);
  await login(first, 'sam');
  await second.locator('#nickname').fill('Sam');
  await second.locator('#join').click();
  await waitInPage(
    second,
    'the renamed login',
    () => document.querySelector('#users li.me')?.textContent === 'Sam (2)',
  );
  await noticeShown(second, 'You are now known as Sam (2)');
  await waitForUsers(first, ['sam', 'Sam (2)']);
  await send(second, 'hello from the second Sam');
  await waitForMessage(first, 'hello from the second Sam', { from: 'Sam (2)' });
});

scenario(h, 'the login form refuses an empty nickname without leaving the form', async () => {
  const server = await h.server();
  const page = await h.page(server.url);
  await page.locator('#nickname').fill('   ');
  await page.locator('#join').click();
  await waitForText(page, '#login-error', 'Please enter a nickname.');
  assert.equal(await page.locator('#nickname').getAttribute('aria-invalid'), 'true');
  assert.equal(await page.locator('#chat').isVisible(), false);
  assert.equal(await page.evaluate(() => document.activeElement?.id), 'nickname');
  await login(page, 'pat');
  assert.equal(await page.locator('#login-error').textContent(), '');
});

scenario(h, 'a message is highlighted as a mention only when it names the reader as a whole word', async () => {
  const server = await h.server();
  const page = await h.page(server.url);
  await login(page, 'Lea');
  const maya = await h.client(server.url, 'maya');
  const texts = {
    'please release the notes, clearly': false,
    'Hi Lea, welcome!': true,
    '@lea are you there?': true,
    'LEA!': true,
    'Leah and Leander are not Lea': true,
    'Leah and Leander are somebody else': false,
  };
  for (const text of Object.keys(texts)) await say(maya, text);
  await waitForMessage(page, 'Leah and Leander are somebody else', { from: 'maya' });
  const highlighted = await page.evaluate(() =>
    Object.fromEntries(
      [...document.querySelectorAll('#messages .message')].map((m) => [
        m.querySelector('.body').textContent,
        m.classList.contains('mention'),
      ]),
    ),
  );
  assert.deepEqual(highlighted, texts);
});

scenario(h, 'a storm of people joining and leaving is shown in a few gathered notices, with the right list and count', async () => {
  const server = await h.server();
  const alice = await h.page(server.url);
  await login(alice, 'alice');
  await waitForText(alice, '#participants', '1 participant');
  const noticesBefore = await alice.locator('#messages .notice').count();

  // More people at once than the server announces one by one (20): it gathers them.
  const names = Array.from({ length: 70 }, (_, i) => `storm${String(i).padStart(2, '0')}`);
  const crowd = await Promise.all(names.map((name) => h.client(server.url, name)));
  await waitForText(alice, '#participants', '71 participants');
  await waitForUsers(alice, ['alice', ...names]);
  const joined = (await alice.locator('#messages .notice').allTextContents()).slice(noticesBefore);
  assert.ok(joined.length < names.length, `fewer notices than people: ${joined.length}`);
  assert.ok(
    joined.some((n) => / and \d+ others joined$/.test(n)),
    `a gathered notice names a few and counts the others: ${JSON.stringify(joined)}`,
  );
  for (const n of joined) assert.match(n, /^storm\d\d( and storm\d\d|, storm\d\d and storm\d\d|, storm\d\d and \d+ others| and \d+ others)? joined$/);

  // And all leaving at once.
  const noticesMid = await alice.locator('#messages .notice').count();
  for (const socket of crowd) socket.disconnect();
  await waitForText(alice, '#participants', '1 participant');
  await waitForUsers(alice, ['alice']);
  const left = (await alice.locator('#messages .notice').allTextContents()).slice(noticesMid);
  assert.ok(left.length < names.length && left.every((n) => n.endsWith(' left')), JSON.stringify(left));
  assert.deepEqual(h.errors(alice), []);
});
