//! Codec micro-benchmarks: the per-byte and per-frame costs on the data path, each against a
//! baseline measured in the same run (bytewise unmasking, std's UTF-8 check) so that results on a
//! shared, noisy machine are read as ratios.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use ringgate::protocol as proto;
use ringgate::ws::{
    accept_key, apply_mask, apply_mask_bytewise, encode_client_frame, encode_header, parse_request,
    Decoder, HandshakeConfig, OpCode, Utf8Validator, MAX_HEADER_LEN,
};

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn unmask(c: &mut Criterion) {
    let mut g = c.benchmark_group("unmask");
    for size in [64usize, 1024, 65536] {
        let mut buf = vec![0xa5u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("word_wide", size), &size, |b, _| {
            b.iter(|| apply_mask(black_box(&mut buf), MASK, 1))
        });
        g.bench_with_input(BenchmarkId::new("bytewise", size), &size, |b, _| {
            b.iter(|| apply_mask_bytewise(black_box(&mut buf), MASK, 1))
        });
    }
    g.finish();
}

fn utf8(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    let text = "héllo wörld, ジョン, plain ascii for the most part of a chat line. ".repeat(256);
    let bytes = text.as_bytes();
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("validator_one_chunk", |b| {
        b.iter(|| {
            let mut v = Utf8Validator::new();
            v.feed(black_box(bytes)).unwrap();
            v.finish().unwrap();
        })
    });
    g.bench_function("validator_1k_chunks", |b| {
        b.iter(|| {
            let mut v = Utf8Validator::new();
            for chunk in black_box(bytes).chunks(1000) {
                v.feed(chunk).unwrap();
            }
            v.finish().unwrap();
        })
    });
    g.bench_function("std_from_utf8", |b| {
        b.iter(|| std::str::from_utf8(black_box(bytes)).unwrap().len())
    });
    g.finish();
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws_frame");
    g.bench_function("encode_header", |b| {
        let mut out = [0u8; MAX_HEADER_LEN];
        b.iter(|| encode_header(&mut out, true, OpCode::Binary, black_box(1500)))
    });
    for size in [16usize, 1024] {
        // 64 frames per iteration, decoded and unmasked from one buffer, as one read would give.
        let one = encode_client_frame(true, 0, 2, MASK, &vec![7u8; size]);
        let stream: Vec<u8> = one.iter().copied().cycle().take(one.len() * 64).collect();
        g.throughput(Throughput::Elements(64));
        g.bench_with_input(BenchmarkId::new("decode_64_frames", size), &size, |b, _| {
            b.iter(|| {
                let mut buf = BytesMut::from(&stream[..]);
                let mut d = Decoder::new();
                let mut n = 0;
                while let Ok(Some(m)) = d.decode(&mut buf, 1 << 20) {
                    black_box(m);
                    n += 1;
                }
                assert_eq!(n, 64);
            })
        });
    }
    g.finish();
}

fn handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    let cfg = HandshakeConfig {
        path: "/ws".into(),
        subprotocols: vec!["game.v1".into()],
        max_head_bytes: 8192,
    };
    let req = b"GET /ws?user=alice HTTP/1.1\r\nHost: game.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0\r\nOrigin: https://game.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: game.v1\r\n\r\n";
    g.bench_function("parse_request", |b| {
        b.iter(|| parse_request(black_box(req), &cfg).unwrap())
    });
    g.bench_function("accept_key", |b| {
        b.iter(|| accept_key(black_box(b"dGhlIHNhbXBsZSBub25jZQ==")))
    });
    g.finish();
}

fn upstream(c: &mut Criterion) {
    let mut g = c.benchmark_group("upstream_frame");
    g.bench_function("encode_header", |b| {
        let mut out = [0u8; proto::HEADER_LEN];
        b.iter(|| proto::encode_header(&mut out, proto::FrameType::Data, 1, black_box(42), 1500))
    });
    for size in [16usize, 1024] {
        let one = proto::data_frame(7, false, &vec![1u8; size]);
        let stream: Vec<u8> = one.iter().copied().cycle().take(one.len() * 64).collect();
        g.throughput(Throughput::Elements(64));
        g.bench_with_input(BenchmarkId::new("decode_64_data", size), &size, |b, _| {
            b.iter(|| {
                let mut buf = BytesMut::from(&stream[..]);
                let mut n = 0;
                while let Ok(Some(f)) = proto::decode(&mut buf, 1 << 20) {
                    black_box(f);
                    n += 1;
                }
                assert_eq!(n, 64);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, unmask, utf8, frames, handshake, upstream);
criterion_main!(benches);
