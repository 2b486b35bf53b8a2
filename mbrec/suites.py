"""Benchmark suites as data: ``properties/suites/<name>.yaml`` read into a checked :class:`Suite`.

A suite names dataset variants (``properties/dataset/*.yaml``), entries (a registered model, or
an ablation of one with its own overrides, named like ``FatsMB[pos=ape]``), seeds, one tuning
budget shared by every learned entry, the epoch cap and patience, and per-model overrides.
This module only reads and checks the file (plain YAML, no registry): the runner
(``mbrec.benchmark.suite``) plans and trains it, reporting (``mbrec.reporting.suite_tables``)
renders its records. Both import this module; it imports neither.

File format::

    datasets: [retailrocket_f10, taobao_f5]   # dataset variants, in table order
    seeds: [1, 2, 3]                          # the first one is the tuning seed
    models:                                   # entries, in table order
      - Pop                                   # a registered model, as it ships
      - SASRec
      - {name: "FatsMB[pos=ape]", model: FatsMB, overrides: {position_encoding: ape}, tune_from: FatsMB}
    tuning: {trials: 8, scheduler: asha, grace_period: 3, reduction_factor: 3}
    training: {epochs: 100, stopping_step: 5}  # epoch cap and patience of every run and trial
    overrides: {hidden_size: 64}               # every run of the suite
    model_overrides: {MBGen: {d_model: 64}}    # every entry of that model (ablations included)
    proposed: [FatsMB, MBGen]                  # entries shown as the proposed group of the tables

``tune_from: ENTRY`` runs an entry with the configuration ENTRY's sweep selected (plus its own
overrides) instead of sweeping it: an ablation changes one switch of the tuned model.
"""

from dataclasses import dataclass, field, replace
from pathlib import Path

from mbrec.utils import PROPERTIES_DIR, REPO_DIR, read_yaml

SUITES_DIR = PROPERTIES_DIR / "suites"
CLAIMS_FILE = SUITES_DIR / "claims.yaml"
SUITE_KEYS = {"description", "datasets", "seeds", "models", "tuning", "training", "overrides", "model_overrides",
              "proposed"}
ENTRY_KEYS = {"name", "model", "overrides", "tune_from", "grid"}
TUNING_KEYS = {"trials", "scheduler", "grace_period", "reduction_factor"}
TRAINING_KEYS = {"epochs", "stopping_step"}
# Records of a suite live in the repository under this folder, one subfolder per suite.
REFERENCE_DIRNAME = "reference"
# The key of a record naming the suite entries it is a run of (added by the suite runner).
RECORD_KEY = "suite_entries"


class SuiteError(ValueError):
    """A suite file is missing or malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class Entry:
    """One row of a suite's tables: ``model`` run with ``overrides`` (over the suite's and the model's)."""

    name: str
    model: str
    overrides: dict = field(default_factory=dict, hash=False)
    tune_from: str = None
    grid: str = None  # a grid file other than properties/hyper/<model>.yaml


@dataclass
class Suite:
    name: str
    path: Path
    datasets: list
    seeds: list
    entries: list
    tuning: dict
    training: dict
    overrides: dict
    model_overrides: dict
    proposed: list
    description: str = ""
    # every model of the suite file, kept by subset(): a suite-wide override is meant for whichever of them
    # knows a key, so a key one of them knows is not refused as misspelt in a partial run either
    file_models: list = field(default_factory=list)

    @property
    def tuning_seed(self):
        return self.seeds[0]

    def subset(self, entries=None, datasets=None):
        """The same suite restricted to some entries and dataset variants (``None``: all). An ablation
        keeps the entry it is tuned from, so it never runs with an untuned configuration."""
        if datasets:
            unknown = sorted(set(datasets) - set(self.datasets))
            if unknown:
                raise SuiteError(f"{self.path}: no dataset variant {unknown}; variants: {', '.join(self.datasets)}")
        if entries:
            wanted = {self.entry(name).name for name in entries}
            wanted |= {self.entry(name).tune_from for name in wanted if self.entry(name).tune_from}
        return replace(self, entries=[e for e in self.entries if not entries or e.name in wanted],
                       datasets=[d for d in self.datasets if not datasets or d in datasets])

    def entry(self, name):
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise SuiteError(f"{self.path}: no entry named {name!r}; entries: {', '.join(e.name for e in self.entries)}")


def suite_names():
    return sorted(path.stem for path in SUITES_DIR.glob("*.yaml") if path != CLAIMS_FILE)


