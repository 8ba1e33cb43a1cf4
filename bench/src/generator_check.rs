//! Showing the in-process generator agrees with a well-kept one: `wrk` (Debian package) and this
//! generator, both closed-loop with the same connection count, take turns on the direct-to-app
//! baseline (1 KB POST echoed). wrk has no fixed-rate mode (that is wrk2), so the comparison is
//! on the closed loop, where both measure plain service time: throughput and p50/p90/p99 should
//! agree within the run's own spread.

use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::loadgen::{self, ClosedLoop};
use crate::processes::{self, Workspace};
use crate::scenarios::{
    command_exists, invoke::echo_op, json_string_payload, ScenarioError, PAYLOAD,
};
use crate::stats::{paired_ratio, Spread};

/// Figures from one wrk run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WrkFigures {
    pub requests_per_sec: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

/// `123.45us` / `1.20ms` / `2.00s` → milliseconds.
pub fn parse_wrk_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, factor) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * factor)
}

/// Reads `wrk --latency` output.
pub fn parse_wrk(output: &str) -> Option<WrkFigures> {
    let mut rps = None;
    let mut mean = None;
    let (mut p50, mut p90, mut p99) = (None, None, None);
    for line in output.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        }
        // "Latency   <avg> <stdev> <max> <+/- stdev>" (not "Latency Distribution").
        if let Some(avg) = t
            .strip_prefix("Latency ")
            .and_then(|v| v.split_whitespace().next())
            .and_then(parse_wrk_duration)
        {
            mean = Some(avg);
        }
        let mut parts = t.split_whitespace();
        if let (Some(q), Some(v), None) = (parts.next(), parts.next(), parts.next()) {
            match q {
                "50%" => p50 = parse_wrk_duration(v),
                "90%" => p90 = parse_wrk_duration(v),
                "99%" => p99 = parse_wrk_duration(v),
                _ => {}
            }
        }
    }
    Some(WrkFigures {
        requests_per_sec: rps?,
        mean_ms: mean?,
        p50_ms: p50?,
        p90_ms: p90?,
        p99_ms: p99?,
    })
}

/// One compared figure: this generator, wrk, and the per-repetition ratio this / wrk.
#[derive(Debug, Clone, Serialize)]
pub struct ComparedFigure {
    pub name: String,
    pub ours: Option<Spread>,
    pub wrk: Option<Spread>,
    pub ratio: Option<Spread>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GeneratorCheck {
    pub connections: usize,
    pub seconds: f64,
    pub reps: usize,
    pub figures: Vec<ComparedFigure>,
}

impl GeneratorCheck {
    pub fn markdown(&self) -> String {
        let f = |s: &Option<Spread>| {
            s.as_ref()
                .map(|s| crate::report::spread_text(s, "", false))
                .unwrap_or_else(|| "—".into())
        };
        let mut out = format!(
            "Generator check: closed loop, {} connections, {} s per run, {} alternating repetitions, direct to the app (1 KB POST echoed)\n\n| Figure | tandem-bench | wrk | tandem-bench / wrk |\n|---|---|---|---|\n",
            self.connections, self.seconds, self.reps
        );
        for c in &self.figures {
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                c.name,
                f(&c.ours),
                f(&c.wrk),
                f(&c.ratio)
            ));
        }
        out
    }
}

