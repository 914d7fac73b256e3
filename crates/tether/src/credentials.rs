//! Credentials read at every connect attempt (DESIGN semantics 13): a `.creds` file (user
//! JWT and nkey seed) is read again each time, so a rotated file is used without a
//! restart; an nkey seed signs the server's nonce.
//!
//! The JWT is not verified here (the server does that); only its `exp` and `iat` are
//! read, to refresh ahead of expiry.

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use tether_proto::conn::Auth;

use crate::options::ConnectOptions;
use crate::server_pool::ServerAddr;

/// Where the credentials read at every attempt come from.
#[derive(Clone)]
pub(crate) enum KeySource {
    /// A `.creds` file: user JWT plus nkey seed, read at every attempt.
    File(PathBuf),
    /// An nkey seed (nkey auth without a JWT).
    Seed(String),
    /// The user's callback, called at every attempt.
    Callback(CredentialsCallback),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
            Self::Seed(_) => f.write_str("Seed(<redacted>)"),
            Self::Callback(_) => f.write_str("Callback"),
        }
    }
}

/// The future a credentials callback returns, boxed.
pub(crate) type CredentialsFuture =
    Pin<Box<dyn Future<Output = Result<Credentials, String>> + Send>>;

/// [`ConnectOptions::credentials_callback`](crate::ConnectOptions::credentials_callback),
/// boxed.
pub(crate) type CredentialsCallback = Arc<dyn Fn() -> CredentialsFuture + Send + Sync>;

/// Credentials for one connect attempt, as a
/// [`credentials_callback`](crate::ConnectOptions::credentials_callback) returns them
/// (from a secret manager, a vault, a rotated file...). Debug output shows the kind and
/// the user name, never a password, token, seed or JWT.
#[derive(Clone)]
pub struct Credentials {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    UserPassword(String, String),
    Token(String),
    Nkey(String),
    Jwt { jwt: String, seed: String },
    Creds(String),
}

impl Credentials {
    /// A user and password.
    pub fn user_and_password(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            kind: Kind::UserPassword(user.into(), password.into()),
        }
    }

    /// A token.
    pub fn token(token: impl Into<String>) -> Self {
        Self {
            kind: Kind::Token(token.into()),
        }
    }

    /// An nkey seed (`SU...`): it signs the server's nonce, CONNECT carries its public key.
    pub fn nkey(seed: impl Into<String>) -> Self {
        Self {
            kind: Kind::Nkey(seed.into()),
        }
    }

    /// A user JWT and the nkey seed that signs the server's nonce for it.
    pub fn jwt(jwt: impl Into<String>, seed: impl Into<String>) -> Self {
        Self {
            kind: Kind::Jwt {
                jwt: jwt.into(),
                seed: seed.into(),
            },
        }
    }

    /// The text of a `.creds` file (user JWT and nkey seed, as `nsc` writes them); it is
    /// parsed at the attempt, and a text that is not one fails the attempt saying why.
    pub fn creds(text: impl Into<String>) -> Self {
        Self {
            kind: Kind::Creds(text.into()),
        }
    }

    /// What CONNECT carries for these credentials.
    fn load(self) -> Result<Loaded, CredentialsError> {
        let from_callback = |problem: String| CredentialsError::Callback(problem);
        let (jwt, seed) = match self.kind {
            Kind::UserPassword(user, pass) => {
                return Ok(Loaded {
                    fingerprint: fingerprint(&[&user, &pass]),
                    auth: Auth {
                        user: Some(user),
                        pass: Some(pass),
                        ..Auth::default()
                    },
                    jwt: None,
                })
            }
            Kind::Token(token) => {
                return Ok(Loaded {
                    fingerprint: fingerprint(&[&token]),
                    auth: Auth {
                        token: Some(token),
                        ..Auth::default()
                    },
                    jwt: None,
                })
            }
            Kind::Nkey(seed) => return load(&KeySource::Seed(seed)),
            Kind::Jwt { jwt, seed } => (jwt, seed),
            Kind::Creds(text) => {
                parse_creds(&text).map_err(|p| from_callback(format!("its creds text {p}")))?
            }
        };
        let times = jwt_times(&jwt)
            .map_err(|p| from_callback(format!("its user JWT is malformed: {p}")))?;
        with_jwt(jwt, &seed, times, None)
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::UserPassword(user, _) => f
                .debug_struct("UserPassword")
                .field("user", user)
                .finish_non_exhaustive(),
            Kind::Token(_) => f.write_str("Token(<redacted>)"),
            Kind::Nkey(_) => f.write_str("Nkey(<redacted>)"),
            Kind::Jwt { .. } => f.write_str("Jwt(<redacted>)"),
            Kind::Creds(_) => f.write_str("Creds(<redacted>)"),
        }
    }
}

