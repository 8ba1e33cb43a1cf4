//! Scenario 6, soak (only with --soak): steady invocation (caller → callee → app) and in-memory
//! delivery load at the profile's fixed rate for several minutes, reading each sidecar's RSS
//! every chunk. RSS must not grow: the figure compares the samples of the last minute with those
//! of the first minute after warm-up.

use std::time::{Duration, Instant};

use super::{delivery, invoke, mb, Ctx, ScenarioError, Series};
use crate::loadgen::{self, OpenLoop};
use crate::processes;
use crate::procstat;
use crate::report::{ComparisonKind, Figure, ScenarioReport, Target};

pub const NAME: &str = "6. soak";
const CHUNK: Duration = Duration::from_secs(10);

pub async fn run(ctx: &mut Ctx, minutes: u64) -> ScenarioReport {
    inner(ctx, minutes)
        .await
        .unwrap_or_else(|e| e.into_report(NAME))
}

async fn inner(ctx: &mut Ctx, minutes: u64) -> Result<ScenarioReport, ScenarioError> {
    let (app, app_port) = processes::start_app(&ctx.ws, &[]).await?;
    let (caller, callee, invoke_op) = invoke::start_pair(ctx, app_port).await?;
    let sub = delivery::start_broker(ctx, "soak", "pubsub.in-memory", &[]).await?;
    let subscriber_pid = sub.sidecar.as_ref().map(|m| m.pid).unwrap_or(0);
    let sidecars = [
        ("caller", caller.pid),
        ("callee", callee.pid),
        ("subscriber", subscriber_pid),
    ];

    let cfg = OpenLoop {
        rate: ctx.profile.rate,
        duration: CHUNK,
        connections: ctx.profile.open_connections,
    };
    let total = Duration::from_secs(minutes.max(2) * 60);
    let start = Instant::now();
    let mut samples: Vec<(Duration, [f64; 3])> = Vec::new();
    let (mut sent, mut failed) = (0u64, 0u64);
    delivery::reset(sub.app_port).await?;
    while start.elapsed() < total {
        let (a, b) = tokio::join!(
            loadgen::run_open_loop(&invoke_op, cfg),
            loadgen::run_open_loop(&sub.publish, cfg)
        );
        let (a, b) = (a?, b?);
        sent += a.ok + b.ok;
        failed += a.errors + b.errors;
        let mut rss = [0.0; 3];
        for (i, (_, pid)) in sidecars.iter().enumerate() {
            rss[i] = procstat::sample(*pid)
                .map(|s| mb(s.rss_kb))
                .map_err(|e| ScenarioError::Failed(e.to_string()))?;
        }
        samples.push((start.elapsed(), rss));
    }
    if failed as f64 > sent as f64 * super::MAX_ERROR_FRACTION {
        return Err(ScenarioError::Failed(format!(
            "{failed} of {} requests failed during the soak",
            sent + failed
        )));
    }

    let mut s = Series::default();
    let end = start.elapsed();
    for (at, rss) in &samples {
        // First minute after a one-minute warm-up, and the last minute.
        let window = if *at > Duration::from_secs(60) && *at <= Duration::from_secs(120) {
            Some("first")
        } else if end.saturating_sub(*at) < Duration::from_secs(60) {
            Some("last")
        } else {
            None
        };
        if let Some(w) = window {
            for (i, (name, _)) in sidecars.iter().enumerate() {
                s.push(&format!("{name}_{w}"), rss[i]);
            }
        }
    }
    let mut report = ScenarioReport::new(NAME);
    for (name, _) in sidecars {
        let last = s.get(&format!("{name}_last")).to_vec();
        let first = s.get(&format!("{name}_first")).to_vec();
        // Unpaired windows: compare medians (the difference of two one-sample spreads).
        let (lm, fm) = (median(&last), median(&first));
        report.push(
            Figure::new(
                format!("{name} sidecar RSS, last minute of {minutes} min"),
                "MB",
            )
            .tandem(&last)
            .against("RSS in minute 2", &[lm], &[fm], ComparisonKind::Difference)
            .beside("RSS in minute 2", &first)
            .target(
                Target::ComparisonAtMost { limit: 1.0 },
                "no growth (≤ +1 MB)",
            ),
        );
    }
    report.notes.push(format!(
        "invocation and in-memory delivery at {:.0} rps each, in {}-second chunks; RSS read after each chunk",
        ctx.profile.rate,
        CHUNK.as_secs()
    ));
    drop(sub);
    drop((caller, callee));
    app.stop().await;
    Ok(report)
}

fn median(v: &[f64]) -> f64 {
    crate::stats::Spread::of(v)
        .map(|s| s.median)
        .unwrap_or(f64::NAN)
}
