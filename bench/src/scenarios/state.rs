//! Scenario 3, state: GET and SET of a 1 KB value through the sidecar (in-memory and Redis
//! stores) at the profile's fixed rate, against GET and SET of the same value from a direct Redis
//! client on the same redis-server; and a 1,000-key bulk get through the sidecar against one MGET
//! of 1,000 keys.

use bytes::Bytes;
use http::Method;

use super::{
    component_yaml, json_string_payload, probe, resources_dir, Ctx, ScenarioError, Series, PAYLOAD,
};
use crate::loadgen::{self, Body, HttpOp, Operation, RedisOp};
use crate::processes::{local, Managed};
use crate::report::{ComparisonKind, Figure, ScenarioReport, Target};

pub const NAME: &str = "3. state";
const BULK_KEYS: usize = 1000;

pub async fn run(ctx: &mut Ctx) -> ScenarioReport {
    inner(ctx).await.unwrap_or_else(|e| e.into_report(NAME))
}

struct StoreOps {
    sidecar: Managed,
    get: Operation,
    set: Operation,
    bulk: Operation,
}

fn post_json(port: u16, path: String, body: String) -> Operation {
    Operation::Http(
        HttpOp::new(local(port), Method::POST, path)
            .body("application/json", Body::Fixed(Bytes::from(body))),
    )
}

async fn start_store(
    ctx: &Ctx,
    label: &str,
    component_type: &str,
    metadata: &[(&str, &str)],
) -> Result<StoreOps, ScenarioError> {
    let store = format!("bench-{label}");
    let dir = resources_dir(
        ctx,
        &format!("state-{label}"),
        &component_yaml(&store, component_type, metadata),
    )?;
    let (sidecar, port) = ctx
        .sidecar(&format!("bench-state-{label}"), None, Some(&dir))
        .await?;
    let value = json_string_payload(PAYLOAD);
    let set = post_json(
        port,
        format!("/v1.0/state/{store}"),
        format!("[{{\"key\":\"bench-key\",\"value\":{value}}}]"),
    );
    probe(&set, &format!("POST /v1.0/state/{store}")).await?;
    let get = Operation::Http(HttpOp::new(
        local(port),
        Method::GET,
        format!("/v1.0/state/{store}/bench-key"),
    ));
    let got = probe(&get, &format!("GET /v1.0/state/{store}/bench-key")).await?;
    if got.len() < PAYLOAD {
        return Err(ScenarioError::Unavailable(format!(
            "GET /v1.0/state/{store}/bench-key answered {} bytes after a {PAYLOAD}-byte SET",
            got.len()
        )));
    }
    let items: Vec<String> = (0..BULK_KEYS)
        .map(|i| format!("{{\"key\":\"bulk-{i}\",\"value\":{value}}}"))
        .collect();
    let seed = post_json(
        port,
        format!("/v1.0/state/{store}"),
        format!("[{}]", items.join(",")),
    );
    probe(
        &seed,
        &format!("POST /v1.0/state/{store} ({BULK_KEYS} items)"),
    )
    .await?;
    let keys: Vec<String> = (0..BULK_KEYS).map(|i| format!("\"bulk-{i}\"")).collect();
    let bulk = post_json(
        port,
        format!("/v1.0/state/{store}/bulk"),
        format!("{{\"keys\":[{}]}}", keys.join(",")),
    );
    let answer = probe(&bulk, &format!("POST /v1.0/state/{store}/bulk")).await?;
    let n = serde_json::from_slice::<Vec<serde_json::Value>>(&answer)
        .map(|v| v.iter().filter(|i| i.get("data").is_some()).count())
        .unwrap_or(0);
    if n != BULK_KEYS {
        return Err(ScenarioError::Unavailable(format!(
            "POST /v1.0/state/{store}/bulk returned {n} items with data, not {BULK_KEYS}"
        )));
    }
    Ok(StoreOps {
        sidecar,
        get,
        set,
        bulk,
    })
}

