//! `list`, `stop`, `invoke` and `publish` through the real binary, under both the `tandem` and
//! the `dapr` name, against sidecars found in a private local registry directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde_json::{json, Value};
use tandem::naming::local_registry::{LocalRegistry, RegistryEntry};
use tandem_testkit::{eventually, free_port, http, Reply, ResourcesDir, Sidecar, TestApp};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tandem");

/// A private registry directory and a `dapr` symlink to the binary.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(BIN, dir.path().join("dapr")).unwrap();
        std::fs::create_dir_all(dir.path().join("registry")).unwrap();
        Self { dir }
    }

    fn registry_dir(&self) -> PathBuf {
        self.dir.path().join("registry")
    }

    fn registry(&self) -> LocalRegistry {
        LocalRegistry::at(self.registry_dir())
    }

    fn register(&self, app_id: &str, pid: u32, http_port: u16, app_port: Option<u16>) {
        self.registry()
            .register(&RegistryEntry {
                app_id: app_id.into(),
                pid,
                address: "127.0.0.1".into(),
                http_port,
                internal_port: free_port(),
                app_port,
                started_at: chrono_now(),
            })
            .unwrap();
    }

    /// Runs `<program> args...` where program is `tandem` or `dapr` (the symlink).
    async fn cli(&self, program: &str, args: &[&str]) -> Output {
        let exe: PathBuf = match program {
            "dapr" => self.dir.path().join("dapr"),
            _ => PathBuf::from(BIN),
        };
        let out = tokio::time::timeout(
            Duration::from_secs(90),
            Command::new(exe)
                .args(args)
                .env("TANDEM_REGISTRY_DIR", self.registry_dir())
                .env_remove("DAPR_API_TOKEN")
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .expect("the command finishes")
        .unwrap();
        Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

#[derive(Debug)]
struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn chrono_now() -> String {
    chrono::Utc::now().to_rfc3339()
}

async fn start_sidecar(app_id: &str, resources: &Path) -> Sidecar {
    let mut sidecar = Sidecar::builder(BIN)
        .app_id(app_id)
        .resources(resources)
        .start()
        .await;
    sidecar.wait_ready().await;
    sidecar
}

async fn put_metadata(sidecar: &Sidecar, key: &str, value: &str) {
    let r = http()
        .put(sidecar.url(&format!("/v1.0/metadata/{key}")))
        .body(value.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
}

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

#[tokio::test]
async fn list_shows_registered_sidecars_with_their_metadata() {
    let env = Env::new();
    let resources = ResourcesDir::new();
    let orders = start_sidecar("orders", resources.path()).await;
    let billing = start_sidecar("billing", resources.path()).await;
    put_metadata(&orders, "appCommand", "python3 orders.py").await;
    put_metadata(&orders, "cliPID", "4242").await;
    put_metadata(&orders, "appPID", "4343").await;
    env.register(
        "orders",
        orders.pid().unwrap(),
        orders.http_port,
        Some(7001),
    );
    env.register("billing", billing.pid().unwrap(), billing.http_port, None);

    for program in ["tandem", "dapr"] {
        let out = env.cli(program, &["list", "-o", "json"]).await;
        assert!(out.ok, "{out:?}");
        let list: Value = serde_json::from_str(&out.stdout).unwrap();
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 2, "{list:?}");
        let o = list.iter().find(|i| i["appId"] == "orders").unwrap();
        assert_eq!(o["httpPort"], orders.http_port);
        assert_eq!(o["appPort"], 7001);
        assert_eq!(o["command"], "python3 orders.py");
        assert_eq!(o["daprdPid"], orders.pid().unwrap());
        assert_eq!(o["cliPid"], 4242);
        assert_eq!(o["appPid"], 4343);
        let b = list.iter().find(|i| i["appId"] == "billing").unwrap();
        assert_eq!(b["appPort"], 0);
        assert_eq!(b["cliPid"], 0);
    }

    let out = env.cli("dapr", &["list"]).await;
    assert!(out.ok, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("APP ID"), "{}", out.stdout);
    for header in [
        "HTTP PORT",
        "GRPC PORT",
        "APP PORT",
        "COMMAND",
        "AGE",
        "CREATED",
        "DAPRD PID",
        "CLI PID",
        "APP PID",
    ] {
        assert!(lines[0].contains(header), "{header} in {}", lines[0]);
    }
    let row = lines.iter().find(|l| l.starts_with("orders")).unwrap();
    assert!(row.contains(&orders.http_port.to_string()));
    assert!(row.contains("python3 orders.py"));

    // A registered sidecar that is gone is not listed.
    drop(orders);
    let gone = eventually(Duration::from_secs(10), || async {
        let out = env.cli("tandem", &["list", "-o", "json"]).await;
        serde_json::from_str::<Value>(&out.stdout)
            .map(|v| v.as_array().map(Vec::len) == Some(1))
            .unwrap_or(false)
    })
    .await;
    assert!(gone);
}

#[tokio::test]
async fn list_without_sidecars() {
    let env = Env::new();
    let out = env.cli("dapr", &["list"]).await;
    assert!(out.ok);
    assert!(out.stdout.contains("No Dapr instances found."), "{out:?}");
    let out = env.cli("tandem", &["list", "-o", "json"]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).unwrap(),
        json!([])
    );
}

#[tokio::test]
async fn stop_signals_the_sidecar_or_the_cli_that_started_it() {
    let env = Env::new();
    let resources = ResourcesDir::new();

    // Without a CLI pid: the sidecar itself gets SIGTERM and shuts down cleanly.
    let mut lone = start_sidecar("lone", resources.path()).await;
    env.register("lone", lone.pid().unwrap(), lone.http_port, None);
    let out = env.cli("dapr", &["stop", "--app-id", "lone"]).await;
    assert!(out.ok, "{out:?}");
    assert!(out.stdout.contains("✅  app stopped successfully: lone"));
    let status = lone.wait().await;
    assert!(status.success(), "graceful exit after SIGTERM: {status}");

    // With a CLI pid: that process is signalled, the sidecar is left to it.
    let managed = start_sidecar("managed", resources.path()).await;
    let mut fake_cli = Command::new("sleep")
        .arg("600")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let cli_pid = fake_cli.id().unwrap();
    put_metadata(&managed, "cliPID", &cli_pid.to_string()).await;
    env.register("managed", managed.pid().unwrap(), managed.http_port, None);
    let out = env.cli("tandem", &["stop", "-a", "managed"]).await;
    assert!(out.ok, "{out:?}");
    let status = fake_cli.wait().await.unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15), "SIGTERM to the CLI");
    assert!(alive(managed.pid().unwrap()));

    // Unknown app id.
    let out = env.cli("dapr", &["stop", "--app-id", "nobody"]).await;
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("failed to stop app id nobody: couldn't find app id nobody"),
        "{out:?}"
    );
}

