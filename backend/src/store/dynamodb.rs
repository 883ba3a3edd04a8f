//! The DynamoDB adapter: two tables, no Scan, every Query paged to the end.
//!
//! - connections: hash key `connectionId`; `room`, `name`, `connectedAt`
//!   (ms), `expiresAt` (TTL, s), `rateFullAt` (the rate limit's state, µs),
//!   `refusals` and `refusedSince` (refused requests within a minute of the
//!   first, and when that was, ms), `client` (the address the per-client
//!   limits count). The GSI
//!   `room-index` (hash key `room`) projects `name` and `expiresAt`, which is
//!   all fan-out and the member list need; it is sparse, so connections
//!   outside any room cost it nothing.
//!   chat-local's records also carry `gateway` (which chat-local process
//!   holds the socket), indexed by `gateway-index` so that a restart can
//!   find and drop the records of the sockets it lost; on AWS neither
//!   exists.
//!   The same table keeps one item per client address, keyed
//!   `client#{address}` (never a connection id, which API Gateway makes of
//!   letters and digits): `handshakeFullAt` and `inheritFullAt` (µs), and
//!   an `expiresAt` that lets DynamoDB forget it. Likewise one item per big
//!   room, keyed `count#{room}`: `countedAt` (ms), when its count last went
//!   out; and one per name present in a room, keyed `presence#{room}#{name}`:
//!   `n`, how many of its connections are there. None has a `room`, so the
//!   room index never sees them.
//! - messages: hash key `room` (its lower-case id), sort key `id`
//!   (time-ordered and unique); `name`, `data`, `ts` (ms), `nonce` (the
//!   sender's own id for it, when given), `expiresAt` (TTL, s).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, CreateGlobalSecondaryIndexAction,
    GlobalSecondaryIndex, GlobalSecondaryIndexUpdate, IndexStatus, KeySchemaElement, KeyType,
    Projection, ProjectionType, PutRequest, ReturnValue, ReturnValuesOnConditionCheckFailure,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification, TimeToLiveStatus, WriteRequest,
};
use shared::{ChatMessage, Name, Room};

use super::{
    Admission, ClientAdmission, Connection, Limits, Member, Members, NewConnection,
    REFUSAL_WINDOW_MS, RateLimit, Store, StoreError,
};

pub const ROOM_INDEX: &str = "room-index";
/// chat-local's own index of its connection records, by gateway instance.
pub const GATEWAY_INDEX: &str = "gateway-index";
const GATEWAY_ATTRIBUTE: &str = "gateway";
const TTL_ATTRIBUTE: &str = "expiresAt";
/// DynamoDB deletes expired items within days, not at once; until then
/// queries still return them, so each query leaves them out itself (an item
/// without the attribute, from an older table, stays). History queries also
/// start at the retention's edge by key, so expired messages are not even
/// read.
const NOT_EXPIRED: &str = "attribute_not_exists(#expires) OR #expires > :now";
/// The rate limit's state: when the connection's bucket is full again (µs).
const RATE_ATTRIBUTE: &str = "rateFullAt";
/// Refused requests since `refusedSince` (ms).
const REFUSALS_ATTRIBUTE: &str = "refusals";
const REFUSED_SINCE_ATTRIBUTE: &str = "refusedSince";
/// A client address's handshake limit's state (µs).
const HANDSHAKE_ATTRIBUTE: &str = "handshakeFullAt";
/// Where a client address's next connection's rate limit starts (µs).
const INHERIT_ATTRIBUTE: &str = "inheritFullAt";
/// How long a client item outlives its last use; its states are all full
/// again long before.
const CLIENT_TTL: Duration = Duration::from_secs(3600);

/// The key of a client address's item in the connections table.
fn client_item_key(client: &str) -> String {
    format!("client#{client}")
}

/// The key of a big room's count item in the connections table: when its
/// count last went out ([`Store::claim_count_turn`]).
fn count_item_key(room: &str) -> String {
    format!("count#{room}")
}
const COUNTED_AT_ATTRIBUTE: &str = "countedAt";

/// The key of a name's presence item in a room: how many of its connections
/// are there ([`Store::count_presence`]). Room names have no `#`.
fn presence_item_key(room: &str, name: &str) -> String {
    format!("presence#{room}#{name}")
}
const PRESENCE_ATTRIBUTE: &str = "n";
/// DynamoDB's limit of items per BatchWriteItem.
pub const BATCH_WRITE_MAX: usize = 25;
/// Rounds of retrying unprocessed items before a batch counts as failed.
const BATCH_WRITE_ATTEMPTS: u32 = 8;
const BATCH_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub type Item = HashMap<String, AttributeValue>;

/// What counting an action against a GCRA limit came to.
enum Gcra {
    /// Counted; the item after it.
    Admitted(Item),
    /// Over the limit; allowed again after this long.
    Limited { retry_after_us: u64 },
    /// No such item (a connection that has gone).
    Missing,
}

/// Table names and retention; the defaults suit a deployment and chat-local.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub connections_table: String,
    pub messages_table: String,
    /// How long a connection record outlives a `$disconnect` that never came.
    /// API Gateway closes every connection after 2 hours.
    pub connection_ttl: Duration,
    /// How long messages are kept.
    pub message_ttl: Duration,
    /// Items per Query page; `None` leaves it to DynamoDB (1 MB pages).
    pub page_size: Option<i32>,
    /// The chat-local instance recording connections (`None` on AWS): its
    /// records carry it, so that its next start can remove them without a
    /// Scan ([`DynamoStore::remove_stale_connections`]).
    pub gateway: Option<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            connections_table: "chat-connections".into(),
            messages_table: "chat-messages".into(),
            connection_ttl: Duration::from_secs(3 * 3600),
            message_ttl: Duration::from_secs(30 * 24 * 3600),
            page_size: None,
            gateway: None,
        }
    }
}

