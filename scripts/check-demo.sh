#!/usr/bin/env bash
# Proves `make run` works and that the README's tour shows its real output: starts the demo, runs
# the tour's commands in the README's order, one named step each, and checks each answer against
# the text the README shows (`shown` fails if the README no longer contains that text, so the
# two cannot drift). Random or timing-dependent parts (timestamps, durations, cookie ids, the
# checkout visitors' 10% draw, the breaker's exact counts) are checked by pattern or by sums.
# A failed check names its step and prints what was expected and what was received.
# Used by `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
./scripts/run-demo.sh >"$log" 2>&1 &
demo=$!
stop() { kill "$demo" 2>/dev/null || true; wait "$demo" 2>/dev/null || true; rm -f "$log"; }
trap stop EXIT
url=localhost:10000

# ---------------------------------------------------------------- helpers

STEP="(none)"
step() { STEP=$1; echo "> [demo] $1"; }

# fail WHAT [EXPECTED RECEIVED]: stops the check, naming the step, with the demo's logs.
fail() {
  echo "demo check FAILED at step \"$STEP\": $1"
  if (($# == 3)); then
    echo "--- expected:"; echo "$2"
    echo "--- received:"; echo "$3"
  fi
  echo "--- make run output:"; cat "$log"
  echo "--- run/envoy.log (tail):"; tail -30 run/envoy.log
  exit 1
}

# expect WHAT EXPECTED RECEIVED: RECEIVED is exactly EXPECTED.
expect() { [ "$2" = "$3" ] || fail "$1" "$2" "$3"; }

# has_line WHAT REGEX TEXT: a line of TEXT matches REGEX (grep -E); lacks WHAT REGEX TEXT: none does.
has_line() { grep -qE "$2" <<<"$3" || fail "$1" "a line matching: $2" "$3"; }
lacks() { ! grep -qE "$2" <<<"$3" || fail "$1" "no line matching: $2" "$3"; }

# readme_has TEXT: the README contains TEXT (a multi-line TEXT as a whole, which grep -F would
# not check: it matches any one of the lines).
readme_has() {
  python3 -c 'import sys; sys.exit(sys.argv[1] not in open("README.md").read())' "$1" \
    || fail "the README no longer shows the text below" "$1" "(not in README.md)"
}

# shown TEXT RECEIVED: TEXT is in the README's tour and RECEIVED is exactly TEXT.
shown() { readme_has "$1"; expect "the demo's answer differs from the README's" "$1" "$2"; }

# wait_for TRIES COMMAND...: runs COMMAND every 0.1 s until it succeeds, TRIES times at most;
# silent either way (the strict check after it says what was received).
wait_for() {
  local tries=$1 _
  shift
  for _ in $(seq 1 "$tries"); do "$@" && return 0; sleep 0.1; done
  return 1
}

# Read whole outputs before grepping: with pipefail, `curl | grep -q` fails when grep stops
# reading early and curl gets SIGPIPE.
prom() { curl -s http://127.0.0.1:9901/stats/prometheus; }
metric() { prom | grep "^$1" || true; } # the exposition lines starting with $1
in_file() { grep -qF "$2" "$1"; }       # in_file FILE TEXT
metric_is() { [ "$(metric "$1")" = "$2" ]; }
# The last line of a demo log without its [timestamp]; of run/access.log also without the
# duration (its last field), which depends on the machine.
last_entry() { tail -1 "$1" | sed 's/^\[[^]]*\] //'; }
last_access() { last_entry run/access.log | sed 's/ [0-9]*ms$//'; }
last_access_is() { [ "$(last_access)" = "$1" ]; }
# The sum of traffic_split_rule_destination_requests over a rule's destinations.
rule_requests() {
  grep -F "traffic_split_rule_destination_requests{rule=\"$1\"," <<<"$2" | awk '{s += $2} END {print s + 0}'
}

# ---------------------------------------------------------------- the tour

step "the demo starts"
wait_for 150 in_file "$log" "demo is running" || fail "make run did not print \"demo is running\" within 15 s"

step "sticky users land on the same version"
users=$(for u in alice bob carol dave erin frank heidi mallory; do curl -s -H "x-user-id: $u" $url/; done)
shown "stable (v1)
stable (v1)
stable (v1)
stable (v1)
stable (v1)
stable (v1)
canary (v2)
canary (v2)" "$users"

step "an employee is forced to the canary"
emp=$(curl -si -H 'x-employee: true' $url/ | grep -iE '^x-(backend|split|seen)' | tr -d '\r')
shown "x-backend: canary
x-seen-variant: canary
x-split-decision: rule=employees; variant=canary" "$emp"

step "a checkout visitor gets a private user-id cookie"
checkout=$(curl -si $url/checkout | grep -iE '^(set-cookie|cache-control)' | tr -d '\r')
has_line "no user-id cookie" '^set-cookie: uid=[0-9a-f]{32}; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax$' "$checkout"
has_line "a cookie-assigning response is cacheable by shared caches" '^cache-control: private$' "$checkout"
has_line "the README's cache-control line" '^cache-control: private$' "$(cat README.md)"
readme_has "; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax"

step "checkout payments are shadowed and compared"
pay=$(curl -s -X POST -d 'card=4242' $url/checkout/pay)
has_line "the client saw something other than the primary" '^(stable \(v1\)|canary \(v2\))$' "$pay"
copy='shadow got "POST /checkout/pay" host=localhost-shadow:10000 x-shadow-request=true content-length=9 answered 503'
wait_for 50 in_file run/shadow-access.log "$copy" || true
shown "$copy" "$(last_entry run/shadow-access.log)"
mismatch='traffic_split_shadow_class_mismatch{shadow="v3"} 1'
wait_for 30 metric_is traffic_split_shadow_class_mismatch "$mismatch" || true
shown "$mismatch" "$(metric traffic_split_shadow_class_mismatch)"

step "the canary's breaker opens on /unstable and holds"
codes=$(for i in $(seq 1 60); do curl -s -o /dev/null -w '%{http_code} ' -H "x-user-id: user$i" $url/unstable; done)
has_line "the canary never failed on /unstable" 500 "$codes"
# How many 500s pass before the breaker opens depends on timing (it opens on the next 100 ms
# tick); that it opened is checked by its log line, and that it holds by a second round.
opened='breaker everyone/canary (cluster canary) opened'
wait_for 30 in_file run/envoy.log "$opened" || true
sleep 0.5 # every worker learns of the open breaker within a tick (100 ms)
after=""
for i in $(seq 1 60); do after+="$(curl -s -o /dev/null -w '%{http_code} ' -H "x-user-id: user$i" $url/unstable) "; done
lacks "the open breaker let canary failures through" 500 "$after"
breaker_line='^breaker everyone/canary \(cluster canary\) opened: [0-9]+ of [0-9]+ requests failed'
has_line "no breaker line in the log" \
  "$breaker_line"' \([0-9.]+%\) in the last 10 s; its traffic goes to "stable" for 15 s$' \
  "$(grep -o 'breaker everyone.*' run/envoy.log | head -1)"
has_line "the README's breaker line" "$breaker_line" "$(cat README.md)"

step "Prometheus sees the open breaker"
query='max by (rule, destination) (traffic_split_breaker_state) > 0'
readme_has "\$ promtool query instant http://127.0.0.1:9099 '$query'"
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  has_line "make run did not print Prometheus's URL" '^Prometheus: http://127.0.0.1:9099 ' "$(cat "$log")"
  # the answer without its evaluation time (`@[<unix time>]`)
  prom_answer() { promtool query instant http://127.0.0.1:9099 "$query" 2>&1 | sed -E 's/ @\[[0-9.]+\]$//'; }
  breaker_answer='{destination="canary", rule="everyone"} => 1'
  prom_answer_is() { [ "$(prom_answer)" = "$1" ]; }
  wait_for 50 prom_answer_is "$breaker_answer" || true # scraped every second
  expect "Prometheus's answer" "$breaker_answer" "$(prom_answer)"
  has_line "the README's Prometheus answer" '^\{destination="canary", rule="everyone"\} => 1 @\[[0-9.]+\]$' "$(cat README.md)"
elif [ "${CI:-}" = true ]; then
  fail "Prometheus is not installed (apt-get install prometheus): CI runs this step"
else
  echo "> [demo] SKIPPED: Prometheus is not installed (apt-get install prometheus); CI runs this step"
fi

step "a sticky fault slice fails the same users and the breaker stays closed"
chaos=$(for r in 1 2; do for u in $(seq 1 20); do curl -s -o /dev/null -w '%{http_code} ' -H "x-user-id: user$u" $url/chaos; done; echo; done)
shown "200 200 200 200 200 503 200 200 200 200 200 200 503 200 200 503 200 503 200 200 
200 200 200 200 200 503 200 200 200 200 200 200 503 200 200 503 200 503 200 200 " "$chaos"
shown "x-split-decision: rule=chaos; variant=canary; fault=abort_status:503" \
  "$(curl -si -H 'x-user-id: user6' $url/chaos | grep -iE '^x-split' | tr -d '\r')"
forged=$(curl -s -w ' %{http_code}' -H 'x-user-id: user1' -H 'x-envoy-fault-abort-request: 500' \
  -H 'x-envoy-fault-abort-request-percentage: 100' $url/chaos)
expect "a client-sent fault header was obeyed" "canary (v2)
 200" "$forged"
faults='traffic_split_fault_aborted{rule="chaos"} 9
traffic_split_fault_delayed{rule="chaos"} 0
traffic_split_breaker_state{rule="chaos",destination="canary"} 0'
chaos_metrics() { prom | grep -E '^traffic_split_(fault|breaker_state\{rule="chaos")' || true; }
chaos_is() { [ "$(chaos_metrics)" = "$faults" ]; }
wait_for 30 chaos_is || true
shown "$faults" "$(chaos_metrics)"

step "a client cannot pick the version"
shown "stable (v1)" "$(curl -s -H 'x-user-id: alice' -H 'x-split-cluster: canary' $url/)"

step "the metrics count every decision"
sleep 1 # metrics are flushed every 0.5 s
metrics=$(prom)
shown 'traffic_split_rule_destination_requests{rule="employees",destination="canary"} 1' \
  "$(grep '^traffic_split_rule_destination_requests{rule="employees"' <<<"$metrics")"
# checkout: the visit and the payment; everyone: 8 users + 60 + 60 on /unstable + alice.
expect "requests counted for the checkout rule" 2 "$(rule_requests checkout "$metrics")"
expect "requests counted for the everyone rule" 129 "$(rule_requests everyone "$metrics")"
# chaos: 2 x 20 users, user6's decision header and user1's forged fault headers.
expect "requests counted for the chaos rule" 42 "$(rule_requests chaos "$metrics")"
has_line "the breaker gauge" '^traffic_split_breaker_state\{rule="everyone",destination="canary"\} 1$' "$metrics"

step "the access log shows each decision"
last='"GET /" 200 cluster=stable variant=stable user=alice'
wait_for 50 last_access_is "$last" || true # Envoy flushes it every 250 ms here
shown "$last" "$(last_access)"
has_line "the employee's decision is not in the access log" "cluster=canary variant=canary" "$(cat run/access.log)"

echo "demo check ok: the README tour's outputs (sticky users, employee, cookie, shadow copy and comparison, breaker, Prometheus, fault slice, forged header, metrics, access log)"
