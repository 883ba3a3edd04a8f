//! The chat through real sockets against a running chat-local process.

mod common;

use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn names(frame: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = frame["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn messages_reach_every_member_of_the_room_and_no_one_else() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (mut ada, _) = server.join("room-1", "Ada").await;
    let (mut bo, _) = server.join("room-1", "Bo").await;
    expect(&mut ada, "presence").await;
    let (mut cy, _) = server.join("room-2", "Cy").await;

    // A room named in the frame is ignored: Ada posts to the room she joined.
    send(
        &mut ada,
        json!({"action": "sendmessage", "room": "room-2", "data": "hello <b>1</b>"}),
    )
    .await;
    for socket in [&mut ada, &mut bo] {
        let message = expect(socket, "message").await;
        assert_eq!(message["room"], "room-1");
        assert_eq!(message["name"], "Ada");
        assert_eq!(message["data"], "hello <b>1</b>");
        assert!(message["id"].as_str().is_some_and(|id| !id.is_empty()));
        assert!(message["ts"].as_u64().unwrap() > 1_600_000_000_000);
    }
    expect_nothing_more(&mut cy).await;

    say(&mut cy, "only room 2").await;
    assert_eq!(expect(&mut cy, "message").await["data"], "only room 2");
    expect_nothing_more(&mut ada).await;
    expect_nothing_more(&mut bo).await;
}

#[tokio::test]
async fn rooms_whose_names_differ_only_in_case_are_one_room() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (mut ada, joined) = server.join("General", "Ada").await;
    assert_eq!(joined["room"], "general");
    let (mut bo, _) = server.join("general", "Bo").await;
    assert_eq!(expect(&mut ada, "presence").await["room"], "general");
    say(&mut bo, "one room").await;
    for socket in [&mut ada, &mut bo] {
        let message = expect(socket, "message").await;
        assert_eq!(
            (&message["room"], &message["data"]),
            (&json!("general"), &json!("one room"))
        );
    }
    // A link spelled another way finds the same history.
    let (_, later) = server.join("GENERAL", "Cy").await;
    assert_eq!(later["history"][0]["data"], "one room");
}

#[tokio::test]
async fn presence_tells_the_others_who_comes_and_goes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (mut ada, joined) = server.join("lobby", "Ada").await;
    assert_eq!(joined["room"], "lobby");
    assert_eq!(joined["name"], "Ada");
    assert_eq!(names(&joined), ["Ada"]);
    assert_eq!(joined["count"], 1);

    let (mut bo, joined) = server.join("lobby", "  Bo  ").await;
    assert_eq!(joined["name"], "Bo", "names are trimmed");
    assert_eq!(names(&joined), ["Ada", "Bo"]);
    let presence = expect(&mut ada, "presence").await;
    assert_eq!(
        presence,
        json!({"type": "presence", "event": "join", "room": "lobby", "name": "Bo", "count": 2})
    );

    send(&mut bo, json!({"action": "leave"})).await;
    assert_eq!(
        expect(&mut bo, "left").await,
        json!({"type": "left", "room": "lobby"})
    );
    let presence = expect(&mut ada, "presence").await;
    assert_eq!(
        presence,
        json!({"type": "presence", "event": "leave", "room": "lobby", "name": "Bo", "count": 1})
    );

    // Still connected after leaving, and no longer in the room.
    expect_alive(&mut bo).await;
    say(&mut bo, "anyone?").await;
    expect_error(&mut bo, "not_in_room").await;
    send(&mut bo, json!({"action": "leave"})).await;
    expect_error(&mut bo, "not_in_room").await;
    say(&mut ada, "just me").await;
    expect(&mut ada, "message").await;
    expect_nothing_more(&mut bo).await;

    // A closed socket is a departure too.
    let (bo_again, _) = server.join("lobby", "Bo").await;
    expect(&mut ada, "presence").await;
    drop(bo_again);
    let presence = expect(&mut ada, "presence").await;
    assert_eq!(presence["event"], "leave");
    assert_eq!(presence["count"], 1);
}

#[tokio::test]
async fn joiners_get_the_last_50_messages_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (mut ada, _) = server.join("history", "Ada").await;
    let mut sent = Vec::new();
    for i in 0..55 {
        say(&mut ada, &format!("message {i}")).await;
        sent.push(expect(&mut ada, "message").await);
    }
    let (_bo, joined) = server.join("history", "Bo").await;
    let history = joined["history"].as_array().unwrap();
    assert_eq!(history.len(), 50);
    assert_eq!(
        history[..],
        sent[5..],
        "the latest 50, oldest first, shaped as message frames"
    );

    let (_cy, joined) = server.join("elsewhere", "Cy").await;
    assert_eq!(joined["history"], json!([]));

    // Older ones come a page at a time.
    let (mut bo, joined) = server.join("history", "Bo").await;
    let oldest = joined["history"][0]["id"].clone();
    send(&mut bo, json!({"action": "history", "before": oldest})).await;
    let page = expect(&mut bo, "history").await;
    assert_eq!(page["room"], "history");
    assert_eq!(page["messages"].as_array().unwrap()[..], sent[..5]);
    assert_eq!(page["more"], false);
    send(
        &mut bo,
        json!({"action": "history", "before": sent[0]["id"]}),
    )
    .await;
    assert_eq!(
        expect(&mut bo, "history").await,
        json!({"type": "history", "room": "history", "messages": [], "more": false})
    );
    send(&mut bo, json!({"action": "leave"})).await;
    expect(&mut bo, "left").await;
    send(&mut bo, json!({"action": "history"})).await;
    expect_error(&mut bo, "not_in_room").await;
}

