"""Gaussian diffusion shared by every diffusion model in mbrec (DiffuRec/DiffuRecSys, FatsMB, M3BSR).

Notation follows Ho et al. (DDPM, NeurIPS 2020): ``beta_t`` the noise schedule, ``alpha_t = 1 -
beta_t``, ``alpha_bar_t = prod_{s<=t} alpha_s``. Steps are 0-indexed here: ``t = 0`` is the least
noisy step, ``t = T - 1`` the noisiest, and ``alpha_bar_{-1} = 1``.

- forward noising  q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)          (DDPM Eq. 4)
- posterior        q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde I)                       (DDPM Eq. 6-7)
- ancestral sampling step from a predicted x_0 (DiffuRec's reverse phase)
- deterministic DDIM step (Song et al., ICLR 2021, Eq. 12 with eta = 0) over a strided subset
  of steps (FatsMB's sampler)
- ``ddim_sample``: the strided deterministic DDIM loop around any denoiser that predicts x_0 or
  the noise (diffusers' ``prediction_type``: ``x0`` / ``epsilon``)
- classifier-free guidance (Ho & Salimans 2022; FatsMB Eq. 17), ``classifier_free_guidance``
- offset noise (DiffuRecSys Eq. 17): the training noise has a per-sample constant added to
  every dimension, so the model also learns to remove a shift of the mean

The schedules are the ones the reference implementations use; ``beta_schedule`` documents where
each comes from.
"""

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from mbrec.layers.dropout import selected_dropout

# Constants of the published schedules (not tuning knobs).
DDPM_LINEAR_BETA_START = 1e-4      # Ho et al.: linear from 1e-4 to 0.02 over 1000 steps
DDPM_LINEAR_BETA_END = 0.02
DDPM_REFERENCE_STEPS = 1000
TRUNC_LINEAR_OFFSET = 0.01         # Diffusion-LM / DiffuRec "trunc_lin": linear schedule + 0.01
COSINE_OFFSET = 0.008              # Nichol & Dhariwal's s
MAX_BETA = 0.999                   # clip so that alpha_t never reaches 0