async fn inner(ctx: &mut Ctx) -> Result<ScenarioReport, ScenarioError> {
    let redis_port = ctx.redis_port().await?;
    let url = format!("redis://127.0.0.1:{redis_port}/");
    let value = json_string_payload(PAYLOAD);
    let direct_set = RedisOp::new(
        &url,
        redis::cmd("SET").arg("bench-raw-key").arg(&value).clone(),
    );
    let direct_get = RedisOp::new(&url, redis::cmd("GET").arg("bench-raw-key").clone());
    let twice_set = Operation::Redis(direct_set.twice());
    let twice_get = Operation::Redis(direct_get.twice());
    let direct_set = Operation::Redis(direct_set);
    let direct_get = Operation::Redis(direct_get);
    loadgen::call_once(&direct_set).await?;
    let mut mset = redis::cmd("MSET");
    let mut mget = redis::cmd("MGET");
    for i in 0..BULK_KEYS {
        mset.arg(format!("bench-raw-bulk-{i}")).arg(&value);
        mget.arg(format!("bench-raw-bulk-{i}"));
    }
    loadgen::call_once(&Operation::Redis(RedisOp::new(&url, mset))).await?;
    let direct_bulk = Operation::Redis(RedisOp::new(&url, mget));

    let host = format!("127.0.0.1:{redis_port}");
    let stores = [
        ("in-memory", "memory", "state.in-memory", vec![]),
        (
            "Redis",
            "redis",
            "state.redis",
            vec![("redisHost", host.as_str()), ("redisPassword", "")],
        ),
    ];
    let mut started = Vec::new();
    for (title, label, component_type, metadata) in &stores {
        let ops = match start_store(ctx, label, component_type, metadata).await {
            Ok(ops) => Ok(ops),
            Err(ScenarioError::Unavailable(reason)) => Err(reason),
            Err(e) => return Err(e),
        };
        started.push((*title, ops));
    }

    let mut s = Series::default();
    for _ in 0..ctx.profile.reps {
        for (op_name, direct, twice) in [
            ("GET", &direct_get, &twice_get),
            ("SET", &direct_set, &twice_set),
        ] {
            let redis = [("redis", ctx.redis_pid().unwrap_or(0), false)];
            let prefix = format!("direct_{op_name}_");
            let r = ctx.open_with_usage(direct, &redis, &mut s, &prefix).await?;
            s.push(&format!("direct_{op_name}_p50"), r.quantile_ms(0.5));
            s.push(&format!("direct_{op_name}_p99"), r.quantile_ms(0.99));
            let r = ctx.open_at(twice, ctx.profile.rate).await?;
            s.push(&format!("twice_{op_name}_p50"), r.quantile_ms(0.5));
            for (title, ops) in &started {
                if let Ok(ops) = ops {
                    let op = if op_name == "GET" { &ops.get } else { &ops.set };
                    let sidecar = [("sidecar", ops.sidecar.pid, false)];
                    let prefix = format!("{title}_{op_name}_");
                    let r = ctx.open_with_usage(op, &sidecar, &mut s, &prefix).await?;
                    s.push(&format!("{title}_{op_name}_p50"), r.quantile_ms(0.5));
                    s.push(&format!("{title}_{op_name}_p99"), r.quantile_ms(0.99));
                }
            }
        }
        let r = ctx.open_at(&direct_bulk, ctx.profile.bulk_rate).await?;
        s.push("direct_bulk_p50", r.quantile_ms(0.5));
        for (title, ops) in &started {
            if let Ok(ops) = ops {
                let r = ctx.open_at(&ops.bulk, ctx.profile.bulk_rate).await?;
                s.push(&format!("{title}_bulk_p50"), r.quantile_ms(0.5));
            }
        }
    }

    let mut report = ScenarioReport::new(NAME);
    let rate = format!("{:.0} rps", ctx.profile.rate);
    for (title, ops) in &started {
        for op_name in ["GET", "SET"] {
            for q in ["p50", "p99"] {
                let t = s.get(&format!("{title}_{op_name}_{q}")).to_vec();
                let d = s.get(&format!("direct_{op_name}_{q}"));
                let mut f =
                    Figure::new(format!("{op_name} 1 KB {q} at {rate}, {title} store"), "ms")
                        .tandem(&t)
                        .against(
                            &format!("direct Redis {op_name}"),
                            &t,
                            d,
                            ComparisonKind::Difference,
                        );
                if q == "p50" {
                    f = f.target(Target::ComparisonAtMost { limit: 0.05 }, "≤ +50 µs");
                }
                if op_name == "GET" {
                    f = f.dapr(if q == "p50" {
                        "+0.28 ms (v1.17, HTTP)"
                    } else {
                        "+0.98 ms (v1.17, HTTP)"
                    });
                }
                if let Err(reason) = ops {
                    f = f.unavailable(reason);
                }
                report.push(f);
            }
            if *title == "Redis" {
                // The structural floor: whatever a sidecar does, it adds one Redis round trip
                // to the client's own round trip to the sidecar.
                let t = s.get(&format!("{title}_{op_name}_p50")).to_vec();
                let mut f = Figure::new(
                    format!("{op_name} 1 KB p50 at {rate}, {title} store, vs one more round trip"),
                    "ms",
                )
                .tandem(&t)
                .against(
                    &format!("two sequential direct {op_name}s"),
                    &t,
                    s.get(&format!("twice_{op_name}_p50")),
                    ComparisonKind::Difference,
                );
                if let Err(reason) = ops {
                    f = f.unavailable(reason);
                }
                report.push(f);
            }
        }
        for op_name in ["GET", "SET"] {
            let t = s
                .get(&format!("{title}_{op_name}_sidecar_cpu_per_1k"))
                .to_vec();
            let b = s.get(&format!("direct_{op_name}_redis_cpu_per_1k"));
            let mut f = Figure::new(
                format!("sidecar CPU per 1,000 {op_name}s, {title} store"),
                "CPU s",
            )
            .tandem(&t)
            .against(
                &format!("redis-server per 1,000 direct {op_name}s"),
                &t,
                b,
                ComparisonKind::Ratio,
            );
            if op_name == "GET" {
                f = f.dapr("57 mCPU at 1,000 QPS (v1.17, HTTP)");
            }
            if let Err(reason) = ops {
                f = f.unavailable(reason);
            }
            report.push(f);
        }
        let mut f = Figure::new(format!("sidecar RSS after the runs, {title} store"), "MB")
            .tandem(s.get(&format!("{title}_SET_sidecar_rss")))
            .dapr("48 MB (v1.17, HTTP GET)");
        if let Err(reason) = ops {
            f = f.unavailable(reason);
        }
        report.push(f);
        let t = s.get(&format!("{title}_bulk_p50")).to_vec();
        let mut f = Figure::new(
            format!("bulk get of {BULK_KEYS} keys p50, {title} store"),
            "ms",
        )
        .tandem(&t)
        .against(
            "one MGET of 1,000 keys",
            &t,
            s.get("direct_bulk_p50"),
            ComparisonKind::Ratio,
        )
        .target(Target::ComparisonAtMost { limit: 2.0 }, "≤ 2×");
        if let Err(reason) = ops {
            f = f.unavailable(reason);
        }
        report.push(f);
    }
    for (title, ops) in &started {
        if let Err(reason) = ops {
            report.mark_unavailable(format!("{title} store: {reason}"));
        }
    }
    report.notes.push(format!(
        "single-key operations open loop at {rate}, bulk gets at {:.0} per second; the direct client is the redis crate (one multiplexed connection per generator connection) on the same redis-server; \"two sequential direct GETs/SETs\" sends the command again after each reply: the client's cost of one more Redis round trip, which a sidecar in front of Redis adds at the least",
        ctx.profile.bulk_rate
    ));
    Ok(report)
}
