//! Hostile input, generated: client frames through the parser and through
//! the whole handler (in-memory connections, messages in dynoxide), and raw
//! bytes through chat-local's WebSocket decoder.
//!
//! Nothing may panic; every frame is a valid action or gets an `error` frame
//! with the code the parser gives it; every frame the server sends is valid
//! and within the size limit. `PROPTEST_CASES` sets the number of cases (256
//! by default, a few seconds); the million-case run is in BENCHMARKS.md.

mod common;

use std::collections::VecDeque;
use std::sync::Arc;

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use backend::chat::{Chat, ChatConfig};
use backend::local::websocket::{Decoder, Incoming, Limits};
use backend::pusher::local::{ConnectionInfo, LocalPusher, LocalSocket, Outgoing};
use backend::store::dynamodb::DynamoStore;
use backend::store::local::LocalStore;
use common::Dynamo;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use shared::limits::SERVER_FRAME_MAX_BYTES;
use shared::{ClientFrame, ServerFrame};

/// A JSON string literal: the protocol's own words, escapes JSON allows but
/// Rust strings cannot hold (lone surrogates), control characters, long
/// strings, and anything at all.
fn string_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "join",
            "sendmessage",
            "leave",
            "ping",
            "members",
            "lobby",
            "chat:1",
            "Ada",
            "",
            " ",
            "\u{200b}",
            "\u{202e}evil",
            "a\u{0}b",
            "\u{1b}[31m",
            "é",
            "🎉",
            "n0nce_-",
            "nonce-nonce-nonce-nonce-nonce-123",
        ])
        .prop_map(|word| serde_json::to_string(word).unwrap()),
        prop::sample::select(vec![
            r#""\ud800""#,
            r#""\udfff\ud800""#,
            r#""a\u0000b""#,
            r#""\uD83D\uDE00""#,
            r#""\x""#,
            r#""unterminated"#,
        ])
        .prop_map(str::to_owned),
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        (1usize..70_000).prop_map(|n| serde_json::to_string(&"x".repeat(n)).unwrap()),
    ]
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "1e999999",
            "-0",
            "123456789012345678901234567890",
            "0.0000000000000000000001",
            "NaN",
            "01",
        ])
        .prop_map(str::to_owned),
    ]
}

/// JSON-ish text, nested, with duplicate keys and the protocol's field names.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        number(),
        string_literal(),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(|items| format!("[{}]", items.join(","))),
            vec((key(), inner), 0..6).prop_map(|fields| {
                let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            r#""action""#,
            r#""room""#,
            r#""name""#,
            r#""data""#,
            r#""type""#,
            r#""nonce""#
        ])
        .prop_map(str::to_owned),
        string_literal(),
    ]
}

/// One client frame's text.
fn client_text() -> impl Strategy<Value = String> {
    prop_oneof![
        // Shaped like the protocol, with any value in any field.
        (
            prop_oneof![string_literal(), json_value()],
            prop_oneof![string_literal(), json_value()],
            prop_oneof![string_literal(), json_value()],
            prop_oneof![string_literal(), json_value()],
            prop_oneof![string_literal(), json_value()],
            prop_oneof![string_literal(), json_value()],
        )
            .prop_map(|(action, room, name, data, before, nonce)| format!(
                r#"{{"action":{action},"room":{room},"name":{name},"data":{data},"before":{before},"nonce":{nonce}}}"#
            )),
        // The valid frames themselves, so the handler's paths are all taken.
        prop::sample::select(vec![
            r#"{"action":"join","room":"fuzz","name":"Fuzzy"}"#,
            r#"{"action":"sendmessage","data":"hello"}"#,
            r#"{"action":"sendmessage","data":"hello","nonce":"k-1_x"}"#,
            r#"{"action":"leave"}"#,
            r#"{"action":"ping"}"#,
            r#"{"action":"history"}"#,
            r#"{"action":"history","before":"9999999999999-ffffffffffffffff"}"#,
        ])
        .prop_map(str::to_owned),
        json_value(),
        any::<String>(),
        (0usize..20_000).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth))),
        (0usize..20_000).prop_map(|depth| "{\"a\":".repeat(depth)),
    ]
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    })
}