def suite_file(name):
    """``properties/suites/<name>.yaml``, or ``name`` itself when it is a path to a YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    path = SUITES_DIR / f"{name}.yaml"
    if not path.is_file() or path == CLAIMS_FILE:
        raise SuiteError(f"Unknown suite {name!r}. Suites: {', '.join(suite_names())} (properties/suites/)")
    return path


def default_suite_results_dir(suite_name):
    """Where a suite's records and sweeps go unless ``--results-dir`` says otherwise."""
    return REPO_DIR / "results" / REFERENCE_DIRNAME / suite_name


def _mapping(path, content, key):
    value = content.get(key) or {}
    if not isinstance(value, dict):
        raise SuiteError(f"{path}: '{key}' must be a mapping, got {type(value).__name__}")
    return value


def _entry(path, item):
    if isinstance(item, str):
        return Entry(name=item, model=item)
    if not isinstance(item, dict) or "model" not in item:
        raise SuiteError(f"{path}: a 'models' item is a model name or a mapping with 'model' (and optionally "
                         f"{sorted(ENTRY_KEYS - {'model'})}), got {item!r}")
    unknown = sorted(set(item) - ENTRY_KEYS)
    if unknown:
        raise SuiteError(f"{path}: entry {item.get('name', item['model'])!r} has unknown key(s) {unknown}; "
                         f"valid: {sorted(ENTRY_KEYS)}")
    overrides = item.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise SuiteError(f"{path}: entry {item['model']!r}: 'overrides' must be a mapping")
    return Entry(name=str(item.get("name", item["model"])), model=str(item["model"]), overrides=overrides,
                 tune_from=item.get("tune_from"), grid=item.get("grid"))


def load_suite(name):
    """Read and check a suite file (by suite name or path); raise :class:`SuiteError` on bad input."""
    path = suite_file(name)
    try:
        content = read_yaml(path) or {}
    except Exception as error:  # noqa: BLE001 (YAML syntax errors of any kind: one clear line)
        raise SuiteError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(content, dict):
        raise SuiteError(f"{path} must hold a mapping (datasets, seeds, models, ...)")
    unknown = sorted(set(content) - SUITE_KEYS)
    if unknown:
        raise SuiteError(f"{path}: unknown key(s) {unknown}; valid: {sorted(SUITE_KEYS)}")
    for key in ("datasets", "seeds", "models"):
        if not isinstance(content.get(key), list) or not content[key]:
            raise SuiteError(f"{path}: '{key}' must be a non-empty list")
    seeds = content["seeds"]
    if not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in seeds) or len(set(seeds)) < len(seeds):
        raise SuiteError(f"{path}: 'seeds' must be distinct integers, got {seeds}")
    entries = [_entry(path, item) for item in content["models"]]
    names = [entry.name for entry in entries]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise SuiteError(f"{path}: entry names must be unique; repeated: {duplicated}")
    for entry in entries:
        if entry.tune_from is not None and (entry.tune_from not in names or entry.tune_from == entry.name):
            raise SuiteError(f"{path}: entry {entry.name!r}: tune_from {entry.tune_from!r} is not another entry")
    tuning, training = _mapping(path, content, "tuning"), _mapping(path, content, "training")
    for block, allowed, label in ((tuning, TUNING_KEYS, "tuning"), (training, TRAINING_KEYS, "training")):
        unknown = sorted(set(block) - allowed)
        if unknown:
            raise SuiteError(f"{path}: unknown '{label}' key(s) {unknown}; valid: {sorted(allowed)}")
    if not isinstance(tuning.get("trials"), int) or tuning["trials"] < 1:
        raise SuiteError(f"{path}: 'tuning.trials' must be an integer >= 1 (the same for every learned model)")
    model_overrides = _mapping(path, content, "model_overrides")
    if not all(isinstance(value, dict) for value in model_overrides.values()):
        raise SuiteError(f"{path}: every 'model_overrides' value must be a mapping of settings")
    proposed = list(content.get("proposed") or [])
    missing = [name for name in proposed if name not in names]
    if missing:
        raise SuiteError(f"{path}: 'proposed' names {missing}, which are not entries")
    return Suite(name=path.stem, path=path, datasets=[str(d) for d in content["datasets"]], seeds=seeds,
                 entries=entries, tuning=tuning, training=training, overrides=_mapping(path, content, "overrides"),
                 model_overrides=model_overrides, proposed=proposed, description=str(content.get("description", "")),
                 file_models=list(dict.fromkeys(entry.model for entry in entries)))


def entry_annotations(record, suite_name):
    """The (entry, dataset variant) pairs ``record`` is a run of in suite ``suite_name``."""
    return [(item["entry"], item["dataset_variant"]) for item in record.get(RECORD_KEY) or []
            if item.get("suite") == suite_name]
