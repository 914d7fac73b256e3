//! Nkey and JWT authentication against real servers, and the JWT refresh of semantics 13.

mod common;
use common::{next_event, T};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tether::{
    AttemptCause, AuthErrorClass, ConnectError, ConnectOptions, DisconnectReason, EventKind,
    HandshakeError, ServerErr, State,
};
use tether_testkit::{nkey_user, NatsServer, Operator, ServerConfig};

async fn round_trip(client: &tether::Client, sub: &mut tether::Subscriber, subject: &str) {
    client.publish(subject, "ping").await.unwrap();
    let m = tokio::time::timeout(T, sub.next())
        .await
        .expect("no delivery within T")
        .expect("subscription ended");
    assert_eq!(&m.payload[..], b"ping");
}

/// Connecting with `options` to `url` fails: the server refused the credentials, which
/// the attempt's cause says as a type, and the error's text names the refusal.
async fn assert_refused(options: ConnectOptions, url: &str) {
    let err = options.connect(url).await.unwrap_err();
    assert!(err.to_string().contains("Authorization Violation"), "{err}");
    let ConnectError::AllFailed { attempts } = &err else {
        panic!("expected AllFailed, got {err:?}");
    };
    assert_eq!(attempts.len(), 1, "{err:?}");
    let cause = &attempts[0].error;
    assert_eq!(
        cause,
        &AttemptCause::Handshake(HandshakeError::Server(ServerErr::AuthViolation))
    );
    assert!(cause.is_auth());
    assert_eq!(cause.auth_class(), Some(AuthErrorClass::Strike));
}

/// The next of `Migrated` and `Disconnected` is `Migrated`: a planned switch, with no
/// disconnect first. Returns its unconfirmed messages.
async fn next_migrated(events: &mut tether::Events) -> u64 {
    match next_event(events, |e| {
        matches!(
            e,
            EventKind::Migrated { .. } | EventKind::Disconnected { .. }
        )
    })
    .await
    {
        EventKind::Migrated {
            unconfirmed_msgs, ..
        } => unconfirmed_msgs,
        other => panic!("expected Migrated (a planned switch), got {other:?}"),
    }
}

