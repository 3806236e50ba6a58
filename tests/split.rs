//! End-to-end: the core filter (split, stick, target) in a real Envoy with real backends.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use traffic_split::bucket::{bucket_of_hash, destination_for, murmur3_of, upper_bounds};
use traffic_split::config::HashKind;

fn two_backends() -> (Backend, Backend) {
    (Backend::start("stable"), Backend::start("canary"))
}

fn spec(config: &str, stable: &Backend, canary: &Backend) -> EnvoySpec {
    EnvoySpec::new(config)
        .cluster("stable", stable.addr)
        .cluster("canary", canary.addr)
}

/// Sends `n` requests from `threads` clients (own connections each), returning the backend
/// that answered each, in no particular order.
fn load(envoy: &Envoy, n: usize, threads: usize, headers: &[(&str, &str)]) -> Vec<String> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    (0..n / threads)
                        .map(|_| {
                            let r = envoy.get("/", headers);
                            assert_eq!(r.status, 200, "{r:?}");
                            r.backend().to_string()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

#[test]
fn weighted_random_split_lands_within_four_sigma_and_is_counted() {
    let (stable, canary) = two_backends();
    let config = r#"{"rules":[{"name":"checkout","destinations":[
        {"name":"canary","cluster":"canary","weight":25},
        {"name":"stable","cluster":"stable","weight":75}]}]}"#;
    let envoy = Envoy::start(spec(config, &stable, &canary));
    let n = 2000;
    let answers = load(&envoy, n, 4, &[]);
    let to_canary = answers.iter().filter(|b| *b == "canary").count();
    assert_eq!(answers.len(), n);
    assert_binomial(to_canary, n, 0.25, "canary share");
    assert_eq!(canary.count(), to_canary);
    assert_eq!(stable.count(), n - to_canary);

    // Metrics agree with what the backends saw, and Prometheus gets rule/destination labels.
    let name = "traffic_split.rule.checkout.destination.canary.requests";
    assert_eq!(envoy.wait_counter(name, to_canary as u64), to_canary as u64);
    let name = "traffic_split.rule.checkout.destination.stable.requests";
    assert_eq!(
        envoy.wait_counter(name, (n - to_canary) as u64),
        (n - to_canary) as u64
    );
    let prom = envoy.admin_get("/stats/prometheus");
    let line = |dest: &str, count: usize| {
        format!(
            "traffic_split_rule_destination_requests{{rule=\"checkout\",destination=\"{dest}\"}} {count}"
        )
    };
    assert!(prom.contains(&line("canary", to_canary)), "{prom}");
    assert!(prom.contains(&line("stable", n - to_canary)), "{prom}");
    assert!(prom.contains("traffic_split_unmatched{} 0"), "{prom}");
}

/// The destination the core's bucketing predicts for `user` under `weights` (fine hash).
fn predicted(salt: &str, user: &str, weights: &[u32]) -> usize {
    let salt_colon = format!("{salt}:");
    let bucket = bucket_of_hash(
        HashKind::Fine,
        murmur3_of(salt_colon.as_bytes(), user.as_bytes()),
    );
    destination_for(&upper_bounds(HashKind::Fine, weights), bucket)
}

fn sticky_config(canary_weight: u32) -> String {
    format!(
        r#"{{"rules":[{{"name":"checkout","salt":"checkout-2026-11","sticky":{{"header":"x-user-id"}},
            "destinations":[{{"name":"canary","cluster":"canary","weight":{canary_weight}}},
                            {{"name":"stable","cluster":"stable","weight":{}}}]}}]}}"#,
        100 - canary_weight
    )
}

/// Which backend each user lands on; every user is asked `repeats` times over fresh
/// connections (so both workers serve them) and must always get the same answer.
fn landing(envoy: &Envoy, users: &[String], repeats: usize) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for user in users {
        let mut seen = Vec::new();
        for _ in 0..repeats {
            let r = Resp::from(
                ureq::AgentBuilder::new()
                    .build()
                    .get(&envoy.url("/"))
                    .set("x-user-id", user)
                    .call(),
            );
            seen.push(r.backend().to_string());
        }
        assert!(
            seen.iter().all(|b| *b == seen[0]),
            "user {user} moved between backends: {seen:?}"
        );
        out.insert(user.clone(), seen[0].clone());
    }
    out
}

