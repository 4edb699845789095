//! `session::Session`, the client session state machine, driven by an arbitrary script of the
//! events its driver feeds it: client bytes in reads of arbitrary sizes, clock ticks, our own
//! closes, the game server going away, writes completing and the peer vanishing.
//!
//! Input layout: byte 0 picks `max_message_size` (`8 * byte`) and the in-place limit (half of it);
//! then a script of steps, each a step byte and an argument byte: steps 0-3 feed the next `arg` bytes
//! of the script as client bytes, 4 advances the clock by `arg % 64` seconds and ticks, 5 begins a
//! close (code 1000 + arg), 6 marks the game server gone, 7 reports a write completed with `arg % 2`
//! bytes still queued, 8 reports the peer gone, 9 ends the session.
//!
//! Checked on every step: no panic; nothing is decided after the session stopped reading; a
//! violation or the client's close is the last input decided; at most one close frame of ours is
//! ever asked for (`begin_close` or a `Closed` echo, not both); nothing may be sent after our close;
//! a small message's length fits what the buffer holds; the write side is shut at most once; `end`
//! answers once, with a valid close code.
#![no_main]

use bytes::{Buf, BytesMut};
use libfuzzer_sys::fuzz_target;
use ringgate::session::{Received, Session, Tick, Timing};
use ringgate::ws::is_valid_close_code;

const TIMING: Timing = Timing {
    ping_interval: 5,
    idle_timeout: 20,
    close_timeout: 3,
};

fuzz_target!(|data: &[u8]| {
    let Some((&limit, mut script)) = data.split_first() else {
        return;
    };
    let max = usize::from(limit) * 8;
    let small = max / 2;
    let mut s = Session::new(0);
    let mut now = 0u32;
    let mut buf = BytesMut::new();
    let mut closes_asked = 0;
    let mut last_input = false;
    let mut shut = 0;
    let mut ended = false;
    while let [step, arg, rest @ ..] = script {
        script = rest;
        match step % 10 {
            0..=3 => {
                let n = usize::from(*arg).min(script.len());
                let (bytes, rest) = script.split_at(n);
                script = rest;
                buf.extend_from_slice(bytes);
                s.on_read(now);
                while let Some(input) = s.receive(&mut buf, max, small) {
                    assert!(!last_input, "an input was decided after the last one");
                    assert!(!ended, "an input was decided after the end");
                    match input {
                        Received::SmallData { len, .. } => {
                            assert!(len <= small && len <= buf.len(), "small message of {len}");
                            buf.advance(len);
                        }
                        Received::Data { payload, .. } => assert!(payload.len() <= max),
                        Received::Pong(p) => assert!(p.len() <= 125),
                        Received::Violation { code, .. } => {
                            assert!(is_valid_close_code(code), "violation code {code}");
                            last_input = true;
                            if s.begin_close(code, now, &TIMING).is_some() {
                                closes_asked += 1;
                            }
                        }
                        Received::Closed { echo } => {
                            last_input = true;
                            if echo.is_some() {
                                closes_asked += 1;
                            }
                            assert!(s.close_sent());
                        }
                    }
                    if last_input {
                        assert!(!s.is_open());
                    }
                }
            }
            4 => {
                now += u32::from(*arg % 64);
                match s.on_tick(now, &TIMING) {
                    Tick::Wait(next) | Tick::Ping(next) => assert!(next > now),
                    Tick::Idle => {
                        if s.begin_close(1001, now, &TIMING).is_some() {
                            closes_asked += 1;
                        }
                    }
                    Tick::CloseTimedOut | Tick::Retire => assert!(s.close_sent()),
                }
            }
            5 => {
                if s.begin_close(1000 + u16::from(*arg), now, &TIMING).is_some() {
                    closes_asked += 1;
                }
            }
            6 => s.upstream_gone(),
            7 => {
                if s.on_written(usize::from(arg % 2)) {
                    shut += 1;
                    assert!(s.close_sent());
                }
            }
            8 => s.on_peer_gone(),
            _ => match s.end() {
                Some(end) => {
                    assert!(!ended);
                    ended = true;
                    assert!(end.code >= 1000, "end code {}", end.code);
                    assert!(!s.is_reading());
                }
                None => assert!(ended),
            },
        }
        assert!(closes_asked <= 1, "two close frames of ours were asked for");
        assert!(shut <= 1, "the write side was shut twice");
        if s.close_sent() || ended {
            assert!(!s.may_send(), "a frame may follow our close");
        }
    }
});
