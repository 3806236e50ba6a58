//! The compiled, immutable plan the filter runs, and how it is built from the typed
//! configuration (`config`): `Plan::compile` checks what no single field can (uniqueness,
//! references, bounds) with one step per concern below. Everything that can be checked is
//! checked here, once, so the request path never meets a surprise: a plan that exists is a plan
//! that is safe to run. `decide` is what the plan does with a request.

mod breaker;
mod decide;
mod fault;
mod fields;
mod index;
mod judge;
mod lane;
mod matching;
mod rollout;
mod rule;
mod shadow;
mod sticky;
#[cfg(test)]
mod tests;

pub use decide::{Decision, Routed};
pub use fault::FaultPolicy;
pub use index::{RuleIndex, INDEX_MIN_KEYED_RULES};
pub use judge::default_failure_policy;
pub use rollout::MAX_ROLLOUT_STEPS;
pub use shadow::default_shadow_name;

use crate::body::PointerTree;
use crate::breaker::BreakerPolicy;
use crate::bucket::FINE_BUCKETS;
use crate::config::{self, ConfigError, HashKind, PluginConfig, RouteCacheMode};
use crate::judge::JudgePolicy;
use crate::lane::{Lanes, RuleLane};
use crate::matcher::{Condition, Matcher};
use crate::rollout::RolloutPolicy;
use crate::shadow::{MarkerKey, ShadowPolicy, ShadowTarget};
use fields::routing_header_name;
use lane::{compile_lane_secret, compile_rule_lane, RuleLaneConfig};
use rule::compile_rule;

pub const MAX_DESTINATIONS: usize = 16;
pub const MAX_SHADOWS_PER_RULE: usize = 8;
pub const MAX_NAME_LEN: usize = 64;

#[derive(Debug)]
pub struct Plan {
    /// Lower-case header the chosen cluster is written to.
    pub cluster_header: String,
    /// Lower-case header the chosen destination name is written to; `None` when disabled.
    pub variant_header: Option<String>,
    pub debug_header: bool,
    pub rules: Vec<Rule>,
    /// Whether any rule reads request attributes (then the host reads the header map once, and
    /// finds client-sent `x-envoy-fault-*` headers there; else it removes them by name).
    pub needs_request_headers: bool,
    /// Whether any rule matches on Envoy's route name (then the host reads that property).
    pub needs_route_name: bool,
    /// Whether any rule matches `source_ips` (then the host reads `source.address`).
    pub needs_source_address: bool,
    /// Every shadow target by metric name (rules refer to them by index).
    pub shadow_targets: Vec<ShadowTarget>,
    /// Shadow bulkhead, per worker.
    pub max_in_flight: usize,
    pub max_buffered_body_bytes: u64,
    /// Signs and verifies the shadow marker (`shadow_marker_secret`); `None`: unsigned marker.
    pub marker_key: Option<MarkerKey>,
    /// Every destination with a breaker, in plan order; `Destination::breaker_slot` indexes it.
    pub breakers: Vec<BreakerRef>,
    /// When to call Envoy's `clear_route_cache` after a routing-header change.
    pub clear_route_cache: RouteCacheMode,
    /// Rules by exact authority and route name, when enough rules have one (`plan::index`).
    pub index: Option<RuleIndex>,
    /// Rules with a rollout, by rollout slot (`Rule::rollout_slot` indexes it).
    pub rollouts: Vec<usize>,
    /// Lane carriers and the key of their values (`crate::lane`).
    pub lanes: Lanes,
    /// How many rules have a lane (`RuleLane::slot` counts them).
    pub lane_rules: usize,
    /// Whether any rule has `match.body` (then JSON requests may be held for their body).
    pub reads_body: bool,
    /// `body_max_bytes`: the most of a body held for `match.body`.
    pub body_max_bytes: u64,
    /// The pointers of every body condition: what parsing a body keeps.
    pub body_pointers: PointerTree,
    /// Rules with a judge, by judge slot (`Rule::judge_slot` indexes it).
    pub judges: Vec<usize>,
    /// Rules with a `fault`, by fault slot (`FaultPolicy::slot` indexes it).
    pub fault_rules: Vec<usize>,
}

/// Where a breaker sits: `plan.rules[rule].destinations[destination]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerRef {
    pub rule: usize,
    pub destination: usize,
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub matcher: Matcher,
    pub sticky: Option<Sticky>,
    pub hash: HashKind,
    /// `"<salt>:"`, the prefix hashed before the user key.
    pub salt_colon: Vec<u8>,
    pub destinations: Vec<Destination>,
    /// Exclusive upper bucket bound per destination (see `bucket::upper_bounds`).
    /// For a rule with a rollout: the bounds at 0%, used until the host supplies the share
    /// in force (`Plan::decide_at`).
    pub upper_bounds: Vec<u32>,
    pub shadows: Vec<ShadowPolicy>,
    /// A scheduled share for the first destination (`crate::rollout`).
    pub rollout: Option<RolloutPolicy>,
    /// Index into `Plan::rollouts` when the rule has a rollout.
    pub rollout_slot: Option<usize>,
    /// `propagate` (and `from_lane`, `lane_fallback`), compiled.
    pub lane: Option<RuleLane>,
    /// Compares the canary with its baseline (`crate::judge`).
    pub judge: Option<JudgePolicy>,
    /// Index into `Plan::judges` when the rule has a judge.
    pub judge_slot: Option<usize>,
    /// `rollout.gate: "judge"`: a step ends only once the judge's last window passed.
    pub rollout_gated: bool,
    /// The slice of requests Envoy's fault filter delays or aborts.
    pub fault: Option<FaultPolicy>,
}

