"""The diffusion family's CPU fast paths compute what the plain computation did.

- ``mbrec/layers/dropout.py``: inverted dropout with a mask from 15-bit random integers;
- ``PaddedAttention.attend``: nn.MultiheadAttention written out with an additive padding bias;
- the last approximator block computed at the read position only;
- the approximator run per group of similar history lengths.

The reference is ``benchmarks/diffurecsys_fast_paths.py``'s copy of the code before them.
"""

import pathlib

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.diffurecsys_fast_paths import reference_path
from mbrec.layers.dropout import MASK_RANGE, IntegerMaskDropout, integer_mask_dropout, keep_threshold
from mbrec.models.diffurecsys import DiffuRecSys, PaddedAttention
from mbrec.training.trainer import Trainer
from tests.test_diffusion import tiny_model

N_MASK = 2 ** 18        # mask elements per keep-rate check: the rate's standard error is ~6e-4 at p = 0.1
RATE_SIGMAS = 5         # a correct mask misses the bound with probability ~6e-7
DROPOUT_PROBS = (0.1, 0.3)  # DiffuRecSys.yaml's hidden and embedding dropout


# ----- the dropout -------------------------------------------------------------------------------

@pytest.mark.parametrize("p", DROPOUT_PROBS + (0.5, 0.77))
def test_keep_probability_is_within_1e_4_of_the_configured_one(p):
    assert abs(keep_threshold(p) / MASK_RANGE - (1 - p)) <= 0.5 / MASK_RANGE < 1e-4


@pytest.mark.parametrize("p", DROPOUT_PROBS)
def test_dropout_keeps_at_the_configured_rate_and_scales_by_the_exact_keep_probability(p):
    torch.manual_seed(0)
    out = integer_mask_dropout(torch.ones(N_MASK), p)
    keep = keep_threshold(p) / MASK_RANGE
    kept = out != 0
    assert torch.allclose(out[kept], torch.tensor(1 / keep), rtol=1e-7, atol=0)  # inverted: 1 / P(keep)
    tolerance = RATE_SIGMAS * (keep * (1 - keep) / (N_MASK / 4)) ** 0.5
    for lane in range(4):  # each of the four 16-bit lanes of a random word, the top one included
        assert abs(kept[lane::4].float().mean().item() - keep) < tolerance
    assert abs(out.mean().item() - 1) < RATE_SIGMAS * ((1 - keep) / keep / N_MASK) ** 0.5


def test_dropout_backward_uses_the_forward_mask():
    torch.manual_seed(1)
    x = torch.ones(1000, 7, requires_grad=True)
    out = integer_mask_dropout(x, 0.3)
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())


def test_dropout_is_repeatable_under_a_seed_and_off_in_eval():
    layer = IntegerMaskDropout(0.1)
    x = torch.randn(64, 33)
    torch.manual_seed(3)
    first = layer(x)
    torch.manual_seed(3)
    assert torch.equal(first, layer(x))
    assert not torch.equal(first, layer(x))
    layer.eval()
    assert layer(x) is x
    assert integer_mask_dropout(x, 0.0) is x
    assert torch.equal(integer_mask_dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError):
        IntegerMaskDropout(1.5)


def test_reduced_precision_input_uses_torch_dropout():
    x = torch.randn(128, 16).to(torch.bfloat16)
    torch.manual_seed(5)
    expected = F.dropout(x, 0.1, training=True)
    torch.manual_seed(5)
    assert torch.equal(integer_mask_dropout(x, 0.1), expected)


# ----- the attention -----------------------------------------------------------------------------

def test_padded_attention_is_built_as_nn_multihead_attention():
    torch.manual_seed(0)
    fast = PaddedAttention(16, 2, dropout=0.1, batch_first=True)
    torch.manual_seed(0)
    plain = nn.MultiheadAttention(16, 2, dropout=0.1, batch_first=True)
    fast_state, plain_state = fast.state_dict(), plain.state_dict()
    assert fast_state.keys() == plain_state.keys()
    assert all(torch.equal(fast_state[key], plain_state[key]) for key in plain_state)


