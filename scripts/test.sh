#!/usr/bin/env bash
# Runs Panda's whole test suite on a fresh machine: system packages, models and test
# recordings (scripts/setup.sh, debug profile), then `cargo test`. Device tests require
# PulseAudio (installed by setup) and fail rather than skip when REQUIRE_PULSEAUDIO=1.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_PROFILE=debug scripts/setup.sh
export GGML_NATIVE=OFF
export REQUIRE_PULSEAUDIO="${REQUIRE_PULSEAUDIO:-1}"
cargo test --locked -- --test-threads 2 "$@"
