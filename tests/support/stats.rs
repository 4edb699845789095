//! [`Stats`]: the admin endpoint's `/stats` (or `/sessions`) body, one object per core, with
//! accessors for sessions, counters and upstream links.

use std::fmt;

use serde_json::Value;

/// The admin endpoint's JSON: one object per core.
#[derive(Clone)]
pub struct Stats(pub Value);

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Stats {
    /// Checks the shape: one object per worker, in order, each with its driver, sessions, counters
    /// and links; the links name exactly `upstreams` where the test knows them.
    pub fn check_shape(&self, workers: usize, upstreams: Option<&[String]>) {
        let cores = self
            .0
            .as_array()
            .unwrap_or_else(|| panic!("admin body is not a JSON array: {self}"));
        assert_eq!(cores.len(), workers, "one object per core expected: {self}");
        for (i, c) in cores.iter().enumerate() {
            assert_eq!(c["core"].as_u64(), Some(i as u64), "core index: {self}");
            assert!(c["driver"].is_string(), "core {i} lacks driver: {self}");
            assert!(c["sessions"].is_u64(), "core {i} lacks sessions: {self}");
            assert!(c["counters"].is_object(), "core {i} lacks counters: {self}");
            let links = c["upstreams"]
                .as_array()
                .unwrap_or_else(|| panic!("core {i} lacks upstreams: {self}"));
            if let Some(upstreams) = upstreams {
                let names: Vec<&str> = links.iter().filter_map(|l| l["address"].as_str()).collect();
                assert_eq!(
                    names, upstreams,
                    "core {i}: links differ from config: {self}"
                );
            }
            for l in links {
                for k in ["sessions", "queued_bytes", "times_up", "connect_failures"] {
                    assert!(l[k].is_u64(), "link field {k} missing: {l}");
                }
                for k in ["up", "paused"] {
                    assert!(l[k].is_boolean(), "link field {k} missing: {l}");
                }
            }
        }
    }

    pub fn cores(&self) -> &[Value] {
        self.0.as_array().unwrap()
    }

    pub fn sessions(&self, core: usize) -> u64 {
        self.cores()[core]["sessions"].as_u64().unwrap()
    }

    /// Sessions summed over the cores.
    pub fn sessions_total(&self) -> u64 {
        (0..self.cores().len()).map(|c| self.sessions(c)).sum()
    }

    /// Bytes of messages still arriving, summed over the cores.
    pub fn inflight_bytes(&self) -> u64 {
        self.cores()
            .iter()
            .map(|c| c["inflight_bytes"].as_u64().unwrap())
            .sum()
    }

    /// One counter of one core (the counter must exist).
    pub fn core_counter(&self, core: usize, name: &str) -> u64 {
        self.cores()[core]["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("counter {name:?} missing: {self}"))
    }

    /// A counter summed over the cores.
    pub fn counter(&self, name: &str) -> u64 {
        (0..self.cores().len())
            .map(|c| self.core_counter(c, name))
            .sum()
    }

    /// The link of `core` to the upstream named `name`.
    pub fn link(&self, core: usize, name: &str) -> &Value {
        self.cores()[core]["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["address"] == name)
            .unwrap_or_else(|| panic!("core {core} has no link to {name}: {self}"))
    }

    pub fn link_u64(&self, core: usize, name: &str, field: &str) -> u64 {
        self.link(core, name)[field].as_u64().unwrap()
    }

    pub fn link_bool(&self, core: usize, name: &str, field: &str) -> bool {
        self.link(core, name)[field].as_bool().unwrap()
    }

    /// Sessions on the links to `name`, summed over the cores.
    pub fn link_sessions(&self, name: &str) -> u64 {
        (0..self.cores().len())
            .map(|c| self.link_u64(c, name, "sessions"))
            .sum()
    }

    pub fn link_up_everywhere(&self, name: &str) -> bool {
        (0..self.cores().len()).all(|c| self.link_bool(c, name, "up"))
    }

    pub fn link_down_everywhere(&self, name: &str) -> bool {
        (0..self.cores().len()).all(|c| !self.link_bool(c, name, "up"))
    }

    /// Sessions on every link of one core, summed.
    pub fn core_link_sessions(&self, core: usize) -> u64 {
        self.cores()[core]["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["sessions"].as_u64().unwrap())
            .sum()
    }

    /// No session on any core and none on any link.
    pub fn is_idle(&self) -> bool {
        (0..self.cores().len()).all(|c| self.sessions(c) == 0 && self.core_link_sessions(c) == 0)
    }
}
