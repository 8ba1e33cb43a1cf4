//! The processes a scenario needs, each on a free port, each killed when dropped: Tandem
//! sidecars, the trivial app (this binary's hidden `app` subcommand, a separate process so its
//! CPU is never counted with the generator's), a private redis-server and two chained nginx.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use thiserror::Error;
use tokio::process::{Child, Command};

use crate::procstat;

/// How long any process gets to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} exited before it was ready ({status}); last output:\n{log}")]
    Exited {
        what: String,
        status: String,
        log: String,
    },
    #[error("{what} was not ready within {timeout:?}; last output:\n{log}")]
    NotReady {
        what: String,
        timeout: Duration,
        log: String,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no free port: {0}")]
    NoPort(std::io::Error),
}

pub fn free_port() -> Result<u16, ProcessError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(ProcessError::NoPort)?;
    Ok(l.local_addr().map_err(ProcessError::NoPort)?.port())
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn write_file(path: &Path, text: &str) -> Result<(), ProcessError> {
    std::fs::write(path, text).map_err(|source| ProcessError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// A child process with its stdout and stderr in a log file (a file, not a pipe, so a chatty
/// process can never block on a full pipe during a run).
pub struct Managed {
    pub what: String,
    child: Child,
    pub pid: u32,
    log_path: PathBuf,
    pub spawned_at: Instant,
    /// From spawn to the first ready answer (set by `wait_http`).
    pub ready_after: Option<Duration>,
}

impl Managed {
    pub fn spawn(what: &str, mut cmd: Command, log_path: PathBuf) -> Result<Managed, ProcessError> {
        let spawn_err = |source| ProcessError::Spawn {
            what: what.to_string(),
            source,
        };
        let log = std::fs::File::create(&log_path).map_err(spawn_err)?;
        let log2 = log.try_clone().map_err(spawn_err)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .kill_on_drop(true);
        let spawned_at = Instant::now();
        let child = cmd.spawn().map_err(spawn_err)?;
        let pid = child.id().unwrap_or(0);
        Ok(Managed {
            what: what.to_string(),
            child,
            pid,
            log_path,
            spawned_at,
            ready_after: None,
        })
    }

    /// The last few kB of the process's output.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(3000)));
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// Polls `GET path` on `port` until it answers `status`, or the process dies, or time runs
    /// out. Blocking std I/O on a dedicated thread with a 200 µs poll, so start-up times are
    /// measured to well under a millisecond.
    pub async fn wait_http(
        &mut self,
        port: u16,
        path: &str,
        status: u16,
    ) -> Result<Duration, ProcessError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let path_owned = path.to_string();
            let ready = tokio::task::spawn_blocking(move || {
                poll_status(port, &path_owned, status, Duration::from_millis(50))
            })
            .await
            .unwrap_or(None);
            if let Some(at) = ready {
                let after = at.saturating_duration_since(self.spawned_at);
                self.ready_after = Some(after);
                return Ok(after);
            }
            if let Some(status) = self.exited() {
                return Err(ProcessError::Exited {
                    what: self.what.clone(),
                    status,
                    log: self.log_tail(),
                });
            }
            if Instant::now() > deadline {
                return Err(ProcessError::NotReady {
                    what: self.what.clone(),
                    timeout: START_TIMEOUT,
                    log: self.log_tail(),
                });
            }
        }
    }

    /// Stops the process (SIGKILL; benchmarks never depend on a graceful exit) and reaps it.
    pub async fn stop(mut self) {
        let children = procstat::children(self.pid);
        let _ = self.child.kill().await;
        kill_all(&children);
        self.pid = 0;
    }
}

