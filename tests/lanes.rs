//! Lanes across service hops, in real Envoys: an edge Envoy decides and starts the lane, an
//! application (app A, canary and stable) forwards the headers it received to the Envoy in
//! front of service B, which routes by the lane to B's canary or stable.
//!
//!   client → edge Envoy ─┬─ app-a-canary ─┐
//!                        └─ app-a-stable ─┴→ Envoy B ─┬─ b-canary
//!                                                     └─ b-stable
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use traffic_split::plan::Plan;

const SECRET: &str = "lanes-0123456789abcdef";

/// `lane_secret` as a top-level field, or nothing.
fn secret_field(secret: Option<&str>) -> String {
    secret.map_or(String::new(), |s| format!(r#""lane_secret":"{s}","#))
}

/// The edge: on `/orders`, 30% of users to canary, by user id; the lane starts here. Other
/// paths match no rule and go to the default cluster (app A's stable).
fn edge_config(carrier: &str, secret: Option<&str>) -> String {
    format!(
        r#"{{{}"rules":[{{"name":"edge","match":{{"path":{{"prefix":"/orders"}}}},"sticky":{{"header":"x-user-id"}},"propagate":{carrier},
            "destinations":[{{"name":"canary","cluster":"app-a-canary","weight":30}},
                            {{"name":"stable","cluster":"app-a-stable","weight":70}}]}}]}}"#,
        secret_field(secret)
    )
}

/// Service B's instance: routes by the lane; without one it decides for itself (its own salt,
/// half and half), so a test that ignored the lane would see users disagree.
fn b_config(carrier: &str, secret: Option<&str>) -> String {
    format!(
        r#"{{{}"rules":[{{"name":"b","salt":"service-b","sticky":{{"header":"x-user-id"}},
            "propagate":{carrier},"from_lane":true,
            "destinations":[{{"name":"canary","cluster":"b-canary","weight":50}},
                            {{"name":"stable","cluster":"b-stable","weight":50}}]}}]}}"#,
        secret_field(secret)
    )
}

struct Chain {
    edge: Envoy,
    b: Envoy,
    b_canary: Backend,
    b_stable: Backend,
    _apps: (Backend, Backend),
}

fn chain(carrier: &str, secret: Option<&str>) -> Chain {
    let b_canary = Backend::start("b-canary");
    let b_stable = Backend::start("b-stable");
    let mut apps = None;
    let (b, edge) = Envoy::start_pair(
        EnvoySpec::new(&b_config(carrier, secret))
            .cluster("b-stable", b_stable.addr)
            .cluster("b-canary", b_canary.addr),
        |b| {
            let next = format!("http://{}", b.listener);
            let canary = Backend::forwarding("app-a-canary", &next);
            let stable = Backend::forwarding("app-a-stable", &next);
            let spec = EnvoySpec::new(&edge_config(carrier, secret))
                .cluster("app-a-stable", stable.addr)
                .cluster("app-a-canary", canary.addr);
            apps = Some((canary, stable));
            spec
        },
    );
    Chain {
        edge,
        b,
        b_canary,
        b_stable,
        _apps: apps.unwrap(),
    }
}

/// Users 0..n and the destination (0 canary, 1 stable) the first rule of `config` buckets
/// each to.
fn buckets(config: &str, n: usize) -> Vec<(String, usize)> {
    let plan = Plan::from_json(config.as_bytes()).unwrap();
    (0..n)
        .map(|i| {
            let user = format!("user-{i}");
            let d = plan.rules[0].destination_of_key(user.as_bytes());
            (user, d)
        })
        .collect()
}

const NAMES: [&str; 2] = ["canary", "stable"];

