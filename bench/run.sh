#!/usr/bin/env bash
# `make bench`: bench/bench.py does the work (scenarios, configs, processes, report); its
# docstring is the manual (bench/run.sh --help).
exec python3 "$(dirname "${BASH_SOURCE[0]}")/bench.py" "$@"
