"""Item tokenizers for generative recommenders: every item -> a short tuple of digit codes.

MBGen (Liu, Hou, McAuley, "Multi-Behavior Generative Recommendation", Section 3.2) writes each
item as ``n_levels`` digits ``(c1, c2, c3)``; level ``l`` has its own vocabulary of ``level_sizes[l]``
digit tokens. The mapping must be a bijection between real items (ids ``1..n_items-1``; 0 is
padding) and the code tuples in use, so that a generated code path decodes to exactly one item.

Interface (:class:`ItemTokenizer`): ``codes`` ``[n_items, n_levels]`` (row 0, padding, is -1),
``level_sizes``, ``encode(items) -> codes``, ``decode(codes) -> items`` (0 for a code no item has),
and ``valid_next_digits(level)``: a dense ``[prod(level_sizes[:level]), level_sizes[level]]`` bool
table of which digit may follow each code prefix (the prefix trie of the constrained beam search,
flattened per level).

:class:`ChunkedIdTokenizer` (CID, the paper's "balanced chunked IDs"): shuffle the item ids with a
fixed seed, then write the shuffled position of each item in base ``K`` with ``K`` the smallest
base such that ``K ** n_levels`` covers every item. Every digit value at every level then holds
(nearly) the same number of items: balanced. CID is recomputed, not cached: it is a seeded
permutation of ``n_items`` integers (milliseconds even for a million items) and depends only on
the item count and the seed, so every run on the same prepared data gets the same codes.

:class:`TokenLayout` places behaviors, digits and users in one vocabulary whose ranges never
overlap: ``[PAD, BOS] + behaviors + digits of level 0 + ... + user buckets``.
"""

import math

import numpy as np
import torch

PAD_TOKEN = 0
BOS_TOKEN = 1
N_SPECIAL_TOKENS = 2


class ItemTokenizer:
    """Item id <-> digit codes; subclasses fill ``codes`` (``[n_items, n_levels]`` long, row 0 = -1)."""

    def __init__(self, codes, level_sizes):
        codes = torch.as_tensor(codes, dtype=torch.long)
        self.level_sizes = tuple(int(size) for size in level_sizes)
        if codes.dim() != 2 or codes.size(1) != len(self.level_sizes):
            raise ValueError(f"codes must be [n_items, {len(self.level_sizes)}], got {tuple(codes.shape)}")
        real = codes[1:]
        sizes = torch.tensor(self.level_sizes)
        if (real < 0).any() or (real >= sizes).any():
            raise ValueError("every real item needs digits within its level's size")
        self.codes = codes  # [n_items, n_levels]
        self.n_items = codes.size(0)
        flat = self.flat_index(real)  # [n_items - 1]
        n_paths = int(np.prod(self.level_sizes))
        if len(torch.unique(flat)) != len(flat):
            raise ValueError("two items share a code: the tokenizer is not a bijection")
        self.item_of_path = torch.zeros(n_paths, dtype=torch.long)  # [prod(K)], 0 = no item
        self.item_of_path[flat] = torch.arange(1, self.n_items)

    @property
    def n_levels(self):
        return len(self.level_sizes)

    def flat_index(self, codes):
        """``[..., n_levels]`` digits -> ``[...]`` index of the full code path (mixed radix)."""
        index = torch.zeros(codes.shape[:-1], dtype=torch.long, device=codes.device)
        for level, size in enumerate(self.level_sizes):
            index = index * size + codes[..., level]
        return index

    def encode(self, items):
        """``[...]`` item ids -> ``[..., n_levels]`` digits (-1 for padding)."""
        return self.codes.to(items.device)[items]

    def decode(self, codes):
        """``[..., n_levels]`` digits -> ``[...]`` item ids (0 where no item has that code)."""
        return self.item_of_path.to(codes.device)[self.flat_index(codes)]

    def valid_next_digits(self, level):
        """``[prod(level_sizes[:level]), level_sizes[level]]`` bool: digit ``d`` may follow prefix ``p``.

        The prefix index is the mixed-radix index of the first ``level`` digits (0 for level 0).
        """
        prefixes = torch.zeros(len(self.codes) - 1, dtype=torch.long)
        for prior in range(level):
            prefixes = prefixes * self.level_sizes[prior] + self.codes[1:, prior]
        n_prefixes = int(np.prod(self.level_sizes[:level]))
        valid = torch.zeros(n_prefixes, self.level_sizes[level], dtype=torch.bool)
        valid[prefixes, self.codes[1:, level]] = True
        return valid


