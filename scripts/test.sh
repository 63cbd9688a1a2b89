#!/usr/bin/env bash
# Runs Panda's whole test suite on a fresh machine: system packages (scripts/setup.sh
# --packages, plus Debian's Chromium and ChromeDriver for the status-page test), one
# build of the test profile, the models and test recordings, then the tests.
#
# One build: `cargo test --no-run` builds the library, the `panda` binary the tests run
# and the one integration-test binary (tests/it) together; the model installer then runs
# from that same binary. (Building the binary separately with `cargo build` compiled
# whisper.cpp, ONNX Runtime's bindings and everything that depends on a dev-dependency's
# features a second time.)
#
# Device tests (tests/it/real_devices.rs) need PulseAudio and fail rather than skip when
# REQUIRE_PULSEAUDIO=1; the status-page test needs Chromium and fails rather than skips
# when REQUIRE_CHROMIUM=1. They run in a second pass, one at a time: real-time playback
# and recording under another test's load underruns.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
phase() { echo "=== test.sh: $1 ($(( $(date +%s) - start )) s since start)"; }

phase "system packages"
scripts/setup.sh --packages
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver >/dev/null
fi
export GGML_NATIVE=OFF
export REQUIRE_PULSEAUDIO="${REQUIRE_PULSEAUDIO:-1}"
export REQUIRE_CHROMIUM="${REQUIRE_CHROMIUM:-1}"

phase "build (test profile, once)"
cargo test --locked --no-run

phase "models and test recordings"
target/debug/panda models install --test-data

# The Wyoming tests talk to Panda through the PyPI client Home Assistant uses, and use
# wyoming-faster-whisper (on the CT2 tiny.en the installer already fetched) as the
# remote speech-to-text backend.
phase "wyoming client and wyoming-faster-whisper (PyPI)"
WYOMING_VENV="${HOME}/.cache/panda/wyoming-venv"
[ -x "$WYOMING_VENV/bin/python" ] || python3 -m venv "$WYOMING_VENV"
"$WYOMING_VENV/bin/pip" install -q "wyoming==1.10.2" "wyoming-faster-whisper==3.8.1"
export WYOMING_PYTHON="$WYOMING_VENV/bin/python"
export REQUIRE_WYOMING="${REQUIRE_WYOMING:-1}"
CT2_TINY_EN_DIR=$(scripts/ct2-tiny-en.sh)
export CT2_TINY_EN_DIR

# Every test runs even when one fails, so a failure report is complete.
phase "tests"
status=0
cargo test --locked --no-fail-fast -- --test-threads 2 --skip real_devices:: "$@" || status=$?
phase "device tests (one at a time)"
cargo test --locked --test it -- --test-threads 1 real_devices:: "$@" || status=$?
phase "done (exit $status)"
exit $status
