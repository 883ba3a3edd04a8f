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
use backend::store::dynamodb::DynamoStore;
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
        dynamo.store_config(),
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
    for (route, body) in [
        ("ping", r#"{"action":"ping"}"#),
        ("members", r#"{"action":"members"}"#),
    ] {
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        chat.handle(event("$default", id, Some(body))).await;
        rows.push((route, costs.requests.take(), costs.frames()));
    }
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
        // The rate limit's count, the membership, the name's presence
        // count and the record read again (a disconnect at the same moment
        // may have been counted first), the member list (the index:
        // eventually consistent), the history (consistent: a message saved
        // before it must be in it); `joined` to the joiner and a presence
        // frame to each of the 5 others.
        (
            "join",
            counts(&[
                ("UpdateItem", 3),
                ("GetItem (consistent)", 1),
                ("Query", 1),
                ("Query (consistent)", 1),
            ]),
            1 + 5,
        ),
        // The sender's record, read and counted against the rate limit in
        // one update; the message; the member list. One frame each.
        (
            "sendmessage",
            counts(&[("UpdateItem", 1), ("PutItem", 1), ("Query", 1)]),
            6,
        ),
        // Counted against the rate limit like a message; a pong.
        ("ping", counts(&[("UpdateItem", 1)]), 1),
        // Counted, and the member list; one frame.
        ("members", counts(&[("UpdateItem", 1), ("Query", 1)]), 1),
        // The record (returned as it was), the name's presence count, and
        // (its last connection gone) the member list.
        (
            "$disconnect",
            counts(&[("DeleteItem", 1), ("UpdateItem", 1), ("Query", 1)]),
            5,
        ),
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
        ("ping", counts(&[]), 1),
        ("members", counts(&[]), 1),
        ("$disconnect", counts(&[]), 5),
    ];
    assert_eq!(rows, expected);
}

/// A room of `size`, everyone joined by name, over `store`; each member's
/// socket, by connection id.
async fn room_of<S: Store>(
    chat: &Chat<S, LocalPusher>,
    size: usize,
) -> BTreeMap<String, Arc<LocalSocket>> {
    let mut sockets = BTreeMap::new();
    for i in 0..size {
        let id = format!("m{i}");
        sockets.insert(id.clone(), register(chat.pusher(), &id));
        chat.handle(event("$connect", &id, None)).await;
        let join = format!(r#"{{"action":"join","room":"r","name":"m{i}"}}"#);
        chat.handle(event("join", &id, Some(&join))).await;
    }
    sockets
}

fn register(pusher: &LocalPusher, id: &str) -> Arc<LocalSocket> {
    pusher.register(id, ConnectionInfo::new(1, "127.0.0.1".into(), "t".into()))
}

/// The frames queued on `sockets` since the last call, by type.
fn frames_by_type(sockets: &BTreeMap<String, Arc<LocalSocket>>) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for socket in sockets.values() {
        for item in socket.take_queued() {
            if let Outgoing::Text(frame) = item {
                let frame: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
                *kinds
                    .entry(frame["type"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
    }
    kinds
}

/// One person reconnecting as API Gateway makes everyone do every 2 hours:
/// the new connection joins as the same name, and the old one closes,
/// before or after.
async fn reconnect<S: Store>(
    chat: &Chat<S, LocalPusher>,
    sockets: &mut BTreeMap<String, Arc<LocalSocket>>,
    old: &str,
    name: &str,
    new: &str,
    old_closes_first: bool,
) {
    if old_closes_first {
        chat.handle(event("$disconnect", old, None)).await;
    }
    sockets.insert(new.to_owned(), register(chat.pusher(), new));
    chat.handle(event("$connect", new, None)).await;
    let join = format!(r#"{{"action":"join","room":"r","name":"{name}"}}"#);
    chat.handle(event("join", new, Some(&join))).await;
    if !old_closes_first {
        chat.handle(event("$disconnect", old, None)).await;
    }
    sockets.remove(old);
}

/// Presence posts per reconnect are bounded: none when the new connection
/// comes before the old one goes, two fan-outs in a small room when it
/// comes after, and in a room too big for notices one count fan-out a
/// minute however many reconnect: not N² a second.
async fn presence_posts_per_reconnect_are_bounded<S: Store>(store: S) {
    // Everyone from a few addresses: the handshake limit is not measured.
    let config = ChatConfig {
        limits: backend::store::Limits::OFF,
        ..ChatConfig::default()
    };
    let chat = Chat::new(store, LocalPusher::default(), config);
    let mut sockets = room_of(&chat, 50).await;
    frames_by_type(&sockets);

    reconnect(&chat, &mut sockets, "m7", "m7", "m7-again", false).await;
    let frames = frames_by_type(&sockets);
    assert_eq!(
        frames,
        counts(&[("joined", 1)]),
        "the same person came back first"
    );

    reconnect(&chat, &mut sockets, "m8", "m8", "m8-again", true).await;
    let frames = frames_by_type(&sockets);
    assert_eq!(
        frames,
        counts(&[("joined", 1), ("presence", 2 * 49)]),
        "gone, then back: a leave and a join to the 49 others"
    );

    // A big room: past 100 people, arrivals are counted, not announced.
    for i in 50..150 {
        let id = format!("m{i}");
        sockets.insert(id.clone(), register(chat.pusher(), &id));
        chat.handle(event("$connect", &id, None)).await;
        let join = format!(r#"{{"action":"join","room":"r","name":"m{i}"}}"#);
        chat.handle(event("join", &id, Some(&join))).await;
    }
    let frames = frames_by_type(&sockets);
    // Joins 51 to 101 were announced to the room as it was (at most 100
    // before each); from the 102nd the room was big on both sides of a
    // change, and the count went out once, to the 101 others.
    let announced: usize = (50..101).sum();
    assert_eq!(
        frames,
        counts(&[("joined", 100), ("presence", announced), ("count", 101)]),
    );
    for i in 0..20 {
        let old = format!("m{}", 100 + i);
        let new = format!("m{}-again", 100 + i);
        reconnect(&chat, &mut sockets, &old, &old, &new, true).await;
    }
    let frames = frames_by_type(&sockets);
    assert_eq!(
        frames,
        counts(&[("joined", 20)]),
        "20 reconnects in a big room within a minute: no presence post at all"
    );
    // Names on request: all of them, one frame.
    chat.handle(event("$default", "m0", Some(r#"{"action":"members"}"#)))
        .await;
    let listed = sockets["m0"].take_queued();
    let Some(Outgoing::Text(listed)) = listed.front() else {
        panic!("no members frame: {listed:?}");
    };
    let listed: serde_json::Value = serde_json::from_str(listed.as_str()).unwrap();
    assert_eq!(listed["type"], "members");
    assert_eq!(listed["count"], 150);
    assert_eq!(listed["members"].as_array().unwrap().len(), 150);
    assert_eq!(listed["members"][0], "m0", "the asker first");
}

#[tokio::test]
async fn presence_posts_per_reconnect_are_bounded_on_dynamodb() {
    let dynamo = Dynamo::start().await;
    let store = DynamoStore::new(dynamo.client.clone(), dynamo.store_config());
    store.ensure_tables().await.unwrap();
    presence_posts_per_reconnect_are_bounded(store).await;
}

#[tokio::test]
async fn presence_posts_per_reconnect_are_bounded_in_chat_local() {
    let dynamo = Dynamo::start().await;
    let store = DynamoStore::new(dynamo.client.clone(), dynamo.store_config());
    store.ensure_tables().await.unwrap();
    presence_posts_per_reconnect_are_bounded(LocalStore::new(store.clone(), store)).await;
}
