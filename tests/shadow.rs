//! End-to-end: shadow traffic in a real Envoy. The shadow is a real backend; the assertions are
//! on what it received, what the client saw, and what Envoy's stats say.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use std::io::Cursor;
use std::time::{Duration, Instant};

/// A rule sending everything to `stable`, shadowed as `shadow_json` says.
fn config(shadow_json: &str, extra_top: &str) -> String {
    format!(
        r#"{{{extra_top}"rules":[{{"name":"main","destinations":[{{"name":"stable","cluster":"stable"}}],
            "shadow":[{shadow_json}]}}]}}"#
    )
}

fn metric(envoy: &Envoy, target: &str, what: &str) -> u64 {
    envoy.counter(&format!("traffic_split.shadow.{target}.{what}"))
}

fn wait_metric(envoy: &Envoy, target: &str, what: &str, expected: u64) -> u64 {
    envoy.wait_counter(&format!("traffic_split.shadow.{target}.{what}"), expected)
}

/// Waits until the backend saw `n` requests (shadow copies arrive asynchronously).
fn wait_count(backend: &Backend, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend.count() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    backend.count()
}

fn body_of(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn every_request_is_copied_once_with_headers_and_body_intact() {
    let stable = Backend::start("stable");
    let shadow = Backend::start("shadow");
    let cfg = config(
        r#"{"cluster":"shadow","percent":100,"include_body":true,
            "remove_headers":["authorization","Cookie"],"compare":true}"#,
        "",
    );
    let envoy = Envoy::start(
        EnvoySpec::new(&cfg)
            .cluster("stable", stable.addr)
            .cluster("shadow", shadow.addr),
    );
    let mib = 1024 * 1024;
    let bodies: Vec<(&str, Vec<u8>, bool)> = vec![
        ("post-0", Vec::new(), false),
        ("post-17", b"seventeen bytes!!".to_vec(), false),
        ("post-1mib", body_of(mib), false),
        ("post-1mib-chunked", body_of(mib), true),
    ];
    let get = envoy
        .request("GET", "/get?x=1&y=%20")
        .set("authorization", "Bearer secret")
        .set("cookie", "session=abc")
        .set("x-keep", "kept")
        .call();
    let get = Resp::from(get);
    assert_eq!(
        (get.status, get.backend(), get.body.as_str()),
        (200, "stable", "stable")
    );
    for (path, body, chunked) in &bodies {
        let req = envoy
            .request("POST", &format!("/{path}"))
            .set("authorization", "Bearer secret")
            .set("x-keep", "kept");
        let resp = if *chunked {
            Resp::from(req.send(Cursor::new(body.clone())))
        } else {
            Resp::from(req.send_bytes(body))
        };
        // The client only ever sees the primary.
        assert_eq!(
            (resp.status, resp.backend(), resp.body.as_str()),
            (200, "stable", "stable")
        );
        assert!(resp.header("x-shadow-request").is_none());
    }
    let n = 1 + bodies.len();
    assert_eq!(wait_count(&shadow, n), n, "one copy per primary request");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(shadow.count(), n, "no extra copies");
    let copies = shadow.received();
    let primaries = stable.received();
    let port = envoy.listener.port();
    for copy in &copies {
        assert_eq!(copy.header("x-shadow-request"), Some("true"), "{copy:?}");
        assert_eq!(
            copy.header("host"),
            Some(format!("127.0.0.1-shadow:{port}").as_str())
        );
        assert_eq!(copy.header("authorization"), None);
        assert_eq!(copy.header("cookie"), None);
        assert_eq!(copy.header("x-keep"), Some("kept"));
        assert_eq!(copy.header("x-split-cluster"), None);
        let primary = primaries.iter().find(|p| p.uri == copy.uri).unwrap();
        assert_eq!(copy.method, primary.method);
        assert_eq!(copy.body.len(), primary.body.len(), "{}", copy.uri);
        assert!(copy.body == primary.body, "body of {} differs", copy.uri);
        // The primary is untouched: it keeps its credentials.
        assert_eq!(primary.header("authorization"), Some("Bearer secret"));
    }
    let get_copy = copies.iter().find(|c| c.method == "GET").unwrap();
    assert_eq!(get_copy.uri, "/get?x=1&y=%20");
    for (path, body, _) in &bodies {
        let copy = copies.iter().find(|c| c.uri == format!("/{path}")).unwrap();
        assert!(copy.body == *body, "{path}");
    }
    assert_eq!(wait_metric(&envoy, "shadow", "sent", n as u64), n as u64);
    assert_eq!(
        wait_metric(&envoy, "shadow", "responses", n as u64),
        n as u64
    );
    assert_eq!(metric(&envoy, "shadow", "failed"), 0);
    assert_eq!(metric(&envoy, "shadow", "dropped"), 0);
    // Same status (200 = 200), different bodies not compared (compare_body off).
    assert_eq!(metric(&envoy, "shadow", "status_mismatch"), 0);
    assert_eq!(metric(&envoy, "shadow", "body_mismatch"), 0);
    let prom = envoy.admin_get("/stats/prometheus");
    assert!(
        prom.contains(&format!(
            "traffic_split_shadow_sent{{shadow=\"shadow\"}} {n}"
        )),
        "{prom}"
    );
    assert!(
        prom.contains("traffic_split_shadow_latency_ms_bucket{shadow=\"shadow\""),
        "{prom}"
    );
    eprintln!(
        "dispatch delay (µs, per worker VM): {}",
        envoy
            .histogram("traffic_split.shadow.dispatch_delay_us")
            .unwrap_or_default()
    );
}