/// Every user reaches B's version of the edge's choice, through app A's version of it; and the
/// test can fail: B's own decision disagrees for some of these users.
fn users_stay_in_their_lane(c: &Chain, carrier: &str, n: usize) {
    let edge = buckets(&edge_config(carrier, None), n);
    let own = buckets(&b_config(carrier, None), n);
    let disagree = edge.iter().zip(&own).filter(|(e, o)| e.1 != o.1).count();
    assert!(
        disagree >= n / 4,
        "only {disagree} of {n} users would differ without lanes"
    );
    for (user, d) in &edge {
        let r = c.edge.get("/orders", &[("x-user-id", user)]);
        let want = NAMES[*d];
        assert_eq!(r.status, 200, "{user}: {}", r.body);
        assert_eq!(
            (r.header("x-forwarded-by").unwrap_or(""), r.backend()),
            (
                format!("app-a-{want}").as_str(),
                format!("b-{want}").as_str()
            ),
            "{user}"
        );
    }
}

#[test]
fn a_lane_started_at_the_edge_is_followed_at_the_next_hop_and_a_forged_one_changes_nothing() {
    let carrier = r#"{"baggage":"split-lane"}"#;
    let c = chain(carrier, None);
    let n = 40;
    users_stay_in_their_lane(&c, carrier, n);
    let canaries = buckets(&edge_config(carrier, None), n)
        .iter()
        .filter(|(_, d)| *d == 0)
        .count();
    assert!(canaries > 0 && canaries < n, "{canaries}");

    // A client that forges the lane (and other baggage) changes nothing: the edge overwrites
    // the member, keeping the client's other members byte for byte.
    let stable_users: Vec<String> = buckets(&edge_config(carrier, None), 60)
        .into_iter()
        .filter(|(_, d)| *d == 1)
        .map(|(u, _)| u)
        .take(10)
        .collect();
    let before = c.b_stable.count();
    for user in &stable_users {
        let r = c.edge.get(
            "/orders",
            &[
                ("x-user-id", user),
                ("baggage", "userId=alice, split-lane=canary,k=v%20w"),
            ],
        );
        assert_eq!(r.backend(), "b-stable", "{user}");
    }
    assert_eq!(c.b_stable.count() - before, stable_users.len());
    let last = c.b_stable.received().pop().unwrap();
    assert_eq!(
        last.header("baggage"),
        Some("userId=alice,split-lane=stable,k=v%20w")
    );
    // Nothing forged reached B's canary: it saw only the edge's canary users.
    assert_eq!(c.b_canary.count(), canaries);
    assert!(c
        .b_canary
        .received()
        .iter()
        .all(|r| r.header("baggage") == Some("split-lane=canary")));

    // Where no rule of the edge matches, a forged lane is removed all the same: B decides for
    // itself and sees only the client's other members.
    let before = c.b_stable.count() + c.b_canary.count();
    let r = c.edge.get(
        "/profile",
        &[
            ("x-user-id", "user-1"),
            ("baggage", "split-lane=canary,k=v"),
        ],
    );
    assert_eq!(r.header("x-forwarded-by"), Some("app-a-stable"));
    assert_eq!(c.b_stable.count() + c.b_canary.count(), before + 1);
    // B started a lane of its own choice: the client's value never got through.
    for (backend, name) in [(&c.b_canary, "canary"), (&c.b_stable, "stable")] {
        for got in backend.received().iter().filter(|r| r.uri == "/profile") {
            assert_eq!(
                got.header("baggage"),
                Some(format!("k=v,split-lane={name}").as_str())
            );
        }
    }
    assert_eq!(c.b.settled_counter("traffic_split.rule.b.lane.started"), 1);

    let total = (n + stable_users.len()) as u64;
    assert_eq!(
        c.edge
            .settled_counter("traffic_split.rule.edge.lane.started"),
        total
    );
    assert_eq!(
        c.edge.settled_counter("traffic_split.lane.untrusted"),
        stable_users.len() as u64 + 1
    );
    assert_eq!(c.edge.counter("traffic_split.unmatched"), 1);
    assert_eq!(
        c.b.settled_counter("traffic_split.rule.b.lane.followed"),
        total
    );
    assert_eq!(c.b.counter("traffic_split.lane.invalid"), 0);
    // Prometheus labels (envoy/stats_config.yaml): the rule becomes a label.
    let prom = c.b.admin_get("/stats/prometheus");
    assert!(
        prom.contains(&format!(
            "traffic_split_rule_lane_followed{{rule=\"b\"}} {total}"
        )),
        "{prom}"
    );
}

