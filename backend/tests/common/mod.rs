//! Test harness: a real chat-local process, real WebSocket clients, and a
//! DynamoDB engine (dynoxide) the tests can also reach directly.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const WAIT: Duration = Duration::from_secs(10);

/// The second DynamoDB engine the tests run on, when `CHAT_TEST_MOTO` names
/// one (`scripts/test` starts moto's server mode, from PyPI, and runs the
/// store, handler, cost and socket suites on it too): an implementation
/// independent of dynoxide's, so that what the code relies on is DynamoDB's
/// behaviour and not one engine's.
pub fn moto_endpoint() -> Option<String> {
    std::env::var("CHAT_TEST_MOTO")
        .ok()
        .filter(|endpoint| !endpoint.is_empty())
}

/// Table names no other test on a shared engine uses: `{prefix}-connections`
/// and `{prefix}-messages`.
pub fn unique_table_prefix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("t{}-{n}", std::process::id())
}

/// A DynamoDB engine for one test: dynoxide served on a loopback port by
/// this test process, on a runtime of its own (it keeps answering while the
/// test blocks, waiting for a chat-local it talks to, say), or tables of
/// the test's own on the shared moto server ([`moto_endpoint`]).
pub struct Dynamo {
    pub endpoint: String,
    pub client: aws_sdk_dynamodb::Client,
    tables: Option<String>,
    _server: Option<StoppableDynamo>,
}

impl Dynamo {
    pub async fn start() -> Self {
        if let Some(endpoint) = moto_endpoint() {
            return Self {
                client: backend::local::dynamodb::local_client(&endpoint),
                endpoint,
                tables: Some(unique_table_prefix()),
                _server: None,
            };
        }
        let server = StoppableDynamo::start();
        let client = backend::local::dynamodb::local_client(&server.endpoint);
        Self {
            endpoint: server.endpoint.clone(),
            client,
            tables: None,
            _server: Some(server),
        }
    }

    /// The store's defaults, with this engine's table names.
    pub fn store_config(&self) -> backend::store::dynamodb::StoreConfig {
        let defaults = backend::store::dynamodb::StoreConfig::default();
        match &self.tables {
            Some(prefix) => backend::store::dynamodb::StoreConfig {
                connections_table: format!("{prefix}-connections"),
                messages_table: format!("{prefix}-messages"),
                ..defaults
            },
            None => defaults,
        }
    }
}

/// A DynamoDB engine that can be stopped and started again on the same
/// port with the same data, like a DynamoDB endpoint that goes down and
/// comes back.
pub struct StoppableDynamo {
    pub endpoint: String,
    addr: SocketAddr,
    database: dynoxide::Database,
    running: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl StoppableDynamo {
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut dynamo = Self {
            endpoint: format!("http://{addr}"),
            addr,
            database: dynoxide::Database::memory().unwrap(),
            running: None,
        };
        dynamo.serve(listener);
        dynamo
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let database = self.database.clone();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serving = dynoxide::server::serve_on(listener, database);
                let stop = tokio::task::spawn_blocking(move || stopped.recv());
                tokio::select! {
                    () = serving => {}
                    _ = stop => {}
                }
            });
            // Dropping the runtime drops every connection it was serving.
            runtime.shutdown_background();
        });
        self.running = Some((stop, thread));
    }

    /// Down: the port refuses connections, open ones are cut.
    pub fn stop(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            let _ = stop.send(());
            thread.join().unwrap();
        }
    }

    /// Back, on the same port, with the same tables and items.
    pub fn restart(&mut self) {
        let listener = std::net::TcpListener::bind(self.addr).unwrap();
        self.serve(listener);
    }
}

/// A running chat-local, killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// The Management API's own listener.
    pub management: SocketAddr,
}

pub struct Options<'a> {
    pub data_dir: &'a Path,
    pub dist: Option<&'a Path>,
    pub dynamodb_endpoint: Option<&'a str>,
    pub extra: &'a [&'a str],
}

