// Starts the web app. A file rather than Trunk's inline script, so the
// page's Content-Security-Policy can forbid inline scripts altogether. Trunk
// puts the hashed glue and wasm in the head as preloads; they are found there.
const loading = document.getElementById('loading');

function fail(text) {
  if (!loading) return;
  loading.querySelector('p').textContent = text;
  loading.classList.add('failed');
}

if (typeof WebAssembly !== 'object') {
  fail('This chat needs WebAssembly, which this browser does not offer or allow. A current browser with WebAssembly enabled will work.');
} else {
  const glue = document.querySelector('link[rel="modulepreload"]');
  const wasm = document.querySelector('link[rel="preload"][type="application/wasm"]');
  if (!glue || !wasm) {
    fail('The chat could not start: this page is missing its scripts. Rebuild it with trunk build.');
  } else {
    import(glue.href)
      .then((app) => app.default({ module_or_path: wasm.href }))
      .catch((error) => {
        console.error('the chat could not start:', error);
        // Browsers from before 'wasm-unsafe-eval' (Safari 15, Chrome 96)
        // refuse to compile WebAssembly under the page's security policy.
        fail(error instanceof WebAssembly.CompileError
          ? 'This browser is too old to run the chat safely: Chrome or Edge 97, Firefox 102 or Safari 16 and later can.'
          : 'The chat could not start. Reload the page to try again.');
      });
  }
}