/// A user JWT's validity window, in unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JwtTimes {
    pub(crate) issued_at: Option<u64>,
    pub(crate) expires_at: u64,
}

impl JwtTimes {
    /// DESIGN's default lead: min(max(30 s, 10 % of the lifetime), 50 % of it). Without
    /// `iat` the lifetime is unknown and the lead is 30 s.
    pub(crate) fn default_lead(self) -> Duration {
        let floor = Duration::from_secs(30);
        match self.issued_at {
            Some(iat) if self.expires_at > iat => {
                let life = Duration::from_secs(self.expires_at - iat);
                floor.max(life / 10).min(life / 2)
            }
            _ => floor,
        }
    }

    /// When to refresh, as a duration from now (zero when already due).
    pub(crate) fn refresh_in(self, lead: Option<Duration>, now: SystemTime) -> Duration {
        let lead = lead.unwrap_or_else(|| self.default_lead());
        // An `exp` beyond what SystemTime holds is as good as never: no refresh for a year.
        let Some(exp) = UNIX_EPOCH.checked_add(Duration::from_secs(self.expires_at)) else {
            return Duration::from_secs(365 * 24 * 3600);
        };
        exp.checked_sub(lead)
            .and_then(|at| at.duration_since(now).ok())
            .unwrap_or(Duration::ZERO)
    }

    /// How long ago it expired (zero when it has not).
    pub(crate) fn expired_for(self, now: SystemTime) -> Duration {
        UNIX_EPOCH
            .checked_add(Duration::from_secs(self.expires_at))
            .and_then(|exp| now.duration_since(exp).ok())
            .unwrap_or(Duration::ZERO)
    }

    /// Time left before expiry (zero when expired).
    pub(crate) fn expires_in(self, now: SystemTime) -> Duration {
        UNIX_EPOCH
            .checked_add(Duration::from_secs(self.expires_at))
            .map_or(Duration::MAX, |exp| {
                exp.duration_since(now).unwrap_or(Duration::ZERO)
            })
    }
}

/// Credentials loaded for one attempt.
pub(crate) struct Loaded {
    pub(crate) auth: Auth,
    /// The JWT's window, when it has an `exp`.
    pub(crate) jwt: Option<JwtTimes>,
    /// Identifies the credentials, to tell a retry with the same ones from one with new.
    pub(crate) fingerprint: u64,
}

/// Why the credentials could not be loaded. The text names the file and says what to
/// fix.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CredentialsError {
    /// The creds file could not be read.
    #[error(
        "cannot read the credentials file {}: {source}; check the path and its permissions",
        .path.display()
    )]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a `.creds` file (a block is missing).
    #[error("the credentials file {} {problem}", .path.display())]
    NotCreds { path: PathBuf, problem: String },
    /// The user JWT cannot be decoded.
    #[error("the user JWT in {} is malformed: {problem}", .path.display())]
    MalformedJwt { path: PathBuf, problem: String },
    /// The nkey seed is not one (`path` is the creds file that held it).
    #[error(
        "the nkey seed{} is not valid ({problem}); a user seed starts with `SU`",
        in_file(.path.as_deref())
    )]
    BadSeed {
        path: Option<PathBuf>,
        problem: String,
    },
    /// The blocking task reading them failed.
    #[error("reading the credentials failed: {0}")]
    Task(String),
    /// The credentials callback failed, or returned credentials that cannot be used.
    #[error("the credentials callback failed: {0}")]
    Callback(String),
    /// The credentials callback did not answer within connection_timeout.
    #[error("the credentials callback did not answer within connection_timeout ({0:?})")]
    CallbackTimeout(Duration),
}

fn in_file(path: Option<&Path>) -> String {
    path.map_or_else(String::new, |p| format!(" in {}", p.display()))
}

