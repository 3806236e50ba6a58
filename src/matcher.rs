//! Compiled match conditions of a rule, and their evaluation against a request.

use crate::body::BodyCondition;
use crate::network::{peer_ip, Cidr};
use crate::pattern::Pattern;
use crate::request::Request;

/// An operation on one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringOp {
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    Suffix(Vec<u8>),
    OneOf(Vec<Vec<u8>>),
    /// The whole value matches the pattern (for `authority`, ignoring ASCII case).
    Regex(Pattern),
    /// `present: true` holds when the value exists, `present: false` when it does not.
    Present(bool),
}

impl StringOp {
    pub(crate) fn holds(&self, value: Option<&[u8]>) -> bool {
        match (self, value) {
            (StringOp::Present(wanted), v) => v.is_some() == *wanted,
            (_, None) => false,
            (StringOp::Exact(s), Some(v)) => v == s.as_slice(),
            (StringOp::Prefix(s), Some(v)) => v.starts_with(s),
            (StringOp::Suffix(s), Some(v)) => v.ends_with(s),
            (StringOp::OneOf(options), Some(v)) => options.iter().any(|o| o.as_slice() == v),
            (StringOp::Regex(p), Some(v)) => p.is_match(v),
        }
    }

    /// The same, ignoring ASCII case (host names: RFC 9110 4.2.3, `Shop.Example` is
    /// `shop.example`).
    fn holds_ignoring_case(&self, value: Option<&[u8]>) -> bool {
        match (self, value) {
            (StringOp::Present(wanted), v) => v.is_some() == *wanted,
            (_, None) => false,
            (StringOp::Exact(s), Some(v)) => v.eq_ignore_ascii_case(s),
            (StringOp::Prefix(s), Some(v)) => {
                v.get(..s.len()).is_some_and(|p| p.eq_ignore_ascii_case(s))
            }
            (StringOp::Suffix(s), Some(v)) => v
                .len()
                .checked_sub(s.len())
                .and_then(|start| v.get(start..))
                .is_some_and(|p| p.eq_ignore_ascii_case(s)),
            (StringOp::OneOf(options), Some(v)) => {
                options.iter().any(|o| v.eq_ignore_ascii_case(o))
            }
            // Compiled case-insensitive (`(?i)`) by the plan.
            (StringOp::Regex(p), Some(v)) => p.is_match(v),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Header name in lower case.
    Header(String, StringOp),
    Cookie(String, StringOp),
    Query(String, StringOp),
    Path(StringOp),
    Authority(StringOp),
    Methods(Vec<Vec<u8>>),
    RouteNames(Vec<Vec<u8>>),
    /// `source_ips`: the downstream address Envoy reports is in one of the ranges.
    SourceIps(Vec<Cidr>),
    /// `not`: holds when the inner conditions do not all hold.
    Not(Matcher),
    /// `any_of`: holds when at least one inner set of conditions holds.
    AnyOf(Vec<Matcher>),
    /// `body[]`: a condition on the JSON request body (top level of a rule's match only).
    Body(BodyCondition),
}

/// False for a `regex` on a value longer than the pattern's cap (`Pattern::max_value_len`, from
/// its program size at load): it is not evaluated,
/// does not hold, and the request counts it (`Request::note_regex_skipped`).
pub(crate) fn evaluable(op: &StringOp, value: Option<&[u8]>, request: &Request<'_>) -> bool {
    match (op, value) {
        (StringOp::Regex(p), Some(v)) if v.len() > p.max_value_len() => {
            request.note_regex_skipped();
            false
        }
        _ => true,
    }
}

impl Condition {
    pub fn holds(&self, request: &Request<'_>) -> bool {
        match self {
            Condition::Header(name, op) => {
                let v = request.header(name);
                evaluable(op, v, request) && op.holds(v)
            }
            Condition::Cookie(name, op) => {
                let v = request.cookie(name);
                evaluable(op, v, request) && op.holds(v)
            }
            Condition::Query(name, op) => {
                let v = request.query(name);
                evaluable(op, v.as_deref(), request) && op.holds(v.as_deref())
            }
            Condition::Path(op) => {
                let v = request.path();
                evaluable(op, v, request) && op.holds(v)
            }
            Condition::Authority(op) => {
                let v = request.authority();
                evaluable(op, v, request) && op.holds_ignoring_case(v)
            }
            Condition::Methods(methods) => request
                .method()
                .is_some_and(|m| methods.iter().any(|x| x.as_slice() == m)),
            Condition::RouteNames(names) => request
                .route_name()
                .is_some_and(|r| names.iter().any(|x| x.as_slice() == r)),
            Condition::SourceIps(ranges) => request
                .source_address()
                .and_then(peer_ip)
                .is_some_and(|ip| ranges.iter().any(|r| r.contains(ip))),
            Condition::Not(inner) => !inner.holds(request),
            Condition::AnyOf(sets) => sets.iter().any(|m| m.holds(request)),
            Condition::Body(b) => b.holds(request),
        }
    }

    /// Whether evaluating this condition needs Envoy's route name (a property read).
    pub fn needs_route_name(&self) -> bool {
        self.any(&|c| matches!(c, Condition::RouteNames(_)))
    }

    /// Whether evaluating this condition needs Envoy's `source.address` (a property read).
    pub fn needs_source_address(&self) -> bool {
        self.any(&|c| matches!(c, Condition::SourceIps(_)))
    }

    /// Whether this condition or one nested in it is a `regex`.
    pub fn has_regex(&self) -> bool {
        self.any(&|c| {
            matches!(
                c,
                Condition::Header(_, StringOp::Regex(_))
                    | Condition::Cookie(_, StringOp::Regex(_))
                    | Condition::Query(_, StringOp::Regex(_))
                    | Condition::Path(StringOp::Regex(_))
                    | Condition::Authority(StringOp::Regex(_))
            ) || matches!(c, Condition::Body(b) if b.test.first_regex().is_some())
        })
    }

    /// Whether evaluating this condition needs the request's header map.
    pub fn needs_headers(&self) -> bool {
        self.any(&|c| {
            matches!(
                c,
                Condition::Header(..)
                    | Condition::Cookie(..)
                    | Condition::Query(..)
                    | Condition::Path(_)
                    | Condition::Authority(_)
                    | Condition::Methods(_)
            )
        })
    }

    pub fn is_body(&self) -> bool {
        matches!(self, Condition::Body(_))
    }

    /// Whether this condition or one nested in it satisfies `leaf`.
    fn any(&self, leaf: &dyn Fn(&Condition) -> bool) -> bool {
        match self {
            Condition::Not(inner) => inner.conditions.iter().any(|c| c.any(leaf)),
            Condition::AnyOf(sets) => sets
                .iter()
                .any(|m| m.conditions.iter().any(|c| c.any(leaf))),
            other => leaf(other),
        }
    }
}

/// All conditions must hold; no conditions match every request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matcher {
    pub conditions: Vec<Condition>,
}

impl Matcher {
    pub fn holds(&self, request: &Request<'_>) -> bool {
        self.conditions.iter().all(|c| c.holds(request))
    }

