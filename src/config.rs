//! Configuration: the TOML file, its defaults and its validation.
//!
//! Owns the meaning of every key; `ringgate.example.toml` documents each one and a test keeps the two
//! in step. Never reads the environment or the command line: `cli` layers flags on top of a parsed
//! [`Config`].

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;

/// Everything ringgate can be told. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the WebSocket listener binds on every worker (SO_REUSEPORT).
    pub listen: SocketAddr,
    /// The only request path that is upgraded; others get 404.
    pub path: String,
    /// Worker threads, one monoio runtime each. 0 means one per CPU.
    pub workers: usize,
    /// Subprotocols the server accepts, in no particular order; the client's preference wins.
    pub subprotocols: Vec<String>,
    /// Largest message (after reassembly of fragments) a client may send; larger closes with 1009.
    pub max_message_size: usize,
    /// Largest HTTP request head accepted; larger gets 431.
    pub max_handshake_size: usize,
    /// A client that has not completed its handshake by then is dropped.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A server ping is sent this often on every open session.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A session that sent nothing for this long is closed with 1001.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// After a server-initiated close frame, how long to wait for the client's close before resetting.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
    /// On SIGINT/SIGTERM, how long to wait for sessions to finish their close handshake.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Bytes queued toward one client before it is closed with 1008 for not reading.
    pub max_client_backlog: usize,
    /// Client connections (handshaking or open) the process holds at most, on whichever workers;
    /// more are answered 503 at once. 0 = derived from the open-files limit.
    pub max_connections: usize,
    /// io_uring submission queue entries per worker.
    pub uring_entries: u32,
    /// Submit the sends of one flush (the members of a published message, every session written to
    /// during a turn) to a small io_uring of the worker's in one kernel entry, instead of one
    /// `sendmsg` each. Ignored where io_uring is unavailable.
    pub batched_sends: bool,
    /// Accept backlog of each worker's listener.
    pub listen_backlog: u32,
    /// Optional address of the admin HTTP endpoint (`/stats`, `/sessions`), served by worker 0.
    pub admin_listen: Option<SocketAddr>,
    /// Answer a plain `GET /` on the WebSocket listener with the demo's chat page.
    pub chat_page: bool,
    /// Upstream game servers.
    #[serde(rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    /// This instance's id, sent to game servers in HELLO. Default: `hostname:pid`.
    pub instance_id: Option<String>,
    /// Handshake headers forwarded to the game server in OPEN (case-insensitive names).
    pub forward_headers: Vec<String>,
    /// Bytes queued toward one game server link before the clients routed to it stop being read.
    pub link_backlog: usize,
    /// How often each link is pinged.
    #[serde(with = "humantime_serde")]
    pub link_ping_interval: Duration,
    /// A link from which nothing arrived for this long is dropped and its sessions closed with 1011.
    #[serde(with = "humantime_serde")]
    pub link_timeout: Duration,
    /// Limit for connecting a link and receiving HELLO_ACK.
    #[serde(with = "humantime_serde")]
    pub link_connect_timeout: Duration,
    /// First reconnect delay after a link failure; doubles per failure, with jitter.
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Whether connections start with a PROXY protocol header (v1 or v2) naming the real client.
    pub proxy_protocol: ProxyProtocol,
    /// The load balancers and proxies in front of ringgate (addresses or CIDR networks): only their
    /// PROXY headers and `real_ip_header` are believed.
    pub trusted_proxies: Vec<String>,
    /// A request header naming the real client, believed only from `trusted_proxies`.
    pub real_ip_header: Option<RealIpHeader>,
    /// What a new session of a user who already has one does.
    pub one_session_per_user: OneSessionPerUser,
    /// Origins a browser may connect from (`https://game.example.com`, `https://*.example.com`);
    /// empty = any. Others get 403.
    pub allowed_origins: Vec<String>,
    /// Refuse (403) a request without an Origin header (non-browser clients send none).
    pub origin_required: bool,
    /// Data messages a client may send: `{ rate = per second, burst = at most saved up }`; off when
    /// absent.
    pub message_rate: Option<RateLimit>,
    /// Payload bytes a client may send, likewise.
    pub byte_rate: Option<RateLimit>,
    /// What a message over a rate limit gets.
    pub rate_limit_action: RateLimitAction,
    /// Sessions one client address may hold at once, in the whole process (0 = no limit); the next
    /// upgrade from it gets 429.
    pub max_connections_per_ip: u32,
    /// Upgrade requests one client address may make, per worker: `{ rate = per second, burst }`;
    /// over it, 429. Off when absent.
    pub handshake_rate_per_ip: Option<RateLimit>,
    /// Bytes of messages still being received that one worker holds at most (0 = a quarter of the
    /// machine's memory, split over the workers); a read that takes a worker past it cuts the
    /// connection it came from with 1008.
    pub max_inflight_bytes: usize,
    /// A message in progress for longer than `receive_grace` that arrived slower than this many
    /// bytes a second is cut with 1008 (0 = off).
    pub min_receive_rate: u32,
    #[serde(with = "humantime_serde")]
    pub receive_grace: Duration,
    /// Who a client is: the `[auth]` table (`mode = "none"` takes `?user=` as it comes).
    pub auth: AuthConfig,
}

