//! The layers of `src/` import downward only (docs/architecture.md, "The layers"): each top-level
//! module may name only the modules listed for it. Read from the source, so a new `use` that
//! climbs a layer (a codec reaching for the runtime, a state machine reaching for a socket) fails
//! here before it lands.

use std::collections::BTreeSet;
use std::path::Path;

/// Each top-level module and the modules it may import (besides itself and the test helpers).
const ALLOWED: &[(&str, &[&str])] = &[
    ("ws", &[]),
    ("protocol", &[]),
    ("proxy_protocol", &[]),
    ("shard", &[]),
    ("auth", &["ws"]),
    ("config", &["auth"]),
    ("runtime", &[]),
    ("session", &["ws"]),
    ("link", &["protocol", "ws", "shard"]),
    ("echo_server", &["protocol", "runtime"]),
    (
        "gateway",
        &[
            "auth",
            "config",
            "link",
            "protocol",
            "proxy_protocol",
            "runtime",
            "session",
            "shard",
            "ws",
        ],
    ),
    ("cli", &["auth", "config", "echo_server", "gateway"]),
];

fn sources(path: &Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for e in entries {
            sources(&e, out);
        }
    } else if path.is_file() && path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// Every `crate::NAME` a file mentions.
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        found.insert(name);
    }
    found
}

#[test]
fn every_layer_imports_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    let mut checked = 0;
    for (module, allowed) in ALLOWED {
        let mut files = Vec::new();
        sources(&src.join(module), &mut files);
        sources(&src.join(format!("{module}.rs")), &mut files);
        assert!(!files.is_empty(), "no source for module {module}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            checked += 1;
            for name in imports(&text) {
                let ok = name == *module || name == "test_rng" || allowed.contains(&name.as_str());
                if !ok {
                    violations.push(format!("{} imports crate::{name}", file.display()));
                }
            }
        }
    }
    assert!(checked > 30, "only {checked} files checked");
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn every_module_of_the_crate_has_a_place_in_the_layers() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(name) = line.strip_prefix("pub mod ") {
            let name = name.trim_end_matches(';');
            assert!(
                ALLOWED.iter().any(|(m, _)| *m == name),
                "src/lib.rs has module {name}, which the layer check does not know"
            );
        }
    }
}

#[test]
fn the_import_scan_sees_what_it_must() {
    let found =
        imports("use crate::ws::{Decoder};\n/// see [`crate::runtime::sys`]\nuse crate::session;");
    let want: BTreeSet<String> = ["ws", "runtime", "session"].map(String::from).into();
    assert_eq!(found, want);
}
