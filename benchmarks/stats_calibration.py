"""Calibration of the significance rule: false-positive rate and CI coverage, old pooled vs user-level.

What is simulated: two models scored on the same ``--users`` test users under 1, 3 and 5 seeds,
with the user-level correlation across seeds real runs have (a user who is easy for a model
stays easy under every seed). Per user i, model m, seed s the logit of success is

    eta = BASE_LOGIT + user_i + model_im + seed_ims (+ EFFECT for model A under the alternative)

with ``user_i`` shared by both models (how hard the user is), ``model_im`` shared by all seeds
of one model (what that model makes of the user) and ``seed_ims`` new under every seed (training
randomness). Values are drawn from it under every seed:

* binary (Recall@10-like): hit with probability sigmoid(eta);
* ndcg (NDCG@10-like): a 0-based rank from a geometric distribution with success probability
  sigmoid(eta), scored 1/log2(rank + 2) below rank 10, else 0.

Scenarios: ``null`` (no true difference: the two models are exchangeable), ``alternative``
(model A gets ``EFFECT`` on the logit) and ``deterministic null`` (Pop / Recent style: one
draw per user, repeated under every seed, no seed term).

Rules, side by side:

* old (pooled): every (seed, user) pair is one observation, n = users x seeds;
* new (user-level, ``mbrec.reporting.evidence``): each user's value averaged over the seeds,
  n = users.

For each rule: the paired t-test (scipy ``ttest_1samp`` on the differences = ``ttest_rel``), its
t-interval, the Wilcoxon signed-rank test (scipy ``wilcoxon``, zero differences dropped, as the
tables use it) and the percentile bootstrap of the mean difference (``--resamples`` resamples,
the tables' default, resampling the rule's observations). Printed: the rejection rate at
alpha (the false-positive rate under a null, the power under the alternative) and the share of
intervals covering the true mean difference (0 under a null; under the alternative computed
from ``TRUTH_DRAWS`` draws of the exact per-user expectation). The Wilcoxon test has no interval
for the mean (its interval is for the pseudo-median): its coverage is shown under the nulls
only, where it equals 1 - rejection rate by test inversion. Each rate carries Monte Carlo
standard error sqrt(r (1 - r) / simulations), printed once per table.

The bootstrap means are a matrix product: for a chunk of ``CHUNK`` simulated datasets one
count matrix W [resamples, n] (how often each observation is drawn, multinomial) gives every
dataset's resample means as W @ D / n. Datasets are independent, so sharing W within a chunk
leaves each dataset's bootstrap exact; a new W is drawn per chunk.

    OMP_NUM_THREADS=1 python benchmarks/stats_calibration.py [--simulations 2000] [--users 300]
        [--resamples 2000] [--seed 0]
"""

import argparse
import time

import numpy as np
from scipy import special, stats as scipy_stats

from mbrec.reporting.stats import DEFAULT_ALPHA, DEFAULT_BOOTSTRAP_RESAMPLES, DEFAULT_CONFIDENCE

SEED_COUNTS = (1, 3, 5)
KINDS = ("binary", "ndcg")
NULL, ALTERNATIVE, DETERMINISTIC = "null", "alternative", "deterministic null"
SCENARIOS = (NULL, ALTERNATIVE, DETERMINISTIC)
RULES = ("old (pooled)", "new (user-level)")
# The generative model (logit scale). With these, a model's hit rate is ~0.36 and a user's hit
# under one seed correlates ~0.4 with the same user's hit under another seed (printed below).
BASE_LOGIT = -0.8
USER_SD = 1.5  # how hard the user is, shared by both models
MODEL_USER_SD = 0.8  # what one model makes of the user, shared by its seeds
SEED_SD = 0.6  # training randomness, new under every seed
EFFECT = 0.15  # model A's advantage on the logit under the alternative
CUTOFF = 10  # @10: ranks below this score
# Draws of the exact per-user expectation giving the true mean difference under the alternative.
TRUTH_DRAWS = 4_000_000
# Simulated datasets that share one bootstrap count matrix (and are tested in one batch).
CHUNK = 250
# The acceptance ranges of the new rule (issue 18).
FALSE_POSITIVE_RANGE = (0.03, 0.07)
COVERAGE_RANGE = (0.93, 0.97)
NDCG_WEIGHTS = 1.0 / np.log2(np.arange(CUTOFF) + 2.0)


