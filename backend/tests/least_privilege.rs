//! Each function's role in `template.yaml` allows exactly what its route's
//! code calls: the routes are run against a real DynamoDB API (dynoxide)
//! through the real SDK, down every path that reaches another call (members
//! found gone, a big room's count, refusals that close a connection, a
//! connect whose record cannot be written, rate limits on and off), and
//! every DynamoDB request, post and close is recorded with what it touched.
//! A grant no path uses fails this test, and so does a call no grant allows.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use aws_lambda_events::query_map::QueryMap;
use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use backend::chat::{Chat, ChatConfig, REFUSALS_BEFORE_CLOSE};
use backend::pusher::local::{ConnectionInfo, LocalPusher};
use backend::pusher::{Frame, PushError, Pusher};
use backend::store::Limits;
use backend::store::dynamodb::DynamoStore;
use common::Dynamo;
use serde_yaml::Value;

/// An action on a resource, named as the template names them: a table by
/// its logical id (`ConnectionsTable`, `ConnectionsTable/index/room-index`),
/// a Management API call by method (`POST @connections`), a function by its
/// logical id.
type Grant = (String, String);

#[derive(Clone, Default)]
struct Calls(Arc<Mutex<BTreeSet<Grant>>>);

impl Calls {
    fn add(&self, action: &str, resource: &str) {
        self.0
            .lock()
            .unwrap()
            .insert((action.to_owned(), resource.to_owned()));
    }

    fn take(&self) -> BTreeSet<Grant> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

/// Sees every DynamoDB request as sent, and can make the next PutItem on
/// the connections table fail (a store outage mid-connect).
#[derive(Clone)]
struct DynamoCalls {
    calls: Calls,
    tables: BTreeMap<String, &'static str>,
    fail_next_connection_put: Arc<AtomicBool>,
}

impl std::fmt::Debug for DynamoCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DynamoCalls")
    }
}

impl Intercept for DynamoCalls {
    fn name(&self) -> &'static str {
        "record calls"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        let target = request.headers().get("x-amz-target").unwrap_or_default();
        let operation = target.rsplit('.').next().unwrap_or(target);
        let body: serde_json::Value =
            serde_json::from_slice(request.body().bytes().unwrap_or_default())?;
        let mut tables: Vec<String> = match body["RequestItems"].as_object() {
            Some(items) => items.keys().cloned().collect(),
            None => vec![body["TableName"].as_str().unwrap_or_default().to_owned()],
        };
        for table in &mut tables {
            let logical = self
                .tables
                .get(table.as_str())
                .copied()
                .unwrap_or("unknown");
            *table = match body["IndexName"].as_str() {
                Some(index) => format!("{logical}/index/{index}"),
                None => logical.to_owned(),
            };
        }
        for table in &tables {
            self.calls.add(&format!("dynamodb:{operation}"), table);
        }
        if operation == "PutItem"
            && tables == ["ConnectionsTable"]
            && self.fail_next_connection_put.swap(false, Ordering::SeqCst)
        {
            return Err("the store is down (a test's fault)".into());
        }
        Ok(())
    }
}

/// The in-process pusher, recording what API Gateway would be asked.
#[derive(Clone)]
struct RecordingPusher {
    inner: LocalPusher,
    calls: Calls,
}

impl Pusher for RecordingPusher {
    async fn push(&self, connection_id: &str, frame: Frame) -> Result<(), PushError> {
        self.calls
            .add("execute-api:ManageConnections", "POST @connections");
        self.inner.push(connection_id, frame).await
    }

    async fn disconnect(&self, connection_id: &str) -> Result<(), PushError> {
        self.calls
            .add("execute-api:ManageConnections", "DELETE @connections");
        self.inner.disconnect(connection_id).await
    }
}

/// The route every call was made for, as the template names routes
/// (`announce` for the function `$connect` hands a `?room=` join to).
#[derive(Default)]
struct Needs(BTreeMap<String, BTreeSet<Grant>>);

struct Run {
    chat: Chat<DynamoStore, RecordingPusher>,
    calls: Calls,
    fail_next_connection_put: Arc<AtomicBool>,
    needs: Needs,
    _dynamo: Dynamo,
}

