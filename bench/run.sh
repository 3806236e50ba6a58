#!/usr/bin/env bash
# `make bench`: what the traffic-split filter costs against Envoy's native route features, an
# Envoy Lua filter, a Wasm filter that does nothing, and no filter at all.
#
#   bench/run.sh [SCENARIO...]      run the named scenarios (default: all but the probe-*), see --list
#   bench/run.sh --list             list the scenarios
#   bench/run.sh --config SCENARIO  print the front Envoy config of a scenario
#   bench/run.sh --validate         `envoy --mode validate` every config
#
# Every scenario runs the same load: wrk (1 thread, BENCH_CONNECTIONS connections, a random
# x-user-id per request) for BENCH_DURATION seconds after a BENCH_WARMUP-second warm-up, through
# its own FRONT Envoy (--concurrency 1) to one BACKEND Envoy (--concurrency 1, direct_response).
# Rounds are interleaved (A B C … A B C …) so drift hits every scenario alike. Per run it
# records wrk's requests, req/s, p50/p99, and the front Envoy's CPU (utime+stime from
# /proc/<pid>/stat before and after wrk) divided by the requests wrk completed. The report
# (medians over the rounds) goes to bench/results/results.md, each wrk output to
# bench/results/<scenario>.r<round>.raw.
#
# Environment: BENCH_SCENARIOS (space-separated, instead of arguments), BENCH_ROUNDS (3),
# BENCH_DURATION (10 s), BENCH_WARMUP (1 s), BENCH_CONNECTIONS (16), BENCH_RESULTS (directory),
# ENVOY (.venv/bin/envoy), WASM (target/traffic_split.wasm), WASM_BASELINE (for filter-baseline),
# WASM_OPT_FLAGS.
# A smoke run: BENCH_ROUNDS=1 BENCH_DURATION=2 BENCH_WARMUP=1 bench/run.sh plain filter
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
ENVOY=${ENVOY:-$ROOT/.venv/bin/envoy}
WASM=${WASM:-$ROOT/target/traffic_split.wasm}
WASM_OPT_FLAGS=${WASM_OPT_FLAGS:-"-Oz --converge --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int --enable-mutable-globals --enable-reference-types --enable-multivalue"}
ROUNDS=${BENCH_ROUNDS:-3}
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-1}
CONNECTIONS=${BENCH_CONNECTIONS:-16}
RESULTS=${BENCH_RESULTS:-$HERE/results}
WORK=$RESULTS/work
NOOP_DIR=$HERE/wasm-noop
NOOP_WASM=$NOOP_DIR/target/wasm_noop.wasm
# The same no-op without the stream callbacks a no-op does not need (Envoy skips a callback the
# module does not export): what the SDK's export-everything default costs.
NOOP_LEAN_WASM=$NOOP_DIR/target/wasm_noop_lean.wasm
NOOP_LEAN_STRIP="proxy_on_request_body proxy_on_request_trailers proxy_on_response_headers
    proxy_on_response_body proxy_on_response_trailers proxy_on_log proxy_on_done"
LUA_SPLIT=$HERE/envoy/split.lua
WRK_SCRIPT=$HERE/wrk-user-id.lua

BACKEND_ADMIN=19900
# Backend listeners (bench/envoy/backend.yaml): stable 19101, canary 19102, shadow 19103, slow 19104.
# Scenario i (its index in ALL below) gets front listener 19200+i and admin 19300+i.
FRONT_PORT_BASE=19200
FRONT_ADMIN_BASE=19300

DEFAULT=(plain native-weighted native-random lua wasm-noop wasm-noop-lean filter filter-sticky filter-lean
    native-mirror filter-shadow filter-shadow-compare native-mirror-slow filter-shadow-slow)
# Run only when named: the no-op module making some of the filter's per-request host calls.
# filter-baseline: the filter scenario with $WASM_BASELINE (say, a build of an earlier commit),
# to measure what a change buys side by side in one run.
EXTRA=(probe-get probe-set probe-clear probe-all filter-baseline filter-sticky-baseline)
ALL=("${DEFAULT[@]}" "${EXTRA[@]}")

