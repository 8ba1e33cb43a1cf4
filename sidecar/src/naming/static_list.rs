//! The `static` resolver: a fixed list of sidecar internal addresses per app id, written in the
//! Configuration, for hosts with neither a shared registry nor cluster DNS:
//!
//! ```yaml
//! nameResolution:
//!   component: static
//!   configuration:
//!     apps:
//!       orders: ["10.0.0.5:50002", "10.0.0.6:50002"]
//! ```

use std::collections::BTreeMap;

use http::uri::Authority;
use serde_json::Value;

use super::{Instances, NameResolutionError};

#[derive(Debug, Clone)]
pub struct StaticResolver {
    apps: BTreeMap<String, Instances>,
}

impl StaticResolver {
    pub fn from_config(config: Option<&Value>) -> Result<Self, NameResolutionError> {
        let invalid = |field: String, message: &str| NameResolutionError::InvalidConfiguration {
            field,
            message: message.to_string(),
        };
        let apps = match config.and_then(|c| c.get("apps")) {
            Some(Value::Object(map)) => map,
            _ => {
                return Err(invalid(
                    "apps".into(),
                    "must map app ids to lists of host:port addresses",
                ))
            }
        };
        let mut out = BTreeMap::new();
        for (id, list) in apps {
            let items: Vec<&Value> = match list {
                Value::Array(items) => items.iter().collect(),
                Value::String(_) => vec![list],
                _ => return Err(invalid(format!("apps.{id}"), "must be a list of host:port")),
            };
            let mut addresses = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                let text = item.as_str().map(str::trim).unwrap_or_default();
                let has_port = text
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                let address = Authority::try_from(text).ok().filter(|_| has_port);
                let Some(address) = address else {
                    return Err(invalid(
                        format!("apps.{id}[{i}]"),
                        "must be host:port (the peer sidecar's internal port)",
                    ));
                };
                addresses.push(address);
            }
            out.insert(id.clone(), Instances::from(addresses));
        }
        Ok(Self { apps: out })
    }

    pub fn resolve(&self, app_id: &str) -> Instances {
        self.apps
            .get(app_id)
            .cloned()
            .unwrap_or_else(|| Instances::from([]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_list() {
        let cfg = serde_json::json!({"apps": {"b": ["127.0.0.1:1", "h:2"], "c": "x:3"}});
        let r = StaticResolver::from_config(Some(&cfg)).unwrap();
        assert_eq!(*r.resolve("b"), ["127.0.0.1:1", "h:2"]);
        assert_eq!(*r.resolve("c"), ["x:3"]);
        assert!(r.resolve("d").is_empty());
        let bad = serde_json::json!({"apps": {"b": ["nope"]}});
        let err = StaticResolver::from_config(Some(&bad)).unwrap_err();
        assert!(err.to_string().contains("apps.b[0]"), "{err}");
        assert!(StaticResolver::from_config(None).is_err());
    }
}