/// A token bucket: `rate` a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub rate: u32,
    pub burst: u32,
}

/// `rate_limit_action`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitAction {
    /// The session is closed with 1008 "rate limit exceeded".
    #[default]
    Close,
    /// The message is dropped (and counted); the session goes on.
    Drop,
}

/// `one_session_per_user`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OneSessionPerUser {
    /// The older session is closed with 4409 and the newer one is served.
    #[default]
    Replace,
    /// The newer one gets 409 before its upgrade.
    Reject,
    /// Both are served.
    Allow,
}

/// `proxy_protocol`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// No PROXY header is expected; one is a malformed request (400).
    #[default]
    Off,
    /// Trusted proxies may send one; other peers may not (their connection is closed).
    Optional,
    /// Every connection must start with one, from a trusted proxy; any other is closed.
    Required,
}

/// `real_ip_header`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum RealIpHeader {
    /// The right-most address that is not a trusted proxy.
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    #[serde(rename = "x-real-ip")]
    XRealIp,
}

/// One `[[upstream]]` table.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `HOST:PORT` of a game server speaking docs/protocol.md.
    pub address: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            path: "/ws".to_string(),
            workers: 0,
            subprotocols: Vec::new(),
            max_message_size: 1 << 20,
            max_handshake_size: 8 << 10,
            handshake_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            close_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            max_client_backlog: 1 << 20,
            max_connections: 0,
            uring_entries: 4096,
            batched_sends: true,
            listen_backlog: 4096,
            admin_listen: None,
            chat_page: false,
            upstreams: Vec::new(),
            instance_id: None,
            forward_headers: vec![
                "user-agent".to_string(),
                "origin".to_string(),
                "x-forwarded-for".to_string(),
            ],
            link_backlog: 4 << 20,
            link_ping_interval: Duration::from_secs(5),
            link_timeout: Duration::from_secs(15),
            link_connect_timeout: Duration::from_secs(3),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            proxy_protocol: ProxyProtocol::Off,
            trusted_proxies: Vec::new(),
            real_ip_header: None,
            one_session_per_user: OneSessionPerUser::Replace,
            allowed_origins: Vec::new(),
            origin_required: false,
            message_rate: None,
            byte_rate: None,
            rate_limit_action: RateLimitAction::Close,
            max_connections_per_ip: 0,
            handshake_rate_per_ip: None,
            max_inflight_bytes: 0,
            min_receive_rate: 1024,
            receive_grace: Duration::from_secs(10),
            auth: AuthConfig::default(),
        }
    }
}

