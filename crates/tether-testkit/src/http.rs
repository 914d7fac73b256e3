//! A minimal HTTP/1.0 GET for the server's monitoring port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::TestkitError;

/// `GET path` on `addr`; returns the status code and the body.
pub(crate) fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), TestkitError> {
    let url = format!("http://{addr}{path}");
    let fail = |detail: String| TestkitError::Monitor {
        url: url.clone(),
        detail,
    };
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| fail(format!("connect: {e}")))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|()| s.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| fail(e.to_string()))?;
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| fail(format!("write: {e}")))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| fail(format!("read: {e}")))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail(format!("no header end in {text:?}")))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| fail(format!("bad status line in {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// `GET path` and parse a 200 answer as JSON.
pub(crate) fn get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value, TestkitError> {
    let (status, body) = get(addr, path)?;
    let url = format!("http://{addr}{path}");
    if status != 200 {
        return Err(TestkitError::Monitor {
            url,
            detail: format!("status {status}: {body}"),
        });
    }
    serde_json::from_str(&body).map_err(|e| TestkitError::Monitor {
        url,
        detail: format!("bad JSON ({e}): {body}"),
    })
}
