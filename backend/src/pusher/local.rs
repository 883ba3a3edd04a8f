//! In-process delivery for chat-local: the registry of the sockets this
//! process holds, which is also the pusher the handlers use.
//!
//! Each socket has an outbox: a short queue its task drains, writing
//! everything queued with one system call. Pushing is a non-blocking enqueue
//! (a lock held for a few instructions, and a wake-up only when the queue was
//! empty), so a fan-out to a room never waits on any one socket. Taking a
//! socket out of the registry asks its task to close it; that one mechanism
//! serves the management API's DELETE, a slow reader, keep-alive and
//! shutdown.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use dashmap::DashMap;
use futures::task::AtomicWaker;

use super::{Frame, PushError, Pusher};
use crate::quiet_warning::QuietWarning;

static SLOW_READERS: std::sync::LazyLock<Mutex<QuietWarning>> =
    std::sync::LazyLock::new(|| Mutex::new(QuietWarning::new(std::time::Duration::from_secs(10))));

/// Frames queued for one socket before it counts as too slow to keep.
pub const OUTBOUND_QUEUE: usize = 1024;

/// WebSocket close codes the gateway uses (RFC 6455, section 7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Never sent: the connection ended without a close frame.
    pub const ABNORMAL: u16 = 1006;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// What the management API's GET reports, and what the socket task updates.
#[derive(Debug)]
pub struct ConnectionInfo {
    pub connected_at_ms: u64,
    pub source_ip: String,
    pub user_agent: String,
    last_active_ms: AtomicU64,
    /// Since when part of a message has been waiting for the rest (0: none).
    unfinished_since_ms: AtomicU64,
}

impl ConnectionInfo {
    pub fn new(connected_at_ms: u64, source_ip: String, user_agent: String) -> Self {
        Self {
            connected_at_ms,
            source_ip,
            user_agent,
            last_active_ms: AtomicU64::new(connected_at_ms),
            unfinished_since_ms: AtomicU64::new(0),
        }
    }

    /// Records whether part of a message is waiting for the rest.
    pub fn set_unfinished(&self, unfinished: bool, now_ms: u64) {
        let since = self.unfinished_since_ms.load(Ordering::Relaxed);
        match (unfinished, since) {
            (true, 0) => self
                .unfinished_since_ms
                .store(now_ms.max(1), Ordering::Relaxed),
            (false, since) if since != 0 => self.unfinished_since_ms.store(0, Ordering::Relaxed),
            _ => {}
        }
    }

    /// Since when part of a message has been waiting, if it has.
    pub fn unfinished_since_ms(&self) -> Option<u64> {
        match self.unfinished_since_ms.load(Ordering::Relaxed) {
            0 => None,
            since => Some(since),
        }
    }

    pub fn touch(&self, now_ms: u64) {
        self.last_active_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn last_active_ms(&self) -> u64 {
        self.last_active_ms.load(Ordering::Relaxed)
    }
}

/// Something for a socket's task to write.
#[derive(Debug)]
pub enum Outgoing {
    Text(Frame),
    /// A keep-alive ping (the peer answers with a pong).
    Ping,
}

/// Why and how the server ends a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closing {
    /// The close code sent, and reported by `$disconnect`;
    /// [`close_code::ABNORMAL`] drops the connection without a close frame.
    pub code: u16,
    pub reason: &'static str,
}

/// One socket as the registry holds it.
#[derive(Debug)]
pub struct LocalSocket {
    pub info: ConnectionInfo,
    outbox: Mutex<Outbox>,
    /// Set when something was queued or a close asked for, until the task
    /// sees it. A flag and a waker rather than a `Notify`: the task polls
    /// it without holding a future of its own (smaller idle sockets).
    changed: AtomicBool,
    task: AtomicWaker,
    /// False until `$connect` has accepted the connection: as on API
    /// Gateway, pushes before that find it gone.
    open: AtomicBool,
}

#[derive(Debug, Default)]
struct Outbox {
    queued: VecDeque<Outgoing>,
    closing: Option<Closing>,
}

enum Refused {
    Full,
    Closing,
}

impl LocalSocket {
    pub fn new(info: ConnectionInfo) -> Self {
        Self {
            info,
            outbox: Mutex::default(),
            changed: AtomicBool::new(false),
            task: AtomicWaker::new(),
            open: AtomicBool::new(true),
        }
    }

    /// `$connect` accepted it: pushes reach it from now on.
    pub fn opened(&self) {
        self.open.store(true, Ordering::Release);
    }

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enqueue(&self, item: Outgoing) -> Result<(), Refused> {
        let mut outbox = self.outbox();
        if outbox.closing.is_some() {
            return Err(Refused::Closing);
        }
        if outbox.queued.len() >= OUTBOUND_QUEUE {
            return Err(Refused::Full);
        }
        let was_empty = outbox.queued.is_empty();
        outbox.queued.push_back(item);
        drop(outbox);
        // The task drains the whole queue when it wakes: one wake-up per
        // burst, not one per frame.
        if was_empty {
            self.wake();
        }
        Ok(())
    }

    /// Queues a keep-alive ping, unless the queue is busy anyway.
    pub fn ping(&self) {
        let _ = self.enqueue(Outgoing::Ping);
    }

    fn close(&self, closing: Closing) {
        self.outbox().closing.get_or_insert(closing);
        self.wake();
    }

