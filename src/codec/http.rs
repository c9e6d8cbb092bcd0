//! HTTP/1.1 codec for both sides of the proxy: heads (parsed with `httparse`), body framing
//! (Content-Length, chunked, close-delimited) and chunked encoding. SSE framing is `sse`.
//!
//! Invariants:
//! - A head larger than `max_head_bytes` or with more than `max_headers` headers is rejected
//!   (431) before it is fully buffered: memory per connection stays bounded.
//! - Framing follows RFC 9112 §6: Transfer-Encoding together with Content-Length, conflicting
//!   Content-Length values, or a coding other than a final `chunked` are errors, never guessed;
//!   so is a request with more than one Host (§3.2).

use std::io;

use bytes::Bytes;
use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;

/// Largest request or response head accepted, in bytes.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields accepted in one head.
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// Largest chunk-size line or trailer section accepted while decoding chunked bodies.
const MAX_CHUNK_LINE_BYTES: usize = 4096;
/// Initial capacity of a connection's read buffer.
pub const READ_BUF_BYTES: usize = 16 * 1024;

/// The read buffer a client connection starts a busy period with: room for a typical MCP
/// request's head and body. A larger request grows it (to at least `READ_BUF_BYTES`), so
/// 5000 connections that each send one small request cost 10 MB of buffers, not 80 MB.
pub const FIRST_READ_BUF_BYTES: usize = 2 * 1024;

/// Why a head or body could not be accepted. Mapped to an HTTP status by `error.rs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// Unparseable syntax: 400.
    Malformed(&'static str),
    /// Head exceeds the size or header-count bound: 431.
    HeadTooLarge,
    /// Body exceeds the size bound: 413.
    BodyTooLarge,
    /// A transfer coding we do not implement: 501.
    UnsupportedCoding,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Malformed(why) => write!(f, "malformed HTTP: {why}"),
            HttpError::HeadTooLarge => f.write_str("HTTP head too large"),
            HttpError::BodyTooLarge => f.write_str("HTTP body too large"),
            HttpError::UnsupportedCoding => f.write_str("unsupported transfer coding"),
        }
    }
}

/// Bounds applied while parsing heads.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
        }
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
    /// Response only: the body runs until the upstream closes.
    Close,
}

/// Header fields of a parsed head, stored as offsets into the head's bytes (no per-field alloc).
#[derive(Debug, Clone, Default)]
pub struct Headers {
    raw: Bytes,
    fields: Vec<(u16, u16, u16, u16)>,
}

impl Headers {
    /// `src` is the buffer `parsed` points into; `raw` is a copy of its head bytes.
    fn from_parsed(src: &[u8], raw: Bytes, parsed: &[httparse::Header<'_>]) -> Headers {
        let base = src.as_ptr() as usize;
        let fields = parsed
            .iter()
            .map(|h| {
                let n = h.name.as_ptr() as usize - base;
                let v = h.value.as_ptr() as usize - base;
                (
                    n as u16,
                    h.name.len() as u16,
                    v as u16,
                    h.value.len() as u16,
                )
            })
            .collect();
        Headers { raw, fields }
    }

    /// Every `(name, value)` pair in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(move |&(n, nl, v, vl)| {
            let name = &self.raw[n as usize..(n + nl) as usize];
            // httparse only accepts token characters in names, which are ASCII.
            let name = std::str::from_utf8(name).unwrap_or("");
            (name, &self.raw[v as usize..(v + vl) as usize])
        })
    }

    /// Every `(name, value)` pair as bytes, with no UTF-8 check (names are ASCII tokens).
    pub fn iter_raw(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().map(move |&(n, nl, v, vl)| {
            (
                &self.raw[n as usize..(n + nl) as usize],
                &self.raw[v as usize..(v + vl) as usize],
            )
        })
    }

    /// The first value of `name` (case-insensitive). Compares bytes: no UTF-8 check per field.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let want = name.as_bytes();
        self.fields.iter().find_map(|&(n, nl, v, vl)| {
            let field = &self.raw[n as usize..(n + nl) as usize];
            field
                .eq_ignore_ascii_case(want)
                .then(|| &self.raw[v as usize..(v + vl) as usize])
        })
    }

    /// The first value of `name` as trimmed UTF-8, if present and valid.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// These fields with `name`'s value replaced (`Some`) or the field taken out (`None`),
    /// every other field as it was, in order; `None` when the fields would not fit a head's
    /// offsets. For a request the gateway sends on in another form (a federated server's own
    /// name in `Mcp-Name`).
    pub fn with(&self, name: &str, value: Option<&[u8]>) -> Option<Headers> {
        let mut raw = Vec::with_capacity(self.raw.len() + value.map_or(0, <[u8]>::len));
        let mut fields = Vec::with_capacity(self.fields.len());
        for (n, v) in self.iter_raw() {
            let v = match (n.eq_ignore_ascii_case(name.as_bytes()), value) {
                (false, _) => v,
                (true, Some(new)) => new,
                (true, None) => continue,
            };
            let at = u16::try_from(raw.len()).ok()?;
            raw.extend_from_slice(n);
            raw.extend_from_slice(b": ");
            let v_at = u16::try_from(raw.len()).ok()?;
            raw.extend_from_slice(v);
            raw.extend_from_slice(b"\r\n");
            u16::try_from(raw.len()).ok()?;
            fields.push((at, n.len() as u16, v_at, v.len() as u16));
        }
        Some(Headers {
            raw: Bytes::from(raw),
            fields,
        })
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Request methods the gateway distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Delete,
    Options,
    Head,
    Other,
}

