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
# Panda's built-in sentences, one per line, so both engines say exactly the same text.
"$BIN" bench tts --list-sentences > "$WORK/sentences.txt"
"$BIN" bench tts --json --voice "$VOICE" --sentences "$WORK/sentences.txt" > "$WORK/panda.jsonl"
"$VENV/bin/python" - "$MODELS/kokoro" "$VOICE" "$WORK/panda.jsonl" "$WORK/sentences.txt" <<'PY'
import json, os, statistics, sys, time
import numpy as np
from kokoro_onnx import Kokoro
kdir, voice, panda_file, sentences_file = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
SENTENCES = [l for l in open(sentences_file).read().splitlines() if l.strip()]
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
