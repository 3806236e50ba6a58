#!/usr/bin/env python3
"""Offline checks of the deployment files: deploy/** and docker-compose.yml.

Run by `make validate` (which installs jsonschema and pyyaml into .venv first):

  .venv/bin/python scripts/validate-manifests.py

What it checks, one line per item (`ok`, `FAIL` or `skip`), exiting 1 on any failure:

- Every YAML document under deploy/ is either a Kubernetes manifest or an Envoy bootstrap
  (deploy/compose/); anything else is a failure, so nothing goes unchecked.
- Kubernetes manifests: `spec` against the `openAPIV3Schema` of the CRD version matching the
  manifest's apiVersion, from the vendored schemas/ (or $SCHEMAS_DIR; sources in
  schemas/README.md). Unknown fields are errors (as with `kubectl apply --validate=strict`)
  except where the CRD preserves unknown fields; `x-kubernetes-*` extensions such as CEL rules
  are not evaluated. A missing schemas directory is a failure.
- Every embedded traffic-split configuration -- WasmPlugin `spec.pluginConfig`,
  EnvoyExtensionPolicy `spec.wasm[].config`, and the Wasm filter's `configuration.value` in
  deploy/compose/envoy.yaml and envoy/*.yaml -- is written to a temporary JSON file and checked
  with the filter's own parser (`cargo build --example check_config`, then
  target/debug/examples/check_config).
- Cross-checks the manifests cannot express: every destination `cluster` of an Istio config has
  a VirtualService route on the routing header and a default route, whose subsets exist; every
  Istio shadow cluster is an `outbound|port|subset|host` name whose subset exists; every
  destination of an Envoy Gateway config has an HTTPRoute rule matching it, plus a default rule;
  every rule of a shipped Istio/Envoy Gateway config is scoped (match.authority or
  match.route_names: a gateway serves other hosts too); a module fetched over http(s) has a
  sha256; the WasmPlugin runs in phase STATS (after authorization, before the router).
- match.body (routing on the request body) needs `allow_on_headers_stop_iteration: true` in the
  Wasm PluginConfig: every Envoy Wasm filter (bootstrap or EnvoyFilter) whose configuration has
  a body rule sets it; a WasmPlugin cannot (FAIL: use an EnvoyFilter, deploy/istio-body-routing/);
  an EnvoyExtensionPolicy needs an EnvoyPatchPolicy in its directory that adds it to that
  policy's filter and raises the listener's buffer limit to at least body_max_bytes.
- Fault injection (`rules[].fault`): every fault filter an Istio EnvoyFilter or Envoy Gateway
  EnvoyPatchPolicy adds has header_delay and header_abort at 100%, a max_active_faults, is
  inserted right before the router (so after the Wasm filter) and loads in
  `envoy --mode validate`; a configuration that uses `fault` has such a filter beside it. It
  runs only where the Wasm filter runs (which removes client-sent x-envoy-fault-* headers): an
  EnvoyPatchPolicy's is `disabled: true` in the listener and turned on by a RouteConfiguration
  patch of the same policy only on the routes carrying the Wasm filter's per-route entry (Envoy
  Gateway's name for an EnvoyExtensionPolicy beside it); an EnvoyFilter's has the namespace and
  workload selector of a WasmPlugin beside it that applies to all their traffic. In an Envoy
  bootstrap (envoy/*.yaml, deploy/compose/), a fault filter with header control is in the
  chain of a traffic-split Wasm filter, after it, and on no inline route where that one is off.
- docker-compose.yml: `docker compose config` where Docker Compose is installed, else the
  Compose Specification's JSON schema (schemas/compose-spec.json); every bind-mount source
  exists; every Envoy config under deploy/compose/ is mounted; its upstream host names are
  compose service names or aliases; its filter configuration and stats_config equal those of
  envoy/demo.yaml and envoy/stats_config.yaml; every image is pinned to the Envoy version the
  tests run (the Makefile's ENVOY_VERSION), never a moving tag.
- `envoy --mode validate` on deploy/compose/*.yaml, on a temporary copy in which every path the
  compose file mounts (/etc/envoy/...) is replaced by the repository file it mounts, and the
  module the Dockerfile copies into the image by target/traffic_split.wasm.
- deploy/prometheus/: each plain rules file (a top-level `groups`) passes `promtool check rules`
  (Debian's prometheus package; without it the check is skipped, and fails when CI=true), and
  every PrometheusRule there holds exactly the groups of alerts.yaml.
- deploy/grafana/*.json: each dashboard parses, has the `datasource`, `rule` and `destination`
  variables, unique panel ids, and every panel and target reads the `${datasource}` variable
  with a PromQL `expr` (what the queries return is `make test`'s: scripts/check-prometheus.py).
- deploy/flagger/ and deploy/argo-rollouts/: every Canary metric's templateRef names a
  MetricTemplate shipped beside it and sets every `{{ variables.X }}` its query uses; every
  `{{args.X}}` of an AnalysisTemplate query is one of its declared args.
- Dockerfile and deploy/oci/Dockerfile: the same build stage, with the Makefile's strip list and
  wasm-opt flags; the OCI image's last stage is FROM scratch with one COPY to plugin.wasm.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import jsonschema
    import yaml
except ImportError as missing:  # pragma: no cover - depends on the environment
    sys.exit(f"validate-manifests: {missing}: run `make validate`, or pip install jsonschema pyyaml")

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS_DIR = Path(os.environ.get("SCHEMAS_DIR") or ROOT / "schemas")
COMPOSE_SCHEMA = ROOT / "schemas" / "compose-spec.json"
# Files the envoy image carries (./Dockerfile's envoy stage), by the repository file they are.
IMAGE_FILES = {"/etc/envoy/traffic_split.wasm": "target/traffic_split.wasm"}
ENVOY = Path(os.environ.get("ENVOY") or ROOT / ".venv" / "bin" / "envoy")
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
CHECK_CONFIG = TARGET_DIR / "debug" / "examples" / "check_config"
BUILT_FILES = {"target/traffic_split.wasm"}  # built by `make wasm`
WASM_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
DEFAULT_CLUSTER_HEADER = "x-split-cluster"  # docs/configuration.md

failures = 0
skipped = 0
checks = 0


def report(status, where, what):
    global failures, skipped, checks
    checks += 1
    if status == "FAIL":
        failures += 1
    elif status == "skip":
        skipped += 1
    print(f"{status:<4} {where}: {what}", flush=True)


def rel(path):
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


class Loader(yaml.SafeLoader):
    """YAML as Kubernetes reads it for these files, except that a date-like scalar stays a
    string (PyYAML would make it a datetime, which JSON cannot hold)."""


Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.load_all(f, Loader=Loader) if doc is not None]


# --- CRD schemas ----------------------------------------------------------------------------


def openapi_to_jsonschema(node, strict=True):
    """An OpenAPI v3 (Kubernetes structural) schema as JSON Schema: `nullable` becomes a null
    type, int-or-string becomes anyOf, `x-kubernetes-*` keys are dropped, and objects that
    declare properties reject unknown ones unless the CRD preserves unknown fields. Branches of
    anyOf/oneOf/allOf/not only constrain the properties declared beside them, so they are not
    made strict."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(n, strict) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("description", "example"):
            continue
        if key in ("anyOf", "oneOf", "allOf", "not"):
            out[key] = openapi_to_jsonschema(value, strict=False)
        elif key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: openapi_to_jsonschema(v, True) for k, v in value.items()}
        else:
            out[key] = openapi_to_jsonschema(value, True)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        out.pop("nullable", None)
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if strict and "properties" in node and "additionalProperties" not in node and not preserve:
        out["additionalProperties"] = False
    return out


