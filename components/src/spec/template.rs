//! Metadata value templates: `{uuid}`, `{appID}`, `{namespace}` and `{podName}`.

/// What the templates expand to for this sidecar.
#[derive(Debug, Clone, Default)]
pub struct TemplateContext {
    pub app_id: String,
    /// The `NAMESPACE` environment variable, if set.
    pub namespace: Option<String>,
    /// The `POD_NAME` environment variable, if set.
    pub pod_name: Option<String>,
}

impl TemplateContext {
    /// Expands every template in `value`. `{namespace}` becomes `<namespace>.<appId>` as in Dapr
    /// (just the app id outside Kubernetes); `{podName}` falls back to the app id.
    pub fn expand(&self, value: &str) -> String {
        if !value.contains('{') {
            return value.to_string();
        }
        let namespace = match &self.namespace {
            Some(ns) if !ns.is_empty() => format!("{ns}.{}", self.app_id),
            _ => self.app_id.clone(),
        };
        let pod_name = self.pod_name.clone().unwrap_or_else(|| self.app_id.clone());
        let mut out = value
            .replace("{appID}", &self.app_id)
            .replace("{namespace}", &namespace)
            .replace("{podName}", &pod_name);
        while let Some(pos) = out.find("{uuid}") {
            out.replace_range(pos..pos + "{uuid}".len(), &uuid::Uuid::new_v4().to_string());
        }
        out
    }

    /// True when any template that depends on the namespace appears in `value`.
    pub fn mentions_namespace(value: &str) -> bool {
        value.contains("{namespace}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_every_template() {
        let ctx = TemplateContext {
            app_id: "orders".into(),
            namespace: Some("prod".into()),
            pod_name: Some("orders-7f".into()),
        };
        assert_eq!(ctx.expand("{appID}-{podName}"), "orders-orders-7f");
        assert_eq!(ctx.expand("{namespace}"), "prod.orders");
        let a = ctx.expand("{uuid}");
        assert_eq!(a.len(), 36);
        assert_ne!(a, ctx.expand("{uuid}"));
        assert_eq!(ctx.expand("plain"), "plain");
    }

    #[test]
    fn namespace_falls_back_to_app_id() {
        let ctx = TemplateContext {
            app_id: "orders".into(),
            ..Default::default()
        };
        assert_eq!(ctx.expand("{namespace}"), "orders");
    }
}
