//! Random identifiers without a system call each.
//!
//! Connection ids, request ids and message ids need to be unique, not secret:
//! a per-thread generator seeded once from the OS gives 64 random bits per
//! call for a few nanoseconds, where asking the OS every time cost a
//! `getrandom` system call per message.

use std::cell::Cell;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    // A zero state would still work (the increment below moves it); the OS
    // source only fails on a broken system, where uniqueness per process and
    // thread is still given by the address of this thread's state.
    getrandom::u64().unwrap_or_else(|_| STATE.with(|state| state as *const _ as u64))
}

/// 64 random bits (wyrand: passes BigCrush, one multiply per call).
pub fn random_u64() -> u64 {
    STATE.with(|state| {
        let next = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(next);
        let wide = u128::from(next) * u128::from(next ^ 0xe703_7ed1_a0b4_28db);
        (wide as u64) ^ ((wide >> 64) as u64)
    })
}

/// A message id: 13 digits of milliseconds, `-`, 16 hex digits. Ids sort by
/// time, and within one process strictly in the order they were made (the
/// low part counts up within a millisecond from a random start), so a burst
/// of messages keeps its order in history. Across processes (Lambda
/// containers) the random start keeps them unique without coordination.
pub fn message_id(ts_ms: u64) -> String {
    static LAST: std::sync::Mutex<(u64, u64)> = std::sync::Mutex::new((0, 0));
    let (ms, low) = {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        *last = if ts_ms <= last.0 {
            // Same millisecond (or a clock that stepped back): count up.
            (last.0, last.1.wrapping_add(1))
        } else {
            // Headroom below 2^64 for the counting up.
            (ts_ms, random_u64() >> 1)
        };
        *last
    };
    format!("{ms:013}-{low:016x}")
}

/// `len` characters of `[A-Za-z0-9]`, the shape of API Gateway's ids.
pub fn random_id(len: usize) -> String {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut id = String::with_capacity(len);
    let mut bits = 0u64;
    for i in 0..len {
        // 10 characters per 64 bits; the modulo bias (2^6 vs 62) is harmless
        // for ids that only need to be unique.
        if i % 10 == 0 {
            bits = random_u64();
        }
        id.push(char::from(ALPHABET[(bits & 63) as usize % ALPHABET.len()]));
        bits >>= 6;
    }
    id
}

/// `len` characters of `[A-Za-z0-9]` from the operating system's
/// cryptographic generator, for ids that are credentials: a connection id is
/// all it takes to push to that socket or close it through the Management
/// API, so one must not be guessable from others. Random bytes are fetched
/// a batch at a time, not a system call per id; rejection sampling keeps
/// every character equally likely.
pub fn unguessable_id(len: usize) -> String {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    thread_local! {
        static POOL: std::cell::RefCell<(Vec<u8>, usize)> =
            const { std::cell::RefCell::new((Vec::new(), 0)) };
    }
    POOL.with_borrow_mut(|(bytes, used)| {
        let mut id = String::with_capacity(len);
        while id.len() < len {
            if *used == bytes.len() {
                bytes.resize(256, 0);
                getrandom::fill(bytes).expect("the operating system's random source failed");
                *used = 0;
            }
            // 248 = 4 × 62: bytes at or above it would favour some characters.
            let byte = bytes[*used];
            *used += 1;
            if byte < 248 {
                id.push(char::from(ALPHABET[usize::from(byte) % ALPHABET.len()]));
            }
        }
        id
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unguessable_ids_have_the_shape_and_spread_evenly() {
        let ids: Vec<String> = (0..20_000).map(|_| unguessable_id(16)).collect();
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        let mut counts = [0u32; 128];
        for id in &ids {
            assert_eq!(id.len(), 16);
            for byte in id.bytes() {
                assert!(byte.is_ascii_alphanumeric());
                counts[usize::from(byte)] += 1;
            }
        }
        // 320 000 characters over 62: about 5 161 each.
        let used: Vec<u32> = counts.into_iter().filter(|&c| c > 0).collect();
        assert_eq!(used.len(), 62);
        assert!(
            used.iter().all(|&c| (4_600..5_700).contains(&c)),
            "{used:?}"
        );
    }

    #[test]
    fn ids_have_the_asked_shape_and_do_not_repeat() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| random_id(16)).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(
            ids.iter()
                .all(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        );
    }

    #[test]
    fn message_ids_sort_in_the_order_they_were_made() {
        let ids: Vec<String> = (0..1000)
            .map(|i| message_id(1_700_000_000_000 + i / 100))
            .collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
        assert!(ids.iter().all(|id| id.len() == 30));
        // A clock that steps back does not break the order.
        assert!(message_id(1) > ids[999]);
    }

    #[test]
    fn threads_draw_different_sequences() {
        let here: Vec<u64> = (0..4).map(|_| random_u64()).collect();
        let there = std::thread::spawn(|| (0..4).map(|_| random_u64()).collect::<Vec<_>>())
            .join()
            .unwrap();
        assert_ne!(here, there);
    }
}
