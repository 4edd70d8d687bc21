// Refusals, limits and error codes (docs/protocol.md: `error message`, section 3), both as an ack
// `{error: {code, message}}` and as an `error message` event when there is no ack; refused
// messages are never broadcast; malformed and oversized Engine.IO traffic hurts only its own
// connection.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  FLAVOUR_NAMES,
  HAVE_WS,
  ack,
  assertRunning,
  collect,
  connect,
  expectNoEvent,
  joinOk,
  once,
  pollingHandshake,
  rawWebSocket,
  sendOk,
  serverPerTest,
  sharedServer,
  sleep,
  uniqueName,
} from './harness.mjs';

const show = (args) => (args.length ? args.map((a) => JSON.stringify(a)).join(', ') : '(no argument)');

/** Emit with an ack and check the ack is {error: {code, message}}. */
async function refusedByAck(socket, event, args, code) {
  const res = await ack(socket, event, ...args);
  assert.ok(
    res && typeof res === 'object' && res.error,
    `"${event}" ${show(args)} should be refused with ${code}; ack was ${JSON.stringify(res)}`,
  );
  assert.equal(res.error.code, code, `"${event}" ${show(args)}: ack ${JSON.stringify(res)}`);
  assert.equal(typeof res.error.message, 'string', 'error.message is a string');
}

/** Emit without an ack and check an `error message` {code, message} comes back. */
async function refusedByEvent(socket, event, args, code) {
  const err = once(socket, 'error message');
  socket.emit(event, ...args);
  let data;
  try {
    data = await err;
  } catch (e) {
    throw new Error(`"${event}" ${show(args)} (no ack) should give error message ${code}: ${e.message}`);
  }
  assert.equal(data.code, code, `"${event}" ${show(args)}: error message ${JSON.stringify(data)}`);
  assert.equal(typeof data.message, 'string', 'message is a string');
}

async function refusedBoth(socket, event, args, code) {
  await refusedByAck(socket, event, args, code);
  await refusedByEvent(socket, event, args, code);
}

/** Two fresh people can chat: proves the server still serves. */
async function freshPairChats(url, flavour = 'websocket') {
  const a = await connect(url, { flavour, label: 'fresh a' });
  const b = await connect(url, { flavour, label: 'fresh b' });
  const nameA = uniqueName('fresh');
  await joinOk(a, nameA);
  await joinOk(b, uniqueName('fresh'));
  const atB = once(b, 'new message');
  await sendOk(a, 'still alive?');
  const msg = await atB;
  assert.equal(msg.username, nameA);
  assert.equal(msg.message, 'still alive?');
}

