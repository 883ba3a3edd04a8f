//! DynamoDB for chat-local: the `dynoxide` engine (SQLite-backed) served on a
//! loopback port inside this process, or any other endpoint the user names.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use dynoxide::Database;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How often expired items (TTL) are swept from the embedded engine.
const TTL_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The embedded engine; dropping it without [`EmbeddedDynamo::shutdown`]
/// leaves the server running until the runtime ends.
pub struct EmbeddedDynamo {
    pub endpoint: String,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
    sweeper: JoinHandle<()>,
}

impl EmbeddedDynamo {
    /// Opens (or creates) `data_dir/chat.db` and serves it on `listen`
    /// (port 0 picks a free one).
    pub async fn start(data_dir: &Path, listen: SocketAddr) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let path = data_dir.join("chat.db");
        let path_text = path
            .to_str()
            .with_context(|| format!("data path {} is not UTF-8", path.display()))?;
        let database = Database::new(path_text)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        // dynoxide journals with WAL; with `synchronous = NORMAL` a commit is
        // in the WAL (the OS's page cache) before it returns, but not fsynced
        // until a checkpoint. A killed process loses nothing that way; only
        // a power cut could lose the last moments of history. That is the
        // guarantee chat-local gives, for a fraction of the fsync cost.
        database
            .disable_bulk_loading()
            .map_err(|e| anyhow::anyhow!("cannot tune {}: {e}", path.display()))?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen} for DynamoDB"))?;
        let endpoint = format!("http://{}", listener.local_addr()?);

        let (stop, stopped) = oneshot::channel();
        let server = tokio::spawn({
            let database = database.clone();
            async move {
                let shutdown = async {
                    let _ = stopped.await;
                };
                if let Err(error) =
                    dynoxide::server::serve_with_shutdown(listener, database, shutdown).await
                {
                    tracing::error!(%error, "embedded DynamoDB stopped");
                }
            }
        });
        let sweeper = tokio::spawn(async move {
            let mut every = tokio::time::interval(TTL_SWEEP_EVERY);
            loop {
                every.tick().await;
                let database = database.clone();
                match tokio::task::spawn_blocking(move || database.sweep_ttl()).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(deleted)) => tracing::debug!(deleted, "expired items swept"),
                    Ok(Err(error)) => tracing::warn!(%error, "TTL sweep failed"),
                    Err(error) => tracing::warn!(%error, "TTL sweep panicked"),
                }
            }
        });
        tracing::info!(%endpoint, path = %path.display(), "embedded DynamoDB ready");
        Ok(Self {
            endpoint,
            stop,
            server,
            sweeper,
        })
    }

    /// Stops serving and waits for requests in flight, so SQLite closes
    /// cleanly.
    pub async fn shutdown(self) {
        self.sweeper.abort();
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

/// A client for a local engine, which accepts any credentials: no credential
/// lookup (and no wait on instance metadata) happens.
pub fn local_client(endpoint: &str) -> Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("local", "local", None, None, "chat-local"))
        .build();
    Client::from_conf(config)
}

/// A client for an endpoint the user names (DynamoDB Local, or the real
/// service), with credentials and region from the usual AWS sources.
pub async fn external_client(endpoint: &str) -> Client {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .load()
        .await;
    Client::new(&config)
}