impl StoreConfig {
    /// Table names and retention from the environment the SAM template sets:
    /// `CONNECTIONS_TABLE`, `MESSAGES_TABLE`, `MESSAGE_RETENTION_DAYS`.
    pub fn from_env() -> Result<Self, String> {
        let mut config = Self::default();
        if let Ok(table) = std::env::var("CONNECTIONS_TABLE") {
            config.connections_table = table;
        }
        if let Ok(table) = std::env::var("MESSAGES_TABLE") {
            config.messages_table = table;
        }
        if let Ok(days) = std::env::var("MESSAGE_RETENTION_DAYS") {
            let days: u64 = days
                .parse()
                .map_err(|_| format!("MESSAGE_RETENTION_DAYS is not a number of days: {days:?}"))?;
            config.message_ttl = Duration::from_secs(days * 24 * 3600);
        }
        Ok(config)
    }
}

#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    config: StoreConfig,
}

impl DynamoStore {
    pub fn new(client: Client, config: StoreConfig) -> Self {
        Self { client, config }
    }

    /// Makes both tables usable: created where missing (a table still being
    /// deleted is waited out first), waited for while being created, and
    /// their TTL turned on if it is off (a start that crashed between
    /// creating a table and enabling its TTL is mended by the next).
    pub async fn ensure_tables(&self) -> Result<(), StoreError> {
        let connections = self.config.connections_table.clone();
        self.ensure_table(&connections, Self::create_connections_table)
            .await?;
        self.ensure_messages_table().await
    }

    /// [`Self::ensure_tables`] for the messages table alone.
    pub async fn ensure_messages_table(&self) -> Result<(), StoreError> {
        let messages = self.config.messages_table.clone();
        self.ensure_table(&messages, Self::create_messages_table)
            .await
    }

