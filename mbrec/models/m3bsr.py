"""M3BSR: multi-modal multi-behavior sequential recommendation with conditional diffusion denoising.

Paper: "Multi-Modal Multi-Behavior Sequential Recommendation with Conditional Diffusion-Based
Feature Denoising" (arXiv 2508.05352). There is no official code; facts the paper leaves open follow
``shared/reference/models.md`` (M3BSR section). Choices of ours are marked "(ours)".

Streams. Every history position has one vector per *stream*: the item ID embedding, and one per
modality of the dataset's item features (:mod:`mbrec.data.item_features`: a dense feature projected
by a linear map, or a category embedded; items without a feature get zero).

1. Conditional Diffusion Modality Denoising. Per modality, the item's modal vector ``x`` is
   denoised by a short DDPM chain (linear betas ``beta_start..beta_end`` over ``diffusion_steps``
   T, epsilon prediction) whose noise predictor cross-attends from the noisy modal vector (query)
   to the item's ID embedding (key/value) plus a step embedding
   (:class:`mbrec.layers.diffusion.ConditionalFeatureDenoiser`). Training loss: DDPM's epsilon MSE
   on ``x`` (the target ``x`` is detached, so the loss trains the denoiser and the ID condition,
   never collapses the modal projection (ours)). Use: the observed ``x`` is read as the noisiest
   sample ``x_{T-1}`` and sampled down to ``x_0`` with deterministic DDIM, i.e. pulled towards what
   the ID embedding says the item is. Item-level: in training over the batch's distinct items,
   in evaluation over all items once per evaluation (cached).
2. Conditional Diffusion Behavior Denoising. In every stream, the vectors at shallow-behavior
   positions (``shallow_behaviors``, e.g. pv/view/click) are denoised by a second chain of the same
   form whose condition is the same stream's deep-behavior positions of the window
   (``deep_behaviors``; default: every behavior that is not shallow); deep positions are kept.
3. Multi-Expert Interest Extraction. A Transformer expert per (behavior, stream) reads the stream's
   positions of that behavior (causal attention restricted to them; its interest is the output at
   the behavior's last position in the window); ``n_shared_experts`` shared Transformer experts
   read all positions of the mean of the streams. A softmax router over all experts, conditioned on
   the target (asked) behavior and the shared interest, weights them; experts of behaviors absent
   from the window get weight 0 (:class:`mbrec.layers.moe.BehaviorConditionedRouter`). The
   disentangling ("contrastive") loss is the mean squared cosine between the shared interest and
   each available specific interest (models.md: "contrastive/orthogonality loss"; the exact form
   is not published (ours)).

Input tokens of the experts: stream vector + position embedding + history-behavior embedding,
LayerNorm, dropout. The query is the routed interest fused with the asked-behavior embedding by
a residual MLP (as in SASRec_MB; the asked behavior is hidden with ``behavior_dropout_prob`` in
training so ``next_item`` works); scores are dot products with the item ID embeddings.

Loss = CE + ``modality_diffusion_weight`` * modality loss + ``behavior_diffusion_weight`` * behavior
loss + ``contrastive_weight`` * disentangling loss (models.md: about 1e-3 and 1e-4).

Cost (``fast_paths``, on by default; ``benchmarks/m3bsr_fast_paths.py`` times both ways,
``tests/test_m3bsr_speed.py`` checks they agree): the same computation without the work whose result
is thrown away. The denoising chains compute only the tokens they change (the shallow positions;
the items with a feature), their condition's keys and values once per batch, not at every step,
and the step embedding once per step, not once per row; the experts compute their last layer at
the read position only (:mod:`mbrec.layers.read_position`). Every dropout mask and every noise is
drawn whole, as the plain computation draws it, so seeded runs keep their random streams; the
outputs agree up to float rounding. ``fast_paths: False`` runs the plain computation.

Switches (ablations): ``modality_denoising``, ``behavior_denoising``, ``contrastive`` (booleans),
``diffusion_steps`` (the paper's T in {1, 5, 10, 15}). With no modal features (``modal_features:
auto`` and none found, or ``[]``) the model runs ID-only with modality denoising off; its log and
its ``run_notes`` (stored in the run record as ``model_notes``) say so.
"""

import logging

