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

    /// Closes a connection from the server's side (API Gateway's `DELETE
    /// @connections`); its `$disconnect` follows. A connection already gone
    /// is not an error.
    fn disconnect(&self, connection_id: &str)
    -> impl Future<Output = Result<(), PushError>> + Send;

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
    let mut failed = Failures::default();
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
            failed.log(recipients.len(), gone.len());
            return gone;
        };
        match result {
            Ok(()) => {}
            Err(PushError::Gone) => gone.push(connection_id.to_owned()),
            Err(error) => failed.add(connection_id, &error),
        }
    }
}

/// The recipients a fan-out failed, summed up: one log line per fan-out,
/// however many failed (under throttling, a line per recipient of a big
/// room would be megabytes of logs for one message).
#[derive(Default)]
struct Failures {
    count: usize,
    /// The first few, as examples.
    sample: Vec<String>,
    first_error: Option<String>,
}

impl Failures {
    const SAMPLE: usize = 3;

    fn add(&mut self, connection_id: &str, error: &PushError) {
        self.count += 1;
        if self.sample.len() < Self::SAMPLE {
            self.sample.push(connection_id.to_owned());
        }
        self.first_error.get_or_insert_with(|| error.to_string());
    }

    fn log(&self, recipients: usize, gone: usize) {
        if self.count > 0 {
            tracing::warn!(
                recipients,
                failed = self.count,
                gone,
                sample = ?self.sample,
                first_error = self.first_error.as_deref().unwrap_or_default(),
                "fan-out: some deliveries failed"
            );
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Fails every recipient but those named "ok", and says "gone" for
    /// those named "gone-…".
    struct Throttled;

    impl Pusher for Throttled {
        async fn push(&self, connection_id: &str, _frame: Frame) -> Result<(), PushError> {
            match connection_id {
                "ok" => Ok(()),
                id if id.starts_with("gone") => Err(PushError::Gone),
                _ => Err(PushError::Failed("429 Too Many Requests".into())),
            }
        }

        async fn disconnect(&self, _connection_id: &str) -> Result<(), PushError> {
            Ok(())
        }
    }

    /// Everything logged while `run` runs, as text.
    fn logged(run: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, run);
        String::from_utf8(sink.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_fan_out_that_fails_many_logs_one_line() {
        let recipients: Vec<String> = (0..1000).map(|i| format!("member-{i}")).collect();
        let mut all: Vec<&str> = recipients.iter().map(String::as_str).collect();
        all.extend(["ok", "gone-1", "gone-2"]);
        let frame = Frame::from("{}".to_owned());
        let mut gone = Vec::new();
        let log = logged(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            gone = runtime.block_on(fan_out(&Throttled, &all, &frame, 64));
        });
        gone.sort();
        assert_eq!(gone, ["gone-1", "gone-2"]);
        assert_eq!(log.lines().count(), 1, "{log}");
        for part in [
            "recipients=1003",
            "failed=1000",
            "gone=2",
            "429 Too Many Requests",
            "member-",
        ] {
            assert!(log.contains(part), "{part} in {log}");
        }
    }
}
