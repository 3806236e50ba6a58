//! `rules[].fault`: which share of a rule's requests Envoy's fault filter delays or aborts,
//! and what the filter writes for it (`crate::fault` holds the header names).

use super::breaker::grpc_code;
use super::fields::{destination_index, field, field_item};
use super::Destination;
use crate::config::{ConfigError, FaultConfig};
use crate::rng::sample_threshold;
use crate::rollout::basis_points_of;

/// A rule's fault slice, compiled.
#[derive(Debug)]
pub struct FaultPolicy {
    /// The share of the rule's requests in the slice, in basis points (0..=10000).
    pub basis_points: u32,
    /// The same share against a uniform u64 draw (requests without a user key).
    pub threshold: u64,
    /// `"fault:<salt>:"`: a sticky user's fault bucket is `murmur3(fault_salt_colon + key) %
    /// 10000`, independent of the bucket that picks the destination.
    pub salt_colon: Vec<u8>,
    /// Bit `i` set: destination `i` gets the fault (every destination unless `destinations`).
    pub destinations: u16,
    /// The values of the fault filter's headers, as written (decimal text).
    pub delay_ms: Option<String>,
    pub abort_status: Option<String>,
    pub abort_grpc_status: Option<String>,
    /// What `x-split-decision` says after `fault=`, e.g. `delay_ms:300,abort_status:503`.
    pub describe: String,
    /// Index into `Plan::fault_rules` (the rule's fault counters).
    pub slot: usize,
}

impl FaultPolicy {
    /// The request headers that ask Envoy's fault filter for this fault: each fault header,
    /// then its percentage header at 100 (`fault::ALL`).
    pub fn request_headers(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::with_capacity(5);
        if let Some(v) = &self.delay_ms {
            out.push((crate::fault::DELAY_REQUEST, v.as_str()));
            out.push((crate::fault::DELAY_REQUEST_PERCENTAGE, crate::fault::ALL));
        }
        if let Some(v) = &self.abort_status {
            out.push((crate::fault::ABORT_REQUEST, v.as_str()));
        }
        if let Some(v) = &self.abort_grpc_status {
            out.push((crate::fault::ABORT_GRPC_REQUEST, v.as_str()));
        }
        if self.aborts() {
            out.push((crate::fault::ABORT_REQUEST_PERCENTAGE, crate::fault::ALL));
        }
        out
    }

    /// Whether the fault aborts (an HTTP or a gRPC status).
    pub fn aborts(&self) -> bool {
        self.abort_status.is_some() || self.abort_grpc_status.is_some()
    }

    /// Whether the fault applies to requests routed to `destination` (`destinations`).
    pub fn applies_to(&self, destination: usize) -> bool {
        destination < 16 && self.destinations & (1u16 << destination as u32) != 0
    }

    /// A sticky user's fault bucket (0..10000) under the fault's own salt.
    pub fn bucket_of_key(&self, key: &[u8]) -> u32 {
        crate::bucket::bucket_of_hash(
            crate::config::HashKind::Fine,
            crate::bucket::murmur3_of(&self.salt_colon, key),
        )
    }

    /// Whether a request routed to `destination` with this sticky `bucket` (`None`: no user
    /// key) or, without one, this uniform `draw` is in the slice.
    pub fn selects(
        &self,
        destination: usize,
        bucket: Option<u32>,
        draw: impl FnOnce() -> u64,
    ) -> bool {
        if !self.applies_to(destination) {
            return false;
        }
        match bucket {
            Some(b) => b < self.basis_points,
            None => draw() < self.threshold,
        }
    }
}

