//! Clusters: discovery, failover and lame duck mode against real 3-node clusters.

mod common;
use common::{cluster_client, next_event, wait_interest, T};

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tether::{ConnectOptions, EventKind, State};
use tether_testkit::{NatsCluster, ServerConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovers_servers_and_fails_over_fast_after_kill() {
    let (mut cluster, client, mut events) = cluster_client(3, ConnectOptions::new()).await;
    let mut sub = client.subscribe("fo").await.unwrap();
    client.flush().await.unwrap();
    cluster.kill(0);
    let killed = Instant::now();
    // The first attempt goes to a fresh node, at once.
    let EventKind::Reconnecting {
        attempt,
        server: first,
        delay,
        ..
    } = next_event(&mut events, |e| matches!(e, EventKind::Reconnecting { .. })).await
    else {
        unreachable!()
    };
    assert_eq!((attempt, delay), (1, Duration::ZERO));
    assert_ne!(first, cluster.node(0).url(), "not the node that just died");
    let EventKind::Reconnected { server, .. } =
        next_event(&mut events, |e| matches!(e, EventKind::Reconnected { .. })).await
    else {
        unreachable!()
    };
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "reconnected in {:?}",
        killed.elapsed()
    );
    assert_ne!(server, cluster.node(0).url(), "moved to a live node");
    client.publish("fo", "after").await.unwrap();
    let m = tokio::time::timeout(T, sub.next()).await.unwrap().unwrap();
    assert_eq!(&m.payload[..], b"after", "the subscription came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lame_duck_moves_to_another_node_without_loss() {
    let cluster = NatsCluster::start_with(
        3,
        ServerConfig {
            lame_duck_for_tests: true,
            ..ServerConfig::default()
        },
    )
    .unwrap();
    cluster.wait_routes(T).unwrap();
    let publisher = ConnectOptions::new()
        .ldm_jitter(Duration::from_millis(200))
        .connect(cluster.node(0).url())
        .await
        .unwrap();
    let subscriber = tether::connect(cluster.node(1).url()).await.unwrap();
    let mut sub = subscriber.subscribe("ldm").await.unwrap();
    subscriber.flush().await.unwrap();
    wait_interest(&publisher, &mut sub, "ldm").await;
    let mut events = publisher.events();
    let p = publisher.clone();
    let pump = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for i in 0..3000u64 {
            tick.tick().await;
            p.publish("ldm", i.to_be_bytes()).await.unwrap();
        }
        p.flush().await.unwrap();
    });
    // Lame duck mid-stream: once the subscriber has seen the first 200 messages.
    let mut seen = BTreeSet::new();
    while seen.len() < 200 {
        let m = tokio::time::timeout(T, sub.next()).await.unwrap().unwrap();
        if m.payload.len() == 8 {
            seen.insert(u64::from_be_bytes(m.payload[..].try_into().unwrap()));
        }
    }
    let mut states = publisher.status_watch();
    let left_connected =
        tokio::spawn(async move { states.wait_for(|s| *s != State::Connected).await.is_ok() });
    cluster.node(0).lame_duck().unwrap();
    next_event(&mut events, |e| matches!(e, EventKind::LameDuck { .. })).await;
    let EventKind::Migrated {
        from,
        to,
        unconfirmed_msgs,
        ..
    } = next_event(&mut events, |e| matches!(e, EventKind::Migrated { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(from, cluster.node(0).url());
    assert_ne!(to, cluster.node(0).url());
    assert_eq!(
        unconfirmed_msgs, 0,
        "the old link's last PONG confirmed everything"
    );
    assert_eq!(publisher.connected_server().as_deref(), Some(to.as_str()));
    pump.await.unwrap();
    while seen.len() < 3000 {
        let m = tokio::time::timeout(T, sub.next())
            .await
            .unwrap_or_else(|_| panic!("lost messages: got {} of 3000", seen.len()))
            .unwrap();
        if m.payload.len() == 8 {
            seen.insert(u64::from_be_bytes(m.payload[..].try_into().unwrap()));
        }
    }
    assert_eq!(publisher.status(), State::Connected);
    assert!(
        !left_connected.is_finished(),
        "status stayed Connected through the switch"
    );
    left_connected.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_reconnect_is_a_planned_switch() {
    let (cluster, client, mut events) = cluster_client(
        2,
        ConnectOptions::new().ldm_overlap(Duration::from_millis(100)),
    )
    .await;
    let mut sub = client.subscribe("fr").await.unwrap();
    client.flush().await.unwrap();
    client.force_reconnect();
    let EventKind::Migrated { to, .. } =
        next_event(&mut events, |e| matches!(e, EventKind::Migrated { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(to, cluster.node(1).url());
    assert_eq!(client.status(), State::Connected);
    client.publish("fr", "x").await.unwrap();
    let m = tokio::time::timeout(T, sub.next()).await.unwrap().unwrap();
    assert_eq!(&m.payload[..], b"x", "subscriptions moved with the switch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_info_adds_and_prunes_discovered_nodes() {
    let (mut cluster, client, mut events) = cluster_client(2, ConnectOptions::new()).await;
    let added = cluster.add_node().unwrap();
    cluster.wait_routes(T).unwrap();
    let new_url = cluster.node(added).url();
    let EventKind::ServersChanged { added: list, .. } = next_event(
        &mut events,
        |e| matches!(e, EventKind::ServersChanged { added, .. } if !added.is_empty()),
    )
    .await
    else {
        unreachable!()
    };
    assert!(list.contains(&new_url), "{list:?} should contain {new_url}");
    assert!(client.servers().contains(&new_url));
    cluster.kill(added);
    let EventKind::ServersChanged { removed, .. } = next_event(
        &mut events,
        |e| matches!(e, EventKind::ServersChanged { removed, .. } if !removed.is_empty()),
    )
    .await
    else {
        unreachable!()
    };
    assert_eq!(removed, vec![new_url.clone()]);
    // A peer that has not noticed the kill yet can gossip the node's URL again for a
    // moment (its INFO re-adds it); it must end up out of the pool.
    assert!(
        tether_testkit::wait_for(T, || !client.servers().contains(&new_url)),
        "{new_url} still in {:?}",
        client.servers()
    );
    assert_eq!(client.status(), State::Connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_behind_proxies_fails_over_through_advertised_proxies() {
    use tether_testkit::Proxy;
    // Proxies in front of every node, and each node advertises its proxy to clients.
    let ports: Vec<u16> = (0..3).map(|_| tether_testkit::free_port()).collect();
    let advertise: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let cluster = NatsCluster::start_with_advertise(3, ServerConfig::default(), advertise).unwrap();
    cluster.wait_routes(T).unwrap();
    let proxies: Vec<Proxy> = (0..3)
        .map(|i| Proxy::start_on(ports[i], cluster.node(i).addr()).unwrap())
        .collect();
    let client = ConnectOptions::new()
        .ping_interval(Duration::from_millis(300))
        .pong_timeout(Duration::from_millis(300))
        .connect(proxies[0].url())
        .await
        .unwrap();
    let mut events = client.events();
    assert!(
        tether_testkit::wait_for(T, || client.servers().len() == 3),
        "the proxies of the other nodes are discovered: {:?}",
        client.servers()
    );
    let mut sub = client.subscribe("bp").await.unwrap();
    client.flush().await.unwrap();
    proxies[0].black_hole();
    let EventKind::Reconnected { server, .. } =
        next_event(&mut events, |e| matches!(e, EventKind::Reconnected { .. })).await
    else {
        unreachable!()
    };
    assert_ne!(server, proxies[0].url());
    client.publish("bp", "x").await.unwrap();
    let m = tokio::time::timeout(T, sub.next()).await.unwrap().unwrap();
    assert_eq!(&m.payload[..], b"x");
}
