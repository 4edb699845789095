//! Tests of the auth module: tokens minted here with jsonwebtoken's `encode`, keys written to a
//! temporary directory for `Verifier::load`, and `now` fixed so every run is the same.
//!
//! The key pairs below are test fixtures only (generated once with openssl: RSA 2048, EC P-256 and
//! P-384, Ed25519); `JWKS` holds the public halves of RSA2, P-256, P-384 and Ed25519.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;

const NOW: u64 = 1_700_000_000;

const HS256_SECRET: &str = "hs256 secret: thirty-two bytes or more";
const HS384_SECRET: &str = "hs384 secret: forty-eight bytes or more, and then some";
const HS512_SECRET: &str = "hs512 secret: sixty-four bytes or more, and then some more bytes..";

const RSA_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDpJKUcBWLacY/P\n\
wdaEK3qFT14aJQmJb+hEunTfjhfilBBYj4iyT4sGHxWW+jswKz63aNZHMrbEidWY\n\
oYEBbZHhu5aGkAUnsI9p342AUn/69dlU6E2LVL+JoQNCvOsI9gzoJAIFRZCI2L7i\n\
yL8F1sZnllPDd7+TXbtPvnDJgZtguyBbKxeYPfVLxHTp5hQOOuC9+83hTy0lNesO\n\
wrlq4kFfRXYMmZ+Zo/uUXLCgkwmAIBVu8YpqfCzclsiD0YdF4VufAJrEfK7QtyJT\n\
u5H7TKvR10QNpUZH5QgV7ZYos55boRvgJ6tKk+PnNt5+lcXxUk79QRXMf0ZHnBK6\n\
2k/3wEiVAgMBAAECggEABLG0AuoZj/gIvDKZrYDMLQya3gut7pW6oIUOs5KZTXGd\n\
9MeqxWQI0rvoarJSmrAAN02DiYpgnHkTjpH9mxFKYcFAHqj5d+HuXUj1rpP/O+I3\n\
1EESIult8/tW6ZMesRE/eDU6P+baDq2YhgcQWUPtK/Owyv3pbARYlNFYsF1kFCw5\n\
8YL8iz92PL7E1ryfSGBsUO1rmHw0cRNEk5I0g0ZiohKxXH7NO+f5cBKJjMZWq1LT\n\
xrek5l7mh8C49xP/MzjxD2CKB46qHb8obIr6eXd3xzqqcD8bXXiB69Rhz+YwFVLQ\n\
ktv8dObVhPm3d7dfK/xLoYHTfg7H1/LB+Aor0dI1GQKBgQD8rNO1EeOHUrqCNqY9\n\
SPkndhKeh6/k0TBFrQMEbfMDBhzl8kC4UOdAHy/rhXHQL9dFqlOvuP+OclSlSlKc\n\
OZTb5CWj7rzteLm5GIYUQEhtBqItWr9zOrfiWTsRSCb2ZjX7YAYZKpsJH5BYonVJ\n\
OkZxLXZnbG5BhJ96a5wDpyjXaQKBgQDsNgWO68M+vYMP0i4sbNUcgpnPggO1o4SB\n\
J4iUJGoBgBV1foqYHczizfH0eS7Jne4CsXzX4l3vsf/CMK7G8qJ1dHd77uXSxCT7\n\
s+aPsZ5PIqV6BSCdYukuvBA7XOwVYjpf8R8+Z5ZwUgzGpMonmeAWlVdmLa6wksis\n\
IztcHvnOTQKBgEMTxmgNRa/JAIZM57jhRHN7XtoC/2jpN71nfqOQZLDq0IUi2JeV\n\
sq5NGTWXCW3RJX7zBqBhpkY0h9ARePjMOH5fhLaOTE1mfTdsETwTDKcU2bzcmHKI\n\
pgRK1+lwlBdZbv86sKPBscKsRG+jQSudctHc1dAC8woloQioxJQbrjXxAoGBAIbF\n\
9/vo9xjIJoyTXrcITbwbpEjqpNUxfDv444urDzTV8Oh+D/PlJO7PlNrpfdGZo6Cz\n\
xkijJvfJduVEw6RN8nXTwwzabRUJxxQ6PDYGoQ4D9aieXlKOif+ZXCWSyj0VM7tk\n\
J3CCyCpEFngMtC9OM7aO9TQeooqq5YaZ/5d7MQsNAoGAOdrzjGYyzrp97UVGn7B7\n\
L6TkT8JrGIyqYh+NMwjLBj0eUsIdLyPsbWywb8vy5bS+Yw5OqQvVkrwTA71n2JFq\n\
zrlc9EzhimK+8c0jAVj+7ceegqBIj5Tu/rh1p3cR0i7qVfdIhuCzpHsTGxwKFsnu\n\
hb6NO/pn+aZad0Y34BQ9pkM=\n\
-----END PRIVATE KEY-----\n\
";

const RSA_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA6SSlHAVi2nGPz8HWhCt6\n\
hU9eGiUJiW/oRLp0344X4pQQWI+Isk+LBh8Vlvo7MCs+t2jWRzK2xInVmKGBAW2R\n\
4buWhpAFJ7CPad+NgFJ/+vXZVOhNi1S/iaEDQrzrCPYM6CQCBUWQiNi+4si/BdbG\n\
Z5ZTw3e/k127T75wyYGbYLsgWysXmD31S8R06eYUDjrgvfvN4U8tJTXrDsK5auJB\n\
X0V2DJmfmaP7lFywoJMJgCAVbvGKanws3JbIg9GHReFbnwCaxHyu0LciU7uR+0yr\n\
0ddEDaVGR+UIFe2WKLOeW6Eb4CerSpPj5zbefpXF8VJO/UEVzH9GR5wSutpP98BI\n\
lQIDAQAB\n\
-----END PUBLIC KEY-----\n\
";

const RSA2_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQC3dLfdcUDIwCgY\n\
kXsTAIxzl4xMtpf4Rzgu4ChGpSNtJz3h0xDab0UUMbhkxqDWMuwp2olVQ6y9gQBS\n\
T2IKHiwTuiSmjJnrq/9X0DS2iw50poTpDHdB0Jz6thNuhfkvfYy7z0HXdXRANpTm\n\
7JyLj4CDQEMfZ7uxwnjI7eqqew4SRpzDFwTy3DcBOiqiDPz5jf/yAivEAFyapIr/\n\
b7BH8FwtBAFu/LNiV2f77T1WHPqE8b6Ow+N4bAEUNmdkGB+NEVSvfwTUAnScP6dY\n\
13Pjqm+Yz7/u6DFWtxnwR4VJp3tLPgvCRPRErlCUIMDfGU5cC4XPkxdSn1VWmPGc\n\
6vOquavnAgMBAAECggEAMKiKDfd4deaVm/KWQLOADTawdTZm92i4a6JzvE0XqN9k\n\
J+3qBe3GVjVb0YrnZPjLr8wxacaR3g+FrM82UzWufir8hpo7RwlvJ/TmzlXypxj1\n\
nrR6OyAgStUZMVLihWiY98Vgksup4lA3zUoLuW596RIV25IRc/P/QlfsSnxp/ol9\n\
L11A9kiWqV/FDpqoWwlGMHQOMdznWnid5WbW5Su8wn5NLRXgOPNRYhRCMK/THjZP\n\
niJrwW9L5Zz3JH+AJeouW4w/f27GMa0+xqxASQIQIeq5qhQV1Cth4H5c44xHb12U\n\
uebIeAmCANXlOdFa6GVVJTiYXNap1HecyBVtGWSnCQKBgQD1++PlNlotUyUWbaGz\n\
dUOlcUaSkd99+0tYkdmseZlTmBPU/IbVkV+r/+dw4U3AKIJBmWEygEuAsPRve+3M\n\
f4Jx0J4M2Hy6uFdtWd7fYPzmylpJeOU7v+GfPboVumV+2u1rHOWBM2MU7xMZo6CJ\n\
ZPVY7lfV34GsB+Zo9fYFKeIp2QKBgQC+7Qr1F6uQC+eUV8TpZSl8YyvTqj57vJ6j\n\
jocg3tj1zQbb2GzZRoHG9x3HQh/uEKCA68hbRbXernzQxs43feTzD2HRiotGyd6w\n\
82q7tgyqEZiWJmYMCZZOIGxSpMAAdu1mYmoR5B4k7/OIgBX1poQ7pK7wR8Af8yrH\n\
oZmrl30rvwKBgCzj4xsZaCuNWN9W8oOFiurOWUq2REsBaSaot0i6iDixMC1WSGUB\n\
Oqxw7xOyijXfLqY6D3rf3ueFY5ZUz3jabDvJDo7ZkymgKpRSKlIpqP2VQBTYcz0M\n\
L2iYIzWD5rHX0iwSAfAqKJLRbnLnYYyxV/T6yhzFxSxX5LyS5mra0eNBAoGAUrpJ\n\
biukdhUCch+ZvfvMfw5FlkCFNH5lSr9eQ9rrrY36M9ZSS88mOn0nFQjM5w2jTllc\n\
BlhtVqDKingqMJdHVh5LJ01dzf14lbnTfKSEVkirkhvvSbX5v76C0Uh7vXfKo/tu\n\
tHPgr+ac4n+FhFxznZhdCNY+JFnsJnYaLOTGIucCgYA+kSnm8HylO47FsDIPB3TQ\n\
v+2qXDiIZk/TVFkoHhZ2b5vUQX6cwolNvIKCMH0eLuhHFYRJEUzh2pwy/rK2sPer\n\
A/cKGKYB7+FbiMfptlQE39CS208qazMrRyrXmJEthEJuhFQmXa4+OnEMa4GFo6aK\n\
MsoVipYFG85IPZrPL5FQqA==\n\
-----END PRIVATE KEY-----\n\
";

