//! The load generator: open-loop at a fixed rate (latency from each request's intended send
//! time) and closed-loop saturation with N connections. The same code drives every target —
//! Tandem, the app directly, nginx, raw Redis — so figures are only ever compared with figures
//! from this generator.
//!
//! Open loop: a dedicated OS thread walks the schedule (std::thread::sleep is precise to tens of
//! microseconds; tokio's timer wheel has millisecond ticks, which would add up to a millisecond of
//! artificial latency) and hands each due request to an idle connection. When every connection
//! is busy the request waits for one, and that wait counts, because latency runs from the
//! intended time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpStream;

use crate::schedule::OpenLoopSchedule;

/// The slowest answer counted as an answer; anything slower is an error and the connection is
/// replaced.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Histogram range in microseconds (1 µs .. 2 min, 3 significant digits).
const HIST_MAX_US: u64 = 120_000_000;

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("load generator thread failed")]
    Scheduler,
}

impl LoadError {
    /// Whether the connection may be broken (replace it before the next request).
    fn breaks_connection(&self) -> bool {
        !matches!(self, LoadError::Status { .. })
    }
}

/// What one request body is.
#[derive(Debug, Clone)]
pub enum Body {
    Empty,
    Fixed(Bytes),
    /// `{"sent":<unix ns of the intended send time>,"pad":"xx…"}` of about `size` bytes, so a
    /// receiving app can measure end-to-end latency from the intended time.
    Stamped {
        size: usize,
    },
}

/// One HTTP request, sent over keep-alive HTTP/1.1 connections.
#[derive(Debug, Clone)]
pub struct HttpOp {
    pub addr: SocketAddr,
    pub method: Method,
    pub path: String,
    pub content_type: Option<&'static str>,
    pub body: Body,
}

impl HttpOp {
    pub fn new(addr: SocketAddr, method: Method, path: impl Into<String>) -> Self {
        HttpOp {
            addr,
            method,
            path: path.into(),
            content_type: None,
            body: Body::Empty,
        }
    }

    pub fn body(mut self, content_type: &'static str, body: Body) -> Self {
        self.content_type = Some(content_type);
        self.body = body;
        self
    }
}

/// One Redis command, on one connection per generator connection.
#[derive(Debug, Clone)]
pub struct RedisOp {
    pub url: String,
    pub cmd: redis::Cmd,
    /// Times the command is sent, each after the previous reply: 2 gives a client making one
    /// more Redis round trip per operation, the least a proxy in front of Redis adds.
    pub round_trips: u32,
}

impl RedisOp {
    pub fn new(url: &str, cmd: redis::Cmd) -> RedisOp {
        RedisOp {
            url: url.to_string(),
            cmd,
            round_trips: 1,
        }
    }

