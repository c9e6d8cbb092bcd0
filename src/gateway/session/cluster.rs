//! The session lifecycle of a clustered node (`[cluster]`): the id a new session's client
//! holds (a sealed token when its upstream half can move, else an id pinned to this node),
//! the shard a client's id belongs to, and adopting a session another node began (or this
//! one before a restart) from its sealed id.
//!
//! Invariants: every refused id is a 404 counted by its reason (`metrics::CLUSTER_REFUSALS`);
//! an adopted session holds session permits like a new one; a sealed id is in the table of
//! the shard its routing byte names, on every node.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::cluster::Claims;
use crate::codec::http::RequestHead;
use crate::error::{Error, Kind, Result};
use crate::mcp::{SessionId, Version};
use crate::metrics::{gauge_add, inc};
use crate::shard::{ClientConn, Shard};

use super::{acquire, open_client_session};

/// In a cluster, gives a new session the id its client will hold: a sealed token when its
/// upstream half can move (HTTP upstreams only), else an id pinned to this node. A session
/// whose claims do not fit a token (an upstream session id or subject over 255 bytes) is
/// pinned too, and logged.
pub(super) fn name_for_client(shard: &Shard, id: &SessionId) {
    let Some(cluster) = &shard.config().cluster else {
        return;
    };
    let mut sessions = shard.sessions.borrow_mut();
    let Some(s) = sessions.get(id) else {
        return;
    };
    let sealed = s.upstream.parts().and_then(|parts| {
        let claims = crate::cluster::Claims {
            node: cluster.node_id.clone(),
            shard: id.shard,
            version: s.version.index(),
            issued_s: unix_now(),
            subject: s.owner.as_deref().map(String::from),
            members: parts
                .into_iter()
                .map(|(server, upstream, sid)| crate::cluster::Member {
                    server: server as u8,
                    upstream: upstream as u8,
                    sid: sid.as_deref().map(String::from),
                })
                .collect(),
        };
        cluster
            .keys
            .seal_random(&claims)
            .inspect_err(|e| {
                log::warn!("shard {}: session pinned to this node: {e}", shard.id);
            })
            .ok()
    });
    match sealed {
        Some(token) => sessions.set_token(id, Rc::from(token), true),
        None => {
            let pinned = crate::cluster::pinned_id(&cluster.node_id, &id.encode());
            sessions.set_token(id, Rc::from(pinned), false);
        }
    }
}

/// The id the client holds for session `id`: its token in a cluster, else the local id.
pub fn client_id(shard: &Shard, id: &SessionId) -> String {
    match shard
        .sessions
        .borrow()
        .get(id)
        .and_then(|s| s.token.as_deref())
    {
        Some(token) => token.to_string(),
        None => id.encode(),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The shard serving the session a client's id names, when the id says (a plain or pinned
/// id: its shard; a sealed token: the shard byte in the clear, modulo this node's shards, so
/// a node of fewer shards serves another's tokens too). `None`: any shard will answer.
pub fn owner_shard(shard: &Shard, raw: &[u8]) -> Option<usize> {
    let shards = shard.shared.config.shards;
    let Some(cluster) = &shard.config().cluster else {
        return Some(SessionId::decode(raw)?.shard as usize);
    };
    match raw.iter().position(|&b| b == b'.') {
        Some(dot) if &raw[..dot] == cluster.node_id.as_bytes() => {
            Some(SessionId::decode(&raw[dot + 1..])?.shard as usize)
        }
        Some(_) => None,
        None => Some(usize::from(crate::cluster::token_shard(raw)?) % shards),
    }
}

/// What a client's session id names here.
pub(super) enum Named<'a> {
    /// A session in this shard's table.
    Local(SessionId),
    /// A sealed token this shard does not hold: adopt it, if it opens.
    Sealed(&'a str),
}

/// Refuses a clustered session id (404), counted by `why` (`metrics::CLUSTER_REFUSALS`).
fn refuse(shard: &Shard, why: &'static str) -> Error {
    shard.stats.count_cluster_refusal(why);
    Error::new(Kind::UnknownSession, format!("session id refused: {why}"))
}

pub(super) fn name<'a>(shard: &Shard, raw: &'a [u8]) -> Result<Named<'a>> {
    let unknown = || Error::new(Kind::UnknownSession, "");
    let Some(cluster) = &shard.config().cluster else {
        return SessionId::decode(raw).map(Named::Local).ok_or_else(unknown);
    };
    let text = std::str::from_utf8(raw).map_err(|_| refuse(shard, "malformed"))?;
    if let Some((node, local)) = text.split_once('.') {
        if node != cluster.node_id {
            return Err(refuse(shard, "foreign_node"));
        }
        return SessionId::decode(local.as_bytes())
            .map(Named::Local)
            .ok_or_else(unknown);
    }
    match shard.sessions.borrow().find_token(text) {
        Some(id) => Ok(Named::Local(id)),
        None => Ok(Named::Sealed(text)),
    }
}

