#!/usr/bin/env bash
# Instructions Envoy executes per request with a given .wasm, counted by callgrind: a measure
# that load on a shared machine does not move (unlike CPU time), for small A/B questions such as
# what one more exported callback costs.
#
#   bench/callgrind.sh A.wasm [B.wasm ...]
#
# Per module: Envoy (--concurrency 1, a direct_response route, the filter with a sticky 50/50
# rule: `bench/run.sh --config callgrind`) runs under callgrind with instrumentation off; after
# a warm-up, instrumentation is on for N1 then, in a second Envoy, N2 keep-alive requests (one
# curl each). Instructions per
# request = (Ir(N2) - Ir(N1)) / (N2 - N1), so start-up and the fixed part cancel out.
# Environment: CG_ROUNDS (2), CG_N1 (200), CG_N2 (600), CG_PORT (18431), ENVOY_REAL (the
# Envoy binary itself: valgrind must not run the .venv's Python launcher), CG_SCENARIO (the
# bench.py tool config: callgrind, or callgrind-5-rules / callgrind-5000-rules for host rules,
# callgrind-body / callgrind-body-header for match.body), CG_HEADER_CMD (a command printing one
# more request header, `name: value`, run once per Envoy before its requests: e.g. a freshly
# signed lane, bench/lane_value.py), CG_BODY (a file: every request is a POST of it with
# content-type application/json and x-model: gpt-small), CG_BACKEND (1: start the bench's
# backend Envoy, bench/envoy/backend.yaml, for the callgrind-upstream-* scenarios), CG_USER (the
# x-user-id of the measured requests, default u).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
ENVOY_REAL=${ENVOY_REAL:-$(ls "$ROOT"/.venv/lib/python3*/site-packages/envoy/_bin/envoy | head -1)}
ROUNDS=${CG_ROUNDS:-2}
N1=${CG_N1:-200}
N2=${CG_N2:-600}
PORT=${CG_PORT:-18431}
WORK=$(mktemp -d /tmp/traffic-split-callgrind.XXXXXX)
[ $# -ge 1 ] || { sed -n 2,21p "$0"; exit 2; }
if [ -n "${CG_BACKEND:-}" ]; then
    "$ENVOY_REAL" -c "$HERE/envoy/backend.yaml" --concurrency 1 --disable-hot-restart -l error \
        > "$WORK/backend.log" 2>&1 &
    BACKEND_PID=$!
    trap 'kill $BACKEND_PID 2> /dev/null || true' EXIT
    up=""
    for _ in $(seq 1 100); do
        if curl -s -o /dev/null -m 2 http://127.0.0.1:19101/; then up=1; break; fi
        sleep 0.2
    done
    # Without it the front Envoy would answer 503 itself: not the proxied request measured.
    [ -n "$up" ] || { echo "the bench backend (bench/envoy/backend.yaml) did not come up" >&2; exit 1; }
fi
BODY_ARGS=()
if [ -n "${CG_BODY:-}" ]; then
    BODY_ARGS=(-H 'content-type: application/json' -H 'x-model: gpt-small' --data-binary "@$CG_BODY")
fi

# The Envoy config: the "callgrind" entry of bench/bench.py (the shared front template).
config() { # WASM
    WASM=$1 CG_PORT=$PORT python3 "$HERE/bench.py" --config "${CG_SCENARIO:-callgrind}"
}

# Prints the instructions counted over N requests.
count() { # WASM N
    local out=$WORK/cg.out pid
    config "$1" > "$WORK/envoy.yaml"
    rm -f "$out"*
    ( exec nice valgrind --tool=callgrind --smc-check=all-non-file --instr-atstart=no \
        --callgrind-out-file="$out" "$ENVOY_REAL" -c "$WORK/envoy.yaml" --concurrency 1 \
        --disable-hot-restart -l error > "$WORK/envoy.log" 2>&1 ) &
    pid=$!
    for _ in $(seq 1 300); do
        curl -s -o /dev/null -m 5 "http://127.0.0.1:$PORT/warm" && break
        sleep 1
    done
    local extra=()
    if [ -n "${CG_HEADER_CMD:-}" ]; then extra=(-H "$(eval "$CG_HEADER_CMD")"); fi
    curl -s -o /dev/null -H 'x-user-id: w' ${extra[@]+"${extra[@]}"} "http://127.0.0.1:$PORT/w[1-50]"
    sleep 1
    callgrind_control -i on "$pid" > /dev/null 2>&1
    curl -s -o /dev/null -H "x-user-id: ${CG_USER:-u}" ${extra[@]+"${extra[@]}"} ${BODY_ARGS[@]+"${BODY_ARGS[@]}"} \
        "http://127.0.0.1:$PORT/r[1-$2]"
    callgrind_control -i off "$pid" > /dev/null 2>&1
    callgrind_control -d "$pid" > /dev/null 2>&1
    sleep 1
    kill "$pid"
    wait "$pid" 2> /dev/null || true
    grep -h '^totals:' "$out".1 | awk '{print $2}'
}

for round in $(seq 1 "$ROUNDS"); do
    for wasm in "$@"; do
        a=$(count "$wasm" "$N1")
        b=$(count "$wasm" "$N2")
        echo "round $round $(basename "$wasm"): $(( (b - a) / (N2 - N1) )) instructions/request (Ir $a at $N1, $b at $N2)"
    done
done
rm -rf "$WORK"
