//! The chat on AWS Lambda: one binary for every API Gateway WebSocket route
//! (the template wires it to one function per route).
//!
//! SDK clients are built once per container; each invocation gets a pusher
//! for the endpoint its event came from. Logs are JSON (for CloudWatch Logs
//! Insights) and never include message bodies at INFO.
//!
//! A `?room=` connect is announced to its room by another invocation:
//! `$connect` answers at once (API Gateway completes the handshake only
//! then) after handing the announcement to `ANNOUNCE_FUNCTION`, invoked
//! without waiting, which runs this same binary with an [`AnnounceJob`].

use aws_config::BehaviorVersion;
use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use backend::chat::{Arrival, Chat, ChatConfig, OriginPolicy};
use backend::pusher::apigw::{ManagementApi, PostPolicy};
use backend::store::Limits;
use backend::store::dynamodb::{DynamoStore, StoreConfig};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use std::time::Duration;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // CloudWatch stamps every line already.
        .without_time()
        .with_current_span(false)
        .with_ansi(false)
        .init();

    let sdk_config = aws_config::load_defaults(BehaviorVersion::latest()).await;
    // Every DynamoDB call has a deadline of its own (the SDK has none by
    // default): a stalled connection must not hold a function until Lambda
    // stops it. Retries (the SDK's standard three attempts) fit within it.
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk_config)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(1))
                    .operation_attempt_timeout(Duration::from_secs(2))
                    .operation_timeout(Duration::from_secs(5))
                    .build(),
            )
            .build(),
    );
    let store = DynamoStore::new(dynamodb, StoreConfig::from_env()?);
    // For local runs (chat-local's Management API); on AWS the endpoint
    // comes from each event.
    let endpoint_override = std::env::var("MANAGEMENT_API_ENDPOINT").ok();
    // Handing on is one quick request; it must never hold up a handshake.
    let lambda = aws_sdk_lambda::Client::from_conf(
        aws_sdk_lambda::config::Builder::from(&sdk_config)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_timeout(std::time::Duration::from_secs(2))
                    .build(),
            )
            .build(),
    );
    let management = ManagementApi::new(sdk_config, endpoint_override, PostPolicy::default());
    let config = ChatConfig {
        origins: OriginPolicy::from_env()?,
        limits: Limits::from_env()?,
        ..ChatConfig::default()
    };
    // Unset (local runs), a connect is announced before it is answered.
    let announcer = std::env::var("ANNOUNCE_FUNCTION")
        .ok()
        .filter(|name| !name.is_empty())
        .map(|function| (lambda, function));
    let (store, management, config, announcer) = (&store, &management, &config, &announcer);

    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            let posts_until = post_deadline(event.context.deadline);
            // The announcement of a connect, handed on by `$connect`.
            if event.payload.get("arrival").is_some() {
                let job: AnnounceJob = serde_json::from_value(event.payload)?;
                let chat = Chat::new(
                    store.clone(),
                    management.pusher(&job.endpoint).with_deadline(posts_until),
                    config.clone(),
                );
                chat.announce_arrival(&job.arrival).await;
                return Ok::<_, Error>(serde_json::Value::Null);
            }
            let request: ApiGatewayWebsocketProxyRequest = serde_json::from_value(event.payload)?;
            let endpoint = management.endpoint_for(&request);
            let pusher = management.pusher(&endpoint).with_deadline(posts_until);
            let chat = Chat::new(store.clone(), pusher, config.clone());
            let (response, arrival) = chat.handle_deferring(request).await;
            if let Some(arrival) = arrival {
                let job = AnnounceJob { arrival, endpoint };
                match announcer {
                    Some((lambda, function)) => {
                        let handed_on = lambda
                            .invoke()
                            .function_name(function)
                            .invocation_type(InvocationType::Event)
                            .payload(Blob::new(serde_json::to_vec(&job)?))
                            .send()
                            .await;
                        // Not announced here instead: a request that timed
                        // out may have been taken, and a lost notice is
                        // better than a doubled one.
                        if let Err(error) = handed_on {
                            tracing::warn!(
                                connection_id = job.arrival.connection_id,
                                error = %aws_sdk_lambda::error::DisplayErrorContext(&error),
                                "could not hand on the announcement of a connect"
                            );
                        }
                    }
                    None => chat.announce_arrival(&job.arrival).await,
                }
            }
            Ok(serde_json::to_value(response)?)
        },
    ))
    .await
}

/// Time kept, after the last post is started, for the posts in flight to end
/// (one attempt each) and for what follows a fan-out (forgetting the
/// members found gone, telling their room).
const AFTER_THE_POSTS: Duration = Duration::from_secs(2);

/// When an invocation whose deadline is `deadline_ms` (Lambda's, in ms since
/// the epoch) starts no more posts. None when there is no usable deadline
/// (a local emulator may send none, or one already past).
fn post_deadline(deadline_ms: u64) -> Option<tokio::time::Instant> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |now| now.as_millis() as u64);
    let left = Duration::from_millis(deadline_ms.checked_sub(now_ms).filter(|&ms| ms > 0)?);
    // A short-lived function keeps a quarter of its time instead.
    let reserve = (PostPolicy::default().attempt_timeout + AFTER_THE_POSTS).min(left / 4);
    Some(tokio::time::Instant::now() + left - reserve)
}

/// What `$connect` hands to `ANNOUNCE_FUNCTION`: whom to announce, and the
/// Management API endpoint of the API it connected to.
#[derive(serde::Serialize, serde::Deserialize)]
struct AnnounceJob {
    arrival: Arrival,
    endpoint: String,
}