/// Runs `test` on every case `strategy` generates, and says how many there
/// were (the count BENCHMARKS.md records comes from this line).
fn check<S: Strategy>(
    name: &str,
    strategy: &S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let cases = std::sync::atomic::AtomicU64::new(0);
    runner()
        .run(strategy, |value| {
            cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            test(value)
        })
        .unwrap();
    eprintln!("{name}: {} cases passed", cases.into_inner());
}

#[test]
fn the_parser_takes_anything() {
    check("parser", &client_text(), |text| {
        match ClientFrame::parse(&text) {
            Ok(frame) => {
                // A frame it accepts is one it can write back the same.
                let again = frame.to_json();
                prop_assert_eq!(ClientFrame::parse(&again).unwrap(), frame);
            }
            Err(error) => prop_assert!(!error.message.is_empty()),
        }
        Ok(())
    });
}

/// What the pusher queued for one socket.
fn drain(socket: &LocalSocket) -> Vec<String> {
    socket
        .take_queued()
        .into_iter()
        .filter_map(|item| match item {
            Outgoing::Text(frame) => Some(frame.as_str().to_owned()),
            Outgoing::Ping => None,
        })
        .collect()
}

fn event(id: &str, route: &str, body: String, binary: bool) -> ApiGatewayWebsocketProxyRequest {
    let mut event = ApiGatewayWebsocketProxyRequest::default();
    event.request_context.connection_id = Some(id.into());
    event.request_context.route_key = Some(route.into());
    event.request_context.event_type = Some("MESSAGE".into());
    event.body = Some(body);
    event.is_base64_encoded = binary;
    event
}

#[test]
fn the_handlers_answer_every_frame() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_dynamo, chat, pusher) = runtime.block_on(async {
        let dynamo = Dynamo::start().await;
        let messages = DynamoStore::new(dynamo.client.clone(), dynamo.store_config());
        messages.ensure_messages_table().await.unwrap();
        let pusher = LocalPusher::default();
        let store = LocalStore::new(messages.clone(), messages);
        let config = ChatConfig {
            limits: backend::store::Limits::OFF,
            ..ChatConfig::default()
        };
        (dynamo, Chat::new(store, pusher.clone(), config), pusher)
    });
    let next_id = std::sync::atomic::AtomicU64::new(0);
    let route = prop::sample::select(vec!["join", "sendmessage", "leave", "$default"]);
    let frames = vec((route, client_text(), proptest::bool::weighted(0.05)), 1..6);
    check("handlers", &frames, |frames| {
        let id = format!(
            "fuzz-{}",
            next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let socket: Arc<LocalSocket> = pusher.register(
            &id,
            ConnectionInfo::new(1, "203.0.113.9".into(), "fuzz".into()),
        );
        runtime.block_on(async {
            let connect = chat
                .connect(&backend::chat::Connecting {
                    connection_id: &id,
                    connected_at: 1,
                    client: None,
                    room: None,
                    name: None,
                })
                .await;
            assert_eq!(connect.status_code, 200);
        });
        let mut joined = false;
        for (route, body, binary) in frames {
            let expected = if binary {
                Err(shared::ErrorCode::BadRequest)
            } else {
                ClientFrame::parse(&body)
                    .and_then(|frame| backend::chat::on_its_route(route, frame))
                    .map_err(|error| error.code)
            };
            let response = runtime.block_on(chat.handle(event(&id, route, body.clone(), binary)));
            let sent: VecDeque<ServerFrame> = drain(&socket)
                .iter()
                .map(|text| {
                    assert!(
                        text.len() <= SERVER_FRAME_MAX_BYTES,
                        "a frame over the limit"
                    );
                    ServerFrame::parse(text).expect("the server sends valid frames")
                })
                .collect();
            let errors: Vec<_> = sent
                .iter()
                .filter_map(|frame| match frame {
                    ServerFrame::Error { code, .. } => Some(*code),
                    _ => None,
                })
                .collect();
            match expected {
                Err(code) => {
                    prop_assert_eq!(&errors, &[code], "{:?} for {:?}", sent, body);
                    prop_assert_eq!(sent.len(), 1);
                }
                Ok(ClientFrame::Join { room, name }) => {
                    prop_assert!(errors.is_empty(), "{:?}", sent);
                    let answered = matches!(
                        sent.front(),
                        Some(ServerFrame::Joined { room: r, name: n, .. })
                            if r == room.as_str() && n == name.as_str()
                    );
                    prop_assert!(answered, "{:?}", sent);
                    joined = true;
                }
                Ok(ClientFrame::SendMessage { data, nonce }) if joined => {
                    prop_assert!(errors.is_empty(), "{:?}", sent);
                    let delivered = matches!(
                        sent.front(),
                        Some(ServerFrame::Message(message))
                            if message.data == data && message.nonce == nonce
                    );
                    prop_assert!(delivered, "{:?}", sent);
                }
                Ok(ClientFrame::Leave) if joined => {
                    let left = matches!(sent.front(), Some(ServerFrame::Left { .. }));
                    prop_assert!(left, "{:?}", sent);
                    joined = false;
                }
                Ok(ClientFrame::History { .. }) if joined => {
                    prop_assert!(errors.is_empty(), "{:?}", sent);
                    let paged = matches!(sent.front(), Some(ServerFrame::History { .. }));
                    prop_assert!(paged, "{:?}", sent);
                }
                Ok(ClientFrame::Members) if joined => {
                    prop_assert!(errors.is_empty(), "{:?}", sent);
                    let listed = matches!(sent.front(), Some(ServerFrame::Members { .. }));
                    prop_assert!(listed, "{:?}", sent);
                }
                Ok(
                    ClientFrame::SendMessage { .. }
                    | ClientFrame::Leave
                    | ClientFrame::History { .. }
                    | ClientFrame::Members,
                ) => {
                    prop_assert_eq!(errors, vec![shared::ErrorCode::NotInRoom]);
                }
                Ok(ClientFrame::Ping) => {
                    prop_assert_eq!(sent, VecDeque::from([ServerFrame::Pong]));
                }
            }
            prop_assert!(response.status_code == 200, "{}", response.status_code);
        }
        runtime.block_on(chat.disconnect(&id));
        pusher.close(&id, 1000, "done");
        Ok(())
    });
}

