// The extensions of docs/protocol.md section 2: acks for `new message` and `add user`, the
// object form {username, lastId}, history on login, nicknames (variants, case-insensitivity),
// sessions and the reconnect grace period, `replaced`, and `list users`.

import { after, afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  FLAVOUR_NAMES,
  HAVE_WS,
  ack,
  cleanup,
  collect,
  connect,
  join,
  joinOk,
  once,
  parseEventPacket,
  rawWebSocket,
  sendOk,
  serverPerTest,
  sleep,
  startServer,
  stopAllServers,
  tempDataDir,
  withTimeout,
} from './harness.mjs';

const SESSION_RE = /^[0-9a-f]{32}$/;
const byName = (a, b) => a.toLowerCase().localeCompare(b.toLowerCase());
const pick = ({ id, ts, username, message }) => ({ id, ts, username, message });

describe('new message with an ack', () => {
  const srv = serverPerTest();

  it('acks {id, ts}; ids increase; ts is the time the server accepted it; the broadcast carries the same id and ts', async () => {
    const alice = await connect(srv.url, { label: 'alice' });
    const bob = await connect(srv.url, { label: 'bob' });
    await joinOk(alice, 'alice');
    await joinOk(bob, 'bob');
    const atBob = collect(bob, 'new message');

    const acks = [];
    for (let i = 1; i <= 5; i += 1) {
      const before = Date.now();
      const res = await ack(alice, 'new message', `message ${i}`);
      const afterAck = Date.now();
      assert.ok(!res.error, `accepted: ${JSON.stringify(res)}`);
      assert.ok(Number.isSafeInteger(res.id) && res.id > 0, `id is a positive integer: ${res.id}`);
      assert.equal(typeof res.ts, 'number');
      assert.ok(
        res.ts >= before - 1000 && res.ts <= afterAck + 1000,
        `ts ${res.ts} within [${before}, ${afterAck}] (±1 s)`,
      );
      acks.push(res);
    }
    for (let i = 1; i < acks.length; i += 1) {
      assert.ok(acks[i].id > acks[i - 1].id, `ids increase: ${acks[i - 1].id} < ${acks[i].id}`);
    }

    await atBob.until(5);
    assert.deepEqual(
      atBob.map(pick),
      acks.map((a, i) => ({ id: a.id, ts: a.ts, username: 'alice', message: `message ${i + 1}` })),
    );
  });
});

// Ordering under concurrency: a generous rate limit so that many messages can be in flight at once.
const PER_SENDER = 30;
describe('message ids under concurrent senders', () => {
  const srv = serverPerTest({ BANTER_MESSAGE_RATE: 1000, BANTER_MESSAGE_BURST: 1000 });

  it('messages sent at once by four people: unique ids, each sender\'s in the order sent, and every receiver gets them in increasing id order', async () => {
    const senders = [];
    for (const name of ['alice', 'bob', 'carol', 'erin']) {
      const socket = await connect(srv.url, { label: name });
      await joinOk(socket, name);
      senders.push({ name, socket });
    }
    const dave = await connect(srv.url, { label: 'dave' });
    await joinOk(dave, 'dave');
    const atDave = collect(dave, 'new message');

    // Interleaved, without waiting for the acks.
    const pending = senders.map(() => []);
    for (let i = 0; i < PER_SENDER; i += 1) {
      senders.forEach(({ name, socket }, s) => pending[s].push(sendOk(socket, `${name} ${i}`)));
    }
    const acks = await Promise.all(pending.map((p) => Promise.all(p)));
    const ids = acks.flat().map((a) => a.id);
    assert.equal(new Set(ids).size, ids.length, `unique ids: ${ids}`);
    senders.forEach(({ name }, s) => {
      const mine = acks[s].map((a) => a.id);
      assert.ok(
        mine.every((id, i) => i === 0 || id > mine[i - 1]),
        `${name}'s later messages have greater ids (ack ids in sending order: ${mine})`,
      );
    });

    await atDave.until(senders.length * PER_SENDER);
    assert.deepEqual(
      atDave.map((m) => m.id).sort((x, y) => x - y),
      [...ids].sort((x, y) => x - y),
      'the broadcast ids are the ack ids',
    );
    for (const { name } of senders) {
      assert.deepEqual(
        atDave.filter((m) => m.username === name).map((m) => m.message),
        [...Array(PER_SENDER).keys()].map((i) => `${name} ${i}`),
        `dave receives ${name}'s messages in the order they were sent`,
      );
    }
    const firstBackwards = atDave.findIndex((m, i) => i > 0 && m.id < atDave[i - 1].id);
    const around = atDave
      .slice(Math.max(0, firstBackwards - 2), firstBackwards + 2)
      .map((m) => `"${m.message}" #${m.id}`);
    assert.equal(
      firstBackwards,
      -1,
      `dave receives messages in increasing id order (so that lastId = the last id seen is safe); ` +
        `out of order at position ${firstBackwards}: ${around.join(', ')}`,
    );
  });
});

