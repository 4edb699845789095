//! Loading the keys: HMAC secrets, PEM public keys and a JWKS document, each checked when read so
//! that a bad file fails the load (naming the file and the cause, never the key material) rather
//! than every token later.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;

use super::{algorithm, algorithm_name, AuthConfig, Mode};

/// Why the keys could not be loaded. Names the file and the cause; never holds key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The configuration itself is wrong (what [`AuthConfig::validate`] reports).
    #[error("`{key}`: {reason}")]
    Config { key: &'static str, reason: String },
    /// A key file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A key file was read but does not hold a usable key.
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// An allowed algorithm has no key that could verify it.
    #[error(
        "`auth.algorithms`: {alg} is allowed but no key in public_key_files or jwks_file is for it"
    )]
    NoKey { alg: &'static str },
    /// The jsonwebtoken crate was built with no single crypto backend.
    #[error("jsonwebtoken has no crypto provider (it needs exactly one of its features rust_crypto and aws_lc_rs)")]
    NoCryptoProvider,
}

/// The kind of a public key, which decides the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Kind {
    /// The kind of key that verifies `alg`; None for the HMAC algorithms, which use secrets only.
    pub(super) fn for_algorithm(alg: Algorithm) -> Option<Kind> {
        match alg {
            Algorithm::ES256 => Some(Kind::P256),
            Algorithm::ES384 => Some(Kind::P384),
            Algorithm::EdDSA => Some(Kind::Ed25519),
            _ => match alg.family() {
                AlgorithmFamily::Rsa => Some(Kind::Rsa),
                _ => None,
            },
        }
    }
}

/// One public key from a PEM file or a JWKS document.
pub(super) struct PublicKey {
    pub(super) kind: Kind,
    /// The JWKS `kid`; None for PEM files and JWKS keys without one.
    pub(super) kid: Option<String>,
    /// The JWKS `alg`, when the document restricts the key to one algorithm.
    pub(super) alg: Option<Algorithm>,
    pub(super) key: DecodingKey,
}

impl PublicKey {
    /// Whether this key may verify a token signed with `alg`.
    pub(super) fn fits(&self, alg: Algorithm) -> bool {
        Kind::for_algorithm(alg) == Some(self.kind) && self.alg.is_none_or(|a| a == alg)
    }
}

/// What a [`Verifier`] shares between its clones.
pub(super) struct Inner {
    pub(super) allowed: Vec<Algorithm>,
    /// The HS256, HS384 and HS512 secrets, in that order.
    pub(super) hmac: [Option<DecodingKey>; 3],
    /// The keys of `public_key_files`.
    pub(super) pem: Vec<PublicKey>,
    /// The keys of `jwks_file`, when one is configured.
    pub(super) jwks: Option<Vec<PublicKey>>,
    pub(super) leeway: u64,
    pub(super) issuer: Option<String>,
    pub(super) audience: Option<String>,
    pub(super) user_claim: String,
    pub(super) forward_claims: Vec<String>,
}

impl Inner {
    /// The secret that verifies the HMAC algorithm `alg`.
    pub(super) fn secret(&self, alg: Algorithm) -> Option<&DecodingKey> {
        let slot = match alg {
            Algorithm::HS256 => 0,
            Algorithm::HS384 => 1,
            Algorithm::HS512 => 2,
            _ => return None,
        };
        self.hmac[slot].as_ref()
    }
}

