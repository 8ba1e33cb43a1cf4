//! The connection metadata `state.redis` and `pubsub.redis` share, with Dapr's names and
//! go-redis's defaults.

use std::sync::Arc;
use std::time::Duration;

use super::{ConnectSettings, RetryPolicy};
use crate::metadata::{Metadata, MetadataError};
use crate::registry::BuildError;
use crate::tls::{client_config, TlsFields, TlsMaterial};

const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_MAX_RETRIES: u64 = 3;
const DEFAULT_MIN_RETRY_INTERVAL: Duration = Duration::from_millis(8);
const DEFAULT_MAX_RETRY_INTERVAL: Duration = Duration::from_millis(512);
/// go-redis's default: ten connections per CPU.
const CONNECTIONS_PER_CPU: u64 = 10;
const MAX_POOL_SIZE: u64 = 1024;

const REDIS_TLS: TlsFields = TlsFields {
    section: "enableTLS",
    root_ca: "caCert",
    certificate: "clientCert",
    private_key: "clientKey",
};

/// `redisHost` and the rest: address, credentials, database, TLS and timeouts.
pub fn connect_settings(md: &Metadata) -> Result<ConnectSettings, BuildError> {
    let address = md.require("redisHost")?;
    if address.contains(',') {
        return Err(BuildError::Init(
            "redisHost lists several hosts (Redis Cluster), which this build does not support"
                .into(),
        ));
    }
    if let Some(kind) = md.get_non_empty("redisType") {
        if !kind.eq_ignore_ascii_case("node") {
            return Err(BuildError::Init(format!(
                "redisType {kind:?} is not supported; only node"
            )));
        }
    }
    if md.get_bool("failover", false)? {
        return Err(BuildError::Init(
            "failover (Sentinel) is not supported".into(),
        ));
    }
    let (host, port) = split_host(address)?;
    let tls = if md.get_bool("enableTLS", false)? {
        let material = TlsMaterial {
            root_ca: md.get_non_empty("caCert").map(str::to_string),
            certificate: md.get_non_empty("clientCert").map(str::to_string),
            private_key: md.get_non_empty("clientKey").map(str::to_string),
        };
        let config = client_config(Some(&material), &REDIS_TLS)
            .map_err(|e| BuildError::Init(e.to_string()))?;
        Some(Arc::new(config))
    } else {
        None
    };
    let secs = Duration::from_secs(1);
    let read_timeout = md.get_duration("readTimeout", secs, DEFAULT_READ_TIMEOUT)?;
    let write_timeout = md.get_duration("writeTimeout", secs, read_timeout)?;
    Ok(ConnectSettings {
        host,
        port,
        username: md.get_non_empty("redisUsername").map(str::to_string),
        password: md.get_non_empty("redisPassword").map(str::to_string),
        db: md.get_i64("redisDB", 0)?,
        tls,
        dial_timeout: md.get_duration("dialTimeout", secs, DEFAULT_DIAL_TIMEOUT)?,
        read_timeout: read_timeout.max(write_timeout),
    })
}

/// `redisMaxRetries`, `redisMinRetryInterval` and `redisMaxRetryInterval`.
pub fn retry_policy(md: &Metadata) -> Result<RetryPolicy, MetadataError> {
    let ms = Duration::from_millis(1);
    Ok(RetryPolicy {
        max_retries: md.get_u64("redisMaxRetries", DEFAULT_MAX_RETRIES)?,
        min_interval: md.get_duration("redisMinRetryInterval", ms, DEFAULT_MIN_RETRY_INTERVAL)?,
        max_interval: md.get_duration("redisMaxRetryInterval", ms, DEFAULT_MAX_RETRY_INTERVAL)?,
    })
}

/// `poolSize`: connections in use at once (default ten per CPU, as go-redis).
pub fn pool_size(md: &Metadata) -> Result<usize, MetadataError> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let size = md.get_u64("poolSize", CONNECTIONS_PER_CPU * cpus)?;
    Ok(size.clamp(1, MAX_POOL_SIZE) as usize)
}

/// `host:port` (port 6379 when left out; IPv6 hosts in brackets).
fn split_host(text: &str) -> Result<(String, u16), MetadataError> {
    let text = text.trim();
    match text.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') => port
            .parse()
            .map(|p| (host.trim_matches(['[', ']']).to_string(), p))
            .map_err(|_| MetadataError::Invalid {
                field: "redisHost".into(),
                value: text.to_string(),
                expected: "host:port",
            }),
        _ => Ok((text.to_string(), 6379)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_ports_and_defaults() {
        assert_eq!(split_host("h:7000").unwrap(), ("h".into(), 7000));
        assert_eq!(split_host("h").unwrap(), ("h".into(), 6379));
        assert_eq!(split_host("[::1]:7000").unwrap(), ("::1".into(), 7000));
        assert!(split_host("h:x").is_err());
    }
}
