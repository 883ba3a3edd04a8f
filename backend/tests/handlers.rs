//! The handlers, fed recorded API Gateway WebSocket events (`testdata/`),
//! over the DynamoDB store (dynoxide) and the in-process pusher.

mod common;

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use aws_lambda_events::query_map::QueryMap;
use backend::chat::{Arrival, Chat, ChatConfig, OriginPolicy};
use backend::pusher::Frame;
use backend::pusher::local::{ConnectionInfo, LocalPusher, LocalSocket, Outgoing};
use backend::store::NewConnection;
use backend::store::Store;
use backend::store::dynamodb::DynamoStore;
use common::Dynamo;
use serde_json::{Value, json};
use shared::limits::SERVER_FRAME_MAX_BYTES;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// What the pusher queued for one socket, frame by frame.
struct Inbox {
    socket: Arc<LocalSocket>,
    frames: VecDeque<Frame>,
}

impl Inbox {
    fn try_recv(&mut self) -> Result<Frame, ()> {
        if self.frames.is_empty() {
            self.frames
                .extend(
                    self.socket
                        .take_queued()
                        .into_iter()
                        .filter_map(|item| match item {
                            Outgoing::Text(frame) => Some(frame),
                            Outgoing::Ping => None,
                        }),
                );
        }
        self.frames.pop_front().ok_or(())
    }
}

fn register(pusher: &LocalPusher, id: &str) -> Inbox {
    Inbox {
        socket: pusher.register(
            id,
            ConnectionInfo::new(1, "203.0.113.7".into(), "test".into()),
        ),
        frames: VecDeque::new(),
    }
}

struct Harness {
    chat: Chat<DynamoStore, LocalPusher>,
    _dynamo: Dynamo,
}

impl Harness {
    async fn new() -> Self {
        Self::with(ChatConfig::default()).await
    }

    async fn with(config: ChatConfig) -> Self {
        let dynamo = Dynamo::start().await;
        let store = DynamoStore::new(dynamo.client.clone(), dynamo.store_config());
        store.ensure_tables().await.unwrap();
        let chat = Chat::new(store, LocalPusher::default(), config);
        Self {
            chat,
            _dynamo: dynamo,
        }
    }

    /// `$connect` from the recorded event, with its query string replaced,
    /// for a connection that opened a minute ago.
    async fn connect(&self, id: &str, query: &[(&str, &str)]) -> (i64, Inbox) {
        let frames = register(self.chat.pusher(), id);
        let status = self
            .run_connect(id, query, backend::clock::now_ms() - 60_000)
            .await;
        (status, frames)
    }

    async fn run_connect(&self, id: &str, query: &[(&str, &str)], connected_at: u64) -> i64 {
        let mut event = recorded("connect.json", id);
        event.request_context.connected_at = connected_at as i64;
        let mut parameters: HashMap<String, Vec<String>> = HashMap::new();
        for (key, value) in query {
            parameters.insert((*key).into(), vec![(*value).into()]);
        }
        event.query_string_parameters = QueryMap::from(parameters);
        self.chat.handle(event).await.status_code
    }

    async fn send(&self, id: &str, route: &str, body: Value) -> i64 {
        let file = match route {
            "join" | "sendmessage" | "leave" => format!("{route}.json"),
            _ => "default.json".into(),
        };
        let mut event = recorded(&file, id);
        // By its own route, as API Gateway selects it.
        if route != "$default" && !["join", "sendmessage", "leave"].contains(&route) {
            event.request_context.route_key = Some(route.into());
        }
        event.body = Some(body.to_string());
        self.chat.handle(event).await.status_code
    }
}

