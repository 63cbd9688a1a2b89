#!/usr/bin/env bash
# Runs Panda's whole test suite on a fresh machine: system packages, models and test
# recordings (scripts/setup.sh, debug profile), then `cargo test`. Device tests require
# PulseAudio (installed by setup) and fail rather than skip when PANDA_REQUIRE_PULSE=1.
set -euo pipefail
cd "$(dirname "$0")/.."
PANDA_PROFILE=debug scripts/setup.sh
export GGML_NATIVE=OFF
export PANDA_REQUIRE_PULSE="${PANDA_REQUIRE_PULSE:-1}"
cargo test --locked -- --test-threads 2 "$@"
