//! The built web app (Trunk's `dist/`), served as a CDN would serve it:
//! compressed copies made at build time (brotli, gzip) chosen by
//! `Accept-Encoding`, hashed files cached for a year, `index.html` and
//! `config.json` revalidated every time, and pages under a strict
//! Content-Security-Policy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, VARY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::services::ServeDir;

const IMMUTABLE: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");
const REVALIDATE: HeaderValue = HeaderValue::from_static("no-cache");

/// Serves `dist`. Paths that are not files are 404: the app routes by the
/// URL fragment, so no path needs `index.html` in its place, and a missing
/// `config.json` must not arrive as HTML.
pub fn router(dist: &Path) -> Router {
    let dist = Arc::new(dist.to_owned());
    Router::new()
        .fallback_service(
            ServeDir::new(&*dist)
                .precompressed_br()
                .precompressed_gzip()
                // What one slow reader can make the server hold at once.
                .with_buf_chunk_size(8 * 1024),
        )
        .layer(middleware::from_fn_with_state(Arc::clone(&dist), caching))
        .layer(middleware::from_fn_with_state(dist, only_files))
}

/// The security headers every response gets, decided by what the response
/// is, whatever path or route produced it: `nosniff` and no referrer on
/// all; on every page (`text/html`, and any 304, whose headers replace a
/// cached page's) the Content-Security-Policy and the refusal to be framed.
/// The state is the `dist` whose `config.json` names the WebSocket server
/// the policy allows (`None` for a listener that serves no pages).
pub async fn security_headers(
    State(dist): State<Arc<Option<PathBuf>>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    let is_page = response.status() == StatusCode::NOT_MODIFIED
        || response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| {
                value
                    .split(';')
                    .next()
                    .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("text/html"))
            });
    let headers = response.headers_mut();
    if is_page {
        let origin = dist.as_deref().and_then(websocket_origin);
        let policy = content_security_policy(origin.as_deref());
        let policy =
            HeaderValue::from_str(&policy).expect("the policy is built from checked parts");
        headers.insert(CONTENT_SECURITY_POLICY, policy);
        headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// The policy of the app's page. Scripts come only from this origin
/// (`'wasm-unsafe-eval'` lets them compile the app's WebAssembly, nothing
/// else); no inline script or style, no plugins, no framing; the app may
/// connect only to this origin and to the WebSocket server `config.json`
/// names (read with each page, as the app reads it).
pub fn content_security_policy(websocket_origin: Option<&str>) -> String {
    let connect = match websocket_origin {
        Some(origin) => format!("'self' {origin}"),
        None => "'self'".to_owned(),
    };
    format!(
        "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; \
         img-src 'self'; connect-src {connect}; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

/// The origin (`wss://host:port`) of `websocketUrl` in `dist/config.json`.
/// Anything that is not a plain ws(s) origin is left
/// out of the policy, so the app cannot connect to it, rather than trusted.
fn websocket_origin(dist: &Path) -> Option<String> {
    let config = std::fs::read(dist.join("config.json")).ok()?;
    let config: serde_json::Value = match serde_json::from_slice(&config) {
        Ok(config) => config,
        Err(error) => {
            tracing::warn!(%error, "dist/config.json is not JSON");
            return None;
        }
    };
    let url = config.get("websocketUrl")?.as_str()?;
    let origin = origin_of(url);
    if origin.is_none() {
        tracing::warn!(
            url,
            "websocketUrl in dist/config.json is not a ws:// or wss:// URL"
        );
    }
    origin
}

/// The origin a browser's `new WebSocket(url)` connects to, as a policy
/// source: the scheme read as browsers read it (any case; `http(s)` means
/// `ws(s)`), the host only if it is plainly a host.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        _ => return None,
    };
    let host = rest.split(['/', '?', '#']).next()?.to_ascii_lowercase();
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    (!host.is_empty() && host.chars().all(plain)).then(|| format!("{scheme}://{host}"))
}

/// Trunk names every built file but `index.html` by its content
/// (`frontend-0123456789abcdef_bg.wasm`): such a name never changes meaning.
fn is_hashed(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or_default();
    name.rsplit_once('-').is_some_and(|(_, tail)| {
        let hash = tail.as_bytes();
        hash.len() > 16
            && hash[..16].iter().all(u8::is_ascii_hexdigit)
            && matches!(hash[16], b'.' | b'_')
    })
}

/// Hashed files are cached for a year; everything else is revalidated.
async fn caching(request: Request, next: Next) -> Response {
    let hashed = is_hashed(request.uri().path());
    let mut response = next.run(request).await;
    // A 304's headers replace the cached ones, so it says the same.
    let found = response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED;
    let cache = if hashed && found {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, cache);
    headers.insert(VARY, HeaderValue::from_static("accept-encoding"));
    response
}

/// Only files of `dist` are served: a path with an empty, `.` or `..`
/// segment (written plainly or percent-encoded), a trailing slash after a
/// name, or one that leads out of `dist` through a symlink is 404, before
/// the file server could read it some other way.
async fn only_files(State(dist): State<Arc<PathBuf>>, request: Request, next: Next) -> Response {
    if !is_file_path(&dist, request.uri().path()) {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    next.run(request).await
}

fn is_file_path(dist: &Path, path: &str) -> bool {
    // `/` is served as `index.html`, and checked as that.
    let path = if path == "/" { "/index.html" } else { path };
    let Some(relative) = path.strip_prefix('/') else {
        return false;
    };
    let Ok(decoded) = percent_decode(relative) else {
        return false;
    };
    let segments_ok = decoded
        .split('/')
        .all(|segment| !matches!(segment, "" | "." | "..") && !segment.contains('\\'));
    if !segments_ok {
        return false;
    }
    // The file and the precompressed copies the server may send instead:
    // each, if it exists, must resolve to a place inside `dist`.
    // Resolved on every request rather than once: `trunk build` replaces
    // the folder while chat-local runs, and a page load is a handful of
    // requests, not a hot path.
    let Ok(root) = dist.canonicalize() else {
        return false;
    };
    let file = dist.join(&decoded);
    ["", ".br", ".gz"].iter().all(|suffix| {
        let mut candidate = file.clone().into_os_string();
        candidate.push(suffix);
        match Path::new(&candidate).canonicalize() {
            Ok(real) => real.starts_with(&root),
            Err(_) => true,
        }
    })
}

/// `%XX` escapes decoded; an escape that is not one, or bytes that are not
/// UTF-8, make the path unservable.
fn percent_decode(path: &str) -> Result<String, ()> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(())?;
            let hex = std::str::from_utf8(hex).map_err(|_| ())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_to_files_inside_dist_are_served() {
        let dist = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(dist.path().join("index.html"), "<p>").unwrap();
        std::fs::write(outside.path().join("secret"), "key").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dist.path().join("leak"))
            .unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret"),
            dist.path().join("index.html.gz"),
        )
        .unwrap();
        let ok = |path| is_file_path(dist.path(), path);
        assert!(ok("/missing.js"), "a 404 from the file server");
        assert!(!ok("/index.html"), "its gzip copy leads outside");
        assert!(!ok("/"), "the same file");
        std::fs::remove_file(dist.path().join("index.html.gz")).unwrap();
        assert!(ok("/index.html"));
        assert!(ok("/"));
        assert!(ok("/index%2ehtml"), "the same file, and a page by its type");
        assert!(!ok("/index.html/"));
        assert!(!ok("//index.html"));
        assert!(!ok("/./index.html"));
        assert!(!ok("/%2e/index.html"));
        assert!(!ok("/a/%2E%2E/index.html"));
        assert!(!ok("/..%2findex.html"));
        assert!(!ok("/leak"));
        assert!(!ok("/%zz"));
        assert!(!ok("/%ff"));
    }

    #[test]
    fn hashed_names_are_trunks() {
        assert!(is_hashed("/frontend-4191baae0e571478_bg.wasm"));
        assert!(is_hashed("/style-f283980121565eb8.css"));
        assert!(is_hashed("/boot-9970746978f1ef71.js.br"));
        assert!(!is_hashed("/"));
        assert!(!is_hashed("/index.html"));
        assert!(!is_hashed("/config.json"));
        assert!(!is_hashed("/my-file.js"));
        assert!(!is_hashed("/x-0123456789abcdeg.js"));
    }

    #[test]
    fn the_site_on_aws_has_the_same_policy() {
        let template = include_str!("../../../template.yaml");
        let policy = content_security_policy(Some(
            "wss://${ChatApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}",
        ));
        assert!(
            template.contains(&format!("ContentSecurityPolicy: !Sub \"{policy}\"")),
            "template.yaml's SiteHeaders policy differs from chat-local's:\n{policy}"
        );
    }

    #[test]
    fn only_plain_websocket_origins_enter_the_policy() {
        assert_eq!(
            origin_of("wss://abc.execute-api.eu-west-1.amazonaws.com/prod").as_deref(),
            Some("wss://abc.execute-api.eu-west-1.amazonaws.com")
        );
        assert_eq!(
            origin_of("ws://127.0.0.1:9000/ws").as_deref(),
            Some("ws://127.0.0.1:9000")
        );
        assert_eq!(
            origin_of("WSS://Chat.Example.com/ws").as_deref(),
            Some("wss://chat.example.com")
        );
        assert_eq!(
            origin_of("https://example.com/ws").as_deref(),
            Some("wss://example.com")
        );
        assert_eq!(origin_of("ftp://example.com/ws"), None);
        assert_eq!(origin_of("wss://evil.com; script-src *"), None);
        assert_eq!(origin_of("wss:///path"), None);
        assert!(
            content_security_policy(Some("wss://a.b")).contains("connect-src 'self' wss://a.b;")
        );
    }
}
