//! Polling a condition with a deadline instead of sleeping a fixed time.

use std::future::Future;
use std::time::{Duration, Instant};

const FIRST_BACKOFF: Duration = Duration::from_millis(1);
const MAX_BACKOFF: Duration = Duration::from_millis(25);

/// Calls `cond` until it returns true or `timeout` passes, with a short growing backoff
/// (1 ms up to 25 ms) between calls. Returns the last answer; `cond` is always called at
/// least once and once more at the deadline.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut backoff = FIRST_BACKOFF;
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(backoff.min(deadline - now));
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The async form of [`wait_for`]: awaits `cond()` until it yields true or `timeout`
/// passes, sleeping with `tokio::time` between tries (so it needs a tokio runtime with
/// the time driver, which `#[tokio::test]` provides).
pub async fn wait_for_async<F: Future<Output = bool>>(
    timeout: Duration,
    mut cond: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut backoff = FIRST_BACKOFF;
    loop {
        if cond().await {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
