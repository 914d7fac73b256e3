//! Nkey users and operator-mode JWTs, made locally with fresh keys.
//!
//! [`nkey_user`] makes a key pair for `authorization { users = [ { nkey: U… } ] }`
//! ([`ServerConfig::nkey_users`](crate::ServerConfig::nkey_users)). [`Operator`] holds an
//! operator and an account and issues user JWTs (with an expiry when asked) that a server
//! started with [`ServerConfig::with_operator`](crate::ServerConfig::with_operator) trusts.
//!
//! A JWT is `header.claims.signature`, each part base64url without padding. The header
//! is `{"typ":"JWT","alg":"ed25519-nkey"}`; the signature is the issuer's ed25519
//! signature (made by [`nkeys`]) over the ASCII bytes `header.claims`. The `jti` claim
//! is computed the way the Go `nats-io/jwt` library does it: base32 (RFC 4648,
//! uppercase, no padding) of the SHA-512/256 of the JSON of the standard claims
//! (`exp`, `iat`, `iss`, `name`, `sub`) without `jti`. nats-server 2.15.1 does not check
//! `jti`, so this only keeps the tokens alike.
//!
//! What nats-server 2.15.1 tells a client (observed by the `tether` crate's
//! `tests/auth.rs` and `tests/auth_tls.rs`):
//! - when a user JWT expires while connected: `-ERR 'User Authentication Expired'`,
//!   then it closes the connection;
//! - when the user JWT has already expired at CONNECT: `-ERR 'Authorization Violation'`
//!   (the same text as for a bad signature or an unknown key), then it closes the
//!   connection;
//! - when the account JWT is updated with the connected user in its `revocations`
//!   ([`Operator::revoke`], pushed with a config reload): `-ERR 'User Authentication
//!   Revoked'`, then it closes the connection; a revoked user's CONNECT gets
//!   `-ERR 'Authorization Violation'`;
//! - when the account JWT expires ([`Operator::with_account_expiry`]): every client of
//!   the account gets `-ERR 'Account Authentication Expired'` and is closed; a CONNECT
//!   to the expired account gets `-ERR 'Authorization Violation'`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use nkeys::KeyPair;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha512_256};

/// The JWT header every NATS v2 JWT carries.
const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// An operator with one account for users and a system account, all with fresh keys,
/// and their JWTs.
///
/// Hand it to [`ServerConfig::with_operator`](crate::ServerConfig::with_operator) to run
/// a server in operator mode (memory resolver, both accounts preloaded) and issue users
/// with [`user`](Self::user). The user account has no limits (`-1` everywhere; JetStream
/// is not enabled for it) and default permissions that allow any publish and subscribe.
///
/// nats-server 2.15.1 does not need a system account in this mode: without one it starts
/// and serves users, but logs `Trusted Operators should utilize a System Account` and
/// has none. One is configured anyway (in the operator JWT and as `system_account`), as
/// `nsc` does, so the server runs as it would in production.
pub struct Operator {
    op_key: KeyPair,
    account: KeyPair,
    system: KeyPair,
    op_jwt: String,
    account_jwt: String,
    system_jwt: String,
    /// The account JWT's `revocations`: user public key → unix seconds; user JWTs of
    /// that key issued at or before then are revoked.
    revocations: BTreeMap<String, u64>,
    /// The account JWT's `exp`, in unix seconds.
    account_expires_at: Option<u64>,
}

impl fmt::Debug for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Operator")
            .field("operator", &self.op_key.public_key())
            .field("account", &self.account.public_key())
            .field("system_account", &self.system.public_key())
            .finish_non_exhaustive()
    }
}

impl Default for Operator {
    fn default() -> Self {
        Self::new()
    }
}