#[test]
fn percent_samples_within_four_sigma_and_methods_filter() {
    let stable = Backend::start("stable");
    let shadow = Backend::start("shadow");
    let cfg = config(
        r#"{"name":"v3","cluster":"shadow","percent":25,"methods":["GET"]}"#,
        "",
    );
    let envoy = Envoy::start(
        EnvoySpec::new(&cfg)
            .cluster("stable", stable.addr)
            .cluster("shadow", shadow.addr),
    );
    let n = 2000;
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..n / 4 {
                    assert_eq!(envoy.get("/", &[]).status, 200);
                }
            });
        }
    });
    // Excluded methods are neither copied nor counted as drops.
    for _ in 0..50 {
        let r = Resp::from(envoy.request("POST", "/").send_string("x"));
        assert_eq!(r.status, 200);
    }
    wait_metric(&envoy, "v3", "sent", 1);
    // Once the count stops moving, what the shadow saw must be exactly what was counted.
    let sent_final = envoy.settled_counter("traffic_split.shadow.v3.sent");
    assert_eq!(
        wait_count(&shadow, sent_final as usize),
        sent_final as usize
    );
    assert_binomial(sent_final as usize, n, 0.25, "shadowed share");
    assert!(shadow.received().iter().all(|r| r.method == "GET"));
    assert_eq!(metric(&envoy, "v3", "dropped"), 0);
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Client latencies of `n` sequential GETs.
fn client_latencies(envoy: &Envoy, n: usize) -> Vec<Duration> {
    let mut out: Vec<Duration> = (0..n)
        .map(|_| {
            let start = Instant::now();
            let r = envoy.get("/", &[]);
            assert_eq!((r.status, r.backend()), (200, "stable"));
            start.elapsed()
        })
        .collect();
    out.sort();
    out
}

