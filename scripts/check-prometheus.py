#!/usr/bin/env python3
"""Every shipped query, asked of a real Prometheus scraping a real Envoy. Used by `make test`.

  .venv/bin/python scripts/check-prometheus.py            # ENVOY, WASM, PROMETHEUS, PROMTOOL

Starts the demo's backends (envoy/demo-backends.yaml) and a front Envoy with the demo's
bootstrap (envoy/demo.yaml: its stats_config, routes, clusters) whose filter is delivered by ECDS
from a watched file (as Istio does), with the demo's rules plus a rollout and lanes so that
every metric family the dashboard reads exists. All on 127.0.0.1, on free ports, in a temporary
directory. Then it drives traffic: sticky users, a checkout payment the shadow answers 503
(a class mismatch), the canary failing on /unstable until its breaker opens (which aborts the
rollout), lane hops, a refused and an accepted configuration update, a Wasm VM that dies
(a second, test-only filter: tests/panic-module; traffic-split itself does not panic), bodies
a `match.body` rule cannot read (too large, not JSON) and a header value too long for a `regex`,
and judge windows of `checkout` that fail (its canary answers 500 on /checkout/unstable) while
its canary's users stop coming back (sample ratio mismatch), and the demo's fault slice (rule
`chaos`, a delay added) delayed and aborted by Envoy's fault filter.

A real Prometheus (`prometheus`, Debian's package) scrapes the front Envoy's /stats/prometheus
every second and loads deploy/prometheus/alerts.yaml with every `for:` shortened to 1s. Then,
through Prometheus's HTTP API, each of these must return at least one series (an empty answer
fails):

- every panel target and every template variable query of deploy/grafana/traffic-split.json
  (`$rule`, `$destination`, ... as `.*`, as Grafana's "All"; `$__rate_interval` as 2m),
- every alert expression of deploy/prometheus/alerts.yaml, and the PrometheusRule manifest
  holds the same groups,
- every Flagger MetricTemplate query (deploy/flagger/) and Argo Rollouts AnalysisTemplate
  query (deploy/argo-rollouts/), their template arguments filled with the shipped defaults,
- every PromQL example of docs/operations.md (the inline code of its tables that names a
  traffic_split or envoy metric; one whose condition, such as `> 3`, did not happen in this run
  must at least have a left side that returns a series);

and the breaker alert must be firing (Prometheus's /api/v1/alerts) while the breaker is open
(its gauge is 1 at that moment). `promtool check rules` must pass on the shipped rules file.

Adding a panel, an alert or a template query for a metric: the check fails until this Envoy
exports the metric and its situation happens here, so extend `plugin_config()` (configure the
feature) and `drive_traffic()` (make it happen) in the same change; a template argument needs
a value in TEMPLATE_VALUES.

Without Prometheus the check fails when CI=true and otherwise says loudly that it did not run
(exit 0 only outside CI, so a laptop without the package can still run `make test`).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ENVOY = os.environ.get("ENVOY") or str(ROOT / ".venv" / "bin" / "envoy")
WASM = os.environ.get("WASM") or str(ROOT / "target" / "traffic_split.wasm")
PROMETHEUS = os.environ.get("PROMETHEUS") or shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = os.environ.get("PROMTOOL") or shutil.which("promtool") or "/usr/bin/promtool"
DASHBOARD = ROOT / "deploy" / "grafana" / "traffic-split.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "prometheus" / "prometheusrule.yaml"
FLAGGER_DIR = ROOT / "deploy" / "flagger"
ARGO_DIR = ROOT / "deploy" / "argo-rollouts"
OPERATIONS = ROOT / "docs" / "operations.md"
PANIC_MODULE_DIR = ROOT / "tests" / "panic-module"
PANIC_TARGET = ROOT / "target" / "panic-module"
PANIC_WASM = PANIC_TARGET / "wasm32-wasip1" / "release" / "panic_module.wasm"

# Values for Grafana's variables in dashboard queries.
# Windows cover the whole run (about 15 s of traffic; more on a loaded machine), so a rate or a
# histogram quantile sees the traffic however long the checks before it took.
GRAFANA_VARS = {"__rate_interval": "2m", "__interval": "5s", "__range": "5m"}
VARIABLE_ALL = ".*"
# Flagger's built-in template variables (https://docs.flagger.app/usage/metrics).
FLAGGER_VARS = {"interval": "2m", "namespace": "shop", "target": "checkout"}

STEP = "(none)"
children = []  # (name, Popen, log path)
FRONT_ADMIN = []  # the front Envoy's admin URL, once it runs (for failure reports)


def step(what):
    global STEP
    STEP = what
    print(f"> [prometheus] {what}", flush=True)


def fail(what, detail=""):
    print(f"prometheus check FAILED at step \"{STEP}\": {what}")
    if detail:
        print(detail)
    if FRONT_ADMIN:
        try:
            stats = http(FRONT_ADMIN[0] + "/stats?filter=traffic_split|wasm|extension_config", timeout=5)[2]
            print("--- the front Envoy's traffic-split, wasm and ECDS stats:")
            print(stats)
        except OSError as e:
            print(f"--- (the front Envoy's stats could not be read: {e})")
    for name, proc, log in children:
        if log and Path(log).exists():
            tail = Path(log).read_text(errors="replace").splitlines()[-25:]
            print(f"--- {name} log ({log}), last lines:")
            print("\n".join(tail))
    stop_all()
    sys.exit(1)


def stop_all():
    for _, proc, _ in children:
        if proc.poll() is None:
            proc.terminate()
    for _, proc, _ in children:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    children.clear()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name, args, log, cwd=None):
    out = open(log, "w", encoding="utf-8")
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd)
    children.append((name, proc, log))
    return proc


def http(url, data=None, headers=None, timeout=10):
    """(status, headers, body) of a request; any HTTP status is an answer, not an error."""
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode("utf-8", "replace")


def wait_until(what, check, timeout=30.0, every=0.2):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (OSError, urllib.error.URLError, ValueError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            fail(f"{what}: not within {timeout:.0f} s")
        for name, proc, _ in children:
            if proc.poll() is not None:
                fail(f"{what}: {name} exited with {proc.returncode}")
        time.sleep(every)


# --- the plugin configuration ------------------------------------------------------------------


def demo_bootstrap():
    return yaml.safe_load((ROOT / "envoy" / "demo.yaml").read_text(encoding="utf-8"))


def wasm_filter_entry(bootstrap):
    """(the http_filters list, index) of the demo's traffic-split filter."""
    for listener in bootstrap["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                filters = f["typed_config"].get("http_filters") or []
                for i, h in enumerate(filters):
                    if (h.get("typed_config") or {}).get("config", {}).get("root_id") == "traffic-split":
                        return filters, i
    fail("envoy/demo.yaml has no traffic-split filter")


def plugin_config(bootstrap):
    """The demo's rules, plus what the demo does not configure but the dashboard shows:
    rollouts of the canary on the `checkout` rule (as in docs/operations.md's examples) and on
    the `everyone` rule (its breaker aborts it), lanes started there (baggage) and followed by
    a `payments` rule (a header carrier)."""
    filters, i = wasm_filter_entry(bootstrap)
    config = json.loads(filters[i]["typed_config"]["config"]["configuration"]["value"])
    checkout = next(r for r in config["rules"] if r["name"] == "checkout")
    checkout["rollout"] = {"destination": "canary", "start": "2020-01-01T00:00:00Z",
                           "steps": [{"percent": 5, "hold_s": 60}, {"percent": 10}]}
    everyone = next(r for r in config["rules"] if r["name"] == "everyone")
    everyone["rollout"] = {"destination": "canary", "start": "2020-01-01T00:00:00Z",
                           "steps": [{"percent": 10, "hold_s": 60}, {"percent": 20}],
                           "abort_on_breaker_open": True}
    everyone["propagate"] = {"baggage": "split-lane"}
    # The breaker stays open for the whole check (the alert must fire while it is open).
    breaker = next(d for d in everyone["destinations"] if d["name"] == "canary")["breaker"]
    breaker["open_s"] = 300
    # The judge (docs/configuration.md, "judge") on `checkout`, as in docs/operations.md's
    # examples: windows of 4 s, reporting only (it keeps judging); the check's canary answers
    # 500 on /checkout/unstable, so its windows fail, and its users do not come back (SRM).
    checkout["judge"] = {"canary": "canary", "baseline": "stable", "window_s": 4, "min_requests": 10,
                         "errors": {"max_increase": 0.01}, "latency": {"percentile": 90, "max_ratio": 1.2},
                         "fail_after": 1, "on_fail": "report"}
    # A judge on `everyone` too: the Flagger and Argo templates' `rule` (TEMPLATE_VALUES).
    everyone["judge"] = {"window_s": 2, "min_requests": 10, "on_fail": "report"}
    # Body routing (match.body) and a regex condition, each made to fail to evaluate in
    # drive_traffic(): a body over body_max_bytes, a body that is not JSON, a header value over
    # the regex's cap (at most 4,096 bytes).
    config["body_max_bytes"] = 1024
    config["rules"].insert(0, {
        "name": "tenants", "match": {"headers": [{"name": "x-tenant", "regex": "[a-z]+-[0-9]+"}]},
        "destinations": [{"name": "stable", "cluster": "stable"}]})
    config["rules"].insert(0, {
        "name": "large-model",
        "match": {"path": {"prefix": "/v1/chat"}, "body": [{"pointer": "/model", "exact": "large"}]},
        "destinations": [{"name": "canary", "cluster": "canary"}]})
    # The demo's fault slice (rule `chaos`, Envoy's fault filter in envoy/demo.yaml): a delay too,
    # so that both fault counters move.
    chaos = next(r for r in config["rules"] if r.get("fault"))
    chaos["fault"]["delay_ms"] = 20
    config["rules"].insert(0, {
        "name": "payments", "match": {"path": {"prefix": "/payments"}},
        "propagate": {"header": "x-split-lane"}, "from_lane": True, "lane_fallback": "stable",
        "destinations": [{"name": "canary", "cluster": "canary", "weight": 0},
                         {"name": "stable", "cluster": "stable", "weight": 100}]})
    return config


def ecds_file(path, config, version, wasm):
    resource = {
        "version_info": str(version),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": "traffic-split",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "traffic-split", "root_id": "traffic-split", "failure_policy": "FAIL_RELOAD",
                    # match.body holds requests in their headers callback (envoy/demo.yaml).
                    "allow_on_headers_stop_iteration": True,
                    "vm_config": {"vm_id": "traffic-split", "runtime": "envoy.wasm.runtime.v8",
                                  "code": {"local": {"filename": wasm}}},
                    "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                      "value": config if isinstance(config, str) else json.dumps(config)},
                },
            },
        }],
    }
    staged = path.with_suffix(".staged")
    staged.write_text(json.dumps(resource), encoding="utf-8")
    staged.rename(path)


