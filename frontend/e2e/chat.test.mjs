// Two people chat through the web app in real Chromium, against a real
// chat-local serving the built front end.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BIN = process.env.CHAT_LOCAL_BIN ?? 'target/debug/chat-local';
const DIST = process.env.CHAT_DIST ?? 'dist';
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const WAIT = { timeout: 15_000 };

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

async function openAs(name, room, url = base) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('pageerror', (error) => console.error(`[${name}] page error:`, error));
  await page.goto(url);
  await page.getByLabel('Name').fill(name);
  await page.getByLabel('Room').fill(room);
  await page.getByRole('button', { name: 'Join' }).click();
  await page.getByRole('log').waitFor(WAIT);
  return page;
}

const members = (page) => page.getByRole('list', { name: 'Members' });
const log = (page) => page.getByRole('log');
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
  await ada.getByText(/Offline|Connecting/).first().waitFor(WAIT);
  const restarted = await startServer(addr);
  server = restarted.child;
  await ada.getByText('Connected').waitFor({ timeout: 30_000 });
  await second.getByText('Connected').waitFor({ timeout: 30_000 });

  // Both tabs rejoined on their own.
  await messageField(ada).fill('after the restart');
  await messageField(ada).press('Enter');
  await log(second).getByText('after the restart', { exact: true }).waitFor(WAIT);
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

test('a message over the rate limit is refused and stays in the composer', async () => {
  const data = mkdtempSync(join(tmpdir(), 'chat-rate-'));
  const limited = await startServer('127.0.0.1:0', { data, extra: ['--rate-limit', '0.2', '--rate-burst', '3'] });
  try {
    const eve = await openAs('Eve', 'rate-room', limited.url);
    for (const text of ['one', 'two', 'three']) {
      await messageField(eve).fill(text);
      await messageField(eve).press('Enter');
    }
    await log(eve).getByText('two', { exact: true }).waitFor(WAIT);
    await eve.getByRole('alert').getByText(/too fast/).waitFor(WAIT);
    // The refused message is back in the field, ready to send again; it never
    // reached the room.
    assert.equal(await messageField(eve).inputValue(), 'three');
    assert.equal(await log(eve).getByText('three', { exact: true }).count(), 0);
    await eve.context().close();
  } finally {
    await stopServer(limited.child);
    rmSync(data, { recursive: true, force: true });
  }
});

test('under API Gateway\'s rules idle tabs stay connected and forced reconnects are quiet', async () => {
  // No server pings, a 3 s idle timeout, connections cut after 12 s; the app
  // told to send a heartbeat after 1 s without sending.
  const site = mkdtempSync(join(tmpdir(), 'chat-gw-site-'));
  const data = mkdtempSync(join(tmpdir(), 'chat-gw-data-'));
  cpSync(DIST, site, { recursive: true });
  writeFileSync(join(site, 'config.json'), JSON.stringify({ heartbeatSeconds: 1 }));
  const gw = await startServer('127.0.0.1:0', {
    dist: site,
    data,
    extra: ['--ping-interval', '0', '--idle-timeout', '3s', '--max-connection-duration', '12s'],
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