impl Operator {
    /// Generates an operator, a user account and a system account, and signs their JWTs.
    pub fn new() -> Operator {
        let op_key = KeyPair::new_operator();
        let account = KeyPair::new_account();
        let system = KeyPair::new_account();
        let op_pk = op_key.public_key();
        let op_jwt = encode(
            &op_key,
            &op_pk,
            "tether-operator",
            None,
            json!({
                "system_account": system.public_key(),
                "type": "operator",
                "version": 2,
            }),
        );
        let system_jwt = encode(
            &op_key,
            &system.public_key(),
            "SYS",
            None,
            account_nats(&BTreeMap::new()),
        );
        let mut op = Operator {
            op_key,
            account,
            system,
            op_jwt,
            account_jwt: String::new(),
            system_jwt,
            revocations: BTreeMap::new(),
            account_expires_at: None,
        };
        op.sign_account();
        op
    }

    /// This operator with a user account JWT that expires `expires_in` from now (rounded
    /// up to a whole second). Start the server after this: it reads the account JWT from
    /// its config.
    ///
    /// nats-server loads the account when its first user connects and arms a timer for
    /// the `exp`; when it fires, every client of the account gets `-ERR 'Account
    /// Authentication Expired'` and is closed, and later CONNECTs to that account get
    /// `-ERR 'Authorization Violation'`.
    #[must_use]
    pub fn with_account_expiry(mut self, expires_in: Duration) -> Self {
        self.account_expires_at = Some(whole_seconds_after_now(expires_in));
        self.sign_account();
        self
    }

    /// The user account JWT's `exp` in unix seconds, if it has one.
    pub fn account_expires_at(&self) -> Option<u64> {
        self.account_expires_at
    }

    /// Revokes every user JWT of `user_public_key` (`U…`) issued up to now: the account
    /// JWT is signed again with the key in its `revocations` (at the current unix second),
    /// and [`server_config`](Self::server_config) and [`account_jwt`](Self::account_jwt)
    /// give the new one.
    ///
    /// A running server learns it from its config: set
    /// [`ServerConfig::operator`](crate::ServerConfig::operator) to the new
    /// [`server_config`](Self::server_config) (through
    /// [`NatsServer::config_mut`](crate::NatsServer::config_mut)) and call
    /// [`NatsServer::reload`](crate::NatsServer::reload). nats-server (memory resolver)
    /// then applies the new account JWT: a connected client of that user gets `-ERR 'User
    /// Authentication Revoked'` and is closed, and its later CONNECTs get `-ERR
    /// 'Authorization Violation'`.
    pub fn revoke(&mut self, user_public_key: &str) {
        self.revocations
            .insert(user_public_key.to_owned(), unix_now().as_secs());
        self.sign_account();
    }

    /// (Re)signs the user account JWT from the current revocations and expiry.
    fn sign_account(&mut self) {
        self.account_jwt = encode(
            &self.op_key,
            &self.account.public_key(),
            "tether",
            self.account_expires_at,
            account_nats(&self.revocations),
        );
    }

    /// The operator's public key (`O…`).
    pub fn operator_public_key(&self) -> String {
        self.op_key.public_key()
    }

    /// The public key (`A…`) of the account users are issued in.
    pub fn account_public_key(&self) -> String {
        self.account.public_key()
    }

    /// The system account's public key (`A…`).
    pub fn system_account_public_key(&self) -> String {
        self.system.public_key()
    }

    /// The operator's self-signed JWT.
    pub fn operator_jwt(&self) -> &str {
        &self.op_jwt
    }

    /// The user account's JWT, signed by the operator.
    pub fn account_jwt(&self) -> &str {
        &self.account_jwt
    }