class ChunkedIdTokenizer(ItemTokenizer):
    """Balanced chunked IDs: seeded shuffle, then base-``K`` digits of the shuffled position."""

    def __init__(self, n_items, n_levels=3, seed=2024):
        n_real = n_items - 1
        if n_real < 1:
            raise ValueError("the dataset has no items to tokenize")
        base = max(2, math.ceil(round(n_real ** (1.0 / n_levels), 9)))
        while base ** n_levels < n_real:  # guard against floating-point roots
            base += 1
        position = np.random.default_rng(seed).permutation(n_real)  # [n_real]: shuffled slot of item i+1
        digits = np.zeros((n_items, n_levels), dtype=np.int64)
        digits[0] = -1
        remainder = position.copy()
        for level in reversed(range(n_levels)):
            digits[1:, level] = remainder % base
            remainder //= base
        super().__init__(torch.from_numpy(digits), [base] * n_levels)


class TokenLayout:
    """One vocabulary for a generative recommender: ``[PAD, BOS] + behaviors + digits per level + users``.

    Behavior id ``b`` (1..n_behaviors) is token ``behavior_offset + b - 1``; digit ``d`` of level
    ``l`` is ``digit_offsets[l] + d``; user bucket ``u`` is ``user_offset + u``.
    """

    def __init__(self, n_behaviors, level_sizes, n_user_buckets):
        self.n_behaviors = int(n_behaviors)  # real behaviors, no padding
        self.level_sizes = tuple(level_sizes)
        self.behavior_offset = N_SPECIAL_TOKENS
        offset = self.behavior_offset + self.n_behaviors
        self.digit_offsets = []
        for size in self.level_sizes:
            self.digit_offsets.append(offset)
            offset += size
        self.user_offset = offset
        self.n_user_buckets = int(n_user_buckets)
        self.vocab_size = offset + self.n_user_buckets

    def ranges(self):
        """Name -> ``range`` of token ids; the ranges partition ``0..vocab_size-1``."""
        ranges = {"special": range(0, N_SPECIAL_TOKENS),
                  "behavior": range(self.behavior_offset, self.behavior_offset + self.n_behaviors)}
        for level, (start, size) in enumerate(zip(self.digit_offsets, self.level_sizes)):
            ranges[f"digit{level}"] = range(start, start + size)
        ranges["user"] = range(self.user_offset, self.vocab_size)
        return ranges

    def behavior_tokens(self, behaviors):
        """``[...]`` behavior ids (1..n, 0 = padding) -> tokens (PAD for padding)."""
        return torch.where(behaviors > 0, behaviors + self.behavior_offset - 1, torch.full_like(behaviors, PAD_TOKEN))

    def digit_tokens(self, codes):
        """``[..., n_levels]`` digits (-1 = padding) -> tokens (PAD for padding)."""
        offsets = torch.tensor(self.digit_offsets, device=codes.device)
        return torch.where(codes >= 0, codes + offsets, torch.full_like(codes, PAD_TOKEN))


ITEM_TOKENIZERS = ("cid",)


def build_item_tokenizer(config, n_items):
    """The tokenizer named by ``config['item_tokenizer']`` for a dataset with ``n_items`` ids (incl. padding)."""
    name = str(config["item_tokenizer"]).lower()
    if name == "cid":
        return ChunkedIdTokenizer(n_items, int(config["n_code_levels"]), int(config["tokenizer_seed"]))
    raise ValueError(f"Unknown item_tokenizer '{config['item_tokenizer']}'; use one of {ITEM_TOKENIZERS}")