/// A server in operator mode and where its users' creds file goes.
fn operator_server() -> (Operator, NatsServer, std::path::PathBuf) {
    let op = Operator::new();
    let server = NatsServer::start_with(ServerConfig::default().with_operator(&op)).unwrap();
    let path = server.dir().join("user.creds");
    (op, server, path)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_auth_connects_and_another_key_is_refused_by_name() {
    let user = nkey_user();
    let server = NatsServer::start_with(ServerConfig {
        nkey_users: vec![user.public_key.clone()],
        ..ServerConfig::default()
    })
    .unwrap();
    let client = ConnectOptions::new()
        .nkey(user.seed.clone())
        .connect(server.url())
        .await
        .unwrap();
    let mut sub = client.subscribe("nkey.t").await.unwrap();
    round_trip(&client, &mut sub, "nkey.t").await;

    assert_refused(ConnectOptions::new().nkey(nkey_user().seed), &server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_auth_failure_by_type() {
    let server = NatsServer::start_with(ServerConfig {
        user: Some(("app".into(), "pw".into())),
        ..ServerConfig::default()
    })
    .unwrap();
    assert_refused(
        ConnectOptions::new().user_and_password("app", "wrong"),
        &server.url(),
    )
    .await;
    // Nothing listening: a dial failure, not an auth failure.
    let closed = format!("nats://127.0.0.1:{}", tether_testkit::closed_port());
    let err = ConnectOptions::new().connect(closed).await.unwrap_err();
    let ConnectError::AllFailed { attempts } = &err else {
        panic!("expected AllFailed, got {err:?}");
    };
    assert!(
        attempts.iter().all(
            |a| matches!(&a.error, AttemptCause::Dial(d) if d.is_refused()) && !a.error.is_auth()
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creds_file_authenticates_in_operator_mode() {
    let (op, server, path) = operator_server();
    op.user("alice", None).write_to(&path).unwrap();
    let client = ConnectOptions::new()
        .credentials_file(&path)
        .connect(server.url())
        .await
        .unwrap();
    let mut sub = client.subscribe("jwt.t").await.unwrap();
    round_trip(&client, &mut sub, "jwt.t").await;

    // Without credentials the same server refuses, and says so.
    assert_refused(ConnectOptions::new(), &server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_near_expiry_moves_to_fresher_credentials_without_a_disconnect() {
    let (op, server, path) = operator_server();
    let first = op.user("alice", Some(Duration::from_secs(6)));
    first.write_to(&path).unwrap();
    let client = ConnectOptions::new()
        .credentials_file(&path)
        .jwt_refresh_lead(Duration::from_secs(4))
        .connect(server.url())
        .await
        .unwrap();
    let mut events = client.events();
    let mut sub = client.subscribe("jwt.refresh").await.unwrap();
    client.flush().await.unwrap();
    // The file is rotated before the refresh lead starts (about 2 s from now).
    op.user("alice", Some(Duration::from_secs(120)))
        .write_to(&path)
        .unwrap();

    assert_eq!(next_migrated(&mut events).await, 0);
    // The first JWT's expiry passes: the server would end a link that still used it.
    let past = first.expires_at.unwrap() + 2;
    while unix_now() <= past {
        if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), events.next()).await {
            assert!(
                !matches!(
                    e.kind,
                    EventKind::Disconnected { .. } | EventKind::Closed { .. }
                ),
                "link lost after the refresh: {e:?}"
            );
        }
    }
    assert_eq!(client.status(), State::Connected);
    assert_eq!(client.statistics().reconnects, 0);
    round_trip(&client, &mut sub, "jwt.refresh").await;
}

/// The first CredentialsExpiring of a client whose JWT expires in `life` and is refreshed
/// `lead` ahead, with no fresher file at that time.
async fn expiring_client(
    op: &Operator,
    server: &NatsServer,
    path: &std::path::Path,
    life: Duration,
    lead: Duration,
) -> (tether::Client, tether::Events, tether::Subscriber) {
    op.user("bob", Some(life)).write_to(path).unwrap();
    let client = ConnectOptions::new()
        .credentials_file(path)
        .jwt_refresh_lead(lead)
        .reconnect_wait(Duration::from_millis(300))
        .connect(server.url())
        .await
        .unwrap();
    let mut events = client.events();
    let sub = client.subscribe("jwt.expire").await.unwrap();
    client.flush().await.unwrap();
    match next_event(&mut events, |e| {
        matches!(
            e,
            EventKind::CredentialsExpiring { .. } | EventKind::Migrated { .. }
        )
    })
    .await
    {
        EventKind::CredentialsExpiring {
            expires_in, reason, ..
        } => {
            assert!(expires_in <= life, "{expires_in:?}");
            assert!(reason.contains("no later"), "{reason}");
        }
        other => panic!("expected CredentialsExpiring, got {other:?}"),
    }
    (client, events, sub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creds_file_rotated_after_credentials_expiring_is_used_before_expiry() {
    // B22: CredentialsExpiring is not final for the link: the file keeps being read, and
    // a fresher JWT written afterwards still moves the client before the old one expires.
    let (op, server, path) = operator_server();
    let (client, mut events, mut sub) = expiring_client(
        &op,
        &server,
        &path,
        Duration::from_secs(5),
        Duration::from_secs(4),
    )
    .await;
    op.user("bob", Some(Duration::from_secs(120)))
        .write_to(&path)
        .unwrap();
    next_migrated(&mut events).await; // before the expiry
    assert_eq!(client.status(), State::Connected);
    assert_eq!(client.statistics().reconnects, 0);
    round_trip(&client, &mut sub, "jwt.expire").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_jwt_refused_at_connect_keeps_retrying_until_fresh_credentials_appear() {
    // With no fresher file the server ends the link at expiry; the reconnect reads the
    // file again at once, the server refuses the expired JWT with a plain Authorization
    // Violation. S6: those refusals are never strikes (the only server would otherwise
    // leave the pool and the client close for good): the client retries at its backoff,
    // says so once, and connects as soon as a fresh file is there.
    let (op, server, path) = operator_server();
    let (client, mut events, mut sub) = expiring_client(
        &op,
        &server,
        &path,
        Duration::from_secs(3),
        Duration::from_secs(2),
    )
    .await;
    match next_event(&mut events, |e| matches!(e, EventKind::Disconnected { .. })).await {
        EventKind::Disconnected { reason, .. } => {
            assert_eq!(
                reason,
                DisconnectReason::ServerError(ServerErr::AuthExpired),
                "{reason}"
            );
        }
        _ => unreachable!(),
    }
    match next_event(&mut events, |e| {
        matches!(
            e,
            EventKind::CredentialsExpired { .. } | EventKind::Closed { .. }
        )
    })
    .await
    {
        EventKind::CredentialsExpired { expired_for, .. } => {
            assert!(expired_for < Duration::from_secs(30), "{expired_for:?}");
        }
        other => panic!("expected CredentialsExpired, got {other:?}"),
    }
    // Several refusals, well past two strikes at reconnect_wait (300 ms) apart.
    let mut refused = 0;
    while refused < 4 {
        match next_event(&mut events, |e| {
            matches!(
                e,
                EventKind::ReconnectFailed { .. }
                    | EventKind::ServersChanged { .. }
                    | EventKind::Closed { .. }
            )
        })
        .await
        {
            EventKind::ReconnectFailed { error, .. } => {
                // The server says either, depending on when it checks the expiry.
                assert!(
                    matches!(
                        error.server_err(),
                        Some(ServerErr::AuthViolation | ServerErr::AuthExpired)
                    ),
                    "{error:?}"
                );
                assert!(error.is_auth(), "{error:?}");
                refused += 1;
            }
            other => panic!("the server must stay in the pool: {other:?}"),
        }
    }
    assert_eq!(client.status(), State::Reconnecting);
    op.user("bob", Some(Duration::from_secs(120)))
        .write_to(&path)
        .unwrap();
    match next_event(&mut events, |e| {
        matches!(e, EventKind::Reconnected { .. } | EventKind::Closed { .. })
    })
    .await
    {
        EventKind::Reconnected { .. } => {}
        other => panic!("expected Reconnected, got {other:?}"),
    }
    round_trip(&client, &mut sub, "jwt.expire").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_that_change_between_attempts_are_not_two_strikes() {
    let (op, mut server, path) = operator_server();
    let stranger = Operator::new();
    op.user("carol", None).write_to(&path).unwrap();
    let client = ConnectOptions::new()
        .credentials_file(&path)
        // Room to rotate the file between attempts (a strike waits reconnect_wait).
        .reconnect_wait(Duration::from_secs(1))
        .connect(server.url())
        .await
        .unwrap();
    let mut events = client.events();
    // Credentials the server does not trust, then other ones it does not trust either,
    // then good ones: each refusal is against different credentials.
    stranger.user("x", None).write_to(&path).unwrap();
    server.kill();
    server.restart().unwrap();
    let mut refused = 0;
    loop {
        match next_event(&mut events, |e| {
            matches!(
                e,
                EventKind::ReconnectFailed { .. }
                    | EventKind::Reconnected { .. }
                    | EventKind::Closed { .. }
            )
        })
        .await
        {
            EventKind::ReconnectFailed { error, .. }
                if error.auth_class() == Some(AuthErrorClass::Strike) =>
            {
                refused += 1;
                let next = if refused == 1 {
                    stranger.user("y", None)
                } else {
                    op.user("carol", None)
                };
                next.write_to(&path).unwrap();
            }
            EventKind::ReconnectFailed { .. } => {}
            EventKind::Reconnected { .. } => break,
            other => panic!("the server was removed after {refused} refusals: {other:?}"),
        }
    }
    assert!(refused >= 2, "{refused}");
    assert_eq!(client.status(), State::Connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creds_file_that_blocks_on_read_never_stalls_the_connection() {
    // B23: the credentials are read again ahead of the JWT's expiry. Here the file is a
    // FIFO with no writer, so the read blocks until the test writes it: meanwhile the
    // connection must keep working (no file read under the lock or on the driver).
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (op, server, path) = operator_server();
    op.user("bob", Some(Duration::from_secs(8)))
        .write_to(&path)
        .unwrap();
    let client = ConnectOptions::new()
        .credentials_file(&path)
        .jwt_refresh_lead(Duration::from_secs(7))
        .connect(server.url())
        .await
        .unwrap();
    let mut events = client.events();
    let mut sub = client.subscribe("jwt.fifo").await.unwrap();
    let fifo = server.dir().join("creds.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::rename(&fifo, &path).unwrap();
    // Wait until the client's read has opened the FIFO: a non-blocking open for writing
    // succeeds only once a reader is there (O_NONBLOCK; ENXIO before).
    const O_NONBLOCK: i32 = 0o4000;
    let deadline = std::time::Instant::now() + T;
    let mut writer = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(O_NONBLOCK)
            .open(&path)
        {
            Ok(w) => break w,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("the client never read the credentials again: {e}"),
        }
    };
    // The read now blocks on the empty FIFO. The connection works regardless.
    tokio::time::timeout(
        Duration::from_secs(2),
        round_trip(&client, &mut sub, "jwt.fifo"),
    )
    .await
    .expect("a round trip while the credentials read blocks");
    let c = client.clone();
    let stats = tokio::task::spawn_blocking(move || c.statistics());
    tokio::time::timeout(Duration::from_secs(2), stats)
        .await
        .expect("statistics() is not held up by the read")
        .unwrap();
    // Fresher credentials: the path gets a regular file (for the new link's handshake),
    // and the pending read gets them too; the client moves with no disconnect.
    let fresh = op.user("bob", Some(Duration::from_secs(120)));
    fresh.write_to(&path).unwrap();
    writer.write_all(fresh.creds_text().as_bytes()).unwrap();
    drop(writer);
    next_migrated(&mut events).await;
    round_trip(&client, &mut sub, "jwt.fifo").await;
}
