//! The house's rules, checked on the source tree (`src/`), so that a change that breaks one
//! fails CI instead of waiting for a reviewer:
//! - no import circle between modules (a folder and its root file, `upstream.rs` beside
//!   `upstream/`, are one module), and none between sibling files within a folder;
//! - the upstream kinds import neither the pipeline (`gateway`) nor the shard context;
//! - the codec knows no sessions, upstreams or pipeline;
//! - configuration imports no runtime module (only the codec's constants, `authz`'s rule
//!   schema and `cluster`'s session keys);
//! - the session token codec (`cluster`) sits on the ground: nothing above `mcp`;
//! - authorization (`authz`) sits on the ground: the codec and `mcp`, nothing above;
//! - the shard context imports no pipeline;
//! - no module on the request path (`shard`, `gateway`, `upstream`) takes a lock.
//!
//! Imports are read from `use` items and from `crate::`/`super::` paths and child-module paths
//! in the code; `#[cfg(test)]` modules are left out (tests may reach anywhere).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Every source file as its module path (`src/upstream/http.rs` → `["upstream", "http"]`).
fn sources() -> BTreeMap<Module, String> {
    let mut out = BTreeMap::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path
                .strip_prefix(&root)
                .expect("under src/")
                .with_extension("");
            let mut m: Module = rel
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            if m == ["lib"] {
                m.clear();
            }
            let text = std::fs::read_to_string(&path).expect("source is readable");
            out.insert(m, text);
        }
    }
    out
}

/// The code without its test modules and line comments.
fn code_of(text: &str) -> String {
    let mut code = text;
    for (i, _) in text.match_indices("#[cfg(test)]") {
        if text[i + 12..].trim_start().starts_with("mod ") {
            code = &text[..i];
            break;
        }
    }
    code.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Splits `a, b::{c, d}, e` at top-level commas.
fn split_top(body: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, ch) in body.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&body[start..]);
    out
}

/// The paths a `use` tree names, each as its segments.
fn expand(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
    for part in split_top(tree) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let mut path = prefix.to_vec();
        match part.find('{') {
            Some(i) => {
                let head = part[..i].trim_end_matches(':');
                path.extend(head.split("::").filter(|s| !s.is_empty()).map(String::from));
                let inner = &part[i + 1..part.rfind('}').unwrap_or(part.len())];
                expand(&path, inner, out);
            }
            None => {
                let name = part.split(" as ").next().unwrap_or(part);
                path.extend(name.split("::").map(|s| s.trim().to_string()));
                out.push(path);
            }
        }
    }
}

/// Path-like runs (`a::b::c`) in the code, each with the character before it.
fn path_runs(code: &str) -> Vec<(Option<char>, Vec<String>)> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let bytes: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !ident(bytes[i]) || (i > 0 && ident(bytes[i - 1])) {
            i += 1;
            continue;
        }
        let before = if i > 0 { Some(bytes[i - 1]) } else { None };
        let mut segs = Vec::new();
        let mut j = i;
        loop {
            let s = j;
            while j < bytes.len() && ident(bytes[j]) {
                j += 1;
            }
            segs.push(bytes[s..j].iter().collect::<String>());
            if j + 2 < bytes.len() && bytes[j] == ':' && bytes[j + 1] == ':' && ident(bytes[j + 2])
            {
                j += 2;
            } else {
                break;
            }
        }
        if segs.len() > 1 {
            out.push((before, segs));
        }
        i = j.max(i + 1);
    }
    out
}

/// The longest prefix of `path` that is a source file.
fn resolve(files: &BTreeMap<Module, String>, path: &[String]) -> Option<Module> {
    (1..=path.len())
        .rev()
        .map(|k| path[..k].to_vec())
        .find(|m| files.contains_key(m))
}

/// The files each file imports.
fn imports(files: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut graph = BTreeMap::new();
    for (me, text) in files {
        let code = code_of(text);
        let mut paths: Vec<Vec<String>> = Vec::new();
        for item in code.split("use ").skip(1) {
            let Some(end) = item.find(';') else { continue };
            let tree = &item[..end];
            if tree.starts_with("crate") || tree.starts_with("super") || tree.starts_with("self") {
                expand(&[], tree, &mut paths);
            } else if let Some(first) = tree.split("::").next() {
                let mut child = me.clone();
                child.push(first.trim().to_string());
                if files.contains_key(&child) {
                    expand(&[], tree, &mut paths);
                }
            }
        }
        for (before, segs) in path_runs(&code) {
            if before != Some(':') {
                paths.push(segs);
            }
        }
        let mut deps = BTreeSet::new();
        for p in paths {
            let (mut base, mut rest): (Module, &[String]) = match p[0].as_str() {
                "crate" => (Vec::new(), &p[1..]),
                "super" => (me[..me.len().saturating_sub(1)].to_vec(), &p[1..]),
                "self" => (me.clone(), &p[1..]),
                _ => (me.clone(), &p[..]),
            };
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            if base == *me && p[0] != "self" {
                // A bare path: only a child module of this file counts.
                let mut child = me.clone();
                child.push(p[0].clone());
                if !files.contains_key(&child) {
                    continue;
                }
            }
            base.extend(rest.iter().cloned());
            if let Some(dep) = resolve(files, &base) {
                if dep != *me {
                    deps.insert(dep);
                }
            }
        }
        graph.insert(me.clone(), deps);
    }
    graph
}

