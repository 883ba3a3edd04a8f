//! Group commit for message history: concurrent saves share BatchWriteItem
//! requests.
//!
//! Each save queues its item and waits. A writer takes whatever is queued (up
//! to 25 items, DynamoDB's batch limit) as soon as one of its few request
//! slots is free, so a quiet chat writes each message at once and a busy one
//! writes 25 per round trip. A save returns only once the request holding its
//! item has succeeded: a message is never delivered before it is durable.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::StoreError;
use super::dynamodb::{BATCH_WRITE_MAX, DynamoStore, Item};

/// BatchWriteItem requests in flight at once.
const REQUESTS_IN_FLIGHT: usize = 4;

struct Pending {
    item: Item,
    written: oneshot::Sender<Result<(), StoreError>>,
}

#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::UnboundedSender<Pending>,
}

impl GroupCommit {
    /// Starts the writer on the current runtime; it ends when the last
    /// handle is dropped, after writing what was queued.
    pub fn start(store: DynamoStore) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(store, waiting));
        Self { queue }
    }

    /// Queues `item` and waits until it is written.
    pub async fn save(&self, item: Item) -> Result<(), StoreError> {
        let (written, done) = oneshot::channel();
        self.queue
            .send(Pending { item, written })
            .map_err(|_| stopped())?;
        done.await.unwrap_or_else(|_| Err(stopped()))
    }
}

async fn write_batches(store: DynamoStore, mut waiting: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT));
    loop {
        // A slot first, then whatever has queued meanwhile: while every slot
        // is busy, saves pile up into the next (fuller) batch.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(BATCH_WRITE_MAX);
        if waiting.recv_many(&mut batch, BATCH_WRITE_MAX).await == 0 {
            return;
        }
        let store = store.clone();
        tokio::spawn(async move {
            let (items, waiters): (Vec<Item>, Vec<_>) =
                batch.into_iter().map(|p| (p.item, p.written)).unzip();
            let count = items.len();
            let result = store.put_message_items(items).await;
            if let Err(error) = &result {
                tracing::error!(%error, count, "a batch of messages was not saved");
            }
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
            drop(slot);
        });
    }
}

fn stopped() -> StoreError {
    StoreError::Backend {
        operation: "BatchWriteItem",
        message: "the history writer has stopped".into(),
    }
}
