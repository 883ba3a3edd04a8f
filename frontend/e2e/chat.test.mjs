// Two people chat through the web app in real Chromium, against a real
// chat-local serving the built front end.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BIN = process.env.CHAT_LOCAL_BIN ?? 'target/debug/chat-local';
const DIST = process.env.CHAT_DIST ?? 'dist';
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const WAIT = { timeout: 15_000 };
const AXE = createRequire(import.meta.url).resolve('axe-core/axe.min.js');

let dataDir;
let server;
let base;
let browser;

/** Starts chat-local on `addr` (a free port when omitted); resolves to its URL. */
function startServer(addr = '127.0.0.1:0', { dist = DIST, data = dataDir, extra = [] } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, ['--addr', addr, '--data-dir', data, '--dist', dist, ...extra], {
      env: { ...process.env, NO_COLOR: '1', RUST_LOG: 'info' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let output = '';
    const timer = setTimeout(() => reject(new Error(`chat-local did not start:\n${output}`)), 60_000);
    child.stdout.on('data', (chunk) => {
      output += chunk;
      const found = output.match(/ready on (http:\/\/\S+)/);
      if (found && timer) {
        clearTimeout(timer);
        resolve({ child, url: found[1], output: () => output });
      }
    });
    child.on('exit', (code) => reject(new Error(`chat-local exited (${code}):\n${output}`)));
  });
}

function stopServer(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.once('exit', resolve);
    child.kill('SIGINT');
  });
}

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'chat-e2e-'));
  const started = await startServer();
  server = started.child;
  base = started.url;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  if (server) await stopServer(server);
  rmSync(dataDir, { recursive: true, force: true });
});

/** The widths the feature tests run at. */
const DEVICES = {
  desktop: { viewport: { width: 1280, height: 720 } },
  phone: { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true },
};

async function openAs(name, room, url = base, device = DEVICES.desktop) {
  const context = await browser.newContext(device);
  const page = await context.newPage();
  page.on('pageerror', (error) => console.error(`[${name}] page error:`, error));
  await page.goto(url);
  await page.getByLabel('Name').fill(name);
  await page.getByLabel('Room').fill(room);
  await page.getByRole('button', { name: 'Join' }).click();
  await log(page).waitFor(WAIT);
  return page;
}

const members = (page) => page.getByRole('list', { name: 'Members' });
/** The scrolling log: the server's messages, then one's own on their way. */
const log = (page) => page.locator('.log');
const messageField = (page) => page.getByRole('textbox', { name: 'Message' });

test('two people chat through the UI', async () => {
  const ada = await openAs('Ada', 'e2e-room');
  await members(ada).getByText('Ada', { exact: true }).waitFor(WAIT);
  assert.equal(new URL(ada.url()).hash, '#e2e-room', 'the room is in the URL fragment');

  const bo = await openAs('Bo', 'e2e-room');
  await members(bo).getByText('Ada', { exact: true }).waitFor(WAIT);
  await members(ada).getByText('Bo', { exact: true }).waitFor(WAIT);
  await log(ada).getByText('\u2068Bo\u2069 joined').waitFor(WAIT);

  // Enter sends and clears the field; markup arrives as text, never as HTML.
  const text = 'Hello <b>Bo</b> & <img src=x onerror=alert(1)>';
  await messageField(ada).fill(text);
  await messageField(ada).press('Enter');
  await log(bo).getByText(text, { exact: true }).waitFor(WAIT);
  assert.equal(await messageField(ada).inputValue(), '');
  assert.equal(await log(bo).locator('b, img').count(), 0);
  const own = log(ada).locator('.message', { hasText: text });
  await own.waitFor(WAIT);
  assert.match(await own.getAttribute('class'), /\bmine\b/, 'own messages stand out');
  assert.doesNotMatch(
    await log(bo).locator('.message', { hasText: text }).getAttribute('class'),
    /\bmine\b/,
  );

  await messageField(bo).fill('Hi Ada!');
  await bo.getByRole('button', { name: 'Send' }).click();
  await log(ada).getByText('Hi Ada!', { exact: true }).waitFor(WAIT);

  // Leaving returns to the lobby; the other side sees it.
  await bo.getByRole('button', { name: 'Leave' }).click();
  await bo.getByRole('button', { name: 'Join' }).waitFor(WAIT);
  // The name is bidi-isolated (U+2068 … U+2069) within the notice.
  await log(ada).getByText('\u2068Bo\u2069 left').waitFor(WAIT);
  await members(ada).getByText('Bo', { exact: true }).waitFor({ state: 'detached', ...WAIT });

  // Rejoining shows the history.
  await bo.getByRole('button', { name: 'Join' }).click();
  await log(bo).getByText('Hi Ada!', { exact: true }).waitFor(WAIT);
  await log(bo).getByText(text, { exact: true }).waitFor(WAIT);

  await ada.context().close();
  await bo.context().close();
});

test('a shared link opens the room, and a restart is survived', async () => {
  const ada = await openAs('Ada', 'shared-room');
  // Another tab with the link and a remembered name goes straight in.
  const second = await ada.context().newPage();
  await second.goto(`${base}/#shared-room`);
  await log(second).waitFor(WAIT);
  await members(second).getByText('Ada', { exact: true }).waitFor(WAIT);
  // The same name twice is one person: listed once, not announced again.
  await ada.waitForTimeout(500);
  assert.equal(await members(ada).getByText('Ada', { exact: true }).count(), 1);
  assert.equal(await log(ada).getByText(/Ada\u2069 joined/).count(), 0);

  // The server goes away and comes back on the same address.
  const addr = new URL(base).host;
  await stopServer(server);
  await ada.getByText(/Reconnecting|Connecting/).first().waitFor(WAIT);
  // Screen readers hear the state, not a countdown every second.
  assert.match(await ada.getByRole('status').first().textContent(), /^(Reconnecting…|Connecting…)$/);
  const restarted = await startServer(addr);
  server = restarted.child;
  await ada.getByText('Connected').waitFor({ timeout: 30_000 });
  await second.getByText('Connected').waitFor({ timeout: 30_000 });

  // Both tabs rejoined on their own.
  await messageField(ada).fill('after the restart');
  await messageField(ada).press('Enter');
  await log(second).getByText('after the restart', { exact: true }).waitFor(WAIT);
  // The same name in two tabs: each tab's own messages are its own.
  const inSecond = log(second).locator('.message', { hasText: 'after the restart' });
  assert.doesNotMatch(await inSecond.getAttribute('class'), /\bmine\b/);
  const inFirst = log(ada).locator('.message', { hasText: 'after the restart' });
  await inFirst.waitFor(WAIT);
  assert.match(await inFirst.getAttribute('class'), /\bmine\b/);
  await ada.context().close();
});

test('config.json next to the page points the app at another WebSocket server', async () => {
  // The same build on a second server (as on S3), told to use a chat-local
  // that lets pages from that second server's origin connect.
  const site = mkdtempSync(join(tmpdir(), 'chat-site-'));
  const siteData = mkdtempSync(join(tmpdir(), 'chat-site-data-'));
  const chatData = mkdtempSync(join(tmpdir(), 'chat-api-data-'));
  cpSync(DIST, site, { recursive: true });
  const other = await startServer('127.0.0.1:0', { dist: site, data: siteData });
  const chat = await startServer('127.0.0.1:0', { data: chatData, extra: ['--allowed-origin', other.url] });
  writeFileSync(join(site, 'config.json'), JSON.stringify({ websocketUrl: `${chat.url.replace('http', 'ws')}/ws` }));
  try {
    const dee = await openAs('Dee', 'config-room', chat.url);
    const context = await browser.newContext();
    const cy = await context.newPage();
    await cy.goto(other.url);
    await cy.getByLabel('Name').fill('Cy');
    await cy.getByLabel('Room').fill('config-room');
    await cy.getByRole('button', { name: 'Join' }).click();
    // Cy, served by the second server, is in the chat server's room.
    await members(dee).getByText('Cy', { exact: true }).waitFor(WAIT);
    await members(cy).getByText('Dee', { exact: true }).waitFor(WAIT);
    await dee.context().close();
    await context.close();
  } finally {
    await stopServer(other.child);
    await stopServer(chat.child);
    for (const dir of [site, siteData, chatData]) rmSync(dir, { recursive: true, force: true });
  }
});

test('a config.json naming a server that cannot be reached says so', async () => {
  const site = mkdtempSync(join(tmpdir(), 'chat-site-'));
  const siteData = mkdtempSync(join(tmpdir(), 'chat-site-data-'));
  cpSync(DIST, site, { recursive: true });
  writeFileSync(join(site, 'config.json'), JSON.stringify({ websocketUrl: 'ws://127.0.0.1:9/ws' }));
  const other = await startServer('127.0.0.1:0', { dist: site, data: siteData });
  try {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(other.url);
    // A few quick retries first (0.5 s, 1 s, 2 s, with jitter), then the address is named.
    await page.getByRole('alert').getByText('Cannot reach the chat server at ws://127.0.0.1:9/ws').waitFor({ timeout: 20_000 });
    assert.equal(await page.getByRole('button', { name: 'Join' }).isEnabled(), false);
    await context.close();
  } finally {
    await stopServer(other.child);
    for (const dir of [site, siteData]) rmSync(dir, { recursive: true, force: true });
  }
});

/** The texts of the messages `page` shows, confirmed and on their way. */
const texts = (page) => log(page).locator('.message .text').allTextContents();

