//! A slow-message attack (the start of many large messages, then silence) against the real binary:
//! the memory held for messages still arriving stays within `max_inflight_bytes` per worker, the
//! slowest holders are cut with 1008 while a fast one is only held back, and well-behaved clients
//! keep echoing meanwhile.

mod support;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

const ATTACKERS: usize = 2000;
const DECLARED: u64 = 1 << 20;
const SENT: usize = 512 << 10;
const BUDGET: usize = 16 << 20;
const WORKERS: usize = 2;

fn rss_bytes(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<usize>()
        .unwrap()
        * 1024
}

#[test]
fn a_slow_message_attack_is_held_to_the_budget_while_others_echo() {
    raise_fd_limit(8192);
    let g = Launch::demo()
        .args(&[
            "--workers",
            &WORKERS.to_string(),
            "--max-message-size",
            &DECLARED.to_string(),
        ])
        .config(&format!(
            "max_inflight_bytes = {BUDGET}\none_session_per_user = \"allow\"\n"
        ))
        .start();
    let baseline = rss_bytes(g.proc.pid());

    // Well-behaved clients echo for as long as the attack lasts.
    let attacking = Arc::new(AtomicBool::new(true));
    let honest: Vec<_> = (0..100)
        .map(|i| {
            let mut client = g.client(&format!("honest{i}"));
            let attacking = attacking.clone();
            std::thread::spawn(move || {
                let mut echoes = 0;
                while attacking.load(Ordering::Relaxed) || echoes < 3 {
                    client.check_echo("during the attack");
                    echoes += 1;
                }
                echoes
            })
        })
        .collect();

    // Each attacker sends the header of a 1 MiB binary frame and half of its payload, then waits.
    let mask = [1, 2, 3, 4];
    let payload = vec![0x5a_u8; SENT];
    let mut attack = frame_header(true, 0, OP_BINARY, DECLARED, Some(mask));
    attack.extend_from_slice(&payload);
    let attack = Arc::new(attack);
    let (addr, target) = (g.addr(), g.target("attacker"));
    let threads: Vec<_> = (0..20)
        .map(|_| {
            let attack = attack.clone();
            let target = target.clone();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for _ in 0..ATTACKERS / 20 {
                    let mut s = raw_upgrade_path(addr, &target, &[]).0;
                    // A connection that is cut meanwhile fails its writes: that is the defence.
                    let _ = s.write_all(&attack);
                    held.push(s);
                }
                held
            })
        })
        .collect();
    let attackers: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let stats = g.wait_stats("every attacker read or cut", Duration::from_secs(30), |s| {
        s.counter("upgraded") as usize >= ATTACKERS + 100
    });
    let grown = rss_bytes(g.proc.pid()).saturating_sub(baseline);
    attacking.store(false, Ordering::Relaxed);
    for t in honest {
        assert!(t.join().expect("an honest client failed") >= 3);
    }
    let cut = stats.counter("inflight_closes") as usize;
    eprintln!(
        "attack: {cut} of {ATTACKERS} attackers cut, resident memory grew by {} KiB",
        grown >> 10
    );
    assert!(
        cut > ATTACKERS / 2,
        "only {cut} attackers were cut: {stats}"
    );
    // What the attack may hold: the budget of each worker, one read beyond it, and the allocator's
    // and the connections' own share (about a kilobyte each).
    let allowed = WORKERS * (BUDGET + (64 << 10)) + (ATTACKERS + 100) * 4096 + (16 << 20);
    assert!(
        grown < allowed,
        "resident memory grew by {} MiB under the attack (allowed {} MiB)",
        grown >> 20,
        allowed >> 20
    );
    // A cut attacker was told why.
    let mut told = 0;
    for mut s in attackers.into_iter().take(200) {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if let Ok(f) = try_read_frame(&mut s) {
            if f.close() == Some((1008, "too much data in flight".to_string())) {
                told += 1;
            }
        }
    }
    assert!(told > 0, "no attacker saw the 1008 close");
}

