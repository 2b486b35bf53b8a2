"""MBGen: multi-behavior generative recommendation with behavior and item tokens.

Liu, Hou, McAuley, "Multi-Behavior Generative Recommendation" (CIKM 2024, arXiv 2405.16871).
Every interaction becomes the tokens ``[behavior, c1, c2, c3]`` (the item's digits from an
:mod:`item tokenizer <mbrec.data.item_tokenizers>`, Section 3.2). An encoder-decoder Transformer
with T5 relative position bias reads ``[b_1, c1_1, c2_1, c3_1, ..., b_t, c1_t, c2_t, c3_t, user]`` (the user
token, a hash of the user id modulo ``n_user_buckets``, follows the latest interaction; ``user_token``
moves it first, as the paper, or drops it) and generates the next interaction
``[b, c1, c2, c3]`` token by token (Eq. 1-3: predict the behavior, then the item given it), trained
with next-token cross-entropy (Eq. 4) on every training prefix.

Architecture (Section 3.3), each part switchable for the paper's ablations (Table 6):
- ``position_routing``: each decoder FFN is a set of experts, one per generated slot (behavior,
  c1, c2, c3), the expert chosen by the slot (:class:`mbrec.layers.moe.PositionRoutedFFN`); off =
  one dense FFN (w/o PR).
- ``behavior_injection``: in the first ``behavior_injection_layers`` layers of both stacks, a
  ``behavior_embedding_size`` behavior embedding is concatenated to the FFN input. Encoder: every
  token carries its interaction's behavior (the user token none). Decoder: the target behavior,
  from the position after the behavior token on (at BOS it is not known yet, and giving it there
  would leak the answer to the behavior slot). Off = w/o BI.

``tie_embeddings`` (default on, as T5 and the reference code): one token table serves the
encoder input, the decoder input and the output layer, whose input is scaled by d_model^-1/2.
Measured on filtered retailrocket (d 64, 2+2 layers, lr 3e-3): with separate output weights the
digit slots stayed at chance (cross-entropy ln K) for 300 steps; tied, the model learned to copy
digits from the history after about 300 steps (digit accuracy 0.49 at 600 steps). Copying a
history item is most of this task, and a shared table makes copying a token a direct read-out.

Inference: constrained beam search (only code paths of real items, via the tokenizer's per-level
valid-next-digit tables; the paper's code leaves beams unconstrained) with the prefix ``[BOS, b]``
when the task tells the behavior and ``[BOS]`` when it does not (the model then also generates
the behavior). ``beam_size`` beams are kept. Each step decodes only the new position of every
beam (:meth:`MBGen.decode_step`: earlier positions' keys and values are cached, as a causal
decoder allows).

Cost (the same computation, arranged for CPU; ``benchmarks/mbgen_fast_paths.py`` times it against
the plain arrangement, ``tests/test_mbgen_speed.py`` checks they agree): rows run per group of
similar history lengths, each cut to its longest history and, on CPU, in bounded chunks
(:meth:`MBGen.length_groups`); the decoder's cross-attention reads the encoder output through the
products of its weights where that is cheaper (:meth:`mbrec.layers.seq2seq.Attention.attend_absorbed`).

Scores for the shared evaluator: the items (or (behavior, item) pairs) the beam returns get their
beam log-probability; every other item gets one common score strictly below all of them (the
row's lowest beam score minus ``OUTSIDE_BEAM_MARGIN``). The evaluator's pessimistic tie rule then
ranks a target outside the beam at the bottom of that tied block, i.e. it is never a hit, at any K.
With ``beam_size`` < K, Recall@K is therefore Recall@beam_size.

Told nothing (``next_item``), an item's score is the log of its total probability over the
behaviors the beam found it with. ``behavior_aware_allocation`` (Section 4.4.2) replaces the joint
beam of the ``behavior_item`` task: the beam's slots are shared out across behaviors in proportion
to the predicted behavior probabilities, and each behavior's share is filled by a beam told that
behavior; pairs are ordered by their joint log-probability.
"""

import hashlib