def beta_schedule(name, n_steps, beta_min=0.1, beta_max=10.0):
    """Noise schedule ``beta_0 .. beta_{T-1}`` as a float64 tensor.

    - ``linear``: DDPM's linear schedule, rescaled to ``n_steps`` (1e-4..0.02 at T=1000).
    - ``trunc_linear``: the same plus 0.01, i.e. never (almost) noise-free; DiffuRec's default,
      inherited from Diffusion-LM. At T = 32 it runs from 0.0131 to 0.635.
    - ``cosine``: Nichol & Dhariwal (ICML 2021).
    - ``exp``: the discretised variance-preserving SDE with ``beta(s)`` rising linearly from
      ``beta_min`` to ``beta_max`` (DreamRec's and FatsMB's code, beta_min 0.1, beta_max 10):
      ``beta_t = 1 - exp(-beta_min / T - (beta_max - beta_min) (2t + 1) / (2 T^2))``.
    """
    if n_steps < 1:
        raise ValueError(f"diffusion needs at least one step, got {n_steps}")
    steps = torch.arange(n_steps, dtype=torch.float64)
    scale = DDPM_REFERENCE_STEPS / n_steps
    if name == "linear":
        betas = torch.linspace(scale * DDPM_LINEAR_BETA_START, scale * DDPM_LINEAR_BETA_END, n_steps,
                               dtype=torch.float64)
    elif name == "trunc_linear":
        betas = torch.linspace(scale * DDPM_LINEAR_BETA_START + TRUNC_LINEAR_OFFSET,
                               scale * DDPM_LINEAR_BETA_END + TRUNC_LINEAR_OFFSET, n_steps, dtype=torch.float64)
    elif name == "cosine":
        def alpha_bar(u):
            return torch.cos((u / n_steps + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
        betas = 1 - alpha_bar(steps + 1) / alpha_bar(steps)
    elif name == "exp":
        betas = 1 - torch.exp(-beta_min / n_steps - (beta_max - beta_min) * (2 * steps + 1) / (2 * n_steps ** 2))
    else:
        raise ValueError(f"Unknown beta schedule '{name}'; use linear, trunc_linear, cosine or exp")
    return betas.clamp(max=MAX_BETA)


def timestep_embedding(steps, dim, max_period=10000.0):
    """Sinusoidal embedding of (possibly rescaled) step indices: ``[B] -> [B, dim]``."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=steps.device, dtype=torch.float32) / half)
    angles = steps.float().unsqueeze(-1) * frequencies  # [B, half]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TimestepEncoder(nn.Module):
    """Sinusoidal step embedding followed by an MLP (``d -> 4d -> SiLU -> d``, as in DDPM/DiffuRec).

    ``step_scale`` multiplies the step index before the sinusoid, so a short chain (DiffuRec's
    T = 32) spreads over the same frequency range as a 1000-step one.
    """

    def __init__(self, dim, step_scale=1.0, expansion=4):
        super().__init__()
        self.dim = dim
        self.step_scale = step_scale
        self.mlp = nn.Sequential(nn.Linear(dim, expansion * dim), nn.SiLU(), nn.Linear(expansion * dim, dim))

    def forward(self, steps):
        return self.mlp(timestep_embedding(steps * self.step_scale, self.dim))


def _gather(values, steps, like):
    """``values[steps]`` shaped to broadcast against ``like`` ([B] -> [B, 1, ..., 1])."""
    out = values.to(like.device)[steps].to(like.dtype)
    return out.view(-1, *([1] * (like.dim() - 1)))


class GaussianDiffusion(nn.Module):
    """Closed-form quantities of a DDPM chain; holds buffers only, no parameters."""

    def __init__(self, betas):
        super().__init__()
        betas = torch.as_tensor(betas, dtype=torch.float64)
        alphas = 1 - betas
        alpha_bar = torch.cumprod(alphas, dim=0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        posterior_variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
        self.n_steps = len(betas)
        buffers = {
            "betas": betas,
            "alpha_bar": alpha_bar,
            "alpha_bar_prev": alpha_bar_prev,
            "sqrt_alpha_bar": alpha_bar.sqrt(),
            "sqrt_one_minus_alpha_bar": (1 - alpha_bar).sqrt(),
            "posterior_variance": posterior_variance,
            # mu_tilde = coef_x0 * x_0 + coef_xt * x_t
            "posterior_coef_x0": betas * alpha_bar_prev.sqrt() / (1 - alpha_bar),
            "posterior_coef_xt": (1 - alpha_bar_prev) * alphas.sqrt() / (1 - alpha_bar),
        }
        for name, value in buffers.items():  # float32 buffers: they move with .to(device)
            self.register_buffer(name, value.float(), persistent=False)

    def sample_steps(self, batch_size, device, generator=None):
        """Uniform training steps ``t ~ U{0, ..., T-1}``."""
        return torch.randint(0, self.n_steps, (batch_size,), device=device, generator=generator)

    def q_sample(self, x0, steps, noise):
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise."""
        return _gather(self.sqrt_alpha_bar, steps, x0) * x0 + _gather(self.sqrt_one_minus_alpha_bar, steps, x0) * noise

    def posterior(self, x0, xt, steps):
        """Mean and variance of q(x_{t-1} | x_t, x_0)."""
        mean = _gather(self.posterior_coef_x0, steps, xt) * x0 + _gather(self.posterior_coef_xt, steps, xt) * xt
        return mean, _gather(self.posterior_variance, steps, xt)

    def predict_x0_from_noise(self, xt, steps, noise):
        return (xt - _gather(self.sqrt_one_minus_alpha_bar, steps, xt) * noise) / _gather(self.sqrt_alpha_bar, steps, xt)

    def predict_noise_from_x0(self, xt, steps, x0):
        return (xt - _gather(self.sqrt_alpha_bar, steps, xt) * x0) / _gather(self.sqrt_one_minus_alpha_bar, steps, xt)

    def ancestral_step(self, x0_hat, xt, steps, noise=None, variance="posterior"):
        """x_{t-1} = posterior mean + sigma_t * noise, no noise at t = 0 (DDPM Algorithm 2).

        ``variance``: ``posterior`` (sigma_t^2 = beta_tilde_t, DiffuRecSys Eq. 22) or ``beta``
        (sigma_t^2 = beta_t, DDPM's other choice, which DiffuRec's code uses). Eq. 22 writes
        ``beta_tilde`` itself as the noise scale; a Gaussian with that variance has standard
        deviation ``sqrt(beta_tilde)``, which is what this uses.
        """
        mean, posterior_variance = self.posterior(x0_hat, xt, steps)
        if variance == "posterior":
            variance = posterior_variance
        elif variance == "beta":
            variance = _gather(self.betas, steps, xt)
        else:
            raise ValueError(f"variance must be 'posterior' or 'beta', got '{variance}'")
        if noise is None:
            noise = torch.randn_like(xt)
        not_last = (steps > 0).to(xt.dtype).view(-1, *([1] * (xt.dim() - 1)))
        return mean + not_last * variance.sqrt() * noise

    def ddim_step(self, x0_hat, xt, steps, prev_steps):
        """Deterministic DDIM update (eta = 0) from step ``t`` to ``prev_steps`` (< t; -1 = clean)."""
        noise_hat = self.predict_noise_from_x0(xt, steps, x0_hat)
        alpha_bar_prev = torch.where(prev_steps >= 0, self.alpha_bar[prev_steps.clamp(min=0)],
                                     torch.ones_like(self.alpha_bar[0]).expand(prev_steps.shape))
        alpha_bar_prev = alpha_bar_prev.to(xt.dtype).view(-1, *([1] * (xt.dim() - 1)))
        return alpha_bar_prev.sqrt() * x0_hat + (1 - alpha_bar_prev).sqrt() * noise_hat

    def x0_from_output(self, xt, steps, output, prediction_type):
        """The denoiser's output read as x_0: ``prediction_type`` is ``x0`` (as is) or ``epsilon``."""
        if prediction_type == "x0":
            return output
        if prediction_type == "epsilon":
            return self.predict_x0_from_noise(xt, steps, output)
        raise ValueError(f"Unknown prediction type '{prediction_type}'; use x0 or epsilon")

    def ddim_sample(self, denoise, x_T, skip, prediction_type="x0", one_step_entry=False):
        """Run deterministic DDIM from ``x_T`` over every ``skip``-th step; return x_0.

        ``denoise(x_t, steps)`` returns the model output (x_0 or noise, per ``prediction_type``)
        for a ``[B]`` tensor of equal steps, or with ``one_step_entry`` a ``[1]`` tensor that stands
        for every row (a denoiser that embeds the step then does it once, not once per row). The
        last update lands on the predicted x_0 exactly.
        """
        x_t = x_T
        for step, prev_step in self.ddim_schedule(skip):
            steps = torch.full((1 if one_step_entry else x_t.size(0),), step, device=x_t.device, dtype=torch.long)
            x0_hat = self.x0_from_output(x_t, steps, denoise(x_t, steps), prediction_type)
            x_t = self.ddim_step(x0_hat, x_t, steps, torch.full_like(steps, prev_step))
        return x_t

    def ddim_schedule(self, skip):
        """Steps visited by a strided DDIM sampler, noisiest first: T-1, T-1-skip, ..., and their successors."""
        if skip < 1:
            raise ValueError(f"DDIM step skip must be >= 1, got {skip}")
        visited = list(range(self.n_steps - 1, -1, -skip))
        return list(zip(visited, visited[1:] + [-1]))


GUIDANCE_SIGNS = ("minus", "plus")


def classifier_free_guidance(conditional, unconditional, weight, sign="minus"):
    """Combine conditional and unconditional denoiser outputs (Ho & Salimans 2022).

    ``minus`` (FatsMB Eq. 17): ``(1 + w) * cond - w * uncond``, i.e. move away from the
    unconditional output. ``plus``: ``(1 + w) * cond + w * uncond``, what FatsMB's public code
    computes (kept as an option to reproduce it). ``w = 0`` gives the conditional output. The
    combination is linear, so it is the same whether the outputs are noise or x_0 predictions
    for the same x_t.
    """
    if sign == "minus":
        return (1 + weight) * conditional - weight * unconditional
    if sign == "plus":
        return (1 + weight) * conditional + weight * unconditional
    raise ValueError(f"Unknown guidance sign '{sign}'; use one of {GUIDANCE_SIGNS}")


def offset_noise(shape, scale, delta=None, device=None, generator=None):
    """Standard normal noise plus ``scale * delta`` on every dimension of a sample (DiffuRecSys Eq. 17).

    ``delta`` is the per-sample constant delta_c: ``None`` draws one N(0, 1) value per sample (the
    offset-noise recipe of image diffusion, so each sample's noise is shifted by its own amount);
    a number uses that constant for every sample, giving noise ~ N(scale * delta, I).
    """
    noise = torch.randn(shape, device=device, generator=generator)
    if scale == 0:
        return noise
    per_sample = (shape[0],) + (1,) * (len(shape) - 1)
    if delta is None:
        shift = torch.randn(per_sample, device=device, generator=generator)
    else:
        shift = torch.full(per_sample, float(delta), device=device)
    return noise + scale * shift


def linear_betas(beta_start, beta_end, n_steps):
    """DDPM's linear schedule *without* rescaling to ``n_steps``: ``beta_start .. beta_end`` over T steps.

    For a short chain that starts from an observed, mildly noisy feature (M3BSR's feature
    denoising, T in {1, 5, 10, 15}): at T = 10 with 1e-4..0.02, ``alpha_bar_{T-1}`` is about 0.9,
    i.e. the observed feature is read as a sample with noise std ~0.3, not as pure noise.
    """
    if n_steps < 1:
        raise ValueError(f"diffusion needs at least one step, got {n_steps}")
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    return torch.linspace(beta_start, beta_end, n_steps, dtype=torch.float64)


class CrossAttentionDenoiser(nn.Module):
    """Noise predictor ``eps(x_t, t, condition)``: the noisy tokens attend to the condition tokens.

    ``x_t`` ``[N, Lq, D]`` (queries, plus the step embedding), ``condition`` ``[N, Lc, D]`` (keys and
    values) with ``condition_padding`` ``[N, Lc]`` (True = ignore). The step embedding is also a
    condition token of its own, so a row whose condition is all padding still has a key. One
    pre-LN block (cross-attention, feed-forward, both residual) and a linear read-out of the noise;
    no normalisation after the last residual, because the noise is read off the scale of ``x_t``.
    """

    def __init__(self, dim, n_heads, inner_size, dropout=0.0, step_scale=1.0):
        super().__init__()
        self.steps = TimestepEncoder(dim, step_scale=step_scale)
        self.query_norm = nn.LayerNorm(dim)
        self.condition_norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, n_heads, dropout=dropout, batch_first=True)
        self.feed_forward_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, inner_size), nn.GELU(), nn.Dropout(dropout),
                                          nn.Linear(inner_size, dim))
        self.readout = nn.Linear(dim, dim)

    def forward(self, x_t, steps, condition, condition_padding=None):
        step = self.steps(steps).unsqueeze(1)  # [N, 1, D]
        keys = self.condition_norm(torch.cat([step, condition], dim=1))  # [N, 1 + Lc, D]
        if condition_padding is not None:
            keep_step = torch.zeros_like(condition_padding[:, :1])
            condition_padding = torch.cat([keep_step, condition_padding], dim=1)
        hidden = x_t + step
        attended, _ = self.attention(self.query_norm(hidden), keys, keys, key_padding_mask=condition_padding,
                                     need_weights=False)
        hidden = hidden + attended
        hidden = hidden + self.feed_forward(self.feed_forward_norm(hidden))
        return self.readout(hidden)  # [N, Lq, D]: predicted noise

    # ----- the same computation at selected query tokens (M3BSR's fast paths) -----

    def _projections(self):
        """(weight, bias) of the attention's query, key and value projections."""
        return tuple(zip(self.attention.in_proj_weight.chunk(3), self.attention.in_proj_bias.chunk(3)))

    def prepare_condition(self, condition, condition_padding=None):
        """The attention's keys and values of the normalised ``condition`` tokens ``[N, Lc, D]`` and its score
        bias (0, or -inf at padding; the step token first), which no step of a chain changes.

        Why: ``forward`` normalises and projects the condition at every call, i.e. at every step of a
        chain and again for the loss, which all read the same condition.
        """
        _, (weight_k, bias_k), (weight_v, bias_v) = self._projections()
        normed = self.condition_norm(condition)
        n_rows, length, _ = condition.shape
        padding = torch.zeros(n_rows, 1 + length, dtype=torch.bool, device=condition.device)  # the step: a key
        if condition_padding is not None:
            padding[:, 1:] = condition_padding
        score_bias = torch.zeros(padding.shape, dtype=condition.dtype, device=condition.device)
        score_bias = score_bias.masked_fill_(padding, float("-inf"))[:, None, None, :]  # [N, 1, 1, 1 + Lc]
        return PreparedCondition(F.linear(normed, weight_k, bias_k), F.linear(normed, weight_v, bias_v), score_bias)

    def forward_selected(self, x_t, steps, prepared, selection):
        """``forward(x, steps, condition, condition_padding)`` at the query tokens ``selection`` names:
        ``[M, D]`` predicted noise for ``x_t`` ``[M, D]``, the tokens of an ``x`` ``[N, Lq, D]``.

        ``steps``: ``[N]`` (one per condition row) or ``[1]`` (every row's). ``prepared``:
        :meth:`prepare_condition` of the condition. Queries are independent of each other (the keys
        are the condition's), so the unselected ones only cost work: the per-token layers run on the
        selected tokens; the attention (a small part of the cost) runs in the ``[N, Lq]`` layout,
        unselected queries zero, so that its weights' dropout mask is drawn on the shape ``forward``
        draws it on, as is the feed-forward dropout's (:func:`mbrec.layers.dropout.selected_dropout`):
        seeded runs keep their random streams.
        """
        (weight_q, bias_q), (weight_k, bias_k), (weight_v, bias_v) = self._projections()
        n_rows, query_length = selection.n_rows, selection.length
        dim, heads = x_t.size(-1), self.attention.num_heads
        head_dim = dim // heads
        step = self.steps(steps)  # [N or 1, D]
        normed_step = self.condition_norm(step)
        step_keys = F.linear(normed_step, weight_k, bias_k).unsqueeze(1).expand(n_rows, 1, dim)
        step_values = F.linear(normed_step, weight_v, bias_v).unsqueeze(1).expand(n_rows, 1, dim)
        hidden = x_t + (step if steps.numel() == 1 else step[selection.rows])  # [M, D]
        query = F.linear(self.query_norm(hidden), weight_q, bias_q)
        query_grid = query.new_zeros(n_rows * query_length, dim).index_copy(0, selection.index, query)

        def heads_first(tokens):  # [N, L, D] -> [N, h, L, d]
            return tokens.view(n_rows, -1, heads, head_dim).transpose(1, 2)

        keys = heads_first(torch.cat([step_keys, prepared.keys], dim=1))  # [N, h, 1 + Lc, d]
        values = heads_first(torch.cat([step_values, prepared.values], dim=1))
        scores = torch.matmul(heads_first(query_grid), keys.transpose(-2, -1)) * head_dim ** -0.5
        weights = torch.softmax(scores + prepared.score_bias, dim=-1)  # [N, h, Lq, 1 + Lc]
        weights = F.dropout(weights, self.attention.dropout, self.attention.training)
        context = torch.matmul(weights, values).transpose(1, 2).reshape(n_rows * query_length, dim)
        hidden = hidden + self.attention.out_proj(context.index_select(0, selection.index))
        to_inner, activation, dropout, from_inner = self.feed_forward
        inner = activation(to_inner(self.feed_forward_norm(hidden)))  # [M, inner]
        inner = selected_dropout(inner, dropout, (n_rows * query_length, inner.size(-1)),
                                 lambda mask: mask.index_select(0, selection.index))
        return self.readout(hidden + from_inner(inner))