    /// nats-server config text for operator mode with the memory resolver:
    ///
    /// ```text
    /// operator: "<operator JWT>"
    /// system_account: "<system account public key>"
    /// resolver: MEMORY
    /// resolver_preload: {
    ///   "<account public key>": "<account JWT>"
    ///   "<system account public key>": "<system account JWT>"
    /// }
    /// ```
    ///
    /// In operator mode the server ignores a configured token and refuses users
    /// configured directly, so this does not mix with token, user/password or nkey users
    /// (see [`ServerConfig::operator`](crate::ServerConfig::operator)).
    pub fn server_config(&self) -> String {
        format!(
            "operator: \"{op}\"\nsystem_account: \"{sys}\"\nresolver: MEMORY\n\
             resolver_preload: {{\n  \"{acc}\": \"{acc_jwt}\"\n  \"{sys}\": \"{sys_jwt}\"\n}}\n",
            op = self.op_jwt,
            sys = self.system.public_key(),
            acc = self.account.public_key(),
            acc_jwt = self.account_jwt,
            sys_jwt = self.system_jwt,
        )
    }

    /// A fresh user key pair and a user JWT for it, issued by the account, valid for
    /// `expires_in` from now (rounded up to a whole second, so never shorter) or forever.
    ///
    /// The user may publish and subscribe to anything and has no limits. When the JWT
    /// expires, the server sends `-ERR 'User Authentication Expired'` and closes the
    /// connection.
    pub fn user(&self, name: &str, expires_in: Option<Duration>) -> UserCreds {
        let expires_at = expires_in.map(whole_seconds_after_now);
        self.user_expiring_at(name, expires_at)
    }

    /// Like [`user`](Self::user), with `exp` given in unix seconds; a time in the past
    /// makes a JWT the server refuses at CONNECT with `-ERR 'Authorization Violation'`.
    pub fn user_expiring_at(&self, name: &str, expires_at: Option<u64>) -> UserCreds {
        let user = KeyPair::new_user();
        let public_key = user.public_key();
        let jwt = encode(
            &self.account,
            &public_key,
            name,
            expires_at,
            json!({
                "pub": {},
                "sub": {},
                "subs": -1,
                "data": -1,
                "payload": -1,
                "type": "user",
                "version": 2,
            }),
        );
        UserCreds {
            jwt,
            seed: seed_of(&user),
            public_key,
            expires_at,
        }
    }
}

/// `d` from now in unix seconds, rounded up (never earlier than `d` from now).
fn whole_seconds_after_now(d: Duration) -> u64 {
    let at = unix_now() + d;
    at.as_secs() + u64::from(at.subsec_nanos() > 0)
}

/// The `nats` part of an account JWT: no limits, JetStream off, any pub/sub allowed, and
/// `revocations` when there are any.
fn account_nats(revocations: &BTreeMap<String, u64>) -> serde_json::Value {
    let mut nats = json!({
        "limits": {
            "subs": -1,
            "data": -1,
            "payload": -1,
            "imports": -1,
            "exports": -1,
            "wildcards": true,
            "conn": -1,
            "leaf": -1,
        },
        "default_permissions": { "pub": {}, "sub": {} },
        "type": "account",
        "version": 2,
    });
    if !revocations.is_empty() {
        nats["revocations"] = json!(revocations);
    }
    nats
}

/// A user's JWT and nkey seed: what a `.creds` file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCreds {
    /// The user JWT, signed by the account.
    pub jwt: String,
    /// The user's nkey seed (`SU…`); signs the server's nonce.
    pub seed: String,
    /// The user's public key (`U…`), the JWT's subject.
    pub public_key: String,
    /// The JWT's `exp`, in unix seconds; `None` when it never expires.
    pub expires_at: Option<u64>,
}

impl UserCreds {
    /// The `.creds` file text, exactly as `nsc` writes it (JWT block, the warning, the
    /// seed block, each line ending in `\n`).
    pub fn creds_text(&self) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n",
            jwt = self.jwt,
            seed = self.seed,
        )
    }

    /// Writes [`creds_text`](Self::creds_text) to `path` atomically: a temp file in the
    /// same directory (mode 0600) is written, synced and renamed over `path`, so a reader
    /// sees the old file or the new one, never half of one.
    pub fn write_to(&self, path: &Path) -> std::io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".tether-creds-")
            .tempfile_in(dir)?;
        tmp.write_all(self.creds_text().as_bytes())?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }

    /// Signs a server's INFO `nonce` with the seed: the CONNECT `sig` (base64url, no
    /// padding).
    pub fn sign_nonce(&self, nonce: &str) -> String {
        sign_nonce(&self.seed, nonce)
    }
}

