//! TLS against real nats-servers with certificates made at test time (tether-testkit's
//! `TlsCerts`): every option accepted and refused, mTLS, handshake_first, faults and
//! planned switches over TLS, discovered servers verified with the original name.

mod common;
use common::{next_event, wait_interest, T};

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tether::{
    AttemptCause, ConnectError, ConnectOptions, EventKind, HandshakeError, OptionsError, TlsError,
};
use tether_testkit::{Hostile, HostilePeer, NatsCluster, NatsServer, ServerConfig, TlsCerts};

fn tls_server(certs: &Arc<TlsCerts>) -> NatsServer {
    NatsServer::start_with(ServerConfig::default().with_tls(certs)).unwrap()
}

fn trusting(certs: &TlsCerts) -> ConnectOptions {
    ConnectOptions::new().tls_ca_file(certs.ca_file())
}

/// A publish reaches a subscription and a request gets its reply, over `client`.
async fn round_trip(client: &tether::Client, subject: &str) {
    let mut sub = client.subscribe(subject).await.unwrap();
    client.publish(subject, "over tls").await.unwrap();
    let m = tokio::time::timeout(T, sub.next()).await.unwrap().unwrap();
    assert_eq!(&m.payload[..], b"over tls");
}

/// The one attempt's cause of a failed connect, and the error's text.
async fn refused(options: ConnectOptions, url: &str) -> (AttemptCause, String) {
    let started = Instant::now();
    let err = options
        .connection_timeout(Duration::from_secs(3))
        .connect(url)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed within connection_timeout, not after {:?}",
        started.elapsed()
    );
    let ConnectError::AllFailed { attempts } = &err else {
        panic!("expected AllFailed, got {err:?}");
    };
    (attempts[0].error.clone(), err.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_url_with_the_ca_connects_and_carries_messages() {
    let certs = TlsCerts::new().unwrap();
    let server = tls_server(&certs);
    for url in [server.url(), server.url_with_host("localhost")] {
        let client = trusting(&certs).connect(url.as_str()).await.unwrap();
        round_trip(&client, "tls.rt").await;
        // Large frames cross TLS record boundaries both ways.
        let mut sub = client.subscribe("tls.big").await.unwrap();
        let big = vec![7u8; 900_000];
        for _ in 0..5 {
            client.publish("tls.big", big.clone()).await.unwrap();
        }
        for _ in 0..5 {
            let m = tokio::time::timeout(T, sub.next()).await.unwrap().unwrap();
            assert_eq!(m.payload.len(), big.len());
        }
        client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_url_upgrades_with_tls_options_or_when_the_server_requires_it() {
    let certs = TlsCerts::new().unwrap();
    let server = tls_server(&certs);
    let plain_url = format!("nats://127.0.0.1:{}", server.port());
    // TLS options make a nats:// URL use TLS.
    let client = trusting(&certs).connect(plain_url.as_str()).await.unwrap();
    round_trip(&client, "tls.upgrade").await;
    // No TLS option: the INFO's tls_required upgrades the link, trusting the system's
    // roots, which do not hold the test CA. (A machine with no roots says that.)
    let (cause, text) = refused(ConnectOptions::new(), &plain_url).await;
    assert!(
        matches!(
            cause,
            AttemptCause::Tls(TlsError::UnknownCa { .. } | TlsError::NoRoots { .. })
        ),
        "{cause:?}"
    );
    assert!(text.contains("tls_ca_file"), "says what to do: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_certificate_check_fails_with_its_own_error() {
    let certs = TlsCerts::new().unwrap();
    let server = tls_server(&certs);
    // Another CA.
    let other = TlsCerts::new().unwrap();
    let (cause, text) = refused(trusting(&other), &server.url()).await;
    assert_eq!(
        cause,
        AttemptCause::Tls(TlsError::UnknownCa {
            name: "127.0.0.1".into()
        })
    );
    assert!(text.contains("not signed by a trusted CA"), "{text}");
    // A certificate for another name.
    let named = TlsCerts::with_server_names(&["localhost"]).unwrap();
    let only_localhost = tls_server(&named);
    let (cause, text) = refused(trusting(&named), &only_localhost.url()).await;
    assert_eq!(
        cause,
        AttemptCause::Tls(TlsError::NameMismatch {
            name: "127.0.0.1".into()
        })
    );
    assert!(text.contains("not valid for the name 127.0.0.1"), "{text}");
    trusting(&named)
        .connect(only_localhost.url_with_host("localhost"))
        .await
        .expect("the name the certificate lists");
    // An expired certificate.
    let expired = TlsCerts::expired().unwrap();
    let old = tls_server(&expired);
    let (cause, text) = refused(trusting(&expired), &old.url()).await;
    assert!(
        matches!(cause, AttemptCause::Tls(TlsError::Expired { .. })),
        "{cause:?}"
    );
    assert!(text.contains("expired"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_needs_a_client_certificate_from_a_trusted_ca() {
    let certs = TlsCerts::new().unwrap();
    let server =
        NatsServer::start_with(ServerConfig::default().with_tls(&certs).with_tls_verify()).unwrap();
    let (cause, text) = refused(trusting(&certs), &server.url()).await;
    assert_eq!(cause, AttemptCause::Tls(TlsError::ClientCertRequired));
    assert!(text.contains("tls_client_cert"), "{text}");
    let other = TlsCerts::new().unwrap();
    let (cause, _) = refused(
        trusting(&certs).tls_client_cert(other.client_cert_file(), other.client_key_file()),
        &server.url(),
    )
    .await;
    assert!(
        matches!(
            cause,
            AttemptCause::Tls(TlsError::ClientCertRejected { .. })
        ),
        "{cause:?}"
    );
    let client = trusting(&certs)
        .tls_client_cert(certs.client_cert_file(), certs.client_key_file())
        .connect(server.url())
        .await
        .unwrap();
    round_trip(&client, "tls.mtls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_first_needs_tls_first_and_tls_first_needs_handshake_first() {
    let certs = TlsCerts::new().unwrap();
    let first = NatsServer::start_with(
        ServerConfig::default()
            .with_tls(&certs)
            .with_tls_handshake_first(),
    )
    .unwrap();
    let client = trusting(&certs)
        .tls_first(true)
        .connect(first.url())
        .await
        .unwrap();
    round_trip(&client, "tls.first").await;
    // A client that waits for INFO: the server never sends one in plaintext; the error
    // (within connection_timeout) says to set tls_first.
    let (cause, text) = refused(trusting(&certs), &first.url()).await;
    assert!(
        matches!(
            cause,
            AttemptCause::Handshake(
                HandshakeError::ClosedBeforeInfo | HandshakeError::Timeout { .. }
            )
        ),
        "{cause:?}"
    );
    assert!(text.contains("set tls_first"), "{text}");
    // tls_first against a server that sends INFO first, and against a plaintext one.
    let after_info = tls_server(&certs);
    let plain = NatsServer::start().unwrap();
    for url in [after_info.url(), plain.url()] {
        let (cause, text) = refused(trusting(&certs).tls_first(true), &url).await;
        assert_eq!(cause, AttemptCause::Tls(TlsError::NotTls), "{url}");
        assert!(text.contains("handshake_first"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_url_to_a_plaintext_server_says_it_does_not_offer_tls() {
    let plain = NatsServer::start().unwrap();
    let certs = TlsCerts::new().unwrap();
    let url = format!("tls://127.0.0.1:{}", plain.port());
    let (cause, text) = refused(trusting(&certs), &url).await;
    assert_eq!(
        cause,
        AttemptCause::Handshake(HandshakeError::TlsUnavailable)
    );
    assert!(text.contains("does not offer TLS"), "{text}");
}

#[tokio::test]
async fn bad_tls_files_are_refused_when_the_client_is_created_naming_the_file() {
    let certs = TlsCerts::new().unwrap();
    let other = TlsCerts::new().unwrap();
    let not_pem = certs.dir().join("not.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let cases: Vec<(ConnectOptions, &str, String)> = vec![
        (
            ConnectOptions::new().tls_ca_file(&not_pem),
            "tls_ca_file",
            not_pem.display().to_string(),
        ),
        (
            ConnectOptions::new().tls_ca_file(certs.dir().join("missing.pem")),
            "tls_ca_file",
            "missing.pem".into(),
        ),
        // A key that is not the certificate's.
        (
            ConnectOptions::new()
                .tls_client_cert(certs.client_cert_file(), other.client_key_file()),
            "tls_client_key",
            other.client_key_file().display().to_string(),
        ),
        // A "key" file with no key in it.
        (
            ConnectOptions::new()
                .tls_client_cert(certs.client_cert_file(), certs.client_cert_file()),
            "tls_client_key",
            certs.client_cert_file().display().to_string(),
        ),
        (
            ConnectOptions::new().tls_client_cert(&not_pem, certs.client_key_file()),
            "tls_client_cert",
            not_pem.display().to_string(),
        ),
    ];
    // Nothing listens there: only the options check can make connect fail at once.
    let url = format!("tls://127.0.0.1:{}", tether_testkit::closed_port());
    for (options, option, names) in cases {
        let err = options.validate().unwrap_err();
        assert!(
            matches!(&err, OptionsError::Invalid { option: o, .. } if *o == option),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(&names), "names the file: {text}");
        let e = options.connect(url.as_str()).await.unwrap_err();
        assert!(matches!(e, ConnectError::Options(_)), "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_over_tls_loses_nothing_it_does_not_report() {
    let certs = TlsCerts::new().unwrap();
    let mut server = tls_server(&certs);
    let client = trusting(&certs)
        .reconnect_jitter_tls(Duration::from_millis(50))
        .connect(server.url())
        .await
        .unwrap();
    let mut events = client.events();
    let mut sub = client.subscribe("tls.restart").await.unwrap();
    client.flush().await.unwrap();
    server.kill();
    let EventKind::Disconnected { reason, .. } =
        next_event(&mut events, |e| matches!(e, EventKind::Disconnected { .. })).await
    else {
        unreachable!()
    };
    // A killed server sends no close_notify: the end of the stream, as over TCP.
    assert_eq!(reason, tether::DisconnectReason::Eof);
    // Published while down: buffered, then sent after the replay.
    for i in 0..100u32 {
        client
            .publish("tls.restart", i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    server.restart().unwrap();
    next_event(&mut events, |e| matches!(e, EventKind::Reconnected { .. })).await;
    for i in 0..100u32 {
        let m = tokio::time::timeout(T, sub.next()).await.unwrap().unwrap();
        assert_eq!(&m.payload[..], i.to_be_bytes(), "in order, none lost");
    }
    assert_eq!(client.statistics().reconnects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lame_duck_switch_over_tls_moves_without_loss() {
    let certs = TlsCerts::new().unwrap();
    let cluster = NatsCluster::start_with(
        3,
        ServerConfig {
            lame_duck_for_tests: true,
            ..ServerConfig::default().with_tls(&certs)
        },
    )
    .unwrap();
    cluster.wait_routes(T).unwrap();
    let publisher = trusting(&certs)
        .ldm_jitter(Duration::from_millis(200))
        .connect(cluster.node(0).url())
        .await
        .unwrap();
    let subscriber = trusting(&certs)
        .connect(cluster.node(1).url())
        .await
        .unwrap();
    let mut sub = subscriber.subscribe("tls.ldm").await.unwrap();
    subscriber.flush().await.unwrap();
    wait_interest(&publisher, &mut sub, "tls.ldm").await;
    let mut events = publisher.events();
    let p = publisher.clone();
    let pump = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for i in 0..2000u64 {
            tick.tick().await;
            p.publish("tls.ldm", i.to_be_bytes()).await.unwrap();
        }
        p.flush().await.unwrap();
    });
    let mut seen = std::collections::BTreeSet::new();
    let mut take = |m: tether::Message| {
        if m.payload.len() == 8 {
            seen.insert(u64::from_be_bytes(m.payload[..].try_into().unwrap()));
        }
        seen.len()
    };
    while take(tokio::time::timeout(T, sub.next()).await.unwrap().unwrap()) < 200 {}
    cluster.node(0).lame_duck().unwrap();
    let EventKind::Migrated {
        from,
        to,
        unconfirmed_msgs,
        ..
    } = next_event(&mut events, |e| {
        matches!(
            e,
            EventKind::Migrated { .. } | EventKind::Disconnected { .. }
        )
    })
    .await
    else {
        panic!("a planned switch, not a disconnect");
    };
    assert_eq!(from, cluster.node(0).url());
    assert!(to.starts_with("tls://"), "{to}");
    assert_eq!(unconfirmed_msgs, 0);
    pump.await.unwrap();
    loop {
        let m = tokio::time::timeout(T, sub.next())
            .await
            .expect("lost messages over the switch")
            .unwrap();
        if take(m) == 2000 {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_discovered_by_ip_is_verified_with_the_name_of_the_url() {
    // Certificates for `localhost` only: a node reached by its IP address passes only
    // when checked against the name the client was given.
    let certs = TlsCerts::with_server_names(&["localhost"]).unwrap();
    let mut cluster = NatsCluster::start_with(3, ServerConfig::default().with_tls(&certs)).unwrap();
    cluster.wait_routes(T).unwrap();
    let client = trusting(&certs)
        .connect(cluster.node(0).url_with_host("localhost"))
        .await
        .unwrap();
    let mut events = client.events();
    // INFO's connect_urls name the other nodes by IP address.
    common::wait_discovered(&client, 3).await;
    cluster.kill(0);
    let EventKind::Reconnected { server, .. } =
        next_event(&mut events, |e| matches!(e, EventKind::Reconnected { .. })).await
    else {
        unreachable!()
    };
    assert!(server.starts_with("tls://127.0.0.1:"), "{server}");
    round_trip(&client, "tls.discovered").await;
}

/// A subscribe goes on the wire from the caller's thread over TLS too: the server sees
/// it while this (only) runtime thread blocks, so the driver cannot have written it.
#[tokio::test(flavor = "current_thread")]
async fn direct_writes_work_over_tls() {
    let certs = TlsCerts::new().unwrap();
    let server = tls_server(&certs);
    let client = trusting(&certs).connect(server.url()).await.unwrap();
    client.flush().await.unwrap();
    let before = server.num_subscriptions().unwrap();
    let _sub = client.subscribe("tls.direct").await.unwrap();
    assert_eq!(
        common::block_until_subscriptions(&server, before + 1),
        before + 1,
        "the SUB reached the server with the driver idle"
    );
    client.flush().await.unwrap();
}

#[tokio::test]
async fn garbage_over_tls_is_the_same_protocol_error_as_over_tcp() {
    let garbage = b"\x00\x01GARBAGE\r\n".to_vec();
    let certs = TlsCerts::new().unwrap();
    let tcp =
        HostilePeer::start(Hostile::Dialogue(vec![("PING".into(), garbage.clone())])).unwrap();
    let (over_tcp, _) = refused(ConnectOptions::new(), &tcp.url()).await;
    assert!(
        matches!(
            over_tcp,
            AttemptCause::Handshake(HandshakeError::Protocol(_))
        ),
        "{over_tcp:?}"
    );
    let after_info = HostilePeer::start(Hostile::TlsGarbage {
        certs: certs.clone(),
        garbage: garbage.clone(),
    })
    .unwrap();
    let (cause, _) = refused(trusting(&certs), &after_info.url()).await;
    assert_eq!(cause, over_tcp);
    let first = HostilePeer::start(Hostile::TlsFirstGarbage {
        certs: certs.clone(),
        garbage,
    })
    .unwrap();
    let (cause, _) = refused(trusting(&certs).tls_first(true), &first.url()).await;
    assert_eq!(cause, over_tcp);
}