/** Waits until `page` shows exactly `expected` among its messages, in order. */
async function expectTexts(page, expected, what) {
  const deadline = Date.now() + 30_000;
  let shown;
  do {
    shown = (await texts(page)).filter((text) => expected.includes(text));
    if (JSON.stringify(shown) === JSON.stringify(expected)) return;
    await page.waitForTimeout(100);
  } while (Date.now() < deadline);
  assert.deepEqual(shown, expected, what);
}

test('messages written too fast or offline all go, in order, once each', async () => {
  const data = mkdtempSync(join(tmpdir(), 'chat-outbox-'));
  let chat = await startServer('127.0.0.1:0', { data, extra: ['--rate-limit', '1', '--rate-burst', '3'] });
  try {
    const eve = await openAs('Eve', 'outbox-room', chat.url);
    const obs = await openAs('Obs', 'outbox-room', chat.url);
    await members(eve).getByText('Obs', { exact: true }).waitFor(WAIT);

    // Fourteen at once against a burst of three (the join spent one):
    // every one is shown at once, none comes back to the composer, and they
    // go out as the limit allows, at the pace the server named after its
    // first refusal (sent as soon as the one before was through, each would
    // be refused once, and ten refusals in a minute close a connection).
    let reconnects = 0;
    eve.on('websocket', () => { reconnects += 1; });
    const fast = Array.from({ length: 14 }, (_, i) => `fast ${i + 1}`);
    for (const text of fast) {
      await messageField(eve).fill(text);
      await messageField(eve).press('Enter');
    }
    assert.equal(await messageField(eve).inputValue(), '');
    await log(eve).getByText(/Sending in \d+ s/).first().waitFor(WAIT);
    await expectTexts(eve, fast, 'all shown at once, in order');
    await expectTexts(obs, fast, 'all arrive, in order, once each');
    await log(eve).locator('.outgoing').waitFor({ state: 'detached', ...WAIT });
    assert.equal(await eve.getByRole('alert').count(), 0, 'no error for going too fast');
    assert.equal(reconnects, 0, 'the connection was never closed for its refusals');

    // Offline: each Enter keeps its message, shown as waiting.
    const addr = new URL(chat.url).host;
    await stopServer(chat.child);
    await eve.getByText(/Reconnecting|Connecting/).first().waitFor(WAIT);
    const offline = ['first', 'second', 'third'];
    for (const text of offline) {
      await messageField(eve).fill(text);
      await messageField(eve).press('Enter');
    }
    assert.equal(await messageField(eve).inputValue(), '');
    await expectTexts(eve, offline, 'kept while offline');
    await log(eve).getByText('Waiting for the connection…').first().waitFor(WAIT);
    chat = await startServer(addr, { data, extra: ['--rate-limit', '1', '--rate-burst', '3'] });
    await expectTexts(obs, [...fast, ...offline], 'sent once back, in order, once each');
    await log(eve).locator('.outgoing').waitFor({ state: 'detached', ...WAIT });
    await expectTexts(eve, [...fast, ...offline], 'and confirmed');
    await eve.context().close();
    await obs.context().close();
  } finally {
    await stopServer(chat.child);
    rmSync(data, { recursive: true, force: true });
  }
});

test('messages waiting in one room never go to the room switched to', async () => {
  const inB = await openAs('Obs', 'switch-b');
  const inA = await openAs('Ann', 'switch-a');
  const context = await browser.newContext();
  const eve = await context.newPage();
  // The answer to Eve's first message is held back until her switch to
  // #switch-b has gone to the server: the moment when the next message,
  // sent then, would land in #switch-b.
  let held = null;
  await eve.routeWebSocket(/\/ws/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((text) => {
      server.send(text);
      const frame = JSON.parse(text);
      if (frame.action === 'join' && frame.room === 'switch-b' && held) {
        ws.send(held);
        held = null;
      }
    });
    server.onMessage((text) => {
      const frame = JSON.parse(text);
      if (frame.type === 'message' && frame.data === 'a1' && held === null && !frame.held) {
        held = JSON.stringify({ ...frame, held: true });
        return;
      }
      ws.send(text);
    });
  });
  await eve.goto(base);
  await eve.getByLabel('Name').fill('Eve');
  await eve.getByLabel('Room').fill('switch-a');
  await eve.getByRole('button', { name: 'Join' }).click();
  await log(eve).waitFor(WAIT);
  const waiting = ['a1', 'a2', 'a3'];
  for (const text of waiting) {
    await messageField(eve).fill(text);
    await messageField(eve).press('Enter');
  }
  await expectTexts(inA, ['a1'], 'the first is posted');
  await eve.evaluate(() => { location.hash = '#switch-b'; });
  await members(eve).getByText('Obs', { exact: true }).waitFor(WAIT);
  await eve.waitForTimeout(1500);
  assert.deepEqual((await texts(inB)).filter((t) => waiting.includes(t)), [], 'none went to #switch-b');
  // Back in the room they were written in, they go.
  await eve.evaluate(() => { location.hash = '#switch-a'; });
  await expectTexts(inA, waiting, 'all of them, in #switch-a, in order');
  await context.close();
  await inB.context().close();
  await inA.context().close();
});

for (const store of ['memory', 'dynamodb']) test(`${store}: a message whose answer was lost is not sent again, and one unsent survives a reload`, () => withOwnServer(async (base) => {
  const context = await browser.newContext();
  const page = await context.newPage();
  // First the message's own echo never reaches the page: its socket is
  // cut just then, after the server has it. Later sockets are refused.
  let mode = 'cut-echo';
  let current;
  await page.routeWebSocket(/\/ws/, (ws) => {
    if (mode === 'refuse') return ws.close();
    current = ws;
    const server = ws.connectToServer();
    server.onMessage((text) => {
      const frame = JSON.parse(text);
      if (mode === 'cut-echo' && frame.type === 'message' && frame.data === 'answer lost') {
        mode = 'pass';
        ws.close();
        return;
      }
      ws.send(text);
    });
  });
  await page.goto(base);
  await page.getByLabel('Name').fill('Lou');
  await page.getByLabel('Room').fill('lost-room');
  await page.getByRole('button', { name: 'Join' }).click();
  await log(page).waitFor(WAIT);
  const obs = await openAs('Obs', 'lost-room', base);
  await members(page).getByText('Obs', { exact: true }).waitFor(WAIT);
  await messageField(page).fill('answer lost');
  await messageField(page).press('Enter');
  await expectTexts(obs, ['answer lost'], 'the server has it');
  // Reconnected and rejoined: its history holds the nonce, so nothing is
  // sent twice, and it shows as one's own.
  await log(page).locator('.outgoing').waitFor({ state: 'detached', ...WAIT });
  await page.getByText('Connected').waitFor({ timeout: 30_000 });
  await page.waitForTimeout(1500);
  await expectTexts(obs, ['answer lost'], 'exactly one copy');
  await expectTexts(page, ['answer lost'], 'exactly one copy here too');
  const later = await openAs('Lee', 'lost-room', base);
  await expectTexts(later, ['answer lost'], 'exactly one copy in history');
  await later.context().close();
  const own = log(page).locator('.message', { hasText: 'answer lost' });
  assert.match(await own.getAttribute('class'), /\bmine\b/);

  // Written while the server cannot be reached, then the page reloaded:
  // it is kept, and goes once the room is back.
  mode = 'refuse';
  current.close();
  await page.getByText(/Reconnecting|Connecting/).first().waitFor(WAIT);
  await messageField(page).fill('kept across a reload');
  await messageField(page).press('Enter');
  await expectTexts(page, ['answer lost', 'kept across a reload'], 'shown while unreachable');
  await page.reload();
  await page.getByText(/Reconnecting|Connecting/).first().waitFor(WAIT);
  mode = 'pass';
  await expectTexts(obs, ['answer lost', 'kept across a reload'], 'sent after the reload, once');
  await expectTexts(page, ['answer lost', 'kept across a reload'], 'and confirmed');
  // Another person of the same name is not taken for oneself.
  const twin = await openAs('Lou', 'lost-room', base);
  await messageField(twin).fill('the other Lou');
  await messageField(twin).press('Enter');
  await expectTexts(page, ['answer lost', 'kept across a reload', 'the other Lou'], 'seen');
  const theirs = log(page).locator('.message', { hasText: 'the other Lou' });
  assert.doesNotMatch(await theirs.getAttribute('class'), /\bmine\b/);
  await twin.context().close();
  await obs.context().close();
  await context.close();
}, ['--store', store]));

