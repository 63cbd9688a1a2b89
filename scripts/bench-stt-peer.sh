#!/usr/bin/env bash
# Panda's STT against faster-whisper (PyPI) on the SAME CTranslate2 tiny.en model file and
# the same recorded clips, in one run; prints per-engine p50/p95 and the ratios.
# Needs `panda models install --test-data` (scripts/setup.sh) first.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS="${PANDA_MODELS__DIR:-models}"
CACHE="${PANDA_CACHE_DIR:-$HOME/.cache/panda}"
VENV="$CACHE/peer-venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "faster-whisper==1.2.1" 2>/dev/null || "$VENV/bin/pip" install -q faster-whisper
CT2=$(scripts/ct2-tiny-en.sh)
BIN=target/release/panda; [ -x "$BIN" ] || BIN=target/debug/panda
PANDA_OUT=$("$BIN" bench stt 2>/dev/null)
echo "$PANDA_OUT"
PANDA_P50=$(echo "$PANDA_OUT" | grep '^stt_ms' | head -1 | awk '{print $3}')
"$VENV/bin/python" - "$CT2" "$MODELS" "$PANDA_P50" <<'PY'
import sys, glob, os, time, statistics, wave, array
from faster_whisper import WhisperModel
ct2, models, panda_p50 = sys.argv[1], sys.argv[2], float(sys.argv[3])
clips = [models + "/testdata/pocketsphinx/goforward.raw"]
clips += sorted(glob.glob(models + "/testdata/pocketsphinx/librivox/*.wav"))
clips += sorted(glob.glob(models + "/testdata/pocketsphinx/cards/*.wav"))
clips += sorted(p for p in glob.glob(models + "/testdata/alsa/*.wav") if not p.endswith("Noise.wav"))
import numpy as np
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
audio = [load(c) for c in clips]
for ct in ["int8", "float32"]:
    t = time.time(); m = WhisperModel(ct2, device="cpu", compute_type=ct, cpu_threads=os.cpu_count()); load_ms = (time.time() - t) * 1e3
    list(m.transcribe(audio[0], beam_size=1, language="en")[0])
    times = []
    for x in audio:
        t = time.time(); segs, _ = m.transcribe(x, beam_size=1, language="en", vad_filter=False); " ".join(s.text for s in segs); times.append((time.time() - t) * 1e3)
    times.sort(); p50 = statistics.median(times); p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
    print(f"faster-whisper {ct:8s} load {load_ms:.0f} ms | stt_ms p50 {p50:.0f} p95 {p95:.0f} | speed-up Panda vs peer (p50): {p50 / panda_p50:.2f}x")
PY
