#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The pure decision path, natively: nanoseconds per `Plan::decide` for plans of 1, 10 and 50
//! rules. The last rule (sticky 95/5 on `x-user-id`) matches; the rules before it are header
//! rules the request never satisfies (their header is absent), so every decision walks them
//! all. The request looks like a browser's (pseudo-headers plus 8 ordinary headers), and the
//! user id changes from one decision to the next. `decide-hosts`: a gateway's plan of 5 and
//! 5,000 rules each scoped to its own host (with the rule index, and without it for
//! comparison); `load`: compiling the 5,000-rule plan. `make bench-decision` runs it.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use traffic_split::plan::Decision;
use traffic_split::plan::Plan;
use traffic_split::request::Request;
use traffic_split::rng::Rng;

/// `rules - 1` non-matching header rules, then the sticky split.
fn plan_json(rules: usize) -> String {
    let mut list: Vec<String> = (1..rules)
        .map(|i| {
            format!(
                r#"{{ "name": "segment-{i}",
                     "match": {{ "headers": [ {{ "name": "x-segment-{i}", "exact": "on" }} ] }},
                     "destinations": [ {{ "name": "canary", "cluster": "canary" }} ] }}"#
            )
        })
        .collect();
    list.push(
        r#"{ "name": "everyone", "sticky": { "header": "x-user-id" },
             "destinations": [ { "name": "canary", "cluster": "canary", "weight": 5 },
                               { "name": "stable", "cluster": "stable", "weight": 95 } ] }"#
            .to_string(),
    );
    format!(r#"{{ "rules": [ {} ] }}"#, list.join(", "))
}

/// The headers of one request from user `user`, as the host hands them over.
fn request_headers(user: u64) -> Vec<(String, Vec<u8>)> {
    let mut headers: Vec<(String, Vec<u8>)> = [
        (":authority", "shop.example.com"),
        (":path", "/products/42?ref=home"),
        (":method", "GET"),
        (":scheme", "http"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0",
        ),
        ("accept", "text/html,application/xhtml+xml"),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "session=abc123; theme=dark"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "0b6c1e9c-5a7f-4f3e-9a43-0d2f2b1f6c11"),
    ]
    .iter()
    .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
    .collect();
    headers.push(("x-user-id".to_string(), user.to_string().into_bytes()));
    headers
}

fn decision(c: &mut Criterion) {
    // Distinct users, decided in turn: the hash sees a new key on every decision.
    let requests: Vec<Vec<(String, Vec<u8>)>> = (0..1024u64)
        .map(|i| request_headers(i.wrapping_mul(2_654_435_761) % 1_000_000_000))
        .collect();
    let mut group = c.benchmark_group("decide");
    for rules in [1usize, 10, 50] {
        let plan = Plan::from_json(plan_json(rules).as_bytes()).unwrap();
        let mut rng = Rng::from_seed(7);
        // Every request must end in the last rule, or the bench measures something else.
        for headers in &requests {
            match plan.decide(&Request::new(headers, None), &mut rng, &[]) {
                Decision::Routed(routed) => assert_eq!(routed.rule, rules - 1),
                Decision::Unmatched => panic!("the last rule must match"),
            }
        }
        let mut next = 0usize;
        group.bench_function(BenchmarkId::new("rules", rules), |b| {
            b.iter(|| {
                next = (next + 1) % requests.len();
                let request = Request::new(&requests[next], None);
                black_box(plan.decide(black_box(&request), &mut rng, &[]))
            })
        });
    }
    group.finish();
}

/// A gateway with one rule per host: `rules` rules, each scoped by an exact `authority`
/// (`host-<i>.example`) with a sticky 95/5 split. Requests go to the last host, so a linear
/// scan would try every rule; the rule index goes straight to it.
fn hosts_plan_json(rules: usize) -> String {
    let list: Vec<String> = (0..rules)
        .map(|i| {
            format!(
                r#"{{ "name": "host-{i}", "match": {{ "authority": {{ "exact": "host-{i}.example" }} }},
                     "sticky": {{ "header": "x-user-id" }},
                     "destinations": [ {{ "name": "canary", "cluster": "canary-{i}", "weight": 5 }},
                                       {{ "name": "stable", "cluster": "stable-{i}", "weight": 95 }} ] }}"#
            )
        })
        .collect();
    format!(r#"{{ "rules": [ {} ] }}"#, list.join(", "))
}

