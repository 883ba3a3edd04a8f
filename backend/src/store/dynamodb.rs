//! The DynamoDB adapter: two tables, no Scan, every Query paged to the end.
//!
//! - connections: hash key `connectionId`; `room`, `name`, `connectedAt`
//!   (ms), `expiresAt` (TTL, s), `rateFullAt` (the rate limit's state, µs).
//!   The GSI `room-index` (hash key `room`)
//!   projects only `name`, which is all fan-out and the member list need; it
//!   is sparse, so connections outside any room cost it nothing.
//! - messages: hash key `room`, sort key `id` (time-ordered and unique);
//!   `name`, `data`, `ts` (ms), `expiresAt` (TTL, s).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, PutRequest, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TimeToLiveSpecification,
    WriteRequest,
};
use shared::{ChatMessage, Name, Room};

use super::{Admission, Connection, Member, Members, RateLimit, Store, StoreError};

pub const ROOM_INDEX: &str = "room-index";
const TTL_ATTRIBUTE: &str = "expiresAt";
/// DynamoDB deletes expired items within days, not at once; until then
/// queries still return them, so each query leaves them out itself (an item
/// without the attribute, from an older table, stays). History queries also
/// start at the retention's edge by key, so expired messages are not even
/// read.
const NOT_EXPIRED: &str = "attribute_not_exists(#expires) OR #expires > :now";
/// The rate limit's state: when the connection's bucket is full again (µs).
const RATE_ATTRIBUTE: &str = "rateFullAt";
/// DynamoDB's limit of items per BatchWriteItem.
pub const BATCH_WRITE_MAX: usize = 25;
/// Rounds of retrying unprocessed items before a batch counts as failed.
const BATCH_WRITE_ATTEMPTS: u32 = 8;
const BATCH_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub type Item = HashMap<String, AttributeValue>;

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
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            connections_table: "chat-connections".into(),
            messages_table: "chat-messages".into(),
            connection_ttl: Duration::from_secs(3 * 3600),
            message_ttl: Duration::from_secs(30 * 24 * 3600),
            page_size: None,
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

    /// Creates both tables (with their TTL) where they do not exist yet.
    pub async fn ensure_tables(&self) -> Result<(), StoreError> {
        if !self.table_exists(&self.config.connections_table).await? {
            self.create_connections_table().await?;
        }
        self.ensure_messages_table().await
    }

    /// Creates the messages table (with its TTL) if it does not exist yet.
    pub async fn ensure_messages_table(&self) -> Result<(), StoreError> {
        if !self.table_exists(&self.config.messages_table).await? {
            self.create_messages_table().await?;
        }
        Ok(())
    }

    /// Drops every connection record by recreating the table: records of a
    /// previous chat-local run name sockets that no longer exist, and a table
    /// swap forgets them without a Scan.
    pub async fn reset_connections(&self) -> Result<(), StoreError> {
        let table = &self.config.connections_table;
        if self.table_exists(table).await? {
            self.client
                .delete_table()
                .table_name(table)
                .send()
                .await
                .map_err(backend("DeleteTable"))?;
            self.client
                .wait_until_table_not_exists()
                .table_name(table)
                .wait(Duration::from_secs(120))
                .await
                .map_err(waiter("DescribeTable"))?;
        }
        self.create_connections_table().await
    }

    async fn table_exists(&self, table: &str) -> Result<bool, StoreError> {
        match self.client.describe_table().table_name(table).send().await {
            Ok(_) => Ok(true),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                Ok(false)
            }
            Err(error) => Err(backend("DescribeTable")(error)),
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
        self.client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute("connectionId"))
            .attribute_definitions(attribute("room"))
            .key_schema(key("connectionId", KeyType::Hash))
            .global_secondary_indexes(room_index)
            .send()
            .await
            .map_err(backend("CreateTable"))?;
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
            .expression_attribute_names("#room", "room")
            .return_values(ReturnValue::AllOld);
        for (placeholder, value) in values {
            request = request.expression_attribute_values(placeholder, value);
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
            Err(error)
                if error.as_service_error().and_then(|e| e.code())
                    == Some("ConditionalCheckFailedException") =>
            {
                Ok(None)
            }
            Err(error) => Err(backend(operation)(error)),
        }
    }

    /// An UpdateItem on a connection record if `condition` holds: the record
    /// after it, or the record as it stood when the condition failed (`None`
    /// when there is none).
    async fn update_if(
        &self,
        connection_id: &str,
        update: &str,
        condition: &str,
        values: [(&str, AttributeValue); 2],
    ) -> Result<Result<Item, Option<Item>>, StoreError> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.config.connections_table)
            .key("connectionId", s(connection_id))
            .update_expression(update)
            .condition_expression(condition)
            .expression_attribute_names("#full", RATE_ATTRIBUTE)
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
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
        })
    }

    /// A message as the messages table stores it.
    pub fn message_item(&self, message: &ChatMessage) -> Item {
        HashMap::from([
            ("room".to_owned(), s(&message.room)),
            ("id".to_owned(), s(&message.id)),
            ("name".to_owned(), s(&message.name)),
            ("data".to_owned(), s(&message.data)),
            ("ts".to_owned(), n(message.ts)),
            (
                TTL_ATTRIBUTE.to_owned(),
                self.expiry(message.ts, self.config.message_ttl),
            ),
        ])
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

    fn expiry(&self, now_ms: u64, ttl: Duration) -> AttributeValue {
        n(now_ms / 1000 + ttl.as_secs())
    }
}