pub async fn run(
    reps: usize,
    seconds: u64,
    connections: usize,
) -> Result<GeneratorCheck, ScenarioError> {
    if !command_exists("wrk") {
        return Err(ScenarioError::Unavailable(
            "wrk is not installed (apt-get install wrk)".into(),
        ));
    }
    let ws = Workspace::new()?;
    let (app, port) = processes::start_app(&ws, &[]).await?;
    let script = ws.path("post.lua");
    processes::write_file(
        &script,
        &format!(
            "wrk.method = \"POST\"\nwrk.body = '{}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
            json_string_payload(PAYLOAD)
        ),
    )?;
    let op = echo_op(port, "/echo");
    let cfg = ClosedLoop {
        connections,
        duration: Duration::from_secs(seconds),
    };
    // Per figure: throughput, mean, p50, p90, p99, and the mean Little's law implies
    // (connections / throughput): a generator whose mean disagrees with it mis-measures latency.
    let mut ours: [Vec<f64>; 6] = Default::default();
    let mut theirs: [Vec<f64>; 6] = Default::default();
    let littles_ms = |throughput: f64| connections as f64 / throughput * 1000.0;
    loadgen::run_closed_loop(
        &op,
        ClosedLoop {
            connections,
            duration: Duration::from_millis(500),
        },
    )
    .await?;
    for _ in 0..reps {
        let r = loadgen::run_closed_loop(&op, cfg).await?;
        for (i, v) in [
            r.throughput(),
            r.latency_us.mean() / 1000.0,
            r.quantile_ms(0.5),
            r.quantile_ms(0.9),
            r.quantile_ms(0.99),
            littles_ms(r.throughput()),
        ]
        .into_iter()
        .enumerate()
        {
            ours[i].push(v);
        }
        let url = format!("http://127.0.0.1:{port}/echo");
        let script = script.clone();
        let c = connections.to_string();
        let d = format!("{seconds}s");
        let out = tokio::task::spawn_blocking(move || {
            Command::new("wrk")
                .args(["-t2", "-c", &c, "-d", &d, "--latency", "-s"])
                .arg(&script)
                .arg(&url)
                .output()
        })
        .await
        .map_err(|e| ScenarioError::Failed(e.to_string()))?
        .map_err(|e| ScenarioError::Failed(format!("wrk: {e}")))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let w = parse_wrk(&text)
            .ok_or_else(|| ScenarioError::Failed(format!("cannot read wrk output:\n{text}")))?;
        for (i, v) in [
            w.requests_per_sec,
            w.mean_ms,
            w.p50_ms,
            w.p90_ms,
            w.p99_ms,
            littles_ms(w.requests_per_sec),
        ]
        .into_iter()
        .enumerate()
        {
            theirs[i].push(v);
        }
    }
    app.stop().await;
    let names = [
        "throughput (req/s)",
        "mean latency (ms)",
        "p50 (ms)",
        "p90 (ms)",
        "p99 (ms)",
        "mean implied by Little's law, connections / throughput (ms)",
    ];
    Ok(GeneratorCheck {
        connections,
        seconds: seconds as f64,
        reps,
        figures: names
            .iter()
            .enumerate()
            .map(|(i, n)| ComparedFigure {
                name: n.to_string(),
                ours: Spread::of(&ours[i]),
                wrk: Spread::of(&theirs[i]),
                ratio: paired_ratio(&ours[i], &theirs[i]),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 5s test @ http://127.0.0.1:8080/echo
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   123.45us   50.00us   2.00ms   90.00%
    Req/Sec    50.00k     2.00k   55.00k    70.00%
  Latency Distribution
     50%  110.00us
     75%  130.00us
     90%  160.00us
     99%    1.30ms
  500000 requests in 5.00s, 100.00MB read
Requests/sec: 100000.50
Transfer/sec:     20.00MB
";

    #[test]
    fn wrk_output_is_read() {
        let w = parse_wrk(WRK).unwrap();
        assert_eq!(w.requests_per_sec, 100000.5);
        assert!((w.mean_ms - 0.12345).abs() < 1e-9);
        assert!((w.p50_ms - 0.11).abs() < 1e-9);
        assert!((w.p90_ms - 0.16).abs() < 1e-9);
        assert!((w.p99_ms - 1.3).abs() < 1e-9);
    }

    #[test]
    fn wrk_durations_convert_to_ms() {
        assert_eq!(parse_wrk_duration("2.00s"), Some(2000.0));
        assert_eq!(parse_wrk_duration("1.50m"), Some(90_000.0));
        assert_eq!(parse_wrk_duration("abc"), None);
    }

    #[test]
    fn incomplete_output_is_no_figure() {
        assert!(parse_wrk("Requests/sec: 5\n").is_none());
    }
}
