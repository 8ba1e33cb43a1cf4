//! `tandem publish` / `dapr publish`: publish an event through a running app's sidecar.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use http::Method;
use serde_json::Value;

use super::instances;
use super::invoke::payload;
use super::sidecar_http::SidecarHttp;

/// How long one publish may take.
pub const PUBLISH_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// The app whose sidecar publishes.
    #[arg(long = "publish-app-id", short = 'i')]
    pub publish_app_id: String,

    /// The pub/sub component.
    #[arg(long, short = 'p')]
    pub pubsub: String,

    /// The topic.
    #[arg(long, short = 't')]
    pub topic: String,

    /// The event data (JSON, or a CloudEvent which is then published as is).
    #[arg(long, short = 'd', conflicts_with = "data_file")]
    pub data: Option<String>,

    /// A file whose contents are the event data.
    #[arg(long, short = 'f')]
    pub data_file: Option<PathBuf>,

    /// Publish metadata as a JSON object, e.g. '{"ttlInSeconds":"10"}'.
    #[arg(long, short = 'm')]
    pub metadata: Option<String>,
}

pub async fn run(args: PublishArgs) -> ExitCode {
    match publish(&args).await {
        Ok(()) => {
            println!("✅  Event published successfully");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("❌  Error publishing topic {}: {message}", args.topic);
            ExitCode::FAILURE
        }
    }
}

async fn publish(args: &PublishArgs) -> Result<(), String> {
    let query = match &args.metadata {
        None => String::new(),
        Some(text) => metadata_query(text)?,
    };
    let body = payload(&args.data, &args.data_file).await?;
    let client = SidecarHttp::new();
    let instance = instances::find(&client, &args.publish_app_id)
        .await
        .into_iter()
        .next()
        .ok_or_else(|| {
            format!(
                "couldn't find a running Dapr instance with app id {}",
                args.publish_app_id
            )
        })?;
    let url = format!(
        "{}/v1.0/publish/{}/{}{query}",
        instance.api_base(),
        encode(&args.pubsub),
        encode(&args.topic)
    );
    let content_type = if body.is_empty() {
        None
    } else if is_cloud_event(&body) {
        Some("application/cloudevents+json")
    } else {
        Some("application/json")
    };
    let response = client
        .send(Method::POST, &url, content_type, body, PUBLISH_LIMIT)
        .await
        .map_err(|e| e.to_string())?;
    if !response.status.is_success() {
        return Err(if response.body.is_empty() {
            format!("http status code {}", response.status.as_u16())
        } else {
            String::from_utf8_lossy(&response.body).into_owned()
        });
    }
    Ok(())
}

/// `{"ttlInSeconds":"10"}` -> `?metadata.ttlInSeconds=10`.
fn metadata_query(text: &str) -> Result<String, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("--metadata is not JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("--metadata must be a JSON object".into());
    };
    let mut parts = Vec::new();
    for (key, value) in map {
        let text = match value {
            Value::String(s) => s,
            other => other.to_string(),
        };
        parts.push(format!("metadata.{}={}", encode(&key), encode(&text)));
    }
    parts.sort();
    Ok(if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    })
}

/// A payload the Dapr CLI sends as a CloudEvent: a JSON object with `id` and `specversion`.
fn is_cloud_event(body: &[u8]) -> bool {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let present = |k: &str| {
        map.get(k)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    present("id") && present("specversion")
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_becomes_query_parameters() {
        assert_eq!(
            metadata_query(r#"{"ttlInSeconds":"10","rawPayload":true}"#).unwrap(),
            "?metadata.rawPayload=true&metadata.ttlInSeconds=10"
        );
        assert_eq!(metadata_query("{}").unwrap(), "");
        assert!(metadata_query("[1]").is_err());
        assert!(metadata_query("nope").is_err());
    }

    #[test]
    fn cloud_events_are_recognised() {
        assert!(is_cloud_event(
            br#"{"id":"1","specversion":"1.0","type":"t","source":"s"}"#
        ));
        assert!(!is_cloud_event(br#"{"id":"1"}"#));
        assert!(!is_cloud_event(b"plain"));
    }

    #[test]
    fn encodes_reserved_characters() {
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