/// Why a configuration was refused; every variant names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("`{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl Config {
    /// Parses TOML text; errors name the key (toml's own messages carry the key and line).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Checks the relations between keys that types alone cannot express. Reports the first error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.path.starts_with('/') || self.path.contains(['?', '#', ' ']) {
            return Err(invalid(
                "path",
                "must start with '/' and hold no '?', '#' or space",
            ));
        }
        if self.workers > 1024 {
            return Err(invalid("workers", "at most 1024"));
        }
        if self.max_message_size == 0 || self.max_message_size > (1 << 30) {
            return Err(invalid("max_message_size", "must be 1 byte to 1 GiB"));
        }
        if !(256..=(1 << 20)).contains(&self.max_handshake_size) {
            return Err(invalid("max_handshake_size", "must be 256 bytes to 1 MiB"));
        }
        for (key, d) in [
            ("handshake_timeout", self.handshake_timeout),
            ("ping_interval", self.ping_interval),
            ("idle_timeout", self.idle_timeout),
            ("close_timeout", self.close_timeout),
        ] {
            if d < Duration::from_secs(1) || d > Duration::from_secs(24 * 3600) {
                return Err(invalid(key, "must be between 1s and 24h"));
            }
        }
        if self.idle_timeout < self.ping_interval {
            return Err(invalid(
                "idle_timeout",
                "must not be shorter than ping_interval, or pinged clients would time out",
            ));
        }
        if self.max_client_backlog < 1024 {
            return Err(invalid("max_client_backlog", "must be at least 1024 bytes"));
        }
        if !self.uring_entries.is_power_of_two() || !(64..=32768).contains(&self.uring_entries) {
            return Err(invalid(
                "uring_entries",
                "must be a power of two from 64 to 32768",
            ));
        }
        if self.listen_backlog == 0 {
            return Err(invalid("listen_backlog", "must be positive"));
        }
        for p in &self.subprotocols {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
                return Err(invalid(
                    "subprotocols",
                    format!("{p:?} is not an HTTP token"),
                ));
            }
        }
        if self.link_backlog < 64 * 1024 {
            return Err(invalid("link_backlog", "must be at least 64 KiB"));
        }
        if self.link_timeout <= self.link_ping_interval {
            return Err(invalid(
                "link_timeout",
                "must be longer than link_ping_interval",
            ));
        }
        for (key, d) in [
            ("link_ping_interval", self.link_ping_interval),
            ("link_connect_timeout", self.link_connect_timeout),
            ("reconnect_min", self.reconnect_min),
        ] {
            if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
                return Err(invalid(key, "must be between 10ms and 1h"));
            }
        }
        if self.reconnect_max < self.reconnect_min || self.reconnect_max > Duration::from_secs(3600)
        {
            return Err(invalid(
                "reconnect_max",
                "must be between reconnect_min and 1h",
            ));
        }
        if self
            .instance_id
            .as_deref()
            .is_some_and(|i| i.is_empty() || i.len() > 200)
        {
            return Err(invalid("instance_id", "must be 1 to 200 bytes"));
        }
        for h in &self.forward_headers {
            if h.is_empty()
                || h.len() > 255
                || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':')
            {
                return Err(invalid(
                    "forward_headers",
                    format!("{h:?} is not a header name"),
                ));
            }
        }
        for (key, limit) in [
            ("message_rate", self.message_rate),
            ("byte_rate", self.byte_rate),
        ] {
            if let Some(l) = limit {
                if l.rate == 0 || l.burst == 0 {
                    return Err(invalid(key, "rate and burst must both be at least 1"));
                }
            }
        }
        if let Some(b) = self.byte_rate {
            if (b.burst as usize) < self.max_message_size {
                return Err(invalid(
                    "byte_rate",
                    "burst must be at least max_message_size, or a message of the largest size could never pass",
                ));
            }
        }
        for o in &self.allowed_origins {
            parse_origin_pattern(o)
                .map_err(|reason| invalid("allowed_origins", format!("{o:?}: {reason}")))?;
        }
        for t in &self.trusted_proxies {
            parse_network(t)
                .map_err(|reason| invalid("trusted_proxies", format!("{t:?}: {reason}")))?;
        }
        if self.trusted_proxies.is_empty() {
            if self.proxy_protocol != ProxyProtocol::Off {
                return Err(invalid(
                    "proxy_protocol",
                    "needs trusted_proxies: a PROXY header is believed only from them",
                ));
            }
            if self.real_ip_header.is_some() {
                return Err(invalid(
                    "real_ip_header",
                    "needs trusted_proxies: the header is believed only from them",
                ));
            }
        }
        for u in &self.upstreams {
            parse_address(&u.address).map_err(|reason| {
                invalid("upstream.address", format!("{:?}: {reason}", u.address))
            })?;
        }
        Ok(())
    }

    /// The connection cap of the process: the configured total, or what the open-files limit leaves
    /// after the runtime's own descriptors.
    pub fn connection_limit(&self) -> usize {
        let workers = self.worker_count().max(1);
        let total = if self.max_connections > 0 {
            self.max_connections
        } else {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit fills the struct we pass.
            let nofile = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
                lim.rlim_cur.min(1 << 30) as usize
            } else {
                1024
            };
            // Each worker: its listener, io_uring, eventfd, timer, upstream links, a reserve
            // descriptor, and room for in-flight rejections; plus the process's own few.
            let own = 64 + workers * (16 + 2 * self.upstreams.len().max(1));
            nofile.saturating_sub(own)
        };
        total.max(1)
    }

    /// The in-flight budget of one worker: `max_inflight_bytes`, or a quarter of the machine's
    /// memory split over the workers.
    pub fn inflight_budget(&self) -> usize {
        if self.max_inflight_bytes > 0 {
            return self.max_inflight_bytes;
        }
        let total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib.saturating_mul(1024))
            })
            .unwrap_or(1 << 30);
        (total / 4 / self.worker_count().max(1)).max(self.max_message_size)
    }

    /// The configured instance id, or `hostname:pid`.
    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "ringgate".to_string());
            format!("{host}:{}", std::process::id())
        })
    }

    /// Worker count after resolving 0 to the number of CPUs.
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.workers
        }
    }
}

