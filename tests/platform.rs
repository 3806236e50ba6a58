//! End-to-end: platform behaviour the deployment docs rely on (docs/deploy.md), in real Envoy.
//! - `clear_route_cache: "always"` keeps routing right behind a filter that resolved the route
//!   before this one ran (a Lua filter reading route metadata).
//! - Remote module fetch (`vm_config.code.remote`, `http_uri` + `sha256`): a verified module is
//!   loaded and runs; a wrong digest is refused, and then nothing is routed by the module it did
//!   not verify: fail closed answers 503, fail open skips the filter (and a client-sent routing
//!   header then picks the route, which only an early removal that re-picks the route stops).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Routes `x-go: canary` requests to canary; everything else is unmatched (default: stable).
const CONFIG_ALWAYS: &str = r#"{"clear_route_cache":"always","rules":[{"name":"go",
    "match":{"headers":[{"name":"x-go","exact":"canary"}]},
    "destinations":[{"name":"canary","cluster":"canary"}]}]}"#;

/// Route metadata the Lua filter reads, so the test sees which route was resolved before the
/// Wasm filter ran.
const SPLIT_ROUTE: &str = "              - name: split\n                match:";
const DEFAULT_ROUTE: &str = "              - name: default\n                match:";
const WASM_FILTER: &str = "          http_filters:\n          - name: envoy.filters.http.wasm";

/// A Lua filter before the Wasm filter that resolves the route (`metadata()` reads the route's
/// metadata) and keeps its name in dynamic metadata, without touching headers (a Lua header
/// change would clear the route cache itself), then reports it as `x-early-route`.
fn early_route_lua() -> String {
    format!(
        r#"          http_filters:
          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  function envoy_on_request(h)
                    local name = h:metadata():get("route") or "none"
                    h:streamInfo():dynamicMetadata():set("early", "route", name)
                  end
                  function envoy_on_response(h)
                    local md = h:streamInfo():dynamicMetadata():get("early")
                    h:headers():add("x-early-route", md and md["route"] or "unset")
                  end
{}"#,
        "          - name: envoy.filters.http.wasm"
    )
}

fn with_route_metadata(spec: EnvoySpec) -> EnvoySpec {
    // `metadata` goes between each route's name and its match.
    let named = |name: &str| {
        format!(
            "              - name: {name}\n                metadata: {{ filter_metadata: {{ envoy.filters.http.lua: {{ route: {name} }} }} }}\n                match:"
        )
    };
    spec.patch(SPLIT_ROUTE, &named("split"))
        .patch(DEFAULT_ROUTE, &named("default"))
        .patch(WASM_FILTER, &early_route_lua())
}

fn route_cache_spec(config: &str, stable: &Backend, canary: &Backend) -> EnvoySpec {
    with_route_metadata(
        EnvoySpec::new(config)
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr),
    )
}

/// Behind a filter that resolved the route with the client's headers, the filter's header
/// write (and its removal of a forged header) still decides the route with "always".
#[test]
fn always_clears_the_route_cache_behind_a_filter_that_resolved_the_route_early() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let envoy = Envoy::start(route_cache_spec(CONFIG_ALWAYS, &stable, &canary));

    // Matched: the early route was `default` (no routing header yet); the filter's write wins.
    let r = envoy.get("/", &[("x-go", "canary")]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-early-route"), Some("default"), "{r:?}");
    assert_eq!(r.backend(), "canary", "{r:?}");

    // Matched, with a forged header naming another cluster: the early route was `split` for
    // stable; the filter's value (canary) wins.
    let r = envoy.get("/", &[("x-go", "canary"), ("x-split-cluster", "stable")]);
    assert_eq!(r.header("x-early-route"), Some("split"), "{r:?}");
    assert_eq!(r.backend(), "canary", "{r:?}");

    // Unmatched with a forged header: the early route was `split` for canary; the filter
    // removed the header, so the route is re-picked: default, stable.
    let r = envoy.get("/", &[("x-split-cluster", "canary")]);
    assert_eq!(r.header("x-early-route"), Some("split"), "{r:?}");
    assert_eq!(r.backend(), "stable", "{r:?}");
    assert_eq!(
        canary.count(),
        2,
        "only the two matched requests reach canary"
    );

    let log = envoy.log();
    assert!(
        log.contains("clear_route_cache=always; host clears on header changes: yes (ABI 0.2.1); explicit clear_route_cache: available"),
        "no load-time route-cache line in the log:\n{log}"
    );
}