#[derive(Debug)]
pub struct Destination {
    pub name: String,
    pub cluster: String,
    pub weight: u32,
    /// Index of the destination that takes this one's traffic while its breaker is open.
    pub fallback: Option<usize>,
    pub breaker: Option<BreakerPolicy>,
    /// Index into `Plan::breakers` when this destination has a breaker.
    pub breaker_slot: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    Header(String),
    Cookie(String),
    Query(String),
}

#[derive(Debug)]
pub struct Sticky {
    pub key: StickyKey,
    /// When set (cookie keys only): what follows `<name>=<id>` in the `Set-Cookie` of users
    /// who have no cookie yet (`cookie::attributes`).
    pub assign_cookie: Option<String>,
}

impl Plan {
    /// Parses and validates a JSON plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Plan, ConfigError> {
        Plan::compile(config::parse(bytes)?)
    }

    pub fn compile(config: PluginConfig) -> Result<Plan, ConfigError> {
        let cluster_header = routing_header_name("cluster_header", &config.cluster_header)?;
        let variant_header = if config.variant_header.is_empty() {
            None
        } else {
            let name = routing_header_name("variant_header", &config.variant_header)?;
            if name == cluster_header {
                return Err(ConfigError::new(
                    "variant_header",
                    "must differ from cluster_header",
                ));
            }
            Some(name)
        };
        let mut rules = Vec::with_capacity(config.rules.len());
        let mut shadow_targets = Vec::new();
        // A hash set, not a scan of the rules so far: thousands of rules load in linear time.
        if let Err(i) = index::first_repeat(config.rules.iter().map(|r| r.name.as_str())) {
            let name = config.rules.get(i).map_or("", |r| r.name.as_str());
            return Err(ConfigError::at(
                fields::field(&fields::item("rules", i), "name"),
                format_args!("duplicate rule name \"{name}\""),
            ));
        }
        let mut lanes = compile_lane_secret(config.lane_secret.as_deref())?;
        let mut lane_rules = 0;
        let mut routing_headers = vec![cluster_header.as_str()];
        routing_headers.extend(variant_header.as_deref());
        for (i, mut rule) in config.rules.into_iter().enumerate() {
            let path = fields::item("rules", i);
            let lane = RuleLaneConfig {
                propagate: rule.propagate.take(),
                from_lane: rule.from_lane,
                lane_fallback: rule.lane_fallback.take(),
            };
            let mut compiled = compile_rule(&path, rule, &mut shadow_targets)?;
            compiled.lane = compile_rule_lane(
                &path,
                lane,
                &compiled.destinations,
                &routing_headers,
                &mut lanes,
                &mut lane_rules,
            )?;
            rules.push(compiled);
        }
        let mut rollouts = Vec::new();
        let mut fault_rules = Vec::new();
        for (r, rule) in rules.iter_mut().enumerate() {
            if rule.rollout.is_some() {
                rule.rollout_slot = Some(rollouts.len());
                rollouts.push(r);
            }
            if let Some(fault) = &mut rule.fault {
                fault.slot = fault_rules.len();
                fault_rules.push(r);
            }
        }
        let mut judges = Vec::new();
        for (r, rule) in rules.iter_mut().enumerate() {
            if rule.judge.is_some() {
                rule.judge_slot = Some(judges.len());
                judges.push(r);
            }
        }
        let mut breakers = Vec::new();
        for (r, rule) in rules.iter_mut().enumerate() {
            for (d, dest) in rule.destinations.iter_mut().enumerate() {
                if dest.breaker.is_some() {
                    dest.breaker_slot = Some(breakers.len());
                    breakers.push(BreakerRef {
                        rule: r,
                        destination: d,
                    });
                }
            }
        }
        if config.max_in_flight == 0 {
            return Err(ConfigError::new(
                "max_in_flight",
                "must be at least 1 (use \"percent\": 0 to turn shadowing off)",
            ));
        }
        let marker_key = config
            .shadow_marker_secret
            .as_deref()
            .map(|s| fields::compile_secret("shadow_marker_secret", s))
            .transpose()?;
        let needs_source_address = rules.iter().any(|r| {
            r.matcher
                .conditions
                .iter()
                .any(Condition::needs_source_address)
        });
        let needs_route_name = rules
            .iter()
            .any(|r| r.matcher.conditions.iter().any(Condition::needs_route_name));
        // Shadow copies carry the request's headers, so a rule with shadows needs them too;
        // lane carriers are screened on every request.
        let needs_request_headers = !lanes.is_empty()
            || rules.iter().any(|r| {
                r.matcher.conditions.iter().any(Condition::needs_headers)
                    || r.sticky.is_some()
                    || !r.shadows.is_empty()
            });
        let reads_body = rules.iter().any(|r| r.matcher.reads_body());
        // Each distinct body pointer gets a slot in the parsed body.
        let mut body_pointers = PointerTree::default();
        for rule in &mut rules {
            for c in &mut rule.matcher.conditions {
                if let Condition::Body(b) = c {
                    b.slot = body_pointers.add(&b.pointer);
                }
            }
        }
        // Whether a request may carry a JSON body is read from its headers.
        let needs_request_headers = needs_request_headers || reads_body;
        let index = RuleIndex::build(rules.iter().map(|r| &r.matcher));
        Ok(Plan {
            index,
            cluster_header,
            variant_header,
            debug_header: config.debug_header,
            rules,
            needs_request_headers,
            needs_route_name,
            needs_source_address,
            shadow_targets,
            max_in_flight: config.max_in_flight as usize,
            max_buffered_body_bytes: config.max_buffered_body_bytes,
            marker_key,
            breakers,
            clear_route_cache: config.clear_route_cache,
            rollouts,
            lanes,
            lane_rules,
            reads_body,
            body_max_bytes: config.body_max_bytes,
            body_pointers,
            judges,
            fault_rules,
        })
    }
}