describe('add user with an ack', () => {
  const srv = serverPerTest();

  it('acks {username, users (sorted), numUsers, history, historyComplete, session, room}; login carries the same object', async () => {
    const names = ['carol', 'Bob', 'alice'];
    for (const [i, name] of names.entries()) {
      const socket = await connect(srv.url, { label: name });
      const loginEvent = once(socket, 'login');
      const res = await join(socket, name);
      assert.equal(res.username, name);
      assert.ok(!('renamedFrom' in res), 'no renamedFrom for a free nickname');
      assert.equal(res.numUsers, i + 1);
      assert.deepEqual(res.users, names.slice(0, i + 1).sort(byName));
      assert.ok(Array.isArray(res.history));
      assert.deepEqual(res.history, [], 'no messages yet');
      assert.equal(res.historyComplete, true);
      assert.match(res.session, SESSION_RE);
      assert.equal(res.room, 'lobby');
      assert.deepEqual(await loginEvent, res, 'login event equals the ack');
    }
    const dave = await connect(srv.url, { label: 'Dave' });
    const res = await joinOk(dave, 'Dave');
    assert.deepEqual(res.users, ['alice', 'Bob', 'carol', 'Dave'], 'sorted case-insensitively');
    assert.equal(res.numUsers, 4);
  });

  it('each login gets its own session token', async () => {
    const a = await joinOk(await connect(srv.url, { label: 'alice' }), 'alice');
    const b = await joinOk(await connect(srv.url, { label: 'bob' }), 'bob');
    assert.match(a.session, SESSION_RE);
    assert.match(b.session, SESSION_RE);
    assert.notEqual(a.session, b.session);
  });

  it('the nickname is trimmed', async () => {
    const socket = await connect(srv.url, { label: 'dave' });
    const res = await joinOk(socket, '  dave \t');
    assert.equal(res.username, 'dave');
    assert.deepEqual(res.users, ['dave']);
  });

  it('accepts the object form {username} and {username, lastId}', async () => {
    const alice = await connect(srv.url, { label: 'alice' });
    const res = await joinOk(alice, { username: 'alice' });
    assert.equal(res.username, 'alice');
    assert.equal(res.numUsers, 1);
    const sent = await sendOk(alice, 'first');

    const bob = await connect(srv.url, { label: 'bob' });
    const res2 = await joinOk(bob, { username: 'bob', lastId: sent.id });
    assert.equal(res2.username, 'bob');
    assert.deepEqual(res2.history, []);
    assert.equal(res2.historyComplete, true);
  });

  it('the classic string form with an ack also gets history and session', async () => {
    const alice = await connect(srv.url, { label: 'alice' });
    await joinOk(alice, 'alice');
    const m1 = await sendOk(alice, 'one');
    const m2 = await sendOk(alice, 'two');
    const bob = await connect(srv.url, { label: 'bob' });
    const res = await joinOk(bob, 'bob');
    assert.deepEqual(res.history.map(pick), [
      { id: m1.id, ts: m1.ts, username: 'alice', message: 'one' },
      { id: m2.id, ts: m2.ts, username: 'alice', message: 'two' },
    ]);
    assert.equal(res.historyComplete, true);
  });

  it('list users (with an ack) works before and after joining', async () => {
    const observer = await connect(srv.url, { label: 'observer' });
    assert.deepEqual(await ack(observer, 'list users'), { numUsers: 0, users: [] });

    const bob = await connect(srv.url, { label: 'bob' });
    const alice = await connect(srv.url, { label: 'alice' });
    await joinOk(bob, 'bob');
    await joinOk(alice, 'alice');
    const listed = await ack(observer, 'list users');
    assert.equal(listed.numUsers, 2);
    assert.deepEqual(listed.users, ['alice', 'bob']);
    assert.deepEqual(await ack(alice, 'list users'), listed);

    const left = once(bob, 'user left');
    alice.disconnect();
    await left;
    const after1 = await ack(observer, 'list users');
    assert.equal(after1.numUsers, 1);
    assert.deepEqual(after1.users, ['bob']);
  });
});

