//! A route's name table: what each of its servers ("members", in route order) offers, the
//! name a client sees for each of those things, and the way back from a client's name to a
//! member and its own name. One table per route per shard, shared by the route's sessions.
//!
//! Forms of a name (tools and prompts; resources and templates use a URI mark instead of a
//! prefix, `uri`):
//! - prefixed, `<server><separator><name>`: always resolves to that member (when its filter
//!   allows the name), whatever the prefix mode and whether the table knows the name;
//! - bare, `<name>`: resolves through the table, to the one member that *claims* it.
//!
//! Who claims a bare name: the members that offered it (`observe`) and whose prefix mode is
//! not `always`. A `never` member wins over `conditional` ones, and the first `never` member
//! in route order over later ones (like `PATH`). Otherwise a claimant wins when no other
//! member offers the name (an `always` member's offer counts: "a prefix where two servers
//! offer the same name"), and two or more offers make the name ambiguous (`Resolution::Ambiguous` names the prefixed choices). For a
//! resource URI the claimants also include the members with a template the URI matches.
//!
//! `display` gives a list item its client-visible name: bare when the bare name resolves back
//! to the same member, otherwise prefixed (`always`, a collision under `conditional`, a name
//! the table could not record, a name that itself looks prefixed or marked). A `never` member
//! shadowed by an earlier `never` member's same name is left out of the list (it could only
//! be shown prefixed, which `never` forbids); its prefixed form still resolves. A template is
//! bare when no URI it can expand to is claimed by another member (`display_template`).
//!
//! Invariants:
//! - Every name `display` returns resolves (`resolve`) to the member and name it was given:
//!   prefixed names by construction (no member's `<name><separator>` starts another's, checked
//!   in `new`), bare names because `display` asks `resolve` first. The bare and prefixed
//!   namespaces are disjoint: a bare name that starts like a prefixed one is shown prefixed.
//! - Filters (`NameFilter::allows`) hide a name from lists and from resolution. Filtered names
//!   are never recorded, so they cause no collision.
//! - The table holds at most `max` distinct names over all kinds, each at most
//!   `DEFAULT_MAX_NAME_BYTES`; what does not fit is not recorded and counted in `unrecorded`,
//!   and is shown prefixed (the one form that resolves without the table).
//! - Names are learnt, never guessed: until a member's list was seen on this shard, its bare
//!   names are `Unknown`. The runtime lists again (and may send `list_changed`) when it learns
//!   of a change; `forget` drops what a member offered before.

use std::borrow::Cow;
use std::collections::HashMap;

use super::uri;
use crate::config::{NameFilter, Prefix, ServerConfig};
use crate::mcp;

/// Distinct names a route's table holds per shard, over tools, prompts, resources and
/// templates (config key `federation.max_names`); a name past it is not recorded, and shows
/// with its server's prefix.
pub use crate::config::DEFAULT_FEDERATION_MAX_NAMES as DEFAULT_MAX_NAMES;
/// The longest name (or URI) the table records; a longer one is shown prefixed.
pub const DEFAULT_MAX_NAME_BYTES: usize = 2048;
/// Servers on one route: member sets are 64-bit masks (config refuses more).
pub use crate::config::MAX_ROUTE_SERVERS;

/// The kinds of names, each a namespace of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Tool,
    Prompt,
    /// A resource's URI.
    Resource,
    /// A resource template's `uriTemplate`. Resolution is shared with `Resource` (a client
    /// names either in `resources/read` and `completion/complete`).
    Template,
}

impl Kind {
    fn index(self) -> usize {
        self as usize
    }

    fn is_uri(self) -> bool {
        matches!(self, Kind::Resource | Kind::Template)
    }

    /// How errors name the kind.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Prompt => "prompt",
            Kind::Resource => "resource",
            Kind::Template => "resource template",
        }
    }
}

impl From<mcp::Named> for Kind {
    fn from(n: mcp::Named) -> Kind {
        match n {
            mcp::Named::Tool => Kind::Tool,
            mcp::Named::Prompt => Kind::Prompt,
            mcp::Named::Resource => Kind::Resource,
        }
    }
}

