//! End-to-end: routing on the JSON request body (`match.body`) in a real Envoy. OpenAI-style
//! chat bodies pick the model's cluster; a body over `body_max_bytes` or invalid JSON falls
//! through to the next rule; requests that cannot carry JSON are never held; the upstream gets
//! the body byte for byte (HTTP/1.1 chunked and HTTP/2); and without
//! `allow_on_headers_stop_iteration` nothing stalls; a held body ending with trailers is decided
//! on them; a body string over a `regex`'s cap is counted.
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
        let names = [
            "default",
            "streaming",
            "newprov",
            "large",
            "small",
            "other",
            "shadowc",
        ];
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

#[test]
fn over_limit_and_invalid_bodies_fall_through_to_the_next_rule_and_are_counted() {
    let chat = Chat::start(CHAT, None);
    let envoy = &chat.envoy;
    // 70 KiB: over body_max_bytes (64 KiB), a valid small-model body all the same.
    let padding = "x".repeat(70 * 1024);
    let big =
        format!(r#"{{"model":"small","messages":[{{"role":"user","content":"{padding}"}}]}}"#);
    let r = post(
        envoy,
        "/v1/chat/completions",
        "application/json",
        big.as_bytes(),
        &[],
    );
    assert_eq!((r.status, r.backend()), (200, "other"));
    assert_eq!(
        chat.backend("other").received().last().unwrap().body,
        big.as_bytes()
    );
    // 2 MiB, past Envoy's default 1 MiB buffer: still no 413, the bytes pass whole.
    let huge = format!(
        r#"{{"model":"small","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "y".repeat(2 * 1024 * 1024)
    );
    let r = post(
        envoy,
        "/v1/chat/completions",
        "application/json",
        huge.as_bytes(),
        &[],
    );
    assert_eq!((r.status, r.backend()), (200, "other"));
    assert_eq!(
        digest(&chat.backend("other").received().last().unwrap().body),
        digest(huge.as_bytes())
    );
    for invalid in [r#"{"model":"small","#, "model=small", ""] {
        let r = post(
            envoy,
            "/v1/chat/completions",
            "application/json",
            invalid.as_bytes(),
            &[],
        );
        assert_eq!((r.status, r.backend()), (200, "other"), "{invalid:?}");
    }
    assert_eq!(envoy.wait_counter("traffic_split.body.too_large", 2), 2);
    // The empty body: `content-length: 0` is never held, so it is not counted invalid.
    assert_eq!(envoy.wait_counter("traffic_split.body.invalid", 2), 2);
    assert_eq!(envoy.settled_counter("traffic_split.body.invalid"), 2);
    assert_eq!(
        envoy.counter("traffic_split.rule.small.destination.small.requests"),
        0
    );
}

/// When each request's headers reached a `RawBackend`, and its body.
type Seen = Arc<Mutex<Vec<(Instant, Vec<u8>)>>>;

/// A plain HTTP/1.1 server that notes when each request's headers arrived, then reads the
/// body (content-length or chunked) and answers `raw`.
struct RawBackend {
    addr: SocketAddr,
    /// When each request's headers arrived, and its body.
    seen: Seen,
}

impl RawBackend {
    fn start() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let record = Arc::clone(&record);
                std::thread::spawn(move || serve_raw(conn, &record));
            }
        });
        RawBackend { addr, seen }
    }
}

fn serve_raw(mut conn: TcpStream, record: &Mutex<Vec<(Instant, Vec<u8>)>>) {
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        // Headers.
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let arrived = Instant::now();
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        buf.drain(..head_end);
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse::<usize>().unwrap());
        let chunked = head.contains("transfer-encoding: chunked");
        let mut body = Vec::new();
        if let Some(len) = length {
            while buf.len() < len {
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            body = buf.drain(..len).collect();
        } else if chunked {
            loop {
                if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                    let size = usize::from_str_radix(
                        String::from_utf8_lossy(&buf[..at])
                            .split(';')
                            .next()
                            .unwrap()
                            .trim(),
                        16,
                    )
                    .unwrap();
                    if buf.len() >= at + 2 + size + 2 {
                        body.extend_from_slice(&buf[at + 2..at + 2 + size]);
                        buf.drain(..at + 2 + size + 2);
                        if size == 0 {
                            break;
                        }
                        continue;
                    }
                }
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        }
        record.lock().unwrap().push((arrived, body));
        let _ =
            conn.write_all(b"HTTP/1.1 200 OK\r\nx-backend: raw\r\ncontent-length: 3\r\n\r\nraw");
    }
}

