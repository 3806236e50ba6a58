#!/usr/bin/env python3
"""`make bench`: what the traffic-split filter costs against Envoy's native route features, an
Envoy Lua filter, a Wasm filter that does nothing, and no filter at all.

  bench/run.sh [SCENARIO...]      run the named scenarios (default: all but the extras), see --list
  bench/run.sh --list             list the scenarios
  bench/run.sh --config SCENARIO  print the front Envoy config of a scenario
  bench/run.sh --validate         `envoy --mode validate` every config

Every scenario runs the same load: wrk (1 thread, BENCH_CONNECTIONS connections, a random
x-user-id per request) for BENCH_DURATION seconds after a BENCH_WARMUP-second warm-up, through
its own FRONT Envoy (--concurrency 1) to one BACKEND Envoy (--concurrency 1, direct_response).
Rounds are interleaved (A B C ... A B C ...) so drift hits every scenario alike. Per run it
records wrk's requests, req/s, p50/p99, and the front Envoy's CPU (utime+stime from
/proc/<pid>/stat before and after wrk) divided by the requests wrk completed. The report
(medians over the rounds) goes to bench/results/results.md, each wrk output to
bench/results/<scenario>.r<round>.raw.

The front configs are envoy/templates/front.yaml (the e2e tests' bootstrap too) filled with
the scenario's pieces from bench/envoy/ (SCENARIOS below).

Environment: BENCH_SCENARIOS (space-separated, instead of arguments), BENCH_ROUNDS (3),
BENCH_DURATION (10 s), BENCH_WARMUP (1 s), BENCH_CONNECTIONS (16), BENCH_RESULTS (directory),
ENVOY (.venv/bin/envoy), WASM (target/traffic_split.wasm), WASM_BASELINE (for the *-baseline
scenarios), WASM_OPT_FLAGS.
A smoke run: BENCH_ROUNDS=1 BENCH_DURATION=2 BENCH_WARMUP=1 bench/run.sh plain filter
"""

import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PIECES = HERE / "envoy"
TEMPLATES = ROOT / "envoy" / "templates"
ENVOY = os.environ.get("ENVOY", str(ROOT / ".venv/bin/envoy"))
WASM = os.environ.get("WASM", str(ROOT / "target/traffic_split.wasm"))
WASM_BASELINE = os.environ.get("WASM_BASELINE", "")
WASM_OPT_FLAGS = os.environ.get(
    "WASM_OPT_FLAGS",
    "-Oz --converge --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int "
    "--enable-mutable-globals --enable-reference-types --enable-multivalue",
)
RESULTS = Path(os.environ.get("BENCH_RESULTS", HERE / "results"))
WORK = RESULTS / "work"
NOOP_DIR = HERE / "wasm-noop"
NOOP_WASM = NOOP_DIR / "target/wasm_noop.wasm"
# The same no-op without the stream callbacks a no-op does not need (Envoy skips a callback the
# module does not export): what the SDK's export-everything default costs.
NOOP_LEAN_WASM = NOOP_DIR / "target/wasm_noop_lean.wasm"
NOOP_LEAN_STRIP = """proxy_on_request_body proxy_on_request_trailers proxy_on_response_headers
    proxy_on_response_body proxy_on_response_trailers proxy_on_log proxy_on_done""".split()
WRK_SCRIPT = HERE / "wrk-user-id.lua"

BACKEND_ADMIN = 19900
# Backend listeners (bench/envoy/backend.yaml): stable 19101, canary 19102, shadow 19103, slow 19104.
BACKENDS = {"stable": 19101, "canary": 19102, "shadow": 19103, "slow": 19104}
# Scenario i (its index in SCENARIOS) gets front listener 19200+i and admin 19300+i.
FRONT_PORT_BASE = 19200
FRONT_ADMIN_BASE = 19300


# ---------------------------------------------------------------- templates

PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def render(template, values):
    """Fills a template's placeholders (the same rules as tests/common/mod.rs `render`): a
    placeholder alone on its line takes a block of lines indented to it (no line when empty),
    one inside a line a single-line value. The template's leading comment lines are dropped.
    A placeholder without a value, or a value without a placeholder, is an error."""
    lines = template.splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    out, used = [], set()

    def value(name, inline):
        if name not in values:
            raise KeyError(f"no value for placeholder {name}")
        used.add(name)
        text = str(values[name])
        if inline and "\n" in text:
            raise ValueError(f"placeholder {name} inside a line takes one line")
        return text

    for line in lines:
        alone = PLACEHOLDER.fullmatch(line.strip())
        if alone:
            indent = line[: len(line) - len(line.lstrip())]
            out += [indent + v if v else v for v in value(alone[1], False).splitlines()]
        else:
            out.append(PLACEHOLDER.sub(lambda m: value(m[1], True), line))
    unused = set(values) - used
    if unused:
        raise KeyError(f"values without a placeholder: {sorted(unused)}")
    return "\n".join(out) + "\n"


def piece(file, /, **values):
    return render(Path(file).read_text(), values)


# ---------------------------------------------------------------- scenarios

MODULES = {
    "filter": lambda: WASM,
    "baseline": lambda: WASM_BASELINE or WASM,
    "noop": lambda: str(NOOP_WASM),
    "noop-lean": lambda: str(NOOP_LEAN_WASM),
}


