// Trunk's post_build hook (see Trunk.toml): finishes the app in Trunk's
// staging folder before it becomes dist/.
//
// - Release builds: every script minified with terser (Trunk's own minifier
//   cannot parse wasm-bindgen's glue), renamed by a hash of what it now
//   holds (hashed names are cached for a year: a name must never stand for
//   other bytes), and index.html updated to match, integrity included.
// - Every build: a brotli and a gzip copy beside each file worth
//   compressing, which chat-local serves to browsers that accept them
//   (CloudFront compresses on its own, and the deploy leaves the copies out).
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { brotliCompressSync, constants, gzipSync } from 'node:zlib';
import { minify } from 'terser';

const dir = process.env.TRUNK_STAGING_DIR;
if (!dir) throw new Error('run by Trunk as a post_build hook: TRUNK_STAGING_DIR is not set');
const release = process.env.TRUNK_PROFILE === 'release';
const integrity = (bytes) => `sha384-${createHash('sha384').update(bytes).digest('base64')}`;

if (release) {
  const indexPath = join(dir, 'index.html');
  let index = readFileSync(indexPath, 'utf8');
  const replaceOnce = (text, from, to) => {
    const parts = text.split(from);
    if (parts.length !== 2) throw new Error(`expected ${from} once in index.html, found it ${parts.length - 1} times`);
    return parts.join(to);
  };
  for (const file of readdirSync(dir).filter((name) => /-[0-9a-f]{16}\.js$/.test(name))) {
    const source = readFileSync(join(dir, file), 'utf8');
    const { code } = await minify(source, { module: true, compress: { passes: 2 }, mangle: true });
    const hash = createHash('sha256').update(code).digest('hex').slice(0, 16);
    const renamed = file.replace(/-[0-9a-f]{16}\.js$/, `-${hash}.js`);
    writeFileSync(join(dir, renamed), code);
    if (renamed !== file) rmSync(join(dir, file));
    index = replaceOnce(index, `/${file}"`, `/${renamed}"`);
    index = replaceOnce(index, integrity(source), integrity(code));
  }
  writeFileSync(indexPath, index);
}

for (const file of readdirSync(dir).filter((name) => /\.(html|js|css|wasm|json|svg)$/.test(name))) {
  const bytes = readFileSync(join(dir, file));
  writeFileSync(join(dir, `${file}.br`), brotliCompressSync(bytes, {
    params: {
      [constants.BROTLI_PARAM_QUALITY]: release ? constants.BROTLI_MAX_QUALITY : 5,
      [constants.BROTLI_PARAM_SIZE_HINT]: bytes.length,
    },
  }));
  writeFileSync(join(dir, `${file}.gz`), gzipSync(bytes, { level: release ? 9 : 6 }));
}