/// Load the credentials of `source` now.
pub(crate) fn load(source: &KeySource) -> Result<Loaded, CredentialsError> {
    match source {
        KeySource::File(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|source| CredentialsError::Unreadable {
                    path: path.clone(),
                    source,
                })?;
            let (jwt, seed) = parse_creds(&text).map_err(|problem| CredentialsError::NotCreds {
                path: path.clone(),
                problem,
            })?;
            let times = jwt_times(&jwt).map_err(|problem| CredentialsError::MalformedJwt {
                path: path.clone(),
                problem,
            })?;
            with_jwt(jwt, &seed, times, Some(path))
        }
        KeySource::Callback(_) => Err(CredentialsError::Task(String::from(
            "a credentials callback is awaited, not loaded",
        ))),
        KeySource::Seed(seed) => {
            let pair = key_pair(seed, None)?;
            Ok(Loaded {
                fingerprint: fingerprint(&[seed]),
                auth: Auth {
                    nkey: Some(pair.public_key()),
                    signer: Some(signer(pair)),
                    ..Auth::default()
                },
                jwt: None,
            })
        }
    }
}

/// JWT auth: CONNECT carries `jwt`, and `seed` (from the creds file at `path`, if any)
/// signs the nonce.
fn with_jwt(
    jwt: String,
    seed: &str,
    times: Option<JwtTimes>,
    path: Option<&Path>,
) -> Result<Loaded, CredentialsError> {
    let pair = key_pair(seed, path)?;
    Ok(Loaded {
        fingerprint: fingerprint(&[&jwt, seed]),
        auth: Auth {
            jwt: Some(jwt),
            signer: Some(signer(pair)),
            ..Auth::default()
        },
        jwt: times,
    })
}

/// Read the credentials (a creds file, or a seed) on the blocking pool: a file read never
/// blocks a runtime worker, and never happens under the connection lock.
/// A callback is called and awaited (bounded by `timeout`).
pub(crate) async fn load_keys(
    keys: KeySource,
    timeout: Duration,
) -> Result<Loaded, CredentialsError> {
    if let KeySource::Callback(f) = &keys {
        return match tokio::time::timeout(timeout, f()).await {
            Ok(Ok(c)) => c.load(),
            Ok(Err(e)) => Err(CredentialsError::Callback(e)),
            Err(_) => Err(CredentialsError::CallbackTimeout(timeout)),
        };
    }
    tokio::task::spawn_blocking(move || load(&keys))
        .await
        .unwrap_or_else(|e| Err(CredentialsError::Task(e.to_string())))
}

/// Credentials for an attempt to `addr`, read now (creds files are read again at every
/// attempt): the options first, then the URL's.
pub(crate) async fn auth_for(
    opts: &ConnectOptions,
    addr: &ServerAddr,
) -> Result<Loaded, CredentialsError> {
    if let Some(keys) = &opts.keys {
        return load_keys(keys.clone(), opts.connection_timeout).await;
    }
    let mut auth = Auth::default();
    if let Some((u, p)) = &opts.user {
        auth.user = Some(u.clone());
        auth.pass = Some(p.clone());
    } else if let Some(t) = &opts.token {
        auth.token = Some(t.clone());
    } else if let (Some(u), Some(p)) = (addr.user(), addr.pass()) {
        auth.user = Some(u.to_owned());
        auth.pass = Some(p.to_owned());
    } else if let Some(t) = addr.user() {
        auth.token = Some(t.to_owned());
    }
    // Static credentials never change.
    Ok(Loaded {
        auth,
        jwt: None,
        fingerprint: 0,
    })
}

/// Check a seed when options are built.
pub(crate) fn check_seed(seed: &str) -> Result<(), CredentialsError> {
    key_pair(seed, None).map(|_| ())
}

fn key_pair(seed: &str, path: Option<&Path>) -> Result<nkeys::KeyPair, CredentialsError> {
    nkeys::KeyPair::from_seed(seed.trim()).map_err(|e| CredentialsError::BadSeed {
        path: path.map(Path::to_path_buf),
        problem: e.to_string(),
    })
}

fn signer(pair: nkeys::KeyPair) -> tether_proto::conn::NonceSigner {
    let pair = Arc::new(pair);
    Arc::new(move |nonce: &[u8]| {
        pair.sign(nonce)
            .map(|sig| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig))
            .map_err(|e| e.to_string())
    })
}

fn fingerprint(parts: &[&str]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// The user JWT and the seed of a `.creds` file: the first two blocks framed by lines of
/// three or more dashes (`-----BEGIN NATS USER JWT-----` ... `------END NATS USER
/// JWT------`, then the seed's), as `nsc` writes them.
pub(crate) fn parse_creds(text: &str) -> Result<(String, String), String> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line.starts_with("---") && line.contains("BEGIN") {
            let body: Vec<&str> = lines
                .by_ref()
                .take_while(|l| !(l.starts_with("---") && l.contains("END")))
                .filter(|l| !l.is_empty())
                .collect();
            blocks.push(body.concat());
        }
    }
    let mut blocks = blocks.into_iter();
    let jwt = blocks
        .next()
        .filter(|b| !b.is_empty())
        .ok_or("has no user JWT block (`-----BEGIN NATS USER JWT-----`); is it a .creds file?")?;
    let seed = blocks
        .next()
        .filter(|b| !b.is_empty())
        .ok_or("has no nkey seed block (`-----BEGIN USER NKEY SEED-----`) after the JWT")?;
    Ok((jwt, seed))
}

