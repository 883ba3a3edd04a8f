// A plain Node.js chat server on the `ws` package, speaking the same wire
// protocol as chat-local (README, "The protocol"; shared/src/). It is a
// performance reference only: what someone might write instead of the Rust
// server, kept idiomatic and lean (memory only, no logging per message).
//
//   node bench/node/server.mjs --port 8090 [--host 127.0.0.1]
//
// Prints `ready on http://HOST:PORT` once listening (--port 0 picks a free
// port), and closes every socket with 1001 on SIGTERM or SIGINT.

import { createServer } from 'node:http';
import { isUtf8 } from 'node:buffer';
import { randomFillSync } from 'node:crypto';
import { parseArgs } from 'node:util';
import { WebSocketServer } from 'ws';

// The protocol's limits (shared/src/lib.rs).
const ROOM_MAX_LEN = 64;
const NAME_MAX_CHARS = 32;
const DATA_MAX_BYTES = 4096;
const SERVER_FRAME_MAX_BYTES = 128 * 1024;
const HISTORY_LEN = 50;
// The gateway's limits (backend/src/local/gateway.rs): a message over 128 KB
// is answered with too_large; one over 1 MiB closes the socket (1009).
const MAX_MESSAGE_SIZE = SERVER_FRAME_MAX_BYTES;
const MAX_READ_SIZE = 1024 * 1024;
const DEFAULT_NAME = 'anonymous';
// Dead peers: pinged every 30 s, dropped after about 75 s of silence.
const PING_INTERVAL_MS = 30_000;
const IDLE_TICKS = Math.ceil(75_000 / PING_INTERVAL_MS); // 3

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '8090' },
    host: { type: 'string', default: '127.0.0.1' },
  },
});

// ---------------------------------------------------------------- validation

class ProtocolError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

const badRequest = (message) => new ProtocolError('bad_request', message);

const ROOM_RE = /^[A-Za-z0-9_.:-]{1,64}$/;
// Rust's str::trim and char::is_control: Unicode White_Space and Cc.
const TRIM_RE = /^\p{White_Space}+|\p{White_Space}+$/gu;
const CONTROL_RE = /\p{Cc}/u;

function parseRoom(raw) {
  if (!ROOM_RE.test(raw)) {
    throw new ProtocolError(
      'invalid_room',
      `room must be 1 to ${ROOM_MAX_LEN} characters of letters, digits, '_', '.', ':' or '-'`,
    );
  }
  return raw;
}

function parseName(raw) {
  const trimmed = raw.replace(TRIM_RE, '');
  let chars = 0;
  for (const _ of trimmed) chars++;
  if (chars === 0 || chars > NAME_MAX_CHARS) {
    throw new ProtocolError('invalid_name', `name must be 1 to ${NAME_MAX_CHARS} characters`);
  }
  if (CONTROL_RE.test(trimmed)) {
    throw new ProtocolError('invalid_name', 'name must not contain control characters');
  }
  return trimmed;
}

function checkData(data) {
  if (data.length === 0) throw badRequest('data must not be empty');
  // Up to 4096 UTF-16 units of at most 3 bytes each need no exact count
  // unless they could pass 4096 bytes.
  if (data.length * 3 > DATA_MAX_BYTES) {
    const bytes = Buffer.byteLength(data);
    if (bytes > DATA_MAX_BYTES) {
      throw new ProtocolError(
        'too_large',
        `data is ${bytes} bytes; the limit is ${DATA_MAX_BYTES} bytes`,
      );
    }
  }
}

function stringField(frame, key) {
  const value = frame[key];
  if (typeof value === 'string') return value;
  if (value === undefined) throw badRequest(`missing "${key}"`);
  throw badRequest(`"${key}" must be a string`);
}

// serde_json refuses a lone surrogate anywhere in a frame; JSON.parse
// accepts it. The raw frame is valid UTF-8, so one can only come from a
// \u escape: the deep check runs only when there is one.
function wellFormed(value) {
  if (typeof value === 'string') return value.isWellFormed();
  if (typeof value !== 'object' || value === null) return true;
  if (Array.isArray(value)) return value.every(wellFormed);
  for (const key of Object.keys(value)) {
    if (!key.isWellFormed() || !wellFormed(value[key])) return false;
  }
  return true;
}

