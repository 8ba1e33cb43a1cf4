//! Scenario 5, delivery: generator → POST /v1.0/publish → broker → sidecar → app route, with
//! end-to-end latency measured by the app from the intended send time stamped in each event, at
//! the profile's fixed rate; and the maximum sustained delivery rate (closed-loop publishing,
//! rate = messages delivered / time from the first publish to the last delivery). Baseline: the
//! generator POSTs the same stamped events straight to the app's route. Brokers: in-memory,
//! Redis Streams, and Kafka (a librdkafka mock cluster inside the bench process).

use std::time::{Duration, Instant, SystemTime};

use http::Method;

use super::{
    component_yaml, mb, probe, read_proc, resources_dir, Ctx, ScenarioError, Series, PAYLOAD,
};
use crate::app::DeliveryStats;
use crate::loadgen::{self, unix_ns, Body, ClosedLoop, HttpOp, OpenLoop, Operation, RunResult};
use crate::processes::{self, local, Managed};
use crate::report::{ComparisonKind, Figure, ScenarioReport, Target};

pub const NAME: &str = "5. delivery";
const TOPIC: &str = "bench-delivery";

pub async fn run(ctx: &mut Ctx) -> ScenarioReport {
    inner(ctx).await.unwrap_or_else(|e| e.into_report(NAME))
}

/// A publisher (the sidecar's publish route, or the app's route directly) and the app that
/// counts deliveries.
pub struct Path {
    pub publish: Operation,
    pub app_port: u16,
    pub app: Managed,
    pub sidecar: Option<Managed>,
}

fn stamped(port: u16, path: &str) -> Operation {
    Operation::Http(
        HttpOp::new(local(port), Method::POST, path)
            .body("application/json", Body::Stamped { size: PAYLOAD }),
    )
}

pub async fn stats(app_port: u16) -> Result<DeliveryStats, ScenarioError> {
    let op = Operation::Http(HttpOp::new(local(app_port), Method::GET, "/stats"));
    let body = loadgen::call_once(&op).await?;
    serde_json::from_slice(&body).map_err(|e| ScenarioError::Failed(format!("app /stats: {e}")))
}

pub async fn reset(app_port: u16) -> Result<(), ScenarioError> {
    let op = Operation::Http(HttpOp::new(local(app_port), Method::POST, "/stats/reset"));
    loadgen::call_once(&op).await?;
    Ok(())
}

