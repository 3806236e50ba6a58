//! `rules[].rollout`: checks the schedule and compiles it to a `RolloutPolicy`.

use super::fields::{field, field_item};
use super::Destination;
use crate::config::{ConfigError, HashKind, RolloutConfig};
use crate::rollout::{basis_points_of, parse_rfc3339, RolloutPolicy, Step};

pub const MAX_ROLLOUT_STEPS: usize = 100;

pub(super) fn compile_rollout(
    path: &str,
    rollout: RolloutConfig,
    hash: HashKind,
    destinations: &[Destination],
) -> Result<RolloutPolicy, ConfigError> {
    let first = destinations.first().map_or("", |d| d.name.as_str());
    if rollout.destination != first {
        return Err(ConfigError::at(
            field(path, "destination"),
            format_args!(
                "must be the rule's first destination (\"{first}\"), got \"{}\": its share \
                 grows from the first buckets, so nobody who saw it leaves it",
                rollout.destination
            ),
        ));
    }
    if hash == HashKind::Unleash {
        return Err(ConfigError::new(
            path,
            "needs hash \"fine\": with \"unleash\" (100 buckets) a percent with decimals has no \
             bucket range",
        ));
    }
    if destinations.iter().skip(1).all(|d| d.weight == 0) {
        return Err(ConfigError::new(
            path,
            "needs another destination with a positive weight to take the rest of the traffic",
        ));
    }
    let start_ms = parse_rfc3339(&rollout.start).ok_or_else(|| {
        ConfigError::at(
            field(path, "start"),
            format_args!(
                "\"{}\" is not an RFC 3339 time with a zone (e.g. 2026-12-01T10:00:00Z)",
                rollout.start
            ),
        )
    })?;
    let n = rollout.steps.len();
    if n == 0 || n > MAX_ROLLOUT_STEPS {
        return Err(ConfigError::at(
            field(path, "steps"),
            format_args!("must list 1 to {MAX_ROLLOUT_STEPS} steps, got {n}"),
        ));
    }
    let mut steps: Vec<Step> = Vec::with_capacity(n);
    for (i, step) in rollout.steps.into_iter().enumerate() {
        let spath = field_item(path, "steps", i);
        let basis_points = basis_points_of(step.percent).ok_or_else(|| {
            ConfigError::new(
                field(&spath, "percent"),
                "must have at most two decimals (basis points)",
            )
        })?;
        if steps.last().is_some_and(|p| p.basis_points > basis_points) {
            return Err(ConfigError::new(
                field(&spath, "percent"),
                "must not be below the previous step's (a rollout only grows; roll back with \
                 a configuration change)",
            ));
        }
        let last = i + 1 == n;
        let hold_s = match step.hold_s {
            _ if last => None,
            Some(h) if h >= 1 => Some(h),
            _ => {
                return Err(ConfigError::new(
                    field(&spath, "hold_s"),
                    "is required and at least 1 on every step but the last",
                ))
            }
        };
        steps.push(Step {
            basis_points,
            hold_s,
        });
    }
    let has_breaker = destinations.first().is_some_and(|d| d.breaker.is_some());
    let abort_on_breaker_open = match rollout.abort_on_breaker_open {
        Some(true) if !has_breaker => {
            return Err(ConfigError::new(
                field(path, "abort_on_breaker_open"),
                "needs a breaker on the rollout's destination",
            ))
        }
        Some(abort) => abort,
        None => has_breaker,
    };
    Ok(RolloutPolicy {
        start_ms,
        steps,
        abort_on_breaker_open,
    })
}
