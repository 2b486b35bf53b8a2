"""FatsMB: latent preference diffusion from behavior-agnostic to behavior-specific.

Paper: Yang, Li, Sheng, Cao, Lin, Wang, Yang, Liu, Liu, "From Agnostic to Specific: Latent
Preference Diffusion for Multi-Behavior Sequential Recommendation", KDD 2026. Facts the paper
leaves open follow ``shared/reference/models.md`` (FatsMB section) and the official configs.

Input. The history (items and behaviors, left-aligned, ``n`` real positions) gets one more slot at
position ``n`` for the interaction to predict: its item is the ``[mask]`` item (id ``n_items``,
BERT4Rec's convention) and its behavior is the asked behavior or the ``[mask-behavior]`` token
(id ``n_behaviors``). The encoder runs over ``L + 1`` positions so no history is dropped.

MBAE (Sec. 3.1). A bidirectional post-LN Transformer (FFN 4d, ReLU). ``position_encoding``:
- ``ape``: item + behavior + absolute position embeddings (Eq. 9);
- ``rope``: item + behavior embeddings, RoPE on q and k (Eq. 10-11);
- ``barope``: item embeddings only; RoPE on q and k, then the behavior scale ``h(b)`` on the
  rotated q and k (Eq. 13), ``h(b) = 1 + W e_b`` per layer (the code uses a bias-free linear map
  ``W e_b``; the paper says MLP; the 1 makes BaRoPE start as RoPE) with one factor per rotated
  pair, so that Eq. 30
  (scores relative in position) holds exactly; the code's one factor per dimension breaks it
  (see :mod:`mbrec.layers.attention`).
The encoder output at the slot is the preference: ``z_b`` with the true behavior there,
``z_null`` with ``[mask-behavior]`` there. The decoder (Eq. 14) is ``MLP(d -> 2d -> ReLU -> d)``
followed by the dot product with the tied item embeddings plus an item bias.
Cloze pretraining: the slot is always a prediction position (its item is the example's target);
every history position is masked too with probability ``mask_prob`` (rho); at each masked position
the behavior becomes ``[mask-behavior]`` with probability ``behavior_mask_prob`` (sigma), so the
encoder learns ``z_b`` and ``z_null`` in one space (Alg. 1, lines 3-12).

Latent diffusion (Sec. 3.2). Target ``z_0 = z_b``, condition ``z_null`` and the target behavior;
the forward chain and DDIM live in :mod:`mbrec.layers.diffusion`. ``prediction_target`` ``x0``
(the code; default) or ``epsilon`` (Eq. 16), loss ``smoothl1`` (the code; default) or ``mse``
(Eq. 16). Classifier-free guidance: the behavior condition is dropped (id 0, the null behavior)
with ``condition_dropout_prob`` in training; at inference each DDIM step combines conditional
and unconditional outputs by Eq. 17 (``guidance_sign: minus``) or the code's plus sign.

Denoiser (Sec. 3.3), ``denoiser``:
- ``mcgln`` (Eq. 21-23): per layer ``c = e_b + sinusoid(t)``, ``SiLU -> Linear(d, 6d)`` gives
  (alpha, beta, gamma) for two residual blocks: ``x + alpha1 * MLP([LN(x)(1+gamma1)+beta1 ; z_null])``
  (MLP 2d -> 2d -> GELU -> d), then ``x + alpha2 * MoE(LN(x)(1+gamma2)+beta2, b)`` with CGC experts
  hard-routed by the target behavior, shared experts only for the null behavior
  (:class:`mbrec.layers.moe.TaskRoutedMoE`);
- ``adaln``: the same without MoE (one ``Linear(d, d)`` in the second block);
- ``mlp``: ``x + MLP([x ; z_null ; c])`` per layer, all conditions concatenated.

Training (Alg. 1, :class:`mbrec.training.staged_trainer.StagedTrainer`): stage ``mbae`` trains
encoder and decoder on the Cloze task; stage ``diffusion`` trains only the denoiser (and its
behavior condition embeddings) with encoder and decoder frozen; stage ``finetune`` trains only the
decoder MLP and item bias on next-item prediction from the generated ``z_0`` (item embeddings are
part of the frozen encoder). Frozen parts are kept in eval mode (no dropout), so the diffusion
targets are deterministic.

Training unit (``train_unit``; models.md, "training unit"). ``sequence`` (default, the reference
code's): a batch holds users' training windows (``MAX_ITEM_LIST_LENGTH`` rows; ``ape``: one more, so
that position L, a full window's slot, is trained), every real position
masked with ``mask_prob`` (at least one per window), no next-item slot; all three stages learn at
every masked position: stage 1 reconstructs the items, stage 2 denoises ``z_b`` of every masked
position (``z_null``: the same window with the masked positions' behaviors hidden), stage 3 decodes
the ``z_0`` generated for every masked position. ``prefix``: one example per (history, target)
with the slot above; stages 2 and 3 learn at the slot only.

Inference (Alg. 2). After the ``mbae`` stage (and with ``stage: mbae``) the model scores items from
``z_b`` of the MBAE directly, told behavior at the slot (the paper's "MBAE" row). After the
diffusion stages: encode ``z_null``, run DDIM from Gaussian noise every ``ddim_skip`` steps under
guidance for the asked behavior, decode. Told nothing (``next_item``), the generation is
unconditional. The sampling noise is drawn from a generator reseeded with ``sampling_seed``
(default: the run's seed) each time the model enters eval mode, so every evaluation of the same
weights sees the same noise; other seeds measure how much the metrics move with the noise.
"""