test('under API Gateway\'s rules idle tabs stay connected and forced reconnects are quiet', async () => {
  // No server pings, a 3 s idle timeout, connections cut after 15 s; the app
  // told to send a heartbeat after 1 s without sending.
  const site = mkdtempSync(join(tmpdir(), 'chat-gw-site-'));
  const data = mkdtempSync(join(tmpdir(), 'chat-gw-data-'));
  cpSync(DIST, site, { recursive: true });
  writeFileSync(join(site, 'config.json'), JSON.stringify({ heartbeatSeconds: 1 }));
  const gw = await startServer('127.0.0.1:0', {
    dist: site,
    data,
    extra: ['--ping-interval', '0', '--idle-timeout', '3s', '--max-connection-duration', '15s'],
  });
  const connects = () => (gw.output().match(/ connected connection_id=/g) ?? []).length;
  try {
    const ada = await openAs('Ada', 'gw-room', gw.url);
    const bo = await openAs('Bo', 'gw-room', gw.url);
    await log(ada).getByText('\u2068Bo\u2069 joined').waitFor(WAIT);
    assert.equal(connects(), 2);

    // Idle for 5 s, well past the idle timeout: the heartbeat keeps both open.
    for (let waited = 0; waited < 5000; waited += 250) {
      for (const page of [ada, bo]) {
        assert.equal(await page.getByText('Connected').count(), 1, 'idle tabs stay connected');
      }
      await ada.waitForTimeout(250);
    }
    assert.equal(connects(), 2, 'nobody reconnected while idle');

    // Both connections reach their maximum duration and are replaced.
    const deadline = Date.now() + 30_000;
    while (connects() < 4 && Date.now() < deadline) await ada.waitForTimeout(200);
    assert.equal(connects(), 4, 'both tabs were cut off and reconnected');
    // Past the grace period in which a leave waits for its rejoin.
    await ada.waitForTimeout(6000);
    for (const page of [ada, bo]) await page.getByText('Connected').waitFor(WAIT);

    assert.equal(await log(bo).getByText(/Ada\u2069 (left|joined)/).count(), 0, 'Bo saw no leave or join of Ada');
    assert.equal(await log(ada).getByText(/Bo\u2069 left/).count(), 0, 'Ada saw no leave of Bo');
    assert.equal(await log(ada).getByText(/Bo\u2069 joined/).count(), 1, 'only the real join');
    for (const page of [ada, bo]) {
      for (const name of ['Ada', 'Bo']) {
        assert.equal(await members(page).getByText(name, { exact: true }).count(), 1, `${name} listed once`);
      }
    }
    // And the chat goes on over the new connections.
    await messageField(ada).fill('still here');
    await messageField(ada).press('Enter');
    await log(bo).getByText('still here', { exact: true }).waitFor(WAIT);
    await ada.context().close();
    await bo.context().close();
  } finally {
    await stopServer(gw.child);
    for (const dir of [site, data]) rmSync(dir, { recursive: true, force: true });
  }
});

test('tabs cut off at the same moment, or by a restart, come back without notices', async () => {
  // Cut together (as API Gateway's 2-hour cap does to tabs that connected
  // together), neither tab hears the other's leave: it goes to a connection
  // that is closing too. A restart sends no leaves at all. Either way the
  // one that rejoins second must not be announced to the one that was first.
  const data = mkdtempSync(join(tmpdir(), 'chat-cut-'));
  const extra = ['--management-addr', '127.0.0.1:0'];
  let chat = await startServer('127.0.0.1:0', { data, extra });
  const ids = () => [...chat.output().matchAll(/ connected connection_id="?(\w+)/g)].map((m) => m[1]);
  try {
    const ada = await openAs('Ada', 'cut-room', chat.url);
    const bo = await openAs('Bo', 'cut-room', chat.url);
    await log(ada).getByText('\u2068Bo\u2069 joined').waitFor(WAIT);
    await members(bo).getByText('Ada', { exact: true }).waitFor(WAIT);
    const quiet = async (when) => {
      for (const page of [ada, bo]) await page.getByText('Connected').waitFor({ timeout: 30_000 });
      // Past the grace period in which a leave waits for its rejoin.
      await ada.waitForTimeout(6000);
      assert.equal(await log(bo).getByText(/Ada\u2069 (left|joined)/).count(), 0, `${when}: Bo saw no leave or join of Ada`);
      assert.equal(await log(ada).getByText(/Bo\u2069 left/).count(), 0, `${when}: Ada saw no leave of Bo`);
      assert.equal(await log(ada).getByText(/Bo\u2069 joined/).count(), 1, `${when}: only the real join`);
      for (const page of [ada, bo]) {
        for (const name of ['Ada', 'Bo']) {
          assert.equal(await members(page).getByText(name, { exact: true }).count(), 1, `${when}: ${name} listed once`);
        }
      }
    };

    const management = chat.output().match(/management API on (http:\/\/\S+)/)[1];
    const cut = ids();
    assert.equal(cut.length, 2);
    await Promise.all(cut.map((id) => fetch(`${management}/@connections/${id}`, { method: 'DELETE' })));
    const deadline = Date.now() + 15_000;
    while (ids().length < 4 && Date.now() < deadline) await ada.waitForTimeout(100);
    assert.equal(ids().length, 4, 'both tabs reconnected');
    await quiet('cut together');

    const addr = new URL(chat.url).host;
    await stopServer(chat.child);
    await ada.getByText(/Reconnecting|Connecting/).first().waitFor(WAIT);
    chat = await startServer(addr, { data, extra });
    await quiet('after a restart');
    await ada.context().close();
    await bo.context().close();
  } finally {
    await stopServer(chat.child);
    rmSync(data, { recursive: true, force: true });
  }
});

test('messages that reach a joiner before its joined frame are kept, once each', async () => {
  // Someone has already said something in the room.
  const ann = await openAs('Ann', 'early-room');
  await messageField(ann).fill('in the history');
  await messageField(ann).press('Enter');
  await log(ann).getByText('in the history', { exact: true }).waitFor(WAIT);

  // The server may fan a message out to a joiner before its `joined`: play
  // that, with one new message (sent twice) and one the history holds too.
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.routeWebSocket(/\/ws/, (ws) => {
    const server = ws.connectToServer();
    server.onMessage((text) => {
      const frame = JSON.parse(text);
      if (frame.type === 'joined') {
        const early = {
          type: 'message', id: `${Date.now() + 1000}-00000000000000ff`, room: frame.room,
          name: 'Zed', data: 'sent while joining', ts: Date.now(),
        };
        ws.send(JSON.stringify(early));
        ws.send(JSON.stringify(early));
        ws.send(JSON.stringify(frame.history[0]));
      }
      ws.send(text);
    });
  });
  await page.goto(base);
  await page.getByLabel('Name').fill('Ida');
  await page.getByLabel('Room').fill('early-room');
  await page.getByRole('button', { name: 'Join' }).click();
  await log(page).getByText('sent while joining', { exact: true }).waitFor(WAIT);
  assert.equal(await log(page).getByText('sent while joining', { exact: true }).count(), 1);
  assert.equal(await log(page).getByText('in the history', { exact: true }).count(), 1);
  // History first, then what came early.
  const texts = await log(page).locator('.message .text').allTextContents();
  assert.deepEqual(texts, ['in the history', 'sent while joining']);
  await context.close();
  await ann.context().close();
});

test('a join the server fails is not left hanging', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  // The server answers the join with an `internal` error, as a store outage
  // would (the first attempt only).
  let failed = false;
  await page.routeWebSocket(/\/ws/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((text) => {
      if (!failed && JSON.parse(text).action === 'join') {
        failed = true;
        ws.send(JSON.stringify({ type: 'error', code: 'internal', message: 'the server could not complete the request; try again' }));
        return;
      }
      server.send(text);
    });
  });
  await page.goto(base);
  await page.getByLabel('Name').fill('Jo');
  await page.getByLabel('Room').fill('failing-room');
  await page.getByRole('button', { name: 'Join' }).click();
  await page.getByRole('alert').getByText(/try again/).waitFor(WAIT);
  // Back to a usable lobby: the button is enabled, and trying again works.
  const join = page.getByRole('button', { name: 'Join' });
  await join.waitFor(WAIT);
  assert.equal(await join.isEnabled(), true);
  await join.click();
  await log(page).waitFor(WAIT);
  await context.close();
});

