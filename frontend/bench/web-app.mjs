// The web app's size and start-up, as BENCHMARKS.md records them.
//
//   source .ci/env && trunk build --release
//   cargo build --release -p backend --bin chat-local
//   node frontend/bench/web-app.mjs            # RUNS=20 by default
//
// Sizes: each script and the wasm in dist/, raw, gzip -9 and the brotli copy
// chat-local serves. Start-up: fresh browser contexts (nothing cached) load
// the page from a local chat-local in headless Chromium; "shown" is when the
// lobby has replaced the loading note, "connected" when its Join button is
// enabled (the WebSocket is open). Both from the start of navigation.
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { chromium } from 'playwright-core';

const BIN = process.env.CHAT_LOCAL_BIN ?? 'target/release/chat-local';
const DIST = process.env.CHAT_DIST ?? 'dist';
const RUNS = Number(process.env.RUNS ?? 20);

const files = readdirSync(DIST).filter((name) => /\.(wasm|js)$/.test(name));
let totals = { raw: 0, gzip: 0, brotli: 0 };
for (const name of files) {
  const bytes = readFileSync(join(DIST, name));
  const sizes = {
    raw: bytes.length,
    gzip: gzipSync(bytes, { level: 9 }).length,
    brotli: statSync(join(DIST, `${name}.br`), { throwIfNoEntry: false })?.size ?? NaN,
  };
  for (const key of Object.keys(totals)) totals[key] += sizes[key];
  console.log(`${name.padEnd(40)} raw ${sizes.raw}  gzip ${sizes.gzip}  br ${sizes.brotli}`);
}
console.log(`${'wasm + JS'.padEnd(40)} raw ${totals.raw}  gzip ${totals.gzip}  br ${totals.brotli}`);

const data = mkdtempSync(join(tmpdir(), 'chat-web-bench-'));
const server = spawn(BIN, ['--addr', '127.0.0.1:0', '--management-addr', '127.0.0.1:0',
  '--data-dir', data, '--dist', DIST], { stdio: ['ignore', 'pipe', 'inherit'] });
const url = await new Promise((resolve, reject) => {
  let output = '';
  server.stdout.on('data', (chunk) => {
    output += chunk;
    const found = output.match(/ready on (http:\/\/\S+)/);
    if (found) resolve(found[1]);
  });
  server.on('exit', (code) => reject(new Error(`chat-local exited (${code}): ${output}`)));
});
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const shown = [];
const connected = [];
let transferred = 0;
try {
  for (let run = 0; run < RUNS; run += 1) {
    const context = await browser.newContext();
    await context.addInitScript(() => {
      new MutationObserver((_, observer) => {
        const join = document.querySelector('.lobby button[type="submit"]');
        if (join && !document.getElementById('loading')) {
          window.benchShown ??= performance.now();
          if (!join.disabled) {
            window.benchConnected = performance.now();
            observer.disconnect();
          }
        }
      }).observe(document, { childList: true, subtree: true, attributes: true });
    });
    const page = await context.newPage();
    await page.goto(url);
    await page.waitForFunction(() => window.benchConnected, null, { timeout: 30_000 });
    const timing = await page.evaluate(() => ({
      shown: window.benchShown,
      connected: window.benchConnected,
      bytes: performance.getEntriesByType('resource')
        .filter((entry) => /\.(wasm|js)$/.test(entry.name))
        .reduce((sum, entry) => sum + entry.transferSize, 0),
    }));
    shown.push(timing.shown);
    connected.push(timing.connected);
    transferred = timing.bytes;
    await context.close();
  }
} finally {
  await browser.close();
  server.kill('SIGINT');
  rmSync(data, { recursive: true, force: true });
}
const quantile = (values, q) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))].toFixed(0);
};
console.log(`scripts and wasm over the wire (brotli, with headers): ${transferred} B`);
console.log(`${RUNS} cold loads: shown median ${quantile(shown, 0.5)} ms, p90 ${quantile(shown, 0.9)} ms;`
  + ` connected median ${quantile(connected, 0.5)} ms, p90 ${quantile(connected, 0.9)} ms`);
