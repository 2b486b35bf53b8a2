"""Like with like in tables: protocol checks, per-protocol columns, and the footnote sentences on what
the test targets are (issue 18, sections 2 and 3).

* :func:`check_table_protocols` refuses a dataset column whose runs were measured under different
  protocols, naming the differing keys; :func:`split_by_protocol` instead gives each protocol variant
  its own column (``--by-protocol``);
* :func:`protocol_lines` names each column's protocol, and how variants of one dataset differ;
* :func:`target_share_lines` gives, per dataset, the share of the task's test targets that are
  repeats (in the input window), cold (never in training) and held-out items, from the counts each
  record stores (``results.<task>.targets``);
* :func:`repeated_test_line` says which runs evaluated test more than once (sampling repeats).
"""

from collections import defaultdict

from mbrec.protocol import DERIVED, ProtocolMismatch, describe_differences, protocol_differences, record_protocol

PERCENT = 100.0
SHARE_DECIMALS = 1
# Settings named for each column's protocol in the footnote (the fingerprint covers all of them).
SHOWN_SETTINGS = ("heldout", "MAX_ITEM_LIST_LENGTH", "mask_history", "valid_task", "valid_metric")
# A dataset column per protocol variant is labelled "<dataset> [<fingerprint prefix>]".
VARIANT_FINGERPRINT_CHARS = 8


def _by_dataset_and_protocol(records):
    grouped = defaultdict(dict)  # dataset -> fingerprint -> [records]
    for record in records:
        _, fingerprint, _ = record_protocol(record)
        grouped[record["dataset"]].setdefault(fingerprint, []).append(record)
    return grouped


def _run_label(record):
    return f"{record['model']} seed {record['seed']} (run {record.get('run_key')})"


def check_table_protocols(records):
    """Raise :class:`ProtocolMismatch` when one dataset's records carry several protocol fingerprints."""
    problems = []
    for dataset, variants in sorted(_by_dataset_and_protocol(records).items()):
        if len(variants) < 2:
            continue
        (first, first_records), *others = sorted(variants.items(), key=lambda item: -len(item[1]))
        reference = record_protocol(first_records[0])[0]
        for fingerprint, group in others:
            runs = ", ".join(_run_label(record) for record in group[:3]) + (" ..." if len(group) > 3 else "")
            differences = describe_differences(reference, record_protocol(group[0])[0])
            problems.append(f"{dataset}: protocol {fingerprint} ({runs}) differs from {first} "
                            f"({_run_label(first_records[0])}, ...) in {differences}")
    if problems:
        raise ProtocolMismatch("runs measured under different protocols cannot share a cell or be compared:\n  "
                               + "\n  ".join(problems) + "\nUse --by-protocol for a column per protocol variant, "
                               "or --protocol FINGERPRINT (or --seeds / --models) to keep one.")


def variant_label(dataset, fingerprint):
    return f"{dataset} [{fingerprint[:VARIANT_FINGERPRINT_CHARS]}]"


def split_by_protocol(records):
    """Copies of ``records`` whose ``dataset`` names the protocol variant where a dataset has several."""
    relabelled = []
    for dataset, variants in _by_dataset_and_protocol(records).items():
        for fingerprint, group in variants.items():
            label = variant_label(dataset, fingerprint) if len(variants) > 1 else dataset
            relabelled += [dict(record, dataset=label, dataset_folder=dataset) for record in group]
    return relabelled


def with_protocol(records, fingerprint_prefix):
    """Only the records whose protocol fingerprint starts with ``fingerprint_prefix``."""
    return [record for record in records if record_protocol(record)[1].startswith(fingerprint_prefix)]


def protocol_lines(records):
    """One sentence naming each column's protocol; variants of one dataset say how they differ."""
    columns = {}
    for record in records:
        columns.setdefault(record["dataset"], record)
    parts, derived = [], []
    by_folder = defaultdict(list)
    for column, record in sorted(columns.items()):
        protocol, fingerprint, how = record_protocol(record)
        shown = ", ".join(f"{key} {protocol.get(key)}" for key in SHOWN_SETTINGS)
        parts.append(f"{column}: {fingerprint} ({shown})")
        by_folder[record.get("dataset_folder", column)].append(protocol)
        if how == DERIVED:
            derived.append(column)
    lines = [f"Protocol (settings that change what is measured; one per column): {'; '.join(parts)}."]
    for folder, protocols in sorted(by_folder.items()):
        if len(protocols) > 1:
            keys = sorted({key for other in protocols[1:] for key in protocol_differences(protocols[0], other)})
            lines.append(f"{folder} is shown under {len(protocols)} protocols differing in: {', '.join(keys)}.")
    if derived:
        lines.append(f"Protocol {DERIVED} (records made before protocols were stored) for: "
                     f"{', '.join(derived)}.")
    return lines


def _share(count, total):
    return f"{count / total * PERCENT:.{SHARE_DECIMALS}f}%"


def target_share_lines(records, task):
    """Per dataset column: the shares of ``task``'s test targets that are repeats, cold and held-out."""
    counts_by_column = defaultdict(set)
    for record in records:
        result = (record.get("results") or {}).get(task)
        if isinstance(result, dict):
            counts = result.get("targets")
            counts_by_column[record["dataset"]].add(None if counts is None else tuple(sorted(counts.items())))
    parts = []
    for column, variants in sorted(counts_by_column.items()):
        known = [dict(counts) for counts in variants if counts is not None]
        if not known:
            parts.append(f"{column}: unknown (records made before target shares were stored)")
            continue
        counts = known[0]  # one protocol per column: the same split, so the same targets
        total = counts["targets"]
        if not total:
            parts.append(f"{column}: no test target")
            continue
        text = (f"{column}: {_share(counts['in_window'], total)} in the input window, "
                f"{_share(counts['cold'], total)} cold (never in training)")
        heldout = counts.get("heldout")
        if isinstance(heldout, int):
            text += (f", {_share(heldout, total)} held-out items vs {_share(total - heldout, total)} logged last "
                     f"interactions")
        elif heldout is not None:
            text += ", held-out share unknown (raw held-out file not found when the run was made)"
        if len(known) > 1:
            text += " (records disagree on these counts; shares from one of them)"
        parts.append(text + f" (n = {total:,})")
    return [f"Test targets ({task}): {'; '.join(parts)}."] if parts else []


def repeated_test_line(records):
    """Which runs evaluated test more than once (the same weights under further sampling seeds)."""
    repeated = sorted(f"{record['model']}/{record['dataset']}/seed {record['seed']} "
                      f"({record['test_lock']['test_evaluations']}x)"
                      for record in records if (record.get("test_lock") or {}).get("test_evaluations", 1) > 1)
    if not repeated:
        return []
    return [f"Test evaluated more than once, on the same selected weights under further sampling seeds "
            f"(sampling_repeats; cells show the run's own sampling seed): {', '.join(repeated)}."]

