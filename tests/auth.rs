//! Authentication before the upgrade (`[auth] mode = "jwt"`) against the real binary, with keys and
//! tokens made by an independent library (PyJWT with `cryptography`, `tests/auth/mint.py`): every
//! algorithm family, every failure's 401, every token source, `?user=` ignored, the identity and
//! forwarded claims the game server sees, keys re-read on SIGHUP, and no token in the logs.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Map, Value};
use support::*;

/// Key files in a fresh directory and the tokens of every case, minted now; `None` (the test is
/// skipped) where PyJWT is not installed, unless `RINGGATE_REQUIRE_PEERS` is set.
fn mint() -> Option<(PathBuf, Map<String, Value>)> {
    let dir = std::env::temp_dir().join(format!("ringgate-auth-{}", random_u64()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/auth/mint.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&dir)
        .arg(now.to_string())
        .output()
        .expect("python3 runs");
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let missing = err.contains("No module named");
        assert!(
            missing && std::env::var_os("RINGGATE_REQUIRE_PEERS").is_none(),
            "mint.py failed: {err}"
        );
        eprintln!("skipped: PyJWT is not installed (pip install 'pyjwt[crypto]'); CI installs it");
        return None;
    }
    let tokens: Value = serde_json::from_slice(&out.stdout).expect("mint.py prints JSON");
    Some((dir, tokens.as_object().unwrap().clone()))
}

fn jwt_config(dir: &Path, algorithms: &str, extra_top: &str) -> String {
    let f = |name: &str| dir.join(name).display().to_string();
    format!(
        "{extra_top}\n[auth]\nmode = \"jwt\"\nalgorithms = [{algorithms}]\n\
         hs256_secret_file = \"{}\"\nhs384_secret_file = \"{}\"\nhs512_secret_file = \"{}\"\n\
         public_key_files = [\"{}\", \"{}\", \"{}\", \"{}\"]\njwks_file = \"{}\"\n\
         issuer = \"game-backend\"\naudience = \"ringgate\"\nforward_claims = [\"room\", \"role\"]\n",
        f("hs256.secret"),
        f("hs384.secret"),
        f("hs512.secret"),
        f("rsa.pem"),
        f("p256.pem"),
        f("p384.pem"),
        f("ed25519.pem"),
        f("jwks.json"),
    )
}

const ALL: &str =
    "\"HS256\", \"HS384\", \"HS512\", \"RS256\", \"RS512\", \"PS256\", \"ES256\", \"ES384\", \"EdDSA\"";

fn token<'a>(tokens: &'a Map<String, Value>, case: &str) -> &'a str {
    tokens[case].as_str().unwrap()
}

/// Upgrades with these headers (and `?user=mallory`, which jwt mode must ignore) and asks whoami.
fn whoami(g: &Gateway, headers: &[(&str, &str)]) -> (Value, HttpResponse) {
    let (mut ws, resp) = raw_upgrade_path(g.addr(), &format!("{}?user=mallory", g.path()), headers);
    send_frame(&mut ws, true, 0, OP_TEXT, b"whoami", true);
    let (_, body) = read_message(&mut ws);
    (serde_json::from_slice(&body).unwrap(), resp)
}

