//! The final report: human text on stdout, every number as JSON (`--json`), and a chart of
//! throughput and p99 latency over time as SVG (`--plot`).

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::run::{micros, thousands, Outcome, Point};
use crate::stats::{Percentiles, Snapshot};
use crate::worker::Mode;

/// What was asked for, as shown in the report header and the JSON `config`.
pub struct Described {
    pub mode: Mode,
    pub url: String,
    pub config: Value,
    pub headline: String,
    /// Fan-out: what the publishing side did.
    pub fanout: Option<FanoutSummary>,
}

/// What the fan-out publishing side (the game server, or the peer's publisher) did.
#[derive(Clone, Debug, Default)]
pub struct FanoutSummary {
    /// ringgate mode (the harness is the game server), else peer mode.
    pub ringgate: bool,
    pub rooms: u32,
    pub broadcast: bool,
    pub policy: &'static str,
    /// Messages per second per stream.
    pub rate: f64,
    /// Messages published (one per stream per tick) and the frames that carried them.
    pub published: u64,
    pub frames: u64,
    /// Bytes the publishing side wrote (frames included) and the most waiting on one connection.
    pub bytes: u64,
    pub backlog_peak: u64,
    /// Publish events the publishing side got to more than an interval late.
    pub late: u64,
    /// ringgate mode: links up at the end and the instances seen, sessions opened, JOINs sent,
    /// OPENs refused for naming no room.
    pub links: u64,
    pub instances: Vec<String>,
    pub opens: u64,
    pub joins: u64,
    pub refused: u64,
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn pct_json(p: &Percentiles) -> Value {
    json!({
        "count": p.count, "mean": (p.mean * 10.0).round() / 10.0, "p50": p.p50, "p90": p.p90,
        "p99": p.p99, "p99_9": p.p99_9, "max": p.max,
    })
}

fn pct_line(p: &Percentiles) -> String {
    if p.count == 0 {
        return "no samples".into();
    }
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, {} samples)",
        micros(p.p50),
        micros(p.p90),
        micros(p.p99),
        micros(p.p99_9),
        micros(p.max),
        micros(p.mean.round() as u64),
        thousands(p.count)
    )
}

/// The latency of the echoes sent in the window: those answered in it and in the drain.
fn rtt_all(o: &Outcome) -> Percentiles {
    let mut h = o.window.rtt.clone();
    h.add(&o.tail.rtt);
    h.summary()
}

/// Upgrade latency over the whole run (setup and window).
fn handshake_all(o: &Outcome) -> Percentiles {
    let mut h = o.setup.handshake.clone();
    h.add(&o.window.handshake);
    h.add(&o.tail.handshake);
    h.summary()
}

/// TCP connect latency over the whole run.
fn tcp_connect_all(o: &Outcome) -> Percentiles {
    let mut h = o.setup.tcp_connect.clone();
    h.add(&o.window.tcp_connect);
    h.add(&o.tail.tcp_connect);
    h.summary()
}

/// Upgrade latency over the whole run, and the TCP connect part of it.
fn upgrade_line(o: &Outcome) -> String {
    format!(
        "upgrade       {}{}\n",
        pct_line(&handshake_all(o)),
        tcp_line(&tcp_connect_all(o))
    )
}

fn tcp_line(p: &Percentiles) -> String {
    if p.count == 0 {
        return String::new();
    }
    format!(
        "\n  of which TCP connect p50 {}  p99 {}  max {}",
        micros(p.p50),
        micros(p.p99),
        micros(p.max)
    )
}

pub fn total_errors(o: &Outcome) -> crate::stats::Errors {
    let mut e = o.setup.counters.errors.clone();
    e.add(&o.window.counters.errors);
    e.add(&o.tail.counters.errors);
    e
}

