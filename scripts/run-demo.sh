#!/usr/bin/env bash
# Runs the demo: backends Envoy (:8001 stable, :8002 canary, :8003 shadow) and the front Envoy with the
# filter (:10000, admin :9901), all on 127.0.0.1. Ctrl-C (or SIGTERM) stops everything it started.
# When Prometheus is installed (Debian: apt-get install prometheus), it runs beside them on
# :9099 (PROMETHEUS_PORT), scraping the front Envoy every second with the alert rules of
# deploy/prometheus/alerts.yaml loaded, so the queries of deploy/grafana/traffic-split.json can
# be tried in its UI.
# Logs: run/envoy.log (front), run/access.log (its access log), run/backends.log, run/prometheus.log.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY=${ENVOY:-.venv/bin/envoy}
PROMETHEUS=${PROMETHEUS:-$(command -v prometheus || true)}
PROMETHEUS_PORT=${PROMETHEUS_PORT:-9099}
mkdir -p run
: >run/access.log
: >run/shadow-access.log
pids=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped."
}
trap cleanup EXIT INT TERM

ports=(10000 9901 8001 8002 8003 9902)
[ -n "$PROMETHEUS" ] && ports+=("$PROMETHEUS_PORT")
for port in "${ports[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port on 127.0.0.1 is already in use (another demo running?)" >&2
    exit 1
  fi
done

"$ENVOY" -c envoy/demo-backends.yaml --disable-hot-restart -l warning \
  --file-flush-interval-msec 250 >run/backends.log 2>&1 &
pids+=($!)
"$ENVOY" -c envoy/demo.yaml --disable-hot-restart -l info --component-log-level wasm:info \
  --file-flush-interval-msec 250 >run/envoy.log 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  if curl -sf http://127.0.0.1:9901/ready >/dev/null && curl -sf http://127.0.0.1:9902/ready >/dev/null; then
    break
  fi
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "Envoy exited; see run/envoy.log and run/backends.log" >&2; tail -20 run/envoy.log >&2; exit 1; }
  done
  sleep 0.1
done
curl -sf http://127.0.0.1:9901/ready >/dev/null || { echo "Envoy did not become ready" >&2; exit 1; }

if [ -n "$PROMETHEUS" ]; then
  # A fresh database each run: the demo's counters start from zero too.
  rm -rf run/prometheus
  mkdir -p run/prometheus
  cat >run/prometheus/prometheus.yml <<YAML
global: { scrape_interval: 1s, evaluation_interval: 1s }
rule_files: [ "$PWD/deploy/prometheus/alerts.yaml" ]
scrape_configs:
- job_name: envoy
  metrics_path: /stats/prometheus
  static_configs: [ { targets: [ "127.0.0.1:9901" ] } ]
YAML
  "$PROMETHEUS" --config.file=run/prometheus/prometheus.yml --storage.tsdb.path=run/prometheus/data \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" --log.level=warn >run/prometheus.log 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" >/dev/null && break
    kill -0 "${pids[-1]}" 2>/dev/null || { echo "Prometheus exited; see run/prometheus.log" >&2; tail -5 run/prometheus.log >&2; exit 1; }
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" >/dev/null || { echo "Prometheus did not become ready" >&2; exit 1; }
  prometheus_line="Prometheus: http://127.0.0.1:$PROMETHEUS_PORT (scrapes the front Envoy every 1 s; alert rules of deploy/prometheus/alerts.yaml)"
else
  prometheus_line="Prometheus is not installed (apt-get install prometheus): make run starts it beside the demo when it is."
fi

cat <<TOUR_HEAD
traffic-split demo is running: Envoy on http://127.0.0.1:10000 (admin http://127.0.0.1:9901)
backends: stable on :8001, canary on :8002, shadow on :8003. Logs in run/. Ctrl-C stops everything.
$prometheus_line
TOUR_HEAD
cat <<'TOUR'

A sticky user (20% of users are on the canary; the same user always lands on the same one):
  curl -si -H 'x-user-id: alice' http://127.0.0.1:10000/ | grep -iE '^x-(backend|split)|v[12]'
  for u in alice bob carol dave erin frank heidi mallory; do curl -s -H "x-user-id: $u" http://127.0.0.1:10000/; done

A forced employee (the "employees" rule sends them to the canary, whatever their user id):
  curl -si -H 'x-employee: true' http://127.0.0.1:10000/ | grep -iE '^x-(backend|split)|v[12]'

A checkout visitor gets a user-id cookie (10% canary), and keeps their version with it:
  curl -si http://127.0.0.1:10000/checkout | grep -iE '^(set-cookie|x-split)'

Checkout traffic is also copied to the shadow (v3); the client never sees its answer. The
shadow answers 503 on /checkout/pay, and the comparison with the primary's 200 counts it:
  curl -s -X POST -d 'card=4242' http://127.0.0.1:10000/checkout/pay
  tail run/shadow-access.log
  curl -s http://127.0.0.1:9901/stats/prometheus | grep '^traffic_split_shadow_[a-z_]*{'

The canary fails on /unstable: its breaker opens after 10 failures and sends the canary's
users to stable for 15 s, then probes the canary again:
  for i in $(seq 1 60); do curl -s -o /dev/null -w '%{http_code} ' -H "x-user-id: user$i" http://127.0.0.1:10000/unstable; done; echo
  grep breaker run/envoy.log
  curl -s http://127.0.0.1:9901/stats/prometheus | grep '^traffic_split_breaker'

Prometheus (when installed) sees the open breaker; the dashboard's and alerts' queries work the
same way (deploy/grafana/traffic-split.json, deploy/prometheus/alerts.yaml; open the URL above):
  promtool query instant http://127.0.0.1:9099 'max by (rule, destination) (traffic_split_breaker_state) > 0'

A sticky 25% of /chaos users (the same ones every time) get a 503 from Envoy's fault filter;
the canary's breaker stays closed (injected failures are no evidence), and a client's own
x-envoy-fault-* headers are removed:
  for r in 1 2; do for u in $(seq 1 20); do curl -s -o /dev/null -w '%{http_code} ' -H "x-user-id: user$u" http://127.0.0.1:10000/chaos; done; echo; done
  curl -si -H 'x-user-id: user6' http://127.0.0.1:10000/chaos | grep -iE '^x-split'
  curl -s http://127.0.0.1:9901/stats/prometheus | grep -E '^traffic_split_(fault|breaker_state\{rule="chaos")'

A client cannot pick the version itself (the forged header is overwritten):
  curl -s -H 'x-user-id: alice' -H 'x-split-cluster: canary' http://127.0.0.1:10000/

The metrics (flushed every 0.5 s), with rule and destination labels:
  curl -s http://127.0.0.1:9901/stats/prometheus | grep ^traffic_split

The access log shows each decision (cluster, variant): tail -f run/access.log
The filter's own log lines: grep 'wasm log' run/envoy.log
TOUR
wait -n "${pids[@]}" || true
echo "an Envoy (or Prometheus) exited; see run/envoy.log, run/backends.log and run/prometheus.log" >&2
