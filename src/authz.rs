//! Authorization: which tools, prompts and resources an authenticated subject may use. The
//! file schema (`RuleFile`, one `[[auth.rules]]` table each) compiles into `Rules`; `grant`
//! narrows them to one subject once (per session), and each request then costs a few glob
//! matches: `check_request` refuses a `tools/call`, `prompts/get` or `resources/read` before
//! anything goes upstream, and `ListFilter` (`filter`) takes what the subject may not use out
//! of the answers to `tools/list`, `prompts/list`, `resources/list` and
//! `resources/templates/list`. This module knows nothing of how subjects are authenticated.
//!
//! Semantics (README, "Authorization rules"):
//! - A rule applies to a subject when one of its `subjects` globs matches the subject's name
//!   (an API key's name, or a token's `sub`) and the subject holds every one of its `scopes`
//!   (exact strings; none listed: no condition).
//! - For a kind (tool, prompt, resource) and a name (a resource's URI; a resource template's
//!   `uriTemplate` in `resources/templates/list`): a name matched by a `deny_*` glob of any
//!   applicable rule is denied (deny wins); otherwise, when some applicable rule has an
//!   `allow_*` list for that kind, the name must match a glob of one of those lists (allows
//!   add up across rules; `allow_tools = []` allows no tool); otherwise `rules_default` decides.
//! - `rules_default` is `deny` unless set to `allow`: once an operator writes rules, a key added
//!   without one, or a kind no applicable rule speaks of, gets nothing. That failure is loud
//!   (empty lists, -32003) and safe; the opposite one is silent and leaks. With no rules at
//!   all, authorization is off (`Rules::is_off`): every subject may use everything.
//! - Globs: `*` any run of characters, `?` one character, nothing else special (`glob`).
//!
//! Invariants: what is not understood is not let through. A list item with no readable name
//! (not an object, a duplicate or missing `name`/`uri`) is dropped from a filtered list; a
//! request whose name is missing is checked as the empty name. Filtering keeps every other
//! byte of the answer (key order, `nextCursor`, `_meta`, other fields) and touches neither
//! errors nor other answers. A grant is per subject, never per page or per answer: a list
//! answer is filtered when it passes to the client, whoever filled it.

pub mod filter;
pub mod glob;

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

use crate::mcp;

pub use filter::{filter_list, List, ListFilter};
pub use glob::Glob;

/// The most `[[auth.rules]]` tables accepted: checked at load time, they bound the work of
/// building one subject's grant.
pub const DEFAULT_MAX_RULES: usize = 1024;
/// The most globs in one list of a rule (`subjects`, `allow_tools`, ...): they bound the
/// matches per checked name.
pub const DEFAULT_MAX_PATTERNS_PER_LIST: usize = 1024;

/// What is named: a tool (`tools/call`, `tools/list`), a prompt (`prompts/get`,
/// `prompts/list`) or a resource (`resources/read` by URI, `resources/list` and
/// `resources/templates/list`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tool,
    Prompt,
    Resource,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Tool, Kind::Prompt, Kind::Resource];

    fn index(self) -> usize {
        self as usize
    }

    /// The kind of what a request names (`mcp::classify` read it).
    pub fn of_named(named: mcp::Named) -> Kind {
        match named {
            mcp::Named::Tool => Kind::Tool,
            mcp::Named::Prompt => Kind::Prompt,
            mcp::Named::Resource => Kind::Resource,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Prompt => "prompt",
            Kind::Resource => "resource",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a subject matched by no allow list gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Allow,
    #[default]
    Deny,
}

/// One `[[auth.rules]]` table, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Globs over subject names (API key names, `sub` claims). Required.
    pub subjects: Vec<String>,
    /// Scopes the subject must all hold for the rule to apply.
    #[serde(default)]
    pub scopes: Vec<String>,
    pub allow_tools: Option<Vec<String>>,
    #[serde(default)]
    pub deny_tools: Vec<String>,
    pub allow_prompts: Option<Vec<String>>,
    #[serde(default)]
    pub deny_prompts: Vec<String>,
    /// Globs over resource URIs (and resource templates' `uriTemplate`).
    pub allow_resources: Option<Vec<String>>,
    #[serde(default)]
    pub deny_resources: Vec<String>,
}

