//! Hostile and broken peers: clear errors within connection_timeout, never a hang.

use std::time::{Duration, Instant};

use tether::{AttemptCause, ConnectError, ConnectOptions, DisconnectReason, HandshakeError, State};
use tether_testkit::{closed_port, Hostile, HostilePeer, NatsServer, ServerConfig};

const TIMEOUT: Duration = Duration::from_millis(800);

/// Connecting to `url` fails: the error's text, the one attempt's cause, and how long it
/// took.
async fn connect_err(url: &str) -> (String, AttemptCause, Duration) {
    let start = Instant::now();
    let err = ConnectOptions::new()
        .connection_timeout(TIMEOUT)
        .connect(url)
        .await
        .expect_err("connecting to a broken peer must fail");
    let elapsed = start.elapsed();
    (err.to_string(), only_cause(&err).clone(), elapsed)
}

/// The cause of the one attempt of an `AllFailed`.
fn only_cause(err: &ConnectError) -> &AttemptCause {
    match err {
        ConnectError::AllFailed { attempts } if attempts.len() == 1 => &attempts[0].error,
        other => panic!("expected AllFailed with one attempt, got {other:?}"),
    }
}

/// A handshake that timed out.
fn timed_out(cause: &AttemptCause) -> bool {
    matches!(
        cause,
        AttemptCause::Handshake(HandshakeError::Timeout { .. })
    )
}

#[tokio::test]
async fn closed_port_is_refused() {
    let (e, cause, elapsed) = connect_err(&format!("nats://127.0.0.1:{}", closed_port())).await;
    assert!(
        e.contains("127.0.0.1") && e.to_lowercase().contains("refused"),
        "{e}"
    );
    assert!(
        matches!(&cause, AttemptCause::Dial(d) if d.is_refused()),
        "{cause:?}"
    );
    assert!(elapsed < TIMEOUT);
}