#[test]
fn sticky_users_always_land_where_murmur3_puts_them() {
    let (stable, canary) = two_backends();
    let envoy = Envoy::start(spec(&sticky_config(30), &stable, &canary));
    let users: Vec<String> = (0..150).map(|i| format!("user-{i}")).collect();
    let landed = landing(&envoy, &users, 4);
    for (user, backend) in &landed {
        let expected = ["canary", "stable"][predicted("checkout-2026-11", user, &[30, 70])];
        assert_eq!(backend, expected, "user {user}");
    }
    // The upstream learns its experiment arm from the variant header.
    for r in canary.received() {
        assert_eq!(r.header("x-split-variant"), Some("canary"));
        assert_eq!(r.header("x-split-cluster"), Some("canary"));
    }
}

#[test]
fn raising_the_canary_share_never_moves_a_canary_user_out() {
    let (stable, canary) = two_backends();
    let users: Vec<String> = (0..400).map(|i| format!("u{i}")).collect();
    let mut previous: Option<HashMap<String, String>> = None;
    for weight in [5, 20, 50] {
        let envoy = Envoy::start(spec(&sticky_config(weight), &stable, &canary));
        let landed = landing(&envoy, &users, 1);
        let on_canary = landed.values().filter(|b| *b == "canary").count();
        assert_binomial(
            on_canary,
            users.len(),
            f64::from(weight) / 100.0,
            "canary users",
        );
        if let Some(prev) = &previous {
            for (user, backend) in prev {
                if backend == "canary" {
                    assert_eq!(
                        landed[user], "canary",
                        "{user} left the canary at {weight}%"
                    );
                }
            }
        }
        previous = Some(landed);
    }
}

#[test]
fn unleash_hash_matches_unleash_gradual_rollout_vectors() {
    let (stable, canary) = two_backends();
    // gr1:123 is in bucket 73 and groupX:999 in bucket 25: in at those percentages, out below.
    let rule = |name: &str, salt: &str, pct: u32| {
        format!(
            r#"{{"name":"{name}","match":{{"headers":[{{"name":"x-case","exact":"{name}"}}]}},
                "hash":"unleash","salt":"{salt}","sticky":{{"header":"x-user-id"}},
                "destinations":[{{"name":"on","cluster":"canary","weight":{pct}}},
                                {{"name":"off","cluster":"stable","weight":{}}}]}}"#,
            100 - pct
        )
    };
    let config = format!(
        r#"{{"rules":[{},{},{},{}]}}"#,
        rule("gr1-73", "gr1", 73),
        rule("gr1-72", "gr1", 72),
        rule("groupx-25", "groupX", 25),
        rule("groupx-24", "groupX", 24)
    );
    let envoy = Envoy::start(spec(&config, &stable, &canary));
    for (case, user, expected) in [
        ("gr1-73", "123", "canary"),
        ("gr1-72", "123", "stable"),
        ("groupx-25", "999", "canary"),
        ("groupx-24", "999", "stable"),
    ] {
        let r = envoy.get("/", &[("x-case", case), ("x-user-id", user)]);
        assert_eq!(r.backend(), expected, "{case} user {user}");
    }
}

