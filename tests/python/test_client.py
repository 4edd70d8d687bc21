"""The official python-socketio client (socketio.Client, the threaded one) against Banter, unchanged.

One Banter (`--store memory`) serves the whole module; every test starts in an empty chat and
leaves it empty. The chat tests run over each transport the client offers: WebSocket only,
HTTP long-polling only, and its default (polling, then the upgrade to WebSocket, which
python-engineio completes inside connect()). The restart test runs its own Banter, with a SQLite
history, twice on one port.

The event contract is docs/protocol.md.
"""

import tempfile
import threading
import time
import unittest

import socketio

import harness
from harness import QUIET, TIMEOUT

# The reconnect grace period of the module's server. python-socketio's disconnect() does not
# always get its goodbye out (see test_user_left_on_disconnect and harness.HEARTBEAT_MS);
# Banter then treats the person as dropped and keeps them this long. Short, so that such a
# person is gone before the next test.
GRACE_MS = 300

SERVER = None


def setUpModule():
    global SERVER
    SERVER = harness.start_chat_server(GRACE_MS)


def tearDownModule():
    harness.stop_server(SERVER)


def new_client(**options):
    """A socketio.Client as an application makes one (reconnection off unless asked)."""
    options.setdefault('reconnection', False)
    return socketio.Client(handle_sigint=False, **options)


class Person:
    """A python-socketio client and the events it received."""

    def __init__(self, label, sio, events):
        self.label = label
        self.sio = sio
        self.events = events

    def call(self, event, data=None):
        return self.sio.call(event, data, timeout=TIMEOUT)


class BanterTestCase(unittest.TestCase):
    TRANSPORTS = ['websocket']

    def setUp(self):
        self.assertIsNotNone(SERVER, 'the module server did not start')
        self.url = SERVER.url
        self.people = []

    def tearDown(self):
        for p in self.people:
            p.sio.disconnect()
        self.assertTrue(SERVER.running(), 'Banter exited during the test\n' + SERVER.output())
        self.wait_until_chat_empty()

    def connect(self, label, transports='default', url=None, **options):
        """A connected client, disconnected after the test."""
        sio = new_client(**options)
        events = harness.Events(label).attach(sio)
        person = Person(label, sio, events)
        self.people.append(person)
        sio.connect(url or self.url,
                    transports=self.TRANSPORTS if transports == 'default' else transports,
                    wait_timeout=TIMEOUT)
        return person

    def join(self, person, name):
        """`add user` with an ack; fails on a refusal. Returns the ack (the login)."""
        login = person.call('add user', name)
        self.assertIsInstance(login, dict)
        self.assertNotIn('error', login, 'add user %r was refused' % name)
        return login

    def wait_until_chat_empty(self):
        """`list users` (allowed before joining) until nobody is in the chat."""
        monitor = new_client()
        try:
            monitor.connect(self.url, transports=['websocket'], wait_timeout=TIMEOUT)
            deadline = time.monotonic() + TIMEOUT
            while True:
                listed = monitor.call('list users', timeout=TIMEOUT)
                if listed['numUsers'] == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            self.assertEqual(listed, {'numUsers': 0, 'users': []},
                             'people still in the chat after the test')
        finally:
            monitor.disconnect()

    def assert_message(self, data, username, text):
        """A broadcast `new message`: {username, message, id, ts}."""
        self.assertEqual(set(data), {'username', 'message', 'id', 'ts'}, data)
        self.assertEqual(data['username'], username)
        self.assertEqual(data['message'], text)
        self.assert_id_ts(data)

    def assert_id_ts(self, data):
        self.assertIsInstance(data['id'], int)
        self.assertGreater(data['id'], 0)
        self.assertIsInstance(data['ts'], int)
        self.assertLess(abs(data['ts'] - time.time() * 1000), 60_000, 'ts is near now')