#[tokio::test]
async fn switching_rooms_leaves_the_old_one_first() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (mut ada, _) = server.join("one", "Ada").await;
    let (mut bo, _) = server.join("one", "Bo").await;
    expect(&mut ada, "presence").await;
    let (mut cy, _) = server.join("two", "Cy").await;

    send(
        &mut ada,
        json!({"action": "join", "room": "two", "name": "Ada"}),
    )
    .await;
    let joined = expect(&mut ada, "joined").await;
    assert_eq!(joined["room"], "two");
    assert_eq!(names(&joined), ["Ada", "Cy"]);
    let left = expect(&mut bo, "presence").await;
    assert_eq!(
        left,
        json!({"type": "presence", "event": "leave", "room": "one", "name": "Ada", "count": 1})
    );
    let arrived = expect(&mut cy, "presence").await;
    assert_eq!(
        arrived,
        json!({"type": "presence", "event": "join", "room": "two", "name": "Ada", "count": 2})
    );

    say(&mut ada, "hi two").await;
    assert_eq!(expect(&mut ada, "message").await["room"], "two");
    assert_eq!(expect(&mut cy, "message").await["data"], "hi two");
    expect_nothing_more(&mut bo).await;

    // Joining the room one is already in changes nothing for the others.
    send(
        &mut ada,
        json!({"action": "join", "room": "two", "name": "Ada"}),
    )
    .await;
    expect(&mut ada, "joined").await;
    expect_nothing_more(&mut cy).await;
}

#[tokio::test]
async fn the_query_string_joins_at_connect_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (mut ada, _) = server.join("chat:1", "Ada").await;

    let mut wscat = server.connect_with("?room=chat:1&name=Zo%C3%AB").await;
    let presence = expect(&mut ada, "presence").await;
    assert_eq!(presence["name"], "Zoë");
    assert_eq!(presence["count"], 2);
    // No `joined` frame follows a connect-time join, but posting works.
    say(&mut wscat, "from wscat").await;
    let message = expect(&mut wscat, "message").await;
    assert_eq!(message["room"], "chat:1");
    assert_eq!(expect(&mut ada, "message").await["name"], "Zoë");

    // The Go original's form, a room without a name.
    let _anonymous = server.connect_with("?room=chat:1").await;
    assert_eq!(expect(&mut ada, "presence").await["name"], "anonymous");

    // A bad room refuses the connection itself.
    let refused = tokio_tungstenite::connect_async(server.ws_url("?room=no%20spaces")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400)
        }
        other => panic!("expected an HTTP 400, got {other:?}"),
    }
}

#[tokio::test]
async fn every_bad_frame_gets_its_error_and_the_socket_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut socket = server.connect().await;

    let cases = [
        ("not json", "bad_request"),
        ("", "bad_request"),
        ("[1, 2]", "bad_request"),
        ("42", "bad_request"),
        ("{}", "bad_request"),
        (r#"{"action": 1}"#, "bad_request"),
        (r#"{"action": "dance"}"#, "unknown_action"),
    ];
    for (frame, code) in cases {
        send_text(&mut socket, frame).await;
        expect_error(&mut socket, code).await;
    }
    // Ten refusals within a minute close a socket
    // (`a_connection_whose_requests_keep_being_refused_is_closed`): the
    // rest on a new one.
    let mut socket = server.connect().await;
    let cases = [
        (r#"{"action": "sendmessage", "data": "x"}"#, "not_in_room"),
        (r#"{"action": "leave"}"#, "not_in_room"),
        (
            r#"{"action": "join", "room": "a b", "name": "Ada"}"#,
            "invalid_room",
        ),
        (
            r#"{"action": "join", "room": "ok", "name": "\u0007"}"#,
            "invalid_name",
        ),
        (r#"{"action": "join", "room": "ok"}"#, "bad_request"),
        (
            r#"{"action": "join", "room": "ok", "name": "\ud800"}"#,
            "bad_request",
        ),
    ];
    for (frame, code) in cases {
        send_text(&mut socket, frame).await;
        expect_error(&mut socket, code).await;
    }

    let mut socket = server.connect().await;
    send(
        &mut socket,
        json!({"action": "join", "room": "ok", "name": "Ada"}),
    )
    .await;
    expect(&mut socket, "joined").await;
    let cases = [
        (json!({"action": "sendmessage", "data": ""}), "bad_request"),
        (json!({"action": "sendmessage", "data": 7}), "bad_request"),
        (json!({"action": "sendmessage"}), "bad_request"),
        (
            json!({"action": "sendmessage", "data": "x".repeat(4097)}),
            "too_large",
        ),
    ];
    for (frame, code) in cases {
        send(&mut socket, frame).await;
        expect_error(&mut socket, code).await;
    }
    send_text(
        &mut socket,
        r#"{"action":"sendmessage","data":"\udc00 lone"}"#,
    )
    .await;
    expect_error(&mut socket, "bad_request").await;

    socket
        .send(Message::binary(b"{\"action\":\"ping\"}".to_vec()))
        .await
        .unwrap();
    let error = expect_error(&mut socket, "bad_request").await;
    assert!(error["message"].as_str().unwrap().contains("binary"));

    // 4096 bytes exactly is fine, and delivered verbatim.
    let longest = "é".repeat(2048);
    say(&mut socket, &longest).await;
    assert_eq!(expect(&mut socket, "message").await["data"], longest);
    expect_alive(&mut socket).await;
}

#[tokio::test]
async fn a_100_kb_frame_is_refused_without_closing_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (mut socket, _) = server.join("big", "Ada").await;
    say(&mut socket, &"x".repeat(100 * 1024)).await;
    expect_error(&mut socket, "too_large").await;
    send_text(&mut socket, &"y".repeat(100 * 1024)).await;
    expect_error(&mut socket, "bad_request").await;
    expect_alive(&mut socket).await;

    // Past API Gateway's 128 KB message limit: refused, the socket stays.
    send_text(&mut socket, &"z".repeat(200 * 1024)).await;
    let error = expect_error(&mut socket, "too_large").await;
    assert!(error["message"].as_str().unwrap().contains("131072"));
    socket
        .send(Message::binary(vec![7u8; 200 * 1024]))
        .await
        .unwrap();
    expect_error(&mut socket, "too_large").await;
    expect_alive(&mut socket).await;

    // Past what is read at all (1 MiB), the socket is closed (1009).
    send_text(&mut socket, &"w".repeat(2 * 1024 * 1024)).await;
    let mut closed = false;
    while let Ok(Some(message)) = tokio::time::timeout(WAIT, socket.next()).await {
        match message {
            Ok(Message::Text(text)) => assert!(text.contains("too_large"), "{text}"),
            Ok(Message::Close(frame)) => {
                assert_eq!(frame.map(|f| f.code), Some(CloseCode::Size));
                closed = true;
                break;
            }
            // The rest of the unread frame can turn the close into a reset.
            Err(_) => {
                closed = true;
                break;
            }
            Ok(_) => {}
        }
    }
    assert!(closed, "the socket was closed");
}

#[tokio::test]
async fn invalid_utf8_is_answered_then_closed_as_rfc_6455_requires() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (mut ada, _) = server.join("utf8", "Ada").await;
    let (mut bo, _) = server.join("utf8", "Bo").await;
    expect(&mut ada, "presence").await;

    let raw = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    bo.send(Message::Frame(raw)).await.unwrap();
    let error = expect_error(&mut bo, "bad_request").await;
    assert!(error["message"].as_str().unwrap().contains("UTF-8"));
    match tokio::time::timeout(WAIT, bo.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Invalid),
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert_eq!(expect(&mut ada, "presence").await["event"], "leave");
}

#[tokio::test]
async fn a_socket_that_dies_without_a_close_frame_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(Options {
        data_dir: dir.path(),
        dist: None,
        dynamodb_endpoint: None,
        extra: &["--ping-interval", "200ms", "--idle-timeout", "1s"],
    });
    let (mut ada, _) = server.join("pulse", "Ada").await;

    // A TCP connection cut without a close frame.
    let (cut, _) = server.join("pulse", "Cut").await;
    expect(&mut ada, "presence").await;
    let tcp = match cut.into_inner() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp,
        _ => unreachable!(),
    };
    let std_tcp = tcp.into_std().unwrap();
    std_tcp.shutdown(std::net::Shutdown::Both).unwrap();
    let presence = expect(&mut ada, "presence").await;
    assert_eq!(
        (presence["event"].as_str(), presence["name"].as_str()),
        (Some("leave"), Some("Cut"))
    );

    // A peer that stays connected but stops answering pings.
    let (silent, _) = server.join("pulse", "Silent").await;
    expect(&mut ada, "presence").await;
    let started = std::time::Instant::now();
    // Ada keeps reading (and so answering pings); Silent never reads again.
    let presence = expect(&mut ada, "presence").await;
    assert_eq!(
        (presence["event"].as_str(), presence["name"].as_str()),
        (Some("leave"), Some("Silent"))
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "only after the idle timeout"
    );
    drop(silent);
    expect_alive(&mut ada).await;
}

