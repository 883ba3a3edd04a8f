//! Delivery on AWS: the API Gateway Management API's PostToConnection.
//!
//! Clients are built once per Lambda container and cached per endpoint
//! (`https://{apiId}.execute-api.{region}.amazonaws.com/{stage}`, from the
//! event and the function's region). Every call has explicit connect and operation timeouts: without them
//! a PostToConnection can hang until the Lambda itself times out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use aws_sdk_apigatewaymanagement::Client;
use aws_sdk_apigatewaymanagement::error::{DisplayErrorContext, SdkError};
use aws_sdk_apigatewaymanagement::operation::delete_connection::DeleteConnectionError;
use aws_sdk_apigatewaymanagement::operation::post_to_connection::PostToConnectionError;
use aws_sdk_apigatewaymanagement::primitives::Blob;

use super::{Frame, PushError, Pusher};

/// Timeouts and retries of every post.
#[derive(Debug, Clone)]
pub struct PostPolicy {
    pub connect_timeout: Duration,
    /// One attempt, connect included.
    pub attempt_timeout: Duration,
    /// Attempts for a throttled (`LimitExceededException`) post, or one that
    /// could not connect.
    pub max_attempts: u32,
    /// The first retry waits up to this long (full jitter), doubling after.
    pub base_backoff: Duration,
}

impl Default for PostPolicy {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(3),
            max_attempts: 4,
            base_backoff: Duration::from_millis(50),
        }
    }
}

/// Management API clients, one per endpoint, for the life of the container.
pub struct ManagementApi {
    sdk_config: SdkConfig,
    /// Replaces the endpoint derived from events (for local runs).
    endpoint_override: Option<String>,
    policy: PostPolicy,
    clients: Mutex<HashMap<String, Client>>,
}