#[test]
fn rules_apply_in_order_and_every_match_operator_works() {
    let (stable, canary) = two_backends();
    let to = |rule: &str, cond: &str| {
        format!(
            r#"{{"name":"{rule}","match":{cond},"destinations":[{{"name":"v-{rule}","cluster":"canary"}}]}}"#
        )
    };
    let rules = [
        to(
            "first",
            r#"{"headers":[{"name":"x-order","present":true}]}"#,
        ),
        to("second", r#"{"headers":[{"name":"x-order","exact":"1"}]}"#),
        to(
            "h-exact",
            r#"{"headers":[{"name":"X-Op","exact":"exact"}]}"#,
        ),
        to(
            "h-prefix",
            r#"{"headers":[{"name":"x-op","prefix":"pre-"}]}"#,
        ),
        to(
            "h-suffix",
            r#"{"headers":[{"name":"x-op","suffix":"-suf"}]}"#,
        ),
        to(
            "h-one-of",
            r#"{"headers":[{"name":"x-op","one_of":["a","b"]}]}"#,
        ),
        to(
            "h-absent",
            r#"{"headers":[{"name":"x-op","present":false},{"name":"x-absent-case","present":true}]}"#,
        ),
        to("cookie", r#"{"cookies":[{"name":"beta","exact":"yes"}]}"#),
        to("query", r#"{"query":[{"name":"ring","one_of":["early"]}]}"#),
        to("p-exact", r#"{"path":{"exact":"/exact"}}"#),
        to("p-suffix", r#"{"path":{"suffix":".json"}}"#),
        to("method", r#"{"methods":["DELETE"]}"#),
        to("authority", r#"{"authority":{"prefix":"beta."}}"#),
        to("route", r#"{"route_names":["api"]}"#),
        to("p-prefix", r#"{"path":{"prefix":"/prefixed/"}}"#),
    ];
    let config = format!(r#"{{"debug_header":true,"rules":[{}]}}"#, rules.join(","));
    let envoy = Envoy::start(spec(&config, &stable, &canary));
    let case = |method: &str, path: &str, headers: &[(&str, &str)]| {
        let mut req = envoy.request(method, path);
        for (n, v) in headers {
            req = req.set(n, v);
        }
        let r = Resp::from(req.call());
        r.header("x-split-decision").map(str::to_string)
    };
    let decided = |rule: &str| Some(format!("rule={rule}; variant=v-{rule}"));
    assert_eq!(case("GET", "/", &[("x-order", "1")]), decided("first"));
    assert_eq!(case("GET", "/", &[("x-op", "exact")]), decided("h-exact"));
    assert_eq!(case("GET", "/", &[("x-op", "exact-not")]), None);
    assert_eq!(case("GET", "/", &[("x-op", "pre-x")]), decided("h-prefix"));
    assert_eq!(case("GET", "/", &[("x-op", "x-suf")]), decided("h-suffix"));
    assert_eq!(case("GET", "/", &[("x-op", "b")]), decided("h-one-of"));
    assert_eq!(
        case("GET", "/", &[("x-absent-case", "1")]),
        decided("h-absent")
    );
    assert_eq!(
        case("GET", "/", &[("x-absent-case", "1"), ("x-op", "zzz")]),
        None
    );
    assert_eq!(
        case("GET", "/", &[("cookie", "a=1; beta=yes")]),
        decided("cookie")
    );
    assert_eq!(case("GET", "/", &[("cookie", "beta=no")]), None);
    assert_eq!(case("GET", "/x?a=1&ring=early", &[]), decided("query"));
    assert_eq!(case("GET", "/x?ring=late", &[]), None);
    assert_eq!(case("GET", "/exact?q=1", &[]), decided("p-exact"));
    assert_eq!(case("GET", "/exact/more", &[]), None);
    assert_eq!(case("GET", "/data/file.json", &[]), decided("p-suffix"));
    assert_eq!(case("DELETE", "/", &[]), decided("method"));
    assert_eq!(
        case("GET", "/", &[("host", "beta.shop.example")]),
        decided("authority")
    );
    // Hosts are case-insensitive: Envoy hands the Host over as the client wrote it.
    assert_eq!(
        case("GET", "/", &[("host", "BETA.Shop.Example")]),
        decided("authority")
    );
    assert_eq!(case("GET", "/api/orders", &[]), decided("route"));
    assert_eq!(case("GET", "/prefixed/x", &[]), decided("p-prefix"));
    assert_eq!(case("GET", "/nothing", &[]), None);
    // Unmatched requests are counted; matched ones are too.
    assert!(envoy.wait_counter("traffic_split.unmatched", 5) >= 5);
}

#[test]
fn assign_cookie_gives_every_new_user_an_id_and_keeps_them_there() {
    let (stable, canary) = two_backends();
    let config = r#"{"rules":[
        {"name":"fixed","match":{"path":{"prefix":"/fixed"}},
         "sticky":{"cookie":"uid","assign_cookie":true,"cookie_max_age_s":60},
         "destinations":[{"name":"stable","cluster":"stable"}]},
        {"name":"checkout","sticky":{"cookie":"uid","assign_cookie":true},
         "destinations":[{"name":"canary","cluster":"canary","weight":50},
                         {"name":"stable","cluster":"stable","weight":50}]}]}"#;
    let envoy = Envoy::start(spec(config, &stable, &canary));
    // A fixed route (one destination) still hands out ids, so a destination added later
    // splits users who already carry one.
    let fixed = envoy.get("/fixed", &[]);
    assert_eq!(fixed.backend(), "stable");
    let cookies = fixed.all("set-cookie");
    assert_eq!(cookies.len(), 1, "{fixed:?}");
    assert!(
        cookies[0].starts_with("uid=")
            && cookies[0].ends_with("; Path=/; Max-Age=60; HttpOnly; SameSite=Lax"),
        "{fixed:?}"
    );
    let again = envoy.get("/fixed", &[("cookie", "uid=someone")]);
    assert!(again.all("set-cookie").is_empty(), "{again:?}");
    let mut landed = Vec::new();
    for _ in 0..200 {
        let first = envoy.get("/", &[]);
        let cookies = first.all("set-cookie");
        assert_eq!(cookies.len(), 1, "{first:?}");
        let cookie = cookies[0];
        assert!(
            cookie.ends_with("; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax"),
            "{cookie}"
        );
        let id = cookie
            .strip_prefix("uid=")
            .and_then(|c| c.split(';').next())
            .unwrap();
        assert_eq!(id.len(), 32, "{cookie}");
        // The assigned id decides, exactly as it will on every later request.
        let expected = ["canary", "stable"][predicted("checkout", id, &[50, 50])];
        assert_eq!(first.backend(), expected);
        let again = envoy.get("/", &[("cookie", &format!("uid={id}"))]);
        assert_eq!(again.backend(), expected);
        assert!(again.all("set-cookie").is_empty(), "{again:?}");
        landed.push(expected);
    }
    // Cookies go to users of every version, so shares do not drift.
    let on_canary = landed.iter().filter(|b| **b == "canary").count();
    assert_binomial(on_canary, landed.len(), 0.5, "new users on canary");
}

#[test]
fn a_response_that_assigns_a_cookie_is_kept_out_of_shared_caches() {
    let (stable, canary) = two_backends();
    let config = r#"{"rules":[
        {"name":"secure","match":{"path":{"prefix":"/secure"}},
         "sticky":{"cookie":"__Host-uid","assign_cookie":true,"cookie_secure":true,
                   "cookie_same_site":"None","cookie_max_age_s":3600},
         "destinations":[{"name":"stable","cluster":"stable"}]},
        {"name":"checkout","sticky":{"cookie":"uid","assign_cookie":true,"cookie_domain":"shop.example"},
         "destinations":[{"name":"stable","cluster":"stable"}]}]}"#;
    let envoy = Envoy::start(spec(config, &stable, &canary));
    // The upstream's Cache-Control (none, or a value) -> what the client gets, as one list.
    let cache_control = |upstream: Option<&str>, cookie: Option<&str>| {
        let mut headers = Vec::new();
        if let Some(cc) = upstream {
            headers.push(("x-respond-cache-control", cc));
        }
        if let Some(c) = cookie {
            headers.push(("cookie", c));
        }
        let r = envoy.get("/", &headers);
        assert_eq!(r.backend(), "stable", "{r:?}");
        // Envoy folds repeated Cache-Control lines into one (`max-age=60,private`).
        let directives: Vec<String> = r
            .all("cache-control")
            .iter()
            .flat_map(|v| v.split(','))
            .map(|d| d.trim().to_string())
            .collect();
        (directives.join(", "), r.all("set-cookie").len())
    };
    assert_eq!(cache_control(None, None), ("private".to_string(), 1));
    assert_eq!(
        cache_control(Some("max-age=60"), None),
        ("max-age=60, private".to_string(), 1)
    );
    assert_eq!(
        cache_control(Some("public, max-age=60"), None),
        ("public, max-age=60, private".to_string(), 1)
    );
    // Already out of shared caches: left as the upstream sent it.
    for kept in ["no-store", "Private, max-age=5"] {
        assert_eq!(cache_control(Some(kept), None), (kept.to_string(), 1));
    }
    // No cookie assigned: the response is none of the filter's business.
    assert_eq!(
        cache_control(Some("max-age=60"), Some("uid=known")),
        ("max-age=60".to_string(), 0)
    );
    assert_eq!(cache_control(None, Some("uid=known")), (String::new(), 0));

    // The attributes asked for, in the documented order.
    let r = envoy.get("/", &[]);
    let cookie = r.all("set-cookie")[0].to_string();
    assert!(
        cookie.starts_with("uid=")
            && cookie.ends_with(
                "; Path=/; Domain=shop.example; Max-Age=2592000; HttpOnly; SameSite=Lax"
            ),
        "{cookie}"
    );
    let r = envoy.get("/secure", &[]);
    let cookie = r.all("set-cookie")[0].to_string();
    assert!(
        cookie.starts_with("__Host-uid=")
            && cookie.ends_with("; Path=/; Max-Age=3600; HttpOnly; Secure; SameSite=None"),
        "{cookie}"
    );
    assert_eq!(r.all("cache-control"), vec!["private"]);
    // Every new user gets an id of their own (128 bits from the OS, per worker VM).
    let ids: std::collections::HashSet<String> = (0..40)
        .map(|_| {
            let r = envoy.get("/", &[]);
            let c = r.all("set-cookie")[0].to_string();
            c.split(';').next().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 40);
}

/// Taking WASI `random_get` away from the module (Envoy's capability restriction) is the real
/// "getrandom fails": then no id is assigned, never a guessable one, requests are still split,
/// and the worker says so once in the log.
#[test]
fn without_os_randomness_no_id_is_assigned_and_the_log_says_so_once() {
    let (stable, canary) = two_backends();
    let config = r#"{"rules":[{"name":"checkout","sticky":{"cookie":"uid","assign_cookie":true},
        "destinations":[{"name":"canary","cluster":"canary","weight":50},
                        {"name":"stable","cluster":"stable","weight":50}]}]}"#;
    let module = std::fs::read(wasm_path()).unwrap();
    let imports = wasm_imports(&module);
    assert!(
        imports.iter().any(|(_, f)| f == "random_get"),
        "{imports:?}"
    );
    let mut allowed: Vec<String> = imports
        .into_iter()
        .filter(|(_, f)| f != "random_get")
        .map(|(_, f)| f)
        .collect();
    allowed.extend(wasm_exports(&module));
    let mut spec = spec(config, &stable, &canary);
    spec.capabilities = Some(allowed);
    spec.concurrency = 1;
    let envoy = Envoy::start(spec);
    let answers: Vec<Resp> = (0..60).map(|_| envoy.get("/", &[])).collect();
    for r in &answers {
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.all("set-cookie").is_empty(), "{r:?}");
        assert!(r.all("cache-control").is_empty(), "{r:?}");
    }
    // Still split (at random): both versions answer.
    let on_canary = answers.iter().filter(|r| r.backend() == "canary").count();
    assert!(
        on_canary > 0 && on_canary < answers.len(),
        "{on_canary} of 60 on canary"
    );
    let log = envoy.log();
    let said = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    // One worker VM: one line for 60 requests.
    assert_eq!(
        said("getrandom failed: no cookie ids are assigned"),
        1,
        "{log}"
    );
    assert!(
        said("getrandom failed: sampling is seeded from the clock") >= 1,
        "{log}"
    );
}

#[test]
fn a_client_can_never_choose_the_cluster() {
    let (stable, canary) = two_backends();
    let config = r#"{"rules":[{"name":"all-stable","match":{"path":{"prefix":"/shop"}},
        "destinations":[{"name":"stable","cluster":"stable"}]}]}"#;
    let envoy = Envoy::start(spec(config, &stable, &canary));
    let forged = [("x-split-cluster", "canary"), ("x-split-variant", "canary")];
    // Matched: the decision overwrites whatever the client sent.
    for _ in 0..20 {
        let r = envoy.get("/shop", &forged);
        assert_eq!(r.backend(), "stable");
    }
    // Unmatched: the forged headers are removed; the default route serves it.
    for _ in 0..20 {
        let r = envoy.get("/elsewhere", &forged);
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), "stable");
    }
    assert_eq!(canary.count(), 0);
    let received = stable.received();
    for r in &received[..20] {
        assert_eq!(r.header("x-split-cluster"), Some("stable"));
        assert_eq!(r.header("x-split-variant"), Some("stable"));
        assert_eq!(
            r.headers
                .iter()
                .filter(|(n, _)| n == "x-split-cluster")
                .count(),
            1
        );
    }
    for r in &received[20..] {
        assert_eq!(r.header("x-split-cluster"), None, "{r:?}");
        assert_eq!(r.header("x-split-variant"), None, "{r:?}");
    }
    assert_eq!(envoy.wait_counter("traffic_split.unmatched", 20), 20);
}

