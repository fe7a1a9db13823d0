//! The public address faces the internet: everything a client controls is bounded before it is
//! authenticated (DESIGN.md, "Hostile by default").
//!
//! - **Connections** ([`serve`]): HTTP/1.1 only, so a connection that sends nothing is cut by the
//!   header timeout like one that stalls mid-head (hyper's protocol sniffing for HTTP/2 waits
//!   forever, which is how idle sockets used to pile up); the same timeout closes idle keep-alive
//!   connections; at most `max_connections` at once, and `max_connections_per_ip` per address
//!   (off behind a load balancer, which hides addresses).
//! - **Bodies** ([`read_body`]): read only after the endpoint resolved and the request's headers
//!   were checked; a declared length over the kind's limit is refused before reading; after a short
//!   grace the body must keep arriving at a minimum rate and finish within a deadline; every
//!   buffered byte is reserved from one [`MemoryBudget`] shared by all requests (over it: `503` +
//!   `Retry-After`, never swapping). The reservation lives as long as the request's work.
//!
//! Must not import the database or the revocation engine.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How bodies must arrive.
#[derive(Debug, Clone, Copy)]
pub struct BodyRules {
    /// Time before the minimum rate applies (connection set-up, a slow first packet).
    pub grace: Duration,
    /// After the grace, bytes received must keep up with this rate (bytes per second).
    pub min_rate: u64,
    /// A whole body, however fast, within this.
    pub deadline: Duration,
}

impl Default for BodyRules {
    fn default() -> Self {
        BodyRules {
            grace: Duration::from_secs(5),
            min_rate: 16 << 10,
            deadline: Duration::from_secs(60),
        }
    }
}

/// Bytes of request bodies buffered at once, all requests together, in two tiers: the first
/// [`SMALL_PART`] bytes of every body come from a quarter of the budget kept for them, and only
/// the bytes beyond from the rest. So senders of big bodies, who fill the budget first, are the ones
/// refused when it is spoken for, while alerts (a few KB each) still find room: measured under
/// attack, 64 clients uploading 8 MiB bodies to a real endpoint took the whole single-tier budget
/// and 19 of 20 genuine alerts got 503.
#[derive(Clone)]
pub struct MemoryBudget {
    small: Arc<Semaphore>,
    large: Arc<Semaphore>,
    units: usize,
}

/// Reservation granularity.
const UNIT: usize = 4 << 10;
/// The first bytes of each body, reserved from the small tier.
pub const SMALL_PART: usize = 256 << 10;

impl MemoryBudget {
    pub fn new(bytes: usize) -> MemoryBudget {
        let units = bytes.div_ceil(UNIT).max(2);
        let small = (units / 4).max(1);
        MemoryBudget {
            small: Arc::new(Semaphore::new(small)),
            large: Arc::new(Semaphore::new(units - small)),
            units,
        }
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> usize {
        (self.units - self.small.available_permits() - self.large.available_permits()) * UNIT
    }

    pub fn capacity(&self) -> usize {
        self.units * UNIT
    }

    /// An empty reservation that can grow.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            small: None,
            large: None,
            bytes: 0,
        }
    }
}

/// Bytes reserved from a [`MemoryBudget`], given back when dropped.
pub struct Reservation {
    budget: MemoryBudget,
    small: Option<OwnedSemaphorePermit>,
    large: Option<OwnedSemaphorePermit>,
    /// Bytes covered (a multiple of the unit).
    bytes: usize,
}

fn take(tier: &Arc<Semaphore>, slot: &mut Option<OwnedSemaphorePermit>, units: usize) -> bool {
    if units == 0 {
        return true;
    }
    let Ok(more) = tier.clone().try_acquire_many_owned(units as u32) else {
        return false;
    };
    match slot {
        Some(p) => p.merge(more),
        None => *slot = Some(more),
    }
    true
}

impl Reservation {
    /// Grows the reservation to cover `total` bytes; `false` (and no change) when the budget
    /// cannot.
    pub fn cover(&mut self, total: usize) -> bool {
        if total <= self.bytes {
            return true;
        }
        let small_units = SMALL_PART / UNIT;
        let have = self.bytes / UNIT;
        let want = total.div_ceil(UNIT);
        let small_needed = want.min(small_units).saturating_sub(have.min(small_units));
        let large_needed = want.saturating_sub(small_units) - have.saturating_sub(small_units);
        // Large first: if it fails, nothing was taken from the small tier.
        let mut large = None;
        if !take(&self.budget.large, &mut large, large_needed) {
            return false;
        }
        if !take(&self.budget.small, &mut self.small, small_needed) {
            return false; // `large` drops, giving its units back
        }
        if let Some(l) = large {
            match &mut self.large {
                Some(p) => p.merge(l),
                None => self.large = Some(l),
            }
        }
        self.bytes = want * UNIT;
        true
    }

    /// Bytes covered.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Why a body was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than the endpoint takes: 413.
    TooLarge { limit: usize },
    /// The server's body memory is spoken for: 503 and `Retry-After`.
    OverBudget,
    /// Arriving slower than the minimum rate, or past the deadline: 408.
    TooSlow,
    /// The client went away or sent a malformed body: 400.
    Broken,
}