@dataclass
class Scenario:
    name: str
    about: str
    # bench/envoy/routes-*.yaml, or None: envoy/templates/routes-split.yaml (cluster_header).
    routes: str | None = None
    mirror: str | None = None  # routes-weighted-mirror.yaml's mirror_cluster
    lua: bool = False
    module: str | None = None  # a MODULES key: a Wasm filter with that module
    config: str = ""  # its configuration: literal text, or a bench/envoy/*.json file
    config_set: dict = field(default_factory=dict)  # top-level members set in the JSON
    shadow: dict | None = None  # a shadow added to the JSON's last rule
    hosts: int = 0  # >0: the configuration is many_hosts(hosts, this scenario's listener port)
    extra: bool = False  # run only when named
    tool: bool = False  # not a bench scenario: a config another script renders (--config)

    def shadowed_listener(self):
        """The backend listener whose requests count as this scenario's shadows/mirrors."""
        return self.shadow["cluster"] if self.shadow else self.mirror

    def configuration(self):
        if self.hosts:
            return json.dumps(many_hosts(self.hosts, ports(self)[0]))
        if not self.config.endswith(".json"):
            return self.config
        config = json.loads((PIECES / self.config).read_text())
        config.update(self.config_set)
        if self.shadow:
            config["rules"][-1]["shadow"] = [self.shadow]
        return json.dumps(config)


def many_hosts(n, port):
    """A gateway's plan: n rules, each scoped to its own host by an exact authority and each a
    sticky 95/5 split; the last one's host is the listener's (what wrk and curl send), so every
    request is decided by rule n - 1 (the filter's rule index finds it without a scan)."""
    def rule(i, host):
        return {"name": f"host-{i}", "match": {"authority": {"exact": host}}, "sticky": {"header": "x-user-id"},
                "destinations": [{"name": "canary", "cluster": "canary", "weight": 5},
                                 {"name": "stable", "cluster": "stable", "weight": 95}]}
    return {"rules": [rule(i, f"host-{i}.example") for i in range(n - 1)] + [rule(n - 1, f"127.0.0.1:{port}")]}


def shadow(cluster, compare, timeout_ms):
    return {"cluster": cluster, "percent": 100, "compare": compare, "timeout_ms": timeout_ms}


