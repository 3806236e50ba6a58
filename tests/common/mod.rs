//! End-to-end harness: real Envoy (from the project's virtualenv) loading the freshly built
//! `.wasm`, with in-process HTTP backends on 127.0.0.1. Tests assert on observable effects:
//! which backend answered, what it received, what Envoy's admin endpoints report.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const STATS_CONFIG: &str = include_str!("../../envoy/stats_config.yaml");
// The bootstrap and its pieces, shared with make bench (bench/bench.py).
const FRONT: &str = include_str!("../../envoy/templates/front.yaml");
const LISTENER: &str = include_str!("../../envoy/templates/listener.yaml");
const WASM_FILTER: &str = include_str!("../../envoy/templates/wasm-filter.yaml");
const ECDS_FILTER: &str = include_str!("../../envoy/templates/ecds-filter.yaml");
const CLUSTER: &str = include_str!("../../envoy/templates/cluster.yaml");
const ROUTES_SPLIT: &str = include_str!("../../envoy/templates/routes-split.yaml");
const FAULT_FILTER: &str = include_str!("../../envoy/templates/fault-filter.yaml");

/// Fills a template of envoy/templates/ by the rules bench/bench.py's `render` follows: a
/// `{{name}}` alone on its line takes a block of lines indented to it (no line when empty),
/// one inside a line a single-line value; the template's leading comment lines are dropped.
/// A placeholder without a value, or a value no placeholder takes, panics.
pub fn render(template: &str, values: &[(&str, &str)]) -> String {
    let mut used = vec![false; values.len()];
    let mut value = |name: &str| -> &str {
        let i = values
            .iter()
            .position(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no value for placeholder {name}"));
        used[i] = true;
        values[i].1
    };
    // `{{name}}` at the start of `s`: the name and the length of the placeholder.
    let placeholder = |s: &str| {
        let name = s.strip_prefix("{{")?.split("}}").next()?;
        let word = !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_');
        (word && s[2 + name.len()..].starts_with("}}")).then(|| (name.to_string(), name.len() + 4))
    };
    let mut out = String::new();
    for line in template.lines().skip_while(|l| l.starts_with('#')) {
        let trimmed = line.trim();
        if let Some((name, _)) = placeholder(trimmed).filter(|(_, len)| *len == trimmed.len()) {
            let indent = &line[..line.len() - line.trim_start().len()];
            for l in value(&name).lines() {
                if !l.is_empty() {
                    out.push_str(indent);
                }
                out.push_str(l);
                out.push('\n');
            }
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("{{") {
            out.push_str(&rest[..at]);
            rest = &rest[at..];
            match placeholder(rest) {
                Some((name, len)) => {
                    let v = value(&name);
                    assert!(
                        !v.contains('\n'),
                        "placeholder {name} inside a line takes one line"
                    );
                    out.push_str(v);
                    rest = &rest[len..];
                }
                None => {
                    out.push_str("{{");
                    rest = &rest[2..];
                }
            }
        }
        out.push_str(rest);
        out.push('\n');
    }
    for ((name, _), used) in values.iter().zip(used) {
        assert!(used, "value without a placeholder: {name}");
    }
    out
}

fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Envoy binary: `$ENVOY_BIN`, else the project's virtualenv (`make envoy`).
pub fn envoy_bin() -> PathBuf {
    let path = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join(".venv/bin/envoy"));
    assert!(
        path.exists(),
        "no Envoy at {} — run `make envoy` (or `make test`, which does it)",
        path.display()
    );
    path
}

/// The filter under test: `$TRAFFIC_SPLIT_WASM`, else the optimized build (`make wasm`).
pub fn wasm_path() -> PathBuf {
    let path = std::env::var_os("TRAFFIC_SPLIT_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target/traffic_split.wasm"));
    assert!(
        path.exists(),
        "no filter at {} — run `make wasm` (or `make test`, which does it)",
        path.display()
    );
    path
}

