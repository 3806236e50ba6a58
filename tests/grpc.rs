//! End-to-end: breakers on gRPC and slow answers, in real Envoy with a real gRPC server
//! (Python `grpcio`, tests/grpc/backend.py) over HTTP/2 through the filter's route. `make test`
//! installs grpcio into the shared .venv when it is missing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

fn python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/grpc/backend.py")
}

/// A gRPC server process; stops when dropped.
struct GrpcBackend {
    child: Child,
    addr: SocketAddr,
}

impl GrpcBackend {
    /// `fixed`: the answer whatever the caller asks (`ok` for a stable version).
    fn start(name: &str, fixed: Option<&str>) -> GrpcBackend {
        let mut child = Command::new(python())
            .arg(script())
            .args(["serve", name])
            .args(fixed)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python with grpcio (make test installs it into .venv)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("gRPC backend did not start: {line:?}"));
        GrpcBackend {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` unary calls with `mode` through Envoy: (status name, backend) per call.
fn calls(envoy: &Envoy, mode: &str, n: usize) -> Vec<(String, String)> {
    let out = Command::new(python())
        .arg(script())
        .args(["call", &envoy.listener.to_string(), mode, &n.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["code"].as_str().unwrap().to_string(),
                v["backend"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

const HTTP2: &str = "    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
";

/// Canary (weight 1) with a breaker of `breaker` falling back to stable (weight 0): every
/// call goes to the canary until its breaker opens. Both clusters speak HTTP/2.
fn envoy(canary: &GrpcBackend, stable: &GrpcBackend, breaker: &str) -> Envoy {
    let config = format!(
        r#"{{"rules":[{{"name":"rpc","destinations":[
            {{"name":"canary","cluster":"canary","weight":1,"fallback":"stable","breaker":{breaker}}},
            {{"name":"stable","cluster":"stable","weight":0}}]}}]}}"#
    );
    let mut spec = EnvoySpec::new(&config)
        .cluster("stable", stable.addr)
        .cluster("canary", canary.addr);
    for name in ["stable", "canary"] {
        let from = format!("  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n");
        let to = format!("{from}{HTTP2}");
        spec = spec.patch(&from, &to);
    }
    Envoy::start(spec)
}

fn state(envoy: &Envoy) -> u64 {
    envoy.settled_counter("traffic_split.breaker.rpc.canary.state")
}

const BREAKER: &str = r#"{"failure_ratio":0.5,"min_requests":10,"window_s":30,"open_s":60}"#;

#[test]
fn unavailable_in_trailers_trips_the_breaker_and_ok_answers_do_not() {
    let (canary, stable) = (
        GrpcBackend::start("canary", None),
        GrpcBackend::start("stable", Some("ok")),
    );
    // consecutive_failures: after 30 OK answers in the window the ratio would need 30
    // failures; 5 in a row open the breaker at once.
    let envoy = envoy(
        &canary,
        &stable,
        r#"{"failure_ratio":0.5,"min_requests":10,"window_s":30,"open_s":60,"consecutive_failures":5}"#,
    );
    let ok = calls(&envoy, "ok", 30);
    assert!(ok.iter().all(|(c, b)| c == "OK" && b == "canary"), "{ok:?}");
    assert_eq!(state(&envoy), 0, "OK answers are not failures");
    // Headers first, then grpc-status 14 in the trailers. One connection: one worker.
    let failing = calls(&envoy, "unavailable-trailers", 20);
    let failed = failing.iter().filter(|(c, _)| c == "UNAVAILABLE").count();
    assert_eq!(
        failed, 5,
        "5 failures in a row open the breaker: {failing:?}"
    );
    assert!(failing[5..].iter().all(|(c, b)| c == "OK" && b == "stable"));
    assert_eq!(state(&envoy), 1);
}

#[test]
fn trailers_only_unavailable_trips_the_breaker_and_not_found_does_not() {
    let (canary, stable) = (
        GrpcBackend::start("canary", None),
        GrpcBackend::start("stable", Some("ok")),
    );
    let envoy = envoy(&canary, &stable, BREAKER);
    // NOT_FOUND is the caller's problem, not the version's (not in the default codes).
    let not_found = calls(&envoy, "not-found", 30);
    assert!(not_found
        .iter()
        .all(|(c, b)| c == "NOT_FOUND" && b == "canary"));
    assert_eq!(state(&envoy), 0);
    // Trailers-only: grpc-status 14 in the response headers. With 30 NOT_FOUND (successes
    // to the breaker) in the window, the 30th failure reaches the ratio of 0.5.
    let failing = calls(&envoy, "unavailable", 40);
    let failed = failing.iter().filter(|(c, _)| c == "UNAVAILABLE").count();
    assert_eq!(failed, 30, "{failing:?}");
    assert!(failing[30..]
        .iter()
        .all(|(c, b)| c == "OK" && b == "stable"));
    assert_eq!(state(&envoy), 1);
}

#[test]
fn a_canary_answering_after_slow_ms_trips_the_breaker() {
    let (canary, stable) = (
        GrpcBackend::start("canary", None),
        GrpcBackend::start("stable", Some("ok")),
    );
    let envoy = envoy(
        &canary,
        &stable,
        r#"{"failure_ratio":0.5,"min_requests":10,"window_s":30,"open_s":60,"slow_ms":150}"#,
    );
    let fast = calls(&envoy, "ok", 20);
    assert!(fast.iter().all(|(c, b)| c == "OK" && b == "canary"));
    assert_eq!(state(&envoy), 0, "answers within slow_ms are not failures");
    // Slow answers (0.3 s) are still OK to the client, but count as failures.
    // With the 20 fast answers in the window, the 20th slow one reaches the ratio of 0.5.
    let slow = calls(&envoy, "slow", 25);
    assert!(slow.iter().all(|(c, _)| c == "OK"));
    let on_canary = slow.iter().filter(|(_, b)| b == "canary").count();
    assert_eq!(on_canary, 20, "{slow:?}");
    assert!(slow[20..].iter().all(|(_, b)| b == "stable"));
    assert_eq!(state(&envoy), 1);
}

#[test]
fn shadow_comparisons_finish_for_responses_that_end_in_trailers() {
    let (canary, stable) = (
        GrpcBackend::start("canary", None),
        GrpcBackend::start("stable", Some("ok")),
    );
    // The shadow answers OK too, with another message: every compared pair differs in body.
    let shadow = GrpcBackend::start("gshadow", Some("ok"));
    let config = r#"{"rules":[{"name":"rpc","destinations":[{"name":"canary","cluster":"canary"}],
        "shadow":[{"cluster":"gshadow","compare":true,"compare_body":true}]}]}"#;
    let mut spec = EnvoySpec::new(config)
        .cluster("stable", stable.addr)
        .cluster("canary", canary.addr)
        .cluster("gshadow", shadow.addr);
    for name in ["stable", "canary", "gshadow"] {
        let from = format!("  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n");
        spec = spec.patch(&from, &format!("{from}{HTTP2}"));
    }
    let envoy = Envoy::start(spec);
    let n = 10;
    let answers = calls(&envoy, "ok", n);
    assert!(answers.iter().all(|(c, b)| c == "OK" && b == "canary"));
    let metric = |what: &str| envoy.counter(&format!("traffic_split.shadow.gshadow.{what}"));
    let responses = envoy.wait_counter("traffic_split.shadow.gshadow.responses", n as u64);
    assert_eq!(responses, n as u64, "failed: {}", metric("failed"));
    // The primary's gRPC response ends with its trailers, never with a last body chunk: the
    // comparison must finish there (else the primary reads as gone and nothing is compared).
    let mismatches = envoy.wait_counter("traffic_split.shadow.gshadow.body_mismatch", n as u64);
    assert_eq!(mismatches, n as u64);
    assert_eq!(metric("status_mismatch"), 0);
}

#[test]
fn a_fault_slice_with_abort_grpc_status_ends_calls_with_unavailable_at_a_real_client() {
    let (canary, stable) = (
        GrpcBackend::start("canary", None),
        GrpcBackend::start("stable", Some("ok")),
    );
    // No user key on these calls: the slice is drawn at random per call.
    let config = r#"{"rules":[{"name":"rpc","destinations":[{"name":"canary","cluster":"canary"}],
        "fault":{"percent":50,"abort_grpc_status":"UNAVAILABLE"}}]}"#;
    let mut spec = EnvoySpec::new(config)
        .cluster("stable", stable.addr)
        .cluster("canary", canary.addr)
        .fault_filter(100);
    for name in ["stable", "canary"] {
        let from = format!("  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n");
        spec = spec.patch(&from, &format!("{from}{HTTP2}"));
    }
    let envoy = Envoy::start(spec);
    let n = 60;
    let answers = calls(&envoy, "ok", n);
    let aborted: Vec<_> = answers.iter().filter(|(c, _)| c == "UNAVAILABLE").collect();
    // Injected: status 14 from Envoy, the canary never saw the call (no x-backend).
    assert!(aborted.iter().all(|(_, b)| b.is_empty()), "{answers:?}");
    assert!(answers
        .iter()
        .all(|(c, b)| c == "UNAVAILABLE" || (c == "OK" && b == "canary")));
    assert_binomial(aborted.len(), n, 0.5, "calls aborted with UNAVAILABLE");
    let k = aborted.len() as u64;
    envoy.wait_counter("traffic_split.fault.rpc.aborted", k);
    assert_eq!(envoy.settled_counter("traffic_split.fault.rpc.aborted"), k);
}
