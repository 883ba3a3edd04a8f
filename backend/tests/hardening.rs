//! What a public server must withstand, tried through real sockets against
//! a running chat-local: headers decided by what a response is, paths that
//! are not files, handshakes RFC 6455 refuses, a Management API no browser
//! may reach, clients behind a trusted proxy, messages never finished, and
//! a crowd of slow readers that must not crowd anyone else out.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A response read whole from a connection the server closes after it.
struct Response {
    status: u16,
    head: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    fn is_page_guarded(&self) -> bool {
        self.header("content-security-policy")
            .is_some_and(|csp| csp.contains("frame-ancestors 'none'"))
            && self.header("x-frame-options") == Some("DENY")
    }
}

/// Sends `head` (CRLF line ends added) and reads the response head.
async fn raw(addr: SocketAddr, head: &str) -> Response {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("{}\r\n\r\n", head.replace('\n', "\r\n"));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(read) => response.extend_from_slice(&chunk[..read]),
            }
            if response.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Response { status, head }
}

fn get(path: &str, addr: SocketAddr) -> String {
    format!("GET {path} HTTP/1.1\nHost: {addr}\nConnection: close")
}

const UPGRADE: &str = "Connection: Upgrade\nUpgrade: websocket\nSec-WebSocket-Version: 13";
const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";

fn dist_with_app() -> tempfile::TempDir {
    let dist = tempfile::tempdir().unwrap();
    std::fs::write(dist.path().join("index.html"), "<!doctype html><p>app").unwrap();
    std::fs::write(dist.path().join("app.js"), "console.log(1)").unwrap();
    dist
}

#[tokio::test]
async fn every_page_is_guarded_whatever_path_reached_it_and_non_files_are_404() {
    let data = tempfile::tempdir().unwrap();
    let dist = dist_with_app();
    let server = Server::start_with(Options {
        data_dir: data.path(),
        dist: Some(dist.path()),
        dynamodb_endpoint: None,
        extra: &[],
    });
    let addr = server.addr;

    for path in ["/", "/index.html", "/index%2ehtml", "/index%2Ehtml"] {
        let page = raw(addr, &get(path, addr)).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(page.is_page_guarded(), "{path}: {}", page.head);
        assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    }
    // A revalidated page says the same: its headers replace the cached ones.
    let page = raw(addr, &get("/", addr)).await;
    let modified = page
        .header("last-modified")
        .expect("Last-Modified")
        .to_owned();
    let again = raw(
        addr,
        &format!(
            "{}\nIf-Modified-Since: {modified}",
            get("/index.html", addr)
        ),
    )
    .await;
    assert_eq!(again.status, 304, "{}", again.head);
    assert!(again.is_page_guarded(), "{}", again.head);

    for path in [
        "/index.html/",
        "//index.html",
        "/./index.html",
        "/%2e/index.html",
        "/x/../index.html",
        "/x/%2e%2e/index.html",
        "/..%2f..%2fetc%2fpasswd",
        "/app.js/",
    ] {
        assert_eq!(raw(addr, &get(path, addr)).await.status, 404, "{path}");
    }
    let script = raw(addr, &get("/app.js", addr)).await;
    assert_eq!(script.status, 200);
    assert_eq!(script.header("x-content-type-options"), Some("nosniff"));

    // Every response has nosniff: the health check, a refused handshake.
    let health = raw(addr, &get("/healthz", addr)).await;
    assert_eq!(
        (health.status, health.header("x-content-type-options")),
        (200, Some("nosniff"))
    );
    let refused = raw(addr, &get("/ws", addr)).await;
    assert_eq!(refused.status, 426);
    assert_eq!(refused.header("x-content-type-options"), Some("nosniff"));
}

#[tokio::test]
async fn handshakes_rfc_6455_refuses_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let addr = server.addr;
    let ws = |method: &str, extra: &str| {
        format!("{method} /ws HTTP/1.1\nHost: {addr}\nOrigin: http://{addr}\n{UPGRADE}\n{extra}")
    };
    // A good one first, so the refusals below are for what they change.
    assert_eq!(raw(addr, &ws("GET", KEY)).await.status, 101);
    let head = raw(addr, &ws("HEAD", KEY)).await;
    assert_eq!((head.status, head.header("allow")), (405, Some("GET")));
    let twice = format!("{KEY}\nSec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==");
    assert_eq!(raw(addr, &ws("GET", &twice)).await.status, 400);
    let no_host = format!("GET /ws HTTP/1.1\n{UPGRADE}\n{KEY}");
    assert_eq!(raw(addr, &no_host).await.status, 400);
    // Headers beyond 16 KB are not read at all.
    let huge = format!("{KEY}\nX-Padding: {}", "a".repeat(40_000));
    assert_eq!(raw(addr, &ws("GET", &huge)).await.status, 431);
}