/// Serves a session another node began (or this node before a restart) from its sealed id:
/// opens it, checks it is not one that ended here, not past its maximum age (counted from
/// its start elsewhere), and the subject's; then enters it in the table under the session
/// permits, with the same upstream sessions. Every refusal is a 404, counted.
pub(super) fn adopt(
    shard: &Rc<Shard>,
    conn: &ClientConn,
    head: &RequestHead,
    token: &str,
    subject: Option<&str>,
) -> Result<SessionId> {
    let (claims, version, age) = open_claims(shard, token, subject)?;
    let parts = claims
        .members
        .iter()
        .map(|m| {
            let sid = m.sid.as_deref().map(Rc::from);
            (usize::from(m.server), usize::from(m.upstream), sid)
        })
        .collect();
    let up = shard
        .up
        .adopt(&head.path, parts)
        .ok_or_else(|| refuse(shard, "route"))?;
    if !acquire(shard) {
        shard.stats.count_rejection("sessions");
        return Err(Error::new(Kind::Overloaded("sessions"), ""));
    }
    let cell = open_client_session(shard, conn)?;
    let now = Instant::now();
    let created = now.checked_sub(age).unwrap_or(now);
    let mut sessions = shard.sessions.borrow_mut();
    let id = sessions.insert_aged(up, version, created, now);
    sessions.set_token(&id, Rc::from(token), true);
    if let Some(s) = sessions.get_mut(&id) {
        s.client = Some(cell);
        s.owner = subject.map(Box::from);
    }
    drop(sessions);
    inc(&shard.stats.sessions_created);
    inc(&shard.stats.cluster_adopted);
    gauge_add(&shard.stats.sessions, 1);
    log::info!(
        "shard {}: adopted a session node {} shard {} began {} s ago",
        shard.id,
        claims.node,
        claims.shard,
        age.as_secs()
    );
    Ok(id)
}

/// The claims of a sealed id this shard may adopt, its version and its age: it opens under
/// one of the keys, did not end here, is within its maximum age, and is the subject's.
fn open_claims(
    shard: &Shard,
    token: &str,
    subject: Option<&str>,
) -> Result<(Claims, Version, Duration)> {
    let Some(cluster) = &shard.config().cluster else {
        return Err(Error::new(Kind::UnknownSession, ""));
    };
    if shard.sessions.borrow().was_ended(token) {
        return Err(refuse(shard, "ended"));
    }
    let claims = cluster
        .keys
        .open(token)
        .map_err(|e| refuse(shard, e.label()))?;
    let age = Duration::from_secs(unix_now().saturating_sub(claims.issued_s));
    if age >= shard.config().timeouts.session_max_age {
        return Err(refuse(shard, "expired"));
    }
    if claims.subject.as_deref() != subject {
        return Err(refuse(shard, "subject"));
    }
    let version = Version::from_index(claims.version).ok_or_else(|| refuse(shard, "invalid"))?;
    Ok((claims, version, age))
}

/// An adopted session's tape, when recording: it starts here, as the session does.
pub(super) async fn start_adopted_tape(
    shard: &Shard,
    conn: &ClientConn,
    head: &RequestHead,
    id: &SessionId,
    subject: Option<&str>,
) {
    let Some(session) = shard.new_tape_session() else {
        return;
    };
    let version = match shard.sessions.borrow().get(id) {
        Some(s) => s.version,
        None => return,
    };
    let servers = shard.up.route_servers_json(&head.path);
    let client = (&*crate::gateway::peer(conn), subject);
    shard
        .record_start(session, version.as_str(), client, servers)
        .await;
    match shard.sessions.borrow_mut().get_mut(id) {
        Some(s) => s.tape = Some(session),
        None => shard.record_end(session, "session ended"),
    }
}
