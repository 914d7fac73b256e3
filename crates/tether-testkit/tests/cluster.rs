//! A 3-node cluster: routes, killing and restarting a node, adding a node, a rolling
//! lame-duck restart.

mod common;

use std::time::Duration;

use common::{read_outcome, Raw, ReadOutcome};
use tether_testkit::{NatsCluster, Proxy, ServerConfig};

#[test]
fn cluster_routes_kill_restart_add() {
    let mut c = NatsCluster::start(3).unwrap();
    assert_eq!(c.len(), 3);
    assert_eq!(c.urls().len(), 3);
    // Each node knows the others' client URLs (connect_urls) once routed.
    let mut raw = Raw::connect(c.node(0).addr()).unwrap();
    raw.handshake().unwrap();

    let routez = c.node(0).routez().unwrap();
    for i in 1..3 {
        let id = c.node(i).varz().unwrap()["server_id"].clone();
        assert!(
            routez["routes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["remote_id"] == id),
            "{routez}"
        );
    }

    let old_id = c.node(1).varz().unwrap()["server_id"]
        .as_str()
        .unwrap()
        .to_owned();
    c.kill(1);
    assert!(!c.node_mut(1).is_running());
    c.wait_routes(Duration::from_secs(10)).unwrap();
    c.restart(1).unwrap();
    let new_id = c.node(1).varz().unwrap()["server_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(old_id, new_id);

    let i = c.add_node().unwrap();
    assert_eq!(i, 3);
    assert_eq!(c.len(), 4);
    // Node 0 learns about node 3's client URL through gossip.
    let port3 = c.node(3).port();
    let url_seen = tether_testkit::wait_for(Duration::from_secs(10), || {
        c.node(0).varz().unwrap()["connect_urls"]
            .as_array()
            .is_some_and(|u| {
                u.iter().any(|u| {
                    u.as_str()
                        .is_some_and(|u| u.ends_with(&format!(":{port3}")))
                })
            })
    });
    assert!(url_seen, "{}", c.node(0).varz().unwrap());
}

#[test]
fn cluster_client_advertise_points_at_proxies() {
    let proxies: Vec<Proxy> = (0..3)
        .map(|_| Proxy::start(([127, 0, 0, 1], tether_testkit::closed_port()).into()).unwrap())
        .collect();
    let adv = proxies.iter().map(|p| p.addr().to_string()).collect();
    let mut c = NatsCluster::start_with_advertise(3, ServerConfig::default(), adv).unwrap();
    for (i, p) in proxies.iter().enumerate() {
        p.set_upstream(c.node(i).addr());
    }
    c.wait_routes(Duration::from_secs(10)).unwrap();
    let p1 = format!("127.0.0.1:{}", proxies[1].port());
    let p2 = format!("127.0.0.1:{}", proxies[2].port());
    // Advertised URLs spread by gossip after the routes are up: poll a fresh INFO.
    let mut info = String::new();
    let seen = tether_testkit::wait_for(Duration::from_secs(10), || {
        info = Raw::connect(proxies[0].addr())
            .and_then(|mut raw| raw.line())
            .unwrap_or_default();
        info.contains(&p1) && info.contains(&p2)
    });
    assert!(seen, "{info}");

    // set_client_advertise takes effect at the next restart.
    let direct = c.node(2).addr().to_string();
    c.set_client_advertise(2, direct.clone());
    c.restart(2).unwrap();
    let ok = tether_testkit::wait_for(Duration::from_secs(10), || {
        c.node(0).varz().unwrap()["connect_urls"]
            .as_array()
            .is_some_and(|u| u.iter().any(|u| u.as_str() == Some(direct.as_str())))
    });
    assert!(ok, "{}", c.node(0).varz().unwrap());
}

/// Whether node `i`'s `/varz` lists a connect URL on `port`.
fn announces(c: &NatsCluster, i: usize, port: u16) -> bool {
    c.node(i).varz().unwrap()["connect_urls"]
        .as_array()
        .is_some_and(|u| {
            u.iter()
                .any(|u| u.as_str().is_some_and(|u| u.ends_with(&format!(":{port}"))))
        })
}

#[test]
fn lame_duck_restart_waits_out_the_grace_then_restarts_on_the_same_ports() {
    let grace = Duration::from_secs(1);
    let mut c =
        NatsCluster::start_with(3, ServerConfig::default().with_lame_duck_grace(grace)).unwrap();
    let conf = std::fs::read_to_string(c.node(1).dir().join("server.conf")).unwrap();
    assert!(
        conf.contains("lame_duck_grace_period: \"1000ms\""),
        "{conf}"
    );
    let port = c.node(1).port();
    let old_id = c.node(1).varz().unwrap()["server_id"].clone();
    assert!(tether_testkit::wait_for(Duration::from_secs(10), || {
        announces(&c, 0, port)
    }));
    // A client on node 1 keeps it up for the grace period: INFO ldm, then nothing until
    // the server closes the link and exits.
    let mut raw = Raw::connect(c.node(1).addr()).unwrap();
    raw.handshake().unwrap();
    let mut watcher = raw.stream().try_clone().unwrap();
    let ldm = std::thread::spawn(move || {
        raw.until(|l| l.starts_with("INFO ") && l.contains("\"ldm\":true"))
            .unwrap();
        // Open through most of the grace period.
        let open = read_outcome(&mut watcher, grace / 2);
        let closed = read_outcome(&mut watcher, Duration::from_secs(10));
        (open, closed)
    });
    let took = c.lame_duck_restart(1, Duration::from_secs(40)).unwrap();
    let (open, closed) = ldm.join().unwrap();
    assert_eq!(
        open,
        ReadOutcome::Timeout,
        "the link stays open in the grace"
    );
    assert!(
        matches!(closed, ReadOutcome::Eof | ReadOutcome::Reset),
        "{closed:?}"
    );
    assert!(
        took >= grace && took < grace + Duration::from_secs(5),
        "exit took {took:?} with a {grace:?} grace and one client"
    );
    assert_eq!(c.node(1).port(), port);
    assert_ne!(c.node(1).varz().unwrap()["server_id"], old_id);
    Raw::connect(c.node(1).addr()).unwrap().handshake().unwrap();
    // The peers announce the restarted node's client URL again.
    assert!(tether_testkit::wait_for(Duration::from_secs(10), || {
        announces(&c, 0, port)
    }));

    // A node without clients exits at once, without waiting out the grace.
    let took = c.lame_duck_restart(2, Duration::from_secs(40)).unwrap();
    assert!(took < grace, "exit took {took:?} without clients");
    c.wait_routes(Duration::from_secs(10)).unwrap();
}

/// Sends a `$JS.API` request over a raw connection and returns the JSON answer.
fn js_api(raw: &mut Raw, subject: &str, body: &str) -> serde_json::Value {
    raw.send(format!("PUB {subject} _INBOX.js {}\r\n{body}\r\n", body.len()).as_bytes())
        .unwrap();
    raw.until(|l| l.starts_with("MSG _INBOX.js ")).unwrap();
    serde_json::from_str(&raw.line().unwrap()).unwrap()
}

#[test]
fn jetstream_cluster_has_a_meta_leader_and_finds_a_stream_leader_after_a_kill() {
    let mut c = NatsCluster::start_with(
        3,
        ServerConfig {
            jetstream: true,
            ..ServerConfig::default()
        },
    )
    .unwrap();
    // Each node has its own name and its own store, under its own dir.
    let mut names = Vec::new();
    for i in 0..3 {
        let conf = std::fs::read_to_string(c.node(i).dir().join("server.conf")).unwrap();
        let store = c.node(i).dir().join("js");
        assert!(conf.contains(&*store.to_string_lossy()), "{conf}");
        assert!(
            conf.contains(&format!("server_name: \"node{i}\"")),
            "{conf}"
        );
        names.push(c.node(i).name().to_owned());
    }
    // start_with waited for a meta leader every node agrees on.
    let jsz = c.node(0).monitor("/jsz").unwrap();
    let leader = jsz["meta_cluster"]["leader"].as_str().unwrap().to_owned();
    assert!(names.contains(&leader), "{jsz}");
    assert_eq!(c.meta_leader().map(|i| names[i].clone()), Some(leader));
    assert_eq!(jsz["meta_cluster"]["cluster_size"], 3, "{jsz}");

    assert_eq!(c.stream_leader("$G", "R3"), None, "no such stream yet");
    let mut raw = Raw::connect(c.node(0).addr()).unwrap();
    raw.handshake().unwrap();
    raw.send(b"SUB _INBOX.js 1\r\n").unwrap();
    // Until the meta leader has every node's first stats, it may refuse to place
    // replicas ("no suitable peers", 10005): retry that (see wait_jetstream).
    let mut created = serde_json::Value::Null;
    tether_testkit::wait_for(Duration::from_secs(10), || {
        created = js_api(
            &mut raw,
            "$JS.API.STREAM.CREATE.R3",
            r#"{"name":"R3","subjects":["r3.>"],"storage":"memory","num_replicas":3}"#,
        );
        created["error"]["err_code"] != 10005
    });
    assert_eq!(created["config"]["num_replicas"], 3, "{created}");
    let first = c
        .wait_stream_leader("$G", "R3", Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        created["cluster"]["leader"].as_str(),
        Some(names[first].as_str()),
        "{created}"
    );
    assert_eq!(c.stream_leader("$G", "NOPE"), None);
    assert_eq!(c.stream_leader("OTHER", "R3"), None);

    c.kill(first);
    c.wait_jetstream(Duration::from_secs(20)).unwrap();
    let meta = c.meta_leader().unwrap();
    assert_ne!(meta, first, "a killed node is not the meta leader");
    let second = c
        .wait_stream_leader("$G", "R3", Duration::from_secs(20))
        .unwrap();
    assert_ne!(second, first, "a killed node leads nothing");

    c.restart(first).unwrap();
    let jsz = c.node(first).monitor("/jsz").unwrap();
    assert!(
        names.contains(&jsz["meta_cluster"]["leader"].as_str().unwrap().to_owned()),
        "{jsz}"
    );
}
