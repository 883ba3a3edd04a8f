//! chat-bench: puts a chat deployment under load and checks every delivery.
//!
//! Point it at any chat WebSocket URL (chat-local, the Node reference in
//! `bench/node`, or a deployed `wss://` stage). Modes:
//! - `chat`: R rooms × K clients each send M messages (closed loop, or at a
//!   fixed rate); every message must reach exactly the K members of its room,
//!   once, and nobody else. Reports loss, duplicates, cross-room deliveries,
//!   errors, latency percentiles and deliveries per second.
//! - `idle`: N joined clients that stay quiet (memory per connection).
//! - `storm`: N clients join, C at a time, then all vanish at once.
//! - `soak`: a steady chat counted exactly, with clients joining, leaving
//!   and vanishing around it; memory must come back once everyone left.
//! - `slow-readers`, `reconnect-loop`: attacks from one machine on the
//!   server's limits (`attack.rs`).
//!
//! With `--server-pid` (a server on this machine) it also reads the server's
//! CPU time and resident memory from `/proc` around each phase.

mod attack;
mod client;
mod server;
mod soak;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::client::{ChatOutcome, ChatPlan, Client};
use crate::server::Server;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Load tool for the chat, with exact delivery accounting"
)]
struct Args {
    /// The chat's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws", global = true)]
    url: String,
    /// A server process on this machine whose CPU and memory to report.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// End with one JSON object on stdout (the human summary goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Clients connecting at once.
    #[arg(long, default_value_t = 200, global = true)]
    concurrency: usize,
    /// Give up on a phase after this long.
    #[arg(long, default_value = "120", global = true, value_name = "SECONDS")]
    timeout: u64,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Rooms of clients exchanging messages; checks every delivery.
    Chat {
        #[arg(long, default_value_t = 10)]
        rooms: usize,
        #[arg(long, default_value_t = 20)]
        clients: usize,
        /// Messages each client sends.
        #[arg(long, default_value_t = 40)]
        messages: usize,
        /// Messages per second per client; 0 sends the next message as soon
        /// as the client's previous one came back (closed loop).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Pad each message to this many bytes.
        #[arg(long, default_value_t = 0)]
        size: usize,
        /// Extra clients, spread over the rooms, that join and then never
        /// read: the others' latency shows whether they hold delivery up.
        #[arg(long, default_value_t = 0)]
        stalled_readers: usize,
    },
    /// Joined clients that stay quiet: memory per idle connection.
    Idle {
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// Wait this long after the last join before measuring.
        #[arg(long, default_value_t = 2)]
        settle: u64,
        /// Keep the clients connected this many seconds more.
        #[arg(long, default_value_t = 0)]
        hold: u64,
    },
    /// Clients join, `--concurrency` at a time, then all vanish at once
    /// (no close frames).
    Storm {
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        #[arg(long, default_value_t = 100)]
        clients: usize,
    },
    /// A steady chat (counted exactly) with clients joining, leaving and
    /// vanishing around it; with `--server-pid`, memory must end at most
    /// `--memory-slack` percent above its warmed-up baseline.
    Soak(soak::SoakPlan),
    /// Connections from loopback addresses 127.0.0.2 and up that ask for a
    /// file many times and never read; `/healthz` and a join are timed
    /// meanwhile (with `--server-pid`: memory, and when all were let go).
    SlowReaders {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Spread over this many addresses (127.0.0.2, 127.0.0.3, …).
        #[arg(long, default_value_t = 20)]
        addresses: u8,
        #[arg(long, default_value = "/index.html")]
        path: String,
        /// Requests each connection sends at once.
        #[arg(long, default_value_t = 20)]
        requests: usize,
        /// Stop waiting for the server to let them go after this long.
        #[arg(long, default_value = "90", value_name = "SECONDS")]
        limit: u64,
    },
    /// One client connecting into a room (`?room=`), sending messages and
    /// hanging up, in a loop; a watcher counts what reached the room.
    ReconnectLoop {
        #[arg(long, default_value = "5", value_name = "SECONDS")]
        duration: u64,
        /// Messages each socket sends before hanging up.
        #[arg(long, default_value_t = 10)]
        per_socket: usize,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    raise_open_file_limit();
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("chat-bench: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the mode; `Ok(false)` when the accounting found a fault.
async fn run(args: Args) -> anyhow::Result<bool> {
    let server = args.server_pid.map(Server::new).transpose()?;
    let timeout = Duration::from_secs(args.timeout);
    let run_id = format!("{:x}", std::process::id() ^ (client::now_ns() as u32));
    let (summary, report, ok) = match args.mode {
        Mode::Chat {
            rooms,
            clients,
            messages,
            rate,
            size,
            stalled_readers,
        } => {
            let plan = ChatPlan {
                rooms,
                clients,
                messages,
                rate,
                size,
                timeout,
            };
            chat(
                &args.url,
                &run_id,
                plan,
                (args.concurrency, stalled_readers),
                server.as_ref(),
            )
            .await?
        }
        Mode::Idle {
            rooms,
            clients,
            settle,
            hold,
        } => {
            let (summary, report) = idle(
                &args.url,
                &run_id,
                (rooms, clients),
                args.concurrency,
                Duration::from_secs(settle),
                server.as_ref(),
            )
            .await?;
            tokio::time::sleep(Duration::from_secs(hold)).await;
            (summary, report, true)
        }
        Mode::Soak(plan) => {
            soak::soak(&args.url, &run_id, plan, args.concurrency, server.as_ref()).await?
        }
        Mode::SlowReaders {
            connections,
            addresses,
            path,
            requests,
            limit,
        } => {
            let plan = attack::SlowReaders {
                connections,
                addresses,
                path,
                requests,
                limit: Duration::from_secs(limit),
            };
            let (summary, report) =
                attack::slow_readers(&args.url, &run_id, plan, server.as_ref(), args.server_pid)
                    .await?;
            (summary, report, true)
        }
        Mode::ReconnectLoop {
            duration,
            per_socket,
        } => {
            attack::reconnect_loop(
                &args.url,
                &run_id,
                Duration::from_secs(duration),
                per_socket,
            )
            .await?
        }
        Mode::Storm { rooms, clients } => {
            let (summary, report) = storm(
                &args.url,
                &run_id,
                (rooms, clients),
                args.concurrency,
                server.as_ref(),
            )
            .await?;
            (summary, report, true)
        }
    };
    if args.json {
        eprintln!("{summary}");
        println!("{report}");
    } else {
        println!("{summary}");
    }
    Ok(ok)
}

async fn chat(
    url: &str,
    run_id: &str,
    plan: ChatPlan,
    (concurrency, stalled_readers): (usize, usize),
    server: Option<&Server>,
) -> anyhow::Result<(String, serde_json::Value, bool)> {
    let total = plan.rooms * plan.clients;
    eprintln!(
        "joining {total} clients into {} rooms ({} at a time)",
        plan.rooms, concurrency
    );
    let clients = join_all(
        url,
        run_id,
        plan.rooms,
        plan.clients,
        concurrency,
        plan.timeout,
    )
    .await?;

    // Readers that never read: joined, then left alone until the end.
    let mut stalled = Vec::with_capacity(stalled_readers);
    for i in 0..stalled_readers {
        let room = format!("bench-{run_id}-{}", i % plan.rooms.max(1));
        let index = plan.rooms * plan.clients + i;
        stalled.push(Client::join(url, room, index, plan.clients, plan.timeout).await?);
    }

    let expected = (plan.rooms * plan.clients * plan.messages * plan.clients) as u64;
    let delivered = Arc::new(AtomicU64::new(0));
    let progress = progress_bar(expected, "deliveries");
    let ticker = tokio::spawn({
        let (delivered, progress) = (Arc::clone(&delivered), progress.clone());
        async move {
            loop {
                progress.set_position(delivered.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });

    let before = server.map(Server::sample).transpose()?;
    let started = Instant::now();
    let plan = Arc::new(plan);
    let (mut outcome, finished) = chat_all(clients, &plan, &delivered).await?;
    let elapsed = started.elapsed();
    let after = server.map(Server::sample).transpose()?;
    ticker.abort();
    progress.finish_and_clear();
    drop(finished);
    // Did the server let the stalled readers go? Read what they were sent:
    // a close (or the end of the stream) after it means it did.
    let mut stalled_dropped = 0;
    for mut client in stalled {
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match client.socket.next().await {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) | None => {
                        return true;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) => return true,
                }
            }
        })
        .await
        .unwrap_or(false);
        stalled_dropped += usize::from(ended);
    }

    let latency = outcome.latency_percentiles();
    let rate = outcome.delivered as f64 / elapsed.as_secs_f64();
    let ok = outcome.is_exact(expected);
    let mut summary = format!(
        "{} rooms × {} clients × {} messages: delivered {}/{} ({} lost), {} duplicates, {} cross-room, {} errors\n\
         {:.2} s, {:.0} deliveries/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
        plan.rooms,
        plan.clients,
        plan.messages,
        outcome.delivered,
        expected,
        expected.saturating_sub(outcome.delivered),
        outcome.duplicates,
        outcome.cross_room,
        outcome.errors,
        elapsed.as_secs_f64(),
        rate,
        latency[0],
        latency[1],
        latency[2],
        latency[3],
    );
    let mut report = json!({
        "mode": "chat",
        "url": url,
        "rooms": plan.rooms,
        "clients": plan.clients,
        "messages": plan.messages,
        "expected": expected,
        "delivered": outcome.delivered,
        "duplicates": outcome.duplicates,
        "cross_room": outcome.cross_room,
        "errors": outcome.errors,
        "elapsed_s": elapsed.as_secs_f64(),
        "deliveries_per_s": rate,
        "latency_ms": {"p50": latency[0], "p90": latency[1], "p99": latency[2], "max": latency[3]},
    });
    if stalled_readers > 0 {
        summary += &format!(
            "\n{stalled_readers} stalled readers in the rooms; the server dropped {stalled_dropped} of them"
        );
        report["stalled_readers"] = json!(stalled_readers);
        report["stalled_dropped"] = json!(stalled_dropped);
    }
    if let (Some(before), Some(after)) = (before, after) {
        let cpu_s = after.cpu_s - before.cpu_s;
        let per_delivery = cpu_s * 1e6 / outcome.delivered.max(1) as f64;
        summary += &format!(
            "\nserver CPU {cpu_s:.2} s: {per_delivery:.2} µs per delivery; RSS {} KB",
            after.rss_kb
        );
        report["server"] =
            json!({"cpu_s": cpu_s, "cpu_us_per_delivery": per_delivery, "rss_kb": after.rss_kb});
    }
    Ok((summary, report, ok))
}

async fn idle(
    url: &str,
    run_id: &str,
    (rooms, clients): (usize, usize),
    concurrency: usize,
    settle: Duration,
    server: Option<&Server>,
) -> anyhow::Result<(String, serde_json::Value)> {
    let before = server.map(Server::sample).transpose()?;
    let total = rooms * clients;
    eprintln!("joining {total} idle clients into {rooms} rooms");
    let (readers, _) = join_and_listen(url, run_id, (rooms, clients), concurrency).await?;
    tokio::time::sleep(settle).await;
    let after = server.map(Server::sample).transpose()?;
    let mut summary = format!("{total} idle clients joined");
    let mut report = json!({"mode": "idle", "url": url, "connections": total});
    if let (Some(before), Some(after)) = (before, after) {
        let per_connection = (after.rss_kb as f64 - before.rss_kb as f64) * 1024.0 / total as f64;
        summary += &format!(
            "; server RSS {} KB → {} KB: {:.0} B per connection",
            before.rss_kb, after.rss_kb, per_connection
        );
        report["server"] = json!({
            "rss_before_kb": before.rss_kb,
            "rss_after_kb": after.rss_kb,
            "rss_per_connection_b": per_connection,
        });
    }
    // Detached, not aborted: the clients stay connected (for `--hold`) until
    // the process exits.
    drop(readers);
    Ok((summary, report))
}

async fn storm(
    url: &str,
    run_id: &str,
    (rooms, clients): (usize, usize),
    concurrency: usize,
    server: Option<&Server>,
) -> anyhow::Result<(String, serde_json::Value)> {
    let total = rooms * clients;
    eprintln!("join storm: {total} clients into {rooms} rooms, {concurrency} at a time");
    let before = server.map(Server::sample).transpose()?;
    let started = Instant::now();
    let (readers, mut handshakes) =
        join_and_listen(url, run_id, (rooms, clients), concurrency).await?;
    let join_s = started.elapsed().as_secs_f64();
    // A handshake that waited a second or more most likely lost its SYN to a
    // full listen backlog and waited for the kernel's retry.
    handshakes.sort_unstable();
    let at = |q: f64| {
        handshakes.len().checked_sub(1).map_or(0.0, |last| {
            handshakes[(last as f64 * q).round() as usize].as_secs_f64() * 1e3
        })
    };
    let handshake_ms = [at(0.5), at(0.99), at(1.0)];
    let slow = handshakes
        .iter()
        .filter(|h| **h >= Duration::from_secs(1))
        .count();
    // Let the presence frames of the last joins settle before the drop.
    let joined_cpu = match server {
        Some(server) => {
            let (_, quiet) = server
                .wait_until_quiet(Instant::now(), Duration::from_secs(60))
                .await?;
            Some(quiet.cpu_s - before.as_ref().expect("sampled").cpu_s)
        }
        None => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            None
        }
    };

    eprintln!("disconnect storm: {total} clients vanish at once");
    let dropped_at = server.map(Server::sample).transpose()?;
    let drop_started = Instant::now();
    for reader in &readers {
        reader.abort();
    }
    for reader in readers {
        let _ = reader.await;
    }
    let mut summary = format!(
        "{total} clients joined in {join_s:.2} s; handshake ms p50 {:.1} p99 {:.1} max {:.1}, {slow} took 1 s or more",
        handshake_ms[0], handshake_ms[1], handshake_ms[2]
    );
    let mut report = json!({
        "mode": "storm", "url": url, "connections": total, "join_s": join_s,
        "handshake_ms": {"p50": handshake_ms[0], "p99": handshake_ms[1], "max": handshake_ms[2]},
        "handshakes_over_1s": slow,
    });
    if let (Some(server), Some(dropped_at), Some(joined_cpu)) = (server, dropped_at, joined_cpu) {
        let (quiet_after, quiet) = server
            .wait_until_quiet(drop_started, Duration::from_secs(300))
            .await?;
        let drop_cpu = quiet.cpu_s - dropped_at.cpu_s;
        summary += &format!(
            " (server CPU {joined_cpu:.2} s); after all vanished the server was quiet in {:.2} s (server CPU {drop_cpu:.2} s)",
            quiet_after.as_secs_f64()
        );
        report["join_server_cpu_s"] = json!(joined_cpu);
        report["quiet_after_drop_s"] = json!(quiet_after.as_secs_f64());
        report["drop_server_cpu_s"] = json!(drop_cpu);
    }
    Ok((summary, report))
}

/// Runs every client's part of a chat at once; their outcomes, summed, and
/// the clients again (still connected).
pub(crate) async fn chat_all(
    clients: Vec<Client>,
    plan: &Arc<ChatPlan>,
    delivered: &Arc<AtomicU64>,
) -> anyhow::Result<(ChatOutcome, Vec<Client>)> {
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| tokio::spawn(client.chat(Arc::clone(plan), Arc::clone(delivered))))
        .collect();
    let mut outcome = ChatOutcome::default();
    let mut finished = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (client, result) = task.await.context("a client task panicked")?;
        outcome.merge(result);
        finished.push(client);
    }
    Ok((outcome, finished))
}

