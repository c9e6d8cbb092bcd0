//! Throughput of the persistence thread: frames/s from shards to a segment on tmpfs, against a
//! naive recorder that writes each frame with its own write.
//!
//! Run with `cargo bench --bench tape`. Frames carry a ~100-byte JSON-RPC payload. Each
//! iteration records `FRAMES` frames into a fresh directory under /dev/shm (falling back to the
//! temp dir) and counts from the first offer until `shutdown` returns, so the final flush,
//! fsync and index are inside the timing. The producers use the `block` policy (retry while the
//! channel is full), so every frame is written and none is dropped.

use std::fs::File;
use std::hint::black_box;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use shardcat::tape::{self, format, Dir, Frame, FrameKind, Fsync, Overflow, Recorder, TapeConfig};

/// Frames per iteration.
const FRAMES: u64 = 200_000;

/// About 100 bytes: a small tools/call result.
const PAYLOAD: &[u8] =
    br#"{"jsonrpc":"2.0","id":4711,"result":{"content":[{"type":"text","text":"ok"}],"isError":false}}"#;

fn base_dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

fn fresh_dir(name: &str) -> PathBuf {
    let d = base_dir().join(format!("shardcat-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn frame(session: u64, n: u64) -> Frame {
    Frame {
        server: None,
        session,
        ts_us: 1_763_800_000_000_000 + n,
        dir: Dir::ServerToClient,
        kind: FrameKind::Message {
            status: 200,
            sse: false,
            stream: n as u32,
            event_id: None,
        },
        payload: Bytes::from_static(PAYLOAD),
    }
}

/// Offers `count` frames, retrying while the channel is full (the `block` policy).
fn produce(rec: &Recorder, count: u64) {
    let session = rec.new_session_id();
    for n in 0..count {
        let mut f = frame(session, n);
        while let Err(back) = rec.try_record(f) {
            f = back;
            std::thread::yield_now();
        }
    }
}

/// Records `FRAMES` frames from `shards` producer threads; returns the elapsed time.
fn record_once(shards: usize) -> Duration {
    let dir = fresh_dir("persist");
    let mut cfg = TapeConfig::new(&dir);
    cfg.overflow = Overflow::Block;
    cfg.fsync = Fsync::Interval(1000);
    let (p, recs) = tape::start(cfg, shards).expect("start");
    let per = FRAMES / shards as u64;
    let start = Instant::now();
    let producers: Vec<_> = recs
        .into_iter()
        .map(|r| std::thread::spawn(move || produce(&r, per)))
        .collect();
    for t in producers {
        t.join().expect("producer");
    }
    let stats = p.shutdown();
    let took = start.elapsed();
    assert_eq!(stats.frames_written.load(Relaxed), per * shards as u64);
    let _ = std::fs::remove_dir_all(&dir);
    took
}

/// The naive recorder: encode each frame and write it with its own `write` call.
fn naive_once() -> Duration {
    let dir = fresh_dir("naive");
    std::fs::create_dir_all(&dir).expect("dir");
    let mut file = File::create(dir.join("naive.tape")).expect("file");
    file.write_all(&format::file_header()).expect("header");
    let mut buf = Vec::with_capacity(256);
    let start = Instant::now();
    for n in 0..FRAMES {
        let f = frame(1, n);
        buf.clear();
        format::encode(&mut buf, &f, &f.payload);
        file.write_all(&buf).expect("write");
    }
    file.sync_data().expect("sync");
    let took = start.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    took
}

fn persistence(c: &mut Criterion) {
    let mut g = c.benchmark_group("tape_persist_100B_frames");
    g.throughput(Throughput::Elements(FRAMES));
    g.bench_function("persistence_thread_1_shard", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| record_once(1)).sum())
    });
    g.bench_function("persistence_thread_2_shards", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| record_once(2)).sum())
    });
    g.bench_function("naive_write_per_frame", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| naive_once()).sum())
    });
    g.finish();
}

fn encode_only(c: &mut Criterion) {
    let mut g = c.benchmark_group("tape_encode_100B_frame");
    g.throughput(Throughput::Elements(1));
    let f = frame(1, 1);
    let mut buf = Vec::with_capacity(1 << 20);
    g.bench_function("encode_with_crc32", |b| {
        b.iter(|| {
            if buf.len() > (1 << 20) - 256 {
                buf.clear();
            }
            format::encode(&mut buf, black_box(&f), &f.payload);
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
}

criterion_group! {
    name = benches;
    config = config();
    targets = persistence, encode_only
}
criterion_main!(benches);