/// An allowed origin: `scheme://host[:port]`, where the host may start with `*.` to allow every
/// subdomain (not the domain itself). Returns it lowercased.
pub fn parse_origin_pattern(text: &str) -> Result<String, String> {
    let lower = text.to_ascii_lowercase();
    let (scheme, host) = lower
        .split_once("://")
        .ok_or("expected scheme://host[:port], such as https://game.example.com")?;
    let bare = host.strip_prefix("*.").unwrap_or(host);
    let valid = |c: char| c.is_ascii_alphanumeric() || "-.:[]".contains(c);
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return Err("the scheme is not valid".into());
    }
    if bare.is_empty() || !bare.chars().all(valid) || bare.starts_with('.') {
        return Err("the host is not valid (a wildcard is only allowed as a leading `*.`)".into());
    }
    Ok(lower)
}

/// An address (`10.0.0.7`, `::1`) or a network in CIDR notation (`10.0.0.0/8`, `fd00::/8`).
pub fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| "expected an IP address or a CIDR network such as 10.0.0.0/8".to_string())
}

/// Checks an upstream address of the form `HOST:PORT` (resolution happens at start).
pub fn parse_address(addr: &str) -> Result<(), String> {
    let (host, port) = addr.rsplit_once(':').ok_or("expected HOST:PORT")?;
    if host.is_empty() {
        return Err("empty host".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("port must be a number from 1 to 65535".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses_validates_and_documents_every_key() {
        let text = include_str!("../ringgate.example.toml");
        let cfg = Config::from_toml(text).unwrap();
        cfg.validate().unwrap();
        // The key names come from the struct itself, so a new field without documentation fails here.
        let keys = serde_json::to_value(Config::default()).unwrap();
        for key in keys.as_object().unwrap().keys() {
            let documented = text.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(&format!("{key} ="))
                    || l.starts_with(&format!("[[{key}]]"))
                    || l.starts_with(&format!("[{key}]"))
            });
            assert!(documented, "key {key} missing from ringgate.example.toml");
        }
        let auth = serde_json::to_value(AuthConfig::default()).unwrap();
        let table = text.split("[auth]").nth(1).expect("an [auth] table");
        for key in auth.as_object().unwrap().keys() {
            let documented = table.lines().any(|l| {
                l.trim_start_matches(['#', ' '])
                    .starts_with(&format!("{key} ="))
            });
            assert!(
                documented,
                "[auth] key {key} missing from ringgate.example.toml"
            );
        }
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn client_address_keys_need_trusted_proxies_and_valid_networks() {
        let refusal = |toml: &str| {
            Config::from_toml(toml)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string()
        };
        let e = refusal("proxy_protocol = \"required\"");
        assert!(e.starts_with("`proxy_protocol`"), "{e}");
        let e = refusal("real_ip_header = \"x-real-ip\"");
        assert!(e.starts_with("`real_ip_header`"), "{e}");
        let e = refusal("trusted_proxies = [\"10.0.0.0/33\"]");
        assert!(
            e.starts_with("`trusted_proxies`") && e.contains("10.0.0.0/33"),
            "{e}"
        );
        let e = Config::from_toml("proxy_protocol = \"sometimes\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("proxy_protocol"), "{e}");
        let ok = Config::from_toml(
            "proxy_protocol = \"optional\"\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nreal_ip_header = \"x-forwarded-for\"",
        )
        .unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.real_ip_header, Some(RealIpHeader::XForwardedFor));
        assert_eq!(
            parse_network("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_toml("max_message_size = \"big\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_message_size"), "{e}");
        let e = Config::from_toml("no_such_key = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no_such_key"), "{e}");
        let e = Config::from_toml("ping_interval = \"60s\"\nidle_timeout = \"30s\"")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("idle_timeout"), "{e}");
        let e = Config::from_toml("path = \"ws\"")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("`path`"), "{e}");
        let e = Config::from_toml("[[upstream]]\naddress = \"nohost\"")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream.address"), "{e}");
    }
}
