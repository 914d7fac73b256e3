//! Choosing listening ports that cannot collide with outgoing connections.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Linux's default when `/proc/sys/net/ipv4/ip_local_port_range` cannot be read.
const DEFAULT_EPHEMERAL: (u16, u16) = (32768, 60999);

static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
static RNG: AtomicU64 = AtomicU64::new(0);

/// A free TCP port on 127.0.0.1, outside the kernel's ephemeral port range.
///
/// Ports in the ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`, 32768–60999
/// when unreadable) may be taken by any outgoing connection the moment a server dies, so
/// a restart on the same port could fail. This picks randomly among the ports below the
/// range (from 10000), checks each by binding 127.0.0.1, and never returns the same port
/// twice in one process.
///
/// # Panics
/// When no port can be found after many attempts.
pub fn free_port() -> u16 {
    let (lo, hi) = candidate_range();
    let span = u64::from(hi - lo) + 1;
    let used = HANDED_OUT.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..20_000 {
        let port = lo + (next_random() % span) as u16;
        let mut used = used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if used.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            used.insert(port);
            return port;
        }
    }
    panic!("tether-testkit: no free port in {lo}..={hi}");
}

fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(str::parse::<u16>);
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .filter(|(lo, hi)| lo <= hi)
        .unwrap_or(DEFAULT_EPHEMERAL)
}

fn candidate_range() -> (u16, u16) {
    let (elo, ehi) = ephemeral_range();
    if elo > 11_000 {
        (10_000, elo - 1)
    } else if ehi < 64_000 {
        (ehi + 1, 65_535)
    } else {
        // The range covers almost everything: fall back to the low registered ports.
        (2_000, elo.saturating_sub(1).max(2_001))
    }
}

/// xorshift64*, seeded per process; good enough to spread ports between processes.
fn next_random() -> u64 {
    let mut x = RNG.load(Ordering::Relaxed);
    if x == 0 {
        let mut h = RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        x = h.finish() | 1;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    RNG.store(x, Ordering::Relaxed);
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_outside_the_ephemeral_range_and_unique() {
        let (elo, ehi) = ephemeral_range();
        let mut seen = HashSet::new();
        for _ in 0..50 {
            let p = free_port();
            assert!(!(elo..=ehi).contains(&p), "{p} is ephemeral");
            assert!(seen.insert(p), "{p} handed out twice");
        }
    }
}
