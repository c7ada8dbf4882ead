"""Markdown tables for models/demo/README.md from train.py's training_log.jsonl and
training_summary.json: the loss curve, perplexities, and per-expert selection frequencies."""
import argparse
import json
import os
import sys


def loss_curve(log, every):
    rows = ["| step | seconds | train loss | validation loss | validation perplexity |", "|---|---|---|---|---|"]
    for entry in log:
        if entry["step"] % every == 0 or entry is log[-1]:
            rows.append(f"| {entry['step']} | {entry['seconds']:.0f} | {entry['train_loss']:.3f} | "
                        f"{entry['validation_loss']:.3f} | {entry['validation_perplexity']:.1f} |")
    return "\n".join(rows)


def expert_table(summary):
    experts = len(summary["expert_selection"][0]["frequency"])
    header = "| layer | mixture | " + " | ".join(f"e{i}" for i in range(experts)) + " | min / mean |"
    rows = [header, "|---|---|" + "---|" * (experts + 1)]
    for row in summary["expert_selection"]:
        cells = " | ".join(f"{100 * f:.1f}%" for f in row["frequency"])
        rows.append(f"| {row['layer']} | {row['kind']} | {cells} | {row['min_over_mean']:.2f} |")
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--every", type=int, default=1000, help="loss-curve rows every N steps")
    args = parser.parse_args()
    with open(os.path.join(args.model, "training_log.jsonl")) as handle:
        log = [json.loads(line) for line in handle]
    with open(os.path.join(args.model, "training_summary.json")) as handle:
        summary = json.load(handle)
    print(f"Validation perplexity {summary['validation_perplexity']:.1f} (best step {summary['best_step']} of "
          f"{summary['steps']}); unigram baseline {summary['unigram_validation_perplexity']:.1f}.\n")
    print(loss_curve(log, args.every) + "\n")
    print(expert_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
