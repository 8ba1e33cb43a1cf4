//! Scenario 1, start-up: exec of `tandem sidecar` (embedded defaults: no resources, an empty
//! HOME, no app) to `/v1.0/healthz/outbound` answering 204; idle RSS; binary size. Baseline: exec
//! of the trivial app (a hyper server, this binary) to its first 200 — the floor of starting any
//! Tokio/hyper process on this machine — and its idle RSS.

use std::time::Duration;

use super::{mb, Ctx, ScenarioError, Series};
use crate::processes;
use crate::procstat;
use crate::report::{ComparisonKind, Figure, ScenarioReport, Target};

pub const NAME: &str = "1. start-up";

pub async fn run(ctx: &mut Ctx) -> ScenarioReport {
    inner(ctx).await.unwrap_or_else(|e| e.into_report(NAME))
}

async fn inner(ctx: &mut Ctx) -> Result<ScenarioReport, ScenarioError> {
    let idle = if ctx.profile.name == "quick" {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(2)
    };
    let mut s = Series::default();
    for _ in 0..ctx.profile.startup_reps {
        let (app, _) = processes::start_app(&ctx.ws, &[]).await?;
        let (sidecar, _) = ctx.sidecar("bench-startup", None, None).await?;
        s.push("app_ms", ready_ms(&app));
        s.push("tandem_ms", ready_ms(&sidecar));
        tokio::time::sleep(idle).await;
        let app_rss =
            procstat::sample(app.pid).map_err(|e| ScenarioError::Failed(e.to_string()))?;
        let tandem_rss =
            procstat::sample(sidecar.pid).map_err(|e| ScenarioError::Failed(e.to_string()))?;
        s.push("app_rss", mb(app_rss.rss_kb));
        s.push("tandem_rss", mb(tandem_rss.rss_kb));
        sidecar.stop().await;
        app.stop().await;
    }
    let size = std::fs::metadata(&ctx.tandem)
        .map_err(|e| ScenarioError::Failed(format!("{}: {e}", ctx.tandem.display())))?
        .len() as f64
        / (1024.0 * 1024.0);

    let mut r = ScenarioReport::new(NAME);
    let baseline = "trivial hyper app";
    r.push(
        Figure::new(
            "exec → /v1.0/healthz/outbound 204 (embedded defaults)",
            "ms",
        )
        .tandem(s.get("tandem_ms"))
        .against(
            baseline,
            s.get("tandem_ms"),
            s.get("app_ms"),
            ComparisonKind::Difference,
        )
        .target(Target::ValueAtMost { limit: 20.0 }, "< 20 ms")
        .dapr("no official figure (daprd logs \"Init Elapsed\")"),
    );
    r.push(
        Figure::new(
            format!("idle RSS ({} s after ready)", idle.as_secs_f64()),
            "MB",
        )
        .tandem(s.get("tandem_rss"))
        .against(
            baseline,
            s.get("tandem_rss"),
            s.get("app_rss"),
            ComparisonKind::Difference,
        )
        .target(Target::ValueAtMost { limit: 8.0 }, "< 8 MB")
        .dapr("no idle figure; 18.2 MB at 500 rps (v1.0 actors)"),
    );
    r.push(
        Figure::new("binary size (release profile, stripped)", "MB")
            .tandem(&[size])
            .dapr("no official figure; CI allows +7 MB growth; a custom daprd was 36 MB (#3168)"),
    );
    r.notes.push(format!(
        "start-up polls with a fresh connection every 200 µs; {} repetitions, each a new process pair",
        ctx.profile.startup_reps
    ));
    Ok(r)
}

fn ready_ms(m: &processes::Managed) -> f64 {
    m.ready_after
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(f64::NAN)
}