describe('refusals and error codes', () => {
  const srv = sharedServer();

  /** A joined observer that records every broadcast message. */
  async function observer() {
    const socket = await connect(srv.url, { label: 'observer' });
    await joinOk(socket, uniqueName('observer'));
    return { socket, messages: collect(socket, 'new message') };
  }

  it('new message before add user → not_joined (ack and error message), never broadcast', async () => {
    const obs = await observer();
    const stranger = await connect(srv.url, { label: 'stranger' });
    await refusedBoth(stranger, 'new message', ['hello?'], 'not_joined');
    await sleep(300);
    assert.deepEqual(obs.messages, []);
  });

  it('new message with a wrong argument type → bad_request (number, object, array, none, null)', async () => {
    const obs = await observer();
    const alice = await connect(srv.url, { label: 'alice' });
    await joinOk(alice, uniqueName('alice'));
    for (const args of [[42], [{ text: 'hi' }], [['hi']], [], [null], [true]]) {
      await refusedBoth(alice, 'new message', args, 'bad_request');
    }
    await sleep(300);
    assert.deepEqual(obs.messages, [], 'nothing was broadcast');
  });

  it('add user with a wrong argument type or shape → bad_request, and no login', async () => {
    const alice = await connect(srv.url, { label: 'alice' });
    const logins = collect(alice, 'login');
    const name = uniqueName('alice');
    const cases = [
      [42],
      [{}],
      [{ username: 42 }],
      [{ name }],
      [[name]],
      [null],
      [],
      [{ username: name, lastId: 'abc' }],
    ];
    for (const args of cases) await refusedBoth(alice, 'add user', args, 'bad_request');
    await sleep(300);
    assert.deepEqual(logins, [], 'no login after a refused add user');
    const listed = await ack(alice, 'list users');
    assert.ok(!listed.users.includes(name), 'the refused socket did not join');
    // The socket can still join properly afterwards.
    const res = await joinOk(alice, name);
    assert.equal(res.username, name);
  });

  it('empty or white-space-only message → empty', async () => {
    const obs = await observer();
    const alice = await connect(srv.url, { label: 'alice' });
    await joinOk(alice, uniqueName('alice'));
    for (const text of ['', ' ', '   ', '\n\t  \r\n']) {
      await refusedBoth(alice, 'new message', [text], 'empty');
    }
    await sleep(300);
    assert.deepEqual(obs.messages, []);
  });

  it('2,000 characters are accepted, 2,001 → too_long', async () => {
    const obs = await observer();
    const alice = await connect(srv.url, { label: 'alice' });
    await joinOk(alice, uniqueName('alice'));
    const ok1 = 'x'.repeat(2000);
    const ok2 = 'é'.repeat(2000); // 2,000 characters, 4,000 UTF-8 bytes
    await sendOk(alice, ok1);
    await sendOk(alice, ok2);
    await refusedBoth(alice, 'new message', ['x'.repeat(2001)], 'too_long');
    await refusedBoth(alice, 'new message', ['é'.repeat(2001)], 'too_long');
    await obs.messages.until(2);
    await sleep(300);
    assert.deepEqual(
      obs.messages.map((m) => m.message),
      [ok1, ok2],
      'only the accepted messages were broadcast',
    );
  });

  it('invalid nicknames → invalid_name ("", "   ", 33 characters, control characters)', async () => {
    const alice = await connect(srv.url, { label: 'alice' });
    const logins = collect(alice, 'login');
    const invalid = ['', '   ', 'x'.repeat(33), '😀'.repeat(33), 'a\u0007b', '\u0000', 'two\nlines', 'del\u007f'];
    for (const name of invalid) {
      await refusedBoth(alice, 'add user', [name], 'invalid_name');
      await refusedBoth(alice, 'add user', [{ username: name }], 'invalid_name');
    }
    await sleep(300);
    assert.deepEqual(logins, []);
  });

  it('nicknames of exactly 32 characters (Unicode scalar values, after trimming) are accepted', async () => {
    for (const name of ['a'.repeat(32), '😀'.repeat(32), `  ${'b'.repeat(32)}  `]) {
      const socket = await connect(srv.url, { label: 'long name' });
      const res = await joinOk(socket, name);
      assert.equal(res.username, name.trim());
    }
  });

  it('an unknown event → error message unknown_event (and the ack form gets the error)', async () => {
    const stranger = await connect(srv.url, { label: 'stranger' });
    await refusedByEvent(stranger, 'foo', [], 'unknown_event');
    await refusedByEvent(stranger, 'foo', [{ a: 1 }], 'unknown_event');
    const alice = await connect(srv.url, { label: 'alice' });
    await joinOk(alice, uniqueName('alice'));
    await refusedByEvent(alice, 'foo', ['bar'], 'unknown_event');
    await refusedByAck(alice, 'foo', ['bar'], 'unknown_event');
  });

  it('a second add user with an ack → already_joined, and nothing changes', async () => {
    const alice = await connect(srv.url, { label: 'alice' });
    const bob = await connect(srv.url, { label: 'bob' });
    const nameA = uniqueName('alice');
    await joinOk(alice, nameA);
    await joinOk(bob, uniqueName('bob'));
    const before = await ack(bob, 'list users');
    const bobJoined = collect(bob, 'user joined');
    const aliceLogins = collect(alice, 'login');

    await refusedByAck(alice, 'add user', [uniqueName('other')], 'already_joined');
    await refusedByAck(alice, 'add user', [nameA], 'already_joined');
    await refusedByAck(alice, 'add user', [{ username: uniqueName('other') }], 'already_joined');

    await sleep(300);
    assert.deepEqual(bobJoined, []);
    assert.deepEqual(aliceLogins, []);
    assert.deepEqual(await ack(bob, 'list users'), before);
    const atBob = once(bob, 'new message');
    await sendOk(alice, 'same name');
    assert.equal((await atBob).username, nameA);
  });

  it('typing before add user is ignored, silently', async () => {
    const bob = await connect(srv.url, { label: 'bob' });
    await joinOk(bob, uniqueName('bob'));
    const stranger = await connect(srv.url, { label: 'stranger' });
    const noTyping = expectNoEvent(bob, 'typing', 400);
    const noStop = expectNoEvent(bob, 'stop typing', 400);
    const noError = expectNoEvent(stranger, 'error message', 400);
    stranger.emit('typing');
    stranger.emit('stop typing');
    await Promise.all([noTyping, noStop, noError]);
  });

  it('typing over the per-socket limit is dropped silently (no error message)', async () => {
    const alice = await connect(srv.url, { label: 'alice' });
    const bob = await connect(srv.url, { label: 'bob' });
    await joinOk(alice, uniqueName('alice'));
    await joinOk(bob, uniqueName('bob'));
    const typing = collect(bob, 'typing');
    const errors = collect(alice, 'error message');
    for (let i = 0; i < 30; i += 1) alice.emit('typing');
    await typing.until(1);
    await sleep(500);
    assert.ok(typing.length >= 1, 'some typing notices get through');
    assert.ok(typing.length <= 12, `typing is limited (bursts of 8): got ${typing.length} of 30`);
    assert.deepEqual(errors, [], 'no error message for dropped typing notices');
  });

  it('after all that, the server still serves: a fresh pair can chat', async () => {
    assertRunning(srv.server);
    await freshPairChats(srv.url, 'websocket');
    await freshPairChats(srv.url, 'polling');
    const health = await fetch(`${srv.url}/healthz`);
    assert.equal(health.status, 200);
  });
});

