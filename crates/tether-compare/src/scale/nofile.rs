//! The open-file limit (RLIMIT_NOFILE) of a scale run: checked, and raised up to the
//! hard limit, before the run; and the advice given when a connect fails with EMFILE.

use std::error::Error;
use std::io;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

use crate::report::group;
use crate::Res;

/// Descriptors kept free beyond the sockets and those already open: the runtime's
/// epoll and eventfd, stdio, `/proc` reads, a DNS lookup or two.
pub(crate) const FD_MARGIN: u64 = 64;

/// What a run needs: `sockets` connections besides what the process has open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FdNeed {
    /// One per connection the run opens.
    pub(crate) sockets: u64,
    /// Descriptors the process has open before the run.
    pub(crate) open: u64,
}

impl FdNeed {
    /// `sockets` connections from a process shaped like this one.
    pub(crate) fn for_sockets(sockets: u64) -> Self {
        Self {
            sockets,
            open: open_fds(),
        }
    }

    /// The soft limit the run needs.
    pub(crate) fn total(self) -> u64 {
        self.sockets + self.open + FD_MARGIN
    }

    fn describe(self) -> String {
        format!(
            "{} open files ({} connections, {} already open, a margin of {FD_MARGIN})",
            group(self.total() as f64),
            group(self.sockets as f64),
            self.open
        )
    }
}

/// What to do about the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The soft limit already suffices.
    Enough,
    /// Raise the soft limit to this (at most the hard limit).
    RaiseSoft(u64),
}

/// How to raise the limit, for a need of `total` descriptors.
fn advice(total: u64) -> String {
    format!(
        "raise the open-file limit to at least {total}: `ulimit -n {total}` in the shell that \
         runs tether-compare (raising the hard limit needs root), `nofile` in \
         /etc/security/limits.conf for login sessions, or LimitNOFILE={total} in a systemd \
         unit; or run with a smaller --conns"
    )
}

/// Compares `need` with the limits `soft` and `hard` (`u64::MAX` is unlimited).
pub(crate) fn plan(what: &str, need: FdNeed, soft: u64, hard: u64) -> Result<Plan, String> {
    let total = need.total();
    if soft >= total {
        return Ok(Plan::Enough);
    }
    if hard >= total {
        // Some room above the estimate, as far as the hard limit allows.
        return Ok(Plan::RaiseSoft(hard.min(total.saturating_mul(2))));
    }
    Err(format!(
        "{what} needs about {}, but this process may open at most {hard} (RLIMIT_NOFILE: soft \
         {soft}, hard {hard}) and only a privileged process can raise the hard limit; {}",
        need.describe(),
        advice(total)
    ))
}

/// Checks the limit for `need` before `what` runs and raises the soft limit if needed;
/// children started afterwards inherit it.
pub(crate) fn ensure(what: &str, need: FdNeed) -> Res<()> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    match plan(what, need, soft, hard)? {
        Plan::Enough => Ok(()),
        Plan::RaiseSoft(to) => setrlimit(Resource::RLIMIT_NOFILE, to, hard).map_err(|e| {
            format!(
                "{what} needs about {}, and raising the soft open-file limit from {soft} to \
                 {to} (hard {hard}) failed: {e}; {}",
                need.describe(),
                advice(need.total())
            )
            .into()
        }),
    }
}

/// Descriptors this process has open.
fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// Whether `e` (or what caused it) is EMFILE, "Too many open files".
pub(crate) fn is_emfile(e: &(dyn Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if io.raw_os_error() == Some(nix::errno::Errno::EMFILE as i32) {
                return true;
            }
        }
        // Libraries that flatten the io::Error into their own text keep the OS wording.
        let text = err.to_string();
        if text.contains("Too many open files") || text.contains("os error 24") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The error for connection `i` (from 0) of `need.sockets` failing with `e`: with the
/// limit and the advice when it is EMFILE.
pub(crate) fn connect_failed(i: u64, need: FdNeed, e: &(dyn Error + 'static)) -> String {
    let which = format!(
        "connecting client {} of {}",
        i + 1,
        group(need.sockets as f64)
    );
    if !is_emfile(e) {
        return format!("{which} failed: {e}");
    }
    let limits = getrlimit(Resource::RLIMIT_NOFILE).map_or_else(
        |_| "unknown".to_owned(),
        |(s, h)| format!("soft {s}, hard {h}"),
    );
    format!(
        "{which} failed: Too many open files (EMFILE): the process reached its open-file \
         limit (RLIMIT_NOFILE: {limits}); the run needs about {}; {} (library error: {e})",
        need.describe(),
        advice(need.total())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEED: FdNeed = FdNeed {
        sockets: 1000,
        open: 16,
    };

    #[test]
    fn enough_when_the_soft_limit_covers_the_need() {
        assert_eq!(plan("conns", NEED, 1080, 1080), Ok(Plan::Enough));
        assert_eq!(plan("conns", NEED, u64::MAX, u64::MAX), Ok(Plan::Enough));
    }

    #[test]
    fn raises_the_soft_limit_up_to_the_hard_limit() {
        assert_eq!(plan("conns", NEED, 1024, 1500), Ok(Plan::RaiseSoft(1500)));
        assert_eq!(
            plan("conns", NEED, 1024, u64::MAX),
            Ok(Plan::RaiseSoft(2 * NEED.total()))
        );
    }

    #[test]
    fn a_low_hard_limit_fails_with_what_to_raise() {
        let e = plan("the conns workload with 1,000 connections", NEED, 256, 512).unwrap_err();
        assert!(
            e.starts_with("the conns workload with 1,000 connections needs about 1,080 open files"),
            "{e}"
        );
        assert!(e.contains("soft 256, hard 512"), "{e}");
        assert!(e.contains("`ulimit -n 1080`"), "{e}");
        assert!(e.contains("/etc/security/limits.conf"), "{e}");
        assert!(e.contains("LimitNOFILE=1080"), "{e}");
    }

    #[test]
    fn emfile_is_recognised_through_the_error_chain() {
        #[derive(Debug)]
        struct Wrapper(io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("could not connect")
            }
        }
        impl Error for Wrapper {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&self.0)
            }
        }
        let emfile = Wrapper(io::Error::from_raw_os_error(
            nix::errno::Errno::EMFILE as i32,
        ));
        assert!(is_emfile(&emfile));
        let msg = connect_failed(9, NEED, &emfile);
        assert!(
            msg.starts_with("connecting client 10 of 1,000 failed: Too many open files"),
            "{msg}"
        );
        assert!(msg.contains("`ulimit -n 1080`"), "{msg}");
        let refused = Wrapper(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(!is_emfile(&refused));
        assert!(!connect_failed(0, NEED, &refused).contains("ulimit"));
    }
}
