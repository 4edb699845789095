//! An upstream link as a state machine: frames from the game server, keepalive ticks and the
//! sessions opening and closing on it go in; decisions come out (deliver this message to that
//! session, close that session with this code, answer with this frame, the link is over and why).
//!
//! Owns the rules of one link (docs/protocol.md): the HELLO handshake ([`handshake`]), the table
//! of the sessions it carries and, from version 2, their groups ([`groups`]) and the fan-out of
//! one message to many, keepalive, GOAWAY, the end-of-link reasons and the close code they
//! give its sessions, the backlog rule, the reconnect backoff ([`backoff`]) and the routing of a
//! session to a link ([`router`]). Imports only the codecs. Must never touch a socket, a timer or a
//! queue; the driver (`gateway::link`) applies every decision. Generic over the driver's session
//! handle `S`, so that it is tested with plain values.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rustc_hash::FxHashMap;

use crate::protocol::{self as proto, link_code, DecodeError, Frame, FrameType, OpenInfo, Policy};
use crate::ws::is_valid_close_code;

pub mod backoff;
pub mod groups;
pub mod handshake;
pub mod router;
pub mod senders;

use groups::{GroupId, Groups};

#[cfg(test)]
mod tests;

/// Why a link ended; decides the close code its sessions get.
#[derive(Debug, thiserror::Error)]
pub enum LinkEnd {
    #[error("connection lost: {0}")]
    Io(std::io::Error),
    #[error("closed by the game server")]
    Eof,
    #[error("protocol error: {0}")]
    Protocol(#[from] DecodeError),
    #[error("unexpected {0:?} frame")]
    Unexpected(FrameType),
    #[error("game server reported error {code}: {message}")]
    Remote { code: u16, message: String },
    #[error("the link's task panicked")]
    Panicked,
    #[error("core shutting down")]
    Shutdown,
}

/// What a frame from the game server asks of the driver.
#[derive(Debug)]
pub enum Action<S> {
    /// Nothing to do (a pong, a GOAWAY noted for later, a frame for a session already gone).
    None,
    /// Queue this message to the session's client.
    Deliver { to: S, text: bool, payload: Bytes },
    /// The game server closed or refused the session: close its client with this code (the
    /// session has left the table and the game server needs no CLOSE).
    CloseSession {
        session: S,
        code: u16,
        reason: String,
    },
    /// Queue one message to many sessions (PUBLISH, BROADCAST, MULTICAST): framed once, shared by
    /// every target's queue.
    Fanout(Fanout<S>),
    /// Send this frame back on the link.
    Reply(Bytes),
    /// The game server announced it is going away; its sessions get `code` when the link ends.
    GoingAway { code: u16, reason: String },
    /// The link is over: send `reply` if there is one (a LINK_ERROR), then tear it down.
    Fail { reply: Option<Bytes>, end: LinkEnd },
}

/// One message for many sessions, each with the slow-member policy it is sent under.
#[derive(Debug)]
pub struct Fanout<S> {
    pub targets: Vec<(S, Policy)>,
    /// The group published to, for the `latest` policy; 0 for BROADCAST and MULTICAST.
    pub group: GroupId,
    pub text: bool,
    pub payload: Bytes,
}

/// What the keepalive timer asks of the driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Keepalive {
    Ping(Bytes),
    /// Nothing arrived for `link_timeout`: the link is dead.
    Silent,
}

/// What a link that ended leaves to do: close every session it carried with `code` and `reason`.
pub struct Teardown<S> {
    pub code: u16,
    pub reason: String,
    pub sessions: Vec<S>,
}

pub struct Link<S> {
    up: bool,
    /// The protocol version the game server picked.
    version: u16,
    /// Keyed by our own session ids, so a multiply-and-fold hash is enough: SipHash's defence
    /// against chosen keys would be paid on every DATA frame for nothing.
    sessions: FxHashMap<u64, S>,
    groups: Groups<S>,
    /// The code and reason of the game server's GOAWAY, given to the sessions when the link ends.
    goaway: Option<(u16, String)>,
    last_rx: Instant,
    ping_seq: u64,
}

