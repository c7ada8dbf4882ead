#!/usr/bin/env python3
"""Task-specific pruning of the demo model, end to end, with the server's own tools:

1. texts from the demo model's validation split (never trained on): half of its Bible
   chapters for the statistics, the other half as held-out text of the same kind, and its
   fortunes as text of another kind;
2. a server scores the statistics' half with a stats tag (`moduleformer eval --server
   --stats-tag bible`), and `moduleformer expert-stats --tag bible --json` reads the counts;
3. `moduleformer prune` keeps 75% and 50% of each layer's MLP experts by those counts, and
   the same numbers at random with 5 seeds;
4. `moduleformer eval` measures every checkpoint's perplexity on both held-out texts.

Prints a markdown table (README.md and models/demo/README.md show its output).
Usage: scripts/pruning_example.py [--quick] [--json FILE]
(--quick: 8 KB of each text and 50% only, for the test suite.)"""
import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "train"))
import corpus  # noqa: E402

CLI = os.environ.get("MF_CLI_BIN", os.path.join(ROOT, "build", "moduleformer"))
SERVER = os.environ.get("MF_SERVER_BIN", os.path.join(ROOT, "build", "moduleformer-server"))
DEMO = os.path.join(ROOT, "models", "demo")
WINDOW = ["--context", "257", "--stride", "256"]  # consecutive windows of the training length
SEEDS = [1, 2, 3, 4, 5]


def run(*args):
    result = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr}")
    return result.stdout


def perplexity(model, text_file):
    output = run(CLI, "eval", "--model", model, "--text-file", text_file, *WINDOW)
    return float(re.search(r"perplexity ([0-9.]+) over", output).group(1))


def write_texts(workdir, limit):
    """(statistics text, held-out Bible text, held-out fortunes) from the validation split."""
    _, validation = corpus.split(corpus.bible_chapters() + corpus.fortunes())
    bible = set(corpus.bible_chapters())
    chapters = [doc for doc in validation if doc in bible]
    fortunes = [doc for doc in validation if doc not in bible]
    texts = {"stats": "\n\n".join(chapters[0::2]), "bible": "\n\n".join(chapters[1::2]),
             "fortunes": "\n\n".join(fortunes)}
    paths = {}
    for name, text in texts.items():
        paths[name] = os.path.join(workdir, f"{name}.txt")
        with open(paths[name], "w") as f:
            f.write(text[:limit] if limit else text)
    return paths


def collect_statistics(text_file, stats_file):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([SERVER, "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "-1",
                               "--http-port", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                run(CLI, "expert-stats", "--server", f"127.0.0.1:{port}", "--json")
                break
            except RuntimeError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        run(CLI, "eval", "--server", f"127.0.0.1:{port}", "--text-file", text_file, "--stats-tag", "bible", *WINDOW)
        with open(stats_file, "w") as f:
            f.write(run(CLI, "expert-stats", "--server", f"127.0.0.1:{port}", "--tag", "bible", "--json"))
    finally:
        server.terminate()
        server.wait(timeout=60)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    fractions = [0.5] if args.quick else [0.75, 0.5]
    with tempfile.TemporaryDirectory() as workdir:
        texts = write_texts(workdir, 8000 if args.quick else 0)
        stats_file = os.path.join(workdir, "stats.json")
        collect_statistics(texts["stats"], stats_file)
        with open(stats_file) as f:
            stats_tokens = json.load(f)["tokens"]
        results = {"statistics_tokens": stats_tokens, "full": {}, "pruned": []}
        for held_out in ("bible", "fortunes"):
            results["full"][held_out] = perplexity(DEMO, texts[held_out])
        for fraction in fractions:
            row = {"keep_mlp": fraction, "by_statistics": {}, "random_mean": {}, "random": {}}
            out = os.path.join(workdir, f"stats-{fraction}")
            run(CLI, "prune", "--model", DEMO, "--stats", stats_file, "--out", out, "--keep-mlp", str(fraction))
            for held_out in ("bible", "fortunes"):
                row["by_statistics"][held_out] = perplexity(out, texts[held_out])
                row["random"][held_out] = []
            for seed in SEEDS:
                out = os.path.join(workdir, f"random-{fraction}-{seed}")
                run(CLI, "prune", "--model", DEMO, "--stats", stats_file, "--out", out, "--keep-mlp", str(fraction),
                    "--random", str(seed))
                for held_out in ("bible", "fortunes"):
                    row["random"][held_out].append(perplexity(out, texts[held_out]))
            for held_out in ("bible", "fortunes"):
                row["random_mean"][held_out] = statistics.mean(row["random"][held_out])
            results["pruned"].append(row)
    print(f"Statistics: {stats_tokens} tokens of held-out Bible chapters (tag 'bible'). Perplexity "
          "(context 256, consecutive windows) on the other held-out chapters and on held-out fortunes:\n")
    print("| MLP experts kept | chosen by | Bible (same kind) | fortunes (other kind) |")
    print("|---|---|---|---|")
    print(f"| 8 of 8 | (full model) | {results['full']['bible']:.2f} | {results['full']['fortunes']:.2f} |")
    for row in results["pruned"]:
        kept = round(row["keep_mlp"] * 8)
        print(f"| {kept} of 8 | statistics | {row['by_statistics']['bible']:.2f} | "
              f"{row['by_statistics']['fortunes']:.2f} |")
        print(f"| {kept} of 8 | random, mean of {len(SEEDS)} seeds | {row['random_mean']['bible']:.2f} | "
              f"{row['random_mean']['fortunes']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
