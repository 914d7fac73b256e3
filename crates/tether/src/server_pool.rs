//! The server pool and the reconnect backoff: pure policies, time and randomness passed in
//! (DESIGN semantics 5).
//!
//! Each server has a due time and a count of consecutive failures (reset by a completed
//! handshake). The next attempt goes to the server due earliest; among servers due at
//! once, fewer failures first, and the server whose link just dropped last. A server
//! leaves the pool after `max_reconnects` consecutive failures. Servers announced in INFO
//! `connect_urls` join the pool and are pruned when no longer announced (an INFO without
//! the field prunes nothing; the connected server is never pruned).

use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::Rng;

use tether_proto::server_err::AuthErrorClass;

use crate::options::{
    AuthFailurePolicy, ConnectOptions, ReconnectDelayFn, DEFAULT_EARLY_RECONNECT_CAP,
    DEFAULT_RECONNECT_BASE, EARLY_OUTAGE,
};
pub use crate::server_addr::{AddrError, ServerAddr};

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
    /// Auth strikes in a row (None once a failure of another kind broke the row).
    pub strikes: Option<Strikes>,
    /// In lame duck mode: not a planned switch's target while the mark holds (see
    /// [`LameDuckMark`]); a reconnect tries it after every other server due at once.
    pub lame_duck: Option<LameDuckMark>,
    /// The last attempt was refused while the user JWT it used had expired.
    pub expired_refused: bool,
}

impl PoolEntry {
    /// A server never tried yet, due at `now`.
    pub fn new(addr: ServerAddr, discovered: bool, now: Instant) -> Self {
        Self {
            addr,
            discovered,
            failures: 0,
            due: now,
            last_dropped: None,
            strikes: None,
            lame_duck: None,
            expired_refused: false,
        }
    }
}

/// Auth strikes against one server (DESIGN semantics 5): they count in a row, at least
/// `reconnect_wait` apart, with unchanged credentials; two remove the server under
/// [`AuthFailurePolicy::RemoveServer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strikes {
    /// Strikes in a row. Zero after a first `Authentication Expired` (not a strike yet,
    /// but the next one with the same credentials is) and after a completed handshake.
    pub count: u32,
    /// When the last strike (or expired refusal) came: the next counts only
    /// `reconnect_wait` later.
    pub last: Instant,
    /// The credentials they were against (see `Loaded::fingerprint`).
    pub credentials: u64,
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
/// `ServerPool::record_attempt`.
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

/// An attempt the server refused with an auth -ERR, as the auth rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AuthRefusal {
    /// The -ERR's class.
    pub(crate) class: AuthErrorClass,
    /// The credentials the attempt used (see `Loaded::fingerprint`).
    pub(crate) credentials: u64,
    /// The user JWT they held counted as expired (past its `exp`, or within
    /// `JWT_CLOCK_SKEW` of it): how long ago it expired.
    pub(crate) jwt_expired: Option<Duration>,
}

/// The options the pool's attempt policy reads.
#[derive(Clone, Copy)]
pub(crate) struct ReconnectPolicy<'a> {
    pub(crate) reconnect_wait: Duration,
    /// The user's delay, in place of [`backoff_delay`].
    pub(crate) reconnect_delay: Option<&'a ReconnectDelayFn>,
    pub(crate) auth_failure_policy: AuthFailurePolicy,
    /// `reconnect_jitter_tls`, and whether every link uses TLS (TLS options).
    pub(crate) jitter_tls: Duration,
    pub(crate) tls_wanted: bool,
}

impl<'a> ReconnectPolicy<'a> {
    pub(crate) fn of(opts: &'a ConnectOptions) -> Self {
        Self {
            reconnect_wait: opts.reconnect_wait,
            reconnect_delay: opts.reconnect_delay.as_ref(),
            auth_failure_policy: opts.auth_failure_policy,
            jitter_tls: opts.reconnect_jitter_tls,
            tls_wanted: opts.tls.wanted(),
        }
    }
}

impl std::fmt::Debug for ReconnectPolicy<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReconnectPolicy")
            .field("reconnect_wait", &self.reconnect_wait)
            .field("reconnect_delay", &self.reconnect_delay.is_some())
            .field("auth_failure_policy", &self.auth_failure_policy)
            .field("jitter_tls", &self.jitter_tls)
            .field("tls_wanted", &self.tls_wanted)
            .finish()
    }
}