    /// The same command sent twice in a row per operation.
    pub fn twice(&self) -> RedisOp {
        RedisOp {
            round_trips: 2,
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone)]
pub enum Operation {
    Http(HttpOp),
    Redis(RedisOp),
}

/// A stamped JSON body of about `size` bytes.
pub fn stamped_body(sent_unix_ns: u64, size: usize) -> Bytes {
    let head = format!("{{\"sent\":{sent_unix_ns},\"pad\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(head.len() + pad + 2);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    Bytes::from(s)
}

/// Reads the `sent` stamp out of a body (a stamped body, or a CloudEvent wrapping one).
pub fn find_stamp(body: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"sent\":";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits: Vec<u8> = body[at..]
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

enum Connection {
    Http {
        op: Arc<HttpOp>,
        host: HeaderValue,
        sender: SendRequest<Full<Bytes>>,
    },
    Redis {
        op: Arc<RedisOp>,
        conn: redis::aio::MultiplexedConnection,
    },
}

async fn open_http(op: &HttpOp) -> Result<SendRequest<Full<Bytes>>, LoadError> {
    let stream = TcpStream::connect(op.addr)
        .await
        .map_err(|source| LoadError::Connect {
            addr: op.addr,
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the connection closes; a broken connection shows up on the next request.
        let _ = conn.await;
    });
    Ok(sender)
}

impl Connection {
    async fn open(op: &Operation) -> Result<Connection, LoadError> {
        match op {
            Operation::Http(op) => {
                let sender = open_http(op).await?;
                let host = HeaderValue::from_str(&op.addr.to_string())
                    .unwrap_or_else(|_| HeaderValue::from_static("127.0.0.1"));
                Ok(Connection::Http {
                    op: Arc::new(op.clone()),
                    host,
                    sender,
                })
            }
            Operation::Redis(op) => {
                let client = redis::Client::open(op.url.as_str())?;
                let conn = client.get_multiplexed_async_connection().await?;
                Ok(Connection::Redis {
                    op: Arc::new(op.clone()),
                    conn,
                })
            }
        }
    }

    async fn reopen(&mut self) -> Result<(), LoadError> {
        match self {
            Connection::Http { op, sender, .. } => {
                *sender = open_http(op).await?;
            }
            Connection::Redis { op, conn } => {
                let client = redis::Client::open(op.url.as_str())?;
                *conn = client.get_multiplexed_async_connection().await?;
            }
        }
        Ok(())
    }

    /// Sends one request and reads the whole answer; `Ok` only for a 2xx answer.
    async fn call(&mut self, sent_unix_ns: u64) -> Result<Bytes, LoadError> {
        match self {
            Connection::Http { op, host, sender } => {
                let body = match &op.body {
                    Body::Empty => Bytes::new(),
                    Body::Fixed(b) => b.clone(),
                    Body::Stamped { size } => stamped_body(sent_unix_ns, *size),
                };
                let mut req = Request::builder()
                    .method(op.method.clone())
                    .uri(op.path.as_str())
                    .header(HOST, host.clone());
                if let Some(ct) = op.content_type {
                    req = req.header(CONTENT_TYPE, ct);
                }
                let req = req.body(Full::new(body))?;
                sender.ready().await?;
                let resp = sender.send_request(req).await?;
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                if !status.is_success() {
                    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                    return Err(LoadError::Status {
                        status: status.as_u16(),
                        body: text,
                    });
                }
                Ok(body)
            }
            Connection::Redis { op, conn } => {
                for _ in 0..op.round_trips.max(1) {
                    op.cmd.query_async::<redis::Value>(conn).await?;
                }
                Ok(Bytes::new())
            }
        }
    }

    async fn call_with_timeout(&mut self, sent_unix_ns: u64) -> Result<Bytes, LoadError> {
        let result = match tokio::time::timeout(REQUEST_TIMEOUT, self.call(sent_unix_ns)).await {
            Ok(r) => r,
            Err(_) => Err(LoadError::Timeout(REQUEST_TIMEOUT)),
        };
        if let Err(e) = &result {
            if e.breaks_connection() {
                // A failed reopen is retried before the next request; the error is counted once.
                let _ = self.reopen().await;
            }
        }
        result
    }
}

/// Sends one request (probes: is this route served, does this store exist).
pub async fn call_once(op: &Operation) -> Result<Bytes, LoadError> {
    let mut conn = Connection::open(op).await?;
    conn.call_with_timeout(unix_ns(SystemTime::now())).await
}

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// From the first intended (open loop) or actual (closed loop) send to the last answer.
    pub elapsed: Duration,
    /// Latency of the successful requests, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl RunResult {
    fn empty() -> RunResult {
        RunResult {
            ok: 0,
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
            latency_us: new_histogram(),
        }
    }

    fn merge(&mut self, other: &RunResult) {
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
    }

    fn record(&mut self, result: Result<Bytes, LoadError>, latency: Duration) {
        match result {
            Ok(_) => {
                self.ok += 1;
                let us = (latency.as_nanos() / 1000) as u64;
                self.latency_us.saturating_record(us.max(1));
            }
            Err(e) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(e.to_string());
                }
            }
        }
    }

    /// Latency at quantile `q` (0..=1) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.latency_us.max() as f64 / 1000.0
    }

    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// Fraction of requests that failed.
    pub fn error_fraction(&self) -> f64 {
        let total = self.ok + self.errors;
        if total == 0 {
            1.0
        } else {
            self.errors as f64 / total as f64
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: creation cannot fail.
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).unwrap_or_else(|_| Histogram::new(3).unwrap())
}

#[derive(Debug, Clone, Copy)]
pub struct OpenLoop {
    pub rate: f64,
    pub duration: Duration,
    pub connections: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct ClosedLoop {
    pub connections: usize,
    pub duration: Duration,
}

async fn open_all(op: &Operation, n: usize) -> Result<Vec<Connection>, LoadError> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        conns.push(Connection::open(op).await?);
    }
    Ok(conns)
}