#[tokio::test]
async fn silent_peer_times_out_within_connection_timeout() {
    let peer = HostilePeer::start(Hostile::Silent).unwrap();
    let (e, cause, elapsed) = connect_err(&peer.url()).await;
    assert!(e.contains("timed out") && e.contains("INFO"), "{e}");
    assert!(timed_out(&cause), "{cause:?}");
    assert!(
        elapsed >= TIMEOUT && elapsed < TIMEOUT + Duration::from_millis(500),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn half_info_times_out() {
    let peer = HostilePeer::start(Hostile::HalfInfo).unwrap();
    let (e, cause, elapsed) = connect_err(&peer.url()).await;
    assert!(e.contains("timed out"), "{e}");
    assert!(timed_out(&cause), "{cause:?}");
    assert!(
        elapsed < TIMEOUT + Duration::from_millis(500),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn http_server_is_not_nats() {
    let peer = HostilePeer::start(Hostile::Http).unwrap();
    let (e, cause, _) = connect_err(&peer.url()).await;
    assert!(e.contains("not a NATS server") && e.contains("HTTP"), "{e}");
    assert!(
        matches!(
            cause,
            AttemptCause::Handshake(HandshakeError::NotNats { .. })
        ),
        "{cause:?}"
    );
}

#[tokio::test]
async fn garbage_before_info_is_not_nats() {
    let peer = HostilePeer::start(Hostile::Garbage(b"\x00\x01garbage\r\n".to_vec())).unwrap();
    let (e, cause, _) = connect_err(&peer.url()).await;
    assert!(e.contains("not a NATS server"), "{e}");
    assert!(
        matches!(
            cause,
            AttemptCause::Handshake(HandshakeError::NotNats { .. })
        ),
        "{cause:?}"
    );
}

#[tokio::test]
async fn no_pong_peer_times_out_after_connect() {
    let peer = HostilePeer::start(Hostile::NoPong).unwrap();
    let (e, cause, elapsed) = connect_err(&peer.url()).await;
    assert!(e.contains("PONG"), "{e}");
    assert!(timed_out(&cause), "{cause:?}");
    assert!(elapsed < TIMEOUT + Duration::from_millis(500));
}

#[tokio::test]
async fn garbage_after_handshake_is_a_protocol_error_event() {
    const GARBAGE: &[u8] = b"MSG foo notanumber 3\r\nabc\r\n";
    // Right behind the last PONG of the handshake: the connect fails, naming it.
    let peer = HostilePeer::start(Hostile::Dialogue(vec![(
        "PING".into(),
        [&b"PONG\r\nPONG\r\n"[..], GARBAGE].concat(),
    )]))
    .unwrap();
    let err = ConnectOptions::new()
        .allow_reconnect(false)
        .connection_timeout(TIMEOUT)
        .connect(peer.url())
        .await
        .unwrap_err();
    // The handshake completed; what followed it ended the link.
    assert!(
        matches!(
            only_cause(&err),
            AttemptCause::LinkLost(DisconnectReason::Protocol(_))
        ),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(
        err.contains("protocol error") && err.contains("notanumber"),
        "{err}"
    );
    // On a live link (after the client's first SUB): Disconnected and Closed name it.
    let peer = HostilePeer::start(Hostile::Dialogue(vec![
        ("PING".into(), b"PONG\r\nPONG\r\n".to_vec()),
        ("SUB ".into(), GARBAGE.to_vec()),
    ]))
    .unwrap();
    let client = ConnectOptions::new()
        .allow_reconnect(false)
        .connection_timeout(TIMEOUT)
        .connect(peer.url())
        .await
        .unwrap();
    let mut events = client.events();
    let _sub = client.subscribe("foo").await.unwrap();
    let (mut disconnected, mut closed) = (None, None);
    while closed.is_none() {
        match tokio::time::timeout(
            Duration::from_secs(5),
            futures_util::StreamExt::next(&mut events),
        )
        .await
        .expect("the link drops and the client closes")
        .expect("events end only after Closed")
        .kind
        {
            tether::EventKind::Disconnected { reason, .. } => disconnected = Some(reason),
            tether::EventKind::Closed { reason, .. } => closed = Some(reason),
            _ => {}
        }
    }
    let disconnected = disconnected.expect("a Disconnected before Closed");
    assert!(
        matches!(disconnected, tether::DisconnectReason::Protocol(_)),
        "{disconnected:?}"
    );
    let text = disconnected.to_string();
    assert!(
        text.contains("protocol error") && text.contains("notanumber"),
        "{text}"
    );
    let closed = closed.expect("Closed");
    assert_eq!(closed, tether::ClosedReason::Disconnected(disconnected));
    assert!(closed.to_string().contains("protocol error"), "{closed}");
    assert_eq!(client.status(), State::Closed);
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
        .unwrap_err();
    assert!(
        matches!(
            only_cause(&err),
            AttemptCause::Handshake(HandshakeError::Protocol(_))
        ),
        "{err:?}"
    );
    let err = err.to_string();
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
        .unwrap_err();
    assert!(only_cause(&err).is_auth(), "{err:?}");
    let err = err.to_string();
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
        .ping_interval(Duration::from_secs(7))
        .connect("nats://127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Options(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("max_pings_outstanding = 0") && text.contains("ping_interval = 7s"),
        "{text}"
    );
    // Each contradiction names both values and what to change.
    for (opts, first, second) in [
        (
            ConnectOptions::new()
                .overflow(tether::OverflowPolicy::Block)
                .buffer_while_disconnected(false),
            "overflow = Block",
            "buffer_while_disconnected = false",
        ),
        (
            ConnectOptions::new()
                .outbound_buffer(1000, 10)
                .assumed_max_payload(2000),
            "outbound_buffer bytes = 1000",
            "assumed_max_payload = 2000",
        ),
    ] {
        let text = opts.validate().unwrap_err().to_string();
        assert!(text.contains(first) && text.contains(second), "{text}");
        let fix = text.rsplit(": ").next().unwrap_or_default();
        assert!(fix.len() > 10, "says what to change: {text}");
    }
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
        .unwrap_err();
    let cause = only_cause(&err);
    assert!(
        matches!(cause, AttemptCause::Credentials(_)) && cause.is_auth(),
        "{cause:?}"
    );
    let err = err.to_string();
    assert!(err.contains("/nonexistent/tether-test.creds"), "{err}");
}

#[tokio::test]
async fn every_server_tried_is_listed() {
    let a = closed_port();
    let b = closed_port();
    let err = ConnectOptions::new()
        .connect(format!("nats://127.0.0.1:{a},nats://127.0.0.1:{b}"))
        .await
        .unwrap_err();
    let ConnectError::AllFailed { attempts } = &err else {
        panic!("expected AllFailed, got {err:?}");
    };
    assert_eq!(attempts.len(), 2, "{err:?}");
    assert!(
        attempts
            .iter()
            .all(|t| matches!(&t.error, AttemptCause::Dial(d) if d.is_refused())),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(
        err.contains(&a.to_string()) && err.contains(&b.to_string()),
        "{err}"
    );
}