fn kill_all(pids: &[u32]) {
    for pid in pids {
        if let Ok(pid) = i32::try_from(*pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

impl Drop for Managed {
    /// nginx's workers outlive a killed master (and a master respawns a killed worker): list the
    /// children, kill the process, then kill the children it left behind. `kill_on_drop` then
    /// finds the process already gone and reaps it.
    fn drop(&mut self) {
        if self.pid == 0 {
            return;
        }
        let children = procstat::children(self.pid);
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        kill_all(&children);
    }
}

/// Polls for up to `budget`; returns when `GET path` first answered `status`.
fn poll_status(port: u16, path: &str, status: u16, budget: Duration) -> Option<Instant> {
    let until = Instant::now() + budget;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let want = format!(" {status} ");
    while Instant::now() < until {
        if let Ok(mut s) = TcpStream::connect_timeout(&local(port), Duration::from_millis(100)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = s.set_nodelay(true);
            if s.write_all(request.as_bytes()).is_ok() {
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf) {
                    let line = String::from_utf8_lossy(&buf[..n]);
                    if line.starts_with("HTTP/1.1") && line.contains(&want) {
                        return Some(Instant::now());
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    None
}

/// Where the bench keeps per-run files: configs, logs, the shared registry directory, HOME.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Result<Workspace, ProcessError> {
        let dir = tempfile::Builder::new()
            .prefix("tandem-bench-")
            .tempdir()
            .map_err(|source| ProcessError::Spawn {
                what: "temporary directory".into(),
                source,
            })?;
        Ok(Workspace { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn subdir(&self, name: &str) -> Result<PathBuf, ProcessError> {
        let p = self.path(name);
        std::fs::create_dir_all(&p).map_err(|source| ProcessError::Write {
            path: p.clone(),
            source,
        })?;
        Ok(p)
    }
}

/// A Tandem sidecar.
pub struct SidecarSpec<'a> {
    pub binary: &'a Path,
    pub app_id: &'a str,
    pub app_port: Option<u16>,
    pub resources: Option<&'a Path>,
}

pub async fn start_sidecar(
    ws: &Workspace,
    spec: SidecarSpec<'_>,
) -> Result<(Managed, u16), ProcessError> {
    let port = free_port()?;
    let mut cmd = Command::new(spec.binary);
    cmd.arg("sidecar")
        .args(["--app-id", spec.app_id])
        .args(["--dapr-http-port", &port.to_string()])
        .args(["--dapr-listen-addresses", "127.0.0.1"])
        .args(["--metrics-port", &free_port()?.to_string()])
        .args(["--log-level", "warn"]);
    if let Some(p) = spec.app_port {
        cmd.args(["--app-port", &p.to_string()]);
    }
    if let Some(r) = spec.resources {
        cmd.arg("--resources-path").arg(r);
    }
    cmd.env("HOME", ws.subdir("home")?)
        .env("TANDEM_REGISTRY_DIR", ws.subdir("registry")?)
        .env_remove("DAPR_API_TOKEN")
        .env_remove("APP_API_TOKEN");
    let log = ws.path(&format!("sidecar-{}-{port}.log", spec.app_id));
    let mut m = Managed::spawn(&format!("tandem sidecar {}", spec.app_id), cmd, log)?;
    m.wait_http(port, "/v1.0/healthz/outbound", 204).await?;
    Ok((m, port))
}

/// The trivial app (this binary, `app` subcommand).
pub async fn start_app(
    ws: &Workspace,
    subscriptions: &[(&str, &str)],
) -> Result<(Managed, u16), ProcessError> {
    let port = free_port()?;
    let exe = std::env::current_exe().map_err(|source| ProcessError::Spawn {
        what: "the app (current executable)".into(),
        source,
    })?;
    let mut cmd = Command::new(exe);
    cmd.args(["app", "--port", &port.to_string()]);
    for (pubsub, topic) in subscriptions {
        cmd.args(["--subscribe", &format!("{pubsub}={topic}")]);
    }
    let mut m = Managed::spawn("app", cmd, ws.path(&format!("app-{port}.log")))?;
    m.wait_http(port, "/healthz", 200).await?;
    Ok((m, port))
}

/// A private redis-server on a free port, nothing persisted.
pub async fn start_redis(ws: &Workspace) -> Result<(Managed, u16), ProcessError> {
    let port = free_port()?;
    let dir = ws.subdir(&format!("redis-{port}"))?;
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .arg("--dir")
        .arg(&dir);
    let mut m = Managed::spawn("redis-server", cmd, ws.path(&format!("redis-{port}.log")))?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let ping = tokio::task::spawn_blocking(move || redis_ping(port))
            .await
            .unwrap_or(false);
        if ping {
            return Ok((m, port));
        }
        if let Some(status) = m.exited() {
            return Err(ProcessError::Exited {
                what: m.what.clone(),
                status,
                log: m.log_tail(),
            });
        }
        if Instant::now() > deadline {
            return Err(ProcessError::NotReady {
                what: m.what.clone(),
                timeout: START_TIMEOUT,
                log: m.log_tail(),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&local(port), Duration::from_millis(100)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .map(|n| buf[..n].starts_with(b"+PONG"))
            .unwrap_or(false)
}

pub const NGINX: &str = "/usr/sbin/nginx";

/// The nginx configuration of one reverse proxy with a keep-alive upstream.
pub fn nginx_config(dir: &Path, listen: u16, upstream: u16) -> String {
    let d = dir.display();
    format!(
        "worker_processes auto;\n\
         daemon off;\n\
         master_process on;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         \x20 access_log off;\n\
         \x20 client_body_temp_path {d}/body;\n\
         \x20 proxy_temp_path {d}/proxy;\n\
         \x20 upstream next {{ server 127.0.0.1:{upstream}; keepalive 256; }}\n\
         \x20 server {{\n\
         \x20   listen 127.0.0.1:{listen};\n\
         \x20   keepalive_requests 1000000;\n\
         \x20   location / {{\n\
         \x20     proxy_pass http://next;\n\
         \x20     proxy_http_version 1.1;\n\
         \x20     proxy_set_header Connection \"\";\n\
         \x20   }}\n\
         \x20 }}\n\
         }}\n"
    )
}

/// Two nginx instances, front → back → `app_port`; returns them (front first) and the front port.
pub async fn start_nginx_chain(
    ws: &Workspace,
    app_port: u16,
) -> Result<(Vec<Managed>, u16), ProcessError> {
    let back_port = free_port()?;
    let front_port = free_port()?;
    let mut out = Vec::new();
    for (name, listen, upstream) in [
        ("front", front_port, back_port),
        ("back", back_port, app_port),
    ] {
        let dir = ws.subdir(&format!("nginx-{name}-{listen}"))?;
        let conf = dir.join("nginx.conf");
        write_file(&conf, &nginx_config(&dir, listen, upstream))?;
        let mut cmd = Command::new(NGINX);
        cmd.arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf);
        let m = Managed::spawn(&format!("nginx {name}"), cmd, dir.join("stdout.log"))?;
        out.push(m);
    }
    // Ready when the whole chain answers: the front proxies through the back to the app.
    let front = &mut out[0];
    front.wait_http(front_port, "/healthz", 200).await?;
    Ok((out, front_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gone(pid: u32) -> bool {
        // Dead, or a zombie nobody reaps (a container's init may not).
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .map(|state| state == "Z" || state == "X")
                .unwrap_or(true),
        }
    }

    /// Like nginx's master and workers: dropping the process also ends the children it started.
    #[tokio::test]
    async fn dropping_a_process_ends_its_children() {
        let ws = Workspace::new().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 60 & sleep 60 & wait"]);
        let m = Managed::spawn("sh", cmd, ws.path("sh.log")).unwrap();
        let mut children = Vec::new();
        for _ in 0..200 {
            children = procstat::children(m.pid);
            if children.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(children.len(), 2, "sh did not start its two children");
        let parent = m.pid;
        drop(m);
        for _ in 0..200 {
            if children.iter().all(|c| gone(*c)) && gone(parent) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(children.iter().all(|c| gone(*c)), "children left running");
    }

    #[test]
    fn nginx_config_chains_to_the_upstream_with_keepalive() {
        let c = nginx_config(Path::new("/tmp/x"), 8080, 9090);
        assert!(c.contains("listen 127.0.0.1:8080;"));
        assert!(c.contains("server 127.0.0.1:9090; keepalive 256;"));
        assert!(c.contains("proxy_http_version 1.1;"));
        assert!(c.contains("proxy_set_header Connection \"\";"));
        assert!(c.contains("daemon off;"));
    }
}
