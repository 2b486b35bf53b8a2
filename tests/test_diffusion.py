"""The shared diffusion module and the DiffuRec / DiffuRecSys family."""

import pytest
import torch

from mbrec.data.dataset import MultiBehaviorSequentialDataset, SequenceLoader
from mbrec.layers.diffusion import GaussianDiffusion, beta_schedule, classifier_free_guidance, offset_noise
from mbrec.registry import get_model_class
from tests.conftest import make_config, write_inter
from tests.test_runner import behavior_rule_rows, train_and_test

N_SAMPLES = 200_000


@pytest.mark.parametrize("schedule", ["linear", "trunc_linear", "cosine", "exp"])
def test_schedules_are_valid_variances(schedule):
    betas = beta_schedule(schedule, 32)
    assert betas.shape == (32,) and bool((betas > 0).all()) and bool((betas < 1).all())
    assert bool((betas[1:] >= betas[:-1]).all())  # noise grows along the chain


def test_truncated_linear_schedule_matches_diffurec():
    betas = beta_schedule("trunc_linear", 32)
    # 1000/32 * 1e-4 + 0.01 and 1000/32 * 0.02 + 0.01 (DiffuRec / Diffusion-LM "trunc_lin")
    assert betas[0].item() == pytest.approx(0.013125)
    assert betas[-1].item() == pytest.approx(0.635)


def test_forward_noising_matches_the_closed_form():
    """Chaining q(x_t | x_{t-1}) step by step gives q(x_t | x_0) of the closed form."""
    torch.manual_seed(0)
    betas = beta_schedule("trunc_linear", 8)
    diffusion = GaussianDiffusion(betas)
    x0 = torch.full((N_SAMPLES, 1), 1.5)
    chained = x0.clone().double()
    for t in range(8):
        chained = (1 - betas[t]).sqrt() * chained + betas[t].sqrt() * torch.randn_like(chained)
        closed = diffusion.q_sample(x0, torch.full((N_SAMPLES,), t), torch.randn_like(x0))
        expected_mean = 1.5 * torch.prod(1 - betas[: t + 1]).sqrt().item()
        expected_var = 1 - torch.prod(1 - betas[: t + 1]).item()
        for samples in (chained.float(), closed):
            assert samples.mean().item() == pytest.approx(expected_mean, abs=0.01)
            assert samples.var().item() == pytest.approx(expected_var, abs=0.01)


def test_posterior_is_the_regression_of_x_prev_on_x_t():
    """q(x_{t-1} | x_t, x_0): slope, intercept and residual variance of a Monte Carlo regression."""
    torch.manual_seed(1)
    betas = beta_schedule("linear", 10)
    diffusion = GaussianDiffusion(betas)
    t, x0 = 6, 0.8
    x_prev = diffusion.q_sample(torch.full((N_SAMPLES,), x0), torch.full((N_SAMPLES,), t - 1),
                                torch.randn(N_SAMPLES)).double()
    x_t = (1 - betas[t]).sqrt() * x_prev + betas[t].sqrt() * torch.randn(N_SAMPLES, dtype=torch.float64)
    slope = torch.cov(torch.stack([x_t, x_prev]))[0, 1] / x_t.var()
    intercept = x_prev.mean() - slope * x_t.mean()
    residual_var = (x_prev - intercept - slope * x_t).var()
    steps = torch.tensor([t])
    mean_at_zero, variance = diffusion.posterior(torch.tensor([[x0]]), torch.tensor([[0.0]]), steps)
    mean_at_one, _ = diffusion.posterior(torch.tensor([[x0]]), torch.tensor([[1.0]]), steps)
    assert slope.item() == pytest.approx((mean_at_one - mean_at_zero).item(), abs=0.01)
    assert intercept.item() == pytest.approx(mean_at_zero.item(), abs=0.01)
    assert residual_var.item() == pytest.approx(variance.item(), rel=0.03)


def test_ddim_with_the_true_x0_lands_on_it():
    torch.manual_seed(2)
    diffusion = GaussianDiffusion(beta_schedule("exp", 200))
    x0 = torch.randn(4, 16)
    x_t = diffusion.q_sample(x0, torch.full((4,), 199), torch.randn(4, 16))
    for step, prev_step in diffusion.ddim_schedule(10):
        x_t = diffusion.ddim_step(x0, x_t, torch.full((4,), step), torch.full((4,), prev_step))
    assert torch.allclose(x_t, x0, atol=1e-4)
    assert len(diffusion.ddim_schedule(10)) == 20


@pytest.mark.parametrize("prediction_type", ["x0", "epsilon"])
def test_ddim_sample_with_a_perfect_predictor_returns_x0(prediction_type):
    """A denoiser that knows x_0 (or, equivalently, the noise in x_t) lands on x_0 from any x_T."""
    torch.manual_seed(3)
    diffusion = GaussianDiffusion(beta_schedule("exp", 200))
    x0 = torch.randn(4, 16)

    def perfect(x_t, steps):
        return x0 if prediction_type == "x0" else diffusion.predict_noise_from_x0(x_t, steps, x0)

    assert torch.allclose(diffusion.ddim_sample(perfect, torch.randn(4, 16), 10, prediction_type), x0, atol=1e-4)


