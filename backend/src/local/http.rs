//! The HTTP front door: accepting TCP connections and serving HTTP/1.1 on
//! them, with the limits a public server needs before any route runs.
//!
//! - A listen backlog sized for a reconnect storm: thousands of browsers
//!   reconnecting at the same moment (a restart) must not have their SYNs
//!   dropped and wait a second for the retry.
//! - Connections that are not (yet) WebSockets are capped, in all and per
//!   client address: each holds a descriptor and buffers, and nothing else
//!   would bound them. A WebSocket leaves this count when it upgrades and is
//!   counted by the gateway from then on.
//! - A connection that makes no progress (a request not arriving, a
//!   response not being read) for [`HttpLimits::stall_timeout`] is dropped,
//!   between keep-alive requests too.
//! - Request headers are limited in size ([`HttpLimits::max_header_bytes`]).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::{Instant, Sleep};

use crate::quiet_warning::QuietWarning;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::client_address::TrustedProxies;
use crate::store::client_of;

/// What an HTTP listener allows each connection.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Connections not (yet) upgraded to WebSockets, at most; more are
    /// answered 503 and closed at once.
    pub max_connections: usize,
    /// The same per client address (an IPv4 address or an IPv6 /64); `None`
    /// for no per-address cap. Trusted proxies are not capped: every client
    /// behind one shares its address.
    pub max_connections_per_ip: Option<usize>,
    /// How long a request's headers may take to arrive.
    pub header_read_timeout: Duration,
    /// How long a connection may go without reading or writing a byte
    /// (a slow or silent reader, an idle keep-alive).
    pub stall_timeout: Duration,
    /// Largest request head (request line and headers) read; a larger one
    /// is answered 431.
    pub max_header_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_ip: Some(256),
            header_read_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
        }
    }
}

/// The backlog asked for; the kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with a backlog deep enough for a reconnect storm.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    if let Some(somaxconn) = somaxconn()
        && somaxconn < LISTEN_BACKLOG
    {
        tracing::info!(
            somaxconn,
            wanted = LISTEN_BACKLOG,
            "the kernel caps the listen backlog (net.core.somaxconn); a reconnect storm may see SYN retries"
        );
    }
    socket.listen(LISTEN_BACKLOG)
}

fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The stream a served connection runs on; a WebSocket upgrade downcasts to
/// it and takes the bare [`TcpStream`] back ([`Watched::into_inner`]).
pub type HttpIo = TokioIo<Watched>;

/// Serves `app` on every connection `listener` accepts until `stopping` is
/// cancelled, then lets requests in progress finish; the returned tracker
/// holds the connections still open.
///
/// Accepting runs on a thread of its own. In a reconnect storm the
/// runtime's workers are busy with thousands of handshakes, and an accept
/// loop queued behind them lets the kernel's accept queue overflow: the
/// kernel then drops the clients' handshakes and they retry a second
/// later. A thread that does nothing but accept keeps the queue drained;
/// each connection is served on the runtime's workers as before.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    proxies: Arc<TrustedProxies>,
    stopping: CancellationToken,
) -> io::Result<TaskTracker> {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    // Accepting stops when `stopping` is cancelled, and also if this future
    // is dropped: the thread would otherwise hold the port.
    let accepting = stopping.child_token();
    let _stop_accepting = accepting.clone().drop_guard();
    let port = listener.local_addr()?.port();
    let listener = listener.into_std()?;
    let server = Arc::new(Server {
        app,
        http,
        limits,
        proxies,
        counts: Arc::default(),
        connections: TaskTracker::new(),
        runtime: tokio::runtime::Handle::current(),
        stopping,
        accepting,
        lingering: AtomicUsize::new(0),
    });
    let (finished, accepting_finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        // Linux keeps 15 bytes of a thread's name.
        .name(format!("accept-{port}"))
        .spawn({
            let server = Arc::clone(&server);
            move || {
                let _ = finished.send(accept_on_this_thread(listener, &server));
            }
        })?;
    let accepted = match accepting_finished.await {
        Ok(accepted) => accepted,
        Err(_) => Err(io::Error::other("the accept thread panicked")),
    };
    server.connections.close();
    if let Err(error) = accepted {
        // Everything else stops too: a server that cannot accept must not
        // look alive.
        server.stopping.cancel();
        return Err(error);
    }
    Ok(server.connections.clone())
}

/// What every accepted connection is served with.
struct Server {
    app: Router,
    http: http1::Builder,
    limits: HttpLimits,
    proxies: Arc<TrustedProxies>,
    counts: Arc<HttpConnections>,
    connections: TaskTracker,
    /// Where connections are served (the accept thread only accepts).
    runtime: tokio::runtime::Handle,
    /// Everything is stopping: connections finish their request and close.
    stopping: CancellationToken,
    /// Accepting stops (with `stopping`, or when `serve` is dropped).
    accepting: CancellationToken,
    /// Refused connections being closed gently.
    lingering: AtomicUsize,
}

/// The accept loop, on a single-threaded runtime of this thread's own.
fn accept_on_this_thread(listener: std::net::TcpListener, server: &Arc<Server>) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::from_std(listener)?;
        let mut accept_errors = QuietWarning::new(Duration::from_secs(10));
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors, most likely: pause rather than
                        // spin, and say so once in a while, not every time.
                        accept_errors.warn(|suppressed| {
                            tracing::warn!(%error, suppressed, "accept failed; are descriptors exhausted?");
                        });
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = server.accepting.cancelled() => return Ok(()),
            };
            server.admit(stream, peer);
        }
    })
}

