//! chat-local's cache of each room's latest messages, for joins.
//!
//! Bounded three ways: per room by count ([`CACHED`]) and by bytes
//! ([`ROOM_BYTES`], a page of the largest messages), in all by
//! bytes ([`TOTAL_BYTES`]), and in time: a room nobody has written to or
//! joined for [`IDLE`] gives its cache back, as does a room everyone left.
//! What the cache cannot answer is read from the table.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use shared::ChatMessage;
use shared::limits::HISTORY_LEN;
use tokio::sync::watch;

/// Messages kept per room: a page, and one more to tell whether older ones
/// remain.
pub const CACHED: usize = HISTORY_LEN + 1;
/// Bytes of messages kept per room at most: a full page of the largest
/// messages (51 × 4 KB and their fields), so a room's cache always answers a
/// join; the total bounds them all.
pub const ROOM_BYTES: usize = 256 * 1024;
/// Bytes of messages kept for all rooms together at most.
pub const TOTAL_BYTES: usize = 64 * 1024 * 1024;
/// How long a room's cache outlives its last use.
pub const IDLE: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct HistoryCache {
    rooms: HashMap<Arc<str>, RoomHistory>,
    /// Bytes held by every `Ready` room.
    bytes: usize,
    /// When idle rooms were last looked for (ms).
    swept_at_ms: u64,
}

enum RoomHistory {
    /// Being read from DynamoDB; messages saved meanwhile wait here so the
    /// read cannot miss them.
    Loading {
        saved_meanwhile: Vec<ChatMessage>,
        /// Dropped with this entry, which wakes every [`LoadWait`]; under
        /// the cache's lock, so a woken waiter finds the entry's successor
        /// (the cached page, or nothing) in place.
        done: watch::Sender<()>,
    },
    Ready(Recent),
}

/// A room's latest messages, oldest first.
struct Recent {
    messages: VecDeque<ChatMessage>,
    bytes: usize,
    /// Older messages exist that are not here: a request for more than
    /// `messages` holds must go to the table.
    has_older: bool,
    used_at_ms: u64,
}

/// What a read of the cache found.
pub enum Lookup {
    /// The answer.
    Hit(Vec<ChatMessage>),
    /// Not cached, and this reader is the one to read it: read the table,
    /// then [`HistoryCache::loaded`] (with `None` if the read failed or was
    /// given up).
    Load,
    /// Another reader is loading it: wait for that, then look again. One
    /// read per room, however many join at once (a restart's reconnect
    /// storm would otherwise read each busy room once per joiner).
    Wait(LoadWait),
    /// The cache cannot answer this request: read the table.
    Uncached,
}

/// A load in progress, to wait for.
pub struct LoadWait(watch::Receiver<()>);

/// How long a reader waits for another's load before reading itself: a
/// read stuck in a slow store must not hold a whole room's joins.
const LOAD_WAIT: Duration = Duration::from_secs(3);

impl LoadWait {
    /// Returns once the load has finished, failed or been given up, or
    /// after [`LOAD_WAIT`].
    pub async fn finished(mut self) {
        // The sender is never used to send: dropping it (with its entry)
        // is the signal, and `changed` reports it as an error.
        let _ = tokio::time::timeout(LOAD_WAIT, self.0.changed()).await;
    }
}

fn size_of(message: &ChatMessage) -> usize {
    // The strings and the struct around them; close enough to bound memory.
    std::mem::size_of::<ChatMessage>()
        + message.id.len()
        + message.room.len()
        + message.name.len()
        + message.data.len()
        + message.nonce.as_ref().map_or(0, String::len)
}

impl HistoryCache {
    /// The latest `limit` messages of `room` if the cache holds them.
    /// `may_wait` is false for a reader that has already waited for a load
    /// once: it reads the table itself rather than wait or load in turn, so
    /// a load that ends uncached (failed, the cache full, the room empty)
    /// never makes its waiters read one after another.
    pub fn lookup(&mut self, room: &str, limit: usize, may_wait: bool, now_ms: u64) -> Lookup {
        match self.rooms.get_mut(room) {
            Some(RoomHistory::Ready(recent))
                if limit <= recent.messages.len() || !recent.has_older =>
            {
                recent.used_at_ms = now_ms;
                Lookup::Hit(latest(&recent.messages, limit))
            }
            Some(RoomHistory::Ready(_)) => Lookup::Uncached,
            _ if !may_wait => Lookup::Uncached,
            Some(RoomHistory::Loading { done, .. }) => Lookup::Wait(LoadWait(done.subscribe())),
            None if limit > CACHED => Lookup::Uncached,
            None => {
                self.sweep(now_ms);
                self.rooms.insert(
                    room.into(),
                    RoomHistory::Loading {
                        saved_meanwhile: Vec::new(),
                        done: watch::Sender::new(()),
                    },
                );
                Lookup::Load
            }
        }
    }

