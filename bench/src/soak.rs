//! `soak`: a steady chat with people coming and going around it.
//!
//! A core of `rooms × clients` stays the whole time and sends at a steady
//! rate, counted exactly as in `chat` (every message to exactly the members
//! of its room, once). Meanwhile `churners` at a time join a random room,
//! listen for a moment and go again: a `leave`, a close, or a vanished TCP
//! connection (no close frame), one after another. What churners receive
//! must be of their room and never twice. With `--server-pid`, the server's
//! resident memory once everyone has gone must be back to at most 10 %
//! above what it was before, after a warm-up round (the same rooms, a message from
//! everyone, everyone gone): what is measured is what the soak leaves
//! behind, not the caches and pools any first traffic fills.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{ChatPlan, Client, Frame, now_ns, parse_body};
use crate::server::Server;

#[derive(clap::Args, Debug)]
pub struct SoakPlan {
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Clients per room that stay the whole time.
    #[arg(long, default_value_t = 20)]
    pub clients: usize,
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Messages per second per staying client.
    #[arg(long, default_value_t = 0.5)]
    pub rate: f64,
    /// Clients coming and going at any moment.
    #[arg(long, default_value_t = 50)]
    pub churners: usize,
    /// How far above its baseline the server's memory may end, in percent
    /// (short runs are dominated by fixed costs: give them more).
    #[arg(long, default_value_t = 10.0)]
    pub memory_slack: f64,
}

/// How the churners fared, summed.
#[derive(Default)]
struct Churn {
    visits: AtomicU64,
    leaves: AtomicU64,
    closes: AtomicU64,
    vanishes: AtomicU64,
    messages_seen: AtomicU64,
    cross_room: AtomicU64,
    duplicates: AtomicU64,
    errors: AtomicU64,
}

