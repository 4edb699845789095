//! The command line as an operator meets it: `check-config` on good and bad files, and `run`
//! without an upstream.

mod support;

use support::*;

#[test]
fn check_config_accepts_the_example_file() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/ringgate.example.toml");
    let (ok, out, err) = ringgate_output(&["check-config", example]);
    assert!(ok, "{err}");
    assert!(out.trim_end().ends_with(": ok"), "{out}");
}

#[test]
fn check_config_reports_the_first_error_with_its_key() {
    for (text, key) in [
        ("max_message_size = -1\n", "max_message_size"),
        ("listen = \"not an address\"\n", "listen"),
        (
            "idle_timeout = \"5s\"\nping_interval = \"10s\"\n",
            "idle_timeout",
        ),
        ("typo_key = 1\n", "typo_key"),
        ("[[upstream]]\naddress = \"no-port\"\n", "upstream.address"),
        ("handshake_timeout = \"forever\"\n", "handshake_timeout"),
    ] {
        let f = TempFile::new("bad.toml", text);
        let (ok, _, err) = ringgate_output(&["check-config", f.path().to_str().unwrap()]);
        assert!(!ok, "{text:?} was accepted");
        assert!(
            err.contains(key),
            "error for {text:?} does not name {key}: {err}"
        );
    }
}

#[test]
fn run_without_an_upstream_says_what_to_do() {
    let (ok, _, err) = ringgate_output(&["run", "--listen", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(
        err.contains("no upstream configured") && err.contains("--upstream"),
        "{err}"
    );
}

#[test]
fn listening_beyond_loopback_without_authentication_is_warned_about() {
    // Bound on every address (the harness's gateways listen on loopback), and never connected to.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"));
    cmd.args(["demo", "--listen", "0.0.0.0:0"]);
    let open = Proc::spawn("ringgate", cmd);
    open.wait_stderr("no authentication", START_TIMEOUT);
    let local = Launch::demo().start();
    // The warning would come before this line, in the same stream.
    local.proc.wait_stderr("connection limit", START_TIMEOUT);
    assert!(
        !local.proc.stderr_text().contains("no authentication"),
        "warned on loopback"
    );
}