// Rust's `{:?}` of a string, for the unknown_action message.
const NOT_PRINTABLE_RE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}\p{Grapheme_Extend}]/u;
const SIMPLE_ESCAPES = { '\0': '\\0', '\t': '\\t', '\r': '\\r', '\n': '\\n', '\\': '\\\\', '"': '\\"' };
function rustDebug(text, maxChars) {
  let out = '"';
  let chars = 0;
  for (const ch of text) {
    if (chars++ === maxChars) break;
    if (ch in SIMPLE_ESCAPES) out += SIMPLE_ESCAPES[ch];
    else if (ch !== ' ' && NOT_PRINTABLE_RE.test(ch)) out += `\\u{${ch.codePointAt(0).toString(16)}}`;
    else out += ch;
  }
  return out + '"';
}

// ClientFrame::parse: the action and its fields, checked in the same order.
function parseClientFrame(text) {
  let frame;
  try {
    frame = JSON.parse(text);
  } catch (error) {
    throw badRequest(`frame is not valid JSON: ${error.message.slice(0, 120)}`);
  }
  if (text.includes('\\u') && !wellFormed(frame)) {
    throw badRequest('frame is not valid JSON: lone surrogate in a string');
  }
  if (typeof frame !== 'object' || frame === null || Array.isArray(frame)) {
    throw badRequest('frame must be a JSON object');
  }
  const action = frame.action;
  if (action === undefined) throw badRequest('frame has no "action"');
  if (typeof action !== 'string') throw badRequest('"action" must be a string');
  switch (action) {
    case 'sendmessage': {
      const data = stringField(frame, 'data');
      checkData(data);
      return { action, data };
    }
    case 'join': {
      const room = parseRoom(stringField(frame, 'room'));
      const name = parseName(stringField(frame, 'name'));
      return { action, room, name };
    }
    case 'leave':
    case 'ping':
      return { action };
    default:
      throw new ProtocolError(
        'unknown_action',
        `unknown action ${rustDebug(action, 64)}; expected join, sendmessage, leave or ping`,
      );
  }
}

// ------------------------------------------------------------------- frames
// Built by hand in serde's field order, so each is byte for byte what the
// Rust server sends. Room names need no escaping (their alphabet is safe).

const TEXT = { binary: false };
const PONG = Buffer.from('{"type":"pong"}');

const errorFrame = (code, message) =>
  Buffer.from(JSON.stringify({ type: 'error', code, message }));

const presenceFrame = (event, room, nameJson, count) =>
  Buffer.from(
    `{"type":"presence","event":"${event}","room":"${room}","name":${nameJson},"count":${count}}`,
  );

const leftFrame = (room) => Buffer.from(`{"type":"left","room":"${room}"}`);

// Message ids: 13 digits of milliseconds, '-', 64 random bits in hex, drawn
// from a pool refilled from the OS now and then.
const pool = Buffer.alloc(8 * 1024);
let poolAt = pool.length;
function randomHex64() {
  if (poolAt === pool.length) {
    randomFillSync(pool);
    poolAt = 0;
  }
  poolAt += 8;
  return pool.toString('hex', poolAt - 8, poolAt);
}

// `joined`, kept under 128 KB like backend/src/chat/joined.rs: the oldest
// history goes first; only if no history fits is the member list cut
// (`count` stays true, the joiner is kept).
function joinedFrame(room, nameJson, members, history) {
  const count = members.length;
  const build = (names, entries) =>
    Buffer.from(
      `{"type":"joined","room":"${room}","name":${nameJson},"members":${JSON.stringify(names)},` +
        `"count":${count},"history":[${entries.join(',')}]}`,
    );
  const full = build(members, history);
  if (full.length <= SERVER_FRAME_MAX_BYTES) return full;

  const empty = build(members, []).length; // "[]" already counted
  if (empty <= SERVER_FRAME_MAX_BYTES) {
    let size = empty;
    let keep = 0;
    for (let i = history.length - 1; i >= 0; i--) {
      const more = Buffer.byteLength(history[i]) + (keep > 0 ? 1 : 0);
      if (size + more > SERVER_FRAME_MAX_BYTES) break;
      size += more;
      keep++;
    }
    return build(members, history.slice(history.length - keep));
  }
  let size = build(members.slice(0, 1), []).length;
  let keep = 1;
  while (keep < members.length) {
    const more = Buffer.byteLength(JSON.stringify(members[keep])) + 1;
    if (size + more > SERVER_FRAME_MAX_BYTES) break;
    size += more;
    keep++;
  }
  return build(members.slice(0, keep), []);
}