class ChatTests:
    """The classic events and the extensions, over self.TRANSPORTS (mixed into one TestCase
    per transport below)."""

    EXPECTED_TRANSPORT = 'websocket'

    def test_connects(self):
        alice = self.connect('alice')
        self.assertTrue(alice.sio.connected)
        self.assertEqual(alice.sio.transport(), self.EXPECTED_TRANSPORT)
        # The Engine.IO open packet: over WebSocket there is nothing to upgrade to, over polling
        # the upgrade is offered.
        expected_upgrades = [] if self.TRANSPORTS == ['websocket'] else ['websocket']
        self.assertEqual(alice.sio.eio.upgrades, expected_upgrades)
        self.assertTrue(alice.sio.get_sid(), 'the namespace connect gave a sid')
        self.assertNotEqual(alice.sio.get_sid(), alice.sio.eio.sid,
                            'the Socket.IO sid is not the Engine.IO one')
        # A round trip on the connection (an ack), with nobody in the chat yet.
        self.assertEqual(alice.call('list users'), {'numUsers': 0, 'users': []})
        self.assertEqual(alice.sio.transport(), self.EXPECTED_TRANSPORT)

    def test_add_user_gets_login(self):
        alice = self.connect('alice')
        # Classic: a string, no ack; the answer is the `login` event.
        alice.sio.emit('add user', 'alice')
        login = alice.events.wait('login')
        self.assertEqual(login['numUsers'], 1)
        self.assertEqual(login['username'], 'alice')
        self.assertNotIn('renamedFrom', login)
        self.assertEqual(login['users'], ['alice'])
        self.assertEqual(login['room'], 'lobby')
        self.assertIsInstance(login['history'], list)
        self.assertIs(login['historyComplete'], True)
        self.assertRegex(login['session'], r'^[0-9a-f]{32}$')

        # With an ack (the object form): the ack is the login, which also comes as the event.
        bob = self.connect('bob')
        ack = bob.call('add user', {'username': 'bob'})
        self.assertEqual(ack['numUsers'], 2)
        self.assertEqual(ack['username'], 'bob')
        self.assertEqual(ack['users'], ['alice', 'bob'])
        self.assertEqual(bob.events.wait('login'), ack)
        self.assertNotEqual(ack['session'], login['session'])

        # The nickname is taken: a variant, and login says so.
        carol = self.connect('carol')
        renamed = carol.call('add user', 'Alice')
        self.assertEqual(renamed['username'], 'Alice (2)')
        self.assertEqual(renamed['renamedFrom'], 'Alice')
        self.assertEqual(renamed['numUsers'], 3)

    def test_user_joined(self):
        alice = self.connect('alice')
        self.join(alice, 'alice')
        bob = self.connect('bob')
        login = self.join(bob, 'bob')
        self.assertEqual(login['numUsers'], 2)
        joined = alice.events.wait('user joined')
        self.assertEqual(joined, {'username': 'bob', 'numUsers': 2})
        time.sleep(QUIET)
        self.assertEqual(bob.events.all('user joined'), [], 'nobody is told of their own join')
        self.assertEqual(alice.events.all('user joined'), [joined])

    def test_new_message_reaches_the_others(self):
        alice, bob, carol = (self.connect(n) for n in ('alice', 'bob', 'carol'))
        for p in (alice, bob, carol):
            self.join(p, p.label)
        text = 'héllo, wörld 👋 <b>not html</b> "quoted" \\ back'
        alice.sio.emit('new message', text)  # classic: no ack
        at_bob = bob.events.wait('new message')
        at_carol = carol.events.wait('new message')
        self.assert_message(at_bob, 'alice', text)
        self.assertEqual(at_carol, at_bob, 'everyone gets the same payload (same id and ts)')
        time.sleep(QUIET)
        self.assertEqual(alice.events.all('new message'), [], 'the sender gets no copy')
        self.assertEqual(len(bob.events.all('new message')), 1)

    def test_typing_and_stop_typing(self):
        alice, bob = self.connect('alice'), self.connect('bob')
        self.join(alice, 'alice')
        self.join(bob, 'bob')
        alice.sio.emit('typing')
        self.assertEqual(bob.events.wait('typing'), {'username': 'alice'})
        alice.sio.emit('stop typing')
        self.assertEqual(bob.events.wait('stop typing'), {'username': 'alice'})
        time.sleep(QUIET)
        self.assertEqual(alice.events.all('typing'), [])
        self.assertEqual(alice.events.all('stop typing'), [])

    def test_user_left_on_disconnect(self):
        alice, bob, carol = (self.connect(n) for n in ('alice', 'bob', 'carol'))
        for p in (alice, bob, carol):
            self.join(p, p.label)
        bob.sio.disconnect()
        # Over WebSocket, python-socketio 5.7's disconnect() races its own DISCONNECT packet
        # against closing the socket; when the close wins, Banter sees a dropped connection and
        # announces the leave after the grace period instead of at once. Over polling the
        # goodbye may never be sent (harness.HEARTBEAT_MS says why): the leave then comes when
        # the heartbeat misses the client, plus the grace period. Both are the contract.
        left = alice.events.wait('user left', timeout=TIMEOUT + GRACE_MS / 1000)
        self.assertEqual(left, {'username': 'bob', 'numUsers': 2})
        self.assertEqual(carol.events.wait('user left'), left)
        self.assertEqual(alice.call('list users'), {'numUsers': 2, 'users': ['alice', 'carol']})

    def test_ack_of_new_message_is_id_and_ts(self):
        alice, bob = self.connect('alice'), self.connect('bob')
        self.join(alice, 'alice')
        self.join(bob, 'bob')
        # call(): emit with an ack and wait for it.
        first = alice.call('new message', 'first')
        self.assertEqual(set(first), {'id', 'ts'}, first)
        self.assert_id_ts(first)
        broadcast = bob.events.wait('new message', lambda m: m['message'] == 'first')
        self.assertEqual((broadcast['id'], broadcast['ts']), (first['id'], first['ts']),
                         'the ack carries the id and ts the others got')

        # emit() with a callback: called on the client's thread with the ack's arguments.
        acked = threading.Event()
        got = []

        def on_ack(*args):
            got.append(args)
            acked.set()

        alice.sio.emit('new message', 'second', callback=on_ack)
        self.assertTrue(acked.wait(TIMEOUT), 'the callback of emit() was called')
        self.assertEqual(len(got), 1)
        self.assertEqual(len(got[0]), 1, 'one argument: {id, ts}')
        second = got[0][0]
        self.assertEqual(set(second), {'id', 'ts'}, second)
        self.assertGreater(second['id'], first['id'], 'ids increase')
        self.assertGreaterEqual(second['ts'], first['ts'])
        self.assertEqual(bob.events.wait('new message', lambda m: m['message'] == 'second')['id'],
                         second['id'])

    def test_refusals_in_the_ack(self):
        stranger = self.connect('stranger')
        alice, bob = self.connect('alice'), self.connect('bob')

        def refused(person, event, data, code):
            res = person.call(event, data)
            self.assertIsInstance(res, dict, '%s %r' % (event, data))
            self.assertIn('error', res, '%s %r should be refused with %s: %r'
                          % (event, data, code, res))
            self.assertEqual(res['error']['code'], code, '%s %r: %r' % (event, data, res))
            self.assertIsInstance(res['error']['message'], str)

        refused(stranger, 'new message', 'hello?', 'not_joined')
        refused(stranger, 'add user', '   ', 'invalid_name')
        refused(stranger, 'add user', 'x' * 33, 'invalid_name')
        refused(stranger, 'add user', 42, 'bad_request')
        refused(stranger, 'add user', {'username': 'stranger', 'lastId': 'abc'}, 'bad_request')
        self.assertEqual(stranger.events.all('login'), [], 'no login after a refused add user')

        self.join(alice, 'alice')
        self.join(bob, 'bob')
        refused(alice, 'new message', {'text': 'hi'}, 'bad_request')  # a bad payload type
        refused(alice, 'new message', 42, 'bad_request')
        refused(alice, 'new message', ['hi'], 'bad_request')
        refused(alice, 'new message', None, 'bad_request')  # no argument at all
        refused(alice, 'new message', ' \n\t ', 'empty')
        refused(alice, 'new message', 'x' * 2001, 'too_long')
        refused(alice, 'add user', 'alice again', 'already_joined')
        refused(alice, 'no such event', 'x', 'unknown_event')
        time.sleep(QUIET)
        self.assertEqual(bob.events.all('new message'), [], 'a refused message is not broadcast')
        self.assertEqual(bob.events.all('user joined'), [])

    def test_refusals_without_ack_come_as_error_message(self):
        alice, bob = self.connect('alice'), self.connect('bob')
        alice.sio.emit('new message', 'hello?')
        err = alice.events.wait('error message')
        self.assertEqual(err['code'], 'not_joined')
        self.assertIsInstance(err['message'], str)

        self.join(alice, 'alice')
        self.join(bob, 'bob')
        alice.sio.emit('new message', {'text': 'hi'})
        self.assertEqual(alice.events.wait('error message', nth=1)['code'], 'bad_request')
        alice.sio.emit('frobnicate', 'x')
        self.assertEqual(alice.events.wait('error message', nth=2)['code'], 'unknown_event')
        time.sleep(QUIET)
        self.assertEqual(len(alice.events.all('error message')), 3)
        self.assertEqual(bob.events.all('new message'), [])
        self.assertEqual(bob.events.all('error message'), [], 'only the sender is told')
        # The connection still works after refusals.
        self.assertEqual(set(alice.call('new message', 'fine')), {'id', 'ts'})

    def test_history_and_last_id(self):
        alice, bob = self.connect('alice'), self.connect('bob')
        self.join(alice, 'alice')
        self.join(bob, 'bob')
        m1 = bob.call('new message', 'while alice is here')
        last_id = alice.events.wait('new message')['id']
        self.assertEqual(last_id, m1['id'])

        alice.sio.disconnect()
        missed = [bob.call('new message', 'missed %d' % i) for i in range(3)]

        # Alice comes back on a new connection and says what she received last.
        again = self.connect('alice again')
        login = self.join(again, {'username': 'alice', 'lastId': last_id})
        self.assertEqual(login['username'], 'alice')
        self.assertNotIn('renamedFrom', login)
        self.assertIs(login['historyComplete'], True)
        self.assertEqual([(m['id'], m['ts'], m['username'], m['message'])
                          for m in login['history']],
                         [(m['id'], m['ts'], 'bob', 'missed %d' % i)
                          for i, m in enumerate(missed)],
                         'exactly the missed messages, oldest first')

        # Without lastId: the recent history, this test's messages last.
        newcomer = self.connect('newcomer')
        history = self.join(newcomer, 'newcomer')['history']
        self.assertEqual([m['id'] for m in history[-4:]], [m1['id']] + [m['id'] for m in missed])
        ids = [m['id'] for m in history]
        self.assertEqual(ids, sorted(ids), 'oldest first')