impl Server {
    /// Counts a new connection against the caps and hands it to the
    /// runtime's workers, or refuses it.
    fn admit(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let limits = &self.limits;
        let ip = peer.ip().to_canonical();
        let per_ip = limits
            .max_connections_per_ip
            .filter(|_| !self.proxies.contains(ip));
        let Some(slot) = self.counts.open(ip, limits.max_connections, per_ip) else {
            self.refuse_busy(stream);
            return;
        };
        let _ = stream.set_nodelay(true);
        // Registered with this thread's runtime: taken out of it, to be
        // registered with the workers' when served.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, "connection lost before it was served");
                return;
            }
        };
        let serving = self
            .connections
            .track_future(Arc::clone(self).serve_connection(stream, peer, slot));
        self.runtime.spawn(serving);
    }

    async fn serve_connection(
        self: Arc<Self>,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        slot: HttpSlot,
    ) {
        let _slot = slot;
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, "connection lost before it was served");
                return;
            }
        };
        // Requests being answered: the connection is not stalled while its
        // handler works (a `$connect` may take up to API Gateway's 29 s).
        let busy = Arc::new(AtomicUsize::new(0));
        let service = {
            let busy = Arc::clone(&busy);
            let app = self.app.clone();
            hyper::service::service_fn(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                let answering = Answering::start(&busy);
                let answer = app.clone().oneshot(request);
                async move {
                    let _answering = answering;
                    answer.await
                }
            })
        };
        let io = TokioIo::new(Watched::new(stream, self.limits.stall_timeout, busy));
        let connection = self.http.serve_connection(io, service).with_upgrades();
        tokio::pin!(connection);
        let ended = tokio::select! {
            ended = connection.as_mut() => ended,
            () = self.stopping.cancelled() => {
                // Finish the request in progress, then close.
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = ended {
            tracing::debug!(%error, "HTTP connection ended");
        }
    }
}

/// How many refused connections may linger at once, per listener (see
/// [`Server::refuse_busy`]); beyond that they are closed at once.
pub const MAX_LINGERING: usize = 32;
/// How long a refused connection lingers at most.
const LINGER: Duration = Duration::from_secs(2);

