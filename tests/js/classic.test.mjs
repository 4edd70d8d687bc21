// The classic (frozen) part of the contract: every event and payload exactly as the classic
// Socket.IO chat example's page uses them (string `add user` without an ack, `login`,
// `user joined`, `new message`, `typing`, `stop typing`, `user left`, and re-sending `add user`
// after a reconnect), over each transport flavour, and the flavours chatting with each other.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  FLAVOUR_NAMES,
  classicJoin,
  collect,
  connect,
  expectNoEvent,
  once,
  serverPerTest,
  sleep,
} from './harness.mjs';

const GRACE_MS = 2000;

function assertMessagePayload(data, username, message) {
  assert.equal(data.username, username);
  assert.equal(data.message, message);
  assert.ok(Number.isSafeInteger(data.id) && data.id > 0, `id is a positive integer: ${data.id}`);
  assert.equal(typeof data.ts, 'number');
  assert.ok(Math.abs(data.ts - Date.now()) < 10_000, `ts ${data.ts} is near now (${Date.now()})`);
}

describe('classic events', () => {
  const srv = serverPerTest({ BANTER_RECONNECT_GRACE_MS: GRACE_MS });

  for (const flavour of FLAVOUR_NAMES) {
    describe(`over ${flavour}`, () => {
      const open = (label, extra = {}) => connect(srv.url, { flavour, label, ...extra });

      it('add user (string, no ack) → login {numUsers}; others get user joined {username, numUsers}, not the joiner', async () => {
        const alice = await open('alice');
        const aliceJoined = collect(alice, 'user joined');
        const aliceLogin = await classicJoin(alice, 'alice');
        assert.equal(aliceLogin.numUsers, 1);

        const bob = await open('bob');
        const bobJoined = collect(bob, 'user joined');
        const aliceSeesBob = once(alice, 'user joined');
        const bobLogin = await classicJoin(bob, 'bob');
        assert.equal(bobLogin.numUsers, 2);
        const joined = await aliceSeesBob;
        assert.equal(joined.username, 'bob');
        assert.equal(joined.numUsers, 2);

        // Bounded wait to prove absences: nobody is told about themselves.
        await sleep(300);
        assert.deepEqual(bobJoined, [], 'the joiner does not get user joined about itself');
        assert.deepEqual(
          aliceJoined.map((d) => d.username),
          ['bob'],
          'alice got user joined for bob only',
        );
      });

      it('new message (string) reaches the others as {username, message, id, ts}; the sender gets nothing', async () => {
        const alice = await open('alice');
        const bob = await open('bob');
        const carol = await open('carol');
        await classicJoin(alice, 'alice');
        await classicJoin(bob, 'bob');
        await classicJoin(carol, 'carol');

        const text = 'héllo, wörld 👋 <b>not html</b> "quoted"';
        const atBob = once(bob, 'new message');
        const atCarol = once(carol, 'new message');
        const notAtAlice = expectNoEvent(alice, 'new message', 400);
        alice.emit('new message', text);

        const b = await atBob;
        const c = await atCarol;
        assertMessagePayload(b, 'alice', text);
        assert.deepEqual(c, b, 'every receiver gets the same payload (same id and ts)');
        await notAtAlice;
      });

      it('typing / stop typing reach the others as {username}; the sender gets nothing', async () => {
        const alice = await open('alice');
        const bob = await open('bob');
        await classicJoin(alice, 'alice');
        await classicJoin(bob, 'bob');

        const aliceTyping = collect(alice, 'typing');
        const aliceStop = collect(alice, 'stop typing');

        const typing = once(bob, 'typing');
        alice.emit('typing');
        assert.equal((await typing).username, 'alice');

        const stopTyping = once(bob, 'stop typing');
        alice.emit('stop typing');
        assert.equal((await stopTyping).username, 'alice');

        await sleep(300);
        assert.deepEqual(aliceTyping, []);
        assert.deepEqual(aliceStop, []);
      });

      it('socket.disconnect() → the others get user left {username, numUsers} at once', async () => {
        const alice = await open('alice');
        const bob = await open('bob');
        const carol = await open('carol');
        await classicJoin(alice, 'alice');
        await classicJoin(bob, 'bob');
        await classicJoin(carol, 'carol');

        const atBob = once(bob, 'user left', GRACE_MS / 2);
        const atCarol = once(carol, 'user left', GRACE_MS / 2);
        alice.disconnect();
        const left = await atBob;
        assert.equal(left.username, 'alice');
        assert.equal(left.numUsers, 2);
        assert.deepEqual(await atCarol, left);
      });

      it('a second add user on a joined socket is ignored (no second user joined, count unchanged)', async () => {
        const alice = await open('alice');
        const bob = await open('bob');
        await classicJoin(alice, 'alice');
        await classicJoin(bob, 'bob');

        const bobJoined = collect(bob, 'user joined');
        const aliceLogins = collect(alice, 'login');
        alice.emit('add user', 'alice-again');
        await sleep(400);
        assert.deepEqual(bobJoined, [], 'no user joined for the second add user');
        assert.deepEqual(aliceLogins, [], 'no second login');

        // The count did not change: a third person makes three.
        const carol = await open('carol');
        const bobSeesCarol = once(bob, 'user joined');
        const carolLogin = await classicJoin(carol, 'carol');
        assert.equal(carolLogin.numUsers, 3);
        const joined = await bobSeesCarol;
        assert.equal(joined.username, 'carol');
        assert.equal(joined.numUsers, 3);

        // And alice still speaks as alice.
        const atBob = once(bob, 'new message');
        alice.emit('new message', 'still me');
        const msg = await atBob;
        assert.equal(msg.username, 'alice');
        assert.equal(msg.message, 'still me');
      });

      it('the page re-sends add user after a dropped transport reconnects: rejoins cleanly, no ghost, no double count', async () => {
        const alice = await open('alice', {
          reconnection: true,
          reconnectionDelay: 100,
          reconnectionDelayMax: 200,
        });
        const bob = await open('bob');
        // Exactly what the classic page does.
        let username = null;
        alice.io.on('reconnect', () => {
          if (username) alice.emit('add user', username);
        });
        await classicJoin(alice, 'alice');
        username = 'alice';
        await classicJoin(bob, 'bob');

        const bobLeft = collect(bob, 'user left');
        const bobJoined = collect(bob, 'user joined');
        const dropped = once(alice, 'disconnect');
        const relogin = once(alice, 'login');
        alice.io.engine.close(); // the transport drops; no Socket.IO disconnect is sent
        await dropped;
        const login = await relogin;
        assert.equal(login.numUsers, 2, 'no double count');
        assert.equal(login.username, 'alice', 'same nickname back');

        // Wait past the grace period: the old connection must never be reported as left.
        await sleep(GRACE_MS + 500);
        assert.deepEqual(bobLeft, [], 'no user left');
        assert.deepEqual(bobJoined, [], 'no user joined');

        const atBob = once(bob, 'new message');
        alice.emit('new message', 'back again');
        const msg = await atBob;
        assert.equal(msg.username, 'alice');
      });
    });
  }

  it('websocket, polling and upgraded clients chat with each other', async () => {
    const ws = await connect(srv.url, { flavour: 'websocket', label: 'ws' });
    const polling = await connect(srv.url, { flavour: 'polling', label: 'polling' });
    const upgraded = await connect(srv.url, { flavour: 'upgrade', label: 'upgrade' });
    assert.equal(ws.io.engine.transport.name, 'websocket');
    assert.equal(polling.io.engine.transport.name, 'polling');
    assert.equal(upgraded.io.engine.transport.name, 'websocket');

    const clients = [
      ['ws-user', ws],
      ['polling-user', polling],
      ['upgrade-user', upgraded],
    ];
    for (const [i, [name, socket]] of clients.entries()) {
      const earlier = clients.slice(0, i).map(([, s]) => once(s, 'user joined'));
      const login = await classicJoin(socket, name);
      assert.equal(login.numUsers, i + 1);
      for (const joined of await Promise.all(earlier)) {
        assert.equal(joined.username, name);
        assert.equal(joined.numUsers, i + 1);
      }
    }

    for (const [name, sender] of clients) {
      const text = `hello from ${name}`;
      const others = clients.filter(([, s]) => s !== sender);
      const received = others.map(([, s]) =>
        once(s, 'new message', 5000, (d) => d.message === text),
      );
      const notSelf = expectNoEvent(sender, 'new message', 400);
      sender.emit('new message', text);
      for (const data of await Promise.all(received)) assertMessagePayload(data, name, text);
      await notSelf;
    }

    // Typing crosses transports too.
    const typingAtPolling = once(polling, 'typing');
    const typingAtUpgraded = once(upgraded, 'typing');
    ws.emit('typing');
    assert.equal((await typingAtPolling).username, 'ws-user');
    assert.equal((await typingAtUpgraded).username, 'ws-user');
  });
});
