//! The operator CLI (`traffic-split`), run as a built binary: exit codes, `--help`, every
//! command's output on known inputs, and the JSON Schema against the filter's parser.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_traffic-split");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(root())
        .output()
        .expect("run traffic-split")
}

fn run_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn traffic-split");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A temporary file holding `text`, removed on drop.
struct Temp(PathBuf);

impl Temp {
    fn new(name: &str, text: &str) -> Temp {
        let dir = std::env::temp_dir().join(format!("ts-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        Temp(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const UNLEASH: &str = r#"{"rules":[{"name":"gr","salt":"gr1","hash":"unleash",
  "sticky":{"header":"x-user-id"},
  "destinations":[{"name":"canary","cluster":"v2","weight":73},
                  {"name":"stable","cluster":"v1","weight":27}]}]}"#;

fn split(canary: u32) -> String {
    format!(
        r#"{{"rules":[{{"name":"checkout","sticky":{{"cookie":"uid"}},
          "destinations":[{{"name":"canary","cluster":"v2","weight":{canary}}},
                          {{"name":"stable","cluster":"v1","weight":{}}}]}}]}}"#,
        100 - canary
    )
}

#[test]
fn help_on_every_command_exits_0() {
    for args in [
        &["--help"][..],
        &["validate", "--help"],
        &["explain", "--help"],
        &["diff", "--help"],
        &["bucket", "--help"],
        &["schema", "--help"],
        &["rollout", "--help"],
        &["judge", "--help"],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert!(stdout(&o).contains("Usage: traffic-split"), "{args:?}");
    }
}

#[test]
fn bad_usage_exits_2_with_the_error_on_stderr() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["bucket", "--salt", "x"],
        &["bucket", "--salt", "x", "--key", "k", "--hash", "coarse"],
        &["explain"],
        &["explain", "cfg.json", "--header", "no-equals-sign"],
        &["diff", "only-one.json"],
        &["validate", "/nonexistent/cfg.json"],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stdout(&o));
        assert!(!stderr(&o).is_empty(), "{args:?}");
        assert!(stdout(&o).is_empty(), "{args:?}: {}", stdout(&o));
    }
}

#[test]
fn validate_reports_the_filters_error_with_the_file_and_exits_1() {
    let good = Temp::new("good.json", UNLEASH);
    let bad = Temp::new(
        "bad.json",
        r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a","weight":"x"}]}]}"#,
    );
    let o = run(&["validate", good.path(), bad.path()]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains(&format!("ok {}: 1 rule(s)", good.path())),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "error {}: invalid configuration: rules[0].destinations[0].weight: must be a whole number, got a string",
            bad.path()
        )),
        "{out}"
    );
    let o = run(&["validate", good.path()]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    // --json: the path and reason as fields.
    let o = run(&["validate", "--json", bad.path()]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["valid"], false);
    assert_eq!(v[0]["errors"][0]["path"], "rules[0].destinations[0].weight");
}

