//! `pubsub.kafka` metadata: Dapr's field names read into a typed config, and the librdkafka
//! client settings derived from it.
//!
//! Fields Tandem cannot honour are rejected at init with an error naming the field, rather than
//! silently changing what a message means (schema registry, OIDC, AWS IAM, header escaping).

use std::time::Duration;

use rdkafka::ClientConfig;
use thiserror::Error;

use crate::metadata::{Metadata, MetadataError};

/// Default `sessionTimeout` (Dapr's, not librdkafka's 45s).
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `heartbeatInterval` (Dapr's).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// Default `consumeRetryInterval`: how long a nacked message waits before it is redelivered.
pub const DEFAULT_CONSUME_RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// Default `channelBufferSize`: messages pulled from Kafka and waiting for the delivery engine.
pub const DEFAULT_CHANNEL_BUFFER_SIZE: usize = 256;
/// Default `producerRetryMax` (Dapr's).
pub const DEFAULT_PRODUCER_RETRY_MAX: u64 = 5;
/// How long a publish may wait for the broker's acknowledgement (librdkafka `message.timeout.ms`).
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest time a fetch waits on the broker when no data is available.
const FETCH_WAIT_MAX: Duration = Duration::from_millis(100);
/// Bound of the producer's local queue (librdkafka `queue.buffering.max.messages` / `.kbytes`);
/// a publish that finds it full waits (up to [`PUBLISH_TIMEOUT`]) rather than growing it.
pub const PRODUCER_QUEUE_MESSAGES: u32 = 10_000;
pub const PRODUCER_QUEUE_KBYTES: u32 = 65_536;
/// Bound of librdkafka's per-partition prefetch queue on the consumer side
/// (`queued.min.messages` / `queued.max.messages.kbytes`).
pub const CONSUMER_PREFETCH_MESSAGES: u32 = 1_000;
pub const CONSUMER_PREFETCH_KBYTES: u32 = 16_384;
/// Delivered-but-uncommitted offsets one subscription tracks before it pauses fetching: a
/// message that is never settled must not let the ledger behind it grow without bound.
pub const MAX_UNCOMMITTED: usize = 10_000;

#[derive(Debug, Error)]
pub enum KafkaConfigError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("pubsub.kafka: metadata field `{field}` value {value:?} is not supported by Tandem: {reason}")]
    Unsupported {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    fn librdkafka_name(&self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    Password {
        username: String,
        password: String,
        mechanism: SaslMechanism,
    },
    /// TLS client certificate (`clientCert`/`clientKey`), no SASL.
    Mtls,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Password {
                username,
                mechanism,
                ..
            } => write!(f, "Password({username}, {mechanism:?})"),
            Auth::Mtls => f.write_str("Mtls"),
        }
    }
}

#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tls {
    pub ca_cert: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub skip_verify: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca_cert", &self.ca_cert.is_some())
            .field("client_cert", &self.client_cert.is_some())
            .field("skip_verify", &self.skip_verify)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialOffset {
    Newest,
    Oldest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    pub brokers: Vec<String>,
    pub auth: Auth,
    /// `None` = plaintext.
    pub tls: Option<Tls>,
    pub consumer_group: String,
    pub client_id: String,
    pub initial_offset: InitialOffset,
    pub max_message_bytes: Option<u64>,
    /// librdkafka `acks`: `-1` (all), `1`, `0`.
    pub required_acks: &'static str,
    pub producer_retry_max: u64,
    pub compression: &'static str,
    pub session_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub consume_retry_interval: Duration,
    pub fetch_min_bytes: Option<u64>,
    pub fetch_default_bytes: Option<u64>,
    pub channel_buffer_size: usize,
    /// Messages of one subscription delivered at once (`concurrency`, as for the other brokers;
    /// same-key messages are still delivered one at a time, in order).
    pub concurrency: usize,
    pub rebalance_strategy: &'static str,
}