def front_bootstrap(tmp, ports):
    """envoy/demo.yaml on free ports, the filter delivered by ECDS, plus a test-only filter
    that panics on `x-panic: 1` (a Wasm VM failure to alert on)."""
    boot = demo_bootstrap()
    boot["admin"]["address"]["socket_address"]["port_value"] = 0
    boot["node"] = {"id": "prometheus-check", "cluster": "prometheus-check"}
    boot["stats_flush_interval"] = "1s"  # histograms reach /stats/prometheus on each flush
    shipped = yaml.safe_load((ROOT / "envoy" / "stats_config.yaml").read_text(encoding="utf-8"))
    boot["stats_config"] = shipped["stats_config"]
    listener = boot["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = ports["front"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["access_log"][0]["typed_config"]["path"] = str(tmp / "access.log")
    filters, i = wasm_filter_entry(boot)
    filters[i] = {
        "name": "traffic-split",
        "config_discovery": {
            "config_source": {"resource_api_version": "V3",
                              "path_config_source": {"path": str(tmp / "ecds" / "ecds.yaml"),
                                                     "watched_directory": {"path": str(tmp / "ecds")}}},
            "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"],
        },
    }
    filters.insert(i + 1, {
        "name": "panic-probe",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {"name": "panic-probe", "root_id": "panic-probe", "failure_policy": "FAIL_RELOAD",
                       "vm_config": {"vm_id": "panic-probe", "runtime": "envoy.wasm.runtime.v8",
                                     "code": {"local": {"filename": str(PANIC_WASM)}}}},
        },
    })
    for cluster in boot["static_resources"]["clusters"]:
        ep = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        ep["address"]["socket_address"]["port_value"] = ports[cluster["name"]]
    return boot