const RSA2_PUBLIC_PKCS1: &str = "\
-----BEGIN RSA PUBLIC KEY-----\n\
MIIBCgKCAQEAt3S33XFAyMAoGJF7EwCMc5eMTLaX+Ec4LuAoRqUjbSc94dMQ2m9F\n\
FDG4ZMag1jLsKdqJVUOsvYEAUk9iCh4sE7okpoyZ66v/V9A0tosOdKaE6Qx3QdCc\n\
+rYTboX5L32Mu89B13V0QDaU5uyci4+Ag0BDH2e7scJ4yO3qqnsOEkacwxcE8tw3\n\
AToqogz8+Y3/8gIrxABcmqSK/2+wR/BcLQQBbvyzYldn++09Vhz6hPG+jsPjeGwB\n\
FDZnZBgfjRFUr38E1AJ0nD+nWNdz46pvmM+/7ugxVrcZ8EeFSad7Sz4LwkT0RK5Q\n\
lCDA3xlOXAuFz5MXUp9VVpjxnOrzqrmr5wIDAQAB\n\
-----END RSA PUBLIC KEY-----\n\
";

const P256_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgwUsq0MHNw+bxYtMJ\n\
knxEvheJUJh38XweQMxZJSjNLAOhRANCAASmn9CqDJDO8p6UP8LgVVnyNpVl0+yt\n\
sPmDkAb/4ET2lOKOYQIMb9fI3zLrxxRNp1JigD0FUt6LLTmxoaQ44Umw\n\
-----END PRIVATE KEY-----\n\
";

const P256_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEpp/QqgyQzvKelD/C4FVZ8jaVZdPs\n\
rbD5g5AG/+BE9pTijmECDG/XyN8y68cUTadSYoA9BVLeiy05saGkOOFJsA==\n\
-----END PUBLIC KEY-----\n\
";

const P384_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDDskxgSVMXChohENl9n\n\
8muHBQRJwoIYYysmY4n9P8NgODoQsZ60RbYeTFTnnK8V6BuhZANiAATa+mkrrNRd\n\
78tOIo7BsChY6veP//QIYrXWhRPnvVMisLxx4giPp/9aGgCN5FJUSNjNAXHJwc+1\n\
BAvmzPyQW9nCLun5ggDhbHNpKTJqTpM41JiSzgaTFXxxaXc6z2eAuhQ=\n\
-----END PRIVATE KEY-----\n\
";

const P384_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAE2vppK6zUXe/LTiKOwbAoWOr3j//0CGK1\n\
1oUT571TIrC8ceIIj6f/WhoAjeRSVEjYzQFxycHPtQQL5sz8kFvZwi7p+YIA4Wxz\n\
aSkyak6TONSYks4GkxV8cWl3Os9ngLoU\n\
-----END PUBLIC KEY-----\n\
";

const ED25519_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEIOQW7LXqACGI3h80oOjGOWWHJjTdH7gV+1USRblBG3F4\n\
-----END PRIVATE KEY-----\n\
";

const ED25519_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MCowBQYDK2VwAyEASK/WoGTqDvGTzVB9M7gyBBoz9b8aFFzInb5dIHEX0Iw=\n\
-----END PUBLIC KEY-----\n\
";

/// The public halves of RSA2, P-256, P-384 and Ed25519 with kids, plus keys that must be skipped:
/// an `oct` (HMAC) key, a key for encryption.
const JWKS: &str = r#"{"keys": [
 {"kty": "RSA", "kid": "rsa-2", "use": "sig", "alg": "RS256", "e": "AQAB",
  "n": "t3S33XFAyMAoGJF7EwCMc5eMTLaX-Ec4LuAoRqUjbSc94dMQ2m9FFDG4ZMag1jLsKdqJVUOsvYEAUk9iCh4sE7okpoyZ66v_V9A0tosOdKaE6Qx3QdCc-rYTboX5L32Mu89B13V0QDaU5uyci4-Ag0BDH2e7scJ4yO3qqnsOEkacwxcE8tw3AToqogz8-Y3_8gIrxABcmqSK_2-wR_BcLQQBbvyzYldn--09Vhz6hPG-jsPjeGwBFDZnZBgfjRFUr38E1AJ0nD-nWNdz46pvmM-_7ugxVrcZ8EeFSad7Sz4LwkT0RK5QlCDA3xlOXAuFz5MXUp9VVpjxnOrzqrmr5w"},
 {"kty": "RSA", "kid": "rsa-2-any", "e": "AQAB",
  "n": "t3S33XFAyMAoGJF7EwCMc5eMTLaX-Ec4LuAoRqUjbSc94dMQ2m9FFDG4ZMag1jLsKdqJVUOsvYEAUk9iCh4sE7okpoyZ66v_V9A0tosOdKaE6Qx3QdCc-rYTboX5L32Mu89B13V0QDaU5uyci4-Ag0BDH2e7scJ4yO3qqnsOEkacwxcE8tw3AToqogz8-Y3_8gIrxABcmqSK_2-wR_BcLQQBbvyzYldn--09Vhz6hPG-jsPjeGwBFDZnZBgfjRFUr38E1AJ0nD-nWNdz46pvmM-_7ugxVrcZ8EeFSad7Sz4LwkT0RK5QlCDA3xlOXAuFz5MXUp9VVpjxnOrzqrmr5w"},
 {"kty": "EC", "kid": "ec-256", "crv": "P-256",
  "x": "pp_QqgyQzvKelD_C4FVZ8jaVZdPsrbD5g5AG_-BE9pQ", "y": "4o5hAgxv18jfMuvHFE2nUmKAPQVS3ostObGhpDjhSbA"},
 {"kty": "EC", "kid": "ec-384", "crv": "P-384",
  "x": "2vppK6zUXe_LTiKOwbAoWOr3j__0CGK11oUT571TIrC8ceIIj6f_WhoAjeRSVEjY",
  "y": "zQFxycHPtQQL5sz8kFvZwi7p-YIA4WxzaSkyak6TONSYks4GkxV8cWl3Os9ngLoU"},
 {"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "x": "SK_WoGTqDvGTzVB9M7gyBBoz9b8aFFzInb5dIHEX0Iw"},
 {"kty": "oct", "kid": "hmac-1", "k": "andrcy1vY3Qtc2VjcmV0LXRoYXQtbXVzdC1iZS1pZ25vcmVk"},
 {"kty": "RSA", "kid": "rsa-enc", "use": "enc", "e": "AQAB",
  "n": "t3S33XFAyMAoGJF7EwCMc5eMTLaX-Ec4LuAoRqUjbSc94dMQ2m9FFDG4ZMag1jLsKdqJVUOsvYEAUk9iCh4sE7okpoyZ66v_V9A0tosOdKaE6Qx3QdCc-rYTboX5L32Mu89B13V0QDaU5uyci4-Ag0BDH2e7scJ4yO3qqnsOEkacwxcE8tw3AToqogz8-Y3_8gIrxABcmqSK_2-wR_BcLQQBbvyzYldn--09Vhz6hPG-jsPjeGwBFDZnZBgfjRFUr38E1AJ0nD-nWNdz46pvmM-_7ugxVrcZ8EeFSad7Sz4LwkT0RK5QlCDA3xlOXAuFz5MXUp9VVpjxnOrzqrmr5w"},
 {"kty": "EC", "kid": "ec-521", "crv": "P-521", "x": "AA", "y": "AA"}
]}"#;

