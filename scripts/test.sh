#!/usr/bin/env bash
# Runs Panda's whole test suite on a fresh machine: system packages, models and test
# recordings (scripts/setup.sh, debug profile), then `cargo test`. Device tests require
# PulseAudio (installed by setup) and fail rather than skip when REQUIRE_PULSEAUDIO=1;
# the status page test needs Debian's Chromium and ChromeDriver (installed here, test
# only) and fails rather than skips when REQUIRE_CHROMIUM=1.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_PROFILE=debug scripts/setup.sh
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver >/dev/null
fi
export GGML_NATIVE=OFF
export REQUIRE_PULSEAUDIO="${REQUIRE_PULSEAUDIO:-1}"
export REQUIRE_CHROMIUM="${REQUIRE_CHROMIUM:-1}"
# Every test binary runs even when one fails, so a failure report is complete.
cargo test --locked --no-fail-fast -- --test-threads 2 "$@"
