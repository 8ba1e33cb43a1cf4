//! Scenario 2, service invocation: generator → sidecar (caller) → sidecar (callee) → app with
//! 1 KB bodies echoed back, against generator → app directly and against generator → nginx →
//! nginx → app (two chained reverse proxies with keep-alive upstreams), at the profile's fixed
//! rate (open loop) and at saturation (closed loop). The sidecars find each other through the
//! local registry (a shared TANDEM_REGISTRY_DIR).

use std::path::Path;

use bytes::Bytes;
use http::Method;

use super::{json_string_payload, probe, Ctx, ScenarioError, Series, PAYLOAD};
use crate::loadgen::{Body, HttpOp, Operation, RunResult};
use crate::processes::{self, local, Managed, NGINX};
use crate::report::{ComparisonKind, Figure, ScenarioReport, Target};

pub const NAME: &str = "2. invocation";
const CALLEE: &str = "bench-callee";

pub async fn run(ctx: &mut Ctx) -> ScenarioReport {
    inner(ctx).await.unwrap_or_else(|e| e.into_report(NAME))
}

pub fn echo_op(port: u16, path: &str) -> Operation {
    Operation::Http(HttpOp::new(local(port), Method::POST, path).body(
        "application/json",
        Body::Fixed(Bytes::from(json_string_payload(PAYLOAD))),
    ))
}

/// The caller and callee sidecars beside `app_port`; `Err(Unavailable)` when this build cannot
/// forward an invocation.
pub async fn start_pair(
    ctx: &Ctx,
    app_port: u16,
) -> Result<(Managed, Managed, Operation), ScenarioError> {
    // No components: invocation needs none, and the built-in defaults would measure them too.
    let empty = ctx.empty_resources()?;
    let (callee, _) = ctx.sidecar(CALLEE, Some(app_port), Some(&empty)).await?;
    let (caller, caller_port) = ctx.sidecar("bench-caller", None, Some(&empty)).await?;
    let path = format!("/v1.0/invoke/{CALLEE}/method/echo");
    let op = echo_op(caller_port, &path);
    let answer = probe(&op, &format!("POST {path}")).await?;
    if answer.len() != PAYLOAD {
        return Err(ScenarioError::Unavailable(format!(
            "POST {path} answered {} bytes, not the {PAYLOAD}-byte echo",
            answer.len()
        )));
    }
    Ok((caller, callee, op))
}

fn push_latency(s: &mut Series, target: &str, r: &RunResult) {
    s.push(&format!("{target}_p50"), r.quantile_ms(0.5));
    s.push(&format!("{target}_p90"), r.quantile_ms(0.9));
    s.push(&format!("{target}_p99"), r.quantile_ms(0.99));
    s.push(&format!("{target}_max"), r.max_ms());
}

