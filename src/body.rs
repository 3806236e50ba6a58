//! `match.body`: conditions on the JSON request body, and what decides whether a request is
//! held for its body at all. Core only (no host calls): the host (`host::stream`) buffers the
//! body, this module reads it.
//!
//! A value at a pointer compares as text: a string as its characters, a number, `true`,
//! `false` or `null` as its JSON text; an object or an array never equals a string (only
//! `present` holds for it).
//!
//! The body is parsed with serde_json into no tree: a walk guided by the plan's pointers
//! (`PointerTree`) keeps the text of the values they name and skips everything else
//! (`IgnoredAny`), while serde_json still checks the whole document.

use crate::matcher::{evaluable, StringOp};
use crate::pattern::Pattern;
use crate::request::Request;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// The test of one body condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyTest {
    /// One of the string operators `match.headers` has (`exact`, `prefix`, `suffix`,
    /// `one_of`, `regex`, `present`).
    Op(StringOp),
    /// The text contains these bytes.
    Contains(Vec<u8>),
    /// Holds when the inner test does not.
    Not(Box<BodyTest>),
    /// Holds when at least one inner test does.
    AnyOf(Vec<BodyTest>),
}

/// What a pointer found: nothing, a scalar's text, or an object/array (present, no text).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Found {
    #[default]
    Missing,
    Text(Vec<u8>),
    Structure,
}

impl BodyTest {
    /// Whether it holds for what the pointer found; a `regex` on a text over the pattern's cap
    /// does not, and `request` counts it (`matcher::evaluable`, as for headers).
    fn holds_on(&self, found: &Found, request: &Request<'_>) -> bool {
        match self {
            BodyTest::Not(inner) => !inner.holds_on(found, request),
            BodyTest::AnyOf(tests) => tests.iter().any(|t| t.holds_on(found, request)),
            BodyTest::Op(StringOp::Present(wanted)) => !matches!(found, Found::Missing) == *wanted,
            BodyTest::Op(op) => match found {
                Found::Text(t) => evaluable(op, Some(t), request) && op.holds(Some(t)),
                _ => false,
            },
            BodyTest::Contains(needle) => match found {
                Found::Text(t) => contains(t, needle),
                _ => false,
            },
        }
    }

    /// The first `regex` in this test, if any (its cap: `Pattern::max_value_len`).
    pub fn first_regex(&self) -> Option<&Pattern> {
        match self {
            BodyTest::Op(StringOp::Regex(p)) => Some(p),
            BodyTest::Op(_) | BodyTest::Contains(_) => None,
            BodyTest::Not(inner) => inner.first_regex(),
            BodyTest::AnyOf(tests) => tests.iter().find_map(BodyTest::first_regex),
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// `match.body[]` compiled: a test on the value at an RFC 6901 pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyCondition {
    pub pointer: String,
    /// Where the parsed body keeps this pointer's value (`PointerTree::add`).
    pub slot: usize,
    pub test: BodyTest,
}

impl BodyCondition {
    /// Whether it holds for the request: never without a parsed JSON body.
    pub fn holds(&self, request: &Request<'_>) -> bool {
        match request.body() {
            RequestBody::Json(parsed) => self.test.holds_on(parsed.found(self.slot), request),
            RequestBody::Absent | RequestBody::Pending => false,
        }
    }
}

/// The values a body's pointers found, by slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedBody {
    found: Vec<Found>,
}

impl ParsedBody {
    pub fn found(&self, slot: usize) -> &Found {
        self.found.get(slot).unwrap_or(&Found::Missing)
    }
}

/// Every pointer of a plan's body conditions, as a tree of reference tokens; each distinct
/// pointer has a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointerTree {
    nodes: Vec<Node>,
    slots: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Node {
    /// (reference token, its array index when it is one, child node).
    children: Vec<(String, Option<usize>, usize)>,
    slot: Option<usize>,
}

impl Default for PointerTree {
    fn default() -> Self {
        PointerTree {
            nodes: vec![Node::default()],
            slots: 0,
        }
    }
}

impl PointerTree {
    /// The slot of `pointer` (`""` or `/`-separated tokens with `~1` for `/` and `~0` for `~`).
    pub fn add(&mut self, pointer: &str) -> usize {
        let mut at = 0;
        for raw in pointer.split('/').skip(1) {
            let token = raw.replace("~1", "/").replace("~0", "~");
            let existing = self
                .nodes
                .get(at)
                .and_then(|n| n.children.iter().find(|(t, _, _)| *t == token))
                .map(|(_, _, child)| *child);
            at = match existing {
                Some(child) => child,
                None => {
                    let child = self.nodes.len();
                    self.nodes.push(Node::default());
                    // RFC 6901: an array index is `0` or digits without a leading zero.
                    let index = (token == "0" || !token.starts_with('0'))
                        .then(|| token.parse::<usize>().ok())
                        .flatten();
                    if let Some(node) = self.nodes.get_mut(at) {
                        node.children.push((token, index, child));
                    }
                    child
                }
            };
        }
        let slots = &mut self.slots;
        match self.nodes.get_mut(at) {
            Some(Node { slot: Some(s), .. }) => *s,
            Some(node) => {
                node.slot = Some(*slots);
                *slots += 1;
                *slots - 1
            }
            None => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slots == 0
    }
}

/// Walks the value at `node`, keeping what its pointers name.
struct Walk<'t> {
    tree: &'t PointerTree,
    node: usize,
    out: &'t mut Vec<Found>,
}

impl<'t> Walk<'t> {
    fn node(&self) -> Option<&Node> {
        self.tree.nodes.get(self.node)
    }

