//! Hostile peers.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use common::{read_outcome, Raw, ReadOutcome};
use tether_testkit::{closed_port, wait_for, Hostile, HostilePeer, VALID_INFO};

const QUIET: Duration = Duration::from_millis(300);

#[test]
fn silent() {
    let h = HostilePeer::start(Hostile::Silent).unwrap();
    assert_eq!(h.url(), format!("nats://{}", h.addr()));
    let mut c = TcpStream::connect(h.addr()).unwrap();
    assert_eq!(read_outcome(&mut c, QUIET), ReadOutcome::Timeout);
    assert!(wait_for(Duration::from_secs(5), || h.accepted() == 1));
}

#[test]
fn garbage() {
    let h = HostilePeer::start(Hostile::Garbage(b"\x00\xffHELLO\r\n".to_vec())).unwrap();
    let mut c = TcpStream::connect(h.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = [0u8; 9];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"\x00\xffHELLO\r\n");
    assert_eq!(read_outcome(&mut c, QUIET), ReadOutcome::Timeout);
}

#[test]
fn http() {
    let h = HostilePeer::start(Hostile::Http).unwrap();
    let mut c = TcpStream::connect(h.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    assert!(s.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{s}");
}

#[test]
fn half_info() {
    let h = HostilePeer::start(Hostile::HalfInfo).unwrap();
    let mut c = TcpStream::connect(h.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = vec![0u8; 21];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got, b"INFO {\"server_id\":\"x\"");
    assert_eq!(read_outcome(&mut c, QUIET), ReadOutcome::Timeout);
}

#[test]
fn no_pong() {
    let h = HostilePeer::start(Hostile::NoPong).unwrap();
    let mut c = Raw::connect(h.addr()).unwrap();
    assert_eq!(c.line().unwrap().as_bytes(), VALID_INFO);
    c.send(b"CONNECT {\"protocol\":1}\r\nPING\r\n").unwrap();
    assert_eq!(
        read_outcome(c.reader.get_mut(), QUIET),
        ReadOutcome::Timeout
    );
}

#[test]
fn script() {
    let h = HostilePeer::start(Hostile::Script(b"-ERR 'Stale Connection'\r\n".to_vec())).unwrap();
    let mut c = Raw::connect(h.addr()).unwrap();
    c.handshake().unwrap();
    assert_eq!(c.line().unwrap(), "-ERR 'Stale Connection'\r\n");
    assert_eq!(
        read_outcome(c.reader.get_mut(), QUIET),
        ReadOutcome::Timeout
    );
    // A second connection gets the same treatment.
    let mut c = Raw::connect(h.addr()).unwrap();
    c.handshake().unwrap();
    assert_eq!(h.accepted(), 2);
}

#[test]
fn drop_closes_connections() {
    let h = HostilePeer::start(Hostile::Silent).unwrap();
    let addr = h.addr();
    let mut c = TcpStream::connect(addr).unwrap();
    assert!(wait_for(Duration::from_secs(5), || h.accepted() == 1));
    drop(h);
    assert!(matches!(
        read_outcome(&mut c, Duration::from_secs(5)),
        ReadOutcome::Eof | ReadOutcome::Reset
    ));
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn closed_port_refuses() {
    let p = closed_port();
    let e = TcpStream::connect(("127.0.0.1", p)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
}
