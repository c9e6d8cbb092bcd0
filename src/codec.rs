//! The wire codecs, with no state of their own: HTTP/1.1 heads and bodies (`http`), SSE
//! framing (`sse`) and the PROXY protocol header a balancer puts first on a connection
//! (`proxy`). They know nothing of sessions, upstreams or the pipeline.

pub mod http;
pub mod proxy;
pub mod sse;
