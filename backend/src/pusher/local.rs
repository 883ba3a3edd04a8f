//! In-process delivery for chat-local: the registry of the sockets this
//! process holds, which is also the pusher the handlers use.
//!
//! Each socket's task owns the receiving end of a bounded queue; the registry
//! owns the only sender. Pushing is a non-blocking enqueue, so a fan-out to a
//! room never waits on any one socket. Taking a connection out of the registry
//! drops its sender, and its task then closes the socket once the frames
//! already queued are written: that one mechanism serves a client's own close,
//! the management API's DELETE, a slow reader and shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use dashmap::DashMap;
use tokio::sync::mpsc;

use super::{Frame, PushError, Pusher};

/// Frames queued for one socket before it counts as too slow to keep.
pub const OUTBOUND_QUEUE: usize = 1024;

/// WebSocket close codes the gateway uses (RFC 6455, section 7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// What the management API's GET reports, and what the socket task updates.
#[derive(Debug)]
pub struct ConnectionInfo {
    pub connected_at_ms: u64,
    pub source_ip: String,
    pub user_agent: String,
    last_active_ms: AtomicU64,
    close_code: AtomicU16,
}

impl ConnectionInfo {
    pub fn new(connected_at_ms: u64, source_ip: String, user_agent: String) -> Self {
        Self {
            connected_at_ms,
            source_ip,
            user_agent,
            last_active_ms: AtomicU64::new(connected_at_ms),
            close_code: AtomicU16::new(close_code::NORMAL),
        }
    }

    pub fn touch(&self, now_ms: u64) {
        self.last_active_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn last_active_ms(&self) -> u64 {
        self.last_active_ms.load(Ordering::Relaxed)
    }

    /// The close code the socket task sends once its queue is dropped.
    pub fn close_code(&self) -> u16 {
        self.close_code.load(Ordering::Relaxed)
    }
}

struct Entry {
    outbound: mpsc::Sender<Frame>,
    info: Arc<ConnectionInfo>,
}

#[derive(Clone, Default)]
pub struct LocalPusher {
    connections: Arc<DashMap<String, Entry>>,
}

impl LocalPusher {
    /// Registers a socket and returns the queue its task writes from.
    pub fn register(
        &self,
        connection_id: &str,
        info: Arc<ConnectionInfo>,
    ) -> mpsc::Receiver<Frame> {
        let (outbound, queue) = mpsc::channel(OUTBOUND_QUEUE);
        self.connections
            .insert(connection_id.to_owned(), Entry { outbound, info });
        queue
    }

    pub fn info(&self, connection_id: &str) -> Option<Arc<ConnectionInfo>> {
        self.connections
            .get(connection_id)
            .map(|entry| Arc::clone(&entry.info))
    }

    /// Closes a socket (after its queued frames) with `code`; false when it
    /// was not connected.
    pub fn close(&self, connection_id: &str, code: u16) -> bool {
        match self.connections.remove(connection_id) {
            Some((_, entry)) => {
                entry.info.close_code.store(code, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    pub fn close_all(&self, code: u16) {
        let ids: Vec<String> = self.connections.iter().map(|e| e.key().clone()).collect();
        for id in ids {
            self.close(&id, code);
        }
    }

    /// Enqueues without waiting: a full queue means the reader is hopelessly
    /// behind, and it is disconnected rather than let memory grow without
    /// bound or stall everyone else's delivery.
    pub fn try_push(&self, connection_id: &str, frame: Frame) -> Result<(), PushError> {
        let full = {
            let Some(entry) = self.connections.get(connection_id) else {
                return Err(PushError::Gone);
            };
            match entry.outbound.try_send(frame) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        };
        if full {
            tracing::warn!(
                connection_id,
                "outbound queue full; disconnecting slow reader"
            );
            self.close(connection_id, close_code::POLICY);
        } else {
            self.connections.remove(connection_id);
        }
        Err(PushError::Gone)
    }
}

impl Pusher for LocalPusher {
    async fn push(&self, connection_id: &str, frame: Frame) -> Result<(), PushError> {
        self.try_push(connection_id, frame)
    }
}
