"""MBGen's CPU fast paths compute what the plain computation did.

- the encoder and the teacher-forced decoder run per group of similar history lengths, each cut to
  its longest history, in chunks of bounded size (``MBGen.length_groups``);
- cross-attention reads the encoder output through the products of its weights
  (``Attention.attend_absorbed``) where that is cheaper;
- beam search decodes only the new position at each step (``MBGen.decode_step``, ``DecoderCache``).

The reference is ``benchmarks/mbgen_fast_paths.py``'s copy of the code before them.
"""

import pathlib
import re

import pytest
import torch

from benchmarks.mbgen_fast_paths import reference_attention, reference_path
from mbrec.data.dataset import SequenceLoader
from mbrec.layers.seq2seq import Attention, padding_bias
from mbrec.models import mbgen
from tests.test_mbgen import eval_batch, rule_data  # noqa: F401 (a fixture)

SMALL_CHUNKS = 600  # activation elements per chunk in the tests: several chunks per length group at the tiny sizes
SCORE_TOLERANCE = dict(rtol=1e-5, atol=1e-5)
GRAD_TOLERANCE = dict(rtol=1e-4, atol=1e-6)


def training_batch(config, train, size=64):
    batch = next(iter(SequenceLoader(config, train, size, shuffle=False, training=True)))
    assert len(batch["item_length"].unique()) > 2  # several length groups
    return batch


def loss_and_grads(model, batch):
    model.zero_grad()
    loss = model.calculate_loss(batch)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("user_token", ["append", "prepend", "none"])
def test_training_loss_and_gradients_equal_the_reference(rule_data, monkeypatch, user_token):  # noqa: F811
    monkeypatch.setattr(mbgen, "CPU_CHUNK_ELEMENTS", SMALL_CHUNKS)
    config, model, train, _, _ = rule_data(user_token=user_token)
    model.train()
    batch = training_batch(config, train)
    assert len(model.length_groups(batch["item_length"], 25)) > 3
    loss, grads = loss_and_grads(model, batch)
    with reference_path(model):
        reference_loss, reference_grads = loss_and_grads(model, batch)
    assert torch.allclose(loss, reference_loss, **SCORE_TOLERANCE)
    assert grads.keys() == reference_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, reference_grads[name], **GRAD_TOLERANCE), name


@pytest.mark.parametrize("absorbed", [True, False])
@pytest.mark.parametrize("allocation", [False, True])
def test_beam_search_scores_equal_the_reference(rule_data, monkeypatch, absorbed, allocation):  # noqa: F811
    """Both kinds of cross-attention cache, told the behavior and not, and behavior-aware allocation."""
    monkeypatch.setattr(mbgen, "CPU_CHUNK_ELEMENTS", SMALL_CHUNKS)
    config, model, _, valid, _ = rule_data(beam_size=5, behavior_aware_allocation=allocation)
    model.eval()
    for layer in model.decoder_layers:
        monkeypatch.setattr(layer.cross_attention, "absorbs", lambda *args, absorbed=absorbed: absorbed)
    told, untold = eval_batch(config, valid, size=16), eval_batch(config, valid, behavior_hint=None, size=16)
    with torch.no_grad():
        memory, padding = model.encode(told)
        beam = model.beam_search(memory, padding, 5, told["behavior"])
        joint = model.beam_search(memory, padding, 5)
        scores = [model.full_sort_predict(told), model.full_sort_predict(untold)]
        model._beam_memo = {}
        with reference_path(model):
            reference_beam = model.beam_search(memory, padding, 5, told["behavior"])
            reference_joint = model.beam_search(memory, padding, 5)
            reference_scores = [model.full_sort_predict(told), model.full_sort_predict(untold)]
    for new, old in ((beam, reference_beam), (joint, reference_joint)):
        assert torch.equal(new[0], old[0]) and torch.equal(new[1], old[1])  # behaviors and items, in order
        assert torch.allclose(new[2], old[2], **SCORE_TOLERANCE)
    for new, old in zip(scores, reference_scores):
        assert torch.allclose(new, old, **SCORE_TOLERANCE)
        assert torch.equal(new.argsort(dim=1, stable=True), old.argsort(dim=1, stable=True))