    /// The pointers' steps below this node: (token, array index, child node).
    fn children(&self) -> &'t [(String, Option<usize>, usize)] {
        let tree: &'t PointerTree = self.tree;
        tree.nodes.get(self.node).map_or(&[], |n| &n.children[..])
    }

    fn keep(&mut self, found: Found) {
        if let Some(slot) = self.node().and_then(|n| n.slot) {
            if let Some(f) = self.out.get_mut(slot) {
                *f = found;
            }
        }
    }

    /// A repeated key's later value replaces the earlier one whole (as serde_json's own map
    /// does): what the earlier one's descendants found is forgotten.
    fn forget_below(&mut self) {
        let mut stack = vec![self.node];
        while let Some(n) = stack.pop() {
            if let Some(node) = self.tree.nodes.get(n) {
                if let Some(f) = node.slot.and_then(|s| self.out.get_mut(s)) {
                    *f = Found::Missing;
                }
                stack.extend(node.children.iter().map(|(_, _, c)| *c));
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(mut self, d: D) -> Result<(), D::Error> {
        self.forget_below();
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_str<E>(mut self, v: &str) -> Result<(), E> {
        self.keep(Found::Text(v.as_bytes().to_vec()));
        Ok(())
    }

    fn visit_bool<E>(mut self, v: bool) -> Result<(), E> {
        self.keep(Found::Text(if v {
            b"true".to_vec()
        } else {
            b"false".to_vec()
        }));
        Ok(())
    }

    fn visit_unit<E>(mut self) -> Result<(), E> {
        self.keep(Found::Text(b"null".to_vec()));
        Ok(())
    }

    fn visit_u64<E>(mut self, v: u64) -> Result<(), E> {
        self.keep(Found::Text(v.to_string().into_bytes()));
        Ok(())
    }

    fn visit_i64<E>(mut self, v: i64) -> Result<(), E> {
        self.keep(Found::Text(v.to_string().into_bytes()));
        Ok(())
    }

    /// serde_json's own text of the number (`2.5`, `1e100`).
    fn visit_f64<E>(mut self, v: f64) -> Result<(), E> {
        let text = serde_json::Number::from_f64(v).map_or_else(String::new, |n| n.to_string());
        self.keep(Found::Text(text.into_bytes()));
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.keep(Found::Structure);
        let tree = self.tree;
        let children = self.children();
        while let Some(child) = map.next_key_seed(Key(children))? {
            match child {
                Some(node) => map.next_value_seed(Walk {
                    tree,
                    node,
                    out: &mut *self.out,
                })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.keep(Found::Structure);
        let tree = self.tree;
        let children = self.children();
        let mut i = 0usize;
        loop {
            let child = children
                .iter()
                .find(|(_, index, _)| *index == Some(i))
                .map(|(_, _, c)| *c);
            let more = match child {
                Some(node) => seq
                    .next_element_seed(Walk {
                        tree,
                        node,
                        out: &mut *self.out,
                    })?
                    .is_some(),
                None => seq.next_element::<IgnoredAny>()?.is_some(),
            };
            if !more {
                return Ok(());
            }
            i = i.saturating_add(1);
        }
    }
}

/// An object key: the child node it names, if any (compared without copying the key).
struct Key<'t>(&'t [(String, Option<usize>, usize)]);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().find(|(t, _, _)| t == v).map(|(_, _, c)| *c))
    }
}

/// The request body as the rules see it.
#[derive(Debug, Clone, Copy, Default)]
pub enum RequestBody<'a> {
    /// No body to look at (none sent, not JSON, too large, invalid): body conditions fail.
    #[default]
    Absent,
    /// Request headers only so far, and a JSON body may follow: a rule whose other
    /// conditions hold waits for it (`Plan::needs_body`).
    Pending,
    Json(&'a ParsedBody),
}

/// What became of a held body.
#[derive(Debug)]
pub enum BodyOutcome {
    Json(ParsedBody),
    /// Over `body_max_bytes` (`traffic_split.body.too_large`).
    TooLarge,
    /// Not a JSON document (`traffic_split.body.invalid`).
    Invalid,
}

/// Parses a complete body of at most `max` bytes, keeping what `pointers` name.
pub fn parse(bytes: &[u8], max: u64, pointers: &PointerTree) -> BodyOutcome {
    if bytes.len() as u64 > max {
        return BodyOutcome::TooLarge;
    }
    let mut found = vec![Found::Missing; pointers.slots];
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let walk = Walk {
        tree: pointers,
        node: 0,
        out: &mut found,
    };
    match walk.deserialize(&mut de).and_then(|()| de.end()) {
        Ok(()) => BodyOutcome::Json(ParsedBody { found }),
        Err(_) => BodyOutcome::Invalid,
    }
}

/// `application/json` or `application/<anything>+json`, parameters allowed, any case.
pub fn is_json_content_type(value: &[u8]) -> bool {
    let media = value
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii()
        .to_ascii_lowercase();
    let Some(subtype) = media.strip_prefix(b"application/") else {
        return false;
    };
    subtype == b"json" || (subtype.len() > 5 && subtype.ends_with(b"+json"))
}

/// Whether a request whose headers did not end the stream can carry a JSON body rules read:
/// a JSON content type, not `GET` or `HEAD`, and not `content-length: 0`.
pub fn may_carry_json(request: &Request<'_>) -> bool {
    if matches!(request.method(), Some(b"GET" | b"HEAD")) {
        return false;
    }
    if request
        .header("content-length")
        .is_some_and(|l| l.trim_ascii() == b"0")
    {
        return false;
    }
    request
        .header("content-type")
        .is_some_and(is_json_content_type)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::header_pairs;

    fn exact(s: &str) -> BodyTest {
        BodyTest::Op(StringOp::Exact(s.as_bytes().to_vec()))
    }

    /// Whether `test` holds on the value at `pointer` of `body`.
    fn holds(body: &str, pointer: &str, test: BodyTest) -> bool {
        let mut tree = PointerTree::default();
        let slot = tree.add(pointer);
        match parse(body.as_bytes(), u64::MAX, &tree) {
            BodyOutcome::Json(p) => test.holds_on(p.found(slot), &Request::new(&[], None)),
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn a_value_over_a_regex_cap_does_not_hold_and_is_counted() {
        let pattern = crate::pattern::Pattern::new("gpt-.*", false).unwrap();
        let cap = pattern.max_value_len();
        let mut tree = PointerTree::default();
        let slot = tree.add("/model");
        let condition = BodyCondition {
            pointer: "/model".into(),
            slot,
            test: BodyTest::Op(StringOp::Regex(pattern)),
        };
        let decide = |model: &str| {
            let body = format!(r#"{{"model":"{model}"}}"#);
            let BodyOutcome::Json(parsed) = parse(body.as_bytes(), u64::MAX, &tree) else {
                panic!("{body}");
            };
            let request = Request::new(&[], None).with_body(RequestBody::Json(&parsed));
            (condition.holds(&request), request.regex_skipped())
        };
        let at_cap = format!("gpt-{}", "x".repeat(cap - 4));
        assert_eq!(decide(&at_cap), (true, 0));
        let over = format!("gpt-{}", "x".repeat(cap - 3));
        assert_eq!(decide(&over), (false, 1));
        // Under `not`, as for headers: the value counts as another one (the inner test fails).
        let negated = BodyCondition {
            test: BodyTest::Not(Box::new(condition.test.clone())),
            ..condition.clone()
        };
        let body = format!(r#"{{"model":"{over}"}}"#);
        let BodyOutcome::Json(parsed) = parse(body.as_bytes(), u64::MAX, &tree) else {
            panic!();
        };
        let request = Request::new(&[], None).with_body(RequestBody::Json(&parsed));
        assert!(negated.holds(&request));
        assert_eq!(request.regex_skipped(), 1);
        assert!(matches!(
            crate::matcher::Condition::Body(negated),
            ref c if c.has_regex()
        ));
    }

    #[test]
    fn values_compare_as_their_text() {
        let body = r#"{"model":"gpt-small","stream":true,"n":3,"t":0.5,"neg":-2,"x":null,"messages":[{"role":"user","content":"hi there"}],"o":{}}"#;
        assert!(holds(body, "/model", exact("gpt-small")));
        assert!(!holds(body, "/model", exact("gpt")));
        assert!(holds(body, "/stream", exact("true")));
        assert!(holds(body, "/n", exact("3")));
        assert!(holds(body, "/t", exact("0.5")));
        assert!(holds(body, "/neg", exact("-2")));
        assert!(holds(body, "/x", exact("null")));
        assert!(holds(
            body,
            "/messages/0/content",
            BodyTest::Contains(b"there".to_vec())
        ));
        assert!(holds(
            body,
            "/model",
            BodyTest::Op(StringOp::Prefix(b"gpt-".to_vec()))
        ));
        assert!(holds(
            body,
            "/model",
            BodyTest::Op(StringOp::Suffix(b"small".to_vec()))
        ));
        // Objects and arrays: only `present`.
        for p in ["/messages", "/o", ""] {
            assert!(holds(body, p, BodyTest::Op(StringOp::Present(true))));
            assert!(!holds(body, p, exact("")));
            assert!(!holds(body, p, BodyTest::Contains(Vec::new())));
        }
        assert!(holds(
            body,
            "/missing",
            BodyTest::Op(StringOp::Present(false))
        ));
        assert!(!holds(body, "/missing", exact("")));
        assert!(!holds(
            body,
            "/messages/1/role",
            BodyTest::Op(StringOp::Present(true))
        ));
        assert!(holds(body, "/missing", BodyTest::Not(Box::new(exact("a")))));
        assert!(holds(
            body,
            "/model",
            BodyTest::AnyOf(vec![exact("a"), exact("gpt-small")])
        ));
        assert!(!holds(body, "/model", BodyTest::AnyOf(vec![exact("a")])));
    }

    /// The pointer walk finds what serde_json's own `Value::pointer` finds, for every pointer
    /// of a document (escapes, array indices, repeated keys, nesting), all pointers at once.
    #[test]
    fn the_walk_agrees_with_value_pointer() {
        let docs = [
            r#"{"a":{"b":[1,{"c":"x"},[true,null]],"d/e":"slash","f~g":"tilde"},"a2":2.25e3,"":"empty"}"#,
            r#"{"k":{"in":"first"},"k":"second"}"#,
            r#"{"k":"first","k":{"in":"second"}}"#,
            r#"[{"model":"m"},"s",-7,1e300]"#,
            r#""just a string""#,
            r#"{"u":"\u00e9\ud83d\ude00","n":18446744073709551615,"big":-9223372036854775808}"#,
        ];
        let pointers = [
            "", "/a", "/a/b", "/a/b/0", "/a/b/1/c", "/a/b/2/0", "/a/b/2/1", "/a/b/3", "/a/b/01",
            "/a/d~1e", "/a/f~0g", "/a2", "/", "/k", "/k/in", "/0", "/0/model", "/1", "/2", "/3",
            "/u", "/n", "/big", "/a/b/-",
        ];
        for doc in docs {
            let value: serde_json::Value = serde_json::from_str(doc).unwrap();
            let mut tree = PointerTree::default();
            let slots: Vec<usize> = pointers.iter().map(|p| tree.add(p)).collect();
            let BodyOutcome::Json(parsed) = parse(doc.as_bytes(), u64::MAX, &tree) else {
                panic!("{doc}");
            };
            for (p, slot) in pointers.iter().zip(slots) {
                let want = match value.pointer(p) {
                    None => Found::Missing,
                    Some(serde_json::Value::String(s)) => Found::Text(s.as_bytes().to_vec()),
                    Some(serde_json::Value::Object(_) | serde_json::Value::Array(_)) => {
                        Found::Structure
                    }
                    Some(other) => Found::Text(other.to_string().into_bytes()),
                };
                assert_eq!(parsed.found(slot), &want, "{doc} {p:?}");
            }
        }
    }

    #[test]
    fn json_content_types() {
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.api+json",
            " application/merge-patch+json ;x=1",
        ] {
            assert!(is_json_content_type(yes.as_bytes()), "{yes}");
        }
        for no in [
            "text/plain",
            "application/jsonx",
            "application/+json",
            "json",
            "",
        ] {
            assert!(!is_json_content_type(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn which_requests_may_carry_json() {
        let h = header_pairs(&[(":method", "POST"), ("content-type", "application/json")]);
        assert!(may_carry_json(&Request::new(&h, None)));
        let h = header_pairs(&[(":method", "GET"), ("content-type", "application/json")]);
        assert!(!may_carry_json(&Request::new(&h, None)));
        let h = header_pairs(&[
            (":method", "POST"),
            ("content-type", "application/json"),
            ("content-length", "0"),
        ]);
        assert!(!may_carry_json(&Request::new(&h, None)));
        let h = header_pairs(&[(":method", "POST"), ("content-type", "text/plain")]);
        assert!(!may_carry_json(&Request::new(&h, None)));
    }

    #[test]
    fn limits_and_invalid_bodies() {
        let mut t = PointerTree::default();
        t.add("/a");
        assert!(matches!(parse(br#"{"a":1}"#, 7, &t), BodyOutcome::Json(_)));
        assert!(matches!(parse(br#"{"a":1}"#, 6, &t), BodyOutcome::TooLarge));
        for invalid in [
            &br#"{"a":"#[..],
            b"",
            b"{} x",
            br#"{"b":[1,}"#,
            b"nul",
            b"\xff",
        ] {
            assert!(
                matches!(parse(invalid, 100, &t), BodyOutcome::Invalid),
                "{invalid:?}"
            );
        }
    }

    mod plan {
        use super::*;
        use crate::plan::{Decision, Plan};
        use crate::rng::Rng;

        const RULES: &str = r#"{"rules":[
            {"name":"vip","match":{"headers":[{"name":"x-vip","exact":"1"}]},
             "destinations":[{"name":"vip","cluster":"vip"}]},
            {"name":"small","match":{"path":{"prefix":"/chat"},
              "body":[{"pointer":"/model","exact":"small"},{"pointer":"/n","not":{"exact":"0"}}]},
             "destinations":[{"name":"small","cluster":"small"}]},
            {"name":"rest","destinations":[{"name":"rest","cluster":"rest"}]}]}"#;

        fn rule_of(p: &Plan, r: &Request<'_>) -> Option<String> {
            match p.decide(r, &mut Rng::from_seed(1), &[]) {
                Decision::Routed(x) => Some(p.rules[x.rule].name.clone()),
                Decision::Unmatched => None,
            }
        }

        #[test]
        fn held_only_when_the_first_rule_that_can_match_reads_the_body() {
            let p = Plan::from_json(RULES.as_bytes()).unwrap();
            assert!(p.reads_body && p.needs_request_headers);
            let pending = |pairs: &[(&str, &str)], yes: bool| {
                let h = header_pairs(pairs);
                let r = Request::new(&h, None).with_body(RequestBody::Pending);
                assert_eq!(p.needs_body(&r), yes, "{pairs:?}");
                // While pending, the body rule cannot match: the header decision.
                let absent = Request::new(&h, None);
                assert_eq!(rule_of(&p, &r), rule_of(&p, &absent));
            };
            pending(&[(":path", "/chat")], true);
            pending(&[(":path", "/chat"), ("x-vip", "1")], false);
            pending(&[(":path", "/other")], false);
            let h = header_pairs(&[(":path", "/chat")]);
            assert!(
                !p.needs_body(&Request::new(&h, None)),
                "never without Pending"
            );
            for (body, want) in [
                (r#"{"model":"small","n":2}"#, "small"),
                (r#"{"model":"small","n":0}"#, "rest"),
                (r#"{"model":"small"}"#, "small"),
                (r#"{"model":"large"}"#, "rest"),
                (r#"["small"]"#, "rest"),
            ] {
                let BodyOutcome::Json(v) = parse(body.as_bytes(), 100, &p.body_pointers) else {
                    panic!("{body}");
                };
                let r = Request::new(&h, None).with_body(RequestBody::Json(&v));
                assert_eq!(rule_of(&p, &r).as_deref(), Some(want), "{body}");
            }
        }

        #[test]
        fn configuration_errors_name_the_field() {
            let err = |config: &str| Plan::from_json(config.as_bytes()).unwrap_err().to_string();
            let rule = |m: &str| {
                format!(
                    r#"{{"rules":[{{"name":"r","match":{m},"destinations":[{{"name":"a","cluster":"a"}}]}}]}}"#
                )
            };
            for (m, want) in [
                (
                    r#"{"body":[]}"#,
                    "rules[0].match.body: must list at least one condition",
                ),
                (
                    r#"{"body":[{"pointer":"model","exact":"a"}]}"#,
                    "rules[0].match.body[0].pointer: must be a JSON pointer",
                ),
                (
                    r#"{"body":[{"pointer":"/m"}]}"#,
                    "rules[0].match.body[0]: needs exactly one of",
                ),
                (
                    r#"{"body":[{"pointer":"/m","exact":"a","prefix":"b"}]}"#,
                    "rules[0].match.body[0]: needs exactly one of",
                ),
                (
                    r#"{"body":[{"exact":"a"}]}"#,
                    "rules[0].match.body[0].pointer: is required",
                ),
                (
                    r#"{"body":[{"pointer":"/m","name":"a"}]}"#,
                    "rules[0].match.body[0]",
                ),
                (
                    r#"{"body":[{"pointer":"/m","not":{}}]}"#,
                    "rules[0].match.body[0].not: needs exactly one of",
                ),
                (
                    r#"{"body":[{"pointer":"/m","any_of":[]}]}"#,
                    "rules[0].match.body[0].any_of: must list at least one",
                ),
                (
                    r#"{"body":[{"pointer":"/m","regex":"("}]}"#,
                    "rules[0].match.body[0].regex",
                ),
                (
                    r#"{"not":{"body":[{"pointer":"/m","exact":"a"}]}}"#,
                    "rules[0].match.not.body: is read only at the top level",
                ),
            ] {
                let e = err(&rule(m));
                assert!(e.starts_with(want), "{m}: {e}");
            }
            let e = err(r#"{"body_max_bytes":1048577}"#);
            assert!(
                e.starts_with("body_max_bytes: must be a whole number from 0 to 1048576"),
                "{e}"
            );
            let p = Plan::from_json(br#"{"body_max_bytes":1048576}"#).unwrap();
            assert_eq!(p.body_max_bytes, 1_048_576);
            assert!(!p.reads_body);
            assert_eq!(Plan::from_json(b"{}").unwrap().body_max_bytes, 65_536);
            // Every op the contract names compiles.
            for op in [
                r#""exact":"a""#,
                r#""prefix":"a""#,
                r#""suffix":"a""#,
                r#""contains":"a""#,
                r#""regex":"gpt-.*""#,
                r#""present":true"#,
                r#""one_of":["a","b"]"#,
                r#""not":{"exact":"a"}"#,
                r#""any_of":[{"exact":"a"},{"contains":"b"}]"#,
            ] {
                let config = rule(&format!(r#"{{"body":[{{"pointer":"/m",{op}}}]}}"#));
                assert!(Plan::from_json(config.as_bytes()).is_ok(), "{op}");
            }
        }
    }
}
