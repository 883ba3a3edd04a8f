//! One simulated chat user, and the accounting of what it receives.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Nanoseconds on this process's monotonic clock: message bodies carry their
/// send time, so any receiver in this process can tell the latency.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// How long a client keeps listening after its last expected message.
const LINGER: Duration = Duration::from_millis(300);

pub struct ChatPlan {
    pub rooms: usize,
    pub clients: usize,
    pub messages: usize,
    pub rate: f64,
    pub size: usize,
    pub timeout: Duration,
}

pub struct Client {
    /// Global index: room `index / clients_per_room`.
    pub index: usize,
    clients_per_room: usize,
    room: String,
    pub socket: Socket,
    /// How long the TCP connect and WebSocket handshake took.
    pub handshake: Duration,
}

#[derive(Debug, Default)]
pub struct ChatOutcome {
    /// Messages received once by a member of their room.
    pub delivered: u64,
    pub duplicates: u64,
    /// Messages received outside the sender's room (or naming another room).
    pub cross_room: u64,
    /// Error frames, unreadable frames, and clients that timed out.
    pub errors: u64,
    /// Microseconds from send to receipt.
    latencies_us: Vec<u32>,
}

impl ChatOutcome {
    pub fn merge(&mut self, other: ChatOutcome) {
        self.delivered += other.delivered;
        self.duplicates += other.duplicates;
        self.cross_room += other.cross_room;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
    }

    /// Every one of `expected` deliveries made once, and nothing else.
    pub fn is_exact(&self, expected: u64) -> bool {
        self.delivered == expected
            && self.duplicates == 0
            && self.cross_room == 0
            && self.errors == 0
    }

    /// p50, p90, p99 and max, in milliseconds.
    pub fn latency_percentiles(&mut self) -> [f64; 4] {
        self.latencies_us.sort_unstable();
        let at = |q: f64| {
            let Some(last) = self.latencies_us.len().checked_sub(1) else {
                return 0.0;
            };
            f64::from(self.latencies_us[(last as f64 * q).round() as usize]) / 1000.0
        };
        [at(0.5), at(0.9), at(0.99), at(1.0)]
    }
}

#[derive(Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow)]
    pub room: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub data: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub code: Option<Cow<'a, str>>,
}

impl Client {
    /// Connects and joins `room`; done when the `joined` frame arrives.
    pub async fn join(
        url: &str,
        room: String,
        index: usize,
        clients_per_room: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let joining = async {
            // Nagle off, as chat servers set it: small frames go out at once.
            let started = std::time::Instant::now();
            let (mut socket, _) = connect_async_with_config(url, None, true)
                .await
                .with_context(|| format!("cannot connect to {url}"))?;
            let handshake = started.elapsed();
            let join =
                serde_json::json!({"action": "join", "room": room, "name": format!("c{index}")});
            socket.send(Message::text(join.to_string())).await?;
            loop {
                match socket.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let frame: Frame = serde_json::from_str(&text)?;
                        match &*frame.kind {
                            "joined" => break,
                            "error" => bail!("join refused: {text}"),
                            _ => {}
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Err(error.into()),
                    None => bail!("the server closed the socket before the join completed"),
                }
            }
            anyhow::Ok((socket, handshake))
        };
        let (socket, handshake) = tokio::time::timeout(timeout, joining)
            .await
            .with_context(|| format!("client {index} did not join within {timeout:?}"))??;
        Ok(Self {
            index,
            clients_per_room,
            room,
            socket,
            handshake,
        })
    }

    fn room_index(&self) -> usize {
        self.index / self.clients_per_room
    }