#[test]
fn slow_and_dead_shadows_never_slow_the_primary_and_are_still_counted() {
    let stable = Backend::start("stable");
    let slow = Backend::start("slow");
    slow.set_delay(Duration::from_secs(1));
    let dead = closed_port();
    let baseline_cfg =
        r#"{"rules":[{"name":"main","destinations":[{"name":"stable","cluster":"stable"}]}]}"#;
    let shadow_cfg = config(
        r#"{"cluster":"slow","timeout_ms":3000},{"cluster":"dead"}"#,
        "",
    );
    let n = 200;
    let baseline = {
        let envoy = Envoy::start(EnvoySpec::new(baseline_cfg).cluster("stable", stable.addr));
        client_latencies(&envoy, n)
    };
    let envoy = Envoy::start(
        EnvoySpec::new(&shadow_cfg)
            .cluster("stable", stable.addr)
            .cluster("slow", slow.addr)
            .cluster("dead", dead),
    );
    let started = Instant::now();
    let shadowed = client_latencies(&envoy, n);
    let clients_done = started.elapsed();
    eprintln!(
        "client latency without shadow: p50 {:?} p99 {:?}; with a 1 s shadow and a refused one: p50 {:?} p99 {:?}; {n} requests took {:?}",
        percentile(&baseline, 0.5),
        percentile(&baseline, 0.99),
        percentile(&shadowed, 0.5),
        percentile(&shadowed, 0.99),
        clients_done
    );
    // Had any request waited for the 1 s shadow, it would show here.
    assert!(percentile(&shadowed, 0.99) < Duration::from_millis(300));
    assert!(clients_done < Duration::from_secs(n as u64 / 4));
    // Every slow answer arrives after its client was long done, and is still counted.
    assert_eq!(wait_metric(&envoy, "slow", "responses", n as u64), n as u64);
    assert_eq!(metric(&envoy, "slow", "failed"), 0);
    assert_eq!(wait_metric(&envoy, "dead", "failed", n as u64), n as u64);
    assert_eq!(metric(&envoy, "dead", "responses"), 0);
    assert_eq!(metric(&envoy, "slow", "sent"), n as u64);
    assert_eq!(metric(&envoy, "dead", "sent"), n as u64);
    let latency = envoy
        .histogram("traffic_split.shadow.slow.latency_ms")
        .unwrap();
    eprintln!("slow shadow latency: {latency}");
    // The shadow sleeps 1 s: its median latency is 1 s plus a little, never the client's ~ms.
    let p50 = Envoy::histogram_quantile(&latency, "P50");
    assert!((1000.0..1500.0).contains(&p50), "P50 {p50} ms: {latency}");
}

#[test]
fn shadow_timeouts_missing_hosts_and_unknown_clusters_are_failures() {
    let stable = Backend::start("stable");
    let sleepy = Backend::start("sleepy");
    sleepy.set_delay(Duration::from_secs(2));
    let cfg = config(
        r#"{"cluster":"sleepy","timeout_ms":200,"compare":true},
           {"cluster":"nohosts","compare":true},
           {"cluster":"no-such-cluster"}"#,
        "",
    );
    let envoy = Envoy::start(
        EnvoySpec::new(&cfg)
            .cluster("stable", stable.addr)
            .cluster("sleepy", sleepy.addr)
            .empty_cluster("nohosts"),
    );
    for _ in 0..10 {
        let r = envoy.get("/", &[]);
        assert_eq!((r.status, r.backend()), (200, "stable"));
    }
    assert_eq!(wait_metric(&envoy, "sleepy", "failed", 10), 10);
    assert_eq!(wait_metric(&envoy, "nohosts", "failed", 10), 10);
    assert_eq!(wait_metric(&envoy, "no-such-cluster", "failed", 10), 10);
    for target in ["sleepy", "nohosts"] {
        // Failures are not answers: nothing to compare, no mismatch.
        assert_eq!(metric(&envoy, target, "responses"), 0, "{target}");
        assert_eq!(metric(&envoy, target, "status_mismatch"), 0, "{target}");
        assert_eq!(metric(&envoy, target, "class_mismatch"), 0, "{target}");
    }
    // The VM survived all of it.
    assert_eq!(envoy.get("/", &[]).backend(), "stable");
    assert!(!envoy.log().contains("panicked"));
}