/// Joins clients that then only listen (and so answer pings); each task
/// ends, dropping its socket, when aborted.
async fn join_and_listen(
    url: &str,
    run_id: &str,
    (rooms, clients): (usize, usize),
    concurrency: usize,
) -> anyhow::Result<(Vec<tokio::task::JoinHandle<()>>, Vec<Duration>)> {
    let joined = join_all(
        url,
        run_id,
        rooms,
        clients,
        concurrency,
        Duration::from_secs(300),
    )
    .await?;
    let handshakes = joined.iter().map(|c| c.handshake).collect();
    let readers = joined
        .into_iter()
        .map(|c| tokio::spawn(c.drain()))
        .collect();
    Ok((readers, handshakes))
}

/// Connects and joins `rooms × clients` clients, `concurrency` at a time.
pub(crate) async fn join_all(
    url: &str,
    run_id: &str,
    rooms: usize,
    clients: usize,
    concurrency: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<Client>> {
    let total = rooms * clients;
    let progress = progress_bar(total as u64, "joined");
    let joins = futures::stream::iter(0..total)
        .map(|index| {
            let room = format!("bench-{run_id}-{}", index / clients);
            Client::join(url, room, index, clients, timeout)
        })
        .buffer_unordered(concurrency.max(1));
    tokio::pin!(joins);
    let mut joined = Vec::with_capacity(total);
    while let Some(client) = joins.next().await {
        joined.push(client?);
        progress.inc(1);
    }
    progress.finish_and_clear();
    joined.sort_by_key(|client| client.index);
    Ok(joined)
}

fn progress_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {what} ({{per_sec}})"
        ))
        .expect("a valid template"),
    );
    bar
}

/// Thousands of sockets need more descriptors than the usual soft limit.
fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
