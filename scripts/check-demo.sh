#!/usr/bin/env bash
# Proves `make run` works: starts it, follows the README's tour with curl, checks the answers,
# stops it. Used by `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
./scripts/run-demo.sh >"$log" 2>&1 &
demo=$!
stop() { kill "$demo" 2>/dev/null || true; wait "$demo" 2>/dev/null || true; rm -f "$log"; }
trap stop EXIT
# Read whole outputs before grepping: with pipefail, `curl | grep -q` fails when grep stops
# reading early and curl gets SIGPIPE.
prom() { curl -s http://127.0.0.1:9901/stats/prometheus; }
fail() { echo "demo check FAILED: $*"; echo "--- make run output:"; cat "$log"; echo "--- run/envoy.log (tail):"; tail -30 run/envoy.log; exit 1; }

for _ in $(seq 1 150); do grep -q "demo is running" "$log" && break; sleep 0.1; done
grep -q "demo is running" "$log" || fail "the demo did not start"

alice=$(curl -s -H 'x-user-id: alice' http://127.0.0.1:10000/)
for _ in 1 2 3 4 5; do
  [ "$(curl -s -H 'x-user-id: alice' http://127.0.0.1:10000/)" = "$alice" ] || fail "alice moved"
done
emp=$(curl -si -H 'x-employee: true' http://127.0.0.1:10000/)
grep -q "canary (v2)" <<<"$emp" || fail "employee not on canary: $emp"
grep -qi "x-split-decision: rule=employees; variant=canary" <<<"$emp" || fail "no decision header: $emp"
grep -qi "x-seen-variant: canary" <<<"$emp" || fail "upstream did not see the variant: $emp"
checkout=$(curl -si http://127.0.0.1:10000/checkout)
grep -qiE "^set-cookie: uid=[0-9a-f]{32}; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax" <<<"$checkout" || fail "no cookie: $checkout"
grep -qiE "^cache-control: private" <<<"$checkout" || fail "a cookie-assigning response is cacheable by shared caches: $checkout"
pay=$(curl -s -X POST -d 'card=4242' http://127.0.0.1:10000/checkout/pay)
grep -qE "^(stable \(v1\)|canary \(v2\))$" <<<"$pay" || fail "the client saw something other than the primary: $pay"
codes=""
for i in $(seq 1 80); do codes+="$(curl -s -o /dev/null -w '%{http_code}' -H "x-user-id: user$i" http://127.0.0.1:10000/unstable) "; done
grep -q 500 <<<"$codes" || fail "the canary never failed on /unstable: $codes"
sleep 0.5  # every worker learns of the open breaker within a tick (100 ms)
after=""
for i in $(seq 1 80); do after+="$(curl -s -o /dev/null -w '%{http_code}' -H "x-user-id: user$i" http://127.0.0.1:10000/unstable) "; done
grep -q 500 <<<"$after" && fail "the canary's breaker did not cut it off: $codes / then: $after"
forged=$(curl -s -H 'x-user-id: alice' -H 'x-split-cluster: canary' http://127.0.0.1:10000/)
[ "$forged" = "$alice" ] || fail "a forged routing header changed alice's version"
sleep 1
metrics=$(prom)
grep -q '^traffic_split_rule_destination_requests{rule="employees",destination="canary"} 1$' <<<"$metrics" \
  || fail "metric missing"
# Envoy flushes its access log every 250 ms in the demo.
for _ in $(seq 1 50); do grep -q "cluster=canary variant=canary" run/access.log && break; sleep 0.1; done
grep -q "cluster=canary variant=canary" run/access.log || fail "decision not in the access log"
for _ in $(seq 1 50); do grep -q 'POST /checkout/pay" host=127.0.0.1-shadow:10000 x-shadow-request=true content-length=9 answered 503' run/shadow-access.log && break; sleep 0.1; done
grep -q 'POST /checkout/pay" host=127.0.0.1-shadow:10000 x-shadow-request=true content-length=9 answered 503' run/shadow-access.log \
  || fail "the shadow did not get the copy: $(cat run/shadow-access.log)"
for _ in $(seq 1 30); do
  metrics=$(prom)
  grep -q '^traffic_split_shadow_class_mismatch{shadow="v3"} 1$' <<<"$metrics" && break; sleep 0.1
done
grep -q '^traffic_split_shadow_class_mismatch{shadow="v3"} 1$' <<<"$metrics" \
  || fail "the shadow's 503 was not compared: $(grep traffic_split_shadow <<<"$metrics")"
grep -q "breaker everyone/canary (cluster canary) opened" run/envoy.log || fail "no breaker line in the log"
grep -q '^traffic_split_breaker_state{rule="everyone",destination="canary"} 1$' <<<"$(prom)" || fail "breaker gauge"
echo "demo check ok: sticky user, forced employee, cookie assignment, shadow copy and comparison, breaker, forged header ignored, metrics, access log"
