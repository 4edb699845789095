//! Verifying a token: the header's algorithm and key id choose the keys, jsonwebtoken checks the
//! signature, and the time and identity claims are checked here against the `now` passed in.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::{Map, Value};

use super::keys::{Inner, PublicKey, Verifier};
use super::{algorithm, Identity, Rejection};

type Claims = Map<String, Value>;

/// What the header says, read before any key is chosen.
struct Head {
    alg: String,
    kid: Option<String>,
}

impl Verifier {
    /// Verifies `token` at time `now` (seconds since the epoch, passed in: the module never reads
    /// the clock) and returns who it is.
    ///
    /// The header's `alg` must be one of the configured algorithms (never `none`). An HMAC
    /// algorithm is checked with its own secret only. Other algorithms: with a `kid` and a JWKS
    /// configured, only the JWKS keys with that `kid` (UnknownKid when there is none, Algorithm
    /// when it is not a key for `alg`); otherwise every PEM and JWKS key of the algorithm's type,
    /// until one verifies. Then the claims: `exp` is required and the token is valid while
    /// `now < exp + leeway`; when there is an `nbf`, `nbf <= now + leeway`; `iss` must equal
    /// `issuer` and `aud` (a string, or an array) must hold `audience` when these are configured;
    /// the user is the `user_claim` claim (a non-empty string, or an integer).
    pub fn verify(&self, token: &str, now: u64) -> Result<Identity, Rejection> {
        let inner = &*self.inner;
        let head = parse_head(token)?;
        let alg = algorithm(&head.alg)
            .filter(|a| inner.allowed.contains(a))
            .ok_or(Rejection::Algorithm)?;
        let claims = verify_signature(inner, token, alg, head.kid.as_deref())?;
        check_claims(inner, &claims, now)
    }
}

/// The header's `alg` and `kid`; the token must have three dot-separated parts.
fn parse_head(token: &str) -> Result<Head, Rejection> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::Malformed);
    };
    let json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| Rejection::Malformed)?;
    let value: Value = serde_json::from_slice(&json).map_err(|_| Rejection::Malformed)?;
    let alg = match value.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        _ => return Err(Rejection::Malformed),
    };
    let kid = match value.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(Rejection::Malformed),
    };
    Ok(Head { alg, kid })
}

/// The claims of a token whose signature one of the keys for `alg` verifies. jsonwebtoken checks
/// the signature alone (`crypto::verify`): its `decode` would parse the header again and the claims
/// twice, which costs more than an HMAC; the claims are parsed once, here, after the signature.
fn verify_signature(
    inner: &Inner,
    token: &str,
    alg: Algorithm,
    kid: Option<&str>,
) -> Result<Claims, Rejection> {
    let (message, signature) = token.rsplit_once('.').ok_or(Rejection::Malformed)?;
    let (_, payload) = message.split_once('.').ok_or(Rejection::Malformed)?;
    let check = |key: &DecodingKey| match jsonwebtoken::crypto::verify(
        signature,
        message.as_bytes(),
        key,
        alg,
    ) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Rejection::Signature),
        Err(e) => Err(rejection(e.kind())),
    };
    if alg.family() == AlgorithmFamily::Hmac {
        let secret = inner.secret(alg).ok_or(Rejection::Algorithm)?;
        check(secret)?;
        return claims_of(payload);
    }
    let candidates: Vec<&PublicKey> = match (kid, &inner.jwks) {
        (Some(kid), Some(jwks)) => {
            let named: Vec<&PublicKey> = jwks
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect();
            if named.is_empty() {
                return Err(Rejection::UnknownKid);
            }
            let fitting: Vec<&PublicKey> = named.into_iter().filter(|k| k.fits(alg)).collect();
            if fitting.is_empty() {
                return Err(Rejection::Algorithm);
            }
            fitting
        }
        _ => inner
            .pem
            .iter()
            .chain(inner.jwks.iter().flatten())
            .filter(|k| k.fits(alg))
            .collect(),
    };
    for key in candidates {
        match check(&key.key) {
            Err(Rejection::Signature) => continue,
            Err(other) => return Err(other),
            Ok(()) => return claims_of(payload),
        }
    }
    Err(Rejection::Signature)
}

/// The claims of a verified token: its payload must be a JSON object.
fn claims_of(payload: &str) -> Result<Claims, Rejection> {
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| Rejection::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| Rejection::Malformed)
}

/// jsonwebtoken's error kinds as rejections. A key that cannot check the signature counts as a
/// signature that does not verify (the next key is tried).
fn rejection(kind: &ErrorKind) -> Rejection {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => Rejection::Signature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => Rejection::Algorithm,
        ErrorKind::ExpiredSignature => Rejection::Expired,
        ErrorKind::ImmatureSignature => Rejection::NotYetValid,
        ErrorKind::InvalidIssuer => Rejection::Issuer,
        ErrorKind::InvalidAudience => Rejection::Audience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => Rejection::NoExpiry,
        _ => Rejection::Malformed,
    }
}

/// A NumericDate claim in whole seconds: None when it is absent, Err when it is not a number.
/// `round_up` rounds a fraction up (for `nbf`) rather than down (for `exp`), so a fraction never
/// widens the window; a negative date is 0.
fn numeric_date(claims: &Claims, name: &str, round_up: bool) -> Result<Option<u64>, Rejection> {
    let number = match claims.get(name) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n,
        Some(_) => return Err(Rejection::Malformed),
    };
    if let Some(n) = number.as_u64() {
        return Ok(Some(n));
    }
    if number.as_i64().is_some() {
        return Ok(Some(0));
    }
    let f = number.as_f64().ok_or(Rejection::Malformed)?;
    let whole = if round_up { f.ceil() } else { f.floor() };
    // A float to integer cast saturates: negatives become 0, huge values u64::MAX.
    Ok(Some(whole as u64))
}

fn check_claims(inner: &Inner, claims: &Claims, now: u64) -> Result<Identity, Rejection> {
    let exp = numeric_date(claims, "exp", false)?.ok_or(Rejection::NoExpiry)?;
    if now >= exp.saturating_add(inner.leeway) {
        return Err(Rejection::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf", true)? {
        if nbf > now.saturating_add(inner.leeway) {
            return Err(Rejection::NotYetValid);
        }
    }
    if let Some(issuer) = &inner.issuer {
        if claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
            return Err(Rejection::Issuer);
        }
    }
    if let Some(audience) = &inner.audience {
        let ok = match claims.get("aud") {
            Some(Value::String(aud)) => aud == audience,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
        if !ok {
            return Err(Rejection::Audience);
        }
    }
    let user = match claims.get(&inner.user_claim) {
        Some(Value::String(user)) if !user.is_empty() => user.clone(),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
        _ => return Err(Rejection::NoUser),
    };
    let forwarded: Claims = inner
        .forward_claims
        .iter()
        .filter_map(|name| claims.get(name).map(|v| (name.clone(), v.clone())))
        .collect();
    let claims = serde_json::to_string(&forwarded).unwrap_or_else(|_| "{}".into());
    Ok(Identity { user, claims })
}