/// A user that authenticates with an nkey alone (no JWT), for
/// [`ServerConfig::nkey_users`](crate::ServerConfig::nkey_users).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NkeyUser {
    /// The nkey seed (`SU…`); signs the server's nonce.
    pub seed: String,
    /// The public key (`U…`): goes in the server config and in CONNECT's `nkey`.
    pub public_key: String,
}

impl NkeyUser {
    /// Signs a server's INFO `nonce` with the seed: the CONNECT `sig` (base64url, no
    /// padding).
    pub fn sign_nonce(&self, nonce: &str) -> String {
        sign_nonce(&self.seed, nonce)
    }
}

/// A fresh user nkey pair.
pub fn nkey_user() -> NkeyUser {
    let kp = KeyPair::new_user();
    NkeyUser {
        seed: seed_of(&kp),
        public_key: kp.public_key(),
    }
}

/// The CONNECT `sig` for `nonce`: the ed25519 signature of its bytes by `seed`, in
/// base64url without padding (what nats-server expects first).
///
/// # Panics
/// If `seed` is not a valid nkey seed.
pub fn sign_nonce(seed: &str, nonce: &str) -> String {
    let kp = KeyPair::from_seed(seed).expect("a valid nkey seed");
    let sig = kp
        .sign(nonce.as_bytes())
        .expect("a key pair from a seed can sign");
    URL_SAFE_NO_PAD.encode(sig)
}

fn seed_of(kp: &KeyPair) -> String {
    kp.seed().expect("a generated key pair has a seed")
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
}

/// The standard claims, in the Go library's field order (which `jti` hashes).
#[derive(Serialize)]
struct StdClaims<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    iat: u64,
    iss: &'a str,
    name: &'a str,
    sub: &'a str,
}

#[derive(Serialize)]
struct Claims<'a> {
    #[serde(flatten)]
    std: StdClaims<'a>,
    nats: serde_json::Value,
}

