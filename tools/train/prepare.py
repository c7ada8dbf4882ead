"""Builds the demo model's training data: corpus -> BPE tokenizer -> token ids.

Writes to --out: tokenizer.json, train.bin and validation.bin (uint16 ids, documents
separated by <|endoftext|>), and stats.json (corpus sizes and the unigram baseline:
the perplexity of validation tokens under train-set token frequencies, the bar a
language model must clearly beat).
"""
import argparse
import collections
import json
import math
import os
import sys

import numpy as np

import bpe
import corpus


def encode_documents(tokenizer, documents):
    ids = []
    for document in documents:
        ids.extend(tokenizer.encode(document))
        ids.append(tokenizer.eos_id)
    return np.array(ids, dtype=np.uint16)


def unigram_perplexity(train_ids, validation_ids, vocab_size):
    counts = collections.Counter(train_ids.tolist())
    total = len(train_ids) + vocab_size  # add-one smoothing: every token has some mass
    log_likelihood = sum(math.log((counts[token] + 1) / total) for token in validation_ids.tolist())
    return math.exp(-log_likelihood / len(validation_ids))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--validation-percent", type=int, default=2)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    train_docs, validation_docs = corpus.load(args.validation_percent)
    tokenizer = bpe.train(train_docs, args.vocab_size)
    tokenizer.save(os.path.join(args.out, "tokenizer.json"))
    train_ids = encode_documents(tokenizer, train_docs)
    validation_ids = encode_documents(tokenizer, validation_docs)
    train_ids.tofile(os.path.join(args.out, "train.bin"))
    validation_ids.tofile(os.path.join(args.out, "validation.bin"))
    stats = {
        "vocab_size": tokenizer.vocab_size,
        "eos_token_id": tokenizer.eos_id,
        "train_documents": len(train_docs),
        "validation_documents": len(validation_docs),
        "train_bytes": sum(len(d.encode()) for d in train_docs),
        "validation_bytes": sum(len(d.encode()) for d in validation_docs),
        "train_tokens": int(len(train_ids)),
        "validation_tokens": int(len(validation_ids)),
        "unigram_validation_perplexity": unigram_perplexity(train_ids, validation_ids, tokenizer.vocab_size),
    }
    with open(os.path.join(args.out, "stats.json"), "w") as handle:
        json.dump(stats, handle, indent=2)
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
