//! The scenarios and what they share: the run profile (quick or full), the per-run workspace,
//! a lazily started private redis-server, and measuring with warm-up and an error check.

pub mod delivery;
pub mod invoke;
pub mod publish;
pub mod soak;
pub mod startup;
pub mod state;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;

use crate::loadgen::{self, ClosedLoop, LoadError, OpenLoop, Operation, RunResult};
use crate::processes::{self, Managed, ProcessError, SidecarSpec, Workspace};
use crate::procstat::{self, ProcSample};
use crate::report::{ScenarioReport, Status};

/// A run with more than this fraction of failed requests is an error, not a figure.
pub const MAX_ERROR_FRACTION: f64 = 0.01;
/// Payload size of every invocation, state value and message.
pub const PAYLOAD: usize = 1024;

#[derive(Debug, Error)]
pub enum ScenarioError {
    /// The running binary lacks the feature (route not served, component type unknown) or a
    /// baseline's server is not installed.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
}

impl From<ProcessError> for ScenarioError {
    fn from(e: ProcessError) -> Self {
        let text = e.to_string();
        if text.contains("not supported by this build") {
            let line = text
                .lines()
                .find(|l| l.contains("not supported by this build"))
                .unwrap_or(&text);
            let from = line.find("component type ").unwrap_or(0);
            let short = line[from..]
                .split("; supported types")
                .next()
                .unwrap_or(line)
                .trim()
                .to_string();
            ScenarioError::Unavailable(short)
        } else {
            ScenarioError::Failed(text)
        }
    }
}

impl From<LoadError> for ScenarioError {
    fn from(e: LoadError) -> Self {
        ScenarioError::Failed(e.to_string())
    }
}

impl ScenarioError {
    pub fn into_report(self, name: &str) -> ScenarioReport {
        let mut r = ScenarioReport::new(name);
        r.status = match self {
            ScenarioError::Unavailable(reason) => Status::Unavailable(reason),
            ScenarioError::Failed(reason) => Status::Failed(reason),
        };
        r
    }
}

/// How long and how often to measure.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub name: &'static str,
    pub reps: usize,
    /// Length of each measured run.
    pub run: Duration,
    /// Length of the unmeasured run before each measured one.
    pub warmup: Duration,
    /// The fixed rate of open-loop runs.
    pub rate: f64,
    pub open_connections: usize,
    pub saturation_connections: usize,
    pub startup_reps: usize,
    /// Rate of 1,000-key bulk gets.
    pub bulk_rate: f64,
    /// How long to wait for published messages to be delivered after a run.
    pub drain: Duration,
}

impl Profile {
    pub fn quick() -> Profile {
        Profile {
            name: "quick",
            reps: 3,
            run: Duration::from_millis(1000),
            warmup: Duration::from_millis(200),
            rate: 1000.0,
            open_connections: 32,
            saturation_connections: 16,
            startup_reps: 5,
            bulk_rate: 50.0,
            drain: Duration::from_secs(5),
        }
    }

    pub fn full() -> Profile {
        Profile {
            name: "full",
            reps: 5,
            run: Duration::from_secs(4),
            warmup: Duration::from_millis(500),
            rate: 1000.0,
            open_connections: 32,
            saturation_connections: 16,
            startup_reps: 15,
            bulk_rate: 100.0,
            drain: Duration::from_secs(20),
        }
    }
}

pub struct Ctx {
    pub ws: Workspace,
    pub tandem: PathBuf,
    pub profile: Profile,
    redis: Option<(Managed, u16)>,
}

impl Ctx {
    pub fn new(tandem: PathBuf, profile: Profile) -> Result<Ctx, ProcessError> {
        Ok(Ctx {
            ws: Workspace::new()?,
            tandem,
            profile,
            redis: None,
        })
    }

    /// The port of this run's private redis-server, started on first use.
    pub async fn redis_port(&mut self) -> Result<u16, ScenarioError> {
        if let Some((_, port)) = &self.redis {
            return Ok(*port);
        }
        if !command_exists("redis-server") {
            return Err(ScenarioError::Unavailable(
                "redis-server is not installed (apt-get install redis-server)".into(),
            ));
        }
        let (m, port) = processes::start_redis(&self.ws).await?;
        self.redis = Some((m, port));
        Ok(port)
    }

