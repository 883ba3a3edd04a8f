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
use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::routing::get;
use backend::chat::{Chat, ChatConfig, OriginPolicy};
use backend::local::dynamodb::{EmbeddedDynamo, external_client, local_client};
use backend::local::gateway::{Gateway, GatewayConfig, Integration};
use backend::local::lambda::{LambdaInvoker, LambdaRoutes};
use backend::local::{management, web_app};
use backend::pusher::local::LocalPusher;
use backend::store::RateLimit;
use backend::store::dynamodb::{DynamoStore, StoreConfig};
use backend::store::local::LocalStore;
use clap::Parser;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
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
    /// Open WebSockets at most; handshakes beyond it get 503.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 20_000,
        env = "CHAT_MAX_CONNECTIONS"
    )]
    max_connections: usize,
    /// Open WebSockets per client address at most; handshakes beyond it get
    /// 429. Off by default: behind a reverse proxy every client has the
    /// proxy's address.
    #[arg(long, value_name = "N", env = "CHAT_MAX_CONNECTIONS_PER_IP",
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections_per_ip: Option<u32>,
    /// Messages per second one connection may send, on average; `0` turns
    /// the limit off (benchmarks and load tests do).
    #[arg(long, value_name = "PER_SECOND", default_value_t = RateLimit::DEFAULT.0, env = "CHAT_RATE_LIMIT")]
    rate_limit: f64,
    /// Messages one connection may send at once before the rate applies.
    #[arg(long, value_name = "N", default_value_t = RateLimit::DEFAULT.1, env = "CHAT_RATE_BURST")]
    rate_burst: u32,
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
    raise_open_file_limit();
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
        rate_limit: RateLimit::new(args.rate_limit, args.rate_burst)
            .map_err(|error| anyhow::anyhow!("--rate-limit/--rate-burst: {error}"))?,
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
            ..StoreConfig::default()
        },
    );
    // Connection records name sockets of this process only: those of a
    // previous run are stale.
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
        dynamo
            .reset_connections()
            .await
            .context("cannot clear the connections of a previous run")?;
    }

    let gateway_config = GatewayConfig {
        ping_interval: args.ping_interval,
        idle_timeout: args.idle_timeout,
        max_connection_duration: args.max_connection_duration,
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
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

/// Where chat-local listens, and what it serves besides the gateway.
struct Listen {
    addr: SocketAddr,
    management_addr: Option<SocketAddr>,
    /// No free port instead of the default one.
    management_fixed: bool,
    dist: PathBuf,
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
        Some(addr) => tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (--management-addr)"))?,
        None => match tokio::net::TcpListener::bind(MANAGEMENT_ADDR).await {
            Ok(listener) => listener,
            Err(error) if listen.management_fixed => {
                anyhow::bail!(
                    "cannot listen on {MANAGEMENT_ADDR} for the management API ({error}): the functions' MANAGEMENT_API_ENDPOINT must name it; free the port or pass --management-addr"
                )
            }
            Err(error) => {
                tracing::warn!(%error, "{MANAGEMENT_ADDR} is taken; the management API gets a free port");
                tokio::net::TcpListener::bind("127.0.0.1:0").await?
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
        .with_state(Arc::clone(&gateway));

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let stopping = CancellationToken::new();
    tokio::spawn(
        axum::serve(management, management::router(Arc::clone(&gateway)))
            .with_graceful_shutdown(stopping.clone().cancelled_owned())
            .into_future(),
    );
    tracing::info!("management API on http://{management_addr}");
    tracing::info!("chat-local ready on http://{}", listener.local_addr()?);
    tokio::spawn(Arc::clone(&gateway).keep_alive());

    // HTTP/1.1 only, served straight over each TCP stream: a WebSocket
    // upgrade then hands the gateway the bare socket.
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let connections = TaskTracker::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: pause rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request)
        });
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let stopping = stopping.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = stopping.cancelled() => {
                    // Finish the request in progress, then close.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%error, "HTTP connection ended");
            }
        });
    }

    tracing::info!("shutting down");
    drop(listener);
    let grace = Duration::from_secs(5);
    stopping.cancel();
    gateway.shut_down(grace).await;
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("some HTTP requests did not finish in time");
    }
    Ok(())
}

/// Every socket is a file descriptor: take the hard limit, not the (often
/// 1024) soft one.
fn raise_open_file_limit() {
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
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
