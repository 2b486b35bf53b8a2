"""DiffuRecSys and its behavior-aware variant DiffuRecSysMB.

Papers
- DiffuRec: Li, Sun, Li, "DiffuRec: A Diffusion Model for Sequential Recommendation", TOIS 2023.
- DiffuRecSys: Zolghadr, Winther, Jeha, "Generative Diffusion Models for Sequential
  Recommendations", ROEGEN@RecSys 2024.

The target item's embedding ``x_0 = E[i_{n+1}]`` is noised to ``x_s`` (Eq. 18-20, forward chain
of :mod:`mbrec.layers.diffusion`), and a Transformer approximator ``f_theta`` reconstructs
``x0_hat`` from the history guided by ``x_s`` and the step embedding ``d_s``; the loss is the
cross-entropy of ``x0_hat . E^T`` over all items (Eq. 24-25). At inference ``x_T ~ N(0, I)`` is
denoised by T ancestral steps (Eq. 21-23, Algorithm 2) and the final ``x_0`` is "rounded" by its
inner product with every item embedding (Eq. 26), which gives the full-ranking scores.

The approximator's guidance is ``c_i = lambda_i * (x_s + d_s)`` with ``lambda_i ~ N(delta,
delta)`` drawn elementwise per history position, in training and at inference:
- ``cross_attention: False`` (DiffuRec, Eq. 15): ``z_i = e_i + c_i``, then pre-LN Transformer
  blocks over the history.
- ``cross_attention: True`` (DiffuRecSys "Modified V1", Eq. 16): every block first lets the
  guidance attend to the history (queries from ``c_i``, keys and values from the normalised
  hidden states; residual), then self-attention and a ReLU feed-forward, all pre-LN. The
  public code feeds every block the original input, so only its last block counts; here the
  blocks are stacked as the paper describes.
- ``guidance_scale: unit`` (in neither paper): ``c_i = x_s + d_s`` without lambda. With
  lambda ~ 0.001 the guidance is near zero, the cross-attention near uniform, and the
  approximator barely reads ``x_s`` (``benchmarks/diffusion_xt_probe.py`` measures how much).
- ``offset_noise_scale > 0`` ("Modified V2", Eq. 17): the forward noise is ``N(scale * delta_c,
  I)`` in training only; reverse sampling always uses standard normal noise.

There is no position embedding (as in DiffuRec's code); ``x0_hat`` is the layer-normalised
output at the last real history position. RecBole pads sequences on the right, so that position
is ``item_length - 1``; the padding mask comes from ``item_length``, never from item ids.

DiffuRecSysMB (mbrec's multi-behavior variant): history tokens are ``e_i + b_i`` with a behavior
embedding, and the guidance becomes ``lambda_i * (x_s + d_s) + g(behavior)`` where ``behavior`` is
the asked target behavior; in training it is the target's own behavior, hidden (id 0) with
probability ``behavior_dropout_prob`` so that the model also ranks items when told nothing. The
behavior condition sits beside the step embedding but outside lambda: lambda ~ 0.001 models the
uncertainty of the *target item*, and scaling the behavior by it mutes it (measured on the
behavior-rule test: recall@1 0.32 with ``lambda * (x_s + d_s + g)``, chance level, vs > 0.9).

CPU fast paths, each computing what the plain code did (``tests/test_diffurecsys_speed.py``;
``benchmarks/diffurecsys_fast_paths.py`` times both): dropout masks from random integers
(:mod:`mbrec.layers.dropout`), attention written out with one additive padding bias per forward
(:class:`PaddedAttention`), the last block computed at the read position only, and the
approximator run per group of similar history lengths (:meth:`DiffuRecSys.length_groups`).
"""

import torch
from torch import nn
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.init import xavier_normal_initialization
from recbole.utils import InputType

from mbrec.models import PredictFromFullSort, SeededSampling
from mbrec.layers.behavior import MultiBehaviorEmbedding
from mbrec.layers.diffusion import GaussianDiffusion, TimestepEncoder, beta_schedule, offset_noise
from mbrec.layers.dropout import IntegerMaskDropout, integer_mask_dropout