/// One kind's lists in a rule or a grant.
#[derive(Debug, Clone, Default)]
struct Lists {
    /// `None`: no allow list (the default decides).
    allow: Option<Vec<Arc<Glob>>>,
    deny: Vec<Arc<Glob>>,
}

#[derive(Debug, Clone)]
struct Rule {
    subjects: Vec<Glob>,
    scopes: Vec<Box<str>>,
    kinds: [Lists; 3],
}

/// The validated rules (compiled globs), shared by every shard.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    default: Policy,
}

impl Rules {
    /// The rules of `[[auth.rules]]`, with `rules_default = "deny"`.
    pub fn new(files: &[RuleFile]) -> Result<Rules, String> {
        Rules::with_default(files, Policy::Deny)
    }

    /// The rules with the `[auth] default` policy. Errors name the rule (1-based) and field.
    pub fn with_default(files: &[RuleFile], default: Policy) -> Result<Rules, String> {
        if files.len() > DEFAULT_MAX_RULES {
            return Err(format!(
                "auth.rules: {} rules, at most {DEFAULT_MAX_RULES}",
                files.len()
            ));
        }
        let rules = files
            .iter()
            .enumerate()
            .map(|(i, f)| compile(f).map_err(|e| format!("auth.rules[{}]: {e}", i + 1)))
            .collect::<Result<_, _>>()?;
        Ok(Rules { rules, default })
    }

    /// No rules: authorization is off, every subject may use everything.
    pub fn is_off(&self) -> bool {
        self.rules.is_empty()
    }

    /// What subject `name`, holding `scopes`, may use: the applicable rules, merged.
    pub fn grant(&self, name: &str, scopes: &[impl AsRef<str>]) -> Grant {
        let holds = |s: &str| scopes.iter().any(|h| h.as_ref() == s);
        let default_allow = self.is_off() || self.default == Policy::Allow;
        let mut kinds: [Lists; 3] = Default::default();
        let applicable = self.rules.iter().filter(|r| {
            r.subjects.iter().any(|g| g.matches(name)) && r.scopes.iter().all(|s| holds(s))
        });
        for rule in applicable {
            for (mine, theirs) in kinds.iter_mut().zip(&rule.kinds) {
                mine.deny.extend(theirs.deny.iter().cloned());
                if let Some(allow) = &theirs.allow {
                    let list = mine.allow.get_or_insert_with(Vec::new);
                    list.extend(allow.iter().cloned());
                }
            }
        }
        Grant {
            subject: name.into(),
            kinds: kinds.map(|lists| KindGrant::new(lists, default_allow)),
        }
    }
}

fn compile(f: &RuleFile) -> Result<Rule, String> {
    if f.subjects.is_empty() {
        return Err("subjects is empty (use [\"*\"] for every subject)".into());
    }
    let subjects = globs("subjects", &f.subjects)?;
    if let Some(s) = f.scopes.iter().find(|s| s.is_empty() || s.contains(' ')) {
        return Err(format!("scopes: {s:?} is not a scope"));
    }
    let lists = |allow: &Option<Vec<String>>, deny: &[String], kind: &str| {
        let allow = match allow {
            Some(a) => Some(shared(globs(&format!("allow_{kind}"), a)?)),
            None => None,
        };
        let deny = shared(globs(&format!("deny_{kind}"), deny)?);
        Ok::<_, String>(Lists { allow, deny })
    };
    Ok(Rule {
        subjects,
        scopes: f.scopes.iter().map(|s| s.as_str().into()).collect(),
        kinds: [
            lists(&f.allow_tools, &f.deny_tools, "tools")?,
            lists(&f.allow_prompts, &f.deny_prompts, "prompts")?,
            lists(&f.allow_resources, &f.deny_resources, "resources")?,
        ],
    })
}