/// The full answer (head and body) to an upgrade with these headers.
fn answer(g: &Gateway, headers: &[(&str, &str)]) -> HttpResponse {
    http_request(
        g.addr(),
        &upgrade_request(g.addr(), g.path(), &random_key(), headers),
    )
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn every_algorithm_family_verifies_and_the_game_server_learns_who_connected() {
    let Some((dir, tokens)) = mint() else { return };
    let g = Launch::demo().config(&jwt_config(&dir, ALL, "")).start();
    for case in [
        "ok_hs256",
        "ok_hs384",
        "ok_hs512",
        "ok_rs256",
        "ok_rs512",
        "ok_ps256",
        "ok_es256",
        "ok_es384",
        "ok_eddsa",
        "ok_jwks_rs256",
        "ok_jwks_es256",
        "within_leeway",
        "audience_list",
    ] {
        let auth = bearer(token(&tokens, case));
        let (me, _) = whoami(&g, &[("Authorization", &auth)]);
        assert_eq!(
            me["user"], "player-7",
            "{case}: ?user= must be ignored: {me}"
        );
        assert_eq!(
            me["claims"],
            serde_json::json!({"room": "lobby-3", "role": "guest"}),
            "{case}: exactly the forwarded claims: {me}"
        );
        assert!(me["headers"].get(":claims").is_none(), "{me}");
    }
}

#[test]
fn every_failed_check_is_a_401_that_names_it() {
    let Some((dir, tokens)) = mint() else { return };
    let g = Launch::demo()
        .config(&jwt_config(&dir, ALL, ""))
        .args(&["--log-level", "debug"])
        .start();
    let missing = answer(&g, &[]);
    assert_eq!(missing.status, 401, "{missing:?}");
    assert_eq!(missing.header("WWW-Authenticate"), Some("Bearer"));
    for (case, body) in [
        ("expired", "token expired"),
        ("not_yet_valid", "token not yet valid"),
        ("no_exp", "token has no expiry"),
        ("wrong_issuer", "wrong issuer"),
        ("wrong_audience", "wrong audience"),
        ("no_sub", "no user claim"),
        ("unknown_kid", "unknown key id"),
        ("wrong_key", "bad signature"),
        ("other_rsa_key", "bad signature"),
        ("tampered", "bad signature"),
        ("alg_none", "algorithm not allowed"),
        ("hs256_with_rsa_public_key", "bad signature"),
        ("garbage", "malformed token"),
    ] {
        let auth = bearer(token(&tokens, case));
        let resp = answer(&g, &[("Authorization", &auth)]);
        assert_eq!(resp.status, 401, "{case}: {resp:?}");
        assert_eq!(
            resp.header("WWW-Authenticate"),
            Some("Bearer error=\"invalid_token\""),
            "{case}"
        );
        assert_eq!(String::from_utf8_lossy(&resp.body).trim(), body, "{case}");
    }
    let stats = g.wait_stats("14 refusals", Duration::from_secs(10), |s| {
        s.counter("auth_rejected") == 14
    });
    assert_eq!(stats.counter("upgraded"), 0, "{stats}");
    // No token reaches the log, whatever happened to it.
    let log = g.proc.stderr_text();
    for (case, t) in &tokens {
        let t = t.as_str().unwrap();
        let signature = t.rsplit('.').next().unwrap();
        assert!(
            signature.len() < 8 || !log.contains(signature),
            "the token of {case} is in the log"
        );
    }
}

#[test]
fn an_algorithm_not_configured_is_refused_even_with_the_right_key() {
    let Some((dir, tokens)) = mint() else { return };
    let g = Launch::demo()
        .config(&jwt_config(&dir, "\"ES256\", \"RS256\"", ""))
        .start();
    for case in ["ok_hs256", "ok_eddsa", "hs256_with_rsa_public_key"] {
        let auth = bearer(token(&tokens, case));
        let resp = answer(&g, &[("Authorization", &auth)]);
        assert_eq!(resp.status, 401, "{case}");
        assert_eq!(
            String::from_utf8_lossy(&resp.body).trim(),
            "algorithm not allowed",
            "{case}"
        );
    }
    let auth = bearer(token(&tokens, "ok_es256"));
    assert_eq!(
        whoami(&g, &[("Authorization", &auth)]).0["user"],
        "player-7"
    );
}

#[test]
fn a_token_is_found_in_the_query_a_cookie_or_a_subprotocol_never_echoed() {
    let Some((dir, tokens)) = mint() else { return };
    let g = Launch::demo().config(&jwt_config(&dir, ALL, "")).start();
    let t = token(&tokens, "ok_es256");
    // The query parameter (any user parameter beside it is ignored).
    let (mut ws, _) = raw_upgrade_path(g.addr(), &format!("{}?user=x&token={t}", g.path()), &[]);
    send_frame(&mut ws, true, 0, OP_TEXT, b"whoami", true);
    let me: Value = serde_json::from_slice(&read_message(&mut ws).1).unwrap();
    assert_eq!(me["user"], "player-7");
    // A cookie among others.
    let cookie = format!("theme=dark; token={t}; lang=fr");
    assert_eq!(whoami(&g, &[("Cookie", &cookie)]).0["user"], "player-7");
    // A subprotocol: the answer selects the client's other offered protocol, never the token.
    let offered = format!("bearer.{t}, game.v1");
    let (me, resp) = whoami(&g, &[("Sec-WebSocket-Protocol", &offered)]);
    assert_eq!(me["user"], "player-7");
    assert_eq!(
        resp.header("Sec-WebSocket-Protocol"),
        Some("game.v1"),
        "{resp:?}"
    );
    assert!(!format!("{resp:?}").contains(t), "the token was echoed");
}

#[test]
fn keys_are_re_read_on_sighup_and_open_sessions_stay() {
    let Some((dir, first)) = mint() else { return };
    // Both tokens name the same player: let the older session live beside the newer one.
    let g = Launch::demo()
        .config(&jwt_config(&dir, ALL, "one_session_per_user = \"allow\""))
        .start();
    let auth = bearer(token(&first, "ok_hs256"));
    let (mut ws, _) = raw_upgrade_path(g.addr(), g.path(), &[("Authorization", &auth)]);
    // New keys in the same files: what a rotation does.
    let Some((dir2, second)) = mint() else { return };
    for name in [
        "hs256.secret",
        "rsa.pem",
        "p256.pem",
        "p384.pem",
        "ed25519.pem",
        "jwks.json",
    ] {
        std::fs::copy(dir2.join(name), dir.join(name)).unwrap();
    }
    g.proc.signal(libc::SIGHUP);
    g.proc.wait_stderr("token keys re-read", LINK_TIMEOUT);
    let old = answer(&g, &[("Authorization", &auth)]);
    assert_eq!(
        old.status, 401,
        "a token of the old key still passes: {old:?}"
    );
    let fresh = bearer(token(&second, "ok_hs256"));
    assert_eq!(
        whoami(&g, &[("Authorization", &fresh)]).0["user"],
        "player-7"
    );
    // The session opened before the rotation goes on.
    send_frame(&mut ws, true, 0, OP_TEXT, b"still here", true);
    assert_eq!(read_message(&mut ws).1, b"still here");
    // A broken key file is refused and the keys in use stay.
    std::fs::write(dir.join("rsa.pem"), "not a key").unwrap();
    g.proc.signal(libc::SIGHUP);
    g.proc.wait_stderr("keys not re-read", LINK_TIMEOUT);
    assert_eq!(
        whoami(&g, &[("Authorization", &fresh)]).0["user"],
        "player-7"
    );
}
