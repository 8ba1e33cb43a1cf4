//! Topic scopes from pub/sub component metadata: `publishingScopes`, `subscriptionScopes`
//! (`app1=topic1;app2=topic2,topic3`), `allowedTopics` and `protectedTopics` (`t1,t2`).
//! Same rules as Dapr's `IsOperationAllowed`.

use tandem_components::Metadata;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopicScopes {
    /// This app's publishing topics, when `publishingScopes` names it.
    publishing: Option<Vec<String>>,
    subscription: Option<Vec<String>>,
    allowed: Vec<String>,
    protected: Vec<String>,
}

fn list(value: Option<&str>) -> Vec<String> {
    value
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.split(',').map(|t| t.trim().to_string()).collect())
        .unwrap_or_default()
}

/// The topics `app_id` is given in a `app=t1,t2;app2=t3` value, if it is named.
fn scoped(value: Option<&str>, app_id: &str) -> Option<Vec<String>> {
    let value = value?;
    let mut found: Option<Vec<String>> = None;
    for entry in value.split(';') {
        let Some((app, topics)) = entry.split_once('=') else {
            continue;
        };
        if app.trim() == app_id {
            found
                .get_or_insert_with(Vec::new)
                .extend(topics.split(',').map(|t| t.trim().to_string()));
        }
    }
    found
}

impl TopicScopes {
    pub fn from_metadata(md: &Metadata, app_id: &str) -> Self {
        Self {
            publishing: scoped(md.get("publishingScopes"), app_id),
            subscription: scoped(md.get("subscriptionScopes"), app_id),
            allowed: list(md.get("allowedTopics")),
            protected: list(md.get("protectedTopics")),
        }
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        self.allowed_with(topic, self.publishing.as_deref())
    }

    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.allowed_with(topic, self.subscription.as_deref())
    }

    fn allowed_with(&self, topic: &str, scoped: Option<&[String]>) -> bool {
        if !self.allowed.is_empty() && !self.allowed.iter().any(|t| t == topic) {
            return false;
        }
        let protected = self.protected.iter().any(|t| t == topic);
        let scoped = scoped.unwrap_or_default();
        if !protected && scoped.is_empty() {
            return true;
        }
        scoped.iter().any(|t| t == topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(pairs: &[(&str, &str)], app: &str) -> TopicScopes {
        let md: Metadata = pairs.iter().copied().collect();
        TopicScopes::from_metadata(&md, app)
    }

    #[test]
    fn dapr_scope_rules() {
        let s = scopes(
            &[
                ("publishingScopes", "app1=a;app2=b,c"),
                ("subscriptionScopes", "app1="),
            ],
            "app1",
        );
        assert!(s.may_publish("a"));
        assert!(!s.may_publish("b"));
        assert!(!s.may_subscribe("a"), "app1= grants no topics");
        let other = scopes(&[("publishingScopes", "app1=a")], "app3");
        assert!(other.may_publish("anything"));

        let s = scopes(&[("allowedTopics", "x,y")], "app1");
        assert!(s.may_publish("x"));
        assert!(!s.may_publish("z"));
        assert!(!s.may_subscribe("z"));

        let s = scopes(
            &[
                ("protectedTopics", "secret"),
                ("publishingScopes", "app2=secret"),
            ],
            "app1",
        );
        assert!(!s.may_publish("secret"));
        assert!(s.may_publish("open"));
        let s2 = scopes(
            &[
                ("protectedTopics", "secret"),
                ("publishingScopes", "app2=secret"),
            ],
            "app2",
        );
        assert!(s2.may_publish("secret"));
        assert!(TopicScopes::default().may_publish("t"));
    }
}