// ---------------------------------------------------------------------------------------------
// Backends

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// A request as a backend received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub uri: String,
    /// Lower-case names; repeated headers keep every value in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct BackendState {
    pub name: String,
    /// Response body; the backend's name unless set.
    pub body: Mutex<Option<String>>,
    pub status: AtomicU16,
    pub delay_ms: AtomicU64,
    pub received: Mutex<Vec<Received>>,
    pub count: AtomicUsize,
    /// When set, the backend is an application that calls the next service: it sends each
    /// request on to this base URL with the headers it received (`Backend::forwarding`).
    pub forward_to: Mutex<Option<String>>,
}

/// An HTTP/1.1 server on 127.0.0.1 answering `<name>` with header `x-backend: <name>`
/// (status 500 for requests carrying `x-fail: 1` or `x-fail: <name>`; `cache-control: V` for
/// requests carrying `x-respond-cache-control: V`).
#[derive(Clone)]
pub struct Backend {
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState {
            name: name.to_string(),
            body: Mutex::new(None),
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            received: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            forward_to: Mutex::new(None),
        });
        let st = Arc::clone(&state);
        runtime().spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, Arc::clone(&st)));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend { addr, state }
    }

    /// An application in the middle of a call chain: it calls `next` (a base URL such as
    /// `http://127.0.0.1:port`) with the method, path and every header it received except
    /// hop-by-hop ones and `host` (as an app that forwards all headers, or OpenTelemetry's
    /// propagators for `baggage`, would), and answers with the next service's status, body
    /// and `x-backend`, adding `x-forwarded-by: <name>`.
    pub fn forwarding(name: &str, next: &str) -> Backend {
        let backend = Backend::start(name);
        *backend.state.forward_to.lock().unwrap() = Some(next.to_string());
        backend
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    pub fn set_body(&self, body: &str) {
        *self.state.body.lock().unwrap() = Some(body.to_string());
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

async fn handle(
    req: hyper::Request<Incoming>,
    st: Arc<BackendState>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let headers = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let received = Received {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers,
        body,
    };
    st.received.lock().unwrap().push(received.clone());
    st.count.fetch_add(1, Ordering::SeqCst);
    // A client can ask for a failure, to script exact failure ratios.
    // `x-fail: <name>` fails only at the backend of that name (not at a fallback).
    let forced_failure = parts
        .headers
        .get("x-fail")
        .is_some_and(|v| v == "1" || v.as_bytes() == st.name.as_bytes());
    let next = st.forward_to.lock().unwrap().clone();
    if let Some(next) = next {
        let name = st.name.clone();
        let (status, backend, body) = tokio::task::spawn_blocking(move || {
            let mut call = ureq::request(&received.method, &format!("{next}{}", received.uri));
            for (n, v) in &received.headers {
                let hop = ["host", "connection", "content-length", "transfer-encoding"];
                if !hop.contains(&n.as_str()) {
                    call = call.set(n, v);
                }
            }
            let r = match call.send_bytes(&received.body) {
                Ok(r) | Err(ureq::Error::Status(_, r)) => r,
                Err(e) => panic!("{name}: calling the next service failed: {e}"),
            };
            let backend = r.header("x-backend").unwrap_or("").to_string();
            (r.status(), backend, r.into_string().unwrap_or_default())
        })
        .await
        .unwrap();
        let response = hyper::Response::builder()
            .status(status)
            .header("x-backend", backend)
            .header("x-forwarded-by", st.name.as_str())
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        return Ok(response);
    }
    let delay = st.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let body = st
        .body
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| st.name.clone());
    let status = if forced_failure {
        500
    } else {
        st.status.load(Ordering::SeqCst)
    };
    let mut response = hyper::Response::builder()
        .status(status)
        .header("x-backend", st.name.as_str());
    // A client can ask for the response's Cache-Control, to script caching cases.
    if let Some(cc) = parts.headers.get("x-respond-cache-control") {
        response = response.header("cache-control", cc);
    }
    let response = response.body(Full::new(Bytes::from(body))).unwrap();
    Ok(response)
}

/// A loopback port with nothing listening (connections are refused).
pub fn closed_port() -> SocketAddr {
    // A loopback address nothing else here listens on (every Envoy, backend and soak server
    // binds 127.0.0.1): a port freed on 127.0.0.1 could be taken by a parallel test before
    // Envoy tries it, and then the "refused" backend would answer.
    let listener = StdListener::bind("127.0.0.253:0").unwrap();
    listener.local_addr().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Envoy

/// At most this many Envoys at once per test binary: 2 cores.
const MAX_ENVOYS: usize = 2;

struct Slots {
    used: Mutex<usize>,
    freed: Condvar,
}

fn slots() -> &'static Slots {
    static SLOTS: OnceLock<Slots> = OnceLock::new();
    SLOTS.get_or_init(|| Slots {
        used: Mutex::new(0),
        freed: Condvar::new(),
    })
}

struct SlotGuard;

impl SlotGuard {
    fn acquire() -> SlotGuard {
        let s = slots();
        let mut used = s.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used >= MAX_ENVOYS {
            used = s.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += 1;
        SlotGuard
    }

    fn acquire_two() -> (SlotGuard, SlotGuard) {
        let s = slots();
        let mut used = s.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used + 2 > MAX_ENVOYS {
            used = s.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += 2;
        (SlotGuard, SlotGuard)
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let s = slots();
        *s.used.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        // notify_all: a waiter for two slots must not swallow the wake-up a one-slot waiter needs.
        s.freed.notify_all();
    }
}

/// How to build one Envoy for a test.
pub struct EnvoySpec {
    /// The plugin configuration (JSON), passed as the Wasm `configuration`.
    pub plugin_config: String,
    /// Clusters by name; the first is where requests go when no routing header is set.
    pub clusters: Vec<(String, Option<SocketAddr>)>,
    pub concurrency: u32,
    /// Upstream timeout of the routes.
    pub route_timeout: Duration,
    /// Another Wasm module than the filter under test (tests/panic-module).
    pub wasm: Option<PathBuf>,
    /// The Wasm plugin's `failure_policy` (`FAIL_CLOSED`, `FAIL_OPEN`, `FAIL_RELOAD`).
    pub failure_policy: Option<String>,
    /// The connection manager's `normalize_path` and `merge_slashes` (the shipped configs').
    pub normalize_path: bool,
    /// When set, the only host functions and callbacks the module may use
    /// (`capability_restriction_config`): a way to take a host call away from it.
    pub capabilities: Option<Vec<String>>,
    /// Text replacements applied to the generated bootstrap, in order (see `EnvoySpec::patch`).
    pub patches: Vec<(String, String)>,
    /// Deliver the filter through ECDS from a watched file, as Istio does (see `ecds`).
    pub ecds: bool,
    /// Envoy runtime keys (`layered_runtime` static layer), e.g. buffer limits.
    pub runtime: Vec<(String, u64)>,
    /// More listeners after the main one, each with the filter in the same `vm_id` (never
    /// through ECDS) but its own plugin configuration and, optionally, a `traffic_direction`
    /// and another plugin name.
    pub extra_listeners: Vec<ExtraListener>,
    /// Environment variables of the Envoy process (e.g. libfaketime's, to step its wall clock).
    pub env: Vec<(String, String)>,
    /// Envoy's fault filter under header control after the Wasm filter
    /// (envoy/templates/fault-filter.yaml), with this `max_active_faults`.
    pub fault_filter: Option<u32>,
}

/// A listener after the main one (see `EnvoySpec::extra_listeners`).
pub struct ExtraListener {
    pub plugin_config: String,
    pub direction: Option<&'static str>,
    pub plugin_name: &'static str,
}

/// The ECDS resource file (a watched directory's `ecds.yaml`) holding the filter's config.
fn ecds_resources(wasm: &Path, plugin_config: &str, version: u64) -> String {
    serde_json::json!({
        "version_info": version.to_string(),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": "traffic-split",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "traffic-split",
                    "root_id": "traffic-split",
                    "allow_on_headers_stop_iteration": true,
                    "vm_config": {
                        "vm_id": "traffic-split",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": { "local": { "filename": wasm.display().to_string() } }
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": plugin_config
                    }
                }
            }
        }]
    })
    .to_string()
}

