//! authz_glob: `authz::Glob::matches` against the textbook dynamic-programming matcher
//! (`authz::glob::reference`), on every pattern `Glob::new` accepts.
//!
//! Invariants: a pattern is refused exactly when it is empty, longer than
//! `DEFAULT_MAX_PATTERN_BYTES` or holds a control character; an accepted one matches a name
//! exactly when the reference says so.
//!
//! Input: 1 byte mode, then the pattern and the name split at the first 0xff byte. Mode odd:
//! both as UTF-8 (lossy); mode even: each byte one of `a b * ? é` (the cases that matter).

use shardcat::authz::glob::{reference, Glob, DEFAULT_MAX_PATTERN_BYTES};

/// Keeps the reference's time (pattern × name) small per input.
const MAX_CHARS: usize = 200;

fn text(bytes: &[u8], mapped: bool) -> String {
    if mapped {
        const ALPHA: [char; 5] = ['a', 'b', '*', '?', 'é'];
        bytes
            .iter()
            .map(|b| ALPHA[*b as usize % ALPHA.len()])
            .collect()
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mapped = mode % 2 == 0;
    let (p, n) = match rest.iter().position(|b| *b == 0xff) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let pattern: String = text(p, mapped).chars().take(MAX_CHARS).collect();
    let name: String = text(n, mapped).chars().take(MAX_CHARS).collect();
    let refused = pattern.is_empty()
        || pattern.len() > DEFAULT_MAX_PATTERN_BYTES
        || pattern.chars().any(char::is_control);
    let glob = match Glob::new(&pattern) {
        Ok(g) => g,
        Err(_) => {
            assert!(refused, "{pattern:?} refused");
            return;
        }
    };
    assert!(!refused, "{pattern:?} accepted");
    assert_eq!(
        glob.matches(&name),
        reference(&pattern, &name),
        "pattern {pattern:?} name {name:?}"
    );
}
