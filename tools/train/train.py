"""Trains the demo ModuleFormer on the ids prepare.py wrote, and exports it.

Next-token cross-entropy plus the paper's mutual-information load-balancing loss, AdamW
with warmup and cosine decay, bf16 autocast on a GPU. The validation loss is measured
every --eval-every steps; the best weights (rounded to bf16, as they ship) are exported.
Writes to --out: config.json, model.safetensors, tokenizer.json, training_log.jsonl and
training_summary.json (final validation perplexity, per-expert selection frequencies).
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F

import checkpoint
import modeling


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="directory written by prepare.py")
    parser.add_argument("--out", required=True)
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget")
    parser.add_argument("--max-steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--mi-weight", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=192)
    parser.add_argument("--ffd-hidden", type=int, default=256)
    parser.add_argument("--gating-size", type=int, default=64)
    parser.add_argument("--experts", type=int, default=8, help="per mixture (attention and MLP)")
    parser.add_argument("--top-k", type=int, default=2)
    return parser.parse_args()


def model_config(args, stats):
    return modeling.Config(
        vocab_size=stats["vocab_size"], n_embd=args.n_embd, n_layer=args.n_layer, n_head=1,
        att_hidden=args.n_embd, ffd_hidden=args.ffd_hidden, n_att_experts=args.experts, k_att=args.top_k,
        n_mlp_experts=args.experts, k_mlp=args.top_k, gating_size=args.gating_size,
        bos_token_id=stats["eos_token_id"], eos_token_id=stats["eos_token_id"], dropout=args.dropout)


def random_batch(ids, batch, seq, generator, device):
    starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=generator)
    windows = torch.stack([ids[s:s + seq + 1] for s in starts.tolist()]).to(device, non_blocking=True)
    return windows[:, :-1], windows[:, 1:]


def learning_rate(step, args, elapsed_seconds):
    """Linear warmup, then cosine decay to 10% over whichever budget (steps or time) runs out first."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, max((step - args.warmup) / max(1, args.max_steps - args.warmup),
                            elapsed_seconds / (args.minutes * 60)))
    return args.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


@torch.no_grad()
def evaluate(model, ids, seq, device):
    """Mean next-token loss over the validation set in consecutive windows, and expert selection counts."""
    model.eval()
    total_loss, total_tokens, selections = 0.0, 0, None
    windows = [ids[s:s + seq + 1] for s in range(0, len(ids) - 1, seq)]
    for window in windows:
        inputs, targets = window[:-1].to(device)[None], window[1:].to(device)[None]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits, routing = model(inputs)
        total_loss += F.cross_entropy(logits.float()[0], targets[0], reduction="sum").item()
        total_tokens += targets.numel()
        counts = [[torch.bincount(experts.flatten(), minlength=probs.shape[-1]).cpu()
                   for probs, experts, _ in layer] for layer in routing]
        selections = counts if selections is None else [
            [a + b for a, b in zip(old, new)] for old, new in zip(selections, counts)]
    model.train()
    return total_loss / total_tokens, selections


def selection_report(selections):
    report = []
    for layer, mixtures in enumerate(selections):
        for kind, counts in zip(("attention", "mlp"), mixtures):
            frequency = (counts.double() / counts.sum()).tolist()
            mean = 1.0 / len(frequency)
            report.append({"layer": layer, "kind": kind, "frequency": frequency,
                           "min_over_mean": min(frequency) / mean, "max_over_mean": max(frequency) / mean})
    return report


def bf16_rounded(model):
    return {name: tensor.to(torch.bfloat16).float() for name, tensor in model.state_dict().items()}


def main():
    args = parse_args()
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with open(os.path.join(args.data, "stats.json")) as handle:
        stats = json.load(handle)
    train_ids = torch.from_numpy(np.fromfile(os.path.join(args.data, "train.bin"), dtype=np.uint16).astype(np.int64))
    validation_ids = torch.from_numpy(
        np.fromfile(os.path.join(args.data, "validation.bin"), dtype=np.uint16).astype(np.int64))
    config = model_config(args, stats)
    model = modeling.ModuleFormer(config).to(device)
    print(f"parameters: {sum(p.numel() for p in model.parameters()):,}; train tokens {len(train_ids):,}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    log = open(os.path.join(args.out, "training_log.jsonl"), "w")
    best = {"validation_loss": float("inf")}
    start, step = time.time(), 0
    while step < args.max_steps and time.time() - start < args.minutes * 60:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args, time.time() - start)
        inputs, targets = random_batch(train_ids, args.batch, args.seq, generator, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits, routing = model(inputs)
            lm_loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
            mi_loss = modeling.mutual_information_loss(routing)
            loss = lm_loss + args.mi_weight * mi_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % args.eval_every == 0 or step == args.max_steps:
            validation_loss, _ = evaluate(model, validation_ids, args.seq, device)
            entry = {"step": step, "seconds": round(time.time() - start, 1), "train_loss": lm_loss.item(),
                     "mi_loss": mi_loss.item(), "validation_loss": validation_loss,
                     "validation_perplexity": math.exp(validation_loss)}
            log.write(json.dumps(entry) + "\n")
            log.flush()
            print(json.dumps(entry), flush=True)
            if validation_loss < best["validation_loss"]:
                best = {"validation_loss": validation_loss, "step": step, "state": bf16_rounded(model)}

    model.load_state_dict(best["state"])
    validation_loss, selections = evaluate(model, validation_ids, args.seq, device)  # as shipped: bf16 weights
    model = model.cpu().float()
    checkpoint.export(model, os.path.join(args.data, "tokenizer.json"), args.out)
    summary = {"steps": step, "best_step": best["step"], "seconds": round(time.time() - start, 1),
               "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "arguments": vars(args),
               "parameters": sum(p.numel() for p in model.parameters()),
               "validation_loss": validation_loss, "validation_perplexity": math.exp(validation_loss),
               "unigram_validation_perplexity": stats["unigram_validation_perplexity"],
               "expert_selection": selection_report(selections)}
    with open(os.path.join(args.out, "training_summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    print(json.dumps({k: v for k, v in summary.items() if k != "expert_selection"}, indent=2))
    for row in summary["expert_selection"]:
        print(f"layer {row['layer']} {row['kind']:9s} min/mean {row['min_over_mean']:.2f} "
              f"max/mean {row['max_over_mean']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
