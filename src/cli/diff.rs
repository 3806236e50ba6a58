//! `diff`: what changes for users between two configurations, over the compiled plans.

use super::analysis::{bucket_counts, buckets, pct, print, text};
use super::{hash_name, load_one, Failure};
use crate::plan::{Plan, Rule};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The share of users moving between destination names from `old` to `new`, over buckets.
/// Same salt and hash: exact (each bucket keeps its users). Otherwise every user is re-bucketed
/// independently, and the result is the expectation `P_old(a) * P_new(b)`.
pub fn moves(old: &Rule, new: &Rule) -> (bool, BTreeMap<(String, String), f64>) {
    let mut out = BTreeMap::new();
    let exact = old.hash == new.hash && old.salt_colon == new.salt_colon;
    let name = |r: &Rule, i: usize| {
        r.destinations
            .get(i)
            .map_or(String::new(), |d| d.name.clone())
    };
    if exact {
        let total = buckets(old.hash).len() as f64;
        for b in buckets(old.hash) {
            let (a, z) = (
                name(old, old.destination_of_bucket(b)),
                name(new, new.destination_of_bucket(b)),
            );
            if a != z {
                *out.entry((a, z)).or_insert(0.0) += 1.0 / total;
            }
        }
    } else {
        let share = |r: &Rule| {
            let total = buckets(r.hash).len() as f64;
            bucket_counts(r)
                .into_iter()
                .enumerate()
                .map(|(i, c)| (name(r, i), f64::from(c) / total))
                .collect::<Vec<_>>()
        };
        for (a, pa) in share(old) {
            for (z, pz) in share(new) {
                if a != z && pa * pz > 0.0 {
                    *out.entry((a.clone(), z)).or_insert(0.0) += pa * pz;
                }
            }
        }
    }
    (exact, out)
}