describe() {
    case $1 in
    plain) echo "route straight to one cluster: the ceiling" ;;
    native-weighted) echo "Envoy weighted_clusters 95/5, use_hash_policy + hash_policy on x-user-id (native sticky)" ;;
    native-random) echo "Envoy weighted_clusters 95/5, random per request" ;;
    lua) echo "Envoy Lua filter: hash of x-user-id -> bucket -> x-split-cluster, clearRouteCache; cluster_header route" ;;
    wasm-noop-lean) echo "wasm-noop exporting only the callbacks a no-op needs (no request body, response, log, done)" ;;
    wasm-noop) echo "a Rust proxy-wasm filter that does nothing (bench/wasm-noop)" ;;
    filter) echo "traffic-split: sticky 95/5 on x-user-id behind 3 non-matching header rules; cluster_header route" ;;
    native-mirror) echo "native-weighted + request_mirror_policies 100% to the shadow cluster" ;;
    filter-shadow) echo "filter + shadow 100% to the shadow cluster, compare: false" ;;
    filter-shadow-compare) echo "filter + shadow 100% to the shadow cluster, compare: true" ;;
    native-mirror-slow) echo "native-mirror to a backend answering after 1 s (reference for filter-shadow-slow)" ;;
    filter-shadow-slow) echo "filter + shadow 100% (compare: true) to a backend answering after 1 s" ;;
    probe-get) echo "(extra) wasm-noop + 1 read of the request header map" ;;
    probe-set) echo "(extra) wasm-noop + 2 request header writes (x-split-cluster, x-split-variant)" ;;
    probe-clear) echo "(extra) wasm-noop + 1 clear_route_cache foreign-function call" ;;
    probe-all) echo "(extra) wasm-noop + the filter's host calls: header map read, 2 writes, clear_route_cache" ;;
    filter-baseline) echo "(extra) filter, with \$WASM_BASELINE instead of \$WASM (A/B a change)" ;;
    filter-sticky) echo "traffic-split with only the sticky 95/5 rule: the same job as native-weighted" ;;
    filter-lean) echo "filter-sticky with variant_header \"\": one read, one write, the same job as the lua script" ;;
    filter-sticky-baseline) echo "(extra) filter-sticky with \$WASM_BASELINE" ;;
    *) return 1 ;;
    esac
}

index_of() {
    local i
    for i in "${!ALL[@]}"; do
        if [[ ${ALL[$i]} == "$1" ]]; then
            echo "$i"
            return 0
        fi
    done
    return 1
}

# ---------------------------------------------------------------- front Envoy configs

# Only the sticky rule: what native-weighted does, nothing more.
# $1: extra top-level fields (say, '"variant_header": "", ').
filter_sticky_json() {
    cat <<EOF
{ ${1:-}"rules": [ { "name": "everyone", "sticky": { "header": "x-user-id" },
    "destinations": [ { "name": "canary", "cluster": "canary", "weight": 5 },
                      { "name": "stable", "cluster": "stable", "weight": 95 } ] } ] }
EOF
}

# The traffic-split configuration: 3 header rules the load never satisfies, then the sticky
# 95/5 split every request ends in. $1: extra JSON members of the last rule (the shadow).
filter_json() {
    local extra=${1:-}
    cat <<EOF
{
  "rules": [
    { "name": "tenant-a", "match": { "headers": [ { "name": "x-tenant", "exact": "a" } ] },
      "destinations": [ { "name": "canary", "cluster": "canary" } ] },
    { "name": "employees", "match": { "headers": [ { "name": "x-employee", "exact": "true" } ] },
      "destinations": [ { "name": "canary", "cluster": "canary" } ] },
    { "name": "beta", "match": { "headers": [ { "name": "x-beta", "exact": "yes" } ] },
      "destinations": [ { "name": "canary", "cluster": "canary" } ] },
    { "name": "everyone",
      "sticky": { "header": "x-user-id" },
      "destinations": [
        { "name": "canary", "cluster": "canary", "weight": 5 },
        { "name": "stable", "cluster": "stable", "weight": 95 } ]${extra} }
  ]
}
EOF
}

# A Wasm HTTP filter entry. $1: name, $2: .wasm path, $3: configuration JSON.
wasm_filter() {
    echo "          - name: envoy.filters.http.wasm"
    echo "            typed_config:"
    echo "              \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
    echo "              config:"
    echo "                name: $1"
    echo "                root_id: $1"
    echo "                vm_config:"
    echo "                  vm_id: $1"
    echo "                  runtime: envoy.wasm.runtime.v8"
    echo "                  code: { local: { filename: \"$2\" } }"
    echo "                configuration:"
    echo "                  \"@type\": type.googleapis.com/google.protobuf.StringValue"
    echo "                  value: |"
    local line
    while IFS= read -r line; do echo "                    $line"; done <<<"$3"
}