/// With `lane_secret`, lanes are signed where they start and verified where they are read:
/// a request that reaches B without passing the edge (another ingress, an in-mesh caller)
/// cannot pick a lane, even with a well-formed value.
#[test]
fn with_a_lane_secret_only_lanes_signed_at_the_edge_are_followed() {
    let carrier = r#"{"header":"x-split-lane"}"#;
    let c = chain(carrier, Some(SECRET));
    let n = 30;
    users_stay_in_their_lane(&c, carrier, n);
    // B's versions each received the signed lane of their own name.
    let mut seen = 0;
    for (backend, want) in [(&c.b_canary, "canary"), (&c.b_stable, "stable")] {
        for r in backend.received() {
            let lane = r.header("x-split-lane").unwrap_or("");
            // `<name>;sig=v2.<unix s>.<32 hex digits>` (docs/configuration.md).
            let (name, sig) = lane.split_once(";sig=v2.").unwrap_or(("", ""));
            let (ts, tag) = sig.split_once('.').unwrap_or(("", ""));
            assert_eq!(name, want, "{lane}");
            assert!(
                ts.parse::<u64>().is_ok()
                    && !ts.starts_with('0')
                    && tag.len() == 32
                    && tag
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "{lane}"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, n);

    // Straight to B, bypassing the edge: users B itself puts on stable ask for canary with an
    // unsigned value and with a signature for another name; both are removed and counted.
    let own = buckets(&b_config(carrier, None), 60);
    let stable_users: Vec<&String> = own
        .iter()
        .filter(|(_, d)| *d == 1)
        .map(|(u, _)| u)
        .take(6)
        .collect();
    let signed_stable = c
        .b_stable
        .received()
        .iter()
        .find_map(|r| r.header("x-split-lane").map(str::to_string))
        .unwrap();
    let (_, sig) = signed_stable.split_once(';').unwrap();
    let forged = format!("canary;{sig}");
    let before = c.b_canary.count();
    for (i, user) in stable_users.iter().enumerate() {
        let value = if i % 2 == 0 {
            "canary"
        } else {
            forged.as_str()
        };
        let r =
            c.b.get("/orders", &[("x-user-id", user), ("x-split-lane", value)]);
        assert_eq!(r.backend(), "b-stable", "{user} {value}");
    }
    assert_eq!(c.b_canary.count(), before);
    assert_eq!(
        c.b.settled_counter("traffic_split.lane.invalid"),
        stable_users.len() as u64
    );
    assert_eq!(
        c.b.counter("traffic_split.rule.b.lane.started"),
        stable_users.len() as u64
    );
    assert_eq!(c.b.counter("traffic_split.rule.b.lane.followed"), n as u64);
}

/// A request written byte for byte (repeated header lines included), through `addr`; returns
/// the status code.
fn raw_request(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    use std::io::{Read, Write};
    let mut head = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Every value a backend's request carried on `carrier`: each line of the header, or each
/// member of every `baggage` line with the key.
fn carried(r: &Received, carrier: &str) -> Vec<String> {
    match carrier {
        "x-split-lane" => r
            .headers
            .iter()
            .filter(|(n, _)| n == carrier)
            .map(|(_, v)| v.clone())
            .collect(),
        _ => r
            .headers
            .iter()
            .filter(|(n, _)| n == "baggage")
            .flat_map(|(_, v)| v.split(',').map(str::to_string).collect::<Vec<_>>())
            .filter_map(|m| {
                let (k, v) = m.split_once('=')?;
                (k.trim() == "split-lane").then(|| v.trim().to_string())
            })
            .collect(),
    }
}

/// Issue 20, items 2 and 4, at a hop that routes by signed lanes (destinations `v10`, and `v1`
/// that gets no traffic of its own). A signed `v10` lane re-framed by any hop as
/// `v1;sig=0<time>.<tag>` (the same bytes under an unframed MAC) is not a lane: removed,
/// counted invalid, and the request decided as if it carried none. A lane that is followed
/// passes on alone: a second line of its header, or a second baggage member with its key
/// (which the application might read instead), never reaches the application.
#[test]
fn a_reframed_lane_is_unsigned_and_a_followed_lane_passes_on_alone() {
    for (carrier, propagate) in [
        ("x-split-lane", r#"{"header":"x-split-lane"}"#),
        ("baggage", r#"{"baggage":"split-lane"}"#),
    ] {
        let v10 = Backend::start("b-v10");
        let v1 = Backend::start("b-v1");
        let config = format!(
            r#"{{{}"rules":[{{"name":"b","propagate":{propagate},"from_lane":true,
                "destinations":[{{"name":"v10","cluster":"b-v10","weight":100}},
                                {{"name":"v1","cluster":"b-v1","weight":0}}]}}]}}"#,
            secret_field(Some(SECRET))
        );
        let b = Envoy::start(
            EnvoySpec::new(&config)
                .cluster("b-v10", v10.addr)
                .cluster("b-v1", v1.addr),
        );
        let send = |path: &str, values: &[&str]| {
            let lines: Vec<(&str, String)> = values
                .iter()
                .map(|v| match carrier {
                    "x-split-lane" => ("x-split-lane", v.to_string()),
                    _ => ("baggage", format!("k=v,split-lane={v}")),
                })
                .collect();
            let refs: Vec<(&str, &str)> = lines.iter().map(|(n, v)| (*n, v.as_str())).collect();
            assert_eq!(
                raw_request(b.listener, path, &refs),
                200,
                "{carrier} {path}"
            );
        };
        // B starts a signed lane on v10 for a request that brings none.
        send("/start", &[]);
        let started = v10.received().pop().unwrap();
        let signed = carried(&started, carrier);
        assert_eq!(signed.len(), 1, "{carrier}: {started:?}");
        let signed = signed[0].clone();
        let (name, sig) = signed.split_once(";sig=").unwrap();
        assert_eq!(name, "v10");

        // Re-framed: one name byte moved into the timestamp as a leading zero.
        let reframed = match sig.strip_prefix("v2.") {
            Some(rest) => format!("v1;sig=v2.0{rest}"),
            None => format!("v1;sig=0{sig}"),
        };
        send("/reframed", &[&reframed]);
        assert_eq!(v1.count(), 0, "{carrier}: {reframed} was followed to v1");
        let got = v10.received().pop().unwrap();
        assert_eq!(got.uri, "/reframed");
        let passed = carried(&got, carrier);
        assert_eq!(passed.len(), 1, "{carrier}: {got:?}");
        assert!(passed[0].starts_with("v10;sig="), "{carrier}: {passed:?}");
        assert_eq!(
            b.settled_counter("traffic_split.lane.invalid"),
            1,
            "{carrier}"
        );

        // Followed, with a second value behind it: exactly the verified one passes on.
        send("/duplicated", &[&signed, "v1"]);
        let got = v10.received().pop().unwrap();
        assert_eq!(got.uri, "/duplicated");
        assert_eq!(
            carried(&got, carrier),
            vec![signed.clone()],
            "{carrier}: {got:?}"
        );
        if carrier == "baggage" {
            // The other members are kept, on one line.
            assert_eq!(
                got.headers
                    .iter()
                    .filter(|(n, _)| n == "baggage")
                    .map(|(_, v)| v.as_str())
                    .collect::<Vec<_>>(),
                vec![format!("k=v,split-lane={signed},k=v").as_str()]
            );
        }
        // One value with more after the signature (a list the application might split).
        let padded = format!("{signed};p=1 , v1");
        let padded = match carrier {
            "x-split-lane" => padded,
            _ => format!("{signed};p=1"),
        };
        send("/padded", &[&padded]);
        let got = v10.received().pop().unwrap();
        assert_eq!(got.uri, "/padded");
        assert_eq!(carried(&got, carrier), vec![signed.clone()], "{got:?}");
        assert_eq!(
            b.settled_counter("traffic_split.rule.b.lane.followed"),
            2,
            "{carrier}"
        );
        assert_eq!(
            b.counter("traffic_split.rule.b.lane.started"),
            2,
            "{carrier}"
        );
        assert_eq!(v1.count(), 0);
    }
}
