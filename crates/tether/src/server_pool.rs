//! The server pool and the reconnect backoff: pure policies, time and randomness passed in
//! (DESIGN semantics 5).
//!
//! Each server has a due time and a count of consecutive failures (reset by a completed
//! handshake). The next attempt goes to the server due earliest; among servers due at
//! once, fewer failures first, and the server whose link just dropped last. A server
//! leaves the pool after `max_reconnects` consecutive failures. Servers announced in INFO
//! `connect_urls` join the pool and are pruned when no longer announced (an INFO without
//! the field prunes nothing; the connected server is never pruned).

use std::fmt;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::Rng;

use crate::options::{DEFAULT_EARLY_RECONNECT_CAP, DEFAULT_RECONNECT_BASE, EARLY_OUTAGE};

/// A server URL: `nats://[user:pass@|token@]host[:port]`.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerAddr {
    scheme: String,
    host: String,
    port: u16,
    user: Option<String>,
    pass: Option<String>,
}

impl ServerAddr {
    /// Parse a URL. A bare `host:port` means `nats://host:port`; the port defaults to 4222.
    pub fn parse(input: &str) -> Result<Self, String> {
        let with_scheme = if input.contains("://") {
            input.to_owned()
        } else {
            format!("nats://{input}")
        };
        let url = url::Url::parse(&with_scheme).map_err(|e| format!("`{input}`: {e}"))?;
        let scheme = url.scheme().to_ascii_lowercase();
        if scheme == "tls" {
            // Never dial a tls:// server in plaintext: credentials would go out in clear.
            return Err(format!(
                "`{input}`: TLS is not supported yet by this tether build, and a tls:// \
                 server is never contacted in plaintext; use nats:// for a server without TLS"
            ));
        }
        if scheme != "nats" {
            return Err(format!(
                "`{input}`: unsupported scheme `{scheme}`; use nats:// (TLS is not supported yet)"
            ));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("`{input}`: no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let user = (!url.username().is_empty()).then(|| decode(url.username()));
        let pass = url.password().map(decode);
        Ok(Self {
            scheme,
            host,
            port: url.port().unwrap_or(4222),
            user,
            pass,
        })
    }

    /// The host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// User (or token, when no password is given) from the URL.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Password from the URL.
    pub fn pass(&self) -> Option<&str> {
        self.pass.as_deref()
    }

    /// A discovered address inherits the scheme and credentials of the URL it was
    /// learnt through.
    pub(crate) fn inherit(&self, discovered: &str) -> Option<Self> {
        let mut d = ServerAddr::parse(discovered).ok()?;
        d.scheme.clone_from(&self.scheme);
        if d.user.is_none() {
            d.user.clone_from(&self.user);
            d.pass.clone_from(&self.pass);
        }
        Some(d)
    }

    fn key(&self) -> (String, u16) {
        (self.host.to_ascii_lowercase(), self.port)
    }
}

fn decode(s: &str) -> String {
    // Percent-decoding of credentials; invalid sequences are kept as they are.
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(Ok(v)) = s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16)) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_owned())
}

impl fmt::Display for ServerAddr {
    /// The URL with credentials left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

impl fmt::Debug for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Reconnect backoff (DESIGN options): the first retry at once, then exponential from
/// 50 ms with full jitter, capped at 500 ms during the first 10 s of an outage and at
/// `reconnect_wait` after. `failures` counts consecutive failures of this server.
pub fn backoff_delay(
    failures: u32,
    outage_elapsed: Duration,
    reconnect_wait: Duration,
    rng: &mut impl Rng,
) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let cap = if outage_elapsed < EARLY_OUTAGE {
        DEFAULT_EARLY_RECONNECT_CAP.min(reconnect_wait)
    } else {
        reconnect_wait
    };
    let exp = DEFAULT_RECONNECT_BASE.saturating_mul(1u32 << (failures - 1).min(20));
    let ceiling = exp.min(cap);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.gen_range(0..=nanos))
}

/// TLS jitter: a uniform 0..`jitter` added to every delay but the first.
pub fn tls_jitter(failures: u32, jitter: Duration, rng: &mut impl Rng) -> Duration {
    if failures == 0 || jitter.is_zero() {
        return Duration::ZERO;
    }
    uniform_below(jitter, rng)
}

/// A uniform random duration in `0..d` (zero when `d` is zero).
pub(crate) fn uniform_below(d: Duration, rng: &mut impl Rng) -> Duration {
    let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rng.gen_range(0..nanos))
}

