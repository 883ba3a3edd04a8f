//! The real Lambda binary behind chat-local: chat-local plays API Gateway
//! and invokes `chat-lambda` through the Lambda Invoke API that
//! `cargo lambda watch` serves, routing each event to the function the SAM
//! template names; the functions keep their data in DynamoDB (dynoxide) and
//! push through chat-local's Management API.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// `cargo lambda watch`, stopped with its whole process group.
struct LambdaWatch(Child);

impl Drop for LambdaWatch {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.0.wait();
    }
}

fn start_lambda_watch(port: u16, dynamodb: &str, management_api: &str) -> LambdaWatch {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let env = [
        format!("AWS_ENDPOINT_URL_DYNAMODB={dynamodb}"),
        format!("MANAGEMENT_API_ENDPOINT={management_api}"),
        // $connect hands a ?room= announcement to this same binary, through
        // cargo lambda's Invoke API, as on AWS.
        "ANNOUNCE_FUNCTION=chat-lambda".into(),
        format!("AWS_ENDPOINT_URL_LAMBDA=http://127.0.0.1:{port}"),
        "AWS_ACCESS_KEY_ID=test".into(),
        "AWS_SECRET_ACCESS_KEY=test".into(),
        "AWS_REGION=us-east-1".into(),
        "AWS_EC2_METADATA_DISABLED=true".into(),
        "RUST_LOG=info".into(),
    ]
    .join(",");
    let child = Command::new("cargo")
        .args([
            "lambda",
            "watch",
            "--ignore-changes",
            "-A",
            "127.0.0.1",
            "-P",
        ])
        .arg(port.to_string())
        .args(["--bin", "chat-lambda", "--env-vars", &env])
        .current_dir(workspace)
        .process_group(0)
        .spawn()
        .expect("cargo lambda is installed (pip install cargo-lambda; scripts/test does it)");
    LambdaWatch(child)
}

#[tokio::test]
async fn the_lambda_binary_runs_a_whole_chat_behind_chat_local() {
    let dynamo = Dynamo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let lambda_port = free_port();
    let lambda_endpoint = format!("http://127.0.0.1:{lambda_port}");
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
    let server = Server::start_with(Options {
        data_dir: dir.path(),
        dist: None,
        dynamodb_endpoint: Some(&dynamo.endpoint),
        extra: &[
            "--lambda-endpoint",
            &lambda_endpoint,
            "--template",
            template.to_str().unwrap(),
        ],
    });
    let _watch = start_lambda_watch(
        lambda_port,
        &dynamo.endpoint,
        &server.management_url("/local"),
    );

    // The first invocation may wait for cargo-lambda to build the binary.
    let started = Instant::now();
    let mut ada = loop {
        // $connect itself is a Lambda invocation: until it answers, the
        // upgrade is refused.
        let Ok((mut socket, _)) = tokio_tungstenite::connect_async(server.ws_url("")).await else {
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "$connect never succeeded"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        send(&mut socket, json!({"action": "ping"})).await;
        match tokio::time::timeout(Duration::from_secs(30), next_frame_or_close(&mut socket)).await
        {
            Ok(Some(frame)) if frame["type"] == "pong" => break socket,
            _ if started.elapsed() < Duration::from_secs(600) => continue,
            other => panic!("the Lambda function never answered: {other:?}"),
        }
    };

    send(
        &mut ada,
        json!({"action": "join", "room": "lambda", "name": "Ada"}),
    )
    .await;
    let joined = expect(&mut ada, "joined").await;
    assert_eq!(joined["members"], json!(["Ada"]));

    let (mut bo, joined) = server.join("lambda", "Bo").await;
    assert_eq!(joined["count"], 2);
    let presence = expect(&mut ada, "presence").await;
    assert_eq!(
        presence,
        json!({"type": "presence", "event": "join", "room": "lambda", "name": "Bo", "count": 2})
    );

    // A connect-time join is announced by an invocation of its own.
    let cy = server.connect_with("?room=lambda&name=Cy").await;
    for socket in [&mut ada, &mut bo] {
        let presence = expect(socket, "presence").await;
        assert_eq!(
            (presence["name"].as_str(), presence["count"].as_u64()),
            (Some("Cy"), Some(3))
        );
    }
    drop(cy);
    for socket in [&mut ada, &mut bo] {
        assert_eq!(expect(socket, "presence").await["event"], "leave");
    }

    say(&mut bo, "through Lambda").await;
    for socket in [&mut ada, &mut bo] {
        let message = expect(socket, "message").await;
        assert_eq!(
            (message["name"].as_str(), message["data"].as_str()),
            (Some("Bo"), Some("through Lambda"))
        );
    }

    send(&mut ada, json!({"action": "dance"})).await;
    expect_error(&mut ada, "unknown_action").await;

    send(&mut bo, json!({"action": "leave"})).await;
    expect(&mut bo, "left").await;
    assert_eq!(expect(&mut ada, "presence").await["event"], "leave");

    send(
        &mut bo,
        json!({"action": "join", "room": "lambda", "name": "Bo"}),
    )
    .await;
    let joined = expect(&mut bo, "joined").await;
    assert_eq!(joined["history"][0]["data"], "through Lambda");
    assert_eq!(expect(&mut ada, "presence").await["event"], "join");

    // $disconnect goes through its function too.
    drop(bo);
    let presence = expect(&mut ada, "presence").await;
    assert_eq!(
        (presence["event"].as_str(), presence["count"].as_u64()),
        (Some("leave"), Some(1))
    );
    assert_eq!(connection_ids(&dynamo, "lambda").await.len(), 1);
}

/// The next text frame, or `None` if the socket closed first.
async fn next_frame_or_close(socket: &mut Socket) -> Option<serde_json::Value> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    while let Some(Ok(message)) = socket.next().await {
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).ok();
        }
    }
    None
}