    /// Sends `plan.messages` messages and reads until every message of the
    /// room has arrived (or the timeout), accounting for each one.
    pub async fn chat(
        mut self,
        plan: Arc<ChatPlan>,
        delivered: Arc<AtomicU64>,
    ) -> (Self, ChatOutcome) {
        let mut outcome = ChatOutcome::default();
        let expected = plan.clients * plan.messages;
        // One bit per (sender in this room, sequence number).
        let mut seen = vec![false; expected];
        let mut received = 0;
        let mut sent = 0;
        let deadline = tokio::time::Instant::now() + plan.timeout;
        let mut pace = (plan.rate > 0.0).then(|| {
            let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.rate));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            every
        });
        if pace.is_none() {
            if self.send(sent, plan.size).await.is_err() {
                outcome.errors += 1;
                return (self, outcome);
            }
            sent += 1;
        }
        // Once everything has arrived, keep listening a moment: a duplicate
        // or a stray from another room arriving late still counts.
        let mut linger_until = None;
        loop {
            if received == expected && linger_until.is_none() {
                linger_until = Some(tokio::time::Instant::now() + LINGER);
            }
            let next = tokio::select! {
                () = async { tokio::time::sleep_until(linger_until.expect("guarded")).await }, if linger_until.is_some() => break,
                next = self.socket.next() => next,
                _ = async { pace.as_mut().expect("guarded").tick().await }, if pace.is_some() && sent < plan.messages => {
                    if self.send(sent, plan.size).await.is_err() {
                        outcome.errors += 1;
                        break;
                    }
                    sent += 1;
                    continue;
                }
                () = tokio::time::sleep_until(deadline) => {
                    outcome.errors += 1;
                    eprintln!("client {}: timed out with {received}/{expected} messages", self.index);
                    break;
                }
            };
            let text = match next {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
                Some(Err(error)) => {
                    eprintln!("client {}: {error}", self.index);
                    outcome.errors += 1;
                    break;
                }
                None => {
                    eprintln!("client {}: the server closed the socket", self.index);
                    outcome.errors += 1;
                    break;
                }
            };
            let Ok(frame) = serde_json::from_str::<Frame>(&text) else {
                outcome.errors += 1;
                continue;
            };
            match &*frame.kind {
                "message" => {}
                "error" => {
                    eprintln!("client {}: error frame {:?}", self.index, frame.code);
                    if frame.code.as_deref() == Some("rate_limited") {
                        eprintln!(
                            "  the server's rate limit refused a message: load-test with it off (chat-local --rate-limit 0, the stack's RateLimit=0)"
                        );
                    }
                    outcome.errors += 1;
                    continue;
                }
                _ => continue,
            }
            let Some((sender, sequence, sent_at)) = frame.data.as_deref().and_then(parse_body)
            else {
                // Not one of this run's messages: someone else is in the room.
                outcome.cross_room += 1;
                continue;
            };
            if frame.room.as_deref() != Some(self.room.as_str())
                || sender / plan.clients != self.room_index()
                || sequence >= plan.messages
            {
                outcome.cross_room += 1;
                continue;
            }
            let slot = (sender % plan.clients) * plan.messages + sequence;
            if std::mem::replace(&mut seen[slot], true) {
                outcome.duplicates += 1;
                continue;
            }
            received += 1;
            outcome.delivered += 1;
            delivered.fetch_add(1, Ordering::Relaxed);
            let latency_us = now_ns().saturating_sub(sent_at) / 1000;
            outcome
                .latencies_us
                .push(latency_us.min(u64::from(u32::MAX)) as u32);
            // Closed loop: the next message goes once the last one is back.
            if pace.is_none() && sender == self.index && sent < plan.messages {
                if self.send(sent, plan.size).await.is_err() {
                    outcome.errors += 1;
                    break;
                }
                sent += 1;
            }
        }
        (self, outcome)
    }

    async fn send(&mut self, sequence: usize, size: usize) -> anyhow::Result<()> {
        let mut body = format!("b:{}:{}:{}", self.index, sequence, now_ns());
        if body.len() < size {
            body.push(':');
            body.extend(std::iter::repeat_n('x', size - body.len()));
        }
        let frame = serde_json::json!({"action": "sendmessage", "data": body});
        self.socket.send(Message::text(frame.to_string())).await?;
        Ok(())
    }

    /// Reads (and so answers pings) until the socket ends.
    pub async fn drain(mut self) {
        while let Some(Ok(_)) = self.socket.next().await {}
    }
}

/// `b:{sender}:{sequence}:{sent_at_ns}[:padding]`.
pub fn parse_body(body: &str) -> Option<(usize, usize, u64)> {
    let mut parts = body.strip_prefix("b:")?.split(':');
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    ))
}
