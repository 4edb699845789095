//! ringgate-load: a WebSocket load generator for ringgate and its comparison peers, efficient
//! enough not to be the bottleneck on the same machine. See docs/loadtest.md.
//!
//! Thread-per-core like ringgate itself: each worker thread owns an epoll instance and its share of
//! the connections as explicit state machines over nonblocking sockets. `--procs P` re-executes the
//! binary as P worker processes (the open-files limit is per process) that report to this one over
//! pipes as JSON. The fan-out workload adds a thread that publishes (`hub`): ringgate's game
//! server, or a publisher WebSocket to a comparison server.

mod control;
mod fanout;
mod frame;
mod hub;
mod net;
mod payload;
mod report;
mod run;
mod stats;
mod target;
mod worker;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use control::{Controller, Fleet};
use fanout::Policy;
use hub::Hub;
use report::{Described, FanoutSummary};
use run::{Hooks, NoHooks, Settings};
use target::Target;
use worker::{Assignment, FanoutPlan, Mode, Plan};

#[derive(Parser)]
#[command(
    name = "ringgate-load",
    version,
    about = "WebSocket load generator: echo, idle, handshake, churn and fan-out workloads over loopback"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(Subcommand)]
enum Sub {
    /// N clients echoing messages: D in flight each (closed loop) or a fixed total rate (open loop).
    Echo(EchoArgs),
    /// Open N connections and hold them; with --pid, the target's memory per connection.
    Idle(IdleArgs),
    /// Connect, upgrade, close, in a loop on C concurrent workers.
    Handshake(HandshakeArgs),
    /// Steady connects and disconnects, each connection exchanging messages while it lives.
    Churn(ChurnArgs),
    /// N clients in G rooms receiving what is published to their room at R messages/s per room;
    /// ringgate fans out (the harness is its game server) or a comparison peer does (--peer).
    Fanout(FanoutArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// Target, ws://HOST[:PORT]/PATH[?QUERY]; HOST must be loopback unless --allow-remote.
    #[arg(long)]
    url: String,
    /// Query appended per connection; `{i}` = connection index, `{p}` = process index.
    #[arg(long)]
    query: Option<String>,
    /// Header added to every upgrade request, as 'NAME: VALUE' (repeatable); `{i}` and `{p}` are
    /// expanded in the value as in --query.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Worker processes (each opens its share of the connections; the open-files limit is per
    /// process).
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Worker threads per process [default: the number of CPUs divided by --procs, at least 1].
    #[arg(long)]
    threads: Option<usize>,
    /// Write every number of the report to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw throughput and p99 latency over time to FILE (SVG).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Target processes (repeatable, or comma-separated): their CPU time over the window, and
    /// their VmRSS (summed).
    #[arg(long = "pid", value_name = "PID", value_delimiter = ',')]
    pids: Vec<u32>,
    /// Connections per source address (127.0.0.2, 127.0.0.3, ...).
    #[arg(long, default_value_t = 20_000)]
    per_source: u64,
    /// Do not bind a source address: let the kernel pick (one port range in all).
    #[arg(long)]
    no_bind: bool,
    /// Seconds a connect plus upgrade may take.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Seconds an echo may take before it counts as a timeout (and its connection is dropped).
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Seconds to wait at the end for the echoes still in flight.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Seconds a close handshake may take before the connection is reset.
    #[arg(long, default_value_t = 3.0)]
    close_timeout: f64,
    /// Seconds the setup (opening the connections) may take in all.
    #[arg(long, default_value_t = 120.0)]
    setup_timeout: f64,
    /// Connects and upgrades in progress at once, over all threads and processes.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
    /// Target a host outside 127.0.0.0/8, ::1 and localhost.
    #[arg(long)]
    allow_remote: bool,
    /// Internal: run as worker process N of --procs.
    #[arg(long, hide = true)]
    child_index: Option<usize>,
}

#[derive(Args)]
struct EchoArgs {
    #[command(flatten)]
    common: Common,
    /// Connections.
    #[arg(long, default_value_t = 100)]
    conns: u64,
    /// Payload bytes per message (at least 16; 32 with --text).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages in flight per connection (closed loop); with --rate, the cap per connection.
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Open loop: messages per second over all connections.
    #[arg(long)]
    rate: Option<f64>,
    /// Text messages (ASCII) instead of binary.
    #[arg(long)]
    text: bool,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Connections.
    #[arg(long, default_value_t = 1000)]
    conns: u64,
    /// Seconds to hold the connections once open.
    #[arg(long, default_value_t = 5)]
    hold: u64,
    /// Connections opened (and held) before the target's memory is first read, so that its
    /// start-up allocations (buffers made on the first connection) are in the baseline.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
}

#[derive(Args)]
struct HandshakeArgs {
    #[command(flatten)]
    common: Common,
    /// Concurrent workers, each looping connect, upgrade, close.
    #[arg(long, default_value_t = 64)]
    workers: u64,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10)]
    duration: u64,
}