#[test]
fn mismatches_are_counted_and_equal_answers_are_not() {
    let stable = Backend::start("stable");
    let broken = Backend::start("broken");
    broken.set_status(500);
    let twin = Backend::start("twin");
    twin.set_body("stable");
    let created = Backend::start("created");
    created.set_status(201);
    created.set_body("stable");
    let cfg = config(
        r#"{"cluster":"broken","compare":true,"compare_body":true},
           {"cluster":"twin","compare":true,"compare_body":true},
           {"cluster":"created","compare":true}"#,
        "",
    );
    let envoy = Envoy::start(
        EnvoySpec::new(&cfg)
            .cluster("stable", stable.addr)
            .cluster("broken", broken.addr)
            .cluster("twin", twin.addr)
            .cluster("created", created.addr),
    );
    let n = 30;
    for _ in 0..n {
        let r = envoy.get("/", &[]);
        assert_eq!((r.status, r.body.as_str()), (200, "stable"));
    }
    assert_eq!(wait_metric(&envoy, "broken", "responses", n), n);
    assert_eq!(wait_metric(&envoy, "broken", "status_mismatch", n), n);
    assert_eq!(metric(&envoy, "broken", "class_mismatch"), n);
    assert_eq!(metric(&envoy, "broken", "body_mismatch"), n);
    assert_eq!(wait_metric(&envoy, "twin", "responses", n), n);
    assert_eq!(wait_metric(&envoy, "created", "status_mismatch", n), n);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(metric(&envoy, "twin", "status_mismatch"), 0);
    assert_eq!(metric(&envoy, "twin", "class_mismatch"), 0);
    assert_eq!(metric(&envoy, "twin", "body_mismatch"), 0);
    // 201 vs 200: a different status in the same class.
    assert_eq!(metric(&envoy, "created", "class_mismatch"), 0);
    let prom = envoy.admin_get("/stats/prometheus");
    assert!(
        prom.contains(&format!(
            "traffic_split_shadow_class_mismatch{{shadow=\"broken\"}} {n}"
        )),
        "{prom}"
    );
    assert!(prom.contains("traffic_split_shadow_primary_latency_ms_bucket{shadow=\"broken\""));
}

