//! The DynamoDB store against a real DynamoDB API (dynoxide).

mod common;

use backend::store::NewConnection;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, TimeToLiveStatus};
use backend::store::dynamodb::{DynamoStore, GATEWAY_INDEX, StoreConfig};
use backend::store::{Member, Store};
use common::Dynamo;
use shared::{ChatMessage, Name, Room};

async fn store(dynamo: &Dynamo, page_size: Option<i32>) -> DynamoStore {
    let store = DynamoStore::new(
        dynamo.client.clone(),
        StoreConfig {
            page_size,
            ..dynamo.store_config()
        },
    );
    store.ensure_tables().await.unwrap();
    store
}

fn room(name: &str) -> Room {
    Room::parse(name).unwrap()
}

fn name(name: &str) -> Name {
    Name::parse(name).unwrap()
}

/// An instant an hour ago, the same for the whole test run: records stamped
/// long ago would be expired, and queries leave expired items out.
fn recently() -> u64 {
    static AN_HOUR_AGO: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *AN_HOUR_AGO.get_or_init(|| backend::clock::now_ms() - 3_600_000)
}

fn message(room: &str, i: u64) -> ChatMessage {
    let ts = recently() + i;
    ChatMessage {
        id: format!("{ts:013}-{i:016x}"),
        room: room.into(),
        name: "Ada".into(),
        data: format!("message {i}"),
        ts,
        nonce: None,
    }
}

#[tokio::test]
async fn room_members_follow_every_page() {
    let dynamo = Dynamo::start().await;
    let store = store(&dynamo, Some(3)).await;
    let now = backend::clock::now_ms();
    for i in 0..10 {
        let id = format!("conn-{i}");
        store
            .add_connection(&NewConnection::new(
                &id,
                now,
                Some((&room("big"), &name(&format!("user {i}")))),
            ))
            .await
            .unwrap();
    }
    store
        .add_connection(&NewConnection::new(
            "other",
            now,
            Some((&room("small"), &name("Bo"))),
        ))
        .await
        .unwrap();
    store
        .add_connection(&NewConnection::new("lobbyist", now, None))
        .await
        .unwrap();

    let mut members = store.room_members("big").await.unwrap().to_vec();
    members.sort_by(|a, b| a.connection_id.cmp(&b.connection_id));
    let expected: Vec<Member> = (0..10)
        .map(|i| Member {
            connection_id: format!("conn-{i}").into(),
            name: format!("user {i}").into(),
        })
        .collect();
    let mut expected = expected;
    expected.sort_by(|a, b| a.connection_id.cmp(&b.connection_id));
    assert_eq!(members, expected, "10 members over pages of 3");
    assert_eq!(store.room_members("small").await.unwrap().len(), 1);
    assert!(store.room_members("empty").await.unwrap().is_empty());
}

