//! The remaining authentication against real servers: token and user/password over TLS
//! (from options and from the URL, and inherited by discovered servers), the credentials
//! callback, and the server's revocation and account expiry.

mod common;
use common::{next_event, T};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use tether::{
    AttemptCause, AuthErrorClass, AuthFailurePolicy, ClosedReason, ConnectError, ConnectOptions,
    Credentials, DisconnectReason, EventKind, HandshakeError, ServerErr, State,
};
use tether_testkit::{
    nkey_user, NatsCluster, NatsServer, Operator, ServerConfig, TlsCerts, UserCreds,
};

async fn round_trip(client: &tether::Client, subject: &str) {
    let mut sub = client.subscribe(subject).await.unwrap();
    client.publish(subject, "ping").await.unwrap();
    let m = tokio::time::timeout(T, sub.next())
        .await
        .expect("no delivery within T")
        .expect("subscription ended");
    assert_eq!(&m.payload[..], b"ping");
}

/// A server with `cfg` and TLS on its client port, and the certificates.
fn tls_server(cfg: ServerConfig) -> (Arc<TlsCerts>, NatsServer) {
    let certs = TlsCerts::new().unwrap();
    let server = NatsServer::start_with(cfg.with_tls(&certs)).unwrap();
    assert!(server.url().starts_with("tls://"), "{}", server.url());
    (certs, server)
}

/// Options that trust the test CA.
fn trusting(certs: &TlsCerts) -> ConnectOptions {
    ConnectOptions::new().tls_ca_file(certs.ca_file())
}

/// `tls://HOST:PORT` with `userinfo@` in front of the host.
fn with_userinfo(url: &str, userinfo: &str) -> String {
    let rest = url.strip_prefix("tls://").expect("a tls:// URL");
    format!("tls://{userinfo}@{rest}")
}

