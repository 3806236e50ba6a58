//! `rules[].match`: the conditions a request must meet, cheapest first.

use super::fields::{check_cookie_name, field, field_item, header_name, is_token_byte, item};
use crate::body::{BodyCondition, BodyTest};
use crate::config::{BodyOpConfig, ConfigError, MatchConfig, NamedMatchConfig, StringMatchConfig};
use crate::matcher::{Condition, Matcher, StringOp};
use crate::network::Cidr;
use crate::pattern::Pattern;
pub(super) fn compile_match(path: &str, m: MatchConfig) -> Result<Matcher, ConfigError> {
    let mut conditions = Vec::new();
    // Cheap conditions first: a rule that fails on the method never parses cookies or query.
    if let Some(methods) = m.methods {
        conditions.push(Condition::Methods(compile_methods(
            &field(path, "methods"),
            methods,
        )?));
    }
    if let Some(p) = m.path {
        conditions.push(Condition::Path(string_op(&field(path, "path"), p, false)?));
    }
    if let Some(a) = m.authority {
        conditions.push(Condition::Authority(string_op(
            &field(path, "authority"),
            a,
            true,
        )?));
    }
    // One loop for the three named kinds: one copy of the per-item code in the `.wasm`.
    let named = [
        ("headers", m.headers),
        ("cookies", m.cookies),
        ("query", m.query),
    ];
    for (kind, list) in named {
        for (i, n) in list.unwrap_or_default().into_iter().enumerate() {
            let npath = field_item(path, kind, i);
            let name_path = field(&npath, "name");
            let name = match kind {
                "headers" => header_name(&name_path, &n.name)?,
                "cookies" => {
                    check_cookie_name(&name_path, &n.name)?;
                    n.name.clone()
                }
                _ if n.name.is_empty() => {
                    return Err(ConfigError::new(name_path, "must not be empty"))
                }
                _ => n.name.clone(),
            };
            let op = named_op(&npath, n)?;
            conditions.push(match kind {
                "headers" => Condition::Header(name, op),
                "cookies" => Condition::Cookie(name, op),
                _ => Condition::Query(name, op),
            });
        }
    }
    if let Some(routes) = m.route_names {
        let rpath = field(path, "route_names");
        non_empty_list(&rpath, &routes)?;
        conditions.push(Condition::RouteNames(
            routes.into_iter().map(String::into_bytes).collect(),
        ));
    }
    if let Some(ranges) = m.source_ips {
        let spath = field(path, "source_ips");
        non_empty_list(&spath, &ranges)?;
        let mut cidrs = Vec::with_capacity(ranges.len());
        for (i, r) in ranges.iter().enumerate() {
            match Cidr::parse(r) {
                Ok(c) => cidrs.push(c),
                Err(why) => return Err(ConfigError::new(item(&spath, i), why)),
            }
        }
        conditions.push(Condition::SourceIps(cidrs));
    }
    // Groups last: they hold several conditions each.
    if let Some(inner) = m.not {
        conditions.push(Condition::Not(compile_group(&field(path, "not"), *inner)?));
    }
    if let Some(sets) = m.any_of {
        let apath = field(path, "any_of");
        if sets.is_empty() {
            return Err(ConfigError::new(
                apath,
                "must list at least one match object",
            ));
        }
        let mut groups = Vec::with_capacity(sets.len());
        for (i, set) in sets.into_iter().enumerate() {
            groups.push(compile_group(&item(&apath, i), set)?);
        }
        conditions.push(Condition::AnyOf(groups));
    }
    // Body conditions last: they are read only once every other condition holds.
    if let Some(list) = m.body {
        let bpath = field(path, "body");
        if list.is_empty() {
            return Err(ConfigError::new(
                bpath,
                "must list at least one condition (omit the field to match every body)",
            ));
        }
        for (i, b) in list.into_iter().enumerate() {
            let ipath = item(&bpath, i);
            if !(b.pointer.is_empty() || b.pointer.starts_with('/')) {
                return Err(ConfigError::new(
                    field(&ipath, "pointer"),
                    "must be a JSON pointer (RFC 6901): empty or starting with \"/\", e.g. \"/model\"",
                ));
            }
            conditions.push(Condition::Body(BodyCondition {
                pointer: b.pointer,
                slot: 0, // assigned by `Plan::compile`
                test: body_test(&ipath, b.op)?,
            }));
        }
    }
    Ok(Matcher { conditions })
}

const BODY_TEST_REASON: &str =
    "needs exactly one of \"exact\", \"prefix\", \"suffix\", \"contains\", \
     \"one_of\", \"present\", \"regex\", \"not\", \"any_of\"";