#[test]
fn the_websocket_decoder_takes_any_bytes_split_anywhere() {
    let limits = Limits {
        max_message: 1024,
        max_read: 4096,
    };
    // Mostly well-formed masked frames, with any header bits, lengths and
    // payloads; sometimes raw bytes.
    let frame = (
        any::<u8>(),
        any::<[u8; 4]>(),
        vec(any::<u8>(), 0..300),
        any::<u8>(),
    )
        .prop_map(|(first, mask, payload, length_kind)| {
            let mut bytes = vec![first];
            match length_kind % 4 {
                0 => bytes.push(0x80 | payload.len().min(125) as u8),
                1 => {
                    bytes.push(0x80 | 126);
                    bytes.extend_from_slice(&(payload.len() as u16).to_be_bytes());
                }
                2 => {
                    bytes.push(0x80 | 127);
                    bytes.extend_from_slice(&(payload.len() as u64).to_be_bytes());
                }
                _ => bytes.push(payload.len() as u8),
            }
            bytes.extend_from_slice(&mask);
            bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            bytes
        });
    let stream = prop_oneof![
        vec(frame, 1..8).prop_map(|frames| frames.concat()),
        vec(any::<u8>(), 0..2000),
    ];
    check(
        "websocket decoder",
        &(stream, any::<prop::sample::Index>()),
        |(bytes, split)| {
            let whole = decode(limits, &[&bytes]);
            let at = split.index(bytes.len() + 1);
            let (head, tail) = bytes.split_at(at);
            let parts = decode(limits, &[head, tail]);
            // Where a read ends changes nothing.
            prop_assert_eq!(whole, parts);
            Ok(())
        },
    );
}

fn decode(limits: Limits, reads: &[&[u8]]) -> (Vec<Incoming>, Option<String>) {
    let mut decoder = Decoder::new(limits);
    let mut out = Vec::new();
    for read in reads {
        if let Err(violation) = decoder.decode(read, &mut out) {
            return (out, Some(violation.to_string()));
        }
    }
    (out, None)
}
