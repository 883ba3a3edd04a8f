//! The chat on AWS Lambda: one binary for every API Gateway WebSocket route
//! (the template wires it to one function per route).
//!
//! SDK clients are built once per container; each invocation gets a pusher
//! for the endpoint its event came from. Logs are JSON (for CloudWatch Logs
//! Insights) and never include message bodies at INFO.

use aws_config::BehaviorVersion;
use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use backend::chat::{Chat, ChatConfig, OriginPolicy};
use backend::pusher::apigw::{ManagementApi, PostPolicy};
use backend::store::RateLimit;
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
    let management = ManagementApi::new(sdk_config, endpoint_override, PostPolicy::default());
    let config = ChatConfig {
        origins: OriginPolicy::from_env()?,
        rate_limit: RateLimit::from_env()?,
        ..ChatConfig::default()
    };
    let (store, management, config) = (&store, &management, &config);

    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| async move {
            let pusher = management.pusher_for(&event.payload);
            let chat = Chat::new(store.clone(), pusher, config.clone());
            Ok::<ApiGatewayProxyResponse, Error>(chat.handle(event.payload).await)
        },
    ))
    .await
}
