#!/usr/bin/env bash
# `moduleformer verify` passes on every shipped reference fixture (batched, and
# chunked prefill), and fails loudly on a cases file whose expectations are wrong.
set -euo pipefail
tool="$1"
fixtures="${MF_FIXTURES_DIR:-$(dirname "$0")/../fixtures}/reference"
count=0
for dir in "$fixtures"/*/; do
  [ -f "$dir/cases.json" ] || continue
  "$tool" verify --model "$dir" --cases "$dir/cases.json"
  "$tool" verify --model "$dir" --cases "$dir/cases.json" --prefill-chunk 7 --batched=false
  count=$((count + 1))
done
[ "$count" -gt 0 ] || { echo "no fixtures found under $fixtures"; exit 1; }

# A wrong expectation must fail: change the first greedy token of the first case.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
first=$(ls -d "$fixtures"/*/ | head -n 1)
python3 - "$first/cases.json" "$scratch/cases.json" <<'PY'
import json, sys
cases = json.load(open(sys.argv[1]))
greedy = cases["cases"][0]["greedy"]
greedy[0] = (greedy[0] + 1) % 7
json.dump(cases, open(sys.argv[2], "w"))
PY
if "$tool" verify --model "$first" --cases "$scratch/cases.json" > "$scratch/out.txt"; then
  echo "verify accepted a wrong greedy continuation"; exit 1
fi
grep -q "greedy MISMATCH" "$scratch/out.txt" || { cat "$scratch/out.txt"; exit 1; }
echo "verified $count fixtures; a wrong expectation is rejected"