    async fn ensure_table<'a, F, Fut>(&'a self, table: &str, create: F) -> Result<(), StoreError>
    where
        F: FnOnce(&'a Self) -> Fut,
        Fut: std::future::Future<Output = Result<(), StoreError>>,
    {
        match self.table_status(table).await? {
            None => {
                return match create(self).await {
                    // Another process created it meanwhile.
                    Err(StoreError::Backend { message, .. })
                        if message.starts_with("ResourceInUseException") =>
                    {
                        self.finish_table(table).await
                    }
                    created => created,
                };
            }
            Some(TableStatus::Deleting) => {
                tracing::info!(
                    table,
                    "the table is being deleted; waiting to create it again"
                );
                self.client
                    .wait_until_table_not_exists()
                    .table_name(table)
                    .wait(Duration::from_secs(300))
                    .await
                    .map_err(waiter("DescribeTable"))?;
                return create(self).await;
            }
            Some(TableStatus::Active) => {}
            Some(other) => {
                tracing::info!(table, status = %other.as_str(), "waiting for the table");
                return self.finish_table(table).await;
            }
        }
        self.ensure_ttl(table).await
    }

    /// A table's status, `None` if there is no such table. Asked of
    /// ListTables first: DescribeTable of a missing table is an error
    /// response, which engines log as a warning at every first start.
    async fn table_status(&self, table: &str) -> Result<Option<TableStatus>, StoreError> {
        let mut start = None;
        let mut listed = false;
        loop {
            let page = self
                .client
                .list_tables()
                .set_exclusive_start_table_name(start)
                .send()
                .await
                .map_err(backend("ListTables"))?;
            if page.table_names().iter().any(|name| name == table) {
                listed = true;
                break;
            }
            start = page.last_evaluated_table_name;
            if start.is_none() {
                break;
            }
        }
        if !listed {
            return Ok(None);
        }
        match self.client.describe_table().table_name(table).send().await {
            Ok(output) => Ok(output.table.and_then(|t| t.table_status)),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(error) => Err(backend("DescribeTable")(error)),
        }
    }

    /// Turns the table's TTL on unless it is on (or being turned on).
    async fn ensure_ttl(&self, table: &str) -> Result<(), StoreError> {
        let described = self
            .client
            .describe_time_to_live()
            .table_name(table)
            .send()
            .await
            .map_err(backend("DescribeTimeToLive"))?;
        let status = described
            .time_to_live_description
            .and_then(|d| d.time_to_live_status);
        if matches!(
            status,
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
        ) {
            return Ok(());
        }
        tracing::info!(table, "turning on the table's TTL");
        let ttl = TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name(TTL_ATTRIBUTE)
            .build()
            .map_err(build_error)?;
        self.client
            .update_time_to_live()
            .table_name(table)
            .time_to_live_specification(ttl)
            .send()
            .await
            .map_err(backend("UpdateTimeToLive"))?;
        Ok(())
    }

    /// Removes the connection records this gateway left behind (its last
    /// run ended without their `$disconnect`s): they name sockets that no
    /// longer exist. Only this gateway's, found through the sparse
    /// `gateway-index`; another chat-local's, or anything else's sharing
    /// the table, are left alone. A table without the index (made before
    /// it existed) gets it if `may_add_index` (chat-local's own engine, whose
    /// tables nobody else manages); elsewhere the log says how to add it,
    /// and stale records are forgotten as pushes find them gone and by their
    /// TTL. Returns how many were removed.
    pub async fn remove_stale_connections(&self, may_add_index: bool) -> Result<usize, StoreError> {
        let Some(gateway) = &self.config.gateway else {
            return Ok(0);
        };
        let table = &self.config.connections_table;
        let status = match self.gateway_index_status().await? {
            None if may_add_index => {
                self.add_gateway_index().await;
                // An engine that builds the index at once lets this start
                // clean up already.
                self.gateway_index_status().await?
            }
            None => {
                tracing::info!(
                    table,
                    "the connections table has no {GATEWAY_INDEX}, so records of a previous run are not removed at start; to add it: aws dynamodb update-table --table-name {table} --attribute-definitions AttributeName={GATEWAY_ATTRIBUTE},AttributeType=S --global-secondary-index-updates '[{{\"Create\":{{\"IndexName\":\"{GATEWAY_INDEX}\",\"KeySchema\":[{{\"AttributeName\":\"{GATEWAY_ATTRIBUTE}\",\"KeyType\":\"HASH\"}}],\"Projection\":{{\"ProjectionType\":\"KEYS_ONLY\"}}}}}}]'"
                );
                return Ok(0);
            }
            status => status,
        };
        if status != Some(IndexStatus::Active) {
            tracing::info!(
                table,
                "{GATEWAY_INDEX} is still being built; records of a previous run are removed at a later start"
            );
            return Ok(0);
        }
        let stale = self
            .client
            .query()
            .table_name(table)
            .index_name(GATEWAY_INDEX)
            .key_condition_expression("#gateway = :gateway")
            .expression_attribute_names("#gateway", GATEWAY_ATTRIBUTE)
            .expression_attribute_values(":gateway", s(gateway))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(backend("Query"))?
            .iter()
            .map(|item| required_s(item, "connectionId", table).map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()?;
        for connection_id in &stale {
            // One by one, as a disconnect removes its record, and counted out
            // of its room's presence as a disconnect is: a count left
            // behind would keep that name's next arrival from being told.
            let removed = self.remove_connection(connection_id).await?;
            if let Some((room, name)) = removed.and_then(|c| c.room.zip(c.name))
                && let Err(error) = self
                    .count_presence(&room, &name, -1, crate::clock::now_ms())
                    .await
            {
                tracing::warn!(room, %error, "could not count a stale record out of its room");
            }
        }
        Ok(stale.len())
    }

    /// The status of the connections table's `gateway-index`, `None` if it
    /// has none.
    async fn gateway_index_status(&self) -> Result<Option<IndexStatus>, StoreError> {
        let described = self
            .client
            .describe_table()
            .table_name(&self.config.connections_table)
            .send()
            .await
            .map_err(backend("DescribeTable"))?;
        Ok(described.table.and_then(|table| {
            table
                .global_secondary_indexes()
                .iter()
                .find(|index| index.index_name() == Some(GATEWAY_INDEX))
                .map(|index| {
                    index
                        .index_status()
                        .cloned()
                        .unwrap_or(IndexStatus::Creating)
                })
        }))
    }

    /// Adds `gateway-index` to the connections table, best effort: a start
    /// never fails for it (another chat-local may be adding it right now,
    /// or the table may be busy), it only cleans up later.
    async fn add_gateway_index(&self) {
        let table = &self.config.connections_table;
        tracing::info!(table, "adding {GATEWAY_INDEX} to the connections table");
        let create = CreateGlobalSecondaryIndexAction::builder()
            .index_name(GATEWAY_INDEX)
            .key_schema(key(GATEWAY_ATTRIBUTE, KeyType::Hash))
            .projection(gateway_projection())
            .build();
        let create = match create {
            Ok(create) => create,
            Err(error) => {
                tracing::warn!(%error, "cannot describe {GATEWAY_INDEX}");
                return;
            }
        };
        let added = self
            .client
            .update_table()
            .table_name(table)
            .attribute_definitions(attribute(GATEWAY_ATTRIBUTE))
            .global_secondary_index_updates(
                GlobalSecondaryIndexUpdate::builder().create(create).build(),
            )
            .send()
            .await;
        if let Err(error) = added {
            let error = backend("UpdateTable")(error);
            tracing::warn!(table, %error, "cannot add {GATEWAY_INDEX}; records of a previous run stay until their TTL");
        }
    }

    async fn create_connections_table(&self) -> Result<(), StoreError> {
        let table = &self.config.connections_table;
        let room_index = GlobalSecondaryIndex::builder()
            .index_name(ROOM_INDEX)
            .key_schema(key("room", KeyType::Hash))
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::Include)
                    .non_key_attributes("name")
                    // So member queries can leave out expired records.
                    .non_key_attributes(TTL_ATTRIBUTE)
                    .build(),
            )
            .build()
            .map_err(build_error)?;
        let mut request = self
            .client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute("connectionId"))
            .attribute_definitions(attribute("room"))
            .key_schema(key("connectionId", KeyType::Hash))
            .global_secondary_indexes(room_index);
        if self.config.gateway.is_some() {
            // chat-local's own table: its records can be found by gateway.
            let gateway_index = GlobalSecondaryIndex::builder()
                .index_name(GATEWAY_INDEX)
                .key_schema(key(GATEWAY_ATTRIBUTE, KeyType::Hash))
                .projection(gateway_projection())
                .build()
                .map_err(build_error)?;
            request = request
                .attribute_definitions(attribute(GATEWAY_ATTRIBUTE))
                .global_secondary_indexes(gateway_index);
        }
        request.send().await.map_err(backend("CreateTable"))?;
        self.finish_table(table).await
    }

    async fn create_messages_table(&self) -> Result<(), StoreError> {
        let table = &self.config.messages_table;
        self.client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute("room"))
            .attribute_definitions(attribute("id"))
            .key_schema(key("room", KeyType::Hash))
            .key_schema(key("id", KeyType::Range))
            .send()
            .await
            .map_err(backend("CreateTable"))?;
        self.finish_table(table).await
    }

    /// Waits for a new table to become active, then turns on its TTL.
    async fn finish_table(&self, table: &str) -> Result<(), StoreError> {
        self.client
            .wait_until_table_exists()
            .table_name(table)
            .wait(Duration::from_secs(120))
            .await
            .map_err(waiter("DescribeTable"))?;
        self.ensure_ttl(table).await
    }

    /// An UpdateItem on a recorded connection that returns the old item, or
    /// `None` when the connection is not recorded.
    async fn update_connection(
        &self,
        connection_id: &str,
        update: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Option<Connection>, StoreError> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.config.connections_table)
            .key("connectionId", s(connection_id))
            .update_expression(update)
            .condition_expression("attribute_exists(connectionId)")
            .return_values(ReturnValue::AllOld);
        for (placeholder, value) in values {
            request = request.expression_attribute_values(placeholder, value);
        }
        // DynamoDB refuses names the expression does not use.
        if update.contains("#room") {
            request = request.expression_attribute_names("#room", "room");
        }
        if update.contains("#name") {
            request = request.expression_attribute_names("#name", "name");
        }
        let result = request.send().await.map(|output| output.attributes);
        self.previous_connection(result, "UpdateItem")
    }

    /// The connection record a conditional write returned as it was before
    /// (`ReturnValues: ALL_OLD`), or `None` when its condition failed.
    fn previous_connection<E, R>(
        &self,
        result: Result<Option<Item>, SdkError<E, R>>,
        operation: &'static str,
    ) -> Result<Option<Connection>, StoreError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        match result {
            Ok(item) => item
                .map(|item| self.connection_from_item(&item))
                .transpose(),
            Err(error) if is_condition_failure(&error) => Ok(None),
            Err(error) => Err(backend(operation)(error)),
        }
    }

    /// An UpdateItem on an item of the connections table if `condition`
    /// holds: the item after it, or the item as it stood when the condition
    /// failed (`None` when there is none). `#full` names `attribute`.
    async fn update_if(
        &self,
        key: &str,
        attribute: &str,
        update: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Result<Item, Option<Item>>, StoreError> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.config.connections_table)
            .key("connectionId", s(key))
            .update_expression(update)
            .condition_expression(condition)
            .expression_attribute_names("#full", attribute)
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if update.contains("#expires") {
            request = request.expression_attribute_names("#expires", TTL_ATTRIBUTE);
        }
        for (placeholder, value) in values {
            request = request.expression_attribute_values(placeholder, value);
        }
        match request.send().await {
            Ok(output) => Ok(Ok(output.attributes.unwrap_or_default())),
            Err(error) => match error.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(failed)) => {
                    Ok(Err(failed.item().cloned()))
                }
                _ => Err(backend("UpdateItem")(error)),
            },
        }
    }

    fn connection_from_item(&self, item: &Item) -> Result<Connection, StoreError> {
        let table = &self.config.connections_table;
        Ok(Connection {
            connection_id: required_s(item, "connectionId", table)?.to_owned(),
            room: optional_s(item, "room").map(str::to_owned),
            name: optional_s(item, "name").map(str::to_owned),
            connected_at: required_n(item, "connectedAt", table)?,
        })
    }

    fn message_from_item(&self, item: &Item) -> Result<ChatMessage, StoreError> {
        let table = &self.config.messages_table;
        Ok(ChatMessage {
            id: required_s(item, "id", table)?.to_owned(),
            room: required_s(item, "room", table)?.to_owned(),
            name: required_s(item, "name", table)?.to_owned(),
            data: required_s(item, "data", table)?.to_owned(),
            ts: required_n(item, "ts", table)?,
            nonce: optional_s(item, "nonce").map(str::to_owned),
        })
    }

    /// A message as the messages table stores it.
    pub fn message_item(&self, message: &ChatMessage) -> Item {
        let mut item = HashMap::from([
            ("room".to_owned(), s(&message.room)),
            ("id".to_owned(), s(&message.id)),
            ("name".to_owned(), s(&message.name)),
            ("data".to_owned(), s(&message.data)),
            ("ts".to_owned(), n(message.ts)),
            (
                TTL_ATTRIBUTE.to_owned(),
                self.expiry(message.ts, self.config.message_ttl),
            ),
        ]);
        // In the same write: a nonce costs no request, only its bytes.
        if let Some(nonce) = &message.nonce {
            item.insert("nonce".to_owned(), s(nonce));
        }
        item
    }

    /// Writes up to [`BATCH_WRITE_MAX`] message items in one BatchWriteItem,
    /// retrying what DynamoDB leaves unprocessed (throttling) with backoff.
    /// Either every item is written or the call fails.
    ///
    /// BatchWriteItem takes no condition expressions; message ids are unique
    /// by construction (time plus 64 random bits), so nothing is overwritten.
    pub async fn put_message_items(&self, items: Vec<Item>) -> Result<(), StoreError> {
        debug_assert!(items.len() <= BATCH_WRITE_MAX);
        let table = &self.config.messages_table;
        let mut requests = items
            .into_iter()
            .map(|item| {
                PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .map(|put| WriteRequest::builder().put_request(put).build())
                    .map_err(build_error)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut backoff = Duration::from_millis(10);
        for attempt in 1.. {
            let request = self
                .client
                .batch_write_item()
                .request_items(table, requests)
                .send();
            // Saves wait on this: a store that hangs must fail them, not
            // stall every sender.
            let output = tokio::time::timeout(BATCH_WRITE_TIMEOUT, request)
                .await
                .map_err(|_| StoreError::Backend {
                    operation: "BatchWriteItem",
                    message: format!("no answer within {BATCH_WRITE_TIMEOUT:?}"),
                })?
                .map_err(backend("BatchWriteItem"))?;
            requests = output
                .unprocessed_items
                .and_then(|mut unprocessed| unprocessed.remove(table))
                .unwrap_or_default();
            if requests.is_empty() {
                return Ok(());
            }
            if attempt == BATCH_WRITE_ATTEMPTS {
                break;
            }
            tracing::debug!(
                unprocessed = requests.len(),
                attempt,
                "retrying unprocessed writes"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
        Err(StoreError::Backend {
            operation: "BatchWriteItem",
            message: format!(
                "{} items still unprocessed after {BATCH_WRITE_ATTEMPTS} attempts",
                requests.len()
            ),
        })
    }

    /// Counts one action against the GCRA `limit` kept in `attribute` of
    /// the item `key`. Update expressions have no `max`, so the two cases of
    /// the algorithm are two conditional updates, tried in the order that
    /// makes the usual case one round trip: someone typing sends slower than
    /// the rate, so their bucket is full again by their next message. Only
    /// an action within a burst needs the second update; one over the limit
    /// is refused from what the first one's failure returns.
    ///
    /// With `expires`, the item is made if missing (a client's) and its TTL
    /// moved on; without, a missing item is [`Gcra::Missing`].
    async fn admit_gcra(
        &self,
        key: &str,
        attribute: &str,
        limit: &RateLimit,
        now_us: u64,
        expires: Option<AttributeValue>,
    ) -> Result<Gcra, StoreError> {
        let (exists, set_expiry) = match expires {
            Some(_) => ("", ", #expires = :expires"),
            None => ("attribute_exists(connectionId) AND ", ""),
        };
        let with_expiry = |mut values: Vec<(&'static str, AttributeValue)>| {
            if let Some(expires) = &expires {
                values.push((":expires", expires.clone()));
            }
            values
        };
        let refill = self
            .update_if(
                key,
                attribute,
                &format!("SET #full = :next{set_expiry}"),
                &format!("{exists}(attribute_not_exists(#full) OR #full <= :now)"),
                with_expiry(vec![
                    (":next", n(now_us.saturating_add(limit.interval_us()))),
                    (":now", n(now_us)),
                ]),
            )
            .await?;
        let full_again_us = match refill {
            Ok(item) => return Ok(Gcra::Admitted(item)),
            Err(None) => return Ok(Gcra::Missing),
            Err(Some(item)) => required_n(&item, attribute, &self.config.connections_table)?,
        };
        if limit.admit(full_again_us, now_us).is_none() {
            return Ok(Gcra::Limited {
                retry_after_us: limit.retry_after_us(full_again_us, now_us),
            });
        }
        let within_burst = self
            .update_if(
                key,
                attribute,
                &format!("SET #full = #full + :interval{set_expiry}"),
                &format!("{exists}#full <= :latest"),
                with_expiry(vec![
                    (":interval", n(limit.interval_us())),
                    (":latest", n(now_us.saturating_add(limit.tolerance_us()))),
                ]),
            )
            .await?;
        Ok(match within_burst {
            Ok(item) => Gcra::Admitted(item),
            Err(None) => Gcra::Missing,
            // Another action of the same key got there first.
            Err(Some(item)) => Gcra::Limited {
                retry_after_us: optional_n(&item, attribute).map_or(limit.interval_us(), |full| {
                    limit.retry_after_us(full, now_us)
                }),
            },
        })
    }

    /// Hands a spent rate limit's state to the client address, so that its
    /// next connection starts there; a failure costs only that.
    async fn hand_on(&self, client: &str, full_again_us: u64, now_us: u64) {
        let written = self
            .client
            .update_item()
            .table_name(&self.config.connections_table)
            .key("connectionId", s(&client_item_key(client)))
            .update_expression("SET #inherit = :full, #expires = :expires")
            .condition_expression("attribute_not_exists(#inherit) OR #inherit < :full")
            .expression_attribute_names("#inherit", INHERIT_ATTRIBUTE)
            .expression_attribute_names("#expires", TTL_ATTRIBUTE)
            .expression_attribute_values(":full", n(full_again_us))
            .expression_attribute_values(
                ":expires",
                self.expiry(full_again_us.max(now_us) / 1000, CLIENT_TTL),
            )
            .send()
            .await;
        match written {
            Ok(_) => {}
            Err(error) if is_condition_failure(&error) => {}
            Err(error) => {
                tracing::warn!(client, error = %backend("UpdateItem")(error), "could not hand on a rate limit");
            }
        }
    }

    fn expiry(&self, now_ms: u64, ttl: Duration) -> AttributeValue {
        n(now_ms / 1000 + ttl.as_secs())
    }
}

impl Store for DynamoStore {
    /// One UpdateItem on the client's item (two within a burst, as for
    /// messages), which also returns where its last connection left off.
    async fn admit_client(
        &self,
        client: &str,
        limits: &Limits,
        joining: bool,
        now_us: u64,
    ) -> Result<ClientAdmission, StoreError> {
        let key = client_item_key(client);
        let expires = self.expiry(now_us / 1000, CLIENT_TTL);
        let item = match &limits.handshakes {
            Some(limit) => {
                match self
                    .admit_gcra(&key, HANDSHAKE_ATTRIBUTE, limit, now_us, Some(expires))
                    .await?
                {
                    Gcra::Admitted(item) => item,
                    // Missing: deleted between the two updates of a burst
                    // (TTL, an operator); refused this once, not a panic.
                    Gcra::Limited { .. } | Gcra::Missing => return Ok(ClientAdmission::Limited),
                }
            }
            None => self
                .client
                .get_item()
                .table_name(&self.config.connections_table)
                .key("connectionId", s(&key))
                .send()
                .await
                .map_err(backend("GetItem"))?
                .item
                .unwrap_or_default(),
        };
        let inherited = optional_n(&item, INHERIT_ATTRIBUTE).unwrap_or(0);
        let start = match (&limits.connection, joining) {
            (Some(limit), true) => match limit.admit(inherited, now_us) {
                Some(next) => next,
                None => return Ok(ClientAdmission::Limited),
            },
            _ => inherited,
        };
        if let Some(limit) = &limits.connection
            && limit.admit(start, now_us).is_none()
        {
            // The join spent it: see `admit_message`.
            self.hand_on(client, start, now_us).await;
        }
        Ok(ClientAdmission::Admitted {
            full_again_us: start,
        })
    }

    async fn add_connection(&self, connection: &NewConnection<'_>) -> Result<(), StoreError> {
        let mut request = self
            .client
            .put_item()
            .table_name(&self.config.connections_table)
            .item("connectionId", s(connection.connection_id))
            .item("connectedAt", n(connection.connected_at))
            .item(
                TTL_ATTRIBUTE,
                self.expiry(connection.connected_at, self.config.connection_ttl),
            );
        if connection.full_again_us > 0 {
            request = request.item(RATE_ATTRIBUTE, n(connection.full_again_us));
        }
        if let Some(client) = connection.client {
            request = request.item("client", s(client));
        }
        if let Some(gateway) = &self.config.gateway {
            request = request.item(GATEWAY_ATTRIBUTE, s(gateway));
        }
        if let Some((room, name)) = connection.membership {
            request = request
                .item("room", s(room.as_str()))
                .item("name", s(name.as_str()));
        }
        request.send().await.map_err(backend("PutItem"))?;
        Ok(())
    }

    async fn connection(&self, connection_id: &str) -> Result<Option<Connection>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.config.connections_table)
            .key("connectionId", s(connection_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(backend("GetItem"))?;
        output
            .item
            .map(|item| self.connection_from_item(&item))
            .transpose()
    }

    /// The connection's limit only: the per-client cap would cost a second
    /// write per message here (in memory it is free), so on DynamoDB a
    /// client address is held by its handshake limit and by each new
    /// connection inheriting what its last one left.
    async fn admit_message(
        &self,
        connection_id: &str,
        limits: &Limits,
        now_us: u64,
    ) -> Result<Admission, StoreError> {
        let Some(limit) = &limits.connection else {
            return Ok(self
                .connection(connection_id)
                .await?
                .map_or(Admission::Unknown, Admission::Admitted));
        };
        match self
            .admit_gcra(connection_id, RATE_ATTRIBUTE, limit, now_us, None)
            .await?
        {
            Gcra::Admitted(item) => {
                // That spent the bucket: handed to the address at once, so
                // reconnecting does not refill it. Someone typing never gets
                // here (only a client at its limit pays this write), and
                // people sharing an address never pay for each other.
                if let (Some(client), Some(full_again_us)) = (
                    optional_s(&item, "client"),
                    optional_n(&item, RATE_ATTRIBUTE),
                ) && limit.admit(full_again_us, now_us).is_none()
                {
                    self.hand_on(client, full_again_us, now_us).await;
                }
                self.connection_from_item(&item).map(Admission::Admitted)
            }
            Gcra::Limited { retry_after_us } => Ok(Admission::limited(retry_after_us)),
            Gcra::Missing => Ok(Admission::Unknown),
        }
    }

    /// One UpdateItem (`ADD`, returning the count); two for the first
    /// refusal of a window.
    async fn note_refusal(&self, connection_id: &str, now_ms: u64) -> Result<u32, StoreError> {
        let update = |expression: &str, condition: &str| {
            self.client
                .update_item()
                .table_name(&self.config.connections_table)
                .key("connectionId", s(connection_id))
                .update_expression(expression)
                .condition_expression(condition)
                .expression_attribute_names("#refusals", REFUSALS_ATTRIBUTE)
                .expression_attribute_names("#since", REFUSED_SINCE_ATTRIBUTE)
                .return_values(ReturnValue::UpdatedNew)
        };
        let within = update(
            "ADD #refusals :one",
            "attribute_exists(connectionId) AND #since > :start",
        )
        .expression_attribute_values(":one", n(1))
        .expression_attribute_values(":start", n(now_ms.saturating_sub(REFUSAL_WINDOW_MS)))
        .send()
        .await;
        let counted = match within {
            Ok(output) => output.attributes,
            Err(error) if is_condition_failure(&error) => {
                // The first of a window (or no such connection).
                let first = update(
                    "SET #refusals = :one, #since = :now",
                    "attribute_exists(connectionId)",
                )
                .expression_attribute_values(":one", n(1))
                .expression_attribute_values(":now", n(now_ms))
                .send()
                .await;
                match first {
                    Ok(output) => output.attributes,
                    Err(error) if is_condition_failure(&error) => return Ok(0),
                    Err(error) => return Err(backend("UpdateItem")(error)),
                }
            }
            Err(error) => return Err(backend("UpdateItem")(error)),
        };
        Ok(counted
            .as_ref()
            .and_then(|item| optional_n(item, REFUSALS_ATTRIBUTE))
            .map_or(0, |count| u32::try_from(count).unwrap_or(u32::MAX)))
    }

    /// One UpdateItem (`ADD`) on the name's presence item; one more, rarely,
    /// to mend a count that went wrong (a connection forgotten without its
    /// departure counted).
    async fn count_presence(
        &self,
        room: &str,
        name: &str,
        delta: i64,
        now_ms: u64,
    ) -> Result<i64, StoreError> {
        let key = presence_item_key(room, name);
        let update = |expression: &str| {
            self.client
                .update_item()
                .table_name(&self.config.connections_table)
                .key("connectionId", s(&key))
                .update_expression(expression)
                .expression_attribute_names("#n", PRESENCE_ATTRIBUTE)
                .expression_attribute_names("#expires", TTL_ATTRIBUTE)
                .expression_attribute_values(
                    ":expires",
                    self.expiry(now_ms, self.config.connection_ttl),
                )
                .return_values(ReturnValue::UpdatedNew)
        };
        // An expired count (its connections gone without a word, hours ago)
        // is no count: DynamoDB deletes it only within days.
        let added = update("ADD #n :delta SET #expires = :expires")
            .condition_expression("attribute_not_exists(#expires) OR #expires > :now")
            .expression_attribute_values(":delta", AttributeValue::N(delta.to_string()))
            .expression_attribute_values(":now", n(now_ms / 1000))
            .send()
            .await;
        let least = delta.max(0);
        let count = match added {
            Ok(output) => output
                .attributes
                .as_ref()
                .and_then(|item| item.get(PRESENCE_ATTRIBUTE))
                .and_then(|value| value.as_n().ok())
                .and_then(|count| count.parse::<i64>().ok())
                .unwrap_or(0),
            Err(error) if is_condition_failure(&error) => i64::MIN,
            Err(error) => return Err(backend("UpdateItem")(error)),
        };
        // Below what this change can leave (expired, or a departure counted
        // twice): set to that, so the next arrival is told again.
        if count < least {
            update("SET #n = :least, #expires = :expires")
                .expression_attribute_values(":least", AttributeValue::N(least.to_string()))
                .send()
                .await
                .map_err(backend("UpdateItem"))?;
            return Ok(least);
        }
        Ok(count)
    }

    async fn join_room(
        &self,
        connection_id: &str,
        room: &Room,
        name: &Name,
    ) -> Result<Option<Connection>, StoreError> {
        self.update_connection(
            connection_id,
            "SET #room = :room, #name = :name",
            vec![(":room", s(room.as_str())), (":name", s(name.as_str()))],
        )
        .await
    }

    async fn leave_room(&self, connection_id: &str) -> Result<Option<Connection>, StoreError> {
        self.update_connection(connection_id, "REMOVE #room", Vec::new())
            .await
    }

    async fn remove_connection(
        &self,
        connection_id: &str,
    ) -> Result<Option<Connection>, StoreError> {
        let output = self
            .client
            .delete_item()
            .table_name(&self.config.connections_table)
            .key("connectionId", s(connection_id))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(backend("DeleteItem"))?;
        output
            .attributes
            .map(|item| self.connection_from_item(&item))
            .transpose()
    }

    async fn forget_gone(
        &self,
        connection_id: &str,
        connected_before: u64,
    ) -> Result<Option<Connection>, StoreError> {
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.config.connections_table)
            .key("connectionId", s(connection_id))
            .condition_expression("connectedAt < :before")
            .expression_attribute_values(":before", n(connected_before))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map(|output| output.attributes);
        self.previous_connection(deleted, "DeleteItem")
    }

    /// One conditional UpdateItem on the room's count item.
    async fn claim_count_turn(
        &self,
        room: &str,
        now_ms: u64,
        every_ms: u64,
    ) -> Result<bool, StoreError> {
        let claimed = self
            .client
            .update_item()
            .table_name(&self.config.connections_table)
            .key("connectionId", s(&count_item_key(room)))
            .update_expression("SET #at = :now, #expires = :expires")
            .condition_expression("attribute_not_exists(#at) OR #at <= :since")
            .expression_attribute_names("#at", COUNTED_AT_ATTRIBUTE)
            .expression_attribute_names("#expires", TTL_ATTRIBUTE)
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":since", n(now_ms.saturating_sub(every_ms)))
            .expression_attribute_values(":expires", self.expiry(now_ms, CLIENT_TTL))
            .send()
            .await;
        match claimed {
            Ok(_) => Ok(true),
            Err(error) if is_condition_failure(&error) => Ok(false),
            Err(error) => Err(backend("UpdateItem")(error)),
        }
    }

    async fn room_members(&self, room: &str) -> Result<Members, StoreError> {
        let table = &self.config.connections_table;
        let items = self
            .client
            .query()
            .table_name(table)
            .index_name(ROOM_INDEX)
            .key_condition_expression("#room = :room")
            .filter_expression(NOT_EXPIRED)
            .expression_attribute_names("#room", "room")
            .expression_attribute_names("#expires", TTL_ATTRIBUTE)
            .expression_attribute_values(":room", s(room))
            .expression_attribute_values(":now", n(now_s()))
            .set_limit(self.config.page_size)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(backend("Query"))?;
        items
            .iter()
            .map(|item| {
                Ok(Member {
                    connection_id: required_s(item, "connectionId", table)?.into(),
                    name: required_s(item, "name", table)?.into(),
                })
            })
            .collect()
    }

    async fn save_message(&self, message: &ChatMessage) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.config.messages_table)
            .set_item(Some(self.message_item(message)))
            // Ids are unique by construction; this makes an impossible clash
            // fail loudly instead of overwriting a message.
            .condition_expression("attribute_not_exists(id)")
            .send()
            .await
            .map_err(backend("PutItem"))?;
        Ok(())
    }

    async fn recent_messages(
        &self,
        room: &str,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.latest_messages(room, None, limit).await
    }

    async fn messages_before(
        &self,
        room: &str,
        before: &str,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.latest_messages(room, Some(before), limit).await
    }
}