def test_alpha_bar_decreases_inside_the_unit_interval():
    alpha_bar = GaussianDiffusion(beta_schedule("exp", 200)).alpha_bar
    assert bool((alpha_bar > 0).all()) and bool((alpha_bar < 1).all())
    assert bool((alpha_bar[1:] < alpha_bar[:-1]).all())


def test_classifier_free_guidance_follows_eq_17():
    conditional, unconditional = torch.tensor([2.0]), torch.tensor([-1.0])
    assert classifier_free_guidance(conditional, unconditional, 0.0).item() == 2.0  # w = 0: conditional
    assert classifier_free_guidance(conditional, unconditional, 1.0).item() == 5.0  # (1 + w) c - w u
    assert classifier_free_guidance(conditional, unconditional, 1.0, sign="plus").item() == 3.0
    with pytest.raises(ValueError, match="guidance sign"):
        classifier_free_guidance(conditional, unconditional, 1.0, sign="times")


def test_ancestral_step_adds_no_noise_at_the_last_step():
    diffusion = GaussianDiffusion(beta_schedule("trunc_linear", 32))
    x0_hat, x_t = torch.randn(3, 8), torch.randn(3, 8)
    out = diffusion.ancestral_step(x0_hat, x_t, torch.zeros(3, dtype=torch.long), noise=torch.randn(3, 8))
    assert torch.allclose(out, x0_hat, atol=1e-5)  # posterior mean at t=0 is x0_hat itself


def test_ancestral_step_noise_scale_follows_the_variance_choice():
    diffusion = GaussianDiffusion(beta_schedule("trunc_linear", 32))
    x0_hat, x_t, noise, steps = torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), torch.tensor([5])
    posterior = diffusion.ancestral_step(x0_hat, x_t, steps, noise=noise, variance="posterior")
    beta = diffusion.ancestral_step(x0_hat, x_t, steps, noise=noise, variance="beta")
    assert posterior.item() == pytest.approx(diffusion.posterior_variance[5].sqrt().item())
    assert beta.item() == pytest.approx(diffusion.betas[5].sqrt().item())


def test_offset_noise_has_the_configured_mean():
    torch.manual_seed(3)
    fixed = offset_noise((N_SAMPLES, 4), scale=0.1, delta=2.0)
    assert fixed.mean().item() == pytest.approx(0.2, abs=0.01) and fixed.std().item() == pytest.approx(1.0, abs=0.01)
    per_sample = offset_noise((N_SAMPLES, 64), scale=0.1)
    assert per_sample.mean().item() == pytest.approx(0.0, abs=0.01)
    # one shift per sample, shared by all its dimensions: sample means spread by 0.1 beyond 1/sqrt(64)
    assert per_sample.mean(dim=1).var().item() == pytest.approx(0.01 + 1 / 64, rel=0.05)


# ----- the models -----------------------------------------------------------------------------

TINY_DIFFUREC = dict(hidden_size=16, n_layers=2, n_heads=2, diffusion_steps=8, hidden_dropout_prob=0.0,
                     embedding_dropout_prob=0.0, MAX_ITEM_LIST_LENGTH=6)


def tiny_model(tmp_path, model, rows, **overrides):
    config = make_config(model, write_inter(tmp_path, "tiny", rows), **{**TINY_DIFFUREC, **overrides})
    train, _, test = MultiBehaviorSequentialDataset(config).build()
    network = get_model_class(model)(config, train)
    return config, network, train, test


def cycle_rows(n_users=40, length=10, n_items=8):
    """A deterministic cycle: every next item is fixed by the last one."""
    return [(f"u{u}", f"i{(u + t) % n_items}", "view", t) for u in range(n_users) for t in range(length)]


def test_training_noise_has_the_offset_mean_only_in_training(tmp_path):
    _, network, _, _ = tiny_model(tmp_path, "DiffuRecSys", cycle_rows(), offset_noise_scale=0.1,
                                  offset_noise_delta=3.0)
    torch.manual_seed(4)
    network.train()
    assert network.training_noise((N_SAMPLES, 8), "cpu").mean().item() == pytest.approx(0.3, abs=0.01)
    network.eval()
    assert network.training_noise((N_SAMPLES, 8), "cpu").mean().item() == pytest.approx(0.0, abs=0.01)


