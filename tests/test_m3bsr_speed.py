"""M3BSR's fast paths (``fast_paths: True``) compute what the plain computation does.

- ``mbrec/layers/dropout.py``: ``torch_dropout_mask`` / ``selected_dropout``, torch's own dropout mask
  drawn whole and read at the computed elements;
- ``mbrec/layers/read_position.py``: RecBole's TransformerEncoder with its last layer at the read
  position only (the experts);
- ``mbrec/layers/diffusion.py``: the conditional denoiser at selected query tokens, its condition's
  keys and values prepared once per chain (the modality and behavior denoising).

The same seed gives the same random draws on both paths, so the checks run with dropout on as well:
outputs, losses and gradients agree up to float rounding, and the generator ends in the same state.
"""

import numpy as np
import pytest
import torch
from recbole.model.layers import TransformerEncoder
from torch.nn import functional as F

from mbrec.data.dataset import SequenceLoader
from mbrec.layers.diffusion import ConditionalFeatureDenoiser, QuerySelection
from mbrec.layers import dropout as dropout_module
from mbrec.layers.dropout import bernoulli_reads_words, selected_dropout, torch_dropout_mask
from mbrec.layers.read_position import encoder_output_at
from mbrec.registry import get_model_class
from tests.test_m3bsr import build, rule_folder

VALUE_TOLERANCE = dict(rtol=1e-5, atol=1e-6)
GRAD_RTOL = 1e-4             # gradients: relative to each tensor's own, ...
GRAD_FLOOR = 1e-7            # ... plus float32's rounding of the largest gradient (some are exactly zero)
DROPOUT = 0.3                # a rate with many dropped and many kept elements
ITEMS_WITH_CONTENT = 8       # of the rule data's 12 items: the others have no content vector
VARIANTS = ("M3BSR", "M3BSR_woMD", "M3BSR_woBD", "M3BSR_woCL")


def assert_grads_close(grads, reference):
    assert len(grads) == len(reference)
    scale = max(grad.abs().max().item() for grad in reference)
    for index, (grad, expected) in enumerate(zip(grads, reference)):
        assert torch.allclose(grad, expected, rtol=GRAD_RTOL, atol=GRAD_FLOOR * scale), index


def same_draws(run, seed=0):
    """``run()``'s result and the generator state after it, from ``seed``."""
    torch.manual_seed(seed)
    result = run()
    return result, torch.get_rng_state()


# ----- the layers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(7, 33), (3, 2, 5, 6)])
def test_torch_dropout_mask_is_the_mask_f_dropout_draws(shape):
    x = torch.randn(shape, requires_grad=True)
    dropped, state = same_draws(lambda: F.dropout(x, DROPOUT, training=True))
    masked, mask_state = same_draws(lambda: x * torch_dropout_mask(shape, DROPOUT, x))
    assert torch.equal(dropped, masked) and torch.equal(state, mask_state)


