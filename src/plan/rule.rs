//! One rule: its destinations (names, weights, fallbacks, breakers), salt and shadows.

use super::breaker::compile_breaker;
use super::fault::compile_fault;
use super::fields::{check_cluster, check_name, destination_index, field, field_item, item};
use super::judge::compile_judge;
use super::matching::compile_match;
use super::rollout::compile_rollout;
use super::shadow::compile_shadow;
use super::sticky::compile_sticky;
use super::{Destination, Rule, MAX_DESTINATIONS, MAX_SHADOWS_PER_RULE};
use crate::bucket::{self, UNLEASH_BUCKETS};
use crate::config::{ConfigError, DestinationConfig, HashKind, RuleConfig};
use crate::matcher::Matcher;
use crate::shadow::{ShadowPolicy, ShadowTarget};
pub(super) fn compile_rule(
    path: &str,
    rule: RuleConfig,
    shadow_targets: &mut Vec<ShadowTarget>,
) -> Result<Rule, ConfigError> {
    check_name(&field(path, "name"), &rule.name)?;
    let matcher = match rule.match_ {
        Some(m) => compile_match(&field(path, "match"), m)?,
        None => Matcher::default(),
    };
    let sticky = rule
        .sticky
        .map(|s| compile_sticky(&field(path, "sticky"), s))
        .transpose()?;
    let destinations = compile_destinations(&field(path, "destinations"), rule.destinations)?;
    let weights: Vec<u32> = destinations.iter().map(|d| d.weight).collect();
    if rule.hash == HashKind::Unleash {
        let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        if sum != u64::from(UNLEASH_BUCKETS) {
            return Err(ConfigError::at(
                field(path, "destinations"),
                format_args!(
                    "with hash \"unleash\" the weights must sum to 100 (percentages), got {sum}"
                ),
            ));
        }
    }
    let rollout_gated = rule
        .rollout
        .as_ref()
        .is_some_and(|r| r.gate == Some(crate::config::RolloutGate::Judge));
    if rollout_gated && rule.judge.is_none() {
        return Err(ConfigError::new(
            field(&field(path, "rollout"), "gate"),
            "\"judge\" needs a \"judge\" on this rule",
        ));
    }
    let rollout = rule
        .rollout
        .map(|r| compile_rollout(&field(path, "rollout"), r, rule.hash, &destinations))
        .transpose()?;
    let judge = rule
        .judge
        .map(|j| compile_judge(&field(path, "judge"), j, &destinations))
        .transpose()?;
    // A rollout rule starts at 0% (before `start`) until the host computes the share in force.
    let upper_bounds = match &rollout {
        Some(_) => crate::rollout::upper_bounds(0, weights.get(1..).unwrap_or_default()),
        None => bucket::upper_bounds(rule.hash, &weights),
    };
    let salt = rule.salt.unwrap_or_else(|| rule.name.clone());
    let fault = rule
        .fault
        .map(|f| compile_fault(&field(path, "fault"), f, &salt, &destinations))
        .transpose()?;
    let mut salt_colon = salt.into_bytes();
    salt_colon.push(b':');
    if rule.shadow.len() > MAX_SHADOWS_PER_RULE {
        return Err(ConfigError::at(
            field(path, "shadow"),
            format_args!(
                "must list at most {MAX_SHADOWS_PER_RULE} shadow targets, got {}",
                rule.shadow.len()
            ),
        ));
    }
    let mut shadows: Vec<ShadowPolicy> = Vec::with_capacity(rule.shadow.len());
    for (i, shadow) in rule.shadow.into_iter().enumerate() {
        let spath = field_item(path, "shadow", i);
        let policy = compile_shadow(&spath, shadow, shadow_targets)?;
        if shadows.iter().any(|s| s.target == policy.target) {
            return Err(ConfigError::at(
                field(&spath, "name"),
                format_args!(
                    "duplicate shadow target \"{}\" in this rule",
                    shadow_targets
                        .get(policy.target)
                        .map_or("", |t| t.name.as_str())
                ),
            ));
        }
        shadows.push(policy);
    }
    Ok(Rule {
        upper_bounds,
        name: rule.name,
        matcher,
        sticky,
        hash: rule.hash,
        salt_colon,
        destinations,
        shadows,
        rollout,
        rollout_slot: None,
        lane: None,
        judge,
        judge_slot: None,
        rollout_gated,
        fault,
    })
}