/// A recorded event from `testdata/`, for connection `id`.
fn recorded(file: &str, id: &str) -> ApiGatewayWebsocketProxyRequest {
    let path = format!("{}/testdata/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut event: ApiGatewayWebsocketProxyRequest = serde_json::from_str(&text).unwrap();
    event.request_context.connection_id = Some(id.into());
    // Stamped now, as API Gateway would: a record from the recording's time
    // would expire (and drop out of queries) a few hours after it.
    if event.request_context.connected_at != 0 {
        event.request_context.connected_at = backend::clock::now_ms() as i64;
    }
    event
}

fn next(frames: &mut Inbox) -> Value {
    let frame = frames.try_recv().expect("a frame was pushed");
    serde_json::from_str(frame.as_str()).unwrap()
}

fn nothing(frames: &mut Inbox) {
    if let Ok(frame) = frames.try_recv() {
        panic!("unexpected frame {}", frame.as_str());
    }
}

#[tokio::test]
async fn recorded_events_drive_a_whole_chat() {
    let harness = Harness::new().await;

    // connect.json carries ?room=chat:1&name=Ada.
    let mut ada = register(harness.chat.pusher(), "Bq9ZrdMtDoEAcdA=");
    let connect = recorded("connect.json", "Bq9ZrdMtDoEAcdA=");
    let connected_at = connect.request_context.connected_at as u64;
    let response = harness.chat.handle(connect).await;
    assert_eq!(response.status_code, 200);
    let ada_id = "Bq9ZrdMtDoEAcdA=";
    let record = harness
        .chat
        .store()
        .connection(ada_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.room.as_deref(), Some("chat:1"));
    assert_eq!(
        record.connected_at, connected_at,
        "connectedAt from the event"
    );
    nothing(&mut ada);

    let (status, mut bo) = harness.connect("bo", &[]).await;
    assert_eq!(status, 200);
    let mut join = recorded("join.json", "bo");
    join.body = Some(r#"{"action":"join","room":"chat:1","name":"Bo"}"#.into());
    assert_eq!(harness.chat.handle(join).await.status_code, 200);
    let joined = next(&mut bo);
    assert_eq!(joined["type"], "joined");
    assert_eq!(joined["members"], json!(["Bo", "Ada"]));
    assert_eq!(next(&mut ada)["type"], "presence");

    // sendmessage.json from Ada reaches both, serialized once for both.
    assert_eq!(
        harness
            .chat
            .handle(recorded("sendmessage.json", ada_id))
            .await
            .status_code,
        200
    );
    let (to_ada, to_bo) = (ada.try_recv().unwrap(), bo.try_recv().unwrap());
    assert_eq!(to_ada, to_bo);
    assert_eq!(
        to_ada.as_bytes().as_ptr(),
        to_bo.as_bytes().as_ptr(),
        "one buffer, shared"
    );
    let message: Value = serde_json::from_str(to_bo.as_str()).unwrap();
    assert_eq!(message["data"], "hello <b>world</b>");
    assert_eq!(message["room"], "chat:1");

    // default.json is a ping; binary.json a base64-encoded binary frame.
    assert_eq!(
        harness
            .chat
            .handle(recorded("default.json", ada_id))
            .await
            .status_code,
        200
    );
    assert_eq!(next(&mut ada), json!({"type": "pong"}));
    harness.chat.handle(recorded("binary.json", ada_id)).await;
    assert_eq!(next(&mut ada)["code"], "bad_request");

    assert_eq!(
        harness
            .chat
            .handle(recorded("leave.json", ada_id))
            .await
            .status_code,
        200
    );
    assert_eq!(next(&mut ada), json!({"type": "left", "room": "chat:1"}));
    assert_eq!(next(&mut bo)["event"], "leave");

    // disconnect.json (status 1001) for Bo, after Ada rejoined via join.json.
    harness.chat.handle(recorded("join.json", ada_id)).await;
    assert_eq!(next(&mut ada)["type"], "joined");
    assert_eq!(next(&mut bo)["event"], "join");
    let response = harness.chat.handle(recorded("disconnect.json", "bo")).await;
    assert_eq!(response.status_code, 200);
    let presence = next(&mut ada);
    assert_eq!(
        (presence["event"].as_str(), presence["count"].as_u64()),
        (Some("leave"), Some(1))
    );
    assert!(
        harness
            .chat
            .store()
            .connection("bo")
            .await
            .unwrap()
            .is_none()
    );
    nothing(&mut ada);
    nothing(&mut bo);
}

#[tokio::test]
async fn a_refused_connect_is_a_400_and_records_nothing() {
    let harness = Harness::new().await;
    let (status, _) = harness.connect("c1", &[("room", "has spaces")]).await;
    assert_eq!(status, 400);
    let (status, _) = harness.connect("c2", &[("room", "ok"), ("name", "")]).await;
    assert_eq!(status, 400);
    assert!(
        harness
            .chat
            .store()
            .connection("c1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        harness
            .chat
            .store()
            .room_members("ok")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn gone_connections_are_forgotten_and_announced() {
    let harness = Harness::new().await;
    let mut sockets = Vec::new();
    for id in ["a", "b", "ghost"] {
        let (_, frames) = harness.connect(id, &[("room", "r"), ("name", id)]).await;
        sockets.push(frames);
    }
    // The ghost's socket vanishes without a $disconnect (API Gateway: 410).
    harness.chat.pusher().close("ghost", 1006, "gone");
    for frames in &mut sockets[..2] {
        while frames.try_recv().is_ok() {}
    }

    assert_eq!(
        harness
            .send(
                "a",
                "sendmessage",
                json!({"action": "sendmessage", "data": "hi"})
            )
            .await,
        200
    );
    for frames in &mut sockets[..2] {
        assert_eq!(next(frames)["type"], "message");
        let presence = next(frames);
        assert_eq!(
            presence,
            json!({"type": "presence", "event": "leave", "room": "r", "name": "ghost", "count": 2})
        );
    }
    assert!(
        harness
            .chat
            .store()
            .connection("ghost")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_push_during_connect_does_not_cost_the_connection_its_record() {
    let harness = Harness::new().await;
    let (_, mut bo) = harness
        .connect("bo", &[("room", "r"), ("name", "Bo")])
        .await;
    // Ada joins through the query string; until her `$connect` returns, API
    // Gateway answers pushes to her with 410 Gone (as chat-local does).
    let ada_socket = harness.chat.pusher().register_connecting(
        "ada",
        ConnectionInfo::new(1, "203.0.113.8".into(), "test".into()),
    );
    let mut ada = Inbox {
        socket: ada_socket.clone(),
        frames: VecDeque::new(),
    };
    let now = backend::clock::now_ms();
    assert_eq!(
        harness
            .run_connect("ada", &[("room", "r"), ("name", "Ada")], now)
            .await,
        200
    );
    assert_eq!(next(&mut bo)["event"], "join");
    // Bo speaks while Ada's `$connect` is, as far as the gateway knows,
    // still running: her push fails as gone, and she must not be forgotten.
    let say = json!({"action": "sendmessage", "data": "welcome"});
    assert_eq!(harness.send("bo", "sendmessage", say).await, 200);
    assert_eq!(next(&mut bo)["data"], "welcome");
    nothing(&mut bo);
    let record = harness.chat.store().connection("ada").await.unwrap();
    assert_eq!(record.and_then(|r| r.room).as_deref(), Some("r"));

    // Once open she gets what is sent, and can send herself.
    ada_socket.opened();
    let say = json!({"action": "sendmessage", "data": "again"});
    assert_eq!(harness.send("bo", "sendmessage", say).await, 200);
    assert_eq!(next(&mut ada)["data"], "again");
    let say = json!({"action": "sendmessage", "data": "hi Bo"});
    assert_eq!(harness.send("ada", "sendmessage", say).await, 200);
    assert_eq!(next(&mut ada)["data"], "hi Bo");
}

#[tokio::test]
async fn a_room_of_thousands_gets_every_message_once() {
    let harness = Harness::new().await;
    let (room, mut members) = (room_named("crowd"), Vec::new());
    for i in 0..2000 {
        let id = format!("m{i}");
        members.push(register(harness.chat.pusher(), &id));
        // Recorded straight in the store: 2000 joins would announce
        // themselves to each other 2 million times.
        let name = shared::Name::parse(&id).unwrap();
        harness
            .chat
            .store()
            .add_connection(&NewConnection::new(
                &id,
                backend::clock::now_ms(),
                Some((&room, &name)),
            ))
            .await
            .unwrap();
    }
    harness
        .send(
            "m0",
            "sendmessage",
            json!({"action": "sendmessage", "data": "to all"}),
        )
        .await;
    for frames in &mut members {
        assert_eq!(next(frames)["data"], "to all");
        nothing(frames);
    }
}

fn room_named(name: &str) -> shared::Room {
    shared::Room::parse(name).unwrap()
}

#[tokio::test]
async fn a_page_from_another_site_is_refused_before_anything_is_recorded() {
    let harness = Harness::with(ChatConfig {
        origins: OriginPolicy::only(["https://chat.example.com"]).unwrap(),
        ..ChatConfig::default()
    })
    .await;
    // connect.json joins chat:1 as Ada; a member already there hears of
    // every connect that gets in.
    let (status, mut member) = harness.connect("member", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        harness
            .send(
                "member",
                "join",
                json!({"action": "join", "room": "chat:1", "name": "Bo"})
            )
            .await,
        200
    );
    next(&mut member);
    let connect = |id: &str, origin: Option<&str>| {
        let mut event = recorded("connect.json", id);
        // A person of their own each: one name twice is announced once.
        event.query_string_parameters = QueryMap::from(HashMap::from([
            ("room".to_owned(), vec!["chat:1".to_owned()]),
            ("name".to_owned(), vec![id.to_owned()]),
        ]));
        if let Some(origin) = origin {
            event.headers.insert("origin", origin.parse().unwrap());
        }
        harness.chat.handle(event)
    };

    let refused = connect("evil", Some("https://evil.example")).await;
    assert_eq!(refused.status_code, 403);
    assert!(
        harness
            .chat
            .store()
            .connection("evil")
            .await
            .unwrap()
            .is_none()
    );
    nothing(&mut member);

    for (id, origin) in [("site", Some("https://chat.example.com")), ("tool", None)] {
        // A socket to push to, as API Gateway has once $connect succeeds.
        let _inbox = register(harness.chat.pusher(), id);
        assert_eq!(connect(id, origin).await.status_code, 200, "{origin:?}");
        assert!(harness.chat.store().connection(id).await.unwrap().is_some());
        assert_eq!(next(&mut member)["type"], "presence", "{origin:?}");
    }
}

#[tokio::test]
async fn history_pages_back_through_a_room_within_the_frame_limit() {
    // Each page counts against the rate limit; this reader pages quickly.
    let harness = Harness::with(ChatConfig {
        limits: backend::store::Limits::OFF,
        ..ChatConfig::default()
    })
    .await;
    let (status, mut ada) = harness.connect("ada", &[]).await;
    assert_eq!(status, 200);
    // Before joining there is no room to page through.
    harness
        .send("ada", "history", json!({"action": "history"}))
        .await;
    assert_eq!(next(&mut ada)["code"], "not_in_room");

    // 120 messages of up to 4 KB each, saved an hour ago and on.
    let store = harness.chat.store();
    let start = backend::clock::now_ms() - 3_600_000;
    let mut saved = Vec::new();
    for i in 0..120u64 {
        let message = shared::ChatMessage {
            id: format!("{:013}-{i:016x}", start + i),
            room: "pages".into(),
            name: "Bo".into(),
            data: if i % 7 == 0 {
                "\u{1}".repeat(4096)
            } else {
                format!("message {i}")
            },
            ts: start + i,
            nonce: None,
        };
        store.save_message(&message).await.unwrap();
        saved.push(message);
    }
    harness
        .send(
            "ada",
            "join",
            json!({"action": "join", "room": "pages", "name": "Ada"}),
        )
        .await;
    let joined = next(&mut ada);
    assert_eq!(joined["type"], "joined");
    let mut oldest = joined["history"][0]["id"].as_str().unwrap().to_owned();
    let mut seen: Vec<String> = joined["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();

    // Page back until the server says there is no more: every message once,
    // in order, every frame within API Gateway's limit.
    loop {
        harness
            .send(
                "ada",
                "history",
                json!({"action": "history", "before": oldest}),
            )
            .await;
        let frame = ada.try_recv().expect("a history frame");
        assert!(
            frame.as_str().len() <= SERVER_FRAME_MAX_BYTES,
            "{} bytes",
            frame.as_str().len()
        );
        let page: Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(page["type"], "history", "{page}");
        assert_eq!(page["room"], "pages");
        let ids: Vec<String> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(ids.iter().all(|id| *id < oldest), "only older messages");
        if let Some(first) = ids.first() {
            oldest = first.clone();
        }
        seen.splice(0..0, ids);
        if page["more"] == false {
            break;
        }
        assert!(seen.len() <= saved.len(), "the paging ends");
    }
    let expected: Vec<String> = saved.iter().map(|m| m.id.clone()).collect();
    assert_eq!(seen, expected, "every message once, oldest first");

    // A page with no `before` is the newest one.
    harness
        .send("ada", "history", json!({"action": "history"}))
        .await;
    let newest = next(&mut ada);
    assert_eq!(newest["more"], true);
    assert_eq!(
        newest["messages"].as_array().unwrap().last().unwrap()["id"],
        saved[119].id.as_str()
    );

    // A `before` that is not a message id is refused.
    harness
        .send(
            "ada",
            "history",
            json!({"action": "history", "before": "x y"}),
        )
        .await;
    assert_eq!(next(&mut ada)["code"], "bad_request");
    nothing(&mut ada);
}

#[tokio::test]
async fn gone_members_found_together_are_announced_in_one_frame() {
    let harness = Harness::new().await;
    let mut live = Vec::new();
    for id in ["a", "b"] {
        live.push(harness.connect(id, &[("room", "r"), ("name", id)]).await.1);
    }
    let mut ghosts = Vec::new();
    for id in ["g1", "g2", "g3"] {
        ghosts.push(harness.connect(id, &[("room", "r"), ("name", id)]).await.1);
    }
    // Three sockets vanish without a $disconnect (API Gateway: 410).
    for id in ["g1", "g2", "g3"] {
        harness.chat.pusher().close(id, 1006, "gone");
    }
    for frames in &mut live {
        while frames.try_recv().is_ok() {}
    }
    harness
        .send(
            "a",
            "sendmessage",
            json!({"action": "sendmessage", "data": "hi"}),
        )
        .await;
    for frames in &mut live {
        assert_eq!(next(frames)["type"], "message");
        let presence = next(frames);
        assert_eq!(presence["event"], "leave");
        assert_eq!(presence["count"], 2);
        let mut names = vec![presence["name"].as_str().unwrap().to_owned()];
        names.extend(
            presence["also"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_owned()),
        );
        names.sort();
        assert_eq!(names, ["g1", "g2", "g3"], "one frame names them all");
        nothing(frames);
    }
    for id in ["g1", "g2", "g3"] {
        assert!(harness.chat.store().connection(id).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn a_query_string_join_is_answered_before_its_room_is_told() {
    let harness = Harness::new().await;
    let (_, mut ada) = harness
        .connect("ada", &[("room", "r"), ("name", "Ada")])
        .await;
    let mut bo = register(harness.chat.pusher(), "bo");
    let mut event = recorded("connect.json", "bo");
    event.query_string_parameters = QueryMap::from(HashMap::from([
        ("room".to_owned(), vec!["r".to_owned()]),
        ("name".to_owned(), vec!["Bo".to_owned()]),
    ]));
    // $connect answers with the announcement still to do (on AWS another
    // invocation does it), so a big room never holds up the handshake.
    let (response, arrival) = harness.chat.handle_deferring(event).await;
    assert_eq!(response.status_code, 200);
    let arrival = arrival.expect("a connect-time join leaves an arrival to announce");
    assert_eq!(
        arrival,
        Arrival {
            connection_id: "bo".into(),
            room: "r".into(),
            name: "Bo".into(),
        }
    );
    // In the room already, not announced yet.
    assert_eq!(
        harness.chat.store().room_members("r").await.unwrap().len(),
        2
    );
    nothing(&mut ada);

    // What the announcing invocation gets, through JSON, as it is handed on.
    let arrival: Arrival = serde_json::from_value(serde_json::to_value(&arrival).unwrap()).unwrap();
    harness.chat.announce_arrival(&arrival).await;
    assert_eq!(
        next(&mut ada),
        json!({"type": "presence", "event": "join", "room": "r", "name": "Bo", "count": 2})
    );
    nothing(&mut bo);

    // An announcement that comes after the connection has gone (a late
    // invocation) is dropped: a join after its leave would be a ghost.
    let mut event = recorded("connect.json", "cy");
    event.query_string_parameters = QueryMap::from(HashMap::from([
        ("room".to_owned(), vec!["r".to_owned()]),
        ("name".to_owned(), vec!["Cy".to_owned()]),
    ]));
    let (_, late) = harness.chat.handle_deferring(event).await;
    harness.chat.disconnect("cy").await;
    harness.chat.announce_arrival(&late.unwrap()).await;
    assert_eq!(
        next(&mut ada)["event"],
        "leave",
        "the leave, and nothing after it"
    );
    nothing(&mut ada);

    // Without a room there is nothing to announce.
    let (_, arrival) = harness
        .chat
        .handle_deferring(recorded("default.json", "bo"))
        .await;
    assert_eq!(arrival, None);
}
