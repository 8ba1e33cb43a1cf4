//! Starting `tandem injector` for a test and waiting until it listens.

use std::ffi::OsString;
use std::time::Duration;

/// Runs the binary with `args` (and `env`) until the returned child is dropped; panics if
/// nothing listens on `port` within 20 s.
pub async fn start(
    binary: &str,
    args: &[OsString],
    env: &[(String, String)],
    port: u16,
) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(binary);
    command
        .args(args)
        .envs(env.iter().cloned())
        .kill_on_drop(true);
    if std::env::var_os("TANDEM_TEST_LOGS").is_none() {
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
    }
    let child = command.spawn().expect("spawn tandem injector");
    let up = tandem_testkit::eventually(Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "the injector listens on {port} with {args:?}");
    child
}
