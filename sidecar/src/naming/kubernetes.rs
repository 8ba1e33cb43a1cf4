//! The `kubernetes` resolver: each app's sidecars sit behind the headless service
//! `<app-id>-dapr.<namespace>.svc.<cluster domain>` (as Dapr's injector creates it), on the
//! internal port. DNS does the rest.

use http::uri::Authority;
use serde_json::Value;

use super::NameResolutionError;

pub const DEFAULT_INTERNAL_PORT: u16 = 50002;
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesResolver {
    pub cluster_domain: String,
    pub internal_port: u16,
    pub namespace: String,
}

impl KubernetesResolver {
    /// Reads `configuration.clusterDomain` (default `cluster.local`) and
    /// `configuration.internalPort` (default 50002); the namespace is `NAMESPACE` or `default`.
    pub fn from_config(
        config: Option<&Value>,
        own_namespace: Option<&str>,
    ) -> Result<Self, NameResolutionError> {
        let get = |key: &str| config.and_then(|c| c.get(key)).filter(|v| !v.is_null());
        let cluster_domain = match get("clusterDomain") {
            None => DEFAULT_CLUSTER_DOMAIN.to_string(),
            Some(Value::String(s)) if !s.trim().is_empty() => {
                s.trim().trim_matches('.').to_string()
            }
            Some(_) => {
                return Err(NameResolutionError::InvalidConfiguration {
                    field: "clusterDomain".into(),
                    message: "must be a domain name such as cluster.local".into(),
                })
            }
        };
        let internal_port = match get("internalPort") {
            None => DEFAULT_INTERNAL_PORT,
            Some(v) => tandem_components::spec::stringify_value(v)
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| NameResolutionError::InvalidConfiguration {
                    field: "internalPort".into(),
                    message: format!("{v} is not a port number"),
                })?,
        };
        Ok(Self {
            cluster_domain,
            internal_port,
            namespace: own_namespace.unwrap_or("default").to_string(),
        })
    }

    pub fn resolve(
        &self,
        app_id: &str,
        namespace: Option<&str>,
    ) -> Result<Authority, NameResolutionError> {
        let address = format!(
            "{app_id}-dapr.{}.svc.{}:{}",
            namespace.unwrap_or(&self.namespace),
            self.cluster_domain,
            self.internal_port
        );
        Authority::try_from(address.as_str())
            .map_err(|_| NameResolutionError::InvalidAddress(address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_service_names() {
        let r = KubernetesResolver::from_config(None, Some("shop")).unwrap();
        assert_eq!(
            r.resolve("orders", None).unwrap(),
            "orders-dapr.shop.svc.cluster.local:50002"
        );
        assert_eq!(
            r.resolve("orders", Some("prod")).unwrap(),
            "orders-dapr.prod.svc.cluster.local:50002"
        );
        let cfg = serde_json::json!({"clusterDomain": "corp.example", "internalPort": "6000"});
        let r = KubernetesResolver::from_config(Some(&cfg), None).unwrap();
        assert_eq!(
            r.resolve("a", None).unwrap(),
            "a-dapr.default.svc.corp.example:6000"
        );
        assert!(r.resolve("a b", None).is_err());
        let bad = serde_json::json!({"internalPort": "x"});
        assert!(KubernetesResolver::from_config(Some(&bad), None).is_err());
    }
}