SCENARIOS = [
    Scenario("plain", "route straight to one cluster: the ceiling", routes="routes-plain.yaml"),
    Scenario("native-weighted",
             "Envoy weighted_clusters 95/5, use_hash_policy + hash_policy on x-user-id (native sticky)",
             routes="routes-weighted-sticky.yaml"),
    Scenario("native-random", "Envoy weighted_clusters 95/5, random per request",
             routes="routes-weighted-random.yaml"),
    Scenario("lua",
             "Envoy Lua filter: hash of x-user-id -> bucket -> x-split-cluster, clearRouteCache; cluster_header route",
             lua=True),
    Scenario("wasm-noop", "a Rust proxy-wasm filter that does nothing (bench/wasm-noop)", module="noop"),
    Scenario("wasm-noop-lean",
             "wasm-noop exporting only the callbacks a no-op needs (no request body, response, log, done)",
             module="noop-lean"),
    Scenario("filter",
             "traffic-split: sticky 95/5 on x-user-id behind 3 non-matching header rules; cluster_header route",
             module="filter", config="filter.json"),
    Scenario("filter-sticky", "traffic-split with only the sticky 95/5 rule: the same job as native-weighted",
             module="filter", config="filter-sticky.json"),
    Scenario("filter-lean", 'filter-sticky with variant_header "": one read, one write, the same job as the lua script',
             module="filter", config="filter-sticky.json", config_set={"variant_header": ""}),
    Scenario("filter-lanes",
             "filter-sticky starting a signed lane: the baggage member split-lane written (lane_secret)",
             module="filter", config="filter-lanes.json"),
    Scenario("filter-judge", "(extra) filter-sticky with a judge on the split rule (defaults: errors and p99 latency)",
             module="filter", config="filter-judge.json", extra=True),
    Scenario("filter-judge-all", "(extra) filter-judge judging every baseline outcome (max_baseline_ratio 0)",
             module="filter", config="filter-judge-all.json", extra=True),
    Scenario("filter-breaker", "(extra) filter-sticky with a breaker on the canary (fallback stable)",
             module="filter", config="filter-breaker.json", extra=True),
    Scenario("filter-breaker-judge", "(extra) filter-breaker with a judge on the split rule (defaults)",
             module="filter", config="filter-breaker-judge.json", extra=True),
    Scenario("filter-5000-rules",
             "traffic-split with 5,000 rules, each scoped to its own host (exact authority), sticky 95/5; "
             "the load's host is the last rule's",
             module="filter", hosts=5000),
    Scenario("native-mirror", "native-weighted + request_mirror_policies 100% to the shadow cluster",
             routes="routes-weighted-mirror.yaml", mirror="shadow"),
    Scenario("filter-shadow", "filter + shadow 100% to the shadow cluster, compare: false",
             module="filter", config="filter.json", shadow=shadow("shadow", False, 1000)),
    Scenario("filter-shadow-compare", "filter + shadow 100% to the shadow cluster, compare: true",
             module="filter", config="filter.json", shadow=shadow("shadow", True, 1000)),
    Scenario("native-mirror-slow", "native-mirror to a backend answering after 1 s (reference for filter-shadow-slow)",
             routes="routes-weighted-mirror.yaml", mirror="slow"),
    # The slow backend answers after 1 s: a 1 s timeout would race it and turn the answers into
    # timeouts (resets). 3 s lets them arrive, as the native mirror's do (route timeout).
    Scenario("filter-shadow-slow", "filter + shadow 100% (compare: true) to a backend answering after 1 s",
             module="filter", config="filter.json", shadow=shadow("slow", True, 3000)),
    # The no-op module making some of the filter's per-request host calls (its configuration).
    *(Scenario(f"probe-{name}", f"(extra) wasm-noop + {what}", module="noop", config=calls, extra=True)
      for name, what, calls in [
          ("get", "1 read of the request header map", "get_headers"),
          ("set", "2 request header writes (x-split-cluster, x-split-variant)", "set_headers"),
          ("clear", "1 clear_route_cache foreign-function call", "clear_route"),
          ("all", "the filter's host calls: header map read, 2 writes, clear_route_cache",
           "get_headers,set_headers,clear_route"),
      ]),
    # A build of another commit side by side with this one in one run: what a change buys.
    Scenario("filter-baseline", "(extra) filter, with $WASM_BASELINE instead of $WASM (A/B a change)",
             module="baseline", config="filter.json", extra=True),
    Scenario("filter-sticky-baseline", "(extra) filter-sticky with $WASM_BASELINE",
             module="baseline", config="filter-sticky.json", extra=True),
    # bench/callgrind.sh's Envoy (WASM, listener CG_PORT): the filter with a sticky 50/50 rule
    # before a direct_response, so only the filter and Envoy itself are counted.
    Scenario("callgrind", "(tool) bench/callgrind.sh's Envoy", routes="routes-direct.yaml", module="filter",
             config='{"rules":[{"name":"r","sticky":{"header":"x-user-id"},"destinations":'
                    '[{"name":"a","cluster":"a","weight":50},{"name":"b","cluster":"b","weight":50}]}]}',
             tool=True),
    # callgrind's rule starting a signed lane in baggage (CG_SCENARIO=callgrind-lanes).
    Scenario("callgrind-lanes", "(tool) bench/callgrind.sh's Envoy, the rule starting a signed lane",
             routes="routes-direct.yaml", module="filter",
             config='{"lane_secret":"bench-lane-secret-0123456789","rules":[{"name":"r","sticky":{"header":"x-user-id"},'
                    '"propagate":{"baggage":"split-lane"},"destinations":'
                    '[{"name":"a","cluster":"a","weight":50},{"name":"b","cluster":"b","weight":50}]}]}',
             tool=True),
    # match.body's cost (CG_SCENARIO=callgrind-body, with CG_BODY=bench/chat-2k.json): a 2 KiB
    # OpenAI-style chat body decided by a body rule, against the same request (the same body,
    # plus an x-model header) decided by a header rule (callgrind-body-header).
    Scenario("callgrind-body", "(tool) bench/callgrind.sh's Envoy, a sticky 50/50 rule on the body's /model",
             routes="routes-direct.yaml", module="filter",
             config='{"rules":[{"name":"r","match":{"body":[{"pointer":"/model","exact":"gpt-small"}]},'
                    '"sticky":{"header":"x-user-id"},"destinations":'
                    '[{"name":"a","cluster":"a","weight":50},{"name":"b","cluster":"b","weight":50}]}]}',
             tool=True),
    Scenario("callgrind-body-header", "(tool) callgrind-body's request decided by a header rule (x-model)",
             routes="routes-direct.yaml", module="filter",
             config='{"rules":[{"name":"r","match":{"headers":[{"name":"x-model","exact":"gpt-small"}]},'
                    '"sticky":{"header":"x-user-id"},"destinations":'
                    '[{"name":"a","cluster":"a","weight":50},{"name":"b","cluster":"b","weight":50}]}]}',
             tool=True),
    # callgrind's rule behind a path regex that matches (CG_SCENARIO=callgrind-regex): what one
    # regex evaluation costs on top of the sticky pick.
    Scenario("callgrind-regex", "(tool) bench/callgrind.sh's Envoy, the rule behind a path regex",
             routes="routes-direct.yaml", module="filter",
             config='{"rules":[{"name":"r","match":{"path":{"regex":"/r[0-9]+"}},"sticky":{"header":"x-user-id"},'
                    '"destinations":[{"name":"a","cluster":"a","weight":50},{"name":"b","cluster":"b","weight":50}]}]}',
             tool=True),
    # callgrind's rule with a judge (CG_SCENARIO=callgrind-judge): both criteria at their
    # defaults, so a judged request pays the outcome classification and two clock reads.
    Scenario("callgrind-judge", "(tool) bench/callgrind.sh's Envoy, the rule with a judge (defaults)",
             routes="routes-direct.yaml", module="filter",
             config='{"rules":[{"name":"r","sticky":{"header":"x-user-id"},"judge":{},"destinations":'
                    '[{"name":"a","cluster":"a","weight":50},{"name":"b","cluster":"b","weight":50}]}]}',
             tool=True),
    # The bench's filter-judge shape (a 95/5 split, judge at its defaults) and the same without
    # the judge (CG_SCENARIO=callgrind-95-5 / callgrind-judge-95-5): callgrind's user "u" is in
    # the 95% (the baseline), whose outcomes the judge samples (`max_baseline_ratio`).
    *(Scenario(f"callgrind{judge}-95-5", f"(tool) bench/callgrind.sh's Envoy, a sticky 95/5 rule{about}",
               routes="routes-direct.yaml", module="filter",
               config='{"rules":[{"name":"r","sticky":{"header":"x-user-id"}' + cfg + ',"destinations":'
                      '[{"name":"a","cluster":"a","weight":5},{"name":"b","cluster":"b","weight":95}]}]}',
               tool=True)
      for judge, about, cfg in (("", "", ""), ("-judge", " with a judge (defaults)", ',"judge":{}'))),
    # The same judge with the errors criterion only (no latency: no clock reads, no histogram).
    Scenario("callgrind-judge-errors", "(tool) bench/callgrind.sh's Envoy, the rule with an errors-only judge",
             routes="routes-direct.yaml", module="filter",
             config='{"rules":[{"name":"r","sticky":{"header":"x-user-id"},"judge":{"errors":{}},"destinations":'
                    '[{"name":"a","cluster":"a","weight":50},{"name":"b","cluster":"b","weight":50}]}]}',
             tool=True),
    # A hop following signed lanes: every request carries a fresh signed lane the filter
    # verifies (CG_SCENARIO=callgrind-lanes-verify, with
    # CG_HEADER_CMD="bench/lane_value.py bench-lane-secret-0123456789 a").
    Scenario("callgrind-lanes-verify", "(tool) bench/callgrind.sh's Envoy, the rule verifying a signed lane",
             routes="routes-direct.yaml", module="filter",
             config='{"lane_secret":"bench-lane-secret-0123456789","rules":[{"name":"r","sticky":{"header":"x-user-id"},'
                    '"propagate":{"baggage":"split-lane"},"from_lane":true,"destinations":'
                    '[{"name":"a","cluster":"a","weight":50},{"name":"b","cluster":"b","weight":50}]}]}',
             tool=True),
    # The same with a gateway's plan of 5 or 5,000 host rules (CG_SCENARIO=callgrind-5000-rules):
    # the rule index's per-request cost, load-independent.
    *(Scenario(f"callgrind-{n}-rules", f"(tool) bench/callgrind.sh's Envoy with {n} host rules",
               routes="routes-direct.yaml", module="filter", hosts=n, tool=True) for n in (5, 5000)),    # A rule that reads no request attribute (random 50/50, CG_SCENARIO=callgrind-random): no header
    # map read; the fault filter's seven headers are removed by name on every request.
    Scenario("callgrind-random", "(tool) bench/callgrind.sh's Envoy, a random 50/50 rule",
             routes="routes-direct.yaml", module="filter",
             config='{"rules":[{"name":"r","destinations":'
                    '[{"name":"a","cluster":"a","weight":50},{"name":"b","cluster":"b","weight":50}]}]}',
             tool=True),
]
# The bench's judge scenarios behind a real upstream (the bench backend Envoy, CG_BACKEND=1):
# instructions per proxied request, the load-independent counterpart of `make bench`'s CPU per
# request (CG_SCENARIO=callgrind-upstream-judge ...; CG_USER=z is in the canary's 5%).
SCENARIOS += [
    Scenario(f"callgrind-upstream-{name}", f"(tool) bench/callgrind.sh's Envoy proxying to the bench backend, {config}",
             module="filter", config=config, tool=True)
    for name, config in (("sticky", "filter-sticky.json"), ("judge", "filter-judge.json"),
                         ("judge-all", "filter-judge-all.json"), ("breaker", "filter-breaker.json"),
                         ("breaker-judge", "filter-breaker-judge.json"))
]
BY_NAME = {s.name: s for s in SCENARIOS}