/** Joins `room` as `name` on a bare WebSocket (no app) and sends each text. */
async function postAs(name, room, texts, server = base) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${server}/healthz`);
  const error = await page.evaluate(async ({ url, name, room, texts }) => {
    const ws = new WebSocket(url);
    const frames = [];
    ws.onmessage = (event) => frames.push(JSON.parse(event.data));
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
    const until = async (ok) => {
      for (let i = 0; i < 300 && !ok(); i++) await new Promise((r) => setTimeout(r, 20));
      return ok();
    };
    ws.send(JSON.stringify({ action: 'join', room, name }));
    if (!await until(() => frames.some((f) => f.type === 'joined'))) return `no joined: ${JSON.stringify(frames)}`;
    for (const data of texts) ws.send(JSON.stringify({ action: 'sendmessage', data }));
    const mine = () => frames.filter((f) => f.type === 'message' && f.name === name).length === texts.length;
    if (!await until(mine)) return `not all sent: ${JSON.stringify(frames)}`;
    ws.close();
    return null;
  }, { url: `${server.replace('http', 'ws')}/ws`, name, room, texts });
  await context.close();
  assert.equal(error, null);
}

/** `prefix1` … `prefixN`, from `from`. */
const numbered = (prefix, from, to) => Array.from({ length: to - from + 1 }, (_, i) => `${prefix}${from + i}`);

test('missed messages are filled in after a dropped connection, and the room says what is new', async () => {
  const data = mkdtempSync(join(tmpdir(), 'chat-gap-'));
  const chat = await startServer('127.0.0.1:0', { data, extra: ['--rate-limit', '0'] });
  try {
    const context = await browser.newContext();
    const eve = await context.newPage();
    let refuse = false;
    let current;
    await eve.routeWebSocket(/\/ws/, (ws) => {
      if (refuse) return ws.close();
      current = ws;
      ws.connectToServer();
    });
    await eve.goto(chat.url);
    await eve.getByLabel('Name').fill('Eve');
    await eve.getByLabel('Room').fill('gap-room');
    await eve.getByRole('button', { name: 'Join' }).click();
    await log(eve).waitFor(WAIT);
    await postAs('Pam', 'gap-room', numbered('m', 1, 29), chat.url);
    await expectTexts(eve, numbered('m', 1, 29), 'seen live');

    // Away while 91 are posted, more than a joined frame's 50: the rest
    // are fetched, none is skipped, nothing is marked missing.
    refuse = true;
    current.close();
    await eve.getByText(/Reconnecting|Connecting/).first().waitFor(WAIT);
    await postAs('Pam', 'gap-room', numbered('m', 30, 120), chat.url);
    refuse = false;
    await expectTexts(eve, numbered('m', 1, 120), 'every message, in order, once');
    assert.equal(await log(eve).locator('.gap').count(), 0);

    // Away while 560 are posted: 500 are fetched by themselves, the gap
    // before them says so and loads the rest when asked.
    refuse = true;
    current.close();
    await eve.getByText(/Reconnecting|Connecting/).first().waitFor(WAIT);
    await postAs('Pam', 'gap-room', numbered('m', 121, 680), chat.url);
    refuse = false;
    const gap = log(eve).getByRole('group', { name: 'Missed messages' });
    await gap.getByRole('button', { name: 'Load them' }).waitFor({ timeout: 30_000 });
    await expectTexts(eve, [...numbered('m', 1, 120), ...numbered('m', 131, 680)], 'the latest 550');
    await gap.getByRole('button', { name: 'Load them' }).click();
    await gap.waitFor({ state: 'detached', ...WAIT });
    await expectTexts(eve, numbered('m', 1, 680), 'and then all of them');

    // What came while the person was in another room is marked as new,
    // after a reload too.
    await eve.evaluate(() => { location.hash = '#elsewhere'; });
    await log(eve).getByText('m680').waitFor({ state: 'detached', ...WAIT });
    await postAs('Pam', 'gap-room', ['n1', 'n2'], chat.url);
    await eve.evaluate(() => { location.hash = '#gap-room'; });
    const divider = log(eve).getByRole('separator', { name: 'New since you were here' });
    await divider.waitFor(WAIT);
    const after = await divider.evaluate((d) => d.nextElementSibling?.textContent ?? '');
    assert.match(after, /n1/, 'the divider stands before the first new message');
    await eve.evaluate(() => { location.hash = '#elsewhere'; });
    await log(eve).getByText('n2').waitFor({ state: 'detached', ...WAIT });
    await postAs('Pam', 'gap-room', ['n3'], chat.url);
    await eve.reload();
    await log(eve).waitFor(WAIT);
    await eve.evaluate(() => { location.hash = '#gap-room'; });
    await divider.waitFor(WAIT);
    assert.match(await divider.evaluate((d) => d.nextElementSibling?.textContent ?? ''), /n3/);
    // Nothing new: no divider, even as messages arrive live.
    await eve.reload();
    await log(eve).getByText('n3').waitFor(WAIT);
    await postAs('Pam', 'gap-room', ['n4'], chat.url);
    await log(eve).getByText('n4').waitFor(WAIT);
    assert.equal(await divider.count(), 0);
    await context.close();
  } finally {
    await stopServer(chat.child);
    rmSync(data, { recursive: true, force: true });
  }
});

for (const [device, options] of Object.entries(DEVICES)) test(`${device}: a long conversation scrolls inside the screen, and reading older messages is not interrupted`, async () => {
  const room = `long-${device}`;
  const height = options.viewport.height;
  const page = await openAs('Pia', room, base, options);
  const context = page.context();
  // 40 messages from eight people (each within the rate limit's burst).
  for (const who of ['Q1', 'Q2', 'Q3', 'Q4', 'Q5', 'Q6', 'Q7', 'Q8']) {
    await postAs(who, room, Array.from({ length: 5 }, (_, i) => `${who} line ${i}`));
  }
  await log(page).getByText('Q8 line 4', { exact: true }).waitFor(WAIT);
  // The posters' leave notices come after a grace period: let them land.
  await page.waitForTimeout(5500);

  // The header, Leave and the member list (on a phone, its button) stay on
  // the screen.
  const memberList = device === 'phone'
    ? page.getByRole('button', { name: /^Members/ })
    : page.getByRole('heading', { name: /Members/ });
  for (const locator of [page.getByRole('button', { name: 'Leave' }), memberList]) {
    const box = await locator.boundingBox();
    assert.ok(box && box.y >= 0 && box.y + box.height <= height, `on screen: ${JSON.stringify(box)}`);
  }
  // Only the log scrolls: the page itself never does (names hidden in
  // grouped messages once stretched it, and the header slid away).
  assert.ok(await page.evaluate(() => document.documentElement.scrollHeight <= window.innerHeight),
    'the page is no taller than the screen');
  await page.mouse.move(100, 20);
  await page.mouse.wheel(0, 600);
  await page.waitForTimeout(200);
  assert.equal(await page.evaluate(() => document.scrollingElement.scrollTop), 0, 'the page did not scroll');
  // The log scrolls, and its first message can be reached.
  const scroll = await log(page).evaluate((el) => ({ height: el.scrollHeight, client: el.clientHeight }));
  assert.ok(scroll.height > scroll.client, 'the log scrolls within the screen');
  await log(page).evaluate((el) => { el.scrollTop = 0; });
  const first = await log(page).getByText('Q1 line 0', { exact: true }).boundingBox();
  assert.ok(first && first.y >= 0 && first.y < height, 'the oldest message is reachable');

  // A new message while reading older ones: the view stays, a button offers the latest.
  await postAs('Q9', room, ['a newer one']);
  await log(page).getByText('a newer one', { exact: true }).waitFor({ state: 'attached', ...WAIT });
  // Notices are not counted: one new message.
  const jump = page.getByRole('button', { name: '↓ 1 new message' });
  await jump.waitFor(WAIT);
  assert.equal(await log(page).evaluate((el) => el.scrollTop), 0, 'the view did not jump');
  await jump.click();
  const at = await log(page).evaluate((el) => el.scrollHeight - el.scrollTop - el.clientHeight);
  assert.ok(at < 48, 'the button goes to the newest message');
  await jump.waitFor({ state: 'detached', ...WAIT });
  await context.close();
});

for (const [device, options] of Object.entries(DEVICES)) test(`${device}: focus follows joining and leaving, and long messages say why they cannot be sent`, async () => {
  const page = await openAs('Fay', `focus-${device}`, base, options);
  await page.waitForFunction(() => document.activeElement?.id === 'message', null, WAIT);
  await messageField(page).fill('é'.repeat(2049));
  await page.getByText('Too long by 2: 4\u202f098 of 4\u202f096 bytes', { exact: false }).waitFor(WAIT);
  assert.equal(await page.getByRole('button', { name: 'Send' }).isEnabled(), false);
  await messageField(page).fill('é'.repeat(1900));
  await page.getByText('3\u202f800 of 4\u202f096 bytes').waitFor(WAIT);
  await page.getByRole('button', { name: 'Leave' }).click();
  await page.waitForFunction(() => document.activeElement?.id === 'room', null, WAIT);
  await page.context().close();
});

test('old messages show their day, and every time is machine-readable', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const threeDaysAgo = Date.now() - 3 * 24 * 3600 * 1000;
  await page.routeWebSocket(/\/ws/, (ws) => {
    const server = ws.connectToServer();
    server.onMessage((text) => {
      const frame = JSON.parse(text);
      if (frame.type === 'joined') {
        frame.history.unshift({
          type: 'message', id: `${threeDaysAgo}-0000000000000001`, room: frame.room,
          name: 'Old', data: 'from three days ago', ts: threeDaysAgo,
        });
        ws.send(JSON.stringify(frame));
        return;
      }
      ws.send(text);
    });
  });
  await page.goto(base);
  await page.getByLabel('Name').fill('Dan');
  await page.getByLabel('Room').fill('dated-room');
  await page.getByRole('button', { name: 'Join' }).click();
  const old = log(page).locator('.message', { hasText: 'from three days ago' });
  await old.waitFor(WAIT);
  const time = old.locator('time');
  assert.equal(await time.getAttribute('datetime'), new Date(threeDaysAgo).toISOString());
  // Under its day's heading the time does not repeat the date; hovering
  // (its title) or a tap shows it in full.
  const full = /^(Sun|Mon|Tue|Wed|Thu|Fri|Sat) \d{1,2} [A-Z][a-z]{2} \d{4}, \d\d:\d\d$/;
  assert.match(await time.textContent(), /^\d\d:\d\d$/);
  assert.match(await time.getAttribute('title'), full);
  const heading = await log(page).getByRole('separator').first().textContent();
  assert.match(heading, /^(Sun|Mon|Tue|Wed|Thu|Fri|Sat) \d{1,2} [A-Z][a-z]{2}( \d{4})?$/);
  await time.click();
  assert.match(await time.textContent(), full);
  await context.close();
});

test('names count characters, and a link to a room with an accent is read decoded', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${base}/#café`);
  assert.equal(await page.getByLabel('Room').inputValue(), 'café');
  const emoji = '😀'.repeat(20);
  await page.getByLabel('Name').fill(emoji);
  assert.equal(await page.getByLabel('Name').inputValue(), emoji, 'not cut at 32 UTF-16 units');
  await page.getByLabel('Room').fill('emoji-room');
  await page.getByRole('button', { name: 'Join' }).click();
  await members(page).getByText(emoji, { exact: true }).waitFor(WAIT);
  await context.close();
});