/// The default ("auto") relies on Envoy clearing the route cache on header changes for the
/// ABI the module declares; this proves that carve-out holds on the Envoy under test (run on
/// 1.36 and 1.40 by `make test` / `make test-envoy`).
#[test]
fn auto_relies_on_the_hosts_own_clearing_which_holds_on_this_envoy() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let config = CONFIG_ALWAYS.replace(r#""clear_route_cache":"always","#, "");
    let envoy = Envoy::start(route_cache_spec(&config, &stable, &canary));
    let r = envoy.get("/", &[("x-go", "canary"), ("x-split-cluster", "stable")]);
    assert_eq!(r.header("x-early-route"), Some("split"), "{r:?}");
    assert_eq!(r.backend(), "canary", "{r:?}");
    let r = envoy.get("/", &[("x-split-cluster", "canary")]);
    assert_eq!(r.header("x-early-route"), Some("split"), "{r:?}");
    assert_eq!(r.backend(), "stable", "{r:?}");
    assert!(envoy
        .log()
        .contains("clear_route_cache=auto; host clears on header changes: yes (ABI 0.2.1)"));
}

/// A rule with a cookie/shadow/breaker and no host or route scope is accepted, with a warning.
#[test]
fn unscoped_rules_with_side_effects_are_warned_about_at_load() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let config = r#"{"rules":[
      {"name":"scoped","match":{"authority":{"exact":"shop.example.com"}},
       "sticky":{"cookie":"uid","assign_cookie":true},
       "destinations":[{"name":"stable","cluster":"stable"}]},
      {"name":"everyone","sticky":{"cookie":"uid","assign_cookie":true},
       "destinations":[{"name":"stable","cluster":"stable"}]}]}"#;
    let envoy = Envoy::start(
        EnvoySpec::new(config)
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr),
    );
    assert_eq!(envoy.get("/", &[]).backend(), "stable");
    let log = envoy.log();
    assert!(
        log.contains("rule \"everyone\" has sticky.assign_cookie but no match.authority or match.route_names"),
        "{log}"
    );
    assert!(!log.contains("rule \"scoped\" has"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// Remote fetch

/// Serves one file over HTTP/1.1 on 127.0.0.1 (one request per connection) and counts GETs.
struct FileServer {
    addr: SocketAddr,
    gets: Arc<AtomicUsize>,
}

impl FileServer {
    fn start(bytes: Vec<u8>) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let gets = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&gets);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                // Read the request head; the fetch has no body.
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/wasm\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    bytes.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&bytes);
            }
        });
        FileServer { addr, gets }
    }
}

const CODE_LOCAL: &str = "code: { local: { filename:";
const CLUSTERS: &str = "  clusters:\n";

/// The harness's bootstrap with the module fetched from `server` instead of a local file.
fn remote_spec(
    config: &str,
    server: &FileServer,
    sha256: &str,
    failure_policy: &str,
    (stable, canary): &(Backend, Backend),
) -> EnvoySpec {
    // The local `code` line is replaced as a whole: cut it at the filename's closing braces.
    let wasm = wasm_path();
    let local_line = format!("{CODE_LOCAL} \"{}\" }} }}", wasm.display());
    let remote = format!(
        "code:\n                    remote:\n                      http_uri: {{ uri: \"http://{addr}/traffic_split.wasm\", cluster: wasm_server, timeout: 5s }}\n                      sha256: \"{sha256}\"\n                      retry_policy: {{ num_retries: 2 }}",
        addr = server.addr
    );
    let cluster = format!(
        "  clusters:\n  - name: wasm_server\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: wasm_server\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}\n",
        server.addr.port()
    );
    EnvoySpec::new(config)
        .cluster("stable", stable.addr)
        .cluster("canary", canary.addr)
        .patch(&local_line, &remote)
        .patch(CLUSTERS, &cluster)
        .patch(
            "                vm_config:",
            &format!(
                "                failure_policy: {failure_policy}\n                vm_config:"
            ),
        )
}

/// The digest Envoy checks, from coreutils' `sha256sum` (no hashing crate needed for tests).
fn sha256_hex(bytes: &[u8]) -> String {
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils)");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    let hex = String::from_utf8(out.stdout).unwrap();
    hex.split_whitespace().next().unwrap().to_string()
}

fn backends() -> (Backend, Backend) {
    (Backend::start("stable"), Backend::start("canary"))
}

fn module() -> Vec<u8> {
    std::fs::read(wasm_path()).unwrap()
}

/// Every request goes to canary when the filter runs (its one rule matches everything).
const CONFIG_ALL_CANARY: &str =
    r#"{"rules":[{"name":"all","destinations":[{"name":"canary","cluster":"canary"}]}]}"#;