impl DynamoStore {
    /// The latest `limit` messages of `room` (older than `before`, if
    /// given), oldest first: a Query down the sort key, newest first.
    async fn latest_messages(
        &self,
        room: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let mut messages = Vec::with_capacity(limit);
        let mut start_key = None;
        while messages.len() < limit {
            // BETWEEN includes `before` itself: one more slot for it, so a
            // page takes one Query, not a second for the one left out.
            let wanted = i32::try_from(limit - messages.len() + usize::from(before.is_some()))
                .unwrap_or(i32::MAX);
            let page_limit = self
                .config
                .page_size
                .map_or(wanted, |size| size.min(wanted));
            // Ids start with their 13-digit millisecond: the key condition
            // starts at the retention's edge, so expired messages that
            // DynamoDB has not deleted yet are not even read.
            let oldest = format!(
                "{:013}",
                crate::clock::now_ms().saturating_sub(self.config.message_ttl.as_millis() as u64)
            );
            // Nothing older than the retention is shown (and BETWEEN with
            // its bounds the wrong way round is an error).
            if before.is_some_and(|before| before <= oldest.as_str()) {
                break;
            }
            let mut query = self
                .client
                .query()
                .expression_attribute_names("#id", "id")
                .expression_attribute_values(":oldest", s(&oldest));
            if let Some(before) = before {
                // BETWEEN includes `before` itself, which is left out below.
                query = query
                    .key_condition_expression("#room = :room AND #id BETWEEN :oldest AND :before")
                    .expression_attribute_values(":before", s(before));
            } else {
                query = query.key_condition_expression("#room = :room AND #id > :oldest");
            }
            let page = query
                .table_name(&self.config.messages_table)
                .filter_expression(NOT_EXPIRED)
                .expression_attribute_names("#room", "room")
                .expression_attribute_names("#expires", TTL_ATTRIBUTE)
                .expression_attribute_values(":room", s(room))
                .expression_attribute_values(":now", n(now_s()))
                .scan_index_forward(false)
                // A joiner reads history after recording its membership;
                // a message saved before this read must be in it.
                .consistent_read(true)
                .limit(page_limit)
                .set_exclusive_start_key(start_key)
                .send()
                .await
                .map_err(backend("Query"))?;
            for item in page.items() {
                let message = self.message_from_item(item)?;
                if Some(message.id.as_str()) != before {
                    messages.push(message);
                }
            }
            start_key = page.last_evaluated_key;
            if start_key.is_none() {
                break;
            }
        }
        messages.truncate(limit);
        messages.reverse();
        Ok(messages)
    }
}

