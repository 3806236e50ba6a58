//! The rule index: which rules can match a request at all, found without scanning every rule.
//!
//! A rule whose `match` has an exact `authority` can only match requests to that host, and one
//! with `route_names` only requests on those Envoy routes. The index maps each such key to the
//! sorted indices of the rules it scopes; every other rule is "unkeyed". A decision merges the
//! request's authority list, its route-name list and the unkeyed list in ascending rule order
//! and evaluates each candidate's full matcher: exactly the rules a linear scan would find
//! matching, in the same order, so first-match semantics do not change (each rule sits in
//! exactly one list, and a skipped rule is one whose key cannot hold).
//!
//! Authority keys compare ignoring ASCII case, as `Condition::Authority` does, and include
//! whatever port the configured value has: `:authority` `shop.example:8080` is only found under
//! a key `shop.example:8080`, as the matcher would only match that exact value.

use crate::matcher::{Condition, Matcher, StringOp};

/// Below this many keyed rules a linear scan is as fast as the lookups (BENCHMARKS.md,
/// "Many rules"), and small plans stay as they were.
pub const INDEX_MIN_KEYED_RULES: usize = 8;

/// Keys and the ascending rule indices each scopes, with an open-addressing table over them:
/// one hash of the request's value and usually one probe, whatever the number of keys.
#[derive(Debug, Default)]
struct Postings {
    keys: Vec<(Vec<u8>, Vec<u32>)>,
    /// Power-of-two sized, at most half full; `EMPTY` or an index into `keys`.
    table: Vec<u32>,
}

const EMPTY: u32 = u32::MAX;

/// FNV-1a of `bytes`, lower-cased when `fold`: cheap, and the keys come from the operator's
/// configuration, not from clients (a client only picks which slot is probed).
fn hash(bytes: &[u8], fold: bool) -> u64 {
    let mut h = crate::fnv::Fnv1a::default();
    for &b in bytes {
        h.byte(if fold { b.to_ascii_lowercase() } else { b });
    }
    h.value()
}

impl Postings {
    /// Room for `capacity` keys.
    fn with_capacity(capacity: usize) -> Postings {
        Postings {
            keys: Vec::new(),
            table: vec![EMPTY; (capacity * 2).next_power_of_two().max(2)],
        }
    }

    /// The slot holding `value`, or the empty slot where it would go.
    fn slot(&self, value: &[u8], fold: bool) -> Option<(usize, Option<usize>)> {
        let mask = self.table.len().wrapping_sub(1);
        let mut slot = hash(value, fold) as usize & mask;
        // At most half full: an empty slot always ends the probe; the bound is belt and braces.
        for _ in 0..self.table.len() {
            let entry = *self.table.get(slot)?;
            let Some((key, _)) = self.keys.get(entry as usize) else {
                return Some((slot, None)); // EMPTY
            };
            let equal = if fold {
                key.len() == value.len()
                    && key
                        .iter()
                        .zip(value)
                        .all(|(k, v)| *k == v.to_ascii_lowercase())
            } else {
                key.as_slice() == value
            };
            if equal {
                return Some((slot, Some(entry as usize)));
            }
            slot = (slot + 1) & mask;
        }
        None
    }

    /// Adds `rule` under `key` (lower case when `fold`). Rules come in ascending order; a rule
    /// naming a route twice is listed once. Returns whether the key was new.
    fn add(&mut self, key: &[u8], rule: u32, fold: bool) -> bool {
        match self.slot(key, fold) {
            Some((_, Some(entry))) => {
                if let Some((_, rules)) = self.keys.get_mut(entry) {
                    if rules.last() != Some(&rule) {
                        rules.push(rule);
                    }
                }
                false
            }
            Some((slot, None)) => {
                if let Some(e) = self.table.get_mut(slot) {
                    *e = self.keys.len() as u32;
                    self.keys.push((key.to_vec(), vec![rule]));
                }
                true
            }
            None => false,
        }
    }

    /// The rules under `value`; `fold`: compare ignoring ASCII case (keys are lower case).
    fn get(&self, value: &[u8], fold: bool) -> &[u32] {
        match self.slot(value, fold) {
            Some((_, Some(entry))) => self.keys.get(entry).map_or(&[], |(_, r)| r.as_slice()),
            _ => &[],
        }
    }
}

/// Whether every name is distinct, in linear time (plans of thousands of rules); `Err(i)`: the
/// first repeat.
pub fn first_repeat<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> Result<(), usize> {
    let mut seen = Postings::with_capacity(names.len());
    for (i, name) in names.enumerate() {
        if !seen.add(name.as_bytes(), 0, false) {
            return Err(i);
        }
    }
    Ok(())
}

#[derive(Debug, Default)]
pub struct RuleIndex {
    /// Lower-case exact authority -> ascending rule indices.
    by_authority: Postings,
    /// Route name -> ascending rule indices.
    by_route: Postings,
    /// Rules with neither key, ascending.
    unkeyed: Vec<u32>,
}