impl Method {
    fn parse(m: &str) -> Method {
        match m {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "HEAD" => Method::Head,
            _ => Method::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Head => "HEAD",
            Method::Other => "OTHER",
        }
    }
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    pub path: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub headers: Headers,
    pub body: BodyKind,
    /// Whether the client asked to keep the connection open after this exchange.
    pub keep_alive: bool,
    /// Bytes the head occupied in the read buffer.
    pub head_len: usize,
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    pub minor: u8,
    pub headers: Headers,
    pub body: BodyKind,
    /// The upstream allows reuse after this response; always false for close-delimited bodies.
    pub keep_alive: bool,
    pub head_len: usize,
}

/// Applies the head bounds to an httparse outcome: the head's length, `None` for "need more".
fn head_len(
    parsed: Result<httparse::Status<usize>, httparse::Error>,
    buffered: usize,
    limits: HeadLimits,
    what: &'static str,
) -> Result<Option<usize>, HttpError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) if n > limits.max_head_bytes => {
            Err(HttpError::HeadTooLarge)
        }
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) if buffered >= limits.max_head_bytes => {
            Err(HttpError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HttpError::HeadTooLarge),
        Err(_) => Err(HttpError::Malformed(what)),
    }
}

/// Parses a request head from the start of `buf`. `Ok(None)` means more bytes are needed.
pub fn parse_request(buf: &[u8], limits: HeadLimits) -> Result<Option<RequestHead>, HttpError> {
    let mut storage = [httparse::EMPTY_HEADER; 128];
    let slots = limits.max_headers.min(storage.len());
    let mut req = httparse::Request::new(&mut storage[..slots]);
    let Some(head_len) = head_len(req.parse(buf), buf.len(), limits, "request head")? else {
        return Ok(None);
    };
    let minor = req.version.unwrap_or(1);
    let method = Method::parse(req.method.unwrap_or(""));
    let path = req.path.unwrap_or("/").to_string();
    let headers = Headers::from_parsed(buf, Bytes::copy_from_slice(&buf[..head_len]), req.headers);
    // RFC 9112 §3.2: more than one Host is a 400, never a guess at which one counts.
    if headers
        .iter_raw()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"host"))
        .count()
        > 1
    {
        return Err(HttpError::Malformed("more than one Host"));
    }
    let body = request_body_kind(&headers, minor)?;
    let keep_alive = keep_alive(&headers, minor);
    Ok(Some(RequestHead {
        method,
        path,
        minor,
        headers,
        body,
        keep_alive,
        head_len,
    }))
}

