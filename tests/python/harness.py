"""Test harness for Banter's python-socketio suites (tests/python/test_*.py).

- BanterServer starts the Banter binary (env BANTER_BIN, by default target/debug/banter) on a
  free port of 127.0.0.1, waits until GET /readyz answers 200, and stops it (SIGTERM, then
  SIGKILL). Its output goes to a file, shown when something fails.
- Events records every event a client receives (through python-socketio's catch-all handler) and
  lets a test wait for one, from any thread.

The clients are the official python-socketio ones, used as an application would: nothing here
patches or subclasses them.
"""

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
BANTER_BIN = os.environ.get('BANTER_BIN') or os.path.join(REPO_ROOT, 'target', 'debug', 'banter')

# Generous bounds: they only decide how long a failing test takes, never whether a test passes.
TIMEOUT = 10.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# How long a test waits to show that something does NOT happen.
QUIET = 0.5


def quiet_client_leak_warnings():
    """Call from setUpModule (inside unittest's own warnings setup). python-engineio 4.3 leaves
    sockets to the garbage collector: the threaded client never closes its requests.Session nor
    reads the responses to its polling POSTs, and the asyncio client, when a polling request
    runs after disconnect() closed its aiohttp session, opens a new one that it never closes.
    Python reports each as a ResourceWarning, which says nothing about Banter and buries the
    test output."""
    for message in (r'unclosed <socket', r'unclosed transport', r'Unclosed client session',
                    r'Unclosed connector'):
        warnings.filterwarnings('ignore', category=ResourceWarning, message=message)


def free_port():
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


_live = set()  # servers not stopped yet: killed at exit, should a test run end abruptly


@atexit.register
def _kill_live_servers():
    for server in list(_live):
        server.kill()


