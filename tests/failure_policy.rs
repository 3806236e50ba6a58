//! What Envoy's Wasm `failure_policy` does to traffic once the plugin's VM has died, shown
//! with a test-only module (tests/panic-module) that panics on requests marked `x-panic: 1`.
//! traffic-split itself never panics on input; this is about what a deployment chooses should
//! a VM die anyway (a bug, an out-of-memory trap).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Builds tests/panic-module once per test run (its own target directory, so it never
/// waits on the main build) and returns the .wasm.
fn panic_module() -> PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let target = root.join("target/panic-module");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip1",
                "--manifest-path",
            ])
            .arg(root.join("tests/panic-module/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .status()
            .unwrap();
        assert!(status.success(), "building tests/panic-module failed");
        target.join("wasm32-wasip1/release/panic_module.wasm")
    })
    .clone()
}

/// One request over a fresh connection: (status, x-filtered-by, x-backend), or None when the
/// connection failed without a response.
fn probe(envoy: &Envoy, headers: &[(&str, &str)]) -> Option<(u16, String, String)> {
    let mut req = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build()
        .get(&envoy.url("/"));
    for (n, v) in headers {
        req = req.set(n, v);
    }
    let response = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(_) => return None,
    };
    let status = response.status();
    let filtered = response.header("x-filtered-by").unwrap_or("").to_string();
    let backend = response.header("x-backend").unwrap_or("").to_string();
    Some((status, filtered, backend))
}

fn start(policy: &str, backend: &Backend) -> Envoy {
    let mut spec = EnvoySpec::new("").cluster("backend", backend.addr);
    spec.wasm = Some(panic_module());
    spec.failure_policy = Some(policy.to_string());
    // One worker, so one VM: every request after the panic meets the dead (or reloaded) one.
    spec.concurrency = 1;
    Envoy::start(spec)
}

/// The VM filters a request, then dies on a marked one: Envoy answers that one with its own 503
/// (`wasm_fail_stream`) under every policy. Returns the first VM's stamp.
fn filter_then_panic(envoy: &Envoy, backend: &Backend) -> String {
    let (status, vm, upstream) = probe(envoy, &[]).unwrap();
    assert_eq!((status, upstream.as_str()), (200, "backend"));
    assert!(!vm.is_empty(), "the first request was not filtered");
    let (status, filtered, upstream) = probe(envoy, &[("x-panic", "1")]).unwrap();
    assert_eq!(
        (status, filtered.as_str(), upstream.as_str()),
        (503, "", ""),
        "the panicking request"
    );
    assert_eq!(
        backend.count(),
        1,
        "the panicking request reached the upstream"
    );
    vm
}

#[test]
fn fail_closed_answers_503_to_everything_after_the_vm_dies() {
    let backend = Backend::start("backend");
    let envoy = start("FAIL_CLOSED", &backend);
    filter_then_panic(&envoy, &backend);
    for _ in 0..8 {
        assert_eq!(
            probe(&envoy, &[]),
            Some((503, String::new(), String::new()))
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // 2 s later nothing got through, and nothing was reloaded.
    assert_eq!(backend.count(), 1);
    assert_eq!(envoy.counter("wasm.traffic-split.vm_reload_success"), 0);
}

#[test]
fn fail_open_sends_everything_after_the_vm_dies_upstream_unfiltered() {
    let backend = Backend::start("backend");
    let envoy = start("FAIL_OPEN", &backend);
    filter_then_panic(&envoy, &backend);
    for _ in 0..8 {
        // 200 from the upstream, without the filter's mark: the filter is skipped.
        assert_eq!(
            probe(&envoy, &[]),
            Some((200, String::new(), "backend".to_string()))
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(backend.count(), 9);
    assert_eq!(envoy.counter("wasm.traffic-split.vm_reload_success"), 0);
}

/// Envoy reloads a dead VM on the next request, but at most once per backoff (1 s base
/// interval by default, jittered upward: Envoy's JitteredLowerBoundBackOffStrategy) counted
/// from the worker's last VM load: a VM that dies
/// long after it was loaded is replaced at once, one that dies again soon after a reload
/// leaves its worker answering 503 until the backoff has passed.
#[test]
fn fail_reload_replaces_a_dead_vm_at_most_once_per_backoff() {
    let backend = Backend::start("backend");
    let envoy = start("FAIL_RELOAD", &backend);
    // Let the first VM grow older than any backoff.
    std::thread::sleep(Duration::from_millis(1700));
    let first = filter_then_panic(&envoy, &backend);
    // The very next request is filtered by a new VM: no request is refused.
    let (status, second, upstream) = probe(&envoy, &[]).unwrap();
    assert_eq!((status, upstream.as_str()), (200, "backend"));
    assert!(!second.is_empty(), "a request passed unfiltered");
    assert_ne!(second, first, "the dead VM answered");
    assert_eq!(envoy.counter("wasm.traffic-split.vm_reload_success"), 1);
    assert_eq!(envoy.counter("wasm.traffic-split.vm_reload_backoff"), 0);

    // The new VM dies at once: now the backoff from its load applies.
    assert_eq!(
        probe(&envoy, &[("x-panic", "1")]),
        Some((503, String::new(), String::new()))
    );
    let died = Instant::now();
    let mut refused = 0;
    let third = loop {
        assert!(
            died.elapsed() < Duration::from_secs(10),
            "no reload in 10 s"
        );
        match probe(&envoy, &[]).unwrap() {
            (503, filtered, upstream) if filtered.is_empty() && upstream.is_empty() => refused += 1,
            (200, vm, upstream) => {
                assert_eq!(upstream, "backend");
                break vm;
            }
            other => panic!("after the second panic: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Never unfiltered: the first answer after the backoff comes through a third VM.
    assert!(!third.is_empty(), "a request passed unfiltered");
    assert_ne!(third, second);
    assert!(refused > 0, "nothing was refused during the backoff");
    assert_eq!(
        envoy.counter("wasm.traffic-split.vm_reload_backoff"),
        refused
    );
    assert_eq!(envoy.counter("wasm.traffic-split.vm_reload_success"), 2);
    // The VMs stamp their start (host clock, ns): the third started at least the 1 s base
    // interval after the second (measured 1.02-1.25 s; the bound leaves room for jitter and
    // our 50 ms polling on a loaded machine).
    let gap_ms = (third.parse::<u64>().unwrap() - second.parse::<u64>().unwrap()) / 1_000_000;
    assert!(
        (950..=1700).contains(&gap_ms),
        "reloaded {gap_ms} ms after the last load"
    );
    // And it keeps filtering.
    for _ in 0..3 {
        assert_eq!(
            probe(&envoy, &[]),
            Some((200, third.clone(), "backend".to_string()))
        );
    }
    println!(
        "FAIL_RELOAD: {refused} requests refused; the next VM started {gap_ms} ms after the last"
    );
}

/// Without `failure_policy`, Envoy 1.40 fails closed.
#[test]
fn without_a_policy_envoy_fails_closed() {
    let backend = Backend::start("backend");
    let mut spec = EnvoySpec::new("").cluster("backend", backend.addr);
    spec.wasm = Some(panic_module());
    spec.concurrency = 1;
    let envoy = Envoy::start(spec);
    std::thread::sleep(Duration::from_millis(1700));
    filter_then_panic(&envoy, &backend);
    for _ in 0..4 {
        assert_eq!(
            probe(&envoy, &[]),
            Some((503, String::new(), String::new()))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(backend.count(), 1);
}