def test_absorbed_cross_attention_equals_projected_keys_and_values():
    torch.manual_seed(0)
    attention = Attention(16, 2, 16, 0.0)
    x = torch.randn(4 * 3, 2, 16, requires_grad=True)  # 3 query groups (beams) per context row
    context = torch.randn(4, 30, 16, requires_grad=True)
    bias = padding_bias(torch.arange(30).expand(4, 30) >= torch.tensor([[30], [17], [1], [25]]), torch.float32)
    assert attention.absorbs(x, 3 * 2, 30, bias)
    outputs = [attention(x, context, bias), reference_attention(attention, x, context, bias)]
    grads = [torch.autograd.grad(output.square().sum(), [x, context, *attention.parameters()]) for output in outputs]
    assert torch.allclose(outputs[0], outputs[1], **SCORE_TOLERANCE)
    for new, old in zip(*grads):
        assert torch.allclose(new, old, **GRAD_TOLERANCE)


def test_absorption_only_where_cheaper_on_cpu_without_dropout():
    attention = Attention(64, 6, 64, 0.0)
    x = torch.zeros(1, 4, 64)
    assert attention.absorbs(x, 4, 81, None)  # training's 4 queries over 81 tokens
    wide = Attention(256, 6, 64, 0.0)  # d_model 256 (MBGen.yaml): the products of the weights are wider
    assert wide.absorbs(torch.zeros(1, 4, 256), 4, 81, None)
    assert not wide.absorbs(torch.zeros(1, 81, 256), 81, 81, None)  # as many queries as keys: projecting is cheaper
    assert not attention.absorbs(x, 4, 81, torch.zeros(1, 6, 4, 81))  # a bias per head and query
    dropping = Attention(64, 6, 64, 0.1)
    assert not dropping.absorbs(x, 4, 81, None)  # training with attention dropout: its own draws
    dropping.eval()
    assert dropping.absorbs(x, 4, 81, None)


def test_length_groups_cover_each_row_once_with_its_tokens(rule_data, monkeypatch):  # noqa: F811
    monkeypatch.setattr(mbgen, "CPU_CHUNK_ELEMENTS", SMALL_CHUNKS)
    _, model, _, _, _ = rule_data()
    lengths = torch.tensor([6, 1, 3, 2, 5, 6, 4, 1, 1, 6, 3])
    window = model.n_slots * 6 + 1
    groups = model.length_groups(lengths, window)
    rows = torch.cat([group_rows for group_rows, _ in groups])
    assert torch.equal(rows.sort().values, torch.arange(len(lengths)))
    for group_rows, tokens in groups:
        assert model.n_slots * lengths[group_rows].max() + 1 <= tokens <= window  # every row's tokens
        assert tokens < model.n_slots * 2 * lengths[group_rows].min() + 1  # less than half of them padding
        widest = max(model.d_model, model.d_ff, 3 * model.n_heads * model.d_head, model.n_heads * tokens)
        assert len(group_rows) == 1 or len(group_rows) * tokens * widest <= SMALL_CHUNKS
    model.train()
    model.dropout_prob = 0.1  # dropout in training: the whole batch at once, as before
    assert model.length_groups(lengths, window) == [(slice(None), window)]


def test_training_is_repeatable_under_a_seed(rule_data):  # noqa: F811
    losses = []
    for _ in range(2):
        config, model, train, _, _ = rule_data()
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        run = []
        for batch in list(SequenceLoader(config, train, 32, shuffle=False, training=True))[:3]:
            optimizer.zero_grad()
            loss = model.calculate_loss(batch)
            loss.backward()
            optimizer.step()
            run.append(loss.item())
        losses.append(run)
    assert losses[0] == losses[1]


def test_only_mbgen_uses_the_changed_layers():
    """The fast paths live in seq2seq.py and mbgen.py; no other model imports them, so none computes otherwise."""
    package = pathlib.Path(mbgen.__file__).parents[1]
    imports = re.compile(r"^\s*(from|import)\s+mbrec\.(layers\.seq2seq|models\.mbgen)\b|"
                         r"^\s*from\s+mbrec\.(layers|models)\s+import\s+.*\b(seq2seq|mbgen)\b", re.MULTILINE)
    users = sorted(str(path.relative_to(package)) for path in package.rglob("*.py")
                   if imports.search(path.read_text()))
    assert users == ["models/mbgen.py"]  # mbgen.py imports seq2seq; nothing else imports either