@pytest.mark.parametrize("cross", [False, True])
def test_attend_matches_nn_multihead_attention(cross):
    torch.manual_seed(0)
    attention = PaddedAttention(16, 4, dropout=0.1, batch_first=True).eval()
    with torch.no_grad():
        attention.in_proj_bias.normal_()
        attention.out_proj.bias.normal_()
    lengths = torch.tensor([1, 3, 5, 5, 2])
    padding = torch.arange(5).unsqueeze(0) >= lengths.unsqueeze(1)
    bias = torch.zeros(padding.shape).masked_fill_(padding, float("-inf"))[:, None, None, :]
    context = torch.randn(5, 5, 16)
    query = torch.randn(5, 5, 16) if cross else context
    expected, _ = nn.MultiheadAttention.forward(attention, query, context, context, key_padding_mask=padding,
                                                need_weights=False)
    assert torch.allclose(attention.attend(query, context, bias), expected, atol=1e-6)
    one_query = query[:, 2:3].clone()  # one query row per example (the last block's read position)
    assert torch.allclose(attention.attend(one_query, context, bias), expected[:, 2:3], atol=1e-6)


# ----- the models --------------------------------------------------------------------------------

def varied_rows(n_users=14):
    """Users of 3..16 interactions and three behaviors: prefix windows of every length up to the maximum."""
    behaviors = ("view", "cart", "buy")
    return [(f"u{u}", f"i{(u * 5 + t) % 11}", behaviors[(u + t) % 3], t) for u in range(n_users)
            for t in range(3 + u)]


def built(tmp_path, model, **overrides):
    settings = dict(hidden_dropout_prob=0.1, embedding_dropout_prob=0.3, MAX_ITEM_LIST_LENGTH=7)
    if model == "DiffuRecSysMB":
        settings["behaviors"] = ["view", "cart", "buy"]
    config, network, train, _ = tiny_model(tmp_path, model, varied_rows(), **{**settings, **overrides})
    batch = next(iter(Trainer(config, network, torch.device("cpu")).train_loader(train)))
    assert len(set(batch[network.ITEM_SEQ_LEN].tolist())) > 4  # several lengths: several groups, padding
    return config, network, batch


EQUIVALENCE_CASES = [
    ("DiffuRecSys", {}),
    ("DiffuRec", {}),
    ("DiffuRecSysMB", {}),
    ("DiffuRecSysV1", {"guidance_scale": "unit", "sampler": "ddim", "ddim_skip": 3}),
    ("DiffuRecSys", {"n_layers": 1}),
    ("DiffuRec", {"n_layers": 0}),
]