import torch
from torch import nn
from torch.nn import functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from mbrec.models import PredictFromFullSort, SeededSampling
from mbrec.training.staged_trainer import StagedTrainer
from mbrec.layers import bert_init
from mbrec.data.dataset import train_unit
from mbrec.layers.cloze import real_positions, sequence_cloze_mask
from mbrec.layers.attention import TransformerEncoder
from mbrec.layers.diffusion import GaussianDiffusion, beta_schedule, classifier_free_guidance, timestep_embedding
from mbrec.layers.modulation import AdaLNModulation, modulate
from mbrec.layers.moe import TaskRoutedMoE

POSITION_ENCODINGS = ("ape", "rope", "barope")
DENOISERS = ("mlp", "adaln", "mcgln")
PREDICTION_TARGETS = ("x0", "epsilon")
DIFFUSION_LOSSES = {"smoothl1": F.smooth_l1_loss, "mse": F.mse_loss}
DECODER_EXPANSION = 2      # decoder MLP d -> 2d -> d (models.md)
DENOISER_EXPANSION = 2     # MCGLN block-1 MLP 2d -> 2d -> d (models.md)
ADALN_VECTORS = 6          # (alpha, beta, gamma) for each of the two blocks (Eq. 23)
NULL_BEHAVIOR = 0          # the dropped condition of classifier-free guidance (= padding id)


def _choice(config, key, allowed):
    value = config[key]
    if value not in allowed:
        raise ValueError(f"config key '{key}' must be one of {list(allowed)}, got {value!r}")
    return value


