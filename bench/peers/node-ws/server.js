// Fan-out comparison peer for `ringgate-load fanout --peer` (bench/peers/README.md): rooms as Sets
// and one ws.send per member, as the ws library's own broadcast example does it. Owns nothing but
// its rooms; it must never drop, merge or reorder a member's messages (the harness checks that
// each member receives every message of its room exactly once, in order).
//
//   node server.js --port 0     prints "node-ws listening on ws://127.0.0.1:PORT/" once bound
//
// A client connects with ?room=<n> and is told "joined" (text) once it is in the room. The
// publisher connects with ?publish=1 and sends binary messages [room u32 BE][payload]; the payload
// goes to every member of that room, or to every client for room 0xFFFFFFFF. Exits on SIGTERM or
// SIGINT.
'use strict';

const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

const ALL = 0xffffffff;

function parsePort(argv) {
  const i = argv.indexOf('--port');
  const port = i >= 0 ? Number(argv[i + 1]) : 0;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error('usage: node server.js [--port PORT]   (0 = a free port)');
    process.exit(2);
  }
  return port;
}

const port = parsePort(process.argv.slice(2));
const rooms = new Map(); // room number -> Set of member sockets
const everyone = new Set();

const server = http.createServer((req, res) => {
  res.writeHead(426, { 'Content-Type': 'text/plain' });
  res.end('WebSocket only\n');
});
// Compression off: the harness measures the cost of delivering messages, not of deflating them.
const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 16 << 20 });

function publish(data) {
  if (data.length < 4) return;
  const room = data.readUInt32BE(0);
  const members = room === ALL ? everyone : rooms.get(room);
  if (!members) return;
  const payload = data.subarray(4);
  for (const ws of members) {
    if (ws.readyState === WebSocket.OPEN) ws.send(payload, { binary: true });
  }
}

wss.on('connection', (ws, req) => {
  const query = new URL(req.url, 'http://peer').searchParams;
  if (query.get('publish') === '1') {
    ws.on('message', (data, isBinary) => {
      if (isBinary) publish(data);
    });
    return;
  }
  const room = Number(query.get('room'));
  if (!Number.isInteger(room) || room < 0 || room >= ALL) {
    ws.close(1008, 'room=<number> expected');
    return;
  }
  let members = rooms.get(room);
  if (!members) {
    members = new Set();
    rooms.set(room, members);
  }
  members.add(ws);
  everyone.add(ws);
  ws.on('close', () => {
    members.delete(ws);
    everyone.delete(ws);
    if (members.size === 0 && rooms.get(room) === members) rooms.delete(room);
  });
  ws.send('joined');
});

server.listen(port, '127.0.0.1', () => {
  console.log(`node-ws listening on ws://127.0.0.1:${server.address().port}/`);
});

function stop() {
  for (const ws of wss.clients) ws.terminate();
  wss.close();
  server.close(() => process.exit(0));
  // Bounded even if a socket lingers.
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
