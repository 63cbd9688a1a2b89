#!/usr/bin/env bash
# Accented English through every installed Whisper model: espeak-ng's voices of other
# languages (French, German, Spanish, Hindi, Polish, Russian, Swedish, Dutch) read English
# questions with their own language's sounds, a harsh stand-in for people who speak
# English as a second language. `panda bench stt --clips` then prints the default model
# (questions) beside the others, word errors beside time (accuracy first).
# Usage: scripts/bench-stt-accents.sh [VOICE ...]   (needs espeak-ng and the models)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/panda; [ -x "$BIN" ] || BIN=target/debug/panda
VOICES=("$@"); [ ${#VOICES[@]} -gt 0 ] || VOICES=(fr de es hi pl ru sv nl)
QUESTIONS=(
  "What is the capital of Australia?"
  "Set a timer for ten minutes."
  "How long does it take to boil an egg?"
  "Remember that my bike is in the shed."
)
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
for v in "${VOICES[@]}"; do
  for i in "${!QUESTIONS[@]}"; do
    espeak-ng -v "$v" -s 150 -w "$WORK/$v-$i.wav" "${QUESTIONS[$i]}"
    printf '%s\n' "${QUESTIONS[$i]}" > "$WORK/$v-$i.txt"
  done
done
"$BIN" bench stt --clips "$WORK"
