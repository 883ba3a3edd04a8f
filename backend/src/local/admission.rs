//! Who may open a socket: the caps on open sockets, in all and per client
//! address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::gateway::GatewayConfig;
use crate::quiet_warning::QuietWarning;
use crate::store::client_of;

/// Counts open sockets, in all and per client address, against the caps.
pub(super) struct OpenSockets {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    full: Mutex<QuietWarning>,
}

impl Default for OpenSockets {
    fn default() -> Self {
        Self {
            total: AtomicUsize::new(0),
            per_ip: Mutex::default(),
            full: Mutex::new(QuietWarning::new(std::time::Duration::from_secs(10))),
        }
    }
}

impl OpenSockets {
    /// Counts one more socket from `ip`, or says why it may not open.
    pub(super) fn open(&self, ip: IpAddr, config: &GatewayConfig) -> Result<(), Refusal> {
        let over_total = self
            .total
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                (open < config.max_connections).then_some(open + 1)
            })
            .is_err();
        if over_total {
            // A reconnect storm against a full server: one line per period.
            self.full
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .warn(|more| {
                    tracing::warn!(
                        max = config.max_connections,
                        more_since_last_report = more,
                        "connection refused: the server is full"
                    );
                });
            return Err(Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server has as many connections as it takes; try again later",
            ));
        }
        if let Some(max) = config.max_connections_per_ip {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let open = per_ip.entry(client_of(ip)).or_default();
            if *open >= max {
                drop(per_ip);
                self.total.fetch_sub(1, Ordering::SeqCst);
                tracing::info!(%ip, max, "connection refused: too many from one address");
                return Err(Refusal(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections from your address; close some and try again",
                ));
            }
            *open += 1;
        }
        Ok(())
    }

    pub(super) fn close(&self, ip: IpAddr, config: &GatewayConfig) {
        self.total.fetch_sub(1, Ordering::SeqCst);
        if config.max_connections_per_ip.is_some() {
            let client = client_of(ip);
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(open) = per_ip.get_mut(&client) {
                *open -= 1;
                if *open == 0 {
                    per_ip.remove(&client);
                }
            }
        }
    }
}

/// One open socket's place in [`OpenSockets`], given back when dropped.
pub(super) struct Slot<'a> {
    pub(super) open: &'a OpenSockets,
    pub(super) ip: IpAddr,
    pub(super) config: &'a GatewayConfig,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.open.close(self.ip, self.config);
    }
}

/// A handshake refused for want of room, to be tried again later.
pub(super) struct Refusal(StatusCode, &'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, [(header::RETRY_AFTER, "5")], self.1).into_response()
    }
}