fn globs(field: &str, patterns: &[String]) -> Result<Vec<Glob>, String> {
    if patterns.len() > DEFAULT_MAX_PATTERNS_PER_LIST {
        return Err(format!(
            "{field}: {} patterns, at most {DEFAULT_MAX_PATTERNS_PER_LIST}",
            patterns.len()
        ));
    }
    patterns
        .iter()
        .map(|p| Glob::new(p).map_err(|e| format!("{field}: {e}")))
        .collect()
}

fn shared(globs: Vec<Glob>) -> Vec<Arc<Glob>> {
    globs.into_iter().map(Arc::new).collect()
}

/// One kind's part of a grant.
#[derive(Debug, Clone)]
struct KindGrant {
    lists: Lists,
    default_allow: bool,
    /// Every name is allowed (no deny, and `*` allowed or nothing said under an allow
    /// default): lists of this kind need no filtering.
    all: bool,
}

impl KindGrant {
    fn new(lists: Lists, default_allow: bool) -> KindGrant {
        let all = lists.deny.is_empty()
            && match &lists.allow {
                Some(a) => a.iter().any(|g| g.is_any()),
                None => default_allow,
            };
        KindGrant {
            lists,
            default_allow,
            all,
        }
    }

    fn allows(&self, name: &str) -> bool {
        if self.all {
            return true;
        }
        if self.lists.deny.iter().any(|g| g.matches(name)) {
            return false;
        }
        match &self.lists.allow {
            Some(a) => a.iter().any(|g| g.matches(name)),
            None => self.default_allow,
        }
    }
}

/// What one subject may use. Built once per subject (`Rules::grant`), kept per session.
#[derive(Debug, Clone)]
pub struct Grant {
    subject: Box<str>,
    kinds: [KindGrant; 3],
}

impl Grant {
    /// A grant that allows everything (authorization off).
    pub fn everything(subject: &str) -> Grant {
        Rules::default().grant(subject, &[] as &[&str])
    }

    /// The subject's name, for logs (never a credential).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn allows(&self, kind: Kind, name: &str) -> bool {
        self.kinds[kind.index()].allows(name)
    }

    /// Every name of `kind` is allowed: nothing of that kind needs checking.
    pub fn allows_all(&self, kind: Kind) -> bool {
        self.kinds[kind.index()].all
    }

    /// Every name of every kind is allowed.
    pub fn allows_everything(&self) -> bool {
        Kind::ALL.iter().all(|k| self.allows_all(*k))
    }
}

/// A request the grant refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub kind: Kind,
    /// The tool's or prompt's name, the resource's URI.
    pub name: String,
    /// The raw JSON id of the refused request.
    pub id: Option<String>,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} is not allowed", self.kind, self.name)
    }
}

/// Refuses the first request of `body` (one message or a batch) the grant does not allow:
/// `tools/call` and `prompts/get` by `params.name`; `resources/read`, `resources/subscribe`
/// and `resources/unsubscribe` by `params.uri`; `completion/complete` by its ref's prompt
/// name or resource URI; as `mcp::classify` read them. A batch holding one refused request is refused whole.
pub fn check_request(grant: &Grant, body: &mcp::Body<'_>) -> Result<(), Denied> {
    body.messages()
        .iter()
        .try_for_each(|m| check_message(grant, m))
}

