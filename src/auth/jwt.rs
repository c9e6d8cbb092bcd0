//! Bearer JWTs: the header picks the key (by `kid`, among the JWKS keys of the header's
//! algorithm), `jsonwebtoken` checks the signature and `iss`, `aud` (one of ours, RFC 8707),
//! `exp` and `nbf`; then `iat` must not be in the future and `sub` must name someone. The
//! subject's scopes come from `scope` (space-separated, RFC 9068) or `scp` (a string or a
//! list).
//!
//! Invariants: only asymmetric algorithms are accepted (`auth::ALGORITHMS`): `none` is no algorithm
//! to `jsonwebtoken` and HS* never matches a JWKS key, so a token signed with a public key
//! used as an HMAC secret is refused; every clock check allows `leeway_s`.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Header, Validation};
use serde::Deserialize;

use super::jwks::KeySet;
use super::{Denial, Subject, ALGORITHMS};
use crate::config::OAuthConfig;

/// The claims read from a token (others are ignored).
#[derive(Debug, Deserialize)]
pub struct Claims {
    pub sub: Option<String>,
    pub exp: Option<f64>,
    pub iat: Option<f64>,
    pub scope: Option<String>,
    pub scp: Option<Scopes>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Scopes {
    Text(String),
    List(Vec<String>),
}

impl Claims {
    /// The scopes granted: `scope`, else `scp`; empty entries dropped.
    pub fn scopes(&self) -> Vec<&str> {
        match (&self.scope, &self.scp) {
            (Some(s), _) | (None, Some(Scopes::Text(s))) => s.split_ascii_whitespace().collect(),
            (None, Some(Scopes::List(v))) => v
                .iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .collect(),
            (None, None) => Vec::new(),
        }
    }
}

/// A token that passed every check.
pub struct Verified {
    pub subject: Subject,
    /// Its `exp`, Unix seconds.
    pub exp: u64,
}

/// The checks for one issuer and audience, built once.
pub struct Verifier {
    /// One `Validation` per key family: `jsonwebtoken` wants every allowed algorithm to be of
    /// the key's family.
    by_family: Vec<(AlgorithmFamily, Validation)>,
    leeway_s: u64,
}

impl Verifier {
    pub fn new(cfg: &OAuthConfig) -> Verifier {
        let families = [
            AlgorithmFamily::Rsa,
            AlgorithmFamily::Ec,
            AlgorithmFamily::Ed,
        ];
        let by_family = families
            .into_iter()
            .map(|family| {
                let algs: Vec<Algorithm> = ALGORITHMS
                    .into_iter()
                    .filter(|a| a.family() == family)
                    .collect();
                let mut v = Validation::new(algs[0]);
                v.algorithms = algs;
                v.leeway = cfg.leeway_s;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.validate_aud = true;
                v.set_issuer(&[&cfg.issuer]);
                v.set_audience(&cfg.audience);
                v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                (family, v)
            })
            .collect();
        Verifier {
            by_family,
            leeway_s: cfg.leeway_s,
        }
    }

    pub fn leeway_s(&self) -> u64 {
        self.leeway_s
    }

    /// Checks `token` against `keys` at `now` (Unix seconds).
    pub fn verify(&self, keys: &KeySet, token: &str, now: u64) -> Result<Verified, Denial> {
        let header = header(token)?;
        let key = keys
            .find(header.kid.as_deref(), header.alg)
            .ok_or(Denial::UnknownKey)?;
        let validation = self
            .by_family
            .iter()
            .find(|(f, _)| *f == header.alg.family())
            .map(|(_, v)| v)
            .ok_or(Denial::Invalid("the token's algorithm is not accepted"))?;
        let data = jsonwebtoken::decode::<Claims>(token, key.decoding(), validation)
            .map_err(|e| denial(e.kind()))?;
        let claims = data.claims;
        if claims
            .iat
            .is_some_and(|iat| iat > (now + self.leeway_s) as f64)
        {
            return Err(Denial::Invalid("the token is issued in the future"));
        }
        let subject = subject_of(&claims)?;
        let exp = claims.exp.map_or(0, |e| e.max(0.0) as u64);
        Ok(Verified { subject, exp })
    }
}

/// A token's header, if its algorithm is one we accept.
pub fn header(token: &str) -> Result<Header, Denial> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|_| Denial::Invalid("malformed token"))?;
    if !ALGORITHMS.contains(&header.alg) {
        return Err(Denial::Invalid("the token's algorithm is not accepted"));
    }
    Ok(header)
}

/// The subject a token's claims name: `sub`, with its scopes.
pub fn subject_of(claims: &Claims) -> Result<Subject, Denial> {
    let name = claims
        .sub
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(Denial::Invalid("the token names no subject"))?;
    Ok(super::subject(name, claims.scopes().into_iter()))
}

/// A token's header and claims, decoded with no check at all (the fuzz target's entry; never
/// an authentication).
pub fn peek(token: &str) -> Result<(Header, Claims), Denial> {
    let data = jsonwebtoken::dangerous::insecure_decode::<Claims>(token)
        .map_err(|_| Denial::Invalid("malformed token"))?;
    Ok((data.header, data.claims))
}

fn denial(kind: &ErrorKind) -> Denial {
    match kind {
        ErrorKind::ExpiredSignature => Denial::Expired,
        ErrorKind::InvalidAudience => Denial::WrongAudience,
        ErrorKind::ImmatureSignature => Denial::Invalid("the token is not valid yet"),
        ErrorKind::InvalidIssuer => Denial::Invalid("the token is from another issuer"),
        ErrorKind::InvalidSignature => Denial::Invalid("the token's signature does not verify"),
        ErrorKind::InvalidAlgorithm => {
            Denial::Invalid("the token's algorithm does not fit its key")
        }
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => Denial::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) => Denial::Invalid("the token lacks a required claim"),
        _ => Denial::Invalid("malformed token"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: &str) -> Claims {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn scopes_from_scope_or_scp() {
        assert_eq!(claims(r#"{"scope":" a  b "}"#).scopes(), ["a", "b"]);
        assert_eq!(claims(r#"{"scp":"a b"}"#).scopes(), ["a", "b"]);
        assert_eq!(claims(r#"{"scp":["a"," ","b"]}"#).scopes(), ["a", "b"]);
        assert_eq!(claims(r#"{"scope":"x","scp":["a"]}"#).scopes(), ["x"]);
        assert!(claims("{}").scopes().is_empty());
        assert!(subject_of(&claims(r#"{"sub":"  "}"#)).is_err());
        assert_eq!(&*subject_of(&claims(r#"{"sub":"u"}"#)).unwrap().name, "u");
    }

    #[test]
    fn refuses_symmetric_and_none() {
        // {"alg":"HS256","typ":"JWT"} and {"alg":"none"}
        assert!(header("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.c2ln").is_err());
        assert!(header("eyJhbGciOiJub25lIn0.e30.").is_err());
        // {"alg":"RS256","kid":"k"}
        let h = header("eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.e30.c2ln").unwrap();
        assert_eq!(h.kid.as_deref(), Some("k"));
    }
}