import torch
from torch import nn
from torch.nn import functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from mbrec.training.scheduled_trainer import ScheduledTrainer
from mbrec.data.item_tokenizers import BOS_TOKEN, PAD_TOKEN, TokenLayout, build_item_tokenizer
from mbrec.layers.moe import PositionRoutedFFN
from mbrec.layers.seq2seq import (DecoderCache, DecoderLayer, EncoderLayer, FeedForward, RelativePositionBias,
                                  causal_bias, padding_bias)
from mbrec.models import PredictFromFullSort

OUTSIDE_BEAM_MARGIN = 1.0  # items outside the beam score this far below the row's weakest beam item
MAX_MEMO_BATCHES = 100_000  # bound on the told-nothing beams kept between the two untold tasks' passes
# On CPU the encoder runs on at most this many activation elements per matrix (rows * tokens * widest
# activation, 16 MiB in fp32): below glibc's largest mmap threshold (32 MiB), so malloc serves such
# temporaries from memory it keeps and reuses, where every larger one is a fresh mapping whose pages
# the kernel faults in and zeroes again at each use (a quarter of an unchunked training step on
# retailrocket_f10 at d_model 64; see MBGen.length_groups)
CPU_CHUNK_ELEMENTS = 4 * 1024 * 1024
USER_HASH_MULTIPLIER = 2654435761  # Knuth's multiplicative hash: spreads consecutive user ids over the buckets
# where the user token goes: after the latest interaction (ours), first (the paper), or nowhere
USER_TOKEN_PLACEMENTS = ("append", "prepend", "none")