/// Dapr fields whose meaning Tandem cannot provide; any non-empty value is rejected.
const REJECTED: &[(&str, &str)] = &[
    (
        "schemaRegistryURL",
        "Avro/schema-registry encoding is not implemented",
    ),
    (
        "schemaRegistryAPIKey",
        "Avro/schema-registry encoding is not implemented",
    ),
    (
        "schemaRegistryAPISecret",
        "Avro/schema-registry encoding is not implemented",
    ),
    (
        "excludeHeaderMetaRegex",
        "header filtering by regex is not implemented",
    ),
    (
        "oidcTokenEndpoint",
        "OIDC authentication is not implemented",
    ),
    ("oidcClientID", "OIDC authentication is not implemented"),
    ("awsRegion", "AWS IAM authentication is not implemented"),
];

impl KafkaConfig {
    /// Reads the component metadata. `app_id` is the default `consumerID`, which is the default
    /// `consumerGroup`; `namespace` (Kubernetes) prefixes the default `clientID` like Dapr does.
    pub fn from_metadata(
        md: &Metadata,
        app_id: &str,
        namespace: Option<&str>,
    ) -> Result<Self, KafkaConfigError> {
        for (field, reason) in REJECTED {
            if let Some(value) = md.get_non_empty(field) {
                return Err(KafkaConfigError::Unsupported {
                    field,
                    value: value.to_string(),
                    reason,
                });
            }
        }
        if md.get_bool("escapeHeaders", false)? {
            return Err(unsupported(
                "escapeHeaders",
                "true",
                "header values are passed through unescaped",
            ));
        }

        let brokers: Vec<String> = md
            .require("brokers")?
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(str::to_string)
            .collect();
        if brokers.is_empty() {
            return Err(MetadataError::Missing {
                field: "brokers".into(),
            }
            .into());
        }

        let auth_type = md.require("authType")?;
        let auth = match auth_type.to_ascii_lowercase().as_str() {
            "none" => Auth::None,
            "password" => Auth::Password {
                username: md.require("saslUsername")?.to_string(),
                password: md.require("saslPassword")?.to_string(),
                mechanism: sasl_mechanism(md)?,
            },
            "mtls" => {
                md.require("clientCert")?;
                md.require("clientKey")?;
                Auth::Mtls
            }
            "oidc" | "oidc_private_key_jwt" | "awsiam" | "certificate" => {
                return Err(unsupported(
                    "authType",
                    auth_type,
                    "supported values are none, password and mtls",
                ))
            }
            _ => {
                return Err(MetadataError::Invalid {
                    field: "authType".into(),
                    value: auth_type.to_string(),
                    expected: "one of none, password, mtls",
                }
                .into())
            }
        };

        // Dapr: TLS is on unless `disableTls` is set or `authType` is `none`.
        let tls = if md.get_bool("disableTls", false)? || auth == Auth::None {
            None
        } else {
            Some(Tls {
                ca_cert: md.get_non_empty("caCert").map(str::to_string),
                client_cert: md.get_non_empty("clientCert").map(str::to_string),
                client_key: md.get_non_empty("clientKey").map(str::to_string),
                skip_verify: md.get_bool("skipVerify", false)?,
            })
        };
        if auth == Auth::Mtls && tls.is_none() {
            return Err(unsupported("disableTls", "true", "authType mtls needs TLS"));
        }

        let consumer_group = md
            .get_non_empty("consumerGroup")
            .or_else(|| md.get_non_empty("consumerID"))
            .unwrap_or(app_id)
            .to_string();
        let client_id = match md.get_non_empty("clientID") {
            Some(id) => id.to_string(),
            None => match namespace {
                Some(ns) if !ns.is_empty() => format!("{ns}.{app_id}"),
                _ => app_id.to_string(),
            },
        };
        if consumer_group.is_empty() {
            return Err(MetadataError::Missing {
                field: "consumerGroup".into(),
            }
            .into());
        }

        let initial_offset = match md.get_non_empty("initialOffset") {
            None => InitialOffset::Newest,
            Some(v) if v.eq_ignore_ascii_case("newest") => InitialOffset::Newest,
            Some(v) if v.eq_ignore_ascii_case("oldest") => InitialOffset::Oldest,
            Some(v) => {
                return Err(MetadataError::Invalid {
                    field: "initialOffset".into(),
                    value: v.to_string(),
                    expected: "newest or oldest",
                }
                .into())
            }
        };

        let max_message_bytes = match md.get_u64("maxMessageBytes", 0)? {
            0 => None,
            n => Some(n),
        };

        let required_acks = match md.get_non_empty("producerRequiredAcks") {
            None => "-1",
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "all" | "waitforall" | "-1" => "-1",
                "local" | "waitforlocal" | "leader" | "1" => "1",
                "none" | "noresponse" | "0" => "0",
                _ => {
                    return Err(MetadataError::Invalid {
                        field: "producerRequiredAcks".into(),
                        value: v.to_string(),
                        expected: "all, local or none",
                    }
                    .into())
                }
            },
        };