class MultiBehaviorEncoder(nn.Module):
    """The MBAE encoder: ``[B, L'] items, [B, L'] behaviors, [B, L'] padding mask -> [B, L', D]``."""

    def __init__(self, n_items, n_behavior_tokens, max_length, config):
        super().__init__()
        hidden = config["hidden_size"]
        self.position_encoding = _choice(config, "position_encoding", POSITION_ENCODINGS)
        self.item_embedding = nn.Embedding(n_items + 1, hidden, padding_idx=0)  # + [mask] item
        self.behavior_embedding = nn.Embedding(n_behavior_tokens, hidden, padding_idx=0)
        self.position_embedding = nn.Embedding(max_length, hidden) if self.position_encoding == "ape" else None
        self.embedding_norm = nn.LayerNorm(hidden, eps=config["layer_norm_eps"])
        self.embedding_dropout = nn.Dropout(config["hidden_dropout_prob"])
        rotary = self.position_encoding in ("rope", "barope")
        self.transformer = TransformerEncoder(
            config["n_layers"], hidden, config["n_heads"], config["inner_size"], config["hidden_dropout_prob"],
            config["attn_dropout_prob"], config["hidden_act"], config["layer_norm_eps"], rotary, config["rope_base"])
        # Eq. 13: h(b), one bias-free map per layer to one factor per rotated pair of q and k
        self.behavior_scales = (nn.ModuleList(nn.Linear(hidden, hidden // 2, bias=False)
                                              for _ in range(config["n_layers"]))
                                if self.position_encoding == "barope" else None)

    def forward(self, items, behaviors, padding_mask):
        hidden = self.item_embedding(items)  # [B, L', D]
        if self.position_encoding != "barope":  # BaRoPE carries behavior only through h(b)
            hidden = hidden + self.behavior_embedding(behaviors)
        if self.position_embedding is not None:
            positions = torch.arange(items.size(1), device=items.device)
            hidden = hidden + self.position_embedding(positions).unsqueeze(0)
        hidden = self.embedding_dropout(self.embedding_norm(hidden))
        scales = None
        if self.behavior_scales is not None:
            behavior = self.behavior_embedding(behaviors)  # [B, L', D]
            # h(b) = 1 + W e_b: BaRoPE starts as plain RoPE and learns how behaviors reweight it
            # (a random h, as the code's N(0, 1) map, scrambles the attention signs at the start)
            scales = [1 + scale(behavior) for scale in self.behavior_scales]  # [B, L', D/2] each
        return self.transformer(hidden, padding_mask, scales)


class PreferenceDecoder(nn.Module):
    """Latent preference ``[N, D]`` -> item scores ``[N, n_items]`` against the tied item embeddings."""

    def __init__(self, hidden, n_items):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(hidden, DECODER_EXPANSION * hidden), nn.ReLU(),
                                 nn.Linear(DECODER_EXPANSION * hidden, hidden))
        self.item_bias = nn.Parameter(torch.zeros(n_items))

    def forward(self, preference, item_embeddings):
        return self.mlp(preference) @ item_embeddings.T + self.item_bias  # [N, n_items]


class MCGLNBlock(nn.Module):
    """One MCGLN layer (Eq. 21-23); ``use_moe=False`` is the AdaLN ablation."""

    def __init__(self, hidden, n_behaviors, n_shared, n_private, use_moe):
        super().__init__()
        self.modulation = AdaLNModulation(hidden, hidden, ADALN_VECTORS)
        self.norm_subject = nn.LayerNorm(hidden, elementwise_affine=False)
        self.norm_behavior = nn.LayerNorm(hidden, elementwise_affine=False)
        self.subject_mlp = nn.Sequential(nn.Linear(2 * hidden, DENOISER_EXPANSION * hidden), nn.GELU(),
                                         nn.Linear(DENOISER_EXPANSION * hidden, hidden))
        self.use_moe = use_moe
        self.behavior_ffn = (TaskRoutedMoE(hidden, n_behaviors, n_shared, n_private) if use_moe
                             else nn.Linear(hidden, hidden))

    def forward(self, x, condition, subject, behavior):
        alpha_1, beta_1, gamma_1, alpha_2, beta_2, gamma_2 = self.modulation(condition)
        normed = modulate(self.norm_subject(x), beta_1, gamma_1)
        x = x + alpha_1 * self.subject_mlp(torch.cat([normed, subject], dim=-1))  # Eq. 21
        normed = modulate(self.norm_behavior(x), beta_2, gamma_2)
        routed = self.behavior_ffn(normed, behavior) if self.use_moe else self.behavior_ffn(normed)
        return x + alpha_2 * routed  # Eq. 22


