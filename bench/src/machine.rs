//! What the run happened on and from which commit; and getting the release binary to measure.

use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

use crate::report::Machine;

#[derive(Debug, Error)]
pub enum BuildError {
    #[error("running {what}: {source}")]
    Run {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{what} failed ({status})")]
    Failed {
        what: &'static str,
        status: std::process::ExitStatus,
    },
    #[error("cargo metadata: {0}")]
    Metadata(String),
    #[error("{0} does not exist after the build")]
    Missing(PathBuf),
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// `cargo build --release -p tandem` in the workspace; returns the binary's path.
pub fn build_release_tandem() -> Result<PathBuf, BuildError> {
    let root = workspace_root();
    let status = Command::new(cargo())
        .args(["build", "--release", "-p", "tandem"])
        .current_dir(&root)
        .status()
        .map_err(|source| BuildError::Run {
            what: "cargo build --release -p tandem",
            source,
        })?;
    if !status.success() {
        return Err(BuildError::Failed {
            what: "cargo build --release -p tandem",
            status,
        });
    }
    let out = Command::new(cargo())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(&root)
        .output()
        .map_err(|source| BuildError::Run {
            what: "cargo metadata",
            source,
        })?;
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| BuildError::Metadata(e.to_string()))?;
    let target = meta["target_directory"]
        .as_str()
        .ok_or_else(|| BuildError::Metadata("no target_directory".into()))?;
    let bin = Path::new(target).join("release").join("tandem");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(BuildError::Missing(bin))
    }
}

/// The commit being measured (`-dirty` when the work tree has changes).
pub fn commit() -> String {
    let root = workspace_root();
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(&root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .map(|s| !s.is_empty())
                .unwrap_or(false);
            if dirty {
                format!("{c}-dirty")
            } else {
                c
            }
        }
        None => "unknown".into(),
    }
}

pub fn machine() -> Machine {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_mb = crate::procstat::parse_status_kb(&meminfo, "MemTotal").unwrap_or(0) / 1024;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    Machine {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        memory_mb,
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

/// Installs nginx from Debian's package when it is missing, outside CI, as root. Returns a note.
pub fn ensure_nginx() -> Option<String> {
    if Path::new(crate::processes::NGINX).exists() {
        return None;
    }
    if std::env::var_os("CI").is_some() {
        return Some("nginx not installed; not installing it in CI".into());
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("nginx not installed and not root: run apt-get install nginx-light".into());
    }
    eprintln!("installing nginx-light for the two-proxy baseline (apt-get install -y nginx-light)");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-q", "nginx-light"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        None
    } else {
        Some("apt-get install nginx-light failed".into())
    }
}
