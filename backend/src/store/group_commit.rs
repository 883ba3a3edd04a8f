//! Group commit for message history: concurrent saves share one write.
//!
//! Each save queues its item and waits. A writer takes whatever is queued (up
//! to the writer's group size) as soon as one of its write slots is free, so a quiet chat writes each message at once and a busy one writes
//! many per round trip. A save returns only once the write holding its item
//! has succeeded: a message is never delivered before it is durable.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::StoreError;
use super::dynamodb::{BATCH_WRITE_MAX, DynamoStore, Item};

/// Writes a group of message items: all of them, or fails.
pub trait GroupWriter: Send + Sync + 'static {
    /// The most items one write carries.
    const MAX_ITEMS: usize;
    /// Writes in flight at once.
    const WRITES_IN_FLIGHT: usize;
    /// Names the write in errors.
    const OPERATION: &'static str;

    fn write_group(&self, items: Vec<Item>) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Through the SDK, as BatchWriteItem: the cheapest write on the service.
impl GroupWriter for DynamoStore {
    const MAX_ITEMS: usize = BATCH_WRITE_MAX;
    /// The service takes writes in parallel; while all are busy, saves pile
    /// up into fuller batches.
    const WRITES_IN_FLIGHT: usize = 4;
    const OPERATION: &'static str = "BatchWriteItem";

    fn write_group(&self, items: Vec<Item>) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.put_message_items(items)
    }
}

struct Pending {
    item: Item,
    written: oneshot::Sender<Result<(), StoreError>>,
}

#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::UnboundedSender<Pending>,
    operation: &'static str,
}

impl GroupCommit {
    /// Starts the writer on the current runtime; it ends when the last
    /// handle is dropped, after writing what was queued.
    pub fn start<W: GroupWriter>(writer: W) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(write_groups(Arc::new(writer), waiting));
        Self {
            queue,
            operation: W::OPERATION,
        }
    }

    /// Queues `item` and waits until it is written.
    pub async fn save(&self, item: Item) -> Result<(), StoreError> {
        let (written, done) = oneshot::channel();
        self.queue
            .send(Pending { item, written })
            .map_err(|_| self.stopped())?;
        done.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    fn stopped(&self) -> StoreError {
        StoreError::Backend {
            operation: self.operation,
            message: "the history writer has stopped".into(),
        }
    }
}

async fn write_groups<W: GroupWriter>(
    writer: Arc<W>,
    mut waiting: mpsc::UnboundedReceiver<Pending>,
) {
    let slots = Arc::new(Semaphore::new(W::WRITES_IN_FLIGHT));
    loop {
        // A slot first, then whatever has queued meanwhile: while every slot
        // is busy, saves pile up into the next (fuller) group.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut group = Vec::with_capacity(W::MAX_ITEMS);
        if waiting.recv_many(&mut group, W::MAX_ITEMS).await == 0 {
            return;
        }
        let writer = Arc::clone(&writer);
        tokio::spawn(async move {
            let (items, waiters): (Vec<Item>, Vec<_>) =
                group.into_iter().map(|p| (p.item, p.written)).unzip();
            let count = items.len();
            let result = writer.write_group(items).await;
            if let Err(error) = &result {
                tracing::error!(%error, count, "a group of messages was not saved");
            }
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
            drop(slot);
        });
    }
}