impl BodyError {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } => "too_large",
            BodyError::OverBudget => "over_budget",
            BodyError::TooSlow => "too_slow",
            BodyError::Broken => "broken",
        }
    }

    /// The answer: a JSON error; the connection is closed (the rest of the body is not read).
    pub fn into_api_error(self) -> super::ApiError {
        let (status, message) = match self {
            BodyError::TooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body: larger than this endpoint takes ({limit} bytes)"),
            ),
            BodyError::OverBudget => (
                StatusCode::SERVICE_UNAVAILABLE,
                "body: the server is buffering all the request bodies it can; retry later".into(),
            ),
            BodyError::TooSlow => (
                StatusCode::REQUEST_TIMEOUT,
                "body: arriving too slowly".into(),
            ),
            BodyError::Broken => (
                StatusCode::BAD_REQUEST,
                "body: incomplete or malformed".into(),
            ),
        };
        let error = super::ApiError::new(status, message).closing();
        if self == BodyError::OverBudget {
            error.retry_after(1)
        } else {
            error
        }
    }
}

/// Reads a whole body under `rules`, at most `max` bytes, every byte reserved from `budget`.
pub async fn read_body(
    body: Body,
    headers: &HeaderMap,
    max: usize,
    budget: &MemoryBudget,
    rules: &BodyRules,
) -> Result<(Bytes, Reservation), BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge { limit: max });
    }
    let mut reservation = budget.reservation();
    let mut buf: Vec<u8> = Vec::new();
    let started = tokio::time::Instant::now();
    let hard_deadline = started + rules.deadline;
    let mut body = body;
    loop {
        // The next bytes must arrive before the minimum rate would be broken.
        let owed = Duration::from_secs_f64((buf.len() + 1) as f64 / rules.min_rate.max(1) as f64);
        let due = (started + rules.grace + owed).min(hard_deadline);
        let frame = match tokio::time::timeout_at(due, body.frame()).await {
            Err(_) => return Err(BodyError::TooSlow),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(BodyError::Broken),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let total = buf.len() + data.len();
        if total > max {
            return Err(BodyError::TooLarge { limit: max });
        }
        // A declared length is reserved up front when the budget has it (one allocation);
        // otherwise the bytes so far must fit, and the buffer never grows past what is reserved.
        if !reservation.cover(total.max(declared.unwrap_or(0).min(max as u64) as usize))
            && !reservation.cover(total)
        {
            return Err(BodyError::OverBudget);
        }
        if buf.capacity() < total {
            let target = (buf.capacity() * 2)
                .max(total)
                .min(reservation.bytes().max(total));
            buf.reserve_exact(target - buf.len());
        }
        buf.extend_from_slice(&data);
    }
    if declared.is_some_and(|n| n != buf.len() as u64) {
        return Err(BodyError::Broken);
    }
    Ok((Bytes::from(buf), reservation))
}

/// Limits on connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionRules {
    /// A request head must be complete within this of the connection opening or of the previous
    /// response (so it also bounds idle time before the first byte and between keep-alive requests).
    pub header_timeout: Duration,
    pub max_connections: usize,
    /// 0: no per-address limit.
    pub max_connections_per_ip: usize,
}

/// What the accept loop reports.
pub trait ConnectionObserver: Send + Sync + 'static {
    fn refused(&self, reason: &'static str);
    fn open(&self, open: usize);
}

/// One accepted connection's place in the counts; released when dropped.
struct Slot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    total: Arc<AtomicUsize>,
    ip: Option<IpAddr>,
    observer: Arc<dyn ConnectionObserver>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let open = self.total.fetch_sub(1, Ordering::SeqCst) - 1;
        self.observer.open(open);
        if let Some(ip) = self.ip {
            let mut counts = self.counts.lock().expect("connection counts");
            if let Some(n) = counts.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&ip);
                }
            }
        }
    }
}

/// Resolves once the shutdown flag is set (or its sender is gone).
pub async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        let stopping = *stop.borrow_and_update();
        if stopping || stop.changed().await.is_err() {
            return;
        }
    }
}

/// Accepts connections until told to stop, then waits for in-flight requests to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    rules: ConnectionRules,
    observer: Arc<dyn ConnectionObserver>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(rules.header_timeout)
        // A connection's read buffer holds at most this much that nobody asked for (hyper's
        // default lets it grow to ~400 KiB, times thousands of attacking connections).
        .max_buf_size(64 << 10)
        .keep_alive(true);
    let counts: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let total = Arc::new(AtomicUsize::new(0));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer): (_, SocketAddr) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        observer.refused("accept_error");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if total.load(Ordering::SeqCst) >= rules.max_connections {
                    observer.refused("max_connections");
                    continue; // dropped: closed at once
                }
                let ip = (rules.max_connections_per_ip > 0).then(|| peer.ip());
                if let Some(ip) = ip {
                    let mut c = counts.lock().expect("connection counts");
                    let n = c.entry(ip).or_insert(0);
                    if *n >= rules.max_connections_per_ip {
                        drop(c);
                        observer.refused("max_connections_per_ip");
                        continue;
                    }
                    *n += 1;
                }
                let open = total.fetch_add(1, Ordering::SeqCst) + 1;
                observer.open(open);
                let slot = Slot {
                    counts: counts.clone(),
                    total: total.clone(),
                    ip,
                    observer: observer.clone(),
                };
                let _ = stream.set_nodelay(true);
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    drop(slot);
                });
            }
            _ = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// JSON for the errors layers and routing answer by themselves (404, 405, 408, 413, 414, ...),