/// `check_request` for one message. Responses and notifications name nothing to refuse.
pub fn check_message(grant: &Grant, msg: &mcp::Message<'_>) -> Result<(), Denied> {
    if msg.kind != mcp::Kind::Request {
        return Ok(());
    }
    let Some(kind) = msg.named.map(Kind::of_named) else {
        return Ok(());
    };
    let name = msg.name.as_deref().unwrap_or("");
    if grant.allows(kind, name) {
        return Ok(());
    }
    Err(Denied {
        kind,
        name: name.to_string(),
        id: msg.id.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml_text: &str, default: Policy) -> Rules {
        #[derive(Deserialize)]
        struct F {
            rules: Vec<RuleFile>,
        }
        let f: F = toml::from_str(toml_text).unwrap();
        Rules::with_default(&f.rules, default).unwrap()
    }

    const TWO_KEYS: &str = r#"
        [[rules]]
        subjects = ["ci-*"]
        allow_tools = ["search_*", "echo"]
        deny_tools = ["search_private"]
        [[rules]]
        subjects = ["*"]
        deny_tools = ["*_delete"]
        allow_prompts = ["*"]
        [[rules]]
        subjects = ["admin"]
        scopes = ["mcp:admin"]
        allow_tools = ["*"]
        allow_resources = ["file:///*"]
    "#;

    #[test]
    fn rules_combine_deny_wins_allows_add_up() {
        let r = rules(TWO_KEYS, Policy::Deny);
        let ci = r.grant("ci-build", &["x"]);
        assert!(ci.allows(Kind::Tool, "search_web"));
        assert!(ci.allows(Kind::Tool, "echo"));
        assert!(!ci.allows(Kind::Tool, "search_private"), "deny wins");
        assert!(!ci.allows(Kind::Tool, "add"), "not in the allow list");
        assert!(
            ci.allows(Kind::Prompt, "anything"),
            "the * rule allows prompts"
        );
        assert!(!ci.allows(Kind::Resource, "file:///a"), "default deny");
        // Without the scope, admin gets only the `*` rule: no allow list for tools.
        let plain = r.grant("admin", &[] as &[&str]);
        assert!(!plain.allows(Kind::Tool, "echo"));
        let admin = r.grant("admin", &["mcp:admin"]);
        assert!(admin.allows(Kind::Tool, "echo"));
        assert!(!admin.allows(Kind::Tool, "db_delete"), "the * rule's deny");
        assert!(admin.allows(Kind::Resource, "file:///etc/motd"));
        assert!(!admin.allows(Kind::Resource, "http://x/"));
        assert!(!admin.allows_all(Kind::Tool));
        assert!(admin.allows_all(Kind::Prompt));
        assert_eq!(admin.subject(), "admin");
    }

    #[test]
    fn the_default_policy() {
        let stranger = rules(TWO_KEYS, Policy::Deny).grant("nobody-rule", &["s"]);
        assert!(
            !stranger.allows(Kind::Tool, "echo"),
            "only the * rule's deny: default"
        );
        let open = rules(TWO_KEYS, Policy::Allow).grant("stranger", &["s"]);
        assert!(open.allows(Kind::Tool, "echo"));
        assert!(!open.allows(Kind::Tool, "x_delete"), "deny still wins");
        let none = rules("rules = []", Policy::Deny);
        assert!(none.is_off());
        assert!(none.grant("anyone", &["s"]).allows_everything());
        assert!(Grant::everything("x").allows(Kind::Resource, "file:///"));
        let empty_allow = rules(
            "[[rules]]\nsubjects = [\"*\"]\nallow_tools = []\n",
            Policy::Allow,
        );
        assert!(!empty_allow.grant("a", &["s"]).allows(Kind::Tool, "echo"));
        assert!(empty_allow.grant("a", &["s"]).allows(Kind::Prompt, "p"));
    }

    #[test]
    fn refuses_bad_rules_by_name() {
        let bad = |t: &str| {
            #[derive(Deserialize)]
            struct F {
                rules: Vec<RuleFile>,
            }
            let f: F = toml::from_str(t).map_err(|e| e.to_string())?;
            Rules::new(&f.rules).map(|_| ())
        };
        let e = bad("[[rules]]\nsubjects = []\n").unwrap_err();
        assert!(e.contains("auth.rules[1]") && e.contains("subjects"), "{e}");
        let e = bad(
            "[[rules]]\nsubjects=[\"*\"]\n[[rules]]\nsubjects = [\"a\"]\ndeny_tools = [\"\"]\n",
        )
        .unwrap_err();
        assert!(
            e.contains("auth.rules[2]") && e.contains("deny_tools"),
            "{e}"
        );
        let e = bad("[[rules]]\nsubjects = [\"a\"]\nscopes = [\"\"]\n").unwrap_err();
        assert!(e.contains("scopes"), "{e}");
        let e = bad("[[rules]]\nsubjects = [\"a\"]\nallow_tool = [\"x\"]\n").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn checks_requests_by_name_and_uri() {
        let r = rules(TWO_KEYS, Policy::Deny);
        let ci = r.grant("ci-1", &[] as &[&str]);
        let call = |name: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"{name}"}}}}"#
            )
        };
        let ok = call("echo");
        assert_eq!(
            check_request(&ci, &mcp::classify(ok.as_bytes()).unwrap()),
            Ok(())
        );
        let no = call("db_delete");
        let d = check_request(&ci, &mcp::classify(no.as_bytes()).unwrap()).unwrap_err();
        assert_eq!(
            (d.kind, d.name.as_str(), d.id.as_deref()),
            (Kind::Tool, "db_delete", Some("7"))
        );
        assert_eq!(d.to_string(), "tool \"db_delete\" is not allowed");
        let read =
            br#"{"jsonrpc":"2.0","id":"r","method":"resources/read","params":{"uri":"file:///x"}}"#;
        let d = check_request(&ci, &mcp::classify(read).unwrap()).unwrap_err();
        assert_eq!((d.kind, d.name.as_str()), (Kind::Resource, "file:///x"));
        let get = br#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p"}}"#;
        assert!(check_request(&ci, &mcp::classify(get).unwrap()).is_ok());
        // Subscriptions go by URI, completions by their ref.
        let sub = br#"{"jsonrpc":"2.0","id":2,"method":"resources/subscribe","params":{"uri":"file:///x"}}"#;
        let d = check_request(&ci, &mcp::classify(sub).unwrap()).unwrap_err();
        assert_eq!((d.kind, d.name.as_str()), (Kind::Resource, "file:///x"));
        let complete = |r: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":3,"method":"completion/complete","params":{{"ref":{r},"argument":{{"name":"a","value":""}}}}}}"#
            )
        };
        let on_resource = complete(r#"{"type":"ref/resource","uri":"file:///x"}"#);
        let d = check_request(&ci, &mcp::classify(on_resource.as_bytes()).unwrap()).unwrap_err();
        assert_eq!((d.kind, d.name.as_str()), (Kind::Resource, "file:///x"));
        let on_prompt = complete(r#"{"type":"ref/prompt","name":"p"}"#);
        assert!(check_request(&ci, &mcp::classify(on_prompt.as_bytes()).unwrap()).is_ok());
        // A missing name is checked as "": only a pattern matching it allows it.
        let bare = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#;
        assert!(check_request(&ci, &mcp::classify(bare).unwrap()).is_err());
        // Lists, notifications and responses name nothing.
        for b in [
            &br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#[..],
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
        ] {
            assert!(check_request(&ci, &mcp::classify(b).unwrap()).is_ok());
        }
        // A batch: the refused request's id.
        let batch = format!("[{},{}]", call("echo"), call("x_delete").replace("7", "8"));
        let d = check_request(&ci, &mcp::classify(batch.as_bytes()).unwrap()).unwrap_err();
        assert_eq!(d.id.as_deref(), Some("8"));
        // Escapes are read as the upstream reads them.
        let esc =
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"db_d\u0065lete"}}"#;
        assert!(check_request(&ci, &mcp::classify(esc).unwrap()).is_err());
    }
}