fn now_s() -> u64 {
    crate::clock::now_ms() / 1000
}

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// The gateway index holds keys only: cleanup needs nothing else.
fn gateway_projection() -> Projection {
    Projection::builder()
        .projection_type(ProjectionType::KeysOnly)
        .build()
}

fn key(name: &str, key_type: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(key_type)
        .build()
        .expect("key schema elements have both fields")
}

fn attribute(name: &str) -> AttributeDefinition {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .expect("attribute definitions have both fields")
}

fn optional_s<'a>(item: &'a Item, attribute: &str) -> Option<&'a str> {
    item.get(attribute)?.as_s().ok().map(String::as_str)
}

fn required_s<'a>(item: &'a Item, attribute: &str, table: &str) -> Result<&'a str, StoreError> {
    optional_s(item, attribute).ok_or_else(|| StoreError::Malformed {
        table: table.to_owned(),
        message: format!("missing string attribute {attribute}"),
    })
}

fn optional_n(item: &Item, attribute: &str) -> Option<u64> {
    item.get(attribute)?.as_n().ok()?.parse().ok()
}

fn required_n(item: &Item, attribute: &str, table: &str) -> Result<u64, StoreError> {
    item.get(attribute)
        .and_then(|value| value.as_n().ok())
        .and_then(|number| number.parse().ok())
        .ok_or_else(|| StoreError::Malformed {
            table: table.to_owned(),
            message: format!("missing numeric attribute {attribute}"),
        })
}

/// Maps a failed request to a store error that keeps the service's error
/// code and message (or, for a failure before any answer, its cause).
fn backend<E, R>(operation: &'static str) -> impl FnOnce(SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    move |error| {
        let message = match error.as_service_error() {
            Some(service) => format!(
                "{}: {}",
                service.code().unwrap_or("unknown error"),
                service.message().unwrap_or("no message")
            ),
            None => DisplayErrorContext(&error).to_string(),
        };
        StoreError::Backend { operation, message }
    }
}

/// Maps a failed waiter (a table that never became ready, or never went).
fn waiter<E: std::error::Error + 'static>(operation: &'static str) -> impl FnOnce(E) -> StoreError {
    move |error| StoreError::Backend {
        operation,
        message: DisplayErrorContext(&error).to_string(),
    }
}

fn build_error(error: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Backend {
        operation: "build request",
        message: error.to_string(),
    }
}

/// Whether a request failed only because its condition did not hold.
fn is_condition_failure<E: ProvideErrorMetadata, R>(error: &SdkError<E, R>) -> bool {
    error.as_service_error().and_then(|e| e.code()) == Some("ConditionalCheckFailedException")
}