#[test]
fn the_bulkhead_drops_excess_copies_and_leaves_primaries_alone() {
    let stable = Backend::start("stable");
    let slow = Backend::start("slow");
    slow.set_delay(Duration::from_millis(1500));
    let cfg = config(
        r#"{"cluster":"slow","timeout_ms":5000}"#,
        r#""max_in_flight":4,"#,
    );
    let mut spec = EnvoySpec::new(&cfg)
        .cluster("stable", stable.addr)
        .cluster("slow", slow.addr);
    spec.concurrency = 1; // the bulkhead is per worker: one worker makes the count exact
    let envoy = Envoy::start(spec);
    let n = 20;
    let started = Instant::now();
    for _ in 0..n {
        let r = envoy.get("/", &[]);
        assert_eq!((r.status, r.backend()), (200, "stable"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "primaries waited"
    );
    assert_eq!(wait_metric(&envoy, "slow", "dropped", n - 4), n - 4);
    assert_eq!(metric(&envoy, "slow", "sent"), 4);
    assert_eq!(wait_metric(&envoy, "slow", "responses", 4), 4);
    // Capacity comes back once the slow answers are in.
    let r = envoy.get("/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(wait_metric(&envoy, "slow", "sent", 5), 5);
}

#[test]
fn an_oversized_body_is_not_shadowed_at_all_and_the_primary_gets_it_whole() {
    let stable = Backend::start("stable");
    let shadow = Backend::start("shadow");
    let cfg = config(r#"{"cluster":"shadow","max_body_bytes":1000}"#, "");
    let envoy = Envoy::start(
        EnvoySpec::new(&cfg)
            .cluster("stable", stable.addr)
            .cluster("shadow", shadow.addr),
    );
    let big = body_of(5000);
    let r = Resp::from(envoy.request("POST", "/big").send_bytes(&big));
    assert_eq!(r.status, 200);
    let chunked = Resp::from(
        envoy
            .request("POST", "/big-chunked")
            .send(Cursor::new(big.clone())),
    );
    assert_eq!(chunked.status, 200);
    let small = Resp::from(envoy.request("POST", "/small").send_bytes(&big[..1000]));
    assert_eq!(small.status, 200);
    assert_eq!(wait_metric(&envoy, "shadow", "dropped", 2), 2);
    assert_eq!(wait_count(&shadow, 1), 1);
    std::thread::sleep(Duration::from_millis(300));
    let copies = shadow.received();
    assert_eq!(copies.len(), 1, "only the small body was copied");
    assert_eq!(copies[0].uri, "/small");
    assert!(copies[0].body == big[..1000]);
    let primaries = stable.received();
    assert_eq!(primaries.len(), 3);
    assert!(primaries
        .iter()
        .filter(|p| p.uri.starts_with("/big"))
        .all(|p| p.body == big));
}

/// A request body that arrives in two parts with a pause between them, so that two requests
/// hold their bodies at the same time.
struct SlowBody {
    parts: Vec<Vec<u8>>,
    pause: Duration,
    sent_parts: usize,
    offset: usize,
}

impl std::io::Read for SlowBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(part) = self.parts.get(self.sent_parts) else {
            return Ok(0);
        };
        if self.offset == 0 && self.sent_parts > 0 {
            std::thread::sleep(self.pause);
        }
        let n = buf.len().min(part.len() - self.offset);
        buf[..n].copy_from_slice(&part[self.offset..self.offset + n]);
        self.offset += n;
        if self.offset == part.len() {
            self.sent_parts += 1;
            self.offset = 0;
        }
        Ok(n)
    }
}

#[test]
fn buffered_body_bytes_are_bounded_per_worker() {
    let stable = Backend::start("stable");
    let shadow = Backend::start("shadow");
    let cfg = config(
        r#"{"cluster":"shadow"}"#,
        r#""max_buffered_body_bytes":150000,"#,
    );
    let mut spec = EnvoySpec::new(&cfg)
        .cluster("stable", stable.addr)
        .cluster("shadow", shadow.addr);
    spec.concurrency = 1; // the bound is per worker
    let envoy = Envoy::start(spec);
    let part = body_of(80_000);
    let send = |delay: Duration| {
        std::thread::sleep(delay);
        let body = SlowBody {
            parts: vec![part.clone(), part[..20_000].to_vec()],
            pause: Duration::from_millis(600),
            sent_parts: 0,
            offset: 0,
        };
        Resp::from(
            ureq::AgentBuilder::new()
                .build()
                .post(&envoy.url("/upload"))
                .send(body),
        )
    };
    // Both requests hold 80 KB at once: 160 KB would pass the 150 KB bound, so the second
    // request's copy is dropped; the first, 100 KB in all, is shadowed whole.
    std::thread::scope(|s| {
        let a = s.spawn(|| send(Duration::ZERO));
        let b = s.spawn(|| send(Duration::from_millis(200)));
        for r in [a.join().unwrap(), b.join().unwrap()] {
            assert_eq!((r.status, r.backend()), (200, "stable"));
        }
    });
    assert_eq!(wait_metric(&envoy, "shadow", "dropped", 1), 1);
    assert_eq!(wait_metric(&envoy, "shadow", "sent", 1), 1);
    assert_eq!(wait_count(&shadow, 1), 1);
    assert_eq!(shadow.received()[0].body.len(), 100_000);
    // Both primaries got their whole body.
    assert!(stable.received().iter().all(|r| r.body.len() == 100_000));
    // The bound is free again: a third upload is shadowed.
    assert_eq!(send(Duration::ZERO).status, 200);
    assert_eq!(wait_metric(&envoy, "shadow", "sent", 2), 2);
}

#[test]
fn a_client_that_leaves_mid_body_gives_its_copy_capacity_back() {
    use std::io::Write;
    let stable = Backend::start("stable");
    let shadow = Backend::start("shadow");
    let cfg = config(r#"{"cluster":"shadow"}"#, r#""max_in_flight":1,"#);
    let mut spec = EnvoySpec::new(&cfg)
        .cluster("stable", stable.addr)
        .cluster("shadow", shadow.addr);
    spec.concurrency = 1; // the bulkhead is per worker: one slot in all
    let envoy = Envoy::start(spec);
    let url = envoy.url("/");
    let authority = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    // Announce 1000 bytes, send 100, leave: the copy holds the worker's only slot until the
    // stream ends. The module exports no on_log/on_done, so this proves the stream's cleanup
    // runs when Envoy deletes the context.
    for _ in 0..3 {
        let mut client = std::net::TcpStream::connect(&authority).unwrap();
        client
            .write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n")
            .unwrap();
        client.write_all(&body_of(100)).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        drop(client);
        std::thread::sleep(Duration::from_millis(150));
        // The slot is free again: the next request is shadowed, not dropped.
        let r = Resp::from(
            ureq::AgentBuilder::new()
                .build()
                .post(&envoy.url("/after"))
                .send_bytes(b"whole"),
        );
        assert_eq!((r.status, r.backend()), (200, "stable"));
    }
    assert_eq!(wait_metric(&envoy, "shadow", "sent", 3), 3);
    assert_eq!(metric(&envoy, "shadow", "dropped"), 0);
    assert_eq!(wait_count(&shadow, 3), 3);
    assert!(shadow.received().iter().all(|r| r.body == b"whole"));
}
