#!/usr/bin/env bash
# Panda's TTS against kokoro-onnx (PyPI) with the SAME ONNX file (kokoro-v1.0.int8.onnx)
# and the SAME voice pack, on the same 10 sentences, in one run. Prints both engines'
# figures and the ratios. Compass goal: Panda's first audio within a third of the peer's
# whole-utterance time (kokoro-onnx's `create` returns audio only when it is all made).
# Needs `panda models install` (scripts/setup.sh) first.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS="${PANDA_MODELS__DIR:-models}"
CACHE="${PANDA_CACHE_DIR:-$HOME/.cache/panda}"
VOICE="${VOICE:-af_heart}"
VENV="$CACHE/peer-venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "kokoro-onnx==0.6.1" 2>/dev/null || "$VENV/bin/pip" install -q kokoro-onnx
BIN=target/release/panda; [ -x "$BIN" ] || BIN=target/debug/panda
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
# The built-in sentences, one per line, so both engines say exactly the same text.
"$BIN" bench tts --json --voice "$VOICE" > "$WORK/panda.jsonl"
"$BIN" bench tts --voice "$VOICE" 2>/dev/null | tail -n +1
"$VENV/bin/python" - "$MODELS/kokoro" "$VOICE" "$WORK/panda.jsonl" <<'PY'
import json, os, statistics, sys, time
import numpy as np
from kokoro_onnx import Kokoro
kdir, voice, panda_file = sys.argv[1], sys.argv[2], sys.argv[3]
SENTENCES = [
    "It's 3:45 in the afternoon.",
    "Sure, I've set a timer for ten minutes, and I'll let you know when it goes off.",
    "The weather today is sunny with a high of 22 degrees and a light breeze from the west.",
    "Here are the top headlines: markets rose 1.5% this morning, and a new bridge opened downtown.",
    "Paris is the capital of France.",
    "I couldn't reach the news service right now, so please try again in a minute.",
    "Dr. Smith's appointment is on Tuesday, March 4th, at 10:30 a.m.",
    "A kilogram of apples costs about $3.20 at the market on Main Street.",
    "Photosynthesis is the process plants use to turn sunlight, water and carbon dioxide into sugar and oxygen.",
    "Okay, stopping now.",
]
# kokoro-onnx reads voices from one .npz; build it from the same raw f32 [510,1,256] pack.
pack = np.fromfile(os.path.join(kdir, "voices", voice + ".bin"), dtype="<f4").reshape(510, 1, 256)
npz = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"panda-peer-voices-{os.getpid()}.npz")
np.savez(npz, **{voice: pack})
t = time.time()
k = Kokoro(os.path.join(kdir, "kokoro-v1.0.int8.onnx"), npz)
load_ms = (time.time() - t) * 1e3
k.create("Hello.", voice=voice, speed=1.0, lang="en-us")  # warm-up, as Panda does
whole, audio_ms = [], []
for s in SENTENCES:
    t = time.time()
    samples, sr = k.create(s, voice=voice, speed=1.0, lang="en-us")
    whole.append((time.time() - t) * 1e3)
    audio_ms.append(len(samples) * 1e3 / sr)
os.unlink(npz)
def p(v, q):
    v = sorted(v); return v[min(len(v) - 1, max(0, int(round(q / 100 * len(v) + 0.5)) - 1))]
rtf = [w / a for w, a in zip(whole, audio_ms)]
print(f"\n== kokoro-onnx (same ONNX file, voice {voice}) | load {load_ms:.0f} ms")
print(f"whole utterance p50 {p(whole,50):.0f} ms p95 {p(whole,95):.0f} ms | rtf p50 {p(rtf,50):.3f} p95 {p(rtf,95):.3f}")
for line in open(panda_file):
    r = json.loads(line)
    ttfa, tot = r["first_audio_ms"], r["total_ms"]
    print(f"Panda [{r['mode']}]: first audio p50 {p(ttfa,50):.0f} ms, whole p50 {p(tot,50):.0f} ms"
          f" | first audio / peer whole (p50): {p(ttfa,50)/p(whole,50):.2f}"
          f" | per sentence median ratio {statistics.median(a/b for a,b in zip(ttfa, whole)):.2f}"
          f" | whole vs whole: {p(tot,50)/p(whole,50):.2f}")
print("goal: first audio / peer whole <= 0.33")
PY