#[test]
fn unmatched_requests_pass_through_untouched() {
    let (stable, canary) = two_backends();
    let config = r#"{"rules":[{"name":"beta","match":{"headers":[{"name":"x-beta","exact":"1"}]},
        "destinations":[{"name":"canary","cluster":"canary"}]}]}"#;
    let envoy = Envoy::start(spec(config, &stable, &canary));
    let r = envoy.get("/plain?x=1", &[("x-other", "kept")]);
    assert_eq!((r.status, r.backend()), (200, "stable"));
    assert_eq!(r.header("x-split-decision"), None);
    assert!(r.all("set-cookie").is_empty());
    let seen = &stable.received()[0];
    assert_eq!(seen.uri, "/plain?x=1");
    assert_eq!(seen.header("x-other"), Some("kept"));
    assert_eq!(seen.header("x-split-variant"), None);
    assert_eq!(envoy.get("/", &[("x-beta", "1")]).backend(), "canary");
}

/// Raw HTTP/1.1, for requests a well-behaved client library refuses to send.
fn raw_request(envoy: &Envoy, head: &[u8]) -> String {
    let mut stream = TcpStream::connect(envoy.listener).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(head).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn hostile_requests_are_still_routed_and_never_break_the_filter() {
    let (stable, canary) = two_backends();
    let config = r#"{"rules":[
        {"name":"beta","match":{"cookies":[{"name":"beta","present":true}],"query":[{"name":"q","prefix":"x"}]},
         "destinations":[{"name":"canary","cluster":"canary"}]},
        {"name":"rest","sticky":{"cookie":"uid"},
         "destinations":[{"name":"canary","cluster":"canary","weight":0},{"name":"stable","cluster":"stable"}]}]}"#;
    let envoy = Envoy::start(spec(config, &stable, &canary));
    let huge = "v".repeat(50_000);
    let requests: Vec<Vec<u8>> = vec![
        // Non-UTF-8 bytes in a header value and the cookie (and, percent-encoded, the query;
        // Envoy's codec itself rejects raw ones in the request line).
        b"GET /?q=x%ff HTTP/1.1\r\nhost: a\r\nx-bin: \xff\xfe\x80\r\ncookie: beta=\xff; uid=\xc3\x28\r\nconnection: close\r\n\r\n".to_vec(),
        // Repeated headers and cookies, malformed cookie pairs.
        b"GET /?q=xy&q=z HTTP/1.1\r\nhost: a\r\ncookie: ;;=;beta\r\ncookie: beta=1; beta=2\r\nx-a: 1\r\nx-a: 2\r\nconnection: close\r\n\r\n".to_vec(),
        // A 50 KB header.
        format!("GET /?q=x HTTP/1.1\r\nhost: a\r\nx-huge: {huge}\r\ncookie: beta=1\r\nconnection: close\r\n\r\n").into_bytes(),
        // Percent-encoding gone wrong.
        b"GET /?q=%zz%&%=%% HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".to_vec(),
    ];
    for (i, head) in requests.iter().enumerate() {
        let response = raw_request(&envoy, head);
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "request {i}: {response}"
        );
        let expected = if i < 3 { "canary" } else { "stable" };
        assert!(
            response.contains(&format!("x-backend: {expected}")),
            "request {i}: {response}"
        );
    }
    // The VM is alive and well afterwards: no panic, no plugin failure in the log.
    assert_eq!(envoy.get("/", &[]).backend(), "stable");
    let log = envoy.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("Wasm VM failed"), "{log}");
}

