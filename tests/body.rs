//! End-to-end: routing on the JSON request body (`match.body`) in a real Envoy. OpenAI-style
//! chat bodies pick the model's cluster; a body over `body_max_bytes` or invalid JSON falls
//! through to the next rule; requests that cannot carry JSON are never held; the upstream gets
//! the body byte for byte (HTTP/1.1 chunked and HTTP/2); and without
//! `allow_on_headers_stop_iteration` nothing stalls.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Chat requests: `"stream": true` → streaming; `"model": "large"` → a sticky 10% split onto
/// a new provider; `"model": "small"` → small; every other chat request → `other`.
const CHAT: &str = r#"{"body_max_bytes": 65536, "rules":[
  {"name":"stream","match":{"path":{"prefix":"/v1/chat"},"body":[{"pointer":"/stream","exact":"true"}]},
   "destinations":[{"name":"streaming","cluster":"streaming"}]},
  {"name":"large","match":{"path":{"prefix":"/v1/chat"},"body":[{"pointer":"/model","exact":"large"}]},
   "sticky":{"header":"x-user-id"},
   "destinations":[{"name":"newprov","cluster":"newprov","weight":10},
                   {"name":"large","cluster":"large","weight":90}]},
  {"name":"small","match":{"path":{"prefix":"/v1/chat"},"body":[{"pointer":"/model","exact":"small"}]},
   "destinations":[{"name":"small","cluster":"small"}]},
  {"name":"other","match":{"path":{"prefix":"/v1/chat"}},
   "destinations":[{"name":"other","cluster":"other"}]}]}"#;

struct Chat {
    envoy: Envoy,
    backends: Vec<Backend>,
}

impl Chat {
    fn start(config: &str, patch: Option<(&str, &str)>) -> Chat {
        let names = ["default", "streaming", "newprov", "large", "small", "other"];
        let backends: Vec<Backend> = names.iter().map(|n| Backend::start(n)).collect();
        let mut spec = EnvoySpec::new(config);
        for b in &backends {
            spec = spec.cluster(&b.state.name, b.addr);
        }
        if let Some((from, to)) = patch {
            spec = spec.patch(from, to);
        }
        Chat {
            envoy: Envoy::start(spec),
            backends,
        }
    }

    fn backend(&self, name: &str) -> &Backend {
        self.backends.iter().find(|b| b.state.name == name).unwrap()
    }
}

fn chat_body(model: &str, stream: bool, messages: usize) -> String {
    let msgs: Vec<String> = (0..messages)
        .map(|i| format!(r#"{{"role":"user","content":"question number {i}"}}"#))
        .collect();
    format!(
        r#"{{"model":"{model}","stream":{stream},"messages":[{}]}}"#,
        msgs.join(",")
    )
}

fn post(
    envoy: &Envoy,
    path: &str,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> Resp {
    let mut req = envoy
        .request("POST", path)
        .timeout(Duration::from_secs(20))
        .set("content-type", content_type);
    for (n, v) in extra {
        req = req.set(n, v);
    }
    Resp::from(req.send_bytes(body))
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[test]
fn chat_bodies_pick_the_model_and_reach_the_upstream_unchanged() {
    let chat = Chat::start(CHAT, None);
    let envoy = &chat.envoy;
    for (body, want) in [
        (chat_body("small", false, 2), "small"),
        (chat_body("small", true, 2), "streaming"),
        (chat_body("mystery", false, 1), "other"),
    ] {
        let r = post(
            envoy,
            "/v1/chat/completions",
            "application/json",
            body.as_bytes(),
            &[],
        );
        assert_eq!((r.status, r.backend()), (200, want), "{body}");
        let got = chat.backend(want).received();
        assert_eq!(
            got.last().unwrap().body,
            body.as_bytes(),
            "{want} got the body unchanged"
        );
    }
    // `…+json` content types are JSON too; the content-type's case and parameters do not matter.
    let r = post(
        envoy,
        "/v1/chat/completions",
        "Application/Vnd.Chat+JSON; charset=utf-8",
        chat_body("small", false, 1).as_bytes(),
        &[],
    );
    assert_eq!(r.backend(), "small");
    // Not a chat path: no rule at all.
    let r = post(
        envoy,
        "/other",
        "application/json",
        chat_body("small", false, 1).as_bytes(),
        &[],
    );
    assert_eq!(r.backend(), "default");
}

#[test]
fn a_sticky_ten_percent_of_large_model_users_go_to_the_new_provider() {
    let plan = traffic_split::plan::Plan::from_json(CHAT.as_bytes()).unwrap();
    let rule = &plan.rules[1];
    let chat = Chat::start(CHAT, None);
    let users: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    let mut on_new = 0;
    let mut new_requests = 0u64;
    for (i, user) in users.iter().enumerate() {
        let body = chat_body("large", false, 1);
        let r = post(
            &chat.envoy,
            "/v1/chat/completions",
            "application/json",
            body.as_bytes(),
            &[("x-user-id", user)],
        );
        let want = if rule.destination_of_key(user.as_bytes()) == 0 {
            "newprov"
        } else {
            "large"
        };
        assert_eq!(r.backend(), want, "{user}");
        on_new += usize::from(want == "newprov");
        new_requests += u64::from(want == "newprov");
        // Sticky: the same user again lands on the same provider.
        if i % 30 == 0 {
            let again = post(
                &chat.envoy,
                "/v1/chat/completions",
                "application/json",
                body.as_bytes(),
                &[("x-user-id", user)],
            );
            assert_eq!(again.backend(), want);
            new_requests += u64::from(want == "newprov");
        }
    }
    assert_binomial(
        on_new,
        users.len(),
        0.10,
        "large-model users on the new provider",
    );
    let name = "traffic_split.rule.large.destination.newprov.requests";
    assert_eq!(chat.envoy.wait_counter(name, new_requests), new_requests);
    assert_eq!(chat.envoy.settled_counter(name), new_requests);
}
