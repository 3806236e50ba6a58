//! Validates traffic-split JSON configurations offline, with the filter's own parser.
//!
//! ```sh
//! cargo run --example check_config -- FILE...     # one line per file
//! cargo run --example check_config < config.json  # no FILE: standard input
//! ```
//!
//! A filter configuration embedded in a Kubernetes manifest (Istio's `WasmPlugin.pluginConfig`,
//! Envoy Gateway's `EnvoyExtensionPolicy` `wasm[].config`) has no Envoy bootstrap that
//! `envoy --mode validate` could check, and a bad one only shows up when a proxy loads it. This
//! needs neither Envoy nor the `.wasm`: it runs the same `Plan::from_json` the filter runs in
//! `on_configure` and prints, for each input,
//! `ok FILE: N rule(s), M shadow target(s), K breaker(s)` or
//! `FILE: invalid configuration: <path>: <reason>`. It exits 1 if any input failed (or could
//! not be read), 0 otherwise.

use std::io::Read;
use std::process::ExitCode;
use traffic_split::plan::Plan;

/// Checks one configuration and prints its line (to standard output, in input order, so the
/// lines of several files stay in order); whether it is valid.
fn check(label: &str, bytes: &[u8]) -> bool {
    match Plan::from_json(bytes) {
        Ok(plan) => {
            println!(
                "ok {label}: {} rule(s), {} shadow target(s), {} breaker(s)",
                plan.rules.len(),
                plan.shadow_targets.len(),
                plan.breakers.len()
            );
            true
        }
        Err(error) => {
            println!("{label}: invalid configuration: {error}");
            false
        }
    }
}

fn main() -> ExitCode {
    let files: Vec<String> = std::env::args().skip(1).collect();
    let mut all_ok = true;
    if files.is_empty() {
        let mut bytes = Vec::new();
        all_ok = match std::io::stdin().read_to_end(&mut bytes) {
            Ok(_) => check("<stdin>", &bytes),
            Err(error) => {
                println!("<stdin>: cannot read: {error}");
                false
            }
        };
    }
    for file in &files {
        let ok = match std::fs::read(file) {
            Ok(bytes) => check(file, &bytes),
            Err(error) => {
                println!("{file}: cannot read: {error}");
                false
            }
        };
        all_ok &= ok;
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