/// Where a client's name leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution<'a> {
    /// Member `member` (index in route order), under its own name `name`.
    Found { member: usize, name: Cow<'a, str> },
    /// Member `member` would have it, but its filter hides the name. Answer it as `Unknown`:
    /// a client must not learn what a filter hides.
    Hidden { member: usize },
    /// A bare name several members claim: the prefixed (marked) forms to choose from.
    Ambiguous(Vec<String>),
    /// No member claims it (or the table has not seen it).
    Unknown,
}

impl Resolution<'_> {
    /// The error message for a client, `None` when found.
    pub fn message(&self, kind: Kind, client_name: &str) -> Option<String> {
        let noun = kind.noun();
        match self {
            Resolution::Found { .. } => None,
            Resolution::Ambiguous(choices) => Some(format!(
                "{noun} '{client_name}' is offered by several servers of this route; name one of: {}",
                choices.join(", ")
            )),
            Resolution::Hidden { .. } | Resolution::Unknown => {
                Some(format!("unknown {noun} '{client_name}'"))
            }
        }
    }
}

/// What one `observe` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    /// Names newly recorded for the member.
    pub added: usize,
    /// Names the table could not record (full, or the name too long).
    pub unrecorded: usize,
}

/// What the table keeps of a member's configuration.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    prefix: Prefix,
    tools: NameFilter,
    prompts: NameFilter,
    resources: NameFilter,
}

impl Member {
    fn filter(&self, kind: Kind) -> &NameFilter {
        match kind {
            Kind::Tool => &self.tools,
            Kind::Prompt => &self.prompts,
            Kind::Resource | Kind::Template => &self.resources,
        }
    }
}

/// One bit per member, in route order.
type Mask = u64;

fn bit(member: usize) -> Mask {
    1 << member
}

fn members_of(mask: Mask) -> impl Iterator<Item = usize> {
    (0..MAX_ROUTE_SERVERS).filter(move |m| mask & bit(*m) != 0)
}

/// A route's name table (see the module doc).
#[derive(Debug)]
pub struct Names {
    members: Vec<Member>,
    separator: String,
    /// Per kind: a name and the members that offered it.
    tables: [HashMap<Box<str>, Mask>; 4],
    /// Members whose names can be bare (mode `never` or `conditional`).
    bare_ok: Mask,
    /// Members of mode `never`.
    never: Mask,
    max: usize,
    len: usize,
    /// Names offered and allowed but not recorded (the bound, or too long), since the start.
    pub unrecorded: u64,
}

/// Why a route's servers cannot share a name table. Config validation should refuse the
/// route with this message.
pub fn check_members(members: &[&ServerConfig], separator: &str) -> Result<(), String> {
    if members.is_empty() || members.len() > MAX_ROUTE_SERVERS {
        return Err(format!(
            "a route holds 1 to {MAX_ROUTE_SERVERS} servers, not {}",
            members.len()
        ));
    }
    if separator.is_empty() {
        return Err("the federation separator must not be empty".into());
    }
    for (i, a) in members.iter().enumerate() {
        if !uri::is_server_name(&a.name) {
            return Err(format!("server name '{}' is not [a-z0-9_-]+", a.name));
        }
        for b in &members[i + 1..] {
            let (pa, pb) = (
                format!("{}{separator}", a.name),
                format!("{}{separator}", b.name),
            );
            if pa.starts_with(&pb) || pb.starts_with(&pa) {
                return Err(format!(
                    "servers '{}' and '{}' make prefixed names ambiguous with separator '{separator}'",
                    a.name, b.name
                ));
            }
        }
    }
    Ok(())
}

impl Names {
    /// The table of a route whose servers are `members` (route order), recording at most `max`
    /// names. Refuses members `check_members` refuses.
    pub fn new(members: &[&ServerConfig], separator: &str, max: usize) -> Result<Names, String> {
        check_members(members, separator)?;
        let mut bare_ok = 0;
        let mut never = 0;
        for (i, m) in members.iter().enumerate() {
            if m.prefix != Prefix::Always {
                bare_ok |= bit(i);
            }
            if m.prefix == Prefix::Never {
                never |= bit(i);
            }
        }
        let members = members
            .iter()
            .map(|m| Member {
                name: m.name.clone(),
                prefix: m.prefix,
                tools: m.tools.clone(),
                prompts: m.prompts.clone(),
                resources: m.resources.clone(),
            })
            .collect();
        Ok(Names {
            members,
            separator: separator.to_string(),
            tables: Default::default(),
            bare_ok,
            never,
            max,
            len: 0,
            unrecorded: 0,
        })
    }