describe('history (BANTER_HISTORY_LEN=5)', () => {
  const srv = serverPerTest({ BANTER_HISTORY_LEN: 5 });

  async function sendEight() {
    const alice = await connect(srv.url, { label: 'alice' });
    await joinOk(alice, 'alice');
    const sent = [];
    for (let i = 1; i <= 8; i += 1) {
      const res = await sendOk(alice, `m${i}`);
      sent.push({ id: res.id, ts: res.ts, username: 'alice', message: `m${i}` });
    }
    return sent;
  }

  it('without lastId: the last N messages, oldest first, historyComplete true', async () => {
    const sent = await sendEight();
    const bob = await connect(srv.url, { label: 'bob' });
    const res = await joinOk(bob, 'bob');
    assert.deepEqual(res.history.map(pick), sent.slice(3));
    assert.equal(res.historyComplete, true);
  });

  it('with a lastId older than what is kept: the newest N messages and historyComplete false', async () => {
    const sent = await sendEight();
    const bob = await connect(srv.url, { label: 'bob' });
    const res = await joinOk(bob, { username: 'bob', lastId: sent[0].id });
    assert.deepEqual(res.history.map(pick), sent.slice(3));
    assert.equal(res.historyComplete, false);
  });

  it('with a lastId that is still kept: exactly the later messages and historyComplete true', async () => {
    const sent = await sendEight();
    const bob = await connect(srv.url, { label: 'bob' });
    const res = await joinOk(bob, { username: 'bob', lastId: sent[4].id });
    assert.deepEqual(res.history.map(pick), sent.slice(5));
    assert.equal(res.historyComplete, true);

    const carol = await connect(srv.url, { label: 'carol' });
    const res2 = await joinOk(carol, { username: 'carol', lastId: sent[7].id });
    assert.deepEqual(res2.history, [], 'nothing after the newest id');
    assert.equal(res2.historyComplete, true);
  });

  it('a client that reconnects with its lastId receives exactly the messages it missed, in order', async () => {
    const alice = await connect(srv.url, { label: 'alice' });
    const bob = await connect(srv.url, { label: 'bob' });
    await joinOk(alice, 'alice');
    await joinOk(bob, 'bob');

    const seen = collect(alice, 'new message');
    await sendOk(bob, 'before 1');
    await sendOk(bob, 'before 2');
    await seen.until(2);
    const lastId = seen.at(-1).id;

    const left = once(bob, 'user left');
    alice.disconnect();
    assert.equal((await left).username, 'alice');

    const missed = [];
    for (const text of ['missed 1', 'missed 2', 'missed 3']) {
      const res = await sendOk(bob, text);
      missed.push({ id: res.id, ts: res.ts, username: 'bob', message: text });
    }

    const alice2 = await connect(srv.url, { label: 'alice again' });
    const res = await joinOk(alice2, { username: 'alice', lastId });
    assert.equal(res.username, 'alice');
    assert.deepEqual(res.history.map(pick), missed);
    assert.equal(res.historyComplete, true);
  });
});