fn many_hosts(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide-hosts");
    for rules in [5usize, 5000] {
        let json = hosts_plan_json(rules);
        let last_host = format!("host-{}.example", rules - 1);
        let requests: Vec<Vec<(String, Vec<u8>)>> = (0..1024u64)
            .map(|i| {
                let mut h = request_headers(i.wrapping_mul(2_654_435_761) % 1_000_000_000);
                h[0].1 = last_host.clone().into_bytes();
                h
            })
            .collect();
        for indexed in [true, false] {
            let mut plan = Plan::from_json(json.as_bytes()).unwrap();
            assert_eq!(plan.index.is_some(), rules >= 8);
            if !indexed {
                if plan.index.is_none() {
                    continue;
                }
                plan.index = None;
            }
            let mut rng = Rng::from_seed(7);
            for headers in &requests {
                match plan.decide(&Request::new(headers, None), &mut rng, &[]) {
                    Decision::Routed(routed) => assert_eq!(routed.rule, rules - 1),
                    Decision::Unmatched => panic!("the last rule must match"),
                }
            }
            let label = if indexed { "rules" } else { "rules-linear" };
            let mut next = 0usize;
            group.bench_function(BenchmarkId::new(label, rules), |b| {
                b.iter(|| {
                    next = (next + 1) % requests.len();
                    let request = Request::new(&requests[next], None);
                    black_box(plan.decide(black_box(&request), &mut rng, &[]))
                })
            });
        }
    }
    group.finish();
    // Config load: parse, validate and compile (with the index) 5,000 host rules.
    let json = hosts_plan_json(5000);
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    group.bench_function(BenchmarkId::new("rules", 5000), |b| {
        b.iter(|| black_box(Plan::from_json(black_box(json.as_bytes())).unwrap()))
    });
    group.finish();
}

/// `match.body`: parsing bench/chat-2k.json (a 2 KiB OpenAI-style chat body) for one pointer,
/// and the decision on the parsed body; beside it serde_json's full `Value` parse, which the
/// pointer walk replaced.
fn body(c: &mut Criterion) {
    use traffic_split::body::{parse, BodyOutcome, RequestBody};
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/chat-2k.json")).unwrap();
    let plan = Plan::from_json(
        br#"{"rules":[{"name":"r","match":{"body":[{"pointer":"/model","exact":"gpt-small"}]},
            "sticky":{"header":"x-user-id"},
            "destinations":[{"name":"a","cluster":"a"},{"name":"b","cluster":"b"}]}]}"#,
    )
    .unwrap();
    let mut group = c.benchmark_group("body");
    group.bench_function("parse-2k-pointer-walk", |b| {
        b.iter(|| black_box(parse(black_box(&bytes), 65536, &plan.body_pointers)))
    });
    group.bench_function("parse-2k-serde-value", |b| {
        b.iter(|| {
            black_box(serde_json::from_slice::<serde_json::Value>(black_box(&bytes)).unwrap())
        })
    });
    let headers = request_headers(7);
    let mut rng = Rng::from_seed(1);
    group.bench_function("parse-and-decide-2k", |b| {
        b.iter(|| {
            let BodyOutcome::Json(parsed) = parse(black_box(&bytes), 65536, &plan.body_pointers)
            else {
                panic!("not JSON")
            };
            let r = Request::new(&headers, None).with_body(RequestBody::Json(&parsed));
            black_box(plan.decide(&r, &mut rng, &[]))
        })
    });
    group.finish();
}

criterion_group!(benches, decision, many_hosts, body);
criterion_main!(benches);
