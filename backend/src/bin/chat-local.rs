//! chat-local: the whole chat on one machine, no AWS account needed.
//!
//! It plays API Gateway (WebSocket endpoint at `/ws`, Management API at
//! `/@connections/{id}`), runs the very same handlers the Lambda functions
//! run, keeps its data in an embedded DynamoDB-compatible engine, and serves
//! the built front end.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use axum::{Router, middleware};
use backend::chat::{Chat, ChatConfig, OriginPolicy};
use backend::local::client_address::{ForwardedHeader, Network, TrustedProxies};
use backend::local::dynamodb::{EmbeddedDynamo, external_client, local_client};
use backend::local::gateway::{Gateway, GatewayConfig, Integration};
use backend::local::http::{self, HttpLimits};
use backend::local::lambda::{LambdaInvoker, LambdaRoutes};
use backend::local::{management, web_app};
use backend::pusher::local::LocalPusher;
use backend::store::dynamodb::{DynamoStore, StoreConfig};
use backend::store::local::LocalStore;
use backend::store::{Limits, RateLimit};
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Under chat load a tenth of the CPU went to glibc's malloc and free (many
/// small, short-lived allocations across threads); mimalloc does that work
/// in a fraction of the time (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Chat rooms on one machine: API Gateway, the handlers and DynamoDB in one process"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "CHAT_ADDR")]
    addr: SocketAddr,
    /// Where the API Gateway Management API (`/@connections/{id}`) listens:
    /// whoever can reach it can push to any socket, so loopback by default.
    /// Unset, it is 127.0.0.1:8090, or a free port if that one is taken.
    #[arg(long, env = "CHAT_MANAGEMENT_ADDR")]
    management_addr: Option<SocketAddr>,
    /// Where the embedded store keeps its data (message history survives restarts).
    #[arg(long, default_value = ".chat-data", env = "CHAT_DATA_DIR")]
    data_dir: PathBuf,
    /// The built front end (`trunk build --release`).
    #[arg(long, default_value = "dist", env = "CHAT_DIST")]
    dist: PathBuf,
    /// Use this DynamoDB instead of the embedded one (DynamoDB Local, or the
    /// real service with credentials from the usual AWS sources).
    #[arg(long, env = "DYNAMO_ENDPOINT")]
    dynamodb_endpoint: Option<String>,
    #[arg(long, default_value = "chat-connections")]
    connections_table: String,
    #[arg(long, default_value = "chat-messages")]
    messages_table: String,
    /// How often idle sockets are pinged; `0` never pings, as API Gateway
    /// does not, so only what clients send keeps a socket alive.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ping_interval: Duration,
    /// How long a socket may stay silent before it counts as dead.
    #[arg(long, default_value = "75s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// How long part of a WebSocket message may wait for the rest; a client
    /// that never finishes one is disconnected (1008), not left holding a
    /// buffer.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    message_deadline: Duration,
    /// How long an HTTP connection (not a WebSocket) may go without moving
    /// a byte: a response nobody reads, a request that never arrives, an
    /// idle keep-alive.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    http_stall_timeout: Duration,
    /// Longest a connection may last (API Gateway's limit is 2 hours).
    #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
    max_connection_duration: Duration,
    /// Where the embedded DynamoDB listens (a fixed port lets Lambda
    /// functions run by `cargo lambda watch` reach it).
    #[arg(long, default_value = "127.0.0.1:0")]
    dynamodb_listen: SocketAddr,
    /// Invoke Lambda functions through this Lambda Invoke API (`cargo lambda
    /// watch -A 127.0.0.1` serves one on port 9000) instead of running the
    /// handlers in process.
    #[arg(long, env = "LAMBDA_ENDPOINT")]
    lambda_endpoint: Option<String>,
    /// The SAM template that says which function serves which route.
    #[arg(long, default_value = "template.yaml")]
    template: PathBuf,
    /// Where connections and rooms are kept: `memory` (this process holds
    /// the sockets, so it holds their records too; history still goes to
    /// DynamoDB) or `dynamodb` (every record in DynamoDB, exactly as on AWS).
    #[arg(long, value_enum, default_value_t = StoreKind::Memory, env = "CHAT_STORE")]
    store: StoreKind,
    /// A web page origin allowed to connect besides chat-local's own pages
    /// and `trunk serve`'s (e.g. `https://chat.example.com`; `*` allows any).
    /// Repeat it, or give a comma-separated list.
    #[arg(
        long = "allowed-origin",
        value_name = "ORIGIN",
        env = "CHAT_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    allowed_origins: Vec<String>,
    /// Open WebSockets at most; handshakes beyond it get 503. Unset, 20 000
    /// or what the open file limit leaves room for, if less; set higher than
    /// that room, it is lowered with a warning.
    #[arg(long, value_name = "N", env = "CHAT_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Open WebSockets per client address at most; handshakes beyond it get
    /// 429, so that a few addresses cannot fill the server. `0` for no cap
    /// (load tests run thousands of clients from one address). Behind a
    /// reverse proxy, name it with `--trusted-proxy`, or every client has
    /// the proxy's address.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1024,
        env = "CHAT_MAX_CONNECTIONS_PER_IP"
    )]
    max_connections_per_ip: u32,
    /// HTTP connections that are not WebSockets (page loads, handshakes
    /// under way) open at once at most; more are answered 503.
    /// Unset, 4 096, or a quarter of the open file limit if that is less.
    #[arg(long, value_name = "N", env = "CHAT_MAX_HTTP_CONNECTIONS")]
    max_http_connections: Option<usize>,
    /// The same per client address; `0` for no per-address cap. A browser
    /// keeps up to six to one server (idle ones too, for a while), so 256
    /// lets a classroom share an address (behind NAT) while one client
    /// cannot hold all of them.
    #[arg(
        long,
        value_name = "N",
        default_value_t = HttpLimits::default().max_connections_per_ip.unwrap_or(0),
        env = "CHAT_MAX_HTTP_CONNECTIONS_PER_IP"
    )]
    max_http_connections_per_ip: usize,
    /// A reverse proxy in front of chat-local (an address or CIDR block,
    /// repeatable): for connections from it, the client's address is taken
    /// from `X-Forwarded-For` or `Forwarded`. Without it those headers are
    /// ignored, since any client can write them.
    #[arg(
        long = "trusted-proxy",
        value_name = "CIDR",
        env = "CHAT_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<Network>,
    /// The header the trusted proxies append the client's address to; the
    /// other is ignored (a proxy passes it through as the client wrote it).
    #[arg(long, value_enum, default_value_t = ForwardedHeader::XForwardedFor,
          env = "CHAT_FORWARDED_HEADER")]
    forwarded_header: ForwardedHeader,
    /// What one connection may do per second, on average: messages, joins,
    /// leaves, history pages. `0` turns every rate limit off, the
    /// per-address and handshake ones too (benchmarks and load tests run
    /// thousands of clients from one address).
    #[arg(long, value_name = "PER_SECOND", default_value_t = RateLimit::DEFAULT.0, env = "CHAT_RATE_LIMIT")]
    rate_limit: f64,
    /// What one connection may do at once before the rate applies.
    #[arg(long, value_name = "N", default_value_t = RateLimit::DEFAULT.1, env = "CHAT_RATE_BURST")]
    rate_burst: u32,
    /// What one client address may do per second, all its connections
    /// together (a person's reconnects, or a classroom behind one NAT).
    #[arg(long, value_name = "PER_SECOND", default_value_t = Limits::DEFAULT_CLIENT.0, env = "CHAT_CLIENT_RATE_LIMIT")]
    client_rate_limit: f64,
    #[arg(long, value_name = "N", default_value_t = Limits::DEFAULT_CLIENT.1, env = "CHAT_CLIENT_RATE_BURST")]
    client_rate_burst: u32,
    /// WebSocket handshakes one client address may make per second; a
    /// bucket of its own, so a reload is never refused for having chatted.
    #[arg(long, value_name = "PER_SECOND", default_value_t = Limits::DEFAULT_HANDSHAKES.0, env = "CHAT_HANDSHAKE_RATE_LIMIT")]
    handshake_rate_limit: f64,
    #[arg(long, value_name = "N", default_value_t = Limits::DEFAULT_HANDSHAKES.1, env = "CHAT_HANDSHAKE_RATE_BURST")]
    handshake_rate_burst: u32,
}

