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
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk_config),
        StoreConfig::from_env()?,
    );
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
            // The announcement of a connect, handed on by `$connect`.
            if event.payload.get("arrival").is_some() {
                let job: AnnounceJob = serde_json::from_value(event.payload)?;
                let chat = Chat::new(
                    store.clone(),
                    management.pusher(&job.endpoint),
                    config.clone(),
                );
                chat.announce_arrival(&job.arrival).await;
                return Ok::<_, Error>(serde_json::Value::Null);
            }
            let request: ApiGatewayWebsocketProxyRequest = serde_json::from_value(event.payload)?;
            let endpoint = management.endpoint_for(&request);
            let chat = Chat::new(store.clone(), management.pusher(&endpoint), config.clone());
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

/// What `$connect` hands to `ANNOUNCE_FUNCTION`: whom to announce, and the
/// Management API endpoint of the API it connected to.
#[derive(serde::Serialize, serde::Deserialize)]
struct AnnounceJob {
    arrival: Arrival,
    endpoint: String,
}
