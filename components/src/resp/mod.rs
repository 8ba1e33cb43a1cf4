//! A lean Redis client for request/response commands, shared by `state.redis` and the publish
//! side of `pubsub.redis`.
//!
//! A request takes a connection from the pool, writes its commands, reads their replies in the
//! calling task, and gives the connection back: no background task and no channel between the
//! caller and the socket, which keeps a command to about one loopback round trip. A connection
//! that fails or times out is dropped (with every idle one, which a restarted server has closed
//! too), and the call is sent again on a new connection, with backoff, up to `max_retries` times.

mod protocol;
mod settings;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

pub use protocol::{error_code, ProtocolError, Value};
pub use settings::{connect_settings, pool_size, retry_policy};

/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, Error)]
pub enum RespError {
    #[error("cannot connect to redis at {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("redis connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis closed the connection")]
    Closed,
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("redis refused the connection set-up: {0}")]
    Handshake(String),
    #[error("redis TLS: {0}")]
    Tls(String),
}

impl RespError {
    /// Failures after which the same call is worth sending again on a new connection.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RespError::Connect { .. }
                | RespError::Io(_)
                | RespError::Timeout(_)
                | RespError::Closed
        )
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub struct ConnectSettings {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
    /// TLS when set.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub dial_timeout: Duration,
    /// How long one call may wait for its replies.
    pub read_timeout: Duration,
}

/// How often, and how far apart, a failed call is sent again.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_retries: u64,
    pub min_interval: Duration,
    pub max_interval: Duration,
}

/// Commands sent together, in one write, each answered by one reply.
#[derive(Debug, Default, Clone)]
pub struct Commands {
    wire: Vec<u8>,
    count: usize,
}

impl Commands {
    pub fn new() -> Self {
        Self::default()
    }