impl Args {
    /// The rate limits asked for; `--rate-limit 0` turns them all off.
    fn limits(&self) -> anyhow::Result<Limits> {
        let limit = |name: &str, per_second, burst| {
            RateLimit::new(per_second, burst).map_err(|error| anyhow::anyhow!("{name}: {error}"))
        };
        let Some(connection) = limit(
            "--rate-limit/--rate-burst",
            self.rate_limit,
            self.rate_burst,
        )?
        else {
            return Ok(Limits::OFF);
        };
        Ok(Limits {
            connection: Some(connection),
            client: limit(
                "--client-rate-limit/--client-rate-burst",
                self.client_rate_limit,
                self.client_rate_burst,
            )?,
            handshakes: limit(
                "--handshake-rate-limit/--handshake-rate-burst",
                self.handshake_rate_limit,
                self.handshake_rate_burst,
            )?,
        })
    }
}

/// Where `trunk serve` (Trunk.toml) serves the app while it is being worked on.
const TRUNK_SERVE_ORIGINS: [&str; 2] = ["http://127.0.0.1:8081", "http://localhost:8081"];

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum StoreKind {
    Memory,
    Dynamodb,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,dynoxide=warn")),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let args = Args::parse();
    if !args.ping_interval.is_zero() && args.ping_interval >= args.idle_timeout {
        anyhow::bail!(
            "--ping-interval ({:?}) must be below --idle-timeout ({:?}), or quiet clients are dropped unpinged (0 turns pings off)",
            args.ping_interval,
            args.idle_timeout
        );
    }
    let descriptors = raise_open_file_limit();
    let (max_connections, max_http_connections) =
        fit_descriptors(args.max_connections, args.max_http_connections, descriptors)?;
    let origins = OriginPolicy::only(
        TRUNK_SERVE_ORIGINS
            .iter()
            .copied()
            .chain(args.allowed_origins.iter().map(String::as_str)),
    )
    .map_err(|error| anyhow::anyhow!("--allowed-origin: {error}"))?;
    // Reachable only from this machine, a page counts as chat-local's own
    // only by IP or `localhost` (DNS rebinding); reachable from others, by
    // any name it is addressed by.
    let origins = if args.addr.ip().is_loopback() {
        origins.or_same_host()
    } else {
        origins.or_same_host_by_any_name()
    };
    let chat_config = ChatConfig {
        origins,
        limits: args.limits()?,
        ..ChatConfig::default()
    };

    // The store: the embedded engine unless told otherwise.
    let (client, embedded) = match &args.dynamodb_endpoint {
        Some(endpoint) => (external_client(endpoint).await, None),
        None => {
            let embedded = EmbeddedDynamo::start(&args.data_dir, args.dynamodb_listen).await?;
            (local_client(&embedded.endpoint), Some(embedded))
        }
    };
    let dynamo = DynamoStore::new(
        client,
        StoreConfig {
            connections_table: args.connections_table,
            messages_table: args.messages_table.clone(),
            // A record must outlive the longest connection, or a live socket
            // would lose it (with `--store dynamodb`).
            connection_ttl: args
                .max_connection_duration
                .saturating_add(Duration::from_secs(3600)),
            gateway: Some(gateway_id(&args.data_dir)?),
            ..StoreConfig::default()
        },
    );
    let in_memory = args.store == StoreKind::Memory && args.lambda_endpoint.is_none();
    if in_memory {
        dynamo
            .ensure_messages_table()
            .await
            .context("cannot create the messages table")?;
    } else {
        dynamo
            .ensure_tables()
            .await
            .context("cannot create the tables")?;
        // This gateway's records of a previous run name sockets that are
        // gone; nobody else's are touched.
        let stale = dynamo
            .remove_stale_connections(embedded.is_some())
            .await
            .context("cannot remove the connection records of a previous run")?;
        if stale > 0 {
            tracing::info!(stale, "removed connection records of a previous run");
        }
    }

    let gateway_config = GatewayConfig {
        ping_interval: args.ping_interval,
        idle_timeout: args.idle_timeout,
        max_connection_duration: args.max_connection_duration,
        max_connections,
        max_connections_per_ip: (args.max_connections_per_ip > 0)
            .then_some(args.max_connections_per_ip),
        message_deadline: args.message_deadline,
        trusted_proxies: Arc::new(TrustedProxies::new(
            args.trusted_proxies.clone(),
            args.forwarded_header,
        )),
        ..GatewayConfig::default()
    };
    let sockets = LocalPusher::default();
    let listen = Listen {
        addr: args.addr,
        management_addr: args.management_addr,
        // Lambda functions are told the Management API's address in
        // advance: it must be where it was said to be.
        management_fixed: args.lambda_endpoint.is_some(),
        dist: args.dist.clone(),
        http: HttpLimits {
            max_connections: max_http_connections,
            max_connections_per_ip: (args.max_http_connections_per_ip > 0)
                .then_some(args.max_http_connections_per_ip),
            stall_timeout: args.http_stall_timeout,
            ..HttpLimits::default()
        },
    };
    match &args.lambda_endpoint {
        // The real Lambda binaries, invoked as API Gateway would.
        Some(endpoint) => {
            tracing::info!(
                "with --lambda-endpoint the functions' ALLOWED_ORIGINS, RATE_LIMIT and RATE_BURST apply, not --allowed-origin, --rate-limit or --rate-burst"
            );
            let routes = LambdaRoutes::from_template_file(&args.template)?;
            tracing::info!(endpoint, template = %args.template.display(), "routing events to Lambda functions");
            let gateway_config = GatewayConfig {
                routes: routes.action_routes(),
                ..gateway_config
            };
            let invoker = LambdaInvoker::new(endpoint, routes);
            serve(Gateway::new(invoker, sockets, gateway_config), &listen).await?;
        }
        // The handlers in this process, pushing straight into its sockets.
        // History written by the embedded engine in process when there is
        // one, else in BatchWriteItem requests.
        None if in_memory => {
            let store = match &embedded {
                Some(engine) => {
                    let writer = engine.history_writer(&args.messages_table);
                    LocalStore::new(dynamo, writer)
                }
                None => LocalStore::new(dynamo.clone(), dynamo),
            };
            let chat = Chat::new(store, sockets.clone(), chat_config);
            serve(Gateway::new(chat, sockets, gateway_config), &listen).await?;
        }
        None => {
            let chat = Chat::new(dynamo, sockets.clone(), chat_config);
            serve(Gateway::new(chat, sockets, gateway_config), &listen).await?;
        }
    }

    if let Some(embedded) = embedded {
        embedded.shutdown().await;
    }
    Ok(())
}