#[test]
fn bad_configurations_stop_envoy_with_the_reason_in_its_log() {
    let stable = Backend::start("stable");
    let cases = [
        (
            r#"{"rules": [}"#,
            "invalid JSON: expected value at line 1 column 12",
        ),
        (
            r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"c","wieght":1}]}]}"#,
            "rules[0].destinations[0].wieght: unknown field, expected one of: name, cluster, weight, fallback, breaker",
        ),
        (
            r#"{"rules":[{"name":"r","hash":"unleash","destinations":[{"name":"a","cluster":"c","weight":30}]}]}"#,
            "rules[0].destinations: with hash \"unleash\" the weights must sum to 100 (percentages), got 30",
        ),
        (
            r#"{"rules":[{"name":"r","sticky":{"header":"x-user","assign_cookie":true},"destinations":[{"name":"a","cluster":"c"}]}]}"#,
            "rules[0].sticky.assign_cookie: only applies to a cookie user key (\"cookie\": NAME)",
        ),
        (
            r#"{"rules":[{"name":"r","sticky":{"cookie":"__Host-uid","assign_cookie":true},"destinations":[{"name":"a","cluster":"c"}]}]}"#,
            "rules[0].sticky.cookie: \"__Host-uid\" requires \"cookie_secure\": true (browsers reject __Host- cookies without Secure)",
        ),
        (
            r#"{"cluster_header":"host"}"#,
            "cluster_header: \"host\" is reserved (Envoy, proxies or browsers give it a meaning): use a header name of your own",
        ),
    ];
    for (config, reason) in cases {
        let failure = match Envoy::try_start(EnvoySpec::new(config).cluster("stable", stable.addr))
        {
            Ok(envoy) => panic!("Envoy started with {config}; log:\n{}", envoy.log()),
            Err(failure) => failure,
        };
        assert!(failure.exited.is_some_and(|s| !s.success()), "{failure:?}");
        let expected = format!("traffic-split: invalid configuration: {reason}");
        let lines: Vec<&str> = failure
            .log
            .lines()
            .filter(|l| l.contains("invalid configuration"))
            .collect();
        assert_eq!(lines.len(), 1, "{}", failure.log);
        assert!(
            lines[0].ends_with(&expected),
            "{}\nexpected: {expected}",
            lines[0]
        );
    }
    assert_eq!(stable.count(), 0);
}

