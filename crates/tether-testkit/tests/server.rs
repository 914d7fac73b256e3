//! A single nats-server: start, monitoring, kill/restart on the same port, stop, lame duck.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::Raw;
use tether_testkit::{
    nats_server_bin, nats_server_version, wait_for, wait_for_async, NatsServer, ServerConfig,
    TestkitError,
};

#[test]
fn binary_is_real_and_new_enough() {
    let bin = nats_server_bin().unwrap();
    assert!(!bin.to_string_lossy().contains("/.pyenv/shims/"), "{bin:?}");
    let v = nats_server_version().unwrap();
    assert!(v >= (2, 10, 0), "{v:?}");
}

#[test]
fn start_answers_info_and_monitoring() {
    let s = NatsServer::start().unwrap();
    assert_eq!(s.url(), format!("nats://127.0.0.1:{}", s.port()));
    assert_eq!(s.addr().port(), s.port());
    let mut c = Raw::connect(s.addr()).unwrap();
    c.handshake().unwrap();
    let varz = s.varz().unwrap();
    assert_eq!(varz["port"].as_u64(), Some(u64::from(s.port())));
    assert_eq!(varz["server_name"].as_str(), Some(s.name()));
    assert!(wait_for(Duration::from_secs(5), || {
        s.connz().unwrap()["num_connections"].as_u64() == Some(1)
    }));
    assert!(s.log().contains("Server is ready"), "{}", s.log());
}

#[test]
fn kill_and_restart_on_the_same_port() {
    let mut s = NatsServer::start().unwrap();
    let port = s.port();
    let pid = s.pid().unwrap();
    let mut c = Raw::connect(s.addr()).unwrap();
    c.handshake().unwrap();
    s.kill();
    assert!(!s.is_running());
    assert_eq!(s.pid(), None);
    // The old connection sees the close.
    assert!(c.until(|_| false).is_err());
    assert!(TcpStream::connect(s.addr()).is_err());
    s.restart().unwrap();
    assert_eq!(s.port(), port);
    assert_ne!(s.pid(), Some(pid));
    Raw::connect(s.addr()).unwrap().handshake().unwrap();
    // Restart while running kills first.
    s.restart().unwrap();
    Raw::connect(s.addr()).unwrap().handshake().unwrap();
}

#[test]
fn stop_terminates_gracefully() {
    let mut s = NatsServer::start().unwrap();
    s.stop();
    assert!(!s.is_running());
    assert!(s.wait_exit(Duration::from_millis(1)));
    assert!(
        s.log().contains("Server Exiting") || s.log().contains("Exiting"),
        "{}",
        s.log()
    );
}