/// The secret of the JWKS `oct` key, which must never verify anything.
const JWKS_OCT_SECRET: &str = "jwks-oct-secret-that-must-be-ignored";

/// An RSA public key too small to use (1024 bits).
const RSA_1024_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDFmGxcTu5MYEPgVH32x2r8wzl4\n\
dt04WYtisp9yC/D1KRYoSAjqR/r0UrUf4/VmBhlgFOyqD8BGBAG1XsWHYcMed5Sa\n\
KNcWIdABijFHIeMntP3kEHmcSLSIpCHknTyPacPB57keLZqkIgw7LbuZ8Q84H9FR\n\
2prcCgj+mBw3dDCMjQIDAQAB\n\
-----END PUBLIC KEY-----\n";

/// An EC public key on secp256k1, a curve not supported.
const SECP256K1_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MFYwEAYHKoZIzj0CAQYFK4EEAAoDQgAERRjA9bWVmqsjpYoBdp8V9JIbThbw9ZjV\n\
Qpj9p9C4mQqyMkjT0ESvfKXMHa7qr/0yjqqJOQq3BVsuaHvvitAnrg==\n\
-----END PUBLIC KEY-----\n";

// ---- helpers ----

/// A directory of key files, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "ringgate-auth-test-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write key file");
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const ALL: [Algorithm; 10] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

fn name(alg: Algorithm) -> String {
    format!("{alg:?}")
}

/// The private key that signs `alg` in these tests.
fn signing_key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::HS256 => secret_key(HS256_SECRET.as_bytes()),
        Algorithm::HS384 => secret_key(HS384_SECRET.as_bytes()),
        Algorithm::HS512 => secret_key(HS512_SECRET.as_bytes()),
        Algorithm::ES256 => EncodingKey::from_ec_pem(P256_PRIVATE.as_bytes()).unwrap(),
        Algorithm::ES384 => EncodingKey::from_ec_pem(P384_PRIVATE.as_bytes()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap(),
        _ => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    }
}

fn mint_with(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).expect("encode")
}

fn mint(alg: Algorithm, claims: &Value) -> String {
    mint_with(alg, &signing_key(alg), None, claims)
}

fn claims() -> Value {
    json!({"sub": "alice", "exp": NOW + 600, "iat": NOW})
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A jwt-mode config allowing `algorithms`, with every kind of key written to `dir`: the three
/// secrets (the HS256 one with a trailing newline), PEM files for RSA, P-256, P-384 and Ed25519,
/// and the JWKS.
fn config(dir: &TempDir, algorithms: &[Algorithm]) -> AuthConfig {
    AuthConfig {
        mode: Mode::Jwt,
        algorithms: algorithms.iter().map(|a| name(*a)).collect(),
        hs256_secret_file: Some(dir.file("hs256", format!("{HS256_SECRET}\n"))),
        hs384_secret_file: Some(dir.file("hs384", HS384_SECRET)),
        hs512_secret_file: Some(dir.file("hs512", HS512_SECRET)),
        public_key_files: vec![
            dir.file("rsa.pem", RSA_PUBLIC),
            dir.file("p256.pem", P256_PUBLIC),
            dir.file("p384.pem", P384_PUBLIC),
            dir.file("ed25519.pem", ED25519_PUBLIC),
        ],
        jwks_file: Some(dir.file("jwks.json", JWKS)),
        ..AuthConfig::default()
    }
}

fn verifier(cfg: &AuthConfig) -> Verifier {
    Verifier::load(cfg).unwrap_or_else(|e| panic!("load: {e}"))
}

/// A verifier of every algorithm with every key.
fn full() -> (TempDir, Verifier) {
    let dir = TempDir::new("full");
    let v = verifier(&config(&dir, &ALL));
    (dir, v)
}

fn headers(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn assert_hidden(token: &str, shown: &str) {
    let signature = token.rsplit('.').next().unwrap_or(token);
    assert!(
        !shown.contains(token) && (signature.len() < 8 || !shown.contains(signature)),
        "{shown:?} shows the token"
    );
}

// ---- every algorithm ----

#[test]
fn every_algorithm_verifies_with_pem_keys_and_secrets() {
    let (_dir, v) = full();
    for alg in ALL {
        let token = mint(alg, &claims());
        let id = v
            .verify(&token, NOW)
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(id.user, "alice", "{alg:?}");
        assert_eq!(id.claims, "{}", "{alg:?}");
    }
}

#[test]
fn jwks_keys_verify_by_kid_and_without_one() {
    let dir = TempDir::new("jwks-only");
    let cfg = AuthConfig {
        mode: Mode::Jwt,
        algorithms: vec![
            "RS256".into(),
            "ES256".into(),
            "ES384".into(),
            "EdDSA".into(),
        ],
        jwks_file: Some(dir.file("jwks.json", JWKS)),
        ..AuthConfig::default()
    };
    let v = verifier(&cfg);
    let rsa2 = EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).unwrap();
    let cases = [
        (Algorithm::RS256, rsa2.clone(), "rsa-2"),
        (Algorithm::RS256, rsa2.clone(), "rsa-2-any"),
        (Algorithm::ES256, signing_key(Algorithm::ES256), "ec-256"),
        (Algorithm::ES384, signing_key(Algorithm::ES384), "ec-384"),
        (Algorithm::EdDSA, signing_key(Algorithm::EdDSA), "ed-1"),
    ];
    for (alg, key, kid) in cases {
        let with_kid = mint_with(alg, &key, Some(kid), &claims());
        assert_eq!(
            v.verify(&with_kid, NOW).map(|i| i.user),
            Ok("alice".into()),
            "{kid}"
        );
        let without = mint_with(alg, &key, None, &claims());
        assert_eq!(
            v.verify(&without, NOW).map(|i| i.user),
            Ok("alice".into()),
            "{kid} (no kid)"
        );
    }
}

#[test]
fn a_kid_selects_only_that_jwks_key() {
    let (_dir, v) = full();
    let rsa = signing_key(Algorithm::RS256);
    let rsa2 = EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).unwrap();
    // Signed by the PEM file's key but naming the JWKS key rsa-2: the PEM key is not tried.
    let t = mint_with(Algorithm::RS256, &rsa, Some("rsa-2"), &claims());
    assert_eq!(v.verify(&t, NOW), Err(Rejection::Signature));
    // Without the kid the same token verifies with the PEM key.
    let t = mint_with(Algorithm::RS256, &rsa, None, &claims());
    assert!(v.verify(&t, NOW).is_ok());
    // An unknown kid, and kids of keys that are skipped (encryption, HMAC).
    for kid in ["nope", "rsa-enc", "hmac-1", "ec-521"] {
        let t = mint_with(Algorithm::RS256, &rsa2, Some(kid), &claims());
        assert_eq!(v.verify(&t, NOW), Err(Rejection::UnknownKid), "{kid}");
    }
    // A kid whose key is for another algorithm.
    let t = mint_with(Algorithm::RS256, &rsa2, Some("ec-256"), &claims());
    assert_eq!(v.verify(&t, NOW), Err(Rejection::Algorithm));
    // rsa-2 is restricted to RS256 by its "alg"; rsa-2-any is not.
    let t = mint_with(Algorithm::RS384, &rsa2, Some("rsa-2"), &claims());
    assert_eq!(v.verify(&t, NOW), Err(Rejection::Algorithm));
    let t = mint_with(Algorithm::RS384, &rsa2, Some("rsa-2-any"), &claims());
    assert!(v.verify(&t, NOW).is_ok());
    let t = mint_with(Algorithm::PS256, &rsa2, Some("rsa-2-any"), &claims());
    assert!(v.verify(&t, NOW).is_ok());
}

