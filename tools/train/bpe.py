"""Byte-level BPE: training on a corpus, encoding, and the Hugging Face tokenizer.json.

Pre-tokenization is GPT-2's (the same regular expression the C++ tokenizer uses), so the
server reproduces these encodings exactly; tests/tools/demo_model_test.sh checks that.
"""
import collections
import heapq
import json

import regex

GPT2_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
END_OF_TEXT = "<|endoftext|>"


def byte_to_unicode():
    """GPT-2's table: printable Latin-1 bytes stand for themselves, the rest map to 256+."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table, next_extra = {}, 256
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(next_extra)
            next_extra += 1
    return table


BYTE_SYMBOL = byte_to_unicode()


def pretokenize(text):
    return [''.join(BYTE_SYMBOL[b] for b in piece.encode("utf-8")) for piece in GPT2_PATTERN.findall(text)]


class _PairCounts:
    """Pair frequencies over the distinct words, with an index from pair to the words holding it."""

    def __init__(self, words, counts):
        self.words, self.counts = words, counts
        self.frequency = collections.Counter()
        self.holders = collections.defaultdict(set)
        for index, word in enumerate(words):
            self._add_word(index, word, +1)
        self.heap = [(-freq, pair) for pair, freq in self.frequency.items()]
        heapq.heapify(self.heap)

    def _add_word(self, index, word, sign):
        for pair in zip(word, word[1:]):
            self.frequency[pair] += sign * self.counts[index]
            if sign > 0:
                self.holders[pair].add(index)

    def best(self):
        """Most frequent pair; ties go to the lexicographically smallest, for determinism."""
        while self.heap:
            negative_freq, pair = self.heap[0]
            if self.frequency.get(pair, 0) == -negative_freq and negative_freq < 0:
                return pair
            heapq.heappop(self.heap)  # stale entry
        return None

    def merge(self, pair):
        merged = pair[0] + pair[1]
        touched = collections.Counter()
        for index in list(self.holders.pop(pair, ())):
            word = self.words[index]
            self._add_word(index, word, -1)
            self.words[index] = word = _apply_merge(word, pair, merged)
            self._add_word(index, word, +1)
            for new_pair in zip(word, word[1:]):
                touched[new_pair] += 1
        self.frequency.pop(pair, None)
        for touched_pair in touched:
            heapq.heappush(self.heap, (-self.frequency[touched_pair], touched_pair))


def _apply_merge(word, pair, merged):
    result, position = [], 0
    while position < len(word):
        if position + 1 < len(word) and word[position] == pair[0] and word[position + 1] == pair[1]:
            result.append(merged)
            position += 2
        else:
            result.append(word[position])
            position += 1
    return tuple(result)


def train(documents, vocab_size):
    """Learns vocab_size - 257 merges (256 byte tokens and <|endoftext|> complete the vocabulary)."""
    word_counts = collections.Counter()
    for document in documents:
        word_counts.update(pretokenize(document))
    words = [tuple(word) for word in word_counts]
    pairs = _PairCounts(words, list(word_counts.values()))
    merges = []
    while len(merges) < vocab_size - 257:
        pair = pairs.best()
        if pair is None:
            break
        merges.append(pair)
        pairs.merge(pair)
    return Tokenizer(merges)


class Tokenizer:
    def __init__(self, merges):
        self.merges = [tuple(m) for m in merges]
        self.rank = {pair: index for index, pair in enumerate(self.merges)}
        self.vocab = {BYTE_SYMBOL[b]: b for b in range(256)}
        for first, second in self.merges:
            self.vocab[first + second] = len(self.vocab)
        self.eos_id = len(self.vocab)
        self.cache = {}

    @property
    def vocab_size(self):
        return self.eos_id + 1

    def _encode_word(self, word):
        symbols = list(word)
        while len(symbols) > 1:
            ranked = [(self.rank.get(pair, len(self.rank)), i) for i, pair in enumerate(zip(symbols, symbols[1:]))]
            best_rank, _ = min(ranked)
            if best_rank == len(self.rank):
                break
            pair = self.merges[best_rank]
            symbols = list(_apply_merge(tuple(symbols), pair, pair[0] + pair[1]))
        return [self.vocab[s] for s in symbols]

    def encode(self, text):
        ids = []
        for word in pretokenize(text):
            if word not in self.cache:
                self.cache[word] = self._encode_word(word)
            ids.extend(self.cache[word])
        return ids

    def decode(self, ids):
        symbol_byte = {symbol: byte for byte, symbol in BYTE_SYMBOL.items()}
        id_token = {index: token for token, index in self.vocab.items()}
        data = bytearray()
        for index in ids:
            if index == self.eos_id:
                data.extend(END_OF_TEXT.encode())
            else:
                data.extend(symbol_byte[c] for c in id_token[index])
        return data.decode("utf-8", errors="replace")

    def to_json(self):
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [{"id": self.eos_id, "content": END_OF_TEXT, "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": False, "special": True}],
            "normalizer": None,
            "pre_tokenizer": byte_level,
            "post_processor": None,
            "decoder": byte_level,
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                      "vocab": self.vocab, "merges": [f"{a} {b}" for a, b in self.merges]},
        }

    def save(self, path):
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_json(), handle, ensure_ascii=False)

    @staticmethod
    def load(path):
        with open(path, encoding="utf-8") as handle:
            model = json.load(handle)["model"]
        return Tokenizer([tuple(merge.split(" ")) for merge in model["merges"]])
