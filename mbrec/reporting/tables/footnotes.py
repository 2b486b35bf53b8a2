"""The sentences under a table: what a cell holds, the marks and their tests, the correction, the
notes of the runs, model selection (the test lock), modal features, held-out settings, and the
warnings about too few seeds."""

from collections import defaultdict

from mbrec.reporting.evidence import SEED_TEST_RULE, UNTESTED_RULE, user_level_description
from mbrec.reporting.protocols import protocol_lines, repeated_test_line, target_share_lines
from mbrec.reporting.stats import CORRECTION_NAMES, MIN_SEEDS_FOR_SEED_TEST, NEW, REPEAT
from mbrec.reporting.tables.marks import (
    CAP_MARK, DAGGER_MARK, EMPTY_MARK, IMPROVE_LABEL, MISSING_MARK, NA_MARK, STAR_MARK, UNKNOWN_MARK, VALUE,
)

# Starts the footnote sentence on model selection (the test lock).
SELECTION_NOTE = "Selected on valid; test evaluated once"
# At most this many runs are named in one footnote sentence; the rest are counted.
MAX_LISTED = 5


def _significance_lines(table):
    """Footnote sentences on the star, the dagger, the correction, its family and the effect sizes."""
    correction = CORRECTION_NAMES[table.correction]
    corrected = ("p-values uncorrected" if table.correction == "none" else
                 f"p-values {correction}-corrected over the family of all {table.family_size} per-user comparisons "
                 f"shown: the sole best vs each runner-up, in every column{' of both parts' if table.part else ''}")
    seed_corrected = ("uncorrected" if table.correction == "none" else
                      f"{correction}-corrected over the {table.seed_family_size} across-seed tests shown")
    return [
        f"{STAR_MARK}: the sole best model beats the runner-up with p < {table.alpha:g} in a "
        f"{user_level_description(table.test)}; {corrected}; {UNTESTED_RULE}.",
        f"{DAGGER_MARK}: the same holds for the {SEED_TEST_RULE} ({seed_corrected}), a separate result "
        f"from {STAR_MARK}.",
    ]


def _footnote(table, records):
    """Sentences explaining the cells, marks, tests, notes, selection and held-out settings."""
    seed_counts = sorted({len(cell.seeds) for cell in table.cells.values() if cell.status == VALUE})
    seeds_text = "/".join(str(count) for count in seed_counts) or "0"
    spread = " ± sample std over seeds" if table.show_std else ""
    users = {None: "", REPEAT: " Repeat targets only: users whose target item is in the model's input window.",
             NEW: " New-item targets only: users whose target item is not in the model's input window."}
    lines = [
        f"Task: {table.task}.{users[table.part]} Each cell: test metric, mean over seeds ({seeds_text} "
        f"seeds){spread}.",
        f"Bold: best; underlined: second best. Values are compared as displayed (rounded to "
        f"{table.decimals} decimals): all tied-best are bold and the next distinct value is underlined.",
        # the star and dagger sentences are inserted here by apply_correction
        f"{NA_MARK}: the model cannot do this task; {MISSING_MARK}: run not present.",
    ]
    if any(cell.capped for cell in table.cells.values()):
        lines.append(f"{CAP_MARK}: at least one run of the cell stopped at the epoch cap before its patience on "
                     f"valid ran out (not converged; record: training.stopped_by).")
    if table.part:
        lines.append(f"{UNKNOWN_MARK}: the run's record has no repeat flags (made before they were stored); "
                     f"rerun it with --rerun to split it. {EMPTY_MARK}: no test user of this part.")
    if table.has_improve:
        lines.append(f"{IMPROVE_LABEL}: (best proposed - best baseline) / best baseline, in %.")
    in_table = set(table.datasets)
    shown = [record for record in records if record["dataset"] in in_table and record["model"] in table.models]
    lines.append(_selection_line(shown))
    lines.extend(repeated_test_line(shown))
    lines.extend(protocol_lines(shown))
    lines.extend(target_share_lines(shown, table.task))
    notes = defaultdict(set)
    heldout = {}
    for record in shown:
        heldout.setdefault(record["dataset"], set()).add(record.get("heldout"))
        result = record["results"].get(table.task)
        if isinstance(result, dict) and result.get("note"):
            notes[result["note"]].add(record["model"])
    for note, models in sorted(notes.items()):
        lines.append(f"{note[0].upper()}{note[1:]}: {', '.join(sorted(models))}.")
    lines.extend(_modality_lines(shown))
    lines.extend(_beam_lines(shown, table.metrics))
    lines.extend(f"Record choice: {choice}." for choice in sorted({record["record_choice"] for record in shown
                                                                   if record.get("record_choice")}))
    if heldout:
        settings = "; ".join(
            f"{dataset}: " + ", ".join("none (no held-out file)" if value is None else str(value)
                                       for value in sorted(values, key=str))
            for dataset, values in sorted(heldout.items()))
        lines.append(f"Held-out test items (heldout setting): {settings}.")
    return lines