/// One server in the pool.
#[derive(Debug, Clone)]
pub struct PoolEntry {
    /// Its address.
    pub addr: ServerAddr,
    /// Learnt from INFO `connect_urls`.
    pub discovered: bool,
    /// Consecutive failures.
    pub failures: u32,
    /// When it may be tried next.
    pub due: Instant,
    /// When its link last dropped (tie-break: the most recently dropped goes last).
    pub last_dropped: Option<Instant>,
    /// Auth strikes in a row and when the last came.
    pub auth_strikes: u32,
    /// When the last auth strike came.
    pub last_strike: Option<Instant>,
    /// Which credentials the strikes were against (strikes count only while unchanged).
    pub strike_credentials: Option<u64>,
    /// In lame duck mode: not a planned switch's target while the mark holds (see
    /// [`LameDuckMark`]); a reconnect tries it after every other server due at once.
    pub lame_duck: Option<LameDuckMark>,
    /// The last attempt was refused while the user JWT it used had expired.
    pub expired_refused: bool,
}

/// How long a lame-duck mark holds at most when the node is never seen back. A node in
/// lame duck mode refuses new connections anyway, so a mark that ends early costs one
/// refused attempt; one that lasted forever would leave a rolling restart with no server
/// to move to (B3 of the semantics review).
pub const LAME_DUCK_MARK_MAX: Duration = Duration::from_secs(30);

/// A server announced lame duck mode. The mark ends when the node is back: peers stop
/// announcing a lame-duck node's URLs in `connect_urls` and announce them again when it
/// rejoins, so an INFO from another node that lists the URL again, after one that left it
/// out, ends it. A completed handshake with the server ends it too, and it lapses after
/// [`LAME_DUCK_MARK_MAX`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LameDuckMark {
    /// When the server announced it.
    pub since: Instant,
    /// The node's INFO `server_id`: the same node under another address is in lame duck
    /// mode too.
    pub server_id: Option<String>,
    /// An INFO from another node left this server out of its `connect_urls`.
    pub absent_seen: bool,
}

impl LameDuckMark {
    /// True while the mark holds at `now`.
    pub fn holds(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) < LAME_DUCK_MARK_MAX
    }
}

/// What an attempt's failure means for the auth rules of DESIGN semantics 5, as decided by
/// [`ServerPool::record_auth`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthVerdict {
    /// Not an auth refusal (refused connection, timeout, ...): strikes count only in a row,
    /// so any strike count starts over.
    NotAuth,
    /// A transient refusal (authentication timeout, connection limits, throttling): back
    /// off, no strike; the strike count starts over too.
    Transient,
    /// `Authorization Violation` or `User Authentication Revoked`: the strikes in a row
    /// with these credentials, this one included.
    Strike {
        /// Strikes in a row.
        strikes: u32,
    },
    /// `User/Account Authentication Expired`: reconnect at once with credentials read again.
    Expired,
    /// Refused while the user JWT in use is past its `exp` (the server answers a plain
    /// `Authorization Violation`): never a strike; retry at the backoff, reading the
    /// credentials again each time.
    ExpiredRefused {
        /// True for the first refusal of this kind in a row.
        first: bool,
    },
}

/// The pool.
#[derive(Debug, Clone)]
pub struct ServerPool {
    entries: Vec<PoolEntry>,
    max_reconnects: Option<u32>,
}

