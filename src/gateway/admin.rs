//! The admin HTTP endpoint, served by core 0: `GET /stats` (counters of every core) and
//! `GET /sessions` (the same plus every open session's id and user).
//!
//! Owns only its own small HTTP exchange. It never reads another core's state directly: it asks
//! each core for a snapshot over the core's channel and waits for the replies.

use std::rc::Rc;
use std::time::Duration;

use monoio::io::AsyncWriteRentExt;
use monoio::net::{TcpListener, TcpStream};

use crate::gateway::core::{bump, Core};
use crate::gateway::{CoreMsg, CoreSnapshot};
use crate::runtime::contain::Contained;
use crate::runtime::sys::{self, ReadOutcome};

pub async fn serve(core: Rc<Core>, listener: std::net::TcpListener) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot adopt admin listener");
            return;
        }
    };
    loop {
        let accepted = monoio::select! {
            _ = core.shutdown.wait() => return,
            r = listener.accept() => r,
        };
        if let Ok((stream, _)) = accepted {
            let owner = core.clone();
            monoio::spawn(Contained::new(exchange(core.clone(), stream), move || {
                bump(&owner.counters.panics);
                tracing::error!("admin request panicked; connection dropped");
            }));
        }
    }
}

async fn exchange(core: Rc<Core>, stream: TcpStream) {
    let _ = monoio::time::timeout(Duration::from_secs(5), answer(core, stream)).await;
}

async fn answer(core: Rc<Core>, mut stream: TcpStream) {
    if sys::prepare_client_socket(sys::fd(&stream)).is_err() {
        return;
    }
    let mut buf = bytes::BytesMut::with_capacity(4096);
    let path = loop {
        if stream.readable(false).await.is_err() {
            return;
        }
        match sys::read_into(sys::fd(&stream), &mut buf) {
            Ok(ReadOutcome::Data(_)) => {}
            Ok(ReadOutcome::WouldBlock) => continue,
            _ => return,
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => break req.path.unwrap_or("/").to_string(),
            Ok(httparse::Status::Partial) if buf.len() < buf.capacity() => {}
            _ => return,
        }
    };
    let (status, body) = match path.as_str() {
        "/stats" => ("200 OK", gather(&core, false).await),
        "/sessions" => ("200 OK", gather(&core, true).await),
        _ => (
            "404 Not Found",
            "{\"error\":\"try /stats or /sessions\"}".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.into_bytes()).await;
}

/// Asks every core (this one included, through its own channel) for a snapshot.
async fn gather(core: &Core, sessions: bool) -> String {
    let mut snapshots: Vec<CoreSnapshot> = Vec::with_capacity(core.peers.len());
    for peer in &core.peers {
        let (reply, rx) = flume::bounded(1);
        if peer
            .send_async(CoreMsg::Snapshot { sessions, reply })
            .await
            .is_err()
        {
            continue;
        }
        if let Ok(s) = rx.recv_async().await {
            snapshots.push(s);
        }
    }
    serde_json::to_string(&snapshots).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