    pub fn redis_pid(&self) -> Option<u32> {
        self.redis.as_ref().map(|(m, _)| m.pid)
    }

    /// An empty resources directory: a sidecar without components (not even the built-in
    /// in-memory defaults), for scenarios that need none.
    pub fn empty_resources(&self) -> Result<PathBuf, ScenarioError> {
        Ok(self.ws.subdir("empty-resources")?)
    }

    pub async fn sidecar(
        &self,
        app_id: &str,
        app_port: Option<u16>,
        resources: Option<&Path>,
    ) -> Result<(Managed, u16), ScenarioError> {
        Ok(processes::start_sidecar(
            &self.ws,
            SidecarSpec {
                binary: &self.tandem,
                app_id,
                app_port,
                resources,
            },
        )
        .await?)
    }

    /// A warm-up, then one measured open-loop run at the profile's rate.
    pub async fn open(&self, op: &Operation) -> Result<RunResult, ScenarioError> {
        self.open_at(op, self.profile.rate).await
    }

    pub async fn open_at(&self, op: &Operation, rate: f64) -> Result<RunResult, ScenarioError> {
        self.warm_up(op, rate).await?;
        self.measure_open(op, rate).await
    }

    fn open_cfg(&self, rate: f64, duration: Duration) -> OpenLoop {
        OpenLoop {
            rate,
            duration,
            connections: self.profile.open_connections,
        }
    }

    /// An unmeasured open-loop run (connections, caches and pools warm).
    pub async fn warm_up(&self, op: &Operation, rate: f64) -> Result<(), ScenarioError> {
        loadgen::run_open_loop(op, self.open_cfg(rate, self.profile.warmup)).await?;
        Ok(())
    }

    /// One measured open-loop run, without warm-up.
    pub async fn measure_open(
        &self,
        op: &Operation,
        rate: f64,
    ) -> Result<RunResult, ScenarioError> {
        checked(loadgen::run_open_loop(op, self.open_cfg(rate, self.profile.run)).await?)
    }

    /// A warm-up, then a measured open-loop run at the profile's rate with each of `procs`
    /// (name, pid, whole tree) read before and after: pushes `<prefix><name>_vcpu`,
    /// `_cpu_per_1k`, `_rss` and `_peak` to `s`.
    pub async fn open_with_usage(
        &self,
        op: &Operation,
        procs: &[(&str, u32, bool)],
        s: &mut Series,
        prefix: &str,
    ) -> Result<RunResult, ScenarioError> {
        self.warm_up(op, self.profile.rate).await?;
        let before: Vec<ProcSample> = procs
            .iter()
            .map(|(_, pid, tree)| read_proc(*pid, *tree))
            .collect::<Result<_, _>>()?;
        let r = self.measure_open(op, self.profile.rate).await?;
        let run_secs = r.elapsed.as_secs_f64().max(1e-3);
        for ((name, pid, tree), b) in procs.iter().zip(before) {
            let a = read_proc(*pid, *tree)?;
            let cpu = a.cpu_seconds - b.cpu_seconds;
            s.push(&format!("{prefix}{name}_vcpu"), cpu / run_secs);
            s.push(
                &format!("{prefix}{name}_cpu_per_1k"),
                cpu / (r.ok.max(1) as f64) * 1000.0,
            );
            s.push(&format!("{prefix}{name}_rss"), mb(a.rss_kb));
            s.push(&format!("{prefix}{name}_peak"), mb(a.peak_rss_kb));
        }
        Ok(r)
    }

    /// A warm-up, then one measured closed-loop run with the profile's saturation connections.
    pub async fn closed(&self, op: &Operation) -> Result<RunResult, ScenarioError> {
        let cfg = |duration| ClosedLoop {
            connections: self.profile.saturation_connections,
            duration,
        };
        loadgen::run_closed_loop(op, cfg(self.profile.warmup)).await?;
        checked(loadgen::run_closed_loop(op, cfg(self.profile.run)).await?)
    }
}

