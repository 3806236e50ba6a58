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
pay=$(curl -s -X POST -d 'card=4242' http://127.0.0.1:10000/checkout/pay)
grep -qE "^(stable \(v1\)|canary \(v2\))$" <<<"$pay" || fail "the client saw something other than the primary: $pay"
forged=$(curl -s -H 'x-user-id: alice' -H 'x-split-cluster: canary' http://127.0.0.1:10000/)
[ "$forged" = "$alice" ] || fail "a forged routing header changed alice's version"
sleep 1
metrics=$(curl -s http://127.0.0.1:9901/stats/prometheus | grep '^traffic_split_rule_destination_requests{rule="employees",destination="canary"} 1$') \
  || fail "metric missing"
# Envoy flushes its access log every 250 ms in the demo.
for _ in $(seq 1 50); do grep -q "cluster=canary variant=canary" run/access.log && break; sleep 0.1; done
grep -q "cluster=canary variant=canary" run/access.log || fail "decision not in the access log"
for _ in $(seq 1 50); do grep -q 'POST /checkout/pay" host=127.0.0.1-shadow:10000 x-shadow-request=true content-length=9 answered 503' run/shadow-access.log && break; sleep 0.1; done
grep -q 'POST /checkout/pay" host=127.0.0.1-shadow:10000 x-shadow-request=true content-length=9 answered 503' run/shadow-access.log \
  || fail "the shadow did not get the copy: $(cat run/shadow-access.log)"
for _ in $(seq 1 30); do
  curl -s http://127.0.0.1:9901/stats/prometheus | grep -q '^traffic_split_shadow_class_mismatch{shadow="v3"} 1$' && break; sleep 0.1
done
curl -s http://127.0.0.1:9901/stats/prometheus | grep -q '^traffic_split_shadow_class_mismatch{shadow="v3"} 1$' \
  || fail "the shadow's 503 was not compared: $(curl -s http://127.0.0.1:9901/stats/prometheus | grep shadow)"
echo "demo check ok: sticky user, forced employee, cookie assignment, shadow copy and comparison, forged header ignored, metrics, access log"
