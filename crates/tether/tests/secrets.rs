//! Secrets never leak (issue 14 item 3): every log line at trace level, every event and
//! error text, and the Debug output of options and errors, captured through a connect, a
//! reconnect and an auth failure for each kind of credential, hold no password, token,
//! nkey seed, JWT signature or nonce signature.
//!
//! One test in its own binary: the tracing subscriber is process-wide (the driver logs
//! from runtime threads), so nothing else may run beside it.

mod common;
use common::{next_event, T};

use std::io::Write;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tether::{ConnectOptions, Credentials, EventKind};
use tether_testkit::{nkey_user, NatsServer, Operator, ServerConfig};

/// Everything written by the tracing subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the client showed while one kind of credential was used.
#[derive(Default)]
struct Shown(String);

impl Shown {
    fn add(&mut self, s: impl std::fmt::Display) {
        self.0.push_str(&s.to_string());
        self.0.push('\n');
    }
}

/// A connect, a reconnect after a restart, then an attempt whose credentials the server
/// refuses; every event, error and Debug text goes to `shown`.
async fn exercise(
    server: &mut NatsServer,
    good: ConnectOptions,
    bad: ConnectOptions,
    url: &str,
    shown: &mut Shown,
) {
    shown.add(format!("{good:?} {bad:?}"));
    let client = good.connect(url).await.unwrap();
    let mut events = client.events();
    let mut sub = client.subscribe("secrets.t").await.unwrap();
    client.flush().await.unwrap();
    server.kill();
    next_event(&mut events, |e| matches!(e, EventKind::Disconnected { .. })).await;
    server.restart().unwrap();
    next_event(&mut events, |e| matches!(e, EventKind::Reconnected { .. })).await;
    client.publish("secrets.t", "after").await.unwrap();
    let m = tokio::time::timeout(T, sub.next()).await.unwrap().unwrap();
    assert_eq!(&m.payload[..], b"after");
    client.close().await;
    while let Some(e) = events.next().await {
        shown.add(format!("{} {:?}", e.kind, e));
    }
    let err = bad.connect(url).await.unwrap_err();
    shown.add(format!("{err} {err:?}"));
}

/// The longest run of base64url characters in `text`: an ed25519 signature (a JWT's or a
/// nonce's) is 86 of them; nothing the client logs legitimately comes close.
fn longest_base64_run(text: &str) -> usize {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .map(str::len)
        .max()
        .unwrap_or(0)
}

/// User and password, from the options, the URL and the credentials callback.
async fn user_and_password(shown: &mut Shown, secrets: &mut Vec<String>) {
    // User and password, from the options and from the URL.
    let mut server = NatsServer::start_with(ServerConfig {
        user: Some(("app".into(), "pw-Secret-1".into())),
        ..ServerConfig::default()
    })
    .unwrap();
    secrets.extend(["pw-Secret-1".into(), "pw-Wrong-2".into()]);
    let url = server.url();
    exercise(
        &mut server,
        ConnectOptions::new().user_and_password("app", "pw-Secret-1"),
        ConnectOptions::new().user_and_password("app", "pw-Wrong-2"),
        &url,
        shown,
    )
    .await;
    let with_creds = format!("nats://app:pw-Secret-1@127.0.0.1:{}", server.port());
    exercise(
        &mut server,
        ConnectOptions::new(),
        ConnectOptions::new().user_and_password("app", "pw-Wrong-2"),
        &with_creds,
        shown,
    )
    .await;
    // The same through the credentials callback.
    exercise(
        &mut server,
        ConnectOptions::new().credentials_callback(|| async {
            Ok::<_, String>(Credentials::user_and_password("app", "pw-Secret-1"))
        }),
        ConnectOptions::new().credentials_callback(|| async {
            Ok::<_, String>(Credentials::user_and_password("app", "pw-Wrong-2"))
        }),
        &url,
        shown,
    )
    .await;
    drop(server);
}

/// A token.
async fn token(shown: &mut Shown, secrets: &mut Vec<String>) {
    // A token.
    let mut server = NatsServer::start_with(ServerConfig {
        token: Some("tok-Secret-3".into()),
        ..ServerConfig::default()
    })
    .unwrap();
    secrets.extend(["tok-Secret-3".into(), "tok-Wrong-4".into()]);
    let url = server.url();
    exercise(
        &mut server,
        ConnectOptions::new().token("tok-Secret-3"),
        ConnectOptions::new().token("tok-Wrong-4"),
        &url,
        shown,
    )
    .await;
    drop(server);
}

/// An nkey seed.
async fn nkey(shown: &mut Shown, secrets: &mut Vec<String>) {
    // An nkey seed.
    let user = nkey_user();
    let stranger = nkey_user();
    let mut server = NatsServer::start_with(ServerConfig {
        nkey_users: vec![user.public_key.clone()],
        ..ServerConfig::default()
    })
    .unwrap();
    secrets.extend([user.seed.clone(), stranger.seed.clone()]);
    let url = server.url();
    exercise(
        &mut server,
        ConnectOptions::new().nkey(user.seed.clone()),
        ConnectOptions::new().nkey(stranger.seed.clone()),
        &url,
        shown,
    )
    .await;
    drop(server);
}

/// A user JWT and its seed, from a creds file and the callback; the refused one has
/// expired.
async fn jwt(shown: &mut Shown, secrets: &mut Vec<String>) {
    // A user JWT and its seed, from a creds file; the refused one has expired.
    let op = Operator::new();
    let mut server = NatsServer::start_with(ServerConfig::default().with_operator(&op)).unwrap();
    let good = op.user("alice", None);
    let expired = op.user_expiring_at("bob", Some(1));
    for creds in [&good, &expired] {
        secrets.push(creds.seed.clone());
        let signature = creds.jwt.rsplit('.').next().unwrap().to_owned();
        secrets.push(signature);
    }
    let good_path = server.dir().join("good.creds");
    let expired_path = server.dir().join("expired.creds");
    good.write_to(&good_path).unwrap();
    expired.write_to(&expired_path).unwrap();
    let url = server.url();
    exercise(
        &mut server,
        ConnectOptions::new().credentials_file(&good_path),
        ConnectOptions::new().credentials_file(&expired_path),
        &url,
        shown,
    )
    .await;
    let (jwt, seed) = (good.jwt.clone(), good.seed.clone());
    let (old_jwt, old_seed) = (expired.jwt.clone(), expired.seed.clone());
    exercise(
        &mut server,
        ConnectOptions::new().credentials_callback(move || {
            let c = Credentials::jwt(jwt.clone(), seed.clone());
            async move { Ok::<_, String>(c) }
        }),
        ConnectOptions::new().credentials_callback(move || {
            let c = Credentials::jwt(old_jwt.clone(), old_seed.clone());
            async move { Ok::<_, String>(c) }
        }),
        &url,
        shown,
    )
    .await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_events_errors_or_debug_output() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .unwrap();
    let mut shown = Shown::default();
    let mut secrets: Vec<String> = Vec::new();
    user_and_password(&mut shown, &mut secrets).await;
    token(&mut shown, &mut secrets).await;
    nkey(&mut shown, &mut secrets).await;
    jwt(&mut shown, &mut secrets).await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "the capture saw the client's detailed logs"
    );
    assert!(
        logs.contains("Authorization Violation") && shown.0.contains("Authorization Violation"),
        "the refusals were logged and shown"
    );
    for (name, text) in [("logs", &logs), ("events, errors and Debug", &shown.0)] {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{name} hold a secret");
        }
        let run = longest_base64_run(text);
        assert!(
            run < 80,
            "{name} hold a signature-length token ({run} chars)"
        );
    }
}