impl EnvoySpec {
    pub fn new(plugin_config: &str) -> Self {
        EnvoySpec {
            plugin_config: plugin_config.to_string(),
            clusters: Vec::new(),
            concurrency: 2,
            route_timeout: Duration::from_secs(5),
            wasm: None,
            failure_policy: None,
            normalize_path: false,
            capabilities: None,
            patches: Vec::new(),
            ecds: false,
            runtime: Vec::new(),
            extra_listeners: Vec::new(),
            env: Vec::new(),
            fault_filter: None,
        }
    }

    /// Envoy's fault filter with header control after the Wasm filter, as shipped
    /// (`rules[].fault` needs it), allowing `max_active_faults` at once.
    pub fn fault_filter(mut self, max_active_faults: u32) -> Self {
        self.fault_filter = Some(max_active_faults);
        self
    }

    /// Another listener (see `extra_listeners`); `Envoy::listeners` has its address.
    pub fn listener(mut self, plugin_config: &str, direction: Option<&'static str>) -> Self {
        self.extra_listeners.push(ExtraListener {
            plugin_config: plugin_config.to_string(),
            direction,
            plugin_name: "traffic-split",
        });
        self
    }

    /// Another listener whose filter has another plugin name (as a second Istio WasmPlugin
    /// sharing the `vm_id` would).
    pub fn listener_named(mut self, plugin_name: &'static str, plugin_config: &str) -> Self {
        self.extra_listeners.push(ExtraListener {
            plugin_config: plugin_config.to_string(),
            direction: None,
            plugin_name,
        });
        self
    }