    /// Finishes a load this reader started: `read` is the latest
    /// [`CACHED`] messages from the table (`None` if the read failed).
    /// Cached only if `keep` (someone is still in the room). Returns the
    /// latest `limit` messages, with those saved during the read.
    pub fn loaded(
        &mut self,
        room: &str,
        read: Option<&[ChatMessage]>,
        keep: bool,
        limit: usize,
        now_ms: u64,
    ) -> Option<Vec<ChatMessage>> {
        let saved_meanwhile = match self.rooms.get(room) {
            Some(RoomHistory::Loading { .. }) => match self.rooms.remove(room) {
                Some(RoomHistory::Loading {
                    saved_meanwhile, ..
                }) => saved_meanwhile,
                _ => unreachable!("checked above"),
            },
            // Another reader finished first; theirs stays.
            _ => Vec::new(),
        };
        let read = read?;
        let mut recent = Recent {
            messages: VecDeque::with_capacity(read.len() + saved_meanwhile.len()),
            bytes: 0,
            has_older: read.len() >= CACHED,
            used_at_ms: now_ms,
        };
        for message in read.iter().cloned().chain(saved_meanwhile) {
            recent.insert(message);
        }
        let answer = latest(&recent.messages, limit);
        if !keep || self.rooms.contains_key(room) {
            return Some(answer);
        }
        if self.bytes + recent.bytes > TOTAL_BYTES {
            tracing::debug!(room, "history cache full; this room is read from the table");
            return Some(answer);
        }
        // The read reserved room for a full page: a quiet room must not
        // keep it (thousands of small rooms would).
        recent.messages.shrink_to_fit();
        self.bytes += recent.bytes;
        self.rooms.insert(room.into(), RoomHistory::Ready(recent));
        Some(answer)
    }

    /// A message just saved to the table.
    pub fn saved(&mut self, message: &ChatMessage, now_ms: u64) {
        match self.rooms.get_mut(message.room.as_str()) {
            Some(RoomHistory::Ready(recent)) => {
                let before = recent.bytes;
                recent.insert(message.clone());
                recent.used_at_ms = now_ms;
                self.bytes = self.bytes - before + recent.bytes;
                if self.bytes > TOTAL_BYTES {
                    // Over the whole budget: this room goes back to the table.
                    self.forget(&message.room);
                }
            }
            Some(RoomHistory::Loading {
                saved_meanwhile, ..
            }) => {
                // Only the newest can end up in the cache.
                if saved_meanwhile.len() >= CACHED {
                    saved_meanwhile.remove(0);
                }
                saved_meanwhile.push(message.clone());
            }
            None => {}
        }
        if now_ms.saturating_sub(self.swept_at_ms) >= 60_000 {
            self.sweep(now_ms);
        }
    }

    /// Gives back a room's cache (nobody is in it any more).
    pub fn forget(&mut self, room: &str) {
        if let Some(RoomHistory::Ready(recent)) = self.rooms.get(room) {
            self.bytes -= recent.bytes;
            self.rooms.remove(room);
        }
    }

    /// Bytes of messages cached, all rooms together.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives back the caches of rooms unused for [`IDLE`].
    fn sweep(&mut self, now_ms: u64) {
        self.swept_at_ms = now_ms;
        let idle_before = now_ms.saturating_sub(IDLE.as_millis() as u64);
        let mut freed = 0;
        self.rooms.retain(|_, history| match history {
            RoomHistory::Ready(recent) if recent.used_at_ms < idle_before => {
                freed += recent.bytes;
                false
            }
            _ => true,
        });
        self.bytes -= freed;
    }
}

impl Recent {
    /// Adds a message in id order (concurrent batches may finish out of
    /// order), then drops the oldest beyond [`CACHED`] or [`ROOM_BYTES`].
    fn insert(&mut self, message: ChatMessage) {
        if self.messages.iter().any(|m| m.id == message.id) {
            return;
        }
        let at = self.messages.partition_point(|m| m.id < message.id);
        self.bytes += size_of(&message);
        self.messages.insert(at, message);
        while self.messages.len() > CACHED || (self.bytes > ROOM_BYTES && self.messages.len() > 1) {
            let dropped = self.messages.pop_front().expect("not empty");
            self.bytes -= size_of(&dropped);
            self.has_older = true;
        }
    }
}