describe('history across a server restart', () => {
  afterEach(cleanup);
  after(stopAllServers);

  it('on the same data directory (SQLite, the default): history, ids and lastId carry on as if nothing happened', async () => {
    const BANTER_DATA_DIR = tempDataDir();
    const first = await startServer({ BANTER_DATA_DIR }, { perTest: true });
    const alice = await connect(first.url, { label: 'alice' });
    await joinOk(alice, 'alice');
    const seen = await sendOk(alice, 'seen before the restart');
    const missed = [await sendOk(alice, 'sent after alice last read')];
    alice.disconnect();
    const exit = await first.stop();
    assert.equal(exit.code, 0, `exit status 0 on SIGTERM: ${JSON.stringify(exit)}`);

    const second = await startServer({ BANTER_DATA_DIR }, { perTest: true });
    const bob = await connect(second.url, { label: 'bob' });
    const login = await joinOk(bob, 'bob');
    assert.deepEqual(
      login.history.map((m) => m.id),
      [seen.id, missed[0].id],
    );
    assert.equal(login.historyComplete, true);
    missed.push(await sendOk(bob, 'after the restart'));
    assert.ok(missed[1].id > missed[0].id, `${missed[1].id} > ${missed[0].id}`);

    const alice2 = await connect(second.url, { label: 'alice again' });
    const res = await joinOk(alice2, { username: 'alice', lastId: seen.id });
    assert.deepEqual(
      res.history.map((m) => m.id),
      missed.map((m) => m.id),
    );
    assert.equal(res.historyComplete, true);
  });

  it('with BANTER_STORE=memory: ids keep increasing, and a lastId from before the restart gives historyComplete false', async () => {
    const first = await startServer({ BANTER_STORE: 'memory' }, { perTest: true });
    const alice = await connect(first.url, { label: 'alice' });
    await joinOk(alice, 'alice');
    const before = await sendOk(alice, 'before the restart');
    alice.disconnect();
    const exit = await first.stop();
    assert.equal(exit.code, 0, `exit status 0 on SIGTERM: ${JSON.stringify(exit)}`);

    const second = await startServer({ BANTER_STORE: 'memory' }, { perTest: true });
    const bob = await connect(second.url, { label: 'bob' });
    await joinOk(bob, 'bob');
    const afterRestart = await sendOk(bob, 'after the restart');
    assert.ok(afterRestart.id > before.id, `${afterRestart.id} > ${before.id}`);

    const alice2 = await connect(second.url, { label: 'alice again' });
    const res = await joinOk(alice2, { username: 'alice', lastId: before.id });
    assert.equal(res.historyComplete, false, 'the store does not reach back to the old lastId');
    assert.ok(res.history.every((m) => m.id > before.id));
    assert.ok(res.history.some((m) => m.id === afterRestart.id));
  });
});

describe('nicknames', () => {
  const srv = serverPerTest();

  it('a nickname held by a live person gives the newcomer a variant "alice (2)" with renamedFrom; case-insensitive', async () => {
    const alice = await connect(srv.url, { label: 'alice' });
    await joinOk(alice, 'alice');

    const second = await connect(srv.url, { label: 'second alice' });
    const aliceSees = once(alice, 'user joined');
    const loginEvent = once(second, 'login');
    const res = await joinOk(second, 'alice');
    assert.equal(res.username, 'alice (2)');
    assert.equal(res.renamedFrom, 'alice');
    assert.equal(res.numUsers, 2);
    assert.deepEqual(res.users, ['alice', 'alice (2)']);
    assert.deepEqual(await loginEvent, res);
    const joined = await aliceSees;
    assert.equal(joined.username, 'alice (2)');
    assert.equal(joined.numUsers, 2);

    const third = await connect(srv.url, { label: 'ALICE' });
    const res3 = await joinOk(third, 'ALICE');
    assert.equal(res3.renamedFrom, 'ALICE');
    assert.equal(res3.username.toLowerCase(), 'alice (3)', `got ${res3.username}`);
    assert.equal(res3.numUsers, 3);
    assert.deepEqual(res3.users, ['alice', 'alice (2)', res3.username]);

    // The variant is the name the others see.
    const atAlice = once(alice, 'new message');
    await sendOk(second, 'hi');
    assert.equal((await atAlice).username, 'alice (2)');
  });

  it('different case of a live nickname also collides: "Bob" after "bob"', async () => {
    const bob = await connect(srv.url, { label: 'bob' });
    await joinOk(bob, 'bob');
    const other = await connect(srv.url, { label: 'Bob' });
    const res = await joinOk(other, 'Bob');
    assert.notEqual(res.username.toLowerCase(), 'bob');
    assert.equal(res.username.toLowerCase(), 'bob (2)');
    assert.equal(res.renamedFrom, 'Bob');
  });

  it('a nickname freed by socket.disconnect() can be taken again as is', async () => {
    const alice = await connect(srv.url, { label: 'alice' });
    const bob = await connect(srv.url, { label: 'bob' });
    await joinOk(alice, 'alice');
    await joinOk(bob, 'bob');
    const left = once(bob, 'user left');
    alice.disconnect();
    await left;
    const again = await connect(srv.url, { label: 'alice again' });
    const res = await joinOk(again, 'alice');
    assert.equal(res.username, 'alice');
    assert.ok(!('renamedFrom' in res));
  });
});

const GRACE_MS = 1500;

