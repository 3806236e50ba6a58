//! `match.body`: conditions on the JSON request body, and what decides whether a request is
//! held for its body at all. Core only (no host calls): the host (`host::stream`) buffers the
//! body, this module reads it.
//!
//! A value at a pointer compares as text: a string as its characters, a number, `true`,
//! `false` or `null` as its JSON text; an object or an array never equals a string (only
//! `present` holds for it).

use crate::matcher::StringOp;
use crate::request::Request;
use serde_json::Value;
use std::borrow::Cow;

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
enum Found<'v> {
    Missing,
    Text(Cow<'v, [u8]>),
    Structure,
}

impl BodyTest {
    fn holds_on(&self, found: &Found<'_>) -> bool {
        match self {
            BodyTest::Not(inner) => !inner.holds_on(found),
            BodyTest::AnyOf(tests) => tests.iter().any(|t| t.holds_on(found)),
            BodyTest::Op(StringOp::Present(wanted)) => !matches!(found, Found::Missing) == *wanted,
            BodyTest::Op(op) => match found {
                Found::Text(t) => op.holds(Some(t)),
                _ => false,
            },
            BodyTest::Contains(needle) => match found {
                Found::Text(t) => contains(t, needle),
                _ => false,
            },
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
    pub test: BodyTest,
}

impl BodyCondition {
    /// Whether it holds for the request: never without a parsed JSON body.
    pub fn holds(&self, request: &Request<'_>) -> bool {
        match request.body() {
            RequestBody::Json(value) => self.holds_on_value(value),
            RequestBody::Absent | RequestBody::Pending => false,
        }
    }

    pub fn holds_on_value(&self, body: &Value) -> bool {
        let found = match body.pointer(&self.pointer) {
            None => Found::Missing,
            Some(Value::String(s)) => Found::Text(Cow::Borrowed(s.as_bytes())),
            Some(Value::Object(_) | Value::Array(_)) => Found::Structure,
            // Numbers, booleans and null: their JSON text (`true`, `3`, `null`).
            Some(other) => Found::Text(Cow::Owned(other.to_string().into_bytes())),
        };
        self.test.holds_on(&found)
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
    Json(&'a Value),
}

/// What became of a held body.
#[derive(Debug)]
pub enum BodyOutcome {
    Json(Value),
    /// Over `body_max_bytes` (`traffic_split.body.too_large`).
    TooLarge,
    /// Not a JSON document (`traffic_split.body.invalid`).
    Invalid,
}

/// Parses a complete body of at most `max` bytes.
pub fn parse(bytes: &[u8], max: u64) -> BodyOutcome {
    if bytes.len() as u64 > max {
        return BodyOutcome::TooLarge;
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => BodyOutcome::Json(v),
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

    fn cond(pointer: &str, test: BodyTest) -> BodyCondition {
        BodyCondition {
            pointer: pointer.into(),
            test,
        }
    }

    fn exact(s: &str) -> BodyTest {
        BodyTest::Op(StringOp::Exact(s.as_bytes().to_vec()))
    }

    #[test]
    fn values_compare_as_their_text() {
        let body: Value = serde_json::from_str(
            r#"{"model":"gpt-small","stream":true,"n":3,"x":null,"messages":[{"role":"user","content":"hi there"}],"o":{}}"#,
        )
        .unwrap();
        assert!(cond("/model", exact("gpt-small")).holds_on_value(&body));
        assert!(!cond("/model", exact("gpt")).holds_on_value(&body));
        assert!(cond("/stream", exact("true")).holds_on_value(&body));
        assert!(cond("/n", exact("3")).holds_on_value(&body));
        assert!(cond("/x", exact("null")).holds_on_value(&body));
        assert!(
            cond("/messages/0/content", BodyTest::Contains(b"there".to_vec()))
                .holds_on_value(&body)
        );
        assert!(
            cond("/model", BodyTest::Op(StringOp::Prefix(b"gpt-".to_vec()))).holds_on_value(&body)
        );
        assert!(
            cond("/model", BodyTest::Op(StringOp::Suffix(b"small".to_vec()))).holds_on_value(&body)
        );
        // Objects and arrays: only `present`.
        for p in ["/messages", "/o"] {
            assert!(cond(p, BodyTest::Op(StringOp::Present(true))).holds_on_value(&body));
            assert!(!cond(p, exact("")).holds_on_value(&body));
            assert!(!cond(p, BodyTest::Contains(Vec::new())).holds_on_value(&body));
        }
        assert!(cond("/missing", BodyTest::Op(StringOp::Present(false))).holds_on_value(&body));
        assert!(!cond("/missing", exact("")).holds_on_value(&body));
        assert!(cond("/missing", BodyTest::Not(Box::new(exact("a")))).holds_on_value(&body));
        assert!(cond(
            "/model",
            BodyTest::AnyOf(vec![exact("a"), exact("gpt-small")])
        )
        .holds_on_value(&body));
        assert!(!cond("/model", BodyTest::AnyOf(vec![exact("a")])).holds_on_value(&body));
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
        assert!(matches!(parse(br#"{"a":1}"#, 7), BodyOutcome::Json(_)));
        assert!(matches!(parse(br#"{"a":1}"#, 6), BodyOutcome::TooLarge));
        assert!(matches!(parse(br#"{"a":"#, 100), BodyOutcome::Invalid));
        assert!(matches!(parse(b"", 100), BodyOutcome::Invalid));
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
                let v: Value = serde_json::from_str(body).unwrap();
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
