//! Runs the fuzz harness over every file of the corpus directories given as arguments, in a
//! wasm32 build: overflows that a 64-bit native run cannot see panic here (overflow checks on).
//! Usage (under a WASI runtime with the directories preopened): replay TARGET DIR...

#[path = "../../harness.rs"]
mod harness;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((target, dirs)) = args.split_first() else {
        eprintln!("usage: replay TARGET DIR...");
        std::process::exit(2);
    };
    let run: fn(&[u8]) = match target.as_str() {
        "config_bytes" => harness::config_bytes,
        "config_structured" => harness::config_structured,
        "decision" => harness::decision,
        "breaker_record" => harness::breaker_record,
        "shadow_copy" => harness::shadow_copy,
        other => {
            eprintln!("unknown target {other}");
            std::process::exit(2);
        }
    };
    let mut count = 0usize;
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            eprintln!("cannot read {dir}");
            std::process::exit(2);
        };
        for entry in entries.flatten() {
            if let Ok(bytes) = std::fs::read(entry.path()) {
                run(&bytes);
                count += 1;
            }
        }
    }
    println!("{target}: {count} inputs replayed in a wasm32 build, no panic");
}