def ndcg_of_rank(ranks):
    return np.where(ranks < CUTOFF, NDCG_WEIGHTS[np.minimum(ranks, CUTOFF - 1)], 0.0)


def expected_ndcg(success):
    """E[NDCG@10] of a geometric rank with success probability ``success`` (exact)."""
    ranks = np.arange(CUTOFF)
    return (success[..., None] * (1.0 - success[..., None]) ** ranks * NDCG_WEIGHTS).sum(axis=-1)


def logits(rng, shape, seeds, scenario):
    """[simulations, users, seeds, 2] logits of model A (index 0) and model B (index 1)."""
    simulations, users = shape
    user = rng.normal(0.0, USER_SD, (simulations, users, 1, 1))
    model_user = rng.normal(0.0, MODEL_USER_SD, (simulations, users, 1, 2))
    seed_noise = 0.0 if scenario == DETERMINISTIC else rng.normal(0.0, SEED_SD, (simulations, users, seeds, 2))
    effect = np.array([EFFECT if scenario == ALTERNATIVE else 0.0, 0.0])
    return np.broadcast_to(BASE_LOGIT + user + model_user + seed_noise + effect, (simulations, users, seeds, 2))


def draw_values(rng, kind, shape, seeds, scenario):
    """[simulations, users, seeds, 2] per-user metric values; a deterministic model repeats one draw."""
    drawn_seeds = 1 if scenario == DETERMINISTIC else seeds
    success = special.expit(logits(rng, shape, drawn_seeds, scenario))
    if kind == "binary":
        values = (rng.random(success.shape) < success).astype(np.float64)
    else:
        ranks = np.floor(np.log(rng.random(success.shape)) / np.log1p(-success)).astype(np.int64)
        values = ndcg_of_rank(ranks)
    return np.repeat(values, seeds, axis=2) if drawn_seeds != seeds else values


def true_difference(rng, kind, scenario):
    """(mean difference A - B over users and seeds, its Monte Carlo standard error)."""
    if scenario != ALTERNATIVE:
        return 0.0, 0.0  # exchangeable models
    success = special.expit(logits(rng, (TRUTH_DRAWS, 1), 1, scenario)).reshape(TRUTH_DRAWS, 2)
    expected = success if kind == "binary" else expected_ndcg(success)
    differences = expected[:, 0] - expected[:, 1]
    return float(differences.mean()), float(differences.std(ddof=1) / np.sqrt(TRUTH_DRAWS))


def observations(values, rule):
    """[simulations, n] paired differences the rule tests."""
    differences = values[..., 0] - values[..., 1]  # [simulations, users, seeds]
    if rule == RULES[0]:
        return differences.reshape(differences.shape[0], -1)
    return differences.mean(axis=2)


def bootstrap_intervals(rng, differences, resamples, confidence):
    """[2, simulations] percentile bootstrap interval of each row's mean (one count matrix per batch)."""
    n = differences.shape[1]
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)  # [resamples, n]
    means = counts @ differences.T / n  # [resamples, simulations]
    tail = (1.0 - confidence) / 2.0
    return np.quantile(means, [tail, 1.0 - tail], axis=0)


def evaluate(rng, differences, truth, alpha, resamples, confidence):
    """Per-simulation outcomes of one batch: dict of boolean arrays."""
    n = differences.shape[1]
    spread = differences.std(axis=1, ddof=1)
    testable = spread > 0  # zero variance: the product gives no p-value (never a rejection)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_result = scipy_stats.ttest_1samp(differences, 0.0, axis=1)
        wilcoxon = scipy_stats.wilcoxon(differences, axis=1)
    half_width = scipy_stats.t.ppf(1.0 - (1.0 - confidence) / 2.0, n - 1) * spread / np.sqrt(n)
    mean = differences.mean(axis=1)
    low, high = bootstrap_intervals(rng, differences, resamples, confidence)
    return {
        "ttest_reject": testable & (t_result.pvalue < alpha),
        "ttest_cover": testable & (np.abs(mean - truth) <= half_width),
        "wilcoxon_reject": testable & (wilcoxon.pvalue < alpha),
        "bootstrap_reject": (low > 0.0) | (high < 0.0),
        "bootstrap_cover": (low <= truth) & (truth <= high),
        "untestable": ~testable,
    }


