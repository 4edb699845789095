//! Authentication before the WebSocket upgrade: JSON Web Tokens (the `[auth]` table).
//!
//! Pure, like the codecs: it owns
//! - the `[auth]` configuration ([`AuthConfig`]) and the checks that need no file
//!   ([`AuthConfig::validate`]);
//! - finding a token in an upgrade request ([`find_token`]): an `Authorization: Bearer` header, a
//!   `bearer.<token>` entry of `Sec-WebSocket-Protocol` ([`is_bearer_subprotocol`] tells the caller
//!   which offered entry it must never select or echo), a query parameter or a cookie, in the
//!   configured order;
//! - loading the keys ([`Verifier::load`]: HMAC secrets, PEM public keys, a JWKS document) and
//!   verifying a token with them ([`Verifier::verify`]), which yields the [`Identity`] (the user id
//!   and the claims forwarded to the game server) or the [`Rejection`] that the 401 answer names.
//!
//! What it must never do:
//! - any I/O besides reading the configured key files in [`Verifier::load`] (it does not read the
//!   clock either: [`Verifier::verify`] takes `now`);
//! - log, display or debug-print a token, or put key material in an error: every error here is a
//!   fixed text or names a file and a cause;
//! - accept an unsigned token (`alg: none`), or check an HMAC (`HS*`) with anything but the
//!   configured `hs*_secret_file` secret of that exact algorithm (never with a public key's bytes:
//!   the algorithm-confusion attack);
//! - panic on input: a token, a header or a key file that is not what it should be is an error.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;

mod keys;
mod token;
mod verify;

#[cfg(test)]
mod tests;

pub use keys::{KeyError, Verifier};
pub use token::{find_token, is_bearer_subprotocol};

/// The `[auth]` table.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `none`: the `user` query parameter names the user (no authentication); `jwt`: only a verified
    /// token does, and `?user=` is ignored.
    pub mode: Mode,
    /// Where to look for a token, in this order.
    pub token_sources: Vec<TokenSource>,
    /// The query parameter that carries a token.
    pub query_param: String,
    /// The cookie that carries a token.
    pub cookie: String,
    /// The allowed signature algorithms, named as in the JWT header's `alg`.
    pub algorithms: Vec<String>,
    /// The HS256 secret: the file's bytes as they are, one trailing newline stripped.
    pub hs256_secret_file: Option<PathBuf>,
    /// The HS384 secret, like `hs256_secret_file`.
    pub hs384_secret_file: Option<PathBuf>,
    /// The HS512 secret, like `hs256_secret_file`.
    pub hs512_secret_file: Option<PathBuf>,
    /// PEM files of one public key each: RSA, EC P-256/P-384 or Ed25519.
    pub public_key_files: Vec<PathBuf>,
    /// A JWKS document; a token's `kid` selects its key.
    pub jwks_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// When set, the token's `iss` must be this.
    pub issuer: Option<String>,
    /// When set, the token's `aud` must be this or an array holding it.
    pub audience: Option<String>,
    /// The claim that holds the user id (a string, or an integer).
    pub user_claim: String,
    /// The claims forwarded to the game server, when the token has them.
    pub forward_claims: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: Mode::None,
            token_sources: vec![
                TokenSource::Authorization,
                TokenSource::Subprotocol,
                TokenSource::Query,
                TokenSource::Cookie,
            ],
            query_param: "token".into(),
            cookie: "token".into(),
            algorithms: Vec::new(),
            hs256_secret_file: None,
            hs384_secret_file: None,
            hs512_secret_file: None,
            public_key_files: Vec::new(),
            jwks_file: None,
            leeway: Duration::from_secs(30),
            issuer: None,
            audience: None,
            user_claim: "sub".into(),
            forward_claims: Vec::new(),
        }
    }
}

/// How a connection gets its user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The `user` query parameter, unauthenticated.
    #[default]
    None,
    /// A verified JSON Web Token.
    Jwt,
}

/// A place to look for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Authorization,
    /// A `Sec-WebSocket-Protocol` entry `bearer.<token>`.
    Subprotocol,
    /// The query parameter `query_param`.
    Query,
    /// The cookie `cookie`.
    Cookie,
}

/// Where a token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Authorization,
    Subprotocol,
    Query,
    Cookie,
}

/// Who a verified token says the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The value of the `user_claim` claim (an integer rendered in decimal).
    pub user: String,
    /// The forwarded claims as a JSON object text ("{}" when none are configured or present).
    pub claims: String,
}

/// Why a request is not authenticated; each maps to a 401 answer.
///
/// The Display text is the answer's body: it says which check failed and never holds the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("no token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not allowed")]
    Algorithm,
    #[error("unknown key id")]
    UnknownKid,
    #[error("bad signature")]
    Signature,
    #[error("token has no expiry")]
    NoExpiry,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("no user claim")]
    NoUser,
}