impl ServerPool {
    /// A pool of the given servers, shuffled unless `no_randomize`.
    pub fn new(
        servers: Vec<ServerAddr>,
        no_randomize: bool,
        max_reconnects: Option<u32>,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Self {
        let mut entries: Vec<PoolEntry> = Vec::new();
        for addr in servers {
            if entries.iter().any(|e| e.addr.key() == addr.key()) {
                continue;
            }
            entries.push(PoolEntry {
                addr,
                discovered: false,
                failures: 0,
                due: now,
                last_dropped: None,
                auth_strikes: 0,
                last_strike: None,
                strike_credentials: None,
                lame_duck: None,
                expired_refused: false,
            });
        }
        if !no_randomize {
            entries.shuffle(rng);
        }
        Self {
            entries,
            max_reconnects,
        }
    }

    /// The servers, in pool order.
    pub fn entries(&self) -> &[PoolEntry] {
        &self.entries
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no server is left.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The server to try next: due earliest; ties by fewer failures, then the one whose
    /// link dropped longest ago (or never). A server under a lame-duck mark goes after
    /// every other server due at the same time, but is not excluded: it may be back (and
    /// healthy) while others fail.
    pub fn next(&self, now: Instant) -> Option<usize> {
        self.best(now, |_, _| true)
    }

    /// A planned switch's next target: the best server other than `i` and those in
    /// `skip`, one not under a lame-duck mark if there is any. A marked server is a last
    /// resort rather than excluded: its mark may outlive its lame duck mode (its URL in
    /// `connect_urls` may differ from the configured one), a node still in lame duck mode
    /// refuses the connection at once, and a handshake that reaches it under another
    /// address shows its `server_id`.
    pub fn next_other(&self, i: usize, now: Instant, skip: &[ServerAddr]) -> Option<usize> {
        let other =
            |j: usize, e: &PoolEntry| j != i && !skip.iter().any(|s| s.key() == e.addr.key());
        self.best(now, |j, e| {
            other(j, e) && !e.lame_duck.as_ref().is_some_and(|m| m.holds(now))
        })
        .or_else(|| self.best(now, other))
    }

    /// The first among the entries `keep` accepts, in the order of [`Self::next`].
    fn best(&self, now: Instant, keep: impl Fn(usize, &PoolEntry) -> bool) -> Option<usize> {
        let ldm = |e: &PoolEntry| e.lame_duck.as_ref().is_some_and(|m| m.holds(now));
        self.entries
            .iter()
            .enumerate()
            .filter(|(j, e)| keep(*j, e))
            .min_by(|(ai, a), (bi, b)| {
                a.due
                    .cmp(&b.due)
                    .then(ldm(a).cmp(&ldm(b)))
                    .then(a.failures.cmp(&b.failures))
                    .then(a.last_dropped.cmp(&b.last_dropped))
                    .then(ai.cmp(bi))
            })
            .map(|(j, _)| j)
    }

    /// The entry at `i`.
    pub fn get(&self, i: usize) -> Option<&PoolEntry> {
        self.entries.get(i)
    }

    /// Index of a server.
    pub fn position(&self, addr: &ServerAddr) -> Option<usize> {
        self.entries.iter().position(|e| e.addr.key() == addr.key())
    }

    /// A handshake with `i` completed: its failures reset.
    pub fn record_success(&mut self, i: usize) {
        if let Some(e) = self.entries.get_mut(i) {
            e.failures = 0;
            e.auth_strikes = 0;
            e.lame_duck = None;
        }
    }

    /// The link to `i` dropped at `now`: it is due at once, but after servers that did not
    /// just drop.
    pub fn record_dropped(&mut self, i: usize, now: Instant) {
        if let Some(e) = self.entries.get_mut(i) {
            e.last_dropped = Some(now);
            e.due = now;
        }
    }

    /// An attempt to `i` failed; it is due again after `delay`. Returns the removed entry
    /// when it reached max_reconnects.
    pub fn record_failure(&mut self, i: usize, now: Instant, delay: Duration) -> Option<PoolEntry> {
        let e = self.entries.get_mut(i)?;
        e.failures += 1;
        // A user's reconnect_delay may return anything: never overflow.
        e.due = tether_proto::time::saturating_add(now, delay);
        if self.max_reconnects.is_some_and(|m| e.failures >= m) {
            return Some(self.entries.remove(i));
        }
        None
    }

    /// Remove `i` (auth failures, for example).
    pub fn remove(&mut self, i: usize) -> Option<PoolEntry> {
        (i < self.entries.len()).then(|| self.entries.remove(i))
    }

    /// Apply the auth rules of DESIGN semantics 5 to a failed attempt on `i`. `class` is
    /// the server's -ERR class (None when the attempt failed otherwise), `credentials`
    /// identifies the credentials used, `jwt_expired` says whether the user JWT they held
    /// was already past its `exp`. Strikes count in a row, at least `reconnect_wait`
    /// apart, with unchanged credentials.
    pub fn record_auth(
        &mut self,
        i: usize,
        class: Option<tether_proto::server_err::AuthErrorClass>,
        credentials: Option<u64>,
        jwt_expired: bool,
        now: Instant,
        reconnect_wait: Duration,
    ) -> AuthVerdict {
        use tether_proto::server_err::AuthErrorClass;
        let Some(e) = self.entries.get_mut(i) else {
            return AuthVerdict::NotAuth;
        };
        let was_expired_refused = std::mem::take(&mut e.expired_refused);
        let clear = |e: &mut PoolEntry| {
            e.auth_strikes = 0;
            e.last_strike = None;
            e.strike_credentials = None;
        };
        if jwt_expired
            && matches!(
                class,
                Some(AuthErrorClass::Strike | AuthErrorClass::Expired)
            )
        {
            // The JWT itself is past its exp: neither a strike nor a reason to retry at
            // once with the same file; back off and read the credentials again.
            clear(e);
            e.expired_refused = true;
            return AuthVerdict::ExpiredRefused {
                first: !was_expired_refused,
            };
        }
        let mut class = class;
        if class == Some(AuthErrorClass::Expired) {
            // Expired again with the very same credentials is a strike.
            if e.last_strike.is_some() && e.strike_credentials == credentials {
                class = Some(AuthErrorClass::Strike);
            } else {
                e.last_strike = Some(now);
                e.strike_credentials = credentials;
                return AuthVerdict::Expired;
            }
        }
        match class {
            Some(AuthErrorClass::Strike) => {
                let same = e.strike_credentials == credentials;
                let spaced = e
                    .last_strike
                    .is_none_or(|t| now.duration_since(t) >= reconnect_wait);
                let strikes = if !same {
                    // New credentials (a rotated creds file) start over.
                    1
                } else if spaced {
                    e.auth_strikes + 1
                } else {
                    e.auth_strikes.max(1)
                };
                e.auth_strikes = strikes;
                if !same || spaced {
                    // A strike too soon after the last one does not restart the spacing.
                    e.last_strike = Some(now);
                }
                e.strike_credentials = credentials;
                AuthVerdict::Strike { strikes }
            }
            Some(AuthErrorClass::Transient) => {
                clear(e);
                AuthVerdict::Transient
            }
            _ => {
                clear(e);
                AuthVerdict::NotAuth
            }
        }
    }

    /// Make every server due now (force_reconnect while reconnecting).
    pub fn make_all_due(&mut self, now: Instant) {
        for e in &mut self.entries {
            e.due = now;
        }
    }

    /// Mark `i` as in lame duck mode at `now`, with its INFO `server_id` when known. Every
    /// other entry already known to reach the same node (by `server_id`) is marked too.
    pub fn mark_lame_duck(&mut self, i: usize, server_id: Option<&str>, now: Instant) {
        let server_id = server_id.filter(|s| !s.is_empty()).map(str::to_owned);
        for (j, e) in self.entries.iter_mut().enumerate() {
            let same_node = server_id.is_some()
                && e.lame_duck.as_ref().and_then(|m| m.server_id.as_ref()) == server_id.as_ref();
            if j == i || same_node {
                e.lame_duck = Some(LameDuckMark {
                    since: now,
                    server_id: server_id.clone(),
                    absent_seen: false,
                });
            }
        }
    }

    /// True when `server_id` belongs to a node under a lame-duck mark at `now` (a switch
    /// that reached it under another address goes on to the next server).
    pub fn is_lame_duck_node(&self, server_id: &str, now: Instant) -> bool {
        !server_id.is_empty()
            && self.entries.iter().any(|e| {
                e.lame_duck
                    .as_ref()
                    .is_some_and(|m| m.holds(now) && m.server_id.as_deref() == Some(server_id))
            })
    }

    /// An INFO from `via` announced `connect_urls`: lame-duck marks of other servers end
    /// when their URL is listed again after an INFO that left it out (the node rejoined).
    /// An empty list says nothing.
    pub fn note_announced(&mut self, connect_urls: &[String], via: &ServerAddr) {
        if connect_urls.is_empty() {
            return;
        }
        let announced: Vec<(String, u16)> = connect_urls
            .iter()
            .filter_map(|u| via.inherit(u))
            .map(|a| a.key())
            .collect();
        for e in &mut self.entries {
            if e.addr.key() == via.key() {
                continue;
            }
            let Some(mark) = e.lame_duck.as_mut() else {
                continue;
            };
            if !announced.contains(&e.addr.key()) {
                mark.absent_seen = true;
            } else if mark.absent_seen {
                e.lame_duck = None;
            }
        }
    }

    /// Merge INFO `connect_urls` learnt through `via` (the connected server). Returns the
    /// servers added and removed. An empty list prunes nothing; `via` is never pruned.
    pub fn merge_discovered(
        &mut self,
        connect_urls: &[String],
        via: &ServerAddr,
        now: Instant,
        rng: &mut impl Rng,
        shuffle: bool,
    ) -> (Vec<String>, Vec<String>) {
        if connect_urls.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let announced: Vec<ServerAddr> =
            connect_urls.iter().filter_map(|u| via.inherit(u)).collect();
        let mut added = Vec::new();
        let mut new_entries = Vec::new();
        for addr in &announced {
            if self.position(addr).is_none()
                && !new_entries
                    .iter()
                    .any(|e: &PoolEntry| e.addr.key() == addr.key())
            {
                added.push(addr.to_string());
                new_entries.push(PoolEntry {
                    addr: addr.clone(),
                    discovered: true,
                    failures: 0,
                    due: now,
                    last_dropped: None,
                    auth_strikes: 0,
                    last_strike: None,
                    strike_credentials: None,
                    lame_duck: None,
                    expired_refused: false,
                });
            }
        }
        let mut removed = Vec::new();
        self.entries.retain(|e| {
            let keep = !e.discovered
                || e.addr.key() == via.key()
                || announced.iter().any(|a| a.key() == e.addr.key());
            if !keep {
                removed.push(e.addr.to_string());
            }
            keep
        });
        if shuffle {
            new_entries.shuffle(rng);
        }
        self.entries.extend(new_entries);
        (added, removed)
    }

    /// Replace the configured servers (set_server_pool). Failure counts of servers kept
    /// are kept.
    pub fn replace(
        &mut self,
        servers: Vec<ServerAddr>,
        now: Instant,
        rng: &mut impl Rng,
        shuffle: bool,
    ) {
        let mut fresh = ServerPool::new(servers, !shuffle, self.max_reconnects, now, rng);
        for e in &mut fresh.entries {
            if let Some(old) = self.entries.iter().find(|o| o.addr.key() == e.addr.key()) {
                e.failures = old.failures;
                e.due = old.due;
                e.lame_duck = old.lame_duck.clone();
            }
        }
        self.entries = fresh.entries;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn addrs(list: &[&str]) -> Vec<ServerAddr> {
        list.iter().map(|s| ServerAddr::parse(s).unwrap()).collect()
    }

    #[test]
    fn strikes_count_only_in_a_row_spaced_and_with_the_same_credentials() {
        use tether_proto::server_err::AuthErrorClass::{Expired, Strike, Transient};
        let now = Instant::now();
        let wait = Duration::from_secs(2);
        let mut rng = SmallRng::seed_from_u64(1);
        let fresh = |rng: &mut SmallRng| ServerPool::new(addrs(&["a:1"]), true, None, now, rng);
        let s = |n| AuthVerdict::Strike { strikes: n };
        let t1 = now + Duration::from_millis(500);
        let t2 = now + Duration::from_secs(3);
        let t3 = now + Duration::from_secs(6);
        let t4 = now + Duration::from_secs(9);
        let mut pool = fresh(&mut rng);
        assert_eq!(
            pool.record_auth(0, Some(Strike), Some(1), false, now, wait),
            s(1)
        );
        // Too soon: not a second strike, and the spacing still runs from the first.
        assert_eq!(
            pool.record_auth(0, Some(Strike), Some(1), false, t1, wait),
            s(1)
        );
        let t15 = now + Duration::from_millis(2100);
        assert_eq!(
            pool.record_auth(0, Some(Strike), Some(1), false, t15, wait),
            s(2)
        );
        // A longer reconnect_wait spaces them further (any wait works, not only 2 s).
        let long = Duration::from_secs(5);
        let mut pool = fresh(&mut rng);
        pool.record_auth(0, Some(Strike), Some(1), false, now, long);
        assert_eq!(
            pool.record_auth(0, Some(Strike), Some(1), false, t2, long),
            s(1)
        );
        assert_eq!(
            pool.record_auth(0, Some(Strike), Some(1), false, t3, long),
            s(2)
        );
        // B17: a refused connection in between breaks the row.
        let mut pool = fresh(&mut rng);
        pool.record_auth(0, Some(Strike), Some(1), false, now, wait);
        assert_eq!(
            pool.record_auth(0, None, Some(1), false, t1, wait),
            AuthVerdict::NotAuth
        );
        assert_eq!(
            pool.record_auth(0, Some(Strike), Some(1), false, t2, wait),
            s(1)
        );
        // ... and so does a transient refusal.
        assert_eq!(
            pool.record_auth(0, Some(Transient), Some(1), false, t2, wait),
            AuthVerdict::Transient
        );
        assert_eq!(
            pool.record_auth(0, Some(Strike), Some(1), false, t3, wait),
            s(1)
        );
        // New credentials start over.
        assert_eq!(
            pool.record_auth(0, Some(Strike), Some(2), false, t4, wait),
            s(1)
        );
        // Expired once reconnects at once; expired again with the same credentials strikes.
        let mut pool = fresh(&mut rng);
        assert_eq!(
            pool.record_auth(0, Some(Expired), Some(1), false, now, wait),
            AuthVerdict::Expired
        );
        assert_eq!(
            pool.record_auth(0, Some(Expired), Some(1), false, t2, wait),
            s(1)
        );
        // S6: refusals of an expired JWT are never strikes, however many.
        let mut pool = fresh(&mut rng);
        for (k, t) in [now, t2, t3, t4].into_iter().enumerate() {
            let class = if k % 2 == 0 { Strike } else { Expired };
            assert_eq!(
                pool.record_auth(0, Some(class), Some(1), true, t, wait),
                AuthVerdict::ExpiredRefused { first: k == 0 }
            );
        }
    }

    #[test]
    fn parse_urls() {
        let a = ServerAddr::parse("nats://u:p%40ss@example.com:4333").unwrap();
        assert_eq!(
            (a.host(), a.port(), a.user(), a.pass()),
            ("example.com", 4333, Some("u"), Some("p@ss"))
        );
        assert_eq!(
            a.to_string(),
            "nats://example.com:4333",
            "no credentials in Display"
        );
        let b = ServerAddr::parse("127.0.0.1").unwrap();
        assert_eq!(b.to_string(), "nats://127.0.0.1:4222");
        assert!(ServerAddr::parse("http://x")
            .unwrap_err()
            .contains("unsupported scheme"));
        assert!(ServerAddr::parse("nats://").is_err());
        // B1: never dialled in plaintext.
        let e = ServerAddr::parse("tls://127.0.0.1:4443").unwrap_err();
        assert!(e.contains("TLS is not supported yet"), "{e}");
    }

    #[test]
    fn backoff_first_at_once_then_capped_exponential() {
        let mut rng = SmallRng::seed_from_u64(7);
        let wait = Duration::from_secs(2);
        assert_eq!(
            backoff_delay(0, Duration::ZERO, wait, &mut rng),
            Duration::ZERO
        );
        for _ in 0..1000 {
            assert!(backoff_delay(1, Duration::ZERO, wait, &mut rng) <= Duration::from_millis(50));
            assert!(backoff_delay(3, Duration::ZERO, wait, &mut rng) <= Duration::from_millis(200));
            assert!(
                backoff_delay(30, Duration::from_secs(1), wait, &mut rng)
                    <= Duration::from_millis(500)
            );
            assert!(backoff_delay(30, Duration::from_secs(11), wait, &mut rng) <= wait);
        }
        // Full jitter spreads over the whole range.
        let max = (0..1000)
            .map(|_| backoff_delay(30, Duration::from_secs(11), wait, &mut rng))
            .max()
            .unwrap();
        assert!(max > Duration::from_millis(1500), "{max:?}");
        assert_eq!(
            tls_jitter(0, Duration::from_secs(1), &mut rng),
            Duration::ZERO
        );
        assert!(tls_jitter(1, Duration::from_secs(1), &mut rng) < Duration::from_secs(1));
    }

    #[test]
    fn a_lame_duck_mark_ends_when_a_peer_lists_the_node_again_or_lapses() {
        let mut rng = SmallRng::seed_from_u64(1);
        let now = Instant::now();
        let list = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
        let mut pool = ServerPool::new(addrs(&list), true, None, now, &mut rng);
        let (a, b) = (
            ServerAddr::parse(list[0]).unwrap(),
            ServerAddr::parse(list[1]).unwrap(),
        );
        pool.mark_lame_duck(0, Some("NODE_A"), now);
        assert_eq!(
            pool.next_other(1, now, &[]),
            Some(2),
            "not the lame-duck node"
        );
        let c = ServerAddr::parse(list[2]).unwrap();
        assert_eq!(
            pool.next_other(1, now, &[c]),
            Some(0),
            "the lame-duck node is a last resort"
        );
        assert_eq!(
            pool.next_other(1, now, &[a.clone(), ServerAddr::parse(list[2]).unwrap()]),
            None
        );
        assert!(pool.is_lame_duck_node("NODE_A", now));
        assert_eq!(
            pool.next(now),
            Some(1),
            "a reconnect tries it last among equals"
        );
        // The peer B still lists A (it has not heard of lame duck mode yet): nothing ends.
        let all: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
        pool.note_announced(&all, &b);
        assert!(pool.get(0).unwrap().lame_duck.is_some());
        // An empty list says nothing; A's own INFO does not count.
        pool.note_announced(&[], &b);
        pool.note_announced(&all[1..], &a);
        assert!(!pool.get(0).unwrap().lame_duck.as_ref().unwrap().absent_seen);
        // B drops A (lame duck), then lists it again (A rejoined): the mark ends.
        pool.note_announced(&all[1..], &b);
        assert!(pool.get(0).unwrap().lame_duck.is_some());
        pool.note_announced(&all, &b);
        assert!(
            pool.get(0).unwrap().lame_duck.is_none(),
            "back after its restart"
        );
        assert_eq!(pool.next_other(2, now, &[]), Some(0));
        // A mark never seen ended lapses.
        pool.mark_lame_duck(1, None, now);
        assert_eq!(pool.next_other(0, now, &[]), Some(2));
        let later = now + LAME_DUCK_MARK_MAX;
        assert_eq!(pool.next_other(2, later, &[]), Some(0));
        assert!(!pool.is_lame_duck_node("NODE_A", later));
        // The same node under another address, once known, is marked with it.
        pool.mark_lame_duck(2, Some("NODE_C"), now);
        pool.mark_lame_duck(0, Some("NODE_C"), now);
        assert!(pool.get(2).unwrap().lame_duck.is_some());
        // A completed handshake ends a mark; set_server_pool keeps marks.
        pool.record_success(2);
        assert!(pool.get(2).unwrap().lame_duck.is_none());
        pool.replace(addrs(&list[..1]), now, &mut rng, false);
        assert!(pool.get(0).unwrap().lame_duck.is_some());
    }

    #[test]
    fn next_prefers_due_then_fewer_failures_then_not_just_dropped() {
        let mut rng = SmallRng::seed_from_u64(1);
        let now = Instant::now();
        let mut pool = ServerPool::new(addrs(&["a:1", "b:2", "c:3"]), true, Some(3), now, &mut rng);
        pool.record_dropped(0, now);
        assert_eq!(
            pool.next(now),
            Some(1),
            "the server that just dropped goes last among equals"
        );
        pool.record_failure(1, now, Duration::ZERO);
        assert_eq!(pool.next(now), Some(2), "fewer failures first");
        pool.record_failure(2, now, Duration::from_secs(1));
        assert_eq!(pool.next(now), Some(0));
        assert!(pool.record_failure(1, now, Duration::ZERO).is_none());
        let removed = pool.record_failure(1, now, Duration::ZERO).unwrap();
        assert_eq!(
            removed.addr.to_string(),
            "nats://b:2",
            "removed after max_reconnects"
        );
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn discovery_adds_inherits_and_prunes() {
        let mut rng = SmallRng::seed_from_u64(1);
        let now = Instant::now();
        let via = ServerAddr::parse("nats://u:p@seed:4222").unwrap();
        let mut pool = ServerPool::new(vec![via.clone()], true, None, now, &mut rng);
        let (added, removed) = pool.merge_discovered(
            &["10.0.0.2:4222".into(), "10.0.0.3:4222".into()],
            &via,
            now,
            &mut rng,
            false,
        );
        assert_eq!(added.len(), 2);
        assert!(removed.is_empty());
        assert_eq!(
            pool.get(1).unwrap().addr.user(),
            Some("u"),
            "credentials inherited"
        );
        let (added, removed) = pool.merge_discovered(&[], &via, now, &mut rng, false);
        assert!(
            added.is_empty() && removed.is_empty(),
            "an empty list prunes nothing"
        );
        let (_, removed) =
            pool.merge_discovered(&["10.0.0.2:4222".into()], &via, now, &mut rng, false);
        assert_eq!(removed, vec!["nats://10.0.0.3:4222".to_string()]);
        assert_eq!(pool.len(), 2, "the seed URL is never pruned");
    }
}