/// What [`ServerPool::record_attempt`] decided for a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// What the auth rules made of it.
    pub(crate) auth: AuthVerdict,
    /// When the server may be tried again; `None` when it left the pool.
    pub(crate) due: Option<Instant>,
    /// The server left the pool (two auth strikes, or max_reconnects failures).
    pub(crate) removed: Option<ServerAddr>,
    /// The first refusal in a row of a user JWT past its `exp`: it expired this long
    /// ago (the `CredentialsExpired` event).
    pub(crate) credentials_expired: Option<Duration>,
}

/// The auth rules of DESIGN semantics 5 for a failed attempt on `e`; `refusal` is `None`
/// when the attempt failed otherwise. Strikes count in a row, at least `wait` apart, with
/// unchanged credentials.
fn auth_rules(
    e: &mut PoolEntry,
    refusal: Option<&AuthRefusal>,
    now: Instant,
    wait: Duration,
) -> AuthVerdict {
    let was_expired_refused = std::mem::take(&mut e.expired_refused);
    let Some(r) = refusal else {
        // Strikes count only in a row: any other failure starts over.
        e.strikes = None;
        return AuthVerdict::NotAuth;
    };
    let mut class = r.class;
    if r.jwt_expired.is_some() && matches!(class, AuthErrorClass::Strike | AuthErrorClass::Expired)
    {
        // The JWT itself is past its exp: neither a strike nor a reason to retry at once
        // with the same file; back off and read the credentials again.
        e.strikes = None;
        e.expired_refused = true;
        return AuthVerdict::ExpiredRefused {
            first: !was_expired_refused,
        };
    }
    let same = e.strikes.is_some_and(|s| s.credentials == r.credentials);
    if class == AuthErrorClass::Expired {
        if !same {
            // Reconnect at once with the credentials read again; the same ones refused
            // as expired once more will be a strike.
            e.strikes = Some(Strikes {
                count: e.strikes.map_or(0, |s| s.count),
                last: now,
                credentials: r.credentials,
            });
            return AuthVerdict::Expired;
        }
        class = AuthErrorClass::Strike;
    }
    if class != AuthErrorClass::Strike {
        // Authentication timeout, connection limits, throttling: back off, no strike, and
        // the row starts over.
        e.strikes = None;
        return AuthVerdict::Transient;
    }
    let spaced = e.strikes.is_none_or(|s| now.duration_since(s.last) >= wait);
    let (count, last) = match e.strikes {
        // New credentials (a rotated creds file) start over.
        _ if !same => (1, now),
        Some(s) if spaced => (s.count + 1, now),
        // Too soon after the last one: not another strike, and the spacing still runs
        // from the last.
        Some(s) => (s.count.max(1), s.last),
        None => (1, now),
    };
    e.strikes = Some(Strikes {
        count,
        last,
        credentials: r.credentials,
    });
    AuthVerdict::Strike { strikes: count }
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
            entries.push(PoolEntry::new(addr, false, now));
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
            if let Some(s) = &mut e.strikes {
                // The row ends; when and against which credentials it came stays known,
                // so an expired refusal with the same credentials is still a strike.
                s.count = 0;
            }
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

    /// A failed attempt to `addr` (DESIGN semantics 5): the next attempt is due after the
    /// backoff (or the user's `reconnect_delay`; `outage` is how long the outage, or the
    /// planned switch, has lasted), the auth rules apply, and the server leaves the pool
    /// after two strikes (under RemoveServer) or `max_reconnects` failures; `refusal` is
    /// the attempt's auth -ERR, if it ended with one. `None` when `addr` is not in the
    /// pool.
    pub(crate) fn record_attempt(
        &mut self,
        addr: &ServerAddr,
        now: Instant,
        outage: Duration,
        refusal: Option<AuthRefusal>,
        policy: &ReconnectPolicy<'_>,
        rng: &mut impl Rng,
    ) -> Option<Verdict> {
        let i = self.position(addr)?;
        let e = &mut self.entries[i];
        let failures = e.failures + 1;
        let mut delay = if let Some(f) = policy.reconnect_delay {
            f(&addr.to_string(), failures, outage)
        } else {
            let tls = policy.tls_wanted || addr.is_tls();
            let jitter = if tls {
                policy.jitter_tls
            } else {
                Duration::ZERO
            };
            backoff_delay(failures, outage, policy.reconnect_wait, rng)
                .saturating_add(tls_jitter(failures, jitter, rng))
        };
        let auth = auth_rules(e, refusal.as_ref(), now, policy.reconnect_wait);
        let mut remove = false;
        let mut credentials_expired = None;
        match auth {
            AuthVerdict::Strike { strikes } => {
                remove =
                    strikes >= 2 && policy.auth_failure_policy == AuthFailurePolicy::RemoveServer;
                // The next strike may count only reconnect_wait later: do not try before.
                delay = delay.max(policy.reconnect_wait);
            }
            AuthVerdict::Expired => delay = Duration::ZERO,
            AuthVerdict::ExpiredRefused { first: true } => {
                credentials_expired = refusal.and_then(|r| r.jwt_expired);
            }
            AuthVerdict::ExpiredRefused { first: false }
            | AuthVerdict::Transient
            | AuthVerdict::NotAuth => {}
        }
        let removed = if remove {
            self.remove(i)
        } else {
            self.record_failure(i, now, delay)
        };
        Some(Verdict {
            auth,
            due: removed.is_none().then(|| self.entries[i].due),
            removed: removed.map(|r| r.addr),
            credentials_expired,
        })
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
                new_entries.push(PoolEntry::new(addr.clone(), true, now));
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

    use crate::connection::reconnect::{auth_refusal, UsedCredentials};
    use crate::error::AttemptCause;
    use tether_proto::conn::HandshakeError;

    const VIOLATION: &str = "Authorization Violation";
    const EXPIRED: &str = "User Authentication Expired";
    const AUTH_TIMEOUT: &str = "Authentication Timeout";

    /// A handshake refused with `err` for credentials `creds` (a JWT past its exp when
    /// `jwt_expired`).
    fn refused(err: &str, creds: u64, jwt_expired: bool) -> Option<AuthRefusal> {
        let error = HandshakeError::Server(tether_proto::server_err::ServerErr::parse(err));
        // A JWT that expired 3 s before the refusal is recorded, or one valid for an hour.
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let now = std::time::UNIX_EPOCH + Duration::from_secs(unix);
        let expires_at = if jwt_expired { unix - 3 } else { unix + 3600 };
        let credentials = UsedCredentials {
            fingerprint: creds,
            jwt: Some(crate::credentials::JwtTimes {
                issued_at: None,
                expires_at,
            }),
        };
        auth_refusal(&AttemptCause::Handshake(error), Some(credentials), now)
    }

    /// One attempt of a table: ms after the start, its cause, the auth verdict expected.
    type Row = (u64, Option<AuthRefusal>, AuthVerdict);

    /// A failure that is no auth -ERR (a refused TCP connection, say).
    fn dial_failed() -> Option<AuthRefusal> {
        None
    }

    fn policy(wait: Duration, auth: AuthFailurePolicy) -> ReconnectPolicy<'static> {
        ReconnectPolicy {
            reconnect_wait: wait,
            reconnect_delay: None,
            auth_failure_policy: auth,
            jitter_tls: Duration::from_secs(1),
            tls_wanted: false,
        }
    }

    #[test]
    fn a_tls_server_adds_its_jitter_to_every_delay_but_the_first() {
        let policy = policy(Duration::from_secs(2), AuthFailurePolicy::KeepRetrying);
        let delays = |url: &str| {
            let mut rng = SmallRng::seed_from_u64(7);
            let start = Instant::now();
            let addr = ServerAddr::parse(url).unwrap();
            let mut pool = ServerPool::new(vec![addr.clone()], true, None, start, &mut rng);
            (0..20)
                .map(|_| {
                    let v = pool
                        .record_attempt(&addr, start, Duration::ZERO, None, &policy, &mut rng)
                        .expect("in the pool");
                    v.due.expect("kept") - start
                })
                .collect::<Vec<_>>()
        };
        // Early in an outage the backoff is capped at 500 ms; the TLS jitter (0..1 s)
        // comes on top, for a tls:// server only.
        let early_cap = Duration::from_millis(500);
        assert!(delays("nats://a:1").iter().all(|d| *d <= early_cap));
        let tls = delays("tls://a:1");
        assert!(tls.iter().any(|d| *d > early_cap), "{tls:?}");
        assert!(tls.iter().all(|d| *d < early_cap + Duration::from_secs(1)));
    }

    /// Run `rows` (ms after the start, the attempt's cause, the expected auth verdict)
    /// against a fresh one-server pool.
    fn run_table(name: &str, wait: Duration, auth: AuthFailurePolicy, rows: &[Row]) {
        let mut rng = SmallRng::seed_from_u64(3);
        let start = Instant::now();
        let addr = ServerAddr::parse("a:1").unwrap();
        let mut pool = ServerPool::new(vec![addr.clone()], true, None, start, &mut rng);
        let policy = policy(wait, auth);
        for (k, (ms, cause, expect)) in rows.iter().enumerate() {
            let now = start + Duration::from_millis(*ms);
            let v = pool
                .record_attempt(&addr, now, Duration::ZERO, *cause, &policy, &mut rng)
                .expect("in the pool");
            assert_eq!(v.auth, *expect, "{name}, row {k}: {cause:?}");
        }
    }

    #[test]
    fn strikes_count_only_in_a_row_spaced_and_with_the_same_credentials() {
        use AuthVerdict::{Expired, ExpiredRefused, NotAuth, Transient};
        let s = |n| AuthVerdict::Strike { strikes: n };
        let two = Duration::from_secs(2);
        let keep = AuthFailurePolicy::KeepRetrying;
        let tables: Vec<(&str, Duration, Vec<Row>)> = vec![
            (
                "too soon is not a second strike, and the spacing runs from the first",
                two,
                vec![
                    (0, refused(VIOLATION, 1, false), s(1)),
                    (500, refused(VIOLATION, 1, false), s(1)),
                    (2100, refused(VIOLATION, 1, false), s(2)),
                ],
            ),
            (
                "a longer reconnect_wait spaces them further",
                Duration::from_secs(5),
                vec![
                    (0, refused(VIOLATION, 1, false), s(1)),
                    (3000, refused(VIOLATION, 1, false), s(1)),
                    (6000, refused(VIOLATION, 1, false), s(2)),
                ],
            ),
            (
                "B17: another failure or a transient refusal breaks the row; new credentials start over",
                two,
                vec![
                    (0, refused(VIOLATION, 1, false), s(1)),
                    (500, dial_failed(), NotAuth),
                    (3000, refused(VIOLATION, 1, false), s(1)),
                    (3000, refused(AUTH_TIMEOUT, 1, false), Transient),
                    (6000, refused(VIOLATION, 1, false), s(1)),
                    (9000, refused(VIOLATION, 2, false), s(1)),
                ],
            ),
            (
                "expired once reconnects at once; expired again with the same credentials strikes",
                two,
                vec![
                    (0, refused(EXPIRED, 1, false), Expired),
                    (3000, refused(EXPIRED, 1, false), s(1)),
                ],
            ),
            (
                "expired with other credentials is not a strike",
                two,
                vec![
                    (0, refused(EXPIRED, 1, false), Expired),
                    (3000, refused(EXPIRED, 2, false), Expired),
                ],
            ),
            (
                "S6: refusals of an expired JWT are never strikes, however many",
                two,
                vec![
                    (0, refused(VIOLATION, 1, true), ExpiredRefused { first: true }),
                    (3000, refused(EXPIRED, 1, true), ExpiredRefused { first: false }),
                    (6000, refused(VIOLATION, 1, true), ExpiredRefused { first: false }),
                    (9000, refused(EXPIRED, 1, true), ExpiredRefused { first: false }),
                ],
            ),
        ];
        for (name, wait, rows) in tables {
            run_table(name, wait, keep, &rows);
        }
    }

    #[test]
    fn the_verdict_says_when_the_server_is_due_and_whether_it_left() {
        let wait = Duration::from_secs(2);
        let start = Instant::now();
        let addr = ServerAddr::parse("a:1").unwrap();
        let mut rng = SmallRng::seed_from_u64(5);
        let mut pool = ServerPool::new(vec![addr.clone()], true, None, start, &mut rng);
        let remove = policy(wait, AuthFailurePolicy::RemoveServer);
        let mut attempt = |pool: &mut ServerPool, ms: u64, cause: Option<AuthRefusal>| {
            let now = start + Duration::from_millis(ms);
            pool.record_attempt(&addr, now, Duration::ZERO, cause, &remove, &mut rng)
        };
        // The first failure of another kind: the backoff's first step (0..=50 ms).
        let v = attempt(&mut pool, 0, dial_failed()).unwrap();
        let due = v.due.unwrap();
        assert!(
            due >= start && due <= start + Duration::from_millis(50),
            "{v:?}"
        );
        // Expired: at once, whatever the failures so far.
        let v = attempt(&mut pool, 100, refused(EXPIRED, 1, false)).unwrap();
        assert_eq!(v.due, Some(start + Duration::from_millis(100)));
        // A strike: not before reconnect_wait (the next may count only then).
        let v = attempt(&mut pool, 200, refused(VIOLATION, 1, false)).unwrap();
        assert_eq!(v.auth, AuthVerdict::Strike { strikes: 1 });
        assert!(
            v.due.unwrap() >= start + Duration::from_millis(200) + wait,
            "{v:?}"
        );
        // Two strikes with unchanged credentials, spaced: removed under RemoveServer.
        let v = attempt(&mut pool, 3000, refused(VIOLATION, 1, false)).unwrap();
        assert_eq!((v.due, v.removed), (None, Some(addr.clone())));
        assert!(pool.is_empty());
        assert!(
            attempt(&mut pool, 7000, dial_failed()).is_none(),
            "not in the pool"
        );
    }

    #[test]
    fn an_expired_jwt_is_reported_once_per_row_and_max_reconnects_removes() {
        let start = Instant::now();
        let addr = ServerAddr::parse("a:1").unwrap();
        let mut rng = SmallRng::seed_from_u64(9);
        let mut pool = ServerPool::new(vec![addr.clone()], true, Some(3), start, &mut rng);
        let p = policy(Duration::from_secs(2), AuthFailurePolicy::RemoveServer);
        let mut attempt = |pool: &mut ServerPool, cause: Option<AuthRefusal>| {
            pool.record_attempt(&addr, start, Duration::ZERO, cause, &p, &mut rng)
                .unwrap()
        };
        let v = attempt(&mut pool, refused(VIOLATION, 1, true));
        assert_eq!(v.credentials_expired, Some(Duration::from_secs(3)));
        let v = attempt(&mut pool, refused(VIOLATION, 1, true));
        assert_eq!(v.credentials_expired, None, "once per row");
        // The third consecutive failure reaches max_reconnects.
        let v = attempt(&mut pool, dial_failed());
        assert_eq!((v.due, v.removed), (None, Some(addr.clone())));
    }

    #[test]
    fn a_completed_handshake_ends_the_row_but_remembers_the_credentials() {
        let start = Instant::now();
        let addr = ServerAddr::parse("a:1").unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut pool = ServerPool::new(vec![addr.clone()], true, None, start, &mut rng);
        let p = policy(Duration::from_secs(2), AuthFailurePolicy::KeepRetrying);
        let v = pool
            .record_attempt(
                &addr,
                start,
                Duration::ZERO,
                refused(EXPIRED, 1, false),
                &p,
                &mut rng,
            )
            .unwrap();
        assert_eq!(v.auth, AuthVerdict::Expired);
        pool.record_success(0);
        assert_eq!(pool.get(0).unwrap().strikes.map(|s| s.count), Some(0));
        let later = start + Duration::from_secs(3);
        let v = pool
            .record_attempt(
                &addr,
                later,
                Duration::ZERO,
                refused(EXPIRED, 1, false),
                &p,
                &mut rng,
            )
            .unwrap();
        assert_eq!(v.auth, AuthVerdict::Strike { strikes: 1 });
    }

    #[test]
    fn a_user_reconnect_delay_replaces_the_backoff() {
        let start = Instant::now();
        let addr = ServerAddr::parse("a:1").unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut pool = ServerPool::new(vec![addr.clone()], true, None, start, &mut rng);
        let f: ReconnectDelayFn = std::sync::Arc::new(|server: &str, failures, outage| {
            assert_eq!((server, failures), ("nats://a:1", 1));
            outage + Duration::from_secs(7)
        });
        let p = ReconnectPolicy {
            reconnect_delay: Some(&f),
            ..policy(Duration::from_secs(2), AuthFailurePolicy::RemoveServer)
        };
        let outage = Duration::from_secs(1);
        let v = pool
            .record_attempt(&addr, start, outage, dial_failed(), &p, &mut rng)
            .unwrap();
        assert_eq!(v.due, Some(start + Duration::from_secs(8)));
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