/// The strongly connected parts with more than one member (Tarjan).
fn circles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct T<'a> {
        g: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<Module, usize>,
        low: BTreeMap<Module, usize>,
        stack: Vec<Module>,
        out: Vec<Vec<Module>>,
    }
    fn visit(t: &mut T<'_>, v: &Module) {
        let n = t.index.len();
        t.index.insert(v.clone(), n);
        t.low.insert(v.clone(), n);
        t.stack.push(v.clone());
        for w in t.g.get(v).into_iter().flatten() {
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if t.stack.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut part = Vec::new();
            while let Some(w) = t.stack.pop() {
                let done = w == *v;
                part.push(w);
                if done {
                    break;
                }
            }
            if part.len() > 1 {
                t.out.push(part);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "lib".into()
    } else {
        m.join("/")
    }
}

/// The graph between top-level modules (a folder counts with its root file).
fn module_graph(files: &BTreeMap<Module, BTreeSet<Module>>) -> BTreeMap<Module, BTreeSet<Module>> {
    let top = |m: &Module| m.iter().take(1).cloned().collect::<Module>();
    let mut g: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (me, deps) in files {
        let entry = g.entry(top(me)).or_default();
        entry.extend(deps.iter().map(top).filter(|d| *d != top(me)));
    }
    g
}

fn graph() -> (BTreeMap<Module, String>, BTreeMap<Module, BTreeSet<Module>>) {
    let files = sources();
    let g = imports(&files);
    (files, g)
}

#[test]
fn no_import_circle_between_modules_or_sibling_files() {
    let (_, g) = graph();
    let modules = circles(&module_graph(&g));
    let names = |c: &Vec<Vec<Module>>| -> Vec<Vec<String>> {
        c.iter().map(|p| p.iter().map(name).collect()).collect()
    };
    assert!(modules.is_empty(), "module circles: {:?}", names(&modules));
    // Within a folder: edges between a file and its own folder's root file are the folder's
    // interface; circles among siblings are not allowed.
    let is_parent = |a: &Module, b: &Module| a.len() + 1 == b.len() && b.starts_with(a);
    let siblings: BTreeMap<Module, BTreeSet<Module>> = g
        .iter()
        .map(|(k, v)| {
            let deps = v
                .iter()
                .filter(|w| !is_parent(k, w) && !is_parent(w, k))
                .cloned()
                .collect();
            (k.clone(), deps)
        })
        .collect();
    let files = circles(&siblings);
    assert!(files.is_empty(), "file circles: {:?}", names(&files));
    // The reader works: it sees the pipeline's imports.
    let gw = &g[&vec!["gateway".to_string(), "route".to_string()]];
    assert!(gw.contains(&vec!["upstream".to_string()]), "{gw:?}");
}

/// The top-level modules `module`'s files import (itself left out).
fn imported_by(g: &BTreeMap<Module, BTreeSet<Module>>, module: &str) -> BTreeSet<String> {
    g.iter()
        .filter(|(k, _)| k.first().is_some_and(|f| f == module))
        .flat_map(|(_, v)| v.iter().filter_map(|d| d.first().cloned()))
        .filter(|d| d != module)
        .collect()
}

#[test]
fn layers_look_only_down() {
    let (_, g) = graph();
    let rules: [(&str, &[&str]); 7] = [
        (
            "authz",
            &["shard", "gateway", "upstream", "runtime", "admin", "config"],
        ),
        (
            "upstream",
            &["gateway", "shard", "runtime", "admin", "degrade"],
        ),
        ("codec", &["shard", "gateway", "upstream", "mcp", "config"]),
        ("shard", &["gateway", "runtime", "admin"]),
        ("gateway", &["runtime", "admin"]),
        ("mcp", &["shard", "gateway", "upstream"]),
        (
            "cluster",
            &["shard", "gateway", "upstream", "runtime", "admin", "config"],
        ),
    ];
    for (module, forbidden) in rules {
        let deps = imported_by(&g, module);
        for f in forbidden {
            assert!(!deps.contains(*f), "{module} imports {f}: {deps:?}");
        }
    }
    // `[[auth.rules]]` is `authz::RuleFile`, validated into `authz::Rules`; `[cluster]` holds
    // `cluster::SessionKeys`: both are on the ground too (checked above), so the
    // configuration may embed them.
    let config = imported_by(&g, "config");
    assert!(
        config
            .iter()
            .all(|d| d == "codec" || d == "authz" || d == "cluster"),
        "configuration imports only the codec's constants, the rule schema and the session \
         keys: {config:?}"
    );
    assert!(!imported_by(&g, "gateway").is_empty());
}

#[test]
fn no_lock_on_the_request_path() {
    let (files, _) = graph();
    for (m, text) in &files {
        if !matches!(
            m.first().map(String::as_str),
            Some("shard" | "gateway" | "upstream")
        ) {
            continue;
        }
        let code = code_of(text);
        for lock in ["Mutex", "RwLock", ".lock()", "Condvar"] {
            assert!(!code.contains(lock), "{} uses {lock}", name(m));
        }
    }
}
