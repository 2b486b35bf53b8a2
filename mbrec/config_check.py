"""Checks of a run's settings before any data work: unknown keys, wrong types, values out of range.

Why: RecBole's ``Config`` accepts any key, so ``epoch=5`` (for ``epochs``) used to be stored
beside ``epochs: 200`` and training ran 200 epochs; ``learning_rate=-1`` or ``epochs=abc``
failed deep inside torch or RecBole, often without naming the key.

A key is *known* to a run of model M on dataset D when one of these names it:

* RecBole's own defaults: ``recbole/properties/overall.yaml``, ``dataset/sample.yaml``, the
  ``quick_start_config/`` files, and RecBole's list of documented arguments
  (``recbole.utils.argument_list``);
* RecBole's YAML of M and of every class M derives from (``recbole/properties/model/``);
* mbrec's ``properties/overall.yaml``, M's YAMLs (``registry.model_config_files``) and D's YAML;
* the keys mbrec's shared code reads (:data:`RUN_CODE_FILES`), the volatile keys of the results
  store, and the keys M's own code reads (the modules of M's classes and of its trainer, and the
  mbrec classes and functions those import), found in their source as ``config["key"]``.

So a key of another model (``guidance_weight`` given to SASRec) is refused: it would be ignored.
Only the layers a user writes (``--config`` files and ``key=value``) are checked for unknown
keys; the types and ranges are checked on the merged settings.
"""

import difflib
import functools
import inspect
import re
import sys
from pathlib import Path

import recbole
import yaml

from mbrec import registry
from mbrec.data.prepare import LOCATION_KEYS, OVERRIDABLE_KEYS
from mbrec.results import VOLATILE_KEYS
from mbrec.utils import PACKAGE_DIR, PROPERTIES_DIR

RECBOLE_PROPERTIES = Path(recbole.__file__).resolve().parent / "properties"
# mbrec's shared code (not any one model's): every key it reads is a setting of every run.
RUN_CODE_FILES = ("benchmark/runner.py", "config.py", "data/dataset.py", "evaluation/evaluator.py",
                  "training/trainer.py", "data/item_features.py")
# ``config["key"]``, ``config.get("key")``, ``settings["key"]`` ... in a module's source.
CONFIG_READ = re.compile(r"""(?:config|settings)(?:\[|\.get\()\s*["']([A-Za-z_][A-Za-z0-9_]*)["']""")
# Packages whose modules' config reads count as a model's own (its layers, tokenizers, trainers).
MODEL_CODE_PACKAGES = ("mbrec", "baselines")
# Words of the did-you-mean: difflib's default similarity cutoff, at most this many suggestions.
SUGGESTIONS = 3


class ConfigError(ValueError):
    """A config file or override is malformed (also importable from :mod:`mbrec.config`)."""


class _Rule:
    """What one setting must be: ``kind`` (int or float) and its allowed range, in words."""

    def __init__(self, kind, test, wording):
        self.kind, self.test, self.wording = kind, test, wording

    def problem(self, value):
        """None when ``value`` is fine; else what is wrong with it, in words."""
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.kind is int and not (is_number and float(value).is_integer()):
            return f"must be {self.wording}, got {value!r} (not an integer)"
        if self.kind is float and not is_number:
            return f"must be {self.wording}, got {value!r} (not a number)"
        if not self.test(value):
            return f"must be {self.wording}, got {value!r}"
        return None


POSITIVE_INT = _Rule(int, lambda v: v >= 1, "an integer >= 1")
NON_NEGATIVE_INT = _Rule(int, lambda v: v >= 0, "an integer >= 0")
ANY_INT = _Rule(int, lambda v: True, "an integer")
POSITIVE_FLOAT = _Rule(float, lambda v: v > 0, "a number > 0")
NON_NEGATIVE_FLOAT = _Rule(float, lambda v: v >= 0, "a number >= 0")
PROBABILITY = _Rule(float, lambda v: 0 <= v < 1, "a probability in [0, 1)")
FRACTION = _Rule(float, lambda v: 0 < v <= 1, "a fraction in (0, 1]")