impl Rejection {
    /// The value of the WWW-Authenticate header: `Bearer` for Missing, `Bearer error="invalid_token"`
    /// otherwise.
    pub fn www_authenticate(&self) -> &'static str {
        match self {
            Rejection::Missing => "Bearer",
            _ => "Bearer error=\"invalid_token\"",
        }
    }

    /// A short stable reason for counters and logs, never the token.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::Malformed => "malformed",
            Rejection::Algorithm => "algorithm",
            Rejection::UnknownKid => "unknown_kid",
            Rejection::Signature => "signature",
            Rejection::NoExpiry => "no_expiry",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::Issuer => "issuer",
            Rejection::Audience => "audience",
            Rejection::NoUser => "no_user",
        }
    }
}

/// The algorithms this module verifies, by their JWT `alg` name (case-sensitive).
const ALGORITHMS: [(&str, Algorithm); 10] = [
    ("HS256", Algorithm::HS256),
    ("HS384", Algorithm::HS384),
    ("HS512", Algorithm::HS512),
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

/// The algorithm named `name` in a config or a JWT header, if this module supports it.
fn algorithm(name: &str) -> Option<Algorithm> {
    ALGORITHMS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

/// The JWT name of a supported algorithm.
fn algorithm_name(alg: Algorithm) -> &'static str {
    ALGORITHMS
        .iter()
        .find(|(_, a)| *a == alg)
        .map_or("?", |(n, _)| n)
}

impl AuthConfig {
    /// Checks what can be checked without reading files: algorithm names known and never `none`;
    /// in jwt mode at least one algorithm, at least one token source, usable parameter and cookie
    /// names, a user claim, no empty issuer/audience/forwarded claim, and a key source for each
    /// algorithm family allowed (an `hs*_secret_file` for each HMAC algorithm; `public_key_files`
    /// or `jwks_file` for the others). Err is a (key, reason) pair for the caller's ConfigError.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let mut allowed = Vec::with_capacity(self.algorithms.len());
        for name in &self.algorithms {
            if name.eq_ignore_ascii_case("none") {
                return Err((
                    "auth.algorithms",
                    "\"none\" is never allowed: every token must be signed".into(),
                ));
            }
            match algorithm(name) {
                Some(alg) => allowed.push(alg),
                None => {
                    let known: Vec<&str> = ALGORITHMS.iter().map(|(n, _)| *n).collect();
                    return Err((
                        "auth.algorithms",
                        format!(
                            "{name:?} is not a supported algorithm (one of {})",
                            known.join(", ")
                        ),
                    ));
                }
            }
        }
        if self.mode == Mode::None {
            return Ok(());
        }
        if allowed.is_empty() {
            return Err((
                "auth.algorithms",
                "mode \"jwt\" needs at least one algorithm".into(),
            ));
        }
        if self.token_sources.is_empty() {
            return Err((
                "auth.token_sources",
                "mode \"jwt\" needs at least one token source".into(),
            ));
        }
        if self.token_sources.contains(&TokenSource::Query)
            && (self.query_param.is_empty() || self.query_param.contains(['&', '=', '#', ' ']))
        {
            return Err((
                "auth.query_param",
                "must be a non-empty name without '&', '=', '#' or space".into(),
            ));
        }
        if self.token_sources.contains(&TokenSource::Cookie) && !is_cookie_name(&self.cookie) {
            return Err((
                "auth.cookie",
                format!("{:?} is not a cookie name", self.cookie),
            ));
        }
        if self.user_claim.is_empty() {
            return Err(("auth.user_claim", "must not be empty".into()));
        }
        if self.issuer.as_deref() == Some("") {
            return Err((
                "auth.issuer",
                "must not be empty (leave it out to skip the check)".into(),
            ));
        }
        if self.audience.as_deref() == Some("") {
            return Err((
                "auth.audience",
                "must not be empty (leave it out to skip the check)".into(),
            ));
        }
        if self.forward_claims.iter().any(String::is_empty) {
            return Err((
                "auth.forward_claims",
                "a claim name must not be empty".into(),
            ));
        }
        let has_public = !self.public_key_files.is_empty() || self.jwks_file.is_some();
        for alg in allowed {
            let (key, missing) = match alg {
                Algorithm::HS256 => ("auth.hs256_secret_file", self.hs256_secret_file.is_none()),
                Algorithm::HS384 => ("auth.hs384_secret_file", self.hs384_secret_file.is_none()),
                Algorithm::HS512 => ("auth.hs512_secret_file", self.hs512_secret_file.is_none()),
                _ => ("auth.public_key_files", !has_public),
            };
            if missing {
                let name = algorithm_name(alg);
                let reason = if key == "auth.public_key_files" {
                    format!("{name} is allowed but neither public_key_files nor jwks_file is set")
                } else {
                    format!("{name} is allowed but its secret file is not set")
                };
                return Err((key, reason));
            }
        }
        Ok(())
    }
}

/// A cookie name: an HTTP token (RFC 6265 section 4.1.1).
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