test('the address and the room follow each other: Back, Forward, edits and Leave', async () => {
  const page = await openAs('Hal', 'history-a');
  const hash = () => new URL(page.url()).hash;
  const inRoom = (room) => page.getByRole('heading', { level: 1, name: room }).waitFor(WAIT);
  const inLobby = () => page.getByRole('button', { name: 'Join' }).waitFor(WAIT);
  await inRoom('history-a');
  assert.equal(hash(), '#history-a');

  // Back returns to the lobby, Forward to the room.
  await page.goBack();
  await inLobby();
  assert.equal(hash(), '');
  await page.goForward();
  await inRoom('history-a');

  // Editing the fragment switches rooms; a wrong one is refused and undone.
  await page.evaluate(() => { location.hash = '#history-b'; });
  await inRoom('history-b');
  await page.evaluate(() => { location.hash = '#not a room!'; });
  await page.getByRole('alert').getByText(/not a room/).waitFor(WAIT);
  await page.waitForFunction(() => location.hash === '#history-b', null, WAIT);
  await inRoom('history-b');

  // Leave is a step of its own: Back from the lobby returns to the room.
  await page.getByRole('button', { name: 'Leave' }).click();
  await inLobby();
  assert.equal(hash(), '');
  await page.goBack();
  await inRoom('history-b');

  // In the lobby, an edited fragment joins (the name is remembered).
  await page.getByRole('button', { name: 'Leave' }).click();
  await inLobby();
  await page.evaluate(() => { location.hash = '#history-c'; });
  await inRoom('history-c');
  await page.context().close();
});

test('a hidden tab counts new messages in its title; the page says when it is still loading', async () => {
  const page = await openAs('Tia', 'title-room');
  assert.equal(await page.locator('#loading').count(), 0, 'the loading note is gone once the app is up');
  await page.waitForFunction(() => document.title === '#title-room · Chat rooms', null, WAIT);
  const setHidden = (hidden) => page.evaluate((hidden) => {
    Object.defineProperty(document, 'hidden', { value: hidden, configurable: true });
    document.dispatchEvent(new Event('visibilitychange', { bubbles: true }));
  }, hidden);
  await setHidden(true);
  await postAs('Uma', 'title-room', ['one', 'two']);
  await page.waitForFunction(() => document.title === '(2) #title-room · Chat rooms', null, WAIT);
  await setHidden(false);
  await page.waitForFunction(() => document.title === '#title-room · Chat rooms', null, WAIT);
  await page.context().close();

  // The page explains itself instead of staying blank: when the app fails
  // to load, when the browser has no WebAssembly, and while loading is slow.
  const context = await browser.newContext();
  const broken = await context.newPage();
  await broken.route(/\.wasm$/, (route) => route.abort());
  await broken.goto(base);
  await broken.getByText('The chat could not start. Reload the page to try again.').waitFor(WAIT);
  assert.equal(await broken.locator('.spinner').isVisible(), false, 'no spinner once it has failed');

  const noWasm = await context.newPage();
  await noWasm.addInitScript(() => { delete globalThis.WebAssembly; });
  await noWasm.goto(base);
  await noWasm.getByText(/This chat needs WebAssembly, which this browser does not offer/).waitFor(WAIT);

  const slow = await context.newPage();
  await slow.route(/\.wasm$/, () => {}); // never answered
  await slow.goto(base);
  await slow.getByText('Loading the chat…').waitFor(WAIT);
  await slow.waitForFunction(
    () => getComputedStyle(document.querySelector('#loading .slow')).visibility === 'visible', null, { timeout: 20_000 });
  assert.equal(await slow.getByText(/Still loading\? This chat needs WebAssembly/).isVisible(), true);
  await context.close();
});

test('the app is served compressed, cached by name and under a strict Content-Security-Policy', async () => {
  const index = await fetch(`${base}/`);
  assert.equal(index.status, 200);
  assert.equal(index.headers.get('cache-control'), 'no-cache');
  assert.equal(index.headers.get('x-content-type-options'), 'nosniff');
  assert.equal(index.headers.get('referrer-policy'), 'no-referrer');
  const policy = index.headers.get('content-security-policy');
  assert.match(policy, /script-src 'self' 'wasm-unsafe-eval';/);
  assert.match(policy, /connect-src 'self';/);
  assert.doesNotMatch(policy, /unsafe-inline/);
  const html = await index.text();
  assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/, 'no inline script in the page');
  const wasm = html.match(/(\/frontend-[0-9a-f]{16}_bg\.wasm)/)[1];
  for (const [accept, encoding] of [['br, gzip', 'br'], ['gzip', 'gzip'], ['identity', null]]) {
    const response = await fetch(`${base}${wasm}`, { headers: { 'accept-encoding': accept } });
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('content-encoding'), encoding, `Accept-Encoding: ${accept}`);
    assert.equal(response.headers.get('cache-control'), 'public, max-age=31536000, immutable');
    assert.equal(response.headers.get('vary'), 'accept-encoding');
    // What arrives (decoded) is the wasm module itself.
    const bytes = new Uint8Array(await response.arrayBuffer());
    assert.deepEqual([...bytes.slice(0, 4)], [0, 0x61, 0x73, 0x6d]);
  }
  // No HTML in place of a missing file: the app would take it for its config.
  const missing = await fetch(`${base}/config.json`);
  assert.equal(missing.status, 404);

  // The whole suite runs under this policy; here an injected inline script
  // is shown to be refused while the app keeps working, and nothing the page
  // asks for is missing but the optional config.json (the icon included).
  const context = await browser.newContext();
  const failures = [];
  context.on('response', (response) => {
    if (response.status() >= 400 && !response.url().endsWith('/config.json')) {
      failures.push(`${response.status()} ${response.url()}`);
    }
  });
  const page = await context.newPage();
  await page.goto(base);
  await page.getByLabel('Name').fill('Csp');
  await page.getByLabel('Room').fill('csp-room');
  await page.getByRole('button', { name: 'Join' }).click();
  await log(page).waitFor(WAIT);
  const violated = await page.evaluate(() => new Promise((resolve) => {
    document.addEventListener('securitypolicyviolation', (event) => resolve(event.effectiveDirective), { once: true });
    const script = document.createElement('script');
    script.textContent = 'window.injected = true';
    document.body.append(script);
    setTimeout(() => resolve(null), 3000);
  }));
  assert.match(violated ?? 'none', /^script-src/);
  assert.equal(await page.evaluate(() => window.injected), undefined);
  await messageField(page).fill('still here');
  await messageField(page).press('Enter');
  await log(page).getByText('still here', { exact: true }).waitFor(WAIT);
  assert.deepEqual(failures, [], 'every request the page made was answered');
  // The tab has an icon of its own (no 404 for /favicon.ico).
  const icon = await page.evaluate(() => document.querySelector('link[rel="icon"]')?.href);
  assert.ok(icon, 'the page names its icon');
  const iconResponse = await fetch(icon);
  assert.equal(iconResponse.status, 200);
  assert.equal(iconResponse.headers.get('content-type'), 'image/svg+xml');
  await page.context().close();
});

test('older messages load at the top of the log, once each, without moving the view', async () => {
  // 70 messages: the joiner gets the latest 50, the rest a page later.
  const posters = Array.from({ length: 14 }, (_, i) => `P${String(i).padStart(2, '0')}`);
  for (const who of posters) {
    await postAs(who, 'older-room', Array.from({ length: 5 }, (_, i) => `${who} says ${i}`));
  }
  const page = await openAs('Olga', 'older-room');
  await log(page).getByText('P13 says 4', { exact: true }).waitFor(WAIT);
  assert.equal(await log(page).getByText('P00 says 0', { exact: true }).count(), 0, 'not in the first 50');
  await log(page).getByText('P04 says 0', { exact: true }).waitFor(WAIT);

  // Scrolling to the top asks for the page before; the message that was at
  // the top stays where the reader left it.
  // Measured before the scroll is handled (the request goes out then).
  const before = await log(page).evaluate((el) => {
    el.scrollTop = 0;
    const y = [...el.querySelectorAll('.message .text')]
      .find((text) => text.textContent === 'P04 says 0').getBoundingClientRect().y;
    el.dispatchEvent(new Event('scroll'));
    return y;
  });
  await log(page).getByText('P00 says 0', { exact: true }).waitFor({ state: 'attached', ...WAIT });
  await page.getByText('The start of the conversation').waitFor({ state: 'attached', ...WAIT });
  const after = await log(page).evaluate((el) => [...el.querySelectorAll('.message .text')]
    .find((text) => text.textContent === 'P04 says 0').getBoundingClientRect().y);
  assert.ok(Math.abs(after - before) < 4, `the view stayed: ${before} → ${after}`);
  const texts = await log(page).locator('.message .text').allInnerTexts();
  assert.equal(texts.length, 70, 'every message once');
  assert.deepEqual(texts.slice(0, 2), ['P00 says 0', 'P00 says 1'], 'oldest first');
  assert.equal(await page.getByRole('button', { name: 'Load older messages' }).count(), 0);
  await page.context().close();
});

