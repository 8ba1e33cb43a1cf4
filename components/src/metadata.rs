//! Resolved component metadata: a case-insensitive name → string map with typed readers.
//!
//! Dapr matches component metadata names case-insensitively, and every value arrives as a string
//! (YAML scalars are stringified when the resource is loaded). The readers below turn those strings
//! into typed settings and name the offending field when one cannot be read.

use std::collections::BTreeMap;
use std::time::Duration;

use thiserror::Error;

/// A metadata value that could not be read as the type a component needs.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MetadataError {
    #[error("metadata field `{field}` is required")]
    Missing { field: String },
    #[error("metadata field `{field}` has value {value:?}, expected {expected}")]
    Invalid {
        field: String,
        value: String,
        expected: &'static str,
    },
}

/// Component metadata, keyed case-insensitively. The original spelling of each name is kept for
/// messages and for listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: BTreeMap<String, (String, String)>,
}

impl Metadata {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        self.entries
            .insert(name.to_ascii_lowercase(), (name, value.into()));
    }

    /// Sets `name` only when no value (of any letter case) is present.
    pub fn insert_default(&mut self, name: &str, value: impl Into<String>) {
        if self.get(name).is_none() {
            self.insert(name, value);
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .get(&name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }

    /// The value if present and not blank.
    pub fn get_non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|v| !v.is_empty())
    }

    pub fn require(&self, name: &str) -> Result<&str, MetadataError> {
        self.get_non_empty(name)
            .ok_or_else(|| MetadataError::Missing {
                field: name.to_string(),
            })
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .values()
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn invalid(&self, name: &str, value: &str, expected: &'static str) -> MetadataError {
        let field = self
            .entries
            .get(&name.to_ascii_lowercase())
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| name.to_string());
        MetadataError::Invalid {
            field,
            value: value.to_string(),
            expected,
        }
    }

    /// Reads a boolean the way Go's `strconv.ParseBool` (and so Dapr) does.
    pub fn get_bool(&self, name: &str, default: bool) -> Result<bool, MetadataError> {
        match self.get_non_empty(name) {
            None => Ok(default),
            Some(v) => parse_bool(v).ok_or_else(|| self.invalid(name, v, "a boolean")),
        }
    }

    pub fn get_u64(&self, name: &str, default: u64) -> Result<u64, MetadataError> {
        match self.get_non_empty(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| self.invalid(name, v, "a non-negative integer")),
        }
    }

    pub fn get_i64(&self, name: &str, default: i64) -> Result<i64, MetadataError> {
        match self.get_non_empty(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| self.invalid(name, v, "an integer")),
        }
    }

    /// Reads a duration written as a Go duration (`1m30s`, `500ms`) or as a bare number of
    /// `bare_unit` (Dapr components accept both, e.g. `processingTimeout: 60000` in ms).
    pub fn get_duration(
        &self,
        name: &str,
        bare_unit: Duration,
        default: Duration,
    ) -> Result<Duration, MetadataError> {
        match self.get_non_empty(name) {
            None => Ok(default),
            Some(v) => parse_duration_or_number(v, bare_unit)
                .ok_or_else(|| self.invalid(name, v, "a duration such as 5s or 500ms")),
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut md = Metadata::new();
        for (k, v) in iter {
            md.insert(k, v);
        }
        md
    }
}

pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// A Go duration (`300ms`, `1.5h`, `2h45m`, `-1s` is rejected) or a bare number in `bare_unit`.
pub fn parse_duration_or_number(value: &str, bare_unit: Duration) -> Option<Duration> {
    let value = value.trim();
    if let Ok(n) = value.parse::<u64>() {
        return bare_unit.checked_mul(u32::try_from(n).ok()?);
    }
    parse_go_duration(value)
}

/// Parses Go's `time.ParseDuration` syntax for non-negative durations.
pub fn parse_go_duration(value: &str) -> Option<Duration> {
    let s = value.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * unit;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Formats a duration the way Go's `Duration.String` does for the common cases (`5s`, `500ms`).
pub fn format_go_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    if d.subsec_nanos() == 0 {
        let secs = d.as_secs();
        let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
        return match (h, m) {
            (0, 0) => format!("{s}s"),
            (0, _) => format!("{m}m{s}s"),
            _ => format!("{h}h{m}m{s}s"),
        };
    }
    if d < Duration::from_secs(1) && d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{}ms", d.as_millis());
    }
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_insensitive() {
        let md: Metadata = [("redisHost", "localhost:6379")].into_iter().collect();
        assert_eq!(md.get("redishost"), Some("localhost:6379"));
        assert_eq!(md.get("REDISHOST"), Some("localhost:6379"));
        assert_eq!(md.iter().next(), Some(("redisHost", "localhost:6379")));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("5 s"), None);
        assert_eq!(parse_go_duration("-1s"), None);
        assert_eq!(parse_go_duration("abc"), None);
    }

    #[test]
    fn bare_numbers_use_the_given_unit() {
        let md: Metadata = [("processingTimeout", "60000"), ("bad", "soon")]
            .into_iter()
            .collect();
        let ms = Duration::from_millis(1);
        assert_eq!(
            md.get_duration("processingTimeout", ms, Duration::ZERO),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            md.get_duration("missing", ms, Duration::from_secs(3)),
            Ok(Duration::from_secs(3))
        );
        assert!(matches!(
            md.get_duration("BAD", ms, Duration::ZERO),
            Err(MetadataError::Invalid { field, .. }) if field == "bad"
        ));
    }

    #[test]
    fn booleans_follow_go() {
        let md: Metadata = [("a", "True"), ("b", "0"), ("c", "yes")]
            .into_iter()
            .collect();
        assert_eq!(md.get_bool("a", false), Ok(true));
        assert_eq!(md.get_bool("b", true), Ok(false));
        assert!(md.get_bool("c", false).is_err());
        assert_eq!(md.get_bool("d", true), Ok(true));
    }

    #[test]
    fn formats_durations() {
        assert_eq!(format_go_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_go_duration(Duration::from_secs(90)), "1m30s");
    }
}