#[tokio::test]
async fn the_management_api_answers_programs_on_this_machine_only() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let management = server.management;
    let path = "/@connections/nobody";
    let plain = raw(management, &get(path, management)).await;
    assert_eq!(plain.status, 410, "{}", plain.head);
    assert_eq!(plain.header("x-content-type-options"), Some("nosniff"));
    let from_page = raw(
        management,
        &format!("{}\nOrigin: http://evil.example", get(path, management)),
    )
    .await;
    assert_eq!(from_page.status, 403);
    let by_name = format!("GET {path} HTTP/1.1\nHost: evil.example:8090\nConnection: close");
    assert_eq!(raw(management, &by_name).await.status, 403);
    let by_localhost = format!(
        "GET {path} HTTP/1.1\nHost: localhost:{}\nConnection: close",
        management.port()
    );
    assert_eq!(raw(management, &by_localhost).await.status, 410);
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_a_trusted_proxy() {
    let data = tempfile::tempdir().unwrap();
    let connect = |server: &Server, forwarded_for: &'static str| {
        let url = server.ws_url("");
        async move {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut request = url.into_client_request().unwrap();
            request
                .headers_mut()
                .insert("x-forwarded-for", forwarded_for.parse().unwrap());
            match tokio_tungstenite::connect_async(request).await {
                Ok((socket, _)) => Ok(socket),
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    Err(response.status().as_u16())
                }
                Err(other) => panic!("{other}"),
            }
        }
    };
    // Behind a proxy: one socket per client address, told apart by the
    // proxy's X-Forwarded-For.
    let behind = Server::start_with(Options {
        data_dir: data.path(),
        dist: None,
        dynamodb_endpoint: None,
        extra: &[
            "--trusted-proxy",
            "127.0.0.0/8",
            "--max-connections-per-ip",
            "1",
        ],
    });
    let _first = connect(&behind, "198.51.100.1")
        .await
        .expect("first client");
    assert_eq!(connect(&behind, "198.51.100.1").await.err(), Some(429));
    let _other = connect(&behind, "203.0.113.5, 198.51.100.2")
        .await
        .expect("second client");
    drop(behind);

    // Not behind a trusted proxy: the header is anyone's to write, ignored.
    let data = tempfile::tempdir().unwrap();
    let direct = Server::start_with(Options {
        data_dir: data.path(),
        dist: None,
        dynamodb_endpoint: None,
        extra: &["--max-connections-per-ip", "1"],
    });
    let _first = connect(&direct, "198.51.100.1").await.expect("first");
    assert_eq!(
        connect(&direct, "198.51.100.2").await.err(),
        Some(429),
        "one address"
    );
}

/// A raw WebSocket client: the handshake, then whatever bytes a test writes.
async fn raw_websocket(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\n{}\r\n{KEY}\r\n\r\n",
        UPGRADE.replace('\n', "\r\n")
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
    }
    let mask = [1, 2, 3, 4];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads until the server's close frame: its code, and how long it took.
async fn close_code_within(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: Duration,
) -> Option<(u16, Duration)> {
    let started = Instant::now();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    while started.elapsed() < limit {
        let read = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut chunk)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(read)) => bytes.extend_from_slice(&chunk[..read]),
            Err(_) => continue,
        }
        // Server frames are unmasked; walk them to a close frame.
        let mut at = 0;
        while at + 2 <= bytes.len() {
            let (opcode, len) = (bytes[at] & 0x0F, usize::from(bytes[at + 1] & 0x7F));
            let (header, len) = match len {
                126 if at + 4 <= bytes.len() => (
                    4,
                    usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]])),
                ),
                126 => break,
                len => (2, len),
            };
            if at + header + len > bytes.len() {
                break;
            }
            if opcode == 0x8 {
                let code = u16::from_be_bytes([bytes[at + header], bytes[at + header + 1]]);
                return Some((code, started.elapsed()));
            }
            at += header + len;
        }
    }
    None
}

