//! Micro-benchmarks of the per-request hot path: head parsing, chunked/SSE framing, JSON-RPC
//! classification, session ids and the session table, and the cross-core hand-off.
//!
//! Run with `cargo bench --bench core`. Each group is kept short (1 s warm-up, 2–3 s of
//! measurement, 30 samples) so the whole run fits in a few minutes on a small shared machine.
//! Where a naive baseline exists it is benchmarked in the same group, on the same input.

use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use shardcat::admission::{mailbox, Handoff, ShardMsg};
use shardcat::codec::http::{
    encode_chunk, parse_request, BodyDecoder, BodyKind, ChunkStep, ChunkedDecoder, HeadLimits,
    ReadBuf, LAST_CHUNK,
};
use shardcat::codec::sse::SseSplitter;
use shardcat::mcp::{classify, random_secret, SessionId, Version};
use shardcat::shard::session::Sessions;
use shardcat::upstream::UpSession;

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// A realistic tools/call body, about 300 bytes.
const TOOLS_CALL: &[u8] = br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"search_documents","arguments":{"query":"thread-per-core io_uring gateway tail latency","limit":10,"filters":{"lang":"en","after":"2025-01-01","tags":["rust","networking"]}},"_meta":{"progressToken":"tok-8f3a2c91-5d4e-4b7a-9c1f-2e6d8a0b3c47"}}}"#;

/// A Streamable-HTTP POST head as an MCP client sends it, followed by its body (the read buffer
/// usually holds both).
fn mcp_post_request() -> Vec<u8> {
    let sid = SessionId {
        shard: 1,
        slot: 4711,
        secret: 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
    }
    .encode();
    let mut req = format!(
        "POST /mcp HTTP/1.1\r\n\
         Host: gateway.internal:8080\r\n\
         User-Agent: mcp-client/1.4.2 (rust)\r\n\
         Accept: application/json, text/event-stream\r\n\
         Accept-Encoding: gzip, deflate\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\
         Mcp-Session-Id: {sid}\r\n\
         Mcp-Protocol-Version: 2025-06-18\r\n\
         Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl\r\n\
         Connection: keep-alive\r\n\
         \r\n",
        TOOLS_CALL.len()
    )
    .into_bytes();
    req.extend_from_slice(TOOLS_CALL);
    req
}

const EVENT_BYTES: usize = 200;
const BODY_BYTES: usize = 16 * 1024;

/// One SSE event of exactly `EVENT_BYTES` bytes, including its blank-line terminator.
fn sse_event(i: usize) -> Vec<u8> {
    let head = format!(
        "id: {i}\nevent: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{\"progressToken\":\"t{i}\",\"progress\":{i},\"message\":\""
    );
    let tail = "\"}}\n\n";
    let pad = EVENT_BYTES - head.len() - tail.len();
    let mut ev = head.into_bytes();
    ev.extend(std::iter::repeat_n(b'x', pad));
    ev.extend_from_slice(tail.as_bytes());
    assert_eq!(ev.len(), EVENT_BYTES);
    ev
}

/// As many whole ~200-byte events as fit in 16 KiB.
fn sse_stream() -> Vec<u8> {
    let mut s = Vec::with_capacity(BODY_BYTES);
    let mut i = 0;
    while s.len() + EVENT_BYTES <= BODY_BYTES {
        s.extend_from_slice(&sse_event(i));
        i += 1;
    }
    s
}

/// 16 KiB of payload, chunk-encoded in 200-byte chunks, with the last chunk.
fn chunked_body() -> Vec<u8> {
    let payload: Vec<u8> = (0..BODY_BYTES).map(|i| b'a' + (i % 26) as u8).collect();
    let mut out = Vec::with_capacity(BODY_BYTES + BODY_BYTES / EVENT_BYTES * 7 + 8);
    for chunk in payload.chunks(EVENT_BYTES) {
        encode_chunk(&mut out, chunk);
    }
    out.extend_from_slice(LAST_CHUNK);
    out
}

// ---------------------------------------------------------------------------------------------
// 1. HTTP head parsing
// ---------------------------------------------------------------------------------------------