import torch
from torch import nn
from torch.nn import functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder

from mbrec.data.item_features import CATEGORICAL, load_item_features
from mbrec.layers import bert_init
from mbrec.layers.behavior import MultiBehaviorEmbedding
from mbrec.layers.diffusion import ConditionalFeatureDenoiser, QuerySelection
from mbrec.layers.moe import BehaviorConditionedRouter
from mbrec.layers.read_position import encoder_output_at
from mbrec.models import PredictFromFullSort

logger = logging.getLogger("mbrec")

ATTENTION_BLOCKED = -10000.0  # RecBole's additive attention mask value
EVAL_ITEM_CHUNK = 8192        # items denoised at once when the evaluation table is built


class M3BSR(PredictFromFullSort, SequentialRecommender):
    """Modality denoising, behavior denoising and behavior-routed multi-expert interests."""

    behavior_conditioned = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        hidden = config["hidden_size"]
        self.hidden_size = hidden
        self.initializer_range = config["initializer_range"]
        self.n_behaviors = dataset.n_behaviors  # with padding: ids 1..n_behaviors - 1
        self.BEHAVIOR_SEQ = config["BEHAVIOR_FIELD"] + config["LIST_SUFFIX"]
        self.behavior_vocab = list(dataset.behavior_vocab)
        for key in ("modality_denoising", "behavior_denoising", "contrastive", "fast_paths"):
            if not isinstance(config[key], bool):
                raise ValueError(f"config key '{key}' must be True or False, got {config[key]!r}")
        steps = config["diffusion_steps"]
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"diffusion_steps must be a positive integer, got {steps!r}")

        self.features = load_item_features(dataset, config["modal_features"], config["modal_feature_path"])
        self.modality_denoising = bool(config["modality_denoising"]) and bool(self.features)
        self.behavior_denoising = bool(config["behavior_denoising"])
        self.contrastive = bool(config["contrastive"])
        self.fast_paths = config["fast_paths"]  # the same computation, skipping discarded work (module doc)
        self.modality_weight = float(config["modality_diffusion_weight"])
        self.behavior_weight = float(config["behavior_diffusion_weight"])
        self.contrastive_weight = float(config["contrastive_weight"])

        # --- streams: item IDs, then one per modality
        self.item_embedding = nn.Embedding(self.n_items, hidden, padding_idx=0)
        self.modal_encoders = nn.ModuleList()
        for index, modality in enumerate(self.features.modalities):
            self.register_buffer(f"modal_values_{index}", torch.as_tensor(modality.values), persistent=False)
            self.register_buffer(f"modal_mask_{index}", torch.as_tensor(modality.has_feature), persistent=False)
            if modality.kind == CATEGORICAL:
                self.modal_encoders.append(nn.Embedding(modality.n_categories + 1, hidden, padding_idx=0))
            else:
                self.modal_encoders.append(nn.Linear(modality.dim, hidden))
        self.n_streams = 1 + len(self.features.modalities)
        self.position_embedding = nn.Embedding(self.max_seq_length, hidden)
        self.behaviors = MultiBehaviorEmbedding(config, self.n_behaviors, hidden)
        self.token_norm = nn.LayerNorm(hidden, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])

        # --- the two conditional diffusion layers
        def denoiser():
            return ConditionalFeatureDenoiser(hidden, config["n_heads"], config["inner_size"], steps,
                                              config["beta_start"], config["beta_end"], config["attn_dropout_prob"])

        self.modality_denoisers = nn.ModuleList(denoiser() for _ in self.features.modalities) \
            if self.modality_denoising else nn.ModuleList()
        self.shallow, self.deep = self._behavior_levels(config, dataset)
        self.register_buffer("is_shallow", self._behavior_flags(self.shallow), persistent=False)
        self.register_buffer("is_deep", self._behavior_flags(self.deep), persistent=False)
        self.behavior_denoiser = denoiser() if self.behavior_denoising else None

        # --- multi-expert interest extraction
        def expert():
            return TransformerEncoder(config["expert_layers"], config["n_heads"], hidden, config["inner_size"],
                                      config["hidden_dropout_prob"], config["attn_dropout_prob"],
                                      config["hidden_act"], config["layer_norm_eps"])

        self.n_real_behaviors = self.n_behaviors - 1
        self.specific_experts = nn.ModuleList(expert() for _ in range(self.n_real_behaviors * self.n_streams))
        n_shared = config["n_shared_experts"]
        if not isinstance(n_shared, int) or n_shared < 1:
            raise ValueError(f"n_shared_experts must be >= 1 (the router needs an expert always available), "
                             f"got {n_shared!r}")
        self.shared_experts = nn.ModuleList(expert() for _ in range(n_shared))
        self.router = BehaviorConditionedRouter(hidden, self.n_behaviors, len(self.specific_experts) + n_shared)
        self.query_fusion = nn.Sequential(nn.Linear(2 * hidden, config["inner_size"]), nn.GELU(),
                                          nn.Linear(config["inner_size"], hidden))
        self.loss_fct = nn.CrossEntropyLoss()
        self._eval_modal_tables = None

        self.apply(self._init_weights)
        self.behaviors.zero_padding()
        self.run_notes = {
            "modal_features": self.features.describe(),
            "modalities": self.features.names,
            "id_only": not self.features,
            "modality_denoising": self.modality_denoising,
            "behavior_denoising": self.behavior_denoising,
            "contrastive": self.contrastive,
            "diffusion_steps": steps,
            "shallow_behaviors": self.shallow,
            "deep_behaviors": self.deep,
        }
        if not self.features:
            logger.info("M3BSR: no modal item features found -> ID-only, modality denoising off")
        logger.info(f"M3BSR: {self.run_notes}")

    # ------------------------------------------------------------------ setup
    def _behavior_levels(self, config, dataset):
        """(shallow, deep) behavior names of this dataset; deep defaults to every non-shallow one."""
        vocabulary = list(dataset.behavior_vocab)
        shallow = [b for b in vocabulary if b in (config["shallow_behaviors"] or [])]
        deep = [b for b in vocabulary if b in config["deep_behaviors"]] if config["deep_behaviors"] is not None \
            else [b for b in vocabulary if b not in shallow]
        if set(shallow) & set(deep):
            raise ValueError(f"behaviors {sorted(set(shallow) & set(deep))} are both shallow and deep")
        if self.behavior_denoising and (not shallow or not deep):
            raise ValueError(f"behavior denoising needs shallow and deep behaviors among {vocabulary}; got shallow "
                             f"{shallow}, deep {deep} (set shallow_behaviors / deep_behaviors, or "
                             f"behavior_denoising=False)")
        return shallow, deep

    def _behavior_flags(self, names):
        """[n_behaviors] bool by behavior id (0 = padding, never flagged)."""
        return torch.tensor([False] + [name in names for name in self.behavior_vocab], dtype=torch.bool)

    def _init_weights(self, module):
        bert_init(module, self.initializer_range)

    def train(self, mode=True):
        self._eval_modal_tables = None  # weights may change: the denoised item table is rebuilt
        return super().train(mode)

    # ------------------------------------------------------------------ modality denoising
    def raw_modal_vectors(self, index, items):
        """[N, H] projected features of modality ``index`` for item ids ``items`` [N] (0 without a feature)."""
        values = getattr(self, f"modal_values_{index}")[items]
        mask = getattr(self, f"modal_mask_{index}")[items].unsqueeze(-1)
        return self.modal_encoders[index](values) * mask

    def modal_vectors(self, index, items):
        """[N, H] (denoised, when on) vectors of modality ``index``, and the diffusion loss on them."""
        raw = self.raw_modal_vectors(index, items)
        if not self.modality_denoising:
            return raw, raw.new_zeros(())
        has_feature = getattr(self, f"modal_mask_{index}")[items]
        condition = self.item_embedding(items).unsqueeze(1)  # [N, 1, H]: the ID embedding guides
        denoiser = self.modality_denoisers[index]
        if self.fast_paths:  # items without a feature are zero in the end: only the others are denoised
            selection = QuerySelection.of(has_feature.unsqueeze(1))
            prepared = denoiser.denoiser.prepare_condition(condition)
            loss = denoiser.loss_selected(raw.detach().unsqueeze(1), prepared, selection) if self.training \
                else raw.new_zeros(())
            denoised = denoiser.denoise_selected(raw.index_select(0, selection.index), prepared, selection)
            return raw.new_zeros(raw.shape).index_copy(0, selection.index, denoised), loss
        loss = denoiser.loss(raw.detach().unsqueeze(1), condition, mask=has_feature.unsqueeze(1)) \
            if self.training else raw.new_zeros(())
        denoised = denoiser.denoise(raw.unsqueeze(1), condition).squeeze(1)
        return denoised * has_feature.unsqueeze(-1), loss

    def _modal_tables(self):
        """Every item's modal vectors (evaluation only; built once per evaluation)."""
        if self._eval_modal_tables is None:
            all_items = torch.arange(self.n_items, device=self.item_embedding.weight.device)
            with torch.no_grad():
                self._eval_modal_tables = [
                    torch.cat([self.modal_vectors(index, chunk)[0] for chunk in all_items.split(EVAL_ITEM_CHUNK)])
                    for index in range(len(self.features.modalities))]
        return self._eval_modal_tables

    def stream_vectors(self, item_seq):
        """[S, B, L, H] item vectors of every stream, and the modality diffusion loss."""
        streams = [self.item_embedding(item_seq)]
        loss = streams[0].new_zeros(())
        if self.features:
            if self.training:
                items, inverse = torch.unique(item_seq, return_inverse=True)
                for index in range(len(self.features.modalities)):
                    vectors, modality_loss = self.modal_vectors(index, items)
                    streams.append(vectors[inverse])
                    loss = loss + modality_loss
            else:
                streams.extend(table[item_seq] for table in self._modal_tables())
        return torch.stack(streams), loss

    # ------------------------------------------------------------------ behavior denoising
    def denoise_behaviors(self, streams, behavior_seq, valid):
        """Shallow positions of every stream denoised under the deep ones; returns (streams, loss)."""
        if not self.behavior_denoising:
            return streams, streams.new_zeros(())
        n_streams, batch, length, hidden = streams.shape
        shallow = (self.is_shallow[behavior_seq] & valid).repeat(n_streams, 1)  # [S*B, L]
        deep_padding = ~(self.is_deep[behavior_seq] & valid).repeat(n_streams, 1)
        flat = streams.reshape(n_streams * batch, length, hidden)
        if self.fast_paths:  # deep and padded positions are kept as they are: only shallow ones are denoised
            selection = QuerySelection.of(shallow)
            prepared = self.behavior_denoiser.denoiser.prepare_condition(flat, deep_padding)
            loss = self.behavior_denoiser.loss_selected(flat.detach(), prepared, selection) if self.training \
                else flat.new_zeros(())
            tokens = flat.reshape(-1, hidden)
            denoised = self.behavior_denoiser.denoise_selected(tokens.index_select(0, selection.index), prepared,
                                                                selection)
            return tokens.index_copy(0, selection.index, denoised).view(n_streams, batch, length, hidden), loss
        loss = self.behavior_denoiser.loss(flat.detach(), flat, deep_padding, mask=shallow) \
            if self.training else flat.new_zeros(())
        denoised = self.behavior_denoiser.denoise(flat, flat, deep_padding)
        flat = torch.where(shallow.unsqueeze(-1), denoised, flat)
        return flat.view(n_streams, batch, length, hidden), loss

    # ------------------------------------------------------------------ experts
    @staticmethod
    def _attention_mask(allowed_keys):
        """Causal additive mask [B, 1, L, L] over the keys allowed per row ``allowed_keys`` [B, L]."""
        length = allowed_keys.size(1)
        causal = torch.ones(length, length, dtype=torch.bool, device=allowed_keys.device).tril()
        allowed = causal.unsqueeze(0) & allowed_keys.unsqueeze(1)  # [B, L, L]
        return torch.where(allowed, 0.0, ATTENTION_BLOCKED).unsqueeze(1)

    @staticmethod
    def _last_position(selected):
        """[B] index of the last True of each row of ``selected`` [B, L] (0 where none) and [B] any."""
        positions = torch.arange(selected.size(1), device=selected.device).expand_as(selected)
        return torch.where(selected, positions, -1).max(dim=1).values.clamp(min=0), selected.any(dim=1)

    def interests(self, tokens, behavior_seq, valid, lengths):
        """Expert interests [B, K, H] (specific (behavior, stream) experts first, then shared) and availability [B, K]."""
        interests, available = [], []
        for behavior in range(1, self.n_behaviors):
            selected = (behavior_seq == behavior) & valid
            last, present = self._last_position(selected)
            mask = self._attention_mask(selected)
            for stream in range(self.n_streams):
                expert = self.specific_experts[(behavior - 1) * self.n_streams + stream]
                interests.append(self._expert_output(expert, tokens[stream], mask, last) * present.unsqueeze(-1))
                available.append(present)
        shared_tokens = tokens.mean(dim=0)
        mask = self._attention_mask(valid)
        for expert in self.shared_experts:
            interests.append(self._expert_output(expert, shared_tokens, mask, (lengths - 1).clamp(min=0)))
            available.append(torch.ones_like(valid[:, 0]))
        return torch.stack(interests, dim=1), torch.stack(available, dim=1)

    def _expert_output(self, expert, tokens, mask, read_positions):
        """``[B, H]``: the expert's output at ``read_positions``; only the interest is read there."""
        if self.fast_paths:
            return encoder_output_at(expert, tokens, mask, read_positions)
        output = expert(tokens, mask, output_all_encoded_layers=True)[-1]
        return output[torch.arange(tokens.size(0), device=tokens.device), read_positions]

    def disentangling_loss(self, interests, available):
        """Mean squared cosine between the shared interest and each available specific interest."""
        n_specific = len(self.specific_experts)
        shared = interests[:, n_specific:].mean(dim=1, keepdim=True)  # [B, 1, H]
        cosine = F.cosine_similarity(interests[:, :n_specific], shared, dim=-1)  # [B, n_specific]
        mask = available[:, :n_specific].to(cosine.dtype)
        return (cosine.square() * mask).sum() / mask.sum().clamp(min=1.0)

    # ------------------------------------------------------------------ forward
    def encode(self, interaction):
        """Query [B, H], the auxiliary losses (zero outside training) and the router weights [B, K]."""
        lengths = interaction[self.ITEM_SEQ_LEN]
        # Sequences are left-aligned: columns past the longest one are padding everywhere, and
        # every layer here costs (columns)^2, so they are cut (the result is the same).
        width = max(int(lengths.max()), 1)
        item_seq = interaction[self.ITEM_SEQ][:, :width]  # [B, L']
        behavior_seq = interaction[self.BEHAVIOR_SEQ][:, :width]
        valid = item_seq > 0
        streams, modality_loss = self.stream_vectors(item_seq)  # [S, B, L, H]
        streams, behavior_loss = self.denoise_behaviors(streams, behavior_seq, valid)
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        context = self.position_embedding(positions).unsqueeze(0) + self.behaviors.history(behavior_seq)  # [B, L, H]
        tokens = self.dropout(self.token_norm(streams + context.unsqueeze(0)))
        interests, available = self.interests(tokens, behavior_seq, valid, lengths)
        asked = self.behaviors.asked_behavior(interaction)  # [B]; 0 when told nothing
        summary = interests[:, len(self.specific_experts):].mean(dim=1)
        weights = self.router(summary, asked, available)  # [B, K]
        interest = (weights.unsqueeze(-1) * interests).sum(dim=1)
        query = interest + self.query_fusion(torch.cat([interest, self.behaviors.asked(asked)], dim=-1))
        contrastive_loss = self.disentangling_loss(interests, available) if self.contrastive and self.training \
            else query.new_zeros(())
        losses = {"modality": modality_loss, "behavior": behavior_loss, "contrastive": contrastive_loss}
        return query, losses, weights

    def router_weights(self, interaction):
        """[B, K] router weights (specific experts by behavior then stream, then shared): diagnostics, tests."""
        return self.encode(interaction)[2]

    def calculate_loss(self, interaction):
        query, losses, _ = self.encode(interaction)
        logits = query @ self.item_embedding.weight.T  # [B, n_items]
        return (self.loss_fct(logits, interaction[self.POS_ITEM_ID]) + self.modality_weight * losses["modality"]
                + self.behavior_weight * losses["behavior"] + self.contrastive_weight * losses["contrastive"])

    def full_sort_predict(self, interaction):
        query = self.encode(interaction)[0]
        return query @ self.item_embedding.weight.T  # [B, n_items]