#[tokio::test]
async fn history_survives_a_restart_and_old_connections_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (mut ada, _) = server.join("durable", "Ada").await;
    say(&mut ada, "before the restart").await;
    let sent = expect(&mut ada, "message").await;
    server.stop();
    // The server closed the socket as it went (1001, going away).
    match tokio::time::timeout(WAIT, ada.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        Some(Err(_)) | None => {}
        other => panic!("expected the socket to close, got {other:?}"),
    }

    let server = Server::start(dir.path());
    let (_bo, joined) = server.join("durable", "Bo").await;
    assert_eq!(joined["history"], json!([sent]));
    assert_eq!(
        names(&joined),
        ["Bo"],
        "Ada's connection ended with the old process"
    );
}

#[tokio::test]
async fn serves_health_and_the_web_app_and_nothing_in_place_of_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let dist = tempfile::tempdir().unwrap();
    std::fs::write(dist.path().join("index.html"), "<h1>chat app</h1>").unwrap();
    std::fs::write(dist.path().join("app.js"), "console.log(1)").unwrap();
    let server = Server::start_with(Options {
        data_dir: dir.path(),
        dist: Some(dist.path()),
        dynamodb_endpoint: None,
        extra: &[],
    });
    let get = |path: &str| {
        let url = server.http(path);
        async move { http_request("GET", &url, None).await }
    };
    assert_eq!(get("/healthz").await, (200, "ok".to_owned()));
    assert_eq!(get("/").await, (200, "<h1>chat app</h1>".to_owned()));
    assert_eq!(get("/app.js").await, (200, "console.log(1)".to_owned()));
    // The app routes by the URL fragment: an unknown path is a plain 404,
    // never the page (a missing config.json must not arrive as HTML).
    assert_eq!(get("/some/client/route").await.0, 404);
    assert_eq!(get("/config.json").await.0, 404);
}

