//! The authentication stage: who sent the request (`auth::ShardAuth`), or the 401 / 403 that
//! says how to authenticate (RFC 6750 challenges naming the protected resource metadata,
//! RFC 9728); and that metadata itself, served without authentication.
//!
//! Invariants: with auth on, no request passes this stage without a subject, which then is
//! the client for per-client limits (its cell is set on the connection) and the owner of the
//! sessions it opens; every refusal is counted by result and logged once, with its reason and
//! never the credential.

use std::rc::Rc;

use super::{client, peer, respond, validate, Exchange, Outcome};
use crate::auth::{self, Denial};
use crate::codec::http::{self, HeadBody, Method, RequestHead};
use crate::error::{Error, Kind, Result};
use crate::shard::{ClientConn, Shard};

/// The protected resource metadata document, when auth is on and `head` asks for it.
pub fn metadata<'a>(shard: &'a Shard, head: &RequestHead) -> Option<&'a str> {
    let cfg = &shard.config().auth;
    if head.method != Method::Get || cfg.metadata_paths.is_empty() {
        return None;
    }
    let path = head.path.split('?').next().unwrap_or("");
    cfg.metadata_paths
        .iter()
        .any(|p| p == path)
        .then_some(cfg.metadata_json.as_str())
}

/// Writes the metadata document. Browser-based clients fetch it from other origins.
pub async fn serve_metadata(conn: &mut ClientConn, doc: &str) -> Result<Outcome> {
    let extra = b"content-type: application/json\r\ncache-control: max-age=300\r\naccess-control-allow-origin: *\r\n";
    let mut out = Vec::with_capacity(256 + doc.len());
    http::write_response_head(&mut out, 200, extra, HeadBody::Length(doc.len()));
    out.extend_from_slice(doc.as_bytes());
    respond::write(conn, out).await?;
    Ok(Outcome::written(200))
}

/// Authenticates the request (auth on): its subject goes on the exchange and names the client.
pub async fn authenticate(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    head: &RequestHead,
    ex: &mut Exchange,
) -> Result<()> {
    if !shard.auth.shared.is_on() {
        return Ok(());
    }
    let h = &head.headers;
    let found =
        shard
            .auth
            .authenticate(h.get("authorization"), h.get("x-api-key"), auth::unix_now());
    match found {
        Ok(subject) => {
            shard.stats.count_auth("ok");
            conn.set_client_cell(shard.shared.clients.cell_of_name(&subject.name));
            ex.grant = subject.grant.clone();
            ex.subject = Some(subject);
            Ok(())
        }
        Err(d) => Err(refuse(shard, conn, head, ex, d).await),
    }
}

/// The error a denial is answered with, counted and logged, with the request's id when its
/// body can be read.
async fn refuse(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    head: &RequestHead,
    ex: &mut Exchange,
    d: Denial,
) -> Error {
    shard.stats.count_auth(d.label());
    log::info!(
        "shard {}: auth: refused {} from {}: {} ({})",
        shard.id,
        head.method.as_str(),
        peer(conn),
        d.reason(),
        d.label()
    );
    let e = match d {
        Denial::Missing => Error::new(Kind::Unauthorized { sent: false }, ""),
        Denial::InsufficientScope => Error::new(
            Kind::InsufficientScope,
            format!("requires scope {}", shard.auth.shared.scope_param),
        ),
        d => Error::new(Kind::Unauthorized { sent: true }, d.reason()),
    };
    let id = request_id(shard, conn, head, ex).await;
    e.with_id(id.as_deref())
}

/// The id of a POST's first message: its body is read (as it would be to keep the connection)
/// so that the error answers it.
async fn request_id(
    shard: &Shard,
    conn: &mut ClientConn,
    head: &RequestHead,
    ex: &mut Exchange,
) -> Option<String> {
    if head.method != Method::Post || !ex.body_pending {
        return None;
    }
    let body = client::read_body(shard, conn, head).await.ok()?;
    ex.body_pending = false;
    let parsed = validate::classify(&body).ok()?;
    let id = parsed.messages().first()?.id?;
    Some(id.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_knows_the_endpoint_path() {
        assert_eq!(crate::config::ENDPOINT_PATH, super::super::MCP_PATH);
    }
}