#[inline(never)]
pub(super) fn compile_fault(
    path: &str,
    fault: FaultConfig,
    salt: &str,
    destinations: &[Destination],
) -> Result<FaultPolicy, ConfigError> {
    let basis_points = basis_points_of(fault.percent).ok_or_else(|| {
        ConfigError::new(
            field(path, "percent"),
            "must have at most two decimals (basis points)",
        )
    })?;
    if fault.delay_ms == Some(0) {
        return Err(ConfigError::new(
            field(path, "delay_ms"),
            "must be from 1 to 60000",
        ));
    }
    if fault.abort_status.is_some_and(|s| s < 200) {
        return Err(ConfigError::new(
            field(path, "abort_status"),
            "must be an HTTP status from 200 to 599",
        ));
    }
    let abort_grpc_status = match &fault.abort_grpc_status {
        None => None,
        Some(code) => match grpc_code(code) {
            Some(n) if n > 0 => Some(n),
            _ => {
                return Err(ConfigError::new(
                    field(path, "abort_grpc_status"),
                    "is not a gRPC status code (1 to 16) or name (e.g. \"UNAVAILABLE\")",
                ))
            }
        },
    };
    if fault.delay_ms.is_none() && fault.abort_status.is_none() && abort_grpc_status.is_none() {
        return Err(ConfigError::new(
            path,
            "needs at least one of delay_ms, abort_status, abort_grpc_status",
        ));
    }
    if fault.abort_status.is_some() && abort_grpc_status.is_some() {
        return Err(ConfigError::new(
            field(path, "abort_grpc_status"),
            "cannot be combined with abort_status: a request is aborted one way",
        ));
    }
    let mut mask = 0u16;
    match &fault.destinations {
        None => {
            for i in 0..destinations.len().min(16) {
                mask |= 1 << i as u32;
            }
        }
        Some(names) => {
            if names.is_empty() {
                return Err(ConfigError::new(
                    field(path, "destinations"),
                    "must name at least one destination (omit it for all)",
                ));
            }
            for (i, name) in names.iter().enumerate() {
                let at =
                    destination_index(&field_item(path, "destinations", i), destinations, name)?;
                mask |= 1 << (at as u32 & 15);
            }
        }
    }
    let delay_ms = fault.delay_ms.map(|d| d.to_string());
    let abort_status = fault.abort_status.map(|s| s.to_string());
    let abort_grpc_status = abort_grpc_status.map(|c| c.to_string());
    let mut describe = String::new();
    for (name, value) in [
        ("delay_ms", &delay_ms),
        ("abort_status", &abort_status),
        ("abort_grpc_status", &abort_grpc_status),
    ] {
        if let Some(value) = value {
            if !describe.is_empty() {
                describe.push(',');
            }
            describe.push_str(name);
            describe.push(':');
            describe.push_str(value);
        }
    }
    let mut salt_colon = b"fault:".to_vec();
    salt_colon.extend_from_slice(salt.as_bytes());
    salt_colon.push(b':');
    Ok(FaultPolicy {
        basis_points,
        threshold: sample_threshold(f64::from(basis_points) / 100.0),
        salt_colon,
        destinations: mask,
        delay_ms,
        abort_status,
        abort_grpc_status,
        describe,
        slot: 0,
    })
}

#[cfg(test)]
mod tests {
    use crate::plan::tests::err;
    use crate::plan::{Decision, Plan, Routed};
    use crate::request::{header_pairs as headers, Request};
    use crate::rng::Rng;