/// How `slow_upload` frames its body: `content-length`, or chunked encoding ending with these
/// trailer lines (`name: value\r\n` each; empty: none).
#[derive(Clone, Copy)]
enum Framing<'a> {
    Length,
    Chunked { trailers: &'a str },
}

/// Sends a request's headers, waits `pause`, then its body (`chunks`, framed by `framing`);
/// returns when the body started to leave and the response's head.
fn slow_upload(
    to: SocketAddr,
    head: &str,
    chunks: &[&[u8]],
    framing: Framing<'_>,
    pause: Duration,
) -> (Instant, String) {
    let chunked = matches!(framing, Framing::Chunked { .. });
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    let framing_header = if chunked {
        "transfer-encoding: chunked\r\n".to_string()
    } else {
        format!("content-length: {total}\r\n")
    };
    s.write_all(format!("{head}host: test\r\n{framing_header}\r\n").as_bytes())
        .unwrap();
    std::thread::sleep(pause);
    let body_sent = Instant::now();
    for c in chunks {
        if chunked {
            s.write_all(format!("{:x}\r\n", c.len()).as_bytes())
                .unwrap();
            s.write_all(c).unwrap();
            s.write_all(b"\r\n").unwrap();
        } else {
            s.write_all(c).unwrap();
        }
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Framing::Chunked { trailers } = framing {
        s.write_all(format!("0\r\n{trailers}\r\n").as_bytes())
            .unwrap();
    }
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
        }
    }
    (body_sent, String::from_utf8_lossy(&response).into_owned())
}

#[test]
fn only_json_requests_a_body_rule_could_match_are_held() {
    let raw = RawBackend::start();
    let config = r#"{"rules":[
      {"name":"small","match":{"path":{"prefix":"/v1/chat"},"body":[{"pointer":"/model","exact":"small"}]},
       "destinations":[{"name":"small","cluster":"raw"}]},
      {"name":"headers","match":{"headers":[{"name":"x-route","exact":"1"}]},
       "destinations":[{"name":"h","cluster":"raw"}]}]}"#;
    let envoy = Envoy::start(EnvoySpec::new(config).cluster("raw", raw.addr));
    let body = br#"{"model":"small"}"#;
    let pause = Duration::from_millis(800);
    let cases: [(&str, &str, bool); 5] = [
        // (request line and headers, what, held)
        (
            "POST /v1/chat HTTP/1.1\r\ncontent-type: application/json\r\n",
            "JSON to a body rule",
            true,
        ),
        (
            "POST /v1/chat HTTP/1.1\r\ncontent-type: text/plain\r\n",
            "not JSON",
            false,
        ),
        (
            "GET /v1/chat HTTP/1.1\r\ncontent-type: application/json\r\n",
            "GET",
            false,
        ),
        (
            "POST /elsewhere HTTP/1.1\r\ncontent-type: application/json\r\n",
            "no body rule can match",
            false,
        ),
        // The body rule comes first, but its path fails: the header rule decides at once.
        (
            "POST /x HTTP/1.1\r\ncontent-type: application/json\r\nx-route: 1\r\n",
            "a header rule matches first",
            false,
        ),
    ];
    for (head, what, held) in cases {
        let before = raw.seen.lock().unwrap().len();
        let (body_sent, response) =
            slow_upload(envoy.listener, head, &[body], Framing::Length, pause);
        assert!(response.starts_with("HTTP/1.1 200"), "{what}: {response}");
        let seen = raw.seen.lock().unwrap();
        assert_eq!(seen.len(), before + 1, "{what}");
        let (arrived, got) = &seen[before];
        assert_eq!(got, body, "{what}: body unchanged");
        assert_eq!(
            *arrived >= body_sent,
            held,
            "{what}: headers reached the upstream {} the body was sent",
            if *arrived >= body_sent {
                "after"
            } else {
                "before"
            }
        );
    }
}