// --------------------------------------------------------------------- chat
// rooms: name -> { members: Set<WebSocket>, history: string[] (message frames) }
// Each socket carries its own state: room (the room object or null), name,
// nameJson (its name as JSON, serialized once per join) and seen (last tick
// with traffic from it).

const rooms = new Map();
let shuttingDown = false;

function roomOf(name) {
  let room = rooms.get(name);
  if (room === undefined) {
    room = { name, members: new Set(), history: [] };
    rooms.set(name, room);
  }
  return room;
}

// Sends one frame, serialized once, to every member but `except`.
function broadcast(room, frame, except) {
  for (const member of room.members) {
    if (member !== except) member.send(frame, TEXT);
  }
}

// Takes a socket out of its room and tells the others.
function leaveRoom(ws) {
  const room = ws.room;
  room.members.delete(ws);
  ws.room = null;
  if (room.members.size > 0) {
    broadcast(room, presenceFrame('leave', room.name, ws.nameJson, room.members.size));
  }
  return room;
}

function enterRoom(ws, room, name) {
  ws.room = room;
  ws.name = name;
  ws.nameJson = JSON.stringify(name);
  room.members.add(ws);
}

function join(ws, roomName, name) {
  const rejoin = ws.room !== null && ws.room.name === roomName && ws.name === name;
  if (!rejoin && ws.room !== null) leaveRoom(ws);
  const room = roomOf(roomName);
  if (!rejoin) enterRoom(ws, room, name);

  const members = [name];
  for (const member of room.members) if (member !== ws) members.push(member.name);
  ws.send(joinedFrame(room.name, ws.nameJson, members, room.history), TEXT);
  if (!rejoin) {
    broadcast(room, presenceFrame('join', room.name, ws.nameJson, room.members.size), ws);
  }
}

function sendMessage(ws, data) {
  const room = ws.room;
  if (room === null) throw new ProtocolError('not_in_room', 'join a room first');
  const ts = Date.now();
  const id = `${String(ts).padStart(13, '0')}-${randomHex64()}`;
  const text =
    `{"type":"message","id":"${id}","room":"${room.name}","name":${ws.nameJson},` +
    `"data":${JSON.stringify(data)},"ts":${ts}}`;
  const history = room.history;
  history.push(text);
  if (history.length > HISTORY_LEN) history.shift();
  const frame = Buffer.from(text);
  for (const member of room.members) member.send(frame, TEXT);
}

function leave(ws) {
  if (ws.room === null) throw new ProtocolError('not_in_room', 'join a room first');
  const roomName = ws.room.name;
  ws.send(leftFrame(roomName), TEXT);
  leaveRoom(ws);
}

function handle(ws, text) {
  const frame = parseClientFrame(text);
  switch (frame.action) {
    case 'sendmessage':
      return sendMessage(ws, frame.data);
    case 'join':
      return join(ws, frame.room, frame.name);
    case 'leave':
      return leave(ws);
    case 'ping':
      return ws.send(PONG, TEXT);
  }
}

// ------------------------------------------------------------------ sockets
// Listeners are shared functions (`this` is the socket), not closures: an
// idle socket costs only its own state.

let tick = 0;

