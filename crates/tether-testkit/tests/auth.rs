//! Nkey and operator-mode (JWT) auth against real servers, over the raw protocol.

mod common;

use std::fs;
use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Raw;
use tether_testkit::jwt::sign_nonce;
use tether_testkit::{nkey_user, NatsServer, Operator, ServerConfig, TestkitError, UserCreds};

const AUTH_VIOLATION: &str = "-ERR 'Authorization Violation'\r\n";
const AUTH_EXPIRED: &str = "-ERR 'User Authentication Expired'\r\n";

/// Connects, reads INFO and returns the client with the INFO's `nonce`.
fn connect_for_nonce(s: &NatsServer) -> (Raw, String) {
    let mut c = Raw::connect(s.addr()).unwrap();
    let info = c.line().unwrap();
    let json = info.strip_prefix("INFO ").expect("INFO first");
    let v: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
    assert_eq!(v["auth_required"], true, "{info}");
    let nonce = v["nonce"].as_str().expect("a nonce in INFO").to_owned();
    assert!(!nonce.is_empty());
    (c, nonce)
}

/// Sends CONNECT with `auth` (JSON members) and PING; returns the first line that is not
/// INFO or PING: `PONG` or an `-ERR`.
fn connect_with(c: &mut Raw, auth: &str) -> String {
    let connect = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1,{auth}}}\r\nPING\r\n"
    );
    c.send(connect.as_bytes()).unwrap();
    c.until(|l| l == "PONG\r\n" || l.starts_with("-ERR"))
        .unwrap()
}

/// Connects with `field` (`nkey` or `jwt`) set to `id` and the nonce signed by `sign`;
/// returns the connection and the server's answer (`PONG` or an `-ERR`).
fn connect_signed(
    s: &NatsServer,
    field: &str,
    id: &str,
    sign: impl FnOnce(&str) -> String,
) -> (Raw, String) {
    let (mut c, nonce) = connect_for_nonce(s);
    let auth = format!("\"{field}\":\"{id}\",\"sig\":\"{}\"", sign(&nonce));
    let answer = connect_with(&mut c, &auth);
    (c, answer)
}

/// [`connect_signed`] with a user's JWT and its own signature.
fn connect_jwt(s: &NatsServer, creds: &UserCreds) -> (Raw, String) {
    connect_signed(s, "jwt", &creds.jwt, |nonce| creds.sign_nonce(nonce))
}

/// The server answered an Authorization Violation, then closed the connection.
fn assert_refused((mut c, answer): (Raw, String)) {
    assert_eq!(answer, AUTH_VIOLATION);
    assert_closed(&mut c);
}

