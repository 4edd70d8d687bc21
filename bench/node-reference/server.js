'use strict';
// The classic Socket.IO chat example's server (socket.io/examples/chat), as the reference that
// Banter is measured against. Same events and payloads, plus what lets the bench treat both
// servers the same way:
//   - `new message` broadcasts carry `id` (unique, increasing) and `ts` (ms since the epoch);
//   - `new message` and `add user` accept an ack (`{id, ts}` and the login object).
// Environment: PORT (0 picks a free port; the chosen one is printed), HOST (default 127.0.0.1),
// REDIS_URL (optional: cluster several processes through @socket.io/redis-adapter).

const http = require('http');
const express = require('express');
const { Server } = require('socket.io');

const HOST = process.env.HOST || '127.0.0.1';
const PORT = Number(process.env.PORT || 3000);
const REDIS_URL = process.env.REDIS_URL || '';

const app = express();
app.get('/health', (_req, res) => res.type('text').send('ok'));
const server = http.createServer(app);
const io = new Server(server);

// Message ids: microseconds since the epoch, never going backwards, unique in this process.
let lastId = 0;
function nextId() {
  const id = Math.max(Date.now() * 1000, lastId + 1);
  lastId = id;
  return id;
}

// numUsers: a local counter in a single process (as in the classic example); with Redis, a shared
// counter so that every instance reports the cluster-wide number.
let localUsers = 0;
let redisCounter = null;
async function changeUsers(delta) {
  if (redisCounter) return redisCounter.incrBy('banter-node-reference:numUsers', delta);
  localUsers += delta;
  return localUsers;
}

function onConnection(socket) {
  let addedUser = false;

  socket.on('new message', (data, ack) => {
    if (!addedUser) return;
    const id = nextId();
    const ts = Math.floor(id / 1000);
    socket.broadcast.emit('new message', { username: socket.username, message: data, id, ts });
    if (typeof ack === 'function') ack({ id, ts });
  });

  socket.on('add user', async (username, ack) => {
    if (addedUser) {
      if (typeof ack === 'function') ack({ error: { code: 'already_joined' } });
      return;
    }
    addedUser = true;
    socket.username = typeof username === 'object' && username ? username.username : username;
    const numUsers = await changeUsers(1);
    const login = { numUsers, username: socket.username };
    socket.emit('login', login);
    if (typeof ack === 'function') ack(login);
    socket.broadcast.emit('user joined', { username: socket.username, numUsers });
  });

  socket.on('typing', () => {
    if (addedUser) socket.broadcast.emit('typing', { username: socket.username });
  });

  socket.on('stop typing', () => {
    if (addedUser) socket.broadcast.emit('stop typing', { username: socket.username });
  });

  socket.on('disconnect', async () => {
    if (!addedUser) return;
    const numUsers = await changeUsers(-1);
    socket.broadcast.emit('user left', { username: socket.username, numUsers });
  });
}

async function main() {
  if (REDIS_URL) {
    const { createClient } = require('redis');
    const { createAdapter } = require('@socket.io/redis-adapter');
    const pubClient = createClient({ url: REDIS_URL });
    const subClient = pubClient.duplicate();
    redisCounter = pubClient.duplicate();
    for (const c of [pubClient, subClient, redisCounter]) c.on('error', (e) => console.error('redis:', e.message));
    await Promise.all([pubClient.connect(), subClient.connect(), redisCounter.connect()]);
    io.adapter(createAdapter(pubClient, subClient));
  }
  io.on('connection', onConnection);
  server.listen(PORT, HOST, () => {
    const addr = server.address();
    // The bench's compare script reads this line to find the port when PORT=0.
    console.log(`node-reference listening on http://${addr.address}:${addr.port}`);
  });
}

function shutdown() {
  io.close();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