#[tokio::test]
async fn membership_changes_return_the_connection_as_it_was() {
    let dynamo = Dynamo::start().await;
    let store = store(&dynamo, None).await;
    store
        .add_connection(&NewConnection::new("c1", recently(), None))
        .await
        .unwrap();

    let before = store
        .join_room("c1", &room("one"), &name("Ada"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (before.room, before.name, before.connected_at),
        (None, None, recently())
    );
    let before = store
        .join_room("c1", &room("two"), &name("Ada"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before.room.as_deref(), Some("one"));
    assert!(store.room_members("one").await.unwrap().is_empty());
    assert_eq!(store.room_members("two").await.unwrap().len(), 1);

    let before = store.leave_room("c1").await.unwrap().unwrap();
    assert_eq!(before.room.as_deref(), Some("two"));
    assert!(store.room_members("two").await.unwrap().is_empty());
    let now = store.connection("c1").await.unwrap().unwrap();
    assert_eq!((now.room, now.name.as_deref()), (None, Some("Ada")));

    // Unknown connections are reported, never created.
    assert!(
        store
            .join_room("ghost", &room("one"), &name("X"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.leave_room("ghost").await.unwrap().is_none());
    assert!(store.connection("ghost").await.unwrap().is_none());

    assert!(store.remove_connection("c1").await.unwrap().is_some());
    assert!(store.remove_connection("c1").await.unwrap().is_none());
}

#[tokio::test]
async fn recent_messages_are_the_latest_oldest_first_across_pages() {
    let dynamo = Dynamo::start().await;
    for page_size in [None, Some(7)] {
        let store = store(&dynamo, page_size).await;
        let room_name = format!("history-{page_size:?}").replace(['(', ')', ' '], "");
        // Saved out of order: the sort key, not arrival, decides.
        let mut order: Vec<u64> = (0..60).collect();
        order.reverse();
        order.swap(3, 40);
        for i in order {
            store.save_message(&message(&room_name, i)).await.unwrap();
        }
        store
            .save_message(&message(&format!("{room_name}-other"), 100))
            .await
            .unwrap();

        let recent = store.recent_messages(&room_name, 50).await.unwrap();
        let expected: Vec<ChatMessage> = (10..60).map(|i| message(&room_name, i)).collect();
        assert_eq!(recent, expected, "page size {page_size:?}");
        assert_eq!(
            store.recent_messages(&room_name, 5).await.unwrap(),
            expected[45..]
        );
        assert!(
            store
                .recent_messages("nothing-here", 50)
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test]
async fn a_message_id_is_never_overwritten() {
    let dynamo = Dynamo::start().await;
    let store = store(&dynamo, None).await;
    store.save_message(&message("r", 1)).await.unwrap();
    let mut clash = message("r", 1);
    clash.data = "overwrite".into();
    assert!(store.save_message(&clash).await.is_err());
    assert_eq!(
        store.recent_messages("r", 50).await.unwrap(),
        [message("r", 1)]
    );
}

#[tokio::test]
async fn expired_items_are_left_out_before_dynamodb_deletes_them() {
    // Page size 1: the filter must not end the paging early.
    let dynamo = Dynamo::start().await;
    let store = store(&dynamo, Some(1)).await;
    let config = dynamo.store_config();
    let now = backend::clock::now_ms();
    let hour = 3_600_000;
    let stale = now - config.connection_ttl.as_millis() as u64 - hour;
    store
        .add_connection(&NewConnection::new(
            "stale",
            stale,
            Some((&room("ttl"), &name("Old"))),
        ))
        .await
        .unwrap();
    store
        .add_connection(&NewConnection::new(
            "live",
            now,
            Some((&room("ttl"), &name("New"))),
        ))
        .await
        .unwrap();
    let members = store.room_members("ttl").await.unwrap();
    assert_eq!(
        members.iter().map(|m| &*m.name).collect::<Vec<_>>(),
        ["New"],
        "an expired connection record is nobody"
    );

    let old = now - config.message_ttl.as_millis() as u64 - hour;
    let mut messages = Vec::new();
    for (i, ts) in [old, old + 1, now - 2, now - 1].into_iter().enumerate() {
        let mut message = message("ttl", i as u64);
        message.id = format!("{ts:013}-{i:016x}");
        message.ts = ts;
        store.save_message(&message).await.unwrap();
        messages.push(message);
    }
    assert_eq!(
        store.recent_messages("ttl", 50).await.unwrap(),
        messages[2..],
        "history older than the retention is not shown"
    );
    // Paging back from a message already past the retention finds nothing
    // (rather than asking DynamoDB for a range the wrong way round).
    assert_eq!(
        store
            .messages_before("ttl", &messages[1].id, 50)
            .await
            .unwrap(),
        []
    );
    assert_eq!(
        store
            .messages_before("ttl", &messages[3].id, 50)
            .await
            .unwrap(),
        messages[2..3]
    );
}

#[tokio::test]
async fn items_carry_a_ttl_and_the_tables_enable_it() {
    let dynamo = Dynamo::start().await;
    let store = store(&dynamo, None).await;
    let now_ms = backend::clock::now_ms();
    store
        .add_connection(&NewConnection::new("c1", now_ms, None))
        .await
        .unwrap();
    let mut fresh = message("r", 1);
    fresh.ts = now_ms;
    store.save_message(&fresh).await.unwrap();

    let config = dynamo.store_config();
    let expiry = |item: &std::collections::HashMap<String, AttributeValue>| -> u64 {
        item["expiresAt"].as_n().unwrap().parse().unwrap()
    };
    let connection = dynamo
        .client
        .get_item()
        .table_name(&config.connections_table)
        .key("connectionId", AttributeValue::S("c1".into()))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(
        expiry(&connection),
        now_ms / 1000 + config.connection_ttl.as_secs()
    );
    let saved = dynamo
        .client
        .get_item()
        .table_name(&config.messages_table)
        .key("room", AttributeValue::S("r".into()))
        .key("id", AttributeValue::S(fresh.id.clone()))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(expiry(&saved), now_ms / 1000 + config.message_ttl.as_secs());
    assert!(config.message_ttl >= Duration::from_secs(24 * 3600));

    for table in [&config.connections_table, &config.messages_table] {
        let ttl = dynamo
            .client
            .describe_time_to_live()
            .table_name(table)
            .send()
            .await
            .unwrap()
            .time_to_live_description
            .unwrap();
        assert_eq!(ttl.attribute_name(), Some("expiresAt"));
        assert_eq!(ttl.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));
    }
}

#[tokio::test]
async fn a_restart_removes_its_own_stale_records_and_nobody_elses() {
    let dynamo = Dynamo::start().await;
    let gateway = |id: &str| {
        DynamoStore::new(
            dynamo.client.clone(),
            StoreConfig {
                gateway: Some(id.into()),
                ..dynamo.store_config()
            },
        )
    };
    let mine = gateway("mine");
    mine.ensure_tables().await.unwrap();
    let theirs = gateway("theirs");
    theirs.ensure_tables().await.unwrap();
    let lambda = store(&dynamo, None).await;
    for (store, id) in [(&mine, "m1"), (&mine, "m2"), (&theirs, "t1")] {
        store
            .add_connection(&NewConnection::new(
                id,
                recently(),
                Some((&room("r"), &name(id))),
            ))
            .await
            .unwrap();
        // Counted into the room's presence, as a connect-time join is.
        store.count_presence("r", id, 1, recently()).await.unwrap();
    }
    lambda
        .add_connection(&NewConnection::new(
            "l1",
            recently(),
            Some((&room("r"), &name("l1"))),
        ))
        .await
        .unwrap();
    mine.save_message(&message("r", 1)).await.unwrap();

    // The next start of "mine" (tables already there, untouched).
    let restarted = gateway("mine");
    restarted.ensure_tables().await.unwrap();
    assert_eq!(restarted.remove_stale_connections(true).await.unwrap(), 2);
    let mut left: Vec<String> = restarted
        .room_members("r")
        .await
        .unwrap()
        .iter()
        .map(|m| m.connection_id.to_string())
        .collect();
    left.sort();
    assert_eq!(left, ["l1", "t1"], "only this gateway's records go");
    // And out of it: m1's next arrival is told again.
    assert_eq!(
        restarted
            .count_presence("r", "m1", 1, recently())
            .await
            .unwrap(),
        1
    );
    assert_eq!(restarted.recent_messages("r", 50).await.unwrap().len(), 1);
    assert_eq!(restarted.remove_stale_connections(true).await.unwrap(), 0);
}

#[tokio::test]
async fn a_table_whose_ttl_was_never_turned_on_gets_it_at_the_next_start() {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        TimeToLiveStatus,
    };
    let dynamo = Dynamo::start().await;
    // As a start that crashed between CreateTable and UpdateTimeToLive left it.
    dynamo
        .client
        .create_table()
        .table_name(&dynamo.store_config().messages_table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("room")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("room")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Range)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let store = store(&dynamo, None).await;
    store.ensure_tables().await.unwrap();
    let ttl = dynamo
        .client
        .describe_time_to_live()
        .table_name(&dynamo.store_config().messages_table)
        .send()
        .await
        .unwrap()
        .time_to_live_description
        .unwrap();
    assert!(matches!(
        ttl.time_to_live_status(),
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
    ));
}

/// The same sequence on both adapters: DynamoDB evaluates the limit in
/// condition expressions, chat-local in memory; they must agree exactly.
async fn rate_limit_sequence(store: &impl Store) {
    use backend::store::{Admission, Limits, RateLimit};
    const SECOND: u64 = 1_000_000;
    let limit = Limits {
        connection: RateLimit::new(2.0, 3).unwrap(),
        ..Limits::OFF
    };
    let limit = &limit;
    store
        .add_connection(&NewConnection::new(
            "c1",
            recently(),
            Some((&room("r"), &name("Ada"))),
        ))
        .await
        .unwrap();
    let start = 1_700_000_000 * SECOND;
    let admitted = |admission: Admission| match admission {
        Admission::Admitted(connection) => {
            assert_eq!(connection.room.as_deref(), Some("r"));
            true
        }
        Admission::Limited { .. } => false,
        Admission::Unknown => panic!("c1 is recorded"),
    };
    let mut outcomes = Vec::new();
    // A burst of 5 at once, one more half a second later, 3 more after a
    // long pause (the bucket holds 3, never more).
    for at in [
        0,
        0,
        0,
        0,
        0,
        SECOND / 2,
        SECOND / 2,
        60 * SECOND,
        60 * SECOND,
    ]
    .into_iter()
    .chain([60 * SECOND, 60 * SECOND])
    {
        outcomes.push(admitted(
            store.admit_message("c1", limit, start + at).await.unwrap(),
        ));
    }
    assert_eq!(
        outcomes,
        [
            true, true, true, false, false, true, false, true, true, true, false
        ]
    );
    assert_eq!(
        store.admit_message("nobody", limit, start).await.unwrap(),
        Admission::Unknown
    );
    // Without a limit every message is admitted.
    for _ in 0..20 {
        assert!(admitted(
            store
                .admit_message("c1", &Limits::OFF, start + 60 * SECOND)
                .await
                .unwrap()
        ));
    }
}

/// A client address's limits, the same on both adapters: handshakes on a
/// bucket of their own, and a new connection starting where the address's
/// last one left off, so reconnecting refills nothing.
async fn client_limit_sequence(store: &impl Store) {
    use backend::store::{Admission, ClientAdmission, Limits, RateLimit};
    const SECOND: u64 = 1_000_000;
    let limits = Limits {
        connection: RateLimit::new(1.0, 3).unwrap(),
        client: None,
        handshakes: RateLimit::new(1.0, 2).unwrap(),
    };
    let start = 1_700_000_000 * SECOND;
    let client = "198.51.100.4";
    let admit = |at: u64, joining: bool| store.admit_client(client, &limits, joining, start + at);
    // Two handshakes at once, the third refused, one more a second later.
    let first = admit(0, false).await.unwrap();
    assert_eq!(first, ClientAdmission::Admitted { full_again_us: 0 });
    assert!(matches!(
        admit(0, false).await.unwrap(),
        ClientAdmission::Admitted { .. }
    ));
    assert_eq!(admit(0, false).await.unwrap(), ClientAdmission::Limited);
    assert!(matches!(
        admit(SECOND, false).await.unwrap(),
        ClientAdmission::Admitted { .. }
    ));
    // Another address is not affected.
    assert!(matches!(
        store
            .admit_client("198.51.100.5", &limits, false, start)
            .await
            .unwrap(),
        ClientAdmission::Admitted { .. }
    ));

    // A connection spends its burst, then goes away: the next one from
    // the same address starts where it left off.
    let now = start + 2 * SECOND;
    store
        .add_connection(&NewConnection {
            client: Some(client),
            ..NewConnection::new("spender", recently(), None)
        })
        .await
        .unwrap();
    for _ in 0..3 {
        assert!(matches!(
            store.admit_message("spender", &limits, now).await.unwrap(),
            Admission::Admitted(_)
        ));
    }
    // Told when: the bucket holds 3 and refills one a second.
    assert_eq!(
        store.admit_message("spender", &limits, now).await.unwrap(),
        Admission::Limited {
            retry_after_ms: 1000
        }
    );
    store.remove_connection("spender").await.unwrap();
    // The handler reads the real clock when it hands on the bucket; these
    // times are in the past, so hand-over happens only when it is later
    // than now: use real time from here on.
    let now = backend::clock::now_us();
    let limits = Limits {
        handshakes: None,
        ..limits
    };
    let fresh = store
        .admit_client("203.0.113.50", &limits, false, now)
        .await
        .unwrap();
    assert_eq!(fresh, ClientAdmission::Admitted { full_again_us: 0 });
    store
        .add_connection(&NewConnection {
            client: Some("203.0.113.50"),
            ..NewConnection::new("first", recently(), None)
        })
        .await
        .unwrap();
    for _ in 0..3 {
        store.admit_message("first", &limits, now).await.unwrap();
    }
    store.remove_connection("first").await.unwrap();
    let ClientAdmission::Admitted { full_again_us } = store
        .admit_client("203.0.113.50", &limits, false, now)
        .await
        .unwrap()
    else {
        panic!("the handshake bucket has room");
    };
    assert_eq!(
        full_again_us,
        now + 3 * SECOND,
        "starts with an empty bucket"
    );
    store
        .add_connection(&NewConnection {
            client: Some("203.0.113.50"),
            full_again_us,
            ..NewConnection::new("second", recently(), None)
        })
        .await
        .unwrap();
    assert_eq!(
        store.admit_message("second", &limits, now).await.unwrap(),
        Admission::Limited {
            retry_after_ms: 1000
        }
    );
    // A `?room=` join at connect time counts too: refused while empty.
    assert_eq!(
        store
            .admit_client("203.0.113.50", &limits, true, now)
            .await
            .unwrap(),
        ClientAdmission::Limited
    );
}

#[tokio::test]
async fn the_rate_limit_is_the_same_in_dynamodb_and_in_memory() {
    let dynamo = Dynamo::start().await;
    let dynamo_store = store(&dynamo, None).await;
    rate_limit_sequence(&dynamo_store).await;
    client_limit_sequence(&dynamo_store).await;
    let local = backend::store::local::LocalStore::new(dynamo_store.clone(), dynamo_store);
    rate_limit_sequence(&local).await;
    client_limit_sequence(&local).await;
}

/// Presence counts per name and room, and refusals counted within a
/// window: what the handlers decide on.
async fn presence_and_refusal_sequence(store: &impl Store) {
    let now = recently();
    let count = |room: &'static str, name: &'static str, delta: i64| async move {
        store.count_presence(room, name, delta, now).await.unwrap()
    };
    // Two tabs of one name, then both gone: told on the first and the last.
    assert_eq!(count("r", "Ada", 1).await, 1);
    assert_eq!(count("r", "Ada", 1).await, 2);
    assert_eq!(count("r2", "Ada", 1).await, 1, "per room");
    assert_eq!(count("r", "ada", 1).await, 1, "per name as written");
    assert_eq!(count("r", "Ada", -1).await, 1);
    assert_eq!(count("r", "Ada", -1).await, 0);
    // A departure counted twice (a record forgotten twice) is not carried
    // into the next arrival, which is told.
    assert_eq!(count("r", "Ada", -1).await, 0);
    assert_eq!(count("r", "Ada", 1).await, 1);

    store
        .add_connection(&NewConnection::new("refused", now, None))
        .await
        .unwrap();
    let refuse = |at: u64| async move { store.note_refusal("refused", at).await.unwrap() };
    assert_eq!(refuse(now).await, 1);
    assert_eq!(refuse(now + 1_000).await, 2);
    assert_eq!(refuse(now + 59_000).await, 3);
    // A minute after the first, counting starts again.
    assert_eq!(refuse(now + 60_000).await, 1);
    assert_eq!(refuse(now + 61_000).await, 2);
    assert_eq!(store.note_refusal("nobody", now).await.unwrap(), 0);
}

#[tokio::test]
async fn presence_and_refusals_are_counted_the_same_in_dynamodb_and_in_memory() {
    let dynamo = Dynamo::start().await;
    let dynamo_store = store(&dynamo, None).await;
    presence_and_refusal_sequence(&dynamo_store).await;
    let local = backend::store::local::LocalStore::new(dynamo_store.clone(), dynamo_store);
    presence_and_refusal_sequence(&local).await;
}

#[tokio::test]
async fn a_table_made_without_the_gateway_index_gets_it_where_chat_local_may_add_it() {
    let dynamo = Dynamo::start().await;
    // Made by the functions' store (no gateway), as an older chat-local did.
    store(&dynamo, None).await;
    let mine = || {
        DynamoStore::new(
            dynamo.client.clone(),
            StoreConfig {
                gateway: Some("mine".into()),
                ..dynamo.store_config()
            },
        )
    };
    let table = dynamo.store_config().connections_table;
    let indexes = || async {
        let described = dynamo
            .client
            .describe_table()
            .table_name(&table)
            .send()
            .await
            .unwrap();
        described
            .table
            .unwrap()
            .global_secondary_indexes()
            .iter()
            .filter_map(|index| index.index_name().map(str::to_owned))
            .collect::<Vec<_>>()
    };

    // Someone else's engine: the schema is not touched.
    let first = mine();
    first.ensure_tables().await.unwrap();
    assert_eq!(first.remove_stale_connections(false).await.unwrap(), 0);
    assert!(!indexes().await.iter().any(|name| name == GATEWAY_INDEX));
    first
        .add_connection(&NewConnection::new(
            "m1",
            recently(),
            Some((&room("r"), &name("m1"))),
        ))
        .await
        .unwrap();

    // Its own engine: the index is added, built from the records already
    // there, and this very start cleans up.
    let second = mine();
    second.ensure_tables().await.unwrap();
    assert_eq!(second.remove_stale_connections(true).await.unwrap(), 1);
    assert!(indexes().await.iter().any(|name| name == GATEWAY_INDEX));
    assert!(second.room_members("r").await.unwrap().is_empty());
    assert_eq!(second.remove_stale_connections(true).await.unwrap(), 0);
}
