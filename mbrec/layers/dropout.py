"""Inverted dropout whose keep mask comes from 15-bit random integers: cheaper than ``bernoulli_`` on CPU.

On CPU, ``nn.Dropout`` draws its mask with ``bernoulli_``: one Mersenne-Twister draw and a
floating-point comparison per element, serially (about 8 ns an element on the suite's 2-core
machine; with its 26 dropouts, a quarter of a DiffuRecSys training step). Here one 64-bit random
word (two Mersenne-Twister draws) gives four independent integers ``r`` uniform on ``[0, 2^15)``
(its four 16-bit lanes with the top bit of each cleared), and an element is kept when ``r < K``
with ``K = round((1 - p) * 2^15)``:

- the keep probability is exactly ``K / 2^15``, within ``2^-16`` (1.5e-5) of ``1 - p``;
- kept elements are scaled by ``2^15 / K``, the inverse of that exact keep probability, so the
  expected output equals the input, as in any inverted dropout;
- the mask comes from torch's global generator, so ``torch.manual_seed`` makes it repeatable.

Forward and backward together cost about 0.45x of ``F.dropout`` on CPU at the sizes of a
DiffuRecSys step (``benchmarks/diffurecsys_fast_paths.py`` times the whole step). Elsewhere
(CUDA: ``F.dropout`` is one fused kernel, this would be several) and for reduced-precision inputs
(the scale would be rounded to the input's precision), :func:`integer_mask_dropout` is
``F.dropout`` itself.

:func:`selected_dropout` is the other way round: torch's own dropout mask, drawn as ``F.dropout``
draws it (the same generator calls, the same mask), for a model that computes only some elements of
a dropped tensor (M3BSR's fast paths) and must keep seeded runs' random streams as they were. Where
torch's CPU ``bernoulli_`` keeps an element by reading one random 64-bit word (checked once per
process, :func:`bernoulli_reads_words`), it draws the words with ``random_`` (about half of
``bernoulli_``'s time: no float conversion) and reads only the selected ones.
"""

import functools
import math

import torch
from torch import nn
from torch.nn import functional as F

MASK_BITS = 15                      # bits of each uniform integer: keep probabilities on a 2^-15 (3e-5) grid
MASK_RANGE = 2 ** MASK_BITS
LANE_BITS = 0x7FFF                  # the low 15 bits of a 16-bit lane (the top bit of an int64 word is always 0)
LANES_PER_WORD = 4                  # int64 word -> four int16 lanes
EXACT_SCALE_DTYPES = (torch.float32, torch.float64)  # dtypes in which 2^15 / K is held exactly enough (<= 6e-8)
# torch's CPU ``bernoulli_(q)`` (its default kernel) draws one 64-bit word per element and keeps the element
# when the word's low 53 bits (a float64 uniform's mantissa) read as a fraction of 2^53 are below q
UNIFORM_BITS = 53
UNIFORM_MASK = 2 ** UNIFORM_BITS - 1
PROBE_ELEMENTS = 4099               # the one-time check that bernoulli_ draws so: elements (a few vector widths
PROBE_KEEP = 0.7                    # and a remainder), a keep probability with many of both outcomes,
PROBE_SEED = 20240607               # and any seed (private generators: the global one is not touched)


def keep_threshold(p):
    """``K``: an element is kept when its 15-bit integer is below it; ``K / 2^15`` is the keep probability."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    return round((1.0 - p) * MASK_RANGE)


def keep_mask(shape, threshold, device=None):
    """Boolean ``shape`` mask, True with probability exactly ``threshold / 2^15``, from the global generator."""
    n = 1
    for size in shape:
        n *= size
    words = torch.empty(-(-n // LANES_PER_WORD), dtype=torch.int64, device=device).random_()  # [0, 2^63)
    lanes = words.view(torch.int16)[:n].view(shape)
    return lanes.bitwise_and_(LANE_BITS) < threshold


def integer_mask_dropout(x, p, training=True):
    """Inverted dropout of ``x`` with drop probability ``p`` (the module doc says how the mask is drawn)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or x.dtype not in EXACT_SCALE_DTYPES:
        return F.dropout(x, p, training=True)
    threshold = keep_threshold(p)
    if threshold == 0:  # p within 2^-16 of 1: nothing is kept
        return x * 0.0
    if threshold == MASK_RANGE:  # p within 2^-16 of 0: everything is kept, unscaled
        return x
    # The scaled mask is a float tensor, so autograd saves it and the backward is one multiplication.
    scaled_mask = keep_mask(x.shape, threshold, x.device).to(x.dtype).mul_(MASK_RANGE / threshold)
    return x * scaled_mask


class IntegerMaskDropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, same train/eval switch) drawing its mask with :func:`integer_mask_dropout`."""

    def __init__(self, p=0.5):
        super().__init__(p)
        keep_threshold(p)  # validate now, not at the first training step

    def forward(self, x):
        return integer_mask_dropout(x, self.p, self.training)


def torch_dropout_mask(shape, p, like):
    """The scaled keep mask (0 or ``1 / (1 - p)``, ``like``'s dtype and device) that ``F.dropout(x, p)``
    multiplies an ``x`` of ``shape`` by in training, drawn from the global generator exactly as it draws it.

    On CPU ``F.dropout`` fills a tensor of ``x``'s shape with ``bernoulli_(1 - p)``, divides it by
    ``1 - p`` and multiplies ``x`` by it (ATen's ``_dropout_impl``); this is that without the
    multiplication (``tests/test_m3bsr_speed.py`` pins the two together). Elsewhere (CUDA's fused
    kernel) the mask is ``F.dropout`` of ones: the same draws by construction. Needs ``0 < p < 1``
    (``F.dropout`` draws nothing at 0 or 1).
    """
    if like.device.type == "cpu":
        return torch.empty(shape, dtype=like.dtype).bernoulli_(1.0 - p).div_(1.0 - p)
    return F.dropout(torch.ones(shape, dtype=like.dtype, device=like.device), p, training=True)


def _kept_from_words(words, keep):
    """``bernoulli_(keep)``'s outcome (bool) from the 64-bit words it draws: the low 53 bits below ``keep * 2^53``."""
    return words.bitwise_and_(UNIFORM_MASK) < math.ceil(keep * 2 ** UNIFORM_BITS)


@functools.lru_cache(maxsize=None)
def bernoulli_reads_words():
    """Whether this torch's CPU ``bernoulli_`` draws as :func:`_kept_from_words` reads (checked once, on private
    generators): its default kernel does; MKL's (Intel CPUs) and any other draw otherwise."""
    drawing, reading = torch.Generator().manual_seed(PROBE_SEED), torch.Generator().manual_seed(PROBE_SEED)
    drawn = torch.empty(PROBE_ELEMENTS).bernoulli_(PROBE_KEEP, generator=drawing).bool()
    read = _kept_from_words(torch.empty(PROBE_ELEMENTS, dtype=torch.int64).random_(generator=reading), PROBE_KEEP)
    return torch.equal(drawn, read) and torch.equal(drawing.get_state(), reading.get_state())


def selected_dropout(values, dropout, full_shape, select):
    """``dropout`` (an ``nn.Dropout``) of a tensor of ``full_shape`` of which only ``values = select(full)``
    was computed: ``select(dropout(full))`` is ``selected_dropout(select(full), dropout, full.shape, select)``,
    with the same draws.

    Why: a model that reads a dropped tensor at a few of its positions (M3BSR's experts at one
    position per row, its denoisers at the shallow positions) computes those only, but must keep
    seeded runs' random streams as they were, so the whole mask is drawn as ``dropout`` would draw
    it and ``select`` picks the elements of ``values`` from it. On CPU, where ``bernoulli_`` draws
    one random 64-bit word per element (:func:`bernoulli_reads_words`), the words are drawn whole
    (``random_``, about half of ``bernoulli_``'s time) and only the selected ones are turned into
    the mask; otherwise :func:`torch_dropout_mask` draws it.
    """
    if not dropout.training or dropout.p == 0.0:
        return values
    if dropout.p == 1.0:  # F.dropout returns zeros without drawing
        return values * 0.0
    if values.device.type == "cpu" and bernoulli_reads_words():
        words = select(torch.empty(full_shape, dtype=torch.int64).random_())
        scale = torch.ones((), dtype=values.dtype).div_(1.0 - dropout.p)  # F.dropout's 1 / (1 - p), as it rounds it
        return values * _kept_from_words(words, 1.0 - dropout.p).to(values.dtype).mul_(scale)
    return values * select(torch_dropout_mask(full_shape, dropout.p, values))
