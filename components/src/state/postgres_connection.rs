//! Connection strings as Dapr users write them (pgx syntax) turned into what tokio-postgres reads:
//! `database` is libpq's `dbname`, and pgx's own pool and statement-cache options are dropped
//! (the store's pool has its own settings, `maxConns` and `timeout`).

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

pub fn normalize(conn: &str) -> String {
    let conn = conn.trim();
    if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        return normalize_url(conn);
    }
    normalize_key_values(conn)
}

fn normalize_url(conn: &str) -> String {
    let Some((base, query)) = conn.split_once('?') else {
        return conn.to_string();
    };
    let params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            translate(key).map(|k| format!("{k}={value}"))
        })
        .collect();
    if params.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", params.join("&"))
    }
}

/// `key=value` pairs separated by spaces; values may be single-quoted with `\` escapes. Values are
/// copied through unchanged.
fn normalize_key_values(conn: &str) -> String {
    let chars: Vec<char> = conn.chars().collect();
    let mut i = 0;
    let mut out: Vec<String> = Vec::new();
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
            out.push(key);
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
            out.push(format!("{k}={value}"));
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_form() {
        assert_eq!(
            normalize("host=localhost user=postgres password='a b\\'c' port=5432 connect_timeout=10 database=my_dapr pool_max_conns=8"),
            "host=localhost user=postgres password='a b\\'c' port=5432 connect_timeout=10 dbname=my_dapr"
        );
        assert_eq!(normalize("host = h  dbname = d"), "host=h dbname=d");
    }

    #[test]
    fn url_form() {
        assert_eq!(
            normalize("postgres://u:p@h:5432/db?sslmode=disable&pool_max_conns=10"),
            "postgres://u:p@h:5432/db?sslmode=disable"
        );
        assert_eq!(
            normalize("postgresql://h/db?pool_max_conns=10"),
            "postgresql://h/db"
        );
        assert_eq!(normalize("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn results_parse() {
        use std::str::FromStr;
        for s in [
            "host=localhost user=postgres password=example port=5432 connect_timeout=10 database=my_dapr",
            "postgres://u:p@h:5432/db?sslmode=disable&pool_max_conns=10",
        ] {
            tokio_postgres::Config::from_str(&normalize(s)).unwrap();
        }
    }
}