routes_cluster_header() {
    cat <<'EOF'
              - match: { prefix: "/", headers: [ { name: x-split-cluster, present_match: true } ] }
                route: { cluster_header: x-split-cluster }
              - match: { prefix: "/" }
                route: { cluster: stable }
EOF
}

# $1: "sticky" or "random"; $2: a cluster to mirror 100% of the requests to.
routes_weighted() {
    echo '              - match: { prefix: "/" }'
    echo '                route:'
    if [[ $1 == sticky ]]; then
        echo '                  hash_policy: [ { header: { header_name: x-user-id } } ]'
    fi
    if [[ -n ${2:-} ]]; then
        echo '                  request_mirror_policies:'
        echo "                  - cluster: $2"
        echo '                    runtime_fraction: { default_value: { numerator: 100, denominator: HUNDRED } }'
    fi
    echo '                  weighted_clusters:'
    if [[ $1 == sticky ]]; then
        echo '                    use_hash_policy: true'
    fi
    echo '                    clusters: [ { name: canary, weight: 5 }, { name: stable, weight: 95 } ]'
}

cluster() {
    cat <<EOF
  - name: $1
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: $1
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $2 } } }
EOF
}

front_config() {
    local scenario=$1 i routes filters=""
    i=$(index_of "$scenario")
    case $scenario in
    plain) routes=$(printf '              - match: { prefix: "/" }\n                route: { cluster: stable }') ;;
    native-weighted) routes=$(routes_weighted sticky) ;;
    native-random) routes=$(routes_weighted random) ;;
    native-mirror) routes=$(routes_weighted sticky shadow) ;;
    native-mirror-slow) routes=$(routes_weighted sticky slow) ;;
    lua)
        routes=$(routes_cluster_header)
        filters=$(
            echo "          - name: envoy.filters.http.lua"
            echo "            typed_config:"
            echo "              \"@type\": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
            echo "              default_source_code: { filename: \"$LUA_SPLIT\" }"
        )
        ;;
    wasm-noop-lean)
        routes=$(routes_cluster_header)
        filters=$(wasm_filter noop "$NOOP_LEAN_WASM" "")
        ;;
    wasm-noop)
        routes=$(routes_cluster_header)
        filters=$(wasm_filter noop "$NOOP_WASM" "")
        ;;
    probe-get | probe-set | probe-clear | probe-all)
        local calls=get_headers
        [[ $scenario != probe-set ]] || calls=set_headers
        [[ $scenario != probe-clear ]] || calls=clear_route
        [[ $scenario != probe-all ]] || calls=get_headers,set_headers,clear_route
        routes=$(routes_cluster_header)
        filters=$(wasm_filter noop "$NOOP_WASM" "$calls")
        ;;
    filter)
        routes=$(routes_cluster_header)
        filters=$(wasm_filter traffic-split "$WASM" "$(filter_json)")
        ;;
    filter-baseline)
        routes=$(routes_cluster_header)
        filters=$(wasm_filter traffic-split "${WASM_BASELINE:-$WASM}" "$(filter_json)")
        ;;
    filter-sticky)
        routes=$(routes_cluster_header)
        filters=$(wasm_filter traffic-split "$WASM" "$(filter_sticky_json)")
        ;;
    filter-lean)
        routes=$(routes_cluster_header)
        filters=$(wasm_filter traffic-split "$WASM" "$(filter_sticky_json '"variant_header": "", ')")
        ;;
    filter-sticky-baseline)
        routes=$(routes_cluster_header)
        filters=$(wasm_filter traffic-split "${WASM_BASELINE:-$WASM}" "$(filter_sticky_json)")
        ;;
    filter-shadow | filter-shadow-compare | filter-shadow-slow)
        local cluster=shadow compare=false timeout=1000
        [[ $scenario == filter-shadow ]] || compare=true
        # The slow backend answers after 1 s: a 1 s timeout would race it and turn the answers
        # into timeouts (resets). 3 s lets them arrive, as the native mirror's do (route timeout).
        [[ $scenario != filter-shadow-slow ]] || { cluster=slow; timeout=3000; }
        routes=$(routes_cluster_header)
        filters=$(wasm_filter traffic-split "$WASM" "$(filter_json ",
      \"shadow\": [ { \"cluster\": \"$cluster\", \"percent\": 100, \"compare\": $compare, \"timeout_ms\": $timeout } ]")")
        ;;
    *) return 1 ;;
    esac
    cat <<EOF