/// Parses a response head from the start of `buf`. `Ok(None)` means more bytes are needed.
pub fn parse_response(
    buf: &[u8],
    limits: HeadLimits,
    request_was_head: bool,
) -> Result<Option<ResponseHead>, HttpError> {
    let mut storage = [httparse::EMPTY_HEADER; 128];
    let slots = limits.max_headers.min(storage.len());
    let mut resp = httparse::Response::new(&mut storage[..slots]);
    let Some(head_len) = head_len(resp.parse(buf), buf.len(), limits, "response head")? else {
        return Ok(None);
    };
    let status = resp.code.unwrap_or(0);
    if !(100..=599).contains(&status) {
        // RFC 9110 §15: three digits, classes 1xx to 5xx. httparse takes any three digits,
        // and "024" would otherwise read as an interim response with no body.
        return Err(HttpError::Malformed("status code outside 100..=599"));
    }
    let minor = resp.version.unwrap_or(1);
    let headers = Headers::from_parsed(buf, Bytes::copy_from_slice(&buf[..head_len]), resp.headers);
    let body = if request_was_head || status < 200 || status == 204 || status == 304 {
        BodyKind::None
    } else {
        match framing(&headers, minor)? {
            Some(kind) => kind,
            None => BodyKind::Close,
        }
    };
    let keep_alive = keep_alive(&headers, minor) && body != BodyKind::Close;
    Ok(Some(ResponseHead {
        status,
        minor,
        headers,
        body,
        keep_alive,
        head_len,
    }))
}

fn request_body_kind(headers: &Headers, minor: u8) -> Result<BodyKind, HttpError> {
    Ok(framing(headers, minor)?.unwrap_or(BodyKind::None))
}

/// RFC 9112 §6.1–6.3 framing. `Ok(None)`: no framing header at all.
fn framing(headers: &Headers, minor: u8) -> Result<Option<BodyKind>, HttpError> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut saw_te = false;
    // Names as bytes: checking each as UTF-8 was 1% of a proxied request (perf).
    for (name, value) in headers.iter_raw() {
        if name.eq_ignore_ascii_case(b"content-length") {
            for part in value.split(|&b| b == b',') {
                let n = parse_content_length(part)?;
                if length.is_some_and(|prev| prev != n) {
                    return Err(HttpError::Malformed("conflicting Content-Length"));
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if minor == 0 {
                return Err(HttpError::Malformed("Transfer-Encoding in HTTP/1.0"));
            }
            saw_te = true;
            chunked = transfer_coding_is_chunked(value, chunked)?;
        }
    }
    if saw_te && length.is_some() {
        return Err(HttpError::Malformed(
            "Content-Length with Transfer-Encoding",
        ));
    }
    if saw_te {
        return if chunked {
            Ok(Some(BodyKind::Chunked))
        } else {
            Err(HttpError::UnsupportedCoding)
        };
    }
    Ok(length.map(|n| {
        if n == 0 {
            BodyKind::None
        } else {
            BodyKind::Length(n)
        }
    }))
}

/// Folds one Transfer-Encoding field into the state "is the final coding chunked".
fn transfer_coding_is_chunked(value: &[u8], mut chunked: bool) -> Result<bool, HttpError> {
    for coding in value.split(|&b| b == b',') {
        let coding = trim(coding);
        if coding.is_empty() {
            continue;
        }
        if chunked {
            // Anything after chunked makes the framing undeterminable.
            return Err(HttpError::Malformed("chunked is not the final coding"));
        }
        if coding.eq_ignore_ascii_case(b"chunked") {
            chunked = true;
        } else {
            return Err(HttpError::UnsupportedCoding);
        }
    }
    Ok(chunked)
}

fn parse_content_length(raw: &[u8]) -> Result<u64, HttpError> {
    let digits = trim(raw);
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::Malformed("invalid Content-Length"));
    }
    Ok(digits
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')))
}

fn keep_alive(headers: &Headers, minor: u8) -> bool {
    let mut close = minor == 0;
    for (name, value) in headers.iter_raw() {
        if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',') {
                let token = trim(token);
                if token.eq_ignore_ascii_case(b"close") {
                    return false;
                }
                if token.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
    }
    !close
}