class MBGen(PredictFromFullSort, SequentialRecommender):
    """Encoder-decoder over interleaved behavior and item-digit tokens; beam search for ranking."""

    input_type = InputType.POINTWISE  # cross-entropy over next tokens, no sampled negatives
    behavior_conditioned = True
    trainer_class = ScheduledTrainer

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.BEHAVIOR = config["BEHAVIOR_FIELD"]
        self.BEHAVIOR_SEQ = self.BEHAVIOR + config["LIST_SUFFIX"]
        self.n_behaviors = dataset.n_behaviors  # including the padding id 0
        self.d_model = int(config["d_model"])
        self.n_heads = int(config["n_heads"])
        self.d_head = int(config["d_head"])
        self.d_ff = int(config["d_ff"])
        self.dropout_prob = float(config["dropout_prob"])
        self.activation = str(config["activation"])
        self.position_routing = bool(config["position_routing"])
        self.behavior_injection = bool(config["behavior_injection"])
        self.behavior_injection_layers = int(config["behavior_injection_layers"])
        self.behavior_embedding_size = int(config["behavior_embedding_size"])
        self.beam_size = int(config["beam_size"])
        self.behavior_aware_allocation = bool(config["behavior_aware_allocation"])
        n_encoder_layers, n_decoder_layers = int(config["n_encoder_layers"]), int(config["n_decoder_layers"])
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.behavior_injection and not 0 < self.behavior_injection_layers <= min(n_encoder_layers,
                                                                                     n_decoder_layers):
            raise ValueError("behavior_injection_layers must be between 1 and the number of layers of each stack")

        self.user_token = str(config["user_token"])
        if self.user_token not in USER_TOKEN_PLACEMENTS:
            raise ValueError(f"user_token must be one of {USER_TOKEN_PLACEMENTS}, got {self.user_token!r}")
        if int(config["n_user_buckets"]) < 1:
            raise ValueError(f"n_user_buckets must be >= 1, got {config['n_user_buckets']}")
        self.tokenizer = build_item_tokenizer(config, list(dataset.field2id_token[self.ITEM_ID]))
        self.layout = TokenLayout(self.n_behaviors - 1, self.tokenizer.level_sizes, int(config["n_user_buckets"]))
        self.n_slots = 1 + self.tokenizer.n_levels  # behavior + digits: the decoder generates these
        self.register_buffer("item_codes", self.tokenizer.codes.clone(), persistent=False)  # [n_items, levels]
        for level in range(self.tokenizer.n_levels):
            self.register_buffer(f"valid_next_{level}", self.tokenizer.valid_next_digits(level), persistent=False)

        self.token_embedding = nn.Embedding(self.layout.vocab_size, self.d_model, padding_idx=PAD_TOKEN)
        self.behavior_embedding = nn.Embedding(self.n_behaviors, self.behavior_embedding_size, padding_idx=0)
        buckets, max_distance = int(config["relative_attention_buckets"]), int(config["relative_attention_max_distance"])
        self.encoder_position_bias = RelativePositionBias(self.n_heads, buckets, max_distance, bidirectional=True)
        self.decoder_position_bias = RelativePositionBias(self.n_heads, buckets, max_distance, bidirectional=False)
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(self.d_model, self.n_heads, self.d_head, self._ffn(layer, routed=False), self.dropout_prob)
            for layer in range(n_encoder_layers))
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(self.d_model, self.n_heads, self.d_head, self._ffn(layer, routed=self.position_routing),
                         self.dropout_prob)
            for layer in range(n_decoder_layers))
        self.encoder_norm, self.decoder_norm = nn.RMSNorm(self.d_model), nn.RMSNorm(self.d_model)
        self.dropout = nn.Dropout(self.dropout_prob)
        self.tie_embeddings = bool(config["tie_embeddings"])
        self.lm_head = nn.Linear(self.d_model, self.layout.vocab_size, bias=False)
        if self.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight
        self.loss_fct = nn.CrossEntropyLoss(ignore_index=PAD_TOKEN)
        self._beam_memo, self._beam_memo_stamp = {}, None  # see _joint_beam

    def _injects(self, layer):
        return self.behavior_injection and layer < self.behavior_injection_layers

    def _ffn(self, layer, routed):
        in_dim = self.d_model + (self.behavior_embedding_size if self._injects(layer) else 0)
        make = lambda: FeedForward(in_dim, self.d_ff, self.d_model, self.dropout_prob, self.activation)  # noqa: E731
        return PositionRoutedFFN([make() for _ in range(self.n_slots)]) if routed else make()

    # ------------------------------------------------------------------ tokens
    def user_tokens(self, users):
        """``[B]`` user ids -> ``[B]`` user-bucket tokens (hash of the id modulo ``n_user_buckets``)."""
        return self.layout.user_offset + (users * USER_HASH_MULTIPLIER) % self.layout.n_user_buckets

    def interaction_tokens(self, items, behaviors):
        """``[..., ]`` items and behaviors -> ``[..., 1 + n_levels]`` tokens ``[b, c1, c2, c3]`` (PAD for padding)."""
        behavior_token = self.layout.behavior_tokens(torch.where(items > 0, behaviors, torch.zeros_like(behaviors)))
        digits = self.layout.digit_tokens(self.item_codes[items])  # [..., n_levels]
        return torch.cat([behavior_token.unsqueeze(-1), digits], dim=-1)

    def encoder_inputs(self, interaction):
        """``[B, n_slots * L + 1]`` tokens and the behavior of each token (0 for the user token and padding).

        ``user_token: append`` (default): chronological history, then the user token right after the
        latest interaction (then padding): T5 has no absolute positions, so the user token marks
        where the history ends and the latest interaction always sits at the same relative distance
        from it. ``prepend``: the user token first, as the paper (Sec. 3.3). ``none``: no user token
        (its column is padding).
        """
        items, behaviors = interaction[self.ITEM_SEQ], interaction[self.BEHAVIOR_SEQ]  # [B, L]
        batch_size = items.size(0)
        history = self.interaction_tokens(items, behaviors).flatten(1)  # [B, n_slots * L]
        token_behaviors = torch.where(items > 0, behaviors, torch.zeros_like(behaviors))
        token_behaviors = token_behaviors.repeat_interleave(self.n_slots, dim=1)  # [B, n_slots * L]
        extra = history.new_zeros(batch_size, 1)  # the user token's column (PAD with user_token: none)
        no_behavior = token_behaviors.new_zeros(batch_size, 1)  # the user token carries no behavior
        if self.user_token == "prepend":  # the paper (Sec. 3.3): the user token opens the input
            extra[:, 0] = self.user_tokens(interaction[self.USER_ID])
            return torch.cat([extra, history], dim=1), torch.cat([no_behavior, token_behaviors], dim=1)
        tokens = torch.cat([history, extra], dim=1)  # [B, n_slots * L + 1]
        token_behaviors = torch.cat([token_behaviors, no_behavior], dim=1)
        if self.user_token == "append":
            end = (self.n_slots * interaction[self.ITEM_SEQ_LEN]).view(batch_size, 1)  # first slot after the history
            tokens.scatter_(1, end, self.user_tokens(interaction[self.USER_ID]).view(batch_size, 1))
        return tokens, token_behaviors

    # ------------------------------------------------------------------ network
    def encode(self, interaction):
        """Encoder states ``[B, S, D]`` and key padding ``[B, S]`` of each example's history."""
        return self.encode_tokens(*self.encoder_inputs(interaction))

    def encode_tokens(self, tokens, token_behaviors):
        """Encoder states ``[B, S, D]`` and key padding ``[B, S]`` of :meth:`encoder_inputs`' ``[B, S]`` output."""
        padding = tokens == PAD_TOKEN  # [B, S]
        bias = self.encoder_position_bias(tokens.size(1), tokens.size(1)) + padding_bias(padding, torch.float32)
        hidden = self.dropout(self.token_embedding(tokens))  # [B, S, D]
        behavior_vectors = self.behavior_embedding(token_behaviors)  # [B, S, E]
        for layer, block in enumerate(self.encoder_layers):
            hidden = block(hidden, bias, behavior_vectors if self._injects(layer) else None)
        return self.encoder_norm(hidden), padding

    def decode(self, decoder_tokens, decoder_behaviors, memory, memory_padding):
        """Logits ``[B * G, T, vocab]`` of the next token after each position of ``decoder_tokens [B * G, T]``.

        ``decoder_behaviors [B * G, T]``: the behavior injected at each position (0 = none). ``G``
        consecutive rows (beams) share one example's ``memory [B, S, D]`` and ``memory_padding [B, S]``.
        """
        length = decoder_tokens.size(1)
        self_bias = self.decoder_position_bias(length, length) + causal_bias(length, torch.float32,
                                                                             decoder_tokens.device)
        cross_bias = padding_bias(memory_padding, torch.float32)
        routes = torch.arange(length, device=decoder_tokens.device)  # position p generates slot p
        hidden = self.dropout(self.token_embedding(decoder_tokens))  # [B, T, D]
        behavior_vectors = self.behavior_embedding(decoder_behaviors)  # [B, T, E]
        for layer, block in enumerate(self.decoder_layers):
            hidden = block(hidden, memory, self_bias, cross_bias, behavior_vectors if self._injects(layer) else None,
                           routes)
        hidden = self.decoder_norm(hidden)
        if self.tie_embeddings:  # T5: the shared N(0, 1) table reads d_model^-1/2-scaled states
            hidden = hidden * self.d_model ** -0.5
        return self.lm_head(hidden)  # [B, T, vocab]

    def start_decoding(self, memory, memory_padding, n_queries):
        """Per-layer :class:`DecoderCache` and the cross bias, for ``n_queries`` decoded positions per example."""
        cross_bias = padding_bias(memory_padding, torch.float32)
        return [DecoderCache(block.cross_attention, memory, cross_bias, n_queries) for block in self.decoder_layers], \
            cross_bias

    def decode_step(self, decoder_tokens, decoder_behaviors, caches, cross_bias):
        """Logits ``[B * G, vocab]`` of the token after ``decoder_tokens [B * G, t]``, which follow the cached ones.

        :meth:`decode` (in eval mode) at the last position, for beam search: only the new
        positions are computed, their keys and values joining ``caches`` (see
        :class:`DecoderCache`), and only the last position is read out.
        """
        start = caches[0].length
        length = start + decoder_tokens.size(1)
        self_bias = (self.decoder_position_bias(length, length)
                     + causal_bias(length, torch.float32, decoder_tokens.device))[:, :, start:]  # new rows only
        routes = torch.arange(start, length, device=decoder_tokens.device)  # position p generates slot p
        hidden = self.token_embedding(decoder_tokens)  # [B * G, t, D]
        behavior_vectors = self.behavior_embedding(decoder_behaviors)  # [B * G, t, E]
        for layer, (block, cache) in enumerate(zip(self.decoder_layers, caches)):
            hidden = block.step(hidden, cache, self_bias, cross_bias,
                                behavior_vectors if self._injects(layer) else None, routes)
        hidden = self.decoder_norm(hidden[:, -1])
        if self.tie_embeddings:
            hidden = hidden * self.d_model ** -0.5
        return self.lm_head(hidden)  # [B * G, vocab]

    def decoder_behaviors(self, behaviors, length):
        """``[B]`` target behaviors -> ``[B, length]`` injected behaviors: none at BOS, the target after it."""
        injected = behaviors.unsqueeze(1).expand(-1, length).clone()
        injected[:, 0] = 0
        return injected

    def forward(self, interaction, items, behaviors):
        """Teacher-forced log-probabilities ``[B, n_slots]`` of ``[b, c1, c2, c3]`` for the given (item, behavior)."""
        memory, padding = self.encode(interaction)
        return self.sequence_log_probs(memory, padding, items, behaviors)

    def teacher_forced_logits(self, memory, memory_padding, items, behaviors):
        """Targets ``[B, n_slots]`` (``[b, c1, c2, c3]``) and the logits ``[B, n_slots, vocab]`` predicting them."""
        targets = self.interaction_tokens(items, behaviors)  # [B, n_slots]
        decoder_tokens = torch.cat([torch.full_like(targets[:, :1], BOS_TOKEN), targets[:, :-1]], dim=1)
        logits = self.decode(decoder_tokens, self.decoder_behaviors(behaviors, self.n_slots), memory, memory_padding)
        return targets, logits

    def sequence_log_probs(self, memory, memory_padding, items, behaviors):
        targets, logits = self.teacher_forced_logits(memory, memory_padding, items, behaviors)
        return F.log_softmax(logits, dim=-1).gather(2, targets.unsqueeze(2)).squeeze(2)  # [B, n_slots]

    def calculate_loss(self, interaction):
        tokens, token_behaviors = self.encoder_inputs(interaction)
        items, behaviors = interaction[self.POS_ITEM_ID], interaction[self.BEHAVIOR]
        all_targets, all_logits = [], []
        for rows, window in self.length_groups(interaction[self.ITEM_SEQ_LEN], tokens.size(1)):
            memory, padding = self.encode_tokens(tokens[rows, :window], token_behaviors[rows, :window])
            targets, logits = self.teacher_forced_logits(memory, padding, items[rows], behaviors[rows])
            all_targets.append(targets)
            all_logits.append(logits)
        # Eq. 4: next-token cross-entropy, a mean over all tokens: the rows' order does not matter
        return self.loss_fct(torch.cat(all_logits).flatten(0, 1), torch.cat(all_targets).flatten())

    def length_groups(self, lengths, window):
        """``[(rows, token window)]``: the rows whose history length ``n`` has the same ``ceil(log2 n)``, and the
        encoder tokens their longest history needs (at most ``window``); on CPU each group split into chunks of
        at most :data:`CPU_CHUNK_ELEMENTS` activation elements.

        Why: run group by group, each cut to its own longest history, the encoder and the
        cross-attention skip most of the padding of short histories (the input is left-aligned:
        history, user token, then padding, so a cut drops padding only, and the relative
        position bias of the kept tokens depends on their distances alone). Rows are
        independent, so grouping changes no row's result. On retailrocket_f10 (window 20, 81
        tokens) the training batches are 84% real tokens (86% computed when grouped), the test
        batches 35% (41%). Power-of-two groups keep the number of groups at ``log2(window) + 1`` or
        fewer. The chunks keep the largest temporaries (the attention scores, the feed-forward
        layer's inner activations) small enough for malloc to recycle (see
        :data:`CPU_CHUNK_ELEMENTS`); on CUDA the caching allocator does that, and one launch per
        group keeps the device busy. With dropout in training one group (the whole batch) keeps
        the random draws as they were.
        """
        if self.training and self.dropout_prob > 0:
            return [(slice(None), window)]
        group_ids = torch.frexp((lengths - 1).float()).exponent  # bit length of n - 1 = ceil(log2 n), exact
        groups = []
        for group in group_ids.unique().tolist():
            rows = (group_ids == group).nonzero().squeeze(1)
            # history tokens, then the user token's column (user_token: none leaves it padding)
            tokens = min(window, self.n_slots * int(lengths[rows].max()) + 1)
            if lengths.device.type != "cpu":
                groups.append((rows, tokens))
                continue
            widest = max(self.d_model, self.d_ff, self.n_heads * self.d_head, self.n_heads * tokens)  # per token
            groups.extend((chunk, tokens) for chunk in rows.split(max(1, CPU_CHUNK_ELEMENTS // (tokens * widest))))
        if len(groups) == 1:
            return [(slice(None), groups[0][1])]
        return groups

    def _grouped(self, interaction, search):
        """``search(memory, padding, rows)`` per :meth:`length_groups` group, its ``[rows, ...]`` outputs put back in
        batch order."""
        tokens, token_behaviors = self.encoder_inputs(interaction)
        outputs = None
        for rows, window in self.length_groups(interaction[self.ITEM_SEQ_LEN], tokens.size(1)):
            parts = search(*self.encode_tokens(tokens[rows, :window], token_behaviors[rows, :window]), rows)
            if isinstance(rows, slice):
                return parts
            if outputs is None:
                outputs = [part.new_empty((tokens.size(0),) + part.shape[1:]) for part in parts]
            for output, part in zip(outputs, parts):
                output[rows] = part
        return tuple(outputs)

    # ------------------------------------------------------------------ constrained beam search
    def beam_search(self, memory, memory_padding, beam_size, behaviors=None):
        """Top ``beam_size`` valid code paths per example.

        Args:
            memory, memory_padding: the encoder output ``[B, S, D]`` and ``[B, S]``.
            behaviors: ``[B]`` told behaviors (prefix ``[BOS, b]``) or None (prefix ``[BOS]``: the
                behavior is generated too).
        Returns: ``behaviors [B, W]``, ``items [B, W]`` and log-probabilities ``[B, W]`` (``-inf``
            for empty beams when fewer than ``W`` valid paths exist), best first.
        """
        batch_size, device = memory.size(0), memory.device
        # decoded positions per example: the prefix, then up to beam_size per later step
        told = behaviors is not None
        n_queries = (2 if told else 1) + beam_size * (self.tokenizer.n_levels - told)
        caches, cross_bias = self.start_decoding(memory, memory_padding, n_queries)  # see decode_step
        tokens = torch.full((batch_size, 1, 1), BOS_TOKEN, dtype=torch.long, device=device)  # [B, W, T]
        scores = torch.zeros(batch_size, 1, device=device)  # [B, W]
        if behaviors is not None:
            tokens = torch.cat([tokens, self.layout.behavior_tokens(behaviors).view(batch_size, 1, 1)], dim=2)
            beam_behaviors = behaviors.view(batch_size, 1)
        else:
            beam_behaviors = None
        prefix_index = torch.zeros(batch_size, 1, dtype=torch.long, device=device)  # [B, W] trie node per level
        first_level = 0
        if behaviors is None:
            first_level = -1  # step -1 generates the behavior
        injected = torch.zeros(batch_size, dtype=torch.long, device=device) if behaviors is None else behaviors
        new_tokens, new_behaviors = tokens.flatten(0, 1), self.decoder_behaviors(injected, tokens.size(2))  # the prefix
        for level in range(first_level, self.tokenizer.n_levels):
            width, length = tokens.shape[1], tokens.shape[2]
            logits = self.decode_step(new_tokens, new_behaviors, caches, cross_bias)  # beams share their memory
            log_probs = F.log_softmax(logits, dim=-1).view(batch_size, width, -1)  # [B, W, vocab]
            if level < 0:
                offset, n_choices = self.layout.behavior_offset, self.layout.n_behaviors
                candidates = log_probs[..., offset:offset + n_choices]  # [B, W, n_behaviors]
            else:
                offset, n_choices = self.layout.digit_offsets[level], self.tokenizer.level_sizes[level]
                candidates = log_probs[..., offset:offset + n_choices]  # [B, W, K]
                valid = getattr(self, f"valid_next_{level}")[prefix_index]  # [B, W, K]
                candidates = candidates.masked_fill(~valid, -torch.inf)
            total = (scores.unsqueeze(2) + candidates).flatten(1)  # [B, W * C]
            scores, chosen = total.topk(min(beam_size, total.size(1)), dim=1)  # [B, W']
            parent, choice = chosen // n_choices, chosen % n_choices
            tokens = torch.cat([tokens.gather(1, parent.unsqueeze(2).expand(-1, -1, length)),
                                (choice + offset).unsqueeze(2)], dim=2)
            if level < 0:
                beam_behaviors = choice + 1  # behavior ids start at 1
                prefix_index = torch.zeros_like(choice)
            else:
                beam_behaviors = beam_behaviors.gather(1, parent)
                prefix_index = prefix_index.gather(1, parent) * n_choices + choice
            if level + 1 < self.tokenizer.n_levels:
                # the surviving beams keep their parents' cached positions; the next step decodes the chosen
                # token, injected with its beam's behavior (decoder_behaviors: the target behavior after BOS)
                parent_rows = (parent + width * torch.arange(batch_size, device=device).unsqueeze(1)).flatten()
                for cache in caches:
                    cache.reorder(parent_rows)
                new_tokens, new_behaviors = tokens[:, :, -1:].flatten(0, 1), beam_behaviors.reshape(-1, 1)
        digits = tokens[:, :, -self.tokenizer.n_levels:] - torch.tensor(self.layout.digit_offsets, device=device)
        items = self.tokenizer.decode(digits.cpu()).to(device)  # [B, W]
        items = torch.where(torch.isfinite(scores), items, torch.zeros_like(items))
        return beam_behaviors, items, scores

    def _scores_from_beam(self, behaviors, items, scores, n_behavior_rows):
        """Beam results -> ``[B, n_behavior_rows, n_items]`` scores; non-beam entries below every beam entry."""
        batch_size = items.size(0)
        found = torch.isfinite(scores) & (items > 0)
        lowest = torch.where(found, scores, torch.full_like(scores, torch.inf)).min(dim=1).values  # [B]
        floor = torch.where(torch.isfinite(lowest), lowest, torch.zeros_like(lowest)) - OUTSIDE_BEAM_MARGIN
        table = floor.view(batch_size, 1, 1).expand(batch_size, n_behavior_rows, self.n_items).clone()
        rows = behaviors if n_behavior_rows > 1 else torch.zeros_like(behaviors)
        flat = (rows * self.n_items + items).masked_fill(~found, 0)  # [B, W]
        values = torch.where(found, scores, floor.unsqueeze(1).expand_as(scores))
        table.view(batch_size, -1).scatter_(1, flat, values)
        table[:, :, 0] = floor.view(batch_size, 1)  # the padding item is never a beam item
        return table

    def _joint_beam(self, interaction):
        """The told-nothing beam of a batch, computed once per batch and weights.

        ``next_item`` and ``behavior_item`` both need this beam for the same users; the evaluator
        asks for them in two passes, so the second pass reuses the first's beams. The memo is keyed
        by the batch's inputs and stamped with the beam settings and the parameters' in-place
        version counters, so a change of beam width or of weights (an optimizer step,
        ``load_state_dict``) empties it.
        """
        stamp = (self.beam_size, self.behavior_aware_allocation,
                 tuple(parameter._version for parameter in self.parameters()))
        if stamp != self._beam_memo_stamp:
            self._beam_memo, self._beam_memo_stamp = {}, stamp
        fingerprint = hashlib.sha1()
        for field in (self.USER_ID, self.ITEM_SEQ, self.BEHAVIOR_SEQ, self.ITEM_SEQ_LEN):
            fingerprint.update(interaction[field].cpu().numpy().tobytes())
        key = fingerprint.hexdigest()
        if key in self._beam_memo:
            return tuple(value.to(interaction[self.ITEM_SEQ].device) for value in self._beam_memo.pop(key))
        beam = self._grouped(interaction, lambda memory, padding, rows: (
            self._allocated_beam(memory, padding) if self.behavior_aware_allocation
            else self.beam_search(memory, padding, self.beam_size)))
        if len(self._beam_memo) < MAX_MEMO_BATCHES:
            self._beam_memo[key] = tuple(value.cpu() for value in beam)
        return beam

    def _allocated_beam(self, memory, padding):
        """Section 4.4.2: share the beam's slots across behaviors by their predicted probability."""
        batch_size = memory.size(0)
        bos = torch.full((batch_size, 1), BOS_TOKEN, dtype=torch.long, device=memory.device)
        logits = self.decode(bos, torch.zeros_like(bos), memory, padding)[:, -1]
        offset = self.layout.behavior_offset
        behavior_log_probs = F.log_softmax(logits, dim=-1)[:, offset:offset + self.layout.n_behaviors]  # [B, nB]
        quota = largest_remainder_allocation(behavior_log_probs.exp(), self.beam_size)  # [B, nB]
        parts = []
        for behavior in range(1, self.layout.n_behaviors + 1):
            told = torch.full((batch_size,), behavior, dtype=torch.long, device=memory.device)
            _, items, scores = self.beam_search(memory, padding, self.beam_size, told)  # [B, W]
            keep = torch.arange(items.size(1), device=memory.device) < quota[:, behavior - 1:behavior]
            scores = scores + behavior_log_probs[:, behavior - 1:behavior]  # joint log p(b, item)
            parts.append((told.view(-1, 1).expand_as(items), items, scores.masked_fill(~keep, -torch.inf)))
        return tuple(torch.cat(values, dim=1) for values in zip(*parts))

    # ------------------------------------------------------------------ scores for the evaluator
    def full_sort_predict(self, interaction):
        if self.BEHAVIOR in interaction:  # told the behavior: prefix [BOS, b]
            told = interaction[self.BEHAVIOR]
            behaviors, items, scores = self._grouped(interaction, lambda memory, padding, rows: self.beam_search(
                memory, padding, self.beam_size, told[rows]))
            return self._scores_from_beam(behaviors, items, scores, 1).squeeze(1)  # [B, n_items]
        pair_scores = self._scores_from_beam(*self._joint_beam(interaction), self.n_behaviors)
        floor = pair_scores[:, 1:].amin(dim=(1, 2))  # [B]
        in_beam = pair_scores[:, 1:] > floor.view(-1, 1, 1)
        item_scores = torch.logsumexp(pair_scores[:, 1:].masked_fill(~in_beam, -torch.inf), dim=1)  # [B, n_items]
        return torch.where(torch.isfinite(item_scores), item_scores, floor.view(-1, 1))  # [B, n_items]

    def full_sort_predict_behavior_item(self, interaction):
        return self._scores_from_beam(*self._joint_beam(interaction), self.n_behaviors)  # [B, nB+1, n_items]


def largest_remainder_allocation(probabilities, total):
    """``[B, C]`` probabilities -> ``[B, C]`` integer shares summing to ``total`` (Hamilton's method)."""
    exact = probabilities / probabilities.sum(dim=1, keepdim=True) * total
    shares = exact.floor().long()
    remainder = total - shares.sum(dim=1)  # [B]
    order = (exact - shares).argsort(dim=1, descending=True)  # [B, C]
    rank = order.argsort(dim=1)
    return shares + (rank < remainder.unsqueeze(1)).long()
