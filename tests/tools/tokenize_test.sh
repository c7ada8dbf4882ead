#!/usr/bin/env bash
# `moduleformer tokenize` encodes stdin to the reference ids and decodes them back.
set -euo pipefail
tool="$1"
tokenizer="$2"
ids=$(printf "I'm sure they're here" | "$tool" tokenize --tokenizer "$tokenizer")
[ "$ids" = "[40, 1101, 1654, 484, 821, 994]" ] || { echo "unexpected ids: $ids"; exit 1; }
text=$(echo "$ids" | "$tool" tokenize --tokenizer "$tokenizer" --decode)
[ "$text" = "I'm sure they're here" ] || { echo "unexpected text: $text"; exit 1; }
if echo "[1, 99999]" | "$tool" tokenize --tokenizer "$tokenizer" --decode 2> /tmp/mf-tokenize-err.$$; then
  echo "an out-of-range id was accepted"; exit 1
fi
grep -q "99999 is not in the vocabulary" /tmp/mf-tokenize-err.$$ && rm -f /tmp/mf-tokenize-err.$$
echo "tokenize round trip ok"
