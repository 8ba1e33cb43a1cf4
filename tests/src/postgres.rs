//! A private database on the local PostgreSQL (127.0.0.1:5432, trust auth, user postgres),
//! created with a unique name and dropped when the value is dropped. Uses the `psql` client.

use std::process::{Command, Stdio};

pub struct PostgresDb {
    pub name: String,
}

fn psql(sql: &str) -> Result<(), String> {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "5432",
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("psql must be installed (apt-get install postgresql-client): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl PostgresDb {
    /// Creates `tandem_test_<random>`.
    pub fn create() -> Self {
        let name = format!("tandem_test_{}", uuid_like());
        psql(&format!("CREATE DATABASE {name}")).expect("create test database");
        Self { name }
    }

    /// A connection string for components (`key=value` form).
    pub fn connection_string(&self) -> String {
        format!(
            "host=127.0.0.1 port=5432 user=postgres dbname={}",
            self.name
        )
    }
}

impl Drop for PostgresDb {
    fn drop(&mut self) {
        let _ = psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{:x}_{:x}_{}",
        nanos,
        std::process::id(),
        crate::free_port()
    )
}