test('a rejoin the server fails after a reconnect is tried again', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  let connections = 0;
  let failed = false;
  let current;
  await page.routeWebSocket(/\/ws/, (ws) => {
    connections += 1;
    const mine = connections;
    current = ws;
    const server = ws.connectToServer();
    ws.onMessage((text) => {
      // The automatic rejoin on the second connection fails, as during a
      // store outage.
      if (mine === 2 && !failed && JSON.parse(text).action === 'join') {
        failed = true;
        ws.send(JSON.stringify({ type: 'error', code: 'internal', message: 'the server could not complete the request; try again' }));
        return;
      }
      server.send(text);
    });
  });
  await page.goto(base);
  await page.getByLabel('Name').fill('Rae');
  await page.getByLabel('Room').fill('rejoin-room');
  await page.getByRole('button', { name: 'Join' }).click();
  await log(page).waitFor(WAIT);
  await current.close();
  await page.getByRole('alert').getByText(/try again/).waitFor(WAIT);
  assert.equal(failed, true);
  // The app joins again by itself, and the chat goes on.
  await page.getByRole('alert').waitFor({ state: 'detached', ...WAIT });
  await messageField(page).fill('back again');
  await messageField(page).press('Enter');
  await log(page).getByText('back again', { exact: true }).waitFor(WAIT);
  await context.close();
});

for (const [device, options] of Object.entries(DEVICES)) test(`${device}: multi-line messages, links, grouping, day headings and recent rooms`, async () => {
  const room = `features-${device}`;
  const page = await openAs('Lin', room, base, options);
  // Shift+Enter makes a new line and Enter sends; on a touch screen, with
  // no Shift+Enter, Return makes a new line and the button sends.
  await messageField(page).type('line one');
  if (device === 'phone') {
    assert.equal(await messageField(page).getAttribute('enterkeyhint'), 'enter');
    await messageField(page).press('Enter');
    await messageField(page).type('line two');
    await page.getByRole('button', { name: 'Send' }).tap();
    // The field keeps the focus (and a phone its keyboard).
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'message');
  } else {
    assert.equal(await messageField(page).getAttribute('enterkeyhint'), 'send');
    assert.match(await messageField(page).getAttribute('placeholder'), /Shift\+Enter/);
    await messageField(page).press('Shift+Enter');
    await messageField(page).type('line two');
    await messageField(page).press('Enter');
  }
  const multi = log(page).locator('.message .text', { hasText: 'line one' });
  await multi.waitFor(WAIT);
  assert.equal(await multi.evaluate((el) => el.innerText), 'line one\nline two');

  // Addresses become links, built as elements; punctuation stays outside.
  await messageField(page).fill('see https://example.com/a?b=1. <i>not markup</i>');
  await page.getByRole('button', { name: 'Send' }).click();
  const link = log(page).locator('a[href="https://example.com/a?b=1"]');
  await link.waitFor(WAIT);
  assert.equal(await link.getAttribute('rel'), 'noopener noreferrer');
  assert.equal(await link.getAttribute('target'), '_blank');
  assert.equal(await log(page).locator('.message i').count(), 0);
  // A closing parenthesis that belongs to the address stays in it.
  const wiki = 'https://en.wikipedia.org/wiki/Rust_(programming_language)';
  await messageField(page).fill(`(read ${wiki}).`);
  await page.getByRole('button', { name: 'Send' }).click();
  await log(page).locator(`a[href="${wiki}"]`).waitFor(WAIT);

  // The second message of a run shows no name again; the day has a heading.
  const second = log(page).locator('.message', { hasText: 'see https' });
  assert.match(await second.getAttribute('class'), /\bgrouped\b/);
  assert.doesNotMatch(await log(page).locator('.message', { hasText: 'line one' }).getAttribute('class'), /\bgrouped\b/);
  await log(page).getByRole('separator').getByText('Today').waitFor(WAIT);

  // The lobby offers the rooms visited lately.
  await page.getByRole('button', { name: 'Leave' }).click();
  const recent = page.getByRole('navigation', { name: 'Recently visited' });
  await recent.getByRole('button', { name: `#${room}` }).waitFor(WAIT);
  await page.getByLabel('Room').fill('elsewhere');
  await recent.getByRole('button', { name: `#${room}` }).click();
  assert.equal(await page.getByLabel('Room').inputValue(), room);
  await page.context().close();
});

test('a room name typed in another case is the same room, shown as each person spelled it', async () => {
  const ada = await openAs('Ada', 'Case-Room');
  const bo = await openAs('Bo', 'case-room');
  await members(ada).getByText('Bo', { exact: true }).waitFor(WAIT);
  await members(bo).getByText('Ada', { exact: true }).waitFor(WAIT);
  assert.equal(await ada.locator('h1').textContent(), 'Case-Room');
  assert.equal(new URL(ada.url()).hash, '#Case-Room');
  assert.equal(await bo.locator('h1').textContent(), 'case-room');
  await messageField(bo).fill('same room');
  await messageField(bo).press('Enter');
  await log(ada).getByText('same room', { exact: true }).waitFor(WAIT);
  // Editing the address to another case is not a switch.
  await ada.evaluate(() => { location.hash = '#CASE-ROOM'; });
  await ada.waitForTimeout(500);
  assert.equal(await log(ada).getByText('same room', { exact: true }).count(), 1);
  assert.equal(await log(bo).getByText(/Ada\u2069 (left|joined)/).count(), 0);
  await ada.context().close();
  await bo.context().close();
});

/** Makes `page` look hidden (or shown again) to the app, as a switch of tab does. */
const setHidden = (page, hidden) => page.evaluate((hidden) => {
  Object.defineProperty(document, 'hidden', { value: hidden, configurable: true });
  Object.defineProperty(document, 'visibilityState', { value: hidden ? 'hidden' : 'visible', configurable: true });
  document.dispatchEvent(new Event('visibilitychange', { bubbles: true }));
}, hidden);

test('a message left by a hidden tab is sent once, by the page that took it', async () => {
  const context = await browser.newContext();
  const hidden = await context.newPage();
  let refuse = false;
  let current;
  await hidden.routeWebSocket(/\/ws/, (ws) => {
    if (refuse) return ws.close();
    current = ws;
    ws.connectToServer();
  });
  await hidden.goto(base);
  await hidden.getByLabel('Name').fill('Hal');
  await hidden.getByLabel('Room').fill('handoff-room');
  await hidden.getByRole('button', { name: 'Join' }).click();
  await log(hidden).waitFor(WAIT);
  const obs = await openAs('Obs', 'handoff-room');
  refuse = true;
  current.close();
  await hidden.getByText(/Reconnecting|Connecting/).first().waitFor(WAIT);
  await messageField(hidden).fill('handed over');
  await messageField(hidden).press('Enter');
  await expectTexts(hidden, ['handed over'], 'waiting');
  // Out of sight, its message is saved; a page opened now takes it. That
  // page's send is held back, and so is any copy reaching it, so that the
  // two pages would both send it if the hidden one did at all.
  await setHidden(hidden, true);
  const taker = await context.newPage();
  let release;
  const released = new Promise((resolve) => { release = resolve; });
  await taker.routeWebSocket(/\/ws/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((text) => {
      const frame = JSON.parse(text);
      if (frame.action === 'sendmessage') released.then(() => server.send(text));
      else server.send(text);
    });
    server.onMessage((text) => {
      const frame = JSON.parse(text);
      if (frame.type === 'message') released.then(() => ws.send(text));
      else ws.send(text);
    });
  });
  await taker.goto(`${base}/#handoff-room`);
  await members(taker).getByText('Obs', { exact: true }).waitFor(WAIT);
  await log(taker).getByText('Sending…').waitFor(WAIT);
  // The hidden tab reconnects meanwhile: it does not send it.
  refuse = false;
  await hidden.getByText('Connected').waitFor({ timeout: 30_000 });
  await hidden.waitForTimeout(1500);
  release();
  await expectTexts(obs, ['handed over'], 'sent by the page that took it');
  await setHidden(hidden, false);
  await hidden.waitForTimeout(1000);
  await expectTexts(obs, ['handed over'], 'exactly once');
  await log(hidden).locator('.outgoing').waitFor({ state: 'detached', ...WAIT });
  await log(taker).locator('.outgoing').waitFor({ state: 'detached', ...WAIT });
  await context.close();
  await obs.context().close();
});

test("API Gateway's own error frame, when a function fails, frees a join that would hang", async () => {
  // A Lambda Invoke API whose functions take connections and fail every
  // request, as throttled or crashing functions do: chat-local (in Lambda
  // mode) then answers as API Gateway does, with a frame that has no type.
  const lambda = createServer((request, response) => {
    let body = '';
    request.on('data', (chunk) => { body += chunk; });
    request.on('end', () => {
      const route = JSON.parse(body).requestContext?.routeKey;
      if (route === '$connect' || route === '$disconnect') {
        response.writeHead(200, { 'content-type': 'application/json' });
        return response.end('{"statusCode":200}');
      }
      response.writeHead(200, { 'content-type': 'application/json', 'x-amz-function-error': 'Unhandled' });
      response.end('{"errorMessage":"throttled","errorType":"TooManyRequestsException"}');
    });
  });
  await new Promise((resolve) => lambda.listen(0, '127.0.0.1', resolve));
  const endpoint = `http://127.0.0.1:${lambda.address().port}`;
  try {
    await withOwnServer(async (url) => {
      const context = await browser.newContext();
      const page = await context.newPage();
      const frames = [];
      page.on('websocket', (ws) => ws.on('framereceived', (f) => frames.push(f.payload)));
      await page.goto(url);
      await page.getByLabel('Name').fill('Gia');
      await page.getByLabel('Room').fill('failing-room');
      await page.getByRole('button', { name: 'Join' }).click();
      await page.getByRole('alert').getByText(/could not answer just now/).waitFor(WAIT);
      assert.ok(frames.some((f) => /"message":"Internal server error"/.test(f) && /"requestId"/.test(f)), frames.join('\n'));
      // Back to a usable lobby, not "Joining…" for good.
      const join = page.getByRole('button', { name: 'Join' });
      await join.waitFor(WAIT);
      assert.equal(await join.isEnabled(), true);
      await context.close();
    }, ['--lambda-endpoint', endpoint, '--management-addr', '127.0.0.1:0']);
  } finally {
    lambda.close();
  }
});