#[tokio::test]
async fn stop_in_a_multi_app_run_stops_one_app_or_the_whole_template() {
    let env = Env::new();
    let dir = env.dir.path();
    let apps = ["front", "middle", "back"];
    std::fs::create_dir_all(dir.join("resources")).unwrap();
    std::fs::create_dir_all(dir.join("home")).unwrap();
    let mut yaml = String::from("version: 1\ncommon:\n  resourcesPath: ./resources\napps:\n");
    let mut ports = Vec::new();
    for app in apps {
        std::fs::create_dir_all(dir.join(app)).unwrap();
        let port = free_port();
        ports.push(port);
        yaml.push_str(&format!(
            "  - appDirPath: {app}\n    daprHTTPPort: {port}\n    command: [\"sleep\", \"600\"]\n"
        ));
    }
    std::fs::write(dir.join("dapr.yaml"), yaml).unwrap();
    let mut run = Command::new(env.dir.path().join("dapr"))
        .args(["run", "-f", dir.to_str().unwrap()])
        .env("TANDEM_REGISTRY_DIR", env.registry_dir())
        .env("HOME", dir.join("home"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let run_pid = run.id().unwrap();
    // Wait until every sidecar carries the CLI's pid, then register them (sidecars that register
    // themselves simply overwrite the same entry).
    let mut sidecar_pids = Vec::new();
    let mut app_pids = Vec::new();
    for (app_id, port) in apps.iter().zip(&ports) {
        let meta_url = format!("http://127.0.0.1:{port}/v1.0/metadata");
        let ready = eventually(Duration::from_secs(60), || async {
            match http().get(&meta_url).send().await {
                Ok(r) => r.json::<Value>().await.is_ok_and(|m| {
                    m["extended"]["appPID"].is_string()
                        && m["extended"]["cliPID"].as_str() == Some(run_pid.to_string().as_str())
                }),
                Err(_) => false,
            }
        })
        .await;
        assert!(ready, "{app_id} started");
        let meta: Value = tandem_testkit::get_json(&meta_url).await;
        let app_pid: u32 = meta["extended"]["appPID"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        app_pids.push(app_pid);
        let sidecar_pid = children_with_arg(run_pid, app_id);
        sidecar_pids.push(sidecar_pid);
        env.register(app_id, sidecar_pid, *port, None);
    }
    let out = env.cli("tandem", &["list", "-o", "json"]).await;
    let list: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3);
    for item in list.as_array().unwrap() {
        assert_eq!(item["cliPid"], run_pid);
        assert_eq!(item["command"], "sleep 600");
        assert!(item["runTemplatePath"]
            .as_str()
            .unwrap()
            .ends_with("dapr.yaml"));
    }

    // One app of several: only its sidecar is stopped (and with it its app); the run goes on.
    let out = env.cli("dapr", &["stop", "--app-id", "front"]).await;
    assert!(out.ok, "{out:?}");
    assert!(
        eventually(Duration::from_secs(30), || async {
            !alive(sidecar_pids[0])
        })
        .await,
        "front's sidecar stopped"
    );
    assert!(
        eventually(Duration::from_secs(30), || async { !alive(app_pids[0]) }).await,
        "front's app stopped with it"
    );
    assert!(alive(sidecar_pids[1]) && alive(sidecar_pids[2]));
    assert!(alive(app_pids[1]) && alive(app_pids[2]));
    assert!(run.try_wait().unwrap().is_none(), "the run goes on");

    // The template: front is gone already; middle's sidecar, then the CLI for the last one.
    let out = env
        .cli(
            "dapr",
            &["stop", "-f", dir.join("dapr.yaml").to_str().unwrap()],
        )
        .await;
    assert!(!out.ok, "front is no longer running: {out:?}");
    assert!(out.stderr.contains("couldn't find app id front"), "{out:?}");
    assert!(out.stdout.contains("app stopped successfully: middle"));
    assert!(out.stdout.contains("app stopped successfully: back"));
    let status = tokio::time::timeout(Duration::from_secs(60), run.wait())
        .await
        .expect("run -f exits after stop")
        .unwrap();
    assert!(status.success(), "{status}");
    for pid in sidecar_pids.into_iter().chain(app_pids) {
        assert!(!alive(pid), "process {pid} still running");
    }
}

/// The pid of the child of `parent` whose command line contains `--app-id <app_id>`.
fn children_with_arg(parent: u32, app_id: &str) -> u32 {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, r)| r.split(' ').nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let words: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        if words
            .windows(2)
            .any(|w| w[0] == "--app-id" && w[1] == app_id)
        {
            return pid;
        }
    }
    panic!("no child of {parent} runs --app-id {app_id}");
}