#[test]
fn an_empty_configuration_loads_and_only_strips_routing_headers() {
    let (stable, canary) = two_backends();
    let envoy = Envoy::start(spec("", &stable, &canary));
    let r = envoy.get("/", &[("x-split-cluster", "canary")]);
    assert_eq!(r.backend(), "stable");
    assert!(envoy.log().contains("no rules configured"));
}

/// The filter matches `:path` exactly as Envoy hands it over; it decodes nothing itself. With
/// the shipped configs' `normalize_path` and `merge_slashes`, Envoy has already removed dot
/// segments, merged slashes and decoded percent-encoded unreserved characters, so every
/// spelling of a path meets the same rule.
#[test]
fn path_rules_see_the_path_as_envoy_normalised_it() {
    let (stable, canary) = two_backends();
    let config = r#"{"debug_header":true,"rules":[{"name":"checkout",
        "match":{"path":{"prefix":"/checkout"}},
        "destinations":[{"name":"canary","cluster":"canary"}]}]}"#;
    let spellings = [
        "/checkout",
        "/%63heckout",
        "//checkout",
        "/x/../checkout",
        "/./checkout",
    ];
    let decided = |envoy: &Envoy, path: &str| {
        let head = format!("GET {path} HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n");
        let response = raw_request(envoy, head.as_bytes());
        assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
        response.contains("x-split-decision: rule=checkout")
    };
    let raw = Envoy::start(spec(config, &stable, &canary));
    let seen: Vec<bool> = spellings.iter().map(|p| decided(&raw, p)).collect();
    // Without normalisation only the literal spelling matches the rule.
    assert_eq!(seen, [true, false, false, false, false], "{spellings:?}");
    drop(raw);
    let mut normalised = spec(config, &stable, &canary);
    normalised.normalize_path = true;
    let normalised = Envoy::start(normalised);
    for path in spellings {
        assert!(decided(&normalised, path), "{path}");
    }
}