@pytest.mark.parametrize("model, overrides", EQUIVALENCE_CASES)
def test_eval_outputs_equal_the_computation_before_the_fast_paths(tmp_path, model, overrides):
    _, network, batch = built(tmp_path, model, **overrides)
    network.eval()
    history, padding = network.history_embedding(batch), network.padding_mask(batch)
    steps = torch.randint(0, network.n_steps, (history.size(0),), generator=torch.Generator().manual_seed(0))
    x_t = torch.randn(history.size(0), network.hidden_size)
    lambdas = network.sample_lambda(history.shape, "cpu")
    behavior = network.behavior_condition(network.asked_behavior(batch))
    results = {}
    for side in ("fast", "reference"):
        with reference_path(network) if side == "reference" else torch.no_grad():
            x0_hat = network.approximate_x0(history, padding, x_t, network.step_condition(steps), behavior, lambdas)
            torch.manual_seed(11)  # training steps and noise
            network.reseed_sampling(5)  # lambda (eval mode draws it from the sampling generator)
            loss = network.calculate_loss(batch)
            network.reseed_sampling(7)
            scores = network.full_sort_predict(batch)
        results[side] = x0_hat, loss, scores
    for fast, reference in zip(results["fast"], results["reference"]):
        assert torch.allclose(fast, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", ["DiffuRecSys", "DiffuRec"])
def test_training_loss_and_gradients_without_dropout_equal_the_computation_before(tmp_path, model):
    """Train mode (grouped rows under autograd, the last block at the read position): with the dropouts
    at zero only the seeded noise is random, and both paths draw it alike."""
    _, network, batch = built(tmp_path, model, hidden_dropout_prob=0.0, embedding_dropout_prob=0.0)
    network.train()
    results = {}
    for side in ("fast", "reference"):
        with reference_path(network) if side == "reference" else torch.enable_grad():
            network.zero_grad()
            torch.manual_seed(9)
            loss = network.calculate_loss(batch)
            loss.backward()
        results[side] = [loss.detach()] + [parameter.grad.clone() for parameter in network.parameters()]
    for fast, reference in zip(results["fast"], results["reference"]):
        assert torch.allclose(fast, reference, rtol=1e-4, atol=1e-6)


def test_dropouts_have_the_configured_probabilities(tmp_path):
    _, network, _ = built(tmp_path, "DiffuRecSys")
    assert network.embedding_dropout.p == 0.3 and network.output_dropout.p == 0.1
    for block in network.blocks:
        assert block.dropout.p == block.ffn[2].p == 0.1
        assert block.self_attention.dropout == block.cross_attention.dropout == 0.1
    assert not any(type(module) is nn.Dropout for module in network.modules())  # all drawn the cheap way


def test_training_loss_is_repeatable_under_a_seed(tmp_path):
    _, network, batch = built(tmp_path, "DiffuRecSys")
    network.train()
    losses, gradients = [], []
    for seed in (5, 5, 6):
        network.zero_grad()
        torch.manual_seed(seed)
        loss = network.calculate_loss(batch)
        loss.backward()
        losses.append(loss.item())
        gradients.append(network.blocks[0].self_attention.in_proj_weight.grad.clone())
    assert losses[0] == losses[1] and torch.equal(gradients[0], gradients[1])
    assert losses[0] != losses[2]  # dropout and noise do move with the seed


def test_length_groups_cover_every_row_once_with_its_longest_window():
    lengths = torch.tensor([20, 1, 2, 3, 4, 5, 8, 9, 16, 17, 7, 1])
    groups = DiffuRecSys.length_groups(lengths)
    rows = torch.cat([group_rows for group_rows, _ in groups])
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    for group_rows, window in groups:
        group_lengths = lengths[group_rows]
        assert window == int(group_lengths.max())
        assert 2 * int(group_lengths.min()) >= window  # at most half of a group's window is padding
    every_length = torch.arange(1, 1025)
    key_of = {length: (length - 1).bit_length() for length in every_length.tolist()}  # ceil(log2 n)
    for group_rows, _ in DiffuRecSys.length_groups(every_length):
        assert len({key_of[length] for length in every_length[group_rows].tolist()}) == 1
    assert len(DiffuRecSys.length_groups(every_length)) == len(set(key_of.values()))


def test_fast_paths_are_used_by_the_diffusion_family_only():
    """Every other model keeps torch's own dropout and attention (their stored records must reproduce).

    (M3BSR's fast paths import ``mbrec.layers.dropout`` for ``selected_dropout``, which draws torch's
    own mask, so the module itself is not what is looked for.)
    """
    root = pathlib.Path(__file__).resolve().parents[1]
    names = ("IntegerMaskDropout", "integer_mask_dropout", "PaddedAttention")
    sources = [path for folder in ("mbrec", "baselines") for path in (root / folder).rglob("*.py")]
    users = {path.relative_to(root).as_posix() for path in sources
             if any(name in path.read_text(encoding="utf-8") for name in names)}
    assert users == {"mbrec/layers/dropout.py", "mbrec/models/diffurecsys.py"}