/// After an `-ERR`, the server closes the connection.
fn assert_closed(c: &mut Raw) {
    c.set_timeout(Duration::from_secs(5));
    match c.until(|_| false) {
        Err(e) => assert!(
            matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
            ),
            "{e}"
        ),
        Ok(l) => panic!("read {l:?} after the error"),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn nkey_user_signs_the_nonce() {
    let alice = nkey_user();
    let bob = nkey_user();
    let s = NatsServer::start_with(ServerConfig {
        nkey_users: vec![alice.public_key.clone(), bob.public_key.clone()],
        ..ServerConfig::default()
    })
    .unwrap();
    assert!(fs::read_to_string(s.dir().join("server.conf"))
        .unwrap()
        .contains(&alice.public_key));

    for user in [&alice, &bob] {
        let (_c, answer) = connect_signed(&s, "nkey", &user.public_key, |n| user.sign_nonce(n));
        assert_eq!(answer, "PONG\r\n");
    }

    // A key the server does not know, with a correct signature.
    let stranger = nkey_user();
    assert_refused(connect_signed(&s, "nkey", &stranger.public_key, |n| {
        stranger.sign_nonce(n)
    }));

    // A known key, signed by someone else's seed.
    assert_refused(connect_signed(&s, "nkey", &alice.public_key, |n| {
        sign_nonce(&stranger.seed, n)
    }));
}

#[test]
fn operator_mode_user_jwt_connects_and_round_trips() {
    let op = Operator::new();
    let s = NatsServer::start_with(ServerConfig::default().with_operator(&op)).unwrap();
    let varz = s.varz().unwrap();
    assert_eq!(
        varz["system_account"].as_str(),
        Some(op.system_account_public_key().as_str()),
        "{varz}"
    );
    let alice = op.user("alice", None);
    assert_eq!(alice.expires_at, None);
    let (mut c, answer) = connect_jwt(&s, &alice);
    assert_eq!(answer, "PONG\r\n");
    c.send(b"SUB greet 7\r\nPUB greet 5\r\nhello\r\nPING\r\n")
        .unwrap();
    let msg = c.until(|l| l.starts_with("MSG ")).unwrap();
    assert_eq!(msg, "MSG greet 7 5\r\n");
    assert_eq!(c.line().unwrap(), "hello\r\n");
    c.until(|l| l == "PONG\r\n").unwrap();

    // The server knows the connection belongs to the account.
    let connz = s.monitor("/connz?auth=true").unwrap();
    let conns = connz["connections"].as_array().unwrap();
    assert!(
        conns
            .iter()
            .any(|c| c["account"] == op.account_public_key().as_str()
                && c["authorized_user"] == alice.public_key.as_str()),
        "{connz}"
    );

    // A user issued by another operator's account is refused.
    let other = Operator::new().user("mallory", None);
    assert_refused(connect_jwt(&s, &other));

    // A valid JWT with a signature by the wrong seed is refused.
    assert_refused(connect_signed(&s, "jwt", &alice.jwt, |n| {
        sign_nonce(&other.seed, n)
    }));
}

#[test]
fn user_jwt_expiry_disconnects_with_the_server_error() {
    let op = Operator::new();
    let s = NatsServer::start_with(ServerConfig::default().with_operator(&op)).unwrap();
    let user = op.user("short", Some(Duration::from_secs(2)));
    let exp = user.expires_at.unwrap();
    let issued = unix_now();
    assert!((issued + 2..=issued + 3).contains(&exp), "{issued} {exp}");

    let (mut c, answer) = connect_jwt(&s, &user);
    assert_eq!(answer, "PONG\r\n");
    let connected = Instant::now();
    // Still usable before expiry.
    c.ping().unwrap();
    c.set_timeout(Duration::from_secs(10));
    let err = c.until(|l| l.starts_with("-ERR")).unwrap();
    let waited = connected.elapsed();
    assert_eq!(err, AUTH_EXPIRED);
    // exp is rounded up to a whole second: expiry comes 2 to 3 s after issuing.
    assert!(
        waited >= Duration::from_millis(1500) && waited <= Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(unix_now() >= exp - 1, "expired before exp");
    assert_closed(&mut c);
}

#[test]
fn already_expired_user_jwt_is_refused_at_connect() {
    let op = Operator::new();
    let s = NatsServer::start_with(ServerConfig::default().with_operator(&op)).unwrap();
    let user = op.user_expiring_at("stale", Some(unix_now() - 60));
    assert_refused(connect_jwt(&s, &user));
    // The same account's fresh user still gets in.
    assert_eq!(connect_jwt(&s, &op.user("fresh", None)).1, "PONG\r\n");
}

/// Pulls the line between `begin` and `end` marker lines out of a creds file.
fn between<'a>(text: &'a str, begin: &str, end: &str) -> &'a str {
    let lines: Vec<&str> = text.lines().collect();
    let i = lines.iter().position(|l| *l == begin).expect(begin);
    assert_eq!(lines[i + 2], end);
    lines[i + 1]
}

#[test]
fn creds_file_round_trips_and_authenticates() {
    let op = Operator::new();
    let user = op.user("filed", Some(Duration::from_secs(3600)));
    let text = user.creds_text();
    let expected = format!(
        "-----BEGIN NATS USER JWT-----\n{}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n",
        user.jwt, user.seed
    );
    assert_eq!(text, expected);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("user.creds");
    user.write_to(&path).unwrap();
    let read = fs::read_to_string(&path).unwrap();
    assert_eq!(read, text);
    let jwt = between(
        &read,
        "-----BEGIN NATS USER JWT-----",
        "------END NATS USER JWT------",
    );
    let seed = between(
        &read,
        "-----BEGIN USER NKEY SEED-----",
        "------END USER NKEY SEED------",
    );
    assert_eq!(jwt, user.jwt);
    assert_eq!(seed, user.seed);

    // Replacing the file leaves only the new one, no temp files.
    let next = op.user("filed", None);
    next.write_to(&path).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), next.creds_text());
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("user.creds")]);

    // What was read back from the file authenticates.
    let s = NatsServer::start_with(ServerConfig::default().with_operator(&op)).unwrap();
    let (_c, answer) = connect_signed(&s, "jwt", jwt, |n| sign_nonce(seed, n));
    assert_eq!(answer, "PONG\r\n");
}

#[test]
fn contradictory_auth_is_refused_before_starting() {
    let op = Operator::new();
    let nk = nkey_user();
    let cases = [
        ServerConfig {
            token: Some("t".into()),
            nkey_users: vec![nk.public_key.clone()],
            ..ServerConfig::default()
        },
        ServerConfig {
            user: Some(("u".into(), "p".into())),
            nkey_users: vec![nk.public_key.clone()],
            ..ServerConfig::default()
        },
        ServerConfig {
            token: Some("t".into()),
            user: Some(("u".into(), "p".into())),
            ..ServerConfig::default()
        },
        ServerConfig {
            token: Some("t".into()),
            ..ServerConfig::default()
        }
        .with_operator(&op),
        ServerConfig {
            nkey_users: vec![nk.public_key.clone()],
            ..ServerConfig::default()
        }
        .with_operator(&op),
    ];
    for cfg in cases {
        let err = NatsServer::start_with(cfg.clone()).unwrap_err();
        assert!(
            matches!(err, TestkitError::Config { .. }),
            "{cfg:?} gave {err}"
        );
        assert!(err.to_string().contains("invalid ServerConfig"), "{err}");
    }
}
