//! `state.postgresql` over TLS. A TLS-terminating proxy in front of the local PostgreSQL answers
//! the protocol's SSLRequest and relays the decrypted session, so the server needs no TLS set-up
//! and the test controls the certificate the client sees.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tandem_components::registry::{self, BuildContext, BuildError, Component};
use tandem_components::state::{GetRequest, SetRequest, StateStore};
use tandem_components::Metadata;
use tandem_testkit::{PostgresDb, TestCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// PostgreSQL's SSLRequest: length 8, then the code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

/// Writes `ca`'s certificate to a file in `dir` and returns its path.
fn write_ca(ca: &TestCa, dir: &std::path::Path, name: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, ca.pem()).unwrap();
    path.display().to_string()
}

/// The proxy's port and how many TLS sessions it relayed.
struct TlsProxy {
    port: u16,
    sessions: Arc<AtomicUsize>,
}

async fn tls_proxy(config: rustls::ServerConfig) -> TlsProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sessions = Arc::new(AtomicUsize::new(0));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let counter = sessions.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 8];
                if socket.read_exact(&mut request).await.is_err() || request != SSL_REQUEST {
                    return; // only TLS sessions are relayed
                }
                if socket.write_all(b"S").await.is_err() {
                    return;
                }
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut server) = TcpStream::connect("127.0.0.1:5432").await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                }
            });
        }
    });
    TlsProxy { port, sessions }
}

async fn build(connection_string: String) -> Result<Arc<dyn StateStore>, BuildError> {
    let metadata: Metadata = [
        ("connectionString".to_string(), connection_string),
        ("timeout".to_string(), "5s".to_string()),
    ]
    .into_iter()
    .collect();
    let ctx = BuildContext {
        name: "store".into(),
        app_id: "app".into(),
        namespace: None,
    };
    match registry::build("state.postgresql", "v1", metadata, ctx).await? {
        Component::State(store) => Ok(store),
        _ => panic!("not a state store"),
    }
}

async fn round_trip(store: &dyn StateStore) {
    store
        .set(SetRequest {
            key: "tls".into(),
            value: bytes::Bytes::from_static(br#"{"secure":true}"#),
            ..Default::default()
        })
        .await
        .unwrap();
    let item = store
        .get(GetRequest {
            key: "tls".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .expect("saved");
    assert_eq!(&item.data[..], br#"{"secure":true}"#);
}

#[tokio::test]
async fn sslmodes_encrypt_and_verify_as_libpq_does() {
    let db = PostgresDb::create();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("postgres test ca");
    let root = write_ca(&ca, dir.path(), "root.crt");
    let other_root = write_ca(&TestCa::new("other ca"), dir.path(), "other.crt");
    // One server whose certificate names the address the client dials, one that names another.
    let named = tls_proxy(ca.server_config(&["127.0.0.1"], None)).await;
    let misnamed = tls_proxy(ca.server_config(&["db.example"], None)).await;
    let conn = |port: u16, tls: &str| {
        format!(
            "host=127.0.0.1 port={port} user=postgres dbname={} {tls}",
            db.name
        )
    };

    // require: encrypted, the certificate not checked (libpq's behaviour).
    round_trip(
        build(conn(misnamed.port, "sslmode=require"))
            .await
            .unwrap()
            .as_ref(),
    )
    .await;
    assert!(misnamed.sessions.load(Ordering::SeqCst) > 0);

    // verify-ca: the chain is checked, the name is not.
    let verify_ca = format!("sslmode=verify-ca sslrootcert={root}");
    round_trip(
        build(conn(misnamed.port, &verify_ca))
            .await
            .unwrap()
            .as_ref(),
    )
    .await;

    // verify-full: chain and name.
    let verify_full = format!("sslmode=verify-full sslrootcert={root}");
    round_trip(
        build(conn(named.port, &verify_full))
            .await
            .unwrap()
            .as_ref(),
    )
    .await;
    let wrong_name = build(conn(misnamed.port, &verify_full))
        .await
        .err()
        .expect("refused");
    assert!(
        wrong_name.to_string().contains("certificate"),
        "{wrong_name}"
    );
    let untrusted = format!("sslmode=verify-full sslrootcert={other_root}");
    let wrong_ca = build(conn(named.port, &untrusted))
        .await
        .err()
        .expect("refused");
    assert!(wrong_ca.to_string().contains("certificate"), "{wrong_ca}");

    // The same settings in URL form, with an escaped path.
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=verify-full&sslrootcert={}",
        named.port,
        db.name,
        root.replace('/', "%2F")
    );
    round_trip(build(url).await.unwrap().as_ref()).await;

    // A server that wants a client certificate: sslcert and sslkey give one.
    let strict = tls_proxy(ca.server_config(&["127.0.0.1"], Some(&ca))).await;
    ca.issue_files(&["tandem-client"], dir.path(), "client");
    let cert_path = dir.path().join("client.crt");
    let key_path = dir.path().join("client.key");
    let identity = format!(
        "{verify_full} sslcert={} sslkey={}",
        cert_path.display(),
        key_path.display()
    );
    round_trip(build(conn(strict.port, &identity)).await.unwrap().as_ref()).await;
    assert!(build(conn(strict.port, &verify_full)).await.is_err());
}
