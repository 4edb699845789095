//! The command line: `demo`, `run` and `check-config`, flags layered over the TOML file, logging
//! set-up, and the signal handling that turns SIGINT/SIGTERM into a graceful shutdown.
//!
//! Owns the process's life from `main` to exit code. Never touches the data path.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::auth;
use crate::config::{Config, UpstreamConfig};
use crate::echo_server;
use crate::gateway::{self, LinkSettings};

#[derive(Parser)]
#[command(
    name = "ringgate",
    version,
    about = "WebSocket edge proxy for online games"
)]
struct Cli {
    /// Log level or filter (overrides RUST_LOG), e.g. `info`, `debug`, `ringgate=trace`.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with an in-process echo game server as its upstream (127.0.0.1:8080, /ws),
    /// and a chat page on / (`chat_page`).
    Demo(Overrides),
    /// Run the echo game server (docs/protocol.md) that ringgate can use as an upstream.
    EchoUpstream {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Largest frame accepted from the proxy: its max_message_size + 64 KiB (default: for 16 MiB).
        #[arg(long, default_value_t = (16 << 20) + (64 << 10))]
        max_frame: usize,
        /// Read each link at most this many bytes a second (0: no limit): a game server slower
        /// than its clients, for tests and benchmarks of a congested link.
        #[arg(long, default_value_t = 0)]
        read_rate: usize,
        /// SO_RCVBUF of each link's socket (0: the kernel's default, which grows by itself).
        #[arg(long, default_value_t = 0)]
        recv_buffer: usize,
    },
    /// Run the proxy in front of the configured upstream game servers.
    Run(Overrides),
    /// Validate a configuration file and report the first error with its key.
    CheckConfig { file: PathBuf },
}

/// Flags that override the configuration file, key by key.
#[derive(Args, Default)]
struct Overrides {
    /// TOML configuration file (see ringgate.example.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:8080 (port 0 picks a free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The WebSocket path.
    #[arg(long)]
    path: Option<String>,
    /// Worker threads (0 = one per CPU).
    #[arg(long)]
    workers: Option<usize>,
    /// Upstream game server HOST:PORT; repeat for several (replaces the file's list).
    #[arg(long = "upstream")]
    upstreams: Vec<String>,
    /// Largest client message in bytes.
    #[arg(long)]
    max_message_size: Option<usize>,
    /// Largest request head in bytes.
    #[arg(long)]
    max_handshake_size: Option<usize>,
    /// Handshake timeout, e.g. 5s.
    #[arg(long, value_parser = humantime::parse_duration)]
    handshake_timeout: Option<Duration>,
    /// Server ping interval, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    ping_interval: Option<Duration>,
    /// Idle timeout, e.g. 90s.
    #[arg(long, value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,
    /// Close handshake timeout, e.g. 5s.
    #[arg(long, value_parser = humantime::parse_duration)]
    close_timeout: Option<Duration>,
    /// Graceful shutdown timeout, e.g. 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    shutdown_timeout: Option<Duration>,
    /// Bytes queued toward one client before it is closed with 1008.
    #[arg(long)]
    max_client_backlog: Option<usize>,
    /// Client connections held at most (0 = from the open-files limit).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Accepted subprotocol; repeat for several (replaces the file's list).
    #[arg(long = "subprotocol")]
    subprotocols: Vec<String>,
    /// Admin endpoint address (GET /stats, /sessions).
    #[arg(long)]
    admin: Option<SocketAddr>,
}