pub fn text(d: &Described, o: &Outcome) -> String {
    let mut out = String::new();
    let w = &o.window.counters;
    let secs = o.window_secs;
    let _ = writeln!(out, "ringgate-load {}: {}", d.mode.name(), d.url);
    let _ = writeln!(out, "  {}", d.headline);
    if o.interrupted {
        let _ = writeln!(out, "  (interrupted: the window was cut short)");
    }
    if d.mode.connects_in_setup() {
        let s = &o.setup.counters;
        let _ = writeln!(
            out,
            "setup         {} of {} connections open in {:.2} s: {} connects+upgrades/s",
            thousands(o.setup.open),
            thousands(s.connect_attempts),
            o.setup_secs,
            thousands(rate(s.connects, o.setup_secs) as u64)
        );
        let _ = writeln!(
            out,
            "upgrade       {}",
            pct_line(&o.setup.handshake.summary())
        );
    }
    match d.mode {
        Mode::Fanout => fanout_text(&mut out, d, o),
        Mode::Echo | Mode::Churn => {
            if d.mode == Mode::Churn {
                let _ = writeln!(
                    out,
                    "connects      {} in {:.2} s = {}/s; {} closed cleanly ({}/s); {} open at the end",
                    thousands(w.connects),
                    secs,
                    thousands(rate(w.connects, secs) as u64),
                    thousands(w.closes),
                    thousands(rate(w.closes, secs) as u64),
                    thousands(o.window.open)
                );
                out.push_str(&upgrade_line(o));
            }
            let _ = writeln!(
                out,
                "round trips   {} in {:.2} s = {}/s  ({} messages sent)",
                thousands(w.round_trips),
                secs,
                thousands(rate(w.round_trips, secs) as u64),
                thousands(w.msgs_sent)
            );
            let _ = writeln!(
                out,
                "payload       {:.2} MB/s sent, {:.2} MB/s received",
                rate(w.bytes_sent, secs) / 1e6,
                rate(w.bytes_recv, secs) / 1e6
            );
            let _ = writeln!(out, "latency       {}", pct_line(&rtt_all(o)));
            if w.skipped > 0 {
                let _ = writeln!(
                    out,
                    "skipped       {} open-loop sends (a connection had --depth messages in flight)",
                    thousands(w.skipped)
                );
            }
        }
        Mode::Handshake => {
            let _ = writeln!(
                out,
                "upgrades      {} in {:.2} s = {}/s  ({} connect+upgrade+close cycles completed)",
                thousands(w.connects),
                secs,
                thousands(rate(w.connects, secs) as u64),
                thousands(w.closes)
            );
            out.push_str(&upgrade_line(o));
        }
        Mode::Idle => {
            let _ = writeln!(
                out,
                "held          {:.1} s; {} open at the end",
                secs,
                thousands(o.window.open)
            );
        }
    }
    if let Some(r) = &o.rss {
        let per = per_conn_bytes(d.mode, o);
        let _ = writeln!(
            out,
            "target VmRSS  {} KiB before, {} KiB after connecting, {} KiB at the end{}",
            thousands(r.before_kib),
            thousands(r.after_connect_kib),
            thousands(r.end_kib),
            match per {
                Some(b) => format!(": {b:.0} bytes per open connection"),
                None => String::new(),
            }
        );
    }
    if let Some(f) = &o.failure {
        let _ = writeln!(out, "FAILED        {f}");
    }
    let e = total_errors(o);
    let _ = writeln!(out, "errors        {}", e.describe());
    let close_codes = merged_close_codes(o);
    if !close_codes.is_empty() {
        let codes: Vec<String> = close_codes
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(out, "server closes by code  {}", codes.join(", "));
    }
    let t = &o.tail.counters;
    if t.close_timeouts + w.close_timeouts > 0 {
        let _ = writeln!(
            out,
            "close         {} close handshakes did not finish in time (reset)",
            t.close_timeouts + w.close_timeouts
        );
    }
    let _ = write!(
        out,
        "cpu           harness {:.2} cores",
        o.window_cores.harness
    );
    if let Some(tc) = o.window_cores.target {
        let _ = write!(out, ", target {tc:.2} cores");
        if let Some(per) = target_us_per_op(d.mode, o) {
            let _ = write!(
                out,
                " ({per:.2} us of target CPU per {}",
                primary_unit(d.mode)
            );
            if let Some(k) = target_kernel_us_per_op(d.mode, o) {
                let _ = write!(out, ", {k:.2} of it in the kernel");
            }
            out.push(')');
        }
    }
    let _ = writeln!(
        out,
        ", whole machine {:.2} of {} cores, over the window",
        o.window_cores.machine,
        crate::net::cpu_count()
    );
    out
}