@pytest.mark.parametrize("read_words", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_selected_dropout_is_f_dropout_at_the_selected_elements(monkeypatch, read_words, dtype):
    """Both ways of drawing: from the random words bernoulli_ reads (where it does), and its own mask."""
    if read_words and not bernoulli_reads_words():
        pytest.skip("this torch's CPU bernoulli_ does not draw one 64-bit word per element")
    monkeypatch.setattr(dropout_module, "bernoulli_reads_words", lambda: read_words)
    full = torch.randn(40, 3, 17, dtype=dtype)
    layer = torch.nn.Dropout(DROPOUT)
    rows = torch.tensor([0, 5, 6, 39, 12])

    def select(tensor):
        return tensor.index_select(0, rows)[:, 1]

    dropped, state = same_draws(lambda: select(F.dropout(full, DROPOUT, training=True)))
    selected, selected_state = same_draws(lambda: selected_dropout(select(full), layer, full.shape, select))
    assert torch.equal(dropped, selected) and torch.equal(state, selected_state)
    values = select(full)
    assert selected_dropout(values, layer.eval(), full.shape, select) is values  # nothing drawn outside training


@pytest.mark.parametrize("n_layers", [1, 2])
def test_encoder_output_at_the_read_position_equals_the_full_encoder(n_layers):
    torch.manual_seed(0)
    encoder = TransformerEncoder(n_layers, 2, 16, 32, DROPOUT, DROPOUT, "gelu", 1e-12).train()
    hidden = torch.randn(6, 9, 16, requires_grad=True)
    allowed = torch.rand(6, 9) < 0.7
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    mask = torch.where(causal & allowed.unsqueeze(1), 0.0, -10000.0).unsqueeze(1)  # [B, 1, L, L]
    read = torch.tensor([8, 0, 3, 5, 8, 1])
    rows = torch.arange(6)
    output_weights = torch.randn(6, 16)  # the objective: a LayerNorm output's sum of squares is about constant

    def outputs(fast):
        output = encoder_output_at(encoder, hidden, mask, read) if fast else encoder(hidden, mask)[-1][rows, read]
        grads = torch.autograd.grad((output * output_weights).sum(), [hidden, *encoder.parameters()])
        return output, grads

    (full, full_grads), full_state = same_draws(lambda: outputs(False))
    (fast, fast_grads), fast_state = same_draws(lambda: outputs(True))
    assert torch.allclose(fast, full, **VALUE_TOLERANCE) and torch.equal(fast_state, full_state)
    assert_grads_close(fast_grads, full_grads)


@pytest.mark.parametrize("training", [True, False])
def test_denoiser_at_selected_tokens_equals_the_full_denoiser(training):
    torch.manual_seed(0)
    denoiser = ConditionalFeatureDenoiser(16, 2, 32, n_steps=4, beta_start=1e-4, beta_end=0.02, dropout=DROPOUT)
    denoiser.train(training)
    x = torch.randn(5, 7, 16, requires_grad=True)
    condition = torch.randn(5, 7, 16, requires_grad=True)
    padding = torch.rand(5, 7) < 0.5
    padding[0] = True  # a row whose only key is the step token
    selected = torch.rand(5, 7) < 0.6
    selected[1] = False  # a row without a selected token
    parameters = list(denoiser.parameters())

    def plain():
        loss = denoiser.loss(x.detach(), condition, padding, mask=selected)
        denoised = denoiser.denoise(x, condition, padding)[selected]
        objective = loss + denoised.square().mean()
        return loss, denoised, torch.autograd.grad(objective, [x, condition, *parameters])

    def fast():
        selection = QuerySelection.of(selected)
        prepared = denoiser.denoiser.prepare_condition(condition, padding)
        loss = denoiser.loss_selected(x.detach(), prepared, selection)
        denoised = denoiser.denoise_selected(x.reshape(-1, 16)[selection.index], prepared, selection)
        objective = loss + denoised.square().mean()
        return loss, denoised, torch.autograd.grad(objective, [x, condition, *parameters])

    (loss, denoised, grads), state = same_draws(plain)
    (fast_loss, fast_denoised, fast_grads), fast_state = same_draws(fast)
    assert torch.equal(state, fast_state)
    assert torch.allclose(fast_loss, loss, **VALUE_TOLERANCE)
    assert torch.allclose(fast_denoised, denoised, **VALUE_TOLERANCE)
    assert_grads_close(fast_grads, grads)


# ----- the model -----------------------------------------------------------------------------------

def feature_folder(tmp_path):
    """Behavior-rule data with two modalities, each missing for some items: content vectors and categories."""
    folder = rule_folder(tmp_path, content_dim=0)
    tokens = np.array([f"i{k}" for k in range(ITEMS_WITH_CONTENT)])
    vectors = np.random.default_rng(0).standard_normal((ITEMS_WITH_CONTENT, 8)).astype(np.float32)
    np.savez(folder / "rule.content.npz", item_id=tokens, vectors=vectors)
    with open(folder / "rule.item", "w", encoding="utf-8") as handle:
        handle.write("item_id:token\tcategory:token\n" + "".join(f"i{k}\tc{k % 3}\n" for k in range(2, 12)))
    return folder


@pytest.fixture(scope="module")
def feature_data(tmp_path_factory):
    return feature_folder(tmp_path_factory.mktemp("m3bsr_speed"))


def model_and_batches(folder, variant, dropout):
    config, train, valid, _ = build(folder, model=variant, hidden_dropout_prob=dropout, attn_dropout_prob=dropout,
                                   diffusion_steps=3)
    torch.manual_seed(0)
    model = get_model_class(variant)(config, train)
    assert model.fast_paths and model.n_streams == 3  # item IDs, content, category
    training = next(iter(SequenceLoader(config, train, 64, shuffle=False, training=True)))
    assert len(training["item_length"].unique()) > 3  # short and long prefixes
    evaluation = next(iter(SequenceLoader(config, valid, 32, behavior_hint="true")))
    return model, training, evaluation


def loss_and_grads(model, batch):
    model.zero_grad()
    loss = model.calculate_loss(batch)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dropout", [0.0, DROPOUT])
def test_training_loss_gradients_and_draws_equal_the_plain_computation(feature_data, variant, dropout):
    model, batch, _ = model_and_batches(feature_data, variant, dropout)
    model.train()
    (loss, grads), state = same_draws(lambda: loss_and_grads(model, batch))
    model.fast_paths = False
    (plain_loss, plain_grads), plain_state = same_draws(lambda: loss_and_grads(model, batch))
    assert torch.equal(state, plain_state)  # the same random draws: seeded runs stay as they were
    assert torch.allclose(loss, plain_loss, **VALUE_TOLERANCE)
    assert grads.keys() == plain_grads.keys()
    assert_grads_close(list(grads.values()), [plain_grads[name] for name in grads])


@pytest.mark.parametrize("variant", VARIANTS)
def test_eval_scores_equal_the_plain_computation(feature_data, variant):
    model, _, batch = model_and_batches(feature_data, variant, DROPOUT)
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        model.fast_paths = False
        model.eval()  # rebuild the evaluation table of denoised modal vectors the plain way
        plain_scores = model.full_sort_predict(batch)
    assert torch.allclose(scores, plain_scores, **VALUE_TOLERANCE)