/// This chat-local's name in the connection records it writes (with
/// `--store dynamodb`), kept in its data directory so that its next start
/// finds the records this run leaves behind.
fn gateway_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("gateway-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_owned());
        }
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let id = backend::ids::unguessable_id(16);
    std::fs::write(&path, &id).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// Where chat-local listens, and what it serves besides the gateway.
struct Listen {
    addr: SocketAddr,
    management_addr: Option<SocketAddr>,
    /// No free port instead of the default one.
    management_fixed: bool,
    dist: PathBuf,
    http: HttpLimits,
}

/// The default Management API address, when nobody asked for another.
const MANAGEMENT_ADDR: &str = "127.0.0.1:8090";

/// Serves API Gateway's two faces (the WebSocket endpoint and, on a listener
/// of its own, the Management API), a health check and the web app until
/// Ctrl-C, then closes every socket.
async fn serve<I: Integration>(gateway: Gateway<I>, listen: &Listen) -> anyhow::Result<()> {
    let (addr, dist) = (&listen.addr, listen.dist.as_path());
    let gateway = Arc::new(gateway);
    let management = match listen.management_addr {
        Some(addr) => http::listen(addr)
            .with_context(|| format!("cannot listen on {addr} (--management-addr)"))?,
        None => match http::listen(MANAGEMENT_ADDR.parse()?) {
            Ok(listener) => listener,
            Err(error) if listen.management_fixed => {
                anyhow::bail!(
                    "cannot listen on {MANAGEMENT_ADDR} for the management API ({error}): the functions' MANAGEMENT_API_ENDPOINT must name it; free the port or pass --management-addr"
                )
            }
            Err(error) => {
                tracing::warn!(%error, "{MANAGEMENT_ADDR} is taken; the management API gets a free port");
                http::listen("127.0.0.1:0".parse()?)?
            }
        },
    };
    let management_addr = management.local_addr()?;
    if !management_addr.ip().is_loopback() {
        tracing::warn!(%management_addr, "the management API is reachable from other machines: anyone who reaches it can push to every socket");
    }
    if !dist.join("index.html").is_file() {
        tracing::warn!(dist = %dist.display(), "no built front end here; run `trunk build --release`");
    }
    let app = Router::new()
        .route("/ws", get(Gateway::upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .fallback_service(web_app::router(dist))
        .with_state(Arc::clone(&gateway))
        .layer(middleware::from_fn_with_state(
            Arc::new(Some(dist.to_owned())),
            web_app::security_headers,
        ));

    let listener = http::listen(*addr).with_context(|| format!("cannot listen on {addr}"))?;
    let stopping = CancellationToken::new();
    let management_limits = HttpLimits {
        max_connections: 256,
        max_connections_per_ip: None,
        ..HttpLimits::default()
    };
    let management_connections = tokio::spawn(http::serve(
        management,
        management::router(Arc::clone(&gateway)),
        management_limits,
        Arc::default(),
        stopping.clone(),
    ));
    tracing::info!("management API on http://{management_addr}");
    tracing::info!("chat-local ready on http://{}", listener.local_addr()?);
    tokio::spawn(Arc::clone(&gateway).keep_alive());

    tokio::spawn({
        let stopping = stopping.clone();
        async move {
            shutdown_signal().await;
            stopping.cancel();
        }
    });
    // Until Ctrl-C or SIGTERM.
    let connections = http::serve(
        listener,
        app,
        listen.http.clone(),
        Arc::clone(&gateway.config().trusted_proxies),
        stopping.clone(),
    )
    .await
    .context("the public listener failed")?;

    tracing::info!("shutting down");
    let grace = Duration::from_secs(5);
    gateway.shut_down(grace).await;
    let management_connections = management_connections
        .await?
        .context("the management listener failed")?;
    let finished = async {
        connections.wait().await;
        management_connections.wait().await;
    };
    if tokio::time::timeout(grace, finished).await.is_err() {
        tracing::warn!("some HTTP requests did not finish in time");
    }
    Ok(())
}

/// Every socket is a file descriptor: take the hard limit, not the (often
/// 1024) soft one. Returns the limit in effect, if known.
fn raise_open_file_limit() -> Option<u64> {
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                ..limit
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            } else {
                // macOS refuses an unlimited soft limit; its per-process
                // ceiling (OPEN_MAX) is 10 240.
                let bounded = libc::rlimit {
                    rlim_cur: limit.rlim_max.min(10_240),
                    ..limit
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &bounded) == 0 {
                    limit = bounded;
                }
            }
        }
        Some(limit.rlim_cur as u64)
    }
}