def _die_with_parent():
    """In the child, before exec: on Linux, get SIGKILL when the test process dies, even by a
    signal that leaves no time for atexit."""
    try:
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class BanterServer:
    """One Banter process. `args` are extra command-line flags; with `data_dir` the history is
    SQLite in that directory (pass the same one, and the same port, to restart on it), without
    it `--store memory`."""

    def __init__(self, args=(), data_dir=None, port=None):
        self.args = list(args)
        self.data_dir = data_dir
        self.port = port
        self.proc = None
        self._log_dir = tempfile.mkdtemp(prefix='banter-py-log-')
        self.log_path = os.path.join(self._log_dir, 'banter.log')

    @property
    def url(self):
        return 'http://127.0.0.1:%d' % self.port

    def start(self):
        if not os.path.isfile(BANTER_BIN) or not os.access(BANTER_BIN, os.X_OK):
            raise RuntimeError(
                'Banter binary not found at %s (run "cargo build" or set BANTER_BIN)' % BANTER_BIN)
        fixed_port = self.port is not None
        # A free port can be taken by someone else before Banter binds it: try a few.
        for _ in range(1 if fixed_port else 3):
            if not fixed_port:
                self.port = free_port()
            if self._start_once():
                return self
        raise RuntimeError('Banter could not bind a port\n' + self.output())

    def _start_once(self):
        cmd = [BANTER_BIN, '--host', '127.0.0.1', '--port', str(self.port)]
        if self.data_dir is None:
            cmd += ['--store', 'memory']
        else:
            cmd += ['--store', 'sqlite', '--data-dir', self.data_dir]
        cmd += self.args
        # Only the flags above decide how Banter runs: none of the caller's settings leak in.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith('BANTER_') and k not in ('HOST', 'PORT', 'REDIS_URL')}
        env['NO_COLOR'] = '1'
        with open(self.log_path, 'ab') as log:
            log.write(('\n$ %s\n' % ' '.join(cmd)).encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        _live.add(self)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if 'in use' in self.output().lower():
                    return False
                raise RuntimeError('Banter exited (code %s) before it was ready\n%s'
                                   % (self.proc.returncode, self.output()))
            try:
                with urllib.request.urlopen(self.url + '/readyz', timeout=2) as res:
                    if res.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError('Banter was not ready within %.0f s\n%s' % (START_TIMEOUT, self.output()))

    def stop(self):
        """SIGTERM (Banter closes every socket and exits 0), SIGKILL if it takes too long.
        Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _live.discard(self)
        return self.proc.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        _live.discard(self)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def output(self, chars=6000):
        """The end of the server's log, for failure messages."""
        try:
            with open(self.log_path, 'rb') as f:
                text = f.read().decode('utf-8', 'replace')
        except OSError:
            return '(no output)'
        if len(text) > chars:
            text = '...' + text[-chars:]
        return '--- Banter output ---\n' + text

    def cleanup(self):
        self.kill()
        shutil.rmtree(self._log_dir, ignore_errors=True)


# The module servers' heartbeat: a client gone without its goodbye is dropped within 5 s, not the
# default 45 s (interval + timeout), which is longer than a test waits for "user left".
# python-engineio 4.3's threaded client does not always send its goodbye over polling: its
# disconnect() queues the DISCONNECT and the close, then ends the write loop, which checks that
# the client is still connected before it sends; when the loop is still inside the previous POST
# (whose answer can come after the reply it carried reached the client on the GET), the goodbye
# is never sent. In 40 disconnects right after an acked call, 11 sent nothing and 29 sent it;
# Banter announced every goodbye it received at once, and the others after the heartbeat.
HEARTBEAT_MS = (2000, 3000)


def start_chat_server(grace_ms):
    """The server a test module shares: in memory, the given reconnect grace period, a short
    heartbeat (HEARTBEAT_MS), and every join and leave announced on its own (as in the classic
    example) whatever the pace of the tests (docs/protocol.md, "during storms"). Stop it with
    `stop_server`."""
    quiet_client_leak_warnings()
    return BanterServer([
        '--reconnect-grace-ms', str(grace_ms),
        '--announce-window-ms', '0',
        '--ping-interval-ms', str(HEARTBEAT_MS[0]),
        '--ping-timeout-ms', str(HEARTBEAT_MS[1]),
    ]).start()


def stop_server(server):
    if server is not None:
        server.stop()
        server.cleanup()


class Events:
    """Every event a python-socketio client receives, in arrival order, with its arguments.

    Install with `Events().attach(client)`; works for socketio.Client (handlers run on the
    client's threads) and socketio.AsyncClient (handlers run on the event loop). Waiting is
    done by the caller: `wait()` blocks the calling thread (sync client), `await_()` polls from
    a coroutine (async client). Nothing is ever consumed: a wait looks at everything received
    since the client was created, so a test picks an event out with a predicate.
    """

    def __init__(self, label='client'):
        self.label = label
        self._cond = threading.Condition()
        self._seen = []

    def attach(self, client):
        client.on('*', self._record)
        client.on('connect', lambda: self._record('connect'))
        client.on('disconnect', lambda: self._record('disconnect'))
        client.on('connect_error', lambda *args: self._record('connect_error', *args))
        return self

    def _record(self, event, *args):
        with self._cond:
            self._seen.append((event, args))
            self._cond.notify_all()

    def all(self, event):
        """The first argument (None if there was none) of each `event` received so far."""
        with self._cond:
            return [args[0] if args else None for name, args in self._seen if name == event]

    def _find(self, event, predicate, nth):
        matches = [a for a in self.all(event) if predicate is None or predicate(a)]
        return (True, matches[nth]) if len(matches) > nth else (False, None)

    def _timeout_error(self, event, predicate, timeout):
        with self._cond:
            seen = ', '.join('%s%r' % (name, args) for name, args in self._seen[-20:])
        return AssertionError('%s: no "%s"%s within %.0f s; received (last 20): %s' % (
            self.label, event, ' matching' if predicate else '', timeout, seen or 'nothing'))

    def wait(self, event, predicate=None, timeout=TIMEOUT, nth=0):
        """Block until the (nth+1)-th `event` matching `predicate` has been received; return its
        first argument."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found, value = self._find(event, predicate, nth)
                if found:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._timeout_error(event, predicate, timeout)
                self._cond.wait(left)

    async def await_(self, event, predicate=None, timeout=TIMEOUT, nth=0):
        """The coroutine form of wait(), for clients whose handlers run on the event loop."""
        import asyncio
        deadline = time.monotonic() + timeout
        while True:
            found, value = self._find(event, predicate, nth)
            if found:
                return value
            if time.monotonic() >= deadline:
                raise self._timeout_error(event, predicate, timeout)
            await asyncio.sleep(0.01)


def wait_until(condition, what, timeout=TIMEOUT):
    """Poll `condition()` until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError('not %s within %.0f s' % (what, timeout))
        time.sleep(0.02)