/// Keys loaded from the files, ready to verify. Cheap to clone (one `Arc`); Send and Sync.
#[derive(Clone)]
pub struct Verifier {
    pub(super) inner: Arc<Inner>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        let algorithms: Vec<&str> = inner.allowed.iter().map(|a| algorithm_name(*a)).collect();
        f.debug_struct("Verifier")
            .field("algorithms", &algorithms)
            .field("secrets", &inner.hmac.iter().flatten().count())
            .field("pem_keys", &inner.pem.len())
            .field("jwks_keys", &inner.jwks.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Reads every configured key file (secrets: the file's bytes as they are, one trailing newline
    /// stripped; PEM files: each holds one public key, RSA (2048 bits or more), EC P-256/P-384 or
    /// Ed25519, detected from the PEM; JWKS: the usable signing keys, each with its `kid`; `oct`
    /// keys and keys for encryption or other algorithms are skipped). Runs
    /// [`AuthConfig::validate`] first, and checks that every allowed algorithm has a key. In mode
    /// `none` it reads nothing and every token is refused. Errors name the file and the cause
    /// (never key material).
    pub fn load(cfg: &AuthConfig) -> Result<Verifier, KeyError> {
        cfg.validate()
            .map_err(|(key, reason)| KeyError::Config { key, reason })?;
        let mut inner = Inner {
            allowed: Vec::new(),
            hmac: [None, None, None],
            pem: Vec::new(),
            jwks: None,
            leeway: cfg.leeway.as_secs(),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            user_claim: cfg.user_claim.clone(),
            forward_claims: cfg.forward_claims.clone(),
        };
        if cfg.mode == Mode::None {
            return Ok(Verifier {
                inner: Arc::new(inner),
            });
        }
        let provider = CryptoProvider::try_get_default().ok_or(KeyError::NoCryptoProvider)?;
        inner.allowed = cfg.algorithms.iter().filter_map(|n| algorithm(n)).collect();
        let secrets = [
            &cfg.hs256_secret_file,
            &cfg.hs384_secret_file,
            &cfg.hs512_secret_file,
        ];
        for (slot, file) in inner.hmac.iter_mut().zip(secrets) {
            if let Some(path) = file {
                *slot = Some(read_secret(path)?);
            }
        }
        for path in &cfg.public_key_files {
            inner.pem.push(read_pem(path, provider)?);
        }
        if let Some(path) = &cfg.jwks_file {
            inner.jwks = Some(read_jwks(path, provider)?);
        }
        for &alg in &inner.allowed {
            let has_key = match alg.family() {
                AlgorithmFamily::Hmac => inner.secret(alg).is_some(),
                _ => inner
                    .pem
                    .iter()
                    .chain(inner.jwks.iter().flatten())
                    .any(|k| k.fits(alg)),
            };
            if !has_key {
                return Err(KeyError::NoKey {
                    alg: algorithm_name(alg),
                });
            }
        }
        Ok(Verifier {
            inner: Arc::new(inner),
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(path: &Path, reason: impl Into<String>) -> KeyError {
    KeyError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// An HMAC secret: the file's bytes, one trailing newline ("\n" or "\r\n") stripped.
fn read_secret(path: &Path) -> Result<DecodingKey, KeyError> {
    let mut bytes = read(path)?;
    if bytes.ends_with(b"\r\n") {
        bytes.truncate(bytes.len() - 2);
    } else if bytes.ends_with(b"\n") {
        bytes.truncate(bytes.len() - 1);
    }
    if bytes.is_empty() {
        return Err(invalid(path, "the secret is empty"));
    }
    DecodingKey::from_secret(&bytes).map_err(|_| invalid(path, "not a usable secret"))
}

// DER encodings of the object identifiers that name a public key's type and curve.
const OID_RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const OID_EC: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// One public key from a PEM file: `PUBLIC KEY` (SubjectPublicKeyInfo: RSA, EC P-256/P-384 or
/// Ed25519, told apart by the algorithm identifier) or `RSA PUBLIC KEY` (PKCS#1).
fn read_pem(path: &Path, provider: &CryptoProvider) -> Result<PublicKey, KeyError> {
    let bytes = read(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| invalid(path, "not a PEM text file"))?;
    let blocks = text.matches("-----BEGIN ").count();
    if blocks == 0 {
        return Err(invalid(
            path,
            "holds no PEM block (expected -----BEGIN PUBLIC KEY-----)",
        ));
    }
    if blocks > 1 {
        return Err(invalid(
            path,
            format!("holds {blocks} PEM blocks; give one public key per file"),
        ));
    }
    let start = text.find("-----BEGIN ").unwrap_or(0) + "-----BEGIN ".len();
    let label = text[start..].split("-----").next().unwrap_or("");
    if label.contains("PRIVATE") {
        return Err(invalid(
            path,
            "holds a private key; give the public key (openssl pkey -pubout)",
        ));
    }
    let kind = match label {
        "RSA PUBLIC KEY" => Kind::Rsa,
        "PUBLIC KEY" => {
            let der = pem_body(text).ok_or_else(|| invalid(path, "the PEM body is not base64"))?;
            // The algorithm identifier comes first in a SubjectPublicKeyInfo.
            let head = &der[..der.len().min(32)];
            if contains(head, OID_RSA) {
                Kind::Rsa
            } else if contains(head, OID_EC) {
                if contains(head, OID_P256) {
                    Kind::P256
                } else if contains(head, OID_P384) {
                    Kind::P384
                } else {
                    return Err(invalid(
                        path,
                        "an EC key on an unsupported curve (P-256 and P-384 are supported)",
                    ));
                }
            } else if contains(head, OID_ED25519) {
                Kind::Ed25519
            } else {
                return Err(invalid(
                    path,
                    "an unsupported public key type (RSA, EC P-256/P-384 and Ed25519 are supported)",
                ));
            }
        }
        other => {
            let shown = if other.len() <= 40
                && other.bytes().all(|b| b.is_ascii_uppercase() || b == b' ')
            {
                other
            } else {
                "unknown"
            };
            return Err(invalid(
                path,
                format!("holds a {shown:?} PEM block, not a public key"),
            ));
        }
    };
    let key = match kind {
        Kind::Rsa => DecodingKey::from_rsa_pem(&bytes),
        Kind::P256 | Kind::P384 => DecodingKey::from_ec_pem(&bytes),
        Kind::Ed25519 => DecodingKey::from_ed_pem(&bytes),
    }
    .map_err(|_| invalid(path, "not a valid public key PEM"))?;
    check_key(&key, kind, provider).map_err(|reason| invalid(path, reason))?;
    Ok(PublicKey {
        kind,
        kid: None,
        alg: None,
        key,
    })
}

/// The DER bytes of the (single) PEM block in `text`.
fn pem_body(text: &str) -> Option<Vec<u8>> {
    let mut body = String::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN ") {
            inside = true;
        } else if line.starts_with("-----END ") {
            break;
        } else if inside && !line.contains(':') {
            body.push_str(line);
        }
    }
    STANDARD.decode(body).ok()
}

/// Checks that a key of `kind` can be used: an RSA key parses and has 2048 bits or more (RFC 7518
/// section 3.3); an EC or Ed25519 key is a valid point of the right size.
fn check_key(key: &DecodingKey, kind: Kind, provider: &CryptoProvider) -> Result<(), String> {
    let alg = match kind {
        Kind::Rsa => {
            let der = key
                .try_get_as_bytes()
                .map_err(|_| "not a valid RSA public key".to_string())?;
            let (n, _) = (provider.key_utils.rsa_pub_components_from_public_key)(der)
                .map_err(|_| "not a valid RSA public key".to_string())?;
            return check_rsa_modulus(&n);
        }
        Kind::P256 => Algorithm::ES256,
        Kind::P384 => Algorithm::ES384,
        Kind::Ed25519 => Algorithm::EdDSA,
    };
    let bytes = key
        .try_get_as_bytes()
        .map_err(|_| "not a valid public key".to_string())?;
    let size_ok = match kind {
        Kind::P256 => matches!(
            (bytes.len(), bytes.first()),
            (65, Some(4)) | (33, Some(2 | 3))
        ),
        Kind::P384 => matches!(
            (bytes.len(), bytes.first()),
            (97, Some(4)) | (49, Some(2 | 3))
        ),
        _ => bytes.len() == 32,
    };
    let name = match kind {
        Kind::P256 => "P-256",
        Kind::P384 => "P-384",
        _ => "Ed25519",
    };
    if !size_ok || (provider.verifier_factory)(&alg, key).is_err() {
        return Err(format!("not a valid {name} public key"));
    }
    Ok(())
}

fn check_rsa_modulus(n: &[u8]) -> Result<(), String> {
    let start = n.iter().position(|&b| b != 0).unwrap_or(n.len());
    let n = &n[start..];
    let bits = match n.first() {
        Some(first) => n.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    };
    if bits < 2048 {
        return Err(format!(
            "an RSA key of {bits} bits; at least 2048 are required"
        ));
    }
    Ok(())
}

/// The usable signing keys of a JWKS document.
fn read_jwks(path: &Path, provider: &CryptoProvider) -> Result<Vec<PublicKey>, KeyError> {
    let bytes = read(path)?;
    // serde_json's messages may quote the document, so only the position is reported.
    let doc: Value = serde_json::from_slice(&bytes).map_err(|e| {
        invalid(
            path,
            format!(
                "not JSON (error at line {} column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid(path, "not a JWKS document: no \"keys\" array"))?;
    let mut out = Vec::with_capacity(keys.len());
    for (i, jwk) in keys.iter().enumerate() {
        match jwk_key(jwk, provider) {
            Ok(Some(key)) => out.push(key),
            Ok(None) => {}
            Err(reason) => {
                let kid = match jwk.get("kid").and_then(Value::as_str) {
                    Some(kid) => format!(" (kid {kid:?})"),
                    None => String::new(),
                };
                return Err(invalid(path, format!("key {i}{kid}: {reason}")));
            }
        }
    }
    Ok(out)
}

/// One JWK as a verification key; None for a key this module does not use (`oct`, another key
/// type or curve, a key for encryption or for an algorithm not supported).
fn jwk_key(jwk: &Value, provider: &CryptoProvider) -> Result<Option<PublicKey>, String> {
    let obj = jwk.as_object().ok_or("not a JSON object")?;
    let text = |name: &str| -> Result<Option<&str>, String> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("\"{name}\" is not a string")),
        }
    };
    let kid = text("kid")?.map(str::to_owned);
    if text("use")?.is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    if let Some(ops) = obj.get("key_ops") {
        let ops = ops.as_array().ok_or("\"key_ops\" is not an array")?;
        if !ops.iter().any(|op| op.as_str() == Some("verify")) {
            return Ok(None);
        }
    }
    let alg = match text("alg")? {
        None => None,
        Some(name) => match algorithm(name) {
            Some(alg) => Some(alg),
            None => return Ok(None),
        },
    };
    let kty = text("kty")?.ok_or("no \"kty\"")?;
    let required = |name: &str| -> Result<&str, String> {
        text(name)?.ok_or_else(|| format!("no \"{name}\""))
    };
    let b64 = |name: &str| -> Result<Vec<u8>, String> {
        URL_SAFE_NO_PAD
            .decode(required(name)?)
            .map_err(|_| format!("\"{name}\" is not base64url"))
    };
    let (kind, key) = match kty {
        "RSA" => {
            let n = b64("n")?;
            if b64("e")?.is_empty() {
                return Err("\"e\" is empty".into());
            }
            check_rsa_modulus(&n)?;
            let key = DecodingKey::from_rsa_components(required("n")?, required("e")?)
                .map_err(|_| "not a valid RSA key")?;
            (Kind::Rsa, key)
        }
        "EC" => {
            let (kind, size) = match required("crv")? {
                "P-256" => (Kind::P256, 32),
                "P-384" => (Kind::P384, 48),
                _ => return Ok(None),
            };
            if b64("x")?.len() != size || b64("y")?.len() != size {
                return Err(format!("\"x\" and \"y\" must be {size} bytes each"));
            }
            let key = DecodingKey::from_ec_components(required("x")?, required("y")?)
                .map_err(|_| "not a valid EC key")?;
            (kind, key)
        }
        "OKP" => {
            if required("crv")? != "Ed25519" {
                return Ok(None);
            }
            if b64("x")?.len() != 32 {
                return Err("\"x\" must be 32 bytes".into());
            }
            let key = DecodingKey::from_ed_components(required("x")?)
                .map_err(|_| "not a valid Ed25519 key")?;
            (Kind::Ed25519, key)
        }
        // HMAC keys come only from the hs*_secret_file secrets.
        _ => return Ok(None),
    };
    if let Some(alg) = alg {
        if Kind::for_algorithm(alg) != Some(kind) {
            return Err(format!(
                "\"alg\" {} does not fit a key of this type",
                algorithm_name(alg)
            ));
        }
    }
    if kind != Kind::Rsa {
        check_key(&key, kind, provider)?;
    }
    Ok(Some(PublicKey {
        kind,
        kid,
        alg,
        key,
    }))
}
