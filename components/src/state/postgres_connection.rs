//! Connection strings as Dapr users write them (pgx syntax) turned into what tokio-postgres reads:
//! `database` is libpq's `dbname`, and pgx's own pool and statement-cache options are dropped
//! (the store's pool has its own settings, `maxConns` and `timeout`). The TLS options
//! (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) are taken out for the store's TLS connector;
//! tokio-postgres gets an `sslmode` it knows.

use super::postgres_tls::{SslMode, SslSettings};
use crate::registry::BuildError;

/// pgx options that tokio-postgres does not know; they tune pgx's pool and caches.
const PGX_ONLY: &[&str] = &[
    "pool_max_conns",
    "pool_min_conns",
    "pool_min_idle_conns",
    "pool_max_conn_lifetime",
    "pool_max_conn_lifetime_jitter",
    "pool_max_conn_idle_time",
    "pool_health_check_period",
    "statement_cache_capacity",
    "description_cache_capacity",
    "default_query_exec_mode",
];

/// `None` drops the option; otherwise the (possibly renamed) key.
fn translate(key: &str) -> Option<&str> {
    match key {
        "database" => Some("dbname"),
        k if PGX_ONLY.contains(&k) => None,
        k => Some(k),
    }
}

/// The connection string for tokio-postgres, and the TLS settings it held.
pub fn normalize(conn: &str) -> Result<(String, SslSettings), BuildError> {
    let conn = conn.trim();
    let url = conn.starts_with("postgres://") || conn.starts_with("postgresql://");
    let params = if url {
        url_params(conn)
    } else {
        key_value_params(conn)
    };
    let mut ssl = SslSettings::default();
    let mut kept = Vec::with_capacity(params.len() + 1);
    let mut mode_given = false;
    for (key, value) in params {
        let text = || {
            let raw = value.as_deref().unwrap_or_default();
            if url {
                percent_decode(raw)
            } else {
                unquote(raw)
            }
        };
        match key.as_str() {
            "sslmode" => {
                ssl.mode = SslMode::parse(&text())?;
                mode_given = true;
            }
            "sslrootcert" => ssl.root_cert = Some(text()),
            "sslcert" => ssl.cert = Some(text()),
            "sslkey" => ssl.key = Some(text()),
            _ => kept.push((key, value)),
        }
    }
    if mode_given {
        kept.push(("sslmode".into(), Some(ssl.mode.for_driver().into())));
    }
    let pairs = kept.into_iter().map(|(k, v)| match v {
        Some(v) => format!("{k}={v}"),
        None => k,
    });
    let text = if url {
        let base = conn.split_once('?').map_or(conn, |(base, _)| base);
        let query: Vec<String> = pairs.collect();
        if query.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", query.join("&"))
        }
    } else {
        pairs.collect::<Vec<_>>().join(" ")
    };
    Ok((text, ssl))
}

/// The query parameters of a URL, renamed or dropped as [`translate`] says.
fn url_params(conn: &str) -> Vec<(String, Option<String>)> {
    let Some((_, query)) = conn.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            translate(key).map(|k| (k.to_string(), Some(value.to_string())))
        })
        .collect()
}

/// `%XX` escapes of a URL query value decoded.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A key-value form value without its single quotes and `\` escapes.
fn unquote(value: &str) -> String {
    let inner = value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .unwrap_or(value);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// `key=value` pairs separated by spaces; values may be single-quoted with `\` escapes. Values are
/// kept as written (quotes included); keys are renamed or dropped as [`translate`] says. A word
/// that is not a pair is kept (without a value) for tokio-postgres to report.
fn key_value_params(conn: &str) -> Vec<(String, Option<String>)> {
    let chars: Vec<char> = conn.chars().collect();
    let mut i = 0;
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    while i < chars.len() {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let key_start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[key_start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() || chars[i] != '=' {
            // Not a key=value pair; keep it for tokio-postgres to report.
            out.push((key, None));
            continue;
        }
        i += 1;
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let value_start = i;
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(chars.len());
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i = i.min(chars.len());
        }
        let value: String = chars[value_start..i].iter().collect();
        if let Some(k) = translate(&key) {
            out.push((k.to_string(), Some(value)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_form() {
        assert_eq!(
            text("host=localhost user=postgres password='a b\\'c' port=5432 connect_timeout=10 database=my_dapr pool_max_conns=8"),
            "host=localhost user=postgres password='a b\\'c' port=5432 connect_timeout=10 dbname=my_dapr"
        );
        assert_eq!(text("host = h  dbname = d"), "host=h dbname=d");
    }

    #[test]
    fn url_form() {
        assert_eq!(
            text("postgres://u:p@h:5432/db?sslmode=disable&pool_max_conns=10"),
            "postgres://u:p@h:5432/db?sslmode=disable"
        );
        assert_eq!(
            text("postgresql://h/db?pool_max_conns=10"),
            "postgresql://h/db"
        );
        assert_eq!(text("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn results_parse() {
        use std::str::FromStr;
        for s in [
            "host=localhost user=postgres password=example port=5432 connect_timeout=10 database=my_dapr",
            "postgres://u:p@h:5432/db?sslmode=disable&pool_max_conns=10",
        ] {
            tokio_postgres::Config::from_str(&text(s)).unwrap();
        }
    }

    fn text(conn: &str) -> String {
        normalize(conn).unwrap().0
    }

    #[test]
    fn tls_options_are_taken_out() {
        let (text, ssl) = normalize(
            "host=h sslmode=verify-full sslrootcert='/etc/my ca.pem' sslcert=/c.pem sslkey=/k.pem",
        )
        .unwrap();
        assert_eq!(text, "host=h sslmode=require");
        assert_eq!(
            ssl,
            SslSettings {
                mode: SslMode::VerifyFull,
                root_cert: Some("/etc/my ca.pem".into()),
                cert: Some("/c.pem".into()),
                key: Some("/k.pem".into()),
            }
        );
        let (text, ssl) =
            normalize("postgres://h/db?sslmode=verify-ca&sslrootcert=%2Fetc%2Fca.pem").unwrap();
        assert_eq!(text, "postgres://h/db?sslmode=require");
        assert_eq!(ssl.mode, SslMode::VerifyCa);
        assert_eq!(ssl.root_cert.as_deref(), Some("/etc/ca.pem"));
        let (_, ssl) = normalize("host=h").unwrap();
        assert_eq!(ssl.mode, SslMode::Prefer);
        let err = normalize("host=h sslmode=sometimes")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sometimes"), "{err}");
    }
}