    /// The filter comes through ECDS (`config_discovery` + `path_config_source`, a watched
    /// file): `Envoy::reconfigure` then swaps its configuration live, as an Istio WasmPlugin
    /// change does. (`failure_policy` and `capabilities` apply to the static filter only.)
    pub fn ecds(mut self) -> Self {
        self.ecds = true;
        self
    }

    /// Loads this module instead of the one under test (e.g. a variant of it).
    pub fn wasm(mut self, path: &Path) -> Self {
        self.wasm = Some(path.to_path_buf());
        self
    }

    /// Replaces `from` by `to` in the generated bootstrap (e.g. a filter before the Wasm
    /// filter, a remote `code` source). Starting Envoy panics if `from` is not found, so a
    /// patch never silently stops applying.
    pub fn patch(mut self, from: &str, to: &str) -> Self {
        self.patches.push((from.to_string(), to.to_string()));
        self
    }

    pub fn cluster(mut self, name: &str, addr: SocketAddr) -> Self {
        self.clusters.push((name.to_string(), Some(addr)));
        self
    }

    /// A cluster with no endpoints at all (every request to it fails at once).
    pub fn empty_cluster(mut self, name: &str) -> Self {
        self.clusters.push((name.to_string(), None));
        self
    }

    /// The bootstrap: envoy/templates/front.yaml (make bench's too) with its listeners
    /// (listener.yaml: the filter's routes, `/api` first then routes-split.yaml, and the Wasm
    /// filter or its ECDS entry) and clusters, then the patches.
    fn yaml(&self, wasm: &Path, dir: &Path) -> String {
        let default_cluster = self
            .clusters
            .first()
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| "none".to_string());
        let clusters: String = self
            .clusters
            .iter()
            .map(|(name, addr)| match addr {
                Some(addr) => render(
                    CLUSTER,
                    &[("name", name), ("port", &addr.port().to_string()), ("options", "")],
                ),
                None => format!(
                    "- name: {name}\n  type: STATIC\n  connect_timeout: 1s\n  load_assignment: {{ cluster_name: {name} }}\n"
                ),
            })
            .collect();
        let timeout = format!("{}s", self.route_timeout.as_secs_f64());
        let routes = format!(
            "- name: api\n  match: {{ prefix: \"/api\" }}\n  route: {{ cluster_header: x-split-cluster, timeout: {timeout} }}\n{}",
            render(
                ROUTES_SPLIT,
                &[("timeout", &timeout), ("default_cluster", &default_cluster)]
            )
        );
        let mut options = Vec::new();
        if let Some(policy) = &self.failure_policy {
            options.push(format!("failure_policy: {policy}"));
        }
        if let Some(names) = &self.capabilities {
            let allowed: Vec<String> = names.iter().map(|n| format!("{n}: {{}}")).collect();
            options.push(format!(
                "capability_restriction_config: {{ allowed_capabilities: {{ {} }} }}",
                allowed.join(", ")
            ));
        }
        let options = options.join("\n");
        let wasm = wasm.display().to_string();
        let static_filter = |plugin: &str, plugin_config: &str| {
            let config = serde_json::to_string(plugin_config).unwrap();
            render(
                WASM_FILTER,
                &[
                    ("name", plugin),
                    ("id", "traffic-split"),
                    ("options", &options),
                    ("wasm", &wasm),
                    ("configuration", &config),
                ],
            )
        };
        let normalize = self.normalize_path;
        let connection_manager = format!("normalize_path: {normalize}\nmerge_slashes: {normalize}");
        let fault_filter = self
            .fault_filter
            .map(|max| render(FAULT_FILTER, &[("max_active_faults", &max.to_string())]))
            .unwrap_or_default();
        let listener = |name: &str, wasm_filter: &str, direction: Option<&str>| {
            let http_filters = format!("{wasm_filter}{fault_filter}");
            let direction = direction
                .map(|d| format!("traffic_direction: {d}"))
                .unwrap_or_default();
            render(
                LISTENER,
                &[
                    ("name", name),
                    ("options", &direction),
                    ("port", "0"),
                    ("connection_manager", &connection_manager),
                    ("routes", &routes),
                    ("http_filters", &http_filters),
                ],
            )
        };
        let wasm_filter = if self.ecds {
            render(ECDS_FILTER, &[("dir", &dir.display().to_string())])
        } else {
            static_filter("traffic-split", &self.plugin_config)
        };
        let mut listeners = listener("main", &wasm_filter, None);
        for (i, extra) in self.extra_listeners.iter().enumerate() {
            let filter = static_filter(extra.plugin_name, &extra.plugin_config);
            listeners += &listener(&format!("extra{i}"), &filter, extra.direction);
        }
        let runtime: String = self
            .runtime
            .iter()
            .map(|(k, v)| format!("\n      {k}: {v}"))
            .collect();
        let runtime = if runtime.is_empty() {
            runtime
        } else {
            format!("layered_runtime:\n  layers:\n  - name: static\n    static_layer:{runtime}\n")
        };
        let head = format!(
            "{STATS_CONFIG}node: {{ id: traffic-split-test, cluster: traffic-split-test }}\n{runtime}# Histograms are merged on each stats flush: flush often so tests see them quickly.\nstats_flush_interval: 0.5s"
        );
        let mut yaml = render(
            FRONT,
            &[
                ("head", &head),
                ("admin_port", "0"),
                ("listeners", &listeners),
                ("clusters", &clusters),
            ],
        );
        for (from, to) in &self.patches {
            assert!(
                yaml.contains(from.as_str()),
                "patch target not in the bootstrap: {from}"
            );
            yaml = yaml.replacen(from.as_str(), to, 1);
        }
        yaml
    }
}

