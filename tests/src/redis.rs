//! A private `redis-server` on a free port, which a test may stop and restart on purpose.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::free_port;

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    persistent: bool,
}

impl RedisServer {
    /// Starts `redis-server` (from PATH) and waits until it answers.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// Like `start`, but with an append-only file synced on every write, so a `restart()`
    /// keeps everything Redis acknowledged (a crash of a durable Redis).
    pub async fn start_persistent() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(persistent: bool) -> Self {
        let mut server = Self {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
            persistent,
        };
        // A port found free may be taken by a concurrent test before Redis binds it; then
        // Redis exits and another port is tried.
        for _ in 0..5 {
            if server.launch().await {
                return server;
            }
            server.port = free_port();
        }
        panic!("redis-server could not bind a free port in five tries");
    }

    /// Spawns Redis on `self.port`; false when it exited instead of answering (port taken).
    async fn launch(&mut self) -> bool {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                if self.persistent { "yes" } else { "no" },
                "--appendfsync",
                "always",
                "--dir",
                &self.dir.path().display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        for _ in 0..500 {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            // Whatever listens must be this Redis, not another test's server on the port.
            if answers_ping(self.port).await {
                self.child = Some(child);
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = child.kill();
        panic!("redis-server did not start on port {}", self.port);
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL); data is lost, as after a crash without persistence.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        assert!(
            self.launch().await,
            "redis-server could not bind port {} again",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a Redis on `port` answers PING.
async fn answers_ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    let read = tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut reply)).await;
    matches!(read, Ok(Ok(_))) && &reply == b"+PONG\r\n"
}