pub fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// A connection's inbound byte buffer: data not yet consumed lives in `buf[pos..]`.
#[derive(Debug)]
pub struct ReadBuf {
    buf: Vec<u8>,
    pos: usize,
}

/// An empty buffer with no allocation; the first `fill` allocates `READ_BUF_BYTES`.
impl Default for ReadBuf {
    fn default() -> Self {
        ReadBuf {
            buf: Vec::new(),
            pos: 0,
        }
    }
}

impl ReadBuf {
    pub fn with_capacity(cap: usize) -> ReadBuf {
        ReadBuf {
            buf: Vec::with_capacity(cap),
            pos: 0,
        }
    }

    /// Wraps bytes that were already read (for a connection handed over from another shard).
    pub fn from_vec(buf: Vec<u8>) -> ReadBuf {
        ReadBuf { buf, pos: 0 }
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.buf.len() - self.pos, "consume past buffered data");
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Takes up to `n` buffered bytes.
    pub fn take(&mut self, n: usize) -> Bytes {
        let n = n.min(self.data().len());
        let out = Bytes::copy_from_slice(&self.data()[..n]);
        self.consume(n);
        out
    }

    /// Moves the unconsumed bytes out, leaving the buffer empty.
    pub fn into_vec(mut self) -> Vec<u8> {
        self.buf.drain(..self.pos);
        self.buf
    }

    /// Ensures spare room for a read, compacting consumed bytes first.
    fn make_room(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.capacity() - self.buf.len() < 1024 {
            let extra = self.buf.capacity().max(READ_BUF_BYTES);
            self.buf.reserve(extra);
        }
    }

    /// Reads more bytes from `io`. Returns the count read; 0 means end of stream.
    pub async fn fill<R: AsyncReadRent>(&mut self, io: &mut R) -> io::Result<usize> {
        self.make_room();
        let buf = std::mem::take(&mut self.buf);
        let (len, cap) = (buf.len(), buf.capacity());
        let (res, slice) = io.read(buf.slice_mut(len..cap)).await;
        self.buf = slice.into_inner();
        res
    }

    /// Like `fill`, but the read can be cancelled through `handle` without losing data: a read
    /// that completed before the cancel still lands in the buffer.
    pub async fn fill_cancelable<R: monoio::io::CancelableAsyncReadRent>(
        &mut self,
        io: &mut R,
        handle: monoio::io::CancelHandle,
    ) -> io::Result<usize> {
        self.make_room();
        let buf = std::mem::take(&mut self.buf);
        let (len, cap) = (buf.len(), buf.capacity());
        let (res, slice) = io.cancelable_read(buf.slice_mut(len..cap), handle).await;
        self.buf = slice.into_inner();
        res
    }

    /// Bytes held, buffered or not, for memory accounting.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Releases the allocation of an idle connection's buffer when it grew past the default.
    pub fn shrink_if_idle(&mut self) {
        if self.data().is_empty() && self.buf.capacity() > READ_BUF_BYTES {
            self.buf = Vec::with_capacity(READ_BUF_BYTES);
            self.pos = 0;
        }
    }
}

/// What a socket holds right now, learned without consuming anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    /// Nothing to read and still open.
    Empty,
    /// Bytes are waiting.
    Data,
    /// The peer closed (EOF) or the socket has an error.
    Closed,
}

/// Peeks one byte without blocking or consuming it.
pub fn peek(stream: &monoio::net::TcpStream) -> Peek {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: the fd is owned by `stream` and open for this call; recv writes at most one byte
    // into a valid local and, with MSG_PEEK, consumes nothing.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => Peek::Closed,
        n if n > 0 => Peek::Data,
        _ if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock => Peek::Empty,
        _ => Peek::Closed,
    }
}

/// Incremental decoder of a chunked body (RFC 9112 §7.1).
#[derive(Debug, Clone, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside chunk data with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty line.
    Trailer,
    Done,
}