#[test]
fn drop_kills_the_process() {
    let s = NatsServer::start().unwrap();
    let pid = s.pid().unwrap();
    drop(s);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn lame_duck_sends_ldm_info() {
    let mut s = NatsServer::start_with(ServerConfig {
        lame_duck_for_tests: true,
        ..ServerConfig::default()
    })
    .unwrap();
    let mut c = Raw::connect(s.addr()).unwrap();
    c.handshake().unwrap();
    s.lame_duck().unwrap();
    let info = c
        .until(|l| l.starts_with("INFO ") && l.contains("\"ldm\":true"))
        .unwrap();
    assert!(info.contains("\"ldm\":true"));
    // New connections are refused once the listener closed.
    assert!(wait_for(Duration::from_secs(5), || TcpStream::connect(
        s.addr()
    )
    .is_err()));
    s.kill();
    assert!(!s.is_running());
}

#[test]
fn lame_duck_exit_reports_a_server_that_outlives_the_deadline() {
    let mut s = NatsServer::start_with(
        ServerConfig::default().with_lame_duck_grace(Duration::from_millis(1500)),
    )
    .unwrap();
    let mut c = Raw::connect(s.addr()).unwrap();
    c.handshake().unwrap();
    // The client keeps the server up for the 1.5 s grace: a 100 ms deadline is too short.
    let err = s.lame_duck_exit(Duration::from_millis(100)).unwrap_err();
    assert!(matches!(err, TestkitError::NoExit { .. }), "{err}");
    assert!(err.to_string().contains("still running"), "{err}");
    assert!(s.wait_exit(Duration::from_secs(10)));
}

#[test]
fn lame_duck_grace_must_come_with_lame_duck_settings_and_stay_under_the_duration() {
    for cfg in [
        ServerConfig {
            lame_duck_grace: Some(Duration::from_secs(1)),
            ..ServerConfig::default()
        },
        ServerConfig::default().with_lame_duck_grace(Duration::from_secs(30)),
    ] {
        let err = NatsServer::start_with(cfg).unwrap_err();
        assert!(matches!(err, TestkitError::Config { .. }), "{err}");
    }
}

#[test]
fn token_user_max_payload_and_extra_config() {
    let s = NatsServer::start_with(ServerConfig {
        token: Some("s3cret".into()),
        max_payload: Some(4096),
        name: Some("custom".into()),
        extra_config: Some("max_connections: 7".into()),
        ..ServerConfig::default()
    })
    .unwrap();
    assert_eq!(
        s.url_with_auth(),
        format!("nats://s3cret@127.0.0.1:{}", s.port())
    );
    let mut c = Raw::connect(s.addr()).unwrap();
    let info = c.line().unwrap();
    assert!(info.contains("\"auth_required\":true"), "{info}");
    assert!(info.contains("\"max_payload\":4096"), "{info}");
    assert!(info.contains("\"server_name\":\"custom\""), "{info}");
    c.send(b"CONNECT {\"protocol\":1,\"auth_token\":\"wrong\"}\r\nPING\r\n")
        .unwrap();
    let err = c.until(|l| l.starts_with("-ERR")).unwrap();
    assert!(err.contains("Authorization Violation"), "{err}");
    let mut ok = Raw::connect(s.addr()).unwrap();
    ok.line().unwrap();
    ok.send(b"CONNECT {\"protocol\":1,\"auth_token\":\"s3cret\"}\r\nPING\r\n")
        .unwrap();
    ok.until(|l| l == "PONG\r\n").unwrap();
    assert_eq!(s.varz().unwrap()["max_connections"].as_u64(), Some(7));

    let u = NatsServer::start_with(ServerConfig {
        user: Some(("alice".into(), "pw".into())),
        ..ServerConfig::default()
    })
    .unwrap();
    assert_eq!(
        u.url_with_auth(),
        format!("nats://alice:pw@127.0.0.1:{}", u.port())
    );
    let mut c = Raw::connect(u.addr()).unwrap();
    c.line().unwrap();
    c.send(b"CONNECT {\"protocol\":1,\"user\":\"alice\",\"pass\":\"pw\"}\r\nPING\r\n")
        .unwrap();
    c.until(|l| l == "PONG\r\n").unwrap();
}

#[test]
fn jetstream_is_healthy_and_survives_restart() {
    let mut s = NatsServer::start_with(ServerConfig {
        jetstream: true,
        ..ServerConfig::default()
    })
    .unwrap();
    let info = Raw::connect(s.addr()).unwrap().line().unwrap();
    assert!(info.contains("\"jetstream\":true"), "{info}");
    assert!(s.dir().join("js").exists());
    s.restart().unwrap();
    assert!(s.monitor("/jsz").unwrap()["config"]["store_dir"]
        .as_str()
        .is_some_and(|d| d.contains(&*s.dir().to_string_lossy())));
}

#[test]
fn bad_config_reports_the_log() {
    let err = NatsServer::start_with(ServerConfig {
        extra_config: Some("this is { not valid".into()),
        ..ServerConfig::default()
    })
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("exited during startup"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usable_from_a_multi_thread_runtime() {
    let s = NatsServer::start().unwrap();
    let addr = s.addr();
    let ok = wait_for_async(Duration::from_secs(5), || async move {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    assert!(ok);
}

#[tokio::test]
async fn usable_from_a_current_thread_runtime() {
    let mut s = NatsServer::start().unwrap();
    s.kill();
    s.restart().unwrap();
    let mut n = 0;
    assert!(
        wait_for_async(Duration::from_secs(1), || {
            n += 1;
            let done = n >= 3;
            async move { done }
        })
        .await
    );
    assert!(!wait_for_async(Duration::from_millis(20), || async { false }).await);
}