def seed_correlation(values):
    """Mean over simulations of the correlation, over users, of model B's values under seeds 0 and 1."""
    first, second = values[:, :, 0, 1], values[:, :, 1, 1]
    first = first - first.mean(axis=1, keepdims=True)
    second = second - second.mean(axis=1, keepdims=True)
    correlation = (first * second).sum(axis=1) / np.sqrt((first ** 2).sum(axis=1) * (second ** 2).sum(axis=1))
    return float(np.nanmean(correlation))


def run_cell(rng, kind, scenario, seeds, args, truth):
    totals = {rule: {} for rule in RULES}
    correlation = []
    for start in range(0, args.simulations, CHUNK):
        batch = min(CHUNK, args.simulations - start)
        values = draw_values(rng, kind, (batch, args.users), seeds, scenario)
        if seeds > 1:
            correlation.append(seed_correlation(values))
        for rule in RULES:
            outcome = evaluate(rng, observations(values, rule), truth, args.alpha, args.resamples, args.confidence)
            for name, hits in outcome.items():
                totals[rule][name] = totals[rule].get(name, 0) + int(hits.sum())
    rates = {rule: {name: count / args.simulations for name, count in counts.items()}
             for rule, counts in totals.items()}
    return rates, (float(np.mean(correlation)) if correlation else None)


def _fmt(value):
    return "   —  " if value is None else f"{value:6.3f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--simulations", type=int, default=2000, help="simulated datasets per cell")
    parser.add_argument("--users", type=int, default=300, help="test users per dataset")
    parser.add_argument("--resamples", type=int, default=DEFAULT_BOOTSTRAP_RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA)
    parser.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE)
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulation")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    misses = []
    standard_error = np.sqrt(args.alpha * (1 - args.alpha) / args.simulations)
    print(f"{args.simulations} simulations per cell, {args.users} users, {args.resamples} bootstrap resamples, "
          f"alpha {args.alpha:g}, {args.confidence:.0%} intervals. Monte Carlo standard error of a rate near "
          f"{args.alpha:g} or {1 - args.alpha:g}: {standard_error:.4f}.")
    for kind in KINDS:
        for scenario in SCENARIOS:
            truth, truth_error = true_difference(rng, kind, scenario)
            print(f"\n## {kind}, {scenario}: true mean difference {truth:+.5f}"
                  + (f" (Monte Carlo standard error {truth_error:.5f})" if truth_error else ""))
            rate_name = "power" if scenario == ALTERNATIVE else "false-positive rate"
            print(f"| seeds | rule | seed corr. | t-test {rate_name} | t-interval coverage | Wilcoxon {rate_name} "
                  f"| Wilcoxon coverage | bootstrap {rate_name} | bootstrap coverage | untestable |")
            print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            for seeds in SEED_COUNTS:
                rates, correlation = run_cell(rng, kind, scenario, seeds, args, truth)
                for rule in RULES:
                    rate = rates[rule]
                    wilcoxon_cover = None if scenario == ALTERNATIVE else 1.0 - rate["wilcoxon_reject"]
                    print(f"| {seeds} | {rule} | {_fmt(correlation)} | {_fmt(rate['ttest_reject'])} | "
                          f"{_fmt(rate['ttest_cover'])} | {_fmt(rate['wilcoxon_reject'])} | {_fmt(wilcoxon_cover)} | "
                          f"{_fmt(rate['bootstrap_reject'])} | {_fmt(rate['bootstrap_cover'])} | "
                          f"{rate['untestable']:.3f} |")
                    if rule != RULES[1]:
                        continue
                    checks = [("t-interval coverage", rate["ttest_cover"], COVERAGE_RANGE),
                              ("bootstrap coverage", rate["bootstrap_cover"], COVERAGE_RANGE)]
                    if scenario != ALTERNATIVE:
                        checks += [(f"{test} false-positive rate", rate[f"{test}_reject"], FALSE_POSITIVE_RANGE)
                                   for test in ("ttest", "wilcoxon", "bootstrap")]
                    misses += [f"{kind}, {scenario}, {seeds} seed(s): {name} {value:.3f} outside {low}-{high}"
                               for name, value, (low, high) in checks if not low <= value <= high]
    print(f"\nNew rule against the targets (false-positive rate {FALSE_POSITIVE_RANGE}, coverage {COVERAGE_RANGE}): "
          + ("all within." if not misses else f"{len(misses)} outside:"))
    for miss in misses:
        print(f"  - {miss}")
    print(f"Elapsed: {time.perf_counter() - started:.0f} s")
    return 0 if not misses else 1


if __name__ == "__main__":
    raise SystemExit(main())
