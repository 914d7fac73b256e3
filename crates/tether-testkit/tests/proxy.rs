//! The fault-injecting proxy: pass, latency, cut, pause, black hole.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{read_outcome, Echo, Raw, ReadOutcome};
use tether_testkit::{wait_for, CutMode, NatsServer, Proxy};

const QUIET: Duration = Duration::from_millis(300);

#[test]
fn pass_forwards_nats_and_counts_connections() {
    let s = NatsServer::start().unwrap();
    let p = Proxy::start(s.addr()).unwrap();
    assert_eq!(p.url(), format!("nats://127.0.0.1:{}", p.port()));
    let mut c = Raw::connect(p.addr()).unwrap();
    c.handshake().unwrap();
    assert_eq!(p.connection_count(), 1);
    let mut c2 = Raw::connect(p.addr()).unwrap();
    c2.handshake().unwrap();
    assert_eq!(p.connection_count(), 2);
    drop(c2);
    assert!(wait_for(Duration::from_secs(5), || p.connection_count() == 1));
    c.ping().unwrap();
}

#[test]
fn latency_delays_both_directions_in_order() {
    let echo = Echo::start();
    let p = Proxy::start(echo.addr).unwrap();
    let mut c = TcpStream::connect(p.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    p.set_latency(Duration::from_millis(150));
    let t = Instant::now();
    for i in 0..10u8 {
        c.write_all(&[i]).unwrap();
    }
    let mut got = [0u8; 10];
    c.read_exact(&mut got).unwrap();
    let rtt = t.elapsed();
    assert_eq!(got, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert!(rtt >= Duration::from_millis(290), "{rtt:?}");
    assert!(rtt < Duration::from_secs(3), "{rtt:?}");
    p.pass();
    let t = Instant::now();
    c.write_all(b"x").unwrap();
    c.read_exact(&mut got[..1]).unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn cut_rst_and_fin() {
    let s = NatsServer::start().unwrap();
    let p = Proxy::start(s.addr()).unwrap();

    let mut c = Raw::connect(p.addr()).unwrap();
    c.handshake().unwrap();
    p.cut(CutMode::Rst);
    assert_eq!(p.connection_count(), 0);
    assert_eq!(
        read_outcome(c.reader.get_mut(), Duration::from_secs(5)),
        ReadOutcome::Reset
    );
    // The server side was reset too.
    assert!(wait_for(Duration::from_secs(5), || {
        s.connz().unwrap()["num_connections"].as_u64() == Some(0)
    }));

    let mut c = Raw::connect(p.addr()).unwrap();
    c.handshake().unwrap();
    p.cut(CutMode::Fin);
    assert_eq!(
        read_outcome(c.reader.get_mut(), Duration::from_secs(5)),
        ReadOutcome::Eof
    );
    assert!(wait_for(Duration::from_secs(5), || {
        s.connz().unwrap()["num_connections"].as_u64() == Some(0)
    }));

    // New connections pass.
    Raw::connect(p.addr()).unwrap().handshake().unwrap();
}

#[test]
fn pause_holds_everything_and_resumes_intact() {
    let echo = Echo::start();
    let p = Proxy::start(echo.addr).unwrap();
    let mut c = TcpStream::connect(p.addr()).unwrap();
    c.write_all(b"hi").unwrap();
    let mut two = [0u8; 2];
    c.read_exact(&mut two).unwrap();
    p.pause();
    // Back-pressure: writes stop being accepted.
    c.set_nonblocking(true).unwrap();
    let mut written = 0usize;
    let chunk: Vec<u8> = (0..65_536usize).map(|i| (i % 251) as u8).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let blocked = loop {
        let off = written % chunk.len();
        match c.write(&chunk[off..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break true,
            Err(e) => panic!("{e}"),
        }
        if Instant::now() > deadline || written > 256 << 20 {
            break false;
        }
    };
    assert!(blocked, "wrote {written} bytes into a paused proxy");
    c.set_nonblocking(false).unwrap();
    // Nothing comes back while paused.
    assert_eq!(read_outcome(&mut c, QUIET), ReadOutcome::Timeout);
    // A new connection during the pause is held too.
    let mut c2 = TcpStream::connect(p.addr()).unwrap();
    c2.write_all(b"new").unwrap();
    assert_eq!(read_outcome(&mut c2, QUIET), ReadOutcome::Timeout);

    p.pass();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut back = vec![0u8; written];
    c.read_exact(&mut back).unwrap();
    assert!(
        back.iter()
            .enumerate()
            .all(|(i, b)| *b == ((i % chunk.len()) % 251) as u8),
        "echoed bytes differ"
    );
    let mut three = [0u8; 3];
    c2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c2.read_exact(&mut three).unwrap();
    assert_eq!(&three, b"new");
}

#[test]
fn black_hole_then_reset_on_pass() {
    let s = NatsServer::start().unwrap();
    let p = Proxy::start(s.addr()).unwrap();
    let mut old = Raw::connect(p.addr()).unwrap();
    old.handshake().unwrap();

    p.black_hole();
    old.send(b"PING\r\n").unwrap();
    assert_eq!(
        read_outcome(old.reader.get_mut(), QUIET),
        ReadOutcome::Timeout,
        "a PING crossed the black hole"
    );
    // New connections are accepted but get nothing (no INFO).
    let mut during = TcpStream::connect(p.addr()).unwrap();
    assert_eq!(read_outcome(&mut during, QUIET), ReadOutcome::Timeout);
    assert_eq!(p.connection_count(), 2);

    p.pass();
    assert_eq!(
        read_outcome(old.reader.get_mut(), Duration::from_secs(5)),
        ReadOutcome::Reset
    );
    assert_eq!(
        read_outcome(&mut during, Duration::from_secs(5)),
        ReadOutcome::Reset
    );
    // The server side of the old connection was reset as well.
    assert!(wait_for(Duration::from_secs(5), || {
        s.connz().unwrap()["num_connections"].as_u64() == Some(0)
    }));
    let mut fresh = Raw::connect(p.addr()).unwrap();
    fresh.handshake().unwrap();
    fresh.ping().unwrap();
}

#[test]
fn set_upstream_moves_new_connections() {
    let a = Echo::start();
    let b = Echo::start();
    let p = Proxy::start(a.addr).unwrap();
    let mut c = TcpStream::connect(p.addr()).unwrap();
    c.write_all(b"1").unwrap();
    c.read_exact(&mut [0u8; 1]).unwrap();
    p.set_upstream(b.addr);
    let mut c2 = TcpStream::connect(p.addr()).unwrap();
    c2.write_all(b"2").unwrap();
    c2.read_exact(&mut [0u8; 1]).unwrap();
    assert_eq!(a.accepted(), 1);
    assert_eq!(b.accepted(), 1);
    // An unreachable upstream resets the client.
    p.set_upstream(([127, 0, 0, 1], tether_testkit::closed_port()).into());
    let mut c3 = TcpStream::connect(p.addr()).unwrap();
    assert_eq!(
        read_outcome(&mut c3, Duration::from_secs(5)),
        ReadOutcome::Reset
    );
}

#[test]
fn drop_closes_everything() {
    let echo = Echo::start();
    let p = Proxy::start(echo.addr).unwrap();
    let addr = p.addr();
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"x").unwrap();
    c.read_exact(&mut [0u8; 1]).unwrap();
    drop(p);
    assert!(matches!(
        read_outcome(&mut c, Duration::from_secs(5)),
        ReadOutcome::Eof | ReadOutcome::Reset
    ));
    assert!(TcpStream::connect(addr).is_err());
}