#[test]
fn the_upstream_gets_identical_bytes_for_chunked_http1_and_http2_uploads() {
    let chat = Chat::start(CHAT, None);
    let envoy = &chat.envoy;
    // A 60 KiB chat body (under the 64 KiB limit), sent in 9 chunks.
    let content = "0123456789abcdef\u{e9}\u{1F600}".repeat(61 * 1024 / 22);
    let body =
        format!(r#"{{"model":"small","messages":[{{"role":"user","content":"{content}"}}]}}"#);
    assert!(
        body.len() > 59 * 1024 && body.len() < 64 * 1024,
        "{}",
        body.len()
    );
    let chunks: Vec<&[u8]> = body.as_bytes().chunks(7000).collect();
    let (_, response) = slow_upload(
        envoy.listener,
        "POST /v1/chat/completions HTTP/1.1\r\ncontent-type: application/json\r\n",
        &chunks,
        Framing::Chunked { trailers: "" },
        Duration::from_millis(50),
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("x-backend: small"),
        "{response}"
    );
    let got = chat
        .backend("small")
        .received()
        .last()
        .unwrap()
        .body
        .clone();
    assert_eq!(
        (got.len(), digest(&got)),
        (body.len(), digest(body.as_bytes()))
    );
    assert_eq!(got, body.as_bytes());

    // HTTP/2 (cleartext, prior knowledge) with curl.
    let file = std::env::temp_dir().join(format!("traffic-split-body-{}.json", std::process::id()));
    let body2 = body.replace("\"small\"", "\"large\"");
    std::fs::write(&file, &body2).unwrap();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--max-time",
            "20",
        ])
        .args([
            "-H",
            "content-type: application/json",
            "-H",
            "x-user-id: user-1",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(envoy.url("/v1/chat/completions"))
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        head.starts_with("http/2 200"),
        "{head} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = traffic_split::plan::Plan::from_json(CHAT.as_bytes()).unwrap();
    let want = if plan.rules[1].destination_of_key(b"user-1") == 0 {
        "newprov"
    } else {
        "large"
    };
    assert!(head.contains(&format!("x-backend: {want}")), "{head}");
    let got = chat.backend(want).received().last().unwrap().body.clone();
    assert_eq!(
        (got.len(), digest(&got)),
        (body2.len(), digest(body2.as_bytes()))
    );
}

const OFF_LINE: &str = "match.body is OFF";

#[test]
fn without_allow_on_headers_stop_iteration_nothing_stalls_and_headers_decide() {
    // The bootstrap without the setting (Envoy's default: false).
    let chat = Chat::start(CHAT, Some(("allow_on_headers_stop_iteration: true", "")));
    assert!(!chat.envoy.log().contains("allow_on_headers_stop_iteration"));
    let body = chat_body("small", false, 3);
    let mut last: Vec<Duration> = Vec::new();
    for i in 0..30 {
        let started = Instant::now();
        // A new connection each time, so that both workers serve some.
        let r = Resp::from(
            ureq::AgentBuilder::new()
                .build()
                .post(&chat.envoy.url("/v1/chat/completions"))
                .timeout(Duration::from_secs(20))
                .set("content-type", "application/json")
                .send_bytes(body.as_bytes()),
        );
        let took = started.elapsed();
        // Decided on its headers: the body rules cannot hold, "other" matches on the path.
        assert_eq!((r.status, r.backend()), (200, "other"), "request {i}");
        assert_eq!(
            chat.backend("other").received().last().unwrap().body,
            body.as_bytes()
        );
        if i >= 10 {
            last.push(took);
        }
        assert!(took < Duration::from_secs(5), "request {i} took {took:?}");
    }
    // Once found out, no request waits: a held one takes a tick (100 ms) at least, so the last
    // 20 would all be over it; one slow connection on a loaded machine is not a wait.
    let ticks = last
        .iter()
        .filter(|t| **t >= Duration::from_millis(100))
        .count();
    assert!(ticks <= 1, "{ticks} of the last 20 took a tick: {last:?}");
    let log = chat.envoy.log();
    let lines = log.lines().filter(|l| l.contains(OFF_LINE)).count();
    // One line per process; two workers that find out on the same tick may both say it.
    assert!(
        (1..=2).contains(&lines),
        "{lines} lines saying {OFF_LINE:?}:\n{log}"
    );
    assert!(log.contains("allow_on_headers_stop_iteration: true"));
    assert_eq!(
        chat.envoy
            .counter("traffic_split.rule.small.destination.small.requests"),
        0
    );
}

#[test]
fn with_the_setting_a_slow_client_is_held_not_mistaken_for_a_missing_setting() {
    let chat = Chat::start(CHAT, None);
    // Headers, then the body 1.5 s later: held all along, then decided on the body.
    let (_, response) = slow_upload(
        chat.envoy.listener,
        "POST /v1/chat/completions HTTP/1.1\r\ncontent-type: application/json\r\n",
        &[chat_body("small", false, 1).as_bytes()],
        Framing::Length,
        Duration::from_millis(1500),
    );
    assert!(
        response.to_ascii_lowercase().contains("x-backend: small"),
        "{response}"
    );
    let r = post(
        &chat.envoy,
        "/v1/chat/completions",
        "application/json",
        chat_body("small", true, 1).as_bytes(),
        &[],
    );
    assert_eq!(r.backend(), "streaming");
    assert!(!chat.envoy.log().contains(OFF_LINE));
}

#[test]
fn shadow_copies_of_a_body_routed_request_carry_the_body() {
    let config = r#"{"rules":[{"name":"small","match":{"body":[{"pointer":"/model","exact":"small"}]},
        "destinations":[{"name":"small","cluster":"small"}],
        "shadow":[{"name":"copy","cluster":"shadowc"}]}]}"#;
    let chat = Chat::start(config, None);
    let body = chat_body("small", false, 40);
    let r = post(
        &chat.envoy,
        "/v1/chat/completions",
        "application/json",
        body.as_bytes(),
        &[],
    );
    assert_eq!(r.backend(), "small");
    let deadline = Instant::now() + Duration::from_secs(10);
    while chat.backend("shadowc").count() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let copies = chat.backend("shadowc").received();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].body, body.as_bytes());
    assert_eq!(chat.backend("small").received()[0].body, body.as_bytes());
    assert_eq!(
        chat.envoy.wait_counter("traffic_split.shadow.copy.sent", 1),
        1
    );
}