class _PerStageRule:
    """A rule for one number, or for a mapping ``{stage name: number}`` (staged models' per-stage settings)."""

    def __init__(self, rule):
        self.rule = rule

    def problem(self, value):
        if not isinstance(value, dict):
            return self.rule.problem(value)
        for stage, number in value.items():
            problem = self.rule.problem(number)
            if problem:
                return f"[{stage}] {problem}"
        return None


RULES = {
    "epochs": POSITIVE_INT, "train_batch_size": POSITIVE_INT, "eval_batch_size": POSITIVE_INT,
    "eval_step": POSITIVE_INT, "MAX_ITEM_LIST_LENGTH": POSITIVE_INT, "hidden_size": POSITIVE_INT,
    "embedding_size": POSITIVE_INT, "inner_size": POSITIVE_INT, "n_layers": POSITIVE_INT, "n_heads": POSITIVE_INT,
    "stopping_step": NON_NEGATIVE_INT, "stopping_min_epochs": _PerStageRule(NON_NEGATIVE_INT), "min_user_inter": NON_NEGATIVE_INT, "min_item_inter": NON_NEGATIVE_INT,
    "sampling_repeats": NON_NEGATIVE_INT, "loader_prefetch": NON_NEGATIVE_INT, "seed": ANY_INT,
    # learning_rate 0 is allowed: frozen weights (tests/test_convergence.py uses it); negative is not
    "learning_rate": NON_NEGATIVE_FLOAT, "weight_decay": NON_NEGATIVE_FLOAT, "eval_memory_fraction": FRACTION,
    "mask_prob": PROBABILITY, "mask_ratio": PROBABILITY, "behavior_mask_prob": PROBABILITY,
}
# Every ``*dropout_prob`` key (hidden_dropout_prob, attn_dropout_prob, behavior_dropout_prob, ...).
DROPOUT_SUFFIX = "dropout_prob"


def _yaml_keys(path):
    with open(path, encoding="utf-8") as handle:
        content = yaml.safe_load(handle) or {}
    return set(content) if isinstance(content, dict) else set()


def _keys_read(source):
    return set(CONFIG_READ.findall(source))


@functools.lru_cache(maxsize=None)
def recbole_general_keys():
    """Keys of RecBole's general defaults and its documented argument list (any model)."""
    from recbole.utils import argument_list

    keys = _yaml_keys(RECBOLE_PROPERTIES / "overall.yaml") | _yaml_keys(RECBOLE_PROPERTIES / "dataset" / "sample.yaml")
    for path in (RECBOLE_PROPERTIES / "quick_start_config").glob("*.yaml"):
        keys |= _yaml_keys(path)
    for group in ("general_arguments", "training_arguments", "evaluation_arguments", "dataset_arguments"):
        keys |= set(getattr(argument_list, group))
    return frozenset(keys)


@functools.lru_cache(maxsize=None)
def mbrec_general_keys():
    """mbrec's defaults, the keys its shared code reads and the store's volatile keys (any model)."""
    keys = _yaml_keys(PROPERTIES_DIR / "overall.yaml") | set(VOLATILE_KEYS) | {"prepare"}
    for relative in RUN_CODE_FILES:
        keys |= _keys_read((PACKAGE_DIR / relative).read_text(encoding="utf-8"))
    return frozenset(keys)