def ports(s):
    """(listener, admin) ports of scenario s."""
    if s.tool:
        return int(os.environ.get("CG_PORT", "18431")), 0
    i = SCENARIOS.index(s)
    return FRONT_PORT_BASE + i, FRONT_ADMIN_BASE + i


def front_config(s):
    port, admin = ports(s)
    if s.routes:
        routes = piece(PIECES / s.routes, **({"mirror_cluster": s.mirror} if s.mirror else {}))
    else:  # the filter's routes; 15 s is Envoy's default route timeout
        routes = piece(TEMPLATES / "routes-split.yaml", timeout="15s", default_cluster="stable")
    filters = ""
    if s.lua:
        filters = piece(PIECES / "lua-filter.yaml", script=PIECES / "split.lua")
    elif s.module:
        name = "noop" if s.module.startswith("noop") else "traffic-split"
        filters = piece(TEMPLATES / "wasm-filter.yaml", name=name, id=name, options="", wasm=MODULES[s.module](),
                        configuration=json.dumps(s.configuration()))
    listener = piece(TEMPLATES / "listener.yaml", name="main", options="", port=port, connection_manager="",
                     routes=routes, http_filters=filters)
    clusters = "".join(
        piece(TEMPLATES / "cluster.yaml", name=name, port=backend_port,
              options=(PIECES / "slow-cluster-options.yaml").read_text() if name == "slow" else "")
        for name, backend_port in BACKENDS.items())
    return piece(TEMPLATES / "front.yaml", head=f'# bench/run.sh front Envoy for scenario "{s.name}": {s.about}',
                 admin_port=admin, listeners=listener, clusters=clusters)