/// Sends `rate` requests per second for `duration`; latency from each intended send time.
pub async fn run_open_loop(op: &Operation, cfg: OpenLoop) -> Result<RunResult, LoadError> {
    let conns = open_all(op, cfg.connections).await?;
    let (idle_tx, idle_rx) = std::sync::mpsc::channel::<usize>();
    let anchor = (Instant::now(), SystemTime::now());
    let mut job_txs = Vec::with_capacity(conns.len());
    let mut workers = Vec::with_capacity(conns.len());
    for (id, mut conn) in conns.into_iter().enumerate() {
        let (job_tx, mut job_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        job_txs.push(job_tx);
        let _ = idle_tx.send(id);
        let idle_tx = idle_tx.clone();
        workers.push(tokio::spawn(async move {
            let mut result = RunResult::empty();
            let mut last_done = None;
            while let Some(intended) = job_rx.recv().await {
                let wall = anchor.1 + intended.saturating_duration_since(anchor.0);
                let r = conn.call_with_timeout(unix_ns(wall)).await;
                let done = Instant::now();
                result.record(r, done.saturating_duration_since(intended));
                last_done = Some(done);
                if idle_tx.send(id).is_err() {
                    break;
                }
            }
            (result, last_done)
        }));
    }
    drop(idle_tx);
    // Leave the scheduler thread time to start before the first request is due.
    let schedule = OpenLoopSchedule::new(
        Instant::now() + Duration::from_millis(5),
        cfg.rate,
        cfg.duration,
    );
    let scheduler = std::thread::Builder::new()
        .name("bench-scheduler".into())
        .spawn(move || {
            for i in 0..schedule.len() {
                let due = schedule.intended(i);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let Ok(id) = idle_rx.recv() else { break };
                let Some(tx) = job_txs.get(id) else { break };
                if tx.send(due).is_err() {
                    break;
                }
            }
            // Dropping the job senders ends the workers once they finish what they hold.
            schedule.start()
        })
        .map_err(|_| LoadError::Scheduler)?;
    let start = tokio::task::spawn_blocking(move || scheduler.join())
        .await
        .map_err(|_| LoadError::Scheduler)?
        .map_err(|_| LoadError::Scheduler)?;
    collect(workers, start).await
}

async fn collect(
    workers: Vec<tokio::task::JoinHandle<(RunResult, Option<Instant>)>>,
    start: Instant,
) -> Result<RunResult, LoadError> {
    let mut total = RunResult::empty();
    let mut last = start;
    for w in workers {
        let (r, last_done) = w.await.map_err(|_| LoadError::Scheduler)?;
        total.merge(&r);
        if let Some(d) = last_done {
            last = last.max(d);
        }
    }
    total.elapsed = last.saturating_duration_since(start);
    Ok(total)
}

/// Each of `connections` sends its next request as soon as the previous answer is in.
pub async fn run_closed_loop(op: &Operation, cfg: ClosedLoop) -> Result<RunResult, LoadError> {
    let conns = open_all(op, cfg.connections).await?;
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let mut workers = Vec::with_capacity(conns.len());
    for mut conn in conns {
        workers.push(tokio::spawn(async move {
            let mut result = RunResult::empty();
            let mut last_done = None;
            loop {
                let sent = Instant::now();
                if sent >= deadline {
                    break;
                }
                let r = conn.call_with_timeout(unix_ns(SystemTime::now())).await;
                let done = Instant::now();
                result.record(r, done - sent);
                last_done = Some(done);
            }
            (result, last_done)
        }));
    }
    collect(workers, start).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamped_bodies_have_the_asked_size_and_carry_the_stamp() {
        let b = stamped_body(1_763_790_000_123_456_789, 1024);
        assert_eq!(b.len(), 1024);
        assert_eq!(find_stamp(&b), Some(1_763_790_000_123_456_789));
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["sent"], 1_763_790_000_123_456_789u64);
    }

    #[test]
    fn the_stamp_is_found_inside_a_cloudevent() {
        let inner = stamped_body(42, 100);
        let ce = format!(
            "{{\"id\":\"x\",\"data\":{},\"topic\":\"t\"}}",
            String::from_utf8_lossy(&inner)
        );
        assert_eq!(find_stamp(ce.as_bytes()), Some(42));
        assert_eq!(find_stamp(b"{\"other\":1}"), None);
    }

    #[test]
    fn results_merge_counts_and_latencies() {
        let mut a = RunResult::empty();
        a.record(Ok(Bytes::new()), Duration::from_micros(100));
        a.record(
            Err(LoadError::Status {
                status: 500,
                body: String::new(),
            }),
            Duration::ZERO,
        );
        let mut b = RunResult::empty();
        b.record(Ok(Bytes::new()), Duration::from_micros(300));
        let mut total = RunResult::empty();
        total.merge(&a);
        total.merge(&b);
        assert_eq!((total.ok, total.errors), (2, 1));
        assert!((total.max_ms() - 0.3).abs() < 0.001);
        assert_eq!(total.first_error.as_deref(), Some("HTTP 500: "));
        assert!((total.error_fraction() - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn throughput_is_successes_per_second() {
        let mut r = RunResult::empty();
        for _ in 0..500 {
            r.record(Ok(Bytes::new()), Duration::from_micros(10));
        }
        r.elapsed = Duration::from_millis(250);
        assert!((r.throughput() - 2000.0).abs() < 1e-6);
    }

    /// End to end against a local server: the open loop sends the scheduled count at the asked
    /// rate, and a server stall shows up in the latency of the requests scheduled during it.
    #[tokio::test]
    async fn open_loop_counts_a_stall_against_every_delayed_request() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicU64::new(0));
        let counter = served.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        async move {
                            if n == 10 {
                                // One 200 ms stall.
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let op = Operation::Http(HttpOp::new(addr, Method::GET, "/"));
        // One connection: a closed-loop generator would see one slow request; the open loop
        // must see every request that was due during the stall as late.
        let r = run_open_loop(
            &op,
            OpenLoop {
                rate: 200.0,
                duration: Duration::from_secs(1),
                connections: 1,
            },
        )
        .await
        .unwrap();
        assert_eq!(r.ok, 200);
        assert_eq!(r.errors, 0);
        assert!(r.max_ms() >= 200.0);
        // 40 requests were due during the 200 ms stall: well over 10% of the run is late.
        assert!(r.quantile_ms(0.9) >= 20.0, "p90 {}", r.quantile_ms(0.9));
    }
}