def _model_sources(model_class):
    """Source texts of the model's code: the modules of its classes and of its trainer's classes, and
    each mbrec class or function those modules import (its own source only, not its whole module:
    ``mbrec.layers.behavior`` holds layers of several models)."""
    classes = list(model_class.__mro__)
    trainer_class = getattr(model_class, "trainer_class", None)
    if trainer_class is not None:
        classes += list(trainer_class.__mro__)
    modules = {sys.modules[cls.__module__] for cls in classes if cls.__module__.startswith(MODEL_CODE_PACKAGES)}
    sources = []
    for module in modules:
        sources.append(inspect.getsource(module))
        for value in vars(module).values():
            defined_in = getattr(value, "__module__", None)
            if ((inspect.isclass(value) or inspect.isfunction(value)) and isinstance(defined_in, str)
                    and defined_in.startswith(MODEL_CODE_PACKAGES) and sys.modules.get(defined_in) not in modules):
                sources.append(inspect.getsource(value))
    return sources


@functools.lru_cache(maxsize=None)
def model_keys(model):
    """Keys that only some models know, for ``model``: its YAMLs (mbrec's and RecBole's) and its code's reads."""
    model_class = registry.get_model_class(model)
    keys = set()
    for path in registry.model_config_files(model):
        keys |= _yaml_keys(path)
    for cls in model_class.__mro__:
        recbole_yaml = RECBOLE_PROPERTIES / "model" / f"{cls.__name__}.yaml"
        if recbole_yaml.is_file():
            keys |= _yaml_keys(recbole_yaml)
    for source in _model_sources(model_class):
        keys |= _keys_read(source)
    return frozenset(keys)


def known_keys(model, dataset_files):
    """Every key a run of ``model`` on a dataset with these YAML layers knows."""
    keys = recbole_general_keys() | mbrec_general_keys() | model_keys(model)
    for path in dataset_files:
        keys |= _yaml_keys(path)
    return keys


def _models_knowing(key):
    """mbrec's model YAMLs that set ``key`` (to say whose setting a refused key is)."""
    return sorted(path.stem for path in (PROPERTIES_DIR / "model").glob("*.yaml") if key in _yaml_keys(path))


def check_user_keys(model, dataset_files, layers, command_models=()):
    """Refuse keys of ``layers`` (``(source, mapping)`` pairs: --config files, key=value) that no layer knows.

    ``command_models``: the other models of the same command (``--models SASRec Pop hidden_size=16``):
    a key one of them knows is meant for it, not misspelt, so it is accepted for all of them.

    Raises:
        ConfigError: one line per unknown key, naming where it came from and the closest known keys.
    """
    models = list(dict.fromkeys([model, *command_models]))
    known = set().union(*(known_keys(name, dataset_files) for name in models))
    model = " or ".join(models)
    prepare_known = set(OVERRIDABLE_KEYS) | set(LOCATION_KEYS)
    problems = []
    for source, layer in layers:
        for key, value in layer.items():
            if key == "prepare" and isinstance(value, dict):
                for option in value:
                    if option not in prepare_known:
                        problems.append(_unknown_line(f"prepare.{option}", source, model,
                                                      [f"prepare.{k}" for k in sorted(prepare_known)]))
                continue
            if key not in known:
                problems.append(_unknown_line(key, source, model, sorted(known)))
    if problems:
        raise ConfigError("\n".join(problems))


def _unknown_line(key, source, model, candidates):
    close = difflib.get_close_matches(key, candidates, n=SUGGESTIONS)
    owners = [name for name in _models_knowing(key) if name not in model.split(" or ")]
    line = f"unknown config key '{key}' ({source}): no config layer of {model} knows it"
    if owners:
        line += f"; it is a setting of {', '.join(owners)}"
    if close:
        line += f"; did you mean {' or '.join(repr(name) for name in close)}?"
    return line


def check_values(settings):
    """Types and ranges of the merged settings; one line per bad value (None means 'default')."""
    problems = []
    for key, value in settings.items():
        rule = RULES.get(key) or (PROBABILITY if key.endswith(DROPOUT_SUFFIX) else None)
        if rule is None or value is None:
            continue
        problem = rule.problem(value)
        if problem:
            problems.append(f"config value {key}={value}: {key} {problem}")
    if problems:
        raise ConfigError("\n".join(problems))