# bench/run.sh front Envoy for scenario "$scenario": $(describe "$scenario")
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: $((FRONT_ADMIN_BASE + i)) }

static_resources:
  listeners:
  - name: front
    address:
      socket_address: { address: 127.0.0.1, port_value: $((FRONT_PORT_BASE + i)) }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          route_config:
            name: front
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
$routes
          http_filters:
${filters:+$filters
}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router

  clusters:
$(cluster stable 19101)
$(cluster canary 19102)
$(cluster shadow 19103)
$(cluster slow 19104)
    # 100% of the requests are shadowed to a listener answering after 1 s: at 5-10k req/s that
    # is thousands of requests in flight. HTTP/2 carries them on a few connections, and the
    # limits are raised so the shadows really wait rather than overflow.
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    circuit_breakers:
      thresholds: [ { max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 } ]
EOF
}

# ---------------------------------------------------------------- processes

PIDS=()
# Waits (bounded) for the already signalled process $1 to exit, then kills it for good.
reap() {
    local n
    for ((n = 0; n < 50; n++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$1" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do reap "$pid"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts an Envoy; prints its PID. $1: config, $2: log file.
start_envoy() {
    "$ENVOY" -c "$1" --concurrency 1 --disable-hot-restart -l warn >"$2" 2>&1 &
    echo $!
}

# Waits until the Envoy with PID $1 and admin port $2 is ready (bounded). On failure prints why.
wait_ready() {
    local pid=$1 admin=$2 log=$3 n
    for ((n = 0; n < 300; n++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            first_error "$log"
            return 1
        fi
        if [[ $(curl -s -m 1 "http://127.0.0.1:$admin/ready" 2>/dev/null) == LIVE ]]; then
            return 0
        fi
        sleep 0.1
    done
    echo "not ready after 30 s"
    return 1
}

# Stops scenario $1's front Envoy (bounded), so that only the measured Envoy runs.
stop_front() {
    kill "${PID[$1]}" 2>/dev/null || true
    reap "${PID[$1]}"
}

# Starts a fresh front Envoy for scenario $1 in round $2 (not in a subshell: it sets PID). Each
# round gets a new process: one process keeps a bias of several µs/req through all its rounds
# (which core it shares with wrk, memory layout, JIT), so only new processes let the median
# over rounds average it out.
restart_front() {
    local s=$1 why
    LOG[$s]=$WORK/$1.r$2.log
    PID[$s]=$(start_envoy "$WORK/$s.yaml" "${LOG[$s]}")
    PIDS+=("${PID[$s]}")
    if ! why=$(wait_ready "${PID[$s]}" $((FRONT_ADMIN_BASE + $(index_of "$s"))) "${LOG[$s]}"); then
        echo "$s: front Envoy failed to start for round $2: $why" >&2
        exit 1
    fi
}

# The first error line of an Envoy log, without its timestamp/thread prefix.
first_error() {
    local line
    line=$(grep -m1 -E '\]\[(error|critical)\]' "$1" || true)
    [[ -n $line ]] || line=$(grep -m1 -v '^\s*$' "$1" || true)
    [[ -n $line ]] || line="exited with no log"
    # "[time][thread][level][logger] [source:line] msg" -> "[level][logger] msg"
    sed -E 's/^\[[^]]*\]\[[^]]*\]//; s/ \[[^] ]+:[0-9]+\]//; s/\|/\\|/g' <<<"$line" | cut -c1-300
}

# utime+stime of a process, in clock ticks.
cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# Requests the backend listener $1 (shadow or slow) has received.
backend_requests() {
    curl -s -m 2 "http://127.0.0.1:$BACKEND_ADMIN/stats?filter=^http\\.$1\\.downstream_rq_total\$" |
        awk -F': ' '{ print $2 + 0 }' | head -1
}

# Builds bench/wasm-noop with the main filter's release profile and wasm-opt treatment.
build_noop() {
    echo "building bench/wasm-noop"
    (cd "$NOOP_DIR" && cargo build --quiet --release --target wasm32-wasip1)
    local raw=$NOOP_DIR/target/wasm32-wasip1/release/wasm_noop.wasm
    if command -v wasm-opt >/dev/null; then
        # shellcheck disable=SC2086 # the flags are a list
        wasm-opt $WASM_OPT_FLAGS "$raw" -o "$NOOP_WASM"
    else
        echo "wasm-opt not found (apt-get install binaryen): using the unoptimized no-op build"
        cp "$raw" "$NOOP_WASM"
    fi
    echo "$NOOP_WASM: $(stat -c %s "$NOOP_WASM") bytes"
    # shellcheck disable=SC2086 # the names are a list
    python3 "$ROOT/scripts/strip-exports.py" "$NOOP_WASM" "$NOOP_LEAN_WASM" $NOOP_LEAN_STRIP
}

# ---------------------------------------------------------------- arguments

case ${1:-} in
--list)
    for s in "${ALL[@]}"; do printf '%-22s %s\n' "$s" "$(describe "$s")"; done
    exit 0
    ;;
--config)
    front_config "${2:?usage: bench/run.sh --config SCENARIO}"
    exit 0
    ;;
--validate)
    mkdir -p "$WORK"
    build_noop
    rc=0
    if "$ENVOY" --mode validate -c "$HERE/envoy/backend.yaml" --disable-hot-restart -l error >/dev/null; then
        echo "ok   backend"
    else
        echo "FAIL backend"
        rc=1
    fi
    for s in "${ALL[@]}"; do
        front_config "$s" >"$WORK/$s.yaml"
        if "$ENVOY" --mode validate -c "$WORK/$s.yaml" --disable-hot-restart -l error >"$WORK/$s.validate.log" 2>&1; then
            echo "ok   $s"
        else
            echo "FAIL $s: $(first_error "$WORK/$s.validate.log")"
            rc=1
        fi
    done
    exit $rc
    ;;
-h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
esac

if (($# > 0)); then
    SCENARIOS=("$@")
elif [[ -n ${BENCH_SCENARIOS:-} ]]; then
    read -r -a SCENARIOS <<<"$BENCH_SCENARIOS"
else
    SCENARIOS=("${DEFAULT[@]}")
fi
for s in "${SCENARIOS[@]}"; do
    describe "$s" >/dev/null || { echo "unknown scenario '$s' (bench/run.sh --list)" >&2; exit 2; }
done
for v in ROUNDS DURATION WARMUP CONNECTIONS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "BENCH_$v must be a whole number, got '${!v}'" >&2; exit 2; }
    [[ $v == WARMUP ]] || ((${!v} > 0)) || { echo "BENCH_$v must be positive" >&2; exit 2; }
done

command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl not found: apt-get install curl" >&2; exit 1; }
[[ -x $ENVOY ]] || { echo "Envoy not found at $ENVOY: run make envoy" >&2; exit 1; }
wants() { [[ " ${SCENARIOS[*]} " == *" $1"* ]]; }
for s in filter-baseline filter-sticky-baseline; do
    if wants "$s " && [[ ! -f ${WASM_BASELINE:-} ]]; then
        echo "$s needs WASM_BASELINE=path/to/an/other/traffic_split.wasm" >&2
        exit 1
    fi
done
if wants filter && [[ ! -f $WASM ]]; then
    echo "$WASM not found: run make wasm" >&2
    exit 1
fi

mkdir -p "$RESULTS" "$WORK"
rm -f "$RESULTS"/*.raw "$WORK"/*

if wants wasm-noop || wants probe-; then
    build_noop
fi

# ---------------------------------------------------------------- start the Envoys

echo "starting the backend Envoy"
BACKEND_PID=$(start_envoy "$HERE/envoy/backend.yaml" "$WORK/backend.log")
PIDS+=("$BACKEND_PID")
if ! why=$(wait_ready "$BACKEND_PID" "$BACKEND_ADMIN" "$WORK/backend.log"); then
    echo "backend Envoy failed to start: $why" >&2
    exit 1
fi

declare -A PID LOG PORT STATUS CHECK CANARY
RUNNABLE=()
for s in "${SCENARIOS[@]}"; do
    i=$(index_of "$s")
    PORT[$s]=$((FRONT_PORT_BASE + i))
    front_config "$s" >"$WORK/$s.yaml"
    LOG[$s]=$WORK/$s.log
    PID[$s]=$(start_envoy "$WORK/$s.yaml" "${LOG[$s]}")
    PIDS+=("${PID[$s]}")
    # One at a time: Wasm compilation takes a core for a moment.
    if ! why=$(wait_ready "${PID[$s]}" $((FRONT_ADMIN_BASE + i)) "$WORK/$s.log"); then
        STATUS[$s]="not available (front Envoy failed to start: $why)"
        echo "$s: ${STATUS[$s]}"
        continue
    fi
    # A check before any load: 200 requests with distinct users must all answer 200, and the
    # split scenarios must send some of them (about 5 %) to canary.
    args=()
    for ((n = 1; n <= 200; n++)); do
        ((n == 1)) || args+=(--next)
        args+=(-s -o /dev/null -D - -H "x-user-id: check-$n" "http://127.0.0.1:${PORT[$s]}/")
    done
    heads=$(curl -m 20 "${args[@]}" 2>/dev/null || true)
    ok=$(grep -c '^HTTP/1.1 200' <<<"$heads" || true)
    canary=$(grep -ci '^x-backend: canary' <<<"$heads" || true)
    # Which check users went to canary (the n-th response answers check-n).
    CANARY[$s]=$(awk '/^HTTP\// { n++ } tolower($0) ~ /^x-backend: canary/ { printf "%d ", n }' <<<"$heads")
    CHECK[$s]="$ok/200 ok, $canary canary"
    if ((ok != 200)); then
        STATUS[$s]="not available (only $ok of 200 check requests answered 200)"
        echo "$s: ${STATUS[$s]}"
        continue
    fi
    STATUS[$s]=ok
    RUNNABLE+=("$s")
    echo "$s: ready on 127.0.0.1:${PORT[$s]} (${CHECK[$s]})"
done

# ---------------------------------------------------------------- the rounds

SHADOW_OF() {
    case $1 in
    native-mirror | filter-shadow | filter-shadow-compare) echo shadow ;;
    native-mirror-slow | filter-shadow-slow) echo slow ;;
    *) echo "" ;;
    esac
}

TSV=$WORK/runs.tsv
printf 'scenario\tround\trequests\tduration_us\trps\tcpu_us_per_req\tp50_us\tp99_us\terrors\tshadowed\n' >"$TSV"
CLK_TCK=$(getconf CLK_TCK)
total=$((ROUNDS * ${#RUNNABLE[@]} * (DURATION + WARMUP)))
echo "running ${#RUNNABLE[@]} scenario(s) x $ROUNDS round(s), ${WARMUP}s warm-up + ${DURATION}s each: about $((total / 60)) min $((total % 60)) s"
URL_OF() { echo "http://127.0.0.1:${PORT[$1]}/"; }
for ((round = 1; round <= ROUNDS; round++)); do
    for s in "${RUNNABLE[@]}"; do
        # Round 1 measures the Envoy the checks ran against; later rounds start a new one.
        ((round == 1)) || restart_front "$s" "$round"
        if ! kill -0 "${PID[$s]}" 2>/dev/null; then
            echo "$s: front Envoy died: $(first_error "${LOG[$s]}")" >&2
            exit 1
        fi
        if ((WARMUP > 0)); then
            timeout $((WARMUP + 30)) wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" -s "$WRK_SCRIPT" "$(URL_OF "$s")" >/dev/null
        fi
        shadow=$(SHADOW_OF "$s")
        shadow0=0
        [[ -z $shadow ]] || shadow0=$(backend_requests "$shadow")
        raw=$RESULTS/$s.r$round.raw
        cpu0=$(cpu_ticks "${PID[$s]}")
        timeout $((DURATION + 30)) wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$WRK_SCRIPT" "$(URL_OF "$s")" >"$raw"
        cpu1=$(cpu_ticks "${PID[$s]}")
        if [[ $(SHADOW_OF "$s") == slow ]]; then
            sleep 1.5 # let the last shadows (1 s) finish before the next scenario runs
        fi
        shadowed=-
        [[ -z $shadow ]] || shadowed=$(($(backend_requests "$shadow") - shadow0))
        {
            echo "# scenario=$s round=$round front_pid=${PID[$s]} cpu_ticks_before=$cpu0 cpu_ticks_after=$cpu1 clk_tck=$CLK_TCK shadow_requests=$shadowed"
        } >>"$raw"
        line=$(grep '^BENCH ' "$raw" || true)
        if [[ -z $line ]]; then
            echo "$s round $round: wrk printed no BENCH line (see $raw)" >&2
            exit 1
        fi
        awk -v s="$s" -v r="$round" -v c0="$cpu0" -v c1="$cpu1" -v tck="$CLK_TCK" -v sh="$shadowed" '
            {
                for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                req = v["requests"]; errs = v["errors_connect"] + v["errors_read"] + v["errors_write"] + v["errors_status"] + v["errors_timeout"]
                rps = req / (v["duration_us"] / 1e6)
                cpu = req > 0 ? (c1 - c0) * 1e6 / tck / req : 0
                printf "%s\t%d\t%d\t%d\t%.0f\t%.1f\t%d\t%d\t%d\t%s\n", s, r, req, v["duration_us"], rps, cpu, v["p50_us"], v["p99_us"], errs, sh
            }' <<<"$line" >>"$TSV"
        stop_front "$s"
        tail -1 "$TSV" | awk -F'\t' '{ printf "round %s %-22s %8s req/s  %7s us CPU/req  p50 %6s us  p99 %6s us  errors %s  shadowed %s\n", $2, $1, $5, $6, $7, $8, $9, $10 }'
    done
done

# ---------------------------------------------------------------- the report

REPORT=$RESULTS/results.md
{
    echo "# make bench results"
    echo
    dirty=""
    if [[ $WASM -ef $ROOT/target/traffic_split.wasm ]]; then
        git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml 2>/dev/null ||
            dirty=" + uncommitted changes in src/ or Cargo.toml (built into the filter)"
    fi
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$dirty"
    if wants filter; then
        echo "- filter: $WASM, $(stat -c %s "$WASM") bytes, sha256 $(sha256sum "$WASM" | cut -c1-16)"
    fi
    if wants wasm-noop || wants probe-; then
        echo "- wasm-noop: $NOOP_WASM, $(stat -c %s "$NOOP_WASM") bytes"
    fi
    echo "- machine: $(nproc) cores, $(lscpu | awk -F': +' '/^Model name/ { print $2; exit }')"
    echo "- $("$ENVOY" --version 2>/dev/null | grep -o 'version: .*' | head -1 | sed 's/^version: /Envoy /')"
    echo "- $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2): 1 thread, $CONNECTIONS connections, ${DURATION}s per run after a ${WARMUP}s warm-up, random x-user-id per request"
    echo "- $ROUNDS round(s), scenarios interleaved; every number is the median over the rounds"
    echo "- CPU/req: front Envoy utime+stime (/proc/<pid>/stat) during the wrk run / requests completed"
    echo
    echo "| scenario | CPU µs/req | req/s | p50 µs | p99 µs | errors | shadowed/req | check |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
} >"$REPORT"

# The median of column $2 (1-based, runs.tsv) for scenario $1; empty when it has no run.
median() {
    awk -F'\t' -v s="$1" -v c="$2" 'NR > 1 && $1 == s && $c != "-" { print $c }' "$TSV" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

declare -A CPU RPS P50 P99
for s in "${SCENARIOS[@]}"; do
    if [[ ${STATUS[$s]} != ok ]]; then
        echo "| $s | ${STATUS[$s]} | | | | | | |" >>"$REPORT"
        continue
    fi
    CPU[$s]=$(median "$s" 6)
    RPS[$s]=$(median "$s" 5)
    P50[$s]=$(median "$s" 7)
    P99[$s]=$(median "$s" 8)
    errors=$(awk -F'\t' -v s="$s" 'NR > 1 && $1 == s { e += $9 } END { print e + 0 }' "$TSV")
    shadowed=-
    if [[ -n $(SHADOW_OF "$s") ]]; then
        shadowed=$(awk -F'\t' -v s="$s" 'NR > 1 && $1 == s { n += $10; r += $3 } END { if (r) printf "%.3f", n / r }' "$TSV")
    fi
    printf '| %s | %.1f | %.0f | %.0f | %.0f | %s | %s | %s |\n' "$s" "${CPU[$s]}" "${RPS[$s]}" "${P50[$s]}" "${P99[$s]}" \
        "$errors" "$shadowed" "${CHECK[$s]}" >>"$REPORT"
done

# A ratio line: $1 label, $2 numerator, $3 denominator, $4 "le", "ge" or "ref" (a reference
# without a target), $5 target.
ratio() {
    local label=$1 a=$2 b=$3 op=$4 target=${5:-}
    local shown="-"
    [[ $op == ref ]] || shown="$([[ $op == le ]] && echo ≤ || echo ≥) $target"
    if [[ -z $a || -z $b ]]; then
        echo "| $label | n/a | $shown | not measured |"
        return
    fi
    awk -v l="$label" -v a="$a" -v b="$b" -v op="$op" -v t="$target" -v shown="$shown" 'BEGIN {
        r = a / b; met = (op == "le") ? (r <= t) : (r >= t)
        printf "| %s | %.3f | %s | %s |\n", l, r, shown, (op == "ref") ? "reference" : (met ? "met" : "NOT met")
    }'
}
{
    echo
    echo "| ratio (medians) | value | target | |"
    echo "| --- | ---: | ---: | --- |"
    ratio "CPU/req filter / wasm-noop" "${CPU[filter]:-}" "${CPU[wasm-noop]:-}" le 1.10
    ratio "CPU/req filter / lua" "${CPU[filter]:-}" "${CPU[lua]:-}" le 1.0
    ratio "CPU/req filter / native-weighted" "${CPU[filter]:-}" "${CPU[native-weighted]:-}" le 1.25
    ratio "req/s filter / native-weighted" "${RPS[filter]:-}" "${RPS[native-weighted]:-}" ge 0.85
    # The same comparisons with the filter doing exactly the peer's job, and the floor under all.
    ratio "CPU/req filter-lean / lua (same job: 1 read, 1 write)" "${CPU[filter-lean]:-}" "${CPU[lua]:-}" le 1.0
    ratio "CPU/req filter-sticky / native-weighted (same job)" "${CPU[filter-sticky]:-}" "${CPU[native-weighted]:-}" le 1.25
    ratio "CPU/req wasm-noop / native-weighted (floor of an SDK-built Wasm filter)" "${CPU[wasm-noop]:-}" "${CPU[native-weighted]:-}" ref
    ratio "CPU/req wasm-noop-lean / native-weighted (floor of any Wasm filter)" "${CPU[wasm-noop-lean]:-}" "${CPU[native-weighted]:-}" ref
    ratio "CPU/req filter / wasm-noop-lean" "${CPU[filter]:-}" "${CPU[wasm-noop-lean]:-}" le 1.10
    ratio "CPU/req filter-shadow / native-mirror" "${CPU[filter-shadow]:-}" "${CPU[native-mirror]:-}" le 1.10
    ratio "CPU/req filter-shadow-compare / native-mirror" "${CPU[filter-shadow-compare]:-}" "${CPU[native-mirror]:-}" le 1.10
    ratio "p99 filter-shadow-slow / filter" "${P99[filter-shadow-slow]:-}" "${P99[filter]:-}" le 1.10
    ratio "p50 filter-shadow-slow / filter" "${P50[filter-shadow-slow]:-}" "${P50[filter]:-}" le 1.10
    ratio "p99 native-mirror-slow / native-weighted (Envoy's own mirror)" "${P99[native-mirror-slow]:-}" "${P99[native-weighted]:-}" ref
    if [[ ${STATUS[lua]:-} == ok && ${STATUS[filter]:-} == ok ]]; then
        echo
        if [[ ${CANARY[lua]} == "${CANARY[filter]}" ]]; then
            echo "lua and filter sent the same check users to canary (same bucketing): ${CANARY[filter]:-none}"
        else
            echo "lua and filter sent DIFFERENT check users to canary: lua ${CANARY[lua]:-none}, filter ${CANARY[filter]:-none}"
        fi
    fi
    echo
    echo "Per run (runs.tsv):"
    echo
    echo '```'
    awk -F'\t' '{ printf "%-22s %5s %9s %11s %7s %14s %8s %8s %6s %8s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }' "$TSV"
    echo '```'
} >>"$REPORT"
cp "$TSV" "$RESULTS/runs.tsv"

echo
cat "$REPORT"
echo
echo "report: $REPORT; raw wrk outputs: $RESULTS/*.raw"