@pytest.mark.parametrize("model", ["DiffuRec", "DiffuRecSys"])
def test_output_ignores_padded_history_positions(tmp_path, model):
    rows = [(f"u{u}", f"i{(u * 3 + t) % 8}", "view", t) for u in range(6) for t in range(3 + u)]
    config, network, _, test = tiny_model(tmp_path, model, rows)
    network.eval()
    batch = next(iter(SequenceLoader(config, test, 64, shuffle=False, training=False)))
    item_seq, lengths = batch[network.ITEM_SEQ], batch[network.ITEM_SEQ_LEN]
    assert bool((lengths < item_seq.size(1)).any())  # some rows have padding to disturb
    x_t, steps = torch.randn(len(lengths), 16), torch.full((len(lengths),), 3)
    lambdas = network.sample_lambda(network.history_embedding(batch).shape, "cpu")

    def x0_hat(interaction):
        return network.approximate_x0(network.history_embedding(interaction), network.padding_mask(interaction),
                                      x_t, network.step_condition(steps), lambdas=lambdas)

    reference = x0_hat(batch)
    positions = torch.arange(item_seq.size(1)).unsqueeze(0)
    disturbed = batch  # Interaction fields are replaced, never edited in place
    noise_items = torch.randint(1, network.n_items, item_seq.shape)
    disturbed[network.ITEM_SEQ] = torch.where(positions >= lengths.unsqueeze(1), noise_items, item_seq)
    assert torch.allclose(x0_hat(disturbed), reference, atol=1e-5)
    # ...while a real history item does change it (so the check above can fail)
    disturbed[network.ITEM_SEQ] = torch.where(positions == 0, (item_seq % (network.n_items - 1)) + 1, item_seq)
    assert not torch.allclose(x0_hat(disturbed), reference, atol=1e-3)


def test_sampling_noise_is_seeded_per_evaluation(tmp_path):
    config, network, _, test = tiny_model(tmp_path, "DiffuRecSys", cycle_rows())
    batch = next(iter(SequenceLoader(config, test, 64, shuffle=False, training=False)))
    network.eval()
    first = network.full_sort_predict(batch)
    torch.manual_seed(123)  # the global RNG (training's) does not move evaluation noise
    network.train()
    network.eval()
    assert torch.equal(first, network.full_sort_predict(batch))
    network.reseed_sampling(network.sampling_seed + 1)
    assert not torch.equal(first, network.full_sort_predict(batch))


def test_diffurec_refuses_diffurecsys_switches(tmp_path):
    with pytest.raises(ValueError, match="DiffuRecSys"):
        tiny_model(tmp_path, "DiffuRec", cycle_rows(), cross_attention=True)


@pytest.mark.parametrize("model", ["DiffuRecSys", "DiffuRec"])
def test_small_diffusion_model_overfits_a_tiny_dataset(tmp_path, model):
    result = train_and_test(tmp_path, model, cycle_rows(), **{**TINY_DIFFUREC, "hidden_size": 32},
                            learning_rate=0.01, epochs=30, train_batch_size=64)
    assert result.metrics["recall@1"] > 0.9


def test_behavior_aware_diffurecsys_uses_the_asked_behavior(tmp_path):
    result = train_and_test(tmp_path, "DiffuRecSysMB", behavior_rule_rows(), **{**TINY_DIFFUREC, "hidden_size": 32},
                            learning_rate=0.01, epochs=30, train_batch_size=128)
    assert result.metrics["recall@1"] > 0.9  # item-only models cannot beat ~1/3 here


@pytest.mark.parametrize("model", ["DiffuRecSys", "DiffuRec"])
def test_unit_guidance_scale_lets_the_approximator_read_x_t(tmp_path, model):
    """lambda ~ 0.001 shrinks x_t to almost nothing in the guidance; ``guidance_scale: unit`` keeps it at full
    scale, so replacing x_t moves the approximator's output far more (measured at initialisation)."""
    changes = {}
    for scale in ("lambda", "unit"):
        config, network, _, test = tiny_model(tmp_path / scale, model, cycle_rows(), guidance_scale=scale)
        network.eval()
        batch = next(iter(SequenceLoader(config, test, 64, shuffle=False, training=False)))
        history, padding = network.history_embedding(batch), network.padding_mask(batch)
        steps = torch.full((history.size(0),), 3)
        lambdas = network.sample_lambda(history.shape, "cpu")
        torch.manual_seed(0)
        x_t, other = torch.randn(2, history.size(0), 16)
        reference = network.approximate_x0(history, padding, x_t, network.step_condition(steps), lambdas=lambdas)
        replaced = network.approximate_x0(history, padding, other, network.step_condition(steps), lambdas=lambdas)
        changes[scale] = ((replaced - reference).norm() / reference.norm()).item()
    assert changes["unit"] > 10 * changes["lambda"]
    assert changes["unit"] > 0.05


def test_guidance_scale_rejects_unknown_values(tmp_path):
    with pytest.raises(ValueError, match="guidance_scale must be one of"):
        tiny_model(tmp_path, "DiffuRecSys", cycle_rows(), guidance_scale="half")
