//! Deadline arithmetic that never panics.
//!
//! Options and caller-supplied timeouts can be huge (`Duration::MAX` for "never"); an
//! `Instant + Duration` that overflows panics. Every deadline in tether is computed with
//! [`saturating_add`] instead, which caps it at [`FAR_FUTURE`] from `t`.

use std::time::{Duration, Instant};

/// How far a capped deadline lies: about 30 years, which no timer ever reaches.
pub const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `t + d`, or `t + FAR_FUTURE` when that would overflow (or `t` itself if even that does).
pub fn saturating_add(t: Instant, d: Duration) -> Instant {
    t.checked_add(d.min(FAR_FUTURE))
        .or_else(|| t.checked_add(FAR_FUTURE))
        .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_saturate() {
        let now = Instant::now();
        assert_eq!(saturating_add(now, Duration::MAX), now + FAR_FUTURE);
        assert_eq!(
            saturating_add(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }
}
