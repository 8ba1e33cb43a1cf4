//! The local registry: sidecars on one machine announce themselves in a shared directory (one
//! JSON file per sidecar process) and find each other by app id, with no multicast involved.
//!
//! Directory: `$TANDEM_REGISTRY_DIR`, else `~/.tandem/registry`. A file whose process is gone
//! (crash, kill -9) is stale: readers skip it and remove it.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("registry directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode registry entry: {0}")]
    Encode(#[from] serde_json::Error),
}

/// One running sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryEntry {
    pub app_id: String,
    pub pid: u32,
    /// The host peers connect to (127.0.0.1 for local sidecars).
    pub address: String,
    pub http_port: u16,
    /// The port other sidecars call for service invocation.
    pub internal_port: u16,
    #[serde(default)]
    pub app_port: Option<u16>,
    /// RFC 3339.
    pub started_at: String,
}

#[derive(Debug, Clone)]
pub struct LocalRegistry {
    dir: PathBuf,
}

impl LocalRegistry {
    /// The registry in its default place.
    pub fn from_env() -> Self {
        let dir = std::env::var_os("TANDEM_REGISTRY_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".tandem/registry")))
            .unwrap_or_else(|| std::env::temp_dir().join("tandem-registry"));
        Self { dir }
    }

    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, source: std::io::Error) -> RegistryError {
        RegistryError::Io {
            path: self.dir.clone(),
            source,
        }
    }

    fn file_for(&self, entry: &RegistryEntry) -> PathBuf {
        let safe_id: String = entry
            .app_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{safe_id}-{}.json", entry.pid))
    }

    /// Writes the entry atomically (temporary file, then rename) and returns its path.
    pub fn register(&self, entry: &RegistryEntry) -> Result<PathBuf, RegistryError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        let path = self.file_for(entry);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(entry)?).map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, &path).map_err(|e| self.io(e))?;
        Ok(path)
    }

    pub fn unregister(&self, entry: &RegistryEntry) {
        let _ = std::fs::remove_file(self.file_for(entry));
    }

    /// Every live entry; stale files are removed on the way.
    pub fn list(&self) -> Vec<RegistryEntry> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut entries = Vec::new();
        for file in dir.flatten() {
            let path = file.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Some(entry) = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<RegistryEntry>(&bytes).ok())
            else {
                continue;
            };
            if process_alive(entry.pid) {
                entries.push(entry);
            } else {
                tracing::debug!("removing stale registry entry {}", path.display());
                let _ = std::fs::remove_file(&path);
            }
        }
        entries.sort_by(|a, b| (&a.app_id, a.pid).cmp(&(&b.app_id, b.pid)));
        entries
    }

    /// Live instances of one app id.
    pub fn lookup(&self, app_id: &str) -> Vec<RegistryEntry> {
        self.list()
            .into_iter()
            .filter(|e| e.app_id == app_id)
            .collect()
    }
}

/// True unless the process certainly does not exist (signal 0 probes without sending).
pub fn process_alive(pid: u32) -> bool {
    match i32::try_from(pid) {
        Ok(pid) if pid > 0 => kill(Pid::from_raw(pid), None) != Err(Errno::ESRCH),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(app_id: &str, pid: u32) -> RegistryEntry {
        RegistryEntry {
            app_id: app_id.into(),
            pid,
            address: "127.0.0.1".into(),
            http_port: 3500,
            internal_port: 50002,
            app_port: None,
            started_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn registers_lists_and_drops_stale_entries() {
        let dir = tempfile::tempdir().unwrap();
        let reg = LocalRegistry::at(dir.path());
        let me = entry("orders", std::process::id());
        reg.register(&me).unwrap();
        // A pid that cannot exist (above the kernel's pid_max).
        let dead = entry("orders", 4_194_999);
        let dead_path = reg.register(&dead).unwrap();
        assert_eq!(reg.lookup("orders"), vec![me.clone()]);
        assert!(!dead_path.exists(), "stale entry removed");
        assert!(reg.lookup("billing").is_empty());
        reg.unregister(&me);
        assert!(reg.list().is_empty());
    }
}