    fn with_fault(fault: &str) -> String {
        format!(
            r#"{{"rules":[{{"name":"r","sticky":{{"header":"u"}},"destinations":[
               {{"name":"canary","cluster":"v2"}},{{"name":"stable","cluster":"v1"}}],
               "fault":{fault}}}]}}"#
        )
    }

    fn routed(d: Decision) -> Routed {
        match d {
            Decision::Routed(r) => r,
            Decision::Unmatched => panic!("expected a routed decision"),
        }
    }

    #[test]
    fn fault_errors_name_their_field() {
        for (fault, want) in [
            (r#"{"delay_ms":5}"#, "rules[0].fault.percent: is required"),
            (
                r#"{"percent":5}"#,
                "rules[0].fault: needs at least one of delay_ms, abort_status, abort_grpc_status",
            ),
            (
                r#"{"percent":101,"delay_ms":5}"#,
                "rules[0].fault.percent: must be a number from 0 to 100, got 101",
            ),
            (
                r#"{"percent":1.234,"delay_ms":5}"#,
                "rules[0].fault.percent: must have at most two decimals (basis points)",
            ),
            (
                r#"{"percent":5,"delay_ms":0}"#,
                "rules[0].fault.delay_ms: must be from 1 to 60000",
            ),
            (
                r#"{"percent":5,"delay_ms":60001}"#,
                "rules[0].fault.delay_ms: must be a whole number from 0 to 60000, got 60001",
            ),
            (
                r#"{"percent":5,"abort_status":199}"#,
                "rules[0].fault.abort_status: must be an HTTP status from 200 to 599",
            ),
            (
                r#"{"percent":5,"abort_status":600}"#,
                "rules[0].fault.abort_status: must be a whole number from 0 to 599, got 600",
            ),
            (
                r#"{"percent":5,"abort_grpc_status":"OK"}"#,
                "rules[0].fault.abort_grpc_status: is not a gRPC status code (1 to 16) or name (e.g. \"UNAVAILABLE\")",
            ),
            (
                r#"{"percent":5,"abort_grpc_status":17}"#,
                "rules[0].fault.abort_grpc_status: is not a gRPC status code (1 to 16) or name (e.g. \"UNAVAILABLE\")",
            ),
            (
                r#"{"percent":5,"abort_grpc_status":true}"#,
                "rules[0].fault.abort_grpc_status: must be a gRPC status code or name, got a boolean",
            ),
            (
                r#"{"percent":5,"abort_status":503,"abort_grpc_status":14}"#,
                "rules[0].fault.abort_grpc_status: cannot be combined with abort_status: a request is aborted one way",
            ),
            (
                r#"{"percent":5,"delay_ms":5,"destinations":["nope"]}"#,
                "rules[0].fault.destinations[0]: \"nope\" is not a destination of this rule",
            ),
            (
                r#"{"percent":5,"delay_ms":5,"destinations":[]}"#,
                "rules[0].fault.destinations: must name at least one destination (omit it for all)",
            ),
            (
                r#"{"percent":5,"delay":5}"#,
                "rules[0].fault.delay: unknown field, expected one of: percent, delay_ms, abort_status, abort_grpc_status, destinations",
            ),
        ] {
            assert_eq!(err(&with_fault(fault)), want, "{fault}");
        }
    }

    #[test]
    fn a_fault_compiles_to_header_values() {
        let p = Plan::from_json(
            with_fault(r#"{"percent":12.5,"delay_ms":300,"abort_grpc_status":"UNAVAILABLE","destinations":["stable"]}"#)
                .as_bytes(),
        )
        .unwrap();
        let f = p.rules[0].fault.as_ref().unwrap();
        assert_eq!(f.basis_points, 1250);
        assert_eq!(f.destinations, 0b10);
        assert_eq!(f.delay_ms.as_deref(), Some("300"));
        assert_eq!(f.abort_status, None);
        assert_eq!(f.abort_grpc_status.as_deref(), Some("14"));
        assert_eq!(f.describe, "delay_ms:300,abort_grpc_status:14");
        assert_eq!(f.salt_colon, b"fault:r:");
        assert_eq!(p.fault_rules, vec![0]);
        let p = Plan::from_json(with_fault(r#"{"percent":5,"abort_grpc_status":4}"#).as_bytes())
            .unwrap();
        assert_eq!(p.rules[0].fault.as_ref().unwrap().destinations, 0b11);
    }

    /// Sticky: the same users every time, about `percent` of them, chosen independently of
    /// the destination bucket; faulted requests carry no breaker ticket.
    #[test]
    fn sticky_fault_slices_are_stable_and_sized() {
        let json = r#"{"rules":[{"name":"r","sticky":{"header":"u"},"destinations":[
            {"name":"canary","cluster":"v2","fallback":"stable","breaker":{}},
            {"name":"stable","cluster":"v1"}],
            "fault":{"percent":10,"abort_status":503}}]}"#;
        let p = Plan::from_json(json.as_bytes()).unwrap();
        let n = 20_000;
        let mut faulted = 0;
        let mut canary_faulted = 0;
        let mut canary = 0;
        for i in 0..n {
            let h = headers(&[("u", &format!("user-{i}"))]);
            let r = routed(p.decide(&Request::new(&h, None), &mut Rng::from_seed(1), &[]));
            for seed in [2, 3] {
                let again =
                    routed(p.decide(&Request::new(&h, None), &mut Rng::from_seed(seed), &[]));
                assert_eq!(again, r);
            }
            if r.fault {
                faulted += 1;
                assert_eq!(r.ticket, None, "a faulted request is no breaker evidence");
            } else if r.destination == 0 {
                assert!(r.ticket.is_some());
            }
            if r.destination == 0 {
                canary += 1;
                canary_faulted += usize::from(r.fault);
            }
        }
        // Binomial(20000, 0.1): sd 42; 5 sigma.
        assert!((1790..=2210).contains(&faulted), "{faulted}");
        // Independent of the destination bucket: about 10% of the canary's users too.
        let share = canary_faulted as f64 / canary as f64;
        assert!((0.085..=0.115).contains(&share), "{share}");
    }

    #[test]
    fn random_slices_and_destination_filters() {
        let json = r#"{"rules":[{"name":"r","destinations":[
            {"name":"canary","cluster":"v2"},{"name":"stable","cluster":"v1"}],
            "fault":{"percent":50,"delay_ms":300,"destinations":["canary"]}}]}"#;
        let p = Plan::from_json(json.as_bytes()).unwrap();
        let mut rng = Rng::from_seed(7);
        let h = headers(&[]);
        let (mut canary, mut faulted) = (0, 0);
        for _ in 0..10_000 {
            let r = routed(p.decide(&Request::new(&h, None), &mut rng, &[]));
            if r.destination == 0 {
                canary += 1;
                faulted += usize::from(r.fault);
            } else {
                assert!(!r.fault, "stable is not in the fault's destinations");
            }
        }
        let share = faulted as f64 / canary as f64;
        assert!((0.45..=0.55).contains(&share), "{share} of {canary}");
        // 0% and 100%.
        for (percent, want) in [(0, false), (100, true)] {
            let p = Plan::from_json(
                format!(
                    r#"{{"rules":[{{"name":"r","destinations":[{{"name":"a","cluster":"a"}}],
                   "fault":{{"percent":{percent},"abort_status":500}}}}]}}"#
                )
                .as_bytes(),
            )
            .unwrap();
            for _ in 0..1000 {
                assert_eq!(
                    routed(p.decide(&Request::new(&h, None), &mut rng, &[])).fault,
                    want
                );
            }
        }
    }

    /// A new user bucketed by the id assigned in its cookie keeps the fault decision that id
    /// gets on later requests.
    #[test]
    fn an_assigned_cookie_id_decides_like_the_cookie_later() {
        let json = r#"{"rules":[{"name":"r","sticky":{"cookie":"uid","assign_cookie":true},
            "destinations":[{"name":"a","cluster":"a"},{"name":"b","cluster":"b"}],
            "fault":{"percent":50,"abort_status":503}}]}"#;
        let p = Plan::from_json(json.as_bytes()).unwrap();
        let mut rng = Rng::from_seed(3);
        let mut seen = [0; 2];
        for _ in 0..200 {
            let first = routed(p.decide(&Request::new(&[], None), &mut rng, &[]));
            let cookie = first.set_cookie.clone().unwrap();
            let pair = cookie.split(';').next().unwrap().to_string();
            let h = headers(&[("cookie", &pair)]);
            let later = routed(p.decide(&Request::new(&h, None), &mut rng, &[]));
            assert_eq!(
                (later.destination, later.fault),
                (first.destination, first.fault)
            );
            seen[usize::from(first.fault)] += 1;
        }
        assert!(seen[0] > 50 && seen[1] > 50, "{seen:?}");
    }
}
