//! The mark that tells one server's resource URIs (and URI templates) apart from another's on
//! a federated route, and the RFC 6570 matching that routes a URI expanded from a template.
//!
//! The mark puts the server's name into the URI's scheme, as a last `+` part:
//!
//! ```text
//! file:///a            of server my_fs   ->  file+fed.my.fs:///a
//! fed://shared/readme  of server beta    ->  fed+fed.beta://shared/readme
//! notes/a.txt (no scheme)  of server x   ->  fed.x:notes/a.txt
//! ```
//!
//! Why the scheme: it is the one part every URI has, so a template gets the same mark and a
//! URI the client expands from the marked template carries it back (`file+fed.x:///{path}` →
//! `file+fed.x:///etc`). A scheme is `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )` (RFC 3986;
//! the Python SDK checks it through pydantic's `AnyUrl`), and server names are `[a-z0-9_-]+`,
//! so the name is written with `_` as `.`: names hold no `.`, which makes that one-to-one.
//! Everything is lowercase, because URL parsers lowercase schemes. A marked URI is never a
//! "special" (WHATWG) scheme, so clients' URL parsers leave its host and path as they are.
//! A value without a scheme (not a URI, or a template starting with an expression) is wrapped
//! whole after a scheme of its own, `fed.<name>:`.
//!
//! Invariants:
//! - `unmark(&mark(u, s)) == Some((s, u))` for every string `u` and server name `s`; a marked
//!   value always starts with a valid scheme and `:`; one that was a valid URI stays one.
//! - A value *looks marked* exactly when `unmark` reads it: its scheme's last `+` part (or its
//!   whole scheme) is `fed.` and a non-empty encoded name. A server's own URI that looks
//!   marked is always shown marked (`names`), so a client's URI is unambiguous: marked, or the
//!   server's own.
//! - Template matching costs O(template parts × URI length), with no backtracking.

use std::borrow::Cow;

/// What a mark's scheme label starts with.
pub const MARK_LABEL: &str = "fed.";

/// Whether `name` can be a federated server's name (and so go into a mark): `[a-z0-9_-]+`.
pub fn is_server_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

/// RFC 3986 `scheme`.
fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// The scheme of `value`: what comes before its first `:`, when that is a scheme.
fn scheme_of(value: &str) -> Option<&str> {
    let colon = value.find(':')?;
    Some(&value[..colon]).filter(|s| is_scheme(s))
}

/// `value` marked as server `server`'s. `server` must pass `is_server_name` (`names` checks
/// every member's name when the table is built).
pub fn mark(value: &str, server: &str) -> String {
    debug_assert!(is_server_name(server), "{server:?} is not a server name");
    let encoded = server.replace('_', ".");
    match scheme_of(value) {
        Some(scheme) => {
            let rest = &value[scheme.len()..];
            format!("{scheme}+{MARK_LABEL}{encoded}{rest}")
        }
        None => format!("{MARK_LABEL}{encoded}:{value}"),
    }
}

/// The server name a mark's label encodes (after `fed.`), lowercased.
fn decode_name(encoded: &str) -> Option<String> {
    let name: String = encoded
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            '.' => '_',
            c => c,
        })
        .collect();
    Some(name).filter(|n| is_server_name(n))
}

/// The server and its own value of a marked `value`; `None` when `value` is not marked. The
/// label is read case-insensitively (a client's URL parser may have lowercased the scheme, and
/// marks are lowercase anyway).
pub fn unmark(value: &str) -> Option<(String, String)> {
    let scheme = scheme_of(value)?;
    let (head, label) = match scheme.rfind('+') {
        Some(i) => (Some(&scheme[..i]), &scheme[i + 1..]),
        None => (None, scheme),
    };
    let encoded = label
        .get(..MARK_LABEL.len())
        .filter(|p| p.eq_ignore_ascii_case(MARK_LABEL))
        .map(|_| &label[MARK_LABEL.len()..])?;
    let server = decode_name(encoded)?;
    let rest = &value[scheme.len()..];
    let own = match head {
        Some(head) => format!("{head}{rest}"),
        None => rest[1..].to_string(),
    };
    Some((server, own))
}

/// Whether `value` reads as marked (see the module's invariants).
pub fn looks_marked(value: &str) -> bool {
    unmark(value).is_some()
}

/// One part of a URI template: literal text, or an expression of this class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part<'a> {
    Literal(&'a str),
    /// `{var}` (level 1), or `{var,...}`: a run of characters other than `/`, `?` and `#`,
    /// possibly empty (the expansion of an empty value).
    Simple,
    /// Any other operator (`{+var}`, `{#var}`, `{/var}`, `{?var}`, ...): any run at all. That
    /// over-matches on purpose: a match only makes a URI ambiguous or routes it to the one
    /// server whose template could have made it.
    Any,
}

/// The parts of `template`. An unclosed `{` is literal text (RFC 6570 calls the template
/// invalid; a literal match is the least surprising reading).
fn parts(template: &str) -> Vec<Part<'_>> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c) else {
            break;
        };
        if open > 0 {
            out.push(Part::Literal(&rest[..open]));
        }
        let op = rest[open + 1..close].chars().next();
        out.push(match op {
            Some(c) if c.is_ascii_alphanumeric() || c == '_' || c == '%' => Part::Simple,
            _ => Part::Any,
        });
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        out.push(Part::Literal(rest));
    }
    out
}