pub fn diff(
    old_file: &str,
    new_file: &str,
    user: Option<&str>,
    all: bool,
    as_json: bool,
) -> Result<(), Failure> {
    let old_c = load_one(old_file, all, 0)?;
    let new_c = load_one(new_file, all, 0)?;
    let (Ok(old), Ok(new)) = (&old_c.plan, &new_c.plan) else {
        return Err(Failure::Invalid("invalid configuration".into()));
    };
    let mut lines = Vec::new();
    let mut rules_json = Vec::new();
    for (what, a, b) in [
        (
            "cluster_header",
            old.cluster_header.clone(),
            new.cluster_header.clone(),
        ),
        (
            "variant_header",
            old.variant_header.clone().unwrap_or_default(),
            new.variant_header.clone().unwrap_or_default(),
        ),
    ] {
        if a != b {
            lines.push(format!("{what}: {a:?} -> {b:?}"));
        }
    }
    let index = |p: &Plan, n: &str| p.rules.iter().position(|r| r.name == n);
    for (i, r) in old.rules.iter().enumerate() {
        if index(new, &r.name).is_none() {
            lines.push(format!("rule \"{}\": removed (was rules[{i}])", r.name));
            rules_json.push(json!({"rule": r.name, "change": "removed"}));
        }
    }
    for (j, n) in new.rules.iter().enumerate() {
        let Some(i) = index(old, &n.name) else {
            lines.push(format!("rule \"{}\": added at rules[{j}]", n.name));
            rules_json.push(json!({"rule": n.name, "change": "added"}));
            continue;
        };
        let Some(o) = old.rules.get(i) else { continue };
        let mut notes = Vec::new();
        if i != j {
            notes.push(format!("moved from rules[{i}] to rules[{j}] (rule order decides which rule a request meets)"));
        }
        if o.matcher != n.matcher {
            notes.push("match changed: which requests this rule takes changes".to_string());
        }
        if o.sticky.as_ref().map(|s| &s.key) != n.sticky.as_ref().map(|s| &s.key) {
            notes.push("sticky key changed: users are keyed differently".to_string());
        }
        for d in &n.destinations {
            if let Some(od) = o.destinations.iter().find(|x| x.name == d.name) {
                if od.cluster != d.cluster {
                    notes.push(format!(
                        "destination \"{}\": cluster {} -> {} (its users stay, their traffic goes elsewhere)",
                        d.name, od.cluster, d.cluster
                    ));
                }
            }
        }
        let shadows = |p: &Plan, r: &Rule| {
            r.shadows
                .iter()
                .map(|s| {
                    let name = p
                        .shadow_targets
                        .get(s.target)
                        .map_or("", |t| t.name.as_str());
                    format!(
                        "{name} ({}) {:.2}%",
                        s.cluster,
                        s.sample_probability() * 100.0
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (os, ns) = (shadows(old, o), shadows(new, n));
        if os != ns {
            notes.push(format!("shadows: [{os}] -> [{ns}]"));
        }
        let fallbacks = |r: &Rule| {
            r.destinations
                .iter()
                .filter(|d| d.breaker.is_some())
                .map(|d| {
                    let to = d.fallback.and_then(|f| r.destinations.get(f));
                    format!("{} -> {}", d.name, to.map_or("", |f| f.name.as_str()))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (ob, nb) = (fallbacks(o), fallbacks(n));
        if ob != nb {
            notes.push(format!(
                "breakers (destination -> fallback): [{ob}] -> [{nb}]"
            ));
        }
        let (exact, m) = moves(o, n);
        let total: f64 = m.values().fold(0.0, |a, b| a + b);
        let mut moved = Vec::new();
        for ((a, z), share) in &m {
            moved.push(json!({"from": a, "to": z, "share": share}));
        }
        let weights = |r: &Rule| {
            let t = buckets(r.hash).len();
            r.destinations
                .iter()
                .zip(bucket_counts(r))
                .map(|(d, c)| format!("{} {}", d.name, pct(c, t)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (ow, nw) = (weights(o), weights(n));
        if !m.is_empty() || ow != nw || !notes.is_empty() {
            lines.push(format!("rule \"{}\":", n.name));
            for note in &notes {
                lines.push(format!("  {note}"));
            }
            if !exact {
                lines.push(format!(
                    "  salt or hash changed ({} {:?} -> {} {:?}): every user is re-bucketed; shares below are expectations",
                    hash_name(o.hash),
                    text(o.salt_colon.strip_suffix(b":").unwrap_or(&o.salt_colon)),
                    hash_name(n.hash),
                    text(n.salt_colon.strip_suffix(b":").unwrap_or(&n.salt_colon)),
                ));
            }
            if ow != nw {
                lines.push(format!(
                    "  shares: {ow} -> {nw} (also what non-sticky requests get)"
                ));
            }
            let qual = if exact { "exactly" } else { "expected" };
            if o.sticky.is_some() || n.sticky.is_some() || !m.is_empty() {
                lines.push(format!(
                    "  sticky users changing destination: {qual} {:.2}%",
                    total * 100.0
                ));
            }
            for ((a, z), share) in &m {
                lines.push(format!("    {a} -> {z}: {:.2}%", share * 100.0));
            }
        }
        let mut rj = serde_json::Map::new();
        let change = if m.is_empty() && notes.is_empty() && ow == nw {
            "none"
        } else {
            "changed"
        };
        for (k, v) in [
            ("rule", Value::from(n.name.clone())),
            ("change", Value::from(change)),
            ("exact", Value::from(exact)),
            ("moved_share", Value::from(total)),
            ("moves", Value::from(moved)),
            ("notes", Value::from(notes.clone())),
        ] {
            rj.insert(k.into(), v);
        }
        if let Some(key) = user {
            let dest = |r: &Rule| {
                r.destinations
                    .get(r.destination_of_key(key.as_bytes()))
                    .map_or(String::new(), |d| d.name.clone())
            };
            let (a, z) = (dest(o), dest(n));
            if o.sticky.is_some() || n.sticky.is_some() {
                let verdict = if a == z { "stays" } else { "moves" };
                lines.push(format!(
                    "  user {key:?} in rule \"{}\": {a} -> {z} ({verdict})",
                    n.name
                ));
                rj.insert(
                    "user".into(),
                    json!({"key": key, "from": a, "to": z, "moves": a != z}),
                );
            }
        }
        rules_json.push(Value::from(rj));
    }
    if !lines.iter().any(|l| !l.starts_with("  user ")) {
        lines.insert(0, "no routing change".into());
    }
    let mut report = serde_json::Map::new();
    report.insert("old".into(), Value::from(old_c.embedded.label()));
    report.insert("new".into(), Value::from(new_c.embedded.label()));
    report.insert("rules".into(), Value::from(rules_json));
    print(as_json, &lines, &report)
}