#[tokio::test]
async fn a_sigkill_loses_no_message_that_anyone_received() {
    // What the embedded engine keeps on disk: the runs without moto test it.
    if moto_endpoint().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (mut bo, _) = server.join("crash", "Bo").await;
    let mut senders = Vec::new();
    for name in ["Ada", "Cy", "Di", "Ed"] {
        senders.push(server.join("crash", name).await.0);
    }

    // Four senders that do not wait, so many messages are in flight (queued,
    // in one batch write, being delivered) when the process dies.
    const SENT: usize = 800;
    for i in 0..SENT / senders.len() {
        for (n, sender) in senders.iter_mut().enumerate() {
            say(sender, &format!("message {n}.{i}")).await;
        }
    }
    let mut received = std::collections::HashSet::new();
    loop {
        let next = tokio::time::timeout(WAIT, bo.next())
            .await
            .expect("Bo hears something");
        match next {
            Some(Ok(Message::Text(text))) => {
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                if frame["type"] == "message" {
                    received.insert(frame["id"].as_str().unwrap().to_owned());
                }
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break,
        }
        if received.len() == 50 {
            break;
        }
    }
    server.kill();
    // Whatever was already on its way to Bo counts as received too.
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(1), bo.next()).await
    {
        if let Message::Text(text) = message {
            let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == "message" {
                received.insert(frame["id"].as_str().unwrap().to_owned());
            }
        }
    }
    assert!(
        received.len() >= 50 && received.len() < SENT,
        "killed mid-chat: {} received",
        received.len()
    );

    // Restarted on the same data, with its engine on a port the test reads.
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let restarted = Server::start_with(Options {
        data_dir: dir.path(),
        dist: None,
        dynamodb_endpoint: None,
        extra: &["--dynamodb-listen", &listen],
    });
    let client = backend::local::dynamodb::local_client(&format!("http://{listen}"));
    let mut stored = std::collections::HashSet::new();
    let mut start_key = None;
    loop {
        let page = client
            .query()
            .table_name("chat-messages")
            .key_condition_expression("room = :room")
            .expression_attribute_values(
                ":room",
                aws_sdk_dynamodb::types::AttributeValue::S("crash".into()),
            )
            .set_exclusive_start_key(start_key)
            .send()
            .await
            .unwrap();
        for item in page.items() {
            stored.insert(item["id"].as_s().unwrap().clone());
        }
        start_key = page.last_evaluated_key;
        if start_key.is_none() {
            break;
        }
    }
    let missing: Vec<_> = received.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "received but not in history: {missing:?}"
    );
    drop(restarted);
}

#[tokio::test]
async fn a_bad_websocket_handshake_is_refused_with_a_clear_status() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let handshake = |headers: &str| raw_handshake(server.addr, headers.to_owned());
    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\n";
    // A plain GET is told this is a WebSocket endpoint.
    let plain = handshake("").await;
    assert!(plain.starts_with("HTTP/1.1 426"), "{plain}");
    assert!(plain.contains("WebSocket endpoint"), "{plain}");
    // Another protocol version is told which one is spoken.
    let version = handshake(&format!(
        "{upgrade}Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    ))
    .await;
    assert!(version.starts_with("HTTP/1.1 426"), "{version}");
    assert!(
        version
            .to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{version}"
    );
    // A key that is not 16 bytes of base64 is a bad request.
    for key in [
        "",
        "Sec-WebSocket-Key: short\r\n",
        "Sec-WebSocket-Key: ########################\r\n",
    ] {
        let refused = handshake(&format!("{upgrade}Sec-WebSocket-Version: 13\r\n{key}")).await;
        assert!(refused.starts_with("HTTP/1.1 400"), "{key:?}: {refused}");
        assert!(refused.contains("Sec-WebSocket-Key"), "{refused}");
    }
    // The RFC's example handshake is accepted with the RFC's answer.
    let accepted = handshake(&format!(
        "{upgrade}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    ))
    .await;
    assert!(accepted.starts_with("HTTP/1.1 101"), "{accepted}");
    assert!(
        accepted.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{accepted}"
    );
}

/// Sends a handshake with these extra header lines; answers the response
/// head (all there is of a refusal, which ends the connection).
async fn raw_handshake(addr: std::net::SocketAddr, headers: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    // An accepted socket stays open, so its head is all there is to read.
    let mut response = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let read = stream.read(&mut chunk).await.unwrap();
        response.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&response);
        if read == 0 || (text.starts_with("HTTP/1.1 101") && text.contains("\r\n\r\n")) {
            return text.into_owned();
        }
    }
}

#[tokio::test]
async fn pages_from_other_sites_cannot_connect() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(Options {
        data_dir: dir.path(),
        dist: None,
        dynamodb_endpoint: None,
        extra: &["--allowed-origin", "https://chat.example.com"],
    });
    let with_origin = |origin: &str| {
        let headers = format!(
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{origin}"
        );
        raw_handshake(server.addr, headers)
    };
    for refused in [
        "http://evil.example",
        "https://chat.example.com.evil.example",
        "null",
    ] {
        let answer = with_origin(&format!("Origin: {refused}\r\n")).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{refused}: {answer}");
        assert!(answer.contains("origin"), "{refused}: {answer}");
    }
    // Its own pages, `trunk serve`'s, the ones it was told of, and clients
    // that are not browsers.
    for allowed in [
        format!("Origin: http://{}\r\n", server.addr),
        "Origin: http://127.0.0.1:8081\r\n".to_owned(),
        "Origin: https://chat.example.com\r\n".to_owned(),
        String::new(),
    ] {
        let answer = with_origin(&allowed).await;
        assert!(answer.starts_with("HTTP/1.1 101"), "{allowed:?}: {answer}");
    }
}

#[tokio::test]
async fn connection_records_outlive_the_longest_connection() {
    let dynamo = Dynamo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(Options {
        data_dir: dir.path(),
        dist: None,
        dynamodb_endpoint: Some(&dynamo.endpoint),
        extra: &["--store", "dynamodb", "--max-connection-duration", "5h"],
    });
    let (_ada, _) = server.join("ttl-room", "Ada").await;
    let items = dynamo
        .client
        .scan()
        .table_name("chat-connections")
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    // The connection's record (and the name's presence count, `#` in its
    // key, with the same lifetime).
    let records: Vec<_> = items
        .iter()
        .filter(|item| !item["connectionId"].as_s().unwrap().contains('#'))
        .collect();
    assert_eq!(records.len(), 1, "{items:?}");
    let expires: u64 = records[0]["expiresAt"].as_n().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        expires >= now + 5 * 3600,
        "the record expires {}s from now, before a 5 h connection ends",
        expires.saturating_sub(now)
    );
}

