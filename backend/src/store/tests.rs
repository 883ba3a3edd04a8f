use super::RateLimit;

const SECOND: u64 = 1_000_000;

fn limit(per_second: f64, burst: u32) -> RateLimit {
    RateLimit::new(per_second, burst).unwrap().unwrap()
}

/// Sends at `now` until refused; how many got through.
fn burst_at(limit: &RateLimit, full_again: &mut u64, now: u64) -> usize {
    let mut sent = 0;
    while let Some(next) = limit.admit(*full_again, now) {
        *full_again = next;
        sent += 1;
        assert!(sent < 1000, "the limit never refuses");
    }
    sent
}

#[test]
fn a_fresh_connection_gets_its_burst_then_the_sustained_rate() {
    let limit = limit(2.0, 10);
    let mut full_again = 0;
    let start = 1_700_000_000 * SECOND;
    assert_eq!(burst_at(&limit, &mut full_again, start), 10);
    // Half a second buys one message, a whole second two.
    assert_eq!(burst_at(&limit, &mut full_again, start + SECOND / 2), 1);
    assert_eq!(burst_at(&limit, &mut full_again, start + 3 * SECOND / 2), 2);
    // A long pause refills the bucket, never beyond the burst.
    assert_eq!(burst_at(&limit, &mut full_again, start + 3600 * SECOND), 10);
}

#[test]
fn a_steady_sender_at_the_rate_is_never_refused() {
    let limit = limit(2.0, 1);
    let mut full_again = 0;
    for tick in 0..100 {
        let now = SECOND + tick * SECOND / 2;
        full_again = limit.admit(full_again, now).expect("at the rate");
        assert_eq!(limit.admit(full_again, now), None, "one per tick");
    }
}

#[test]
fn zero_turns_it_off_and_nonsense_is_refused() {
    assert_eq!(RateLimit::new(0.0, 10), Ok(None));
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        assert!(RateLimit::new(bad, 10).is_err(), "{bad}");
    }
    assert!(RateLimit::new(2.0, 0).is_err());
    // A vanishingly small rate is one message a day, with no overflow.
    let slow = limit(1e-14, 1);
    assert_eq!(slow.admit(0, SECOND), Some(SECOND + 86_400 * SECOND));
    assert!(slow.admit(u64::MAX - 1, SECOND).is_none());
    // A huge rate still refuses beyond the burst within one microsecond.
    let fast = limit(1e9, 3);
    let mut full_again = 0;
    assert_eq!(burst_at(&fast, &mut full_again, SECOND), 3);
}