#[test]
fn a_slow_provider_fails_its_users_over_to_the_other() {
    let config = r#"{"rules":[{"name":"large","match":{"body":[{"pointer":"/model","exact":"large"}]},
        "destinations":[
          {"name":"large","cluster":"large","weight":100,"fallback":"newprov",
           "breaker":{"slow_ms":150,"min_requests":5,"failure_ratio":0.5,"window_s":10,"open_s":60}},
          {"name":"newprov","cluster":"newprov","weight":0}]}]}"#;
    let chat = Chat::start(config, None);
    let body = chat_body("large", false, 2);
    let r = post(
        &chat.envoy,
        "/v1/chat/completions",
        "application/json",
        body.as_bytes(),
        &[],
    );
    assert_eq!(r.backend(), "large");
    chat.backend("large").set_delay(Duration::from_millis(400));
    let mut sent = 0;
    let mut in_a_row = 0;
    while in_a_row < 10 && sent < 60 {
        let r = post(
            &chat.envoy,
            "/v1/chat/completions",
            "application/json",
            body.as_bytes(),
            &[],
        );
        assert_eq!(r.status, 200);
        sent += 1;
        in_a_row = if r.backend() == "newprov" {
            in_a_row + 1
        } else {
            0
        };
    }
    assert_eq!(
        in_a_row, 10,
        "still on the slow provider after {sent} requests"
    );
    // Open (state 1): the users were moved by the breaker, not by chance.
    assert_eq!(
        chat.envoy
            .counter("traffic_split.breaker.large.large.state"),
        1
    );
    let last = chat.backend("newprov").received();
    assert_eq!(last.last().unwrap().body, body.as_bytes());
}