impl Run {
    async fn new(limits: Limits) -> Self {
        let dynamo = Dynamo::start().await;
        let calls = Calls::default();
        let store_config = dynamo.store_config();
        let recorder = DynamoCalls {
            calls: calls.clone(),
            tables: BTreeMap::from([
                (store_config.connections_table.clone(), "ConnectionsTable"),
                (store_config.messages_table.clone(), "MessagesTable"),
            ]),
            fail_next_connection_put: Arc::default(),
        };
        let fail_next_connection_put = Arc::clone(&recorder.fail_next_connection_put);
        let client = aws_sdk_dynamodb::Client::from_conf(
            dynamo
                .client
                .config()
                .to_builder()
                .interceptor(recorder)
                .build(),
        );
        let store = DynamoStore::new(client, store_config);
        store.ensure_tables().await.unwrap();
        calls.take();
        let pusher = RecordingPusher {
            inner: LocalPusher::default(),
            calls: calls.clone(),
        };
        let config = ChatConfig {
            limits,
            ..ChatConfig::default()
        };
        Self {
            chat: Chat::new(store, pusher, config),
            calls,
            fail_next_connection_put,
            needs: Needs::default(),
            _dynamo: dynamo,
        }
    }

    fn note(&mut self, route: &str) {
        let calls = self.calls.take();
        self.needs
            .0
            .entry(route.to_owned())
            .or_default()
            .extend(calls);
    }

    /// A connection that opened two minutes ago (old enough to be called
    /// gone when a push finds it so), from an address of its own.
    async fn connect(&mut self, id: &str, query: &[(&str, &str)]) -> i64 {
        self.chat.pusher().inner.register(
            id,
            ConnectionInfo::new(1, "198.51.100.1".into(), "test".into()),
        );
        let mut event = event("$connect", id, None);
        event.request_context.connected_at = (backend::clock::now_ms() - 120_000) as i64;
        event.query_string_parameters = QueryMap::from(
            query
                .iter()
                .map(|(key, value)| ((*key).to_owned(), vec![(*value).to_owned()]))
                .collect::<std::collections::HashMap<_, _>>(),
        );
        let (response, arrival) = self.chat.handle_deferring(event).await;
        if let Some(arrival) = arrival {
            // chat-lambda hands it on with one Invoke.
            self.calls.add("lambda:InvokeFunction", "AnnounceFunction");
            self.note("$connect");
            self.chat.announce_arrival(&arrival).await;
            self.note("announce");
        } else {
            self.note("$connect");
        }
        response.status_code
    }

    async fn send(&mut self, route: &str, id: &str, body: &str) {
        self.chat.handle(event(route, id, Some(body))).await;
        self.note(route);
    }