def load_crd_schemas():
    """{(group, version, kind): openAPIV3Schema} from every CRD in SCHEMAS_DIR."""
    schemas = {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for path in sorted(SCHEMAS_DIR.glob("*.yaml")):
        with open(path, encoding="utf-8") as f:
            for doc in yaml.load_all(f, Loader=loader):
                if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                for version in spec.get("versions", []):
                    schema = (version.get("schema") or {}).get("openAPIV3Schema")
                    if schema and version.get("served", True):
                        key = (spec["group"], version["name"], spec["names"]["kind"])
                        schemas[key] = schema
    return schemas


def error_path(error):
    out = "spec"
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check_manifest(where, doc, crds):
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    meta = doc.get("metadata")
    ident = f"{kind} {api_version}"
    problems = []
    if not isinstance(api_version, str) or "/" not in api_version:
        problems.append(f"apiVersion {api_version!r} is not group/version")
    if not isinstance(meta, dict):
        problems.append("metadata is missing")
    else:
        name, namespace = meta.get("name"), meta.get("namespace")
        if not isinstance(name, str) or len(name) > 253 or not DNS_SUBDOMAIN.match(name):
            problems.append(f"metadata.name {name!r} is not a DNS subdomain")
        if namespace is not None and (not isinstance(namespace, str) or not DNS_LABEL.match(namespace)):
            problems.append(f"metadata.namespace {namespace!r} is not a DNS label")
        ident = f"{kind} {namespace + '/' if namespace else ''}{name} ({api_version})"
    extra = set(doc) - {"apiVersion", "kind", "metadata", "spec"}
    if extra:
        problems.append(f"unexpected top-level field(s): {', '.join(sorted(extra))}")
    if problems:
        report("FAIL", where, f"{ident}: " + "; ".join(problems))
        return
    if crds is None:
        report("skip", where, f"{ident}: no CRD schemas at {SCHEMAS_DIR}")
        return
    group, version = api_version.rsplit("/", 1)
    schema = crds.get((group, version, kind))
    if schema is None:
        known = sorted(v for (g, v, k) in crds if g == group and k == kind)
        hint = f" (the CRD serves {', '.join(known)})" if known else ""
        report("FAIL", where, f"{ident}: no CRD schema for {kind} in {group}/{version}{hint}")
        return
    spec_schema = (schema.get("properties") or {}).get("spec")
    if "spec" not in doc:
        if "spec" in schema.get("required", []):
            report("FAIL", where, f"{ident}: spec is required")
        else:
            report("ok", where, f"{ident}: no spec")
        return
    validator = jsonschema.Draft7Validator(openapi_to_jsonschema(spec_schema or {}))
    errors = sorted(validator.iter_errors(doc["spec"]), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        shown = "; ".join(f"{error_path(e)}: {e.message}" for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        report("FAIL", where, f"{ident}: {shown}{more}")
    else:
        report("ok", where, f"{ident}: spec matches the CRD schema")


# --- traffic-split configurations -----------------------------------------------------------


class Configs:
    """Embedded traffic-split configurations, checked together by one check_config run."""

    def __init__(self):
        self.items = []  # (where, label, bytes)

    def add(self, where, label, payload):
        self.items.append((where, label, payload))

    def check(self):
        if not self.items:
            return
        build = subprocess.run(
            ["cargo", "build", "--quiet", "--example", "check_config"],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )
        if build.returncode != 0 or not CHECK_CONFIG.exists():
            for where, label, _ in self.items:
                report("FAIL", where, f"{label}: cannot build the check_config example")
            print(build.stdout + build.stderr, file=sys.stderr)
            return
        with tempfile.TemporaryDirectory(prefix="ts-configs-") as tmp:
            files = []
            for i, (_, _, payload) in enumerate(self.items):
                path = Path(tmp) / f"config-{i}.json"
                path.write_bytes(payload)
                files.append(str(path))
            run = subprocess.run([str(CHECK_CONFIG), *files], capture_output=True, text=True, check=False)
            lines = {}
            for line in run.stdout.splitlines():
                for i, name in enumerate(files):
                    if line.startswith(f"ok {name}: "):
                        lines[i] = ("ok", line[len(f"ok {name}: "):])
                    elif line.startswith(f"{name}: "):
                        lines[i] = ("FAIL", line[len(f"{name}: "):])
            for i, (where, label, _) in enumerate(self.items):
                status, text = lines.get(i, ("FAIL", f"no answer from check_config: {run.stderr.strip()}"))
                report(status, where, f"{label}: {text}")


def typed_nodes(node, type_url):
    """Every object with `"@type": type_url` in a JSON/YAML tree, outermost first."""
    if isinstance(node, dict):
        if node.get("@type") == type_url:
            yield node
        for value in node.values():
            yield from typed_nodes(value, type_url)
    elif isinstance(node, list):
        for value in node:
            yield from typed_nodes(value, type_url)


def wasm_filters(node):
    """Every traffic-split Wasm HTTP filter config (`config` of the typed_config) in an Envoy
    bootstrap: the filter is recognized by root_id traffic-split or a traffic_split .wasm file."""
    for typed in typed_nodes(node, WASM_FILTER_TYPE):
        config = typed.get("config")
        if not isinstance(config, dict):
            continue
        local = ((config.get("vm_config") or {}).get("code") or {}).get("local") or {}
        if config.get("root_id") == "traffic-split" or "traffic_split" in str(local.get("filename", "")):
            yield config


def plugin_configuration(filter_config):
    """The configuration string Envoy hands the filter (a google.protobuf.StringValue)."""
    configuration = filter_config.get("configuration") or {}
    return str(configuration.get("value", ""))


def as_json(value):
    return json.dumps(value, indent=2).encode()


# --- cross-checks -----------------------------------------------------------------------------


def config_clusters(config):
    """(routing header, destination clusters, shadow clusters) of a config object."""
    header = str(config.get("cluster_header") or DEFAULT_CLUSTER_HEADER).lower()
    destinations, shadows = [], []
    for rule in config.get("rules") or []:
        for dest in rule.get("destinations") or []:
            if dest.get("cluster") not in destinations:
                destinations.append(dest.get("cluster"))
        for shadow in rule.get("shadow") or []:
            if shadow.get("cluster") not in shadows:
                shadows.append(shadow.get("cluster"))
    return header, destinations, shadows


def check_scope(where, name, config):
    """A gateway serves other hosts too: every shipped rule names its host or route."""
    unscoped = [str(rule.get("name")) for rule in config.get("rules") or []
                if not ((rule.get("match") or {}).get("authority") or (rule.get("match") or {}).get("route_names"))]
    if unscoped:
        report("FAIL", where, f"{name}: rule(s) {', '.join(unscoped)} have no match.authority or match.route_names: "
               "on a shared gateway they act on every host")
    else:
        report("ok", where, f"{name}: every rule is scoped by match.authority or match.route_names")


def check_module_source(where, name, url, sha256):
    """A module fetched over http(s) is pinned by the sha256 of its bytes (`make sha256`)."""
    if str(url).startswith(("http://", "https://")):
        if re.fullmatch(r"[0-9a-f]{64}", str(sha256 or "")):
            report("ok", where, f"{name}: {url} pinned by sha256 {sha256[:12]}…")
        else:
            report("FAIL", where, f"{name}: {url} has no sha256 (run `make sha256` after `make wasm`)")
    elif str(url).startswith("oci://") and "@sha256:" not in str(url) and not sha256:
        report("FAIL", where, f"{name}: {url} is a tag: pin the image by digest (@sha256:…) or set sha256 to it")
    else:
        report("ok", where, f"{name}: module {url}")


def fqdn(host, namespace):
    return host if "." in host else f"{host}.{namespace}.svc.cluster.local"


def cross_check_istio(where, docs):
    plugins = [d for _, d in docs if d.get("kind") == "WasmPlugin"]
    services = [d for _, d in docs if d.get("kind") == "VirtualService"]
    rules = [d for _, d in docs if d.get("kind") == "DestinationRule"]
    subsets = {}
    for dr in rules:
        ns = dr["metadata"].get("namespace", "default")
        host = fqdn(dr.get("spec", {}).get("host", ""), ns)
        subsets.setdefault(host, set()).update(s.get("name") for s in dr["spec"].get("subsets") or [])
    for vs in services:
        ns = vs["metadata"].get("namespace", "default")
        missing, has_default = [], False
        for route in vs.get("spec", {}).get("http") or []:
            if not route.get("match"):
                has_default = True
            for dest in route.get("route") or []:
                d = dest.get("destination") or {}
                host = fqdn(d.get("host", ""), ns)
                if d.get("subset") and d["subset"] not in subsets.get(host, set()):
                    missing.append(f"{host} subset {d['subset']}")
        name = f"VirtualService {ns}/{vs['metadata']['name']}"
        if missing:
            report("FAIL", where, f"{name}: no DestinationRule subset for {', '.join(missing)}")
        elif not has_default:
            report("FAIL", where, f"{name}: no default route (one without match) for requests no rule matched")
        else:
            report("ok", where, f"{name}: every subset exists in a DestinationRule; has a default route")
    for plugin in plugins:
        config = plugin.get("spec", {}).get("pluginConfig") or {}
        header, destinations, shadows = config_clusters(config)
        routed = set()
        for vs in services:
            for route in vs.get("spec", {}).get("http") or []:
                for match in route.get("match") or []:
                    exact = ((match.get("headers") or {}).get(header) or {}).get("exact")
                    if exact is not None:
                        routed.add(exact)
        name = f"WasmPlugin {plugin['metadata'].get('namespace', 'default')}/{plugin['metadata']['name']}"
        check_scope(where, name, config)
        spec = plugin.get("spec", {})
        check_module_source(where, name, spec.get("url"), spec.get("sha256"))
        if spec.get("phase") != "STATS":
            report("FAIL", where, f"{name}: phase {spec.get('phase')!r}: use STATS, which runs after JWT and RBAC "
                   "and before the router (docs/deploy.md)")
        else:
            report("ok", where, f"{name}: phase STATS (after authentication and authorization, before the router)")
        unrouted = [c for c in destinations if c not in routed]
        if unrouted:
            report("FAIL", where, f"{name}: no VirtualService route matches {header} exactly {', '.join(unrouted)}")
        else:
            report("ok", where, f"{name}: every destination cluster ({', '.join(destinations)}) has a VirtualService route on {header}")
        for cluster in shadows:
            parts = str(cluster).split("|")
            if len(parts) != 4 or parts[0] != "outbound":
                report("FAIL", where, f"{name}: shadow cluster {cluster!r} is not an Istio cluster name "
                       "(outbound|<port>|<subset>|<host>): the filter dispatches shadows to Envoy clusters directly")
            elif parts[2] and parts[2] not in subsets.get(parts[3], set()):
                report("FAIL", where, f"{name}: shadow cluster {cluster}: no DestinationRule declares subset "
                       f"{parts[2]} of {parts[3]}, so Istio creates no such cluster")
            else:
                report("ok", where, f"{name}: shadow cluster {cluster} exists (DestinationRule subset {parts[2] or '-'})")


def cross_check_gateway(where, docs):
    routes = {(d["metadata"].get("namespace", "default"), d["metadata"]["name"]): d
              for _, d in docs if d.get("kind") == "HTTPRoute"}
    for route in routes.values():
        rules = route.get("spec", {}).get("rules") or []
        has_default = any(
            not r.get("matches") or any(not m.get("headers") for m in r["matches"]) for r in rules
        )
        name = f"HTTPRoute {route['metadata'].get('namespace', 'default')}/{route['metadata']['name']}"
        if has_default:
            report("ok", where, f"{name}: has a default rule (no header match) for requests no rule matched")
        else:
            report("FAIL", where, f"{name}: no default rule for requests no rule matched")
    for _, policy in docs:
        if policy.get("kind") != "EnvoyExtensionPolicy":
            continue
        ns = policy["metadata"].get("namespace", "default")
        name = f"EnvoyExtensionPolicy {ns}/{policy['metadata']['name']}"
        targets = [routes.get((ns, t.get("name"))) for t in policy.get("spec", {}).get("targetRefs") or []
                   if t.get("kind") == "HTTPRoute"]
        if not targets or None in targets:
            report("FAIL", where, f"{name}: targets an HTTPRoute that is not in {where}")
            continue
        for i, wasm in enumerate(policy.get("spec", {}).get("wasm") or []):
            check_scope(where, f"{name} wasm[{i}]", wasm.get("config") or {})
            code = wasm.get("code") or {}
            source = code.get("http") if code.get("type") == "HTTP" else code.get("image")
            source = source or {}
            url = source.get("url", "")
            if code.get("type") == "Image" and not str(url).startswith("oci://"):
                url = f"oci://{url}"
            check_module_source(where, f"{name} wasm[{i}]", url, source.get("sha256"))
            header, destinations, shadows = config_clusters(wasm.get("config") or {})
            for target in targets:
                values = set()
                for rule in target.get("spec", {}).get("rules") or []:
                    for match in rule.get("matches") or []:
                        for h in match.get("headers") or []:
                            if str(h.get("name", "")).lower() == header and h.get("type", "Exact") == "Exact":
                                values.add(h.get("value"))
                unrouted = [c for c in destinations if c not in values]
                tname = f"HTTPRoute {ns}/{target['metadata']['name']}"
                if unrouted:
                    report("FAIL", where, f"{name} wasm[{i}]: no rule of {tname} matches {header}: {', '.join(unrouted)}")
                else:
                    report("ok", where, f"{name} wasm[{i}]: every destination cluster ({', '.join(destinations)}) "
                           f"has a rule in {tname} on {header}")
                for cluster in shadows:
                    m = re.match(r"^httproute/([^/]+)/([^/]+)/rule/(\d+)$", str(cluster))
                    rules = target.get("spec", {}).get("rules") or []
                    if not m or (m.group(1), m.group(2)) != (ns, target["metadata"]["name"]) or int(m.group(3)) >= len(rules):
                        report("FAIL", where, f"{name} wasm[{i}]: shadow cluster {cluster!r} is not a rule of {tname} "
                               "(httproute/<ns>/<name>/rule/<index>)")
                    else:
                        report("ok", where, f"{name} wasm[{i}]: shadow cluster {cluster} is rule {m.group(3)} of {tname}")


# --- match.body -------------------------------------------------------------------------------

BODY_SETTING = "allow_on_headers_stop_iteration"
DEFAULT_BODY_MAX_BYTES = 65536  # docs/configuration.md


def body_rules(config):
    """Names of the rules of a config object that have match.body."""
    return [str(r.get("name")) for r in (config.get("rules") or [])
            if isinstance(r, dict) and (r.get("match") or {}).get("body")]


def check_filter_body_setting(where, name, filter_config):
    """An Envoy Wasm filter whose configuration routes on bodies sets the setting."""
    try:
        config = json.loads(plugin_configuration(filter_config) or "{}")
    except ValueError:
        return  # the parser check reports it
    rules = body_rules(config)
    if not rules:
        return
    if filter_config.get(BODY_SETTING) is True:
        report("ok", where, f"{name}: match.body ({', '.join(rules)}) with {BODY_SETTING}: true")
    else:
        report("FAIL", where, f"{name}: rule(s) {', '.join(rules)} use match.body but the Wasm config lacks "
               f"{BODY_SETTING}: true (Envoy then delivers no body to a held request; docs/deploy.md)")


def cross_check_body(where, docs):
    patches = [d for _, d in docs if d.get("kind") == "EnvoyPatchPolicy"]
    for _, doc in docs:
        kind = doc.get("kind")
        ns = doc["metadata"].get("namespace", "default")
        ident = f"{kind} {ns}/{doc['metadata']['name']}"
        if kind == "WasmPlugin":
            rules = body_rules(doc.get("spec", {}).get("pluginConfig") or {})
            if rules:
                report("FAIL", where, f"{ident}: rule(s) {', '.join(rules)} use match.body, which needs "
                       f"{BODY_SETTING}: a WasmPlugin cannot set it; load the filter with an EnvoyFilter "
                       "(deploy/istio-body-routing/)")
        elif kind == "EnvoyFilter":
            for filter_config in wasm_filters(doc):
                check_filter_body_setting(where, ident, filter_config)
        elif kind == "EnvoyExtensionPolicy":
            for i, wasm in enumerate(doc.get("spec", {}).get("wasm") or []):
                config = wasm.get("config") or {}
                rules = body_rules(config)
                if not rules:
                    continue
                filter_name = f"envoy.filters.http.wasm/envoyextensionpolicy/{ns}/{doc['metadata']['name']}/wasm/{i}"
                ops = [p.get("operation") or {} for epp in patches
                       for p in epp.get("spec", {}).get("jsonPatches") or []]
                setting = any(filter_name in str(op.get("jsonPath", "")) + str(op.get("path", ""))
                              and str(op.get("path", "")).endswith(BODY_SETTING) and op.get("value") is True
                              for op in ops)
                limits = [op.get("value") for op in ops
                          if str(op.get("path", "")).endswith("per_connection_buffer_limit_bytes")]
                need = int(config.get("body_max_bytes", DEFAULT_BODY_MAX_BYTES))
                name = f"{ident} wasm[{i}]"
                if not setting:
                    report("FAIL", where, f"{name}: rule(s) {', '.join(rules)} use match.body but no EnvoyPatchPolicy "
                           f"here adds {BODY_SETTING}: true to {filter_name}")
                else:
                    report("ok", where, f"{name}: match.body ({', '.join(rules)}); an EnvoyPatchPolicy adds {BODY_SETTING}")
                if not any(isinstance(v, int) and v >= need for v in limits):
                    report("FAIL", where, f"{name}: no EnvoyPatchPolicy raises per_connection_buffer_limit_bytes to "
                           f"body_max_bytes ({need}) or more: Envoy Gateway's 32 KiB default answers 413 to larger held bodies")
                else:
                    report("ok", where, f"{name}: the listener buffer holds body_max_bytes ({need})")
FAULT_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
ROUTER = "envoy.filters.http.router"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_CONFIG_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
FILTER_CONFIG_TYPE = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
# The EnvoyPatchPolicy jsonPath of the router entry (a JSON Patch `add` there inserts before it),
# in the form of envoypatchpolicy.yaml and Envoy Gateway's docs.
ROUTER_JSONPATH = f"$..http_filters[?(@.name=='{ROUTER}')]"


def eg_wasm_filter_names(docs):
    """{namespace: [Envoy Gateway's listener filter name of each EnvoyExtensionPolicy wasm entry]}
    (`envoy.filters.http.wasm/envoyextensionpolicy/<ns>/<name>/wasm/<i>`)."""
    names = {}
    for _, doc in docs:
        if doc.get("kind") == "EnvoyExtensionPolicy":
            ns = doc["metadata"].get("namespace", "default")
            for i, _ in enumerate((doc.get("spec") or {}).get("wasm") or []):
                names.setdefault(ns, []).append(
                    f"envoy.filters.http.wasm/envoyextensionpolicy/{ns}/{doc['metadata']['name']}/wasm/{i}")
    return names


def eg_fault_scope(doc, patch, entry, docs):
    """(problems, the per-route value) of a fault filter an EnvoyPatchPolicy adds: it must be
    `disabled: true` in the listener and turned on by a RouteConfiguration patch of the same
    policy on exactly the routes that carry the Wasm filter's own per-route entry, so that it
    never runs where the filter does not (the filter removes client-sent fault headers only
    where it runs)."""
    problems = []
    if entry.get("disabled") is not True:
        problems.append("not `disabled: true` in the listener: it would run on every route of the listener, "
                        "also those without the Wasm filter, where clients could inject faults")
    ns = doc["metadata"].get("namespace", "default")
    wasm_names = eg_wasm_filter_names(docs).get(ns, [])
    if not wasm_names:
        problems.append(f"no EnvoyExtensionPolicy in namespace {ns} beside it: nothing tells which routes "
                        "the Wasm filter runs on")
    want_path = f"/typed_per_filter_config/{entry.get('name')}"
    selectors = {f"$..routes[?(@.typed_per_filter_config['{w}'] exists true)]" for w in wasm_names}
    enabling = [p for p in (doc.get("spec") or {}).get("jsonPatches") or []
                if p.get("type") == ROUTE_CONFIG_TYPE and (p.get("operation") or {}).get("path") == want_path]
    route_value = None
    if not enabling:
        problems.append(f"no RouteConfiguration patch adds {want_path}: the fault filter is never turned on")
    for p in enabling:
        op = p.get("operation") or {}
        value = op.get("value") or {}
        route_value = value
        if p.get("name") != patch.get("name"):
            problems.append(f"its RouteConfiguration patch names {p.get('name')!r}, not the listener's "
                            f"{patch.get('name')!r} (Envoy Gateway names a listener's routes after it)")
        if op.get("op") != "add" or op.get("jsonPath") not in selectors:
            problems.append("its RouteConfiguration patch must `add` on the routes selected by "
                            f"{' or '.join(sorted(selectors)) or 'the Wasm filter name'} (where the Wasm filter runs)")
        if value.get("@type") != FILTER_CONFIG_TYPE or value.get("disabled"):
            problems.append(f"its per-route value must be an enabling {FILTER_CONFIG_TYPE}")
    return problems, route_value


def istio_fault_scope(doc, docs):
    """Problems of a fault filter an Istio EnvoyFilter adds: it must run on no workload the
    WasmPlugin does not, i.e. the same namespace and workload selector as a WasmPlugin beside it
    that applies to all of those workloads' traffic (no targetRef(s), no port match)."""
    ns = doc["metadata"].get("namespace", "default")
    labels = ((doc.get("spec") or {}).get("workloadSelector") or {}).get("labels")
    for _, plugin in docs:
        if plugin.get("kind") != "WasmPlugin" or plugin["metadata"].get("namespace", "default") != ns:
            continue
        spec = plugin.get("spec") or {}
        if labels and (spec.get("selector") or {}).get("matchLabels") == labels \
                and not spec.get("targetRef") and not spec.get("targetRefs") \
                and not any(m.get("ports") for m in spec.get("match") or []):
            return []
    return [f"no WasmPlugin in {ns} with the same workloadSelector {labels} that applies to all of its traffic: "
            "the fault filter would run where the Wasm filter does not, and clients there could inject faults"]


def fault_filters(docs):
    """[(name, filter entry, placed before the router, scope problems, per-route value)] of
    every fault filter an Istio EnvoyFilter or Envoy Gateway EnvoyPatchPolicy in `docs` adds."""
    found = []
    is_fault = lambda value: isinstance(value, dict) and (  # noqa: E731
        (value.get("typed_config") or {}).get("@type") == FAULT_FILTER_TYPE)
    for _, doc in docs:
        kind, spec = doc.get("kind"), doc.get("spec") or {}
        ident = f"{kind} {doc['metadata'].get('namespace', 'default')}/{doc['metadata']['name']}"
        if kind == "EnvoyFilter":
            for patch in spec.get("configPatches") or []:
                value = (patch.get("patch") or {}).get("value") or {}
                if not is_fault(value):
                    continue
                sub = ((((patch.get("match") or {}).get("listener") or {}).get("filterChain") or {})
                       .get("filter") or {}).get("subFilter") or {}
                before_router = (patch.get("applyTo") == "HTTP_FILTER"
                                 and patch["patch"].get("operation") == "INSERT_BEFORE"
                                 and sub.get("name") == ROUTER)
                found.append((ident, value, before_router, istio_fault_scope(doc, docs), None))
        elif kind == "EnvoyPatchPolicy":
            for patch in spec.get("jsonPatches") or []:
                op = patch.get("operation") or {}
                # A JSON patch's value can be a scalar (`value: true` sets a field): not a filter entry.
                if not is_fault(op.get("value")):
                    continue
                before_router = (patch.get("type") == LISTENER_TYPE and op.get("op") == "add"
                                 and not op.get("path") and op.get("jsonPath") == ROUTER_JSONPATH)
                problems, route_value = eg_fault_scope(doc, patch, op["value"], docs)
                found.append((ident, op["value"], before_router, problems, route_value))
    return found


def uses_fault(config):
    return any(rule.get("fault") for rule in config.get("rules") or [])


def check_fault_filters(where, docs, configs):
    """Every fault filter shipped for `rules[].fault` has header control at 100%, a
    max_active_faults, sits right before the router (after the Wasm filter), runs only where the
    Wasm filter runs, and loads in Envoy; a configuration in `where` that uses `fault` has one
    beside it."""
    filters = fault_filters(docs)
    for ident, entry, before_router, scope_problems, route_value in filters:
        config = entry.get("typed_config") or {}
        problems = []
        for kind, control in (("delay", "header_delay"), ("abort", "header_abort")):
            part = config.get(kind) or {}
            if control not in part:
                problems.append(f"{kind}.{control} missing")
            pct = part.get("percentage") or {}
            if pct and (pct.get("numerator") != 100 or pct.get("denominator", "HUNDRED") != "HUNDRED"):
                problems.append(f"{kind}.percentage must be 100/HUNDRED (it caps the filter's)")
        if not config.get("max_active_faults"):
            problems.append("no max_active_faults")
        if not before_router:
            problems.append(f"not inserted right before {ROUTER} (after the Wasm filter"
                            + (f"; EnvoyPatchPolicy: `add` at jsonPath {ROUTER_JSONPATH}" if "EnvoyPatchPolicy" in ident
                               else "") + ")")
        if problems:
            report("FAIL", where, f"{ident}: fault filter: {'; '.join(problems)}")
        else:
            report("ok", where, f"{ident}: fault filter with header_delay, header_abort at 100% and "
                   f"max_active_faults {config['max_active_faults']}, before the router")
        if scope_problems:
            report("FAIL", where, f"{ident}: fault filter scope: {'; '.join(scope_problems)}")
        elif "EnvoyPatchPolicy" in ident:
            report("ok", where, f"{ident}: fault filter disabled in the listener, on only on the routes that "
                   "have the Wasm filter's per-route entry")
        else:
            report("ok", where, f"{ident}: fault filter on the workloads of the WasmPlugin beside it, no others")
        if not problems:
            envoy_validate_filter(where, ident, entry, route_value)
    for name, config in configs:
        if uses_fault(config) and not filters:
            report("FAIL", where, f"{name}: uses `fault` but no EnvoyFilter/EnvoyPatchPolicy in {where} adds "
                   "Envoy's fault filter with header control")


HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def connection_managers(node):
    """Every HTTP connection manager config in an Envoy bootstrap."""
    return typed_nodes(node, HCM_TYPE)


def is_header_fault_filter(entry):
    config = entry.get("typed_config") or {}
    return config.get("@type") == FAULT_FILTER_TYPE and (
        "header_abort" in (config.get("abort") or {}) or "header_delay" in (config.get("delay") or {}))


def check_bootstrap_fault_scope(where, doc):
    """In an Envoy bootstrap, a fault filter with header control runs only where the
    traffic-split Wasm filter runs (which removes client-sent x-envoy-fault-* headers): in the
    same HTTP filter chain, after it, and on no route (inline route_config) where the Wasm filter
    is off, by `disabled: true` in the chain or a route's or virtual host's FilterConfig."""
    for hcm in connection_managers(doc):
        filters = [f for f in hcm.get("http_filters") or [] if isinstance(f, dict)]
        faults = [(i, f) for i, f in enumerate(filters) if is_header_fault_filter(f)]
        if not faults:
            continue
        wasm = [(i, f) for i, f in enumerate(filters) if any(True for _ in wasm_filters(f))]
        ident = f"connection manager {hcm.get('stat_prefix')!r}"
        if not wasm:
            report("FAIL", where, f"{ident}: a fault filter with header control but no traffic-split Wasm filter "
                   "in its chain: clients can inject faults")
            continue
        if any(i < wasm[0][0] for i, _ in faults):
            report("FAIL", where, f"{ident}: a fault filter with header control before the Wasm filter")
            continue
        routes = [(vh, r) for vh in (hcm.get("route_config") or {}).get("virtual_hosts") or []
                  for r in vh.get("routes") or []]
        if not routes:
            report("skip", where, f"{ident}: routes not inline (RDS): fault filter scope per route not checked")
            continue

        def enabled(entry, vh, route):
            for level in (route, vh):
                per = (level.get("typed_per_filter_config") or {}).get(entry.get("name"))
                if per is not None:
                    return not (isinstance(per, dict) and per.get("disabled"))
            return not entry.get("disabled")

        open_routes = [r.get("name") or "(unnamed)" for vh, r in routes
                       if any(enabled(f, vh, r) for _, f in faults)
                       and not any(enabled(f, vh, r) for _, f in wasm)]
        if open_routes:
            report("FAIL", where, f"{ident}: the fault filter with header control runs on route(s) "
                   f"{', '.join(open_routes)} where the Wasm filter does not: clients there can inject faults")
        else:
            report("ok", where, f"{ident}: the fault filter with header control runs after the Wasm filter and "
                   f"only on routes it runs on ({len(routes)} routes)")


def envoy_validate_filter(where, ident, entry, route_value=None):
    """`envoy --mode validate` on a minimal bootstrap with `entry` before the router, and
    `route_value` (if any) as its route's `typed_per_filter_config` entry."""
    if not ENVOY.exists():
        report("FAIL", where, f"{ident}: envoy --mode validate: no Envoy at {rel(ENVOY)} (run `make envoy`)")
        return
    bootstrap = {"static_resources": {"listeners": [{
        "name": "check", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "check", "route_config": {"name": "check", "virtual_hosts": [{
                    "name": "check", "domains": ["*"], "routes": [{
                        "match": {"prefix": "/"}, "direct_response": {"status": 200},
                        **({"typed_per_filter_config": {entry.get("name"): route_value}} if route_value else {})}]}]},
                "http_filters": [entry, {"name": ROUTER, "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}]}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fault.json"
        path.write_text(json.dumps(bootstrap), encoding="utf-8")
        run = subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "error"],
                             capture_output=True, text=True, check=False)
    if run.returncode == 0:
        report("ok", where, f"{ident}: its fault filter loads (envoy --mode validate)"
               + (" with its per-route FilterConfig" if route_value else ""))
    else:
        report("FAIL", where, f"{ident}: envoy --mode validate rejects its fault filter: {run.stderr.strip()[-400:]}")


# --- docker compose and Envoy ---------------------------------------------------------------


def compose_mounts(service):
    """[(source, target)] of a compose service's bind mounts (short and long syntax)."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            parts = volume.split(":")
            if len(parts) >= 2 and (parts[0].startswith(".") or parts[0].startswith("/")):
                mounts.append((parts[0], parts[1]))
        elif isinstance(volume, dict) and volume.get("type", "volume") == "bind":
            mounts.append((volume.get("source"), volume.get("target")))
    return mounts


def check_compose():
    where = "docker-compose.yml"
    path = ROOT / where
    if not path.exists():
        report("FAIL", where, "missing")
        return {}
    try:
        docs = load_all(path)
    except yaml.YAMLError as e:
        report("FAIL", where, f"does not parse: {e}")
        return {}
    compose = docs[0] if len(docs) == 1 and isinstance(docs[0], dict) else None
    services = compose.get("services") if compose else None
    if not isinstance(services, dict) or not services:
        report("FAIL", where, "no services")
        return {}
    report("ok", where, f"parses: services {', '.join(services)}")
    check_compose_spec(path, compose)
    check_compose_images(where, services)
    missing, mounted_by = [], {}
    for name, service in services.items():
        if not service.get("image") and not service.get("build"):
            report("FAIL", where, f"service {name}: no image")
        for source, target in compose_mounts(service):
            relpath = os.path.normpath(source)
            if relpath not in BUILT_FILES and not (ROOT / relpath).exists():
                missing.append(f"{name}: {source}")
            mounted_by.setdefault(relpath, []).append((name, target))
    if missing:
        report("FAIL", where, f"mounted file(s) missing from the repository: {', '.join(missing)}")
    else:
        report("ok", where, "every mounted file exists")
    names = set()
    for name, service in services.items():
        names.add(name)
        for net in (service.get("networks") or {}).values() if isinstance(service.get("networks"), dict) else []:
            names.update((net or {}).get("aliases") or [])
    return {"services": services, "mounted_by": mounted_by, "names": names}


def check_compose_spec(path, compose):
    """`docker compose config` where Docker Compose v2 is installed; else the Compose
    Specification's JSON schema, vendored in schemas/."""
    where = rel(path)
    try:
        version = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True,
                                 check=False, timeout=30)
        has_compose = version.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        has_compose = False
    if has_compose:
        run = subprocess.run(["docker", "compose", "-f", str(path), "config", "--quiet"], cwd=ROOT,
                             capture_output=True, text=True, check=False, timeout=120)
        if run.returncode == 0:
            report("ok", where, f"docker compose config ({version.stdout.strip()})")
        else:
            report("FAIL", where, f"docker compose config: {(run.stderr or run.stdout).strip()}")
        return
    if not COMPOSE_SCHEMA.exists():
        report("FAIL", where, f"no Docker Compose here and no {rel(COMPOSE_SCHEMA)}")
        return
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        shown = "; ".join(f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors[:5])
        report("FAIL", where, f"Compose Specification schema: {shown}")
    else:
        report("ok", where, f"matches the Compose Specification schema ({rel(COMPOSE_SCHEMA)}; "
               "no Docker Compose here for `docker compose config`)")


def makefile_var(name):
    """A variable of the Makefile as written (continuation lines joined)."""
    text = (ROOT / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    m = re.search(rf"^{name}\s*[:?]?=\s*(.*)$", text, re.M)
    return " ".join(m.group(1).split()) if m else None


def check_compose_images(where, services):
    """Every Envoy image is the version the tests run, never a moving tag."""
    wanted = f"envoyproxy/envoy:v{makefile_var('ENVOY_VERSION')}"
    for name, service in services.items():
        image = service.get("image")
        if service.get("build"):
            build = service["build"] if isinstance(service["build"], dict) else {"context": service["build"]}
            dockerfile = ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
            if not dockerfile.exists():
                report("FAIL", where, f"service {name}: builds {rel(dockerfile)}, which does not exist")
                continue
            text = dockerfile.read_text(encoding="utf-8")
            if f"ARG ENVOY_IMAGE={wanted}" in text:
                report("ok", where, f"service {name}: built by {rel(dockerfile)} on {wanted}")
            else:
                report("FAIL", where, f"service {name}: {rel(dockerfile)} does not build on {wanted} (ARG ENVOY_IMAGE)")
        elif image != wanted:
            report("FAIL", where, f"service {name}: image {image!r}, not {wanted} (the Envoy the tests run)")
        else:
            report("ok", where, f"service {name}: image {image}")


def upstream_hosts(bootstrap):
    hosts = set()
    for cluster in (bootstrap.get("static_resources") or {}).get("clusters") or []:
        for group in (cluster.get("load_assignment") or {}).get("endpoints") or []:
            for ep in group.get("lb_endpoints") or []:
                addr = (((ep.get("endpoint") or {}).get("address") or {}).get("socket_address") or {}).get("address")
                if addr:
                    hosts.add(addr)
    return hosts


def check_compose_envoy(path, compose):
    where = rel(path)
    mounts = compose.get("mounted_by", {}).get(where)
    if not mounts:
        report("FAIL", where, "not mounted by any docker-compose.yml service")
        return
    service = compose["services"][mounts[0][0]]
    text = path.read_text(encoding="utf-8")
    # The container paths this service mounts, longest first, replaced by the repository files.
    mapped = list(compose_mounts(service))
    if service.get("build"):
        mapped += [(repo, container) for container, repo in IMAGE_FILES.items()]
    for source, target in sorted(mapped, key=lambda m: -len(m[1])):
        text = text.replace(target, str(ROOT / os.path.normpath(source)))
    leftover = sorted(set(re.findall(r"/etc/envoy/[^\s\"',};]+", text)))
    if leftover:
        report("FAIL", where, f"refers to {', '.join(leftover)}, which service {mounts[0][0]} neither mounts nor builds in")
        return
    bootstrap = yaml.load(text, Loader=Loader)
    unknown = sorted(h for h in upstream_hosts(bootstrap)
                     if h not in compose["names"] and not re.match(r"^[0-9.:]+$", h))
    if unknown:
        report("FAIL", where, f"upstream host(s) {', '.join(unknown)} are not compose service names or aliases")
    if not ENVOY.exists():
        report("FAIL", where, f"envoy --mode validate: no Envoy at {rel(ENVOY)} (run `make envoy`)")
        return
    if "traffic_split.wasm" in text and not (ROOT / "target" / "traffic_split.wasm").exists():
        report("FAIL", where, "envoy --mode validate: target/traffic_split.wasm is not built (run `make wasm`)")
        return
    with tempfile.TemporaryDirectory(prefix="ts-envoy-") as tmp:
        copy = Path(tmp) / path.name
        copy.write_text(text, encoding="utf-8")
        run = subprocess.run(
            [str(ENVOY), "--mode", "validate", "-c", str(copy), "--disable-hot-restart", "-l", "error"],
            cwd=tmp, capture_output=True, text=True, check=False,
        )
    if run.returncode == 0:
        report("ok", where, f"envoy --mode validate (paths mounted by service {mounts[0][0]} mapped to the repository)")
    else:
        detail = (run.stderr.strip().splitlines() or run.stdout.strip().splitlines() or ["?"])[-1]
        report("FAIL", where, f"envoy --mode validate: {detail}")


def compare_with_demo(path, bootstrap):
    """deploy/compose/envoy.yaml keeps envoy/demo.yaml's filter configuration and stats_config."""
    where = rel(path)
    demo_path = ROOT / "envoy" / "demo.yaml"
    demo = load_all(demo_path)[0]
    mine = [plugin_configuration(c) for c in wasm_filters(bootstrap)]
    theirs = [plugin_configuration(c) for c in wasm_filters(demo)]
    try:
        same = [json.loads(c) for c in mine] == [json.loads(c) for c in theirs]
    except ValueError:
        same = mine == theirs
    if same:
        report("ok", where, "filter configuration equals envoy/demo.yaml's")
    else:
        report("FAIL", where, "filter configuration differs from envoy/demo.yaml's: keep them equal")
    stats_path = ROOT / "envoy" / "stats_config.yaml"
    if stats_path.exists():
        if bootstrap.get("stats_config") == load_all(stats_path)[0].get("stats_config"):
            report("ok", where, "stats_config equals envoy/stats_config.yaml's")
        else:
            report("FAIL", where, "stats_config differs from envoy/stats_config.yaml's")


def dockerfile_stages(path):
    """[(FROM line, [instruction lines])] with continuation lines joined, comments dropped."""
    stages, lines, current = [], [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current = f"{current} {line[:-1].strip()}" if line.endswith("\\") else f"{current} {line}"
        if not line.endswith("\\"):
            lines.append(" ".join(current.split()))
            current = ""
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append((line, []))
        elif stages:
            stages[-1][1].append(line)
    return stages


def check_dockerfiles():
    """./Dockerfile and deploy/oci/Dockerfile build the module as `make wasm` does."""
    strip = makefile_var("UNUSED_CALLBACKS")
    flags = makefile_var("WASM_OPT_FLAGS")
    build_stages = {}
    for path in [ROOT / "Dockerfile", *sorted((ROOT / "deploy").rglob("Dockerfile"))]:
        where = rel(path)
        if not path.exists():
            report("FAIL", where, "missing")
            continue
        stages = dockerfile_stages(path)
        build = next((body for head, body in stages if head.endswith(" AS build")), None)
        if build is None:
            report("FAIL", where, "no `AS build` stage (the module is built from source, not copied from the host)")
            continue
        build_stages[where] = build
        text = " ".join(build)
        problems = [what for what, ok in [
            ("rustup target add wasm32-wasip1", "rustup target add wasm32-wasip1" in text),
            ("cargo build --release --locked --target wasm32-wasip1", "cargo build --release --locked --target wasm32-wasip1" in text),
            (f"strip-exports.py ... {strip}", f"/tmp/stripped.wasm {strip}" in text),
            (f"wasm-opt {flags}", f"wasm-opt {flags}" in text),
        ] if not ok]
        if problems:
            report("FAIL", where, f"build stage lacks the Makefile's: {'; '.join(problems)}")
        else:
            report("ok", where, "build stage: wasm32-wasip1, the Makefile's strip list and wasm-opt flags")
        if path.parent == ROOT / "deploy" / "oci":
            head, body = stages[-1]
            copies = [line for line in body if line.upper().startswith("COPY ")]
            others = [line for line in body if not line.upper().startswith(("COPY ", "LABEL "))]
            if head != "FROM scratch" or len(copies) != 1 or others or not copies[0].endswith("plugin.wasm") \
                    or "--from=build" not in copies[0]:
                report("FAIL", where, "the image is FROM scratch plus exactly one COPY --from=build … plugin.wasm (one layer)")
            else:
                report("ok", where, f"final stage FROM scratch, one layer: {copies[0]} (not built here: no Docker engine)")
    if len(set(map(tuple, build_stages.values()))) > 1:
        report("FAIL", "Dockerfile", f"build stages differ between {', '.join(build_stages)}: keep them equal")
    elif len(build_stages) > 1:
        report("ok", "Dockerfile", f"build stage identical in {', '.join(build_stages)}")


# --- monitoring: Prometheus rules, Grafana, Flagger, Argo Rollouts -----------------------------


def check_rules_file(path, doc):
    where = rel(path)
    promtool = shutil.which("promtool")
    if not promtool:
        status = "FAIL" if os.environ.get("CI") == "true" else "skip"
        report(status, where, "promtool check rules: no promtool (apt-get install prometheus)")
    else:
        run = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
        lines = (run.stdout + run.stderr).strip().splitlines() or ["?"]
        if run.returncode == 0:
            report("ok", where, f"promtool check rules: {lines[-1].strip()}")
        else:
            report("FAIL", where, f"promtool check rules: {' '.join(lines[-3:])}")
    rules = [r for g in doc.get("groups") or [] for r in g.get("rules") or []]
    unexplained = [r.get("alert") for r in rules if "alert" in r
                   and not ((r.get("annotations") or {}).get("summary") and (r.get("annotations") or {}).get("description"))]
    if unexplained:
        report("FAIL", where, f"alert(s) {', '.join(unexplained)} lack a summary or description annotation")
    else:
        report("ok", where, f"{len(rules)} rule(s), every alert with a summary and a description")


def cross_check_prometheus_rules(directory, docs):
    rules_file = ROOT / directory / "alerts.yaml"
    if not rules_file.exists():
        report("FAIL", directory, "PrometheusRule without the plain rules file alerts.yaml beside it")
        return
    groups = load_all(rules_file)[0].get("groups")
    for where, doc in docs:
        if doc.get("kind") != "PrometheusRule":
            continue
        name = f"PrometheusRule {doc['metadata'].get('namespace', 'default')}/{doc['metadata']['name']}"
        if (doc.get("spec") or {}).get("groups") == groups:
            report("ok", where, f"{name}: spec.groups equal {rel(rules_file)}'s groups")
        else:
            report("FAIL", where, f"{name}: spec.groups differ from {rel(rules_file)}'s groups: keep them equal")


def check_dashboard(path):
    where = rel(path)
    try:
        dash = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        report("FAIL", where, f"does not parse as JSON: {e}")
        return
    if not isinstance(dash, dict) or "panels" not in dash:
        report("FAIL", where, "not a Grafana dashboard (no panels)")
        return
    problems = []
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list") or []}
    for wanted in ("datasource", "rule", "destination"):
        if wanted not in variables:
            problems.append(f"no `{wanted}` variable")
    if (variables.get("datasource") or {}).get("type") != "datasource":
        problems.append("the `datasource` variable is not of type datasource")
    ids, targets = [], 0

    def walk(panels):
        nonlocal targets
        for panel in panels:
            ids.append(panel.get("id"))
            walk(panel.get("panels") or [])
            if panel.get("type") == "row":
                continue
            title = panel.get("title")
            if (panel.get("datasource") or {}).get("uid") != "${datasource}":
                problems.append(f"panel {title!r} does not read the ${{datasource}} variable")
            if not panel.get("targets"):
                problems.append(f"panel {title!r} has no query")
            for t in panel.get("targets") or []:
                targets += 1
                if not t.get("expr") or (t.get("datasource") or {}).get("uid") != "${datasource}":
                    problems.append(f"panel {title!r} target {t.get('refId')}: no expr, or not on ${{datasource}}")
    walk(dash["panels"])
    if len(ids) != len(set(ids)):
        problems.append("panel ids are not unique")
    for v in variables.values():
        if v.get("type") == "query" and (v.get("datasource") or {}).get("uid") != "${datasource}":
            problems.append(f"variable {v.get('name')} does not query the ${{datasource}} variable")
    if problems:
        report("FAIL", where, "; ".join(problems[:5]))
    else:
        report("ok", where, f"Grafana dashboard {dash.get('title')!r}: {len(ids)} panels and rows, {targets} queries, "
               f"variables {', '.join(variables)}")


def cross_check_flagger(directory, docs):
    templates = {(d["metadata"].get("namespace"), d["metadata"]["name"]): d
                 for _, d in docs if d.get("kind") == "MetricTemplate"}
    for where, canary in docs:
        if canary.get("kind") != "Canary":
            continue
        ns = canary["metadata"].get("namespace", "default")
        for metric in ((canary.get("spec") or {}).get("analysis") or {}).get("metrics") or []:
            ref = metric.get("templateRef")
            if not ref:
                continue
            name = f"Canary {ns}/{canary['metadata']['name']} metric {metric.get('name')}"
            template = templates.get((ref.get("namespace") or ns, ref.get("name")))
            if template is None:
                report("FAIL", where, f"{name}: templateRef {ref} is not a MetricTemplate in {directory}")
                continue
            used = set(re.findall(r"\{\{\s*variables\.([\w-]+)\s*\}\}", template["spec"].get("query", "")))
            missing = sorted(used - set(metric.get("templateVariables") or {}))
            if missing:
                report("FAIL", where, f"{name}: templateVariables lack {', '.join(missing)} (used by {ref.get('name')})")
            else:
                report("ok", where, f"{name}: MetricTemplate {ref.get('name')} exists; its variables are set")


def cross_check_argo(directory, docs):
    for where, doc in docs:
        if doc.get("kind") != "AnalysisTemplate":
            continue
        spec = doc.get("spec") or {}
        declared = {a.get("name") for a in spec.get("args") or []}
        for metric in spec.get("metrics") or []:
            query = ((metric.get("provider") or {}).get("prometheus") or {}).get("query", "")
            used = set(re.findall(r"\{\{\s*args\.([\w-]+)\s*\}\}", query))
            name = f"AnalysisTemplate {doc['metadata']['name']} metric {metric.get('name')}"
            if used - declared:
                report("FAIL", where, f"{name}: uses undeclared args {', '.join(sorted(used - declared))}")
            else:
                report("ok", where, f"{name}: every arg it uses is declared")


# --- main -----------------------------------------------------------------------------------


def main():
    crds = None
    if SCHEMAS_DIR.is_dir():
        crds = load_crd_schemas()
        print(f"CRD schemas: {len(crds)} kind/version pairs from {rel(SCHEMAS_DIR)}", flush=True)
    else:
        report("FAIL", rel(SCHEMAS_DIR), "CRD schemas directory missing (vendored in schemas/, or set SCHEMAS_DIR)")

    configs = Configs()
    compose = check_compose()
    yaml_files = sorted(p for p in (ROOT / "deploy").rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    by_dir = {}
    for path in yaml_files:
        where = rel(path)
        try:
            docs = load_all(path)
        except yaml.YAMLError as e:
            report("FAIL", where, f"does not parse: {e}")
            continue
        if not docs:
            report("FAIL", where, "no YAML document")
        for doc in docs:
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                check_manifest(where, doc, crds)
                by_dir.setdefault(rel(path.parent), []).append((where, doc))
                kind, spec = doc.get("kind"), doc.get("spec") or {}
                ident = f"{kind} {doc.get('metadata', {}).get('name')}"
                if kind == "WasmPlugin":
                    configs.add(where, f"{ident} spec.pluginConfig", as_json(spec.get("pluginConfig") or {}))
                elif kind == "EnvoyExtensionPolicy":
                    for i, wasm in enumerate(spec.get("wasm") or []):
                        configs.add(where, f"{ident} spec.wasm[{i}].config", as_json(wasm.get("config") or {}))
                elif kind == "EnvoyFilter":
                    for filter_config in wasm_filters(doc):
                        configs.add(where, f"{ident} Wasm filter configuration",
                                    plugin_configuration(filter_config).encode())
            elif isinstance(doc, dict) and "static_resources" in doc and path.parent == ROOT / "deploy" / "compose":
                if compose:
                    check_compose_envoy(path, compose)
                else:
                    report("FAIL", where, "no usable docker-compose.yml to map its /etc/envoy paths")
                for filter_config in wasm_filters(doc):
                    configs.add(where, "Wasm filter configuration", plugin_configuration(filter_config).encode())
                    check_filter_body_setting(where, "Wasm filter", filter_config)
                check_bootstrap_fault_scope(where, doc)
                if any(True for _ in wasm_filters(doc)):
                    compare_with_demo(path, doc)
            elif isinstance(doc, dict) and "groups" in doc and path.parent == ROOT / "deploy" / "prometheus":
                check_rules_file(path, doc)
            else:
                report("FAIL", where, "neither a Kubernetes manifest (apiVersion, kind), an Envoy bootstrap under "
                       "deploy/compose/ nor a Prometheus rules file under deploy/prometheus/")
    for path in sorted((ROOT / "envoy").glob("*.yaml")):
        for doc in load_all(path):
            for filter_config in wasm_filters(doc):
                configs.add(rel(path), "Wasm filter configuration", plugin_configuration(filter_config).encode())
                check_filter_body_setting(rel(path), "Wasm filter", filter_config)
            check_bootstrap_fault_scope(rel(path), doc)
    check_dockerfiles()
    for path in sorted((ROOT / "deploy").rglob("*.json")):
        check_dashboard(path)

    for directory, docs in sorted(by_dir.items()):
        kinds = {d.get("kind") for _, d in docs}
        plugin_configs = [(f"WasmPlugin {d['metadata']['name']}", d.get("spec", {}).get("pluginConfig") or {})
                          for _, d in docs if d.get("kind") == "WasmPlugin"]
        plugin_configs += [(f"EnvoyExtensionPolicy {d['metadata']['name']} wasm[{i}]", w.get("config") or {})
                           for _, d in docs if d.get("kind") == "EnvoyExtensionPolicy"
                           for i, w in enumerate(d.get("spec", {}).get("wasm") or [])]
        if kinds & {"EnvoyFilter", "EnvoyPatchPolicy"} or any(uses_fault(c) for _, c in plugin_configs):
            check_fault_filters(directory, docs, plugin_configs)
        if "WasmPlugin" in kinds:
            cross_check_istio(directory, docs)
        if "EnvoyExtensionPolicy" in kinds or "HTTPRoute" in kinds:
            cross_check_gateway(directory, docs)
        cross_check_body(directory, docs)
        if "Canary" in kinds or "MetricTemplate" in kinds:
            cross_check_flagger(directory, docs)
        if "AnalysisTemplate" in kinds:
            cross_check_argo(directory, docs)
        if "PrometheusRule" in kinds:
            cross_check_prometheus_rules(directory, docs)

    configs.check()

    skips = f", {skipped} skipped" if skipped else ""
    if failures:
        print(f"validate-manifests: {failures} of {checks} checks FAILED{skips}")
        return 1
    print(f"validate-manifests: {checks - skipped} checks ok{skips}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