    /// How many members the route has.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// Member `member`'s server name.
    pub fn server(&self, member: usize) -> &str {
        &self.members[member].name
    }

    /// Distinct names recorded, over all kinds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn allows(&self, kind: Kind, member: usize, name: &str) -> bool {
        self.members[member].filter(kind).allows(name)
    }

    /// Records that `member`'s list offered `names` (of `kind`). Names its filter hides are
    /// skipped; names that do not fit are counted.
    pub fn observe<'n>(
        &mut self,
        kind: Kind,
        member: usize,
        names: impl IntoIterator<Item = &'n str>,
    ) -> Observed {
        let mut seen = Observed::default();
        for name in names {
            if !self.allows(kind, member, name) {
                continue;
            }
            let table = &mut self.tables[kind.index()];
            if let Some(mask) = table.get_mut(name) {
                seen.added += usize::from(*mask & bit(member) == 0);
                *mask |= bit(member);
            } else if self.len < self.max && name.len() <= DEFAULT_MAX_NAME_BYTES {
                table.insert(name.into(), bit(member));
                self.len += 1;
                seen.added += 1;
            } else {
                seen.unrecorded += 1;
            }
        }
        self.unrecorded += seen.unrecorded as u64;
        seen
    }

    /// Drops what `member` offered of `kind` (its list changed, or it left the route).
    pub fn forget(&mut self, kind: Kind, member: usize) {
        let table = &mut self.tables[kind.index()];
        let before = table.len();
        table.retain(|_, mask| {
            *mask &= !bit(member);
            *mask != 0
        });
        self.len -= before - table.len();
    }

    /// The form of `name` that always resolves to `member`: prefixed, or marked for URIs.
    pub fn prefixed(&self, kind: Kind, member: usize, name: &str) -> String {
        let server = &self.members[member].name;
        if kind.is_uri() {
            uri::mark(name, server)
        } else {
            format!("{server}{}{name}", self.separator)
        }
    }

    /// The member a prefixed name names, and the rest. At most one member's
    /// `<name><separator>` starts `name` (`check_members`).
    fn split_prefixed<'n>(&self, name: &'n str) -> Option<(usize, &'n str)> {
        self.members
            .iter()
            .position(|m| {
                name.strip_prefix(m.name.as_str())
                    .is_some_and(|r| r.starts_with(self.separator.as_str()))
            })
            .map(|i| {
                (
                    i,
                    &name[self.members[i].name.len() + self.separator.len()..],
                )
            })
    }

    /// Whether a bare `name` would read as a prefixed (or marked) one.
    fn looks_prefixed(&self, kind: Kind, name: &str) -> bool {
        if kind.is_uri() {
            uri::looks_marked(name)
        } else {
            self.split_prefixed(name).is_some()
        }
    }

    /// The members offering `name` of `kind` (whatever their mode).
    fn offers(&self, kind: Kind, name: &str) -> Mask {
        let get = |k: Kind| self.tables[k.index()].get(name).copied().unwrap_or(0);
        match kind {
            Kind::Tool | Kind::Prompt => get(kind),
            Kind::Resource | Kind::Template => {
                let templates = self.tables[Kind::Template.index()]
                    .iter()
                    .filter(|(t, _)| uri::template_matches(t, name))
                    .fold(0, |acc, (_, mask)| acc | mask);
                get(Kind::Resource) | get(Kind::Template) | templates
            }
        }
    }

    /// Who claims a bare `name`: one member, or the mask of several (see the module doc).
    fn claim(&self, kind: Kind, name: &str) -> Result<Option<usize>, Mask> {
        let mut offered = self.offers(kind, name);
        for m in members_of(offered) {
            if !self.allows(kind, m, name) {
                offered &= !bit(m);
            }
        }
        let claimants = offered & self.bare_ok;
        let nevers = claimants & self.never;
        if nevers != 0 {
            return Ok(Some(nevers.trailing_zeros() as usize));
        }
        // `conditional`: a prefix where two servers offer the name, in whatever mode (an
        // `always` server's offer counts too: the rule, and a client reading the list
        // sees two servers with the name either way).
        match (claimants.count_ones(), offered.count_ones()) {
            (0, _) => Ok(None),
            (1, 1) => Ok(Some(claimants.trailing_zeros() as usize)),
            _ => Err(offered),
        }
    }

    /// Where a client's `client_name` of `kind` leads.
    pub fn resolve<'n>(&self, kind: Kind, client_name: &'n str) -> Resolution<'n> {
        let own = if kind.is_uri() {
            uri::unmark(client_name).map(|(server, own)| {
                let member = self.members.iter().position(|m| m.name == server);
                (member, Cow::Owned(own))
            })
        } else {
            self.split_prefixed(client_name)
                .map(|(m, rest)| (Some(m), Cow::Borrowed(rest)))
        };
        match own {
            Some((None, _)) => Resolution::Unknown,
            Some((Some(_), name)) if name.is_empty() && !kind.is_uri() => Resolution::Unknown,
            Some((Some(member), name)) if !self.allows(kind, member, &name) => {
                Resolution::Hidden { member }
            }
            Some((Some(member), name)) => Resolution::Found { member, name },
            None => match self.claim(kind, client_name) {
                Ok(Some(member)) => Resolution::Found {
                    member,
                    name: Cow::Borrowed(client_name),
                },
                Ok(None) => Resolution::Unknown,
                Err(mask) => Resolution::Ambiguous(
                    members_of(mask)
                        .map(|m| self.prefixed(kind, m, client_name))
                        .collect(),
                ),
            },
        }
    }

    /// The client-visible name of `member`'s `name` in a list; `None` when the list must
    /// leave it out (its filter hides it, or an earlier `never` member shadows it).
    pub fn display<'n>(&self, kind: Kind, member: usize, name: &'n str) -> Option<Cow<'n, str>> {
        if !self.allows(kind, member, name) {
            return None;
        }
        let prefix = self.members[member].prefix;
        if prefix == Prefix::Always || self.looks_prefixed(kind, name) {
            return Some(Cow::Owned(self.prefixed(kind, member, name)));
        }
        if kind == Kind::Template {
            return Some(self.display_template(member, name));
        }
        match self.claim(kind, name) {
            Ok(Some(m)) if m == member => Some(Cow::Borrowed(name)),
            Ok(Some(m)) if prefix == Prefix::Never && self.never & bit(m) != 0 => None,
            _ => Some(Cow::Owned(self.prefixed(kind, member, name))),
        }
    }

    /// A template is shown bare when each URI it can expand to resolves to `member`: no rival
    /// has a template that may overlap it or a resource it matches. The rivals of a
    /// `conditional` member are all other members (an `always` one's offer counts, as in `claim`); those of a `never` member
    /// only the earlier `never` members (it wins over the others, `claim`). A template that
    /// clashes is marked, even for a `never` member: unlike a duplicate name, an overlapping
    /// template has URIs of its own that only the mark can reach.
    fn display_template<'n>(&self, member: usize, template: &'n str) -> Cow<'n, str> {
        let recorded = self.tables[Kind::Template.index()]
            .get(template)
            .is_some_and(|mask| mask & bit(member) != 0);
        let rivals = if self.never & bit(member) != 0 {
            self.never & (bit(member) - 1)
        } else {
            // Any other member, whatever its mode: under `conditional` an `always` member's
            // offer is a collision too (`claim`).
            !bit(member)
        };
        let clash = || {
            let templates = self.tables[Kind::Template.index()].iter();
            let resources = self.tables[Kind::Resource.index()].iter();
            templates
                .filter(|(_, mask)| *mask & rivals != 0)
                .any(|(t, _)| uri::may_overlap(t, template))
                || resources
                    .filter(|(_, mask)| *mask & rivals != 0)
                    .any(|(r, _)| uri::template_matches(template, r))
        };
        if recorded && !clash() {
            Cow::Borrowed(template)
        } else {
            Cow::Owned(self.prefixed(Kind::Template, member, template))
        }
    }

    /// A URI `member` put in a result or a notification (`resources/read` contents, a tool's
    /// resource link, `notifications/resources/updated`), as the client should see it: marked
    /// when the client named the resource in its marked form (`marked`), when the member's
    /// mode is `always`, or when the bare URI would not resolve back to `member`. Filters do
    /// not apply: the member said it; a read of it is filtered then.
    pub fn for_client<'n>(&self, member: usize, value: &'n str, marked: bool) -> Cow<'n, str> {
        let always = self.members[member].prefix == Prefix::Always;
        let bare = !marked
            && !always
            && !uri::looks_marked(value)
            && self.claim(Kind::Resource, value) == Ok(Some(member));
        uri::marked_if(value, &self.members[member].name, !bare)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::glob::Glob;
    use crate::config::{HttpUpstreams, Strategy, Upstream};

    fn server(name: &str, prefix: Prefix) -> ServerConfig {
        ServerConfig {
            name: name.into(),
            upstream: Upstream::Http(HttpUpstreams {
                targets: Vec::new(),
                strategy: Strategy::RoundRobin,
            }),
            tools: NameFilter::default(),
            prompts: NameFilter::default(),
            resources: NameFilter::default(),
            prefix,
        }
    }

    fn table(servers: &[ServerConfig], max: usize) -> Names {
        let refs: Vec<&ServerConfig> = servers.iter().collect();
        Names::new(&refs, "__", max).unwrap()
    }

    fn found(member: usize, name: &str) -> Resolution<'_> {
        Resolution::Found {
            member,
            name: Cow::Borrowed(name),
        }
    }

    #[test]
    fn two_servers_offering_echo_are_both_prefixed_under_conditional() {
        let s = [
            server("a", Prefix::Conditional),
            server("b", Prefix::Conditional),
        ];
        let mut n = table(&s, DEFAULT_MAX_NAMES);
        n.observe(Kind::Tool, 0, ["echo", "only_a"]);
        assert_eq!(n.display(Kind::Tool, 0, "echo").as_deref(), Some("echo"));
        n.observe(Kind::Tool, 1, ["echo"]);
        assert_eq!(n.display(Kind::Tool, 0, "echo").as_deref(), Some("a__echo"));
        assert_eq!(n.display(Kind::Tool, 1, "echo").as_deref(), Some("b__echo"));
        assert_eq!(
            n.display(Kind::Tool, 0, "only_a").as_deref(),
            Some("only_a")
        );
        assert_eq!(
            n.resolve(Kind::Tool, "echo"),
            Resolution::Ambiguous(vec!["a__echo".into(), "b__echo".into()])
        );
        let msg = n
            .resolve(Kind::Tool, "echo")
            .message(Kind::Tool, "echo")
            .unwrap();
        assert!(msg.contains("a__echo, b__echo"), "{msg}");
        assert_eq!(n.resolve(Kind::Tool, "b__echo"), found(1, "echo"));
        assert_eq!(n.resolve(Kind::Tool, "only_a"), found(0, "only_a"));
        assert_eq!(n.resolve(Kind::Tool, "a__only_a"), found(0, "only_a"));
        assert_eq!(n.resolve(Kind::Tool, "nothing"), Resolution::Unknown);
        assert_eq!(n.resolve(Kind::Tool, "a__"), Resolution::Unknown);
        assert_eq!(
            n.resolve(Kind::Prompt, "echo"),
            Resolution::Unknown,
            "kinds are apart"
        );
    }

    #[test]
    fn modes_always_and_never() {
        let s = [server("a", Prefix::Always), server("b", Prefix::Never)];
        let mut n = table(&s, DEFAULT_MAX_NAMES);
        n.observe(Kind::Tool, 0, ["echo", "x"]);
        n.observe(Kind::Tool, 1, ["echo"]);
        assert_eq!(n.display(Kind::Tool, 0, "echo").as_deref(), Some("a__echo"));
        assert_eq!(n.display(Kind::Tool, 1, "echo").as_deref(), Some("echo"));
        assert_eq!(n.resolve(Kind::Tool, "echo"), found(1, "echo"));
        assert_eq!(
            n.resolve(Kind::Tool, "x"),
            Resolution::Unknown,
            "a is prefixed only"
        );
        assert_eq!(n.resolve(Kind::Tool, "a__x"), found(0, "x"));
        assert_eq!(n.resolve(Kind::Tool, "b__echo"), found(1, "echo"));
    }

    #[test]
    fn never_beats_conditional_and_the_first_never_shadows_later_ones() {
        let s = [
            server("a", Prefix::Conditional),
            server("b", Prefix::Never),
            server("c", Prefix::Never),
        ];
        let mut n = table(&s, DEFAULT_MAX_NAMES);
        for m in 0..3 {
            n.observe(Kind::Tool, m, ["echo"]);
        }
        assert_eq!(n.display(Kind::Tool, 0, "echo").as_deref(), Some("a__echo"));
        assert_eq!(n.display(Kind::Tool, 1, "echo").as_deref(), Some("echo"));
        assert_eq!(n.display(Kind::Tool, 2, "echo"), None, "shadowed by b");
        assert_eq!(n.resolve(Kind::Tool, "echo"), found(1, "echo"));
        assert_eq!(n.resolve(Kind::Tool, "c__echo"), found(2, "echo"));
    }

    #[test]
    fn a_filter_hides_a_tool_from_lists_and_resolution() {
        let mut a = server("a", Prefix::Conditional);
        a.tools.exclude.push(Glob::new("secret_*").unwrap());
        let s = [a, server("b", Prefix::Conditional)];
        let mut n = table(&s, DEFAULT_MAX_NAMES);
        n.observe(Kind::Tool, 0, ["secret_a", "echo"]);
        n.observe(Kind::Tool, 1, ["secret_a"]);
        assert_eq!(n.display(Kind::Tool, 0, "secret_a"), None);
        assert_eq!(
            n.display(Kind::Tool, 1, "secret_a").as_deref(),
            Some("secret_a"),
            "a's hidden tool causes no collision"
        );
        assert_eq!(
            n.resolve(Kind::Tool, "a__secret_a"),
            Resolution::Hidden { member: 0 }
        );
        assert_eq!(n.resolve(Kind::Tool, "secret_a"), found(1, "secret_a"));
        let msg = Resolution::Hidden { member: 0 }.message(Kind::Tool, "a__secret_a");
        assert_eq!(msg.as_deref(), Some("unknown tool 'a__secret_a'"));
        assert_eq!(n.len(), 2, "the hidden name is not recorded");
    }

    #[test]
    fn the_bound_stops_recording_and_the_prefixed_form_still_resolves() {
        let s = [
            server("a", Prefix::Conditional),
            server("b", Prefix::Conditional),
        ];
        let mut n = table(&s, 2);
        let seen = n.observe(Kind::Tool, 0, ["t1", "t2", "t3"]);
        assert_eq!(
            seen,
            Observed {
                added: 2,
                unrecorded: 1
            }
        );
        assert_eq!(
            n.observe(Kind::Tool, 1, ["t1"]).added,
            1,
            "a known name costs nothing"
        );
        assert_eq!(n.unrecorded, 1);
        assert_eq!(n.len(), 2);
        assert_eq!(n.display(Kind::Tool, 0, "t3").as_deref(), Some("a__t3"));
        assert_eq!(n.resolve(Kind::Tool, "t3"), Resolution::Unknown);
        assert_eq!(n.resolve(Kind::Tool, "a__t3"), found(0, "t3"));
        let long = "x".repeat(DEFAULT_MAX_NAME_BYTES + 1);
        n.forget(Kind::Tool, 0);
        assert_eq!(n.len(), 1, "t1 stays, b offers it");
        assert_eq!(n.observe(Kind::Tool, 0, [long.as_str()]).unrecorded, 1);
        assert_eq!(n.unrecorded, 2);
    }

    #[test]
    fn a_bare_name_that_looks_prefixed_is_shown_prefixed() {
        let s = [server("a", Prefix::Never), server("b", Prefix::Conditional)];
        let mut n = table(&s, DEFAULT_MAX_NAMES);
        n.observe(Kind::Tool, 1, ["a__x"]);
        assert_eq!(n.display(Kind::Tool, 1, "a__x").as_deref(), Some("b__a__x"));
        assert_eq!(n.resolve(Kind::Tool, "b__a__x"), found(1, "a__x"));
        assert_eq!(
            n.resolve(Kind::Tool, "a__x"),
            found(0, "x"),
            "the prefix wins"
        );
    }

    #[test]
    fn members_that_make_prefixes_ambiguous_are_refused() {
        let refuse = |names: &[&str], sep: &str| {
            let s: Vec<ServerConfig> = names
                .iter()
                .map(|n| server(n, Prefix::Conditional))
                .collect();
            let r: Vec<&ServerConfig> = s.iter().collect();
            check_members(&r, sep).is_err()
        };
        assert!(refuse(&["a", "a__b"], "__"));
        assert!(
            refuse(&["a", "a_"], "__"),
            "a___x reads as a + _x and a_ + x"
        );
        assert!(refuse(&["a", "a"], "__"));
        assert!(refuse(&["", "b"], "__"));
        assert!(refuse(&["A"], "__"));
        assert!(refuse(&["a"], ""));
        assert!(refuse(&[], "__"));
        assert!(!refuse(&["a", "ab", "b_c"], "__"));
        assert!(!refuse(&["a", "a_"], "."));
    }

    #[test]
    fn marked_uris_round_trip_and_collisions_mark_both() {
        let s = [
            server("my_fs", Prefix::Conditional),
            server("beta", Prefix::Conditional),
        ];
        let mut n = table(&s, DEFAULT_MAX_NAMES);
        n.observe(
            Kind::Resource,
            0,
            ["fed://shared/readme", "fed://my_fs/readme"],
        );
        n.observe(Kind::Resource, 1, ["fed://shared/readme"]);
        let shown = n.display(Kind::Resource, 0, "fed://shared/readme").unwrap();
        assert_eq!(shown, "fed+fed.my.fs://shared/readme");
        assert_eq!(
            n.resolve(Kind::Resource, &shown),
            Resolution::Found {
                member: 0,
                name: Cow::Owned("fed://shared/readme".into())
            }
        );
        assert!(matches!(
            n.resolve(Kind::Resource, "fed://shared/readme"),
            Resolution::Ambiguous(c) if c == ["fed+fed.my.fs://shared/readme", "fed+fed.beta://shared/readme"]
        ));
        let own = n.display(Kind::Resource, 0, "fed://my_fs/readme").unwrap();
        assert_eq!(own, "fed://my_fs/readme");
        assert_eq!(
            n.resolve(Kind::Resource, &own),
            found(0, "fed://my_fs/readme")
        );
        assert_eq!(
            n.resolve(Kind::Resource, "file+fed.nobody:///a"),
            Resolution::Unknown
        );
    }

    #[test]
    fn a_server_uri_that_looks_marked_is_always_marked() {
        let s = [server("a", Prefix::Never), server("b", Prefix::Conditional)];
        let mut n = table(&s, DEFAULT_MAX_NAMES);
        n.observe(Kind::Resource, 0, ["x+fed.b:y"]);
        let shown = n.display(Kind::Resource, 0, "x+fed.b:y").unwrap();
        assert_eq!(shown, "x+fed.b+fed.a:y");
        assert_eq!(
            n.resolve(Kind::Resource, &shown),
            Resolution::Found {
                member: 0,
                name: Cow::Owned("x+fed.b:y".into())
            }
        );
    }

    #[test]
    fn reads_of_unlisted_uris_resolve_through_templates() {
        let s = [
            server("a", Prefix::Conditional),
            server("b", Prefix::Conditional),
        ];
        let mut n = table(&s, DEFAULT_MAX_NAMES);
        n.observe(Kind::Template, 0, ["fed://a/items/{id}"]);
        n.observe(Kind::Template, 1, ["fed://b/items/{id}", "file:///{p}"]);
        n.observe(Kind::Resource, 0, ["file:///notes"]);
        assert_eq!(
            n.resolve(Kind::Resource, "fed://a/items/7"),
            found(0, "fed://a/items/7")
        );
        assert_eq!(
            n.resolve(Kind::Resource, "fed://b/items/7"),
            found(1, "fed://b/items/7")
        );
        assert_eq!(
            n.resolve(Kind::Resource, "fed://c/items/7"),
            Resolution::Unknown
        );
        // a's resource and b's template claim the same URI: both are marked.
        assert!(matches!(
            n.resolve(Kind::Resource, "file:///notes"),
            Resolution::Ambiguous(_)
        ));
        assert_eq!(
            n.display(Kind::Resource, 0, "file:///notes").as_deref(),
            Some("file+fed.a:///notes")
        );
        assert_eq!(
            n.display(Kind::Template, 1, "file:///{p}").as_deref(),
            Some("file+fed.b:///{p}")
        );
        assert_eq!(
            n.display(Kind::Template, 0, "fed://a/items/{id}")
                .as_deref(),
            Some("fed://a/items/{id}")
        );
        // A URI expanded from a marked template routes back.
        assert_eq!(
            n.resolve(Kind::Resource, "file+fed.b:///x"),
            Resolution::Found {
                member: 1,
                name: Cow::Owned("file:///x".into())
            }
        );
        // completion/complete names a template by its own text.
        assert_eq!(
            n.resolve(Kind::Template, "fed://a/items/{id}"),
            found(0, "fed://a/items/{id}")
        );
        assert_eq!(
            n.display(Kind::Template, 0, "never/listed/{x}").as_deref(),
            Some("fed.a:never/listed/{x}")
        );
    }

    #[test]
    fn overlapping_templates_of_two_never_servers_mark_the_later() {
        let s = [server("a", Prefix::Never), server("b", Prefix::Never)];
        let mut n = table(&s, DEFAULT_MAX_NAMES);
        n.observe(Kind::Template, 0, ["file:///{p}"]);
        n.observe(Kind::Template, 1, ["file:///docs/{n}", "b://{x}"]);
        assert_eq!(
            n.display(Kind::Template, 0, "file:///{p}").as_deref(),
            Some("file:///{p}")
        );
        assert_eq!(
            n.display(Kind::Template, 1, "file:///docs/{n}").as_deref(),
            Some("file+fed.b:///docs/{n}")
        );
        assert_eq!(
            n.display(Kind::Template, 1, "b://{x}").as_deref(),
            Some("b://{x}")
        );
        assert_eq!(
            n.resolve(Kind::Resource, "file:///docs"),
            found(0, "file:///docs")
        );
        assert_eq!(n.resolve(Kind::Resource, "b://1"), found(1, "b://1"));
    }

    #[test]
    fn uris_in_results_are_marked_unless_they_resolve_back() {
        let s = [
            server("a", Prefix::Conditional),
            server("b", Prefix::Always),
        ];
        let mut n = table(&s, DEFAULT_MAX_NAMES);
        n.observe(Kind::Template, 0, ["fed://a/{x}"]);
        assert_eq!(n.for_client(0, "fed://a/1", false), "fed://a/1");
        assert_eq!(n.for_client(0, "fed://a/1", true), "fed+fed.a://a/1");
        assert_eq!(
            n.for_client(0, "fed://elsewhere", false),
            "fed+fed.a://elsewhere"
        );
        assert_eq!(n.for_client(1, "fed://b/1", false), "fed+fed.b://b/1");
    }

    #[test]
    fn every_displayed_name_resolves_to_what_it_labels() {
        let s = [
            server("a", Prefix::Conditional),
            server("b", Prefix::Never),
            server("c", Prefix::Always),
            server("d", Prefix::Never),
        ];
        let mut n = table(&s, 6);
        let names = ["echo", "a__echo", "x", "y", "z", "w", "d__q"];
        for m in 0..4 {
            n.observe(Kind::Tool, m, names.iter().copied().skip(m));
        }
        for m in 0..4 {
            for name in names {
                if let Some(shown) = n.display(Kind::Tool, m, name) {
                    assert_eq!(
                        n.resolve(Kind::Tool, &shown),
                        found(m, name),
                        "{m} {name} {shown}"
                    );
                }
            }
        }
    }
}
