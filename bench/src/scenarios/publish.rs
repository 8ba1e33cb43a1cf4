//! Scenario 4, publish: POST /v1.0/publish of a 1 KB JSON event through the sidecar to Redis
//! Streams and to the in-memory broker, at the profile's fixed rate, against a raw XADD of the
//! same payload from a direct Redis client (both streams capped near 10,000 entries).

use http::Method;

use super::{component_yaml, probe, resources_dir, Ctx, ScenarioError, Series, PAYLOAD};
use crate::loadgen::{stamped_body, Body, HttpOp, Operation, RedisOp};
use crate::processes::{local, Managed};
use crate::report::{ComparisonKind, Figure, ScenarioReport, Target};

pub const NAME: &str = "4. publish";
const TOPIC: &str = "bench-publish";

pub async fn run(ctx: &mut Ctx) -> ScenarioReport {
    inner(ctx).await.unwrap_or_else(|e| e.into_report(NAME))
}

async fn start_pubsub(
    ctx: &Ctx,
    label: &str,
    component_type: &str,
    metadata: &[(&str, &str)],
) -> Result<(Managed, Operation), ScenarioError> {
    let name = format!("bench-{label}");
    let dir = resources_dir(
        ctx,
        &format!("publish-{label}"),
        &component_yaml(&name, component_type, metadata),
    )?;
    let (sidecar, port) = ctx
        .sidecar(&format!("bench-publisher-{label}"), None, Some(&dir))
        .await?;
    let path = format!("/v1.0/publish/{name}/{TOPIC}");
    let op = Operation::Http(
        HttpOp::new(local(port), Method::POST, path.clone())
            .body("application/json", Body::Fixed(stamped_body(0, PAYLOAD))),
    );
    probe(&op, &format!("POST {path}")).await?;
    Ok((sidecar, op))
}

async fn inner(ctx: &mut Ctx) -> Result<ScenarioReport, ScenarioError> {
    let redis_port = ctx.redis_port().await?;
    let xadd = RedisOp::new(
        &format!("redis://127.0.0.1:{redis_port}/"),
        redis::cmd("XADD")
            .arg("bench-raw-stream")
            .arg("MAXLEN")
            .arg("~")
            .arg(10_000)
            .arg("*")
            .arg("data")
            .arg(stamped_body(0, PAYLOAD).to_vec())
            .clone(),
    );
    let twice_xadd = Operation::Redis(xadd.twice());
    let xadd = Operation::Redis(xadd);
    let host = format!("127.0.0.1:{redis_port}");
    let brokers = [
        ("in-memory", "memory", "pubsub.in-memory", vec![]),
        (
            "Redis Streams",
            "redis",
            "pubsub.redis",
            vec![
                ("redisHost", host.as_str()),
                ("redisPassword", ""),
                ("maxLenApprox", "10000"),
            ],
        ),
    ];
    let mut started = Vec::new();
    for (title, label, component_type, metadata) in &brokers {
        let r = match start_pubsub(ctx, label, component_type, metadata).await {
            Ok(x) => Ok(x),
            Err(ScenarioError::Unavailable(reason)) => Err(reason),
            Err(e) => return Err(e),
        };
        started.push((*title, r));
    }

    let mut s = Series::default();
    for _ in 0..ctx.profile.reps {
        let redis = [("redis", ctx.redis_pid().unwrap_or(0), false)];
        let r = ctx.open_with_usage(&xadd, &redis, &mut s, "xadd_").await?;
        s.push("xadd_p50", r.quantile_ms(0.5));
        s.push("xadd_p99", r.quantile_ms(0.99));
        let r = ctx.open_at(&twice_xadd, ctx.profile.rate).await?;
        s.push("twice_xadd_p50", r.quantile_ms(0.5));
        for (title, b) in &started {
            if let Ok((sidecar, op)) = b {
                let usage = [("sidecar", sidecar.pid, false)];
                let prefix = format!("{title}_");
                let r = ctx.open_with_usage(op, &usage, &mut s, &prefix).await?;
                s.push(&format!("{title}_p50"), r.quantile_ms(0.5));
                s.push(&format!("{title}_p99"), r.quantile_ms(0.99));
            }
        }
    }

    let mut report = ScenarioReport::new(NAME);
    let rate = format!("{:.0} rps", ctx.profile.rate);
    for (title, b) in &started {
        for q in ["p50", "p99"] {
            let t = s.get(&format!("{title}_{q}")).to_vec();
            let mut f = Figure::new(format!("publish 1 KB {q} at {rate}, {title}"), "ms")
                .tandem(&t)
                .against(
                    "raw XADD",
                    &t,
                    s.get(&format!("xadd_{q}")),
                    ComparisonKind::Difference,
                );
            if q == "p50" {
                f = f
                    .target(Target::ComparisonAtMost { limit: 0.1 }, "≤ +100 µs")
                    .dapr("0.35 ms absolute (v1.17 HTTP); +0.53 ms overhead (v1.17 gRPC)");
            }
            if let Err(reason) = b {
                f = f.unavailable(reason);
            }
            report.push(f);
        }
        if *title == "Redis Streams" {
            // The structural floor: a sidecar adds one Redis round trip to the client's own.
            let t = s.get(&format!("{title}_p50")).to_vec();
            let mut f = Figure::new(
                format!("publish 1 KB p50 at {rate}, {title}, vs one more round trip"),
                "ms",
            )
            .tandem(&t)
            .against(
                "two sequential raw XADDs",
                &t,
                s.get("twice_xadd_p50"),
                ComparisonKind::Difference,
            );
            if let Err(reason) = b {
                f = f.unavailable(reason);
            }
            report.push(f);
        }
    }
    for (title, b) in &started {
        let t = s.get(&format!("{title}_sidecar_cpu_per_1k")).to_vec();
        let mut f = Figure::new(format!("sidecar CPU per 1,000 publishes, {title}"), "CPU s")
            .tandem(&t)
            .against(
                "redis-server per 1,000 raw XADDs",
                &t,
                s.get("xadd_redis_cpu_per_1k"),
                ComparisonKind::Ratio,
            )
            .dapr("105 mCPU at 1,000 QPS (v1.17, gRPC)");
        if let Err(reason) = b {
            f = f.unavailable(reason);
        }
        report.push(f);
        let mut f = Figure::new(format!("sidecar RSS after the runs, {title}"), "MB")
            .tandem(s.get(&format!("{title}_sidecar_rss")))
            .dapr("50 MB (v1.17, gRPC)");
        if let Err(reason) = b {
            f = f.unavailable(reason);
        }
        report.push(f);
    }
    for (title, b) in &started {
        if let Err(reason) = b {
            report.mark_unavailable(format!("{title}: {reason}"));
        }
    }
    report.notes.push(format!(
        "open loop at {rate}; the in-memory broker is compared with raw XADD too, as the floor of a networked broker; \"two sequential raw XADDs\" sends XADD again after each reply: the client's cost of one more Redis round trip, which a sidecar in front of Redis adds at the least; no subscriber is attached"
    ));
    Ok(report)
}