/// What one `ChunkedDecoder::decode` step produced.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkStep<'a> {
    /// Body bytes; `consumed` input bytes were used.
    Data(&'a [u8], usize),
    /// Framing bytes consumed, no data yet.
    Skip(usize),
    /// Need more input.
    NeedMore,
    /// The body ended; `consumed` input bytes were used.
    End(usize),
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes one step from `input`. Call repeatedly, consuming as told, until `NeedMore`.
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<ChunkStep<'a>, HttpError> {
        match self.state {
            ChunkState::Size => self.decode_size(input),
            ChunkState::Data(left) => {
                if input.is_empty() {
                    return Ok(ChunkStep::NeedMore);
                }
                let n = (left.min(input.len() as u64)) as usize;
                self.state = if left == n as u64 {
                    ChunkState::DataEnd
                } else {
                    ChunkState::Data(left - n as u64)
                };
                Ok(ChunkStep::Data(&input[..n], n))
            }
            ChunkState::DataEnd => match input {
                [b'\r', b'\n', ..] => {
                    self.state = ChunkState::Size;
                    Ok(ChunkStep::Skip(2))
                }
                [b'\n', ..] => {
                    self.state = ChunkState::Size;
                    Ok(ChunkStep::Skip(1))
                }
                [] | [b'\r'] => Ok(ChunkStep::NeedMore),
                _ => Err(HttpError::Malformed("missing CRLF after chunk data")),
            },
            ChunkState::Trailer => self.decode_trailer(input),
            ChunkState::Done => Ok(ChunkStep::End(0)),
        }
    }

    fn decode_size<'a>(&mut self, input: &'a [u8]) -> Result<ChunkStep<'a>, HttpError> {
        match httparse::parse_chunk_size(input) {
            Ok(httparse::Status::Complete((used, 0))) => {
                self.state = ChunkState::Trailer;
                Ok(ChunkStep::Skip(used))
            }
            Ok(httparse::Status::Complete((used, size))) => {
                self.state = ChunkState::Data(size);
                Ok(ChunkStep::Skip(used))
            }
            Ok(httparse::Status::Partial) if input.len() > MAX_CHUNK_LINE_BYTES => {
                Err(HttpError::Malformed("chunk size line too long"))
            }
            Ok(httparse::Status::Partial) => Ok(ChunkStep::NeedMore),
            Err(_) => Err(HttpError::Malformed("invalid chunk size")),
        }
    }

    fn decode_trailer<'a>(&mut self, input: &'a [u8]) -> Result<ChunkStep<'a>, HttpError> {
        let Some(nl) = input.iter().position(|&b| b == b'\n') else {
            if input.len() > MAX_CHUNK_LINE_BYTES {
                return Err(HttpError::Malformed("trailer line too long"));
            }
            return Ok(ChunkStep::NeedMore);
        };
        let line = &input[..nl];
        if line.is_empty() || line == b"\r" {
            self.state = ChunkState::Done;
            return Ok(ChunkStep::End(nl + 1));
        }
        // Trailer fields are dropped: MCP defines none and forwarding them is unsafe.
        Ok(ChunkStep::Skip(nl + 1))
    }
}

/// Decodes a body of any framing from a `ReadBuf`, handing out data as it becomes available.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    kind: BodyKind,
    remaining: u64,
    chunked: ChunkedDecoder,
    done: bool,
}