impl Server {
    /// Over a cap: a short answer, and the connection closed. Closing a
    /// socket with unread input sends a reset, which can destroy the answer
    /// before the client reads it; so the answer is followed by a FIN and
    /// the client's input read and discarded until it closes too (a
    /// lingering close, as nginx does), for at most [`LINGER`], on this
    /// thread. Only [`MAX_LINGERING`] at once: in a flood the rest get the
    /// answer and the reset.
    fn refuse_busy(self: &Arc<Self>, stream: TcpStream) {
        const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 5\r\n\
x-content-type-options: nosniff\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        if !matches!(stream.try_write(BUSY), Ok(written) if written == BUSY.len()) {
            return;
        }
        if self.lingering.fetch_add(1, Ordering::Relaxed) >= MAX_LINGERING {
            self.lingering.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let lingering = Lingering(Arc::clone(self));
        tokio::spawn(async move {
            let _lingering = lingering;
            let mut stream = stream;
            let _ = tokio::time::timeout(LINGER, async {
                stream.shutdown().await?;
                let mut discard = [0u8; 4096];
                while stream.read(&mut discard).await? > 0 {}
                io::Result::Ok(())
            })
            .await;
        });
    }
}

/// A refused connection lingering, counted while it lasts (dropped with the
/// accept thread's runtime too).
struct Lingering(Arc<Server>);

impl Drop for Lingering {
    fn drop(&mut self) {
        self.0.lingering.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Open HTTP connections, in all and per client address.
#[derive(Default)]
struct HttpConnections {
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One connection's place in [`HttpConnections`], given back when dropped.
struct HttpSlot {
    connections: Arc<HttpConnections>,
    client: Option<IpAddr>,
}

impl HttpConnections {
    fn open(self: &Arc<Self>, ip: IpAddr, max: usize, per_ip: Option<usize>) -> Option<HttpSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_client) = &mut *counts;
        if *total >= max {
            return None;
        }
        let client = match per_ip {
            Some(cap) => {
                let client = client_of(ip);
                let open = by_client.entry(client).or_default();
                if *open >= cap {
                    return None;
                }
                *open += 1;
                Some(client)
            }
            None => None,
        };
        *total += 1;
        Some(HttpSlot {
            connections: Arc::clone(self),
            client,
        })
    }
}

impl Drop for HttpSlot {
    fn drop(&mut self) {
        let mut counts = self
            .connections
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (total, by_client) = &mut *counts;
        *total -= 1;
        if let Some(client) = self.client
            && let Some(open) = by_client.get_mut(&client)
        {
            *open -= 1;
            if *open == 0 {
                by_client.remove(&client);
            }
        }
    }
}

/// A TCP stream that fails with `TimedOut` once it has gone
/// `stall_timeout` without moving a byte either way while someone waits on
/// it: a silent client, a reader that stopped reading, a keep-alive nobody
/// uses. Progress is a timestamp; the timer is armed only while waiting.
pub struct Watched {
    stream: TcpStream,
    stall_timeout: Duration,
    last_progress: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    /// Requests of this connection being answered.
    busy: Arc<AtomicUsize>,
}

/// A request being answered, counted while it lasts.
struct Answering(Arc<AtomicUsize>);

impl Answering {
    fn start(busy: &Arc<AtomicUsize>) -> Self {
        busy.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(busy))
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Watched {
    fn new(stream: TcpStream, stall_timeout: Duration, busy: Arc<AtomicUsize>) -> Self {
        Self {
            stream,
            stall_timeout,
            last_progress: Instant::now(),
            timer: None,
            busy,
        }
    }

    pub fn into_inner(self) -> TcpStream {
        self.stream
    }

    fn progressed(&mut self) {
        self.last_progress = Instant::now();
    }

    /// Called when the stream is not ready: an error once the stall
    /// timeout has passed, else the timer armed to wake this task then.
    fn check_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.busy.load(Ordering::Relaxed) > 0 {
            // Waiting on our own handler is not the client's stall.
            self.progressed();
        }
        let deadline = self.last_progress + self.stall_timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "no progress on the connection",
        ))
    }
}

impl Watched {
    /// A write's outcome, counted as progress if it moved a byte, or
    /// checked for a stall if the socket would not take any.
    fn watch_write(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(result) => {
                if matches!(result, Ok(written) if written > 0) {
                    self.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.check_stalled(cx).map(Err),
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.check_stalled(cx).map(Err),
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.watch_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.watch_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_caps_count_clients_and_give_slots_back() {
        let connections = Arc::new(HttpConnections::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = connections.open(a, 3, Some(2)).unwrap();
        let _second = connections.open(a, 3, Some(2)).unwrap();
        assert!(connections.open(a, 3, Some(2)).is_none(), "per address");
        let _third = connections.open(b, 3, Some(2)).unwrap();
        assert!(connections.open(b, 3, Some(2)).is_none(), "in all");
        drop(first);
        assert!(connections.open(a, 3, Some(2)).is_some());
    }
}
