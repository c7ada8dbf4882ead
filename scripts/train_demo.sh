#!/usr/bin/env bash
# Rebuilds the built-in demo model (models/demo) from scratch:
#   1. corpus -> BPE tokenizer -> token ids    (CPU; Debian: bible-kjv fortunes python3-regex)
#   2. training                                 (PyTorch; a GPU if there is one, ~8 minutes on an H100)
#   3. expected outputs for `moduleformer verify` (PyTorch, float64, CPU)
# Steps run separately with STEP=prepare|train|cases; DATA and OUT choose the directories.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-build/demo-data}"
OUT="${OUT:-models/demo}"
MINUTES="${MINUTES:-8}"
PYTHON="${PYTHON:-python3}"
STEP="${STEP:-all}"

if [ "$STEP" = all ] || [ "$STEP" = prepare ]; then
  "$PYTHON" tools/train/prepare.py --out "$DATA"
fi
if [ "$STEP" = all ] || [ "$STEP" = train ]; then
  "$PYTHON" tools/train/train.py --data "$DATA" --out "$OUT" --minutes "$MINUTES" --max-steps 100000
fi
if [ "$STEP" = all ] || [ "$STEP" = cases ]; then
  "$PYTHON" tools/train/make_cases.py --model "$OUT" --out "$OUT/cases.json"
  "$PYTHON" tools/train/report.py --model "$OUT"
fi