test('a message the server failed stays Not sent across a reload until the person decides', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  // The server "fails" this one message: it never sees it, the page gets
  // the internal error the server would send.
  await page.routeWebSocket(/\/ws/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((text) => {
      const frame = JSON.parse(text);
      if (frame.action === 'sendmessage' && frame.data === 'doomed') {
        ws.send(JSON.stringify({ type: 'error', code: 'internal', message: 'The server failed; try again.', action: 'sendmessage', nonce: frame.nonce }));
        return;
      }
      server.send(text);
    });
  });
  await page.goto(base);
  await page.getByLabel('Name').fill('Nia');
  await page.getByLabel('Room').fill('doomed-room');
  await page.getByRole('button', { name: 'Join' }).click();
  await log(page).waitFor(WAIT);
  const obs = await openAs('Obs', 'doomed-room');
  await messageField(page).fill('doomed');
  await messageField(page).press('Enter');
  await log(page).getByText('Not sent').waitFor(WAIT);
  await page.reload();
  await log(page).getByText('Not sent').waitFor(WAIT);
  await page.waitForTimeout(1500);
  assert.equal(await log(obs).getByText('doomed', { exact: true }).count(), 0, 'not sent without the person');
  // Delete drops it, and the error about it.
  await log(page).getByRole('button', { name: 'Delete' }).click();
  await log(page).locator('.outgoing').waitFor({ state: 'detached', ...WAIT });
  assert.equal(await page.getByRole('alert').count(), 0);
  await context.close();
  await obs.context().close();
});

test('a join whose answer never comes gives the lobby back', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  // The first join is swallowed on its way (as a lost answer on AWS would
  // leave it); later ones pass.
  let swallowed = false;
  await page.routeWebSocket(/\/ws/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((text) => {
      if (!swallowed && JSON.parse(text).action === 'join') {
        swallowed = true;
        return;
      }
      server.send(text);
    });
  });
  await page.goto(base);
  await page.getByLabel('Name').fill('Jo');
  await page.getByLabel('Room').fill('lost-join');
  await page.getByRole('button', { name: 'Join' }).click();
  await page.getByRole('button', { name: 'Joining…' }).waitFor(WAIT);
  await page.getByRole('alert').getByText('The server did not answer; try again.').waitFor({ timeout: 25_000 });
  const join = page.getByRole('button', { name: 'Join' });
  assert.equal(await join.isEnabled(), true);
  await join.click();
  await log(page).waitFor(WAIT);
  await context.close();
});

/** A chat-local of its own, with no rate limits, for `run(url)`. */
async function withOwnServer(run, extra = ['--rate-limit', '0']) {
  const data = mkdtempSync(join(tmpdir(), 'chat-own-'));
  const chat = await startServer('127.0.0.1:0', { data, extra });
  try {
    await run(chat.url);
  } finally {
    await stopServer(chat.child);
    rmSync(data, { recursive: true, force: true });
  }
}

test('phone: a crowd fits a small screen: members behind a button, comings and goings folded, none in a big room', () => withOwnServer(async (url) => {
  // A phone with its on-screen keyboard open.
  const phone = { ...DEVICES.phone, viewport: { width: 390, height: 470 } };
  const page = await openAs('Pia', 'crowd', url, phone);
  const crowdContext = await browser.newContext();
  const crowd = await crowdContext.newPage();
  await crowd.goto(`${url}/healthz`);
  const wsUrl = `${url.replace('http', 'ws')}/ws`;
  const arrive = (from, to) => crowd.evaluate(({ wsUrl, from, to }) => {
    window.sockets ??= {};
    return Promise.all(Array.from({ length: to - from + 1 }, (_, i) => new Promise((resolve, reject) => {
      const name = `Guest ${from + i}`;
      const ws = new WebSocket(wsUrl);
      window.sockets[name] = ws;
      ws.onopen = () => ws.send(JSON.stringify({ action: 'join', room: 'crowd', name }));
      ws.onmessage = (event) => { if (JSON.parse(event.data).type === 'joined') resolve(); };
      ws.onerror = reject;
    })));
  }, { wsUrl, from, to });
  const depart = (from, to) => crowd.evaluate(({ from, to }) => {
    for (let i = from; i <= to; i++) window.sockets[`Guest ${i}`].close();
  }, { from, to });

  await arrive(1, 60);
  await depart(1, 30);
  await page.getByRole('button', { name: 'Members 31' }).waitFor(WAIT);
  // 90 comings and goings are one line (the leaves after their grace).
  const folded = log(page).locator('details.notices summary');
  await folded.getByText('60 people joined, 30 left').waitFor({ timeout: 20_000 });
  await postAs('Ola', 'crowd', ['a real message'], url);
  const real = log(page).getByText('a real message', { exact: true });
  await real.waitFor(WAIT);
  const box = await real.boundingBox();
  assert.ok(box.y >= 0 && box.y + box.height <= 470, `the message is on screen: ${JSON.stringify(box)}`);
  await folded.getByText('61 people joined, 30 left').waitFor(WAIT);
  await folded.click();
  assert.equal(await log(page).locator('details.notices li').count(), 91, 'opened, it lists each');

  // The conversation has the screen; the member list is behind its button,
  // and the header says whom one posts as.
  const logBox = await log(page).boundingBox();
  assert.ok(logBox.height >= 250, `the log has ${logBox.height} px`);
  assert.equal(await members(page).isVisible(), false);
  assert.equal(await page.locator('.you').isVisible(), true);
  assert.match(await page.locator('.you').textContent(), /as Pia/);
  await page.getByRole('button', { name: /^Members/ }).click();
  await members(page).getByText('Guest 60', { exact: true }).waitFor(WAIT);
  // The sheet has the focus; Escape closes it and gives the focus back.
  await page.waitForFunction(() => document.activeElement?.textContent === 'Close', null, WAIT);
  await page.keyboard.press('Escape');
  await members(page).waitFor({ state: 'hidden', ...WAIT });
  await page.waitForFunction(() => document.activeElement?.classList.contains('members-toggle'), null, WAIT);
  await page.getByRole('button', { name: /^Members/ }).click();
  await page.getByRole('button', { name: 'Close' }).click();
  await members(page).waitFor({ state: 'hidden', ...WAIT });

  // Past 100 people, the server tells the room its count instead of each
  // arrival (at most once a minute), and the list comes when looked at.
  await arrive(61, 140);
  await page.getByRole('button', { name: /^Members 1\d\d$/ }).waitFor({ timeout: 45_000 });
  await page.getByRole('button', { name: /^Members/ }).click();
  await members(page).getByText('Guest 140', { exact: true }).waitFor(WAIT);
  await page.getByRole('button', { name: 'Members 111' }).waitFor(WAIT);
  await page.getByRole('button', { name: 'Close' }).click();
  // Departures from a big room are not told: the list stays as it was.
  await depart(61, 70);
  await page.waitForTimeout(3000);
  // (The sheet is closed: the list is read from the page, not the
  // accessibility tree.)
  const listed = (name) => page.locator('#members .member-name').filter({ hasText: new RegExp(`^${name}$`) }).count();
  assert.equal(await listed('Guest 65'), 1);
  // Back to 100: the departure is told again, and the list, stale from
  // when the room was big, is asked for by itself.
  await depart(71, 71);
  await page.getByRole('button', { name: 'Members 100' }).waitFor(WAIT);
  await page.waitForFunction(() => !document.querySelector('#members')?.textContent.includes('Guest 65'), null, WAIT);
  await page.getByRole('button', { name: /^Members/ }).click();
  await members(page).getByText('Guest 72', { exact: true }).waitFor(WAIT);
  assert.equal(await members(page).getByText('Guest 71', { exact: true }).count(), 0);
  await page.getByRole('button', { name: 'Close' }).click();
  assert.equal(await log(page).getByText(/Guest 6[1-9]\u2069 left/).count(), 0);
  // Joins were shown while the room had at most 100 before them (Guests 61
  // to 130, in whatever order they came; fewer when joins crossed), none
  // after.
  const joins = await log(page).getByText(/Guest (6[1-9]|[7-9]\d|1[0-3]\d|140)\u2069 joined/).count();
  assert.ok(joins >= 60 && joins <= 70, `${joins} joins shown`);
  await crowdContext.close();
  await page.context().close();
}));