    /// Whether any condition reads the request body.
    pub fn reads_body(&self) -> bool {
        self.conditions.iter().any(Condition::is_body)
    }

    /// Whether every condition that does not read the body holds.
    pub fn holds_before_body(&self, request: &Request<'_>) -> bool {
        self.conditions
            .iter()
            .all(|c| c.is_body() || c.holds(request))
    }

    /// The first condition that does not hold, `None` when the matcher holds: why a rule did
    /// not match (`traffic-split explain`). The request path uses `holds`; native only, because
    /// a second caller of `Condition::holds` changes its inlining and adds 20 bytes of Wasm.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn first_failing(&self, request: &Request<'_>) -> Option<&Condition> {
        self.conditions.iter().find(|c| !c.holds(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::HeaderPair;

    fn req(pairs: &[(&str, &str)]) -> Vec<HeaderPair> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn string_ops() {
        let v = Some(&b"checkout-v2"[..]);
        assert!(StringOp::Exact(b"checkout-v2".to_vec()).holds(v));
        assert!(!StringOp::Exact(b"checkout".to_vec()).holds(v));
        assert!(StringOp::Prefix(b"check".to_vec()).holds(v));
        assert!(StringOp::Suffix(b"-v2".to_vec()).holds(v));
        assert!(StringOp::OneOf(vec![b"a".to_vec(), b"checkout-v2".to_vec()]).holds(v));
        assert!(StringOp::Present(true).holds(v));
        assert!(!StringOp::Present(false).holds(v));
        assert!(StringOp::Present(false).holds(None));
        assert!(!StringOp::Exact(Vec::new()).holds(None));
    }

    #[test]
    fn conditions_against_a_request() {
        let h = req(&[
            (":method", "POST"),
            (":path", "/checkout/cart?beta=1"),
            (":authority", "shop.example.com"),
            ("x-employee", "true"),
            ("cookie", "tier=gold"),
        ]);
        let r = Request::new(&h, Some(b"checkout-route"));
        let all = Matcher {
            conditions: vec![
                Condition::Header("x-employee".into(), StringOp::Exact(b"true".to_vec())),
                Condition::Cookie("tier".into(), StringOp::OneOf(vec![b"gold".to_vec()])),
                Condition::Query("beta".into(), StringOp::Present(true)),
                Condition::Path(StringOp::Prefix(b"/checkout".to_vec())),
                Condition::Authority(StringOp::Suffix(b".example.com".to_vec())),
                Condition::Methods(vec![b"GET".to_vec(), b"POST".to_vec()]),
                Condition::RouteNames(vec![b"checkout-route".to_vec()]),
            ],
        };
        assert!(all.holds(&r));
        assert_eq!(all.first_failing(&r), None);
        assert!(Matcher::default().holds(&r));
        let mut second_fails = all.clone();
        second_fails.conditions[1] =
            Condition::Cookie("tier".into(), StringOp::Exact(b"silver".to_vec()));
        second_fails.conditions[3] = Condition::Path(StringOp::Exact(b"/".to_vec()));
        assert_eq!(
            second_fails.first_failing(&r),
            Some(&Condition::Cookie(
                "tier".into(),
                StringOp::Exact(b"silver".to_vec())
            ))
        );
        // Host names compare case-insensitively, whichever side has the capitals.
        let h = req(&[(":authority", "Beta.SHOP.example.com")]);
        let r2 = Request::new(&h, None);
        for op in [
            StringOp::Exact(b"beta.shop.Example.COM".to_vec()),
            StringOp::Prefix(b"BETA.".to_vec()),
            StringOp::Suffix(b".Example.Com".to_vec()),
        ] {
            assert!(Condition::Authority(op.clone()).holds(&r2), "{op:?}");
            assert!(!Condition::Header(":authority".into(), op).holds(&r2));
        }
        assert!(
            !Condition::Authority(StringOp::Suffix(b"x.beta.shop.example.com".to_vec())).holds(&r2)
        );
        assert!(
            !Condition::Authority(StringOp::Prefix(b"beta.shop.example.com.x".to_vec())).holds(&r2)
        );
        let wrong_method = Condition::Methods(vec![b"GET".to_vec()]);
        assert!(!wrong_method.holds(&r));
        let no_route = Request::new(&h, None);
        assert!(!Condition::RouteNames(vec![b"checkout-route".to_vec()]).holds(&no_route));
    }
}
