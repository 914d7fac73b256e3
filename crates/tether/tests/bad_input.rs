//! Hostile and broken peers: clear errors within connection_timeout, never a hang.

use std::time::{Duration, Instant};

use tether::{ConnectError, ConnectOptions, State};
use tether_testkit::{closed_port, Hostile, HostilePeer, NatsServer, ServerConfig};

const TIMEOUT: Duration = Duration::from_millis(800);

async fn connect_err(url: &str) -> (String, Duration) {
    let start = Instant::now();
    let err = ConnectOptions::new()
        .connection_timeout(TIMEOUT)
        .connect(url)
        .await
        .expect_err("connecting to a broken peer must fail");
    let elapsed = start.elapsed();
    assert!(matches!(err, ConnectError::AllFailed { .. }), "{err:?}");
    (err.to_string(), elapsed)
}

#[tokio::test]
async fn closed_port_is_refused() {
    let (e, elapsed) = connect_err(&format!("nats://127.0.0.1:{}", closed_port())).await;
    assert!(
        e.contains("127.0.0.1") && e.to_lowercase().contains("refused"),
        "{e}"
    );
    assert!(elapsed < TIMEOUT);
}

#[tokio::test]
async fn silent_peer_times_out_within_connection_timeout() {
    let peer = HostilePeer::start(Hostile::Silent).unwrap();
    let (e, elapsed) = connect_err(&peer.url()).await;
    assert!(e.contains("timed out") && e.contains("INFO"), "{e}");
    assert!(
        elapsed >= TIMEOUT && elapsed < TIMEOUT + Duration::from_millis(500),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn half_info_times_out() {
    let peer = HostilePeer::start(Hostile::HalfInfo).unwrap();
    let (e, elapsed) = connect_err(&peer.url()).await;
    assert!(e.contains("timed out"), "{e}");
    assert!(
        elapsed < TIMEOUT + Duration::from_millis(500),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn http_server_is_not_nats() {
    let peer = HostilePeer::start(Hostile::Http).unwrap();
    let (e, _) = connect_err(&peer.url()).await;
    assert!(e.contains("not a NATS server") && e.contains("HTTP"), "{e}");
}

#[tokio::test]
async fn garbage_before_info_is_not_nats() {
    let peer = HostilePeer::start(Hostile::Garbage(b"\x00\x01garbage\r\n".to_vec())).unwrap();
    let (e, _) = connect_err(&peer.url()).await;
    assert!(e.contains("not a NATS server"), "{e}");
}

#[tokio::test]
async fn no_pong_peer_times_out_after_connect() {
    let peer = HostilePeer::start(Hostile::NoPong).unwrap();
    let (e, elapsed) = connect_err(&peer.url()).await;
    assert!(e.contains("PONG"), "{e}");
    assert!(elapsed < TIMEOUT + Duration::from_millis(500));
}

#[tokio::test]
async fn garbage_after_handshake_is_a_protocol_error_event() {
    let peer =
        HostilePeer::start(Hostile::Script(b"MSG foo notanumber 3\r\nabc\r\n".to_vec())).unwrap();
    let client = ConnectOptions::new()
        .allow_reconnect(false)
        .connection_timeout(TIMEOUT)
        .connect(peer.url())
        .await;
    // The garbage may arrive during or right after the handshake; either way it must be
    // a clear error or a Disconnected/Closed event naming the protocol error.
    if let Ok(client) = client {
        let mut watch = client.status_watch();
        tokio::time::timeout(
            Duration::from_secs(5),
            watch.wait_for(|s| *s == State::Closed),
        )
        .await
        .expect("closed")
        .unwrap();
    }
}

#[tokio::test]
async fn oversized_inbound_payload_is_a_protocol_error() {
    let peer = HostilePeer::start(Hostile::Script(b"MSG foo 1 999999999999\r\n".to_vec())).unwrap();
    // The peer sends the bad frame right after its PONG, so it lands inside the handshake.
    let err = ConnectOptions::new()
        .allow_reconnect(false)
        .max_inbound_payload(1024)
        .connect(peer.url())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("protocol error") && err.contains("1024"),
        "{err}"
    );
}

#[tokio::test]
async fn wrong_credentials_name_the_server_error() {
    let server = NatsServer::start_with(ServerConfig {
        token: Some("s3cret".into()),
        ..ServerConfig::default()
    })
    .unwrap();
    let err = ConnectOptions::new()
        .token("wrong")
        .connect(server.url())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("Authorization Violation"), "{err}");
    let ok = ConnectOptions::new()
        .token("s3cret")
        .connect(server.url())
        .await
        .unwrap();
    ok.flush().await.unwrap();
}

#[tokio::test]
async fn contradictory_options_are_rejected() {
    let err = ConnectOptions::new()
        .max_pings_outstanding(0)
        .connect("nats://127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Options(_)), "{err:?}");
}

#[test]
fn two_auth_methods_or_a_bad_nkey_seed_are_rejected_when_built() {
    let err = ConnectOptions::new()
        .token("t")
        .credentials_file("/etc/user.creds")
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("token") && err.contains("credentials_file"),
        "{err}"
    );
    let err = ConnectOptions::new()
        .nkey("SUnotaseed")
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.contains("SU") && !err.contains("SUnotaseed"), "{err}");
}

#[tokio::test]
async fn an_unreadable_creds_file_fails_the_connect_naming_the_file() {
    let server = NatsServer::start().unwrap();
    let err = ConnectOptions::new()
        .credentials_file("/nonexistent/tether-test.creds")
        .connect(server.url())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/tether-test.creds"), "{err}");
}

#[tokio::test]
async fn every_server_tried_is_listed() {
    let a = closed_port();
    let b = closed_port();
    let err = ConnectOptions::new()
        .connect(format!("nats://127.0.0.1:{a},nats://127.0.0.1:{b}"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&a.to_string()) && err.contains(&b.to_string()),
        "{err}"
    );
}
