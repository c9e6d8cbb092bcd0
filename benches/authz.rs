//! Micro-benchmarks of authorization (`src/authz.rs`): filtering a 100-tool `tools/list`
//! answer, checking a `tools/call`, and glob matching, each beside a naive baseline on the
//! same input.
//!
//! Run with `cargo bench --bench authz`. Groups are short (1 s warm-up, 2 s of measurement,
//! 30 samples), as in `benches/core.rs`.

use std::hint::black_box;
use std::rc::Rc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::Value;

use shardcat::authz::{
    check_request, filter_list, Glob, Grant, Kind, ListFilter, Policy, RuleFile, Rules,
};
use shardcat::mcp::classify;

/// A tools/list answer with 100 tools in the Python SDK's shape (about 280 bytes each), ten of
/// them named `*_delete`.
fn tool_list() -> String {
    let tools: Vec<String> = (0..100)
        .map(|i| {
            let name = if i % 10 == 3 {
                format!("table_{i}_delete")
            } else {
                format!("search_docs_{i}")
            };
            format!(
                r#"{{"name":"{name}","description":"Searches the document store number {i} and returns matches.","inputSchema":{{"properties":{{"query":{{"title":"Query","type":"string"}},"limit":{{"default":10,"title":"Limit","type":"integer"}}}},"required":["query"],"title":"{name}Arguments","type":"object"}}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"jsonrpc":"2.0","id":2,"result":{{"tools":[{}],"nextCursor":"cGFnZTI="}}}}"#,
        tools.join(",")
    )
}

/// Ten rules for ten teams, and a rule for all with a deny list.
fn rule_files() -> Vec<RuleFile> {
    let mut files: Vec<RuleFile> = (0..10)
        .map(|t| RuleFile {
            subjects: vec![format!("team-{t}-*")],
            allow_tools: Some(vec!["search_*".into(), format!("team{t}_*")]),
            ..RuleFile::default()
        })
        .collect();
    files.push(RuleFile {
        subjects: vec!["*".into()],
        deny_tools: vec!["*_delete".into(), "admin_*".into()],
        allow_tools: Some(vec!["table_*".into()]),
        ..RuleFile::default()
    });
    files
}

fn grant() -> Rc<Grant> {
    let rules = Rules::with_default(&rule_files(), Policy::Deny).expect("rules");
    Rc::new(rules.grant("team-3-ci", &["mcp"]))
}

/// The naive way: the whole answer as a `serde_json::Value` (without `preserve_order`, so
/// the result's keys come out sorted: not even equivalent), `retain`, serialize.
fn naive_filter(grant: &Grant, body: &[u8]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let tools = v.get_mut("result")?.get_mut("tools")?.as_array_mut()?;
    let before = tools.len();
    tools.retain(|t| {
        t.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| grant.allows(Kind::Tool, n))
    });
    (tools.len() != before).then(|| serde_json::to_vec(&v).ok())?
}

fn list_filtering(c: &mut Criterion) {
    let g = grant();
    let body = tool_list();
    let mut group = c.benchmark_group("authz_filter_list");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("filter_list, 100 tools, 10 removed", |b| {
        b.iter(|| filter_list(&g, "tools/list", black_box(body.as_bytes())))
    });
    group.bench_function("naive Value + retain + to_vec", |b| {
        b.iter(|| naive_filter(&g, black_box(body.as_bytes())))
    });
    let kept = body.replace("_delete", "_keep");
    group.bench_function("filter_list, 100 tools, none removed", |b| {
        b.iter(|| filter_list(&g, "tools/list", black_box(kept.as_bytes())))
    });
    group.bench_function("reference: serde IgnoredAny pass", |b| {
        b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(body.as_bytes())))
    });
    group.finish();
}

fn request_check(c: &mut Criterion) {
    let g = grant();
    let call = br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"search_documents","arguments":{"query":"q"}}}"#;
    let parsed = classify(call).expect("request");
    let mut group = c.benchmark_group("authz_check");
    group.bench_function("check_request, allowed tools/call (3 globs)", |b| {
        b.iter(|| check_request(&g, black_box(&parsed)))
    });
    let list = classify(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).expect("request");
    group.bench_function("ListFilter::new, no grant (the hook when off)", |b| {
        b.iter(|| ListFilter::new(black_box(None), black_box(&list)))
    });
    group.bench_function("ListFilter::new, tools/list, restricted grant", |b| {
        b.iter(|| ListFilter::new(black_box(Some(&g)), black_box(&list)))
    });
    group.bench_function("Rules::grant, 11 rules", |b| {
        let rules = Rules::with_default(&rule_files(), Policy::Deny).expect("rules");
        b.iter(|| rules.grant(black_box("team-3-ci"), &["mcp"]))
    });
    group.finish();
}

fn glob_matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("authz_glob");
    let name = "file:///srv/public/reports/2026/q4/summary-final.pdf";
    let pattern = "file:///srv/*/reports/*/q?/*.pdf";
    let g = Glob::new(pattern).expect("glob");
    group.bench_function("Glob::matches, 4 stars, 1 ?", |b| {
        b.iter(|| g.matches(black_box(name)))
    });
    group.bench_function("reference DP matcher", |b| {
        b.iter(|| shardcat::authz::glob::reference(black_box(pattern), black_box(name)))
    });
    let hostile = format!("{}b*", "*a".repeat(50));
    let g = Glob::new(&hostile).expect("glob");
    let long = "a".repeat(1000);
    group.bench_function("Glob::matches, (*a)x50 b* over 1000 a", |b| {
        b.iter(|| g.matches(black_box(&long)))
    });
    group.finish();
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
    targets = list_filtering, request_check, glob_matching
}
criterion_main!(benches);