        let compression = match md.get_non_empty("compression") {
            None => "none",
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "none" => "none",
                "gzip" => "gzip",
                "snappy" => "snappy",
                "lz4" => "lz4",
                "zstd" => {
                    return Err(unsupported(
                        "compression",
                        v,
                        "zstd is not built in; use none, gzip, snappy or lz4",
                    ))
                }
                _ => {
                    return Err(MetadataError::Invalid {
                        field: "compression".into(),
                        value: v.to_string(),
                        expected: "none, gzip, snappy or lz4",
                    }
                    .into())
                }
            },
        };

        let rebalance_strategy = match md.get_non_empty("consumerGroupRebalanceStrategy") {
            None => "range",
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "range" => "range",
                "roundrobin" => "roundrobin",
                _ => {
                    return Err(unsupported(
                        "consumerGroupRebalanceStrategy",
                        v,
                        "supported values are range and roundrobin",
                    ))
                }
            },
        };

        let channel_buffer_size =
            match md.get_u64("channelBufferSize", DEFAULT_CHANNEL_BUFFER_SIZE as u64)? {
                0 => DEFAULT_CHANNEL_BUFFER_SIZE,
                n => usize::try_from(n).unwrap_or(usize::MAX).min(100_000),
            };

        Ok(Self {
            brokers,
            auth,
            tls,
            consumer_group,
            client_id,
            initial_offset,
            max_message_bytes,
            required_acks,
            producer_retry_max: md.get_u64("producerRetryMax", DEFAULT_PRODUCER_RETRY_MAX)?,
            compression,
            session_timeout: md.get_duration(
                "sessionTimeout",
                Duration::from_millis(1),
                DEFAULT_SESSION_TIMEOUT,
            )?,
            heartbeat_interval: md.get_duration(
                "heartbeatInterval",
                Duration::from_millis(1),
                DEFAULT_HEARTBEAT_INTERVAL,
            )?,
            consume_retry_interval: md.get_duration(
                "consumeRetryInterval",
                Duration::from_millis(1),
                DEFAULT_CONSUME_RETRY_INTERVAL,
            )?,
            fetch_min_bytes: nonzero(md.get_u64("consumerFetchMin", 0)?),
            fetch_default_bytes: nonzero(md.get_u64("consumerFetchDefault", 0)?),
            channel_buffer_size,
            concurrency: usize::try_from(
                md.get_u64("concurrency", crate::pubsub::DEFAULT_CONCURRENCY as u64)?
                    .clamp(1, 1_000),
            )
            .unwrap_or(crate::pubsub::DEFAULT_CONCURRENCY),
            rebalance_strategy,
        })
    }

    /// Connection and security settings shared by the producer and the consumers.
    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(","))
            .set("client.id", &self.client_id);
        let protocol = match (&self.auth, self.tls.is_some()) {
            (Auth::Password { .. }, true) => "sasl_ssl",
            (Auth::Password { .. }, false) => "sasl_plaintext",
            (_, true) => "ssl",
            (_, false) => "plaintext",
        };
        c.set("security.protocol", protocol);
        if let Auth::Password {
            username,
            password,
            mechanism,
        } = &self.auth
        {
            c.set("sasl.mechanism", mechanism.librdkafka_name())
                .set("sasl.username", username)
                .set("sasl.password", password);
        }
        if let Some(tls) = &self.tls {
            if let Some(ca) = &tls.ca_cert {
                c.set("ssl.ca.pem", ca);
            }
            if let Some(cert) = &tls.client_cert {
                c.set("ssl.certificate.pem", cert);
            }
            if let Some(key) = &tls.client_key {
                c.set("ssl.key.pem", key);
            }
            if tls.skip_verify {
                c.set("enable.ssl.certificate.verification", "false")
                    .set("ssl.endpoint.identification.algorithm", "none");
            }
        }
        c
    }

    /// The producer: acknowledged by `producerRequiredAcks` replicas, bounded local queue.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("acks", self.required_acks)
            .set(
                "message.send.max.retries",
                self.producer_retry_max.to_string(),
            )
            .set("compression.codec", self.compression)
            .set(
                "message.timeout.ms",
                PUBLISH_TIMEOUT.as_millis().to_string(),
            )
            .set(
                "queue.buffering.max.messages",
                PRODUCER_QUEUE_MESSAGES.to_string(),
            )
            .set(
                "queue.buffering.max.kbytes",
                PRODUCER_QUEUE_KBYTES.to_string(),
            );
        if let Some(max) = self.max_message_bytes {
            c.set("message.max.bytes", max.to_string());
        }
        c
    }

    /// A consumer in `consumerGroup`: offsets are committed only by the subscription's ledger
    /// (never automatically), prefetching is bounded.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("group.id", &self.consumer_group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match self.initial_offset {
                    InitialOffset::Newest => "latest",
                    InitialOffset::Oldest => "earliest",
                },
            )
            .set(
                "session.timeout.ms",
                self.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                self.heartbeat_interval.as_millis().to_string(),
            )
            .set("partition.assignment.strategy", self.rebalance_strategy)
            // Like Sarama under Dapr: subscribing to a topic that does not exist yet asks the
            // broker to create it (when the broker allows auto-creation).
            .set("allow.auto.create.topics", "true")
            // A broker answers a fetch as soon as data is there; this bounds how long a fetch
            // may be held when there is none (Sarama, under Dapr, uses 250 ms; librdkafka 500).
            .set("fetch.wait.max.ms", FETCH_WAIT_MAX.as_millis().to_string())
            .set(
                "queued.min.messages",
                CONSUMER_PREFETCH_MESSAGES.to_string(),
            )
            .set(
                "queued.max.messages.kbytes",
                CONSUMER_PREFETCH_KBYTES.to_string(),
            );
        if let Some(min) = self.fetch_min_bytes {
            c.set("fetch.min.bytes", min.to_string());
        }
        if let Some(bytes) = self.fetch_default_bytes {
            c.set("max.partition.fetch.bytes", bytes.to_string());
        }
        c
    }
}

