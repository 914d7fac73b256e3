//! Helpers shared by the integration tests.

use std::time::Duration;

use futures_util::StreamExt;
use tether::EventKind;

/// How long a test waits for any one thing.
pub const T: Duration = Duration::from_secs(15);

/// The kind of the next event matching `pred`, within [`T`].
pub async fn next_event(
    events: &mut tether::Events,
    mut pred: impl FnMut(&EventKind) -> bool,
) -> EventKind {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let e = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("timed out waiting for an event")
            .expect("event stream ended");
        if pred(&e.kind) {
            return e.kind;
        }
    }
}