/// The literal text of `template` before its first expression.
pub fn literal_prefix(template: &str) -> &str {
    match parts(template).first() {
        Some(Part::Literal(l)) => l,
        _ => "",
    }
}

/// Whether some URI could match both templates. Any URI matching both starts with both
/// literal prefixes, so when neither prefix starts the other they are disjoint; otherwise
/// they may overlap (conservatively: `weather://{c}/now` and `weather://{c}/week` count).
pub fn may_overlap(a: &str, b: &str) -> bool {
    let (p, q) = (literal_prefix(a), literal_prefix(b));
    p.starts_with(q) || q.starts_with(p)
}

/// Whether `uri` could be an expansion of `template` (RFC 6570 level 1 exactly; other
/// operators over-match, see `Part`). A set of reachable positions is carried part by part.
pub fn template_matches(template: &str, uri: &str) -> bool {
    let bytes = uri.as_bytes();
    let mut reach = vec![false; bytes.len() + 1];
    reach[0] = true;
    for part in parts(template) {
        let mut next = vec![false; bytes.len() + 1];
        match part {
            Part::Literal(lit) => {
                for i in (0..=bytes.len()).filter(|&i| reach[i]) {
                    if bytes[i..].starts_with(lit.as_bytes()) {
                        next[i + lit.len()] = true;
                    }
                }
            }
            Part::Simple | Part::Any => {
                let mut open = false;
                for i in 0..=bytes.len() {
                    open |= reach[i];
                    next[i] = open;
                    let stop =
                        part == Part::Simple && matches!(bytes.get(i), Some(b'/' | b'?' | b'#'));
                    if stop {
                        open = false;
                    }
                }
            }
        }
        if !next.contains(&true) {
            return false;
        }
        reach = next;
    }
    reach[bytes.len()]
}

/// `value` as the client should see it: unchanged or marked.
pub fn marked_if<'a>(value: &'a str, server: &str, mark_it: bool) -> Cow<'a, str> {
    if mark_it {
        Cow::Owned(mark(value, server))
    } else {
        Cow::Borrowed(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_the_scheme_and_unmarks_back() {
        assert_eq!(mark("file:///a", "my_fs"), "file+fed.my.fs:///a");
        assert_eq!(
            mark("fed://shared/readme", "beta"),
            "fed+fed.beta://shared/readme"
        );
        assert_eq!(mark("notes/a.txt", "x-1"), "fed.x-1:notes/a.txt");
        assert_eq!(mark("file:///{path}", "a"), "file+fed.a:///{path}");
        assert_eq!(mark("{scheme}://h/{p}", "a"), "fed.a:{scheme}://h/{p}");
        for (u, s) in [
            ("file:///a", "my_fs"),
            ("git+ssh://h/r", "a"),
            ("", "a"),
            (":", "a__b"),
            ("a b:c", "z"),
            ("file+fed.x:///a", "y"),
            ("fed.x:abc", "y"),
            ("urn:isbn:0451450523", "lib"),
        ] {
            let m = mark(u, s);
            assert_eq!(
                unmark(&m),
                Some((s.to_string(), u.to_string())),
                "{u} {s} -> {m}"
            );
            assert!(scheme_of(&m).is_some(), "{m} has a scheme");
        }
    }

    #[test]
    fn only_marks_read_as_marked() {
        for u in [
            "file:///a",
            "fed://x/y",
            "file+fed:///a",
            "file+fed.:///a",
            "file+fed.A_B:///a",
            "fed.x",
            "a b+fed.x:y",
            "file+fedx:///a",
        ] {
            assert_eq!(unmark(u), None, "{u}");
            assert!(!looks_marked(u));
        }
        // A URL parser lowercases schemes; an uppercase label still reads.
        assert_eq!(
            unmark("FILE+FED.MY.FS:///a"),
            Some(("my_fs".into(), "FILE:///a".into()))
        );
        assert_eq!(unmark("fed.x:"), Some(("x".into(), "".into())));
    }

    #[test]
    fn matches_level_one_templates() {
        assert!(template_matches("file:///{path}", "file:///a.txt"));
        assert!(!template_matches("file:///{path}", "file:///a/b.txt"));
        assert!(template_matches("file:///{+path}", "file:///a/b.txt"));
        assert!(template_matches("fed://a/items/{id}", "fed://a/items/7"));
        assert!(!template_matches("fed://a/items/{id}", "fed://b/items/7"));
        assert!(template_matches("x://{a}-{b}", "x://1-2"));
        assert!(
            template_matches("x://{a}", "x://"),
            "an empty value expands to nothing"
        );
        assert!(template_matches("plain", "plain"));
        assert!(!template_matches("plain", "plainer"));
        assert!(
            template_matches("x://{a", "x://{a"),
            "an unclosed brace is literal"
        );
        assert!(template_matches("q://s{?x,y}", "q://s?x=1&y=2"));
    }

    #[test]
    fn overlap_is_decided_by_literal_prefixes() {
        assert!(may_overlap("file:///{p}", "file:///docs/{n}"));
        assert!(!may_overlap("fed://a/items/{id}", "fed://b/items/{id}"));
        assert!(
            may_overlap("{s}://x", "file:///{p}"),
            "an empty prefix overlaps all"
        );
        assert_eq!(literal_prefix("fed://a/{id}"), "fed://a/");
    }

    #[test]
    fn server_names_are_the_config_alphabet() {
        assert!(is_server_name("my_fs-2"));
        assert!(!is_server_name(""));
        assert!(!is_server_name("My"));
        assert!(!is_server_name("a.b"));
    }
}