describe('message rate limit (BANTER_MESSAGE_RATE=1, BANTER_MESSAGE_BURST=3)', () => {
  const srv = serverPerTest({ BANTER_MESSAGE_RATE: 1, BANTER_MESSAGE_BURST: 3 });

  it('a burst of 3 is accepted, then rate_limited (ack and error message); refused messages are never broadcast', async () => {
    const alice = await connect(srv.url, { label: 'alice' });
    const bob = await connect(srv.url, { label: 'bob' });
    await joinOk(alice, 'alice');
    await joinOk(bob, 'bob');
    const atBob = collect(bob, 'new message');

    // Sent back to back: far less than a second apart, so at most a fraction of a token refills.
    const results = await Promise.all(
      ['one', 'two', 'three', 'four'].map((text) => ack(alice, 'new message', text)),
    );
    assert.ok(results.slice(0, 3).every((r) => typeof r.id === 'number' && !r.error), JSON.stringify(results));
    assert.equal(results[3].error?.code, 'rate_limited', JSON.stringify(results[3]));
    assert.equal(typeof results[3].error.message, 'string');
    await refusedByEvent(alice, 'new message', ['five'], 'rate_limited');

    await atBob.until(3);
    await sleep(400);
    assert.deepEqual(
      atBob.map((m) => m.message),
      ['one', 'two', 'three'],
      'only the accepted messages reached bob',
    );
    const history = await joinOk(await connect(srv.url, { label: 'carol' }), 'carol');
    assert.deepEqual(
      history.history.map((m) => m.message),
      ['one', 'two', 'three'],
      'refused messages were not stored',
    );
  });

  it('the limit is per socket, and it refills over time', async () => {
    const alice = await connect(srv.url, { label: 'alice' });
    const bob = await connect(srv.url, { label: 'bob' });
    await joinOk(alice, 'alice');
    await joinOk(bob, 'bob');
    for (const text of ['1', '2', '3']) await sendOk(alice, text);
    await refusedByAck(alice, 'new message', ['4'], 'rate_limited');
    // bob has his own budget
    await sendOk(bob, 'mine');
    // one token per second
    await sleep(1200);
    await sendOk(alice, 'after a pause');
  });
});

// (The server refuses BANTER_MAX_NAME_CHARS below 8, so that variants like "ab (12)" fit.)
describe('limits follow their settings (BANTER_MAX_NAME_CHARS=8, BANTER_MAX_MESSAGE_CHARS=10)', () => {
  const srv = serverPerTest({ BANTER_MAX_NAME_CHARS: 8, BANTER_MAX_MESSAGE_CHARS: 10 });

  it('8-character nicknames and 10-character messages are the limits', async () => {
    const alice = await connect(srv.url, { label: 'alice' });
    await refusedByAck(alice, 'add user', ['ninechars'], 'invalid_name');
    const res = await joinOk(alice, 'eightchr');
    assert.equal(res.username, 'eightchr');
    await sendOk(alice, '0123456789');
    await refusedByAck(alice, 'new message', ['0123456789a'], 'too_long');
  });
});

const MAX_PAYLOAD = 10_000;