impl ManagementApi {
    pub fn new(
        sdk_config: SdkConfig,
        endpoint_override: Option<String>,
        policy: PostPolicy,
    ) -> Self {
        Self {
            sdk_config,
            endpoint_override,
            policy,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Where API Gateway takes posts for the connections of the API that
    /// sent `event`: its execute-api host and stage. Built from the API id,
    /// not the event's `domainName`: under a custom domain that name is the
    /// custom one, whose paths are the API mapping's rather than the stage,
    /// and the Management API is not served there.
    pub fn endpoint_for(&self, event: &ApiGatewayWebsocketProxyRequest) -> String {
        if let Some(endpoint) = &self.endpoint_override {
            return endpoint.clone();
        }
        let context = &event.request_context;
        let region = self
            .sdk_config
            .region()
            .map_or("us-east-1", |region| region.as_ref());
        // The partition's DNS suffix: China's regions have their own.
        let suffix = if region.starts_with("cn-") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        format!(
            "https://{}.execute-api.{region}.{suffix}/{}",
            context.apiid.as_deref().unwrap_or_default(),
            context.stage.as_deref().unwrap_or_default()
        )
    }

    pub fn pusher_for(&self, event: &ApiGatewayWebsocketProxyRequest) -> ApiGatewayPusher {
        self.pusher(&self.endpoint_for(event))
    }

    pub fn pusher(&self, endpoint: &str) -> ApiGatewayPusher {
        let mut clients = self
            .clients
            .lock()
            .expect("the client cache is never poisoned");
        let client = clients
            .entry(endpoint.to_owned())
            .or_insert_with(|| {
                let timeouts = TimeoutConfig::builder()
                    .connect_timeout(self.policy.connect_timeout)
                    .operation_attempt_timeout(self.policy.attempt_timeout)
                    .build();
                let config = aws_sdk_apigatewaymanagement::config::Builder::from(&self.sdk_config)
                    .endpoint_url(endpoint)
                    .timeout_config(timeouts)
                    // Retries are ours (below), so they are counted once.
                    .retry_config(RetryConfig::disabled())
                    .build();
                Client::from_conf(config)
            })
            .clone();
        ApiGatewayPusher {
            client,
            policy: Arc::new(self.policy.clone()),
            deadline: None,
        }
    }
}

#[derive(Clone)]
pub struct ApiGatewayPusher {
    client: Client,
    policy: Arc<PostPolicy>,
    /// No post is started, and none retried, from this instant on.
    deadline: Option<tokio::time::Instant>,
}

impl ApiGatewayPusher {
    /// Starts no post (and retries none) from `deadline` on: a function
    /// must finish before Lambda stops it, and a fan-out to a big room over
    /// a slow Management API could otherwise outlast it, and with it the
    /// clean-up of the members found gone. The posts not made fail at once.
    pub fn with_deadline(mut self, deadline: Option<tokio::time::Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    fn out_of_time(&self, after: Duration) -> bool {
        self.deadline
            .is_some_and(|deadline| tokio::time::Instant::now() + after >= deadline)
    }
}

impl Pusher for ApiGatewayPusher {
    async fn push(&self, connection_id: &str, frame: Frame) -> Result<(), PushError> {
        let mut attempt = 1;
        loop {
            if self.out_of_time(Duration::ZERO) {
                return Err(PushError::Failed(
                    "not posted: the function's deadline is near".into(),
                ));
            }
            let result = self
                .client
                .post_to_connection()
                .connection_id(connection_id)
                .data(Blob::new(frame.as_bytes().to_vec()))
                .send()
                .await;
            let error = match result {
                Ok(_) => return Ok(()),
                Err(error) => error,
            };
            let retryable = match classify(&error) {
                Outcome::Gone => return Err(PushError::Gone),
                Outcome::Retry => true,
                Outcome::Fail => false,
            };
            let wait = backoff(self.policy.base_backoff, attempt);
            if !retryable || attempt >= self.policy.max_attempts || self.out_of_time(wait) {
                return Err(PushError::Failed(DisplayErrorContext(&error).to_string()));
            }
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// One attempt: a connection left open is closed by its next refusal.
    async fn disconnect(&self, connection_id: &str) -> Result<(), PushError> {
        let result = self
            .client
            .delete_connection()
            .connection_id(connection_id)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| matches!(e, DeleteConnectionError::GoneException(_))) =>
            {
                Ok(())
            }
            Err(error) => Err(PushError::Failed(DisplayErrorContext(&error).to_string())),
        }
    }
}

enum Outcome {
    Gone,
    Retry,
    Fail,
}

/// Retries only what certainly did not deliver: a throttled post, or one
/// that never reached API Gateway. A post that timed out or failed midway may
/// have been delivered, and a retry could show the message twice.
fn classify<R>(error: &SdkError<PostToConnectionError, R>) -> Outcome {
    match error {
        SdkError::ServiceError(service) => match service.err() {
            PostToConnectionError::GoneException(_) => Outcome::Gone,
            PostToConnectionError::LimitExceededException(_) => Outcome::Retry,
            _ => Outcome::Fail,
        },
        SdkError::DispatchFailure(failure) if failure.is_io() || failure.is_timeout() => {
            Outcome::Retry
        }
        _ => Outcome::Fail,
    }
}

/// Exponential backoff with full jitter: a random wait up to
/// `base * 2^(attempt - 1)`, so throttled senders spread out.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let ceiling = base.saturating_mul(1 << attempt.saturating_sub(1).min(10));
    let fraction = (getrandom::u32().unwrap_or(u32::MAX / 2) as f64) / (u32::MAX as f64);
    ceiling.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use aws_config::{BehaviorVersion, Region};

    use super::*;

    fn api(region: &str) -> ManagementApi {
        let config = SdkConfig::builder()
            .region(Region::new(region.to_owned()))
            .behavior_version(BehaviorVersion::latest())
            .build();
        ManagementApi::new(config, None, PostPolicy::default())
    }

    fn event(domain: &str) -> ApiGatewayWebsocketProxyRequest {
        let mut event = ApiGatewayWebsocketProxyRequest::default();
        event.request_context.apiid = Some("abc123".into());
        event.request_context.stage = Some("prod".into());
        event.request_context.domain_name = Some(domain.into());
        event
    }

    #[test]
    fn the_endpoint_is_the_apis_own_even_under_a_custom_domain() {
        let expected = "https://abc123.execute-api.eu-west-1.amazonaws.com/prod";
        let api = api("eu-west-1");
        assert_eq!(
            api.endpoint_for(&event("abc123.execute-api.eu-west-1.amazonaws.com")),
            expected
        );
        assert_eq!(api.endpoint_for(&event("chat.example.com")), expected);
        assert_eq!(
            self::api("cn-north-1").endpoint_for(&event("chat.example.cn")),
            "https://abc123.execute-api.cn-north-1.amazonaws.com.cn/prod"
        );
    }
}
