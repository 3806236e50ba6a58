//! `traffic-split`: the operator CLI (validate, explain, diff, bucket, schema). The code lives in
//! `traffic_split::cli`, native only; `make wasm` builds the library alone.

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    traffic_split::cli::main()
}

#[cfg(target_arch = "wasm32")]
fn main() {}
