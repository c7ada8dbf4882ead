#!/usr/bin/env bash
# Builds the libFuzzer targets of the parsers that read untrusted input (tokenizer text,
# tokenizer.json, PyTorch checkpoint pickles, chat templates) with clang (ASan + UBSan) and runs each for
# FUZZ_SECONDS (default 20). Exits non-zero on any crash or broken invariant.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT_DIR="${FUZZ_DIR:-build/fuzz}"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-20}"
FIXTURES="${MF_FIXTURES_DIR:-$ROOT/tests/fixtures}"
mkdir -p "$OUT_DIR"

SOURCES=(engine/base/file.cc engine/text/utf8.cc engine/text/pretokenizer.cc engine/text/tokenizer.cc engine/text/tokenizer_loader.cc
         engine/text/detokenizer.cc)
FLAGS=(-std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I"$ROOT")
LIBS=$(pkg-config --libs absl_statusor absl_strings absl_str_format)
command -v clang++ > /dev/null || { echo "clang++ not found: run scripts/setup.sh"; exit 1; }
for target in tokenizer_encode_fuzz tokenizer_loader_fuzz; do
  clang++ "${FLAGS[@]}" "tests/fuzz/$target.cc" "${SOURCES[@]}" $LIBS -o "$OUT_DIR/$target"
done
clang++ "${FLAGS[@]}" tests/fuzz/jinja_fuzz.cc engine/text/utf8.cc engine/text/jinja_value.cc engine/text/jinja_lexer.cc \
  engine/text/jinja_expression_parser.cc engine/text/jinja_parser.cc engine/text/jinja_python.cc engine/text/jinja_builtins.cc engine/text/jinja_render.cc $LIBS -o "$OUT_DIR/jinja_fuzz"
clang++ "${FLAGS[@]}" tests/fuzz/torch_pickle_fuzz.cc engine/checkpoint/torch_pickle.cc engine/checkpoint/dtype.cc \
  $LIBS -o "$OUT_DIR/torch_pickle_fuzz"

# Seeds: the tokenizer fixture's texts, and a small valid tokenizer.json.
mkdir -p "$OUT_DIR/encode_corpus" "$OUT_DIR/loader_corpus" "$OUT_DIR/pickle_corpus" "$OUT_DIR/jinja_corpus"
cp tests/tools/data/chat_templates/*.jinja "$OUT_DIR/jinja_corpus/"
# Pickles PyTorch wrote: a state dict with bf16, int8 and f32 tensors, views and a tie.
/usr/bin/python3 - "$OUT_DIR/pickle_corpus" <<'PY'
import collections, io, sys, zipfile
import torch
base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
state = collections.OrderedDict(w=base.to(torch.bfloat16), mask=torch.ones(2, 2, dtype=torch.int8), t=base.t(),
                                tied=base, scalar=torch.tensor(1.5))
buffer = io.BytesIO()
torch.save(state, buffer)
with zipfile.ZipFile(buffer) as saved:
    name = next(n for n in saved.namelist() if n.endswith("data.pkl"))
    open(f"{sys.argv[1]}/state_dict.pkl", "wb").write(saved.read(name))
PY
python3 - "$FIXTURES/tokenizer/gpt2/cases.json" "$OUT_DIR" <<'PY'
import json, sys
cases = json.load(open(sys.argv[1]))["cases"]
for i, case in enumerate(cases):
    open(f"{sys.argv[2]}/encode_corpus/case{i}", "w").write(case["text"])
printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
table, extra = {}, 256
for b in range(256):
    table[b] = chr(b) if b in printable else chr(extra)
    extra += b not in printable
vocab = {table[b]: b for b in range(256)}
vocab[table[ord("a")] + table[ord("b")]] = 256
doc = {"model": {"type": "BPE", "vocab": vocab, "merges": ["a b"]},
       "added_tokens": [{"id": 257, "content": "<s>", "special": True}],
       "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False}}
open(f"{sys.argv[2]}/loader_corpus/minimal.json", "w").write(json.dumps(doc))
PY

export MF_FUZZ_TOKENIZER_DIR="$FIXTURES/tokenizer/gpt2"
export ASAN_OPTIONS=detect_leaks=1
"$OUT_DIR/tokenizer_encode_fuzz" -max_total_time="$SECONDS_PER_TARGET" -max_len=4096 -print_final_stats=1 \
  "$OUT_DIR/encode_corpus" 2>&1 | tail -n 4
"$OUT_DIR/tokenizer_loader_fuzz" -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 -rss_limit_mb=4096 \
  -print_final_stats=1 "$OUT_DIR/loader_corpus" 2>&1 | tail -n 4
"$OUT_DIR/torch_pickle_fuzz" -max_total_time="$SECONDS_PER_TARGET" -max_len=8192 -rss_limit_mb=2048 \
  -print_final_stats=1 "$OUT_DIR/pickle_corpus" 2>&1 | tail -n 4
"$OUT_DIR/jinja_fuzz" -max_total_time="$SECONDS_PER_TARGET" -max_len=4096 -rss_limit_mb=2048 -timeout=10 \
  -print_final_stats=1 "$OUT_DIR/jinja_corpus" 2>&1 | tail -n 4
echo "fuzzing finished without findings"