FFN_EXPANSION = 4                   # Transformer feed-forward width = 4 * hidden (Vaswani et al.)
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}
ITEM_EMBEDDING_INITS = ("normal", "xavier")
GUIDANCE_SCALES = ("lambda", "unit")  # c = lambda * (x_t + d) (the papers) | x_t + d (an option, see the README)
REFERENCE_STEPS = 1000.0            # the step index is rescaled to 1000/T units for the sinusoid


class PaddedAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` (same parameters, state-dict keys and initialisation) with :meth:`attend`,
    its batch-first attention written out for the approximator.

    Why not ``forward``: in training it converts the boolean padding mask to a float one at every
    call, and the math attention behind it (the only one with dropout on CPU) checks every score
    row for being fully masked and draws its weight dropout with ``bernoulli_``, work this model
    does not need eight times a step. :meth:`attend` takes the additive score bias that
    :meth:`DiffuRecSys.approximate_x0` builds once for all blocks, drops weights with
    :func:`integer_mask_dropout`, and accepts fewer queries than keys (the last block's read
    positions). It computes what ``forward`` does (``tests/test_diffurecsys_speed.py`` compares
    them): ``softmax(q k^T / sqrt(d) + bias) v`` per head, then the output projection. Built as
    the approximator builds it: projection biases, no ``add_bias_kv``, keys of the query's width.
    """

    def attend(self, query, context, score_bias):
        """query: [B, Lq, H]; context: [B, Lk, H] (keys and values); score_bias: [B, 1, 1, Lk] -> [B, Lq, H]."""
        batch, query_length, hidden = query.shape
        if query is context:  # self-attention: one projection for q, k and v
            q, k, v = nn.functional.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            weight_q, weight_kv = self.in_proj_weight.split([hidden, 2 * hidden])
            bias_q, bias_kv = self.in_proj_bias.split([hidden, 2 * hidden])
            q = nn.functional.linear(query, weight_q, bias_q)
            k, v = nn.functional.linear(context, weight_kv, bias_kv).chunk(2, dim=-1)
        q, k, v = (x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2) for x in (q, k, v))  # [B, h, L, d]
        scores = torch.matmul(q, k.transpose(-2, -1)).mul_(self.head_dim ** -0.5).add_(score_bias)
        weights = integer_mask_dropout(scores.softmax(dim=-1), self.dropout, self.training)  # [B, h, Lq, Lk]
        attended = torch.matmul(weights, v).transpose(1, 2).reshape(batch, query_length, hidden)
        return self.out_proj(attended)


class ApproximatorBlock(nn.Module):
    """Pre-LN Transformer block, optionally preceded by cross-attention from the guidance."""

    def __init__(self, hidden_size, n_heads, dropout_prob, cross_attention, activation):
        super().__init__()
        self.cross_attention = (PaddedAttention(hidden_size, n_heads, dropout=dropout_prob, batch_first=True)
                                if cross_attention else None)
        self.cross_norm = nn.LayerNorm(hidden_size) if cross_attention else None
        self.self_norm = nn.LayerNorm(hidden_size)
        self.self_attention = PaddedAttention(hidden_size, n_heads, dropout=dropout_prob, batch_first=True)
        self.ffn_norm = nn.LayerNorm(hidden_size)
        self.ffn = nn.Sequential(nn.Linear(hidden_size, FFN_EXPANSION * hidden_size), ACTIVATIONS[activation](),
                                 IntegerMaskDropout(dropout_prob), nn.Linear(FFN_EXPANSION * hidden_size, hidden_size))
        self.dropout = IntegerMaskDropout(dropout_prob)

    def forward(self, hidden, guidance, score_bias, read_positions=None):
        """hidden, guidance: [B, L, H]; score_bias: [B, 1, 1, L], 0 at real and -inf at padded positions.

        ``read_positions`` ([B]): compute the output at these positions only ([B, 1, H]). The last
        block is read at one position per row, and its self-attention queries and feed-forward
        are position-wise, so the other positions would be computed for nothing (the
        cross-attention still runs at every position: its output is the self-attention's keys).
        """
        if self.cross_attention is not None:
            context = self.cross_norm(hidden)
            hidden = hidden + self.dropout(self.cross_attention.attend(guidance, context, score_bias))
        normed = self.self_norm(hidden)
        query = normed
        if read_positions is not None:
            rows = torch.arange(hidden.size(0), device=hidden.device)
            hidden, query = hidden[rows, read_positions].unsqueeze(1), normed[rows, read_positions].unsqueeze(1)
        hidden = hidden + self.dropout(self.self_attention.attend(query, normed, score_bias))
        return hidden + self.dropout(self.ffn(self.ffn_norm(hidden)))


class DiffuRecSys(SeededSampling, PredictFromFullSort, SequentialRecommender):
    """Diffusion over the target item embedding with a Transformer approximator (see module doc)."""

    input_type = InputType.POINTWISE
    behavior_conditioned = False

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        hidden = config["hidden_size"]
        self.hidden_size = hidden
        self.n_steps = config["diffusion_steps"]
        self.lambda_mean = config["lambda_mean"]
        self.lambda_std = config["lambda_std"]
        self.use_cross_attention = bool(config["cross_attention"])
        self.offset_noise_scale = float(config["offset_noise_scale"] or 0.0)
        self.offset_noise_delta = config["offset_noise_delta"]
        self.reverse_variance = config["reverse_variance"]
        self.sampler = config["sampler"]
        self.guidance_scale = config["guidance_scale"]
        if self.guidance_scale not in GUIDANCE_SCALES:
            raise ValueError(f"guidance_scale must be one of {GUIDANCE_SCALES}, got {self.guidance_scale!r}")
        self.ddim_skip = config["ddim_skip"]
        self.init_sampling(config)
        if config["hidden_act"] not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {sorted(ACTIVATIONS)}, got '{config['hidden_act']}'")
        if self.sampler not in ("ancestral", "ddim"):
            raise ValueError(f"sampler must be 'ancestral' or 'ddim', got '{self.sampler}'")

        self.item_embedding = nn.Embedding(self.n_items, hidden, padding_idx=0)
        self.embedding_dropout = IntegerMaskDropout(config["embedding_dropout_prob"])
        self.input_norm = nn.LayerNorm(hidden)
        self.timestep_encoder = TimestepEncoder(hidden, step_scale=REFERENCE_STEPS / self.n_steps)
        self.diffusion = GaussianDiffusion(beta_schedule(config["beta_schedule"], self.n_steps))
        self.blocks = nn.ModuleList(
            ApproximatorBlock(hidden, config["n_heads"], config["hidden_dropout_prob"], self.use_cross_attention,
                              config["hidden_act"])
            for _ in range(config["n_layers"]))
        self.output_dropout = IntegerMaskDropout(config["hidden_dropout_prob"])
        self.output_norm = nn.LayerNorm(hidden)
        # Xavier for the Transformer (DiffuRecSys §6.2). DiffuRec's code keeps PyTorch's N(0, 1)
        # item table ("normal"), which puts x_0 on the scale of the unit noise (and starts the
        # cross-entropy near 50 at d=128); "xavier" shrinks it far below the noise.
        if config["item_embedding_init"] not in ITEM_EMBEDDING_INITS:
            raise ValueError(f"item_embedding_init must be one of {ITEM_EMBEDDING_INITS}, "
                             f"got '{config['item_embedding_init']}'")
        item_table = self.item_embedding.weight.detach().clone()
        self.apply(xavier_normal_initialization)
        with torch.no_grad():
            if config["item_embedding_init"] == "normal":
                self.item_embedding.weight.copy_(item_table)
            self.item_embedding.weight[0].zero_()

    # ----- pieces shared by training and sampling -----------------------------------------------

    def window(self, interaction, field):
        """``interaction[field]`` without the columns that are padding in every row of the batch.

        RecBole pads on the right to MAX_ITEM_LIST_LENGTH; dropping all-padding columns changes
        nothing (they are masked) but saves the compute spent on them in short-history batches.
        """
        return interaction[field][:, : int(interaction[self.ITEM_SEQ_LEN].max())]

    def padding_mask(self, interaction):
        item_seq = self.window(interaction, self.ITEM_SEQ)
        positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)  # [1, L]
        return positions >= interaction[self.ITEM_SEQ_LEN].unsqueeze(1)  # [B, L] True = padding

    def history_embedding(self, interaction):
        """Normalised history token embeddings ``e_i`` (plus behavior in the MB variant): [B, L, H]."""
        return self.input_norm(self.embedding_dropout(self.item_embedding(self.window(interaction, self.ITEM_SEQ))))

    def step_condition(self, steps):
        """``d_s``: [B, H]."""
        return self.timestep_encoder(steps)

    def behavior_condition(self, asked_behavior):
        """Added to the guidance unscaled by lambda; none in the item-only models."""
        return None

    def sample_lambda(self, shape, device):
        """lambda ~ N(delta, delta) elementwise (DiffuRec's uncertainty weights)."""
        noise = torch.randn(shape, device=device, generator=self.sampling_generator(device))
        return self.lambda_mean + self.lambda_std * noise

    def approximate_x0(self, history, padding_mask, x_t, condition, behavior=None, lambdas=None):
        """``x0_hat = f_theta(history | x_t, d, behavior)``: [B, H]."""
        if self.guidance_scale == "unit":  # the option: x_t + d at full scale, so the query can follow x_t
            guidance = (x_t + condition).unsqueeze(1).expand_as(history)  # [B, L, H]
        else:
            if lambdas is None:
                lambdas = self.sample_lambda(history.shape, history.device)
            guidance = lambdas * (x_t + condition).unsqueeze(1)  # [B, L, H]
        if behavior is not None:
            guidance = guidance + behavior.unsqueeze(1)
        hidden = history if self.use_cross_attention else history + guidance
        lengths = (~padding_mask).sum(dim=1)  # [B]
        groups = self.length_groups(lengths)
        if len(groups) == 1:
            return self.transform(hidden, guidance, padding_mask, lengths)
        output = hidden.new_empty(hidden.size(0), hidden.size(2))
        for rows, window in groups:
            output[rows] = self.transform(hidden[rows, :window], guidance[rows, :window], padding_mask[rows, :window],
                                          lengths[rows])
        return output

    def transform(self, hidden, guidance, padding_mask, lengths):
        """The approximator's blocks and output norm: ``[B, L, H]`` tokens -> ``[B, H]`` at the last real position."""
        # Padded keys get -inf, built once for every attention of every block. Every example has
        # at least one history item, so no score row is fully masked (softmax stays finite).
        score_bias = torch.zeros(padding_mask.shape, dtype=hidden.dtype, device=hidden.device)
        score_bias = score_bias.masked_fill_(padding_mask, float("-inf"))[:, None, None, :]  # [B, 1, 1, L]
        last = lengths - 1  # [B]
        for block in self.blocks[:-1]:
            hidden = block(hidden, guidance, score_bias)
        if len(self.blocks):  # the last block computes the read position only
            output = self.blocks[-1](hidden, guidance, score_bias, read_positions=last).squeeze(1)  # [B, H]
        else:
            output = hidden[torch.arange(hidden.size(0), device=hidden.device), last]  # [B, H]
        return self.output_norm(self.output_dropout(output))

    @staticmethod
    def length_groups(lengths):
        """``[(rows, window)]``: the rows whose history length ``n`` has the same ``ceil(log2 n)``, and
        their longest length.

        Why: run group by group, each windowed to its own longest history, the approximator
        skips most of the padding: on retailrocket_f10 34% of an evaluation batch's window is
        real (66% of the reverse chain's work was padding; 40% of the window is computed when
        grouped) and 84% of a training batch's (86% computed). Rows are independent, so grouping
        changes no row's result; power-of-two groups keep the number of groups (and of small
        matrix products) at ``log2(window) + 1`` or fewer, and at most half of a group's window
        is padding.
        """
        group_ids = torch.frexp((lengths - 1).float()).exponent  # bit length of n - 1 = ceil(log2 n), exact
        groups = []
        for group in group_ids.unique().tolist():
            rows = (group_ids == group).nonzero().squeeze(1)
            groups.append((rows, int(lengths[rows].max())))
        return groups

    def training_noise(self, shape, device):
        if self.training and self.offset_noise_scale > 0:
            return offset_noise(shape, self.offset_noise_scale, self.offset_noise_delta, device=device)
        return torch.randn(shape, device=device)

    def asked_behavior(self, interaction):
        return None

    # ----- RecBole model contract ---------------------------------------------------------------

    def calculate_loss(self, interaction):
        target = interaction[self.POS_ITEM_ID]
        x0 = self.item_embedding(target)  # [B, H]
        steps = self.diffusion.sample_steps(x0.size(0), x0.device)
        x_t = self.diffusion.q_sample(x0, steps, self.training_noise(x0.shape, x0.device))
        x0_hat = self.approximate_x0(self.history_embedding(interaction), self.padding_mask(interaction), x_t,
                                     self.step_condition(steps),
                                     self.behavior_condition(self.asked_behavior(interaction)))
        logits = x0_hat @ self.item_embedding.weight.T  # [B, n_items]
        return nn.functional.cross_entropy(logits, target)

    @torch.no_grad()
    def reverse(self, interaction):
        """Denoise ``x_T ~ N(0, I)`` to ``x_0`` conditioned on the history: [B, H]."""
        history = self.history_embedding(interaction)
        padding_mask = self.padding_mask(interaction)
        behavior = self.behavior_condition(self.asked_behavior(interaction))
        batch_size = history.size(0)
        generator = self.sampling_generator(history.device)
        x_t = torch.randn(batch_size, self.hidden_size, device=history.device, generator=generator)
        if self.sampler == "ancestral":
            schedule = [(step, step - 1) for step in range(self.n_steps - 1, -1, -1)]
        else:
            schedule = self.diffusion.ddim_schedule(self.ddim_skip)
        for step, prev_step in schedule:
            steps = torch.full((batch_size,), step, device=history.device, dtype=torch.long)
            x0_hat = self.approximate_x0(history, padding_mask, x_t, self.step_condition(steps), behavior)
            if self.sampler == "ancestral":
                noise = torch.randn(x_t.shape, device=x_t.device, generator=generator)
                x_t = self.diffusion.ancestral_step(x0_hat, x_t, steps, noise, variance=self.reverse_variance)
            else:
                x_t = self.diffusion.ddim_step(x0_hat, x_t, steps, torch.full_like(steps, prev_step))
        return x_t

    def full_sort_predict(self, interaction):
        return self.reverse(interaction) @ self.item_embedding.weight.T  # [B, n_items]



class DiffuRecSysV1(DiffuRecSys):
    """DiffuRecSys "Modified V1": cross-attention without offset noise (its own YAML says so)."""


class DiffuRecSysMB(DiffuRecSys):
    """DiffuRecSys whose history carries behaviors and whose denoising is told the asked behavior."""

    behavior_conditioned = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.behaviors = MultiBehaviorEmbedding(config, dataset.n_behaviors, self.hidden_size)
        self.behaviors.apply(xavier_normal_initialization)
        self.behaviors.zero_padding()

    def history_embedding(self, interaction):
        length = int(interaction[self.ITEM_SEQ_LEN].max())
        tokens = self.item_embedding(self.window(interaction, self.ITEM_SEQ)) + self.behaviors.history_embedding(
            interaction, length)
        return self.input_norm(self.embedding_dropout(tokens))

    def asked_behavior(self, interaction):
        return self.behaviors.asked_behavior(interaction)

    def behavior_condition(self, asked_behavior):
        return self.behaviors.asked(asked_behavior)  # [B, H]; zeros when told nothing