/// `exp` and `iat` of a JWT; `None` when it never expires.
pub(crate) fn jwt_times(jwt: &str) -> Result<Option<JwtTimes>, String> {
    let mut parts = jwt.split('.');
    let (Some(_), Some(claims), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("expected three dot-separated parts".into());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .map_err(|e| format!("claims are not base64url: {e}"))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("claims are not JSON: {e}"))?;
    let secs = |k: &str| claims.get(k).and_then(serde_json::Value::as_u64);
    Ok(secs("exp").filter(|&e| e > 0).map(|expires_at| JwtTimes {
        issued_at: secs("iat"),
        expires_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt_with(claims: &str) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.sig",
            b(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
            b(claims)
        )
    }

    #[test]
    fn creds_blocks_are_found_as_nsc_writes_them() {
        let text = "-----BEGIN NATS USER JWT-----\naaa.bbb.ccc\n------END NATS USER JWT------\n\n\
                    ************************* IMPORTANT *************************\n\
                    NKEY Seed printed below can be used to sign and prove identity.\n\n\
                    -----BEGIN USER NKEY SEED-----\nSUAXYZ\n------END USER NKEY SEED------\n\n\
                    *************************************************************\n";
        assert_eq!(
            parse_creds(text).unwrap(),
            ("aaa.bbb.ccc".to_owned(), "SUAXYZ".to_owned())
        );
        let err = parse_creds("just a token").unwrap_err();
        assert!(err.contains("no user JWT block"), "{err}");
        let err =
            parse_creds("-----BEGIN NATS USER JWT-----\na.b.c\n------END NATS USER JWT------\n")
                .unwrap_err();
        assert!(err.contains("no nkey seed block"), "{err}");
    }

    #[test]
    fn jwt_expiry_and_default_lead() {
        let t = jwt_times(&jwt_with(r#"{"iat":1000,"exp":2000}"#))
            .unwrap()
            .unwrap();
        assert_eq!(t.expires_at, 2000);
        // 10 % of 1000 s is 100 s (above the 30 s floor, below half).
        assert_eq!(t.default_lead(), Duration::from_secs(100));
        let short = JwtTimes {
            issued_at: Some(0),
            expires_at: 20,
        };
        // Half of a 20 s lifetime caps the 30 s floor.
        assert_eq!(short.default_lead(), Duration::from_secs(10));
        let now = UNIX_EPOCH + Duration::from_secs(5);
        assert_eq!(short.refresh_in(None, now), Duration::from_secs(5));
        assert_eq!(
            short.refresh_in(Some(Duration::from_secs(2)), now),
            Duration::from_secs(13)
        );
        assert_eq!(
            short.expires_in(UNIX_EPOCH + Duration::from_secs(30)),
            Duration::ZERO
        );
        assert_eq!(jwt_times(&jwt_with(r#"{"iat":1000}"#)).unwrap(), None);
        assert!(jwt_times("not-a-jwt").is_err());
    }

    #[test]
    fn a_seed_signs_the_nonce_and_a_bad_seed_says_what_it_should_look_like() {
        let user = nkeys::KeyPair::new_user();
        let seed = user.seed().unwrap();
        let loaded = load(&KeySource::Seed(seed)).unwrap();
        assert_eq!(
            loaded.auth.nkey.as_deref(),
            Some(user.public_key().as_str())
        );
        let sig = (loaded.auth.signer.unwrap())(b"nonce").unwrap();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .unwrap();
        assert!(user.verify(b"nonce", &raw).is_ok());
        let err = check_seed("not a seed").unwrap_err().to_string();
        assert!(
            err.contains("starts with `SU`") && !err.contains("not a seed"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_creds_file_names_the_path() {
        let err = load(&KeySource::File("/nonexistent/user.creds".into()))
            .err()
            .unwrap();
        assert!(
            matches!(err, CredentialsError::Unreadable { .. }),
            "{err:?}"
        );
        let err = err.to_string();
        assert!(err.contains("/nonexistent/user.creds"), "{err}");
    }
}
