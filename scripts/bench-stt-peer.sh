#!/usr/bin/env bash
# Panda's STT against faster-whisper (PyPI) on the same recorded clips, in one run, scored
# by the same code: faster-whisper (int8 and float32, beam 1, on the CTranslate2 tiny.en
# the installer converts from the same OpenAI weights) transcribes the clips
# `panda bench stt --list-clips` names; `panda bench stt --peer` then prints Panda's rows
# (every setting) and the peer's, WER beside p50/p95, and the ratio of Panda's default to
# each peer with both WERs (accuracy first: speed counts at matched accuracy).
# Needs `panda models install --test-data` (scripts/setup.sh) first.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${PANDA_CACHE_DIR:-$HOME/.cache/panda}"
VENV="$CACHE/peer-venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "faster-whisper==1.2.1"
CT2=$(scripts/ct2-tiny-en.sh)
BIN=target/release/panda; [ -x "$BIN" ] || BIN=target/debug/panda
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
"$BIN" bench stt --list-clips > "$WORK/clips.jsonl"
"$VENV/bin/python" - "$CT2" "$WORK/clips.jsonl" > "$WORK/peer.jsonl" <<'PY'
import json, os, sys, time, wave
import numpy as np
from faster_whisper import WhisperModel
ct2, listing = sys.argv[1], sys.argv[2]
clips = [json.loads(l) for l in open(listing) if l.strip()]
def load(p):
    if p.endswith(".raw"):
        return np.frombuffer(open(p, "rb").read(), dtype="<i2").astype(np.float32) / 32768
    with wave.open(p) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
        ch, sr = w.getnchannels(), w.getframerate()
    x = x.reshape(-1, ch).mean(axis=1)
    if sr != 16000:
        x = np.interp(np.arange(0, len(x), sr / 16000), np.arange(len(x)), x).astype(np.float32)
    return x
audio = [load(c["path"]) for c in clips]
for ct in ["int8", "float32"]:
    m = WhisperModel(ct2, device="cpu", compute_type=ct, cpu_threads=os.cpu_count())
    list(m.transcribe(audio[0], beam_size=1, language="en")[0])  # warm-up
    for c, x in zip(clips, audio):
        t = time.time()
        segs, _ = m.transcribe(x, beam_size=1, language="en", vad_filter=False)
        text = " ".join(s.text.strip() for s in segs)
        ms = (time.time() - t) * 1e3
        print(json.dumps({"engine": f"faster-whisper {ct}", "path": c["path"], "text": text, "ms": ms}))
PY
"$BIN" bench stt --peer "$WORK/peer.jsonl" 2>/dev/null