#[derive(Args)]
struct ChurnArgs {
    #[command(flatten)]
    common: Common,
    /// Connections alive at a time (slots, each reconnecting when its connection ends).
    #[arg(long, default_value_t = 100)]
    conns: u64,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Mean lifetime of a connection in milliseconds (each is drawn from 0.5x to 1.5x).
    #[arg(long, default_value_t = 1000)]
    lifetime_ms: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages in flight per connection while it lives.
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Text messages instead of binary.
    #[arg(long)]
    text: bool,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Clients; client i is a member of room i % --rooms.
    #[arg(long, default_value_t = 100)]
    clients: u64,
    /// Rooms.
    #[arg(long, default_value_t = 1)]
    rooms: u32,
    /// Message size in bytes (at least 20: room, sequence number, timestamp).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages published per second per room (with --broadcast: broadcasts per second).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Seconds of publishing: the measured window.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// What every member must receive: close = each message of its room exactly once, in order;
    /// drop = a strictly increasing subsequence (the left-out ones counted); latest = drop, ending
    /// with the last message published. In ringgate mode also the policy the JOINs name.
    #[arg(long, value_enum, default_value_t = Policy::Close)]
    policy: Policy,
    /// Publish to everyone instead of to rooms: one BROADCAST per link per tick (peer mode: one
    /// message to room 0xFFFFFFFF).
    #[arg(long)]
    broadcast: bool,
    /// Peer mode: the server at --url fans out itself (clients connect with ?room=G, the harness
    /// publishes over one more WebSocket with ?publish=1; bench/peers/README.md).
    #[arg(long, conflicts_with = "upstream_listen")]
    peer: bool,
    /// ringgate mode: be ringgate's game server, listening on ADDR for its links (port 0: a free
    /// one). The address is printed first on stdout; with `--url -` the URL is then read from
    /// stdin, to be given once ringgate is up.
    #[arg(long, value_name = "ADDR", required_unless_present = "peer")]
    upstream_listen: Option<String>,
    /// After a wake-up that found fewer than 64 connections ready, wait this many microseconds
    /// before the next: fewer wake-ups, less harness CPU per message, and up to this much added to
    /// the measured latency (0: never wait).
    #[arg(long, default_value_t = 0)]
    coalesce_us: u64,
}

/// The fan-out part of a [`Job`].
struct FanoutJob {
    coalesce_us: u64,
    rooms: u32,
    rate: f64,
    policy: Policy,
    broadcast: bool,
    upstream_listen: Option<String>,
}

struct Job {
    mode: Mode,
    common: Common,
    items: u64,
    size: usize,
    depth: usize,
    text: bool,
    rate: Option<f64>,
    window: u64,
    lifetime_ms: u64,
    warmup: u64,
    headline: String,
    config: serde_json::Value,
    fanout: Option<FanoutJob>,
}

fn secs(s: f64) -> u64 {
    (s.max(0.0) * 1e9) as u64
}

