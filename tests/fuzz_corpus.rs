//! Replays the checked-in fuzz corpus (fuzz/corpus/<target>/) natively through the same
//! harness `make fuzz` runs, so every input the fuzzer once found interesting — and every
//! crash fixed since — is re-checked by `make test` without nightly or libFuzzer.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no corpus in {}", dir.display());
    for input in &inputs {
        run(&std::fs::read(input).unwrap());
    }
    eprintln!("{target}: replayed {} inputs", inputs.len());
}

#[test]
fn config_bytes_corpus() {
    replay("config_bytes", harness::config_bytes);
}

#[test]
fn config_structured_corpus() {
    replay("config_structured", harness::config_structured);
}

#[test]
fn decision_corpus() {
    replay("decision", harness::decision);
}

#[test]
fn breaker_record_corpus() {
    replay("breaker_record", harness::breaker_record);
}

#[test]
fn shadow_copy_corpus() {
    replay("shadow_copy", harness::shadow_copy);
}