    async fn join(&mut self, id: &str, room: &str) {
        let join = format!(r#"{{"action":"join","room":"{room}","name":"{id}"}}"#);
        self.send("join", id, &join).await;
    }

    async fn disconnect(&mut self, id: &str) {
        self.chat.handle(event("$disconnect", id, None)).await;
        self.note("$disconnect");
    }

    /// A member of `room` whose socket is gone without a `$disconnect`: the
    /// next fan-out to the room finds it so.
    async fn gone_member(&mut self, id: &str, room: &str) {
        self.connect(id, &[]).await;
        self.join(id, room).await;
        self.chat
            .pusher()
            .inner
            .close(id, 1000, "vanished without a $disconnect");
    }

    /// Every path each route can take.
    async fn every_path(&mut self) {
        // A small room, and one big enough to hear counts instead.
        for id in ["a", "b"] {
            self.connect(id, &[]).await;
            self.join(id, "r").await;
        }
        for i in 0..=backend::chat::PRESENCE_NOTICES_UP_TO {
            let id = format!("crowd{i}");
            self.connect(&id, &[]).await;
            self.join(&id, "big").await;
        }
        // Each route's fan-out finds a member gone.
        self.gone_member("g1", "r").await;
        self.connect("c", &[("room", "r"), ("name", "C")]).await;
        self.gone_member("g2", "r").await;
        self.connect("d", &[]).await;
        self.join("d", "r").await;
        self.gone_member("g3", "r").await;
        self.send(
            "sendmessage",
            "a",
            r#"{"action":"sendmessage","data":"hi"}"#,
        )
        .await;
        self.gone_member("g4", "r").await;
        self.send("leave", "b", r#"{"action":"leave"}"#).await;
        self.gone_member("g5", "r").await;
        self.disconnect("d").await;
        self.send("history", "a", r#"{"action":"history"}"#).await;
        self.send("$default", "a", r#"{"action":"ping"}"#).await;
        self.send("$default", "a", r#"{"action":"members"}"#).await;
        // One person twice (two tabs): the second tab's join, one tab's
        // leave and the other's disconnect each read the twin's record.
        for id in ["twin1", "twin2"] {
            self.connect(id, &[]).await;
            let join = r#"{"action":"join","room":"r","name":"Twin"}"#;
            self.send("join", id, join).await;
        }
        self.send("leave", "twin1", r#"{"action":"leave"}"#).await;
        self.send(
            "join",
            "twin1",
            r#"{"action":"join","room":"r","name":"Twin"}"#,
        )
        .await;
        self.disconnect("twin2").await;
        // The big room: its count, whoever comes or goes.
        self.connect("e", &[("room", "big"), ("name", "E")]).await;
        self.disconnect("crowd0").await;
        self.gone_member("g6", "big").await;
        self.disconnect("crowd1").await;
        // A connect whose record cannot be written is undone.
        self.fail_next_connection_put.store(true, Ordering::SeqCst);
        assert_eq!(self.connect("f", &[]).await, 500);
        // Refused until closed, on every route that can refuse.
        let refused = [
            ("join", r#"{"action":"join","room":"","name":"x"}"#),
            ("sendmessage", r#"{"action":"sendmessage"}"#),
            ("leave", r#"{"action":"leave"}"#),
            ("history", r#"{"action":"history","before":7}"#),
            ("$default", "not json"),
        ];
        for (route, body) in refused {
            let id = format!("refused-{route}");
            self.connect(&id, &[]).await;
            for _ in 0..REFUSALS_BEFORE_CLOSE {
                self.send(route, &id, body).await;
            }
        }
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
    // An address of its own each time: the handshake limit is not what is
    // measured.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    context.identity.source_ip = Some(format!("10.{}.{}.{}", n >> 16 & 255, n >> 8 & 255, n & 255));
    event.body = body.map(str::to_owned);
    event
}

/// What each function's role allows, by route: `Resources` of
/// `template.yaml` followed from each route to its integration, function
/// and role. Log statements are checked apart: only the function's own
/// group, never creating one.
fn granted() -> BTreeMap<String, BTreeSet<Grant>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml");
    let template: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let resources = template["Resources"].as_mapping().unwrap();
    let resource = |id: &str| {
        resources
            .get(id)
            .unwrap_or_else(|| panic!("no resource {id}"))
    };
    let mut functions: BTreeMap<String, String> = BTreeMap::new();
    for (_, route) in resources {
        if route["Type"] != "AWS::ApiGatewayV2::Route" {
            continue;
        }
        let key = route["Properties"]["RouteKey"].as_str().unwrap();
        let integration = references(&route["Properties"]["Target"]).remove(0);
        let uri = &resource(&integration)["Properties"]["IntegrationUri"];
        let function = references(uri)
            .into_iter()
            .find_map(|r| r.strip_suffix(".Arn").map(str::to_owned))
            .unwrap();
        functions.insert(key.to_owned(), function);
    }
    let announce = references(
        &resource("ConnectFunction")["Properties"]["Environment"]["Variables"]["ANNOUNCE_FUNCTION"],
    )
    .remove(0);
    functions.insert("announce".into(), announce);

    let mut grants = BTreeMap::new();
    for (route, function) in functions {
        let properties = &resource(&function)["Properties"];
        assert!(
            properties.get("Policies").is_none(),
            "{function}: SAM's policies would come with a role that may create log groups"
        );
        let role = references(&properties["Role"]).remove(0);
        let role = role.strip_suffix(".Arn").unwrap();
        let logs = references(&properties["LoggingConfig"]["LogGroup"]).remove(0);
        let mut allowed = BTreeSet::new();
        for policy in resource(role)["Properties"]["Policies"]
            .as_sequence()
            .unwrap()
        {
            for statement in policy["PolicyDocument"]["Statement"].as_sequence().unwrap() {
                assert_eq!(statement["Effect"], "Allow");
                let actions: Vec<&str> = match &statement["Action"] {
                    Value::Sequence(actions) => {
                        actions.iter().map(|a| a.as_str().unwrap()).collect()
                    }
                    action => vec![action.as_str().unwrap()],
                };
                let target = resource_name(&statement["Resource"]);
                for action in actions {
                    if action.starts_with("logs:") {
                        assert_eq!(target, logs, "{function} logs elsewhere than its group");
                        assert_ne!(action, "logs:CreateLogGroup", "{function}");
                        continue;
                    }
                    allowed.insert((action.to_owned(), target.clone()));
                }
            }
        }
        grants.insert(route, allowed);
    }
    grants
}

/// A statement's resource as the recorder names it.
fn resource_name(resource: &Value) -> String {
    let reference = references(resource).remove(0);
    let text = match resource {
        Value::Tagged(tagged) => tagged.value.as_str().unwrap_or_default().to_owned(),
        _ => String::new(),
    };
    if let Some(method) = ["POST", "DELETE", "GET"]
        .into_iter()
        .find(|method| text.ends_with(&format!("/{method}/@connections/*")))
    {
        return format!("{method} @connections");
    }
    let logical = reference.strip_suffix(".Arn").unwrap_or(&reference);
    match text.split_once("}/index/") {
        Some((_, index)) => format!("{logical}/index/{index}"),
        None => logical.to_owned(),
    }
}

/// The logical ids a `!Ref`, `!GetAtt` or `!Sub` names (`${Name}`, and
/// `Name.Arn` as written).
fn references(value: &Value) -> Vec<String> {
    match value {
        Value::Tagged(tagged) if tagged.tag == "Ref" || tagged.tag == "GetAtt" => {
            vec![tagged.value.as_str().unwrap().to_owned()]
        }
        Value::Tagged(tagged) if tagged.tag == "Sub" => {
            let mut text = tagged.value.as_str().unwrap();
            let mut found = Vec::new();
            while let Some(start) = text.find("${") {
                let rest = &text[start + 2..];
                let end = rest.find('}').unwrap();
                if !rest[..end].starts_with("AWS::") {
                    found.push(rest[..end].to_owned());
                }
                text = &rest[end + 1..];
            }
            found
        }
        other => panic!("not a reference: {other:?}"),
    }
}

#[tokio::test]
async fn each_function_may_do_what_its_route_does_and_nothing_more() {
    let mut needed: BTreeMap<String, BTreeSet<Grant>> = BTreeMap::new();
    // The template's RateLimit: on (the default), or 0 (load tests); and
    // the handshake limit off alone, as the functions' environment allows
    // (`HANDSHAKE_RATE_LIMIT=0`).
    let on = Limits::with_connection(100.0, 100).unwrap();
    let without_handshakes = Limits {
        handshakes: None,
        ..on
    };
    for limits in [on, Limits::OFF, without_handshakes] {
        let mut run = Run::new(limits).await;
        run.every_path().await;
        for (route, calls) in run.needs.0 {
            needed.entry(route).or_default().extend(calls);
        }
    }
    let granted = granted();
    assert_eq!(
        granted.keys().collect::<Vec<_>>(),
        needed.keys().collect::<Vec<_>>(),
        "every route was run"
    );
    let mut wrong = Vec::new();
    for (route, needs) in &needed {
        let grants = &granted[route];
        for missing in needs.difference(grants) {
            wrong.push(format!(
                "{route} calls {missing:?}, which its role does not allow"
            ));
        }
        for unused in grants.difference(needs) {
            wrong.push(format!(
                "{route}'s role allows {unused:?}, which it never calls"
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}