    /// One command: its name, then its arguments.
    pub fn push(&mut self, args: &[&(dyn AsRef<[u8]> + Sync)]) -> &mut Self {
        protocol::encode_command(&mut self.wire, args.iter().map(|a| a.as_ref()));
        self.count += 1;
        self
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// A Lua script, run by its SHA-1 (EVALSHA) and sent whole only when the server lacks it.
pub struct Script {
    body: &'static str,
    sha: String,
}

impl Script {
    pub fn new(body: &'static str) -> Self {
        Self {
            body,
            sha: sha1_smol::Sha1::from(body).digest().to_string(),
        }
    }

    fn command(&self, by_sha: bool, keys: &[&[u8]], args: &[&[u8]]) -> Commands {
        let numkeys = keys.len().to_string();
        let head: [&(dyn AsRef<[u8]> + Sync); 3] = if by_sha {
            [&"EVALSHA", &self.sha, &numkeys]
        } else {
            [&"EVAL", &self.body, &numkeys]
        };
        let mut all: Vec<&(dyn AsRef<[u8]> + Sync)> =
            Vec::with_capacity(3 + keys.len() + args.len());
        all.extend(head);
        all.extend(keys.iter().map(|k| k as &(dyn AsRef<[u8]> + Sync)));
        all.extend(args.iter().map(|a| a as &(dyn AsRef<[u8]> + Sync)));
        let mut commands = Commands::new();
        commands.push(&all);
        commands
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Connection {
    stream: Box<dyn Stream>,
    buf: BytesMut,
}

impl Connection {
    async fn open(settings: &ConnectSettings) -> Result<Self, RespError> {
        let address = format!("{}:{}", settings.host, settings.port);
        let connect_error = |source| RespError::Connect {
            address: address.clone(),
            source,
        };
        let tcp = tokio::time::timeout(
            settings.dial_timeout,
            TcpStream::connect((settings.host.as_str(), settings.port)),
        )
        .await
        .map_err(|_| {
            connect_error(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {:?}", settings.dial_timeout),
            ))
        })?
        .map_err(connect_error)?;
        tcp.set_nodelay(true).map_err(connect_error)?;
        let stream: Box<dyn Stream> = match &settings.tls {
            None => Box::new(tcp),
            Some(config) => {
                let name = ServerName::try_from(settings.host.clone())
                    .map_err(|e| RespError::Tls(format!("server name {:?}: {e}", settings.host)))?;
                let tls = tokio::time::timeout(
                    settings.dial_timeout,
                    tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp),
                )
                .await
                .map_err(|_| RespError::Tls("no TLS handshake within the dial timeout".into()))?
                .map_err(|e| RespError::Tls(e.to_string()))?;
                Box::new(tls)
            }
        };
        let mut conn = Connection {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
        };
        let mut setup = Commands::new();
        if let Some(password) = &settings.password {
            match &settings.username {
                Some(user) => setup.push(&[&"AUTH", user, password]),
                None => setup.push(&[&"AUTH", password]),
            };
        }
        if settings.db != 0 {
            setup.push(&[&"SELECT", &settings.db.to_string()]);
        }
        // A PING proves the connection usable before it is pooled: a server that wants a
        // password says so here, and one that refuses the TLS client certificate (which TLS 1.3
        // reports only after the handshake) closes the connection here.
        setup.push(&[&"PING"]);
        for reply in conn.exec(&setup, settings.read_timeout).await? {
            if let Value::Error(e) = reply {
                return Err(RespError::Handshake(e));
            }
        }
        Ok(conn)
    }

    /// Writes the commands and reads one reply for each.
    async fn exec(
        &mut self,
        commands: &Commands,
        limit: Duration,
    ) -> Result<Vec<Value>, RespError> {
        let work = async {
            self.stream.write_all(&commands.wire).await?;
            self.stream.flush().await?;
            let mut replies = Vec::with_capacity(commands.count);
            while replies.len() < commands.count {
                match protocol::parse(&mut self.buf)? {
                    Some(value) => replies.push(value),
                    None => {
                        self.buf.reserve(READ_CHUNK);
                        if self.stream.read_buf(&mut self.buf).await? == 0 {
                            return Err(RespError::Closed);
                        }
                    }
                }
            }
            Ok(replies)
        };
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| RespError::Timeout(limit))?
    }
}

/// Connections to one server, opened on demand, at most `size` in use at once.
pub struct Pool {
    settings: ConnectSettings,
    retry: RetryPolicy,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl Pool {
    /// A pool holding one connection already, so a server that cannot be reached (or refuses
    /// the credentials) is an error now rather than at the first call.
    pub async fn connect(
        settings: ConnectSettings,
        retry: RetryPolicy,
        size: usize,
    ) -> Result<Self, RespError> {
        let first = Connection::open(&settings).await?;
        Ok(Self {
            settings,
            retry,
            idle: Mutex::new(vec![first]),
            permits: Semaphore::new(size.max(1)),
        })
    }

    /// Sends the commands in one write and returns their replies in order; an error reply is a
    /// `Value::Error` in its place, not a failure of the call.
    pub async fn query(&self, commands: &Commands) -> Result<Vec<Value>, RespError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| RespError::Closed)?;
        let mut attempt = 0;
        let mut delay = self.retry.min_interval;
        loop {
            match self.query_once(commands).await {
                Err(e) if e.is_transient() && attempt < self.retry.max_retries => {
                    attempt += 1;
                    tracing::debug!(
                        "redis call failed ({e}); retry {attempt}/{}",
                        self.retry.max_retries
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.retry.max_interval);
                }
                result => return result,
            }
        }
    }

    /// One command's reply.
    pub fn query_one(
        &self,
        args: &[&(dyn AsRef<[u8]> + Sync)],
    ) -> impl std::future::Future<Output = Result<Value, RespError>> + Send + '_ {
        let mut commands = Commands::new();
        commands.push(args);
        async move { self.single(&commands).await }
    }

    /// Runs a script by its SHA-1, sending its body when the server does not know it yet.
    pub async fn run_script(
        &self,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<Value, RespError> {
        let reply = self.single(&script.command(true, keys, args)).await?;
        if reply.error_code() == Some("NOSCRIPT") {
            return self.single(&script.command(false, keys, args)).await;
        }
        Ok(reply)
    }

    async fn single(&self, commands: &Commands) -> Result<Value, RespError> {
        self.query(commands)
            .await?
            .pop()
            .ok_or_else(|| ProtocolError("no reply".into()).into())
    }

    async fn query_once(&self, commands: &Commands) -> Result<Vec<Value>, RespError> {
        let idle = self.idle.lock().pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => Connection::open(&self.settings).await?,
        };
        match conn.exec(commands, self.settings.read_timeout).await {
            Ok(replies) => {
                self.idle.lock().push(conn);
                Ok(replies)
            }
            Err(e) => {
                // The server likely closed the others too (a restart); open fresh ones.
                self.idle.lock().clear();
                Err(e)
            }
        }
    }
}
