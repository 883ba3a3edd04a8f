//! Sending frames to connections.
//!
//! On AWS a pusher posts through the API Gateway Management API; inside
//! chat-local, [`local::LocalPusher`] hands frames straight to the sockets it
//! holds. Handlers see only the [`Pusher`] trait and [`fan_out`].

pub mod apigw;
pub mod local;

use std::future::Future;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use shared::ServerFrame;

/// A serialized server frame: JSON text, serialized once per message and
/// shared (by reference count) by every recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("frames are built from strings")
    }
}

impl From<&ServerFrame> for Frame {
    fn from(frame: &ServerFrame) -> Self {
        Self(Bytes::from(frame.to_json()))
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Self {
        Self(Bytes::from(text))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The connection no longer exists (API Gateway's 410 Gone).
    #[error("connection is gone")]
    Gone,
    #[error("push failed: {0}")]
    Failed(String),
}

pub trait Pusher: Send + Sync + 'static {
    fn push(
        &self,
        connection_id: &str,
        frame: Frame,
    ) -> impl Future<Output = Result<(), PushError>> + Send;

    /// Delivers `frame` to every recipient and returns the ones that turned
    /// out to be gone. One failing recipient never holds up or stops the
    /// others. By default the posts run concurrently, `max_in_flight` at a
    /// time; a pusher whose push never waits does better with a plain loop.
    fn push_all(
        &self,
        recipients: &[&str],
        frame: &Frame,
        max_in_flight: usize,
    ) -> impl Future<Output = Vec<String>> + Send {
        fan_out(self, recipients, frame, max_in_flight)
    }
}

/// Delivers `frame` to every recipient concurrently, at most `max_in_flight`
/// at a time, and returns the ones that turned out to be gone.
pub async fn fan_out<P: Pusher + ?Sized>(
    pusher: &P,
    recipients: &[&str],
    frame: &Frame,
    max_in_flight: usize,
) -> Vec<String> {
    let mut gone = Vec::new();
    let mut waiting = recipients.iter();
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < max_in_flight.max(1) {
            let Some(connection_id) = waiting.next() else {
                break;
            };
            in_flight.push(deliver(pusher, connection_id, frame.clone()));
        }
        let Some((connection_id, result)) = in_flight.next().await else {
            return gone;
        };
        match result {
            Ok(()) => {}
            Err(PushError::Gone) => gone.push(connection_id.to_owned()),
            Err(error) => tracing::warn!(connection_id, %error, "delivery failed"),
        }
    }
}

async fn deliver<'a, P: Pusher + ?Sized>(
    pusher: &P,
    connection_id: &'a str,
    frame: Frame,
) -> (&'a str, Result<(), PushError>) {
    (connection_id, pusher.push(connection_id, frame).await)
}