impl Overrides {
    fn apply(self, mut cfg: Config) -> Config {
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { cfg.$field = v; } )* };
        }
        set!(
            listen,
            path,
            workers,
            max_message_size,
            max_handshake_size,
            handshake_timeout,
            ping_interval,
            idle_timeout,
            close_timeout,
            shutdown_timeout,
            max_client_backlog,
            max_connections
        );
        if !self.upstreams.is_empty() {
            cfg.upstreams = self
                .upstreams
                .into_iter()
                .map(|address| UpstreamConfig { address })
                .collect();
        }
        if !self.subprotocols.is_empty() {
            cfg.subprotocols = self.subprotocols;
        }
        if self.admin.is_some() {
            cfg.admin_listen = self.admin;
        }
        cfg
    }

    fn load(self) -> Result<Config, String> {
        let base = match &self.config {
            Some(p) => Config::from_file(p).map_err(|e| e.to_string())?,
            None => Config::default(),
        };
        let cfg = self.apply(base);
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    match cli.command {
        Command::CheckConfig { file } => {
            match Config::from_file(&file).and_then(|c| c.validate().map(|()| c)) {
                Ok(_) => {
                    println!("{}: ok", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo(o) => match o.load() {
            Ok(cfg) => demo(cfg),
            Err(e) => fail(&e),
        },
        Command::Run(o) => match o.load() {
            Ok(cfg) if cfg.upstreams.is_empty() => fail(
                "no upstream configured: pass --upstream HOST:PORT or add [[upstream]] to the config \
                 (`ringgate demo` runs with a built-in echo server)",
            ),
            Ok(cfg) => serve(cfg, false),
            Err(e) => fail(&e),
        },
        Command::EchoUpstream {
            listen,
            workers,
            max_frame,
            read_rate,
            recv_buffer,
        } => echo_upstream(
            listen,
            workers,
            max_frame,
            echo_server::Slow {
                read_rate,
                recv_buffer,
            },
        ),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("ringgate: {msg}");
    ExitCode::FAILURE
}

fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Starts the workers, announces the address on stdout (tests and scripts read this line), and
/// waits for SIGINT or SIGTERM to shut down gracefully.
fn serve(cfg: Config, demo: bool) -> ExitCode {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // Registered before the workers start, so a signal during start-up is not lost.
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot install signal handlers: {e}")),
    };
    let server = match gateway::start(&cfg) {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    if !server.wait_ready(cfg.link_connect_timeout + Duration::from_secs(1)) {
        tracing::warn!("not every upstream link is up yet; clients get 503 until one is");
    }
    if cfg.auth.mode == auth::Mode::None && !cfg.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %cfg.listen,
            "no authentication ([auth] mode = \"none\"): any client can claim any user"
        );
    }
    tracing::info!(
        limit = cfg.connection_limit(),
        "connection limit (max_connections, for the whole process)"
    );
    let url = format!("ws://{}{}", server.local_addr, cfg.path);
    println!(
        "ringgate listening on {url} ({} workers)",
        cfg.worker_count()
    );
    if let Some(a) = server.admin_addr {
        println!("ringgate admin on http://{a}/stats");
    }
    if cfg.chat_page {
        println!("Chat page: http://{}/", server.local_addr);
    }
    if demo {
        println!("Every message sent to it comes back as sent. Try it from a browser console:");
        println!(
            "  ws = new WebSocket(\"{url}?user=alice\"); ws.onmessage = e => console.log(\"echo:\", e.data); ws.onopen = () => ws.send(\"hello ringgate\");"
        );
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    for sig in signals.forever() {
        if sig == SIGHUP {
            // Only the token keys are re-read; sessions and every other setting stay.
            match auth::Verifier::load(&cfg.auth) {
                Ok(keys) => {
                    if server.reload_keys(keys, Duration::from_secs(5)) {
                        tracing::info!("SIGHUP: token keys re-read");
                    } else {
                        tracing::warn!("SIGHUP: token keys re-read, but a worker did not confirm");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: keys not re-read, the old ones stay")
                }
            }
            continue;
        }
        tracing::info!(signal = sig, "shutting down: closing sessions with 1001");
        break;
    }
    server.shutdown();
    let panicked = server.join();
    if panicked > 0 {
        return fail(&format!("{panicked} worker(s) panicked"));
    }
    ExitCode::SUCCESS
}

/// The demo: the echo game server in-process on a free loopback port, the proxy in front of it,
/// and the chat page, so that a browser is all it takes to try.
fn demo(mut cfg: Config) -> ExitCode {
    cfg.chat_page = true;
    let max_frame = LinkSettings::from_config(&cfg).max_frame;
    let echo = match echo_server::start(SocketAddr::from(([127, 0, 0, 1], 0)), 1, max_frame) {
        Ok(e) => e,
        Err(e) => return fail(&format!("cannot start the echo game server: {e}")),
    };
    cfg.upstreams = vec![UpstreamConfig {
        address: echo.addr.to_string(),
    }];
    let code = serve(cfg, true);
    echo.shutdown();
    code
}

fn echo_upstream(
    listen: SocketAddr,
    workers: usize,
    max_frame: usize,
    slow: echo_server::Slow,
) -> ExitCode {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot install signal handlers: {e}")),
    };
    let server = match echo_server::start_slow(listen, workers, max_frame, slow) {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot listen on {listen}: {e}")),
    };
    println!("echo-upstream listening on {}", server.addr);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    signals.forever().next();
    // Every link gets GOAWAY 1012: the proxy closes their sessions with "restarting".
    server.shutdown();
    ExitCode::SUCCESS
}
