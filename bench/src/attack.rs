//! Attacks from one machine, run against a server's limits (chat-local's
//! "Limits" in the README): what they cost the server and whether anyone
//! else notices.
//!
//! - `slow-readers`: connections that ask for a file many times and never
//!   read the answers, spread over loopback addresses (127.0.0.2, …).
//!   Reports the server's memory and descriptors during the attack, how
//!   long `/healthz` and a WebSocket join took meanwhile, and when the
//!   server had let every attacker go.
//! - `reconnect-loop`: one client connecting straight into a room
//!   (`?room=victim`), sending ten messages and hanging up, again and
//!   again; a watcher in the room counts what got through.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::client::Client;
use crate::server::Server;

/// `host:port` of a `ws://host:port/ws` URL.
fn authority(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .context("the attacks speak plain ws:// URLs")?;
    let host = rest.split('/').next().unwrap_or(rest);
    host.parse()
        .with_context(|| format!("{host} is not an IP address and port"))
}

fn socket_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
                .filter(|target| target.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

/// How long a fresh `GET /healthz` takes to be answered.
async fn probe_health(addr: SocketAddr) -> anyhow::Result<Duration> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    anyhow::ensure!(
        response.starts_with(b"HTTP/1.1 200"),
        "/healthz answered {:?}",
        String::from_utf8_lossy(&response[..response.len().min(40)])
    );
    Ok(started.elapsed())
}

pub struct SlowReaders {
    pub connections: usize,
    pub addresses: u8,
    pub path: String,
    pub requests: usize,
    pub limit: Duration,
}

pub async fn slow_readers(
    url: &str,
    run_id: &str,
    plan: SlowReaders,
    server: Option<&Server>,
    pid: Option<u32>,
) -> anyhow::Result<(String, serde_json::Value)> {
    let addr = authority(url)?;
    let before = server.map(Server::sample).transpose()?;
    let sockets_before = pid.map(socket_count);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nConnection: keep-alive\r\n\r\n",
        plan.path
    )
    .repeat(plan.requests);
    eprintln!(
        "slow readers: {} connections from {} addresses, {} requests each, never read",
        plan.connections, plan.addresses, plan.requests
    );
    let mut attackers = Vec::with_capacity(plan.connections);
    let mut refused = 0;
    for i in 0..plan.connections {
        let socket = TcpSocket::new_v4()?;
        let last = 2 + (i % usize::from(plan.addresses.max(1))) as u8;
        socket.bind(SocketAddr::from(([127, 0, 0, last], 0)))?;
        match socket.connect(addr).await {
            Ok(mut stream) => {
                let _ = stream.write_all(request.as_bytes()).await;
                attackers.push(stream);
            }
            Err(_) => refused += 1,
        }
    }
    let attack_started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = server.map(Server::sample).transpose()?;
    let held = pid.map(socket_count);

    // Everyone else, during the attack.
    let mut health = Vec::new();
    for _ in 0..10 {
        health.push(probe_health(addr).await?);
    }
    health.sort_unstable();
    let join_started = Instant::now();
    let mut watcher = Client::join(
        url,
        format!("slow-readers-{run_id}"),
        0,
        1,
        Duration::from_secs(30),
    )
    .await
    .context("a WebSocket join during the attack")?;
    let join = join_started.elapsed();
    let _ = watcher.socket.close(None).await;

    // Until the server has let every attacker go.
    let mut released = None;
    if let (Some(pid), Some(before)) = (pid, sockets_before) {
        while attack_started.elapsed() < plan.limit {
            if socket_count(pid) <= before + 5 {
                released = Some(attack_started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    drop(attackers);

    let growth_mb = match (before, during) {
        (Some(before), Some(during)) => {
            Some(during.rss_kb.saturating_sub(before.rss_kb) as f64 / 1024.0)
        }
        _ => None,
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let summary = format!(
        "{} slow readers ({refused} refused at connect): server held {} sockets (from {}), RSS grew {} MB; \
         meanwhile /healthz took {:.1} ms (max {:.1}) and a WebSocket join {:.1} ms; every attacker let go after {}",
        plan.connections,
        held.map_or("?".into(), |n| n.to_string()),
        sockets_before.map_or("?".into(), |n| n.to_string()),
        growth_mb.map_or("?".into(), |mb| format!("{mb:.0}")),
        ms(health[health.len() / 2]),
        ms(health[health.len() - 1]),
        ms(join),
        released.map_or(format!("more than {:?}", plan.limit), |d| format!(
            "{:.1} s",
            d.as_secs_f64()
        )),
    );
    let report = json!({
        "mode": "slow-readers",
        "connections": plan.connections,
        "refused_at_connect": refused,
        "sockets_held": held,
        "rss_growth_mb": growth_mb,
        "healthz_ms": {"p50": ms(health[health.len() / 2]), "max": ms(health[health.len() - 1])},
        "join_ms": ms(join),
        "released_after_s": released.map(|d| d.as_secs_f64()),
    });
    Ok((summary, report))
}

pub async fn reconnect_loop(
    url: &str,
    run_id: &str,
    duration: Duration,
    per_socket: usize,
) -> anyhow::Result<(String, serde_json::Value, bool)> {
    let room = format!("victim-{run_id}");
    let mut watcher = Client::join(url, room.clone(), 0, 1, Duration::from_secs(30)).await?;
    let attack_url = format!("{url}?room={room}&name=spam");
    let started = Instant::now();
    let (mut sockets, mut refused, mut failed) = (0u64, 0u64, 0u64);
    while started.elapsed() < duration {
        match tokio_tungstenite::connect_async(&attack_url).await {
            Ok((mut socket, _)) => {
                sockets += 1;
                for i in 0..per_socket {
                    let frame = json!({"action": "sendmessage", "data": format!("spam {i}")});
                    socket.send(Message::text(frame.to_string())).await?;
                }
                let _ = socket.close(None).await;
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response))
                if response.status().as_u16() == 429 || response.status().as_u16() == 503 =>
            {
                refused += 1;
            }
            Err(_) => failed += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // What reached the room, once the server has handled it all.
    tokio::time::sleep(Duration::from_secs(2)).await;
    watcher
        .socket
        .send(Message::text(json!({"action": "ping"}).to_string()))
        .await?;
    let mut spam = 0u64;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), watcher.socket.next())
            .await
            .context("the watcher heard nothing")?
            .context("the watcher's socket closed")??;
        let Message::Text(text) = frame else { continue };
        let frame: serde_json::Value = serde_json::from_str(&text)?;
        match frame["type"].as_str() {
            Some("pong") => break,
            Some("message") if frame["name"] == "spam" => spam += 1,
            _ => {}
        }
    }
    let summary = format!(
        "reconnect loop for {elapsed:.1} s: {sockets} sockets opened, {refused} handshakes refused, {failed} failed; \
         {spam} messages reached the room ({:.1} a second)",
        spam as f64 / elapsed
    );
    let report = json!({
        "mode": "reconnect-loop",
        "seconds": elapsed,
        "sockets": sockets,
        "handshakes_refused": refused,
        "handshakes_failed": failed,
        "messages_into_room": spam,
    });
    Ok((summary, report, true))
}