fn http_head_parse(c: &mut Criterion) {
    let req = mcp_post_request();
    let limits = HeadLimits::default();
    let head = parse_request(&req, limits).unwrap().unwrap();
    assert_eq!(head.body, BodyKind::Length(TOOLS_CALL.len() as u64));
    assert!(head.headers.get("mcp-session-id").is_some());

    let mut g = c.benchmark_group("http_head_parse");
    g.throughput(Throughput::Bytes(head.head_len as u64));
    g.bench_function("shardcat_parse_request", |b| {
        b.iter(|| parse_request(black_box(&req), limits))
    });
    // Reference, not a baseline: the bare httparse call that parse_request wraps (no head copy,
    // no framing or keep-alive checks).
    g.bench_function("httparse_only", |b| {
        b.iter(|| {
            let mut storage = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Request::new(&mut storage);
            let n = r.parse(black_box(&req)).unwrap();
            black_box((n, r.headers.len()));
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// 2. Chunked coding and SSE splitting
// ---------------------------------------------------------------------------------------------

fn chunk_and_sse(c: &mut Criterion) {
    let event = sse_event(7);
    let body = chunked_body();
    let stream = sse_stream();

    let mut g = c.benchmark_group("chunk_and_sse");

    g.throughput(Throughput::Bytes(event.len() as u64));
    let mut out = Vec::with_capacity(512);
    g.bench_function("encode_chunk_200B", |b| {
        b.iter(|| {
            out.clear();
            encode_chunk(&mut out, black_box(&event));
            black_box(out.len());
        })
    });

    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("chunked_decoder_16KiB_200B_chunks", |b| {
        b.iter(|| {
            let input = black_box(&body[..]);
            let mut d = ChunkedDecoder::default();
            let (mut pos, mut data) = (0, 0);
            loop {
                match d.decode(&input[pos..]).unwrap() {
                    ChunkStep::Data(bytes, n) => {
                        data += bytes.len();
                        pos += n;
                    }
                    ChunkStep::Skip(n) => pos += n,
                    ChunkStep::End(_) => break,
                    ChunkStep::NeedMore => unreachable!("whole body is buffered"),
                }
            }
            assert_eq!(data, BODY_BYTES);
            data
        })
    });
    // The same body through the relay-facing BodyDecoder over a ReadBuf (the buffer refill is
    // a memcpy in the setup, outside the measurement).
    g.bench_function("body_decoder_16KiB_200B_chunks", |b| {
        b.iter_batched_ref(
            || ReadBuf::from_vec(body.clone()),
            |rb| {
                let mut d = BodyDecoder::new(BodyKind::Chunked);
                let mut data = 0;
                let done = d.decode(rb, &mut |bytes| data += bytes.len()).unwrap();
                assert!(done);
                data
            },
            BatchSize::SmallInput,
        )
    });

    g.throughput(Throughput::Bytes(stream.len() as u64));
    let mut splitter = SseSplitter::new(64 * 1024);
    g.bench_function("sse_splitter_16KiB_200B_events", |b| {
        b.iter(|| {
            splitter.push(black_box(&stream));
            let mut events = 0;
            while let Some(ev) = splitter.next_event().unwrap() {
                black_box(&ev);
                events += 1;
            }
            assert_eq!(events, stream.len() / EVENT_BYTES);
            events
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// 3. JSON-RPC classification vs. a serde_json::Value DOM
// ---------------------------------------------------------------------------------------------

/// The naive approach: build a full `Value`, then read the routing fields out of it.
fn classify_via_value(body: &[u8]) -> Option<(String, String, Option<String>)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v.get("jsonrpc").and_then(serde_json::Value::as_str) != Some("2.0") {
        return None;
    }
    let method = v.get("method")?.as_str()?.to_owned();
    let id = v.get("id")?.to_string();
    let name = v
        .get("params")
        .and_then(|p| p.get("name"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    Some((method, id, name))
}

fn jsonrpc_classify(c: &mut Criterion) {
    let shard = classify(TOOLS_CALL).unwrap();
    let m = &shard.messages()[0];
    let naive = classify_via_value(TOOLS_CALL).unwrap();
    assert_eq!(m.method, Some(naive.0.as_str()));
    assert_eq!(m.id, Some(naive.1.as_str()));
    assert_eq!(m.name, naive.2);

    let mut g = c.benchmark_group("jsonrpc_classify");
    g.throughput(Throughput::Bytes(TOOLS_CALL.len() as u64));
    g.bench_function("shardcat_classify", |b| {
        b.iter(|| classify(black_box(TOOLS_CALL)).unwrap())
    });
    g.bench_function("baseline_serde_value", |b| {
        b.iter(|| {
            // Read the fields while the Value is alive, as a DOM-based router would.
            let v: serde_json::Value = serde_json::from_slice(black_box(TOOLS_CALL)).unwrap();
            assert_eq!(v.get("jsonrpc").and_then(|j| j.as_str()), Some("2.0"));
            let method = v.get("method").and_then(|m| m.as_str());
            let id = v.get("id");
            let name = v
                .get("params")
                .and_then(|p| p.get("name"))
                .and_then(|n| n.as_str())
                .map(str::to_owned);
            black_box((method, id, name));
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// 4. Session ids
// ---------------------------------------------------------------------------------------------

fn session_id(c: &mut Criterion) {
    let id = SessionId {
        shard: 3,
        slot: 12_345,
        secret: random_secret(),
    };
    let text = id.encode();
    assert_eq!(SessionId::decode(text.as_bytes()), Some(id));

    let mut g = c.benchmark_group("session_id");
    g.bench_function("encode", |b| b.iter(|| black_box(&id).encode()));
    g.bench_function("decode", |b| {
        b.iter(|| SessionId::decode(black_box(text.as_bytes())))
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// 5. Session table
// ---------------------------------------------------------------------------------------------

const PREFILL: usize = 10_000;

/// A session on HTTP upstream 0 named `sid`.
fn http(sid: &Rc<str>) -> UpSession {
    UpSession::Http {
        upstream: 0,
        sid: Some(sid.clone()),
    }
}

fn session_table(c: &mut Criterion) {
    let now = Instant::now();
    let version = Version::parse("2025-06-18").unwrap();
    let upstream: Rc<str> = Rc::from("upstream-session-0123456789abcdef");
    let lifetimes = shardcat::shard::session::Lifetimes {
        idle: std::time::Duration::from_secs(300),
        max_age: std::time::Duration::from_secs(86_400),
    };
    let mut table = Sessions::new(0, lifetimes);
    let ids: Vec<SessionId> = (0..PREFILL)
        .map(|_| table.insert(http(&upstream), version, now))
        .collect();
    assert_eq!(table.len(), PREFILL);

    let mut g = c.benchmark_group("session_table");
    // Includes the 128-bit secret from getrandom, as every real insert does.
    g.bench_function("insert_remove_10k", |b| {
        b.iter(|| {
            let id = table.insert(http(&upstream), version, now);
            table.remove(black_box(&id)).unwrap()
        })
    });
    // Hits spread over the table (a prime stride) and touch last_seen, as a request does.
    let mut i = 0;
    g.bench_function("get_mut_hit_10k", |b| {
        b.iter(|| {
            i = (i + 7_919) % PREFILL;
            let s = table.get_mut(black_box(&ids[i])).unwrap();
            s.last_seen = now;
        })
    });
    g.finish();
    assert_eq!(table.len(), PREFILL);
}

// ---------------------------------------------------------------------------------------------
// 6. Cross-core hand-off
// ---------------------------------------------------------------------------------------------

fn handoff_msg() -> ShardMsg {
    // One fd (a dup of /dev/null) and a small buffered head travel back and forth.
    let fd = std::fs::File::open("/dev/null")
        .unwrap()
        .try_clone()
        .unwrap()
        .into();
    ShardMsg::Handoff(Handoff {
        fd,
        buffered: vec![0x61; 256],
        client: None,
    })
}

fn cross_core_hop(c: &mut Criterion) {
    let mut g = c.benchmark_group("cross_core_hop");
    g.measurement_time(Duration::from_secs(3));

    // shardcat: the forward direction is a shard mailbox into a sleeping monoio runtime (woken
    // through its AtomicWaker); the echo comes back through a second mailbox, on which this
    // thread blocks (parks) with a minimal executor.
    {
        let (to_shard, shard_rx) = mailbox(64);
        let (to_bench, bench_rx) = mailbox(64);
        let shard = std::thread::Builder::new()
            .name("bench-shard".into())
            .spawn(move || {
                let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                    .enable_timer()
                    .build()
                    .expect("monoio runtime");
                rt.block_on(async move {
                    while let Some(msg) = shard_rx.recv().await {
                        to_bench.try_send(msg).expect("reply mailbox full");
                    }
                })
            })
            .unwrap();
        let mut slot = Some(handoff_msg());
        g.bench_function("shardcat_mailbox_monoio_rtt", |b| {
            b.iter_custom(|iters| {
                let mut msg = slot.take().unwrap();
                let start = Instant::now();
                for _ in 0..iters {
                    to_shard.try_send(msg).expect("shard mailbox full");
                    msg = futures::executor::block_on(bench_rx.recv()).expect("shard gone");
                }
                let elapsed = start.elapsed();
                slot = Some(msg);
                elapsed
            })
        });
        to_shard.close();
        shard.join().unwrap();
    }

    // Baseline: a plain bounded crossbeam channel each way between two blocking threads.
    {
        let (to_echo, echo_rx) = crossbeam_channel::bounded::<ShardMsg>(64);
        let (to_bench, bench_rx) = crossbeam_channel::bounded::<ShardMsg>(64);
        let echo = std::thread::Builder::new()
            .name("bench-echo".into())
            .spawn(move || {
                while let Ok(msg) = echo_rx.recv() {
                    if to_bench.send(msg).is_err() {
                        break;
                    }
                }
            })
            .unwrap();
        let mut slot = Some(handoff_msg());
        g.bench_function("baseline_crossbeam_blocking_rtt", |b| {
            b.iter_custom(|iters| {
                let mut msg = slot.take().unwrap();
                let start = Instant::now();
                for _ in 0..iters {
                    to_echo.send(msg).unwrap();
                    msg = bench_rx.recv().unwrap();
                }
                let elapsed = start.elapsed();
                slot = Some(msg);
                elapsed
            })
        });
        drop(to_echo);
        echo.join().unwrap();
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = http_head_parse, chunk_and_sse, jsonrpc_classify, session_id, session_table,
        cross_core_hop
}
criterion_main!(benches);