describe(`sessions and the reconnect grace period (BANTER_RECONNECT_GRACE_MS=${GRACE_MS})`, () => {
  const srv = serverPerTest({ BANTER_RECONNECT_GRACE_MS: GRACE_MS });

  for (const flavour of FLAVOUR_NAMES) {
    describe(`over ${flavour}`, () => {
      it('a dropped transport that reconnects with its session and re-sends add user keeps its name; nobody sees left/joined', async () => {
        let session = null;
        const alice = await connect(srv.url, {
          flavour,
          label: 'alice',
          reconnection: true,
          reconnectionDelay: 100,
          reconnectionDelayMax: 200,
          auth: (cb) => cb(session ? { session } : {}),
        });
        const bob = await connect(srv.url, { flavour, label: 'bob' });
        const first = await joinOk(alice, 'alice');
        session = first.session;
        await joinOk(bob, 'bob');

        const bobLeft = collect(bob, 'user left');
        const bobJoined = collect(bob, 'user joined');
        const dropped = once(alice, 'disconnect');
        const back = once(alice, 'connect');
        alice.io.engine.close(); // closes the transport without a Socket.IO disconnect
        assert.notEqual(await dropped, 'io client disconnect');
        await back;

        const again = await joinOk(alice, 'alice');
        assert.equal(again.username, 'alice');
        assert.ok(!('renamedFrom' in again), `no renamedFrom: ${JSON.stringify(again)}`);
        assert.equal(again.numUsers, 2);
        assert.deepEqual(again.users, ['alice', 'bob']);
        assert.match(again.session, SESSION_RE);
        session = again.session;

        // Past the grace period, still nothing: the old connection is never reported as left.
        await sleep(GRACE_MS + 500);
        assert.deepEqual(bobLeft, [], 'no user left');
        assert.deepEqual(bobJoined, [], 'no user joined');
        const listed = await ack(bob, 'list users');
        assert.equal(listed.numUsers, 2);
        assert.deepEqual(listed.users, ['alice', 'bob']);

        const atBob = once(bob, 'new message');
        await sendOk(alice, 'back');
        assert.equal((await atBob).username, 'alice');
      });

      it('within the grace period a newcomer without a session takes a dropped nickname back silently', async () => {
        const alice = await connect(srv.url, { flavour, label: 'alice' });
        const bob = await connect(srv.url, { flavour, label: 'bob' });
        await joinOk(alice, 'alice');
        await joinOk(bob, 'bob');
        const bobLeft = collect(bob, 'user left');
        const bobJoined = collect(bob, 'user joined');

        const dropped = once(alice, 'disconnect');
        alice.io.engine.close();
        await dropped;
        // No event can tell us the server has seen the drop (that is the point of the grace
        // period), so give it a moment: the newcomer must not race the close frame / packet.
        await sleep(250);

        const again = await connect(srv.url, { flavour, label: 'alice again' });
        const res = await joinOk(again, 'alice');
        assert.equal(res.username, 'alice');
        assert.ok(!('renamedFrom' in res), `no renamedFrom: ${JSON.stringify(res)}`);
        assert.equal(res.numUsers, 2);

        await sleep(GRACE_MS + 500);
        assert.deepEqual(bobLeft, [], 'no user left');
        assert.deepEqual(bobJoined, [], 'no user joined');
      });

      it('a dropped client that does not come back is reported left after the grace period', async () => {
        const alice = await connect(srv.url, { flavour, label: 'alice' });
        const bob = await connect(srv.url, { flavour, label: 'bob' });
        await joinOk(alice, 'alice');
        await joinOk(bob, 'bob');

        const left = once(bob, 'user left', 6000);
        const start = Date.now();
        alice.io.engine.close(); // reconnection is off: it never comes back
        const data = await left;
        const elapsed = Date.now() - start;
        assert.equal(data.username, 'alice');
        assert.equal(data.numUsers, 1);
        assert.ok(elapsed >= 1000, `reported after the grace period, not at once (${elapsed} ms)`);
        assert.ok(elapsed <= 5000, `reported within 5 s (${elapsed} ms)`);
      });

      it('socket.disconnect() is reported left at once, well before the grace period', async () => {
        const alice = await connect(srv.url, { flavour, label: 'alice' });
        const bob = await connect(srv.url, { flavour, label: 'bob' });
        await joinOk(alice, 'alice');
        await joinOk(bob, 'bob');

        const left = once(bob, 'user left', GRACE_MS - 500);
        alice.disconnect();
        const data = await left;
        assert.equal(data.username, 'alice');
        assert.equal(data.numUsers, 1);
      });

      it('replaced: a new socket with the session of a live one takes the person over; the old one gets error message replaced and is disconnected', async () => {
        const alice = await connect(srv.url, { flavour, label: 'alice (old socket)' });
        const carol = await connect(srv.url, { flavour, label: 'carol' });
        const first = await joinOk(alice, 'alice');
        await joinOk(carol, 'carol');

        const carolLeft = collect(carol, 'user left');
        const carolJoined = collect(carol, 'user joined');
        const replaced = once(alice, 'error message');
        const oldGone = once(alice, 'disconnect');

        const alice2 = await connect(srv.url, {
          flavour,
          label: 'alice (new socket)',
          auth: { session: first.session },
        });
        const res = await joinOk(alice2, 'alice');
        assert.equal(res.username, 'alice');
        assert.ok(!('renamedFrom' in res), `no renamedFrom: ${JSON.stringify(res)}`);
        assert.equal(res.numUsers, 2);
        assert.deepEqual(res.users, ['alice', 'carol']);

        const err = await replaced;
        assert.equal(err.code, 'replaced');
        assert.equal(typeof err.message, 'string');
        await oldGone;

        await sleep(GRACE_MS + 500);
        assert.deepEqual(carolLeft, [], 'no user left');
        assert.deepEqual(carolJoined, [], 'no user joined');
        const listed = await ack(carol, 'list users');
        assert.equal(listed.numUsers, 2);
        assert.deepEqual(listed.users, ['alice', 'carol']);

        const atCarol = once(carol, 'new message');
        await sendOk(alice2, 'it is still me');
        assert.equal((await atCarol).username, 'alice');
      });
    });
  }

  it('a connection that went silent (still looks connected) is taken over at once with its session', { skip: !HAVE_WS && 'the ws package is not installed' }, async () => {
    // A raw Engine.IO client that joins, then never says anything again.
    const ghost = await rawWebSocket(srv.url, { answerPings: false, label: 'silent ghost' });
    ghost.send('40');
    await ghost.next('40');
    ghost.send('420["add user","ghost"]');
    const ackPacket = await ghost.next('430');
    const login = JSON.parse(ackPacket.slice(3))[0];
    assert.equal(login.username, 'ghost');
    assert.match(login.session, SESSION_RE);

    const bob = await connect(srv.url, { label: 'bob' });
    await joinOk(bob, 'bob');
    const bobLeft = collect(bob, 'user left');
    const bobJoined = collect(bob, 'user joined');

    const back = await connect(srv.url, { label: 'ghost back', auth: { session: login.session } });
    const res = await joinOk(back, 'ghost');
    assert.equal(res.username, 'ghost');
    assert.ok(!('renamedFrom' in res));
    assert.equal(res.numUsers, 2);

    const replaced = await ghost.next((m) => parseEventPacket(m)?.[0] === 'error message');
    assert.equal(parseEventPacket(replaced)[1].code, 'replaced');
    // ...and it is disconnected: a Socket.IO DISCONNECT packet or the connection closes.
    const disconnected = await Promise.race([
      ghost.next('41').then(
        () => true,
        () => ghost.isClosed,
      ),
      ghost.closed.then(() => true),
    ]);
    assert.ok(disconnected, 'the silent socket was disconnected');

    await sleep(GRACE_MS + 500);
    assert.deepEqual(bobLeft, []);
    assert.deepEqual(bobJoined, []);
  });
});

