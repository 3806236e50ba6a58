# syntax=docker/dockerfile:1
# The filter built from source, for machines with Docker and nothing else: `docker compose up`
# builds the `envoy` target (docker-compose.yml). Stages:
#   build  the optimized module exactly as `make wasm` makes it: the official Rust image,
#          target wasm32-wasip1, unused callbacks stripped, binaryen's wasm-opt
#   envoy  Envoy, pinned to the version the end-to-end tests run (Makefile ENVOY_VERSION), with
#          the module at /etc/envoy/traffic_split.wasm
# deploy/oci/Dockerfile has the same build stage; `make validate` checks that both keep the
# Makefile's strip list and wasm-opt flags, and this Envoy version.
ARG RUST_IMAGE=rust:1.95.0-slim-trixie
ARG ENVOY_IMAGE=envoyproxy/envoy:v1.40.0

FROM ${RUST_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends binaryen python3 \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add wasm32-wasip1
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY benches ./benches
COPY scripts/strip-exports.py ./scripts/
RUN cargo build --release --locked --target wasm32-wasip1 \
 && python3 scripts/strip-exports.py target/wasm32-wasip1/release/traffic_split.wasm /tmp/stripped.wasm \
      proxy_on_log \
 && wasm-opt -Oz --converge --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
      --enable-mutable-globals --enable-reference-types --enable-multivalue \
      /tmp/stripped.wasm -o /traffic_split.wasm

FROM ${ENVOY_IMAGE} AS envoy
COPY --from=build /traffic_split.wasm /etc/envoy/traffic_split.wasm