pub async fn soak(
    url: &str,
    run_id: &str,
    plan: SoakPlan,
    concurrency: usize,
    server: Option<&Server>,
) -> anyhow::Result<(String, serde_json::Value, bool)> {
    let baseline = match server {
        Some(server) => Some(warm_up(url, run_id, &plan, concurrency, server).await?),
        None => None,
    };
    let room_name = |room: usize| format!("bench-{run_id}-{room}");
    eprintln!(
        "soak: {} rooms × {} clients at {}/s for {} s, {} churning",
        plan.rooms, plan.clients, plan.rate, plan.seconds, plan.churners
    );
    let core = crate::join_all(
        url,
        run_id,
        plan.rooms,
        plan.clients,
        concurrency,
        Duration::from_secs(300),
    )
    .await?;

    let churn = Arc::new(Churn::default());
    let stop = Arc::new(AtomicBool::new(false));
    let churners: Vec<_> = (0..plan.churners)
        .map(|worker| {
            let (churn, stop, url) = (Arc::clone(&churn), Arc::clone(&stop), url.to_owned());
            let rooms: Vec<String> = (0..plan.rooms).map(room_name).collect();
            let clients = plan.clients;
            tokio::spawn(async move {
                let mut random = Random::new(worker as u64);
                while !stop.load(Ordering::Relaxed) {
                    let room = random.below(rooms.len());
                    if let Err(error) = visit(
                        &url,
                        &rooms[room],
                        room,
                        clients,
                        worker,
                        &mut random,
                        &churn,
                    )
                    .await
                    {
                        eprintln!("churner {worker}: {error:#}");
                        churn.errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            })
        })
        .collect();

    let messages = (plan.rate * plan.seconds as f64).ceil().max(1.0) as usize;
    let chat_plan = Arc::new(ChatPlan {
        rooms: plan.rooms,
        clients: plan.clients,
        messages,
        rate: plan.rate,
        size: 0,
        timeout: Duration::from_secs(plan.seconds + 120),
    });
    let started = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let (mut outcome, finished) = crate::chat_all(core, &chat_plan, &delivered).await?;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for churner in churners {
        churner.await.context("a churner panicked")?;
    }
    // Everyone goes; then the server should settle back to where it began.
    for mut client in finished {
        let _ = client.socket.close(None).await;
    }
    let settled = match server {
        Some(server) => {
            let (_, quiet) = server
                .wait_until_quiet(Instant::now(), Duration::from_secs(120))
                .await?;
            Some(quiet)
        }
        None => None,
    };

    let expected = (plan.rooms * plan.clients * messages * plan.clients) as u64;
    let latency = outcome.latency_percentiles();
    let count = |value: &AtomicU64| value.load(Ordering::Relaxed);
    let churn_faults = count(&churn.cross_room) + count(&churn.duplicates) + count(&churn.errors);
    let exact = outcome.is_exact(expected);
    let mut summary = format!(
        "soak {:.1} s: core delivered {}/{} ({} lost), {} duplicates, {} cross-room, {} errors; \
         latency ms p50 {:.2} p99 {:.2} max {:.2}\n\
         churn: {} visits ({} left, {} closed, {} vanished), {} messages seen, {} cross-room, {} duplicates, {} errors",
        elapsed.as_secs_f64(),
        outcome.delivered,
        expected,
        expected.saturating_sub(outcome.delivered),
        outcome.duplicates,
        outcome.cross_room,
        outcome.errors,
        latency[0],
        latency[2],
        latency[3],
        count(&churn.visits),
        count(&churn.leaves),
        count(&churn.closes),
        count(&churn.vanishes),
        count(&churn.messages_seen),
        count(&churn.cross_room),
        count(&churn.duplicates),
        count(&churn.errors),
    );
    let mut report = json!({
        "mode": "soak",
        "url": url,
        "rooms": plan.rooms,
        "clients": plan.clients,
        "messages": messages,
        "expected": expected,
        "delivered": outcome.delivered,
        "duplicates": outcome.duplicates,
        "cross_room": outcome.cross_room,
        "errors": outcome.errors,
        "elapsed_s": elapsed.as_secs_f64(),
        "latency_ms": {"p50": latency[0], "p90": latency[1], "p99": latency[2], "max": latency[3]},
        "churn": {
            "visits": count(&churn.visits),
            "leaves": count(&churn.leaves),
            "closes": count(&churn.closes),
            "vanishes": count(&churn.vanishes),
            "messages_seen": count(&churn.messages_seen),
            "cross_room": count(&churn.cross_room),
            "duplicates": count(&churn.duplicates),
            "errors": count(&churn.errors),
        },
    });
    let mut memory_ok = true;
    if let (Some(baseline), Some(settled)) = (baseline, settled) {
        let ratio = settled.rss_kb as f64 / baseline.rss_kb.max(1) as f64;
        // Below the baseline is no leak (the warm-up's sockets may still
        // have been giving memory back when it was taken).
        memory_ok = ratio <= 1.0 + plan.memory_slack / 100.0;
        summary += &format!(
            "\nserver RSS {} KB before, {} KB after everyone left ({:+.1} %)",
            baseline.rss_kb,
            settled.rss_kb,
            (ratio - 1.0) * 100.0
        );
        report["server"] = json!({
            "rss_before_kb": baseline.rss_kb,
            "rss_after_kb": settled.rss_kb,
            "rss_ratio": ratio,
        });
    }
    let ok = exact && churn_faults == 0 && count(&churn.visits) > 0 && memory_ok;
    Ok((summary, report, ok))
}

/// One round of the soak's shape, briefly; the server's state once it is
/// quiet again.
async fn warm_up(
    url: &str,
    run_id: &str,
    plan: &SoakPlan,
    concurrency: usize,
    server: &Server,
) -> anyhow::Result<crate::server::Sample> {
    let clients = crate::join_all(
        url,
        &format!("{run_id}-warm"),
        plan.rooms,
        plan.clients,
        concurrency,
        Duration::from_secs(300),
    )
    .await?;
    let warm_plan = Arc::new(ChatPlan {
        rooms: plan.rooms,
        clients: plan.clients,
        messages: 1,
        rate: 0.0,
        size: 0,
        timeout: Duration::from_secs(120),
    });
    let delivered = Arc::new(AtomicU64::new(0));
    let (_, finished) = crate::chat_all(clients, &warm_plan, &delivered).await?;
    for mut client in finished {
        let _ = client.socket.close(None).await;
    }
    let (_, quiet) = server
        .wait_until_quiet(Instant::now(), Duration::from_secs(120))
        .await?;
    Ok(quiet)
}

/// One churner's visit: join, listen a while, go one of three ways.
async fn visit(
    url: &str,
    room: &str,
    room_index: usize,
    clients_per_room: usize,
    worker: usize,
    random: &mut Random,
    churn: &Churn,
) -> anyhow::Result<()> {
    let index = usize::MAX / 2 + worker;
    let mut client = Client::join(
        url,
        room.to_owned(),
        index,
        clients_per_room,
        Duration::from_secs(30),
    )
    .await?;
    churn.visits.fetch_add(1, Ordering::Relaxed);
    let stay = Duration::from_millis(100 + random.below(1500) as u64);
    let until = tokio::time::Instant::now() + stay;
    let mut seen = HashSet::new();
    loop {
        let next = tokio::select! {
            next = client.socket.next() => next,
            () = tokio::time::sleep_until(until) => break,
        };
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(error.into()),
            None => anyhow::bail!("the server closed a churner's socket"),
        };
        let frame: Frame = serde_json::from_str(&text)?;
        match &*frame.kind {
            "message" => {}
            "error" => anyhow::bail!("error frame: {text}"),
            _ => continue,
        }
        churn.messages_seen.fetch_add(1, Ordering::Relaxed);
        let body = frame.data.as_deref().and_then(parse_body);
        let ours = frame.room.as_deref() == Some(room)
            && body.is_some_and(|(sender, _, _)| sender / clients_per_room == room_index);
        if !ours {
            churn.cross_room.fetch_add(1, Ordering::Relaxed);
        } else if let Some((sender, sequence, _)) = body
            && !seen.insert((sender, sequence))
        {
            churn.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }
    match random.below(3) {
        0 => {
            client
                .socket
                .send(Message::text(json!({"action": "leave"}).to_string()))
                .await?;
            let _ = client.socket.close(None).await;
            churn.leaves.fetch_add(1, Ordering::Relaxed);
        }
        1 => {
            let _ = client.socket.close(None).await;
            churn.closes.fetch_add(1, Ordering::Relaxed);
        }
        // Dropped: the TCP connection ends without a close frame.
        _ => {
            churn.vanishes.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// xorshift64*: enough randomness to pick rooms and moments.
struct Random(u64);

impl Random {
    fn new(seed: u64) -> Self {
        Self((now_ns() ^ (seed.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }
}