#[test]
fn remote_module_with_the_right_sha256_is_fetched_once_and_routes() {
    let bytes = module();
    let server = FileServer::start(bytes.clone());
    let backends = backends();
    let envoy = Envoy::start(remote_spec(
        CONFIG_ALL_CANARY,
        &server,
        &sha256_hex(&bytes),
        "FAIL_CLOSED",
        &backends,
    ));
    for _ in 0..5 {
        let r = envoy.get("/", &[("x-split-cluster", "stable")]);
        assert_eq!((r.status, r.backend()), (200, "canary"), "{r:?}");
    }
    // One fetch at startup, shared by every worker; requests never fetch again.
    assert_eq!(server.gets.load(Ordering::SeqCst), 1);
    let routed = "traffic_split.rule.all.destination.canary.requests";
    envoy.wait_counter(routed, 5);
    assert_eq!(envoy.settled_counter(routed), 5);
    assert_eq!(
        backends.0.count(),
        0,
        "the forged header never reached stable"
    );
}

#[test]
fn remote_module_with_a_wrong_sha256_is_refused_after_its_retries_and_fails_closed() {
    let bytes = module();
    let server = FileServer::start(bytes.clone());
    let mut wrong = bytes.clone();
    wrong.push(0);
    let backends = backends();
    let started = Instant::now();
    let envoy = Envoy::start(remote_spec(
        CONFIG_ALL_CANARY,
        &server,
        &sha256_hex(&wrong),
        "FAIL_CLOSED",
        &backends,
    ));
    let startup = started.elapsed();
    // The first fetch plus num_retries (2): a digest mismatch is retried like a failed fetch.
    assert_eq!(server.gets.load(Ordering::SeqCst), 3);
    for headers in [vec![], vec![("x-split-cluster", "canary")]] {
        let r = envoy.get("/", &headers);
        assert_eq!((r.status, r.backend()), (503, ""), "{r:?}");
    }
    assert_eq!(
        (backends.0.count(), backends.1.count()),
        (0, 0),
        "nothing was routed"
    );
    let log = envoy.log();
    assert!(
        log.contains("Retry limit exceeded for fetching data from remote data source"),
        "{log}"
    );
    assert!(log.contains("Plugin traffic-split failed to load"), "{log}");
    eprintln!("startup with a refused module took {startup:?}");
}

/// Fail open: the refused module is skipped, so nothing removes a client-sent routing header
/// and it picks the route. Only a removal before routing that also re-picks the route (here a
/// Lua filter: its header changes clear the route cache) stops that; a route's
/// `request_headers_to_remove` does not, since it applies after the route was chosen.
#[test]
fn remote_module_refused_with_fail_open_lets_a_forged_header_route_unless_removed_early() {
    let bytes = module();
    let mut wrong = bytes.clone();
    wrong.push(0);
    let server = FileServer::start(bytes);
    let wrong_sha = sha256_hex(&wrong);
    let backends = backends();

    let envoy = Envoy::start(remote_spec(
        CONFIG_ALL_CANARY,
        &server,
        &wrong_sha,
        "FAIL_OPEN",
        &backends,
    ));
    let r = envoy.get("/", &[]);
    assert_eq!(
        r.backend(),
        "stable",
        "the filter did not run: default route: {r:?}"
    );
    let r = envoy.get("/", &[("x-split-cluster", "canary")]);
    assert_eq!(
        r.backend(),
        "canary",
        "a forged header picks the route: {r:?}"
    );
    drop(envoy);

    // Route-level removal: the header is gone upstream, but the route was already chosen.
    let envoy = Envoy::start(
        remote_spec(CONFIG_ALL_CANARY, &server, &wrong_sha, "FAIL_OPEN", &backends).patch(
            "                route: { cluster_header: x-split-cluster, timeout: 5s }\n              - name: default",
            "                route: { cluster_header: x-split-cluster, timeout: 5s }\n                request_headers_to_remove: [x-split-cluster]\n              - name: default",
        ),
    );
    let r = envoy.get("/", &[("x-split-cluster", "canary")]);
    assert_eq!(
        r.backend(),
        "canary",
        "route-level removal does not stop it: {r:?}"
    );
    drop(envoy);

    // An early removal that re-picks the route does.
    let lua = r#"          http_filters:
          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  function envoy_on_request(h) h:headers():remove("x-split-cluster") end
          - name: envoy.filters.http.wasm"#;
    let envoy = Envoy::start(
        remote_spec(
            CONFIG_ALL_CANARY,
            &server,
            &wrong_sha,
            "FAIL_OPEN",
            &backends,
        )
        .patch(WASM_FILTER, lua),
    );
    let r = envoy.get("/", &[("x-split-cluster", "canary")]);
    assert_eq!(r.backend(), "stable", "{r:?}");
}