    fn wake(&self) {
        self.changed.store(true, Ordering::Release);
        self.task.wake();
    }

    /// Everything queued, oldest first (the queue's memory goes with it, so
    /// an idle socket holds none).
    pub fn take_queued(&self) -> VecDeque<Outgoing> {
        std::mem::take(&mut self.outbox().queued)
    }

    pub fn closing(&self) -> Option<Closing> {
        self.outbox().closing
    }

    /// Forgets the waiting task until the next [`Self::poll_changed`]: a
    /// push meanwhile only sets the flag, instead of waking a task that is
    /// busy elsewhere (in a handler, say) to poll it for nothing.
    pub fn stop_waiting(&self) {
        drop(self.task.take());
    }

    /// Ready once something was queued or a close was asked for since the
    /// last time it was ready.
    pub fn poll_changed(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.changed.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.task.register(cx.waker());
        // A wake between the check and the registration found no waker.
        if self.changed.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[derive(Clone, Default)]
pub struct LocalPusher {
    sockets: Arc<DashMap<String, Arc<LocalSocket>>>,
}

impl LocalPusher {
    /// Registers a socket so that pushes reach it.
    pub fn register(&self, connection_id: &str, info: ConnectionInfo) -> Arc<LocalSocket> {
        let socket = Arc::new(LocalSocket::new(info));
        self.sockets
            .insert(connection_id.to_owned(), Arc::clone(&socket));
        socket
    }

    /// Registers a socket whose `$connect` is about to run: until
    /// [`LocalSocket::opened`], pushes to it fail as gone, as API Gateway's
    /// do, but it can already be closed.
    pub fn register_connecting(
        &self,
        connection_id: &str,
        info: ConnectionInfo,
    ) -> Arc<LocalSocket> {
        let socket = LocalSocket::new(info);
        socket.open.store(false, Ordering::Release);
        let socket = Arc::new(socket);
        self.sockets
            .insert(connection_id.to_owned(), Arc::clone(&socket));
        socket
    }

    pub fn socket(&self, connection_id: &str) -> Option<Arc<LocalSocket>> {
        self.sockets.get(connection_id).map(|s| Arc::clone(&s))
    }

    /// Asks a socket's task to close it (after the frames already queued);
    /// false when it was not connected. Pushes to it fail from now on.
    pub fn close(&self, connection_id: &str, code: u16, reason: &'static str) -> bool {
        match self.sockets.remove(connection_id) {
            Some((_, socket)) => {
                socket.close(Closing { code, reason });
                true
            }
            None => false,
        }
    }

    pub fn close_all(&self, code: u16, reason: &'static str) {
        let ids: Vec<String> = self.sockets.iter().map(|e| e.key().clone()).collect();
        for id in ids {
            self.close(&id, code, reason);
        }
    }

    /// Calls `visit` with every registered socket; sockets it returns a
    /// [`Closing`] for are closed afterwards (the registry cannot change while
    /// it is being walked).
    pub fn sweep(&self, mut visit: impl FnMut(&LocalSocket) -> Option<Closing>) {
        let closing: Vec<(String, Closing)> = self
            .sockets
            .iter()
            .filter_map(|entry| visit(entry.value()).map(|c| (entry.key().clone(), c)))
            .collect();
        for (id, Closing { code, reason }) in closing {
            self.close(&id, code, reason);
        }
    }

    /// Enqueues without waiting: a full queue means the reader is hopelessly
    /// behind, and it is disconnected rather than let memory grow without
    /// bound or stall everyone else's delivery.
    pub fn try_push(&self, connection_id: &str, frame: Frame) -> Result<(), PushError> {
        let refused = {
            let Some(socket) = self.sockets.get(connection_id) else {
                return Err(PushError::Gone);
            };
            if !socket.open.load(Ordering::Acquire) {
                return Err(PushError::Gone);
            }
            match socket.enqueue(Outgoing::Text(frame)) {
                Ok(()) => return Ok(()),
                Err(refused) => refused,
            }
        };
        if let Refused::Full = refused {
            tracing::debug!(
                connection_id,
                "outbound queue full; disconnecting slow reader"
            );
            // When thousands of clients vanish at once (a network drops),
            // their queues fill together: one line says so.
            SLOW_READERS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .warn(|more| {
                    tracing::warn!(
                        connection_id,
                        more_since_last_report = more,
                        "outbound queue full; disconnecting slow readers"
                    );
                });
            self.close(connection_id, close_code::POLICY, "too slow to read");
        }
        Err(PushError::Gone)
    }
}

impl Pusher for LocalPusher {
    async fn push(&self, connection_id: &str, frame: Frame) -> Result<(), PushError> {
        self.try_push(connection_id, frame)
    }

    async fn disconnect(&self, connection_id: &str) -> Result<(), PushError> {
        self.close(
            connection_id,
            close_code::POLICY,
            "too many refused requests",
        );
        Ok(())
    }

    /// Every push is an enqueue that never waits, so a plain loop beats
    /// juggling futures (and allocates nothing per recipient).
    async fn push_all(&self, recipients: &[&str], frame: &Frame, _: usize) -> Vec<String> {
        recipients
            .iter()
            .filter(|id| self.try_push(id, frame.clone()).is_err())
            .map(|id| (*id).to_owned())
            .collect()
    }
}