/// Reads a process (or a process and its children, `tree`).
pub fn read_proc(pid: u32, tree: bool) -> Result<ProcSample, ScenarioError> {
    let r = if tree {
        procstat::sample_tree(pid)
    } else {
        procstat::sample(pid)
    };
    r.map_err(|e| ScenarioError::Failed(e.to_string()))
}

/// Runs `op` open-loop while reading `procs` before and after.
fn checked(r: RunResult) -> Result<RunResult, ScenarioError> {
    if r.error_fraction() > MAX_ERROR_FRACTION {
        return Err(ScenarioError::Failed(format!(
            "{} of {} requests failed; first error: {}",
            r.errors,
            r.ok + r.errors,
            r.first_error.as_deref().unwrap_or("none")
        )));
    }
    Ok(r)
}

/// One request to check the running binary has the feature; any failure means "unavailable".
pub async fn probe(op: &Operation, what: &str) -> Result<Bytes, ScenarioError> {
    loadgen::call_once(op).await.map_err(|e| {
        ScenarioError::Unavailable(match e {
            LoadError::Status { status: 404, body } if body.trim().is_empty() => {
                format!("{what}: route not served by this build (HTTP 404)")
            }
            e => format!("{what}: {e}"),
        })
    })
}

pub fn command_exists(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// A JSON string value of `size` bytes including its quotes.
pub fn json_string_payload(size: usize) -> String {
    format!("\"{}\"", "x".repeat(size.saturating_sub(2)))
}

/// A Dapr Component resource.
pub fn component_yaml(name: &str, component_type: &str, metadata: &[(&str, &str)]) -> String {
    let mut s = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {component_type}\n  version: v1\n"
    );
    if !metadata.is_empty() {
        s.push_str("  metadata:\n");
        for (k, v) in metadata {
            s.push_str(&format!("  - name: {k}\n    value: \"{v}\"\n"));
        }
    }
    s
}

/// Writes a resources directory holding one component; returns its path.
pub fn resources_dir(ctx: &Ctx, dir_name: &str, yaml: &str) -> Result<PathBuf, ScenarioError> {
    let dir = ctx.ws.subdir(dir_name)?;
    processes::write_file(&dir.join("component.yaml"), yaml)?;
    Ok(dir)
}

/// Per-repetition series, by name.
#[derive(Debug, Default, Clone)]
pub struct Series(pub std::collections::BTreeMap<String, Vec<f64>>);

impl Series {
    pub fn push(&mut self, key: &str, value: f64) {
        self.0.entry(key.to_string()).or_default().push(value);
    }

    pub fn get(&self, key: &str) -> &[f64] {
        self.0.get(key).map(Vec::as_slice).unwrap_or(&[])
    }
}

pub fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_component_types_make_a_scenario_unavailable() {
        let e = ProcessError::Exited {
            what: "tandem".into(),
            status: "exit status: 1".into(),
            log: "ERROR fatal: /tmp/x/component.yaml: spec.type: component type state.in-memory/v1 is not supported by this build; supported types: a, b".into(),
        };
        match ScenarioError::from(e) {
            ScenarioError::Unavailable(r) => {
                assert!(
                    r.ends_with("component type state.in-memory/v1 is not supported by this build"),
                    "{r}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_start_failures_are_errors() {
        let e = ProcessError::NotReady {
            what: "tandem".into(),
            timeout: Duration::from_secs(1),
            log: "panic".into(),
        };
        assert!(matches!(ScenarioError::from(e), ScenarioError::Failed(_)));
    }

    #[test]
    fn component_yaml_lists_metadata() {
        let y = component_yaml("cache", "state.redis", &[("redisHost", "127.0.0.1:1")]);
        assert!(y.contains("  type: state.redis\n"));
        assert!(y.contains("  - name: redisHost\n    value: \"127.0.0.1:1\"\n"));
    }

    #[test]
    fn json_payload_has_the_asked_size() {
        let p = json_string_payload(1024);
        assert_eq!(p.len(), 1024);
        assert!(serde_json::from_str::<String>(&p).is_ok());
    }
}