fn job(cli: Cli) -> Job {
    match cli.cmd {
        Sub::Echo(a) => Job {
            mode: Mode::Echo,
            items: a.conns,
            size: a.size,
            depth: a.depth,
            text: a.text,
            rate: a.rate,
            window: a.duration,
            lifetime_ms: 0,
            warmup: 0,
            headline: format!(
                "{} connections, {}-byte {} messages, {}; {} s",
                a.conns,
                a.size,
                if a.text { "text" } else { "binary" },
                match a.rate {
                    Some(r) => format!(
                        "open loop at {r} msgs/s (at most {} in flight each)",
                        a.depth
                    ),
                    None => format!("closed loop, {} in flight each", a.depth),
                },
                a.duration
            ),
            config: json!({"conns": a.conns, "size": a.size, "depth": a.depth, "duration": a.duration,
                "rate": a.rate, "text": a.text}),
            common: a.common,
            fanout: None,
        },
        Sub::Idle(a) => Job {
            mode: Mode::Idle,
            items: a.conns,
            size: 64,
            depth: 1,
            text: false,
            rate: None,
            window: a.hold,
            lifetime_ms: 0,
            warmup: a.warmup,
            headline: format!("{} idle connections held {} s", a.conns, a.hold),
            config: json!({"conns": a.conns, "hold": a.hold, "warmup": a.warmup}),
            common: a.common,
            fanout: None,
        },
        Sub::Handshake(a) => Job {
            mode: Mode::Handshake,
            items: a.workers,
            size: 64,
            depth: 1,
            text: false,
            rate: None,
            window: a.duration,
            lifetime_ms: 0,
            warmup: 0,
            headline: format!(
                "{} workers looping connect, upgrade, close; {} s",
                a.workers, a.duration
            ),
            config: json!({"workers": a.workers, "duration": a.duration}),
            common: a.common,
            fanout: None,
        },
        Sub::Churn(a) => Job {
            mode: Mode::Churn,
            items: a.conns,
            size: a.size,
            depth: a.depth,
            text: a.text,
            rate: None,
            window: a.duration,
            lifetime_ms: a.lifetime_ms,
            warmup: 0,
            headline: format!(
                "{} connections living ~{} ms each, {}-byte {} messages, {} in flight; {} s",
                a.conns,
                a.lifetime_ms,
                a.size,
                if a.text { "text" } else { "binary" },
                a.depth,
                a.duration
            ),
            config: json!({"conns": a.conns, "duration": a.duration, "lifetime_ms": a.lifetime_ms,
                "size": a.size, "depth": a.depth, "text": a.text}),
            common: a.common,
            fanout: None,
        },
        Sub::Fanout(a) => Job {
            mode: Mode::Fanout,
            items: a.clients,
            size: a.size,
            depth: 1,
            text: false,
            rate: None,
            window: a.duration,
            lifetime_ms: 0,
            warmup: 0,
            headline: format!(
                "{} clients in {} room(s), {}-byte messages, {} per second per {}, policy {}, {} mode; {} s",
                a.clients,
                a.rooms,
                a.size,
                a.rate,
                if a.broadcast { "broadcast" } else { "room" },
                a.policy.name(),
                if a.peer { "peer" } else { "ringgate" },
                a.duration
            ),
            config: json!({"clients": a.clients, "rooms": a.rooms, "size": a.size, "rate": a.rate,
                "duration": a.duration, "policy": a.policy.name(), "broadcast": a.broadcast,
                "peer": a.peer, "upstream_listen": a.upstream_listen,
                "coalesce_us": a.coalesce_us}),
            common: a.common,
            fanout: Some(FanoutJob {
                coalesce_us: a.coalesce_us,
                rooms: a.rooms,
                rate: a.rate,
                policy: a.policy,
                broadcast: a.broadcast,
                upstream_listen: a.upstream_listen,
            }),
        },
    }
}

/// Splits items `0..total` over `procs` processes (contiguous ranges) and, within process `p`,
/// over `threads` threads (round robin).
fn assignments(total: u64, procs: usize, p: usize, threads: usize) -> Vec<Assignment> {
    let (procs, threads) = (procs.max(1) as u64, threads.max(1));
    let start = total * p as u64 / procs;
    let end = total * (p as u64 + 1) / procs;
    let mut out: Vec<Assignment> = (0..threads)
        .map(|t| Assignment {
            unit: t,
            items: Vec::new(),
            global_id: p as u64 * threads as u64 + t as u64,
            global_workers: procs * threads as u64,
        })
        .collect();
    for (k, i) in (start..end).enumerate() {
        out[k % threads].items.push(i);
    }
    out
}