class WebSocketChatTest(ChatTests, BanterTestCase):
    TRANSPORTS = ['websocket']
    EXPECTED_TRANSPORT = 'websocket'


class PollingChatTest(ChatTests, BanterTestCase):
    TRANSPORTS = ['polling']
    EXPECTED_TRANSPORT = 'polling'


class UpgradeChatTest(ChatTests, BanterTestCase):
    """The client's default: polling first, then the upgrade."""
    TRANSPORTS = None
    EXPECTED_TRANSPORT = 'websocket'


class MixedTransportsTest(BanterTestCase):
    def test_transports_chat_together(self):
        people = [self.connect('ws', transports=['websocket']),
                  self.connect('poll', transports=['polling']),
                  self.connect('upgraded', transports=None)]
        self.assertEqual([p.sio.transport() for p in people], ['websocket', 'polling', 'websocket'])
        for i, p in enumerate(people):
            self.assertEqual(self.join(p, p.label)['numUsers'], i + 1)
        for p in people:
            self.assertEqual(set(p.call('new message', 'from %s' % p.label)), {'id', 'ts'})
        for p in people:
            others = {q.label for q in people if q is not p}
            for who in others:
                got = p.events.wait('new message', lambda m, who=who: m['username'] == who)
                self.assert_message(got, who, 'from %s' % who)
        time.sleep(QUIET)
        for p in people:
            self.assertEqual(len(p.events.all('new message')), 2, p.label)