#[test]
fn without_a_jwks_a_kid_is_ignored_and_every_pem_key_is_tried() {
    let dir = TempDir::new("pem-only");
    let cfg = AuthConfig {
        mode: Mode::Jwt,
        algorithms: vec!["RS256".into()],
        public_key_files: vec![
            dir.file("rsa.pem", RSA_PUBLIC),
            dir.file("rsa2.pem", RSA2_PUBLIC_PKCS1),
        ],
        ..AuthConfig::default()
    };
    let v = verifier(&cfg);
    let rsa2 = EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).unwrap();
    for kid in [None, Some("anything")] {
        let t = mint_with(Algorithm::RS256, &rsa2, kid, &claims());
        assert_eq!(v.verify(&t, NOW).map(|i| i.user), Ok("alice".into()));
        let t = mint(Algorithm::RS256, &claims());
        assert!(v.verify(&t, NOW).is_ok());
    }
}

// ---- each failure ----

#[test]
fn malformed_tokens() {
    let (_dir, v) = full();
    let good = mint(Algorithm::HS256, &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let hs = b64(r#"{"alg":"HS256","typ":"JWT"}"#);
    let cases = [
        String::new(),
        "abc".into(),
        "a.b".into(),
        format!("{good}.extra"),
        format!("!!!.{}.{}", parts[1], parts[2]),
        format!("{}.{}.{}", b64("not json"), parts[1], parts[2]),
        format!("{}.{}.{}", b64("[1,2]"), parts[1], parts[2]),
        format!("{}.{}.{}", b64(r#"{"typ":"JWT"}"#), parts[1], parts[2]),
        format!("{}.{}.{}", b64(r#"{"alg":256}"#), parts[1], parts[2]),
        format!(
            "{}.{}.{}",
            b64(r#"{"alg":"HS256","kid":7}"#),
            parts[1],
            parts[2]
        ),
        format!("{hs}.{}.not*base64", parts[1]),
    ];
    for token in &cases {
        assert_eq!(v.verify(token, NOW), Err(Rejection::Malformed), "{token:?}");
    }
}

#[test]
fn a_correctly_signed_payload_that_is_not_a_claims_object_is_malformed() {
    let (_dir, v) = full();
    let key = signing_key(Algorithm::HS256);
    for payload in ["not json", "[1,2,3]", "\"sub\""] {
        let message = format!("{}.{}", b64(r#"{"alg":"HS256"}"#), b64(payload));
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
        let token = format!("{message}.{sig}");
        assert_eq!(
            v.verify(&token, NOW),
            Err(Rejection::Malformed),
            "{payload}"
        );
    }
}

#[test]
fn algorithms_not_configured_are_refused() {
    let dir = TempDir::new("some-algs");
    let v = verifier(&config(&dir, &[Algorithm::HS256, Algorithm::ES256]));
    for alg in ALL {
        let token = mint(alg, &claims());
        let want = if matches!(alg, Algorithm::HS256 | Algorithm::ES256) {
            Ok("alice".to_string())
        } else {
            Err(Rejection::Algorithm)
        };
        assert_eq!(v.verify(&token, NOW).map(|i| i.user), want, "{alg:?}");
    }
    // Names the module does not support, or spelled in another case.
    let payload = b64(claims().to_string());
    for alg in ["hs256", "PS512", "ES512", "HS1", ""] {
        let token = format!("{}.{payload}.c2ln", b64(json!({ "alg": alg }).to_string()));
        assert_eq!(v.verify(&token, NOW), Err(Rejection::Algorithm), "{alg}");
    }
}

#[test]
fn unsigned_tokens_are_refused() {
    let (_dir, v) = full();
    let payload = b64(claims().to_string());
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = b64(json!({ "alg": alg, "typ": "JWT" }).to_string());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}.c2ln"),
        ] {
            assert_eq!(v.verify(&token, NOW), Err(Rejection::Algorithm), "{token}");
        }
    }
}

#[test]
fn a_tampered_payload_has_a_bad_signature() {
    let (_dir, v) = full();
    let forged = b64(json!({"sub": "mallory", "exp": NOW + 600}).to_string());
    for alg in ALL {
        let token = mint(alg, &claims());
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(
            v.verify(&tampered, NOW),
            Err(Rejection::Signature),
            "{alg:?}"
        );
    }
    // Signed by a key the verifier does not know.
    let other = secret_key(b"another secret entirely");
    let token = mint_with(Algorithm::HS256, &other, None, &claims());
    assert_eq!(v.verify(&token, NOW), Err(Rejection::Signature));
}

#[test]
fn expiry_with_and_beyond_the_leeway() {
    let (_dir, v) = full();
    let at = |exp: Value| mint(Algorithm::HS256, &json!({"sub": "alice", "exp": exp}));
    assert!(v.verify(&at(json!(NOW + 1)), NOW).is_ok());
    assert!(
        v.verify(&at(json!(NOW - 10)), NOW).is_ok(),
        "within the 30 s leeway"
    );
    assert!(
        v.verify(&at(json!(NOW - 29)), NOW).is_ok(),
        "within the 30 s leeway"
    );
    assert_eq!(v.verify(&at(json!(NOW - 30)), NOW), Err(Rejection::Expired));
    assert_eq!(
        v.verify(&at(json!(NOW - 3600)), NOW),
        Err(Rejection::Expired)
    );
    assert_eq!(v.verify(&at(json!(-5)), NOW), Err(Rejection::Expired));
    assert!(v.verify(&at(json!((NOW + 5) as f64 + 0.5)), NOW).is_ok());
    assert_eq!(
        v.verify(&at(json!("tomorrow")), NOW),
        Err(Rejection::Malformed)
    );
    let no_exp = mint(Algorithm::HS256, &json!({"sub": "alice"}));
    assert_eq!(v.verify(&no_exp, NOW), Err(Rejection::NoExpiry));
    let null_exp = mint(Algorithm::HS256, &json!({"sub": "alice", "exp": null}));
    assert_eq!(v.verify(&null_exp, NOW), Err(Rejection::NoExpiry));

    let dir = TempDir::new("no-leeway");
    let cfg = AuthConfig {
        leeway: Duration::ZERO,
        ..config(&dir, &[Algorithm::HS256])
    };
    let strict = verifier(&cfg);
    assert_eq!(strict.verify(&at(json!(NOW)), NOW), Err(Rejection::Expired));
    assert!(strict.verify(&at(json!(NOW + 1)), NOW).is_ok());
    assert_eq!(
        strict.verify(&at(json!(NOW - 10)), NOW),
        Err(Rejection::Expired)
    );
}

#[test]
fn not_before_with_the_leeway() {
    let (_dir, v) = full();
    let nbf = |nbf: u64| {
        mint(
            Algorithm::ES256,
            &json!({"sub": "a", "exp": NOW + 600, "nbf": nbf}),
        )
    };
    assert!(v.verify(&nbf(NOW - 100), NOW).is_ok());
    assert!(v.verify(&nbf(NOW + 10), NOW).is_ok(), "within the leeway");
    assert!(v.verify(&nbf(NOW + 30), NOW).is_ok(), "within the leeway");
    assert_eq!(v.verify(&nbf(NOW + 31), NOW), Err(Rejection::NotYetValid));
    assert_eq!(v.verify(&nbf(NOW + 3600), NOW), Err(Rejection::NotYetValid));
    let bad = mint(
        Algorithm::ES256,
        &json!({"sub": "a", "exp": NOW + 600, "nbf": "now"}),
    );
    assert_eq!(v.verify(&bad, NOW), Err(Rejection::Malformed));
}

#[test]
fn issuer_is_checked_only_when_configured() {
    let dir = TempDir::new("iss");
    let open = verifier(&config(&dir, &[Algorithm::HS256]));
    let cfg = AuthConfig {
        issuer: Some("https://login.example".into()),
        ..config(&dir, &[Algorithm::HS256])
    };
    let checked = verifier(&cfg);
    let with = |iss: Value| {
        mint(
            Algorithm::HS256,
            &json!({"sub": "a", "exp": NOW + 60, "iss": iss}),
        )
    };
    let right = with(json!("https://login.example"));
    let wrong = with(json!("https://evil.example"));
    let array = with(json!(["https://login.example"]));
    let none = mint(Algorithm::HS256, &claims());
    assert!(checked.verify(&right, NOW).is_ok());
    for t in [&wrong, &array, &none] {
        assert_eq!(checked.verify(t, NOW), Err(Rejection::Issuer));
    }
    for t in [&right, &wrong, &none] {
        assert!(open.verify(t, NOW).is_ok());
    }
}

#[test]
fn audience_string_or_array_is_checked_only_when_configured() {
    let dir = TempDir::new("aud");
    let open = verifier(&config(&dir, &[Algorithm::HS256]));
    let cfg = AuthConfig {
        audience: Some("game".into()),
        ..config(&dir, &[Algorithm::HS256])
    };
    let checked = verifier(&cfg);
    let with = |aud: Value| {
        mint(
            Algorithm::HS256,
            &json!({"sub": "a", "exp": NOW + 60, "aud": aud}),
        )
    };
    for ok in [json!("game"), json!(["web", "game"]), json!(["game"])] {
        assert!(checked.verify(&with(ok.clone()), NOW).is_ok(), "{ok}");
        assert!(open.verify(&with(ok.clone()), NOW).is_ok(), "{ok}");
    }
    for bad in [
        json!("web"),
        json!(["web", "chat"]),
        json!([]),
        json!("gam"),
        json!(7),
    ] {
        assert_eq!(
            checked.verify(&with(bad.clone()), NOW),
            Err(Rejection::Audience),
            "{bad}"
        );
        assert!(open.verify(&with(bad.clone()), NOW).is_ok(), "{bad}");
    }
    let none = mint(Algorithm::HS256, &claims());
    assert_eq!(checked.verify(&none, NOW), Err(Rejection::Audience));
}

#[test]
fn the_user_comes_from_the_user_claim() {
    let (_dir, v) = full();
    let user = |sub: Value| {
        let token = mint(Algorithm::EdDSA, &json!({"sub": sub, "exp": NOW + 60}));
        v.verify(&token, NOW).map(|i| i.user)
    };
    assert_eq!(user(json!("bob")), Ok("bob".into()));
    assert_eq!(user(json!(42)), Ok("42".into()));
    assert_eq!(user(json!(-7)), Ok("-7".into()));
    assert_eq!(
        user(json!(18446744073709551615u64)),
        Ok("18446744073709551615".into())
    );
    for bad in [
        json!(""),
        json!(1.5),
        json!(true),
        json!(null),
        json!(["a"]),
        json!({"id": 1}),
    ] {
        assert_eq!(user(bad.clone()), Err(Rejection::NoUser), "{bad}");
    }
    let no_sub = mint(Algorithm::EdDSA, &json!({"exp": NOW + 60}));
    assert_eq!(v.verify(&no_sub, NOW), Err(Rejection::NoUser));

    let dir = TempDir::new("uid");
    let cfg = AuthConfig {
        user_claim: "uid".into(),
        ..config(&dir, &[Algorithm::HS256])
    };
    let v = verifier(&cfg);
    let token = mint(
        Algorithm::HS256,
        &json!({"sub": "x", "uid": 9001, "exp": NOW + 60}),
    );
    assert_eq!(v.verify(&token, NOW).map(|i| i.user), Ok("9001".into()));
    let token = mint(Algorithm::HS256, &claims());
    assert_eq!(v.verify(&token, NOW), Err(Rejection::NoUser));
}

#[test]
fn forwarded_claims_are_exactly_the_configured_ones_present() {
    let dir = TempDir::new("forward");
    let cfg = AuthConfig {
        forward_claims: vec!["role".into(), "team".into(), "absent".into(), "sub".into()],
        ..config(&dir, &[Algorithm::RS256])
    };
    let v = verifier(&cfg);
    let token = mint(
        Algorithm::RS256,
        &json!({
            "sub": "alice", "exp": NOW + 60, "role": "admin",
            "team": {"id": 3, "tags": ["a", "b"]}, "secret_stuff": "no",
        }),
    );
    let id = v.verify(&token, NOW).unwrap();
    let forwarded: Value = serde_json::from_str(&id.claims).unwrap();
    assert_eq!(
        forwarded,
        json!({"role": "admin", "team": {"id": 3, "tags": ["a", "b"]}, "sub": "alice"})
    );
    let plain = mint(Algorithm::RS256, &json!({"sub": "bob", "exp": NOW + 60}));
    let id = v.verify(&plain, NOW).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&id.claims).unwrap(),
        json!({"sub": "bob"})
    );
}

// ---- the HMAC / public key confusion ----

#[test]
fn an_hmac_token_keyed_with_a_public_key_is_refused() {
    for public in [RSA_PUBLIC, P256_PUBLIC, ED25519_PUBLIC] {
        let forged_key = secret_key(public.as_bytes());
        let forged = mint_with(Algorithm::HS256, &forged_key, None, &claims());
        let forged_kid = mint_with(Algorithm::HS256, &forged_key, Some("rsa-2"), &claims());

        // HS256 not allowed: refused by algorithm whatever the keys.
        let dir = TempDir::new("confusion-a");
        let v = verifier(&config(
            &dir,
            &[
                Algorithm::RS256,
                Algorithm::ES256,
                Algorithm::EdDSA,
                Algorithm::HS384,
            ],
        ));
        assert_eq!(v.verify(&forged, NOW), Err(Rejection::Algorithm));
        assert_eq!(v.verify(&forged_kid, NOW), Err(Rejection::Algorithm));

        // HS256 allowed with another secret: the public keys are never HMAC keys.
        let dir = TempDir::new("confusion-b");
        let v = verifier(&config(&dir, &[Algorithm::RS256, Algorithm::HS256]));
        assert_eq!(v.verify(&forged, NOW), Err(Rejection::Signature));
        assert_eq!(v.verify(&forged_kid, NOW), Err(Rejection::Signature));
    }
    // Nor is a JWKS `oct` key.
    let (_dir, v) = full();
    let key = secret_key(JWKS_OCT_SECRET.as_bytes());
    for kid in [None, Some("hmac-1")] {
        let token = mint_with(Algorithm::HS256, &key, kid, &claims());
        assert_eq!(v.verify(&token, NOW), Err(Rejection::Signature));
    }
}

#[test]
fn each_hmac_algorithm_uses_its_own_secret() {
    let (_dir, v) = full();
    let hs256_secret = secret_key(HS256_SECRET.as_bytes());
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let token = mint_with(alg, &hs256_secret, None, &claims());
        assert_eq!(v.verify(&token, NOW), Err(Rejection::Signature), "{alg:?}");
    }
}

#[test]
fn one_trailing_newline_of_a_secret_is_stripped() {
    let dir = TempDir::new("newline");
    for (contents, secret) in [
        ("s3cret\n", "s3cret"),
        ("s3cret\r\n", "s3cret"),
        ("s3cret\n\n", "s3cret\n"),
        ("s3cret", "s3cret"),
        ("  s3cret ", "  s3cret "),
    ] {
        let cfg = AuthConfig {
            mode: Mode::Jwt,
            algorithms: vec!["HS256".into()],
            hs256_secret_file: Some(dir.file("secret", contents)),
            ..AuthConfig::default()
        };
        let v = verifier(&cfg);
        let key = secret_key(secret.as_bytes());
        let token = mint_with(Algorithm::HS256, &key, None, &claims());
        assert!(v.verify(&token, NOW).is_ok(), "{contents:?}");
        if contents != secret {
            let key = secret_key(contents.as_bytes());
            let token = mint_with(Algorithm::HS256, &key, None, &claims());
            assert_eq!(
                v.verify(&token, NOW),
                Err(Rejection::Signature),
                "{contents:?}"
            );
        }
    }
}

// ---- rejections ----

#[test]
fn rejections_answer_401_headers_and_reasons() {
    let all = [
        (Rejection::Missing, "missing"),
        (Rejection::Malformed, "malformed"),
        (Rejection::Algorithm, "algorithm"),
        (Rejection::UnknownKid, "unknown_kid"),
        (Rejection::Signature, "signature"),
        (Rejection::NoExpiry, "no_expiry"),
        (Rejection::Expired, "expired"),
        (Rejection::NotYetValid, "not_yet_valid"),
        (Rejection::Issuer, "issuer"),
        (Rejection::Audience, "audience"),
        (Rejection::NoUser, "no_user"),
    ];
    for (r, reason) in all {
        assert_eq!(r.reason(), reason);
        let want = if r == Rejection::Missing {
            "Bearer"
        } else {
            "Bearer error=\"invalid_token\""
        };
        assert_eq!(r.www_authenticate(), want);
        assert!(!r.to_string().is_empty());
    }
    assert_eq!(Rejection::Expired.to_string(), "token expired");
    assert_eq!(Rejection::Signature.to_string(), "bad signature");
}

#[test]
fn no_error_shows_the_token() {
    let (_dir, v) = full();
    let good = mint(Algorithm::HS256, &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let tokens = [
        mint(Algorithm::HS256, &json!({"sub": "a", "exp": NOW - 3600})),
        mint(
            Algorithm::HS256,
            &json!({"sub": "a", "exp": NOW + 60, "nbf": NOW + 3600}),
        ),
        mint(Algorithm::HS256, &json!({"exp": NOW + 60})),
        mint(Algorithm::HS256, &json!({"sub": "a"})),
        mint_with(
            Algorithm::RS256,
            &signing_key(Algorithm::RS256),
            Some("nope"),
            &claims(),
        ),
        format!("{}.{}.{}", parts[0], b64("{\"sub\":\"x\"}"), parts[2]),
        format!("{}.{}.{}x", parts[0], parts[1], parts[2]),
        format!("{}.{}", parts[0], parts[1]),
        format!("{}.{}.{}", b64(r#"{"alg":"none"}"#), parts[1], parts[2]),
    ];
    for token in &tokens {
        let e = v.verify(token, NOW).expect_err("refused");
        assert_hidden(token, &e.to_string());
        assert_hidden(token, &format!("{e:?}"));
    }
    // Nor does the verifier's Debug show a key.
    let shown = format!("{v:?}");
    assert!(
        !shown.contains(HS256_SECRET) && !shown.contains("MII"),
        "{shown}"
    );
    assert!(shown.contains("pem_keys: 4"), "{shown}");
}

// ---- finding the token ----

#[test]
fn a_token_in_each_source() {
    let cfg = AuthConfig::default();
    let h = headers(&[("authorization", "Bearer aaa.bbb.ccc")]);
    assert_eq!(
        find_token(&cfg, &h, None),
        Some((Cow::Borrowed("aaa.bbb.ccc"), Found::Authorization))
    );
    let h = headers(&[("authorization", "  bearer \t aaa.bbb.ccc  ")]);
    assert_eq!(
        find_token(&cfg, &h, None).map(|t| t.0),
        Some("aaa.bbb.ccc".into())
    );
    let h = headers(&[(
        "sec-websocket-protocol",
        "chat.v2, bearer.aaa.bbb.ccc, json",
    )]);
    assert_eq!(
        find_token(&cfg, &h, None),
        Some((Cow::Borrowed("aaa.bbb.ccc"), Found::Subprotocol))
    );
    assert_eq!(
        find_token(&cfg, &[], Some("room=1&token=aaa.bbb.ccc&x=2")),
        Some((Cow::Borrowed("aaa.bbb.ccc"), Found::Query))
    );
    let h = headers(&[("cookie", "theme=dark; token=aaa.bbb.ccc; lang=en")]);
    assert_eq!(
        find_token(&cfg, &h, None),
        Some((Cow::Borrowed("aaa.bbb.ccc"), Found::Cookie))
    );
    assert_eq!(find_token(&cfg, &[], None), None);
    assert_eq!(find_token(&cfg, &[], Some("user=alice")), None);
}

#[test]
fn sources_are_tried_in_the_configured_order() {
    let h = headers(&[
        ("cookie", "token=from.the.cookie"),
        ("sec-websocket-protocol", "bearer.from.the.subprotocol"),
        ("authorization", "Bearer from.the.header"),
    ]);
    let q = Some("token=from.the.query");
    let order = |sources: &[TokenSource]| {
        let cfg = AuthConfig {
            token_sources: sources.to_vec(),
            ..AuthConfig::default()
        };
        find_token(&cfg, &h, q).map(|(t, f)| (t.into_owned(), f))
    };
    use TokenSource::*;
    assert_eq!(
        order(&[Authorization, Subprotocol, Query, Cookie]),
        Some(("from.the.header".into(), Found::Authorization))
    );
    assert_eq!(
        order(&[Cookie, Query, Subprotocol, Authorization]),
        Some(("from.the.cookie".into(), Found::Cookie))
    );
    assert_eq!(
        order(&[Query, Cookie]),
        Some(("from.the.query".into(), Found::Query))
    );
    assert_eq!(
        order(&[Subprotocol]),
        Some(("from.the.subprotocol".into(), Found::Subprotocol))
    );
    assert_eq!(order(&[]), None);
    // A source with nothing usable passes on to the next.
    let cfg = AuthConfig::default();
    let h = headers(&[
        ("authorization", "Basic dXNlcjpwYXNz"),
        ("authorization", "Bearer "),
        ("sec-websocket-protocol", "bearer., chat"),
    ]);
    assert_eq!(
        find_token(&cfg, &h, Some("token=&token=later")),
        None,
        "the first `token` parameter decides, and it is empty"
    );
    assert_eq!(
        find_token(&cfg, &h, Some("token=q.q.q")),
        Some((Cow::Borrowed("q.q.q"), Found::Query))
    );
}

#[test]
fn the_bearer_subprotocol_among_others() {
    let cfg = AuthConfig::default();
    let h = headers(&[
        ("sec-websocket-protocol", "chat.v1"),
        ("sec-websocket-protocol", "json,bearer.t1.t2.t3 , mqtt"),
    ]);
    assert_eq!(
        find_token(&cfg, &h, None),
        Some((Cow::Borrowed("t1.t2.t3"), Found::Subprotocol))
    );
    assert!(is_bearer_subprotocol("bearer.t1.t2.t3"));
    assert!(is_bearer_subprotocol(" bearer.x "));
    assert!(!is_bearer_subprotocol("chat.v1"));
    assert!(!is_bearer_subprotocol("bearer"));
    let h = headers(&[("sec-websocket-protocol", "chat, bearer-x.y, Bearer.z")]);
    assert_eq!(find_token(&cfg, &h, None), None);
}

#[test]
fn cookies_are_parsed_among_several() {
    let cfg = AuthConfig {
        cookie: "sid".into(),
        ..AuthConfig::default()
    };
    let h = headers(&[
        ("cookie", "a=1; xsid=wrong; sid_old=wrong"),
        ("cookie", "b=2;sid=\"c1.c2.c3\"; sid=second"),
    ]);
    assert_eq!(
        find_token(&cfg, &h, None),
        Some((Cow::Borrowed("c1.c2.c3"), Found::Cookie))
    );
    let h = headers(&[("Cookie", "sid=; sid=p%2Eq.r")]);
    assert_eq!(
        find_token(&cfg, &h, None),
        Some((Cow::Owned("p.q.r".into()), Found::Cookie))
    );
    let h = headers(&[("cookie", "token=not.this.one")]);
    assert_eq!(find_token(&cfg, &h, None), None);
}

#[test]
fn the_query_token_is_percent_decoded() {
    let cfg = AuthConfig {
        query_param: "access_token".into(),
        ..AuthConfig::default()
    };
    let found = find_token(
        &cfg,
        &[],
        Some("a=1&access_token=h%2Eh.p%2ep.s%5Fs&token=no"),
    );
    assert_eq!(
        found,
        Some((Cow::Owned("h.h.p.p.s_s".into()), Found::Query))
    );
    let found = find_token(&cfg, &[], Some("access%5Ftoken=x.y.z"));
    assert_eq!(found, Some((Cow::Borrowed("x.y.z"), Found::Query)));
    assert_eq!(
        find_token(&cfg, &[], Some("access_token=%FF")),
        None,
        "not UTF-8"
    );
    assert_eq!(find_token(&cfg, &[], Some("token=x.y.z")), None);
}

#[test]
fn header_values_that_are_not_utf8_are_skipped() {
    let cfg = AuthConfig::default();
    let h = vec![
        ("authorization".to_string(), b"Bearer \xff\xfe".to_vec()),
        ("authorization".to_string(), b"Bearer ok.ok.ok".to_vec()),
    ];
    assert_eq!(
        find_token(&cfg, &h, None),
        Some((Cow::Borrowed("ok.ok.ok"), Found::Authorization))
    );
}

// ---- configuration ----

fn refusal(cfg: &AuthConfig) -> (&'static str, String) {
    cfg.validate().expect_err("should be refused")
}

#[test]
fn validate_refuses_none_and_unknown_algorithms() {
    for alg in ["none", "None", "NONE"] {
        let cfg = AuthConfig {
            algorithms: vec!["HS256".into(), alg.into()],
            ..AuthConfig::default()
        };
        let (key, reason) = refusal(&cfg);
        assert_eq!(key, "auth.algorithms");
        assert!(reason.contains("never"), "{reason}");
    }
    for alg in ["HS999", "hs256", "PS512", ""] {
        let cfg = AuthConfig {
            mode: Mode::Jwt,
            algorithms: vec![alg.into()],
            ..AuthConfig::default()
        };
        let (key, reason) = refusal(&cfg);
        assert_eq!(key, "auth.algorithms");
        assert!(reason.contains(&format!("{alg:?}")), "{reason}");
    }
}

#[test]
fn validate_wants_a_key_source_for_each_family_in_jwt_mode() {
    assert_eq!(AuthConfig::default().validate(), Ok(()));
    let jwt = |algs: &[&str]| AuthConfig {
        mode: Mode::Jwt,
        algorithms: algs.iter().map(|a| a.to_string()).collect(),
        ..AuthConfig::default()
    };
    assert_eq!(refusal(&jwt(&[])).0, "auth.algorithms");
    assert_eq!(refusal(&jwt(&["HS256"])).0, "auth.hs256_secret_file");
    assert_eq!(refusal(&jwt(&["HS384"])).0, "auth.hs384_secret_file");
    assert_eq!(refusal(&jwt(&["HS512"])).0, "auth.hs512_secret_file");
    for alg in ["RS256", "PS256", "ES256", "ES384", "EdDSA"] {
        let (key, reason) = refusal(&jwt(&[alg]));
        assert_eq!(key, "auth.public_key_files");
        assert!(reason.contains(alg), "{reason}");
    }
    // An HS256 secret does not make up for HS384's.
    let cfg = AuthConfig {
        hs256_secret_file: Some("/s".into()),
        ..jwt(&["HS256", "HS384"])
    };
    assert_eq!(refusal(&cfg).0, "auth.hs384_secret_file");
    // A secret is no key source for the public-key algorithms.
    let cfg = AuthConfig {
        hs256_secret_file: Some("/s".into()),
        ..jwt(&["HS256", "RS256"])
    };
    assert_eq!(refusal(&cfg).0, "auth.public_key_files");
    let cfg = AuthConfig {
        jwks_file: Some("/jwks".into()),
        ..jwt(&["RS256", "EdDSA"])
    };
    assert_eq!(cfg.validate(), Ok(()));
    let cfg = AuthConfig {
        public_key_files: vec!["/k.pem".into()],
        hs256_secret_file: Some("/s".into()),
        ..jwt(&["HS256", "ES256"])
    };
    assert_eq!(cfg.validate(), Ok(()));
    // In mode none the key files are not needed.
    let cfg = AuthConfig {
        mode: Mode::None,
        ..jwt(&["HS256"])
    };
    assert_eq!(cfg.validate(), Ok(()));
}

#[test]
fn validate_checks_the_other_keys_in_jwt_mode() {
    let base = AuthConfig {
        mode: Mode::Jwt,
        algorithms: vec!["HS256".into()],
        hs256_secret_file: Some("/s".into()),
        ..AuthConfig::default()
    };
    assert_eq!(base.validate(), Ok(()));
    let cases = [
        (
            AuthConfig {
                token_sources: vec![],
                ..base.clone()
            },
            "auth.token_sources",
        ),
        (
            AuthConfig {
                query_param: String::new(),
                ..base.clone()
            },
            "auth.query_param",
        ),
        (
            AuthConfig {
                query_param: "a=b".into(),
                ..base.clone()
            },
            "auth.query_param",
        ),
        (
            AuthConfig {
                cookie: String::new(),
                ..base.clone()
            },
            "auth.cookie",
        ),
        (
            AuthConfig {
                cookie: "a;b".into(),
                ..base.clone()
            },
            "auth.cookie",
        ),
        (
            AuthConfig {
                user_claim: String::new(),
                ..base.clone()
            },
            "auth.user_claim",
        ),
        (
            AuthConfig {
                issuer: Some(String::new()),
                ..base.clone()
            },
            "auth.issuer",
        ),
        (
            AuthConfig {
                audience: Some(String::new()),
                ..base.clone()
            },
            "auth.audience",
        ),
        (
            AuthConfig {
                forward_claims: vec!["".into()],
                ..base.clone()
            },
            "auth.forward_claims",
        ),
    ];
    for (cfg, key) in cases {
        assert_eq!(refusal(&cfg).0, key);
    }
    // A bad cookie name does not matter when cookies are not a source.
    let cfg = AuthConfig {
        cookie: "a;b".into(),
        token_sources: vec![TokenSource::Authorization],
        ..base.clone()
    };
    assert_eq!(cfg.validate(), Ok(()));
}

#[test]
fn the_auth_table_deserializes_with_defaults() {
    let cfg: AuthConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(cfg, AuthConfig::default());
    assert_eq!(cfg.mode, Mode::None);
    assert_eq!(cfg.leeway, Duration::from_secs(30));
    assert_eq!(cfg.user_claim, "sub");
    assert_eq!(cfg.query_param, "token");
    assert_eq!(cfg.cookie, "token");
    assert_eq!(
        cfg.token_sources,
        [
            TokenSource::Authorization,
            TokenSource::Subprotocol,
            TokenSource::Query,
            TokenSource::Cookie
        ]
    );
    let cfg: AuthConfig = serde_json::from_str(
        r#"{"mode": "jwt", "token_sources": ["cookie", "query"], "leeway": "1m 5s",
            "algorithms": ["ES256"], "jwks_file": "/etc/jwks.json", "forward_claims": ["role"]}"#,
    )
    .unwrap();
    assert_eq!(cfg.mode, Mode::Jwt);
    assert_eq!(cfg.token_sources, [TokenSource::Cookie, TokenSource::Query]);
    assert_eq!(cfg.leeway, Duration::from_secs(65));
    assert_eq!(cfg.validate(), Ok(()));
    assert!(serde_json::from_str::<AuthConfig>(r#"{"moed": "jwt"}"#).is_err());
    assert!(serde_json::from_str::<AuthConfig>(r#"{"mode": "basic"}"#).is_err());
    assert!(serde_json::from_str::<AuthConfig>(r#"{"token_sources": ["header"]}"#).is_err());
    let back: AuthConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
}

// ---- loading ----

fn load_error(cfg: &AuthConfig) -> String {
    match Verifier::load(cfg) {
        Ok(_) => panic!("load should fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn load_errors_name_the_file_and_the_cause() {
    let dir = TempDir::new("load-errors");
    let one_pem = |name: &str, contents: &str| AuthConfig {
        mode: Mode::Jwt,
        algorithms: vec!["RS256".into(), "ES256".into()],
        public_key_files: vec![dir.file(name, contents)],
        ..AuthConfig::default()
    };
    let two = format!("{RSA_PUBLIC}{P256_PUBLIC}");
    let garbage = "-----BEGIN PUBLIC KEY-----\nnot base64 at all!\n-----END PUBLIC KEY-----\n";
    let truncated = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        &P256_PUBLIC.lines().nth(1).unwrap()[..40]
    );
    let cases: [(&str, &str, &str); 9] = [
        ("private.pem", RSA_PRIVATE, "private key"),
        ("ec-private.pem", P256_PRIVATE, "private key"),
        ("two.pem", &two, "2 PEM blocks"),
        ("empty.pem", "", "no PEM block"),
        ("garbage.pem", garbage, "not base64"),
        ("small.pem", RSA_1024_PUBLIC, "1024 bits"),
        ("k1.pem", SECP256K1_PUBLIC, "unsupported curve"),
        ("truncated.pem", &truncated, "not"),
        (
            "cert.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "\"CERTIFICATE\"",
        ),
    ];
    for (name, contents, cause) in cases {
        let e = load_error(&one_pem(name, contents));
        assert!(e.contains(&dir.path(name).display().to_string()), "{e}");
        assert!(e.contains(cause), "{name}: {e}");
        assert!(!e.contains("MII") && !e.contains("MFkw"), "{e}");
    }

    // A missing file.
    let cfg = AuthConfig {
        mode: Mode::Jwt,
        algorithms: vec!["HS256".into()],
        hs256_secret_file: Some(dir.path("missing-secret")),
        ..AuthConfig::default()
    };
    let e = load_error(&cfg);
    assert!(
        e.starts_with("cannot read ") && e.contains("missing-secret"),
        "{e}"
    );
    // An empty secret (after the newline is stripped).
    let cfg = AuthConfig {
        hs256_secret_file: Some(dir.file("empty-secret", "\n")),
        ..cfg
    };
    let e = load_error(&cfg);
    assert!(e.contains("empty-secret") && e.contains("empty"), "{e}");
}

#[test]
fn jwks_errors_name_the_file_and_the_key() {
    let dir = TempDir::new("jwks-errors");
    let jwks = |contents: &str| AuthConfig {
        mode: Mode::Jwt,
        algorithms: vec!["ES256".into()],
        jwks_file: Some(dir.file("jwks.json", contents)),
        ..AuthConfig::default()
    };
    let secret_n = "c2VjcmV0LWxvb2tpbmctdmFsdWU";
    let cases = [
        ("{\"keys\": [".to_string(), "not JSON"),
        ("{\"kids\": []}".to_string(), "no \"keys\" array"),
        (
            r#"{"keys": [{"kty": "EC", "kid": "short", "crv": "P-256", "x": "AAAA", "y": "AAAA"}]}"#.into(),
            "key 0 (kid \"short\")",
        ),
        (
            format!(r#"{{"keys": [{{"kty": "RSA", "kid": "r", "n": "{secret_n}", "e": "AQAB"}}]}}"#),
            "bits",
        ),
        (r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": 5, "y": "A"}]}"#.into(), "\"x\" is not a string"),
        (r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}]}"#.into(), "32 bytes"),
        (r#"{"keys": [{"kid": "k"}]}"#.into(), "no \"kty\""),
        (r#"{"keys": ["x"]}"#.into(), "not a JSON object"),
    ];
    for (contents, cause) in cases {
        let e = load_error(&jwks(&contents));
        assert!(
            e.contains(&dir.path("jwks.json").display().to_string()),
            "{e}"
        );
        assert!(e.contains(cause), "{cause}: {e}");
        assert!(!e.contains(secret_n), "{e}");
    }
    // A point that is not on the curve.
    let mut doc: Value = serde_json::from_str(JWKS).unwrap();
    doc["keys"][2]["y"] = json!(b64([7u8; 32]));
    let e = load_error(&jwks(&doc.to_string()));
    assert!(e.contains("kid \"ec-256\"") && e.contains("P-256"), "{e}");
}

#[test]
fn an_allowed_algorithm_without_a_key_fails_the_load() {
    let dir = TempDir::new("no-key");
    let cfg = AuthConfig {
        mode: Mode::Jwt,
        algorithms: vec!["ES256".into(), "ES384".into()],
        public_key_files: vec![dir.file("p256.pem", P256_PUBLIC)],
        ..AuthConfig::default()
    };
    let e = load_error(&cfg);
    assert!(e.contains("ES384"), "{e}");
    // A JWKS key restricted to RS256 is no key for PS256.
    let cfg = AuthConfig {
        algorithms: vec!["PS256".into()],
        public_key_files: vec![],
        jwks_file: Some(dir.file(
            "jwks.json",
            serde_json::json!({"keys": [serde_json::from_str::<Value>(JWKS).unwrap()["keys"][0]]})
                .to_string(),
        )),
        ..cfg
    };
    assert!(load_error(&cfg).contains("PS256"));
    // The configuration is validated first.
    let cfg = AuthConfig {
        mode: Mode::Jwt,
        algorithms: vec!["none".into()],
        ..AuthConfig::default()
    };
    assert!(load_error(&cfg).starts_with("`auth.algorithms`"));
}

#[test]
fn mode_none_reads_no_file_and_accepts_no_token() {
    let cfg = AuthConfig {
        algorithms: vec!["HS256".into()],
        hs256_secret_file: Some("/nonexistent/ringgate/secret".into()),
        ..AuthConfig::default()
    };
    let v = verifier(&cfg);
    let token = mint(Algorithm::HS256, &claims());
    assert_eq!(v.verify(&token, NOW), Err(Rejection::Algorithm));
}

#[test]
fn a_reload_sees_new_keys_and_clones_share_the_old() {
    let dir = TempDir::new("reload");
    let cfg = AuthConfig {
        mode: Mode::Jwt,
        algorithms: vec!["HS256".into()],
        hs256_secret_file: Some(dir.file("secret", "first")),
        ..AuthConfig::default()
    };
    let old = verifier(&cfg);
    let shared = old.clone();
    dir.file("secret", "second");
    let new = verifier(&cfg);
    let first = mint_with(Algorithm::HS256, &secret_key(b"first"), None, &claims());
    let second = mint_with(Algorithm::HS256, &secret_key(b"second"), None, &claims());
    assert!(shared.verify(&first, NOW).is_ok());
    assert_eq!(shared.verify(&second, NOW), Err(Rejection::Signature));
    assert!(new.verify(&second, NOW).is_ok());
    assert_eq!(new.verify(&first, NOW), Err(Rejection::Signature));
}

#[test]
fn the_verifier_is_shareable() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<Verifier>();
    shareable::<AuthConfig>();
}

#[test]
fn verify_does_not_panic_on_odd_input() {
    let (_dir, v) = full();
    let good = mint(Algorithm::ES256, &claims());
    let mut inputs: Vec<String> = vec![
        ".".into(),
        "..".into(),
        "...".into(),
        "\u{0}.\u{0}.\u{0}".into(),
        "é.é.é".into(),
        "a".repeat(10_000),
    ];
    for cut in 0..good.len() {
        inputs.push(good[..cut].to_string());
    }
    for header in [
        json!({"alg": "EdDSA", "kid": "ed-1"}),
        json!({"alg": "ES384", "kid": "ec-256"}),
        json!({"alg": "RS256", "kid": ""}),
        json!({"alg": "HS256", "crit": ["exp"]}),
        json!({"alg": "HS256", "b64": false, "crit": ["b64"]}),
    ] {
        let payload = b64(claims().to_string());
        inputs.push(format!("{}.{payload}.AAAA", b64(header.to_string())));
        inputs.push(format!("{}.{payload}.", b64(header.to_string())));
    }
    for input in &inputs {
        let _ = v.verify(input, NOW);
    }
    let _ = v.verify(&good, 0);
    let _ = v.verify(&good, u64::MAX);
}

fn secret_key(secret: &[u8]) -> EncodingKey {
    EncodingKey::from_secret(secret).expect("a non-empty secret")
}