const MAX_WEIGHT: u32 = 1_000_000;

#[inline(never)]
fn compile_destinations(
    path: &str,
    destinations: Vec<DestinationConfig>,
) -> Result<Vec<Destination>, ConfigError> {
    if destinations.is_empty() || destinations.len() > MAX_DESTINATIONS {
        return Err(ConfigError::at(
            path,
            format_args!(
                "must list 1 to {MAX_DESTINATIONS} destinations, got {}",
                destinations.len()
            ),
        ));
    }
    let mut out: Vec<Destination> = Vec::with_capacity(destinations.len());
    let mut fallbacks: Vec<Option<String>> = Vec::with_capacity(destinations.len());
    for (i, d) in destinations.into_iter().enumerate() {
        let dpath = item(path, i);
        check_name(&field(&dpath, "name"), &d.name)?;
        if out.iter().any(|o| o.name == d.name) {
            return Err(ConfigError::at(
                field(&dpath, "name"),
                format_args!("duplicate destination name \"{}\" in this rule", d.name),
            ));
        }
        check_cluster(&field(&dpath, "cluster"), &d.cluster)?;
        if d.weight > MAX_WEIGHT {
            return Err(ConfigError::at(
                field(&dpath, "weight"),
                format_args!("must be at most {MAX_WEIGHT}, got {}", d.weight),
            ));
        }
        let breaker =
            match (d.breaker, &d.fallback) {
                (Some(b), Some(_)) => Some(compile_breaker(&field(&dpath, "breaker"), b)?),
                (Some(_), None) => return Err(ConfigError::new(
                    field(&dpath, "breaker"),
                    "needs a \"fallback\": the destination that takes the traffic while it is open",
                )),
                (None, Some(_)) => {
                    return Err(ConfigError::new(
                        field(&dpath, "fallback"),
                        "only applies with a \"breaker\"",
                    ))
                }
                (None, None) => None,
            };
        out.push(Destination {
            name: d.name,
            cluster: d.cluster,
            weight: d.weight,
            fallback: None,
            breaker,
            breaker_slot: None,
        });
        fallbacks.push(d.fallback);
    }
    if out.iter().all(|d| d.weight == 0) {
        return Err(ConfigError::new(
            path,
            "all weights are 0: at least one destination must have a positive weight",
        ));
    }
    for (i, fallback) in fallbacks.into_iter().enumerate() {
        let Some(fallback) = fallback else {
            continue;
        };
        let fpath = field(&item(path, i), "fallback");
        let target = destination_index(&fpath, &out, &fallback)?;
        if target == i {
            return Err(ConfigError::new(
                fpath,
                "a destination cannot fall back to itself",
            ));
        }
        if let Some(d) = out.get_mut(i) {
            d.fallback = Some(target);
        }
    }
    check_fallback_chains(path, &out)?;
    Ok(out)
}

/// Following fallbacks from any destination must end: a loop would bounce traffic forever
/// while every breaker on it is open.
fn check_fallback_chains(path: &str, destinations: &[Destination]) -> Result<(), ConfigError> {
    for start in 0..destinations.len() {
        let mut chain = vec![start];
        let mut at = start;
        while let Some(next) = destinations.get(at).and_then(|d| d.fallback) {
            if chain.contains(&next) {
                chain.push(next);
                let mut names = String::new();
                for (k, d) in chain
                    .iter()
                    .filter_map(|&i| destinations.get(i))
                    .enumerate()
                {
                    if k > 0 {
                        names.push_str(" -> ");
                    }
                    names.push_str(&d.name);
                }
                return Err(ConfigError::at(
                    path,
                    format_args!("fallback chain loops: {names}"),
                ));
            }
            chain.push(next);
            at = next;
        }
    }
    Ok(())
}
