"""Expected outputs of a trained checkpoint, computed by the training code in float64 from its
bf16 weights, in the fixtures' cases.json format, so that `moduleformer verify` checks
the C++ engine against the PyTorch side. Prompts whose routing or greedy choices are
nearly tied (margin < --min-margin in logit) are skipped: there, float32 and float64 may
legitimately pick differently.
"""
import argparse
import json
import sys

import torch

import bpe
import checkpoint

DEFAULT_PROMPTS = [
    "In the beginning",
    "And the LORD said unto Moses,",
    "The best thing about computers is",
    "A wise man once said that",
    "Never trust a programmer who",
    "Love is",
    "There was a young lady from",
    "Q: Why did the chicken cross the road?\nA:",
]


def router_logit_margin(model, ids):
    """Smallest gap, in router logits, between the k-th and (k+1)-th expert over all tokens and mixtures."""
    margins = []
    hooks = []
    for block in model.transformer.h:
        for mixture in (block.attn.q_proj, block.mlpf):
            def record(module, _, output, k=mixture.gate.k):
                top = output.topk(min(k + 1, output.shape[-1]), dim=-1).values
                if top.shape[-1] > k:
                    margins.append((top[..., k - 1] - top[..., k]).min().item())
            hooks.append(mixture.gate.w_gate.register_forward_hook(record))
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    return min(margins)


def rounded(values):
    """Seven significant digits, as the reference fixtures store them (far below the 1e-4 tolerance)."""
    return [float(f"{value:.7g}") for value in values]


def make_case(model, prompt_ids, new_tokens):
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        logits, routing = model(ids)
    positions = list(range(max(0, len(prompt_ids) - 2), len(prompt_ids)))
    case = {"prompt": prompt_ids, "logits_positions": positions,
            "logits": [rounded(logits[0, p].tolist()) for p in positions], "routing": []}
    for layer, mixtures in enumerate(routing):
        for kind, (_, experts, gates) in zip(("attention", "mlp"), mixtures):
            case["routing"].append({"layer": layer, "kind": kind, "experts": experts[0].tolist(),
                                    "gates": gates[0].tolist()})
    sequence, step_logits, greedy_margin = list(prompt_ids), [], float("inf")
    routing_margin = router_logit_margin(model, ids)
    for step in range(new_tokens):
        with torch.no_grad():
            last = model(torch.tensor([sequence]))[0][0, -1]
        top = last.topk(2).values
        greedy_margin = min(greedy_margin, (top[0] - top[1]).item())
        if step > 0:
            step_logits.append(rounded(last.tolist()))
        sequence.append(int(last.argmax()))
        routing_margin = min(routing_margin, router_logit_margin(model, torch.tensor([sequence[:-1]])))
    case["greedy"] = sequence[len(prompt_ids):]
    case["greedy_step_logits"] = step_logits
    case["min_routing_logit_margin"] = routing_margin
    case["min_greedy_logit_margin"] = greedy_margin
    return case


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--max-cases", type=int, default=5)
    parser.add_argument("--min-margin", type=float, default=1e-3)
    args = parser.parse_args()
    model = checkpoint.load_model(args.model, torch.float64)
    tokenizer = bpe.Tokenizer.load(f"{args.model}/tokenizer.json")
    cases = []
    for prompt in DEFAULT_PROMPTS:
        case = make_case(model, tokenizer.encode(prompt), args.new_tokens)
        margin = min(case["min_routing_logit_margin"], case["min_greedy_logit_margin"])
        print(f"{prompt!r}: margin {margin:.2e} -> {tokenizer.decode(case['greedy'])!r}")
        if margin >= args.min_margin and len(cases) < args.max_cases:
            case["text"] = prompt
            cases.append(case)
    with open(args.out, "w") as handle:
        json.dump({"generated_by": "tools/train (PyTorch), float64, weights rounded to bf16",
                   "tolerance_note": "logits computed in float64 from the bf16 weights", "cases": cases}, handle)
    print(f"{len(cases)} cases written to {args.out}")
    return 0 if cases else 1


if __name__ == "__main__":
    sys.exit(main())
