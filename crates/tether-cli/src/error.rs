//! The CLI's error: one line that says what went wrong.

use std::fmt;

/// An error to print as `error: <message>`. Any `std::error::Error` converts into it with
/// its Display text; [`Context::context`] prefixes what the CLI was doing.
#[derive(Debug)]
pub struct CliError(String);

impl CliError {
    /// An error with this message.
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keep it one line whatever the source said.
        let mut lines = self.0.lines().map(str::trim).filter(|l| !l.is_empty());
        if let Some(first) = lines.next() {
            f.write_str(first)?;
        }
        for l in lines {
            write!(f, " | {l}")?;
        }
        Ok(())
    }
}

impl<E: std::error::Error> From<E> for CliError {
    fn from(e: E) -> Self {
        Self(e.to_string())
    }
}

/// `result.context("publishing to foo")` → `publishing to foo: <error>`.
pub(crate) trait Context<T> {
    /// Prefix the error with what was being done.
    fn context(self, what: impl fmt::Display) -> Result<T, CliError>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T, CliError> {
        self.map_err(|e| CliError(format!("{what}: {e}")))
    }
}
