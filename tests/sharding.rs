//! Sessions live on the core that owns their user (`ringgate::shard::owner_core`), whichever core
//! accepted the connection; a connection without a user stays where it was accepted.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use ringgate::shard::owner_core;
use serde_json::Value;
use support::*;
use tungstenite::Message;

const USERS: usize = 200;
const WORKERS: usize = 2;

/// user → (core, session id) from a `/sessions` body; fails on a user listed twice.
fn placement(sessions: &Stats) -> (HashMap<String, (usize, u64)>, usize) {
    let mut users = HashMap::new();
    let mut anonymous = 0;
    for core in sessions.cores() {
        let index = core["core"].as_u64().unwrap() as usize;
        let list = core["users"]
            .as_array()
            .unwrap_or_else(|| panic!("/sessions lacks the users list: {core}"));
        assert_eq!(
            list.len() as u64,
            core["sessions"].as_u64().unwrap(),
            "{core}"
        );
        for entry in list {
            let pair = entry
                .as_array()
                .unwrap_or_else(|| panic!("bad entry {entry}"));
            assert_eq!(pair.len(), 2, "bad entry {entry}");
            let id = pair[0]
                .as_u64()
                .unwrap_or_else(|| panic!("bad session id in {entry}"));
            match &pair[1] {
                Value::String(u) => {
                    let before = users.insert(u.clone(), (index, id));
                    assert!(before.is_none(), "user {u} listed twice: {sessions}");
                }
                Value::Null => anonymous += 1,
                other => panic!("bad user {other} in {entry}"),
            }
        }
    }
    (users, anonymous)
}

#[test]
fn every_user_lives_on_its_owner_core() {
    let server = Gateway::demo(&["--workers", "2"]);
    assert_eq!(server.workers(), WORKERS);
    let names: Vec<String> = (0..USERS).map(|i| format!("user{i}")).collect();
    let mut conns: Vec<Client> = names.iter().map(|u| server.client(u)).collect();
    // Every session works, wherever it was accepted.
    for (ws, u) in conns.iter_mut().zip(&names) {
        ws.echo(Message::Text(format!("I am {u}")));
    }

    let sessions = server.sessions();
    let (users, anonymous) = placement(&sessions);
    assert_eq!(anonymous, 0, "{sessions}");
    assert_eq!(users.len(), USERS, "{sessions}");
    let mut per_core = [0usize; WORKERS];
    for u in &names {
        let (core, _) = users
            .get(u)
            .unwrap_or_else(|| panic!("{u} missing from /sessions: {sessions}"));
        assert_eq!(
            *core,
            owner_core(u.as_bytes(), WORKERS),
            "{u} lives on core {core}, not on its owner"
        );
        per_core[*core] += 1;
    }
    assert!(
        per_core.iter().all(|&n| n > 0),
        "one core holds no session: {per_core:?}"
    );
    let ids: std::collections::HashSet<u64> = users.values().map(|(_, id)| *id).collect();
    assert_eq!(ids.len(), USERS, "session ids are not unique: {sessions}");

    let stats = server.stats();
    for core in stats.cores() {
        let i = core["core"].as_u64().unwrap() as usize;
        assert_eq!(
            core["sessions"].as_u64().unwrap() as usize,
            per_core[i],
            "{stats}"
        );
    }
    let handed = stats.counter("handed_off");
    let received = stats.counter("received_from_other_core");
    assert!(
        handed > 0,
        "no connection was handed to its owner core: {stats}"
    );
    assert_eq!(handed, received, "handed off vs received: {stats}");
    assert!(handed <= USERS as u64, "{stats}");
    assert_eq!(stats.counter("upgraded"), USERS as u64, "{stats}");

    // A client without a user is served too, and listed without one.
    let mut anon = server.anonymous_client();
    anon.echo(Message::Binary(vec![1, 2, 3]));
    let sessions = server.sessions();
    let (users, anonymous) = placement(&sessions);
    assert_eq!((users.len(), anonymous), (USERS, 1), "{sessions}");
    let stats = server.stats();
    assert_eq!(
        stats.counter("handed_off"),
        handed,
        "an anonymous client was handed off: {stats}"
    );

    // The held connections still work after all that.
    for (ws, u) in conns.iter_mut().zip(&names) {
        ws.echo(Message::Binary(u.clone().into_bytes()));
    }
    for ws in conns {
        ws.close();
    }
    anon.close();
    server.wait_stats("sessions released", Duration::from_secs(10), |s| {
        s.sessions_total() == 0
    });
}

#[test]
fn the_user_parameter_is_found_among_other_query_parameters() {
    let server = Gateway::demo(&["--workers", "2"]);
    let addr = server.addr();
    let names: Vec<String> = (0..40).map(|i| format!("q{i}")).collect();
    let mut conns: Vec<Client> = names
        .iter()
        .map(|u| Client::connect(addr, &format!("{}?room=7&user={u}&v=2", server.url()), u))
        .collect();
    for ws in conns.iter_mut() {
        ws.echo(Message::Text("x".into()));
    }
    let sessions = server.sessions();
    let (users, _) = placement(&sessions);
    for u in &names {
        let (core, _) = users
            .get(u)
            .unwrap_or_else(|| panic!("{u} missing: {sessions}"));
        assert_eq!(*core, owner_core(u.as_bytes(), 2), "{u}");
    }
}
