//! DynamoDB for chat-local: the `dynoxide` engine (SQLite-backed) served on a
//! loopback port inside this process, or any other endpoint the user names.
//!
//! Message history, the one write on chat-local's hot path, skips the
//! loopback: [`EmbeddedHistoryWriter`] hands each group of messages to the
//! engine's bulk import in process, one SQLite transaction per group with one
//! prepared insert. Through the SDK and the engine's HTTP server the same
//! write cost more than the chat itself (request signing, two JSON encodings,
//! loopback TCP), and the engine commits every BatchWriteItem item on its own,
//! preparing its SQL afresh each time. The items are the very ones the
//! DynamoDB adapter builds (the import checks keys and attribute values, not
//! the per-item size limit or duplicate keys, which chat messages cannot
//! reach: frames are at most 128 KB and ids unique), and everything else
//! (table setup, history reads) still speaks the DynamoDB API over HTTP, as
//! `--store dynamodb` and the Lambda functions do.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::types::AttributeValue as SdkValue;
use dynoxide::{AttributeValue as EngineValue, Database, ImportOptions};

use crate::store::StoreError;
use crate::store::dynamodb::Item;
use crate::store::group_commit::GroupWriter;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a history write may take before its saves fail.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often expired items (TTL) are swept from the embedded engine.
const TTL_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The embedded engine; dropping it without [`EmbeddedDynamo::shutdown`]
/// leaves the server running until the runtime ends.
pub struct EmbeddedDynamo {
    pub endpoint: String,
    database: Database,
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
        let sweeper = tokio::spawn({
            let database = database.clone();
            async move {
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
            }
        });
        tracing::info!(%endpoint, path = %path.display(), "embedded DynamoDB ready");
        Ok(Self {
            endpoint,
            database,
            stop,
            server,
            sweeper,
        })
    }

    /// Writes groups of message items into `table` in process.
    pub fn history_writer(&self, table: &str) -> EmbeddedHistoryWriter {
        EmbeddedHistoryWriter {
            database: self.database.clone(),
            table: table.to_owned(),
        }
    }

    /// Stops serving and waits for requests in flight. A history write
    /// still running finishes on its own thread; SQLite's WAL makes any
    /// cut-off harmless at the next open.
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

/// Writes message groups into the embedded engine without HTTP: one SQLite
/// commit per group. Message ids are unique, so an import (insert or
/// replace, no conditions, no stream records: the table has no stream)
/// writes exactly what a put would.
pub struct EmbeddedHistoryWriter {
    database: Database,
    table: String,
}

impl GroupWriter for EmbeddedHistoryWriter {
    /// A cap of our choosing (the import has none): it bounds how long one
    /// group holds the engine, and so how long the next group waits.
    const MAX_ITEMS: usize = 100;
    /// The engine has one SQLite writer: a second write in flight would
    /// only wait for it, and split the queue into smaller groups.
    const WRITES_IN_FLIGHT: usize = 1;
    const OPERATION: &'static str = "ImportItems";

    async fn write_group(&self, items: Vec<Item>) -> Result<(), StoreError> {
        let failed = |message: String| StoreError::Backend {
            operation: Self::OPERATION,
            message,
        };
        let items = items
            .into_iter()
            .map(engine_item)
            .collect::<Result<Vec<_>, _>>()
            .map_err(failed)?;
        // SQLite blocks: off the async workers.
        let (database, table) = (self.database.clone(), self.table.clone());
        let write = tokio::task::spawn_blocking(move || {
            database.import_items(&table, items, ImportOptions::default())
        });
        // As for any store: one that hangs must fail its saves, not stall
        // every sender. A write that lands after this is history nobody was
        // told about, never a message delivered and then lost.
        tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .map_err(|_| failed(format!("no answer within {WRITE_TIMEOUT:?}")))?
            .map_err(|error| failed(format!("the write did not finish: {error}")))?
            .map_err(|error| failed(error.to_string()))?;
        Ok(())
    }
}

fn engine_item(item: Item) -> Result<dynoxide::Item, String> {
    item.into_iter()
        .map(|(name, value)| Ok((name, engine_value(value)?)))
        .collect()
}

/// The SDK's attribute value as the engine's.
fn engine_value(value: SdkValue) -> Result<EngineValue, String> {
    Ok(match value {
        SdkValue::S(text) => EngineValue::S(text),
        SdkValue::N(number) => EngineValue::N(number),
        SdkValue::B(bytes) => EngineValue::B(bytes.into_inner()),
        SdkValue::Bool(flag) => EngineValue::BOOL(flag),
        SdkValue::Null(flag) => EngineValue::NULL(flag),
        SdkValue::Ss(texts) => EngineValue::SS(texts),
        SdkValue::Ns(numbers) => EngineValue::NS(numbers),
        SdkValue::Bs(blobs) => EngineValue::BS(blobs.into_iter().map(|b| b.into_inner()).collect()),
        SdkValue::L(values) => EngineValue::L(
            values
                .into_iter()
                .map(engine_value)
                .collect::<Result<_, _>>()?,
        ),
        SdkValue::M(map) => EngineValue::M(engine_item(map)?),
        other => {
            return Err(format!(
                "an attribute value the engine does not know: {other:?}"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::primitives::Blob;

    use super::*;

    #[test]
    fn every_sdk_attribute_type_becomes_the_engines() {
        let item = Item::from([
            ("s".to_owned(), SdkValue::S("text".into())),
            ("n".to_owned(), SdkValue::N("12.5".into())),
            ("b".to_owned(), SdkValue::B(Blob::new(vec![1, 2]))),
            ("bool".to_owned(), SdkValue::Bool(true)),
            ("null".to_owned(), SdkValue::Null(true)),
            ("ss".to_owned(), SdkValue::Ss(vec!["a".into()])),
            ("ns".to_owned(), SdkValue::Ns(vec!["1".into()])),
            ("bs".to_owned(), SdkValue::Bs(vec![Blob::new(vec![3])])),
            (
                "l".to_owned(),
                SdkValue::L(vec![SdkValue::M(Item::from([(
                    "inner".to_owned(),
                    SdkValue::S("deep".into()),
                )]))]),
            ),
        ]);
        let expected = dynoxide::Item::from([
            ("s".to_owned(), EngineValue::S("text".into())),
            ("n".to_owned(), EngineValue::N("12.5".into())),
            ("b".to_owned(), EngineValue::B(vec![1, 2])),
            ("bool".to_owned(), EngineValue::BOOL(true)),
            ("null".to_owned(), EngineValue::NULL(true)),
            ("ss".to_owned(), EngineValue::SS(vec!["a".into()])),
            ("ns".to_owned(), EngineValue::NS(vec!["1".into()])),
            ("bs".to_owned(), EngineValue::BS(vec![vec![3]])),
            (
                "l".to_owned(),
                EngineValue::L(vec![EngineValue::M(dynoxide::Item::from([(
                    "inner".to_owned(),
                    EngineValue::S("deep".into()),
                )]))]),
            ),
        ]);
        assert_eq!(engine_item(item), Ok(expected));
    }
}