def backends_bootstrap(tmp, ports):
    """envoy/demo-backends.yaml on free ports; the canary also fails on /checkout/unstable (the
    judge of `checkout` has something to fail on)."""
    boot = yaml.safe_load((ROOT / "envoy" / "demo-backends.yaml").read_text(encoding="utf-8"))
    canary = next(x for x in boot["static_resources"]["listeners"] if x["name"] == "canary")
    vhost = canary["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]
    vhost["routes"].insert(0, {"match": {"prefix": "/checkout/unstable"},
                               "direct_response": {"status": 500,
                                                   "body": {"inline_string": "canary (v2) failed\n"}}})
    boot["admin"]["address"]["socket_address"]["port_value"] = 0
    for listener in boot["static_resources"]["listeners"]:
        listener["address"]["socket_address"]["port_value"] = ports[listener["name"]]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        for log in hcm.get("access_log") or []:
            log["typed_config"]["path"] = str(tmp / f"{listener['name']}-access.log")
    return boot


def start_envoy(name, tmp, bootstrap, concurrency):
    config = tmp / f"{name}.yaml"
    config.write_text(yaml.safe_dump(bootstrap, sort_keys=False), encoding="utf-8")
    admin_file = tmp / f"{name}.admin"
    start(name, [ENVOY, "-c", str(config), "--admin-address-path", str(admin_file), "--disable-hot-restart",
                 "--concurrency", str(concurrency), "-l", "info", "--component-log-level", "wasm:info"],
          str(tmp / f"{name}.log"), cwd=tmp)
    admin = wait_until(f"{name} Envoy writes its admin address",
                       lambda: admin_file.exists() and admin_file.read_text().strip())
    wait_until(f"{name} Envoy is ready", lambda: http(f"http://{admin}/ready", timeout=2)[0] == 200)
    return f"http://{admin}"


def build_panic_module():
    run = subprocess.run(["cargo", "build", "--quiet", "--release", "--target", "wasm32-wasip1",
                          "--manifest-path", str(PANIC_MODULE_DIR / "Cargo.toml"), "--target-dir", str(PANIC_TARGET)],
                         cwd=ROOT, capture_output=True, text=True, check=False)
    if run.returncode != 0 or not PANIC_WASM.exists():
        fail("building tests/panic-module failed", run.stdout + run.stderr)


class Demo:
    """The backends and the front Envoy, and the traffic the check drives through them."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.ports = {name: free_port() for name in ("front", "stable", "canary", "shadow")}
        self.config = plugin_config(demo_bootstrap())
        (tmp / "ecds").mkdir()
        self.version = 1
        ecds_file(tmp / "ecds" / "ecds.yaml", self.config, self.version, WASM)
        self.backends_admin = start_envoy("backends", tmp, backends_bootstrap(tmp, self.ports), 1)
        self.admin = start_envoy("front", tmp, front_bootstrap(tmp, self.ports), 2)
        FRONT_ADMIN.append(self.admin)
        self.url = f"http://127.0.0.1:{self.ports['front']}"

    def get(self, path, headers=None, data=None):
        status, hdrs, body = http(self.url + path, data=data, headers=headers)
        return status, {k.lower(): v for k, v in hdrs.items()}, body

    def stats(self):
        """`/stats` as {name: value} (counters and gauges)."""
        out = {}
        for line in http(self.admin + "/stats")[2].splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                out[name] = int(value)
        return out

    def config_rule(self, name):
        return next(r for r in self.config["rules"] if r["name"] == name)

    def stat(self, name):
        stats = self.stats()
        if name not in stats:
            fail(f"no stat {name} in the front Envoy's /stats")
        return stats[name]

    def reconfigure(self, config):
        """Publishes a configuration by ECDS; True if Envoy took it, False if it refused it."""
        prefix = "extension_config_discovery.http_filter.traffic-split."
        before = self.stats()
        self.version += 1
        ecds_file(self.tmp / "ecds" / "ecds.yaml", config, self.version, WASM)

        def outcome():
            now = self.stats()
            if now.get(prefix + "config_fail", 0) > before.get(prefix + "config_fail", 0):
                return "refused"
            if now.get(prefix + "config_reload", 0) > before.get(prefix + "config_reload", 0):
                return "taken"
            return None
        return wait_until("Envoy takes or refuses the ECDS update", outcome, timeout=20) == "taken"


def drive_traffic(demo):
    step("sticky users, employees and checkout visitors")
    for i in range(40):
        status, _, _ = demo.get("/", {"x-user-id": f"user{i}"})
        if status != 200:
            fail(f"GET / for user{i}: {status}")
    demo.get("/", {"x-employee": "true"})
    demo.get("/checkout")
    demo.get("/nothing-matches-this", {"x-no-rule": "1"})  # `everyone` matches all: still routed

    step("checkout payments: the shadow answers 503 where the primary answers 200")
    # A few payments until three comparisons are counted. Not one copy per payment: the demo's
    # backends answer before reading the body, so Envoy can reset a payment's stream before its
    # body reaches the filter; that copy is never sent, and counted `dropped`.

    def compared():
        status, _, _ = demo.get("/checkout/pay", data=b"card=4242")
        if status != 200:
            fail(f"POST /checkout/pay: {status}")
        time.sleep(0.2)
        return demo.stats().get("wasmcustom.traffic_split.shadow.v3.class_mismatch", 0) >= 3
    wait_until("three shadow class mismatches are counted", compared, timeout=30, every=0.1)

    step("lanes: started at `everyone`, followed and fallen back at `payments`")
    demo.get("/", {"x-user-id": "lane-user", "baggage": "split-lane=canary"})  # untrusted: removed
    demo.get("/payments", {"x-split-lane": "canary"})
    demo.get("/payments", {"x-split-lane": "stable"})
    demo.get("/payments", {"x-split-lane": "no-such-version"})
    wait_until("lane counters are flushed",
               lambda: demo.stats().get("wasmcustom.traffic_split.rule.payments.lane.followed", 0) >= 2)

    step("a refused configuration, then an accepted one")
    if demo.reconfigure('{"rules": [{"name": "broken", "destinations": []}]}'):
        fail("Envoy took a configuration without destinations")
    if not demo.reconfigure(demo.config):
        fail("Envoy refused the check's own configuration")

    step("a Wasm VM dies (the test-only panic-probe filter) and is reloaded")
    status, _, _ = demo.get("/", {"x-user-id": "user1", "x-panic": "1"})
    if status != 503:
        fail(f"the panicking request got {status}, not Envoy's 503")
    wait_until("a reloaded VM filters again",
               lambda: demo.get("/", {"x-user-id": "user1"})[0] == 200, timeout=20, every=0.3)

    step("the canary fails on /unstable until its breaker opens")

    def opened():
        for i in range(20):
            demo.get("/unstable", {"x-user-id": f"user{i}"})
        return demo.stats().get("wasmcustom.traffic_split.breaker.everyone.canary.state") == 1
    wait_until("the canary's breaker opens", opened, timeout=60, every=0.1)
    wait_until("the rollout is aborted",
               lambda: demo.stats().get("wasmcustom.traffic_split.rollout.everyone.aborted", 0) == 1)
    for i in range(40):
        demo.get("/unstable", {"x-user-id": f"user{i}"})

    step("body and regex conditions that cannot be evaluated")
    json_post = {"content-type": "application/json"}
    status, hdrs, _ = demo.get("/v1/chat", json_post, data=b'{"model": "large"}')
    if status != 200 or hdrs.get("x-backend") != "canary":
        fail(f"a body-routed request: {status}, backend {hdrs.get('x-backend')} (not canary)")
    big = json.dumps({"model": "large", "pad": "x" * 2048}).encode()
    demo.get("/v1/chat", json_post, data=big)  # over body_max_bytes (1024)
    demo.get("/v1/chat", json_post, data=b"model=large")  # not JSON
    # Over the regex's value cap (200-4,096 bytes, from the pattern's program size): over any cap.
    demo.get("/", {"x-user-id": "user1", "x-tenant": "acme-" + "1" * 5000})
    wait_until("body and regex counters are flushed", lambda: all(
        demo.stats().get(f"wasmcustom.traffic_split.{name}", 0) >= 1
        for name in ("body.too_large", "body.invalid", "regex.value_too_long")))

    step("the fault slice of the demo's `chaos` rule: delayed and aborted by Envoy's fault filter")
    chaos = next(r for r in demo.config["rules"] if r.get("fault"))
    path = chaos["match"]["path"]["prefix"]
    users = iter(range(100000))

    def faulted():
        for _ in range(20):  # the slice is a share of the users: new users until both are counted
            demo.get(path, {"x-user-id": f"chaos{next(users)}"})
        stats = demo.stats()
        return all(stats.get(f"wasmcustom.traffic_split.fault.{chaos['name']}.{what}", 0) >= 1
                   for what in ("delayed", "aborted"))
    wait_until("a delayed and an aborted request of the fault slice are counted", faulted, timeout=30, every=0.1)

    step("steady traffic for a few scrapes (rates and histograms need two samples apart)")
    for round_ in range(4):
        for i in range(10):
            demo.get("/", {"x-user-id": f"user{i}"})
            demo.get("/checkout", {"cookie": f"uid=visitor{round_}-{i}"})
            demo.get("/checkout/pay", data=b"card=4242")
            demo.get("/payments", {"x-split-lane": "canary"})
        time.sleep(1.2)

    step("the judge of `checkout` fails windows; its canary users stop coming back (SRM)")
    # Which checkout visitors the rollout (10%) sends to the canary.
    canary_users, stable_users = [], []
    for i in range(300):
        status, hdrs, _ = demo.get("/checkout", {"cookie": f"uid=judged{i}"})
        if status != 200:
            fail(f"GET /checkout for judged{i}: {status}")
        (canary_users if hdrs.get("x-backend") == "canary" else stable_users).append(f"judged{i}")
    if len(canary_users) < 2 or len(stable_users) < 200:
        fail(f"checkout's split: {len(canary_users)} canary and {len(stable_users)} stable visitors of 300")
    # Within one judge window (aligned to the wall clock), 200 stable visitors come back, and of
    # the canary's only two, many times, each answered 500: the window fails (canary 100% vs
    # baseline 0% failures, 40 and 200 requests) and shows a sample ratio mismatch (2 users seen
    # where 10% of 202 are expected). Nothing else is sent to `checkout` in those windows, and
    # nothing after (the windows after have no users: srm keeps its value), so no window holds a
    # part of the pattern too small to reject and large enough to reset srm.
    window_s = demo.config_rule("checkout")["judge"]["window_s"]
    prefix = "wasmcustom.traffic_split."

    def until_next_window(extra):
        now = time.time()
        time.sleep((now // window_s + 1) * window_s - now + extra)
    deadline = time.monotonic() + 90
    while True:
        until_next_window(0.05)
        started = time.time()
        for j, user in enumerate(stable_users[:200]):
            demo.get("/checkout/unstable", {"cookie": f"uid={user}"})
            if j % 5 == 0:
                demo.get("/checkout/unstable", {"cookie": f"uid={canary_users[j % 2]}"})
        took = time.time() - started
        until_next_window(0.5)  # the first worker to tick in the next window closes this one
        stats = demo.stats()
        if (stats.get(prefix + "judge.checkout.verdict") == 2
                and stats.get(prefix + "rule.checkout.srm") == 1):
            break
        print(f"     (one window's pattern took {took:.1f} s of {window_s} s; judge of checkout: verdict "
              f"{stats.get(prefix + 'judge.checkout.verdict')}, srm {stats.get(prefix + 'rule.checkout.srm')})",
              flush=True)
        if time.monotonic() > deadline:
            fail("the judge of checkout did not fail a window with SRM within 90 s",
                 "\n".join(f"{k}: {v}" for k, v in sorted(stats.items()) if ".checkout." in k))


# --- Prometheus ----------------------------------------------------------------------------------


def rules_for_test(tmp):
    """alerts.yaml with every `for:` at 1s: the check cannot wait minutes."""
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    path = tmp / "alerts-test.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    return path


def start_prometheus(tmp, envoy_admin):
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(rules_for_test(tmp))],
        "scrape_configs": [{"job_name": "envoy", "metrics_path": "/stats/prometheus",
                            "static_configs": [{"targets": [envoy_admin.removeprefix("http://")]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    start("prometheus", [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
                         f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
                         "--log.level=warn"], str(tmp / "prometheus.log"), cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    wait_until("Prometheus is ready", lambda: http(url + "/-/ready", timeout=2)[0] == 200, timeout=60)

    def scraped():
        targets = api(url, "/api/v1/targets")["activeTargets"]
        return targets and all(t["health"] == "up" for t in targets)
    wait_until("Prometheus scrapes the front Envoy", scraped, timeout=30)
    return url


def api(url, path, params=None):
    query = ("?" + urllib.parse.urlencode(params, doseq=True)) if params else ""
    status, _, body = http(url + path + query, timeout=30)
    answer = json.loads(body)
    if status != 200 or answer.get("status") != "success":
        raise QueryError(answer.get("error") or f"HTTP {status}: {body[:200]}")
    return answer["data"]


class QueryError(Exception):
    pass


def finite(value):
    return value not in ("NaN", "+Inf", "-Inf")


def instant(url, query):
    """The series of an instant query (any error is a failure of the check)."""
    data = api(url, "/api/v1/query", {"query": query})
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    return data["result"]


def top_level_comparison(query):
    """The left side of a query's last top-level comparison (`a > 3` -> `a`), or None."""
    depth, quote, cut = 0, None, None
    i = 0
    while i < len(query):
        c = query[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and query[i:i + 2] in ("==", "!=", ">=", "<="):
            cut = cut or i
            i += 1
        elif depth == 0 and c in "<>":
            cut = cut or i
        elif depth == 0 and re.match(r"\s(and|or|unless)\s", query[i:i + 7]) and cut is None:
            return None  # a set operation first: not a plain filter
        i += 1
    return query[:cut].strip() if cut else None


# --- the queries, from the shipped files ------------------------------------------------------------


def grafana_expr(expr, variables):
    def value(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in GRAFANA_VARS:
            return GRAFANA_VARS[name]
        if name in variables:
            return VARIABLE_ALL
        fail(f"dashboard query uses ${name}, which is neither a dashboard variable nor one this check knows",
             expr)
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", value, expr)


def dashboard_queries():
    """[(where, PromQL)] of every panel target, and [(where, label, match)] of every
    label_values() variable."""
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = [v["name"] for v in dash["templating"]["list"]]
    for wanted in ("datasource", "rule", "destination"):
        if wanted not in variables:
            fail(f"{DASHBOARD.relative_to(ROOT)}: no `{wanted}` variable")
    queries, labels = [], []
    for v in dash["templating"]["list"]:
        if v["type"] != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", q)
        if not m:
            fail(f"dashboard variable {v['name']}: only label_values(metric, label) is checked here", q)
        labels.append((f"variable ${v['name']}", m.group(2), grafana_expr(m.group(1), variables)))

    def walk(panels):
        for panel in panels:
            walk(panel.get("panels") or [])
            for t in panel.get("targets") or []:
                if not t.get("expr"):
                    fail(f"dashboard panel {panel.get('title')!r}: a target without a PromQL expr")
                queries.append((f"panel {panel['title']!r} {t.get('refId')}", grafana_expr(t["expr"], variables)))
    walk(dash["panels"])
    return queries, labels


def alert_queries():
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    manifest = yaml.safe_load(PROMETHEUS_RULE.read_text(encoding="utf-8"))
    if manifest["spec"]["groups"] != groups:
        fail(f"{PROMETHEUS_RULE.relative_to(ROOT)}: spec.groups differ from {ALERTS.relative_to(ROOT)}'s")
    return [(f"alert {r['alert']}", r["expr"], r["alert"]) for g in groups for r in g["rules"] if "alert" in r]


# Real values for the template arguments of deploy/flagger and deploy/argo-rollouts in this
# check's Envoy: the canary and baseline clusters, the rule and destination with a breaker.
TEMPLATE_VALUES = {"canary_cluster": "canary", "baseline_cluster": "stable", "rule": "everyone",
                   "destination": "canary", "canary-cluster": "canary", "baseline-cluster": "stable",
                   "canary-destination": "canary"}


def fill(query, pattern, where):
    def value(m):
        name = m.group(1)
        if name in FLAGGER_VARS:
            return FLAGGER_VARS[name]
        if name in TEMPLATE_VALUES:
            return TEMPLATE_VALUES[name]
        fail(f"{where}: no test value for template argument {name!r} (add it to TEMPLATE_VALUES)")
    return re.sub(pattern, value, query)


def template_queries():
    out = []
    for path in sorted(FLAGGER_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc and doc.get("kind") == "MetricTemplate":
                where = f"Flagger MetricTemplate {doc['metadata']['name']}"
                q = fill(doc["spec"]["query"], r"\{\{\s*(?:variables\.)?([\w-]+)\s*\}\}", where)
                out.append((where, q))
            elif doc and doc.get("kind") == "Canary":
                for metric in doc["spec"]["analysis"].get("metrics") or []:
                    if metric.get("query"):
                        where = f"Flagger Canary {doc['metadata']['name']} metric {metric['name']}"
                        out.append((where, fill(metric["query"], r"\{\{\s*(?:variables\.)?([\w-]+)\s*\}\}", where)))
    for path in sorted(ARGO_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc and doc.get("kind") in ("AnalysisTemplate", "ClusterAnalysisTemplate"):
                for metric in doc["spec"]["metrics"]:
                    prom = (metric.get("provider") or {}).get("prometheus")
                    if prom:
                        where = f"Argo {doc['kind']} {doc['metadata']['name']} metric {metric['name']}"
                        out.append((where, fill(prom["query"], r"\{\{\s*args\.([\w-]+)\s*\}\}", where)))
    if not any(w.startswith("Flagger") for w, _ in out) or not any(w.startswith("Argo") for w, _ in out):
        fail("no Flagger MetricTemplate or no Argo Rollouts AnalysisTemplate query found")
    return out


def docs_queries():
    """Inline code in docs/operations.md's table rows that names a metric of the filter or Envoy."""
    out = []
    for line in OPERATIONS.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        for code in re.findall(r"`([^`]+)`", line):
            if re.search(r"\b(traffic_split_|envoy_)\w+", code) and not code.startswith(("traffic_split.", "wasm.")):
                out.append((f"docs/operations.md `{code}`", code))
    if not out:
        fail("no PromQL found in docs/operations.md's tables")
    return out


# --- the check ----------------------------------------------------------------------------------


def check_queries(url, queries, comparison_may_filter=False):
    """Each query must return a series with a finite value. With comparison_may_filter (the
    docs' examples), a query whose condition is not met in this run must at least have a left
    side that does."""
    for where, query in queries:
        try:
            series = instant(url, query)
        except QueryError as e:
            fail(f"{where}: Prometheus rejected the query: {e}", query)
        values = [s["value"][1] for s in series]
        note = ""
        if not series and comparison_may_filter:
            left = top_level_comparison(query)
            if left:
                series = instant(url, left)
                values = [s["value"][1] for s in series]
                note = " (condition not met in this run; its left side:)"
        if not series:
            fail(f"{where}: no series", query)
        if not any(finite(v) for v in values):
            fail(f"{where}: every value is NaN or infinite: {values}", query)
        shown = ", ".join(f"{fmt_labels(s['metric'])}={s['value'][1]}" for s in series[:3])
        more = f" (+{len(series) - 3})" if len(series) > 3 else ""
        print(f"ok   {where}{note}: {len(series)} series: {shown}{more}", flush=True)


def fmt_labels(metric):
    labels = {k: v for k, v in metric.items() if k not in ("instance", "job")}
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def check_alert_firing(url, demo, name):
    def firing():
        alerts = api(url, "/api/v1/alerts")["alerts"]
        return [a for a in alerts if a["labels"].get("alertname") == name and a["state"] == "firing"]
    alerts = wait_until(f"{name} fires", firing, timeout=30, every=0.5)
    state = demo.stat("wasmcustom.traffic_split.breaker.everyone.canary.state")
    if state != 1:
        fail(f"{name} fired but the breaker's state is {state}, not 1 (open)")
    labels = alerts[0]["labels"]
    if (labels.get("rule"), labels.get("destination")) != ("everyone", "canary"):
        fail(f"{name} fired for the wrong breaker: {labels}")
    print(f"ok   {name} is firing for rule everyone, destination canary, while the breaker is open", flush=True)


def promtool_check(path):
    run = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        fail(f"promtool check rules {path}", run.stdout + run.stderr)
    print(f"ok   promtool check rules {rel(path)}: {run.stdout.strip().splitlines()[-1].strip()}", flush=True)


def rel(path):
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return str(path)


def main():
    global STEP
    missing = [p for p in (PROMETHEUS, PROMTOOL) if not (Path(p).exists() and os.access(p, os.X_OK))]
    if missing:
        what = f"no {' and no '.join(missing)}: install Debian's prometheus package (apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            print(f"prometheus check FAILED: {what}")
            return 1
        print(f"prometheus check NOT RUN: {what} (this fails when CI=true)")
        return 0
    step("promtool check rules on the shipped rules")
    promtool_check(ALERTS)
    step("read every query from the shipped files")
    panels, variables = dashboard_queries()
    alerts = alert_queries()
    templates = template_queries()
    docs = docs_queries()
    with tempfile.TemporaryDirectory(prefix="ts-prometheus-") as tmp:
        tmp = Path(tmp)
        try:
            step("build tests/panic-module")
            build_panic_module()
            step("start the demo backends and front Envoy")
            demo = Demo(tmp)
            step("start Prometheus, scraping the front Envoy every second")
            promtool_check(rules_for_test(tmp))
            url = start_prometheus(tmp, demo.admin)
            drive_traffic(demo)
            step("Prometheus has scraped the end of the traffic (the judge's failed window and SRM)")
            for query in ('traffic_split_rule_srm{rule="checkout"} == 1',
                          'traffic_split_judge_windows_failed{rule="checkout"} > 0'):
                wait_until(f"Prometheus answers {query}", lambda: instant(url, query), timeout=30, every=0.5)
            step("the breaker alert fires while the breaker is open")
            check_alert_firing(url, demo, "TrafficSplitBreakerOpen")
            step("every dashboard variable has values")
            for where, label, match in variables:
                values = api(url, f"/api/v1/label/{label}/values", {"match[]": match})
                if not values:
                    fail(f"dashboard {where}: label_values({match}, {label}) is empty")
                print(f"ok   dashboard {where}: {label} = {', '.join(values)}", flush=True)
            step("every dashboard panel query returns a series")
            check_queries(url, panels)
            step("every alert expression returns a series (each alert's situation happened)")
            check_queries(url, [(w, q) for w, q, _ in alerts])
            step("every Flagger and Argo Rollouts query returns a series")
            check_queries(url, templates)
            step("every PromQL example of docs/operations.md returns a series")
            check_queries(url, docs, comparison_may_filter=True)
        finally:
            stop_all()
    print(f"prometheus check ok: {len(panels)} panel queries, {len(variables)} variables, {len(alerts)} alerts "
          f"(TrafficSplitBreakerOpen seen firing), {len(templates)} Flagger/Argo queries, {len(docs)} docs examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
