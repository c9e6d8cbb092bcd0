//! Glob patterns for authorization rules: `*` matches any run of characters (none included),
//! `?` exactly one character; every other character matches itself, case-sensitively. There
//! are no escapes, classes or regexes: tool and prompt names (letters, digits, `_-./`) never
//! hold `*` or `?`, and in a resource URI pattern `?` also matches a literal `?`.
//!
//! Invariant: matching never backtracks. A pattern is compiled into fixed-width segments
//! between its stars; the first is anchored at the start of the name, the last at its end
//! (both found in one step), and each middle segment is searched once, leftmost, after the
//! one before. That is exact for globs (a segment placed leftmost leaves the most room to the
//! rest) and costs O(name × segment) at worst, O(name + pattern) for segments without `?`
//! (std's two-way substring search). Patterns are bounded at load time
//! (`DEFAULT_MAX_PATTERN_BYTES`). `fuzz/checks/authz_glob.rs` checks it against `reference`.

/// The longest pattern accepted. Names and URIs an operator means to match are far shorter;
/// the bound keeps the worst-case match cost per name small.
pub const DEFAULT_MAX_PATTERN_BYTES: usize = 1024;

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    src: Box<str>,
    shape: Shape,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// Only stars: every name.
    Any,
    /// No wildcard.
    Exact,
    /// `lit*`.
    Prefix(Box<str>),
    /// `*lit`.
    Suffix(Box<str>),
    /// Anything else. Without a star: one segment, anchored at both ends. With stars: the
    /// segments between them (empty middle ones dropped); the first is anchored at the start,
    /// the last at the end.
    General { segs: Vec<Seg>, starred: bool },
}

/// A run of pattern between two stars: fixed width in characters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Seg {
    toks: Vec<Tok>,
    /// Characters it matches (literal characters plus `?`s).
    chars: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(Box<str>),
    /// This many `?`.
    One(usize),
}