#[test]
fn shipped_configs_normalise_paths_and_reload_a_failed_vm() {
    let demo = include_str!("../envoy/demo.yaml");
    for line in [
        "normalize_path: true",
        "merge_slashes: true",
        "failure_policy: FAIL_RELOAD",
    ] {
        assert!(demo.contains(line), "envoy/demo.yaml lacks {line:?}");
    }
}

#[test]
fn shipped_configs_carry_the_stats_tags_block_verbatim() {
    let block: String = STATS_CONFIG
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let demo = include_str!("../envoy/demo.yaml");
    assert!(
        demo.contains(block.trim()),
        "envoy/demo.yaml drifted from envoy/stats_config.yaml"
    );
}

#[test]
fn a_repeated_user_key_header_counts_by_its_first_value() {
    // Repeated headers: the first value is the one that counts (documented), also for user keys.
    let (stable, canary) = two_backends();
    let envoy = Envoy::start(spec(&sticky_config(50), &stable, &canary));
    let users: Vec<String> = (0..50).map(|i| format!("user-{i}")).collect();
    let on = |dest: usize| {
        users
            .iter()
            .find(|u| predicted("checkout-2026-11", u, &[50, 50]) == dest)
            .unwrap()
            .clone()
    };
    let (to_canary, to_stable) = (on(0), on(1));
    for (first, second, expected) in [
        (&to_canary, &to_stable, "canary"),
        (&to_stable, &to_canary, "stable"),
    ] {
        let head = format!(
            "GET / HTTP/1.1\r\nhost: a\r\nx-user-id: {first}\r\nx-user-id: {second}\r\nconnection: close\r\n\r\n"
        );
        let response = raw_request(&envoy, head.as_bytes());
        assert!(
            response.contains(&format!("x-backend: {expected}")),
            "{first} then {second}: {response}"
        );
    }
}

