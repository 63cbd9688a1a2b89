#!/usr/bin/env bash
# Panda's Wyoming servers against wyoming-faster-whisper, measured by the PyPI
# `wyoming-bench` in one run: STT on the LibriVox excerpts (recorded human speech with
# transcripts, from `panda models install --test-data`), both servers on the same CT2
# tiny.en weights (Panda converts them to ggml); then Panda's TTS (Kokoro), plain and
# streaming. Prints wyoming-bench's tables: accuracy (WER/CER) beside speed (TTFT, total,
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
echo "== STT: LibriVox excerpts, $ROUNDS rounds; Panda ($BIN) vs wyoming-faster-whisper (int8, beam 1)"
"$VENV/bin/wyoming-bench" stt --corpus "$MODELS/testdata/pocketsphinx/librivox" \
  --mode non_streaming --rounds "$ROUNDS" --warmup 1 --config '{"language":"en"}' \
  "127.0.0.1:$P1" "127.0.0.1:$P2" | sed -n '/^Summary/,$p'
printf '%s\n' "What time is it?" \
  "The capital of France is Paris, a city on the river Seine." \
  "Set a timer for ten minutes, and I will tell you when it is done." >"$DATA/texts.txt"
echo "== TTS: Panda (Kokoro af_heart), plain and streaming, $ROUNDS rounds"
"$VENV/bin/wyoming-bench" tts --mode both --rounds "$ROUNDS" --warmup 1 \
  --texts-file "$DATA/texts.txt" "127.0.0.1:$P1" | sed -n '/^Summary/,$p'