impl BodyDecoder {
    pub fn new(kind: BodyKind) -> BodyDecoder {
        let remaining = if let BodyKind::Length(n) = kind { n } else { 0 };
        BodyDecoder {
            kind,
            remaining,
            chunked: ChunkedDecoder::default(),
            done: kind == BodyKind::None,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Consumes buffered bytes of the body, passing decoded data to `out`. Returns true once the
    /// body is complete (for `Close` bodies, call `finish_on_eof` when the peer closes).
    pub fn decode(
        &mut self,
        rb: &mut ReadBuf,
        out: &mut impl FnMut(&[u8]),
    ) -> Result<bool, HttpError> {
        match self.kind {
            BodyKind::None => self.done = true,
            BodyKind::Close => {
                let n = rb.data().len();
                if n > 0 {
                    out(rb.data());
                    rb.consume(n);
                }
            }
            BodyKind::Length(_) => {
                let n = (self.remaining.min(rb.data().len() as u64)) as usize;
                if n > 0 {
                    out(&rb.data()[..n]);
                    rb.consume(n);
                    self.remaining -= n as u64;
                }
                self.done = self.remaining == 0;
            }
            BodyKind::Chunked => self.decode_chunked(rb, out)?,
        }
        Ok(self.done)
    }

    fn decode_chunked(
        &mut self,
        rb: &mut ReadBuf,
        out: &mut impl FnMut(&[u8]),
    ) -> Result<(), HttpError> {
        loop {
            match self.chunked.decode(rb.data())? {
                ChunkStep::Data(d, n) => {
                    out(d);
                    rb.consume(n);
                }
                ChunkStep::Skip(n) => rb.consume(n),
                ChunkStep::NeedMore => return Ok(()),
                ChunkStep::End(n) => {
                    rb.consume(n);
                    self.done = true;
                    return Ok(());
                }
            }
        }
    }

    /// The peer closed: complete for close-delimited bodies, truncated otherwise.
    pub fn finish_on_eof(&mut self) -> Result<(), HttpError> {
        if self.kind == BodyKind::Close {
            self.done = true;
            Ok(())
        } else if self.done {
            Ok(())
        } else {
            Err(HttpError::Malformed("body truncated"))
        }
    }
}

/// Appends `data` to `out` as one chunk of a chunked body.
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut hex = [0u8; 16];
    let mut n = data.len();
    let mut i = hex.len();
    while n > 0 {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
    }
    out.extend_from_slice(&hex[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk of a chunked body, with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Writes a response head. `extra` lines must each end in CRLF.
pub fn write_response_head(out: &mut Vec<u8>, status: u16, extra: &[u8], body: HeadBody) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(extra);
    match body {
        HeadBody::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        HeadBody::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        HeadBody::None => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// The framing a written head announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadBody {
    Length(usize),
    Chunked,
    None,
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Whether a Content-Type value names an SSE stream.
pub fn is_event_stream(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|v| {
        let v = trim(v);
        v.len() >= 17 && v[..17].eq_ignore_ascii_case(b"text/event-stream")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_with_one_value_replaced_or_taken_out() {
        let raw =
            b"POST /mcp HTTP/1.1\r\nHost: a\r\nMcp-Name: a__echo\r\nMcp-Method: tools/call\r\n\r\n";
        let head = parse_request(raw, HeadLimits::default()).unwrap().unwrap();
        let h = head.headers.with("mcp-name", Some(b"echo")).unwrap();
        let got: Vec<(&str, &[u8])> = h.iter().collect();
        assert_eq!(
            got,
            [
                ("Host", &b"a"[..]),
                ("Mcp-Name", b"echo"),
                ("Mcp-Method", b"tools/call")
            ]
        );
        let h = h.with("MCP-NAME", None).unwrap();
        assert_eq!(h.get("mcp-name"), None);
        assert_eq!(h.get_str("mcp-method"), Some("tools/call"));
        assert_eq!(h.len(), 2);
        // Offsets are u16: a value that would push them past it is refused, not wrapped.
        let huge = vec![b'x'; 70_000];
        assert!(head.headers.with("mcp-name", Some(&huge)).is_none());
    }

    fn req(raw: &str) -> Result<Option<RequestHead>, HttpError> {
        parse_request(raw.as_bytes(), HeadLimits::default())
    }

    #[test]
    fn parses_request_with_length() {
        let r = req("POST /mcp HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.path, "/mcp");
        assert_eq!(r.body, BodyKind::Length(5));
        assert!(r.keep_alive);
        assert_eq!(r.headers.get_str("host"), Some("a"));
    }

    #[test]
    fn partial_head_needs_more() {
        assert!(req("POST /mcp HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
    }

    #[test]
    fn rejects_te_with_cl() {
        let e = req("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(
            e.unwrap_err(),
            HttpError::Malformed("Content-Length with Transfer-Encoding")
        );
    }

    #[test]
    fn rejects_conflicting_cl_but_accepts_repeated() {
        assert!(req("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n").is_err());
        assert!(req("POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n").is_err());
        let r = req("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(r.unwrap().unwrap().body, BodyKind::Length(3));
        assert!(req("POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n").is_err());
    }

    #[test]
    fn rejects_two_hosts() {
        let e = req("GET /mcp HTTP/1.1\r\nHost: localhost\r\nhost: evil.example\r\n\r\n");
        assert_eq!(e.unwrap_err(), HttpError::Malformed("more than one Host"));
    }

    #[test]
    fn rejects_unknown_coding() {
        let e = req("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").unwrap_err();
        assert_eq!(e, HttpError::UnsupportedCoding);
        let e = req("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").unwrap_err();
        assert!(matches!(e, HttpError::Malformed(_)));
    }

    #[test]
    fn head_limits() {
        let limits = HeadLimits {
            max_head_bytes: 64,
            max_headers: 4,
        };
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(80));
        assert_eq!(
            parse_request(long.as_bytes(), limits).unwrap_err(),
            HttpError::HeadTooLarge
        );
        let many = "GET / HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\n\r\n";
        let limits = HeadLimits {
            max_head_bytes: 1024,
            max_headers: 4,
        };
        assert_eq!(
            parse_request(many.as_bytes(), limits).unwrap_err(),
            HttpError::HeadTooLarge
        );
    }

    #[test]
    fn http10_closes_by_default() {
        assert!(!req("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(
            req("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
        assert!(
            !req("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn response_framing() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\n\r\n", HeadLimits::default(), false);
        let r = r.unwrap().unwrap();
        assert_eq!(r.body, BodyKind::Close);
        assert!(!r.keep_alive);
        let r = parse_response(
            b"HTTP/1.1 204 No Content\r\n\r\n",
            HeadLimits::default(),
            false,
        );
        assert_eq!(r.unwrap().unwrap().body, BodyKind::None);
    }

    #[test]
    fn rejects_status_outside_the_classes() {
        let parse = |s: &[u8]| parse_response(s, HeadLimits::default(), false);
        assert!(parse(b"HTTP/1.0 024 x\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 600 x\r\n\r\n").is_err());
        assert_eq!(
            parse(b"HTTP/1.1 599 x\r\n\r\n").unwrap().unwrap().status,
            599
        );
    }

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, bool), HttpError> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            match d.decode(&input[pos..])? {
                ChunkStep::Data(b, n) => {
                    out.extend_from_slice(b);
                    pos += n;
                }
                ChunkStep::Skip(n) => pos += n,
                ChunkStep::NeedMore => return Ok((out, false)),
                ChunkStep::End(n) => {
                    assert_eq!(pos + n, input.len());
                    return Ok((out, true));
                }
            }
        }
    }

    #[test]
    fn chunked_round_trip() {
        let mut enc = Vec::new();
        encode_chunk(&mut enc, b"hello ");
        encode_chunk(&mut enc, &[b'x'; 300]);
        enc.extend_from_slice(LAST_CHUNK);
        let (out, done) = decode_all(&enc).unwrap();
        assert!(done);
        assert_eq!(&out[..6], b"hello ");
        assert_eq!(out.len(), 306);
        // Every split point decodes to the same bytes.
        for cut in 0..enc.len() {
            let (a, done) = decode_all(&enc[..cut]).unwrap();
            assert!(!done || cut == enc.len());
            assert!(out.starts_with(&a));
        }
    }

    #[test]
    fn chunked_with_extension_and_trailer() {
        let (out, done) = decode_all(b"3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n").unwrap();
        assert!(done);
        assert_eq!(out, b"abc");
        assert!(decode_all(b"zz\r\n").is_err());
        assert!(decode_all(b"3\r\nabcX").is_err());
    }

    #[test]
    fn event_stream_detection() {
        assert!(is_event_stream(Some(b"text/event-stream; charset=utf-8")));
        assert!(!is_event_stream(Some(b"application/json")));
        assert!(!is_event_stream(None));
    }
}