impl<S: Clone> Default for Link<S> {
    fn default() -> Self {
        Link::new(Instant::now())
    }
}

impl<S: Clone> Link<S> {
    pub fn new(now: Instant) -> Link<S> {
        Link {
            up: false,
            version: proto::MIN_VERSION,
            sessions: FxHashMap::default(),
            groups: Groups::default(),
            goaway: None,
            last_rx: now,
            ping_seq: 0,
        }
    }

    /// The handshake succeeded with `version`: sessions may be opened on the link from now on.
    pub fn on_up(&mut self, version: u16, now: Instant) {
        self.up = true;
        self.version = version;
        self.goaway = None;
        self.last_rx = now;
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// How many groups have members on this link.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// The session with this id, if the link carries it.
    pub fn session(&self, id: u64) -> Option<&S> {
        self.sessions.get(&id)
    }

    /// A new session on this link: returns its OPEN frame, to go out at once (DATA may follow it
    /// without waiting). An OPEN that cannot be encoded (fields over their size limits) opens
    /// nothing: the driver refuses the session as the game server would.
    pub fn open(
        &mut self,
        id: u64,
        session: S,
        info: &OpenInfo<'_>,
    ) -> Result<Bytes, proto::EncodeError> {
        let frame = proto::open(id, info)?;
        self.sessions.insert(id, session);
        Ok(frame)
    }

    /// The header of a DATA frame for a client message, or `None` while the link is down.
    pub fn data_header(&self, id: u64, text: bool, len: usize) -> Option<[u8; proto::HEADER_LEN]> {
        if !self.up {
            return None;
        }
        let mut head = [0u8; proto::HEADER_LEN];
        let flags = if text { proto::FLAG_TEXT } else { 0 };
        proto::encode_header(&mut head, FrameType::Data, flags, id, len);
        Some(head)
    }

    /// The client side of a session ended: it leaves the table, and the CLOSE frame that tells the
    /// game server ("player offline") is returned when it is owed (`tell`) and the link is up.
    pub fn closed(&mut self, id: u64, code: u16, tell: bool) -> Option<Bytes> {
        let carried = self.sessions.remove(&id).is_some();
        self.groups.leave_all(id);
        (carried && tell && self.up).then(|| proto::close(id, code, ""))
    }

    /// Something arrived from the game server.
    pub fn on_received(&mut self, now: Instant) {
        self.last_rx = now;
    }

    /// A whole frame from the game server (DATA bodies of game size are delivered by the driver
    /// through [`Link::session`] without becoming a frame).
    pub fn on_frame(&mut self, frame: Frame) -> Action<S> {
        // A frame of a later version than the link's is as unknown as an undefined type.
        if frame.frame_type().since_version() > self.version {
            return unexpected(frame.frame_type());
        }
        match frame {
            Frame::Data {
                session,
                text,
                payload,
            } => match self.sessions.get(&session) {
                Some(s) => Action::Deliver {
                    to: s.clone(),
                    text,
                    payload,
                },
                None => Action::None,
            },
            Frame::Close {
                session,
                code,
                reason,
            }
            | Frame::Refuse {
                session,
                code,
                reason,
            } => {
                self.groups.leave_all(session);
                match self.sessions.remove(&session) {
                    Some(s) => Action::CloseSession {
                        session: s,
                        code: ws_close_code(code),
                        reason,
                    },
                    None => Action::None,
                }
            }
            Frame::Join {
                session,
                policy,
                group,
            } => {
                // A session already gone is ignored: its CLOSE may be crossing this JOIN.
                if let Some(s) = self.sessions.get(&session) {
                    self.groups.join(session, s.clone(), policy, &group);
                }
                Action::None
            }
            Frame::Leave { session, group } => {
                self.groups.leave(session, &group);
                Action::None
            }
            Frame::Publish {
                group,
                except,
                text,
                payload,
            } => match self.groups.members(&group, except) {
                Some((group, targets)) => Action::Fanout(Fanout {
                    targets,
                    group,
                    text,
                    payload,
                }),
                None => Action::None,
            },
            Frame::Broadcast {
                except,
                text,
                payload,
            } => Action::Fanout(Fanout {
                targets: self
                    .sessions
                    .iter()
                    .filter(|(id, _)| **id != except)
                    .map(|(_, s)| (s.clone(), Policy::Close))
                    .collect(),
                group: 0,
                text,
                payload,
            }),
            Frame::Multicast {
                targets,
                text,
                payload,
            } => Action::Fanout(Fanout {
                targets: targets
                    .iter()
                    .filter_map(|id| self.sessions.get(&id))
                    .map(|s| (s.clone(), Policy::Close))
                    .collect(),
                group: 0,
                text,
                payload,
            }),
            Frame::Ping(token) => Action::Reply(proto::pong(token)),
            Frame::Pong(_) => Action::None,
            Frame::GoAway { code, reason } => {
                self.goaway = Some((ws_close_code(code), reason.clone()));
                Action::GoingAway { code, reason }
            }
            Frame::LinkError { code, message } => Action::Fail {
                reply: None,
                end: LinkEnd::Remote { code, message },
            },
            Frame::Hello { .. } => unexpected(FrameType::Hello),
            Frame::HelloAck { .. } => unexpected(FrameType::HelloAck),
            Frame::Open { .. } => unexpected(FrameType::Open),
        }
    }

    /// Bytes from the game server that do not decode: answer with LINK_ERROR and end the link.
    pub fn on_decode_error(&mut self, e: DecodeError) -> Action<S> {
        Action::Fail {
            reply: Some(proto::link_error(e.link_error_code(), &e.to_string())),
            end: LinkEnd::Protocol(e),
        }
    }

    /// The keepalive timer fired at `now`: ping, or declare the link dead when it has been silent
    /// for `timeout`.
    pub fn keepalive(&mut self, now: Instant, timeout: Duration) -> Keepalive {
        if now.saturating_duration_since(self.last_rx) >= timeout {
            return Keepalive::Silent;
        }
        self.ping_seq += 1;
        Keepalive::Ping(proto::ping(self.ping_seq.to_be_bytes()))
    }

    /// The link is over: every session it carried is to be closed, with 1011 "upstream lost" or
    /// with the code of the server's GOAWAY (1012 for a restart).
    pub fn end(&mut self) -> Teardown<S> {
        self.up = false;
        let (code, reason) = self
            .goaway
            .take()
            .unwrap_or((1011, "upstream lost".to_string()));
        self.groups.clear();
        Teardown {
            code,
            reason,
            sessions: std::mem::take(&mut self.sessions).into_values().collect(),
        }
    }
}

/// The backlog rule, going up: past `backlog` queued bytes the sessions feeding the link stop being
/// read, so that TCP pushes back on their clients.
pub fn congested(queued: usize, backlog: usize) -> bool {
    queued > backlog
}

/// The backlog rule, coming down: reading resumes once the queue has drained to half.
pub fn relieved(queued: usize, backlog: usize) -> bool {
    queued <= backlog / 2
}

fn unexpected<S>(ty: FrameType) -> Action<S> {
    Action::Fail {
        reply: Some(proto::link_error(
            link_code::MALFORMED,
            &format!("unexpected {ty:?} frame"),
        )),
        end: LinkEnd::Unexpected(ty),
    }
}

/// A code from the game server, made safe to put in a WebSocket close frame.
pub fn ws_close_code(code: u16) -> u16 {
    if is_valid_close_code(code) {
        code
    } else {
        1011
    }
}