/// One test of a body condition: a string op, `contains`, `not` or `any_of`.
fn body_test(path: &str, b: BodyOpConfig) -> Result<BodyTest, ConfigError> {
    let op = &b.op;
    let ops = [
        op.exact.is_some(),
        op.prefix.is_some(),
        op.suffix.is_some(),
        op.one_of.is_some(),
        op.present.is_some(),
        op.regex.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    let others = usize::from(b.contains.is_some())
        + usize::from(b.not.is_some())
        + usize::from(b.any_of.is_some());
    if ops + others != 1 {
        return Err(ConfigError::new(path, BODY_TEST_REASON));
    }
    if let Some(c) = b.contains {
        return Ok(BodyTest::Contains(c.into_bytes()));
    }
    if let Some(inner) = b.not {
        return Ok(BodyTest::Not(Box::new(body_test(
            &field(path, "not"),
            *inner,
        )?)));
    }
    if let Some(tests) = b.any_of {
        let apath = field(path, "any_of");
        if tests.is_empty() {
            return Err(ConfigError::new(apath, "must list at least one test"));
        }
        let mut out = Vec::with_capacity(tests.len());
        for (i, t) in tests.into_iter().enumerate() {
            out.push(body_test(&item(&apath, i), t)?);
        }
        return Ok(BodyTest::AnyOf(out));
    }
    let op = op_of(path, b.op, false, BODY_TEST_REASON)?;
    if matches!(&op, StringOp::OneOf(v) if v.is_empty()) {
        return Err(ConfigError::new(
            field(path, "one_of"),
            "must list at least one value",
        ));
    }
    Ok(BodyTest::Op(op))
}

/// The match object inside `not` or `any_of`: an empty one would make the group always
/// (`any_of`) or never (`not`) hold, which is never what was meant.
fn compile_group(path: &str, m: MatchConfig) -> Result<Matcher, ConfigError> {
    let matcher = compile_match(path, m)?;
    if matcher.conditions.is_empty() {
        return Err(ConfigError::new(path, "must have at least one condition"));
    }
    Ok(matcher)
}

pub(super) fn compile_methods(
    path: &str,
    methods: Vec<String>,
) -> Result<Vec<Vec<u8>>, ConfigError> {
    non_empty_list(path, &methods)?;
    for (i, method) in methods.iter().enumerate() {
        if method.is_empty() || !method.bytes().all(is_token_byte) {
            return Err(ConfigError::at(
                item(path, i),
                format_args!("\"{method}\" is not an HTTP method token"),
            ));
        }
    }
    Ok(methods.into_iter().map(String::into_bytes).collect())
}

pub(super) fn non_empty_list(path: &str, list: &[String]) -> Result<(), ConfigError> {
    if list.is_empty() {
        return Err(ConfigError::new(
            path,
            "must not be empty (omit the field to match everything)",
        ));
    }
    Ok(())
}

pub(super) fn named_op(path: &str, m: NamedMatchConfig) -> Result<StringOp, ConfigError> {
    let op = op_of(
        path,
        m.op,
        false,
        "needs exactly one of \"exact\", \"prefix\", \"suffix\", \"one_of\", \"present\", \"regex\"",
    )?;
    if matches!(&op, StringOp::OneOf(v) if v.is_empty()) {
        return Err(ConfigError::new(
            field(path, "one_of"),
            "must list at least one value",
        ));
    }
    Ok(op)
}

/// `ignore_case`: for `authority`, whose other ops ignore ASCII case too.
pub(super) fn string_op(
    path: &str,
    m: StringMatchConfig,
    ignore_case: bool,
) -> Result<StringOp, ConfigError> {
    // Path and authority take no `one_of` or `present` (the decoder never fills them there).
    let m = StringMatchConfig {
        one_of: None,
        present: None,
        ..m
    };
    op_of(
        path,
        m,
        ignore_case,
        "needs exactly one of \"exact\", \"prefix\", \"suffix\", \"regex\"",
    )
}

/// The one op of a match object, shared by both kinds: one copy in the `.wasm`.
fn op_of(
    path: &str,
    m: StringMatchConfig,
    ignore_case: bool,
    reason: &str,
) -> Result<StringOp, ConfigError> {
    let regex = regex_op(path, m.regex.as_deref(), ignore_case)?;
    let mut ops = [
        m.exact.map(|s| StringOp::Exact(s.into_bytes())),
        m.prefix.map(|s| StringOp::Prefix(s.into_bytes())),
        m.suffix.map(|s| StringOp::Suffix(s.into_bytes())),
        m.one_of
            .map(|v| StringOp::OneOf(v.into_iter().map(String::into_bytes).collect())),
        m.present.map(StringOp::Present),
        regex,
    ];
    exactly_one(path, &mut ops, reason)
}

fn regex_op(
    path: &str,
    source: Option<&str>,
    ignore_case: bool,
) -> Result<Option<StringOp>, ConfigError> {
    let Some(source) = source else {
        return Ok(None);
    };
    Pattern::new(source, ignore_case)
        .map(|p| Some(StringOp::Regex(p)))
        .map_err(|why| ConfigError::new(field(path, "regex"), why))
}

/// Not generic over the array length: one copy serves every caller.
pub(super) fn exactly_one(
    path: &str,
    ops: &mut [Option<StringOp>],
    reason: &str,
) -> Result<StringOp, ConfigError> {
    let mut given = None;
    let mut count = 0;
    for op in ops.iter_mut().filter_map(Option::take) {
        count += 1;
        if given.is_none() {
            given = Some(op);
        }
    }
    match given {
        Some(op) if count == 1 => Ok(op),
        _ => Err(ConfigError::new(path, reason)),
    }
}
