//! Where a child process's output goes: the console (with a prefix such as `== APP == `), a log
//! file, or both — Dapr's `console`, `file` and `fileAndConsole` log destinations.

use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Longest line forwarded as one; longer output is cut into pieces of this size so a child that
/// never writes a newline cannot make the CLI buffer without bound.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Lines waiting to be written per child before its readers wait (back-pressure on the child).
const LINE_QUEUE: usize = 1024;

/// One output destination for a child's stdout and stderr.
#[derive(Debug, Clone, Default)]
pub struct LogTarget {
    /// Printed before every console line.
    pub prefix: String,
    pub console: bool,
    /// Appended to (created with its directory when missing).
    pub file: Option<PathBuf>,
}

impl LogTarget {
    pub fn console(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            console: true,
            file: None,
        }
    }
}

/// The running forwarder of one child's output; `finish` waits until everything read is written.
pub struct Forwarder {
    writer: JoinHandle<()>,
}

impl Forwarder {
    /// Starts copying both streams, line by line, to the target. A log file that cannot be opened
    /// is reported once on stderr and the console part (if any) goes on.
    pub fn start(
        stdout: Option<impl AsyncRead + Unpin + Send + 'static>,
        stderr: Option<impl AsyncRead + Unpin + Send + 'static>,
        target: LogTarget,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(LINE_QUEUE);
        if let Some(s) = stdout {
            tokio::spawn(read_lines(s, tx.clone()));
        }
        if let Some(s) = stderr {
            tokio::spawn(read_lines(s, tx.clone()));
        }
        drop(tx);
        Self {
            writer: tokio::spawn(write_lines(rx, target)),
        }
    }

    /// Waits (at most `limit`) until the child's streams are closed and all lines written. A
    /// grandchild that keeps the pipe open is the reason for the limit.
    pub async fn finish(self, limit: std::time::Duration) {
        let _ = tokio::time::timeout(limit, self.writer).await;
    }
}

async fn read_lines(mut stream: impl AsyncRead + Unpin, tx: mpsc::Sender<Vec<u8>>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 8192];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = pending.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if tx.send(line).await.is_err() {
                return;
            }
        }
        while pending.len() >= MAX_LINE_BYTES {
            let line: Vec<u8> = pending.drain(..MAX_LINE_BYTES).collect();
            if tx.send(line).await.is_err() {
                return;
            }
        }
    }
    if !pending.is_empty() {
        let _ = tx.send(pending).await;
    }
}

async fn write_lines(mut rx: mpsc::Receiver<Vec<u8>>, target: LogTarget) {
    let mut file = match &target.file {
        None => None,
        Some(path) => match open_log(path).await {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("❌  cannot write log file {}: {e}", path.display());
                None
            }
        },
    };
    let mut stdout = tokio::io::stdout();
    while let Some(line) = rx.recv().await {
        if target.console {
            let mut out = Vec::with_capacity(target.prefix.len() + line.len() + 1);
            out.extend_from_slice(target.prefix.as_bytes());
            out.extend_from_slice(&line);
            out.push(b'\n');
            let _ = stdout.write_all(&out).await;
            let _ = stdout.flush().await;
        }
        if let Some(f) = file.as_mut() {
            let mut out = line;
            out.push(b'\n');
            if f.write_all(&out).await.is_err() {
                file = None;
            }
        }
    }
    if let Some(f) = file.as_mut() {
        let _ = f.flush().await;
    }
}

async fn open_log(path: &std::path::Path) -> std::io::Result<tokio::fs::File> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
}