/// The latest `limit` messages, oldest first.
pub fn latest(recent: &VecDeque<ChatMessage>, limit: usize) -> Vec<ChatMessage> {
    recent
        .range(recent.len().saturating_sub(limit)..)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(i: usize, bytes: usize) -> ChatMessage {
        ChatMessage {
            id: format!("{i:013}-0000000000000000"),
            room: "r".into(),
            name: "Ada".into(),
            data: "x".repeat(bytes),
            ts: i as u64,
            nonce: None,
        }
    }

    fn load(cache: &mut HistoryCache, read: &[ChatMessage]) {
        assert!(matches!(cache.lookup("r", CACHED, true, 0), Lookup::Load));
        cache.loaded("r", Some(read), true, CACHED, 0);
    }

    #[test]
    fn a_room_keeps_a_page_and_one_more_within_its_bytes() {
        let mut cache = HistoryCache::default();
        load(&mut cache, &[]);
        for i in 0..200 {
            cache.saved(&message(i, 10), 1);
        }
        let Lookup::Hit(page) = cache.lookup("r", CACHED, true, 1) else {
            panic!("cached");
        };
        assert_eq!(page.len(), CACHED);
        assert_eq!(page.last().unwrap().ts, 199);
        // Big messages: the bytes bound the room, and what it cannot answer
        // goes to the table.
        for i in 200..300 {
            cache.saved(&message(i, 8000), 1);
        }
        assert!(cache.bytes() <= ROOM_BYTES, "{}", cache.bytes());
        assert!(matches!(
            cache.lookup("r", CACHED, true, 1),
            Lookup::Uncached
        ));
        let Lookup::Hit(few) = cache.lookup("r", 3, true, 1) else {
            panic!("the latest few are cached");
        };
        assert_eq!(
            few.iter().map(|m| m.ts).collect::<Vec<_>>(),
            [297, 298, 299]
        );
    }

    #[test]
    fn a_quiet_room_with_everything_cached_answers_any_request() {
        let mut cache = HistoryCache::default();
        load(&mut cache, &[message(1, 5), message(2, 5)]);
        let Lookup::Hit(all) = cache.lookup("r", CACHED, true, 0) else {
            panic!("nothing older exists");
        };
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn idle_and_emptied_rooms_give_their_cache_back() {
        let mut cache = HistoryCache::default();
        load(&mut cache, &[message(1, 100)]);
        assert!(cache.bytes() > 0);
        cache.forget("r");
        assert_eq!(cache.bytes(), 0);
        load(&mut cache, &[message(1, 100)]);
        let later = IDLE.as_millis() as u64 + 1;
        // Another room's save sweeps the idle one away.
        cache.saved(
            &ChatMessage {
                room: "other".into(),
                ..message(2, 1)
            },
            later,
        );
        assert_eq!(cache.bytes(), 0);
        assert!(matches!(cache.lookup("r", 1, true, later), Lookup::Load));
    }

    #[tokio::test]
    async fn joiners_wait_for_the_one_load_in_progress() {
        let mut cache = HistoryCache::default();
        assert!(matches!(cache.lookup("r", CACHED, true, 0), Lookup::Load));
        let Lookup::Wait(first) = cache.lookup("r", CACHED, true, 0) else {
            panic!("a second reader waits");
        };
        let Lookup::Wait(second) = cache.lookup("r", 5, true, 0) else {
            panic!("a third reader waits");
        };
        let waiting = tokio::spawn(async move { first.finished().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "nothing was loaded yet");
        cache.loaded("r", Some(&[message(1, 5)]), true, CACHED, 0);
        waiting.await.unwrap();
        second.finished().await;
        assert!(matches!(cache.lookup("r", CACHED, true, 0), Lookup::Hit(page) if page.len() == 1));
    }

    #[tokio::test]
    async fn after_a_failed_load_its_waiters_read_for_themselves_at_once() {
        let mut cache = HistoryCache::default();
        assert!(matches!(cache.lookup("r", CACHED, true, 0), Lookup::Load));
        let Lookup::Wait(waiter) = cache.lookup("r", CACHED, true, 0) else {
            panic!("waits");
        };
        assert!(cache.loaded("r", None, false, CACHED, 0).is_none());
        waiter.finished().await;
        // Having waited once, it neither loads nor waits again.
        assert!(matches!(
            cache.lookup("r", CACHED, false, 0),
            Lookup::Uncached
        ));
        // A new reader loads.
        assert!(matches!(cache.lookup("r", CACHED, true, 0), Lookup::Load));
        let Lookup::Wait(_) = cache.lookup("r", CACHED, true, 0) else {
            panic!("a reader that has not waited yet waits");
        };
        assert!(matches!(
            cache.lookup("r", CACHED, false, 0),
            Lookup::Uncached
        ));
    }
}