#[test]
fn validate_finds_configs_embedded_in_yaml_and_says_where() {
    let plugin = Temp::new(
        "plugin.yaml",
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: ts}\n\
         spec:\n  pluginConfig:\n    rules:\n    - name: r\n      destinations:\n      - {name: a, cluster: a, weight: -1}\n",
    );
    let o = run(&["validate", plugin.path()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("(document 1, WasmPlugin ts: spec.pluginConfig): invalid configuration: rules[0].destinations[0].weight: must be a whole number from 0 to 4294967295, got -1"),
        "{}",
        stdout(&o)
    );
    // Every shipped manifest and Envoy config holding a filter configuration is valid.
    let o = run(&[
        "validate",
        "envoy/demo.yaml",
        "deploy/compose/envoy.yaml",
        "deploy/istio/wasmplugin.yaml",
        "deploy/envoy-gateway/envoyextensionpolicy.yaml",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert_eq!(
        out.matches("\nok ").count() + usize::from(out.starts_with("ok ")),
        4,
        "{out}"
    );
    assert!(out.contains("EnvoyExtensionPolicy traffic-split: spec.wasm[0].config"));
    assert!(out.contains(".typed_config.config.configuration.value"));
    // A YAML file with no filter configuration is an invalid input, not a silent pass.
    let o = run(&["validate", "deploy/istio/gateway.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no traffic-split configuration found"));
    // `-` reads stdin.
    let o = run_stdin(&["validate", "-"], UNLEASH);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).starts_with("ok <stdin>: 1 rule(s)"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn validate_warns_about_unscoped_effects_shadowed_rules_and_unreachable_destinations() {
    let cfg = Temp::new(
        "warn.json",
        r#"{"rules":[
          {"name":"all","destinations":[{"name":"a","cluster":"a"},{"name":"off","cluster":"b","weight":0}],
           "shadow":[{"cluster":"s"}]},
          {"name":"never","match":{"path":{"prefix":"/x"}},"destinations":[{"name":"a","cluster":"a"}]},
          {"name":"tiny","match":{"authority":{"exact":"h"}},
           "destinations":[{"name":"a","cluster":"a","weight":1},{"name":"b","cluster":"b","weight":1000000}]}]}"#,
    );
    let o = run(&["validate", cfg.path()]);
    assert_eq!(o.status.code(), Some(0), "warnings are not errors");
    let out = stdout(&o);
    let warnings: Vec<&str> = out.lines().filter(|l| l.starts_with("warning ")).collect();
    assert_eq!(warnings.len(), 5, "{out}");
    assert!(warnings[0].ends_with("rule \"all\" has shadow but no match.authority or match.route_names: on a shared gateway it acts on every host"));
    assert!(warnings[1].contains("destination \"off\" (weight 0) owns none of the 10000 buckets"));
    assert!(warnings[2]
        .contains("rule \"never\" can never match: the earlier rule \"all\" has no conditions"));
    assert!(warnings[3].contains("rule \"tiny\" can never match"));
    // 1 of 1000001 is below one bucket of 10000: the weight rounds to no bucket at all.
    assert!(warnings[4].contains("rule \"tiny\": destination \"a\" (weight 1) owns none"));
}

/// A configuration with `fault` read from an Envoy YAML or manifest whose chain (or file) has no
/// fault filter with header control after the Wasm filter is valid but warned about; one before
/// the Wasm filter is warned about whatever the configuration.
#[test]
fn validate_warns_when_fault_has_no_fault_filter_after_the_wasm_filter() {
    let demo = std::fs::read_to_string(root().join("envoy/demo.yaml")).unwrap();
    let fault_at = demo.find("          # Envoy's fault filter").unwrap();
    let router_at = demo
        .find("          - name: envoy.filters.http.router")
        .unwrap();
    let wasm_at = demo
        .find("          - name: envoy.filters.http.wasm")
        .unwrap();
    let warnings = |yaml: &str| -> Vec<String> {
        let f = Temp::new("envoy.yaml", yaml);
        let o = run(&["validate", f.path()]);
        assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
        stdout(&o)
            .lines()
            .filter(|l| l.starts_with("warning ") && l.contains("fault"))
            .map(|l| l.rsplit(".value): ").next().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        warnings(&demo),
        Vec::<String>::new(),
        "the demo has one after"
    );
    let without = format!("{}{}", &demo[..fault_at], &demo[router_at..]);
    assert_eq!(
        warnings(&without),
        vec![
            "rule(s) chaos use fault, but no fault filter (envoy.filters.http.fault with \
              header_delay/header_abort) follows this Wasm filter before the router in its HTTP \
              filter chain: no fault is ever applied (envoy/templates/fault-filter.yaml)"
        ]
    );
    let before = format!(
        "{}{}{}{}",
        &demo[..wasm_at],
        &demo[fault_at..router_at],
        &demo[wasm_at..fault_at],
        &demo[router_at..]
    );
    let w = warnings(&before);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[1].starts_with("a fault filter with header control runs before this Wasm filter: clients can inject faults"));
    // A manifest: the EnvoyFilter in the same file counts.
    let plugin = "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: ts}
spec:
  pluginConfig:
    rules:
    - name: r
      match: {authority: {exact: h}}
      destinations: [{name: a, cluster: a}]
      fault: {percent: 5, delay_ms: 300}
";
    let f = Temp::new("plugin.yaml", plugin);
    let o = run(&["validate", f.path()]);
    assert!(stdout(&o).contains("rule(s) r use fault, but no EnvoyFilter or EnvoyPatchPolicy in this file adds Envoy's fault filter"), "{}", stdout(&o));
    let filter =
        std::fs::read_to_string(root().join("deploy/istio/envoyfilter-fault.yaml")).unwrap();
    let f = Temp::new("both.yaml", &format!("{plugin}---\n{filter}"));
    let o = run(&["validate", f.path()]);
    assert_eq!(o.status.code(), Some(0));
    assert!(!stdout(&o).contains("warning"), "{}", stdout(&o));
}

#[test]
fn bucket_matches_unleash_reference_vectors() {
    for (salt, key, hash, want) in [
        ("gr1", "123", "unleash", "73"),
        ("groupX", "999", "unleash", "25"),
    ] {
        let o = run(&["bucket", "--salt", salt, "--key", key, "--hash", hash]);
        assert_eq!(o.status.code(), Some(0));
        assert_eq!(stdout(&o).trim(), want);
    }
    let o = run(&["bucket", "--salt", "gr1", "--key", "123", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["hash"], "fine");
    let fine = v["bucket"].as_u64().unwrap();
    assert!(fine < 10_000);
    // fine and unleash share the hash: bucket_fine % 100 + 1 == bucket_unleash.
    assert_eq!(fine % 100 + 1, 73);
}

#[test]
fn explain_the_unleash_example() {
    let cfg = Temp::new("unleash.json", UNLEASH);
    let o = run(&["explain", cfg.path(), "--header", "x-user-id=123"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("rule[0] \"gr\": matched"), "{out}");
    assert!(
        out.contains("user key: \"123\" from header x-user-id"),
        "{out}"
    );
    assert!(
        out.contains("salt: \"gr1\", hash: unleash, bucket: 73"),
        "{out}"
    );
    assert!(
        out.contains("destination: canary (x-split-cluster: v2"),
        "{out}"
    );
    // Bucket 74 is the first of stable's: user 999 under gr1 lands elsewhere.
    let o = run(&["explain", cfg.path(), "--header", "x-user-id=999", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let b = v["bucket"].as_u64().unwrap();
    let want = if b <= 73 { "canary" } else { "stable" };
    assert_eq!(v["destination"]["name"], want);
}

/// A hop that routes by lanes: explain shows the lane the filter would follow, and that an
/// unsigned lane does not count once `lane_secret` is set.
#[test]
fn explain_shows_the_lane() {
    let lanes = |secret: &str| {
        format!(
            r#"{{{secret}"rules":[{{"name":"b","sticky":{{"header":"x-user-id"}},"propagate":{{"baggage":"split-lane"}},
               "from_lane":true,"destinations":[{{"name":"canary","cluster":"b2"}},{{"name":"stable","cluster":"b1"}}]}}]}}"#
        )
    };
    let cfg = Temp::new("lanes.json", &lanes(""));
    let o = run(&[
        "explain",
        cfg.path(),
        "--header",
        "baggage=k=v,split-lane=canary",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["lane"]["step"], "followed");
    assert_eq!(v["destination"]["name"], "canary");
    let signed = Temp::new(
        "signed.json",
        &lanes(r#""lane_secret":"0123456789abcdef-lanes","#),
    );
    let o = run(&[
        "explain",
        signed.path(),
        "--header",
        "baggage=split-lane=canary",
        "--header",
        "x-user-id=u1",
    ]);
    let out = stdout(&o);
    assert!(
        out.contains("lane (baggage member split-lane): started"),
        "{out}"
    );
}

#[test]
fn explain_says_why_earlier_rules_failed_and_the_side_effects() {
    let o = run(&[
        "explain",
        "envoy/demo.yaml",
        "--path",
        "/checkout/cart",
        "--method",
        "POST",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("rule[0] \"employees\": no match: match.headers x-employee: exact \"true\" does not hold"), "{out}");
    assert!(out.contains("rule[1] \"checkout\": matched"), "{out}");
    assert!(
        out.contains("user key: none (cookie uid absent or empty)"),
        "{out}"
    );
    assert!(out.contains("cookie: a new id would be assigned and bucketed: Set-Cookie: uid=<32 hex>; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax"), "{out}");
    assert!(
        out.contains("shadow v3 (cluster shadow): sampled with probability 100.00%"),
        "{out}"
    );
    let o = run(&[
        "explain",
        "envoy/demo.yaml",
        "--path",
        "/",
        "--header",
        "x-user-id=u1",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["matched"], "everyone");
    assert_eq!(
        v["skipped"][1]["failed"],
        "match.path: prefix \"/checkout\""
    );
    // The breaker's fallback is named only for a destination that has a breaker (canary).
    let dest = v["destination"]["name"].as_str().unwrap();
    assert_eq!(v.get("breaker_fallback").is_some(), dest == "canary", "{v}");
    let shares = Temp::new(
        "sampled.json",
        r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a"}],
          "shadow":[{"name":"s","cluster":"s","percent":12.5,"methods":["GET"]}]}]}"#,
    );
    let o = run(&["explain", shares.path()]);
    assert!(
        stdout(&o).contains("shadow s (cluster s): sampled with probability 12.50%"),
        "{}",
        stdout(&o)
    );
    let o = run(&["explain", shares.path(), "--method", "POST"]);
    assert!(
        stdout(&o).contains("probability 0.00% (method POST not in methods)"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn explain_an_unmatched_request() {
    let cfg = Temp::new(
        "scoped.json",
        r#"{"rules":[{"name":"r","match":{"authority":{"exact":"shop.example"}},
          "destinations":[{"name":"a","cluster":"a"}]}]}"#,
    );
    let o = run(&["explain", cfg.path(), "--authority", "other.example"]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    assert!(
        out.contains(
            "rule[0] \"r\": no match: match.authority: exact \"shop.example\" does not hold"
        ),
        "{out}"
    );
    assert!(out.contains("unmatched: no rule matches"), "{out}");
    let o = run(&["explain", cfg.path(), "--authority", "Shop.Example"]);
    assert!(
        stdout(&o).contains("rule[0] \"r\": matched"),
        "{}",
        stdout(&o)
    );
}

/// regex-lite behind `regex`: a POSIX class means what it means in RE2 (the own engine read
/// `[[:alpha:]]` as a class of `[:alph` and a literal `]`), and the 34-byte pattern that hung
/// `validate` is refused at once, with its field path.
#[test]
fn regex_posix_classes_explain_and_the_hang_pattern_is_refused() {
    let cfg = Temp::new(
        "posix.json",
        r#"{"rules":[{"name":"r","match":{"path":{"regex":"/[[:alpha:]]+"}},
          "destinations":[{"name":"a","cluster":"a"}]}]}"#,
    );
    let o = run(&["explain", cfg.path(), "--path", "/abc"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).contains("rule[0] \"r\": matched"),
        "{}",
        stdout(&o)
    );
    let o = run(&["explain", cfg.path(), "--path", "/ab1"]);
    assert!(stdout(&o).contains("unmatched"), "{}", stdout(&o));
    let hang = Temp::new(
        "hang.json",
        r#"{"rules":[{"name":"r","match":{"path":{"regex":"((((){1000}){1000}){1000}){1000}"}},"destinations":[{"name":"s","cluster":"s"}]}]}"#,
    );
    let start = std::time::Instant::now();
    let o = run(&["validate", hang.path()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains(
            "rules[0].match.path.regex: compiles to more than 1280 bytes (the regex size limit): use a simpler pattern"
        ),
        "{}",
        stdout(&o)
    );
    assert!(
        start.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn diff_5_to_20_percent_moves_exactly_15_percent_from_stable_to_canary() {
    let old = Temp::new("old.json", &split(5));
    let new = Temp::new("new.json", &split(20));
    let o = run(&["diff", old.path(), new.path()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("sticky users changing destination: exactly 15.00%"),
        "{out}"
    );
    assert!(out.contains("stable -> canary: 15.00%"), "{out}");
    assert!(!out.contains("canary -> stable"), "{out}");
    assert!(
        out.contains("shares: canary 5.00%, stable 95.00% -> canary 20.00%, stable 80.00%"),
        "{out}"
    );
    let o = run(&["diff", "--json", old.path(), new.path()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rule = &v["rules"][0];
    assert_eq!(rule["exact"], true);
    assert_eq!(rule["moves"].as_array().unwrap().len(), 1, "{rule}");
    assert_eq!(rule["moves"][0]["from"], "stable");
    assert_eq!(rule["moves"][0]["to"], "canary");
    assert!((rule["moves"][0]["share"].as_f64().unwrap() - 0.15).abs() < 1e-9);
    // The way back moves the same users back.
    let o = run(&["diff", new.path(), old.path()]);
    assert!(stdout(&o).contains("canary -> stable: 15.00%"));
}

#[test]
fn diff_user_says_whether_that_user_moves() {
    let old = Temp::new("u-old.json", &split(5));
    let new = Temp::new("u-new.json", &split(20));
    // Find users by their fine bucket under salt "checkout": 500..2000 moves, below stays.
    let bucket = |key: &str| -> u64 {
        let o = run(&["bucket", "--salt", "checkout", "--key", key, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["bucket"].as_u64().unwrap()
    };
    let keys: Vec<String> = (0..400).map(|i| format!("user-{i}")).collect();
    let mover = keys
        .iter()
        .find(|k| (500..2000).contains(&bucket(k)))
        .unwrap();
    let stayer = keys.iter().find(|k| bucket(k) >= 2000).unwrap();
    let o = run(&["diff", old.path(), new.path(), "--user", mover]);
    assert!(
        stdout(&o).contains(&format!(
            "user \"{mover}\" in rule \"checkout\": stable -> canary (moves)"
        )),
        "{}",
        stdout(&o)
    );
    let o = run(&["diff", old.path(), new.path(), "--user", stayer]);
    assert!(
        stdout(&o).contains(&format!(
            "user \"{stayer}\" in rule \"checkout\": stable -> stable (stays)"
        )),
        "{}",
        stdout(&o)
    );
}

#[test]
fn diff_rules_added_removed_reordered_and_salt_changes() {
    let old = Temp::new(
        "r-old.json",
        r#"{"rules":[{"name":"a","match":{"path":{"prefix":"/a"}},"destinations":[{"name":"x","cluster":"x"}]},
          {"name":"b","sticky":{"header":"u"},"destinations":[{"name":"x","cluster":"x"},{"name":"y","cluster":"y"}]},
          {"name":"gone","destinations":[{"name":"x","cluster":"x"}]}]}"#,
    );
    let new = Temp::new(
        "r-new.json",
        r#"{"rules":[{"name":"b","sticky":{"header":"u"},"salt":"fresh","destinations":[{"name":"x","cluster":"x"},{"name":"y","cluster":"y"}]},
          {"name":"a","match":{"path":{"prefix":"/a"}},"destinations":[{"name":"x","cluster":"x2"}]},
          {"name":"new","destinations":[{"name":"x","cluster":"x"}]}]}"#,
    );
    let o = run(&["diff", old.path(), new.path()]);
    let out = stdout(&o);
    assert!(
        out.contains("rule \"gone\": removed (was rules[2])"),
        "{out}"
    );
    assert!(out.contains("rule \"new\": added at rules[2]"), "{out}");
    assert!(out.contains("moved from rules[1] to rules[0]"), "{out}");
    assert!(out.contains("destination \"x\": cluster x -> x2"), "{out}");
    // Same weights, new salt: every user is re-bucketed, half of them expected to move.
    assert!(
        out.contains("salt or hash changed (fine \"b\" -> fine \"fresh\")"),
        "{out}"
    );
    assert!(
        out.contains("sticky users changing destination: expected 50.00%"),
        "{out}"
    );
    assert!(
        out.contains("x -> y: 25.00%") && out.contains("y -> x: 25.00%"),
        "{out}"
    );
}

#[test]
fn diff_of_an_invalid_config_exits_1() {
    let good = Temp::new("d-good.json", &split(5));
    let bad = Temp::new("d-bad.json", r#"{"rules":[{"name":"r"}]}"#);
    let o = run(&["diff", good.path(), bad.path()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("rules[0].destinations: is required"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_checked_in_schema_is_what_the_binary_prints() {
    let o = run(&["schema"]);
    assert_eq!(o.status.code(), Some(0));
    let file = std::fs::read_to_string(root().join("schema/traffic-split.schema.json")).unwrap();
    assert!(
        file == stdout(&o),
        "schema/traffic-split.schema.json is stale: run \
         `cargo run --bin traffic-split -- schema > schema/traffic-split.schema.json`"
    );
}

/// Every configuration the project ships: embedded in envoy/*.yaml and deploy/**, and the JSON
/// examples of README.md and docs/configuration.md (fragments wrapped into a configuration).
fn shipped_configs() -> Vec<(String, serde_json::Value)> {
    use traffic_split::cli::input::extract;
    let mut out = Vec::new();
    let mut yamls: Vec<PathBuf> = Vec::new();
    // envoy/ (not its templates: placeholders, not YAML) and every folder of deploy/.
    let mut dirs = vec![root().join("envoy"), root().join("examples")];
    for e in std::fs::read_dir(root().join("deploy")).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            dirs.push(p);
        }
    }
    for dir in dirs {
        // examples/ also holds plain JSON configurations (model-routing.json).
        let json_too = dir == root().join("examples");
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension()
                .is_some_and(|x| x == "yaml" || (json_too && x == "json"))
            {
                yamls.push(p);
            }
        }
    }
    // A file carries a filter configuration when it has an Envoy Wasm filter, an Istio
    // WasmPlugin or an Envoy Gateway EnvoyExtensionPolicy: each of those must yield one (a
    // silent skip would let a broken one ship). Any other file must be one with no
    // configuration at all, not one that failed to parse.
    const CARRIERS: [&str; 3] = [
        "envoy.extensions.filters.http.wasm.v3.Wasm",
        "kind: WasmPlugin",
        "kind: EnvoyExtensionPolicy",
    ];
    let mut carrying: Vec<String> = Vec::new();
    for p in &yamls {
        let bytes = std::fs::read(p).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let carries = CARRIERS.iter().any(|c| text.contains(c));
        if carries {
            let name = p.strip_prefix(root()).unwrap_or(p).display().to_string();
            carrying.push(name);
        }
        match extract(&p.display().to_string(), &bytes, false) {
            Ok(found) => {
                for e in found {
                    let v = serde_json::from_slice(&e.json)
                        .unwrap_or_else(|err| panic!("{}: {err}", e.label()));
                    out.push((e.label(), v));
                }
            }
            Err(err) => {
                let err = format!("{err:?}");
                assert!(
                    !carries,
                    "{} carries a configuration the CLI cannot extract: {err}",
                    p.display()
                );
                assert!(
                    err.contains("no traffic-split configuration found"),
                    "{}: {err}",
                    p.display()
                );
            }
        }
    }
    // The shipped files that carry one (a file moved out of these folders, or a carrier no
    // longer recognised, must not pass unnoticed; a new one is added here).
    carrying.sort();
    assert_eq!(
        carrying,
        [
            "deploy/compose/envoy.yaml",
            "deploy/envoy-gateway/envoyextensionpolicy.yaml",
            "deploy/istio-body-routing/envoyfilter.yaml",
            "deploy/istio/wasmplugin.yaml",
            "envoy/demo.yaml",
        ]
    );
    for doc in ["README.md", "docs/configuration.md"] {
        let text = std::fs::read_to_string(root().join(doc)).unwrap();
        for (i, block) in text.split("```json\n").skip(1).enumerate() {
            let block = block.split("```").next().unwrap();
            let label = format!("{doc} json block {}", i + 1);
            let v = if let Ok(v) = serde_json::from_str::<serde_json::Value>(block) {
                if v.get("cluster").is_some() {
                    // A destination.
                    serde_json::json!({"rules": [{"name": "r", "destinations": [v, {"name": "stable", "cluster": "v1", "weight": 95}]}]})
                } else {
                    v
                }
            } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(&format!(
                r#"{{"name":"r","destinations":[{}],{block}}}"#,
                // A rollout needs its destination first (with a breaker, for abort_on_breaker_open)
                // and another to take the rest.
                if block.trim_start().starts_with("\"rollout\"") {
                    r#"{"name":"canary","cluster":"v2","fallback":"stable","breaker":{}},{"name":"stable","cluster":"v1"}"#
                } else if block.trim_start().starts_with("\"judge\"") {
                    // A judge compares two destinations (those of its example).
                    r#"{"name":"canary","cluster":"v2"},{"name":"stable","cluster":"v1"}"#
                } else {
                    r#"{"name":"a","cluster":"a"}"#
                }
            )) {
                // A rule's field (`"shadow": [...]`).
                serde_json::json!({"rules": [v]})
            } else {
                panic!(
                    "{label}: not a configuration, a destination or a rule field: teach this test"
                );
            };
            out.push((label, v));
        }
    }
    out
}

/// The invalid configurations both the schema and the parser reject.
const INVALID: &[&str] = &[
    r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a"}]}],"colour":"red"}"#,
    r#"{"rules":[{"name":"r"}]}"#,
    r#"{"rules":[{"name":"r","destinations":[]}]}"#,
    r#"{"rules":[{"name":"bad name","destinations":[{"name":"a","cluster":"a"}]}]}"#,
    r#"{"rules":[{"name":"r","hash":"coarse","destinations":[{"name":"a","cluster":"a"}]}]}"#,
    r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a","weight":-1}]}]}"#,
    r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a","weight":1000001}]}]}"#,
    r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":""}]}]}"#,
    r#"{"rules":[{"name":"r","sticky":{},"destinations":[{"name":"a","cluster":"a"}]}]}"#,
    r#"{"rules":[{"name":"r","sticky":{"header":"u","cookie":"c"},"destinations":[{"name":"a","cluster":"a"}]}]}"#,
    r#"{"rules":[{"name":"r","match":{"headers":[{"name":"h"}]},"destinations":[{"name":"a","cluster":"a"}]}]}"#,
    r#"{"rules":[{"name":"r","match":{"path":{"exact":"/","prefix":"/"}},"destinations":[{"name":"a","cluster":"a"}]}]}"#,
    r#"{"rules":[{"name":"r","match":{"methods":[]},"destinations":[{"name":"a","cluster":"a"}]}]}"#,
    r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a"}],"shadow":[{"cluster":"s","percent":150}]}]}"#,
    r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a"}],"shadow":[{"cluster":"s","timeout_ms":0}]}]}"#,
    r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a"}],"shadow":[{"cluster":"s","compare_body":true}]}]}"#,
    r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a","breaker":{}},{"name":"b","cluster":"b"}]}]}"#,
    r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a","fallback":"b"},{"name":"b","cluster":"b"}]}]}"#,
    r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a","fallback":"b","breaker":{"failure_ratio":0}},{"name":"b","cluster":"b"}]}]}"#,
    r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a","fallback":"b","breaker":{"failure_statuses":["6xx"]}},{"name":"b","cluster":"b"}]}]}"#,
    r#"{"max_in_flight":0}"#,
    r#"{"clear_route_cache":"never"}"#,
    r#"{"shadow_marker_secret":"short"}"#,
    r#"{"rules":{}}"#,
    r#"{"rules":[{"name":"r","match":{"body":[{"pointer":"/m","exact":"a","prefix":"b"}]},"destinations":[{"name":"a","cluster":"a"}]}]}"#,
    r#"{"rules":[{"name":"r","match":{"body":[{"pointer":"m","exact":"a"}]},"destinations":[{"name":"a","cluster":"a"}]}]}"#,
    r#"{"rules":[{"name":"r","match":{"body":[{"exact":"a"}]},"destinations":[{"name":"a","cluster":"a"}]}]}"#,
    r#"{"rules":[{"name":"r","match":{"body":[]},"destinations":[{"name":"a","cluster":"a"}]}]}"#,
    r#"{"rules":[{"name":"r","match":{"body":[{"pointer":"/m","not":{"exact":"a","suffix":"b"}}]},"destinations":[{"name":"a","cluster":"a"}]}]}"#,
    r#"{"body_max_bytes":1048577}"#,
    r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a"}],"fault":{"percent":5}}]}"#,
    r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a"}],"fault":{"delay_ms":5}}]}"#,
    r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a"}],"fault":{"percent":5,"delay_ms":0}}]}"#,
    r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a"}],"fault":{"percent":5,"abort_status":199}}]}"#,
    r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a"}],"fault":{"percent":5,"abort_status":503,"abort_grpc_status":14}}]}"#,
    r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a"}],"fault":{"percent":5,"abort_grpc_status":"OK"}}]}"#,
];

/// Validates each document against schema/traffic-split.schema.json with Python's `jsonschema`
/// (Draft202012Validator) from .venv (installed by `make validate`): the Rust `jsonschema` crate
/// would add ~100 dependencies to every build for one test. Returns one bool per document.
fn schema_accepts(docs: &[serde_json::Value]) -> Vec<bool> {
    let python = root().join(".venv/bin/python");
    let input = Temp::new("docs.json", &serde_json::to_string(docs).unwrap());
    let script = "import json,sys\n\
        from jsonschema import Draft202012Validator as V\n\
        s=json.load(open(sys.argv[1])); V.check_schema(s); v=V(s)\n\
        print(json.dumps([v.is_valid(d) for d in json.load(open(sys.argv[2]))]))";
    let o = Command::new(&python)
        .args([
            "-c",
            script,
            "schema/traffic-split.schema.json",
            input.path(),
        ])
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}: run `make envoy validate`", python.display()));
    assert!(
        o.status.success(),
        "python jsonschema failed (install it with `make validate`): {}",
        stderr(&o)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn shipped_examples_pass_the_schema_and_the_parser_and_invalid_ones_fail_both() {
    let shipped = shipped_configs();
    assert!(
        shipped.len() >= 8,
        "found only {} shipped configurations",
        shipped.len()
    );
    let docs: Vec<serde_json::Value> = shipped.iter().map(|(_, v)| v.clone()).collect();
    for ((label, doc), ok) in shipped.iter().zip(schema_accepts(&docs)) {
        assert!(ok, "{label}: rejected by the schema");
        let parsed = traffic_split::plan::Plan::from_json(doc.to_string().as_bytes());
        assert!(parsed.is_ok(), "{label}: {:?}", parsed.err());
    }
    let invalid: Vec<serde_json::Value> = INVALID
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
    for ((text, doc), ok) in INVALID.iter().zip(&invalid).zip(schema_accepts(&invalid)) {
        assert!(!ok, "the schema accepts {text}");
        assert!(
            traffic_split::plan::Plan::from_json(doc.to_string().as_bytes()).is_err(),
            "the parser accepts {text}"
        );
    }
}

#[test]
fn paths_exist() {
    assert!(Path::new(BIN).exists());
}

/// README's "Before you deploy" shows real output: every `$ traffic-split` command there whose
/// inputs are shipped files prints exactly what follows it (the `diff` one reads an edited copy:
/// it is rebuilt here the same way).
#[test]
fn readme_before_you_deploy_shows_real_output() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme.split("## Before you deploy").nth(1).unwrap();
    let block = section
        .split("```console\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let edited = Temp::new(
        "canary-25.yaml",
        &std::fs::read_to_string(root().join("deploy/istio/wasmplugin.yaml"))
            .unwrap()
            .replace("weight: 10\n", "weight: 25\n")
            .replace("weight: 90\n", "weight: 75\n"),
    );
    let mut checked = 0;
    for example in block.split("$ traffic-split ").skip(1) {
        let (command, shown) = example.split_once('\n').unwrap();
        let command = command.split("   #").next().unwrap().trim();
        let args: Vec<&str> = command
            .split_whitespace()
            .map(|a| {
                if a == "canary-25.yaml" {
                    edited.path()
                } else {
                    a
                }
            })
            .collect();
        let o = run(&args);
        assert_eq!(o.status.code(), Some(0), "{command}");
        assert_eq!(
            stdout(&o).trim_end(),
            shown.trim_end(),
            "README output of `{command}`"
        );
        checked += 1;
    }
    assert_eq!(checked, 3);
}

const ROLLOUT: &str = r#"{"rules":[{"name":"checkout","sticky":{"header":"x-user-id"},
  "destinations":[{"name":"canary","cluster":"v2","fallback":"stable","breaker":{}},
                  {"name":"stable","cluster":"v1"}],
  "rollout":{"destination":"canary","start":"2026-12-01T10:00:00Z",
    "steps":[{"percent":1,"hold_s":600},{"percent":5,"hold_s":1800},{"percent":25,"hold_s":3600},{"percent":100}]}}]}"#;

#[test]
fn rollout_prints_the_schedule_and_the_step_at_a_time() {
    let o = run_stdin(&["rollout", "-", "--at", "2026-12-01T10:15:00Z"], ROLLOUT);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "rollout of rule \"checkout\" (destination \"canary\")\n\
         \x20 step 1/4:      1% from 2026-12-01T10:00:00Z for 600 s\n\
         \x20 step 2/4:      5% from 2026-12-01T10:10:00Z for 1800 s\n\
         \x20 step 3/4:     25% from 2026-12-01T10:40:00Z for 3600 s\n\
         \x20 step 4/4:    100% from 2026-12-01T11:40:00Z then stays\n\
         at 2026-12-01T10:15:00Z: step 2/4, 5% until 2026-12-01T10:40:00Z\n"
    );
    let o = run_stdin(
        &[
            "rollout",
            "-",
            "--at",
            "2026-12-01T10:40:00+00:00",
            "--json",
        ],
        ROLLOUT,
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (v[0]["step"].as_u64(), v[0]["basis_points"].as_u64()),
        (Some(3), Some(2500))
    );
    let o = run_stdin(&["rollout", "-", "--at", "yesterday"], ROLLOUT);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn explain_decides_with_the_rollout_share_in_force() {
    // A user whose bucket is 3009: stable until the 100% step, canary from it.
    let at = |time: &str| {
        let o = run_stdin(
            &[
                "explain",
                "-",
                "--header",
                "x-user-id=alice",
                "--at",
                time,
                "--json",
            ],
            ROLLOUT,
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["bucket"].as_u64(), Some(3009));
        (
            v["rollout"]["step"].as_u64().unwrap(),
            v["rollout"]["basis_points"].as_u64().unwrap(),
            v["destination"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    assert_eq!(at("2026-12-01T09:59:59Z"), (0, 0, "stable".to_string()));
    assert_eq!(at("2026-12-01T11:00:00Z"), (3, 2500, "stable".to_string()));
    assert_eq!(
        at("2026-12-01T11:40:00Z"),
        (4, 10_000, "canary".to_string())
    );
    // A destination with no bucket before start is not reported as unreachable.
    let o = run_stdin(&["validate", "-"], ROLLOUT);
    assert!(!stdout(&o).contains("owns none"), "{}", stdout(&o));
}

const MODEL_ROUTING: &str = r#"{"rules":[
  {"name":"stream","match":{"body":[{"pointer":"/stream","exact":"true"}]},"destinations":[{"name":"streaming","cluster":"streaming"}]},
  {"name":"small","match":{"body":[{"pointer":"/model","exact":"small"}]},"destinations":[{"name":"small","cluster":"small"}]},
  {"name":"rest","destinations":[{"name":"other","cluster":"other"}]}]}"#;

#[test]
fn explain_with_a_body_shows_the_body_conditions_and_the_decision() {
    let config = Temp::new("model.json", MODEL_ROUTING);
    let body = Temp::new(
        "request.json",
        r#"{"model":"small","stream":false,"messages":[]}"#,
    );
    let at = format!("@{}", body.path());
    let o = run(&["explain", config.path(), "--body", &at]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("body: 46 bytes, JSON"), "{out}");
    assert!(
        out.contains(
            r#"rule[0] "stream": no match: match.body "/stream": exact "true" does not hold"#
        ),
        "{out}"
    );
    assert!(out.contains(r#"rule[1] "small": matched"#), "{out}");
    // Invalid JSON and a non-JSON content-type: the body conditions do not hold.
    let o = run(&["explain", config.path(), "--body", r#"{"model":"#, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["body"]["state"].as_str(), v["matched"].as_str()),
        (Some("invalid"), Some("rest"))
    );
    let o = run(&[
        "explain",
        config.path(),
        "--body",
        &at,
        "--header",
        "content-type=text/plain",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["body"]["state"].as_str(), v["matched"].as_str()),
        (Some("not_read"), Some("rest"))
    );
    // A GET is never held, whatever it carries.
    let o = run(&[
        "explain",
        config.path(),
        "--body",
        &at,
        "--method",
        "GET",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["matched"].as_str(), Some("rest"));
}

#[test]
fn validate_warns_when_match_body_lacks_allow_on_headers_stop_iteration() {
    let warning = "use match.body, but this Wasm filter lacks allow_on_headers_stop_iteration";
    // The shipped Istio EnvoyFilter and Envoy Gateway policies (with their patch) have it.
    let shipped =
        std::fs::read_to_string(root().join("deploy/envoy-gateway/envoyextensionpolicy.yaml"))
            .unwrap()
            + "---\n"
            + &std::fs::read_to_string(root().join("deploy/envoy-gateway/envoypatchpolicy.yaml"))
                .unwrap();
    let eg = Temp::new("eg.yaml", &shipped);
    let o = run(&[
        "validate",
        "deploy/istio-body-routing/envoyfilter.yaml",
        eg.path(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains(warning), "{}", stdout(&o));
    // Without it: the EnvoyFilter, the policy alone, a WasmPlugin, an Envoy bootstrap.
    let ef = std::fs::read_to_string(root().join("deploy/istio-body-routing/envoyfilter.yaml"))
        .unwrap()
        .replace("allow_on_headers_stop_iteration: true", "");
    let ef = Temp::new("ef.yaml", &ef);
    let plugin = Temp::new(
        "wp.yaml",
        &format!("apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: t}}\nspec:\n  pluginConfig: {MODEL_ROUTING}\n"),
    );
    for (file, hint) in [
        (
            ef.path(),
            "set allow_on_headers_stop_iteration: true in this Wasm filter's config",
        ),
        (
            "deploy/envoy-gateway/envoyextensionpolicy.yaml",
            "add an EnvoyPatchPolicy",
        ),
        (plugin.path(), "load the filter with an EnvoyFilter"),
    ] {
        let o = run(&["validate", file]);
        assert!(o.status.success(), "{file}: {}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains(warning) && out.contains(hint), "{file}: {out}");
    }
    // A bare JSON configuration says nothing of Envoy: no warning.
    let json = Temp::new("m.json", MODEL_ROUTING);
    assert!(!stdout(&run(&["validate", json.path()])).contains(warning));
}

const JUDGED: &str = r#"{"rules":[{"name":"checkout","destinations":[
    {"name":"canary","cluster":"v2","weight":5},{"name":"stable","cluster":"v1","weight":95}],
  "rollout":{"destination":"canary","start":"2026-12-01T10:00:00Z",
    "steps":[{"percent":5,"hold_s":600},{"percent":100}]},
  "judge":{"window_s":30,"min_requests":200,"errors":{"max_increase":0.02},"fail_after":3}}]}"#;

#[test]
fn judge_prints_the_verdict_and_why_from_the_filters_code() {
    let o = run(&["judge", "--canary", "412/33", "--baseline", "3950/44"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "verdict: fail\n\
         canary failures 8.0% (412 req) vs baseline 1.1% (3,950 req), allowed +1.0 pp at 99%\n\
         fail: its failure ratio is above the baseline's by more than allowed (Agresti-Caffo z = 4.47, fails above 2.33)\n"
    );
    let o = run(&[
        "judge",
        "--canary",
        "99/99",
        "--baseline",
        "3950/44",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["verdict"], "inconclusive");
    // The rule's judge: min_requests 200 and a 2 pp margin.
    let o = run_stdin(
        &[
            "judge",
            "--canary",
            "412/33",
            "--baseline",
            "3950/44",
            "--config",
            "-",
        ],
        JUDGED,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("rule \"checkout\"\nverdict: fail\n"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("allowed +2.0 pp at 99%"),
        "{}",
        stdout(&o)
    );
    let o = run_stdin(
        &[
            "judge",
            "--canary",
            "150/33",
            "--baseline",
            "3950/44",
            "--config",
            "-",
            "--rule",
            "checkout",
        ],
        JUDGED,
    );
    assert!(
        stdout(&o).contains("verdict: inconclusive"),
        "{}",
        stdout(&o)
    );
    let o = run(&["judge", "--canary", "4/5", "--baseline", "1/0"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run_stdin(
        &[
            "judge",
            "--canary",
            "4/1",
            "--baseline",
            "1/0",
            "--config",
            "-",
            "--rule",
            "nope",
        ],
        JUDGED,
    );
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn explain_and_rollout_show_the_rules_judge() {
    let want = "judge: \"canary\" vs \"stable\" every 30 s (min 200 req per arm): failures at \
                most +2.0 pp at 99%; 3 failing window(s) in a row -> abort the rollout; at most 4 \
                baseline outcomes judged per canary outcome";
    let o = run_stdin(&["explain", "-", "--at", "2026-12-01T10:15:00Z"], JUDGED);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains(want), "{}", stdout(&o));
    let o = run_stdin(&["rollout", "-", "--at", "2026-12-01T10:15:00Z"], JUDGED);
    assert!(stdout(&o).contains(want), "{}", stdout(&o));
}

/// soak/soak.py's "no Wasm VM died" check: a reload counter that does not exist is an error,
/// never a pass (it used to pass when Envoy reported no `vm_reload` stat at all).
#[test]
fn the_soak_takes_a_missing_vm_reload_stat_for_an_error() {
    let script = r#"
import sys
sys.path.insert(0, sys.argv[1])
import soak
zero = {k: 0 for k in soak.VM_RELOAD_STATS}
assert soak.no_vm_died(zero, 0)[0], soak.no_vm_died(zero, 0)
for k in soak.VM_RELOAD_STATS:
    partial = {n: 0 for n in soak.VM_RELOAD_STATS if n != k}
    ok, detail = soak.no_vm_died(partial, 0)
    assert not ok and "MISSING " + k in detail, detail
assert not soak.no_vm_died({}, 0)[0]
assert not soak.no_vm_died(dict(zero, **{soak.VM_RELOAD_STATS[0]: 1}), 0)[0]
assert not soak.no_vm_died(zero, 1)[0]
"#;
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(root().join("soak"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `explain` says when a `regex` was not evaluated because the value was over the pattern's cap.
#[test]
fn explain_says_a_value_was_over_the_regex_cap() {
    let cfg = Temp::new(
        "regex-cap.json",
        r#"{"rules":[{"name":"mobile","match":{"headers":[{"name":"user-agent","regex":".*Android.*"}]},"destinations":[{"name":"m","cluster":"canary"}]},
                     {"name":"rest","destinations":[{"name":"s","cluster":"stable"}]}]}"#,
    );
    let cap = traffic_split::pattern::Pattern::new(".*Android.*", false)
        .unwrap()
        .max_value_len();
    let ua = |len: usize| format!("user-agent=Android{}", "x".repeat(len - 7));
    let o = run(&["explain", cfg.path(), "--header", &ua(cap)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("rule[0] \"mobile\": matched"),
        "{}",
        stdout(&o)
    );
    let o = run(&["explain", cfg.path(), "--header", &ua(cap + 1)]);
    let out = stdout(&o);
    assert!(
        out.contains(&format!(
            "rule[0] \"mobile\": no match: match.headers user-agent: regex \".*Android.*\" \
             (the value is over the pattern's cap of {cap} bytes: not evaluated) does not hold"
        )),
        "{out}"
    );
}

/// The same for the text at a `match.body` pointer.
#[test]
fn explain_says_a_body_text_was_over_the_regex_cap() {
    let cfg = Temp::new(
        "body-regex-cap.json",
        r#"{"rules":[{"name":"gpt","match":{"body":[{"pointer":"/model","regex":"gpt-.*"}]},"destinations":[{"name":"m","cluster":"small"}]}]}"#,
    );
    let cap = traffic_split::pattern::Pattern::new("gpt-.*", false)
        .unwrap()
        .max_value_len();
    let body = |len: usize| format!(r#"{{"model":"gpt-{}"}}"#, "x".repeat(len - 4));
    let o = run(&["explain", cfg.path(), "--body", &body(cap)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("rule[0] \"gpt\": matched"),
        "{}",
        stdout(&o)
    );
    let o = run(&["explain", cfg.path(), "--body", &body(cap + 1)]);
    let out = stdout(&o);
    assert!(
        out.contains(&format!(
            "rule[0] \"gpt\": no match: match.body \"/model\": regex \"gpt-.*\" \
             (the value is over the pattern's cap of {cap} bytes: not evaluated) does not hold"
        )),
        "{out}"
    );
}
