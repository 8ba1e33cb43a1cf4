//! Routing rules: CEL expressions over `event` (the CloudEvent), first match wins, the default
//! route (a rule without `match`) last.

use std::sync::Arc;

use cel::{Context, Env, Program};
use serde_json::Value;
use tandem_components::spec::subscription::RouteRule;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RoutingError {
    #[error("routing rule {index} ({expr:?}) is not valid CEL: {message}")]
    Compile {
        index: usize,
        expr: String,
        message: String,
    },
}

struct CompiledRule {
    program: Option<Program>,
    expr: String,
    path: String,
}

/// A subscription's compiled rules.
pub struct Routes {
    env: Arc<Env>,
    rules: Vec<CompiledRule>,
}

impl Routes {
    pub fn compile(rules: &[RouteRule]) -> Result<Self, RoutingError> {
        let env = Arc::new(Env::stdlib());
        let compiled = rules
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                let program = match &rule.match_expr {
                    None => None,
                    Some(expr) => Some(env.compile(expr).map_err(|e| RoutingError::Compile {
                        index,
                        expr: expr.clone(),
                        message: e.to_string(),
                    })?),
                };
                Ok(CompiledRule {
                    program,
                    expr: rule.match_expr.clone().unwrap_or_default(),
                    path: rule.path.clone(),
                })
            })
            .collect::<Result<Vec<_>, RoutingError>>()?;
        Ok(Self {
            env,
            rules: compiled,
        })
    }

    /// As [`Routes::route`], asking for the event only when a rule has an expression (a
    /// subscription with just a default route needs nothing from it).
    pub fn route_with<'e>(&self, event: impl FnOnce() -> &'e Value) -> Option<&str> {
        if self.rules.iter().any(|rule| rule.program.is_some()) {
            self.route(event())
        } else {
            self.rules.first().map(|rule| rule.path.as_str())
        }
    }

    /// The path of the first rule that matches `event`, if any. A rule whose expression fails
    /// to evaluate (a missing field, a non-bool result) does not match.
    pub fn route(&self, event: &Value) -> Option<&str> {
        let mut context: Option<Context> = None;
        for rule in &self.rules {
            let Some(program) = &rule.program else {
                return Some(&rule.path);
            };
            let ctx = match &mut context {
                Some(ctx) => ctx,
                None => {
                    let mut ctx = Context::with_env(self.env.clone());
                    let value = match cel::to_value(event) {
                        Ok(v) => v,
                        Err(e) => {
                            tracing::warn!("event cannot be given to CEL: {e}");
                            return None;
                        }
                    };
                    ctx.add_variable_from_value("event", value);
                    context.insert(ctx)
                }
            };
            match program.execute(ctx) {
                Ok(cel::Value::Bool(true)) => return Some(&rule.path),
                Ok(cel::Value::Bool(false)) => {}
                Ok(other) => tracing::debug!(
                    "routing rule {:?} returned {other:?}, not a bool; treated as no match",
                    rule.expr
                ),
                Err(e) => tracing::debug!(
                    "routing rule {:?} failed: {e}; treated as no match",
                    rule.expr
                ),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(m: Option<&str>, p: &str) -> RouteRule {
        RouteRule {
            match_expr: m.map(str::to_string),
            path: p.to_string(),
        }
    }

    #[test]
    fn first_match_then_default() {
        let routes = Routes::compile(&[
            rule(Some(r#"event.type == "widget""#), "/widgets"),
            rule(
                Some(r#"has(event.data.amount) && int(event.data.amount) > 100"#),
                "/big",
            ),
            rule(None, "/default"),
        ])
        .unwrap();
        assert_eq!(
            routes.route(&json!({"type": "widget", "data": {"amount": 500}})),
            Some("/widgets")
        );
        assert_eq!(
            routes.route(&json!({"type": "x", "data": {"amount": 500}})),
            Some("/big")
        );
        assert_eq!(
            routes.route(&json!({"type": "x", "data": {"amount": 5}})),
            Some("/default")
        );
        assert_eq!(
            routes.route(&json!({"type": "x", "data": "text"})),
            Some("/default")
        );
    }

    #[test]
    fn no_default_means_no_route() {
        let routes = Routes::compile(&[rule(Some("event.data.n > 1.0"), "/n")]).unwrap();
        assert_eq!(routes.route(&json!({"data": {"n": 2.0}})), Some("/n"));
        assert_eq!(routes.route(&json!({"data": {}})), None);
        assert!(Routes::compile(&[rule(Some("event.type =="), "/x")]).is_err());
    }
}