/// The key a rule is indexed under: its exact authority when it has one (the most selective),
/// else its route names.
enum Key<'a> {
    Authority(&'a [u8]),
    Routes(&'a [Vec<u8>]),
}

fn key_of(matcher: &Matcher) -> Option<Key<'_>> {
    let authority = matcher.conditions.iter().find_map(|c| match c {
        Condition::Authority(StringOp::Exact(a)) => Some(Key::Authority(a)),
        _ => None,
    });
    authority.or_else(|| {
        matcher.conditions.iter().find_map(|c| match c {
            Condition::RouteNames(names) => Some(Key::Routes(names)),
            _ => None,
        })
    })
}

impl RuleIndex {
    /// The index of `matchers` (one per rule, in order), or `None` when too few rules are keyed
    /// for it to pay.
    pub fn build<'a>(matchers: impl ExactSizeIterator<Item = &'a Matcher>) -> Option<RuleIndex> {
        let mut index = RuleIndex {
            by_authority: Postings::with_capacity(matchers.len()),
            by_route: Postings::with_capacity(0),
            unkeyed: Vec::new(),
        };
        let mut routes: Vec<(&[Vec<u8>], u32)> = Vec::new();
        let mut keyed = 0usize;
        for (i, matcher) in matchers.enumerate() {
            let rule = u32::try_from(i).ok().filter(|&r| r != EMPTY)?;
            match key_of(matcher) {
                Some(Key::Authority(a)) => {
                    keyed += 1;
                    index.by_authority.add(&a.to_ascii_lowercase(), rule, true);
                }
                Some(Key::Routes(names)) => {
                    keyed += 1;
                    routes.push((names, rule));
                }
                None => index.unkeyed.push(rule),
            }
        }
        index.by_route = Postings::with_capacity(routes.iter().map(|(n, _)| n.len()).sum());
        for (names, rule) in routes {
            for name in names {
                index.by_route.add(name, rule, false);
            }
        }
        (keyed >= INDEX_MIN_KEYED_RULES).then_some(index)
    }

    /// The rules that can match a request with this authority and route name, ascending.
    pub fn candidates(&self, authority: Option<&[u8]>, route: Option<&[u8]>) -> Candidates<'_> {
        Candidates {
            lists: [
                authority.map_or(&[][..], |a| self.by_authority.get(a, true)),
                route.map_or(&[][..], |r| self.by_route.get(r, false)),
                &self.unkeyed,
            ],
        }
    }
}

/// A merge of three ascending, disjoint lists of rule indices.
pub struct Candidates<'a> {
    lists: [&'a [u32]; 3],
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let mut best: Option<(usize, u32)> = None;
        for (l, list) in self.lists.iter().enumerate() {
            if let Some(&head) = list.first() {
                if best.is_none_or(|(_, b)| head < b) {
                    best = Some((l, head));
                }
            }
        }
        let (l, head) = best?;
        if let Some(list) = self.lists.get_mut(l) {
            *list = list.get(1..).unwrap_or(&[]);
        }
        Some(head as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(a: &str) -> Matcher {
        Matcher {
            conditions: vec![Condition::Authority(StringOp::Exact(a.as_bytes().to_vec()))],
        }
    }

    fn routes(names: &[&str]) -> Matcher {
        Matcher {
            conditions: vec![Condition::RouteNames(
                names.iter().map(|n| n.as_bytes().to_vec()).collect(),
            )],
        }
    }

    #[test]
    fn candidates_merge_in_rule_order() {
        let mut matchers = vec![
            Matcher::default(),          // 0 unkeyed
            authority("A.example"),      // 1
            routes(&["r1", "r2", "r1"]), // 2
            authority("b.example"),      // 3
            Matcher::default(),          // 4 unkeyed
            authority("a.example"),      // 5
            routes(&["r2"]),             // 6
            authority("a.example:8080"), // 7 (the port is part of the key)
        ];
        matchers.extend((0..8).map(|i| authority(&format!("h{i}.example"))));
        let index = RuleIndex::build(matchers.iter()).unwrap();
        let got = |a: Option<&str>, r: Option<&str>| -> Vec<usize> {
            index
                .candidates(a.map(str::as_bytes), r.map(str::as_bytes))
                .collect()
        };
        assert_eq!(got(Some("a.EXAMPLE"), None), vec![0, 1, 4, 5]);
        assert_eq!(got(Some("a.example"), Some("r2")), vec![0, 1, 2, 4, 5, 6]);
        assert_eq!(got(Some("a.example:8080"), Some("r1")), vec![0, 2, 4, 7]);
        assert_eq!(got(None, None), vec![0, 4]);
        assert_eq!(got(Some("h3.example"), Some("nope")), vec![0, 4, 11]);
    }

    #[test]
    fn small_plans_are_not_indexed() {
        let matchers: Vec<Matcher> = (0..INDEX_MIN_KEYED_RULES - 1)
            .map(|i| authority(&format!("h{i}")))
            .collect();
        assert!(RuleIndex::build(matchers.iter()).is_none());
    }
}