/// The export names of a Wasm module (its export section), read without a Wasm library.
fn wasm_exports(module: &[u8]) -> Vec<String> {
    wasm_names(module, 7)
}

/// Imported functions as `module.name`.
fn wasm_imports(module: &[u8]) -> Vec<(String, String)> {
    wasm_names(module, 2)
        .into_iter()
        .map(|n| {
            let (m, f) = n.split_once('\0').unwrap();
            (m.to_string(), f.to_string())
        })
        .collect()
}

/// The names of the export section (7) or of the import section (2; `module\0name`, functions
/// only: the filter imports nothing else).
fn wasm_names(module: &[u8], wanted: u8) -> Vec<String> {
    fn leb(buf: &[u8], at: &mut usize) -> usize {
        let (mut value, mut shift) = (0usize, 0);
        loop {
            let byte = buf[*at];
            *at += 1;
            value |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                return value;
            }
        }
    }
    fn name(module: &[u8], pos: &mut usize) -> String {
        let len = leb(module, pos);
        let name = String::from_utf8(module[*pos..*pos + len].to_vec()).unwrap();
        *pos += len;
        name
    }
    assert_eq!(&module[..4], b"\0asm");
    let mut at = 8;
    while at < module.len() {
        let section = module[at];
        at += 1;
        let size = leb(module, &mut at);
        if section == wanted {
            let mut pos = at;
            let count = leb(module, &mut pos);
            return (0..count)
                .map(|_| {
                    let mut full = name(module, &mut pos);
                    if wanted == 2 {
                        full = format!("{full}\0{}", name(module, &mut pos));
                        assert_eq!(module[pos], 0, "{full}: only function imports expected");
                    }
                    pos += 1; // the kind byte
                    leb(module, &mut pos); // the index (or function type)
                    full
                })
                .collect();
        }
        at += size;
    }
    Vec::new()
}

#[test]
fn the_module_leaves_out_the_stream_callbacks_it_does_not_need() {
    // Envoy calls into the VM only for callbacks the module exports, and each one costs CPU on
    // every request (BENCHMARKS.md, "Which callbacks cost what"). `make wasm` strips these; the stream's cleanup runs on proxy_on_delete
    // (tests/shadow.rs, a_client_that_leaves_mid_body_gives_its_copy_capacity_back).
    let exports = wasm_exports(&std::fs::read(wasm_path()).unwrap());
    assert!(
        !exports.iter().any(|e| e == "proxy_on_log"),
        "proxy_on_log is exported"
    );
    for needed in [
        "proxy_abi_version_0_2_1",
        "proxy_on_context_create",
        "proxy_on_request_headers",
        "proxy_on_request_body",
        "proxy_on_request_trailers",
        "proxy_on_response_headers",
        "proxy_on_response_body",
        // gRPC statuses arrive in trailers (breakers); Envoy calls it only for responses that
        // have trailers.
        "proxy_on_response_trailers",
        "proxy_on_delete",
        // A replaced configuration's root context waits for its shadow calls (tests/reload.rs).
        "proxy_on_done",
        "proxy_on_http_call_response",
        "proxy_on_queue_ready",
        "proxy_on_tick",
        "proxy_on_memory_allocate",
    ] {
        assert!(exports.iter().any(|e| e == needed), "{needed} is missing");
    }
}