impl Glob {
    /// Compiles `src`; refuses an empty pattern, one over `DEFAULT_MAX_PATTERN_BYTES`, and
    /// control characters (never in a name: a pattern holding one is a typo).
    pub fn new(src: &str) -> Result<Glob, String> {
        if src.is_empty() {
            return Err("empty pattern (use \"*\" for every name)".into());
        }
        if src.len() > DEFAULT_MAX_PATTERN_BYTES {
            return Err(format!(
                "pattern longer than {DEFAULT_MAX_PATTERN_BYTES} bytes"
            ));
        }
        if src.chars().any(char::is_control) {
            return Err(format!("pattern {src:?} holds a control character"));
        }
        Ok(Glob {
            src: src.into(),
            shape: shape_of(src),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.src
    }

    /// Whether every name matches (`*`).
    pub fn is_any(&self) -> bool {
        self.shape == Shape::Any
    }

    pub fn matches(&self, name: &str) -> bool {
        match &self.shape {
            Shape::Any => true,
            Shape::Exact => name == &*self.src,
            Shape::Prefix(p) => name.starts_with(&**p),
            Shape::Suffix(s) => name.ends_with(&**s),
            Shape::General { segs, starred } => general(segs, *starred, name),
        }
    }
}

fn shape_of(src: &str) -> Shape {
    let parts: Vec<&str> = src.split('*').collect();
    let starred = parts.len() > 1;
    if !src.contains('?') {
        match parts.as_slice() {
            [_] => return Shape::Exact,
            _ if parts.iter().all(|p| p.is_empty()) => return Shape::Any,
            [p, rest @ ..] if rest.iter().all(|r| r.is_empty()) => {
                return Shape::Prefix((*p).into())
            }
            [init @ .., s] if init.iter().all(|r| r.is_empty()) => {
                return Shape::Suffix((*s).into())
            }
            _ => {}
        }
    }
    let last = parts.len() - 1;
    let segs = parts
        .iter()
        .enumerate()
        // An empty middle segment (`**`) constrains nothing; the ends stay as anchors.
        .filter(|(i, p)| !p.is_empty() || *i == 0 || *i == last)
        .map(|(_, p)| seg_of(p))
        .collect();
    Shape::General { segs, starred }
}

fn seg_of(part: &str) -> Seg {
    let mut seg = Seg::default();
    let mut lit = String::new();
    for c in part.chars() {
        if c == '?' {
            if !lit.is_empty() {
                seg.toks.push(Tok::Lit(std::mem::take(&mut lit).into()));
            }
            match seg.toks.last_mut() {
                Some(Tok::One(n)) => *n += 1,
                _ => seg.toks.push(Tok::One(1)),
            }
        } else {
            lit.push(c);
        }
        seg.chars += 1;
    }
    if !lit.is_empty() {
        seg.toks.push(Tok::Lit(lit.into()));
    }
    seg
}

fn general(segs: &[Seg], starred: bool, name: &str) -> bool {
    if !starred {
        return segs
            .first()
            .is_some_and(|s| match_at(name, 0, s) == Some(name.len()));
    }
    let (Some((head, rest)), Some(tail)) = (segs.split_first(), segs.last()) else {
        return false;
    };
    let middle = &rest[..rest.len().saturating_sub(1)];
    // The tail has a fixed width in characters: its one possible start is that far from the end.
    let Some(tail_start) = chars_back(name, tail.chars) else {
        return false;
    };
    if match_at(name, tail_start, tail) != Some(name.len()) {
        return false;
    }
    let Some(mut pos) = match_at(name, 0, head).filter(|&end| end <= tail_start) else {
        return false;
    };
    for seg in middle {
        match find(name, pos, tail_start, seg) {
            Some(end) => pos = end,
            None => return false,
        }
    }
    true
}

/// The byte index `n` characters before the end of `name`.
fn chars_back(name: &str, n: usize) -> Option<usize> {
    if n == 0 {
        return Some(name.len());
    }
    name.char_indices().rev().nth(n - 1).map(|(i, _)| i)
}

/// Where `seg` ends when it matches `name` at byte `pos` (a character boundary).
fn match_at(name: &str, mut pos: usize, seg: &Seg) -> Option<usize> {
    for tok in &seg.toks {
        match tok {
            Tok::Lit(l) => {
                if !name[pos..].starts_with(&**l) {
                    return None;
                }
                pos += l.len();
            }
            Tok::One(n) => {
                let mut it = name[pos..].chars();
                for _ in 0..*n {
                    pos += it.next()?.len_utf8();
                }
            }
        }
    }
    Some(pos)
}

/// The end of the leftmost match of `seg` starting at or after `from` and ending by `limit`.
fn find(name: &str, from: usize, limit: usize, seg: &Seg) -> Option<usize> {
    let hay = &name[from..limit];
    if let [Tok::Lit(l)] = seg.toks.as_slice() {
        return hay.find(&**l).map(|i| from + i + l.len());
    }
    hay.char_indices()
        .map(|(i, _)| from + i)
        .chain(std::iter::once(limit))
        .find_map(|start| match_at(name, start, seg).filter(|&end| end <= limit))
}

/// The textbook dynamic-programming matcher (O(name × pattern) time and memory), kept as the
/// reference the tests and the fuzz target hold `Glob::matches` to.
pub fn reference(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // row[j]: the pattern so far matches the first j characters of the name.
    let mut row = vec![false; n.len() + 1];
    row[0] = true;
    for &pc in &p {
        let mut next = vec![false; n.len() + 1];
        if pc == '*' {
            next[0] = row[0];
        }
        for j in 1..=n.len() {
            next[j] = match pc {
                '*' => row[j] || next[j - 1],
                '?' => row[j - 1],
                c => row[j - 1] && n[j - 1] == c,
            };
        }
        row = next;
    }
    row[n.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        let g = Glob::new(p).unwrap();
        let got = g.matches(n);
        assert_eq!(got, reference(p, n), "pattern {p:?} name {n:?}");
        got
    }

    #[test]
    fn shapes() {
        assert!(m("*", ""));
        assert!(m("**", "anything"));
        assert!(m("echo", "echo"));
        assert!(!m("echo", "echo2"));
        assert!(m("search_*", "search_web"));
        assert!(m("search_*", "search_"));
        assert!(!m("search_*", "xsearch_"));
        assert!(m("*_delete", "db_delete"));
        assert!(!m("*_delete", "db_delete_x"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "aXbYbZc"));
        assert!(!m("a*b*c", "acb"));
        assert!(m("file:///public/*", "file:///public/a/b.txt"));
        assert!(m("?", "é"));
        assert!(!m("?", ""));
        assert!(!m("??", "é"));
        assert!(m("a?c", "abc"));
        assert!(m("*?", "x"));
        assert!(!m("*?", ""));
        assert!(m("a*?b", "a€b"));
        assert!(!m("a*?b", "ab"));
        assert!(m("*a*", "bab"));
        assert!(!m("ab*ab", "ab"));
        assert!(!m("ab*ab", "aba"));
        assert!(m("ab*ab", "abab"));
        assert!(m("*x?z*", "yyxxzz"));
        assert!(m("Echo", "Echo") && !m("Echo", "echo"));
    }

    #[test]
    fn refuses_bad_patterns() {
        assert!(Glob::new("").is_err());
        assert!(Glob::new("a\nb").is_err());
        assert!(Glob::new(&"a".repeat(DEFAULT_MAX_PATTERN_BYTES + 1)).is_err());
        assert!(Glob::new(&"a".repeat(DEFAULT_MAX_PATTERN_BYTES)).is_ok());
    }

    #[test]
    fn agrees_with_the_reference_on_every_small_case() {
        // Every pattern and name of up to 4 characters over a small alphabet (with a
        // multi-byte one): 3.9k patterns × 1.4k names.
        let pat_alpha = ['a', 'b', '*', '?', 'é'];
        let name_alpha = ['a', 'b', 'é'];
        let words = |alpha: &[char], max: usize| {
            let mut out = vec![String::new()];
            let mut last = vec![String::new()];
            for _ in 0..max {
                let next: Vec<String> = last
                    .iter()
                    .flat_map(|w| alpha.iter().map(move |c| format!("{w}{c}")))
                    .collect();
                out.extend(next.iter().cloned());
                last = next;
            }
            out
        };
        let names = words(&name_alpha, 5);
        for p in words(&pat_alpha, 4).iter().filter(|p| !p.is_empty()) {
            let g = Glob::new(p).unwrap();
            for n in &names {
                assert_eq!(g.matches(n), reference(p, n), "pattern {p:?} name {n:?}");
            }
        }
    }

    #[test]
    fn no_blow_up_on_hostile_patterns() {
        // Exponential for a backtracking matcher; here one pass per segment.
        let p = format!("{}b", "*a".repeat(200));
        let name = "a".repeat(5000);
        let g = Glob::new(&p).unwrap();
        assert!(!g.matches(&name));
        let p = format!("{}b*", "*a".repeat(200));
        assert!(!Glob::new(&p).unwrap().matches(&name));
        let p = format!("*{}b*", "?".repeat(500));
        assert!(!Glob::new(&p).unwrap().matches(&name));
    }
}