/// Connecting fails: the server refused the credentials (one attempt, an
/// `Authorization Violation` by type, a strike), the error's text says so, and the
/// refused `secret` appears nowhere in it.
async fn assert_refused(options: ConnectOptions, url: &str, secret: &str) {
    let err = options.connect(url).await.unwrap_err();
    let text = err.to_string();
    // It names the server and says what the server refused, and why.
    let addr = url.rsplit('@').next().unwrap().trim_start_matches("tls://");
    assert!(text.contains(addr), "{text}");
    assert!(
        text.contains("server refused the connection: Authorization Violation"),
        "{text}"
    );
    assert!(!text.contains(secret), "the secret leaks: {text}");
    assert!(
        !format!("{err:?}").contains(secret),
        "the secret leaks: {err:?}"
    );
    let ConnectError::AllFailed { attempts } = &err else {
        panic!("expected AllFailed, got {err:?}");
    };
    assert_eq!(attempts.len(), 1, "{err:?}");
    assert_eq!(
        attempts[0].error,
        AttemptCause::Handshake(HandshakeError::Server(ServerErr::AuthViolation))
    );
    assert_eq!(attempts[0].error.auth_class(), Some(AuthErrorClass::Strike));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_tls_from_options_or_from_the_url() {
    let (certs, server) = tls_server(ServerConfig {
        token: Some("t0ken-ok".into()),
        ..ServerConfig::default()
    });
    let url = server.url();

    let client = trusting(&certs)
        .token("t0ken-ok")
        .connect(&url)
        .await
        .unwrap();
    round_trip(&client, "tok.opt").await;
    let client = trusting(&certs)
        .connect(with_userinfo(&url, "t0ken-ok"))
        .await
        .unwrap();
    round_trip(&client, "tok.url").await;
    // The server sees TLS links (its /connz lists a TLS version for each).
    let connz = server.connz().unwrap();
    let conns = connz["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 2, "{connz}");
    assert!(
        conns.iter().all(|c| c["tls_version"].is_string()),
        "{connz}"
    );

    assert_refused(trusting(&certs).token("t0ken-bad"), &url, "t0ken-bad").await;
    assert_refused(
        trusting(&certs),
        &with_userinfo(&url, "t0ken-bad"),
        "t0ken-bad",
    )
    .await;
    // No token at all is refused the same way.
    assert_refused(trusting(&certs), &url, "t0ken-ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_and_password_over_tls_from_options_or_from_the_url() {
    let (certs, server) = tls_server(ServerConfig {
        user: Some(("app".into(), "pw-ok".into())),
        ..ServerConfig::default()
    });
    let url = server.url();

    let client = trusting(&certs)
        .user_and_password("app", "pw-ok")
        .connect(&url)
        .await
        .unwrap();
    round_trip(&client, "up.opt").await;
    let client = trusting(&certs)
        .connect(with_userinfo(&url, "app:pw-ok"))
        .await
        .unwrap();
    round_trip(&client, "up.url").await;
    let connz = server.monitor("/connz?auth=true").unwrap();
    let conns = connz["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 2, "{connz}");
    for c in conns {
        assert_eq!(c["authorized_user"], "app", "{connz}");
        assert!(c["tls_version"].is_string(), "{connz}");
    }

    assert_refused(
        trusting(&certs).user_and_password("app", "pw-bad"),
        &url,
        "pw-bad",
    )
    .await;
    assert_refused(
        trusting(&certs),
        &with_userinfo(&url, "app:pw-bad"),
        "pw-bad",
    )
    .await;
    assert_refused(
        trusting(&certs),
        &with_userinfo(&url, "other:pw-ok"),
        "pw-ok",
    )
    .await;
}

/// The connections (`/connz?state=STATE&auth=true`) that came from this client library
/// (CONNECT `lang` "rust"), leaving out the testkit's readiness probes.
fn tether_conns(server: &NatsServer, state: &str) -> Vec<serde_json::Value> {
    let connz = server
        .monitor(&format!("/connz?state={state}&auth=true"))
        .unwrap();
    connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["lang"] == "rust")
        .cloned()
        .collect()
}

/// The port of a `scheme://[userinfo@]host:port` server name.
fn port_of(server: &str) -> u16 {
    server
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {server}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_tls_nodes_inherit_the_url_credentials() {
    // The client knows one node, through a URL with credentials in it. The nodes it
    // learns from INFO come as bare `127.0.0.1:PORT`: reaching one after its node dies
    // takes TLS and the user and password of that URL.
    let certs = TlsCerts::new().unwrap();
    let mut cluster = NatsCluster::start_with(
        3,
        ServerConfig {
            user: Some(("app".into(), "pw-cluster".into())),
            ..ServerConfig::default()
        }
        .with_tls(&certs),
    )
    .unwrap();
    let urls = cluster.urls();
    let client = trusting(&certs)
        .reconnect_wait(Duration::from_millis(100))
        .connect(with_userinfo(&urls[0], "app:pw-cluster"))
        .await
        .unwrap();
    let mut events = client.events();
    common::wait_discovered(&client, 3).await;
    let node0 = port_of(&urls[0]);
    assert_eq!(port_of(&client.connected_server().unwrap()), node0);
    // The pool shows no credentials.
    for s in client.servers() {
        assert!(!s.contains("pw-cluster"), "{s}");
    }

    cluster.kill(0);
    let server = match next_event(&mut events, |e| {
        matches!(e, EventKind::Reconnected { .. } | EventKind::Closed { .. })
    })
    .await
    {
        EventKind::Reconnected { server, .. } => server,
        other => panic!("expected Reconnected, got {other:?}"),
    };
    let now = port_of(&server);
    assert_ne!(now, node0, "{server}");
    assert!(
        [port_of(&urls[1]), port_of(&urls[2])].contains(&now),
        "{server} is none of {urls:?}"
    );
    round_trip(&client, "inherit.t").await;
    // The node took it as the configured user, over TLS.
    let i = if now == port_of(&urls[1]) { 1 } else { 2 };
    let connz = cluster.node(i).monitor("/connz?auth=true").unwrap();
    let conns = connz["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1, "{connz}");
    assert_eq!(conns[0]["authorized_user"], "app", "{connz}");
    assert!(conns[0]["tls_version"].is_string(), "{connz}");
}

// ---------------------------------------------------------------------------------------
// The credentials callback.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credentials_callback_answers_each_kind_of_credentials() {
    // User and password, over TLS.
    let (certs, server) = tls_server(ServerConfig {
        user: Some(("svc".into(), "from-vault".into())),
        ..ServerConfig::default()
    });
    let client = trusting(&certs)
        .credentials_callback(|| async {
            Ok::<_, std::io::Error>(Credentials::user_and_password("svc", "from-vault"))
        })
        .connect(server.url())
        .await
        .unwrap();
    round_trip(&client, "cb.up").await;
    assert_refused(
        trusting(&certs).credentials_callback(|| async {
            Ok::<_, std::io::Error>(Credentials::user_and_password("svc", "stale-secret"))
        }),
        &server.url(),
        "stale-secret",
    )
    .await;

    // A token.
    let server = NatsServer::start_with(ServerConfig {
        token: Some("tok-from-vault".into()),
        ..ServerConfig::default()
    })
    .unwrap();
    let client = ConnectOptions::new()
        .credentials_callback(|| async {
            Ok::<_, std::io::Error>(Credentials::token("tok-from-vault"))
        })
        .connect(server.url())
        .await
        .unwrap();
    round_trip(&client, "cb.tok").await;

    // An nkey seed.
    let user = nkey_user();
    let server = NatsServer::start_with(ServerConfig {
        nkey_users: vec![user.public_key.clone()],
        ..ServerConfig::default()
    })
    .unwrap();
    let seed = user.seed.clone();
    let client = ConnectOptions::new()
        .credentials_callback(move || {
            let seed = seed.clone();
            async move { Ok::<_, std::io::Error>(Credentials::nkey(seed)) }
        })
        .connect(server.url())
        .await
        .unwrap();
    round_trip(&client, "cb.nkey").await;

    // A user JWT and its seed, and the same as a `.creds` text.
    let op = Operator::new();
    let server = NatsServer::start_with(ServerConfig::default().with_operator(&op)).unwrap();
    let alice = op.user("alice", None);
    let a = alice.clone();
    let client = ConnectOptions::new()
        .credentials_callback(move || {
            let a = a.clone();
            async move { Ok::<_, std::io::Error>(Credentials::jwt(a.jwt, a.seed)) }
        })
        .connect(server.url())
        .await
        .unwrap();
    round_trip(&client, "cb.jwt").await;
    let text = op.user("bob", None).creds_text();
    let client = ConnectOptions::new()
        .credentials_callback(move || {
            let text = text.clone();
            async move { Ok::<_, std::io::Error>(Credentials::creds(text)) }
        })
        .connect(server.url())
        .await
        .unwrap();
    round_trip(&client, "cb.creds").await;
    let connz = server.monitor("/connz?auth=true").unwrap();
    let users: Vec<&str> = connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["authorized_user"].as_str())
        .collect();
    assert!(users.contains(&alice.public_key.as_str()), "{connz}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credentials_callback_is_called_at_every_attempt_and_its_new_answer_used() {
    let mut server = NatsServer::start_with(ServerConfig {
        user: Some(("svc".into(), "pw-1".into())),
        ..ServerConfig::default()
    })
    .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let password = Arc::new(Mutex::new("pw-1".to_owned()));
    let (c, p) = (calls.clone(), password.clone());
    let client = ConnectOptions::new()
        // Room to change the answer between two attempts.
        .reconnect_wait(Duration::from_millis(500))
        .credentials_callback(move || {
            c.fetch_add(1, Ordering::SeqCst);
            let pw = p.lock().unwrap().clone();
            async move { Ok::<_, std::io::Error>(Credentials::user_and_password("svc", pw)) }
        })
        .connect(server.url())
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let mut events = client.events();
    client.flush().await.unwrap();

    // The password changes on the server; the callback still answers the old one until
    // the server refuses it, then the new one.
    server.kill();
    server.config_mut().user = Some(("svc".into(), "pw-2".into()));
    server.restart().unwrap();
    let mut failed = 0;
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
            EventKind::ReconnectFailed { error, .. } => {
                failed += 1;
                if error.server_err() == Some(&ServerErr::AuthViolation) {
                    refused += 1;
                    *password.lock().unwrap() = "pw-2".to_owned();
                }
            }
            EventKind::Reconnected { .. } => break,
            other => panic!("expected a reconnect, got {other:?}"),
        }
    }
    assert_eq!(refused, 1, "the new answer was not used at once");
    // One call for the first connect, one per failed attempt, one for the reconnect.
    assert_eq!(calls.load(Ordering::SeqCst), 1 + failed + 1);
    assert_eq!(client.status(), State::Connected);
    round_trip(&client, "cb.rotate").await;
    let connz = server.monitor("/connz?auth=true").unwrap();
    assert_eq!(connz["connections"][0]["authorized_user"], "svc", "{connz}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credentials_callback_is_asked_again_ahead_of_the_jwt_expiry() {
    // The JWT refresh asks the callback too: a fresher JWT in its answer moves the client
    // before the first one expires, with no disconnect.
    let op = Operator::new();
    let server = NatsServer::start_with(ServerConfig::default().with_operator(&op)).unwrap();
    let current = Arc::new(Mutex::new(op.user("dave", Some(Duration::from_secs(6)))));
    let calls = Arc::new(AtomicUsize::new(0));
    let (c, cur) = (calls.clone(), current.clone());
    let client = ConnectOptions::new()
        .jwt_refresh_lead(Duration::from_secs(4))
        .credentials_callback(move || {
            c.fetch_add(1, Ordering::SeqCst);
            let u = cur.lock().unwrap().clone();
            async move { Ok::<_, std::io::Error>(Credentials::jwt(u.jwt, u.seed)) }
        })
        .connect(server.url())
        .await
        .unwrap();
    let mut events = client.events();
    client.flush().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Before the refresh lead starts (about 2 s from now), the secret store has a
    // fresher JWT.
    let fresh = op.user("dave", Some(Duration::from_secs(120)));
    *current.lock().unwrap() = fresh.clone();
    match next_event(&mut events, |e| {
        matches!(
            e,
            EventKind::Migrated { .. } | EventKind::Disconnected { .. } | EventKind::Closed { .. }
        )
    })
    .await
    {
        EventKind::Migrated {
            unconfirmed_msgs, ..
        } => assert_eq!(unconfirmed_msgs, 0),
        other => panic!("expected Migrated (a planned switch), got {other:?}"),
    }
    assert!(calls.load(Ordering::SeqCst) >= 2);
    assert_eq!(client.statistics().reconnects, 0);
    round_trip(&client, "cb.refresh").await;
    // The live link is the fresh JWT's user.
    let live = tether_conns(&server, "open");
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(
        live[0]["authorized_user"],
        fresh.public_key.as_str(),
        "{live:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_credentials_callback_fails_the_attempt_with_its_text() {
    let server = NatsServer::start_with(ServerConfig {
        token: Some("tok".into()),
        ..ServerConfig::default()
    })
    .unwrap();
    let err = ConnectOptions::new()
        .credentials_callback(|| async {
            Err::<Credentials, _>("the vault is sealed (svc/nats)".to_owned())
        })
        .connect(server.url())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("the credentials callback failed: the vault is sealed (svc/nats)"),
        "{text}"
    );
    let ConnectError::AllFailed { attempts } = &err else {
        panic!("expected AllFailed, got {err:?}");
    };
    assert_eq!(attempts.len(), 1, "{err:?}");
    let AttemptCause::Credentials(cause) = &attempts[0].error else {
        panic!("expected a credentials failure, got {err:?}");
    };
    assert!(cause.contains("the vault is sealed"), "{cause}");
    assert!(attempts[0].error.is_auth());
    // Nothing reached the server: the attempt stopped before the dial.
    assert_eq!(attempts[0].address, None, "{err:?}");
    assert!(tether_conns(&server, "all").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credentials_callback_that_never_answers_fails_within_connection_timeout() {
    let server = NatsServer::start().unwrap();
    let timeout = Duration::from_millis(300);
    let start = Instant::now();
    let err = tokio::time::timeout(
        T,
        ConnectOptions::new()
            .connection_timeout(timeout)
            .credentials_callback(std::future::pending::<Result<Credentials, std::io::Error>>)
            .connect(server.url()),
    )
    .await
    .expect("connect hangs on a callback that never answers")
    .unwrap_err();
    let took = start.elapsed();
    assert!(took >= timeout, "{took:?}");
    assert!(took < timeout + Duration::from_secs(2), "{took:?}");
    let text = err.to_string();
    assert!(
        text.contains("the credentials callback did not answer within connection_timeout"),
        "{text}"
    );
    let ConnectError::AllFailed { attempts } = &err else {
        panic!("expected AllFailed, got {err:?}");
    };
    assert!(
        matches!(attempts[0].error, AttemptCause::Credentials(_)),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Revocation and account expiry.

/// A client of `user` to `server` (reconnect_wait `wait`, `policy`), its events, taken
/// after a flush.
async fn jwt_client(
    server: &NatsServer,
    user: &UserCreds,
    wait: Duration,
    policy: AuthFailurePolicy,
) -> (tether::Client, tether::Events) {
    let u = user.clone();
    let client = ConnectOptions::new()
        .reconnect_wait(wait)
        .auth_failure_policy(policy)
        .credentials_callback(move || {
            let u = u.clone();
            async move { Ok::<_, std::io::Error>(Credentials::jwt(u.jwt, u.seed)) }
        })
        .connect(server.url())
        .await
        .unwrap();
    let events = client.events();
    client.flush().await.unwrap();
    (client, events)
}

/// The next `Disconnected`'s reason.
async fn next_disconnect(events: &mut tether::Events) -> DisconnectReason {
    match next_event(events, |e| matches!(e, EventKind::Disconnected { .. })).await {
        EventKind::Disconnected { reason, .. } => reason,
        _ => unreachable!(),
    }
}

/// What the client did after a refusal: its failed attempts (when, and why), until it
/// closed (with the reason) or `within` passed.
async fn attempts_until_closed(
    events: &mut tether::Events,
    within: Duration,
) -> (Vec<(SystemTime, AttemptCause)>, Option<ClosedReason>) {
    let deadline = tokio::time::Instant::now() + within;
    let mut failed = Vec::new();
    loop {
        let Ok(e) = tokio::time::timeout_at(deadline, events.next()).await else {
            return (failed, None);
        };
        let Some(e) = e else {
            return (failed, None);
        };
        match e.kind {
            EventKind::ReconnectFailed { error, .. } => failed.push((e.time, error)),
            EventKind::Reconnected { server, .. } => {
                panic!("reconnected to {server} with refused credentials")
            }
            EventKind::Closed { reason, .. } => return (failed, Some(reason)),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_user_is_told_so_then_refused_until_its_only_server_leaves_the_pool() {
    let mut op = Operator::new();
    let mut server = NatsServer::start_with(ServerConfig::default().with_operator(&op)).unwrap();
    let alice = op.user("alice", None);
    let wait = Duration::from_millis(400);
    let (client, mut events) =
        jwt_client(&server, &alice, wait, AuthFailurePolicy::RemoveServer).await;

    op.revoke(&alice.public_key);
    server.config_mut().operator = Some(op.server_config());
    server.reload().unwrap();

    let reason = next_disconnect(&mut events).await;
    assert_eq!(
        reason,
        DisconnectReason::ServerError(ServerErr::AuthRevoked),
        "{reason}"
    );
    let DisconnectReason::ServerError(e) = &reason else {
        unreachable!()
    };
    assert_eq!(e.auth_class(), Some(AuthErrorClass::Strike));
    assert!(
        reason.to_string().contains("User Authentication Revoked"),
        "{reason}"
    );

    // The reconnect is refused; two refusals of the same credentials at least
    // reconnect_wait apart remove the only server, and the client closes. No storm:
    // counted over the whole time it takes, and on the server's side.
    let (failed, closed) = attempts_until_closed(&mut events, T).await;
    let closed = closed.unwrap_or_else(|| panic!("not closed within {T:?}: {failed:?}"));
    assert!(
        matches!(&closed, ClosedReason::PoolExhausted { last_attempt: Some(a) } if a.error.is_auth()),
        "{closed:?}"
    );
    assert_eq!(failed.len(), 2, "{failed:?}");
    for (_, cause) in &failed {
        assert_eq!(
            cause,
            &AttemptCause::Handshake(HandshakeError::Server(ServerErr::AuthViolation))
        );
        assert_eq!(cause.auth_class(), Some(AuthErrorClass::Strike));
    }
    let apart = failed[1].0.duration_since(failed[0].0).unwrap();
    assert!(apart >= wait, "two strikes {apart:?} apart");
    assert_eq!(client.status(), State::Closed);
    // The server saw the first link (closed as revoked) and the two refused ones.
    let reasons: Vec<String> = tether_conns(&server, "closed")
        .iter()
        .map(|c| c["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        reasons,
        [
            "Credentials Revoked",
            "Authentication Failure",
            "Authentication Failure"
        ],
        "{reasons:?}"
    );

    // A new connect (FailFast, the default) with the revoked credentials fails at once,
    // and says what was refused.
    let u = alice.clone();
    let err = ConnectOptions::new()
        .credentials_callback(move || {
            let u = u.clone();
            async move { Ok::<_, std::io::Error>(Credentials::jwt(u.jwt, u.seed)) }
        })
        .connect(server.url())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("server refused the connection: Authorization Violation"),
        "{text}"
    );
    assert!(
        !text.contains(&alice.seed) && !text.contains(&alice.jwt),
        "{text}"
    );
    // Another user of the account is not revoked.
    let (bob, _) = jwt_client(
        &server,
        &op.user("bob", None),
        wait,
        AuthFailurePolicy::RemoveServer,
    )
    .await;
    round_trip(&bob, "revoke.other").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_account_is_told_so_and_the_reconnect_is_refused() {
    let op = Operator::new().with_account_expiry(Duration::from_secs(3));
    let server = NatsServer::start_with(ServerConfig::default().with_operator(&op)).unwrap();
    // The user JWT itself never expires.
    let carol = op.user("carol", None);
    let (client, mut events) = jwt_client(
        &server,
        &carol,
        Duration::from_millis(300),
        AuthFailurePolicy::KeepRetrying,
    )
    .await;
    round_trip(&client, "acct.exp").await;

    let reason = next_disconnect(&mut events).await;
    assert_eq!(
        reason,
        DisconnectReason::ServerError(ServerErr::AccountAuthExpired),
        "{reason}"
    );
    let DisconnectReason::ServerError(e) = &reason else {
        unreachable!()
    };
    assert_eq!(e.auth_class(), Some(AuthErrorClass::Expired));
    let exp = op.account_expires_at().unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now >= exp, "told at {now}, the account expires at {exp}");

    // The reconnects are refused (the account stays expired); with KeepRetrying the
    // client keeps trying at its backoff.
    let (failed, closed) = attempts_until_closed(&mut events, Duration::from_secs(2)).await;
    assert!(closed.is_none(), "{closed:?}");
    assert!(!failed.is_empty());
    for (_, cause) in &failed {
        assert_eq!(
            cause,
            &AttemptCause::Handshake(HandshakeError::Server(ServerErr::AuthViolation))
        );
    }
    // 2 s at 300 ms between attempts (plus jitter): a handful, not a storm.
    assert!(failed.len() <= 8, "{} attempts in 2 s", failed.len());
    assert_eq!(client.status(), State::Reconnecting);
}