impl Server {
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(Options {
            data_dir,
            dist: None,
            dynamodb_endpoint: None,
            extra: &[],
        })
    }

    pub fn start_with(options: Options) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chat-local"));
        command
            .args(["--addr", "127.0.0.1:0", "--data-dir"])
            .arg(options.data_dir)
            .arg("--dist")
            .arg(options.dist.unwrap_or(options.data_dir))
            .args(options.extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // Tests send faster than people type; the rate limit's own test sets it.
        if !options.extra.contains(&"--rate-limit") {
            command.args(["--rate-limit", "0"]);
        }
        // A test of the embedded engine itself keeps it.
        let embedded = options.extra.contains(&"--dynamodb-listen");
        match (
            options.dynamodb_endpoint,
            moto_endpoint().filter(|_| !embedded),
        ) {
            (Some(endpoint), _) => {
                command.args(["--dynamodb-endpoint", endpoint]);
            }
            // Tables of this server's own on the shared moto server, the
            // same across a restart (named after the data directory).
            (None, Some(moto)) => {
                use std::hash::{Hash, Hasher};
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                options.data_dir.hash(&mut hasher);
                let prefix = format!("s{:x}", hasher.finish());
                command
                    .args(["--dynamodb-endpoint", &moto])
                    .args(["--connections-table", &format!("{prefix}-connections")])
                    .args(["--messages-table", &format!("{prefix}-messages")]);
            }
            (None, None) => {}
        }
        // The socket suite runs once per store (`scripts/test` sets this).
        if !options.extra.contains(&"--store")
            && let Ok(store) = std::env::var("CHAT_TEST_STORE")
        {
            command.args(["--store", &store]);
        }
        let mut child = command.spawn().expect("chat-local starts");
        let stdout = child.stdout.take().unwrap();
        let (ready, address) = mpsc::channel();
        std::thread::spawn(move || {
            let mut ready = Some(ready);
            let mut management = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[chat-local] {line}");
                let after = |marker: &str| {
                    line.find(marker)
                        .map(|at| line[at + marker.len()..].trim().to_owned())
                };
                if let Some(addr) = after("management API on http://") {
                    management = Some(addr);
                }
                if let Some(addr) = after("ready on http://")
                    && let Some(ready) = ready.take()
                {
                    let _ = ready.send((addr, management.clone()));
                }
            }
        });
        let (addr, management) = address
            .recv_timeout(Duration::from_secs(60))
            .expect("chat-local reports its address");
        Self {
            child,
            addr: addr.parse().unwrap(),
            management: management
                .expect("chat-local reports the management API's address")
                .parse()
                .unwrap(),
        }
    }

    /// The server process's id, to read its memory and descriptors.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server process, in KB.
    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc")
    }

    /// Open file descriptors of the server process.
    pub fn open_descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A URL on the Management API's listener.
    pub fn management_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.management)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws{query}", self.addr)
    }

    pub async fn connect(&self) -> Socket {
        self.connect_with("").await
    }

    pub async fn connect_with(&self, query: &str) -> Socket {
        let (socket, _) = connect_async(self.ws_url(query))
            .await
            .expect("WebSocket connects");
        socket
    }

    /// A client that joined `room` as `name` and read its `joined` frame.
    pub async fn join(&self, room: &str, name: &str) -> (Socket, Value) {
        let mut socket = self.connect().await;
        send(
            &mut socket,
            json!({"action": "join", "room": room, "name": name}),
        )
        .await;
        let joined = expect(&mut socket, "joined").await;
        (socket, joined)
    }

    /// Stops the server as Ctrl-C would, and waits for it to exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Sends `signal` (`TERM`, `INT`) and waits up to `limit` for the
    /// process to exit: how long it took, or `None` if it is still running
    /// (it is then killed).
    pub fn signal_and_wait(mut self, signal: &str, limit: Duration) -> Option<Duration> {
        let started = std::time::Instant::now();
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status();
        while started.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the server with SIGKILL: no shutdown code runs.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn send(socket: &mut Socket, frame: Value) {
    send_text(socket, &frame.to_string()).await;
}

pub async fn send_text(socket: &mut Socket, text: &str) {
    socket
        .send(Message::text(text.to_owned()))
        .await
        .expect("frame sent");
}

/// The next text frame, as JSON (control frames are skipped).
pub async fn next_frame(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a frame arrives in time")
            .expect("the socket is open")
            .expect("the socket reads");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("frames are JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message: {other:?}"),
        }
    }
}

/// The next frame, which must be of `kind`.
pub async fn expect(socket: &mut Socket, kind: &str) -> Value {
    let frame = next_frame(socket).await;
    assert_eq!(frame["type"], kind, "expected a {kind} frame, got {frame}");
    frame
}

pub async fn expect_error(socket: &mut Socket, code: &str) -> Value {
    let frame = expect(socket, "error").await;
    assert_eq!(frame["code"], code, "wrong error: {frame}");
    assert!(frame["message"].as_str().is_some_and(|m| !m.is_empty()));
    frame
}

/// Proves the socket still works: a ping is answered with a pong.
pub async fn expect_alive(socket: &mut Socket) {
    send(socket, json!({"action": "ping"})).await;
    expect(socket, "pong").await;
}

/// Proves nothing arrives: a ping round trip is the only thing received.
/// Everything sent before the ping has been handled by then, since one
/// connection's frames are handled in order.
pub async fn expect_nothing_more(socket: &mut Socket) {
    send(socket, json!({"action": "ping"})).await;
    let frame = next_frame(socket).await;
    assert_eq!(frame["type"], "pong", "unexpected frame: {frame}");
}

pub async fn say(socket: &mut Socket, data: &str) {
    send(socket, json!({"action": "sendmessage", "data": data})).await;
}

/// A minimal HTTP/1.1 request over a real socket: (status, body).
pub async fn http_request(method: &str, url: &str, body: Option<&[u8]>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut stream = TcpStream::connect(host).await.expect("server reachable");
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text[9..12].parse().expect("a status code");
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// AWS SDK settings for local endpoints: fixed credentials and region.
pub fn local_sdk_config() -> aws_config::SdkConfig {
    use aws_config::{BehaviorVersion, Region};
    use aws_sdk_dynamodb::config::{Credentials, SharedCredentialsProvider};
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "test", "test", None, None, "tests",
        )))
        .build()
}

/// The connection ids in `room`, read from the store as fan-out reads them.
pub async fn connection_ids(dynamo: &Dynamo, room: &str) -> Vec<String> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let page = dynamo
        .client
        .query()
        .table_name("chat-connections")
        .index_name("room-index")
        .key_condition_expression("room = :room")
        .expression_attribute_values(":room", AttributeValue::S(room.into()))
        .send()
        .await
        .unwrap();
    page.items()
        .iter()
        .map(|item| item["connectionId"].as_s().unwrap().clone())
        .collect()
}

/// A free loopback port (released before use: fine for one test's peers).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