/// A JWT for `sub` issued (and signed) by `issuer`.
fn encode(
    issuer: &KeyPair,
    sub: &str,
    name: &str,
    exp: Option<u64>,
    nats: serde_json::Value,
) -> String {
    let iss = issuer.public_key();
    let mut std = StdClaims {
        exp,
        jti: None,
        iat: unix_now().as_secs(),
        iss: &iss,
        name,
        sub,
    };
    let unhashed = serde_json::to_vec(&std).expect("claims serialize");
    std.jti = Some(data_encoding::BASE32_NOPAD.encode(&Sha512_256::digest(&unhashed)));
    let claims = serde_json::to_vec(&Claims { std, nats }).expect("claims serialize");
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = issuer
        .sign(signed.as_bytes())
        .expect("a generated key pair can sign");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_part(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn user_jwt_has_the_claims_and_a_valid_signature() {
        let op = Operator::new();
        let u = op.user("alice", Some(Duration::from_millis(1500)));
        let parts: Vec<&str> = u.jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            decode_part(parts[0]),
            json!({"typ": "JWT", "alg": "ed25519-nkey"})
        );
        let c = decode_part(parts[1]);
        assert_eq!(c["iss"], op.account_public_key());
        assert_eq!(c["sub"], u.public_key);
        assert_eq!(c["name"], "alice");
        assert_eq!(c["nats"]["type"], "user");
        assert_eq!(c["nats"]["version"], 2);
        assert_eq!(c["nats"]["subs"], -1);
        let iat = c["iat"].as_u64().unwrap();
        let exp = c["exp"].as_u64().unwrap();
        assert_eq!(Some(exp), u.expires_at);
        assert!((iat + 1..=iat + 3).contains(&exp), "iat {iat} exp {exp}");
        // jti: base32 of SHA-512/256 of the standard claims without jti.
        let jti = c["jti"].as_str().unwrap();
        assert_eq!(jti.len(), 52);
        let std = format!(
            r#"{{"exp":{exp},"iat":{iat},"iss":"{}","name":"alice","sub":"{}"}}"#,
            op.account_public_key(),
            u.public_key
        );
        assert_eq!(
            jti,
            data_encoding::BASE32_NOPAD.encode(&Sha512_256::digest(std.as_bytes()))
        );
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        let account = KeyPair::from_public_key(&op.account_public_key()).unwrap();
        account.verify(signed.as_bytes(), &sig).unwrap();
        assert!(account.verify(b"something else", &sig).is_err());
        assert!(u.seed.starts_with("SU"));
        assert!(u.public_key.starts_with('U'));
        assert_eq!(op.user("bob", None).expires_at, None);
    }

    #[test]
    fn account_and_operator_jwts_chain_up() {
        let op = Operator::new();
        let a = decode_part(op.account_jwt().split('.').nth(1).unwrap());
        assert_eq!(a["iss"], op.operator_public_key());
        assert_eq!(a["sub"], op.account_public_key());
        assert_eq!(a["nats"]["limits"]["conn"], -1);
        let o = decode_part(op.operator_jwt().split('.').nth(1).unwrap());
        assert_eq!(o["iss"], o["sub"]);
        assert_eq!(o["nats"]["system_account"], op.system_account_public_key());
        let cfg = op.server_config();
        assert!(cfg.contains(op.operator_jwt()), "{cfg}");
        assert!(cfg.contains(op.account_jwt()), "{cfg}");
        assert!(cfg.contains("resolver: MEMORY"), "{cfg}");
    }

    #[test]
    fn revoke_and_account_expiry_resign_the_account_jwt() {
        let mut op = Operator::new();
        let before = op.account_jwt().to_owned();
        let a = decode_part(before.split('.').nth(1).unwrap());
        assert!(a["nats"].get("revocations").is_none(), "{a}");
        assert!(a.get("exp").is_none(), "{a}");
        let u = op.user("alice", None);
        op.revoke(&u.public_key);
        assert_ne!(op.account_jwt(), before);
        let parts: Vec<&str> = op.account_jwt().split('.').collect();
        let a = decode_part(parts[1]);
        let at = a["nats"]["revocations"][&u.public_key].as_u64().unwrap();
        let iat = decode_part(u.jwt.split('.').nth(1).unwrap())["iat"]
            .as_u64()
            .unwrap();
        assert!(at >= iat, "revoked at {at}, issued at {iat}");
        assert!(op.server_config().contains(op.account_jwt()));
        let operator = KeyPair::from_public_key(&op.operator_public_key()).unwrap();
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        operator
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();

        let op = Operator::new().with_account_expiry(Duration::from_millis(2500));
        let a = decode_part(op.account_jwt().split('.').nth(1).unwrap());
        let exp = a["exp"].as_u64().unwrap();
        assert_eq!(Some(exp), op.account_expires_at());
        let iat = a["iat"].as_u64().unwrap();
        assert!((iat + 2..=iat + 4).contains(&exp), "iat {iat} exp {exp}");
    }

    #[test]
    fn nonce_signature_verifies() {
        let u = nkey_user();
        let sig = URL_SAFE_NO_PAD.decode(u.sign_nonce("abc")).unwrap();
        let kp = KeyPair::from_public_key(&u.public_key).unwrap();
        kp.verify(b"abc", &sig).unwrap();
        assert!(kp.verify(b"abd", &sig).is_err());
    }
}