/// which would otherwise be plain text or empty; also refuses overlong URIs (414) before routing.
/// Marks a response whose error is already a page for a person (the console's), so
/// [`json_errors`] leaves it alone; every other error is JSON.
#[derive(Debug, Clone, Copy)]
pub struct OwnErrorPage;

pub async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    /// Longest URI taken: endpoint paths are short.
    const MAX_URI: usize = 8 << 10;
    if request.uri().to_string().len() > MAX_URI {
        return super::error(
            StatusCode::URI_TOO_LONG,
            format!("uri: longer than {MAX_URI} bytes"),
        );
    }
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    let own_page = response.extensions().get::<OwnErrorPage>().is_some();
    if !(status.is_client_error() || status.is_server_error()) || is_json || own_page {
        return response;
    }
    let (parts, body) = response.into_parts();
    // The layers' own texts are short; anything longer is cut.
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_owned(),
        Err(_) => String::new(),
    };
    let reason = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase();
    let message = if text.is_empty() {
        reason
    } else {
        format!("{reason}: {text}")
    };
    let mut out = super::error(status, message).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_grow_in_units_and_return_when_dropped() {
        let budget = MemoryBudget::new(64 * SMALL_PART);
        let mut a = budget.reservation();
        assert!(a.cover(1));
        assert_eq!(budget.in_use(), UNIT);
        assert!(a.cover(UNIT + 1));
        assert_eq!(budget.in_use(), 2 * UNIT);
        assert!(a.cover(SMALL_PART + 1), "into the large tier");
        assert_eq!(budget.in_use(), SMALL_PART + UNIT);
        drop(a);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn big_bodies_cannot_take_the_room_small_ones_need() {
        // 16 MiB: 4 MiB small tier (16 bodies' first 256 KiB), 12 MiB large.
        let budget = MemoryBudget::new(16 << 20);
        let mut big = Vec::new();
        loop {
            let mut r = budget.reservation();
            if !r.cover(8 << 20) {
                break;
            }
            big.push(r);
        }
        assert_eq!(
            big.len(),
            1,
            "one 8 MiB body fits the large tier, a second does not"
        );
        let mut more = budget.reservation();
        assert!(more.cover(SMALL_PART), "its first part still fits");
        assert!(!more.cover(8 << 20), "the rest does not");
        // Alerts of a few KB keep finding room.
        let alerts: Vec<Reservation> = (0..100)
            .map(|_| {
                let mut r = budget.reservation();
                assert!(r.cover(8 << 10));
                r
            })
            .collect();
        assert_eq!(alerts.len(), 100);
    }

    /// A body that sends one byte every two seconds, forever.
    struct Trickle(std::pin::Pin<Box<tokio::time::Sleep>>);

    impl http_body::Body for Trickle {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
            use std::future::Future as _;
            std::task::ready!(self.0.as_mut().poll(cx));
            let next = tokio::time::Instant::now() + Duration::from_secs(2);
            self.0.as_mut().reset(next);
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(b"x")))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_trickles_is_cut_after_the_grace() {
        let body = Body::new(Trickle(Box::pin(tokio::time::sleep(Duration::ZERO))));
        let budget = MemoryBudget::new(1 << 20);
        let started = tokio::time::Instant::now();
        let got = read_body(
            body,
            &HeaderMap::new(),
            1 << 20,
            &budget,
            &BodyRules::default(),
        )
        .await;
        assert_eq!(got.err(), Some(BodyError::TooSlow));
        assert!(
            started.elapsed() <= Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn declared_lengths_over_the_limit_are_refused_unread() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_LENGTH,
            axum::http::HeaderValue::from_static("2000"),
        );
        let budget = MemoryBudget::new(1 << 20);
        let got = read_body(
            Body::from("x"),
            &headers,
            1000,
            &budget,
            &BodyRules::default(),
        )
        .await;
        assert_eq!(got.err(), Some(BodyError::TooLarge { limit: 1000 }));
        let got = read_body(
            Body::from(vec![b'x'; 1500]),
            &HeaderMap::new(),
            1000,
            &budget,
            &BodyRules::default(),
        )
        .await;
        assert_eq!(got.err(), Some(BodyError::TooLarge { limit: 1000 }));
        let (bytes, reservation) = read_body(
            Body::from("hello"),
            &HeaderMap::new(),
            1000,
            &budget,
            &BodyRules::default(),
        )
        .await
        .unwrap();
        assert_eq!(&bytes[..], b"hello");
        assert_eq!(budget.in_use(), UNIT);
        drop(reservation);
        assert_eq!(budget.in_use(), 0);
    }
}