impl Plan {
    /// The rule and destination breaker `at` sits on.
    pub fn breaker_site(&self, at: BreakerRef) -> Option<(&Rule, &Destination)> {
        let rule = self.rules.get(at.rule)?;
        Some((rule, rule.destinations.get(at.destination)?))
    }

    /// The policy of breaker `slot` (an index into `breakers`).
    pub fn breaker_policy(&self, slot: usize) -> Option<&BreakerPolicy> {
        let at = *self.breakers.get(slot)?;
        self.breaker_site(at)?.1.breaker.as_ref()
    }

    /// The rule and rollout of rollout slot `slot`.
    pub fn rollout_site(&self, slot: usize) -> Option<(&Rule, &RolloutPolicy)> {
        let rule = self.rules.get(*self.rollouts.get(slot)?)?;
        Some((rule, rule.rollout.as_ref()?))
    }

    /// The rule and judge of judge slot `slot`.
    pub fn judge_site(&self, slot: usize) -> Option<(&Rule, &JudgePolicy)> {
        let rule = self.rules.get(*self.judges.get(slot)?)?;
        Some((rule, rule.judge.as_ref()?))
    }

    /// The `shadow`-th shadow of rule `rule`.
    pub fn shadow_policy(&self, rule: usize, shadow: usize) -> Option<&ShadowPolicy> {
        self.rules.get(rule)?.shadows.get(shadow)
    }

    /// Every warning logged when the plan is loaded: `unscoped_side_effects`, rules that
    /// route by unsigned lanes, and judges whose canary outweighs their baseline.
    pub fn load_warnings(&self) -> Vec<String> {
        let mut out = self.unscoped_side_effects();
        out.extend(self.rules.iter().filter_map(Rule::judge_backwards_warning));
        if self.lanes.key.is_none() {
            for rule in &self.rules {
                if rule.lane.as_ref().is_some_and(|l| l.from_lane) {
                    out.push(format!(
                        "rule \"{}\" routes by lanes (from_lane) without lane_secret: any caller \
                         that reaches this proxy without passing the edge can pick a lane; set the \
                         same lane_secret where lanes start and here",
                        rule.name
                    ));
                }
            }
        }
        out
    }

    /// Rules with effects beyond routing (assigning a cookie, shadowing, a breaker) that are
    /// not scoped to a host or an Envoy route: on a shared gateway such a rule acts on every
    /// app behind it (docs/deploy.md). Logged as warnings at load; the configuration stays valid.
    pub fn unscoped_side_effects(&self) -> Vec<String> {
        self.rules
            .iter()
            .filter_map(|rule| {
                let scoped = rule
                    .matcher
                    .conditions
                    .iter()
                    .any(|c| matches!(c, Condition::Authority(_) | Condition::RouteNames(_)));
                let mut effects = Vec::new();
                if rule
                    .sticky
                    .as_ref()
                    .is_some_and(|s| s.assign_cookie.is_some())
                {
                    effects.push("sticky.assign_cookie");
                }
                if !rule.shadows.is_empty() {
                    effects.push("shadow");
                }
                if rule.destinations.iter().any(|d| d.breaker.is_some()) {
                    effects.push("breaker");
                }
                (!scoped && !effects.is_empty()).then(|| {
                    format!(
                        "rule \"{}\" has {} but no match.authority or match.route_names: \
                         on a shared gateway it acts on every host",
                        rule.name,
                        crate::config::join(&effects, ", ")
                    )
                })
            })
            .collect()
    }
}

// Compile-time guard: the fine bucket count is what the docs promise.
const _: () = assert!(FINE_BUCKETS == 10_000);