pub struct Envoy {
    /// The module it loaded.
    pub wasm: PathBuf,
    child: Child,
    pub admin: SocketAddr,
    pub listener: SocketAddr,
    /// Every listener: the main one, then `EnvoySpec::extra_listeners` in order.
    pub listeners: Vec<SocketAddr>,
    pub dir: PathBuf,
    agent: ureq::Agent,
    _slot: SlotGuard,
}

/// Envoy did not come up; `log` is everything it wrote.
#[derive(Debug)]
pub struct StartFailure {
    pub exited: Option<std::process::ExitStatus>,
    pub log: String,
}

fn test_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "traffic-split-e2e-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Envoy {
    /// Starts Envoy and waits until its listener accepts requests; panics with its log if not.
    pub fn start(spec: EnvoySpec) -> Envoy {
        match Envoy::try_start(spec) {
            Ok(envoy) => envoy,
            Err(failure) => panic!(
                "Envoy did not start (exit: {:?}); its log:\n{}",
                failure.exited, failure.log
            ),
        }
    }

    /// Two Envoys that run at the same time (the second usually sends to the first): both
    /// slots are taken at once, so two tests doing this can never wait on each other.
    pub fn start_pair(
        first: EnvoySpec,
        second: impl FnOnce(&Envoy) -> EnvoySpec,
    ) -> (Envoy, Envoy) {
        let (a, b) = SlotGuard::acquire_two();
        let first = Envoy::try_start_in(first, a)
            .unwrap_or_else(|f| panic!("first Envoy did not start: {}", f.log));
        let second = Envoy::try_start_in(second(&first), b)
            .unwrap_or_else(|f| panic!("second Envoy did not start: {}", f.log));
        (first, second)
    }

    /// Envoy's process id (for /proc/<pid>/status).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A line of /proc/<pid>/status in kB (`VmRSS`, `VmHWM`: peak resident memory).
    pub fn proc_status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid()))
    }

    pub fn try_start(spec: EnvoySpec) -> Result<Envoy, StartFailure> {
        Envoy::try_start_in(spec, SlotGuard::acquire())
    }

    fn try_start_in(spec: EnvoySpec, slot: SlotGuard) -> Result<Envoy, StartFailure> {
        let dir = test_dir();
        let config_path = dir.join("envoy.yaml");
        let wasm = spec.wasm.clone().unwrap_or_else(wasm_path);
        std::fs::write(&config_path, spec.yaml(&wasm, &dir)).unwrap();
        if spec.ecds {
            std::fs::write(
                dir.join("ecds.yaml"),
                ecds_resources(&wasm, &spec.plugin_config, 0),
            )
            .unwrap();
        }
        let admin_path = dir.join("admin-address");
        let log_path = dir.join("envoy.log");
        let log_file = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--disable-hot-restart", "--concurrency"])
            .arg(spec.concurrency.to_string())
            .args(["-l", "info", "--component-log-level", "wasm:debug"])
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(20))
            .max_idle_connections_per_host(64)
            .build();
        let deadline = Instant::now() + Duration::from_secs(30);
        let fail = |child: &mut Child| {
            let exited = child.try_wait().ok().flatten();
            if exited.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            StartFailure {
                exited,
                log: std::fs::read_to_string(&log_path).unwrap_or_default(),
            }
        };
        loop {
            if Instant::now() > deadline {
                return Err(fail(&mut child));
            }
            if let Ok(Some(_)) = child.try_wait() {
                return Err(fail(&mut child));
            }
            std::thread::sleep(Duration::from_millis(50));
            let Some(admin) = std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|s| s.trim().parse::<SocketAddr>().ok())
            else {
                continue;
            };
            let Ok(resp) = agent
                .get(&format!("http://{admin}/listeners?format=json"))
                .call()
            else {
                continue;
            };
            let Some(json) = resp
                .into_string()
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            else {
                continue;
            };
            let wanted = 1 + spec.extra_listeners.len();
            let names = std::iter::once("main".to_string())
                .chain((0..spec.extra_listeners.len()).map(|i| format!("extra{i}")));
            let statuses = json["listener_statuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let listeners: Vec<SocketAddr> = names
                .filter_map(|name| {
                    let status = statuses.iter().find(|s| s["name"] == name.as_str())?;
                    let port = status["local_address"]["socket_address"]["port_value"]
                        .as_u64()
                        .filter(|p| *p > 0)?;
                    format!("127.0.0.1:{port}").parse().ok()
                })
                .collect();
            if listeners.len() < wanted {
                continue;
            }
            let listener = listeners[0];
            let ready = agent.get(&format!("http://{admin}/ready")).call().is_ok();
            if ready {
                return Ok(Envoy {
                    wasm,
                    child,
                    admin,
                    listener,
                    listeners,
                    dir,
                    agent,
                    _slot: slot,
                });
            }
        }
    }

    /// ECDS only (`EnvoySpec::ecds`): publishes a new filter configuration the way a watched
    /// file is updated (write aside, rename over), then waits until Envoy applied it; returns
    /// false if Envoy rejected it or did not apply it within 5 s.
    pub fn reconfigure(&self, plugin_config: &str, version: u64) -> bool {
        let stat = |what: &str| {
            self.stats()
                .get(&format!(
                    "extension_config_discovery.http_filter.traffic-split.{what}"
                ))
                .copied()
                .unwrap_or(0)
        };
        let (reloads, fails) = (stat("config_reload"), stat("config_fail"));
        let staged = self.dir.join("ecds.staged.yaml");
        std::fs::write(&staged, ecds_resources(&self.wasm, plugin_config, version)).unwrap();
        std::fs::rename(&staged, self.dir.join("ecds.yaml")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if stat("config_fail") > fails {
                return false;
            }
            if stat("config_reload") > reloads {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.listener, path)
    }

    /// A URL on listener `i` (0 is the main one; see `EnvoySpec::listener`).
    pub fn url_on(&self, i: usize, path: &str) -> String {
        format!("http://{}{}", self.listeners[i], path)
    }

    /// A request through the filter.
    pub fn request(&self, method: &str, path: &str) -> ureq::Request {
        self.agent.request(method, &self.url(path))
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req = self.request("GET", path);
        for (n, v) in headers {
            req = req.set(n, v);
        }
        Resp::from(req.call())
    }

    pub fn admin_get(&self, path: &str) -> String {
        self.agent
            .get(&format!("http://{}{}", self.admin, path))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    }

    /// Every stat as `name -> value` from `/stats` (counters and gauges).
    pub fn stats(&self) -> BTreeMap<String, u64> {
        self.admin_get("/stats")
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    }

    /// A stat as Envoy reports it (`traffic_split.…` names are looked up under `wasmcustom.`).
    /// A stat that does not exist is a test failure, never 0: an assertion that a misspelt or
    /// undefined metric is 0 would otherwise pass.
    pub fn counter(&self, name: &str) -> u64 {
        self.try_counter(name).unwrap_or_else(|| {
            let stats = self.stats();
            let near: Vec<&String> = stats
                .keys()
                .filter(|k| k.contains("traffic_split") || k.contains(name))
                .take(40)
                .collect();
            panic!("no stat named {name:?} (nor wasmcustom.{name}); stats that look related: {near:#?}")
        })
    }

    /// A stat, or `None` when Envoy does not report it (yet).
    pub fn try_counter(&self, name: &str) -> Option<u64> {
        let stats = self.stats();
        stats
            .get(&format!("wasmcustom.{name}"))
            .or_else(|| stats.get(name))
            .copied()
    }

    /// A counter once it has stopped moving: two reads two flush ticks apart agree.
    pub fn settled_counter(&self, name: &str) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = self.counter(name);
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = self.counter(name);
            if now == last || Instant::now() > deadline {
                assert_eq!(now, last, "{name} still moving after 10 s");
                return now;
            }
            last = now;
        }
    }

    /// The `/stats` line of a traffic-split histogram (quantiles), waiting for the next
    /// stats flush to merge recorded values; `None` if nothing was recorded in time.
    pub fn histogram(&self, name: &str) -> Option<String> {
        let wanted = format!("wasmcustom.{name}: ");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let line = self
                .admin_get("/stats")
                .lines()
                .find(|l| l.starts_with(&wanted))
                .map(str::to_string);
            match line {
                Some(l) if !l.contains("No recorded values") => return Some(l),
                _ if Instant::now() > deadline => return None,
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The cumulative value of quantile `q` (e.g. "P50") from a `/stats` histogram line such as
    /// `name: P0(nan,1000) P25(nan,1025) P50(nan,1050) …` (interval value, cumulative value).
    pub fn histogram_quantile(line: &str, q: &str) -> f64 {
        let start = line
            .find(&format!(" {q}("))
            .unwrap_or_else(|| panic!("no {q} in {line:?}"))
            + q.len()
            + 2;
        let rest = &line[start..];
        let inner = &rest[..rest
            .find(')')
            .unwrap_or_else(|| panic!("bad {q} in {line:?}"))];
        let (_, cumulative) = inner
            .split_once(',')
            .unwrap_or_else(|| panic!("bad {q} in {line:?}"));
        cumulative
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("bad {q} value in {line:?}"))
    }

    /// Waits (counters are flushed on a tick) until `name` reaches `expected`; returns the last
    /// value. The stat must exist (see `counter`).
    pub fn wait_counter(&self, name: &str, expected: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let value = self.counter(name);
            if value >= expected || Instant::now() > deadline {
                return value;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let _ = writeln!(
                std::io::stderr(),
                "--- last lines of Envoy's log ({}) ---\n{}",
                self.dir.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A response as the client saw it (any status).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Which backend answered (`x-backend`), or "" for a local reply.
    pub fn backend(&self) -> &str {
        self.header("x-backend").unwrap_or("")
    }
}

impl From<Result<ureq::Response, ureq::Error>> for Resp {
    fn from(result: Result<ureq::Response, ureq::Error>) -> Self {
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("request failed: {e}"),
        };
        let status = response.status();
        let headers = response
            .headers_names()
            .into_iter()
            .flat_map(|n| {
                response
                    .all(&n)
                    .into_iter()
                    .map(|v| (n.clone(), v.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let body = response.into_string().unwrap_or_default();
        Resp {
            status,
            headers,
            body,
        }
    }
}

/// Binomial band: |observed - n p| <= 4 sd.
pub fn assert_binomial(observed: usize, n: usize, p: f64, what: &str) {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    let diff = (observed as f64 - mean).abs();
    assert!(
        diff <= 4.0 * sd,
        "{what}: {observed} of {n}, expected {mean:.1} ± {:.1} (4 sd)",
        4.0 * sd
    );
}

/// The first `n` user keys (`user-0`, `user-1`, …) that the first rule of `config` buckets to
/// destination `destination`, by the filter's own bucketing (`Rule::destination_of_key`).
pub fn users_bucketed_to(config: &str, destination: usize, n: usize) -> Vec<String> {
    let plan = traffic_split::plan::Plan::from_json(config.as_bytes()).unwrap();
    let rule = &plan.rules[0];
    (0..)
        .map(|i| format!("user-{i}"))
        .filter(|u| rule.destination_of_key(u.as_bytes()) == destination)
        .take(n)
        .collect()
}