#[tokio::test]
async fn a_flood_is_refused_past_the_burst_and_sending_works_again_after_a_pause() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(Options {
        data_dir: dir.path(),
        dist: None,
        dynamodb_endpoint: None,
        extra: &["--rate-limit", "1", "--rate-burst", "3"],
    });
    let (mut flooder, _) = server.join("r", "Flood").await;
    let (mut reader, _) = server.join("r", "Reader").await;
    expect(&mut flooder, "presence").await;

    for i in 0..6 {
        say(&mut flooder, &format!("flood {i}")).await;
    }
    // The burst of 3, less the join's share, goes through; the other 4 are
    // refused, each told so.
    let mut refused = 0;
    let mut delivered = Vec::new();
    for _ in 0..6 {
        let frame = next_frame(&mut flooder).await;
        match frame["type"].as_str() {
            Some("message") => delivered.push(frame["data"].as_str().unwrap().to_owned()),
            Some("error") => {
                assert_eq!(frame["code"], "rate_limited", "{frame}");
                refused += 1;
            }
            _ => panic!("unexpected frame {frame}"),
        }
    }
    assert_eq!(delivered, ["flood 0", "flood 1"]);
    assert_eq!(refused, 4);
    for i in 0..2 {
        assert_eq!(
            expect(&mut reader, "message").await["data"],
            format!("flood {i}")
        );
    }
    expect_nothing_more(&mut reader).await;

    // The socket stayed open, and a second later one more message fits.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    say(&mut flooder, "after a pause").await;
    assert_eq!(
        expect(&mut flooder, "message").await["data"],
        "after a pause"
    );
    assert_eq!(
        expect(&mut reader, "message").await["data"],
        "after a pause"
    );
    say(&mut flooder, "too soon").await;
    expect_error(&mut flooder, "rate_limited").await;
    // Joins and leaves count too: each is announced to a whole room.
    send(
        &mut flooder,
        json!({"action": "join", "room": "elsewhere", "name": "Flood"}),
    )
    .await;
    expect_error(&mut flooder, "rate_limited").await;
    send(&mut flooder, json!({"action": "leave"})).await;
    expect_error(&mut flooder, "rate_limited").await;
    expect_nothing_more(&mut reader).await;
}