test('the keyboard reads the log: PageUp from the composer, a focusable log, Load older keeps the focus', () => withOwnServer(async (url) => {
  await postAs('Kit', 'keys-room', numbered('k', 1, 300), url);
  const page = await openAs('Kim', 'keys-room', url);
  await log(page).getByText('k300', { exact: true }).waitFor(WAIT);
  await page.waitForFunction(() => document.activeElement?.id === 'message', null, WAIT);
  const bottom = await log(page).evaluate((el) => el.scrollTop);
  await messageField(page).press('PageUp');
  await page.waitForFunction((top) => document.querySelector('.log').scrollTop < top - 100, bottom, WAIT);
  await messageField(page).press('PageDown');
  await page.waitForFunction((top) => document.querySelector('.log').scrollTop >= top - 2, bottom, WAIT);
  // The log itself takes the focus, and keys scroll it.
  await log(page).focus();
  await page.keyboard.press('Home');
  await page.waitForFunction(() => document.querySelector('.log').scrollTop === 0, null, WAIT);

  // From the keyboard, "Load older messages" keeps the focus while it
  // loads and after; the start of the conversation hands it to the log.
  await page.getByRole('button', { name: /older messages/ }).focus();
  await page.keyboard.press('Enter');
  await log(page).getByText('k201', { exact: true }).waitFor({ state: 'attached', ...WAIT });
  const idle = page.getByRole('button', { name: 'Load older messages' });
  await idle.waitFor({ state: 'attached', ...WAIT });
  const focused = () => page.evaluate(() => document.activeElement?.className ?? '');
  assert.match(await focused(), /load-older/);
  const start = page.getByText('The start of the conversation');
  for (let i = 0; i < 20 && await start.count() === 0; i++) {
    if (await idle.count()) {
      assert.match(await focused(), /load-older/);
      await page.keyboard.press('Enter');
    }
    await page.waitForTimeout(250);
  }
  await start.waitFor({ state: 'attached', ...WAIT });
  await page.waitForFunction(() => document.activeElement?.classList.contains('log'), null, WAIT);
  await log(page).getByText('k1', { exact: true }).waitFor({ state: 'attached', ...WAIT });
  await page.context().close();
}));

test('the composer: errors go once the text changes, drafts stay in their room, the newest stays in view as it grows', async () => {
  const page = await openAs('Cal', 'draft-a');
  assert.equal(await page.getByRole('main').count(), 1, 'the room is the main landmark');
  await postAs('Pat', 'draft-a', numbered('d', 1, 9));
  await log(page).getByText('d9', { exact: true }).waitFor(WAIT);
  // A wrong address says so, until the text is edited.
  await page.evaluate(() => { location.hash = '#not a room!'; });
  const alert = page.getByRole('alert');
  await alert.getByText(/is not a room/).waitFor(WAIT);
  await messageField(page).type('half-written reply');
  await alert.waitFor({ state: 'detached', ...WAIT });

  // Six lines in the composer: the newest message stays in view.
  await page.setViewportSize({ width: 1280, height: 420 });
  const gap = () => log(page).evaluate((el) => el.scrollHeight - el.scrollTop - el.clientHeight);
  assert.ok(await gap() < 4, 'at the newest');
  await messageField(page).fill('1\n2\n3\n4\n5\n6');
  await page.waitForTimeout(300);
  assert.ok(await gap() < 4, `still at the newest after growing: ${await gap()}`);
  await messageField(page).fill('half-written reply');

  // Another room starts with an empty composer; back, the draft is there.
  await page.evaluate(() => { location.hash = '#draft-b'; });
  await members(page).getByText('Cal', { exact: true }).waitFor(WAIT);
  await page.waitForFunction(() => location.hash === '#draft-b' && document.querySelector('h1')?.textContent === 'draft-b', null, WAIT);
  assert.equal(await messageField(page).inputValue(), '');
  await messageField(page).fill('for b');
  await page.evaluate(() => { location.hash = '#draft-a'; });
  await page.waitForFunction(() => document.querySelector('h1')?.textContent === 'draft-a', null, WAIT);
  assert.equal(await messageField(page).inputValue(), 'half-written reply');
  // A reload keeps them too.
  await page.reload();
  await page.waitForFunction(() => document.querySelector('h1')?.textContent === 'draft-a', null, WAIT);
  await page.waitForFunction(() => document.getElementById('message')?.value === 'half-written reply', null, WAIT);
  await page.context().close();
});

test('the lobby asks for the name first, and a shared link says where it leads', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(base);
  await page.waitForFunction(() => document.activeElement?.id === 'name', null, WAIT);
  assert.equal(await page.getByLabel('Name').getAttribute('placeholder'), 'Your name');
  const invited = await context.newPage();
  await invited.goto(`${base}/#party`);
  await invited.getByRole('heading', { name: "You're joining #party" }).waitFor(WAIT);
  await invited.waitForFunction(() => document.activeElement?.id === 'name', null, WAIT);
  await invited.getByLabel('Name').fill('Gus');
  await invited.getByRole('button', { name: 'Join' }).click();
  await members(invited).getByText('Gus', { exact: true }).waitFor(WAIT);
  await context.close();
});

test('phone: a lost connection is one plain line, with Retry now', async () => {
  const context = await browser.newContext(DEVICES.phone);
  const page = await context.newPage();
  let refuse = false;
  let attempts = 0;
  let current;
  await page.routeWebSocket(/\/ws/, (ws) => {
    attempts += 1;
    if (refuse) return ws.close();
    current = ws;
    ws.connectToServer();
  });
  await page.goto(base);
  await page.getByLabel('Name').fill('Ray');
  await page.getByLabel('Room').fill('a-rather-long-room-name');
  await page.getByRole('button', { name: 'Join' }).click();
  await log(page).waitFor(WAIT);
  refuse = true;
  current.close();
  const banner = page.locator('.banner');
  await banner.getByText('Reconnecting…').waitFor(WAIT);
  // One line, no address, and the room's name still readable.
  assert.ok((await banner.boundingBox()).height < 50);
  assert.doesNotMatch(await page.locator('body').innerText(), /ws:\/\//);
  const title = await page.locator('h1').evaluate((h) => ({ needs: h.scrollWidth, has: h.clientWidth }));
  assert.ok(title.needs <= title.has, `the room name fits: ${JSON.stringify(title)}`);
  // Retry now tries at once, without waiting for the next attempt.
  await page.waitForFunction(() => true);
  while (attempts < 4) await page.waitForTimeout(50);
  refuse = false;
  const before = attempts;
  await banner.getByRole('button', { name: 'Retry now' }).click();
  await page.waitForTimeout(1000);
  assert.ok(attempts > before, 'it tried again at once');
  await page.getByText('Connected').waitFor(WAIT);
  await banner.waitFor({ state: 'detached', ...WAIT });
  // So does the browser saying that the network is back.
  refuse = true;
  current.close();
  await banner.waitFor(WAIT);
  while (attempts < before + 5) await page.waitForTimeout(50);
  refuse = false;
  const offline = attempts;
  await context.setOffline(true);
  await context.setOffline(false);
  await page.waitForTimeout(1000);
  assert.ok(attempts > offline, 'online again: it tried at once');
  await page.getByText('Connected').waitFor(WAIT);
  await context.close();
});

test('a message held back by the rate limit counts down to its turn', () => withOwnServer(async (url) => {
  const page = await openAs('Tia', 'count-room', url);
  await messageField(page).fill('one');
  await messageField(page).press('Enter');
  const waiting = log(page).getByText(/Sending in \d+ s…/);
  await waiting.waitFor(WAIT);
  const first = Number((await waiting.textContent()).match(/\d+/)[0]);
  assert.ok(first >= 3, `a wait of a few seconds: ${first}`);
  await log(page).getByText(`Sending in ${first - 1} s…`).waitFor(WAIT);
  // Pending rows are outside the live region: only the server's copy is read out.
  assert.equal(await page.getByRole('log').getByText(/Sending/).count(), 0);
  await page.getByRole('log').getByText('one', { exact: true }).waitFor({ timeout: 20_000 });
  await page.context().close();
}, ['--rate-limit', '0.2', '--rate-burst', '1']));

/** axe-core's serious and critical findings on the page as it is. */
async function accessibilityProblems(page) {
  await page.addScriptTag({ path: AXE });
  return page.evaluate(async () => {
    const { violations } = await window.axe.run(document, { resultTypes: ['violations'] });
    return violations
      .filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => `${v.id}: ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`);
  });
}

test('no serious accessibility problems in either theme, lobby or room', async () => {
  for (const colorScheme of ['light', 'dark']) {
    // axe-core is injected as an inline script, which the page's policy
    // rightly refuses: this test alone lets the browser bypass it.
    const context = await browser.newContext({ colorScheme, bypassCSP: true });
    const page = await context.newPage();
    await page.goto(base);
    await page.getByRole('button', { name: 'Join' }).waitFor(WAIT);
    await page.getByLabel('Name').focus();
    assert.deepEqual(await accessibilityProblems(page), [], `lobby, ${colorScheme}`);
    await page.getByLabel('Name').fill('Axe');
    await page.getByLabel('Room', { exact: true }).fill(`axe-${colorScheme}`);
    await page.getByRole('button', { name: 'Join' }).click();
    await log(page).waitFor(WAIT);
    await messageField(page).fill('hello https://example.com');
    await messageField(page).press('Enter');
    await log(page).getByText('hello', { exact: false }).waitFor(WAIT);
    assert.deepEqual(await accessibilityProblems(page), [], `room, ${colorScheme}`);
    await context.close();
  }
});
