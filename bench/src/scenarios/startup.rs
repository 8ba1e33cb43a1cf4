//! Scenario 1, start-up: exec of `tandem sidecar` to `/v1.0/healthz/outbound` answering 204,
//! with the embedded defaults (no resources path, an empty HOME: the built-in in-memory state
//! store and pub/sub) and, separately, with an empty resources directory (no components at all);
//! idle RSS; binary size. Baseline: exec of the trivial app (a hyper server, this binary) to its
//! first 200 — the floor of starting any Tokio/hyper process on this machine — and its idle RSS.

use std::path::PathBuf;
use std::time::Duration;

use super::{mb, Ctx, ScenarioError, Series};
use crate::processes::{self, Managed};
use crate::procstat;
use crate::report::{ComparisonKind, Figure, ScenarioReport, Target};

pub const NAME: &str = "1. start-up";

pub async fn run(ctx: &mut Ctx) -> ScenarioReport {
    inner(ctx).await.unwrap_or_else(|e| e.into_report(NAME))
}

fn rss_mb(m: &Managed) -> Result<f64, ScenarioError> {
    procstat::sample(m.pid)
        .map(|s| mb(s.rss_kb))
        .map_err(|e| ScenarioError::Failed(e.to_string()))
}

async fn inner(ctx: &mut Ctx) -> Result<ScenarioReport, ScenarioError> {
    let idle = if ctx.profile.name == "quick" {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(2)
    };
    let empty = ctx.empty_resources()?;
    let variants: [(&str, Option<PathBuf>); 2] = [("defaults", None), ("empty", Some(empty))];
    let mut missing: [Option<String>; 2] = [None, None];
    let mut s = Series::default();
    for _ in 0..ctx.profile.startup_reps {
        let (app, _) = processes::start_app(&ctx.ws, &[]).await?;
        let mut sidecars = Vec::new();
        for (i, (key, resources)) in variants.iter().enumerate() {
            if missing[i].is_some() {
                continue;
            }
            match ctx
                .sidecar("bench-startup", None, resources.as_deref())
                .await
            {
                Ok((m, _)) => {
                    s.push(&format!("{key}_ms"), ready_ms(&m));
                    sidecars.push((*key, m));
                }
                Err(ScenarioError::Unavailable(reason)) => missing[i] = Some(reason),
                Err(e) => return Err(e),
            }
        }
        s.push("app_ms", ready_ms(&app));
        tokio::time::sleep(idle).await;
        s.push("app_rss", rss_mb(&app)?);
        for (key, m) in sidecars {
            s.push(&format!("{key}_rss"), rss_mb(&m)?);
            m.stop().await;
        }
        app.stop().await;
    }
    let size = std::fs::metadata(&ctx.tandem)
        .map_err(|e| ScenarioError::Failed(format!("{}: {e}", ctx.tandem.display())))?
        .len() as f64
        / (1024.0 * 1024.0);

    let mut r = ScenarioReport::new(NAME);
    let baseline = "trivial hyper app";
    for (i, (key, title)) in [
        ("defaults", "embedded defaults"),
        ("empty", "no components"),
    ]
    .into_iter()
    .enumerate()
    {
        let t = s.get(&format!("{key}_ms")).to_vec();
        let mut f = Figure::new(format!("exec → /v1.0/healthz/outbound 204, {title}"), "ms")
            .tandem(&t)
            .against(baseline, &t, s.get("app_ms"), ComparisonKind::Difference);
        if key == "defaults" {
            f = f
                .target(Target::ValueAtMost { limit: 20.0 }, "< 20 ms")
                .dapr("no official figure (daprd logs \"Init Elapsed\")");
        }
        if let Some(reason) = &missing[i] {
            f = f.unavailable(reason);
        }
        r.push(f);
        let t = s.get(&format!("{key}_rss")).to_vec();
        let mut f = Figure::new(
            format!("idle RSS {} s after ready, {title}", idle.as_secs_f64()),
            "MB",
        )
        .tandem(&t)
        .against(baseline, &t, s.get("app_rss"), ComparisonKind::Difference);
        if key == "defaults" {
            f = f
                .target(Target::ValueAtMost { limit: 8.0 }, "< 8 MB")
                .dapr("no idle figure; 18.2 MB at 500 rps (v1.0 actors)");
        }
        if let Some(reason) = &missing[i] {
            f = f.unavailable(reason);
        }
        r.push(f);
    }
    r.push(
        Figure::new("binary size (release profile, stripped)", "MB")
            .tandem(&[size])
            .dapr("no official figure; CI allows +7 MB growth; a custom daprd was 36 MB (#3168)"),
    );
    r.notes.push(format!(
        "start-up polls with a fresh connection every 200 µs; {} repetitions, each a new process; embedded defaults = no resources path and an empty HOME",
        ctx.profile.startup_reps
    ));
    if let Some(reason) = &missing[0] {
        r.mark_unavailable(format!("embedded defaults: {reason}"));
    }
    Ok(r)
}

fn ready_ms(m: &Managed) -> f64 {
    m.ready_after
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(f64::NAN)
}