# ---------------------------------------------------------------- processes

class Failed(Exception):
    pass


def first_error(log):
    """The first error line of an Envoy log, without its timestamp/thread prefix."""
    text = Path(log).read_text(errors="replace") if Path(log).exists() else ""
    line = next((l for l in text.splitlines() if re.search(r"\]\[(error|critical)\]", l)), None)
    line = line or next((l for l in text.splitlines() if l.strip()), "exited with no log")
    # "[time][thread][level][logger] [source:line] msg" -> "[level][logger] msg"
    line = re.sub(r"^\[[^]]*\]\[[^]]*\]", "", line, count=1)
    line = re.sub(r" \[[^] ]+:[0-9]+\]", "", line, count=1)
    return line.replace("|", "\\|")[:300]


def get(url, timeout=1.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


class Envoys:
    """The Envoys this run started; every one is stopped on the way out."""

    def __init__(self):
        self.procs = []

    def start(self, config, log):
        with open(log, "w") as out:
            p = subprocess.Popen([ENVOY, "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
                                  "-l", "warn"], stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def wait_ready(self, p, admin, log):
        """Waits (30 s at most) until Envoy p answers LIVE on its admin port; raises Failed why not."""
        for _ in range(300):
            if p.poll() is not None:
                raise Failed(first_error(log))
            try:
                if get(f"http://127.0.0.1:{admin}/ready") == "LIVE\n":
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise Failed("not ready after 30 s")

    def stop(self, p):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        for p in self.procs:
            self.stop(p)


def cpu_ticks(pid):
    """utime+stime of a process, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def backend_requests(listener):
    """Requests the backend listener (shadow or slow) has received."""
    text = get(f"http://127.0.0.1:{BACKEND_ADMIN}/stats?filter=^http\\.{listener}\\.downstream_rq_total$", 2)
    return int(text.split(": ")[1]) if ": " in text else 0


def check(port):
    """A check before any load: 200 requests with distinct users on one connection. Returns how
    many answered 200 and which (1-based) went to canary."""
    ok, canary = 0, []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    deadline = time.monotonic() + 20
    try:
        for n in range(1, 201):
            if time.monotonic() > deadline:
                break
            conn.request("GET", "/", headers={"x-user-id": f"check-{n}"})
            r = conn.getresponse()
            r.read()
            ok += r.status == 200
            if (r.getheader("x-backend") or "").lower() == "canary":
                canary.append(n)
    except (OSError, http.client.HTTPException):
        pass
    finally:
        conn.close()
    return ok, canary


def build_noop():
    """Builds bench/wasm-noop with the main filter's release profile and wasm-opt treatment."""
    print("building bench/wasm-noop", flush=True)
    subprocess.run(["cargo", "build", "--quiet", "--release", "--target", "wasm32-wasip1"], cwd=NOOP_DIR, check=True)
    raw = NOOP_DIR / "target/wasm32-wasip1/release/wasm_noop.wasm"
    if shutil.which("wasm-opt"):
        subprocess.run(["wasm-opt", *WASM_OPT_FLAGS.split(), str(raw), "-o", str(NOOP_WASM)], check=True)
    else:
        print("wasm-opt not found (apt-get install binaryen): using the unoptimized no-op build")
        shutil.copy(raw, NOOP_WASM)
    print(f"{NOOP_WASM}: {NOOP_WASM.stat().st_size} bytes")
    subprocess.run([sys.executable, str(ROOT / "scripts/strip-exports.py"), str(NOOP_WASM), str(NOOP_LEAN_WASM),
                    *NOOP_LEAN_STRIP], check=True)


def validate():
    WORK.mkdir(parents=True, exist_ok=True)
    build_noop()
    failed = False
    for name, config in [("backend", PIECES / "backend.yaml")] + [(s.name, WORK / f"{s.name}.yaml") for s in SCENARIOS]:
        if name != "backend":
            config.write_text(front_config(BY_NAME[name]))
        log = WORK / f"{name}.validate.log"
        with open(log, "w") as out:
            rc = subprocess.run([ENVOY, "--mode", "validate", "-c", str(config), "--disable-hot-restart",
                                 "-l", "error"],
                                stdout=out, stderr=subprocess.STDOUT).returncode
        print(f"ok   {name}" if rc == 0 else f"FAIL {name}: {first_error(log)}", flush=True)
        failed |= rc != 0
    return 1 if failed else 0


# ---------------------------------------------------------------- the run

TSV_COLUMNS = ["scenario", "round", "requests", "duration_us", "rps", "cpu_us_per_req", "p50_us", "p99_us",
               "errors", "shadowed"]


def wrk(url, seconds, out, latency=False):
    cmd = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", *(["--latency"] if latency else []),
           "-s", str(WRK_SCRIPT), url]
    subprocess.run(cmd, stdout=out, check=True, timeout=seconds + 30)


def measure(s, rnd, proc, port):
    """One wrk run against scenario s's front Envoy; returns its runs.tsv row (as a dict)."""
    url = f"http://127.0.0.1:{port}/"
    if WARMUP > 0:
        wrk(url, WARMUP, subprocess.DEVNULL)
    listener = s.shadowed_listener()
    shadow0 = backend_requests(listener) if listener else 0
    raw = RESULTS / f"{s.name}.r{rnd}.raw"
    cpu0 = cpu_ticks(proc.pid)
    with open(raw, "w") as out:
        wrk(url, DURATION, out, latency=True)
    cpu1 = cpu_ticks(proc.pid)
    if listener == "slow":
        time.sleep(1.5)  # let the last shadows (1 s) finish before the next scenario runs
    shadowed = backend_requests(listener) - shadow0 if listener else "-"
    tck = os.sysconf("SC_CLK_TCK")
    with open(raw, "a") as out:
        out.write(f"# scenario={s.name} round={rnd} front_pid={proc.pid} cpu_ticks_before={cpu0} "
                  f"cpu_ticks_after={cpu1} clk_tck={tck} shadow_requests={shadowed}\n")
    line = next((l for l in raw.read_text().splitlines() if l.startswith("BENCH ")), None)
    if line is None:
        raise Failed(f"{s.name} round {rnd}: wrk printed no BENCH line (see {raw})")
    v = dict(kv.split("=", 1) for kv in line.split()[1:])
    req, dur = int(v["requests"]), int(v["duration_us"])
    errors = sum(int(v[f"errors_{e}"]) for e in ("connect", "read", "write", "status", "timeout"))
    cpu = (cpu1 - cpu0) * 1e6 / tck / req if req > 0 else 0
    # Rounded as runs.tsv records them; the medians are taken over these.
    return {"scenario": s.name, "round": rnd, "requests": req, "duration_us": dur, "rps": round(req / (dur / 1e6)),
            "cpu_us_per_req": round(cpu, 1), "p50_us": int(v["p50_us"]), "p99_us": int(v["p99_us"]),
            "errors": errors, "shadowed": shadowed}


def tsv_line(row):
    return "\t".join(f"{row[c]:.1f}" if c == "cpu_us_per_req" else str(row[c]) for c in TSV_COLUMNS)


def run(selected):
    envoys = Envoys()
    try:
        return run_with(selected, envoys)
    finally:
        envoys.stop_all()


def run_with(selected, envoys):
    RESULTS.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    for f in list(RESULTS.glob("*.raw")) + list(WORK.iterdir()):
        f.unlink()
    if any(s.module in ("noop", "noop-lean") for s in selected):
        build_noop()

    print("starting the backend Envoy", flush=True)
    backend = envoys.start(PIECES / "backend.yaml", WORK / "backend.log")
    try:
        envoys.wait_ready(backend, BACKEND_ADMIN, WORK / "backend.log")
    except Failed as why:
        raise Failed(f"backend Envoy failed to start: {why}") from None

    status, checks, canaries, procs, runnable = {}, {}, {}, {}, []
    for s in selected:
        port, admin = ports(s)
        config = WORK / f"{s.name}.yaml"
        config.write_text(front_config(s))
        log = WORK / f"{s.name}.log"
        procs[s.name] = envoys.start(config, log)
        try:  # one at a time: Wasm compilation takes a core for a moment
            envoys.wait_ready(procs[s.name], admin, log)
        except Failed as why:
            status[s.name] = f"not available (front Envoy failed to start: {why})"
            print(f"{s.name}: {status[s.name]}", flush=True)
            continue
        # 200 requests with distinct users must all answer 200, and the split scenarios must
        # send some of them (about 5 %) to canary.
        ok, canaries[s.name] = check(port)
        checks[s.name] = f"{ok}/200 ok, {len(canaries[s.name])} canary"
        if ok != 200:
            status[s.name] = f"not available (only {ok} of 200 check requests answered 200)"
            print(f"{s.name}: {status[s.name]}", flush=True)
            continue
        status[s.name] = "ok"
        runnable.append(s)
        print(f"{s.name}: ready on 127.0.0.1:{port} ({checks[s.name]})", flush=True)

    total = ROUNDS * len(runnable) * (DURATION + WARMUP)
    print(f"running {len(runnable)} scenario(s) x {ROUNDS} round(s), {WARMUP}s warm-up + {DURATION}s each: "
          f"about {total // 60} min {total % 60} s", flush=True)
    rows = []
    for rnd in range(1, ROUNDS + 1):
        for s in runnable:
            port, admin = ports(s)
            # Round 1 measures the Envoy the checks ran against. Each later round gets a new
            # process: one process keeps a bias of its own through all its rounds (which core it
            # shares with wrk, memory layout, JIT), so only new processes let the median over
            # rounds average it out.
            if rnd > 1:
                log = WORK / f"{s.name}.r{rnd}.log"
                procs[s.name] = envoys.start(WORK / f"{s.name}.yaml", log)
                try:
                    envoys.wait_ready(procs[s.name], admin, log)
                except Failed as why:
                    raise Failed(f"{s.name}: front Envoy failed to start for round {rnd}: {why}") from None
            if procs[s.name].poll() is not None:
                raise Failed(f"{s.name}: front Envoy died: {first_error(WORK / f'{s.name}.log')}")
            row = measure(s, rnd, procs[s.name], port)
            rows.append(row)
            envoys.stop(procs[s.name])  # so that only the measured Envoy runs
            print("round {round} {scenario:<22} {rps:>8} req/s  {cpu:>7} us CPU/req  p50 {p50_us:>6} us  "
                  "p99 {p99_us:>6} us  errors {errors}  shadowed {shadowed}".format(cpu=f"{row['cpu_us_per_req']:.1f}",
                                                                                   **row), flush=True)
    tsv = "\t".join(TSV_COLUMNS) + "\n" + "".join(tsv_line(r) + "\n" for r in rows)
    (WORK / "runs.tsv").write_text(tsv)
    (RESULTS / "runs.tsv").write_text(tsv)
    report = RESULTS / "results.md"
    report.write_text(make_report(selected, status, checks, canaries, rows, tsv))
    print()
    print(report.read_text())
    print(f"report: {report}; raw wrk outputs: {RESULTS}/*.raw")


# ---------------------------------------------------------------- the report

def command(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout + ""
    except OSError:
        return ""


# The ratio lines: label, numerator (column, scenario), denominator, "le"/"ge" a target, or
# "ref" (a reference without a target).
RATIOS = [
    ("CPU/req filter / wasm-noop", ("cpu", "filter"), ("cpu", "wasm-noop"), "le", "1.10"),
    ("CPU/req filter / lua", ("cpu", "filter"), ("cpu", "lua"), "le", "1.0"),
    ("CPU/req filter / native-weighted", ("cpu", "filter"), ("cpu", "native-weighted"), "le", "1.25"),
    ("req/s filter / native-weighted", ("rps", "filter"), ("rps", "native-weighted"), "ge", "0.85"),
    # The same comparisons with the filter doing exactly the peer's job, and the floor under all.
    ("CPU/req filter-lean / lua (same job: 1 read, 1 write)", ("cpu", "filter-lean"), ("cpu", "lua"), "le", "1.0"),
    ("CPU/req filter-sticky / native-weighted (same job)", ("cpu", "filter-sticky"), ("cpu", "native-weighted"),
     "le", "1.25"),
    ("CPU/req wasm-noop / native-weighted (floor of an SDK-built Wasm filter)", ("cpu", "wasm-noop"),
     ("cpu", "native-weighted"), "ref", ""),
    ("CPU/req wasm-noop-lean / native-weighted (floor of any Wasm filter)", ("cpu", "wasm-noop-lean"),
     ("cpu", "native-weighted"), "ref", ""),
    ("CPU/req filter / wasm-noop-lean", ("cpu", "filter"), ("cpu", "wasm-noop-lean"), "le", "1.10"),
    ("CPU/req filter-shadow / native-mirror", ("cpu", "filter-shadow"), ("cpu", "native-mirror"), "le", "1.10"),
    ("CPU/req filter-shadow-compare / native-mirror", ("cpu", "filter-shadow-compare"), ("cpu", "native-mirror"),
     "le", "1.10"),
    ("p99 filter-shadow-slow / filter", ("p99", "filter-shadow-slow"), ("p99", "filter"), "le", "1.10"),
    ("p50 filter-shadow-slow / filter", ("p50", "filter-shadow-slow"), ("p50", "filter"), "le", "1.10"),
    ("p99 native-mirror-slow / native-weighted (Envoy's own mirror)", ("p99", "native-mirror-slow"),
     ("p99", "native-weighted"), "ref", ""),
    # The judge (issue 21): on the split rule, and on top of a canary breaker (which already
    # reads the canary's statuses); judging every baseline outcome for reference.
    ("CPU/req filter-judge / filter-sticky", ("cpu", "filter-judge"), ("cpu", "filter-sticky"), "le", "1.03"),
    ("CPU/req filter-judge-all / filter-sticky (every baseline outcome judged)", ("cpu", "filter-judge-all"),
     ("cpu", "filter-sticky"), "ref", ""),
    ("CPU/req filter-breaker-judge / filter-breaker", ("cpu", "filter-breaker-judge"), ("cpu", "filter-breaker"),
     "le", "1.03"),
]
COLUMNS = {"cpu": "cpu_us_per_req", "rps": "rps", "p50": "p50_us", "p99": "p99_us"}


def ratio_line(label, a, b, op, target):
    shown = "-" if op == "ref" else f"{'≤' if op == 'le' else '≥'} {target}"
    if a is None or b is None:
        return f"| {label} | n/a | {shown} | not measured |"
    r = a / b
    if op == "ref":
        return f"| {label} | {r:.3f} | {shown} | reference |"
    met = r <= float(target) if op == "le" else r >= float(target)
    return f"| {label} | {r:.3f} | {shown} | {'met' if met else 'NOT met'} |"


def make_report(selected, status, checks, canaries, rows, tsv):
    names = [s.name for s in selected]
    uses = lambda prefix: any(n.startswith(prefix) for n in names)  # noqa: E731
    commit = command("git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD").strip() or "unknown"
    dirty = ""
    if Path(WASM).resolve() == (ROOT / "target/traffic_split.wasm").resolve() and subprocess.run(
            ["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", "src", "Cargo.toml"]).returncode != 0:
        dirty = " + uncommitted changes in src/ or Cargo.toml (built into the filter)"
    model = next((l.split(":", 1)[1].strip() for l in command("lscpu").splitlines() if l.startswith("Model name")), "")
    version = re.search(r"version: (.*)", command(ENVOY, "--version"))
    wrk_version = " ".join(command("wrk", "--version").splitlines()[0].split()[:2]) if shutil.which("wrk") else "wrk"
    out = ["# make bench results", "",
           f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit}{dirty}"]
    if uses("filter"):
        digest = command("sha256sum", WASM).split(" ")[0][:16]
        out.append(f"- filter: {WASM}, {Path(WASM).stat().st_size} bytes, sha256 {digest}")
    if uses("wasm-noop") or uses("probe-"):
        out.append(f"- wasm-noop: {NOOP_WASM}, {NOOP_WASM.stat().st_size} bytes")
    out += [f"- machine: {len(os.sched_getaffinity(0))} cores, {model}",
            f"- Envoy {version[1] if version else 'unknown'}",
            f"- {wrk_version}: 1 thread, {CONNECTIONS} connections, {DURATION}s per run after a {WARMUP}s warm-up, "
            "random x-user-id per request",
            f"- {ROUNDS} round(s), scenarios interleaved; every number is the median over the rounds",
            "- CPU/req: front Envoy utime+stime (/proc/<pid>/stat) during the wrk run / requests completed", "",
            "| scenario | CPU µs/req | req/s | p50 µs | p99 µs | errors | shadowed/req | check |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]

    def median(name, column):
        values = [r[COLUMNS[column]] for r in rows if r["scenario"] == name]
        return statistics.median(values) if values else None

    for s in selected:
        if status[s.name] != "ok":
            out.append(f"| {s.name} | {status[s.name]} | | | | | | |")
            continue
        runs = [r for r in rows if r["scenario"] == s.name]
        shadowed = "-"
        if s.shadowed_listener():
            requests = sum(r["requests"] for r in runs)
            shadowed = f"{sum(r['shadowed'] for r in runs) / requests:.3f}" if requests else ""
        out.append(f"| {s.name} | {median(s.name, 'cpu'):.1f} | {median(s.name, 'rps'):.0f} | "
                   f"{median(s.name, 'p50'):.0f} | {median(s.name, 'p99'):.0f} | {sum(r['errors'] for r in runs)} | "
                   f"{shadowed} | {checks[s.name]} |")
    out += ["", "| ratio (medians) | value | target | |", "| --- | ---: | ---: | --- |"]
    for label, (ca, sa), (cb, sb), op, target in RATIOS:
        out.append(ratio_line(label, median(sa, ca), median(sb, cb), op, target))
    if status.get("lua") == "ok" and status.get("filter") == "ok":
        same = canaries["lua"] == canaries["filter"]
        show = lambda n: " ".join(map(str, canaries[n])) or "none"  # noqa: E731
        out += ["", f"lua and filter sent the same check users to canary (same bucketing): {show('filter')}" if same
                else f"lua and filter sent DIFFERENT check users to canary: lua {show('lua')}, filter {show('filter')}"]
    widths = [-22, 5, 9, 11, 7, 14, 8, 8, 6, 8]
    out += ["", "Per run (runs.tsv):", "", "```"]
    out += [" ".join(f"{v:<{-w}}" if w < 0 else f"{v:>{w}}" for v, w in zip(line.split("\t"), widths))
            for line in tsv.splitlines()]
    out.append("```")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- arguments

def number(var, default, positive=True):
    value = os.environ.get(f"BENCH_{var}", default)
    if not value.isdigit() or (positive and int(value) == 0):
        sys.exit(f"BENCH_{var} must be a {'positive' if positive else 'whole'} number, got '{value}'")
    return int(value)


def main(args):
    global ROUNDS, DURATION, WARMUP, CONNECTIONS
    if args[:1] == ["--list"]:
        for s in SCENARIOS:
            if not s.tool:
                print(f"{s.name:<22} {s.about}")
        return 0
    if args[:1] == ["--config"]:
        if len(args) != 2 or args[1] not in BY_NAME:
            sys.exit("usage: bench/run.sh --config SCENARIO (bench/run.sh --list)")
        sys.stdout.write(front_config(BY_NAME[args[1]]))
        return 0
    if args[:1] == ["--validate"]:
        return validate()
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0

    default = [s.name for s in SCENARIOS if not (s.extra or s.tool)]
    names = args or os.environ.get("BENCH_SCENARIOS", "").split() or default
    for n in names:
        if n not in BY_NAME or BY_NAME[n].tool:
            print(f"unknown scenario '{n}' (bench/run.sh --list)", file=sys.stderr)
            return 2
    selected = [BY_NAME[n] for n in names]
    ROUNDS, DURATION = number("ROUNDS", "3"), number("DURATION", "10")
    WARMUP, CONNECTIONS = number("WARMUP", "1", positive=False), number("CONNECTIONS", "16")

    for tool, hint in (("wrk", "apt-get install wrk"),):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: {hint}")
    if not os.access(ENVOY, os.X_OK):
        sys.exit(f"Envoy not found at {ENVOY}: run make envoy")
    for s in selected:
        if s.module == "baseline" and not Path(WASM_BASELINE or "/nonexistent").is_file():
            sys.exit(f"{s.name} needs WASM_BASELINE=path/to/an/other/traffic_split.wasm")
        if s.module == "filter" and not Path(WASM).is_file():
            sys.exit(f"{WASM} not found: run make wasm")
    try:
        run(selected)
    except Failed as why:
        print(why, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so every Envoy started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # bench/run.sh --help | head
        sys.exit(0)
