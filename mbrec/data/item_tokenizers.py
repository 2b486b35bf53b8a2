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

:class:`SemanticIdTokenizer` (SID, the paper's "balanced semantic IDs"): items with similar vectors
share code prefixes. A one-codebook quantized autoencoder (an MLP encoder to a ``latent_size``
vector, nearest of ``codebook_size`` code vectors, an MLP decoder; VQ-VAE losses) gives the first
digit, each code holding at most ``ceil(n / K)`` items (capacity-constrained nearest-code
assignment: balanced); k-means with ``K`` centres on the residuals (latent minus code vector) of
each first digit's items gives the second digit, again capacity-constrained; a collision index
tells apart the items that share both. Item vectors come from a ``.npy`` file (row ``r`` = the
item named on line ``r`` of an id file, or = item token ``r`` without one), e.g. the item embedding
table of a trained model of the suite. SID is trained once and cached under
``<mbrec cache>/item_tokens/`` by a hash of the vectors, the dataset's item tokens and the settings.

:class:`TokenLayout` places behaviors, digits and users in one vocabulary whose ranges never
overlap: ``[PAD, BOS] + behaviors + digits of level 0 + ... + user buckets``.
"""

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mbrec.utils import atomic_path, cache_dir

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


def balanced_assignment(distances, capacity):
    """``[n, K]`` distances -> ``[n]`` centre per point, each centre taking at most ``capacity`` points.

    Greedy over all (point, centre) pairs from the closest: a point takes the nearest centre that
    still has room. ``capacity * K`` must be >= n.
    """
    n_points, n_centres = distances.shape
    if capacity * n_centres < n_points:
        raise ValueError(f"capacity {capacity} x {n_centres} centres cannot hold {n_points} points")
    order = torch.argsort(distances.flatten(), stable=True)
    assignment = torch.full((n_points,), -1, dtype=torch.long)
    load = torch.zeros(n_centres, dtype=torch.long)
    points, centres = (order // n_centres).tolist(), (order % n_centres).tolist()
    assignment_list, load_list, left = assignment.tolist(), load.tolist(), n_points
    for point, centre in zip(points, centres):
        if assignment_list[point] < 0 and load_list[centre] < capacity:
            assignment_list[point] = centre
            load_list[centre] += 1
            left -= 1
            if left == 0:
                break
    return torch.tensor(assignment_list, dtype=torch.long)


def kmeans(points, n_centres, iterations, generator):
    """Lloyd's k-means from ``n_centres`` distinct random points: ``[K, d]`` centres (K <= n)."""
    n_centres = min(n_centres, len(points))
    centres = points[torch.randperm(len(points), generator=generator)[:n_centres]].clone()
    for _ in range(iterations):
        nearest = torch.cdist(points, centres).argmin(dim=1)
        for centre in range(n_centres):
            members = points[nearest == centre]
            if len(members):
                centres[centre] = members.mean(dim=0)
    return centres


class QuantizedAutoencoder(nn.Module):
    """MLP encoder -> nearest of ``codebook_size`` code vectors -> MLP decoder (VQ-VAE, one codebook)."""

    def __init__(self, input_size, hidden_sizes, latent_size, codebook_size):
        super().__init__()
        sizes = [input_size, *hidden_sizes, latent_size]
        self.encoder = nn.Sequential(*[module for a, b in zip(sizes, sizes[1:])
                                       for module in (nn.Linear(a, b), nn.ReLU())][:-1])
        reverse = sizes[::-1]
        self.decoder = nn.Sequential(*[module for a, b in zip(reverse, reverse[1:])
                                       for module in (nn.Linear(a, b), nn.ReLU())][:-1])
        self.codebook = nn.Parameter(torch.randn(codebook_size, latent_size))

    def loss(self, vectors, commitment_weight):
        latent = self.encoder(vectors)  # [n, latent]
        code = self.codebook[torch.cdist(latent, self.codebook).argmin(dim=1)]  # [n, latent]
        straight_through = latent + (code - latent).detach()
        reconstruction = F.mse_loss(self.decoder(straight_through), vectors)
        return (reconstruction + F.mse_loss(code, latent.detach())
                + commitment_weight * F.mse_loss(latent, code.detach()))


class SemanticIdTokenizer(ItemTokenizer):
    """Balanced semantic IDs: quantized-autoencoder code, per-code k-means on residuals, collision index."""

    def __init__(self, item_vectors, codebook_size, hidden_sizes=(2048, 1024, 512, 256), latent_size=32,
                 epochs=200, learning_rate=1e-3, batch_size=1024, commitment_weight=0.25, kmeans_iterations=20,
                 seed=2024):
        """``item_vectors``: ``[n_items, d]`` (row 0, padding, is ignored)."""
        vectors = torch.as_tensor(np.asarray(item_vectors), dtype=torch.float32)[1:]  # [n, d]
        n_real = len(vectors)
        if n_real < 1:
            raise ValueError("the dataset has no items to tokenize")
        codebook_size = min(int(codebook_size), n_real)
        generator = torch.Generator().manual_seed(seed)
        vectors = (vectors - vectors.mean(0)) / vectors.std(0).clamp(min=1e-6)  # scale-free inputs
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = QuantizedAutoencoder(vectors.size(1), list(hidden_sizes), latent_size, codebook_size)
            with torch.no_grad():  # codebook from encoded items: no dead codes at the start
                model.codebook.copy_(kmeans(model.encoder(vectors), codebook_size, kmeans_iterations, generator))
            optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
            for _ in range(epochs):
                for batch in torch.randperm(n_real, generator=generator).split(batch_size):
                    optimizer.zero_grad()
                    model.loss(vectors[batch], commitment_weight).backward()
                    optimizer.step()
            with torch.no_grad():
                latent = model.encoder(vectors)  # [n, latent]
                codebook = model.codebook.detach()
        first = balanced_assignment(torch.cdist(latent, codebook), math.ceil(n_real / codebook_size))
        residual = latent - codebook[first]
        second = torch.zeros(n_real, dtype=torch.long)
        for code in range(codebook_size):
            members = torch.nonzero(first == code).flatten()
            if len(members) == 0:
                continue
            centres = kmeans(residual[members], codebook_size, kmeans_iterations, generator)
            second[members] = balanced_assignment(torch.cdist(residual[members], centres),
                                                  math.ceil(len(members) / len(centres)))
        group = first * codebook_size + second  # [n]
        collision = torch.zeros(n_real, dtype=torch.long)
        order = torch.argsort(group, stable=True)
        sorted_groups = group[order]
        starts = torch.ones(n_real, dtype=torch.bool)
        starts[1:] = sorted_groups[1:] != sorted_groups[:-1]
        start_index = torch.cummax(torch.where(starts, torch.arange(n_real), torch.zeros(n_real, dtype=torch.long)),
                                   dim=0).values
        collision[order] = torch.arange(n_real) - start_index
        codes = torch.cat([torch.full((1, 3), -1), torch.stack([first, second, collision], dim=1)])
        super().__init__(codes, [codebook_size, codebook_size, int(collision.max()) + 1])


def load_item_vectors(vectors_path, ids_path, item_tokens):
    """``[n_items, d]`` vectors in the dataset's item order from a ``.npy`` (+ an optional id file).

    ``item_tokens``: the dataset's item token of each internal id (``[0]`` = padding). Without an
    id file, row ``r`` belongs to item token ``str(r)``. Every item of the dataset needs a row.
    """
    vectors = np.load(vectors_path)
    if vectors.ndim != 2:
        raise ValueError(f"{vectors_path}: item vectors must be a 2-d array, got shape {vectors.shape}")
    if ids_path:
        row_tokens = Path(ids_path).read_text(encoding="utf-8").split()
        if len(row_tokens) != len(vectors):
            raise ValueError(f"{ids_path} names {len(row_tokens)} items but {vectors_path} has {len(vectors)} rows")
    else:
        row_tokens = [str(row) for row in range(len(vectors))]
    row_of = {token: row for row, token in enumerate(row_tokens)}
    missing = [token for token in item_tokens[1:] if str(token) not in row_of]
    if missing:
        raise ValueError(f"{len(missing)} dataset items have no vector in {vectors_path} (e.g. {missing[:3]})")
    ordered = np.zeros((len(item_tokens), vectors.shape[1]), dtype=np.float32)
    ordered[1:] = vectors[[row_of[str(token)] for token in item_tokens[1:]]]
    return ordered


SID_SETTINGS = ("sid_codebook_size", "sid_hidden_sizes", "sid_latent_size", "sid_epochs", "sid_learning_rate",
                "tokenizer_seed")


def cached_semantic_ids(config, item_tokens):
    """Train (or load from the cache) the SID tokenizer named by ``config`` for these items."""
    vectors_path = config["item_vectors_file"]
    if not vectors_path:
        raise ValueError("item_tokenizer: sid needs item_vectors_file (a .npy of item vectors)")
    vectors = load_item_vectors(vectors_path, config["item_vectors_ids"], item_tokens)
    digest = hashlib.sha256(vectors.tobytes())
    digest.update("\n".join(map(str, item_tokens)).encode())
    digest.update(repr([config[key] for key in SID_SETTINGS]).encode())
    path = cache_dir() / "item_tokens" / f"sid-{digest.hexdigest()[:16]}.npy"
    if path.is_file():
        codes = torch.from_numpy(np.load(path))
        return ItemTokenizer(codes, [int(config["sid_codebook_size"]), int(config["sid_codebook_size"]),
                                     int(codes[:, 2].max()) + 1])
    tokenizer = SemanticIdTokenizer(vectors, int(config["sid_codebook_size"]), list(config["sid_hidden_sizes"]),
                                    int(config["sid_latent_size"]), int(config["sid_epochs"]),
                                    float(config["sid_learning_rate"]), seed=int(config["tokenizer_seed"]))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, tokenizer.codes.numpy())
    return tokenizer


ITEM_TOKENIZERS = ("cid", "sid")


def build_item_tokenizer(config, item_tokens):
    """The tokenizer named by ``config['item_tokenizer']`` for the items ``item_tokens`` (``[0]`` = padding)."""
    name = str(config["item_tokenizer"]).lower()
    if name == "cid":
        return ChunkedIdTokenizer(len(item_tokens), int(config["n_code_levels"]), int(config["tokenizer_seed"]))
    if name == "sid":
        return cached_semantic_ids(config, item_tokens)
    raise ValueError(f"Unknown item_tokenizer '{config['item_tokenizer']}'; use one of {ITEM_TOKENIZERS}")