async fn inner(ctx: &mut Ctx) -> Result<ScenarioReport, ScenarioError> {
    let mut report = ScenarioReport::new(NAME);
    let (app, app_port) = processes::start_app(&ctx.ws, &[]).await?;
    let direct = echo_op(app_port, "/echo");

    let (tandem, tandem_missing) = match start_pair(ctx, app_port).await {
        Ok(t) => (Some(t), None),
        Err(ScenarioError::Unavailable(reason)) => (None, Some(reason)),
        Err(e) => return Err(e),
    };
    let (nginx, nginx_missing) = if Path::new(NGINX).exists() {
        match processes::start_nginx_chain(&ctx.ws, app_port).await {
            Ok((procs, port)) => (Some((procs, echo_op(port, "/echo"))), None),
            Err(e) => (None, Some(format!("nginx did not start: {e}"))),
        }
    } else {
        (
            None,
            Some(format!(
                "{NGINX} is not installed (apt-get install nginx-light)"
            )),
        )
    };

    let mut s = Series::default();
    let rate = ctx.profile.rate;
    for _ in 0..ctx.profile.reps {
        // Fixed rate, then saturation; targets interleaved within each repetition.
        let r = ctx
            .open_with_usage(&direct, &[("app", app.pid, false)], &mut s, "direct_")
            .await?;
        push_latency(&mut s, "direct", &r);
        if let Some((procs, op)) = &nginx {
            let usage = [("front", procs[0].pid, true), ("back", procs[1].pid, true)];
            let r = ctx.open_with_usage(op, &usage, &mut s, "nginx_").await?;
            push_latency(&mut s, "nginx", &r);
        }
        if let Some((caller, callee, op)) = &tandem {
            let usage = [("caller", caller.pid, false), ("callee", callee.pid, false)];
            let r = ctx.open_with_usage(op, &usage, &mut s, "tandem_").await?;
            push_latency(&mut s, "tandem", &r);
        }
        s.push("direct_sat", ctx.closed(&direct).await?.throughput());
        if let Some((_, op)) = &nginx {
            s.push("nginx_sat", ctx.closed(op).await?.throughput());
        }
        if let Some((_, _, op)) = &tandem {
            s.push("tandem_sat", ctx.closed(op).await?.throughput());
        }
    }

    let rate_text = format!("{rate:.0} rps");
    let dapr_latency = |q: &str| match q {
        "p50" => "+1.06 ms (v1.17, K8s, 1,000 QPS)",
        "p90" => "+1.48 ms (v1.17); ~+1.40 ms (v1.0)",
        "p99" => "+2.90 ms (v1.17); ~+2.10 ms (v1.0)",
        _ => "",
    };
    for q in ["p50", "p90", "p99", "max"] {
        let t = s.get(&format!("tandem_{q}")).to_vec();
        let d = s.get(&format!("direct_{q}")).to_vec();
        let n = s.get(&format!("nginx_{q}")).to_vec();
        let mut f = Figure::new(format!("{q} latency at {rate_text}, vs direct"), "ms")
            .tandem(&t)
            .against("direct to app", &t, &d, ComparisonKind::Difference)
            .dapr(dapr_latency(q));
        f = match q {
            "p50" => f.target(Target::ComparisonAtMost { limit: 0.15 }, "≤ +0.15 ms"),
            "p99" => f.target(Target::ComparisonAtMost { limit: 0.5 }, "≤ +0.5 ms"),
            _ => f,
        };
        if let Some(reason) = &tandem_missing {
            f = f.unavailable(reason);
        }
        report.push(f);
        let mut f = Figure::new(
            format!("{q} latency at {rate_text}, vs two chained nginx"),
            "ms",
        )
        .tandem(&t);
        f = if let Some(reason) = &nginx_missing {
            f.beside("nginx ×2", &[])
                .target(Target::ComparisonAtMost { limit: 0.0 }, "≤ nginx ×2")
                .unavailable(&format!("baseline missing: {reason}"))
        } else {
            f.against("nginx ×2", &t, &n, ComparisonKind::Difference)
                .target(Target::ComparisonAtMost { limit: 0.0 }, "≤ nginx ×2")
        };
        if let Some(reason) = &tandem_missing {
            f = f.unavailable(reason);
        }
        report.push(f);
    }

    let t = s.get("tandem_sat").to_vec();
    let mut f = Figure::new("saturation throughput, vs direct", "req/s")
        .tandem(&t)
        .against(
            "direct to app",
            &t,
            s.get("direct_sat"),
            ComparisonKind::Ratio,
        );
    if let Some(reason) = &tandem_missing {
        f = f.unavailable(reason);
    }
    report.push(f);
    let mut f = Figure::new("saturation throughput, vs two chained nginx", "req/s")
        .tandem(&t)
        .against("nginx ×2", &t, s.get("nginx_sat"), ComparisonKind::Ratio)
        .target(Target::ComparisonAtLeast { limit: 1.0 }, "≥ 1× nginx ×2");
    if let Some(reason) = tandem_missing.as_ref().or(nginx_missing.as_ref()) {
        f = f.unavailable(reason);
    }
    report.push(f);

    for side in ["caller", "callee"] {
        let nginx_side = if side == "caller" { "front" } else { "back" };
        let figures = [
            (
                "vcpu",
                format!("{side} sidecar CPU at {rate_text}"),
                "vCPU",
                Some((0.05, "< 0.05 vCPU")),
                "0.48 vCPU per 1,000 rps (v1.0); 202 mCPU (v1.17)",
            ),
            (
                "cpu_per_1k",
                format!("{side} sidecar CPU per 1,000 requests"),
                "CPU s",
                None,
                "",
            ),
            (
                "rss",
                format!("{side} sidecar RSS, steady (after the run)"),
                "MB",
                Some((15.0, "< 15 MB")),
                "23 MB per 1,000 rps (v1.0); 51 MB (v1.17)",
            ),
            (
                "peak",
                format!("{side} sidecar RSS, peak"),
                "MB",
                Some((15.0, "< 15 MB")),
                "",
            ),
        ];
        for (key, metric, unit, target, dapr) in figures {
            let t = s.get(&format!("tandem_{side}_{key}")).to_vec();
            let n = s.get(&format!("nginx_{nginx_side}_{key}")).to_vec();
            let mut f = Figure::new(metric, unit).tandem(&t);
            f = if nginx_missing.is_none() {
                f.against(
                    &format!("nginx {nginx_side} (master + workers)"),
                    &t,
                    &n,
                    ComparisonKind::Ratio,
                )
            } else {
                f
            };
            if let Some((limit, text)) = target {
                f = f.target(Target::ValueAtMost { limit }, text);
            }
            if !dapr.is_empty() {
                f = f.dapr(dapr);
            }
            if let Some(reason) = &tandem_missing {
                f = f.unavailable(reason);
            }
            report.push(f);
        }
    }
    report.notes.push(format!(
        "open loop at {rate_text} over {} connections, saturation with {} connections; 1 KB request echoed as 1 KB response; the app is a separate process (tandem-bench app)",
        ctx.profile.open_connections, ctx.profile.saturation_connections
    ));
    report.notes.push("CPU is utime+stime over the measured run (after the warm-up) from /proc; RSS is VmRSS after the run and VmHWM; nginx runs worker_processes auto (figures sum master and workers), Tandem its default Tokio runtime".into());
    if let Some(reason) = tandem_missing {
        report.mark_unavailable(reason);
    }
    if let Some(reason) = nginx_missing {
        report
            .notes
            .push(format!("nginx baseline unavailable: {reason}"));
    }
    drop(tandem);
    drop(nginx);
    app.stop().await;
    Ok(report)
}