class RestartTest(unittest.TestCase):
    """Banter restarts (SIGTERM, then a new process on the same port and SQLite history). The
    client's own reconnection brings it back, and `lastId` gets what it missed meanwhile."""

    def setUp(self):
        self.data_dir = tempfile.TemporaryDirectory(prefix='banter-py-data-')
        self.servers = []
        self.clients = []

    def tearDown(self):
        for sio in self.clients:
            sio.disconnect()
        for s in self.servers:
            s.stop()
            s.cleanup()
        self.data_dir.cleanup()

    def start(self, port=None):
        server = harness.BanterServer(data_dir=self.data_dir.name, port=port,
                                      args=['--shutdown-timeout-ms', '5000'])
        self.servers.append(server)
        return server.start()

    def client(self, label, **options):
        sio = new_client(**options)
        self.clients.append(sio)
        return sio, harness.Events(label).attach(sio)

    def test_reconnects_after_a_restart_and_catches_up_with_last_id(self):
        first = self.start()
        # The default transports (polling, then WebSocket): Banter's shutdown closes a WebSocket
        # without an Engine.IO close packet, which python-socketio takes for a lost connection.
        # (A bounded number of attempts, so that a failing test cannot leave a thread retrying.)
        alice, alice_events = self.client('alice', reconnection=True, reconnection_delay=0.5,
                                          reconnection_delay_max=1, reconnection_attempts=30)
        alice.connect(first.url, wait_timeout=TIMEOUT)
        self.assertEqual(alice.transport(), 'websocket')
        bob, bob_events = self.client('bob')
        bob.connect(first.url, wait_timeout=TIMEOUT)
        alice.call('add user', 'alice', timeout=TIMEOUT)
        bob.call('add user', 'bob', timeout=TIMEOUT)
        before = bob.call('new message', 'before the restart', timeout=TIMEOUT)
        last_id = alice_events.wait('new message')['id']
        self.assertEqual(last_id, before['id'])
        old_sid = alice.get_sid()

        self.assertEqual(first.stop(), 0, 'Banter exits 0 on SIGTERM\n' + first.output())
        alice_events.wait('disconnect')
        bob_events.wait('disconnect')

        second = self.start(port=first.port)
        # python-socketio reconnects by itself: a second `connect`.
        alice_events.wait('connect', nth=1, timeout=3 * TIMEOUT)
        harness.wait_until(lambda: alice.connected, 'reconnected')
        self.assertNotEqual(alice.get_sid(), old_sid)

        # Bob (no automatic reconnection) comes back by hand and says something, which Alice,
        # connected but not joined yet, does not receive live.
        bob2, _ = self.client('bob again')
        bob2.connect(second.url, wait_timeout=TIMEOUT)
        bob2.call('add user', {'username': 'bob', 'lastId': before['id']}, timeout=TIMEOUT)
        after = bob2.call('new message', 'after the restart', timeout=TIMEOUT)
        self.assertGreater(after['id'], before['id'], 'ids keep increasing across a restart')

        login = alice.call('add user', {'username': 'alice', 'lastId': last_id}, timeout=TIMEOUT)
        self.assertEqual(login['username'], 'alice')
        self.assertEqual(login['numUsers'], 2)
        self.assertIs(login['historyComplete'], True)
        self.assertEqual(login['history'], [
            {'id': after['id'], 'ts': after['ts'], 'username': 'bob',
             'message': 'after the restart'}])
        # And a fresh joiner gets both messages: the history survived the restart.
        carol, _ = self.client('carol')
        carol.connect(second.url, transports=['websocket'], wait_timeout=TIMEOUT)
        history = carol.call('add user', 'carol', timeout=TIMEOUT)['history']
        self.assertEqual([m['message'] for m in history],
                         ['before the restart', 'after the restart'])


if __name__ == '__main__':
    unittest.main()