class ConcatMLPBlock(nn.Module):
    """The MLP ablation: ``x + MLP([x ; z_null ; c])``."""

    def __init__(self, hidden):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3 * hidden, DENOISER_EXPANSION * hidden), nn.GELU(),
                                 nn.Linear(DENOISER_EXPANSION * hidden, hidden))

    def forward(self, x, condition, subject, behavior):
        return x + self.mlp(torch.cat([x, subject, condition], dim=-1))


class LatentDenoiser(nn.Module):
    """``(z_t [N, D], steps [N], z_null [N, D], behavior [N]) -> [N, D]`` (x_0 or noise prediction)."""

    def __init__(self, hidden, n_behaviors, config):
        super().__init__()
        kind = _choice(config, "denoiser", DENOISERS)
        self.hidden = hidden
        # e_b; row 0 is the null behavior of classifier-free guidance and stays zero
        self.behavior_condition = nn.Embedding(n_behaviors + 1, hidden, padding_idx=NULL_BEHAVIOR)
        if kind == "mlp":
            blocks = [ConcatMLPBlock(hidden) for _ in range(config["denoiser_layers"])]
        else:
            blocks = [MCGLNBlock(hidden, n_behaviors, config["shared_experts"], config["private_experts"],
                                 use_moe=kind == "mcgln") for _ in range(config["denoiser_layers"])]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, z_t, steps, subject, behavior):
        condition = self.behavior_condition(behavior) + timestep_embedding(steps, self.hidden)  # Eq. 23: e_t + e_b
        x = z_t
        for block in self.blocks:
            x = block(x, condition, subject, behavior)
        return x