fn validate(j: &Job) -> Result<(), String> {
    let c = &j.common;
    if c.procs == 0 || c.threads == Some(0) {
        return Err("--procs and --threads must be at least 1".into());
    }
    if j.items == 0 {
        return Err("nothing to do: zero connections or workers".into());
    }
    if matches!(j.mode, Mode::Echo | Mode::Churn) {
        let min = if j.text {
            payload::TEXT_HEAD
        } else {
            payload::BINARY_HEAD
        };
        if j.size < min {
            return Err(format!(
                "--size must be at least {min} bytes (sequence number and timestamp{})",
                if j.text { " in hex" } else { "" }
            ));
        }
        if j.depth == 0 {
            return Err("--depth must be at least 1".into());
        }
    }
    if let Some(r) = j.rate {
        if !(r > 0.0 && r.is_finite()) {
            return Err("--rate must be a positive number".into());
        }
    }
    if j.mode == Mode::Churn && j.lifetime_ms == 0 {
        return Err("--lifetime-ms must be at least 1".into());
    }
    if let Some(f) = &j.fanout {
        if c.procs != 1 {
            return Err(
                "fanout runs in one process (its publisher checks every member against its counts)"
                    .into(),
            );
        }
        if f.rooms == 0 {
            return Err("--rooms must be at least 1".into());
        }
        if j.size < fanout::HEAD {
            return Err(format!(
                "--size must be at least {} bytes (room, sequence number and timestamp)",
                fanout::HEAD
            ));
        }
        if !(f.rate > 0.0 && f.rate.is_finite()) {
            return Err("--rate must be a positive number".into());
        }
        if f.upstream_listen.is_none() && c.url == "-" {
            return Err("--url - (read from stdin) is for ringgate mode".into());
        }
    }
    for h in &c.headers {
        target::check_header_template(h)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let raw_args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let job = job(Cli::parse());
    if let Err(e) = validate(&job) {
        eprintln!("ringgate-load: {e}");
        return ExitCode::from(2);
    }
    let c = &job.common;
    let shared = Arc::new(fanout::Shared::new(match &job.fanout {
        Some(f) if !f.broadcast => f.rooms as usize,
        _ => 1,
    }));
    let hub_plan = |f: &FanoutJob| hub::HubPlan {
        rooms: f.rooms,
        broadcast: f.broadcast,
        rate: f.rate,
        size: job.size,
        policy: f.policy,
        shared: shared.clone(),
        connect_timeout: Duration::from_secs_f64(c.connect_timeout.max(0.1)),
    };
    // ringgate mode: the game server listens before anything else, so that ringgate can be started
    // against it before the harness knows ringgate's URL.
    let mut hub = None;
    if let Some(f) = &job.fanout {
        if let Some(addr) = &f.upstream_listen {
            let listener = match listen(addr, c.allow_remote) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("ringgate-load: --upstream-listen {addr}: {e}");
                    return ExitCode::from(2);
                }
            };
            let bound = listener
                .local_addr()
                .map_or(addr.clone(), |a| a.to_string());
            match Hub::start(hub::Kind::Ringgate(listener), hub_plan(f)) {
                Ok(h) => hub = Some(h),
                Err(e) => {
                    eprintln!("ringgate-load: cannot start the game server: {e}");
                    return ExitCode::FAILURE;
                }
            }
            use std::io::Write as _;
            println!("ringgate-load fanout: game server listening on {bound}");
            let _ = std::io::stdout().flush();
        }
    }
    let mut pids = c.pids.clone();
    let url = if c.url == "-" {
        match url_from_stdin(Duration::from_secs_f64(c.setup_timeout.max(0.0))) {
            Ok((u, more)) => {
                pids.extend(more);
                u
            }
            Err(e) => {
                // What the game server saw meanwhile explains more than a missing URL.
                match hub.as_ref().and_then(Hub::failure) {
                    Some(why) => eprintln!("ringgate-load: fanout: {why}"),
                    None => eprintln!("ringgate-load: --url -: {e}"),
                }
                if let Some(h) = hub {
                    h.shutdown();
                }
                return ExitCode::from(2);
            }
        }
    } else {
        c.url.clone()
    };
    let target = match Target::parse(&url, c.allow_remote) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ringgate-load: {e}");
            if let Some(h) = hub {
                h.shutdown();
            }
            return ExitCode::from(2);
        }
    };
    if let Some(f) = &job.fanout {
        if hub.is_none() {
            match Hub::start(hub::Kind::Peer(target.clone()), hub_plan(f)) {
                Ok(h) => hub = Some(h),
                Err(e) => {
                    eprintln!("ringgate-load: cannot start the publisher: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    if let Some(h) = &hub {
        if let Err(why) = h.wait_ready(Duration::from_secs_f64(c.connect_timeout.max(0.1))) {
            eprintln!("ringgate-load: fanout: {why}");
            if let Some(path) = &c.json {
                let body = json!({"mode": "fanout", "url": target.url, "config": job.config,
                    "failure": why, "errors_total": 0});
                let _ = std::fs::write(path, format!("{body:#}\n"));
            }
            if let Some(h) = hub {
                h.shutdown();
            }
            return ExitCode::FAILURE;
        }
    }
    let procs = c.procs;
    let threads = c
        .threads
        .unwrap_or_else(|| (net::cpu_count() / procs).max(1));
    let nofile = net::raise_nofile_limit();
    let per_proc = job.items.div_ceil(procs as u64);
    if job.mode != Mode::Handshake && per_proc + 64 > nofile {
        eprintln!(
            "ringgate-load: {per_proc} connections per process do not fit the open-files limit of {nofile}; use --procs {}",
            job.items.div_ceil(nofile.saturating_sub(64).max(1))
        );
        return ExitCode::from(2);
    }

    let proc_index = c.child_index.unwrap_or(0);
    let plan = Arc::new(Plan {
        mode: job.mode,
        target: target.clone(),
        query: c.query.clone(),
        headers: c.headers.clone(),
        proc_index,
        size: job.size,
        depth: job.depth,
        text: job.text,
        rate: job.rate,
        total_items: job.items,
        timeout_ns: secs(c.timeout),
        connect_timeout_ns: secs(c.connect_timeout),
        close_timeout_ns: secs(c.close_timeout),
        lifetime_ns: job.lifetime_ms * 1_000_000,
        per_source: (!c.no_bind).then_some(c.per_source.max(1)),
        max_connecting: (c.connect_concurrency / (procs * threads)).max(1),
        max_message: (job.size * 64).max(16 << 20),
        fanout: job.fanout.as_ref().map(|f| FanoutPlan {
            rooms: f.rooms,
            broadcast: f.broadcast,
            ringgate: f.upstream_listen.is_some(),
            policy: f.policy,
            shared: shared.clone(),
        }),
        coalesce_ns: job.fanout.as_ref().map_or(0, |f| f.coalesce_us * 1000),
    });

    if let Some(p) = c.child_index {
        // A worker process: run the threads, relay to the parent.
        match Fleet::threads(plan, assignments(job.items, procs, p, threads)) {
            Ok(fleet) => {
                control::child_main(fleet);
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("ringgate-load: process {p}: cannot start workers: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    control::install_sigint();
    let mut warm = Vec::new();
    for i in 0..job.warmup {
        match warm_connection(&target, c.query.as_deref(), &c.headers, i) {
            Ok(stream) => warm.push(stream),
            Err(e) => eprintln!("ringgate-load: warm-up connection failed: {e}"),
        }
    }
    let rss_before = run::target_rss_kib(&pids);
    let fleet = if procs > 1 {
        Fleet::children(&raw_args, procs)
    } else {
        Fleet::threads(plan.clone(), assignments(job.items, 1, 0, threads))
    };
    let fleet = match fleet {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ringgate-load: cannot start workers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut ctl = Controller::new(fleet);
    let settings = Settings {
        mode: job.mode,
        window_secs: job.window,
        setup_timeout: Duration::from_secs_f64(c.setup_timeout.max(0.0)),
        drain_timeout: Duration::from_secs_f64(c.drain.max(0.0)),
        close_timeout: Duration::from_secs_f64(c.close_timeout.max(0.0)),
        expected: job.items,
        pids: pids.clone(),
        progress: !c.quiet,
        rss_before,
    };
    if !c.quiet {
        eprintln!(
            "ringgate-load {}: {} ({}), {} process(es) x {} thread(s)",
            job.mode.name(),
            target.url,
            target.addr,
            procs,
            threads
        );
    }
    let outcome = match &hub {
        Some(h) => run::drive(&settings, &mut ctl, &mut HubHooks(h)),
        None => run::drive(&settings, &mut ctl, &mut NoHooks),
    };
    drop(warm);
    let fanout_summary = match (hub, &job.fanout) {
        (Some(h), Some(f)) => {
            let st = h.state.clone();
            h.shutdown();
            use std::sync::atomic::Ordering::SeqCst;
            Some(FanoutSummary {
                ringgate: f.upstream_listen.is_some(),
                rooms: f.rooms,
                broadcast: f.broadcast,
                policy: f.policy.name(),
                rate: f.rate,
                published: st.published.load(SeqCst),
                frames: st.frames.load(SeqCst),
                bytes: st.bytes.load(SeqCst),
                backlog_peak: st.backlog_peak.load(SeqCst),
                late: st.late.load(SeqCst),
                links: st.links_up.load(SeqCst),
                instances: st.instances(),
                opens: st.opens.load(SeqCst),
                joins: st.joins.load(SeqCst),
                refused: st.refused.load(SeqCst),
            })
        }
        _ => None,
    };

    let mut config = job.config.clone();
    if let Some(obj) = config.as_object_mut() {
        obj.insert("procs".into(), json!(procs));
        obj.insert("threads".into(), json!(threads));
        obj.insert("query".into(), json!(c.query));
        obj.insert("headers".into(), json!(c.headers));
        obj.insert("pids".into(), json!(pids));
        obj.insert("timeout".into(), json!(c.timeout));
        obj.insert("connect_concurrency".into(), json!(c.connect_concurrency));
    }
    let described = Described {
        mode: job.mode,
        url: target.url.clone(),
        config,
        headline: format!(
            "{}; {procs} process(es) x {threads} thread(s)",
            job.headline
        ),
        fanout: fanout_summary,
    };
    print!("{}", report::text(&described, &outcome));
    // A run that counted errors fails, so that scripts and CI can tell from the exit status; the
    // report is written all the same.
    let mut status = if report::total_errors(&outcome).total() > 0 || outcome.failure.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    if let Some(path) = &c.json {
        let body = serde_json::to_string_pretty(&report::json(&described, &outcome)).expect("json");
        if let Err(e) = std::fs::write(path, body + "\n") {
            eprintln!("ringgate-load: cannot write {}: {e}", path.display());
            status = ExitCode::FAILURE;
        }
    }
    if let Some(path) = &c.plot {
        if let Err(e) = std::fs::write(path, report::svg(&described, &outcome)) {
            eprintln!("ringgate-load: cannot write {}: {e}", path.display());
            status = ExitCode::FAILURE;
        }
    }
    status
}

/// The fan-out publisher seen from the run's phases.
struct HubHooks<'a>(&'a Hub);

impl Hooks for HubHooks<'_> {
    fn failure(&self) -> Option<String> {
        self.0.failure()
    }

    fn go(&mut self) {
        self.0.go();
    }

    fn stop(&mut self) {
        self.0.stop();
    }
}

/// The game server's listener: loopback only unless `--allow-remote`.
fn listen(addr: &str, allow_remote: bool) -> Result<std::net::TcpListener, String> {
    let sa: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| "expected IP:PORT, e.g. 127.0.0.1:0".to_string())?;
    if !sa.ip().is_loopback() && !allow_remote {
        return Err(
            "not a loopback address (127.0.0.0/8, ::1); pass --allow-remote to listen there".into(),
        );
    }
    std::net::TcpListener::bind(sa).map_err(|e| e.to_string())
}

/// `--url -`: the first line of stdin, waited for at most `limit` (ringgate prints its URL only
/// once its links are up, which needs this process's game server first). Its first `ws://` word
/// is the URL, and `pid=N` words name more target processes, as `--pid` does: the server's pid is
/// known only once it runs, after the harness.
fn url_from_stdin(limit: Duration) -> Result<(String, Vec<u32>), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let got = std::io::stdin().read_line(&mut line).map(|n| (n, line));
        let _ = tx.send(got);
    });
    match rx.recv_timeout(limit) {
        Ok(Ok((0, _))) => Err("stdin ended before a URL".into()),
        Ok(Ok((_, line))) => parse_url_line(&line),
        Ok(Err(e)) => Err(format!("reading stdin: {e}")),
        Err(_) => Err(format!(
            "no URL on stdin within {:.0} s",
            limit.as_secs_f64()
        )),
    }
}

/// The URL and `pid=N` words of a `--url -` line. Accepts ringgate's own line ("ringgate listening
/// on ws://... (2 workers)") as well as the bare URL.
fn parse_url_line(line: &str) -> Result<(String, Vec<u32>), String> {
    let mut pids = Vec::new();
    for w in line.split_whitespace() {
        if let Some(p) = w.strip_prefix("pid=") {
            for p in p.split(',') {
                pids.push(
                    p.parse()
                        .map_err(|_| format!("bad pid {p:?} in {line:?}"))?,
                );
            }
        }
    }
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("ws://") || w.starts_with("wss://"))
        .ok_or_else(|| format!("no ws:// URL in {:?}", line.trim()))?;
    Ok((url.to_string(), pids))
}

/// A blocking connection and upgrade, held by the controller (idle's warm-up). Uses the user
/// index `u64::MAX - i` so it does not collide with the measured connections' users.
fn warm_connection(
    target: &Target,
    query: Option<&str>,
    headers: &[String],
    i: u64,
) -> std::io::Result<std::net::TcpStream> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&target.addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let path = target.request_target(query, u64::MAX - i, 0);
    let extra = target::expand_headers(headers, u64::MAX - i, 0);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n",
        target.host_header
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        if s.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    if head.starts_with(b"HTTP/1.1 101") {
        // A ping answered means the target's session exists and has read from its socket, so the
        // memory baseline read next includes what one established connection costs it.
        let mut ping = Vec::new();
        frame::write_client_frame(&mut ping, frame::OpCode::Ping, b"warm", [1, 2, 3, 4]);
        s.write_all(&ping)?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            match frame::parse_server_frame(&buf, 1 << 20) {
                Ok(Some(f)) if f.opcode == frame::OpCode::Pong => return Ok(s),
                Ok(Some(f)) => {
                    buf.drain(..f.total_len());
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(format!("bad frame: {e:?}"))),
            }
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::other("closed before answering the ping"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    } else {
        let line = String::from_utf8_lossy(&head);
        Err(std::io::Error::other(format!(
            "answered {:?}",
            line.lines().next().unwrap_or("nothing")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fanout_job(args: &[&str]) -> Result<Job, String> {
        let mut argv = vec!["x", "fanout"];
        argv.extend_from_slice(args);
        let j = job(Cli::try_parse_from(argv).map_err(|e| e.to_string())?);
        validate(&j)?;
        Ok(j)
    }

    #[test]
    fn fanout_cli_modes_and_checks() {
        let j = fanout_job(&[
            "--url",
            "-",
            "--upstream-listen",
            "127.0.0.1:0",
            "--clients",
            "10000",
            "--rooms",
            "100",
            "--rate",
            "100",
            "--policy",
            "latest",
            "--coalesce-us",
            "200",
        ])
        .unwrap();
        let f = j.fanout.as_ref().unwrap();
        assert_eq!(f.coalesce_us, 200);
        assert_eq!((j.mode, j.items, j.size), (Mode::Fanout, 10_000, 64));
        assert_eq!((f.rooms, f.rate, f.policy), (100, 100.0, Policy::Latest));
        assert_eq!(f.upstream_listen.as_deref(), Some("127.0.0.1:0"));
        let j = fanout_job(&["--url", "ws://127.0.0.1:1/", "--peer", "--broadcast"]).unwrap();
        let f = j.fanout.as_ref().unwrap();
        assert!(f.broadcast && f.upstream_listen.is_none());
        assert_eq!(f.policy, Policy::Close);

        for bad in [
            // Neither mode, or both.
            &["--url", "ws://127.0.0.1:1/"][..],
            &[
                "--url",
                "ws://127.0.0.1:1/",
                "--peer",
                "--upstream-listen",
                "127.0.0.1:0",
            ],
            // The URL from stdin is ringgate mode's.
            &["--url", "-", "--peer"],
            &["--url", "ws://127.0.0.1:1/", "--peer", "--size", "19"],
            &["--url", "ws://127.0.0.1:1/", "--peer", "--rooms", "0"],
            &["--url", "ws://127.0.0.1:1/", "--peer", "--rate", "0"],
            &["--url", "ws://127.0.0.1:1/", "--peer", "--procs", "2"],
            &["--url", "ws://127.0.0.1:1/", "--peer", "--policy", "some"],
        ] {
            assert!(fanout_job(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_url_line("ringgate listening on ws://127.0.0.1:9/ws (2 workers) pid=42\n"),
            Ok(("ws://127.0.0.1:9/ws".into(), vec![42]))
        );
        assert_eq!(
            parse_url_line("ws://[::1]:9/ pid=1,2"),
            Ok(("ws://[::1]:9/".into(), vec![1, 2]))
        );
        assert_eq!(parse_url_line("ws://x/"), Ok(("ws://x/".into(), vec![])));
        assert!(parse_url_line("ws://x/ pid=me").is_err());
        assert!(parse_url_line(" pid=5").is_err(), "no URL");
        assert!(listen("10.0.0.1:0", false).is_err(), "loopback only");
        assert!(listen("localhost:0", false).is_err(), "an IP, not a name");
    }

    #[test]
    fn assignments_cover_every_item_once() {
        for (total, procs, threads) in [
            (10u64, 1usize, 3usize),
            (25_000, 2, 1),
            (7, 3, 2),
            (1, 2, 2),
        ] {
            let mut seen = Vec::new();
            for p in 0..procs {
                let a = assignments(total, procs, p, threads);
                assert_eq!(a.len(), threads);
                for (t, asg) in a.iter().enumerate() {
                    assert_eq!(asg.unit, t);
                    assert_eq!(asg.global_workers, (procs * threads) as u64);
                    seen.extend(asg.items.iter().copied());
                }
            }
            seen.sort_unstable();
            assert_eq!(seen, (0..total).collect::<Vec<_>>());
        }
    }

    #[test]
    fn cli_parses_each_subcommand() {
        let cli = Cli::try_parse_from([
            "ringgate-load",
            "echo",
            "--url",
            "ws://127.0.0.1:1/ws",
            "--conns",
            "200",
            "--depth",
            "8",
            "--query",
            "user={i}",
            "--procs",
            "2",
        ])
        .unwrap();
        let j = job(cli);
        assert_eq!(
            (j.mode, j.items, j.depth, j.common.procs),
            (Mode::Echo, 200, 8, 2)
        );
        assert!(validate(&j).is_ok());
        let j = job(Cli::try_parse_from([
            "x",
            "idle",
            "--url",
            "ws://localhost/",
            "--pid",
            "1",
            "--pid",
            "2",
        ])
        .unwrap());
        assert_eq!(j.common.pids, vec![1, 2]);
        let j =
            job(
                Cli::try_parse_from(["x", "idle", "--url", "ws://localhost/", "--pid", "3,4,5"])
                    .unwrap(),
            );
        assert_eq!(j.common.pids, vec![3, 4, 5]);
        let j = job(Cli::try_parse_from([
            "x",
            "handshake",
            "--url",
            "ws://[::1]:5/",
            "--workers",
            "64",
        ])
        .unwrap());
        assert_eq!(j.items, 64);
        let j = job(Cli::try_parse_from([
            "x",
            "churn",
            "--url",
            "ws://127.0.0.1:5/",
            "--lifetime-ms",
            "300",
        ])
        .unwrap());
        assert_eq!(j.lifetime_ms, 300);
        let j =
            job(
                Cli::try_parse_from(["x", "echo", "--url", "ws://127.0.0.1:5/", "--size", "8"])
                    .unwrap(),
            );
        assert!(validate(&j).is_err());
    }
}
