#!/usr/bin/env bash
# Panda's Wyoming servers against wyoming-faster-whisper, measured by the PyPI
# `wyoming-bench` in one run, one scorer for both: STT on the recorded human speech of
# `panda bench stt` (the 19 clips from `panda models install --test-data`: pocketsphinx's
# goforward, LibriVox excerpts, "cards", the ALSA channel names; their transcripts), both
# servers on the same CT2 tiny.en weights (Panda converts them to ggml, and by default
# quantises them to q8_0); then Panda's TTS (Kokoro), plain and streaming. Prints wyoming-bench's tables: accuracy (WER/CER) beside speed (TTFT, total,
# RTF). No TTS peer runs here: wyoming-piper needs a Piper voice and the only packaged
# one is reserved for evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS="${PANDA_MODELS__DIR:-models}"
VENV="${HOME}/.cache/panda/wyoming-venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "wyoming==1.10.2" "wyoming-faster-whisper==3.8.1" "wyoming-bench==2026.10.0"
CT2=$(scripts/ct2-tiny-en.sh)
BIN=target/release/panda; [ -x "$BIN" ] || BIN=target/debug/panda
ROUNDS="${ROUNDS:-3}"
P1=$((20000 + RANDOM % 10000)); P2=$((P1 + 1))
DATA=$(mktemp -d)
"$BIN" serve --wyoming "tcp://127.0.0.1:$P1" --services asr,tts 2>"$DATA/panda.log" &
PANDA=$!
"$VENV/bin/python" -m wyoming_faster_whisper --uri "tcp://127.0.0.1:$P2" --model "$CT2" \
  --data-dir "$DATA" --local-files-only --language en --beam-size 1 --compute-type int8 \
  --device cpu 2>"$DATA/fw.log" &
FW=$!
trap 'kill $PANDA $FW 2>/dev/null; rm -rf "$DATA"' EXIT
for p in "$P1" "$P2"; do
  for _ in $(seq 240); do "$VENV/bin/wyoming-bench" info "127.0.0.1:$p" >/dev/null 2>&1 && break; sleep 0.5; done
done
# The corpus as wyoming-bench reads it: NAME.wav beside NAME.txt.
"$VENV/bin/python" - "$MODELS/testdata" "$DATA/corpus" <<'PY'
import os, shutil, sys, wave
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out)
ps = os.path.join(src, "pocketsphinx")
def put(name, wav, text):
    shutil.copy(wav, os.path.join(out, name + ".wav"))
    open(os.path.join(out, name + ".txt"), "w").write(text.strip() + "\n")
raw = os.path.join(ps, "goforward.raw")
if os.path.exists(raw):
    with wave.open(os.path.join(out, "goforward.wav"), "wb") as w:
        w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000)
        w.writeframes(open(raw, "rb").read())
    open(os.path.join(out, "goforward.txt"), "w").write("go forward ten meters\n")
lib = os.path.join(ps, "librivox")
for f in sorted(os.listdir(lib)) if os.path.isdir(lib) else []:
    if f.endswith(".wav") and os.path.exists(os.path.join(lib, f[:-4] + ".txt")):
        put("librivox-" + f[:-4], os.path.join(lib, f), open(os.path.join(lib, f[:-4] + ".txt")).read())
cards = os.path.join(ps, "cards", "cards.transcription")
if os.path.exists(cards):
    for line in open(cards):
        if "(" not in line:
            continue
        text, ident = line.rsplit("(", 1)
        ident = ident.strip().rstrip(")").strip()
        wav = os.path.join(ps, "cards", ident + ".wav")
        if os.path.exists(wav):
            put("cards-" + ident, wav, text.replace("<s>", "").replace("</s>", ""))
alsa = os.path.join(src, "alsa")
for f in sorted(os.listdir(alsa)) if os.path.isdir(alsa) else []:
    if f.endswith(".wav") and f != "Noise.wav":
        put("alsa-" + f[:-4], os.path.join(alsa, f), f[:-4].replace("_", " "))
print(f"corpus: {len(os.listdir(out)) // 2} clips", file=sys.stderr)
PY
echo "== STT: $ROUNDS rounds on the recorded clips; Panda ($BIN) vs wyoming-faster-whisper (int8, beam 1)"
"$VENV/bin/wyoming-bench" stt --corpus "$DATA/corpus" \
  --mode non_streaming --rounds "$ROUNDS" --warmup 1 --config '{"language":"en"}' \
  "127.0.0.1:$P1" "127.0.0.1:$P2" | sed -n '/^Summary/,$p'
printf '%s\n' "What time is it?" \
  "The capital of France is Paris, a city on the river Seine." \
  "Set a timer for ten minutes, and I will tell you when it is done." >"$DATA/texts.txt"
echo "== TTS: Panda (Kokoro af_heart), plain and streaming, $ROUNDS rounds"
"$VENV/bin/wyoming-bench" tts --mode both --rounds "$ROUNDS" --warmup 1 \
  --texts-file "$DATA/texts.txt" "127.0.0.1:$P1" | sed -n '/^Summary/,$p'
