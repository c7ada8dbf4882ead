#!/usr/bin/env python3
"""Sums Nsight Compute's per-launch durations by kernel: where a step's GPU time goes.

Usage: ncu --csv --metrics gpu__time_duration.sum ... > launches.csv
       python3 scripts/kernel_times.py launches.csv
Counts whole steps only: the launches from the first embedding kernel (one per forward
pass) to the last.
"""
import collections
import csv
import sys


def main():
    path = sys.argv[1]
    with open(path) as f:
        lines = [line for line in f if line.startswith('"')]
    launches = []
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(row["Metric Value"].replace(",", ""))
        scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}.get(row.get("Metric Unit", "nsecond"), 1e-3)
        launches.append((row["Kernel Name"].split("(")[0][:70], value * scale))
    # Whole steps only: from the first embedding launch to the last one.
    starts = [i for i, (name, _) in enumerate(launches) if "Embed" in name]
    if len(starts) < 2:
        sys.exit("need at least two embedding launches (one whole step)")
    steps = float(len(starts) - 1)
    totals = collections.defaultdict(lambda: [0.0, 0])
    for name, micros in launches[starts[0]:starts[-1]]:
        totals[name][0] += micros
        totals[name][1] += 1
    grand = sum(t for t, _ in totals.values())
    print(f"GPU time per step: {grand / steps:.1f} us in {sum(c for _, c in totals.values()) / steps:.0f} kernels")
    for name, (total, count) in sorted(totals.items(), key=lambda item: -item[1][0]):
        print(f"  {total / steps:9.1f} us/step {count / steps:6.0f} launches {total / count:8.2f} us each  {name}")


if __name__ == "__main__":
    main()
