"""The training code's model must reproduce the original implementation's fixtures
(tests/fixtures/reference) before it is trusted to train: logits within 1e-4 and
the same routing (expert sets and gates) when it loads their weights, in float64."""
import argparse
import json
import os
import sys

import torch

import checkpoint

LOGIT_TOLERANCE = 1e-4
GATE_TOLERANCE = 1e-4


def check_case(model, case):
    ids = torch.tensor([case["prompt"]])
    with torch.no_grad():
        logits, routing = model(ids)
    errors = []
    worst = 0.0
    for position, expected in zip(case["logits_positions"], case["logits"]):
        worst = max(worst, (logits[0, position] - torch.tensor(expected, dtype=torch.float64)).abs().max().item())
    if worst > LOGIT_TOLERANCE:
        errors.append(f"max |logit error| {worst:.3g} > {LOGIT_TOLERANCE}")
    for entry in case["routing"]:
        _, experts, gates = routing[entry["layer"]][0 if entry["kind"] == "attention" else 1]
        for token, (want_experts, want_gates) in enumerate(zip(entry["experts"], entry["gates"])):
            got = dict(zip(experts[0, token].tolist(), gates[0, token].tolist()))
            want = dict(zip(want_experts, want_gates))
            if set(got) != set(want) or any(abs(got[e] - want[e]) > GATE_TOLERANCE for e in want):
                errors.append(f"layer {entry['layer']} {entry['kind']} token {token}: {got} != {want}")
                break
    # Greedy continuation by recomputation (the model has no cache; MODEL.md's math has no positions).
    sequence = list(case["prompt"])
    with torch.no_grad():
        for expected in case["greedy"]:
            next_token = int(model(torch.tensor([sequence]))[0][0, -1].argmax())
            if next_token != expected:
                errors.append(f"greedy token {len(sequence) - len(case['prompt'])}: {next_token} != {expected}")
                break
            sequence.append(next_token)
    return worst, errors


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--fixtures", default=os.path.join(os.path.dirname(__file__), "../../tests/fixtures/reference"))
    args = parser.parse_args()
    failures = 0
    names = sorted(os.listdir(args.fixtures))
    for name in names:
        directory = os.path.join(args.fixtures, name)
        model = checkpoint.load_model(directory, torch.float64)
        with open(os.path.join(directory, "cases.json")) as handle:
            cases = json.load(handle)["cases"]
        worst_overall = 0.0
        for index, case in enumerate(cases):
            worst, errors = check_case(model, case)
            worst_overall = max(worst_overall, worst)
            for error in errors:
                print(f"FAIL {name} case {index}: {error}")
            failures += bool(errors)
        print(f"{name}: {len(cases)} cases, max |logit error| {worst_overall:.2e}")
    print(f"{len(names)} fixtures checked, {failures} failing cases")
    return 1 if failures or not names else 0


if __name__ == "__main__":
    sys.exit(main())
