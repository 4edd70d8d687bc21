"""The official python-socketio asyncio client (socketio.AsyncClient, over aiohttp) against
Banter, unchanged.

One Banter (`--store memory`) serves the whole module; every test starts in an empty chat and
leaves it empty. The tests run over each transport the client offers: WebSocket only, HTTP
long-polling only, and its default (polling, then the upgrade to WebSocket, which
python-engineio completes inside connect()).

The event contract is docs/protocol.md.
"""

import asyncio
import time
import unittest

import socketio

import harness
from harness import QUIET, TIMEOUT

# The reconnect grace period of the module's server. The asyncio client's disconnect() closes
# its WebSocket (or its HTTP session) before its goodbye packets are written, so Banter sees each
# of its disconnects as a dropped connection and keeps the person this long (see
# test_user_left_on_disconnect). Short, so that such a person is gone before the next test.
GRACE_MS = 300

SERVER = None


def setUpModule():
    global SERVER
    SERVER = harness.start_chat_server(GRACE_MS)


def tearDownModule():
    harness.stop_server(SERVER)


def new_client(**options):
    """A socketio.AsyncClient as an application makes one (reconnection off unless asked)."""
    options.setdefault('reconnection', False)
    return socketio.AsyncClient(handle_sigint=False, **options)


def quiet_unclosed_sessions(loop):
    """aiohttp also reports the sessions python-engineio leaves open (see
    harness.quiet_client_leak_warnings) through the loop's exception handler when they are
    garbage collected. Say nothing of those, pass everything else on."""
    def handler(loop, context):
        if 'client_session' in context or 'connector' in context:
            return
        loop.default_exception_handler(context)
    loop.set_exception_handler(handler)


class Person:
    """A python-socketio asyncio client and the events it received."""

    def __init__(self, label, sio, events):
        self.label = label
        self.sio = sio
        self.events = events

    async def call(self, event, data=None):
        return await self.sio.call(event, data, timeout=TIMEOUT)

    def wait(self, event, predicate=None, timeout=TIMEOUT, nth=0):
        return self.events.await_(event, predicate, timeout, nth)