/// A string at a pointer over a `regex`'s cap is not evaluated: the rule does not match, and the
/// request counts in `traffic_split.regex.value_too_long` as a header value would (nothing
/// silent). One request counts once per condition its applied decision skipped: a held request
/// is not counted again for the look-ahead that decided to hold it.
#[test]
fn a_body_string_over_a_regex_cap_does_not_match_and_is_counted() {
    let config = r#"{"body_max_bytes": 65536, "rules":[
      {"name":"ua","match":{"headers":[{"name":"user-agent","regex":".*Android.*"}]},
       "destinations":[{"name":"large","cluster":"large"}]},
      {"name":"gpt","match":{"path":{"prefix":"/v1/chat"},"body":[{"pointer":"/model","regex":"gpt-.*"}]},
       "destinations":[{"name":"small","cluster":"small"}]},
      {"name":"other","match":{"path":{"prefix":"/v1/chat"}},
       "destinations":[{"name":"other","cluster":"other"}]}]}"#;
    let chat = Chat::start(config, None);
    let envoy = &chat.envoy;
    let name = "traffic_split.regex.value_too_long";
    let chat_post = |model: &str, ua: &str| {
        let body = format!(r#"{{"model":"{model}","messages":[]}}"#);
        let r = post(
            envoy,
            "/v1/chat/completions",
            "application/json",
            body.as_bytes(),
            &[("user-agent", ua)],
        );
        (r, body)
    };
    let (r, _) = chat_post("gpt-4o", "curl");
    assert_eq!((r.status, r.backend()), (200, "small"));
    // Defined with the plan (it has a regex), nothing counted yet.
    assert_eq!(envoy.settled_counter(name), 0);
    // Over every pattern's cap: the rule does not match, the body reaches `other` whole.
    let long = format!("gpt-{}", "x".repeat(traffic_split::pattern::MAX_VALUE_CAP));
    let (r, body) = chat_post(&long, "curl");
    assert_eq!((r.status, r.backend()), (200, "other"), "{r:?}");
    assert_eq!(
        chat.backend("other").received().last().unwrap().body,
        body.as_bytes()
    );
    assert_eq!(envoy.wait_counter(name, 1), 1);
    assert_eq!(envoy.settled_counter(name), 1);
    // A long header value on a held request: counted once (its body decision), not also for
    // the look-ahead that held it.
    let ua = format!(
        "Mozilla/5.0 (Linux; Android 14){}",
        "x".repeat(traffic_split::pattern::MAX_VALUE_CAP)
    );
    let (r, _) = chat_post("gpt-4o", &ua);
    assert_eq!((r.status, r.backend()), (200, "small"), "{r:?}");
    assert_eq!(envoy.wait_counter(name, 2), 2);
    assert_eq!(envoy.settled_counter(name), 2);
    // Both over their caps: two conditions skipped, two counted.
    let (r, _) = chat_post(&long, &ua);
    assert_eq!((r.status, r.backend()), (200, "other"), "{r:?}");
    assert_eq!(envoy.wait_counter(name, 4), 4);
    assert_eq!(envoy.settled_counter(name), 4);
}

/// A held body that ends with trailers (HTTP/1.1 chunked trailers, which Envoy passes on with
/// `enable_trailers`): the filter decides when the trailers come (`on_http_request_trailers`),
/// routes on the body, and the upstream gets the body byte for byte.
#[test]
fn a_held_body_that_ends_with_trailers_is_routed_by_its_body() {
    let chat = Chat::start(
        CHAT,
        Some((
            "stat_prefix: ingress\n",
            "stat_prefix: ingress\n          http_protocol_options: { enable_trailers: true }\n",
        )),
    );
    let envoy = &chat.envoy;
    let body = chat_body("small", false, 40);
    let chunks: Vec<&[u8]> = body.as_bytes().chunks(500).collect();
    let (_, response) = slow_upload(
        envoy.listener,
        "POST /v1/chat/completions HTTP/1.1\r\ncontent-type: application/json\r\n\
         trailer: x-checksum\r\n",
        &chunks,
        Framing::Chunked {
            trailers: "x-checksum: 1234\r\n",
        },
        Duration::ZERO,
    );
    let response = response.to_ascii_lowercase();
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(response.contains("x-backend: small"), "{response}");
    let got = chat
        .backend("small")
        .received()
        .last()
        .unwrap()
        .body
        .clone();
    assert_eq!(got, body.as_bytes());
    let decided = "traffic_split.rule.small.destination.small.requests";
    assert_eq!(envoy.wait_counter(decided, 1), 1);
    assert_eq!(envoy.settled_counter(decided), 1);
}