describe(`Engine.IO level (BANTER_MAX_PAYLOAD_BYTES=${MAX_PAYLOAD})`, () => {
  const srv = serverPerTest({ BANTER_MAX_PAYLOAD_BYTES: MAX_PAYLOAD });

  /** Two joined bystanders, connected before the trouble starts. */
  async function bystanders() {
    const a = await connect(srv.url, { flavour: 'websocket', label: 'bystander ws' });
    const b = await connect(srv.url, { flavour: 'polling', label: 'bystander polling' });
    await joinOk(a, 'bystander-a');
    await joinOk(b, 'bystander-b');
    const dropsA = collect(a, 'disconnect');
    const dropsB = collect(b, 'disconnect');
    return { a, b, dropsA, dropsB };
  }

  /** The bystanders are still connected and still chat both ways. */
  async function stillChatting({ a, b, dropsA, dropsB }) {
    assertRunning(srv.server);
    assert.deepEqual(dropsA, [], 'bystander ws was not disconnected');
    assert.deepEqual(dropsB, [], 'bystander polling was not disconnected');
    const atB = once(b, 'new message');
    await sendOk(a, 'ping from a');
    assert.equal((await atB).message, 'ping from a');
    const atA = once(a, 'new message');
    await sendOk(b, 'ping from b');
    assert.equal((await atA).message, 'ping from b');
    const health = await fetch(`${srv.url}/healthz`);
    assert.equal(health.status, 200);
  }

  it('the handshake advertises the configured maxPayload', async () => {
    const open = await pollingHandshake(srv.url);
    assert.equal(typeof open.sid, 'string');
    assert.equal(open.maxPayload, MAX_PAYLOAD);
  });

  it('malformed packets over raw HTTP long-polling: the server stays up and the others keep chatting', async () => {
    const people = await bystanders();
    const garbage = [
      'garbage',
      '\u0000\u0001\u0002\u0003',
      '9{"not":"a packet type"}',
      '4',
      '42["new message"',
      '42{"not":"an array"}',
      '42[]',
      '42[42]',
      '40/nope,',
      '4\u001e\u001e\u001e2',
      'b' + 'not base64 at all!!',
      '😀'.repeat(50),
    ];
    const statuses = [];
    for (const body of garbage) {
      // A fresh Engine.IO session for each, connected to the namespace first.
      const { sid } = await pollingHandshake(srv.url);
      const endpoint = `${srv.url}/socket.io/?EIO=4&transport=polling&sid=${encodeURIComponent(sid)}`;
      const post = async (text) => {
        const res = await fetch(endpoint, {
          method: 'POST',
          body: text,
          headers: { 'content-type': 'text/plain;charset=UTF-8' },
        });
        await res.arrayBuffer();
        return res.status;
      };
      await post('40');
      statuses.push(await post(body));
      // One more poll on that session must not hang forever or crash anything; any answer will do.
      await fetch(endpoint, { signal: AbortSignal.timeout(1000) })
        .then((res) => res.arrayBuffer())
        .catch(() => null);
    }
    assert.equal(statuses.length, garbage.length);
    await stillChatting(people);
    await freshPairChats(srv.url, 'polling');
  });

  it('malformed packets over a raw WebSocket: the server stays up and the others keep chatting', { skip: !HAVE_WS && 'the ws package is not installed (Node 20 has no global WebSocket)' }, async () => {
    const people = await bystanders();
    const garbage = [
      'garbage',
      '',
      '\u0000\u0001',
      '9',
      '4',
      '42["new message"',
      '42{"not":"an array"}',
      '42[]',
      '42[42]',
      '421["add user"',
      '40/nope,',
      '5',
      Buffer.from([0xff, 0x00, 0x13, 0x37]),
      Buffer.alloc(0),
    ];
    for (const data of garbage) {
      const raw = await rawWebSocket(srv.url, { label: `raw ws (${JSON.stringify(String(data))})` });
      raw.send('40');
      await raw.next('40');
      raw.send(data);
      // Either the server closes this connection or it ignores the packet; both are fine.
      await Promise.race([raw.closed, sleep(200)]);
      raw.close();
    }
    await stillChatting(people);
    await freshPairChats(srv.url, 'websocket');
  });

  for (const flavour of FLAVOUR_NAMES) {
    it(`a payload over maxPayload closes only that connection (${flavour}); the client reconnects`, async () => {
      const people = await bystanders();
      const big = await connect(srv.url, {
        flavour,
        label: `big sender (${flavour})`,
        reconnection: true,
        reconnectionDelay: 100,
        reconnectionDelayMax: 200,
      });
      await joinOk(big, 'big');
      const seenA = collect(people.a, 'new message');
      const seenB = collect(people.b, 'new message');

      const gone = once(big, 'disconnect');
      const back = once(big, 'connect', 10_000);
      big.emit('new message', 'x'.repeat(MAX_PAYLOAD * 2));
      const reason = await gone;
      assert.ok(
        ['transport close', 'transport error'].includes(reason),
        `closed at the transport level, got "${reason}"`,
      );
      await back;

      // It was a dropped connection: within the grace period the name comes back as is.
      const again = await joinOk(big, 'big');
      assert.equal(again.username, 'big');

      await stillChatting(people);
      assert.ok(
        [...seenA, ...seenB].every((m) => m.username !== 'big'),
        'the oversized message was never broadcast',
      );
    });
  }
});