/// Every refused frame costs the server (on AWS an invocation, a write and
/// a post): a client that keeps sending what is refused, pings over the
/// rate limit or frames that make no sense, is closed after
/// `REFUSALS_BEFORE_CLOSE` within a minute, without another answer. An
/// admitted request in between buys nothing.
#[tokio::test]
async fn a_connection_whose_requests_keep_being_refused_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(Options {
        data_dir: dir.path(),
        dist: None,
        dynamodb_endpoint: None,
        extra: &["--rate-limit", "1", "--rate-burst", "3"],
    });
    let refusals = backend::chat::REFUSALS_BEFORE_CLOSE as usize;

    // Nine mistakes are each answered, and the socket stays open.
    let (mut clumsy, _) = server.join("r", "Clumsy").await;
    for _ in 1..refusals {
        send_text(&mut clumsy, "not json").await;
        expect_error(&mut clumsy, "bad_request").await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    say(&mut clumsy, "still here").await;
    expect(&mut clumsy, "message").await;
    // The tenth within the minute closes it, admitted requests or not.
    send_text(&mut clumsy, "not json").await;
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match clumsy.next().await {
                Some(Ok(Message::Close(close))) => return close,
                Some(Ok(Message::Text(text))) => panic!("answered after the tenth: {text}"),
                Some(Ok(_)) => {}
                other => panic!("the server closes the socket properly: {other:?}"),
            }
        }
    })
    .await
    .expect("closed in time");
    assert_eq!(closed.expect("a close frame").code, CloseCode::Policy);

    // Pings over the rate limit: answered while the bucket lasts, refused
    // after, then closed.
    let (mut watcher, _) = server.join("pings", "Watcher").await;
    let (mut pinger, _) = server.join("pings", "Pinger").await;
    expect(&mut watcher, "presence").await;
    for _ in 0..40 {
        if pinger
            .send(Message::text(r#"{"action":"ping"}"#))
            .await
            .is_err()
        {
            break;
        }
    }
    let (mut pongs, mut refused) = (0, 0);
    let close = loop {
        let message = tokio::time::timeout(WAIT, pinger.next())
            .await
            .expect("the server acts in time");
        match message {
            Some(Ok(Message::Text(text))) => {
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                match frame["type"].as_str() {
                    Some("pong") => pongs += 1,
                    Some("error") => {
                        assert_eq!(frame["code"], "rate_limited", "{frame}");
                        assert_eq!(frame["action"], "ping", "{frame}");
                        refused += 1;
                    }
                    _ => panic!("unexpected {frame}"),
                }
            }
            Some(Ok(Message::Close(close))) => break close,
            Some(Ok(_)) => {}
            other => panic!("the server closes the socket properly: {other:?}"),
        }
    };
    assert!(
        (2..=3).contains(&pongs),
        "the burst of 3 less the join's share: {pongs}"
    );
    assert_eq!(refused, refusals - 1, "the last refusal is the close");
    assert_eq!(close.expect("a close frame").code, CloseCode::Policy);
    // The room hears that the pinger left.
    let left = expect(&mut watcher, "presence").await;
    assert_eq!(
        (&left["event"], &left["name"]),
        (&json!("leave"), &json!("Pinger"))
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    expect_alive(&mut watcher).await;
}

/// The status line of a WebSocket handshake, and whatever body came with it.
async fn try_connect(server: &Server) -> Result<Socket, String> {
    match tokio_tungstenite::connect_async(server.ws_url("")).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(format!(
            "{} {}",
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
        )),
        Err(error) => Err(error.to_string()),
    }
}

#[tokio::test]
async fn connections_are_capped_in_all_and_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(Options {
        data_dir: dir.path(),
        dist: None,
        dynamodb_endpoint: None,
        // A total just above the per-address cap: a refusal that kept its
        // slot in the total would show as 503 below.
        extra: &["--max-connections-per-ip", "2", "--max-connections", "3"],
    });
    let first = try_connect(&server).await.unwrap();
    let mut second = try_connect(&server).await.unwrap();
    let refused = try_connect(&server).await.unwrap_err();
    assert!(refused.starts_with("429 "), "{refused}");
    assert!(refused.contains("too many connections"), "{refused}");
    // The open ones are unaffected; closing one makes room again.
    expect_alive(&mut second).await;
    drop(first);
    let mut third = None;
    for _ in 0..50 {
        match try_connect(&server).await {
            Ok(socket) => {
                third = Some(socket);
                break;
            }
            Err(refused) => assert!(refused.starts_with("429 "), "{refused}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    expect_alive(third.as_mut().expect("room again once one closed")).await;

    let dir = tempfile::tempdir().unwrap();
    let full = Server::start_with(Options {
        data_dir: dir.path(),
        dist: None,
        dynamodb_endpoint: None,
        extra: &["--max-connections", "1"],
    });
    let mut only = try_connect(&full).await.unwrap();
    for _ in 0..3 {
        let refused = try_connect(&full).await.unwrap_err();
        assert!(refused.starts_with("503 "), "{refused}");
    }
    expect_alive(&mut only).await;
    // Refused handshakes cost no slot: once the one socket is gone, the
    // next gets in.
    drop(only);
    let mut next = None;
    for _ in 0..50 {
        if let Ok(socket) = try_connect(&full).await {
            next = Some(socket);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    expect_alive(next.as_mut().expect("the slot came back")).await;
}

#[tokio::test]
async fn the_chat_survives_its_store_going_down_and_coming_back() {
    let mut dynamo = StoppableDynamo::start();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(Options {
        data_dir: dir.path(),
        dist: None,
        dynamodb_endpoint: Some(&dynamo.endpoint),
        extra: &[],
    });
    let (mut ada, _) = server.join("outage", "Ada").await;
    let (mut bo, _) = server.join("outage", "Bo").await;
    expect(&mut ada, "presence").await;
    say(&mut ada, "before").await;
    for socket in [&mut ada, &mut bo] {
        assert_eq!(expect(socket, "message").await["data"], "before");
    }

    dynamo.stop();
    // The message cannot be stored, so it is not delivered; its sender is
    // told, and both sockets stay open.
    say(&mut ada, "during").await;
    let error = expect_error(&mut ada, "internal").await;
    assert!(error["message"].as_str().unwrap().contains("try again"));
    expect_alive(&mut ada).await;
    expect_nothing_more(&mut bo).await;

    dynamo.restart();
    // Sending works again without a restart of chat-local (the SDK may
    // need a moment to give up on its old connections).
    let mut delivered = false;
    for attempt in 0..20 {
        say(&mut ada, &format!("after {attempt}")).await;
        let frame = next_frame(&mut ada).await;
        if frame["type"] == "message" {
            assert_eq!(expect(&mut bo, "message").await["data"], frame["data"]);
            delivered = true;
            break;
        }
        assert_eq!(frame["code"], "internal", "{frame}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(delivered, "the chat works again once the store is back");
    expect_nothing_more(&mut bo).await;
    // History was kept, and new joiners get it.
    let (_cy, joined) = server.join("outage", "Cy").await;
    let history: Vec<&str> = joined["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].as_str().unwrap())
        .collect();
    assert_eq!(history.first(), Some(&"before"));
    assert!(!history.contains(&"during"));
}

#[tokio::test]
async fn a_clients_close_frame_is_answered_and_the_room_told() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (mut ada, _) = server.join("goodbye", "Ada").await;
    let (mut bo, _) = server.join("goodbye", "Bo").await;
    expect(&mut ada, "presence").await;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    bo.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Library(4000),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    // RFC 6455 §5.5.1: the server answers with a Close of its own (echoing
    // the code), then the connection ends cleanly.
    let answer = tokio::time::timeout(WAIT, bo.next()).await.unwrap();
    match answer {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Library(4000)),
        other => panic!("expected the server's close frame, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(WAIT, bo.next())
            .await
            .unwrap()
            .is_none(),
        "a clean end after the closing handshake"
    );
    let presence = expect(&mut ada, "presence").await;
    assert_eq!(
        (presence["event"].as_str(), presence["name"].as_str()),
        (Some("leave"), Some("Bo"))
    );
}

#[tokio::test]
async fn sigterm_closes_sockets_and_exits_despite_a_half_sent_request() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (mut ada, _) = server.join("shutdown", "Ada").await;
    // A client that sends part of a request head and then nothing.
    let mut stalled = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // And a handshake left hanging half-way as well.
    let mut stalled_ws = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stalled_ws
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let closing = tokio::spawn(async move {
        match tokio::time::timeout(WAIT, ada.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => Some(frame.code),
            _ => None,
        }
    });
    let took = tokio::task::spawn_blocking(move || {
        server.signal_and_wait("TERM", Duration::from_secs(15))
    })
    .await
    .unwrap();
    assert_eq!(
        closing.await.unwrap(),
        Some(CloseCode::Away),
        "sockets are told first"
    );
    let took = took.expect("chat-local exits although a client never finished its request");
    assert!(
        took < Duration::from_secs(8),
        "within its grace period: {took:?}"
    );
    drop((stalled, stalled_ws));
}

#[tokio::test]
async fn a_client_that_hangs_up_during_connect_leaves_no_ghost() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (mut ada, _) = server.join("haunted", "Ada").await;
    // Handshakes that join through the query string and hang up a moment
    // later: before `$connect` runs, while it runs, or just after.
    for attempt in 0..20 {
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "GET /ws?room=haunted&name=Ghost HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            server.addr
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(attempt / 2)).await;
        drop(tcp);
    }
    // Every Ghost that got in left again: the last Ada hears of the name is
    // that it left. (Presence is about people: of many Ghosts at once, the
    // name comes and goes, not each connection.)
    let mut here = false;
    let mut joins = 0;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout(Duration::from_millis(1500), next_frame(&mut ada)).await {
            Ok(frame) => match frame["event"].as_str() {
                Some("join") => {
                    here = true;
                    joins += 1;
                }
                Some("leave") => here = false,
                _ => panic!("unexpected frame {frame}"),
            },
            Err(_) if !here => break,
            Err(_) => assert!(
                std::time::Instant::now() < deadline,
                "Ada is left believing a Ghost is here"
            ),
        }
    }
    assert!(joins > 0, "no Ghost ever got in: the test tested nothing");
    // And a newcomer finds only Ada.
    let mut probe = server.connect().await;
    send(
        &mut probe,
        json!({"action": "join", "room": "haunted", "name": "Probe"}),
    )
    .await;
    let joined = loop {
        let frame = next_frame(&mut probe).await;
        if frame["type"] == "joined" {
            break frame;
        }
    };
    assert_eq!(names(&joined), ["Ada", "Probe"]);
    // Ada heard the comings and goings and is still connected.
    send(&mut ada, json!({"action": "ping"})).await;
    while next_frame(&mut ada).await["type"] != "pong" {}
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_let_go_without_holding_up_the_room() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (mut talker, _) = server.join("stall", "Talker").await;
    // A reader with a tiny receive window that stops reading after joining.
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let tcp = tcp.connect(server.addr).await.unwrap();
    let tcp = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    let (mut stalled, _) = tokio_tungstenite::client_async(server.ws_url(""), tcp)
        .await
        .unwrap();
    send(
        &mut stalled,
        json!({"action": "join", "room": "stall", "name": "Stalled"}),
    )
    .await;
    expect(&mut stalled, "joined").await;
    expect(&mut talker, "presence").await;

    // The talker goes on at full speed, each message back before the next;
    // the server's kernel buffer, its write buffer and then the stalled
    // reader's 1024-frame queue fill, and it is disconnected.
    let data = "x".repeat(4000);
    let mut let_go = false;
    for _ in 0..6000 {
        say(&mut talker, &data).await;
        let frame = next_frame(&mut talker).await;
        match frame["type"].as_str() {
            Some("message") => {}
            Some("presence") if frame["event"] == "leave" => {
                assert_eq!(frame["name"], "Stalled");
                let_go = true;
                break;
            }
            _ => panic!("unexpected frame {frame}"),
        }
    }
    assert!(let_go, "the stalled reader was never let go");
    send(&mut talker, json!({"action": "ping"})).await;
    while next_frame(&mut talker).await["type"] != "pong" {}
    drop(stalled);
}

/// Frames `socket` receives until a ping's pong: every frame the server had
/// queued for it by then.
async fn drain(socket: &mut Socket) -> Vec<serde_json::Value> {
    send(socket, json!({"action": "ping"})).await;
    let mut frames = Vec::new();
    loop {
        let frame = next_frame(socket).await;
        if frame["type"] == "pong" {
            return frames;
        }
        frames.push(frame);
    }
}

/// Limits at their defaults (the harness turns them off otherwise).
const DEFAULT_LIMITS: &[&str] = &["--rate-limit", "2", "--rate-burst", "10"];

#[tokio::test]
async fn reconnecting_in_a_loop_gets_no_more_into_a_room_than_the_address_may_send() {
    use backend::store::Limits;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(Options {
        data_dir: dir.path(),
        dist: None,
        dynamodb_endpoint: None,
        // A handshake burst small enough to be spent by any engine, however
        // slow its connects.
        extra: &[
            "--rate-limit",
            "2",
            "--rate-burst",
            "10",
            "--handshake-rate-limit",
            "2",
            "--handshake-rate-burst",
            "5",
        ],
    });
    let (mut watcher, _) = server.join("victim", "Watcher").await;
    // The attack: connect straight into the room, ten messages, hang up,
    // again, for five seconds, and on until the limit has bitten (a slow
    // engine under a loaded machine takes longer to spend the burst).
    let started = std::time::Instant::now();
    let (mut sockets, mut refused) = (0, 0);
    while started.elapsed() < Duration::from_secs(5)
        || (refused == 0 && started.elapsed() < Duration::from_secs(60))
    {
        match tokio_tungstenite::connect_async(server.ws_url("?room=victim&name=spam")).await {
            Ok((mut socket, _)) => {
                sockets += 1;
                for i in 0..10 {
                    say(&mut socket, &format!("spam {i}")).await;
                }
                let _ = socket.close(None).await;
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 429);
                assert!(response.headers().contains_key("retry-after"));
                refused += 1;
            }
            Err(other) => panic!("{other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Everything the server let in, however long a slow engine takes to
    // deliver it: drained until a round trip brings no more.
    let mut spam = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let more = drain(&mut watcher)
            .await
            .iter()
            .filter(|frame| frame["type"] == "message" && frame["name"] == "spam")
            .count();
        if more == 0 {
            break;
        }
        spam += more;
    }
    // In memory the address has a cap of its own. With every record in
    // DynamoDB it has none (it would cost a write per message): there the
    // handshake limit bounds its connections, each with one burst (a
    // connection inherits a spent bucket only once its last one spent it,
    // which a slow engine may not have yet).
    let in_dynamodb = std::env::var("CHAT_TEST_STORE").as_deref() == Ok("dynamodb");
    let address_bound = if in_dynamodb {
        let (handshake_rate, handshake_burst) = (2.0, 5.0);
        (handshake_burst + handshake_rate * elapsed) * 10.0
    } else {
        let (client_rate, client_burst) = Limits::DEFAULT_CLIENT;
        f64::from(client_burst) + client_rate * elapsed
    };
    eprintln!(
        "reconnect loop: {sockets} sockets, {refused} handshakes refused, {spam} messages into the room in {elapsed:.1} s (address bound {address_bound:.0})"
    );
    assert!(sockets > 1, "the loop reconnected");
    assert!(refused > 0, "handshakes and joins are limited");
    assert!((spam as f64) <= address_bound, "{spam} messages");
    expect_alive(&mut watcher).await;
}

#[tokio::test]
async fn thirty_people_behind_one_address_chatting_as_people_do_are_never_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(Options {
        data_dir: dir.path(),
        dist: None,
        dynamodb_endpoint: None,
        extra: DEFAULT_LIMITS,
    });
    // A classroom: everyone opens the page at once, then each writes every
    // two to four seconds, for twelve seconds.
    let server = &server;
    let people = futures::future::join_all((0..30).map(|i| async move {
        let mut socket = server.connect().await;
        let name = format!("pupil {i}");
        send(
            &mut socket,
            json!({"action": "join", "room": "class", "name": name}),
        )
        .await;
        // The others' arrivals may come first.
        while next_frame(&mut socket).await["type"] != "joined" {}
        let mut refused = Vec::new();
        let mut sent = 0;
        let started = std::time::Instant::now();
        let mut next = Duration::from_millis(100 * (i % 30));
        while started.elapsed() < Duration::from_secs(12) {
            tokio::time::sleep(next.saturating_sub(started.elapsed())).await;
            say(&mut socket, &format!("{i}: {sent}")).await;
            sent += 1;
            next += Duration::from_millis(2000 + 67 * ((i * 7 + sent) % 30));
            for frame in drain(&mut socket).await {
                if frame["type"] == "error" {
                    refused.push(frame);
                }
            }
        }
        (sent, refused)
    }))
    .await;
    let sent: u64 = people.iter().map(|(sent, _)| sent).sum();
    let refused: Vec<_> = people
        .into_iter()
        .flat_map(|(_, refused)| refused)
        .collect();
    assert!(sent >= 30 * 4, "{sent} messages");
    assert!(refused.is_empty(), "refused: {refused:?}");
}

#[tokio::test]
async fn a_frame_with_a_key_twice_is_refused_whatever_the_action() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (mut ada, _) = server.join("r", "Ada").await;
    send_text(
        &mut ada,
        r#"{"action":"leave","action":"sendmessage","data":"which one?"}"#,
    )
    .await;
    let refused = expect_error(&mut ada, "bad_request").await;
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("more than once"),
        "{refused}"
    );
    expect_nothing_more(&mut ada).await;
}

/// What an outbox needs from the server, in memory and with every record
/// in DynamoDB: a message's `nonce` comes back to everyone and from
/// history, and a refusal names the nonce and says when to try again.
#[tokio::test]
async fn nonces_come_back_and_a_rate_limited_message_is_told_when_to_retry() {
    for store in ["memory", "dynamodb"] {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_with(Options {
            data_dir: dir.path(),
            dist: None,
            dynamodb_endpoint: None,
            extra: &["--store", store, "--rate-limit", "2", "--rate-burst", "2"],
        });
        let (mut ada, _) = server.join("outbox", "Ada").await;
        let (mut bo, _) = server.join("outbox", "Bo").await;
        let (mut carol, _) = server.join("outbox", "Carol").await;
        for presence in ["Bo", "Carol"] {
            assert_eq!(expect(&mut ada, "presence").await["name"], presence);
        }
        expect(&mut bo, "presence").await;
        let nonce_of = |frame: &serde_json::Value| frame["nonce"].as_str().map(str::to_owned);

        send(
            &mut ada,
            json!({"action": "sendmessage", "data": "first", "nonce": "n-1"}),
        )
        .await;
        let mine = expect(&mut ada, "message").await;
        assert_eq!(nonce_of(&mine).as_deref(), Some("n-1"), "{store}: {mine}");
        let theirs = expect(&mut bo, "message").await;
        assert_eq!(nonce_of(&theirs).as_deref(), Some("n-1"), "{store}");

        // Ada's join spent one of two: the next message is one too many.
        send(
            &mut ada,
            json!({"action": "sendmessage", "data": "second", "nonce": "n-2"}),
        )
        .await;
        let refused = expect_error(&mut ada, "rate_limited").await;
        assert_eq!(
            nonce_of(&refused).as_deref(),
            Some("n-2"),
            "{store}: {refused}"
        );
        assert_eq!(refused["action"], "sendmessage", "{store}: {refused}");
        let wait = refused["retryAfterMs"].as_u64().expect("retryAfterMs");
        assert!((1..=500).contains(&wait), "{store}: {refused}");
        // Told when: sent then, it goes through.
        tokio::time::sleep(Duration::from_millis(wait)).await;
        send(
            &mut ada,
            json!({"action": "sendmessage", "data": "second", "nonce": "n-2"}),
        )
        .await;
        let second = expect(&mut ada, "message").await;
        assert_eq!(
            nonce_of(&second).as_deref(),
            Some("n-2"),
            "{store}: {second}"
        );

        // History keeps them. (Asked for, not read at a join: a new socket
        // from this address would start with Ada's spent allowance.)
        expect(&mut carol, "message").await;
        expect(&mut carol, "message").await;
        send(&mut carol, json!({"action": "history"})).await;
        let page = expect(&mut carol, "history").await;
        let kept: Vec<_> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["data"].as_str().unwrap().to_owned(), nonce_of(m)))
            .collect();
        assert_eq!(
            kept,
            [
                ("first".to_owned(), Some("n-1".to_owned())),
                ("second".to_owned(), Some("n-2".to_owned()))
            ],
            "{store}"
        );
        let malformed = json!({"action": "sendmessage", "data": "x", "nonce": "no spaces"});
        send(&mut bo, malformed).await;
        expect(&mut bo, "message").await; // Ada's second
        let refused = expect_error(&mut bo, "bad_request").await;
        assert!(
            refused["message"].as_str().unwrap().contains("nonce"),
            "{refused}"
        );
    }
}