/// Descriptors kept for what is not a client's: the store (its files and
/// connections), the management API, logs, the runtime, and refused
/// connections closing gently on both listeners.
const DESCRIPTOR_HEADROOM: u64 = 256 + 2 * http::MAX_LINGERING as u64;

/// WebSockets at most unless told otherwise.
const DEFAULT_MAX_CONNECTIONS: usize = 20_000;

/// `--max-connections` and `--max-http-connections` fitted to the
/// descriptor limit, with room for the server itself: past it, accept
/// fails and nobody new gets in (not even `/healthz`) until someone leaves.
/// What was not set is sized quietly; what was set and does not fit is
/// lowered with a warning. Only a limit too small for anything is an error.
fn fit_descriptors(
    asked: Option<usize>,
    asked_http: Option<usize>,
    limit: Option<u64>,
) -> anyhow::Result<(usize, usize)> {
    let default_http = HttpLimits::default().max_connections;
    let Some(limit) = limit else {
        return Ok((
            asked.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            asked_http.unwrap_or(default_http),
        ));
    };
    let room = limit.saturating_sub(DESCRIPTOR_HEADROOM);
    if room < 64 {
        anyhow::bail!(
            "the open file limit ({limit}) leaves no room for clients after {DESCRIPTOR_HEADROOM} descriptors for the server itself; raise it (ulimit -n)"
        );
    }
    // HTTP connections get at most a quarter, unless asked for more.
    let quarter = (room / 4) as usize;
    let http = match asked_http {
        Some(http) if http as u64 <= room / 2 => http,
        Some(http) => {
            tracing::warn!(
                asked = http,
                lowered_to = room / 2,
                open_file_limit = limit,
                "--max-http-connections lowered to fit the open file limit (ulimit -n)"
            );
            (room / 2) as usize
        }
        None => default_http.min(quarter),
    };
    let available = room - http as u64;
    let websockets = match asked {
        Some(asked) if asked as u64 > available => {
            tracing::warn!(
                asked,
                lowered_to = available,
                open_file_limit = limit,
                max_http_connections = http,
                "--max-connections lowered to fit the open file limit (ulimit -n); raise the limit to allow more"
            );
            available as usize
        }
        Some(asked) => asked,
        None => {
            let fitted = DEFAULT_MAX_CONNECTIONS.min(available as usize);
            if fitted < DEFAULT_MAX_CONNECTIONS {
                tracing::info!(
                    max_connections = fitted,
                    open_file_limit = limit,
                    "WebSockets capped by the open file limit (ulimit -n)"
                );
            }
            fitted
        }
    };
    Ok((websockets, http))
}

/// Ctrl-C, or SIGTERM from a service manager.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_the_descriptor_limit() {
        // Plenty of descriptors: as asked, or the defaults.
        assert_eq!(
            fit_descriptors(Some(1000), Some(50), Some(1 << 20)).unwrap(),
            (1000, 50)
        );
        assert_eq!(
            fit_descriptors(None, None, Some(1 << 20)).unwrap(),
            (20_000, 4096)
        );
        // 20 000 descriptors: room for HTTP and the server itself first.
        assert_eq!(
            fit_descriptors(None, None, Some(20_000)).unwrap(),
            (15_584, 4096)
        );
        assert_eq!(
            fit_descriptors(Some(50_000), None, Some(20_000)).unwrap(),
            (15_584, 4096)
        );
        // A small limit (1024, macOS's 256) still starts, sized to it.
        assert_eq!(fit_descriptors(None, None, Some(1024)).unwrap(), (528, 176));
        assert_eq!(fit_descriptors(None, None, Some(512)).unwrap(), (144, 48));
        assert!(fit_descriptors(None, None, Some(256)).is_err());
        assert_eq!(fit_descriptors(Some(10), Some(20), None).unwrap(), (10, 20));
    }
}