class AsyncChatTests:
    """Mixed into one IsolatedAsyncioTestCase per transport below."""

    TRANSPORTS = None
    EXPECTED_TRANSPORT = 'websocket'

    async def asyncSetUp(self):
        self.assertIsNotNone(SERVER, 'the module server did not start')
        quiet_unclosed_sessions(asyncio.get_running_loop())
        self.url = SERVER.url
        self.people = []

    async def asyncTearDown(self):
        for p in self.people:
            await p.sio.disconnect()
        self.assertTrue(SERVER.running(), 'Banter exited during the test\n' + SERVER.output())
        await self.wait_until_chat_empty()

    async def connect(self, label, transports='default', auth=None, **options):
        """A connected client, disconnected after the test."""
        sio = new_client(**options)
        events = harness.Events(label).attach(sio)
        person = Person(label, sio, events)
        self.people.append(person)
        await sio.connect(self.url,
                          transports=self.TRANSPORTS if transports == 'default' else transports,
                          auth=auth, wait_timeout=TIMEOUT)
        return person

    async def join(self, person, name):
        login = await person.call('add user', name)
        self.assertIsInstance(login, dict)
        self.assertNotIn('error', login, 'add user %r was refused' % name)
        return login

    async def wait_until_chat_empty(self):
        monitor = new_client()
        try:
            await monitor.connect(self.url, transports=['websocket'], wait_timeout=TIMEOUT)
            deadline = time.monotonic() + TIMEOUT
            while True:
                listed = await monitor.call('list users', timeout=TIMEOUT)
                if listed['numUsers'] == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            self.assertEqual(listed, {'numUsers': 0, 'users': []},
                             'people still in the chat after the test')
        finally:
            await monitor.disconnect()

    def assert_id_ts(self, data):
        self.assertIsInstance(data['id'], int)
        self.assertGreater(data['id'], 0)
        self.assertIsInstance(data['ts'], int)
        self.assertLess(abs(data['ts'] - time.time() * 1000), 60_000, 'ts is near now')

    async def test_connects(self):
        alice = await self.connect('alice')
        self.assertTrue(alice.sio.connected)
        self.assertEqual(alice.sio.transport(), self.EXPECTED_TRANSPORT)
        expected_upgrades = [] if self.TRANSPORTS == ['websocket'] else ['websocket']
        self.assertEqual(alice.sio.eio.upgrades, expected_upgrades)
        self.assertTrue(alice.sio.get_sid())
        self.assertEqual(await alice.call('list users'), {'numUsers': 0, 'users': []})
        self.assertEqual(alice.sio.transport(), self.EXPECTED_TRANSPORT)

    async def test_add_user_gets_login(self):
        alice = await self.connect('alice')
        await alice.sio.emit('add user', 'alice')  # classic: no ack, the answer is `login`
        login = await alice.wait('login')
        self.assertEqual(login['numUsers'], 1)
        self.assertEqual(login['username'], 'alice')
        self.assertEqual(login['users'], ['alice'])
        self.assertEqual(login['room'], 'lobby')
        self.assertIs(login['historyComplete'], True)
        self.assertRegex(login['session'], r'^[0-9a-f]{32}$')

        bob = await self.connect('bob')
        ack = await bob.call('add user', {'username': 'bob'})
        self.assertEqual(ack['numUsers'], 2)
        self.assertEqual(ack['users'], ['alice', 'bob'])
        self.assertEqual(await bob.wait('login'), ack, 'the ack is the login')

    async def test_a_conversation(self):
        """user joined, typing, stop typing, new message: what the classic page does."""
        alice = await self.connect('alice')
        await self.join(alice, 'alice')
        bob = await self.connect('bob')
        self.assertEqual((await self.join(bob, 'bob'))['numUsers'], 2)
        self.assertEqual(await alice.wait('user joined'), {'username': 'bob', 'numUsers': 2})

        await bob.sio.emit('typing')
        self.assertEqual(await alice.wait('typing'), {'username': 'bob'})
        await bob.sio.emit('stop typing')
        self.assertEqual(await alice.wait('stop typing'), {'username': 'bob'})
        await bob.sio.emit('new message', 'hello from asyncio 🐍')
        got = await alice.wait('new message')
        self.assertEqual(set(got), {'username', 'message', 'id', 'ts'})
        self.assertEqual((got['username'], got['message']), ('bob', 'hello from asyncio 🐍'))
        self.assert_id_ts(got)

        await alice.sio.emit('new message', 'hi bob')
        self.assertEqual((await bob.wait('new message'))['message'], 'hi bob')

        await asyncio.sleep(QUIET)
        # Each got the other's message once, and nobody hears of their own doings.
        self.assertEqual([m['message'] for m in alice.events.all('new message')],
                         ['hello from asyncio 🐍'])
        self.assertEqual([m['message'] for m in bob.events.all('new message')], ['hi bob'])
        self.assertEqual(alice.events.all('typing'), [{'username': 'bob'}])
        self.assertEqual(alice.events.all('stop typing'), [{'username': 'bob'}])
        self.assertEqual(bob.events.all('typing') + bob.events.all('stop typing'), [])
        self.assertEqual(bob.events.all('user joined'), [])

    async def test_user_left_on_disconnect(self):
        alice, bob = await self.connect('alice'), await self.connect('bob')
        await self.join(alice, 'alice')
        await self.join(bob, 'bob')
        await bob.sio.disconnect()
        # python-socketio 5.7's AsyncClient.disconnect() closes the WebSocket (or, over polling,
        # its HTTP session) before its DISCONNECT and Engine.IO close packets go out. Banter
        # then sees a dropped connection: `user left` comes at the end of the grace period
        # rather than at once, as docs/protocol.md says.
        left = await alice.wait('user left', timeout=TIMEOUT + GRACE_MS / 1000)
        self.assertEqual(left, {'username': 'bob', 'numUsers': 1})
        self.assertEqual(await alice.call('list users'), {'numUsers': 1, 'users': ['alice']})

    async def test_acks(self):
        alice, bob = await self.connect('alice'), await self.connect('bob')
        await self.join(alice, 'alice')
        await self.join(bob, 'bob')
        first = await alice.call('new message', 'one')
        self.assertEqual(set(first), {'id', 'ts'}, first)
        self.assert_id_ts(first)
        broadcast = await bob.wait('new message', lambda m: m['message'] == 'one')
        self.assertEqual((broadcast['id'], broadcast['ts']), (first['id'], first['ts']))

        # emit() with a callback, a plain function and a coroutine function.
        loop = asyncio.get_running_loop()
        plain, coro = loop.create_future(), loop.create_future()

        async def on_ack(*args):
            coro.set_result(args)

        await alice.sio.emit('new message', 'two', callback=lambda *args: plain.set_result(args))
        await alice.sio.emit('new message', 'three', callback=on_ack)
        (second,) = await asyncio.wait_for(plain, TIMEOUT)
        (third,) = await asyncio.wait_for(coro, TIMEOUT)
        self.assertEqual(set(second), {'id', 'ts'})
        self.assertEqual(set(third), {'id', 'ts'})
        self.assertLess(first['id'], second['id'])
        self.assertLess(second['id'], third['id'], 'ids increase in the order sent')
        await bob.wait('new message', nth=2)
        self.assertEqual([m['id'] for m in bob.events.all('new message')],
                         [first['id'], second['id'], third['id']])

    async def test_refusals(self):
        stranger = await self.connect('stranger')
        alice, bob = await self.connect('alice'), await self.connect('bob')

        async def refused(person, event, data, code):
            res = await person.call(event, data)
            self.assertIsInstance(res, dict, '%s %r' % (event, data))
            self.assertIn('error', res, '%s %r should be refused: %r' % (event, data, res))
            self.assertEqual(res['error']['code'], code, '%s %r: %r' % (event, data, res))
            self.assertIsInstance(res['error']['message'], str)

        await refused(stranger, 'new message', 'hello?', 'not_joined')
        await refused(stranger, 'add user', '', 'invalid_name')
        await refused(stranger, 'add user', ['alice'], 'bad_request')
        await self.join(alice, 'alice')
        await self.join(bob, 'bob')
        await refused(alice, 'new message', {'text': 'hi'}, 'bad_request')  # a bad payload type
        await refused(alice, 'new message', True, 'bad_request')
        await refused(alice, 'new message', '', 'empty')
        await refused(alice, 'new message', 'é' * 2001, 'too_long')
        await refused(alice, 'add user', 'again', 'already_joined')

        # Without an ack: the `error message` event.
        await alice.sio.emit('new message', 12345)
        err = await alice.wait('error message')
        self.assertEqual(err['code'], 'bad_request')
        self.assertIsInstance(err['message'], str)
        await alice.sio.emit('whatever', {'a': 1})
        self.assertEqual((await alice.wait('error message', nth=1))['code'], 'unknown_event')

        await asyncio.sleep(QUIET)
        self.assertEqual(bob.events.all('new message'), [], 'nothing refused was broadcast')
        self.assertEqual(bob.events.all('error message'), [])
        self.assertEqual(stranger.events.all('login'), [])

    async def test_history_and_last_id(self):
        alice, bob = await self.connect('alice'), await self.connect('bob')
        await self.join(alice, 'alice')
        await self.join(bob, 'bob')
        seen = await bob.call('new message', 'seen')
        last_id = (await alice.wait('new message'))['id']
        self.assertEqual(last_id, seen['id'])
        await alice.sio.disconnect()
        missed = [await bob.call('new message', 'missed %d' % i) for i in range(3)]

        again = await self.connect('alice again')
        login = await self.join(again, {'username': 'alice', 'lastId': last_id})
        self.assertEqual(login['username'], 'alice')
        self.assertIs(login['historyComplete'], True)
        self.assertEqual([(m['id'], m['message']) for m in login['history']],
                         [(m['id'], 'missed %d' % i) for i, m in enumerate(missed)])

    async def test_session_in_auth_takes_the_person_over(self):
        """The handshake `auth` of python-socketio carries Banter's session token: a second
        connection takes the person over, the first is told `replaced` and disconnected, and
        the others see nobody leave or join."""
        alice, bob = await self.connect('alice'), await self.connect('bob')
        session = (await self.join(alice, 'alice'))['session']
        await self.join(bob, 'bob')
        await alice.wait('user joined')

        alice2 = await self.connect('alice (new tab)', auth={'session': session})
        login = await self.join(alice2, 'alice')
        self.assertEqual(login['username'], 'alice')
        self.assertNotIn('renamedFrom', login)
        self.assertEqual(login['numUsers'], 2)
        self.assertEqual(login['session'], session)

        self.assertEqual((await alice.wait('error message'))['code'], 'replaced')
        await alice.wait('disconnect')
        self.assertFalse(alice.sio.connected)
        await asyncio.sleep(QUIET)
        self.assertEqual(bob.events.all('user left'), [])
        self.assertEqual(bob.events.all('user joined'), [])
        # The new connection is the person now.
        await alice2.sio.emit('new message', 'it is me')
        self.assertEqual((await bob.wait('new message'))['username'], 'alice')


class AsyncWebSocketTest(AsyncChatTests, unittest.IsolatedAsyncioTestCase):
    TRANSPORTS = ['websocket']
    EXPECTED_TRANSPORT = 'websocket'


class AsyncPollingTest(AsyncChatTests, unittest.IsolatedAsyncioTestCase):
    TRANSPORTS = ['polling']
    EXPECTED_TRANSPORT = 'polling'


class AsyncUpgradeTest(AsyncChatTests, unittest.IsolatedAsyncioTestCase):
    """The client's default: polling first, then the upgrade."""
    TRANSPORTS = None
    EXPECTED_TRANSPORT = 'websocket'


if __name__ == '__main__':
    unittest.main()