def _beam_lines(records, metrics):
    """Generative models rank only what their beam search returns (``beam_size`` items; every other
    item ties below them and is never a hit): at a cutoff K above the beam, @K repeats @beam_size."""
    cutoffs = sorted({int(metric.split("@")[1]) for metric in metrics if "@" in metric})
    beams = defaultdict(set)
    for record in records:
        beam = (record.get("config") or {}).get("beam_size")
        if isinstance(beam, int) and cutoffs and beam < cutoffs[-1]:
            beams[(record["model"], beam)].add(record["dataset"])
    lines = []
    for (model, beam), datasets in sorted(beams.items()):
        above = ", ".join(f"@{cutoff}" for cutoff in cutoffs if cutoff > beam)
        lines.append(f"{model} ranks only the {beam} items of its beam search (beam_size {beam}; every other item "
                     f"ties below them and is never a hit): its {above} values equal its @{beam} values "
                     f"({', '.join(sorted(datasets))}).")
    return lines


def _modality_lines(records):
    """Which runs used modal item features and which ran ID-only (models that record ``model_notes``)."""
    id_only, modal = defaultdict(set), defaultdict(set)
    for record in records:
        notes = record.get("model_notes")
        if not isinstance(notes, dict) or "id_only" not in notes:
            continue
        if notes["id_only"]:
            id_only[record["model"]].add(record["dataset"])
        else:
            modal[(record["model"], ", ".join(notes.get("modalities") or []))].add(record["dataset"])
    lines = []
    if id_only:
        runs = "; ".join(f"{model} on {', '.join(sorted(datasets))}" for model, datasets in sorted(id_only.items()))
        lines.append(f"ID-only (no modal item features, modality denoising off): {runs}.")
    if modal:
        runs = "; ".join(f"{model} on {', '.join(sorted(datasets))} ({names})"
                         for (model, names), datasets in sorted(modal.items()))
        lines.append(f"Modal item features used: {runs}.")
    return lines


def _selection_line(records):
    """The test-lock sentence: how checkpoints were selected, and which records cannot show it."""
    criteria = sorted({f"{lock.get('valid_task')} {lock.get('valid_metric')}"
                       for lock in (record.get("test_lock") for record in records) if lock})
    line = (f"{SELECTION_NOTE}: each run's checkpoint was chosen by its valid score"
            f"{' (' + ', '.join(criteria) + ')' if criteria else ''} and test was run once, on that checkpoint "
            f"(its sha256 and valid score are in the record)"
            f"{' (once per sampling seed where stated below)' if repeated_test_line(records) else ''}.")
    unlocked = sorted(f"{record['model']}/{record['dataset']}/seed {record['seed']}" for record in records
                      if not record.get("test_lock"))
    if unlocked:
        line += (f" {len(unlocked)} of {len(records)} records predate stored checkpoint hashes: "
                 f"{', '.join(unlocked[:MAX_LISTED])}{' ...' if len(unlocked) > MAX_LISTED else ''}.")
    return line


def _seed_warnings(table, runs_by_model_dataset):
    """A plain warning per dataset where a shown model has fewer than ``MIN_SEEDS_FOR_SEED_TEST`` seeds."""
    warnings = []
    for dataset in table.datasets:
        few = sorted((model, len(runs_by_model_dataset[(model, dataset)])) for model in table.models
                     if 0 < len(runs_by_model_dataset.get((model, dataset), {})) < MIN_SEEDS_FOR_SEED_TEST)
        if few:
            listed = ", ".join(f"{model} ({count})" for model, count in few)
            warnings.append(f"{dataset}: fewer than {MIN_SEEDS_FOR_SEED_TEST} seeds for {listed}. The spread over "
                            f"seeds is not estimated reliably and the across-seed test ({DAGGER_MARK}) is not run, "
                            f"so a difference may be due to the seed; run more seeds (--seeds).")
    return warnings