fn fanout_text(out: &mut String, d: &Described, o: &Outcome) {
    let w = &o.window.counters;
    let secs = o.window_secs;
    let all = all_counters(o);
    if let Some(f) = &d.fanout {
        if f.ringgate {
            let _ = writeln!(
                out,
                "game server   {} link(s) up at the end ({}); {} sessions opened, {} JOINs (policy {}) each followed by \"joined\"{}",
                f.links,
                if f.instances.is_empty() {
                    "no instance".to_string()
                } else {
                    f.instances.join(", ")
                },
                thousands(f.opens),
                thousands(f.joins),
                f.policy,
                if f.refused > 0 {
                    format!(", {} OPENs refused (no room in the target)", f.refused)
                } else {
                    String::new()
                }
            );
        }
        let _ = writeln!(
            out,
            "published     {} messages ({}) in {} {} frames, {:.2} MB{}",
            thousands(f.published),
            if f.broadcast {
                format!("{} per s to everyone", f.rate)
            } else {
                format!(
                    "{} per s per room, {} room{}",
                    f.rate,
                    f.rooms,
                    if f.rooms == 1 { "" } else { "s" }
                )
            },
            thousands(f.frames),
            match (f.ringgate, f.broadcast) {
                (true, true) => "BROADCAST",
                (true, false) => "PUBLISH",
                (false, _) => "WebSocket",
            },
            f.bytes as f64 / 1e6,
            if f.late > 0 {
                format!(
                    "; {} published more than an interval late",
                    thousands(f.late)
                )
            } else {
                String::new()
            }
        );
        if f.backlog_peak > 64 << 10 {
            let _ = writeln!(
                out,
                "              up to {} KiB waited in one connection's send buffer",
                thousands(f.backlog_peak / 1024)
            );
        }
    }
    let _ = writeln!(
        out,
        "joined        {} clients told \"joined\"",
        thousands(all.joined)
    );
    let _ = writeln!(
        out,
        "delivered     {} in {:.2} s = {}/s; in all {} of {} owed to the members open at the end{}",
        thousands(w.delivered),
        secs,
        thousands(rate(w.delivered, secs) as u64),
        thousands(all.delivered),
        thousands(all.expected),
        if all.missing > 0 {
            format!(
                "; {} left out (allowed by policy {})",
                thousands(all.missing),
                d.fanout.as_ref().map_or("?", |f| f.policy)
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "payload       {:.2} MB/s received",
        rate(w.bytes_recv, secs) / 1e6
    );
    let _ = writeln!(
        out,
        "latency       publish to receipt: {}",
        pct_line(&rtt_all(o))
    );
}

/// Every phase's counters added up.
fn all_counters(o: &Outcome) -> crate::stats::Counters {
    let mut c = o.setup.counters.clone();
    c.add(&o.window.counters);
    c.add(&o.tail.counters);
    c
}

/// Target CPU time per round trip (echo, churn) or per upgrade (handshake), in microseconds.
fn target_us_per_op(mode: Mode, o: &Outcome) -> Option<f64> {
    us_per_op(mode, o, o.window_cores.target?)
}

/// The kernel's part of [`target_us_per_op`].
fn target_kernel_us_per_op(mode: Mode, o: &Outcome) -> Option<f64> {
    us_per_op(mode, o, o.window_cores.target_kernel?)
}

fn us_per_op(mode: Mode, o: &Outcome, cores: f64) -> Option<f64> {
    let n = primary_count(mode, &o.window.counters);
    (n > 0).then(|| cores * o.window_secs * 1e6 / n as f64)
}

fn merged_close_codes(o: &Outcome) -> std::collections::BTreeMap<u16, u64> {
    let mut m = o.setup.counters.close_codes.clone();
    for s in [&o.window, &o.tail] {
        for (k, v) in &s.counters.close_codes {
            *m.entry(*k).or_default() += v;
        }
    }
    m
}

/// Growth of the target's memory per open connection: meaningful for idle connections only.
fn per_conn_bytes(mode: Mode, o: &Outcome) -> Option<f64> {
    if mode != Mode::Idle {
        return None;
    }
    let r = o.rss.as_ref()?;
    let open = o.window.open.max(o.setup.open);
    if open == 0 || r.end_kib == 0 {
        return None;
    }
    Some((r.end_kib as f64 - r.before_kib as f64) * 1024.0 / open as f64)
}

fn primary_count(mode: Mode, c: &crate::stats::Counters) -> u64 {
    match mode {
        Mode::Echo | Mode::Churn => c.round_trips,
        Mode::Handshake => c.connects,
        Mode::Fanout => c.delivered,
        Mode::Idle => 0,
    }
}

fn primary_unit(mode: Mode) -> &'static str {
    match mode {
        Mode::Echo | Mode::Churn => "round trip",
        Mode::Fanout => "delivered message",
        _ => "upgrade",
    }
}

fn phase_json(s: &Snapshot, secs: f64) -> Value {
    let c = &s.counters;
    json!({
        "seconds": secs,
        "connect_attempts": c.connect_attempts,
        "connects": c.connects,
        "connects_per_sec": rate(c.connects, secs),
        "closes": c.closes,
        "close_timeouts": c.close_timeouts,
        "msgs_sent": c.msgs_sent,
        "round_trips": c.round_trips,
        "round_trips_per_sec": rate(c.round_trips, secs),
        "bytes_sent": c.bytes_sent,
        "bytes_recv": c.bytes_recv,
        "bytes_sent_per_sec": rate(c.bytes_sent, secs),
        "bytes_recv_per_sec": rate(c.bytes_recv, secs),
        "skipped": c.skipped,
        "joined": c.joined,
        "delivered": c.delivered,
        "delivered_per_sec": rate(c.delivered, secs),
        "missing": c.missing,
        "expected": c.expected,
        "open_at_end": s.open,
        "errors": c.errors,
        "close_codes": c.close_codes,
        "latency_us": pct_json(&s.rtt.summary()),
        "handshake_latency_us": pct_json(&s.handshake.summary()),
        "tcp_connect_latency_us": pct_json(&s.tcp_connect.summary()),
    })
}

pub fn json(d: &Described, o: &Outcome) -> Value {
    json!({
        "mode": d.mode.name(),
        "url": d.url,
        "config": d.config,
        "interrupted": o.interrupted,
        "setup": phase_json(&o.setup, o.setup_secs),
        "window": phase_json(&o.window, o.window_secs),
        "after_window": phase_json(&o.tail, 0.0),
        "latency_us": pct_json(&rtt_all(o)),
        "handshake_latency_us": pct_json(&handshake_all(o)),
        "tcp_connect_latency_us": pct_json(&tcp_connect_all(o)),
        "errors": total_errors(o),
        "errors_total": total_errors(o).total(),
        "close_codes": merged_close_codes(o),
        "open_at_start": o.open_at_start,
        "failure": o.failure,
        "fanout": d.fanout.as_ref().map(|f| {
            let all = all_counters(o);
            json!({
                "mode": if f.ringgate { "ringgate" } else { "peer" },
                "rooms": f.rooms,
                "broadcast": f.broadcast,
                "policy": f.policy,
                "rate_per_stream": f.rate,
                "published": f.published,
                "frames": f.frames,
                "bytes_written": f.bytes,
                "backlog_peak_bytes": f.backlog_peak,
                "late": f.late,
                "links": f.links,
                "instances": f.instances,
                "opens": f.opens,
                "joins": f.joins,
                "refused": f.refused,
                "joined": all.joined,
                "delivered": all.delivered,
                "expected": all.expected,
                "missing": all.missing,
            })
        }),
        "cpu": {
            "harness_cores": o.window_cores.harness,
            "target_cores": o.window_cores.target,
            "machine_cores": o.window_cores.machine,
            "machine_cpus": crate::net::cpu_count(),
            "target_us_per_op": target_us_per_op(d.mode, o),
            "target_kernel_us_per_op": target_kernel_us_per_op(d.mode, o),
        },
        "memory": o.rss.as_ref().map(|r| json!({
            "before_kib": r.before_kib,
            "after_connect_kib": r.after_connect_kib,
            "end_kib": r.end_kib,
            "bytes_per_connection": per_conn_bytes(d.mode, o),
        })),
        "series": o.series,
    })
}

/// The chart: the primary rate (round trips/s, upgrades/s or connections open) on the left axis,
/// p99 latency on the right, one point per second.
pub fn svg(d: &Described, o: &Outcome) -> String {
    let (rate_label, rates): (&str, Vec<f64>) = match d.mode {
        Mode::Fanout => (
            "delivered/s",
            o.series
                .iter()
                .map(|p| p.delivered as f64 / p.secs.max(1e-3))
                .collect(),
        ),
        Mode::Echo | Mode::Churn => (
            "round trips/s",
            o.series
                .iter()
                .map(|p| p.round_trips as f64 / p.secs.max(1e-3))
                .collect(),
        ),
        Mode::Handshake => (
            "upgrades/s",
            o.series
                .iter()
                .map(|p| p.connects as f64 / p.secs.max(1e-3))
                .collect(),
        ),
        Mode::Idle => (
            "connections open",
            o.series.iter().map(|p| p.open as f64).collect(),
        ),
    };
    let lat_of = |p: &Point| match d.mode {
        Mode::Echo | Mode::Churn | Mode::Fanout => p.p99_us,
        _ => p.handshake_p99_us,
    } as f64;
    let lat_label = match d.mode {
        Mode::Echo | Mode::Churn => "p99 round trip (us)",
        Mode::Fanout => "p99 publish to receipt (us)",
        _ => "p99 upgrade (us)",
    };
    let lats: Vec<f64> = o.series.iter().map(lat_of).collect();
    let ts: Vec<f64> = o.series.iter().map(|p| p.t).collect();
    let title = format!(
        "ringgate-load {} - {} - {}",
        d.mode.name(),
        d.url,
        d.headline
    );
    chart(&title, &ts, rate_label, &rates, lat_label, &lats)
}

/// A round axis maximum and its tick step for data up to `max`.
fn nice_axis(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 0.25);
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn chart(
    title: &str,
    ts: &[f64],
    left_label: &str,
    left: &[f64],
    right_label: &str,
    right: &[f64],
) -> String {
    let (w, h) = (960.0, 480.0);
    let (x0, x1, y0, y1) = (80.0, w - 90.0, h - 60.0, 50.0);
    // Points come a few ms after each whole second: round those down.
    let tmax = (ts.iter().cloned().fold(1.0, f64::max) - 0.1)
        .ceil()
        .max(1.0);
    let (lmax, lstep) = nice_axis(left.iter().cloned().fold(0.0, f64::max));
    let (rmax, rstep) = nice_axis(right.iter().cloned().fold(0.0, f64::max));
    let sx = |t: f64| x0 + (x1 - x0) * t / tmax;
    let sy = |v: f64, max: f64| y0 - (y0 - y1) * v / max;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="14">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    // Grid and left axis ticks.
    let mut v = 0.0;
    while v <= lmax + lstep / 2.0 {
        let y = sy(v, lmax);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" text-anchor="end" fill="#1f5fbf">{}</text>"##,
            x0 - 6.0,
            y + 4.0,
            short(v)
        );
        v += lstep;
    }
    let mut v = 0.0;
    while v <= rmax + rstep / 2.0 {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{:.1}" fill="#c0392b">{}</text>"##,
            x1 + 6.0,
            sy(v, rmax) + 4.0,
            short(v)
        );
        v += rstep;
    }
    // Time axis.
    let (_, tstep) = nice_axis(tmax);
    let mut t = 0.0;
    while t <= tmax + 1e-9 {
        let x = sx(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{}" stroke="#888"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            y0 + 5.0,
            y0 + 18.0,
            short(t)
        );
        t += tstep.max(1.0);
    }
    let _ = writeln!(
        s,
        r##"<rect x="{x0}" y="{y1}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        x1 - x0,
        y0 - y1
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds</text>"#,
        (x0 + x1) / 2.0,
        h - 22.0
    );
    let _ = writeln!(
        s,
        r##"<text transform="translate(18,{}) rotate(-90)" text-anchor="middle" fill="#1f5fbf">{}</text>"##,
        (y0 + y1) / 2.0,
        esc(left_label)
    );
    let _ = writeln!(
        s,
        r##"<text transform="translate({},{}) rotate(90)" text-anchor="middle" fill="#c0392b">{}</text>"##,
        w - 18.0,
        (y0 + y1) / 2.0,
        esc(right_label)
    );
    for (vals, max, color) in [(left, lmax, "#1f5fbf"), (right, rmax, "#c0392b")] {
        let pts: Vec<String> = ts
            .iter()
            .zip(vals)
            .map(|(t, v)| format!("{:.1},{:.1}", sx(*t), sy(*v, max)))
            .collect();
        if !pts.is_empty() {
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                pts.join(" ")
            );
            for p in &pts {
                let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="2.5" fill="{color}"/>"#);
            }
        }
    }
    // Legend.
    let _ = writeln!(
        s,
        r##"<line x1="{}" y1="40" x2="{}" y2="40" stroke="#1f5fbf" stroke-width="2"/><text x="{}" y="44">{}</text>"##,
        x0 + 10.0,
        x0 + 30.0,
        x0 + 35.0,
        esc(left_label)
    );
    let _ = writeln!(
        s,
        r##"<line x1="{}" y1="40" x2="{}" y2="40" stroke="#c0392b" stroke-width="2"/><text x="{}" y="44">{}</text>"##,
        x0 + 210.0,
        x0 + 230.0,
        x0 + 235.0,
        esc(right_label)
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axes() {
        assert_eq!(nice_axis(0.0), (1.0, 0.25));
        assert_eq!(nice_axis(10.0), (10.0, 2.0));
        assert_eq!(nice_axis(152_340.0), (200_000.0, 50_000.0));
        assert_eq!(nice_axis(7.0), (8.0, 2.0));
        let (max, step) = nice_axis(412.0);
        assert!(max >= 412.0 && step > 0.0 && (max / step) <= 6.0);
    }

    #[test]
    fn chart_is_svg_with_two_series() {
        let ts = [1.0, 2.0, 3.0];
        let s = chart(
            "a <b> & c",
            &ts,
            "rt/s",
            &[100.0, 200.0, 150.0],
            "p99",
            &[10.0, 30.0, 20.0],
        );
        assert!(s.starts_with("<svg"));
        assert!(s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("a &lt;b&gt; &amp; c"));
        // An empty series still makes a valid (empty) chart.
        let e = chart("empty", &[], "x", &[], "y", &[]);
        assert!(e.contains("</svg>") && !e.contains("<polyline"));
    }
}
