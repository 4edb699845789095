//! What authentication adds to an upgrade: finding an HS256 token in the request's headers and
//! verifying it (signature, times, issuer, audience, the user and the forwarded claims), against
//! parsing the upgrade request itself, measured in the same run. The end-to-end cost per upgrade is
//! `scripts/bench-auth.sh`'s (docs/benchmarks.md).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

use ringgate::auth::{find_token, AuthConfig, Mode, Verifier};
use ringgate::ws::{parse_request, HandshakeConfig};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef";

fn auth(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("ringgate-bench-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("hs256.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let cfg = AuthConfig {
        mode: Mode::Jwt,
        algorithms: vec!["HS256".into()],
        hs256_secret_file: Some(secret),
        issuer: Some("game-backend".into()),
        audience: Some("ringgate".into()),
        forward_claims: vec!["room".into(), "role".into()],
        ..AuthConfig::default()
    };
    let verifier = Verifier::load(&cfg).unwrap();
    let now = 1_800_000_000u64;
    let claims = serde_json::json!({
        "sub": "player-7", "iss": "game-backend", "aud": "ringgate", "exp": now + 3600,
        "iat": now, "room": "lobby-3", "role": "guest",
    });
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: game.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Origin: https://game.example\r\nUser-Agent: bench/1\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let hs = HandshakeConfig {
        path: "/ws".into(),
        subprotocols: Vec::new(),
        max_head_bytes: 8192,
    };
    let headers = match parse_request(request.as_bytes(), &hs).unwrap() {
        ringgate::ws::ParseOutcome::Complete(req) => req.headers,
        ringgate::ws::ParseOutcome::Partial => unreachable!(),
    };
    let mut g = c.benchmark_group("upgrade");
    g.bench_function("parse_request", |b| {
        b.iter(|| parse_request(black_box(request.as_bytes()), &hs).unwrap())
    });
    g.bench_function("find_and_verify_hs256", |b| {
        b.iter(|| {
            let (t, _) = find_token(&cfg, black_box(&headers), None).unwrap();
            verifier.verify(&t, now).unwrap()
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, auth);
criterion_main!(benches);