describe('a heartbeat timeout is a dropped connection', () => {
  const srv = serverPerTest({
    BANTER_RECONNECT_GRACE_MS: GRACE_MS,
    BANTER_PING_INTERVAL_MS: 300,
    BANTER_PING_TIMEOUT_MS: 300,
  });

  it('a client that stops answering pings is closed, then reported left after the grace period', { skip: !HAVE_WS && 'the ws package is not installed' }, async () => {
    const bob = await connect(srv.url, { label: 'bob' });
    await joinOk(bob, 'bob');
    const left = once(bob, 'user left', 10_000);

    const ghost = await rawWebSocket(srv.url, { answerPings: false, label: 'ghost' });
    ghost.send('40');
    await ghost.next('40');
    ghost.send('420["add user","ghost"]');
    await ghost.next('430');

    await withTimeout(
      ghost.closed,
      5000,
      'the server did not close a connection that stopped answering pings',
    );
    const closedAt = Date.now();
    const data = await left;
    const elapsed = Date.now() - closedAt;
    assert.equal(data.username, 'ghost');
    assert.equal(data.numUsers, 1);
    assert.ok(elapsed >= 1000, `reported after the grace period (${elapsed} ms after the close)`);
    assert.ok(elapsed <= 5000, `reported within 5 s of the close (${elapsed} ms)`);
  });
});
