//! The wire codecs, with no state of their own: HTTP/1.1 heads and bodies (`http`) and SSE
//! framing (`sse`). They know nothing of sessions, upstreams or the pipeline.

pub mod http;
pub mod sse;