class PreparedCondition(NamedTuple):
    """A condition as :meth:`CrossAttentionDenoiser.forward_selected` reads it."""
    keys: torch.Tensor        # [N, Lc, D] projected keys of the normalised condition tokens
    values: torch.Tensor      # [N, Lc, D] projected values
    score_bias: torch.Tensor  # [N, 1, 1, 1 + Lc] added to the scores: 0, or -inf at padding; the step token first


class QuerySelection(NamedTuple):
    """Which query tokens of an ``[N, L]`` layout a denoiser computes (:meth:`of` builds it from a mask)."""
    rows: torch.Tensor   # [M] row of each selected token
    index: torch.Tensor  # [M] its flat position, row * L + position, in row-major order
    n_rows: int
    length: int

    @classmethod
    def of(cls, selected):
        """The True tokens of ``selected`` ``[N, L]``."""
        n_rows, length = selected.shape
        index = selected.flatten().nonzero().squeeze(1)
        return cls(torch.div(index, length, rounding_mode="floor"), index, n_rows, length)


class ConditionalFeatureDenoiser(nn.Module):
    """A short conditional DDPM chain over feature vectors (M3BSR's modality and behavior denoising).

    Training: ``loss(x0, condition)`` is DDPM's epsilon loss (Ho et al. Eq. 14) at a uniform step.
    Use: ``denoise(x, condition)`` reads an *observed* feature ``x`` as the chain's noisiest sample
    ``x_{T-1}`` and runs the deterministic DDIM sampler down to ``x_0`` (all T steps), so the
    output is the condition-guided clean estimate of ``x``. ``mask`` ``[N, Lq]`` (True = real)
    restricts the loss to real tokens.
    """

    def __init__(self, dim, n_heads, inner_size, n_steps, beta_start, beta_end, dropout=0.0):
        super().__init__()
        self.diffusion = GaussianDiffusion(linear_betas(beta_start, beta_end, n_steps))
        self.denoiser = CrossAttentionDenoiser(dim, n_heads, inner_size, dropout,
                                               step_scale=DDPM_REFERENCE_STEPS / n_steps)

    @property
    def n_steps(self):
        return self.diffusion.n_steps

    def loss(self, x0, condition, condition_padding=None, mask=None):
        steps = self.diffusion.sample_steps(x0.size(0), x0.device)
        noise = torch.randn_like(x0)
        predicted = self.denoiser(self.diffusion.q_sample(x0, steps, noise), steps, condition, condition_padding)
        error = (predicted - noise).square().mean(dim=-1)  # [N, Lq]
        if mask is None:
            return error.mean()
        mask = mask.to(error.dtype)
        return (error * mask).sum() / mask.sum().clamp(min=1.0)

    def denoise(self, x, condition, condition_padding=None):
        def predict_noise(x_t, steps):
            return self.denoiser(x_t, steps, condition, condition_padding)

        return self.diffusion.ddim_sample(predict_noise, x, skip=1, prediction_type="epsilon")

    def loss_selected(self, x0, prepared, selection):
        """``loss(x0, condition, condition_padding, mask)`` with ``mask``'s True tokens as ``selection`` and the
        condition as ``prepared`` (:meth:`CrossAttentionDenoiser.prepare_condition`): only the selected
        tokens are denoised; the steps and the noise are drawn for all of ``x0`` ``[N, Lq, D]``, as
        :meth:`loss` draws them."""
        steps = self.diffusion.sample_steps(x0.size(0), x0.device)
        noise = torch.randn_like(x0)
        dim = x0.size(-1)
        token_noise = noise.reshape(-1, dim).index_select(0, selection.index)
        x_t = self.diffusion.q_sample(x0.reshape(-1, dim).index_select(0, selection.index), steps[selection.rows],
                                      token_noise)
        predicted = self.denoiser.forward_selected(x_t, steps, prepared, selection)
        error = (predicted - token_noise).square().mean(dim=-1)  # [M]
        return error.sum() / max(len(selection.index), 1)

    def denoise_selected(self, x, prepared, selection):
        """``denoise(x, condition, condition_padding)`` at the tokens of ``selection`` only: ``x`` ``[M, D]``
        -> ``[M, D]`` (tokens are denoised independently of each other)."""
        def predict_noise(x_t, steps):
            return self.denoiser.forward_selected(x_t, steps, prepared, selection)

        return self.diffusion.ddim_sample(predict_noise, x, skip=1, prediction_type="epsilon", one_step_entry=True)
