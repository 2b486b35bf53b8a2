"""The papers' claims checked against a suite's records (``properties/suites/claims.yaml``).

Each claim is an ordering a paper reports ("FatsMB > MB-STR"), naming two suite entries, the
task and the metric it is about. On every dataset of the suite where both entries ran, the
claim is tested with the tables' user-level rule (:func:`mbrec.reporting.evidence.pair_evidence`:
each test user's value averaged over the seeds both entries ran, paired test over users) and an
effect size (mean difference over users, bootstrap CI resampling users); the p-values of all
(claim, dataset) tests of one report are corrected together (Holm by default). Verdict:

- ``confirmed``: corrected p < alpha and the claimed winner is ahead;
- ``contradicted``: corrected p < alpha and the claimed winner is behind;
- ``not significant``: corrected p >= alpha, or no p-value (too few users, zero variance: ``problem`` says);
- ``not run``: one of the two entries has no run on that dataset (or they share no seed).
"""

import math
from dataclasses import dataclass

from mbrec.reporting.evidence import BOOTSTRAP_RULE, USER_LEVEL_RULE, pair_evidence
from mbrec.reporting.stats import (DEFAULT_ALPHA, DEFAULT_CORRECTION, DEFAULT_TEST, TEST_NAMES, AlignmentError,
                                   adjust_pvalues)
from mbrec.suites import CLAIMS_FILE, SuiteError
from mbrec.utils import read_yaml

CONFIRMED, CONTRADICTED, NOT_SIGNIFICANT, NOT_RUN = "confirmed", "contradicted", "not significant", "not run"
CLAIM_KEYS = {"paper", "claim", "better", "worse", "task", "metric"}
DEFAULT_CLAIM_TASK, DEFAULT_CLAIM_METRIC = "behavior_specific", "ndcg@10"
VALUE_DECIMALS = 4
PERCENT = 100.0


@dataclass(frozen=True)
class Claim:
    paper: str
    claim: str
    better: str
    worse: str
    task: str = DEFAULT_CLAIM_TASK
    metric: str = DEFAULT_CLAIM_METRIC


@dataclass
class ClaimResult:
    claim: Claim
    dataset: str
    verdict: str
    mean_difference: float = math.nan  # better - worse, per user (each user's value averaged over shared seeds)
    ci_low: float = math.nan
    ci_high: float = math.nan
    relative: float = None
    pvalue: float = math.nan
    p_adjusted: float = math.nan
    seeds: tuple = ()
    n_users: int = 0
    problem: str = None


def load_claims(path=CLAIMS_FILE):
    """Read the claims file; raise :class:`SuiteError` naming the file and the bad claim."""
    content = read_yaml(path) or {}
    items = content.get("claims")
    if not isinstance(items, list) or not items:
        raise SuiteError(f"{path}: 'claims' must be a non-empty list")
    claims = []
    for item in items:
        if not isinstance(item, dict) or not {"better", "worse", "paper", "claim"} <= set(item):
            raise SuiteError(f"{path}: every claim needs paper, claim, better and worse; got {item!r}")
        unknown = sorted(set(item) - CLAIM_KEYS)
        if unknown:
            raise SuiteError(f"{path}: claim {item['claim']!r} has unknown key(s) {unknown}; "
                             f"valid: {sorted(CLAIM_KEYS)}")
        claims.append(Claim(**{key: str(value).lower() if key == "metric" else str(value)
                               for key, value in item.items()}))
    return claims


def _runs_by_seed(records, entry, dataset):
    return {int(record["seed"]): record for record in records
            if record["model"] == entry and record["dataset"] == dataset}


def evaluate_claims(claims, records, datasets, alpha=DEFAULT_ALPHA, test=DEFAULT_TEST, correction=DEFAULT_CORRECTION):
    """One :class:`ClaimResult` per (claim, dataset), p-values corrected over all tested pairs.

    ``records`` name their suite entry in ``model`` and their dataset variant in ``dataset``.
    """
    results = []
    for claim in claims:
        for dataset in datasets:
            better = _runs_by_seed(records, claim.better, dataset)
            worse = _runs_by_seed(records, claim.worse, dataset)
            result = ClaimResult(claim, dataset, NOT_RUN, seeds=tuple(sorted(set(better) & set(worse))))
            results.append(result)
            if not result.seeds:
                continue
            try:
                evidence = pair_evidence(better, worse, claim.task, claim.metric, test=test)
            except (AlignmentError, KeyError, TypeError) as error:  # e.g. a task one entry cannot do
                result.problem = str(error)
                continue
            if evidence is None or not len(evidence.values.users):
                continue
            outcome, effect = evidence.user_test, evidence.effect
            result.verdict = NOT_SIGNIFICANT
            result.pvalue, result.n_users, result.problem = outcome.pvalue, outcome.n, outcome.reason or None
            result.mean_difference, result.ci_low, result.ci_high = (effect.mean_difference, effect.ci_low,
                                                                     effect.ci_high)
            result.relative = effect.relative
    tested = [result for result in results if result.verdict != NOT_RUN]
    for result, adjusted in zip(tested, adjust_pvalues([result.pvalue for result in tested], correction)):
        result.p_adjusted = float(adjusted)
        if adjusted < alpha:
            result.verdict = CONFIRMED if result.mean_difference > 0 else CONTRADICTED
    return results


def _number(value, decimals=VALUE_DECIMALS, signed=False):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def _p(value):
    return "—" if value is None or math.isnan(value) else f"{value:.3g}"


def claims_to_markdown(results, alpha=DEFAULT_ALPHA, test=DEFAULT_TEST, correction=DEFAULT_CORRECTION):
    """The claims table (one row per claim and dataset) with its footnote."""
    lines = ["| Claim | Paper | Dataset | Task, metric | Verdict | Difference | 95% CI | Relative | p (corrected) "
             "| Seeds |",
             "|---|---|---|---|---|---:|---|---:|---:|---:|"]
    for result in results:
        claim = result.claim
        ci = (f"[{_number(result.ci_low, signed=True)}, {_number(result.ci_high, signed=True)}]"
              if not math.isnan(result.ci_low) else "—")
        relative = "—" if result.relative is None else f"{result.relative * PERCENT:+.1f}%"
        lines.append(f"| {claim.claim} | {claim.paper} | {result.dataset} | {claim.task}, {claim.metric} | "
                     f"{result.verdict} | {_number(result.mean_difference, signed=True)} | {ci} | {relative} | "
                     f"{_p(result.p_adjusted)} | {len(result.seeds) or '—'} |")
    tested = sum(not math.isnan(result.pvalue) for result in results)  # the family Holm counts
    lines += ["", f"Difference: mean over test users of (claimed winner - claimed loser), 95% CI by {BOOTSTRAP_RULE}. "
                  f"Test: {TEST_NAMES[test]} {USER_LEVEL_RULE}; {correction} correction over the {tested} tested "
                  f"(claim, dataset) pairs; confirmed / contradicted need corrected p < {alpha}."]
    problems = [f"{result.claim.claim} on {result.dataset}: {result.problem}" for result in results if result.problem]
    lines += [f"- no p-value: {problem}" for problem in problems]
    return "\n".join(lines) + "\n"
