//! chat-local's Management API (`/@connections/{id}`) and its `internal`
//! errors, with chat-local pointed at a DynamoDB this test can also reach,
//! the way `--dynamodb-endpoint` points it at DynamoDB Local.

mod common;

use aws_sdk_dynamodb::types::AttributeValue;
use common::*;
use futures::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// The connection ids in `room`, read from the store as fan-out reads them.
async fn connection_ids(dynamo: &Dynamo, room: &str) -> Vec<String> {
    let page = dynamo
        .client
        .query()
        .table_name("chat-connections")
        .index_name("room-index")
        .key_condition_expression("room = :room")
        .expression_attribute_values(":room", AttributeValue::S(room.into()))
        .send()
        .await
        .unwrap();
    page.items()
        .iter()
        .map(|item| item["connectionId"].as_s().unwrap().clone())
        .collect()
}

async fn start(dynamo: &Dynamo, dir: &std::path::Path) -> Server {
    Server::start_with(Options {
        data_dir: dir,
        dist: None,
        dynamodb_endpoint: Some(&dynamo.endpoint),
        extra: &[],
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

    // POST: the body arrives as one text frame, verbatim.
    let (status, _) = http_request(
        "POST",
        &server.http(&format!("/@connections/{ada_id}")),
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
        &server.http(&format!("/local/@connections/{ada_id}")),
        Some(b"{\"staged\":true}"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(next_frame(&mut ada).await, json!({"staged": true}));

    // GET: when it connected and from where.
    let (status, body) = http_request(
        "GET",
        &server.http(&format!("/@connections/{ada_id}")),
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
        let (status, body) =
            http_request(method, &server.http("/@connections/nobody"), Some(b"x")).await;
        assert_eq!(status, 410, "{method}");
        assert!(body.contains("no such connection"));
    }

    // DELETE closes the socket, and the room hears of it.
    let (mut bo, _) = server.join("ops", "Bo").await;
    let (status, _) = http_request(
        "DELETE",
        &server.http(&format!("/@connections/{ada_id}")),
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