fn nonzero(n: u64) -> Option<u64> {
    (n != 0).then_some(n)
}

fn unsupported(field: &'static str, value: &str, reason: &'static str) -> KafkaConfigError {
    KafkaConfigError::Unsupported {
        field,
        value: value.to_string(),
        reason,
    }
}

/// `saslMechanism`: Dapr spells SCRAM as `SHA-256`/`SHA-512`; the SCRAM- prefix is accepted too.
fn sasl_mechanism(md: &Metadata) -> Result<SaslMechanism, KafkaConfigError> {
    match md.get_non_empty("saslMechanism") {
        None => Ok(SaslMechanism::Plain),
        Some(v) => match v.to_ascii_uppercase().as_str() {
            "PLAIN" => Ok(SaslMechanism::Plain),
            "SHA-256" | "SCRAM-SHA-256" => Ok(SaslMechanism::ScramSha256),
            "SHA-512" | "SCRAM-SHA-512" => Ok(SaslMechanism::ScramSha512),
            _ => Err(MetadataError::Invalid {
                field: "saslMechanism".into(),
                value: v.to_string(),
                expected: "PLAIN, SHA-256 or SHA-512",
            }
            .into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> Metadata {
        pairs.iter().map(|(k, v)| (*k, *v)).collect()
    }

    #[test]
    fn defaults_follow_dapr() {
        let c = KafkaConfig::from_metadata(
            &md(&[("brokers", "a:9092, b:9092"), ("authType", "none")]),
            "app1",
            None,
        )
        .unwrap();
        assert_eq!(c.brokers, vec!["a:9092", "b:9092"]);
        assert_eq!(c.consumer_group, "app1");
        assert_eq!(c.client_id, "app1");
        assert_eq!(c.initial_offset, InitialOffset::Newest);
        assert_eq!(c.required_acks, "-1");
        assert_eq!(c.tls, None);
        assert_eq!(c.channel_buffer_size, DEFAULT_CHANNEL_BUFFER_SIZE);
        assert_eq!(c.concurrency, crate::pubsub::DEFAULT_CONCURRENCY);
        let consumer = c.consumer_config();
        assert_eq!(consumer.get("auto.offset.reset"), Some("latest"));
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("security.protocol"), Some("plaintext"));
        assert_eq!(c.producer_config().get("acks"), Some("-1"));
    }

    #[test]
    fn consumer_group_prefers_explicit_then_consumer_id() {
        let base = [("brokers", "a:1"), ("authType", "none")];
        let mut with_id = base.to_vec();
        with_id.push(("consumerID", "cid"));
        let c = KafkaConfig::from_metadata(&md(&with_id), "app", Some("ns")).unwrap();
        assert_eq!(c.consumer_group, "cid");
        assert_eq!(c.client_id, "ns.app");
        with_id.push(("consumerGroup", "grp"));
        with_id.push(("clientID", "me"));
        let c = KafkaConfig::from_metadata(&md(&with_id), "app", None).unwrap();
        assert_eq!(c.consumer_group, "grp");
        assert_eq!(c.client_id, "me");
    }

    #[test]
    fn password_auth_uses_sasl_over_tls_unless_disabled() {
        let mut m = vec![
            ("brokers", "a:1"),
            ("authType", "password"),
            ("saslUsername", "u"),
            ("saslPassword", "p"),
            ("saslMechanism", "SHA-512"),
        ];
        let c = KafkaConfig::from_metadata(&md(&m), "app", None).unwrap();
        let cc = c.producer_config();
        assert_eq!(cc.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(cc.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(cc.get("sasl.username"), Some("u"));
        assert!(!format!("{c:?}").contains("\"p\""));
        m.push(("disableTls", "true"));
        let c = KafkaConfig::from_metadata(&md(&m), "app", None).unwrap();
        assert_eq!(
            c.consumer_config().get("security.protocol"),
            Some("sasl_plaintext")
        );
    }

    #[test]
    fn rejects_what_it_cannot_do_naming_the_field() {
        let err = |pairs: &[(&str, &str)]| {
            KafkaConfigError::to_string(
                &KafkaConfig::from_metadata(&md(pairs), "app", None).unwrap_err(),
            )
        };
        assert!(err(&[("authType", "none")]).contains("`brokers`"));
        assert!(err(&[("brokers", "a:1")]).contains("`authType`"));
        assert!(err(&[("brokers", "a:1"), ("authType", "oidc")]).contains("`authType`"));
        assert!(err(&[("brokers", "a:1"), ("authType", "kerberos")]).contains("`authType`"));
        assert!(err(&[("brokers", "a:1"), ("authType", "password")]).contains("`saslUsername`"));
        assert!(err(&[
            ("brokers", "a:1"),
            ("authType", "none"),
            ("initialOffset", "middle")
        ])
        .contains("`initialOffset`"));
        assert!(err(&[
            ("brokers", "a:1"),
            ("authType", "none"),
            ("schemaRegistryURL", "http://x")
        ])
        .contains("`schemaRegistryURL`"));
        assert!(err(&[
            ("brokers", "a:1"),
            ("authType", "none"),
            ("compression", "zstd")
        ])
        .contains("`compression`"));
    }

    #[test]
    fn librdkafka_accepts_the_sasl_and_tls_settings() {
        use rdkafka::consumer::BaseConsumer;
        use rdkafka::producer::BaseProducer;
        for (mechanism, disable_tls) in [
            ("PLAIN", "false"),
            ("SHA-256", "false"),
            ("SCRAM-SHA-512", "true"),
        ] {
            let c = KafkaConfig::from_metadata(
                &md(&[
                    ("brokers", "127.0.0.1:9"),
                    ("authType", "password"),
                    ("saslUsername", "u"),
                    ("saslPassword", "p"),
                    ("saslMechanism", mechanism),
                    ("disableTls", disable_tls),
                    ("skipVerify", "true"),
                    ("maxMessageBytes", "2048"),
                    ("compression", "gzip"),
                ]),
                "app",
                None,
            )
            .unwrap();
            let producer: Result<BaseProducer, _> = c.producer_config().create();
            assert!(producer.is_ok(), "{mechanism}: {:?}", producer.err());
            let consumer: Result<BaseConsumer, _> = c.consumer_config().create();
            assert!(consumer.is_ok(), "{mechanism}: {:?}", consumer.err());
        }
    }
}