impl Store for DynamoStore {
    async fn add_connection(
        &self,
        connection_id: &str,
        connected_at: u64,
        membership: Option<(&Room, &Name)>,
    ) -> Result<(), StoreError> {
        let mut request = self
            .client
            .put_item()
            .table_name(&self.config.connections_table)
            .item("connectionId", s(connection_id))
            .item("connectedAt", n(connected_at))
            .item(
                TTL_ATTRIBUTE,
                self.expiry(connected_at, self.config.connection_ttl),
            );
        if let Some((room, name)) = membership {
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

    /// The limit's state is one number in the connection record (see
    /// [`RateLimit`]). Update expressions have no `max`, so the two cases of
    /// the algorithm are two conditional updates, tried in the order that
    /// makes the usual case one round trip: someone typing sends slower than
    /// the rate, so their bucket is full again by their next message. Only
    /// a message within a burst needs the second update; one over the limit
    /// is refused from what the first one's failure returns.
    async fn admit_message(
        &self,
        connection_id: &str,
        limit: Option<&RateLimit>,
        now_us: u64,
    ) -> Result<Admission, StoreError> {
        let Some(limit) = limit else {
            return Ok(self
                .connection(connection_id)
                .await?
                .map_or(Admission::Unknown, Admission::Admitted));
        };
        let admitted = |item: Item| self.connection_from_item(&item).map(Admission::Admitted);
        let refill = self
            .update_if(
                connection_id,
                "SET #full = :next",
                "attribute_exists(connectionId) AND (attribute_not_exists(#full) OR #full <= :now)",
                [
                    (":next", n(now_us.saturating_add(limit.interval_us()))),
                    (":now", n(now_us)),
                ],
            )
            .await?;
        let full_again_us = match refill {
            Ok(item) => return admitted(item),
            Err(None) => return Ok(Admission::Unknown),
            Err(Some(item)) => required_n(&item, RATE_ATTRIBUTE, &self.config.connections_table)?,
        };
        if limit.admit(full_again_us, now_us).is_none() {
            return Ok(Admission::Limited);
        }
        let within_burst = self
            .update_if(
                connection_id,
                "SET #full = #full + :interval",
                "attribute_exists(connectionId) AND #full <= :latest",
                [
                    (":interval", n(limit.interval_us())),
                    (":latest", n(now_us.saturating_add(limit.tolerance_us()))),
                ],
            )
            .await?;
        match within_burst {
            Ok(item) => admitted(item),
            Err(None) => Ok(Admission::Unknown),
            // Another message of this connection got there first.
            Err(Some(_)) => Ok(Admission::Limited),
        }
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

    async fn room_members(&self, room: &str) -> Result<Members, StoreError> {
        let table = &self.config.connections_table;
        let mut members = Vec::new();
        let mut start_key = None;
        loop {
            let page = self
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
                .set_exclusive_start_key(start_key)
                .send()
                .await
                .map_err(backend("Query"))?;
            for item in page.items() {
                members.push(Member {
                    connection_id: required_s(item, "connectionId", table)?.into(),
                    name: required_s(item, "name", table)?.into(),
                });
            }
            start_key = page.last_evaluated_key;
            if start_key.is_none() {
                return Ok(members.into());
            }
        }
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
            let wanted = i32::try_from(limit - messages.len()).unwrap_or(i32::MAX);
            let page_limit = self
                .config
                .page_size
                .map_or(wanted, |size| size.min(wanted));
            // Ids start with their 13-digit millisecond: the key condition
            // starts at the retention's edge, so expired messages that
            // DynamoDB has not deleted yet are not even read.
            let oldest = format!(
                "{:013}",
                crate::chat::now_ms().saturating_sub(self.config.message_ttl.as_millis() as u64)
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
    crate::chat::now_ms() / 1000
}

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
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
