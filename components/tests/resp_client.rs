//! The lean Redis client against a private redis-server: replies in order, scripts the server
//! has forgotten, a restarted server, more callers than connections, and a server that hangs.

use std::sync::Arc;
use std::time::Duration;

use tandem_components::resp::{
    Commands, ConnectSettings, Pool, RespError, RetryPolicy, Script, Value,
};
use tandem_testkit::RedisServer;

fn settings(port: u16) -> ConnectSettings {
    ConnectSettings {
        host: "127.0.0.1".into(),
        port,
        username: None,
        password: None,
        db: 0,
        tls: None,
        dial_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
    }
}

const RETRY: RetryPolicy = RetryPolicy {
    max_retries: 3,
    min_interval: Duration::from_millis(10),
    max_interval: Duration::from_millis(100),
};

#[tokio::test]
async fn pipelined_commands_get_their_own_replies_in_order() {
    let server = RedisServer::start().await;
    let pool = Pool::connect(settings(server.port), RETRY, 2)
        .await
        .unwrap();
    let big = vec![b'x'; 300_000];
    let mut commands = Commands::new();
    commands
        .push(&[&"SET", &"k", &big])
        .push(&[&"GET", &"k"])
        .push(&[&"HGET", &"k", &"f"])
        .push(&[&"GET", &"missing"])
        .push(&[&"INCR", &"n"]);
    let replies = pool.query(&commands).await.unwrap();
    assert_eq!(replies.len(), 5);
    assert_eq!(replies[0], Value::Status("OK".into()));
    assert_eq!(replies[1].as_bytes(), Some(&big[..]));
    assert_eq!(replies[2].error_code(), Some("WRONGTYPE"));
    assert_eq!(replies[3], Value::Nil);
    assert_eq!(replies[4], Value::Int(1));
}

#[tokio::test]
async fn a_script_the_server_forgot_is_sent_again_whole() {
    let server = RedisServer::start().await;
    let pool = Pool::connect(settings(server.port), RETRY, 1)
        .await
        .unwrap();
    let script = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let first = pool.run_script(&script, &[b"n"], &[b"2"]).await.unwrap();
    assert_eq!(first, Value::Int(2));
    pool.query_one(&[&"SCRIPT", &"FLUSH"]).await.unwrap();
    let again = pool.run_script(&script, &[b"n"], &[b"3"]).await.unwrap();
    assert_eq!(again, Value::Int(5));
}

#[tokio::test]
async fn calls_after_a_server_restart_succeed_on_new_connections() {
    let mut server = RedisServer::start().await;
    let pool = Pool::connect(settings(server.port), RETRY, 4)
        .await
        .unwrap();
    // Several idle connections, all closed by the restart.
    let calls = (0..4).map(|_| pool.query_one(&[&"PING"]));
    for reply in futures_util::future::join_all(calls).await {
        assert_eq!(reply.unwrap(), Value::Status("PONG".into()));
    }
    server.restart().await;
    assert_eq!(
        pool.query_one(&[&"PING"]).await.unwrap(),
        Value::Status("PONG".into())
    );
}

#[tokio::test]
async fn more_callers_than_connections_wait_their_turn() {
    let server = RedisServer::start().await;
    let pool = Arc::new(
        Pool::connect(settings(server.port), RETRY, 2)
            .await
            .unwrap(),
    );
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.query_one(&[&"INCR", &"n"]).await })
        })
        .collect();
    for task in tasks {
        assert!(matches!(task.await.unwrap(), Ok(Value::Int(_))));
    }
    assert_eq!(
        pool.query_one(&[&"GET", &"n"]).await.unwrap().as_int(),
        Some(50)
    );
}

#[tokio::test]
async fn a_server_that_stops_answering_times_out_and_one_that_is_gone_fails_to_connect() {
    // A listener that accepts and never answers (the PING every new connection sends waits).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut quick = settings(port);
    quick.read_timeout = Duration::from_millis(200);
    let no_retry = RetryPolicy {
        max_retries: 0,
        ..RETRY
    };
    let err = Pool::connect(quick, no_retry, 1)
        .await
        .err()
        .expect("no answer");
    assert!(matches!(err, RespError::Timeout(_)), "{err}");
    drop(silent);
    let err = Pool::connect(settings(port), no_retry, 1)
        .await
        .err()
        .expect("nothing listens");
    assert!(matches!(err, RespError::Connect { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test]
async fn a_wrong_password_is_refused_at_connect() {
    let server = RedisServer::start().await;
    let mut wrong = settings(server.port);
    wrong.password = Some("nope".into());
    let err = Pool::connect(wrong, RETRY, 1).await.err().expect("refused");
    assert!(matches!(err, RespError::Handshake(_)), "{err}");
}
