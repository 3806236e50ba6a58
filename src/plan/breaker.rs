//! `destinations[].breaker`: thresholds and the statuses that count as failures.

use super::fields::{field, field_item};
use crate::breaker::{BreakerPolicy, StatusMatch, GRPC_CODES};
use crate::config::{BreakerConfig, ConfigError, FailureStatus};
use crate::rng::sample_threshold;
#[inline(never)]
pub(super) fn compile_breaker(path: &str, b: BreakerConfig) -> Result<BreakerPolicy, ConfigError> {
    if b.failure_ratio <= 0.0 {
        return Err(ConfigError::new(
            field(path, "failure_ratio"),
            "must be above 0 (a share of failed requests, e.g. 0.2)",
        ));
    }
    for (name, value) in [
        ("min_requests", b.min_requests),
        ("window_s", b.window_s),
        ("open_s", b.open_s),
    ] {
        if value == 0 {
            return Err(ConfigError::new(field(path, name), "must be at least 1"));
        }
    }
    if b.half_open_percent <= 0.0 {
        return Err(ConfigError::new(
            field(path, "half_open_percent"),
            "must be above 0, or the breaker could never close again",
        ));
    }
    if b.failure_statuses.is_empty() {
        return Err(ConfigError::new(
            field(path, "failure_statuses"),
            "must list at least one status or class",
        ));
    }
    let mut failure_statuses = Vec::with_capacity(b.failure_statuses.len());
    for (i, status) in b.failure_statuses.iter().enumerate() {
        failure_statuses.push(status_match(
            &field_item(path, "failure_statuses", i),
            status,
        )?);
    }
    let mut grpc_failure_codes = Vec::with_capacity(b.grpc_failure_codes.len());
    for (i, code) in b.grpc_failure_codes.iter().enumerate() {
        let cpath = field_item(path, "grpc_failure_codes", i);
        match grpc_code(code) {
            Some(0) => {
                return Err(ConfigError::new(cpath, "OK (0) is never a failure"));
            }
            Some(n) => grpc_failure_codes.push(n as u8),
            None => {
                return Err(ConfigError::new(
                    cpath,
                    "is not a gRPC status code (1 to 16) or name (e.g. \"UNAVAILABLE\")",
                ))
            }
        }
    }
    for (name, value) in [
        ("slow_ms", b.slow_ms),
        ("consecutive_failures", b.consecutive_failures),
    ] {
        if value == Some(0) {
            return Err(ConfigError::new(field(path, name), "must be at least 1"));
        }
    }
    Ok(BreakerPolicy {
        failure_ratio: b.failure_ratio,
        min_requests: b.min_requests,
        window_s: b.window_s,
        open_s: b.open_s,
        half_open_threshold: sample_threshold(b.half_open_percent),
        half_open_permille: (b.half_open_percent * 10.0).round() as u64,
        failure_statuses,
        count_local_replies: b.count_local_replies,
        grpc_failure_codes,
        slow_ms: b.slow_ms,
        consecutive_failures: b.consecutive_failures,
    })
}

/// A gRPC status code given as a number or a name (0..=16), if it is one.
pub(super) fn grpc_code(code: &FailureStatus) -> Option<usize> {
    match code {
        FailureStatus::Code(n) => usize::try_from(*n).ok().filter(|n| *n < GRPC_CODES.len()),
        FailureStatus::Text(name) => GRPC_CODES.iter().position(|c| c == name),
    }
}

pub(super) fn status_match(path: &str, status: &FailureStatus) -> Result<StatusMatch, ConfigError> {
    let bad = |shown: &str| {
        ConfigError::at(
            path,
            format_args!(
                "\"{shown}\" is not a status code (100-599) or class (\"1xx\" to \"5xx\")"
            ),
        )
    };
    match status {
        FailureStatus::Code(code) => match u16::try_from(*code) {
            Ok(code) if (100..=599).contains(&code) => Ok(StatusMatch::Exact(code)),
            _ => Err(bad(&code.to_string())),
        },
        FailureStatus::Text(text) => match text.as_bytes() {
            [class @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
                Ok(StatusMatch::Class(u16::from(class - b'0')))
            }
            _ => match text.parse::<u16>() {
                Ok(code) if (100..=599).contains(&code) => Ok(StatusMatch::Exact(code)),
                _ => Err(bad(text)),
            },
        },
    }
}