/// A stand-in sidecar: records what the CLI sends to the app's sidecar API, so these tests check
/// the CLI's side of invoke and publish on their own.
async fn stand_in(env: &Env, app_id: &str, reply: fn(&str) -> Reply) -> TestApp {
    let app = TestApp::start(move |req| reply(req.path())).await;
    env.register(app_id, std::process::id(), app.port, None);
    app
}

#[tokio::test]
async fn invoke_calls_the_method_through_the_apps_sidecar() {
    let env = Env::new();
    let sidecar = stand_in(&env, "billing", |path| {
        if path.ends_with("/fail") {
            Reply::json(
                500,
                json!({"errorCode": "ERR_DIRECT_INVOKE", "message": "boom"}),
            )
        } else {
            Reply::json(200, json!({"paid": true}))
        }
    })
    .await;

    let out = env
        .cli(
            "dapr",
            &[
                "invoke",
                "--app-id",
                "billing",
                "--method",
                "orders/1",
                "--verb",
                "PUT",
                "--data",
                r#"{"amount":3}"#,
            ],
        )
        .await;
    assert!(out.ok, "{out:?}");
    assert!(out.stdout.contains(r#"{"paid":true}"#), "{out:?}");
    assert!(out.stdout.contains("✅  App invoked successfully"));
    let req = sidecar.requests().pop().unwrap();
    assert_eq!(req.method, "PUT");
    assert_eq!(req.uri, "/v1.0/invoke/billing/method/orders/1");
    assert_eq!(req.json(), json!({"amount": 3}));
    assert_eq!(req.header("content-type"), Some("application/json"));

    // POST is the default verb; --data-file supplies the body.
    let file = env.dir.path().join("body.json");
    std::fs::write(&file, r#"{"from":"file"}"#).unwrap();
    let out = env
        .cli(
            "tandem",
            &[
                "invoke",
                "-a",
                "billing",
                "-m",
                "charge",
                "--data-file",
                file.to_str().unwrap(),
            ],
        )
        .await;
    assert!(out.ok, "{out:?}");
    let req = sidecar.requests().pop().unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(req.json(), json!({"from": "file"}));

    // A failing method: non-zero exit, the error body on stderr.
    let out = env
        .cli(
            "dapr",
            &["invoke", "--app-id", "billing", "--method", "fail"],
        )
        .await;
    assert!(!out.ok);
    assert!(out.stderr.contains("error invoking app billing"), "{out:?}");
    assert!(out.stderr.contains("boom"), "{out:?}");
    assert!(!out.stdout.contains("App invoked successfully"));

    // An app nobody runs.
    let out = env
        .cli("dapr", &["invoke", "--app-id", "ghost", "--method", "x"])
        .await;
    assert!(!out.ok);
    assert!(out.stderr.contains("app ID ghost not found"), "{out:?}");
}

#[tokio::test]
async fn publish_posts_to_the_pubsub_api_of_the_apps_sidecar() {
    let env = Env::new();
    let sidecar = stand_in(&env, "checkout", |path| {
        if path.contains("/missing/") {
            Reply::json(
                404,
                json!({"errorCode": "ERR_PUBSUB_NOT_FOUND", "message": "pubsub missing is not found"}),
            )
        } else {
            Reply::status(204)
        }
    })
    .await;

    let out = env
        .cli(
            "dapr",
            &[
                "publish",
                "--publish-app-id",
                "checkout",
                "--pubsub",
                "orderpubsub",
                "--topic",
                "orders",
                "--data",
                r#"{"orderId":100}"#,
                "--metadata",
                r#"{"ttlInSeconds":"10"}"#,
            ],
        )
        .await;
    assert!(out.ok, "{out:?}");
    assert!(out.stdout.contains("✅  Event published successfully"));
    let req = sidecar.requests().pop().unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.uri,
        "/v1.0/publish/orderpubsub/orders?metadata.ttlInSeconds=10"
    );
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.json(), json!({"orderId": 100}));

    // A CloudEvent goes as application/cloudevents+json.
    let out = env
        .cli(
            "tandem",
            &[
                "publish",
                "-i",
                "checkout",
                "-p",
                "orderpubsub",
                "-t",
                "orders",
                "-d",
                r#"{"id":"1","specversion":"1.0","type":"t","source":"s","data":{}}"#,
            ],
        )
        .await;
    assert!(out.ok, "{out:?}");
    let req = sidecar.requests().pop().unwrap();
    assert_eq!(
        req.header("content-type"),
        Some("application/cloudevents+json")
    );

    let out = env
        .cli(
            "dapr",
            &[
                "publish",
                "--publish-app-id",
                "checkout",
                "--pubsub",
                "missing",
                "--topic",
                "t",
                "--data",
                "{}",
            ],
        )
        .await;
    assert!(!out.ok);
    assert!(out.stderr.contains("Error publishing topic t"), "{out:?}");
    assert!(out.stderr.contains("ERR_PUBSUB_NOT_FOUND"), "{out:?}");
}