function onMessage(data, isBinary) {
  if (this.readyState !== 1) return;
  this.seen = tick;
  if (isBinary) {
    this.send(data.length > MAX_MESSAGE_SIZE ? tooLargeFrame : binaryFrame, TEXT);
    return;
  }
  if (data.length > MAX_MESSAGE_SIZE) {
    this.send(tooLargeFrame, TEXT);
    return;
  }
  // UTF-8 is checked here rather than by ws, to answer before closing (1007).
  if (!isUtf8(data)) {
    this.send(errorFrame('bad_request', 'text frame is not valid UTF-8'), TEXT);
    this.close(1007, 'text frame is not valid UTF-8');
    return;
  }
  try {
    handle(this, data.toString());
  } catch (error) {
    if (error instanceof ProtocolError) {
      this.send(errorFrame(error.code, error.message), TEXT);
    } else {
      console.error('internal error:', error);
      this.send(
        errorFrame('internal', 'the server could not complete the request; try again'),
        TEXT,
      );
    }
  }
}

const tooLargeFrame = errorFrame('too_large', `messages are limited to ${MAX_MESSAGE_SIZE} bytes`);
const binaryFrame = errorFrame('bad_request', 'binary frames are not supported; send JSON text frames');

function onPong() {
  this.seen = tick;
}

function onClose() {
  if (this.room !== null && !shuttingDown) leaveRoom(this);
}

function onError() {
  // The socket closes next; 'close' tells its room.
}

const wss = new WebSocketServer({
  noServer: true,
  perMessageDeflate: false,
  maxPayload: MAX_READ_SIZE,
  skipUTF8Validation: true,
});

wss.on('connection', (ws, membership) => {
  ws.room = null;
  ws.name = null;
  ws.nameJson = null;
  ws.seen = tick;
  ws.on('message', onMessage);
  ws.on('pong', onPong);
  ws.on('close', onClose);
  ws.on('error', onError);
  // `?room=` joins at connect time: the others hear of it, the joiner gets
  // no `joined` frame (API Gateway cannot push during $connect).
  if (membership !== null) {
    const room = roomOf(membership.room);
    enterRoom(ws, room, membership.name);
    broadcast(room, presenceFrame('join', room.name, ws.nameJson, room.members.size), ws);
  }
});

function refuse(socket, status, reason, body) {
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\n` +
      `Content-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
}

const server = createServer((req, res) => {
  const path = req.url.split('?', 1)[0];
  const [status, body] = path === '/ws' ? [426, 'expected a WebSocket upgrade'] : [404, 'not found'];
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8' }).end(body);
});

server.on('upgrade', (req, socket, head) => {
  socket.on('error', onError);
  const q = req.url.indexOf('?');
  const path = q < 0 ? req.url : req.url.slice(0, q);
  if (path !== '/ws') return refuse(socket, 404, 'Not Found', 'not found');
  let membership = null;
  if (q >= 0) {
    const query = new URLSearchParams(req.url.slice(q + 1));
    const room = query.get('room');
    if (room !== null) {
      try {
        membership = { room: parseRoom(room), name: parseName(query.get('name') ?? DEFAULT_NAME) };
      } catch (error) {
        return refuse(socket, 400, 'Bad Request', error.message);
      }
    }
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, membership));
});

// Dead peers: ping every socket each interval; one silent for IDLE_TICKS
// intervals is dropped (and its room told).
const heartbeat = setInterval(() => {
  tick++;
  for (const ws of wss.clients) {
    if (tick - ws.seen >= IDLE_TICKS) ws.terminate();
    else ws.ping();
  }
}, PING_INTERVAL_MS).unref();

function shutDown() {
  if (shuttingDown) return;
  shuttingDown = true;
  clearInterval(heartbeat);
  server.close();
  for (const ws of wss.clients) ws.close(1001, 'closed by the server');
  // Sockets whose close handshake does not finish within 5 s are cut.
  setTimeout(() => process.exit(0), 5000).unref();
}
process.on('SIGTERM', shutDown);
process.on('SIGINT', shutDown);

server.listen(Number(args.port), args.host, () => {
  const { address, port } = server.address();
  const host = address.includes(':') ? `[${address}]` : address;
  process.stdout.write(`ready on http://${host}:${port}\n`);
});