#[tokio::test]
async fn a_message_never_finished_is_let_go_however_the_client_keeps_busy() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with(Options {
        data_dir: data.path(),
        dist: None,
        dynamodb_endpoint: None,
        extra: &[
            "--message-deadline",
            "2s",
            "--ping-interval",
            "1s",
            "--idle-timeout",
            "3s",
        ],
    });
    // The first fragment of a message, then pings (whole frames, signs of
    // life) every 300 ms: the message's deadline ends it, with 1008.
    let (mut read, mut write) = raw_websocket(server.addr).await.into_split();
    write
        .write_all(&frame(false, 0x1, b"{\"action\":"))
        .await
        .unwrap();
    let pinging = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if write.write_all(&frame(true, 0x9, b"")).await.is_err() {
                break;
            }
        }
    });
    let (code, after) = close_code_within(&mut read, Duration::from_secs(10))
        .await
        .expect("closed by the server");
    assert_eq!(code, 1008);
    assert!(after >= Duration::from_secs(2), "{after:?}");
    pinging.abort();

    // One frame's bytes dripped one at a time are no sign of life either:
    // the idle timeout ends it.
    let (mut read, mut write) = raw_websocket(server.addr).await.into_split();
    let whole = frame(true, 0x1, &[b'a'; 200]);
    let dripping = tokio::spawn(async move {
        for byte in whole {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(&[byte]).await.is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let ended = close_code_within(&mut read, Duration::from_secs(12)).await;
    // Closed (1006 is never sent: a timed-out socket is just hung up).
    assert!(
        ended.is_none() || ended.is_some_and(|(code, _)| code == 1008),
        "{ended:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "let go within the idle timeout"
    );
    dripping.abort();
}

/// Reads `/proc/net/sockstat`-free: the server's TCP connections to
/// `port` from loopback peers, by its descriptors (sockets only).
fn sockets_of(server: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

#[tokio::test]
async fn slow_readers_of_the_app_crowd_out_nobody_and_are_let_go() {
    let data = tempfile::tempdir().unwrap();
    let dist = dist_with_app();
    // An app the size of the real one's wasm, so no response fits a
    // socket's buffers at once.
    std::fs::write(dist.path().join("app.wasm"), vec![7u8; 2 * 1024 * 1024]).unwrap();
    let server = Server::start_with(Options {
        data_dir: data.path(),
        dist: Some(dist.path()),
        dynamodb_endpoint: None,
        extra: &["--http-stall-timeout", "3s"],
    });
    let addr = server.addr;
    let rss_before = server.rss_kb();
    let sockets_before = sockets_of(&server);

    // 1 000 connections from 20 addresses (127.0.0.2 to .21), each asking
    // for the app twenty times and never reading a byte.
    let request = get("/app.wasm", addr).replace("Connection: close", "Connection: keep-alive");
    let pipelined = format!("{}\r\n\r\n", request.replace('\n', "\r\n")).repeat(20);
    let mut attackers = Vec::new();
    for i in 0..1000u32 {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::from(([127, 0, 0, 2 + (i % 20) as u8], 0)))
            .unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        let _ = stream.write_all(pipelined.as_bytes()).await;
        attackers.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_during = server.rss_kb();
    let held = sockets_of(&server);

    // The service goes on for everyone else.
    let health = raw(addr, &get("/healthz", addr)).await;
    assert_eq!(health.status, 200, "{}", health.head);
    let (mut ada, joined) = server.join("during-the-attack", "Ada").await;
    assert_eq!(joined["room"], "during-the-attack");
    send(
        &mut ada,
        json!({"action": "sendmessage", "data": "still here"}),
    )
    .await;
    assert_eq!(expect(&mut ada, "message").await["data"], "still here");

    eprintln!(
        "slow readers: {held} sockets held (from {sockets_before}), RSS {} → {} MB",
        rss_before / 1024,
        rss_during / 1024
    );
    assert!(
        held > sockets_before + 500,
        "the attack was real: {held} sockets"
    );
    assert!(
        rss_during.saturating_sub(rss_before) <= 128 * 1024,
        "grew by {} MB",
        (rss_during - rss_before) / 1024
    );

    // Silent for the stall timeout: let go, all of them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sockets_of(&server) > sockets_before + 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let left = sockets_of(&server);
    assert!(
        left <= sockets_before + 5,
        "{left} sockets still held (from {sockets_before})"
    );
    drop(attackers);
    expect_alive(&mut ada).await;
}

/// A restart's reconnect storm waits in the listen queue rather than having
/// its SYNs dropped (and retried a second later): the queue is as deep as
/// the kernel allows, up to 4 096 (tokio's default is 1 024).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_listen_queue_is_deep_enough_for_a_reconnect_storm() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    // For a listening socket, `ss` reports the backlog as its Send-Q.
    let listing = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", server.addr.port())])
        .output()
        .expect("ss (Debian: apt-get install iproute2) reads listen queues");
    let listing = String::from_utf8_lossy(&listing.stdout);
    let backlog: u32 = listing
        .split_whitespace()
        .nth(2)
        .and_then(|column| column.parse().ok())
        .unwrap_or_else(|| panic!("no listening socket in {listing:?}"));
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(backlog, somaxconn.min(4096), "{listing}");
}

/// Over the HTTP cap, a client that has already sent its request still
/// reads the 503: the server closes gently (its FIN after the answer, the
/// request read and dropped), never with a reset that can destroy the
/// answer in flight.
#[tokio::test]
async fn a_refusal_over_the_http_cap_reaches_a_client_that_already_sent_its_request() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with(Options {
        data_dir: data.path(),
        dist: None,
        dynamodb_endpoint: None,
        extra: &["--max-http-connections", "1"],
    });
    let addr = server.addr;
    // The one slot, held by a connection that says nothing: held once a
    // probe is refused.
    let _holder = TcpStream::connect(addr).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while raw(addr, &get("/healthz", addr)).await.status != 503 {
        assert!(Instant::now() < deadline, "the holder never got the slot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..3 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // A request with a body the server never reads: unread input at
        // close is what makes the kernel send a reset.
        let body = "x".repeat(32 * 1024);
        let request = format!(
            "POST /healthz HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(request.as_bytes()).await;
        let mut response = Vec::new();
        let ended = tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
            .await
            .expect("the refused connection is closed");
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 503 "), "{text:?} ({ended:?})");
        assert!(ended.is_ok(), "closed with a reset: {ended:?}");
    }
}
