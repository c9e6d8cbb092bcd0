//! One keep-alive HTTP/1.1 client connection, reading responses with the gateway's own codec
//! (`shardcat::http`): heads with limits, RFC 9112 framing, chunked bodies, SSE events.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use shardcat::codec::http::{self, BodyDecoder, HeadLimits, HttpError, ReadBuf, ResponseHead};
use shardcat::codec::sse::SseSplitter;

/// Largest response body read; anything bigger is an error, so memory per user stays bounded.
const MAX_BODY_BYTES: usize = 4 << 20;
/// Largest single SSE event.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// Why an exchange failed (an error, as opposed to a non-2xx status).
#[derive(Debug)]
pub enum Failure {
    Connect(io::Error),
    Io(io::Error),
    /// The peer closed before the response was complete.
    Eof,
    Http(HttpError),
    BodyTooLarge,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "connect: {e}"),
            Failure::Io(e) => write!(f, "io: {e}"),
            Failure::Eof => f.write_str("connection closed mid-response"),
            Failure::Http(e) => write!(f, "{e}"),
            Failure::BodyTooLarge => f.write_str("response body too large"),
        }
    }
}

/// What a complete response told us.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub session: Option<String>,
    pub keep_alive: bool,
}

pub struct Conn {
    stream: TcpStream,
    rb: ReadBuf,
}

/// Decoding state of a streamed (SSE) response body.
pub struct EventStream {
    dec: BodyDecoder,
    split: SseSplitter,
}

impl EventStream {
    pub fn new(head: &ResponseHead) -> EventStream {
        EventStream {
            dec: BodyDecoder::new(head.body),
            split: SseSplitter::new(MAX_EVENT_BYTES),
        }
    }
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn, Failure> {
        let stream = TcpStream::connect_addr(addr)
            .await
            .map_err(Failure::Connect)?;
        // Requests are single small writes; Nagle would only add latency.
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            rb: ReadBuf::default(),
        })
    }

    /// Writes `req` and reads the whole response, its body into `body`. Gives `req` back so the
    /// caller reuses the buffer.
    pub async fn exchange(
        &mut self,
        req: Vec<u8>,
        body: &mut Vec<u8>,
        want_session: bool,
    ) -> (Result<Reply, Failure>, Vec<u8>) {
        let (res, req) = self.send(req).await;
        if let Err(e) = res {
            return (Err(e), req);
        }
        (self.read_reply(body, want_session).await, req)
    }

    pub async fn send(&mut self, req: Vec<u8>) -> (Result<(), Failure>, Vec<u8>) {
        let (res, req) = self.stream.write_all(req).await;
        (res.map(drop).map_err(Failure::Io), req)
    }

    async fn read_reply(
        &mut self,
        body: &mut Vec<u8>,
        want_session: bool,
    ) -> Result<Reply, Failure> {
        let head = self.read_head().await?;
        self.read_body(&head, body).await?;
        let session = if want_session {
            head.headers.get_str("mcp-session-id").map(str::to_owned)
        } else {
            None
        };
        Ok(Reply {
            status: head.status,
            session,
            keep_alive: head.keep_alive,
        })
    }

    pub async fn read_head(&mut self) -> Result<ResponseHead, Failure> {
        loop {
            let parsed = http::parse_response(self.rb.data(), HeadLimits::default(), false)
                .map_err(Failure::Http)?;
            if let Some(head) = parsed {
                self.rb.consume(head.head_len);
                return Ok(head);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), Failure> {
        match self.rb.fill(&mut self.stream).await {
            Ok(0) => Err(Failure::Eof),
            Ok(_) => Ok(()),
            Err(e) => Err(Failure::Io(e)),
        }
    }

    /// Reads a whole body (any framing) into `out`, which is cleared first.
    async fn read_body(&mut self, head: &ResponseHead, out: &mut Vec<u8>) -> Result<(), Failure> {
        out.clear();
        let mut dec = BodyDecoder::new(head.body);
        loop {
            let done = dec
                .decode(&mut self.rb, &mut |d: &[u8]| out.extend_from_slice(d))
                .map_err(Failure::Http)?;
            if done {
                return Ok(());
            }
            if out.len() > MAX_BODY_BYTES {
                return Err(Failure::BodyTooLarge);
            }
            match self.fill().await {
                Ok(()) => {}
                // Close-delimited bodies end here; others were truncated.
                Err(Failure::Eof) => return dec.finish_on_eof().map_err(Failure::Http),
                Err(e) => return Err(e),
            }
        }
    }

    /// Hands every complete buffered event to `on_event`, then waits for more bytes.
    /// `Ok(false)`: the stream ended.
    pub async fn next_events(
        &mut self,
        es: &mut EventStream,
        on_event: &mut impl FnMut(&[u8]),
    ) -> Result<bool, Failure> {
        let split = &mut es.split;
        let done = es
            .dec
            .decode(&mut self.rb, &mut |d: &[u8]| split.push(d))
            .map_err(Failure::Http)?;
        while let Some(ev) = split.next_event().map_err(Failure::Http)? {
            on_event(&ev);
        }
        if done {
            return Ok(false);
        }
        match self.fill().await {
            Ok(()) => Ok(true),
            Err(Failure::Eof) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