#[test]
fn a_message_trickling_in_slower_than_min_receive_rate_is_cut() {
    // The default ping interval (far longer than the grace): the rule does not wait for pings.
    let g = Launch::demo()
        .config("min_receive_rate = 1024\nreceive_grace = \"1s\"\n")
        .start();
    let mut slow = raw_upgrade_path(g.addr(), &g.target("slow"), &[]).0;
    let mut start = frame_header(true, 0, OP_BINARY, 100_000, Some([9, 9, 9, 9]));
    start.extend_from_slice(&[0u8; 100]);
    slow.write_all(&start).unwrap();
    // A neighbour that completes its messages is never cut.
    let mut quick = g.client("quick");
    quick.check_echo("beside a slow message");
    let close = expect_close(&mut slow, 1008);
    assert_eq!(close.close(), Some((1008, "message too slow".to_string())));
    quick.check_echo("after");
    assert_eq!(g.stats().counter("slow_message_closes"), 1);
}

#[test]
fn under_pressure_the_biggest_holder_is_held_back_and_the_slowest_are_cut() {
    const LIMIT: usize = 4 << 20;
    const QUIET: usize = 8;
    const PART: usize = 400 << 10;
    const UPLOAD: usize = 1 << 20;
    let g = Launch::demo()
        .args(&[
            "--workers",
            "1",
            "--max-message-size",
            &(2 * UPLOAD).to_string(),
        ])
        .config(&format!(
            "max_inflight_bytes = {LIMIT}\none_session_per_user = \"allow\"\n"
        ))
        .start();
    // Eight clients each send 400 KiB of a 1 MiB message and go quiet: 3.2 MiB held, past the
    // three quarters of the budget where the core starts holding back.
    let mut quiet: Vec<_> = (0..QUIET)
        .map(|_| {
            let mut s = raw_upgrade_path(g.addr(), &g.target("quiet"), &[]).0;
            let mut start = frame_header(true, 0, OP_BINARY, DECLARED, Some([7, 7, 7, 7]));
            start.extend_from_slice(&vec![0u8; PART]);
            s.write_all(&start).unwrap();
            s
        })
        .collect();
    g.wait_stats(
        "the quiet clients' parts held",
        Duration::from_secs(10),
        |s| s.inflight_bytes() as usize >= QUIET * PART,
    );
    // A ninth streams a whole 1 MiB message, faster than any of them: it holds the most, so it
    // is held back rather than read on past the budget, and then it is not the one cut.
    let payload = binary_of_len(UPLOAD);
    let upload = frame_bytes(true, 0, OP_BINARY, &payload, true);
    let mut uploader = raw_upgrade_path(g.addr(), &g.target("uploader"), &[]).0;
    let mut writer = uploader.try_clone().unwrap();
    let sending = std::thread::spawn(move || writer.write_all(&upload));
    g.wait_stats("the uploader held back", Duration::from_secs(10), |s| {
        s.counter("inflight_pauses") >= 1
    });
    // Within a heartbeat the slowest holders are cut, the core drops under half its budget and
    // the uploader's message completes.
    uploader
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (op, echoed) = read_message(&mut uploader);
    assert_eq!(op, OP_BINARY);
    assert!(echoed == payload, "the uploader's echo differs");
    sending.join().unwrap().unwrap();
    let stats = g.stats();
    let cut = stats.counter("inflight_closes") as usize;
    assert!(
        (1..QUIET).contains(&cut),
        "{cut} cut: some quiet clients, and only as many as bring the core under half: {stats}"
    );
    let mut told = 0;
    for s in &mut quiet {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        if let Ok(f) = try_read_frame(s) {
            assert_eq!(
                f.close(),
                Some((1008, "too much data in flight".to_string()))
            );
            told += 1;
        }
    }
    assert_eq!(
        told, cut,
        "every cut client, and only those, saw the 1008 close"
    );
}
