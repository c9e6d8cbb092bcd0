//! Micro-benchmarks of the sealed cluster session token (`cluster::SessionKeys`): sealing a
//! session's claims at initialize and opening them on a request, for 1 and 3 members (upstream
//! session ids of 32 hex characters, the Python SDK's), against the plain session id a single
//! gateway uses today (`mcp::SessionId` encode and decode), the baseline. And what a request
//! pays to find its session in a shard's table of 10,000: by its sealed token
//! (`Sessions::find_token`, a hash of the 131-character token, then the slab) against the
//! plain id (decode, then the slab).
//!
//! Run with `cargo bench --bench cluster`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

use shardcat::cluster::{Claims, Member, SessionKeys};
use shardcat::mcp::{random_secret, SessionId, Version};
use shardcat::shard::session::{Lifetimes, Sessions};
use shardcat::upstream::UpSession;

fn claims(members: u8) -> Claims {
    Claims {
        node: "gw-eu-west-1".into(),
        shard: 1,
        version: 2,
        issued_s: 1_796_000_000,
        subject: None,
        members: (0..members)
            .map(|i| Member {
                server: i,
                upstream: 0,
                sid: Some(format!("8f2b6c1e4d3a4b5c9e7f0a1b2c3d4e{i:02x}")),
            })
            .collect(),
    }
}

fn cluster_token(c: &mut Criterion) {
    let id = SessionId {
        shard: 1,
        slot: 12_345,
        secret: random_secret(),
    };
    let plain = id.encode();
    let keys = SessionKeys::new([0x5a; 32], Some([0xa5; 32]));
    let mut g = c.benchmark_group("cluster_token");
    g.bench_function("plain_id_encode", |b| b.iter(|| black_box(&id).encode()));
    g.bench_function("plain_id_decode", |b| {
        b.iter(|| SessionId::decode(black_box(plain.as_bytes())))
    });
    for n in [1, 3] {
        let c = claims(n);
        let token = keys.seal(&c, [9; 24]).expect("seal");
        assert_eq!(keys.open(&token).as_ref(), Ok(&c));
        g.bench_function(format!("seal_{n}_members"), |b| {
            b.iter(|| keys.seal(black_box(&c), black_box([9; 24])))
        });
        g.bench_function(format!("seal_random_{n}_members"), |b| {
            b.iter(|| keys.seal_random(black_box(&c)))
        });
        g.bench_function(format!("open_{n}_members"), |b| {
            b.iter(|| keys.open(black_box(&token)))
        });
    }
    let forged = {
        let mut t = keys.seal(&claims(3), [9; 24]).expect("seal").into_bytes();
        t[60] = if t[60] == b'A' { b'B' } else { b'A' };
        String::from_utf8(t).expect("ascii")
    };
    g.bench_function("open_forged_3_members", |b| {
        b.iter(|| keys.open(black_box(&forged)))
    });
    g.finish();
}

/// Finding a session for a request, in a table of 10,000 sessions each with a sealed token.
fn session_lookup(c: &mut Criterion) {
    let keys = SessionKeys::new([0x5a; 32], None);
    let lifetimes = Lifetimes {
        idle: Duration::from_secs(300),
        max_age: Duration::from_secs(86_400),
    };
    let mut table = Sessions::new(1, lifetimes);
    let now = std::time::Instant::now();
    let mut probe = None;
    for i in 0..10_000u32 {
        let up = UpSession::Http {
            upstream: 0,
            sid: Some(format!("{i:032x}").into()),
        };
        let id = table.insert(up, Version::assumed(), now);
        let token = keys.seal_random(&claims(1)).expect("seal");
        table.set_token(&id, token.as_str().into(), true);
        if i == 5_000 {
            probe = Some((id, token));
        }
    }
    let (id, token) = probe.expect("a probe");
    let plain = id.encode();
    let mut g = c.benchmark_group("session_lookup");
    g.bench_function("plain_id", |b| {
        b.iter(|| {
            let id = SessionId::decode(black_box(plain.as_bytes())).expect("decodes");
            table.get(&id).map(|s| s.version)
        })
    });
    g.bench_function("sealed_token", |b| {
        b.iter(|| {
            let id = table.find_token(black_box(&token)).expect("found");
            table.get(&id).map(|s| s.version)
        })
    });
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
    targets = cluster_token, session_lookup
}
criterion_main!(benches);