class FatsMB(SeededSampling, PredictFromFullSort, SequentialRecommender):
    """MBAE + latent diffusion with MCGLN, trained in three stages (see the module docstring)."""

    input_type = InputType.POINTWISE
    behavior_conditioned = True
    trainer_class = StagedTrainer
    training_stages = ("mbae", "diffusion", "finetune")
    # which scores a stage's validation sees: stages with the same path compete for selection
    stage_inference = {"mbae": "mbae", "diffusion": "generation", "finetune": "generation"}
    train_units = ("prefix", "sequence")
    train_unit_kind = "cloze"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.BEHAVIOR = config["BEHAVIOR_FIELD"]
        self.BEHAVIOR_SEQ = self.BEHAVIOR + config["LIST_SUFFIX"]
        hidden = config["hidden_size"]
        self.n_behaviors = dataset.n_behaviors - 1  # real behaviors 1..n_behaviors; 0 = padding / null
        self.mask_item = self.n_items  # BERT4Rec's [mask] id
        self.mask_behavior = self.n_behaviors + 1
        self.mask_prob = config["mask_prob"]
        self.behavior_mask_prob = config["behavior_mask_prob"]
        self.condition_dropout_prob = config["condition_dropout_prob"]
        self.prediction_target = _choice(config, "prediction_target", PREDICTION_TARGETS)
        self.diffusion_loss_fn = DIFFUSION_LOSSES[_choice(config, "diffusion_loss", DIFFUSION_LOSSES)]
        self.guidance_weight = float(config["guidance_weight"])
        self.guidance_sign = config["guidance_sign"]
        self.ddim_skip = config["ddim_skip"]
        self.init_sampling(config)
        self.train_unit = train_unit(config)
        self.initializer_range = config["initializer_range"]

        self.encoder = MultiBehaviorEncoder(self.n_items, self.n_behaviors + 2, self.max_seq_length + 1, config)
        # ape: a full window's slot reads position L, so sequence-mode windows hold L + 1 rows to train it
        # (rope / barope: no position table; the reference code's windows of L rows)
        self.cloze_window_rows = "window+slot" if self.encoder.position_embedding is not None else "window"
        self.decoder = PreferenceDecoder(hidden, self.n_items)
        self.denoiser = LatentDenoiser(hidden, self.n_behaviors, config)
        self.diffusion = GaussianDiffusion(beta_schedule(config["beta_schedule"], config["diffusion_steps"],
                                                         config["beta_min"], config["beta_max"]))
        self.encoder.apply(self._init_weights)
        self.decoder.apply(self._init_weights)
        # Xavier for the attention maps and BaRoPE's W: with BERT4Rec's N(0, 0.02) for both factors
        # of a product (q and k; W and e_b) its gradient starts near zero, and training sits on a
        # plateau (measured on the behavior-rule data: no progress in 120 steps vs. a drop after 90)
        attention_maps = [projection for layer in self.encoder.transformer.layers for projection in
                          (layer.attention.query, layer.attention.key, layer.attention.value, layer.attention.output)]
        for projection in attention_maps + list(self.encoder.behavior_scales or []):
            nn.init.xavier_uniform_(projection.weight)
        self.stage = None
        self.set_stage(self.training_stages[0])

    def _init_weights(self, module):
        bert_init(module, self.initializer_range)

    # ----- stages (Alg. 1) ------------------------------------------------------------------------

    def stage_modules(self, stage):
        """What a stage trains: stage 1 the autoencoder, stage 2 the denoiser, stage 3 the decoder."""
        return {"mbae": [self.encoder, self.decoder], "diffusion": [self.denoiser], "finetune": [self.decoder]}[stage]

    def set_stage(self, stage):
        if stage not in self.training_stages:
            raise ValueError(f"unknown stage '{stage}'; use one of {self.training_stages}")
        self.stage = stage
        self.requires_grad_(False)
        for module in self.stage_modules(stage):
            module.requires_grad_(True)
        self.train(self.training)

    def train(self, mode=True):
        super().train(mode)
        if mode and self.stage is not None:  # frozen parts run deterministically (no dropout)
            for module in (self.encoder, self.decoder, self.denoiser):
                if all(module is not trained for trained in self.stage_modules(self.stage)):
                    module.eval()
        return self

    # ----- inputs -------------------------------------------------------------------------------

    def with_slot(self, interaction, slot_item, slot_behavior):
        """History plus the slot to predict at position ``n``: ``[B, L+1]`` items, behaviors, padding mask."""
        item_seq, behavior_seq = interaction[self.ITEM_SEQ], interaction[self.BEHAVIOR_SEQ]  # [B, L]
        lengths = interaction[self.ITEM_SEQ_LEN]  # [B]
        column = item_seq.new_zeros(item_seq.size(0), 1)
        items, behaviors = torch.cat([item_seq, column], dim=1), torch.cat([behavior_seq, column], dim=1)
        rows = torch.arange(items.size(0), device=items.device)
        items[rows, lengths] = slot_item
        behaviors[rows, lengths] = slot_behavior
        positions = torch.arange(items.size(1), device=items.device).unsqueeze(0)  # [1, L+1]
        return items, behaviors, positions > lengths.unsqueeze(1)  # padding mask: [B, L+1]

    def encode_slot(self, interaction, slot_behavior):
        """Encoder output at the slot, whose item is ``[mask]``: ``z_b`` or ``z_null`` ``[B, D]``."""
        items, behaviors, padding = self.with_slot(interaction, self.mask_item, slot_behavior)
        hidden = self.encoder(items, behaviors, padding)  # [B, L+1, D]
        lengths = interaction[self.ITEM_SEQ_LEN]
        return hidden[torch.arange(hidden.size(0), device=hidden.device), lengths]

    def asked_behavior(self, interaction):
        if self.BEHAVIOR in interaction:
            return interaction[self.BEHAVIOR]
        return torch.full_like(interaction[self.ITEM_SEQ_LEN], NULL_BEHAVIOR)  # told nothing

    def decode(self, preference):
        return self.decoder(preference, self.encoder.item_embedding.weight[:self.n_items])  # [N, n_items]

    # ----- diffusion ----------------------------------------------------------------------------

    def generate(self, z_null, behavior, generator=None):
        """Alg. 2: DDIM from ``z_T ~ N(0, I)`` to ``z_0`` for the asked ``behavior`` under guidance."""
        z_T = torch.randn(z_null.shape, device=z_null.device, generator=generator)
        guided = behavior != NULL_BEHAVIOR  # [N]
        use_guidance = self.guidance_weight != 0 and bool(guided.any())
        null = torch.full_like(behavior, NULL_BEHAVIOR)

        def denoise(z_t, steps):
            if not use_guidance:
                return self.denoiser(z_t, steps, z_null, behavior)
            both = self.denoiser(torch.cat([z_t, z_t]), torch.cat([steps, steps]), torch.cat([z_null, z_null]),
                                 torch.cat([behavior, null]))
            conditional, unconditional = both.chunk(2)
            combined = classifier_free_guidance(conditional, unconditional, self.guidance_weight, self.guidance_sign)
            return torch.where(guided.unsqueeze(1), combined, conditional)  # Eq. 17; told nothing = unconditional

        return self.diffusion.ddim_sample(denoise, z_T, self.ddim_skip, self.prediction_target)

    # ----- losses (one per stage) ---------------------------------------------------------------

    def mbae_loss(self, interaction):
        """Stage 1, Eq. 14: Cloze reconstruction of the masked items (the slot always masked)."""
        target_item, target_behavior = interaction[self.POS_ITEM_ID], interaction[self.BEHAVIOR]
        items, behaviors, padding = self.with_slot(interaction, target_item, target_behavior)
        lengths = interaction[self.ITEM_SEQ_LEN]
        rows = torch.arange(items.size(0), device=items.device)
        history = ~padding
        history[rows, lengths] = False
        masked = history & (torch.rand(items.shape, device=items.device) < self.mask_prob)
        masked[rows, lengths] = True
        labels = items[masked]  # [M]
        items = items.masked_fill(masked, self.mask_item)
        hide_behavior = masked & (torch.rand(items.shape, device=items.device) < self.behavior_mask_prob)
        behaviors = behaviors.masked_fill(hide_behavior, self.mask_behavior)
        hidden = self.encoder(items, behaviors, padding)  # [B, L+1, D]
        return F.cross_entropy(self.decode(hidden[masked]), labels)

    def diffusion_loss(self, interaction):
        """Stage 2, Eq. 16: denoise ``z_b`` conditioned on ``z_null`` and the (sometimes dropped) behavior."""
        target_behavior = interaction[self.BEHAVIOR]
        with torch.no_grad():  # the encoder is frozen; one pass for both slot behaviors
            batch_size = target_behavior.size(0)
            doubled = interaction.repeat(2)
            slot_behavior = torch.cat([target_behavior, torch.full_like(target_behavior, self.mask_behavior)])
            z_b, z_null = self.encode_slot(doubled, slot_behavior).split(batch_size)
        return self.denoising_loss(z_b, z_null, target_behavior)

    def denoising_loss(self, z_b, z_null, target_behavior):
        """Eq. 16 for ``N`` preferences ``[N, D]``: noise ``z_b``, denoise it under ``z_null`` and the behavior."""
        condition = target_behavior.masked_fill(
            torch.rand(target_behavior.shape, device=target_behavior.device) < self.condition_dropout_prob,
            NULL_BEHAVIOR)
        steps = self.diffusion.sample_steps(z_b.size(0), z_b.device)
        noise = torch.randn_like(z_b)
        z_t = self.diffusion.q_sample(z_b, steps, noise)
        output = self.denoiser(z_t, steps, z_null, condition)
        return self.diffusion_loss_fn(output, z_b if self.prediction_target == "x0" else noise)

    def finetune_loss(self, interaction):
        """Stage 3: next-item prediction from the generated ``z_0``; only the decoder learns."""
        with torch.no_grad():
            z_null = self.encode_slot(interaction, torch.full_like(interaction[self.BEHAVIOR], self.mask_behavior))
            z_0 = self.generate(z_null, interaction[self.BEHAVIOR])
        return F.cross_entropy(self.decode(z_0), interaction[self.POS_ITEM_ID])

    # ----- sequence mode: whole training windows with fresh masks (models.md, "training unit") ------

    def masked_window(self, interaction):
        """A batch of training windows with fresh Cloze masks (no slot: the reference trains without one).

        Returns items ``[B, L]`` (``[mask]`` where masked), true behaviors ``[B, L]``, the padding
        mask ``[B, L]``, the masked positions ``[B, L]`` and their items ``[M]`` (the labels).
        """
        items, behaviors = interaction[self.ITEM_SEQ], interaction[self.BEHAVIOR_SEQ]  # [B, L]
        lengths = interaction[self.ITEM_SEQ_LEN]
        masked = sequence_cloze_mask(lengths, items.size(1), self.mask_prob)
        padding = ~real_positions(lengths, items.size(1))
        return items.masked_fill(masked, self.mask_item), behaviors, padding, masked, items[masked]

    def sequence_mbae_loss(self, interaction):
        """Stage 1 on windows: reconstruct every masked item; its behavior hidden with ``behavior_mask_prob``."""
        items, behaviors, padding, masked, labels = self.masked_window(interaction)
        hide_behavior = masked & (torch.rand(items.shape, device=items.device) < self.behavior_mask_prob)
        hidden = self.encoder(items, behaviors.masked_fill(hide_behavior, self.mask_behavior), padding)  # [B, L, D]
        return F.cross_entropy(self.decode(hidden[masked]), labels)

    def masked_null_preferences(self, items, behaviors, padding, masked):
        """``z_null`` at every masked position ``[M, D]``: the masked positions' behaviors hidden."""
        hidden = self.encoder(items, behaviors.masked_fill(masked, self.mask_behavior), padding)  # [B, L, D]
        return hidden[masked]

    def sequence_diffusion_loss(self, interaction):
        """Stage 2 on windows: every masked position is a (``z_b``, ``z_null``, behavior) example."""
        items, behaviors, padding, masked, _ = self.masked_window(interaction)
        with torch.no_grad():  # the encoder is frozen
            z_b = self.encoder(items, behaviors, padding)[masked]  # [M, D], true behaviors
            z_null = self.masked_null_preferences(items, behaviors, padding, masked)  # [M, D]
        return self.denoising_loss(z_b, z_null, behaviors[masked])

    def sequence_finetune_loss(self, interaction):
        """Stage 3 on windows: decode the ``z_0`` generated for every masked position into its item."""
        items, behaviors, padding, masked, labels = self.masked_window(interaction)
        with torch.no_grad():
            z_null = self.masked_null_preferences(items, behaviors, padding, masked)
            z_0 = self.generate(z_null, behaviors[masked])  # [M, D]
        return F.cross_entropy(self.decode(z_0), labels)

    # ----- RecBole model contract ---------------------------------------------------------------

    def calculate_loss(self, interaction):
        if self.train_unit == "sequence":
            losses = {"mbae": self.sequence_mbae_loss, "diffusion": self.sequence_diffusion_loss,
                      "finetune": self.sequence_finetune_loss}
        else:
            losses = {"mbae": self.mbae_loss, "diffusion": self.diffusion_loss, "finetune": self.finetune_loss}
        return losses[self.stage](interaction)

    def full_sort_predict(self, interaction):
        asked = self.asked_behavior(interaction)
        if self.stage_inference[self.stage] == "mbae":  # the MBAE row: z_b straight from the encoder
            slot_behavior = asked.masked_fill(asked == NULL_BEHAVIOR, self.mask_behavior)
            return self.decode(self.encode_slot(interaction, slot_behavior))
        z_null = self.encode_slot(interaction, torch.full_like(asked, self.mask_behavior))
        return self.decode(self.generate(z_null, asked, self.sampling_generator(z_null.device)))  # [B, n_items]

