//! What each route costs in DynamoDB requests and frames pushed, counted on
//! the real SDK (an interceptor sees every request) against a real DynamoDB
//! API (dynoxide). The AWS path's numbers are pinned here: a change that adds
//! a round trip or a frame to Lambda's work fails this test. BENCHMARKS.md
//! quotes them.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use backend::chat::{Chat, ChatConfig};
use backend::pusher::local::{ConnectionInfo, LocalPusher, LocalSocket, Outgoing};
use backend::store::Store;
use backend::store::dynamodb::{DynamoStore, StoreConfig};
use backend::store::local::LocalStore;
use common::Dynamo;

/// Counts DynamoDB requests by operation, as sent (`X-Amz-Target`).
#[derive(Debug, Clone, Default)]
struct Requests(Arc<Mutex<BTreeMap<String, usize>>>);

impl Intercept for Requests {
    fn name(&self) -> &'static str {
        "count requests"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or("unknown");
        let mut operation = target.rsplit('.').next().unwrap_or(target).to_owned();
        // Strongly consistent reads cost twice as much, and correctness
        // depends on some of them: they are counted apart.
        let body = context.request().body().bytes().unwrap_or_default();
        if String::from_utf8_lossy(body).contains("\"ConsistentRead\":true") {
            operation.push_str(" (consistent)");
        }
        *self.0.lock().unwrap().entry(operation).or_default() += 1;
        Ok(())
    }
}

impl Requests {
    fn take(&self) -> BTreeMap<String, usize> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

fn event(route: &str, connection_id: &str, body: Option<&str>) -> ApiGatewayWebsocketProxyRequest {
    let mut event = ApiGatewayWebsocketProxyRequest::default();
    let context = &mut event.request_context;
    context.route_key = Some(route.into());
    context.event_type = Some(
        match route {
            "$connect" => "CONNECT",
            "$disconnect" => "DISCONNECT",
            _ => "MESSAGE",
        }
        .into(),
    );
    context.connection_id = Some(connection_id.into());
    // Each connection from an address of its own, as API Gateway reports it.
    context.identity.source_ip = Some(format!("198.51.100.{}", connection_id.len()));
    event.body = body.map(str::to_owned);
    event
}

struct Costs {
    requests: Requests,
    sockets: Vec<Arc<LocalSocket>>,
}

impl Costs {
    /// Frames pushed since the last call, over every socket.
    fn frames(&self) -> usize {
        self.sockets
            .iter()
            .map(|s| {
                s.take_queued()
                    .into_iter()
                    .filter(|item| matches!(item, Outgoing::Text(_)))
                    .count()
            })
            .sum()
    }
}

/// Drives a room of `members` through a join, a message and a disconnect
/// and returns, for each, the DynamoDB requests and frames it took.
async fn measure<S: Store>(
    make_store: impl FnOnce(DynamoStore) -> S,
    members: usize,
) -> Vec<(&'static str, BTreeMap<String, usize>, usize)> {
    let dynamo = Dynamo::start().await;
    let requests = Requests::default();
    let config = dynamo
        .client
        .config()
        .to_builder()
        .interceptor(requests.clone())
        .build();
    let dynamo_store = DynamoStore::new(
        aws_sdk_dynamodb::Client::from_conf(config),
        StoreConfig::default(),
    );
    dynamo_store.ensure_tables().await.unwrap();
    let pusher = LocalPusher::default();
    let chat = Chat::new(
        make_store(dynamo_store),
        pusher.clone(),
        ChatConfig::default(),
    );
    let mut costs = Costs {
        requests,
        sockets: Vec::new(),
    };
    // The room, already full but for the one measured.
    for i in 0..members {
        let id = format!("m{i}");
        costs
            .sockets
            .push(pusher.register(&id, ConnectionInfo::new(1, "127.0.0.1".into(), "t".into())));
        chat.handle(event("$connect", &id, None)).await;
        let join = format!(r#"{{"action":"join","room":"r","name":"m{i}"}}"#);
        chat.handle(event("join", &id, Some(&join))).await;
    }
    // Warm: the room's history has been read once.
    let _ = (costs.frames(), costs.requests.take());

    let mut rows = Vec::new();
    let id = "measured";
    costs
        .sockets
        .push(pusher.register(id, ConnectionInfo::new(1, "127.0.0.1".into(), "t".into())));
    chat.handle(event("$connect", id, None)).await;
    rows.push(("$connect", costs.requests.take(), costs.frames()));
    let join = r#"{"action":"join","room":"r","name":"Measured"}"#;
    assert_eq!(
        chat.handle(event("join", id, Some(join))).await.status_code,
        200
    );
    rows.push(("join", costs.requests.take(), costs.frames()));
    // At a person's pace: within half a second of the join, the rate limit
    // would take a second UpdateItem (BENCHMARKS.md).
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    // With a nonce, as the web app sends it: stored in the same write.
    let message = r#"{"action":"sendmessage","data":"hello","nonce":"n-1"}"#;
    assert_eq!(
        chat.handle(event("sendmessage", id, Some(message)))
            .await
            .status_code,
        200
    );
    rows.push(("sendmessage", costs.requests.take(), costs.frames()));
    chat.handle(event("$disconnect", id, None)).await;
    rows.push(("$disconnect", costs.requests.take(), costs.frames()));
    rows
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(op, n)| ((*op).to_owned(), *n)).collect()
}

fn print(title: &str, rows: &[(&str, BTreeMap<String, usize>, usize)]) {
    eprintln!("{title}");
    for (route, requests, frames) in rows {
        eprintln!("  {route:12} {requests:?} frames {frames}");
    }
}

#[tokio::test]
async fn the_aws_path_costs_what_it_did() {
    let rows = measure(|store| store, 5).await;
    print(
        "DynamoStore (Lambda, chat-local --store dynamodb), room of 5 + 1:",
        &rows,
    );
    let expected = [
        // The address's handshake count (which also says where its last
        // connection's rate limit left off), then the record.
        ("$connect", counts(&[("PutItem", 1), ("UpdateItem", 1)]), 0),
        // The rate limit's count, the membership, the member list (the
        // index: eventually consistent), the history (consistent: a message
        // saved before it must be in it); `joined` to the joiner and a
        // presence frame to each of the 5 others.
        (
            "join",
            counts(&[("UpdateItem", 2), ("Query", 1), ("Query (consistent)", 1)]),
            1 + 5,
        ),
        // The sender's record, read and counted against the rate limit in
        // one update; the message; the member list. One frame each.
        (
            "sendmessage",
            counts(&[("UpdateItem", 1), ("PutItem", 1), ("Query", 1)]),
            6,
        ),
        // The record (returned as it was) and the member list.
        ("$disconnect", counts(&[("DeleteItem", 1), ("Query", 1)]), 5),
    ];
    assert_eq!(rows, expected);
}

#[tokio::test]
async fn chat_local_keeps_only_messages_in_dynamodb() {
    let rows = measure(|store| LocalStore::new(store.clone(), store), 5).await;
    print("LocalStore (chat-local), room of 5 + 1:", &rows);
    let expected = [
        ("$connect", counts(&[]), 0),
        // History comes from memory once the room's has been read.
        ("join", counts(&[]), 1 + 5),
        // One message alone makes a batch of one.
        ("sendmessage", counts(&[("BatchWriteItem", 1)]), 6),
        ("$disconnect", counts(&[]), 5),
    ];
    assert_eq!(rows, expected);
}
