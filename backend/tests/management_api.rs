//! chat-local's Management API (`/@connections/{id}`) and its `internal`
//! errors, with chat-local pointed at a DynamoDB this test can also reach,
//! the way `--dynamodb-endpoint` points it at DynamoDB Local.

mod common;

use common::*;
use futures::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn start(dynamo: &Dynamo, dir: &std::path::Path) -> Server {
    Server::start_with(Options {
        data_dir: dir,
        dist: None,
        dynamodb_endpoint: Some(&dynamo.endpoint),
        // The tests find connection ids in the connections table.
        extra: &["--store", "dynamodb"],
    })
}

#[tokio::test]
async fn posts_reads_and_deletes_connections_like_api_gateway() {
    let dynamo = Dynamo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dynamo, dir.path()).await;
    let (mut ada, _) = server.join("ops", "Ada").await;
    let ids = connection_ids(&dynamo, "ops").await;
    assert_eq!(ids.len(), 1);
    let ada_id = &ids[0];

    // Only on its own listener: the public one (the web app's, behind any
    // reverse proxy) does not take pushes.
    for path in [
        format!("/@connections/{ada_id}"),
        format!("/local/@connections/{ada_id}"),
    ] {
        let (status, _) = http_request("POST", &server.http(&path), Some(b"{\"x\":1}")).await;
        assert_ne!(status, 200, "{path} on the public listener");
    }
    expect_nothing_more(&mut ada).await;
    assert!(server.management.ip().is_loopback());

    // POST: the body arrives as one text frame, verbatim.
    let (status, _) = http_request(
        "POST",
        &server.management_url(&format!("/@connections/{ada_id}")),
        Some(br#"{"type":"notice","text":"from a service"}"#),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        next_frame(&mut ada).await,
        json!({"type":"notice","text":"from a service"})
    );

    // The same under a stage prefix, where the AWS SDK puts it.
    let (status, _) = http_request(
        "POST",
        &server.management_url(&format!("/local/@connections/{ada_id}")),
        Some(b"{\"staged\":true}"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(next_frame(&mut ada).await, json!({"staged": true}));

    // GET: when it connected and from where.
    let (status, body) = http_request(
        "GET",
        &server.management_url(&format!("/@connections/{ada_id}")),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["identity"]["sourceIp"], "127.0.0.1");
    assert!(info["connectedAt"].as_str().unwrap().ends_with('Z'));
    assert!(info["lastActiveAt"].as_str().is_some());

    // Unknown connections are gone: 410, as API Gateway answers.
    for method in ["POST", "GET", "DELETE"] {
        let (status, body) = http_request(
            method,
            &server.management_url("/@connections/nobody"),
            Some(b"x"),
        )
        .await;
        assert_eq!(status, 410, "{method}");
        assert!(body.contains("no such connection"));
    }

    // DELETE closes the socket, and the room hears of it.
    let (mut bo, _) = server.join("ops", "Bo").await;
    let (status, _) = http_request(
        "DELETE",
        &server.management_url(&format!("/@connections/{ada_id}")),
        None,
    )
    .await;
    assert_eq!(status, 204);
    loop {
        match tokio::time::timeout(WAIT, ada.next()).await.unwrap() {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        }
    }
    let presence = expect(&mut bo, "presence").await;
    assert_eq!(
        (presence["event"].as_str(), presence["name"].as_str()),
        (Some("leave"), Some("Ada"))
    );
    assert_eq!(connection_ids(&dynamo, "ops").await.len(), 1);
}

#[tokio::test]
async fn a_failing_store_is_an_internal_error_and_the_socket_survives() {
    let dynamo = Dynamo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dynamo, dir.path()).await;
    let (mut ada, _) = server.join("fragile", "Ada").await;

    dynamo
        .client
        .delete_table()
        .table_name("chat-messages")
        .send()
        .await
        .unwrap();
    say(&mut ada, "into the void").await;
    let error = expect_error(&mut ada, "internal").await;
    assert!(
        !error["message"].as_str().unwrap().contains("chat-messages"),
        "no internals leak"
    );
    expect_alive(&mut ada).await;
}

/// The Lambda functions' pusher, with the real SDK client, against
/// chat-local's Management API.
mod apigw_pusher {
    use super::*;
    use backend::pusher::apigw::{ManagementApi, PostPolicy};
    use backend::pusher::{Frame, PushError, Pusher};
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn policy() -> PostPolicy {
        PostPolicy {
            connect_timeout: Duration::from_millis(500),
            attempt_timeout: Duration::from_millis(700),
            max_attempts: 4,
            base_backoff: Duration::from_millis(20),
        }
    }

    #[tokio::test]
    async fn posts_to_live_connections_and_reports_gone_ones() {
        let dynamo = Dynamo::start().await;
        let dir = tempfile::tempdir().unwrap();
        let server = start(&dynamo, dir.path()).await;
        let (mut ada, _) = server.join("sdk", "Ada").await;
        let ada_id = connection_ids(&dynamo, "sdk").await.remove(0);

        // As on AWS: the endpoint is https://{domain}/{stage}, here chat-local.
        let api = ManagementApi::new(
            local_sdk_config(),
            Some(server.management_url("/local")),
            policy(),
        );
        let pusher = api.pusher(&server.management_url("/local"));
        let frame = Frame::from(r#"{"type":"pong"}"#.to_owned());
        pusher.push(&ada_id, frame.clone()).await.unwrap();
        assert_eq!(expect(&mut ada, "pong").await, json!({"type": "pong"}));

        match pusher.push("no-such-connection", frame).await {
            Err(PushError::Gone) => {}
            other => panic!("expected Gone, got {other:?}"),
        }
    }

    /// A Management API endpoint that accepts connections and never answers.
    async fn silent_endpoint() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}/prod", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        endpoint
    }

    #[tokio::test]
    async fn a_post_that_hangs_times_out() {
        let endpoint = silent_endpoint().await;
        let api = ManagementApi::new(local_sdk_config(), None, policy());
        let started = Instant::now();
        let result = api
            .pusher(&endpoint)
            .push("abc", Frame::from("{}".to_owned()))
            .await;
        assert!(matches!(result, Err(PushError::Failed(_))), "{result:?}");
        // One attempt: a post that timed out may have been delivered, so it
        // is not retried (no duplicates).
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(600) && elapsed < Duration::from_secs(3),
            "{elapsed:?}"
        );
    }

    #[tokio::test]
    async fn a_fan_out_starts_no_post_past_its_deadline() {
        // A Management API that never answers, and a room of 200: without a
        // deadline the posts take four rounds of 64 (one attempt timeout
        // each); with one, the posts not started by then fail at once.
        let endpoint = silent_endpoint().await;
        let api = ManagementApi::new(local_sdk_config(), None, policy());
        let pusher = api.pusher(&endpoint).with_deadline(Some(
            tokio::time::Instant::now() + Duration::from_millis(300),
        ));
        let members: Vec<String> = (0..200).map(|i| format!("member-{i}")).collect();
        let recipients: Vec<&str> = members.iter().map(String::as_str).collect();
        let started = Instant::now();
        let gone = pusher
            .push_all(&recipients, &Frame::from("{}".to_owned()), 64)
            .await;
        let elapsed = started.elapsed();
        assert!(gone.is_empty());
        // One round (700 ms) of the posts started in time, not four.
        assert!(elapsed < Duration::from_millis(1_800), "{elapsed:?}");
        // And a post asked for past it is not made at all.
        let started = Instant::now();
        let late = pusher.push("member-0", Frame::from("{}".to_owned())).await;
        assert!(
            matches!(&late, Err(PushError::Failed(why)) if why.contains("deadline")),
            "{late:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn throttled_posts_are_retried_with_backoff() {
        // Answers LimitExceededException twice, then accepts.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}/prod", listener.local_addr().unwrap());
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = served.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    loop {
                        let Ok(read) = socket.read(&mut buffer).await else {
                            return;
                        };
                        if read == 0 {
                            return;
                        }
                        let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let response = if n < 2 {
                            let body = r#"{"message":"slow down"}"#;
                            format!(
                                "HTTP/1.1 429 Too Many Requests\r\nx-amzn-errortype: LimitExceededException\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            )
                        } else {
                            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_owned()
                        };
                        if socket.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let api = ManagementApi::new(local_sdk_config(), None, policy());
        api.pusher(&endpoint)
            .push("abc", Frame::from("{}".to_owned()))
            .await
            .unwrap();
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
