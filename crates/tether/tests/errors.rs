//! -ERR classification against a real server with permissions (DESIGN semantics 7).

mod common;
use common::{connect_as, server_with_permissions};

use std::time::Duration;

use futures_util::StreamExt;
use tether::{EventKind, RequestError, ServerErr, State, SubscribeError};
use tether_testkit::{NatsServer, ServerConfig};

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_subscription_ends_with_permission_denied_and_the_link_stays() {
    let server = server_with_permissions(
        r#"publish: { deny: ["secret.>"] }, subscribe: { deny: ["secret.>"] }"#,
    );
    let client = connect_as(&server, "app").await;
    let mut ok = client.subscribe("open.x").await.unwrap();
    let mut denied = client.subscribe("secret.x").await.unwrap();
    assert!(
        tokio::time::timeout(T, denied.next())
            .await
            .unwrap()
            .is_none(),
        "the stream ends"
    );
    assert!(
        matches!(denied.error(), Some(SubscribeError::PermissionDenied(_))),
        "{:?}",
        denied.error()
    );
    client.publish("open.x", "still here").await.unwrap();
    let m = tokio::time::timeout(T, ok.next()).await.unwrap().unwrap();
    assert_eq!(&m.payload[..], b"still here");
    assert_eq!(client.status(), State::Connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_publish_fails_the_request_or_counts_publish_denied() {
    let server = server_with_permissions(
        r#"publish: { deny: ["secret.>"] }, subscribe: { deny: ["secret.>"] }"#,
    );
    let client = connect_as(&server, "app").await;
    let mut events = client.events();
    let err = client
        .request_with("secret.q", None, b"x", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::PermissionDenied(_)), "{err:?}");
    client.publish("secret.p", "x").await.unwrap();
    loop {
        let e = tokio::time::timeout(T, events.next())
            .await
            .unwrap()
            .unwrap();
        if let EventKind::ServerError { error } = e.kind {
            // The -ERR, parsed: a publish permission, naming the subject.
            match &error {
                ServerErr::PubPermission { subject, .. } => {
                    assert_eq!(subject.as_deref(), Some("secret.p"), "{error:?}");
                }
                other => panic!("expected a publish permission violation, got {other:?}"),
            }
            assert!(!error.is_fatal(), "the link stays");
            assert!(
                error.to_string().contains("Permissions Violation"),
                "{error}"
            );
            break;
        }
    }
    assert_eq!(client.statistics().publish_denied, 1);
    client.flush().await.unwrap();
    assert_eq!(client.status(), State::Connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reply_inbox_fails_a_written_request_as_maybe_processed() {
    // S4: the inbox SUB and the request go out in one write; the server refuses the SUB
    // but delivers the request. The caller must learn it may have been acted on.
    let server = NatsServer::start_with(ServerConfig {
        extra_config: Some(
            r#"
authorization {
  users = [
    { user: app, password: pw, permissions: { subscribe: { deny: ["_INBOX.>"] } } }
    { user: svc, password: pw }
  ]
}
"#
            .into(),
        ),
        ..ServerConfig::default()
    })
    .unwrap();
    let responder = connect_as(&server, "svc").await;
    let mut requests = responder.subscribe("svc.do").await.unwrap();
    responder.flush().await.unwrap();
    let client = connect_as(&server, "app").await;
    let err = client
        .request_with("svc.do", None, b"x", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            RequestError::InboxDenied { subject, maybe_processed: true, .. } if subject == "svc.do"
        ),
        "{err:?}"
    );
    let got = tokio::time::timeout(T, requests.next()).await.unwrap();
    assert!(got.is_some(), "the request did reach the responder");
    assert_eq!(client.status(), State::Connected);
    assert_eq!(client.statistics().pending_requests, 0);
}
