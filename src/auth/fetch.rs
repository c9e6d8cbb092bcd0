//! A small blocking HTTP/1.1 client for one thing: GET a JWKS over plain `http://`, on the
//! JWKS thread (never on a shard). The whole exchange (connect, send, every read) fits in one
//! deadline, and the body in `max` bytes; a redirect, another status than 200, or a body that
//! does not end as its framing says, fails the fetch.
//!
//! Why not `ureq`: it is an optional dependency of the `cli` feature (with rustls and ring),
//! and the library, which the fuzz crate builds without features, must fetch keys as well.
//! An issuer served only over https is reached through a local proxy, or with `jwks_file`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Largest response head read.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// GETs `path` from `authority` (`host:port`); the body of a 200 answer.
pub fn get(authority: &str, path: &str, timeout: Duration, max: usize) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + timeout;
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} resolves to nothing"))?;
    let mut s = TcpStream::connect_timeout(&addr, left(deadline)?)
        .map_err(|e| format!("{authority}: connect: {e}"))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: {authority}\r\naccept: application/json\r\nuser-agent: shardcat\r\nconnection: close\r\n\r\n"
    );
    s.set_write_timeout(Some(left(deadline)?))
        .map_err(|e| e.to_string())?;
    s.write_all(req.as_bytes())
        .map_err(|e| format!("{authority}: send: {e}"))?;
    let mut r = Reader {
        s,
        deadline,
        buf: Vec::with_capacity(8192),
        eof: false,
    };
    let (status, head_len, framing) = r.head()?;
    if status != 200 {
        return Err(format!("{authority}{path}: status {status}"));
    }
    r.buf.drain(..head_len);
    match framing {
        Framing::Length(n) if n > max => Err(format!("the body ({n} bytes) exceeds {max}")),
        Framing::Length(n) => {
            r.fill_to(n, max)?;
            r.buf.truncate(n);
            Ok(r.buf)
        }
        Framing::Chunked => r.chunked(max),
        Framing::Close => {
            while !r.eof {
                r.more(max)?;
            }
            Ok(r.buf)
        }
    }
}

fn left(deadline: Instant) -> Result<Duration, String> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        Err("timed out".into())
    } else {
        Ok(d)
    }
}

enum Framing {
    Length(usize),
    Chunked,
    Close,
}

struct Reader {
    s: TcpStream,
    deadline: Instant,
    buf: Vec<u8>,
    eof: bool,
}

impl Reader {
    /// Reads more bytes (at most `max` held); fails at the deadline.
    fn more(&mut self, max: usize) -> Result<(), String> {
        if self.buf.len() > max {
            return Err(format!("the body exceeds {max} bytes"));
        }
        self.s
            .set_read_timeout(Some(left(self.deadline)?))
            .map_err(|e| e.to_string())?;
        let mut chunk = [0u8; 8192];
        match self.s.read(&mut chunk) {
            Ok(0) => self.eof = true,
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        Ok(())
    }

    fn fill_to(&mut self, n: usize, max: usize) -> Result<(), String> {
        while self.buf.len() < n {
            if self.eof {
                return Err("the body ended early".into());
            }
            self.more(max.max(n))?;
        }
        Ok(())
    }

    fn head(&mut self) -> Result<(u16, usize, Framing), String> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut res = httparse::Response::new(&mut headers);
            match res.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = res.code.unwrap_or(0);
                    return Ok((status, len, framing(res.headers)?));
                }
                Ok(httparse::Status::Partial) if !self.eof => self.more(MAX_HEAD_BYTES)?,
                Ok(httparse::Status::Partial) => return Err("the answer ended in its head".into()),
                Err(e) => return Err(format!("bad answer: {e}")),
            }
        }
    }

    /// Decodes a chunked body in place: `buf` holds it from its first chunk on.
    fn chunked(mut self, max: usize) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let (start, size) = loop {
                match httparse::parse_chunk_size(&self.buf[at..]) {
                    Ok(httparse::Status::Complete((n, size))) => break (at + n, size as usize),
                    Ok(httparse::Status::Partial) if !self.eof => {
                        self.more(max + MAX_HEAD_BYTES)?
                    }
                    _ => return Err("bad chunked body".into()),
                }
            };
            if size == 0 {
                return Ok(body);
            }
            if body.len() + size > max {
                return Err(format!("the body exceeds {max} bytes"));
            }
            // The chunk and its CRLF.
            self.fill_to(start + size + 2, max + MAX_HEAD_BYTES)?;
            body.extend_from_slice(&self.buf[start..start + size]);
            at = start + size + 2;
        }
    }
}

fn framing(headers: &[httparse::Header<'_>]) -> Result<Framing, String> {
    let get = |name: &str| {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    if let Some(te) = get("transfer-encoding") {
        return if te.eq_ignore_ascii_case("chunked") {
            Ok(Framing::Chunked)
        } else {
            Err(format!("unsupported transfer-encoding {te}"))
        };
    }
    match get("content-length") {
        Some(n) => n
            .parse()
            .map(Framing::Length)
            .map_err(|_| "bad content-length".to_string()),
        None => Ok(Framing::Close),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(answer: &'static [u8]) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b);
            let _ = s.write_all(answer);
        });
        addr
    }

    #[test]
    fn reads_each_framing_and_bounds_the_body() {
        let t = Duration::from_secs(5);
        let a = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbodyEXTRA");
        assert_eq!(get(&a, "/", t, 100).unwrap(), b"body");
        let a = serve_once(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
        assert_eq!(get(&a, "/", t, 100).unwrap(), b"abcde");
        let a = serve_once(b"HTTP/1.1 200 OK\r\n\r\nuntil close");
        assert_eq!(get(&a, "/", t, 100).unwrap(), b"until close");
        let a = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 400\r\n\r\n");
        assert!(get(&a, "/", t, 100).is_err());
        let a = serve_once(b"HTTP/1.1 302 Found\r\ncontent-length: 0\r\n\r\n");
        assert!(get(&a, "/", t, 100).unwrap_err().contains("302"));
        let a = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort");
        assert!(get(&a, "/", t, 100).is_err());
    }
}