/// Waits until the app has counted `n` deliveries (or `timeout` passes); returns the stats.
pub async fn wait_delivered(
    app_port: u16,
    n: u64,
    timeout: Duration,
) -> Result<DeliveryStats, ScenarioError> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = stats(app_port).await?;
        if s.count >= n || Instant::now() > deadline {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The in-memory or Redis broker behind a subscriber sidecar and its own app.
pub async fn start_broker(
    ctx: &Ctx,
    label: &str,
    component_type: &str,
    metadata: &[(&str, &str)],
) -> Result<Path, ScenarioError> {
    let name = format!("bench-{label}");
    let (app, app_port) = processes::start_app(&ctx.ws, &[(&name, TOPIC)]).await?;
    let dir = resources_dir(
        ctx,
        &format!("delivery-{label}"),
        &component_yaml(&name, component_type, metadata),
    )?;
    let (sidecar, port) = ctx
        .sidecar(
            &format!("bench-subscriber-{label}"),
            Some(app_port),
            Some(&dir),
        )
        .await?;
    let path = format!("/v1.0/publish/{name}/{TOPIC}");
    let publish = stamped(port, &path);
    // Subscriptions are read once the app is up: give the sidecar until its full health is 204.
    let mut probe_sidecar = sidecar;
    let _ = probe_sidecar.wait_http(port, "/v1.0/healthz", 204).await;
    reset(app_port).await?;
    probe(&publish, &format!("POST {path}")).await?;
    let s = wait_delivered(app_port, 1, Duration::from_secs(10)).await?;
    if s.count == 0 {
        return Err(ScenarioError::Unavailable(format!(
            "an event published to {name}/{TOPIC} was not delivered to the app's /events within 10 s"
        )));
    }
    Ok(Path {
        publish,
        app_port,
        app,
        sidecar: Some(probe_sidecar),
    })
}

/// The direct baseline: the generator posts to the app's route.
async fn start_direct(ctx: &Ctx) -> Result<Path, ScenarioError> {
    let (app, app_port) = processes::start_app(&ctx.ws, &[]).await?;
    Ok(Path {
        publish: stamped(app_port, "/events"),
        app_port,
        app,
        sidecar: None,
    })
}

/// How many published events were not delivered within the drain time. None at all is an
/// error (delivery is broken); a shortfall is reported, since a slow machine may lag.
fn undelivered(r: &RunResult, s: &DeliveryStats, what: &str) -> Result<u64, ScenarioError> {
    if s.count == 0 && r.ok > 0 {
        return Err(ScenarioError::Failed(format!(
            "{what}: none of {} published events was delivered",
            r.ok
        )));
    }
    Ok(r.ok.saturating_sub(s.count))
}

/// Fixed rate: end-to-end latency from the stamps, measured by the app.
pub async fn at_rate(ctx: &Ctx, p: &Path, rate: f64, what: &str) -> Result<AtRate, ScenarioError> {
    let cfg = |duration| OpenLoop {
        rate,
        duration,
        connections: ctx.profile.open_connections,
    };
    let warm = loadgen::run_open_loop(&p.publish, cfg(ctx.profile.warmup)).await?;
    wait_delivered(p.app_port, warm.ok, ctx.profile.drain).await?;
    reset(p.app_port).await?;
    let pid = p.sidecar.as_ref().map(|m| m.pid);
    let before = pid.map(|pid| read_proc(pid, false)).transpose()?;
    let r = loadgen::run_open_loop(&p.publish, cfg(ctx.profile.run)).await?;
    if r.error_fraction() > super::MAX_ERROR_FRACTION {
        return Err(ScenarioError::Failed(format!(
            "{what}: {} of {} publishes failed; first: {}",
            r.errors,
            r.ok + r.errors,
            r.first_error.as_deref().unwrap_or("none")
        )));
    }
    let s = wait_delivered(p.app_port, r.ok, ctx.profile.drain).await?;
    let missing = undelivered(&r, &s, what)?;
    // CPU from before the first publish to after the last delivery: publishing and delivering.
    let after = pid.map(|pid| read_proc(pid, false)).transpose()?;
    let usage = before.zip(after).map(|(b, a)| {
        (
            (a.cpu_seconds - b.cpu_seconds) / (s.count.max(1) as f64) * 1000.0,
            mb(a.rss_kb),
        )
    });
    Ok(AtRate {
        stats: s,
        missing,
        cpu_per_1k_and_rss: usage,
    })
}

/// The outcome of a fixed-rate delivery run.
pub struct AtRate {
    pub stats: DeliveryStats,
    /// Published but not delivered within the drain time.
    pub missing: u64,
    /// The sidecar's CPU seconds per 1,000 delivered events and its RSS (MB) after the run.
    pub cpu_per_1k_and_rss: Option<(f64, f64)>,
}

/// Closed-loop publishing; delivered messages per second from the first publish to the last
/// delivery.
async fn sustained(ctx: &Ctx, p: &Path, what: &str) -> Result<(f64, u64), ScenarioError> {
    let cfg = |duration| ClosedLoop {
        connections: ctx.profile.saturation_connections,
        duration,
    };
    let warm = loadgen::run_closed_loop(&p.publish, cfg(ctx.profile.warmup)).await?;
    wait_delivered(p.app_port, warm.ok, ctx.profile.drain).await?;
    reset(p.app_port).await?;
    let start_ns = unix_ns(SystemTime::now());
    let r = loadgen::run_closed_loop(&p.publish, cfg(ctx.profile.run)).await?;
    let s = wait_delivered(p.app_port, r.ok, ctx.profile.drain).await?;
    let missing = undelivered(&r, &s, what)?;
    let secs = s.last_ns.saturating_sub(start_ns) as f64 / 1e9;
    let rate = if secs > 0.0 {
        s.count as f64 / secs
    } else {
        0.0
    };
    Ok((rate, missing))
}

async fn inner(ctx: &mut Ctx) -> Result<ScenarioReport, ScenarioError> {
    let redis_port = match ctx.redis_port().await {
        Ok(p) => Some(p),
        Err(ScenarioError::Unavailable(_)) => None,
        Err(e) => return Err(e),
    };
    let host = redis_port
        .map(|p| format!("127.0.0.1:{p}"))
        .unwrap_or_default();
    let direct = start_direct(ctx).await?;
    let mut brokers: Vec<(&str, Result<Path, String>)> = Vec::new();
    let memory = start_broker(ctx, "memory", "pubsub.in-memory", &[]).await;
    brokers.push(("in-memory", unavailable_or(memory)?));
    let redis = if redis_port.is_some() {
        start_broker(
            ctx,
            "redis",
            "pubsub.redis",
            &[
                ("redisHost", host.as_str()),
                ("redisPassword", ""),
                ("maxLenApprox", "100000"),
            ],
        )
        .await
    } else {
        Err(ScenarioError::Unavailable(
            "redis-server is not installed".into(),
        ))
    };
    brokers.push(("Redis Streams", unavailable_or(redis)?));
    // librdkafka's mock cluster runs inside this process; the subscriber sidecar connects to
    // it over TCP like to any broker. It lives until the scenario ends.
    let kafka_cluster = KafkaMock::start();
    let kafka = match &kafka_cluster {
        Ok(cluster) => {
            start_broker(
                ctx,
                "kafka",
                "pubsub.kafka",
                &[
                    ("brokers", cluster.bootstrap.as_str()),
                    ("authType", "none"),
                    ("initialOffset", "oldest"),
                ],
            )
            .await
        }
        Err(reason) => Err(ScenarioError::Unavailable(reason.clone())),
    };
    brokers.push(("Kafka (mock cluster)", unavailable_or(kafka)?));

    let rate = ctx.profile.rate;
    let mut s = Series::default();
    let mut lagging: Vec<String> = Vec::new();
    let mut note_missing = |what: &str, mode: &str, missing: u64| {
        if missing > 0 {
            lagging.push(format!(
                "{what} ({mode}): {missing} events not delivered within the drain time"
            ));
        }
    };
    for _ in 0..ctx.profile.reps {
        let run = at_rate(ctx, &direct, rate, "direct").await?;
        note_missing("direct", "fixed rate", run.missing);
        let d = run.stats;
        s.push("direct_p50", d.p50_us as f64 / 1000.0);
        s.push("direct_p99", d.p99_us as f64 / 1000.0);
        for (title, p) in &brokers {
            if let Ok(p) = p {
                let run = at_rate(ctx, p, rate, title).await?;
                note_missing(title, "fixed rate", run.missing);
                if let Some((cpu, rss)) = run.cpu_per_1k_and_rss {
                    s.push(&format!("{title}_cpu_per_1k"), cpu);
                    s.push(&format!("{title}_rss"), rss);
                }
                let d = run.stats;
                s.push(&format!("{title}_p50"), d.p50_us as f64 / 1000.0);
                s.push(&format!("{title}_p99"), d.p99_us as f64 / 1000.0);
            }
        }
        let (r, missing) = sustained(ctx, &direct, "direct").await?;
        note_missing("direct", "saturation", missing);
        s.push("direct_sustained", r);
        for (title, p) in &brokers {
            if let Ok(p) = p {
                let (r, missing) = sustained(ctx, p, title).await?;
                note_missing(title, "saturation", missing);
                s.push(&format!("{title}_sustained"), r);
            }
        }
    }

    let mut report = ScenarioReport::new(NAME);
    let rate_text = format!("{rate:.0} msg/s");
    for (title, p) in &brokers {
        for q in ["p50", "p99"] {
            let t = s.get(&format!("{title}_{q}")).to_vec();
            let mut f = Figure::new(format!("end-to-end {q} at {rate_text}, {title}"), "ms")
                .tandem(&t)
                .against(
                    "POST straight to the app",
                    &t,
                    s.get(&format!("direct_{q}")),
                    ComparisonKind::Difference,
                );
            if let Err(reason) = p {
                f = f.unavailable(reason);
            }
            report.push(f);
        }
        let mut f = Figure::new(
            format!("subscriber sidecar CPU per 1,000 events at {rate_text}, {title}"),
            "CPU s",
        )
        .tandem(s.get(&format!("{title}_cpu_per_1k")));
        if let Err(reason) = p {
            f = f.unavailable(reason);
        }
        report.push(f);
        let mut f = Figure::new(
            format!("subscriber sidecar RSS after the run, {title}"),
            "MB",
        )
        .tandem(s.get(&format!("{title}_rss")));
        if let Err(reason) = p {
            f = f.unavailable(reason);
        }
        report.push(f);
        let t = s.get(&format!("{title}_sustained")).to_vec();
        let mut f = Figure::new(format!("maximum sustained delivery rate, {title}"), "msg/s")
            .tandem(&t)
            .against(
                "POST straight to the app",
                &t,
                s.get("direct_sustained"),
                ComparisonKind::Ratio,
            );
        if *title == "in-memory" {
            f = f.target(Target::ValueAtLeast { limit: 20_000.0 }, "≥ 20,000 msg/s");
        }
        if title.starts_with("Kafka") {
            f = f.dapr("e2e p50 3.97 ms, p95 8.78 ms (v1.17, real Kafka)");
        }
        if let Err(reason) = p {
            f = f.unavailable(reason);
        }
        report.push(f);
    }
    for (title, p) in &brokers {
        if let Err(reason) = p {
            report.mark_unavailable(format!("{title}: {reason}"));
        }
    }
    report.notes.push(format!(
        "latency is measured by the app from the intended send time stamped in each 1 KB event (same clock, same machine); sustained rate publishes closed-loop with {} connections and counts deliveries until the last one arrives (at most {:?} after publishing ends); Kafka is librdkafka's mock cluster (one broker, 4 partitions) inside the bench process",
        ctx.profile.saturation_connections, ctx.profile.drain
    ));
    report.notes.extend(lagging);
    drop(brokers);
    direct.app.stop().await;
    Ok(report)
}

fn unavailable_or(r: Result<Path, ScenarioError>) -> Result<Result<Path, String>, ScenarioError> {
    match r {
        Ok(p) => Ok(Ok(p)),
        Err(ScenarioError::Unavailable(reason)) => Ok(Err(reason)),
        Err(e) => Err(e),
    }
}

/// An in-process librdkafka mock cluster with the benchmark topic.
struct KafkaMock {
    _cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    bootstrap: String,
}

impl KafkaMock {
    fn start() -> Result<Self, String> {
        let cluster = rdkafka::mocking::MockCluster::new(1)
            .map_err(|e| format!("librdkafka mock cluster: {e}"))?;
        cluster
            .create_topic(TOPIC, 4, 1)
            .map_err(|e| format!("librdkafka mock cluster topic: {e}"))?;
        Ok(Self {
            bootstrap: cluster.bootstrap_servers(),
            _cluster: cluster,
        })
    }
}
