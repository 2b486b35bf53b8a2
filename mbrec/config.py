"""Layered run configuration on top of RecBole's ``Config``.

Precedence, lowest first: ``properties/overall.yaml`` < ``properties/model/<Model>.yaml``
< ``properties/dataset/<dataset>.yaml`` < ``--config`` files (in order) < command-line
overrides. RecBole's own defaults (its overall.yaml and its model YAML) sit underneath all
of them, so RecBole's models keep their published defaults unless we override them.
"""

import re

import yaml
from recbole.config import Config
from recbole.data.transform import construct_transform

from mbrec import registry
from mbrec.config_check import ConfigError, check_user_keys, check_values
from mbrec.data.dataset import SEQUENCE_BATCHES, TRAIN_UNIT_KINDS, TRAIN_UNITS
from mbrec.data.declarations import declaration_file
from mbrec.data.prepare import update_prepare_options
from mbrec.utils import PROPERTIES_DIR


class _FloatLoader(yaml.SafeLoader):
    """PyYAML reads ``1e-3`` as a string; accept it as a float, as RecBole's loader does."""


_FloatLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(path):
    try:
        with open(path, encoding="utf-8") as handle:
            content = yaml.load(handle, Loader=_FloatLoader) or {}
    except FileNotFoundError:
        raise ConfigError(f"Config file not found: {path}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"Config file {path} is not valid YAML: {error}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of key: value, got {type(content).__name__}")
    return content


def parse_overrides(pairs):
    """``["learning_rate=1e-3", "topk=[10,20]", "prepare.size=medium"]`` -> nested dict.

    Values are parsed as YAML; a dotted key sets one entry of a nested mapping.
    """
    overrides = {}
    for pair in pairs or []:
        key, sep, value = pair.lstrip("-").partition("=")
        if not sep or not key:
            raise ConfigError(f"Override '{pair}' must look like key=value")
        *parents, leaf = key.split(".")
        node = overrides
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.load(value, Loader=_FloatLoader) if value else None
    return overrides


def deep_update(base, update):
    """Merge ``update`` into ``base``: nested mappings merge key by key, everything else replaces."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def merge_layer(merged, layer):
    """:func:`deep_update`, except the ``prepare:`` block, which merges as prepare options do
    (``mbrec.data.prepare.update_prepare_options``: a ``files`` map is replaced, and a new
    ``format`` drops the file names of the old one)."""
    layer = dict(layer)
    prepare_block = layer.pop("prepare", None)
    deep_update(merged, layer)
    if isinstance(prepare_block, dict) and isinstance(merged.get("prepare"), dict):
        merged["prepare"] = update_prepare_options(merged["prepare"], prepare_block)
    elif prepare_block is not None:
        merged["prepare"] = prepare_block
    return merged


# A dataset variant's YAML names the dataset it refines with this key (retailrocket_f10 extends
# retailrocket): its protocol settings are stated once, layered over the base dataset's YAML.
EXTENDS_KEY = "extends"
ALIAS_KEY = "alias_of"


def _dataset_yaml(dataset):
    """The YAML declaring ``dataset``: built-in, or the user's own (``--dataset-file``)."""
    path = declaration_file(dataset)
    if path is None:
        raise ConfigError(f"Unknown dataset '{dataset}'. Valid datasets: {', '.join(registry.dataset_names())}. "
                          f"Your own dataset: declare it in NAME.yaml and pass --dataset-file NAME.yaml")
    return path


def dataset_config_files(dataset):
    """The dataset's YAML layers, base first: ``alias_of`` is followed (retail -> taobao), a variant's
    ``extends`` puts the base dataset's YAML(s) under its own (retailrocket_f10 over retailrocket)."""
    chain, name = [], dataset
    while True:
        if name in [seen for seen, _ in chain]:
            raise ConfigError(f"Dataset YAMLs refer to each other in a cycle: "
                              f"{' -> '.join([seen for seen, _ in chain] + [name])}")
        path = _dataset_yaml(name)
        content = load_yaml(path)
        if content.get(ALIAS_KEY):
            chain.append((name, None))  # an alias adds no settings of its own
            name = content[ALIAS_KEY]
        elif content.get(EXTENDS_KEY):
            chain.append((name, path))
            name = content[EXTENDS_KEY]
        else:
            chain.append((name, path))
            return [path for _, path in reversed(chain) if path is not None]


def base_dataset(dataset):
    """The registered dataset whose data a name prepares: a variant's base, itself otherwise.

    Aliases are left to the data package (it knows ``alias_of``); variants are a config matter.
    """
    dataset_config_files(dataset)  # unknown names and cycles raise here
    name = dataset
    while extends := load_yaml(_dataset_yaml(name)).get(EXTENDS_KEY):
        name = extends
    return name


def dataset_config_file(dataset):
    """The dataset's own YAML (its last layer, see :func:`dataset_config_files`)."""
    return dataset_config_files(dataset)[-1]


def merge_layers(model, dataset, config_files=(), overrides=None, command_models=()):
    """Merge the YAML layers and overrides into one plain dict (the run's own settings).

    Checked before any data work (``mbrec.config_check``): a key of a ``--config`` file or an
    override that no layer knows, a value of the wrong type or out of range raise ConfigError.
    ``command_models``: the other models of the same command (a key one of them knows is accepted).
    """
    dataset_files = dataset_config_files(dataset)
    layers = [PROPERTIES_DIR / "overall.yaml", *registry.model_config_files(model), *dataset_files]
    merged = {}
    for path in [p for p in layers if p is not None]:
        merge_layer(merged, load_yaml(path))
    user_layers = [(f"in {path}", load_yaml(path)) for path in config_files]
    user_layers.append(("command line", overrides or {}))
    check_user_keys(model, dataset_files, user_layers, command_models)
    for _, layer in user_layers:
        merge_layer(merged, layer)
    merged.pop(ALIAS_KEY, None)
    merged.pop(EXTENDS_KEY, None)  # names the layering, not a setting: a variant's runs key like its overrides
    check_values(merged)
    return merged


class MBConfig(Config):
    """RecBole ``Config`` that resolves model names through mbrec's registry first.

    Like RecBole-GNN's Config: never edits RecBole, only overrides the two lookups.
    """

    def _get_model_and_dataset(self, model, dataset):
        model_class = registry.get_model_class(model) if isinstance(model, str) else model
        return model_class.__name__, model_class, dataset

    def _load_cmd_line(self):
        # The runner owns the command line; RecBole would otherwise also parse sys.argv.
        return {}


def check_train_unit(model_class, settings):
    """``train_unit`` must be one the model class declares (``train_units``; default prefix only).

    Called before any data is loaded. Sequence mode computes the loss in the model from whole
    windows, so it takes no sampled negatives (the models' sequence losses are over all items).
    ``sequence_batch`` (what ``train_batch_size`` counts) must agree with the unit: prefix and
    Cloze batches count only what they hold (targets; windows), causal sequence batches either.
    """
    unit = settings.get("train_unit") or "prefix"
    name = model_class.__name__
    if unit not in TRAIN_UNITS:
        raise ConfigError(f"train_unit must be one of {list(TRAIN_UNITS)}, got {unit!r}")
    supported = tuple(getattr(model_class, "train_units", ("prefix",)))
    if unit not in supported:
        raise ConfigError(f"{name} does not train with train_unit: {unit}; it supports {list(supported)}")
    kind = getattr(model_class, "train_unit_kind", None) if unit == "sequence" else "prefix"
    counts = settings.get("sequence_batch")
    if counts is not None and counts not in SEQUENCE_BATCHES:
        raise ConfigError(f"sequence_batch must be one of {list(SEQUENCE_BATCHES)}, got {counts!r}")
    if counts is not None and counts != {"prefix": "targets", "cloze": "windows"}.get(kind, counts):
        raise ConfigError(f"sequence_batch: {counts} does not apply to {name} with train_unit: {unit} "
                          f"({'its' if kind == 'cloze' else 'prefix'} batches hold train_batch_size "
                          f"{'windows' if kind == 'cloze' else 'targets'}); it is for causal sequence mode")
    if unit == "sequence":
        if kind not in TRAIN_UNIT_KINDS:
            raise ConfigError(f"{name} declares train_unit sequence but no train_unit_kind in {TRAIN_UNIT_KINDS}")
        negatives = settings.get("train_neg_sample_args") or {}
        if negatives.get("distribution", "none") not in (None, "none"):
            raise ConfigError(f"train_unit: sequence trains with cross-entropy over all items; "
                              f"train_neg_sample_args {negatives} needs train_unit: prefix")


def build_config(model, dataset_dir, settings):
    """A RecBole config for ``model`` on the prepared atomic files in ``dataset_dir``.

    ``settings`` is the output of :func:`merge_layers`; it is passed as RecBole's
    variable config, which beats RecBole's internal defaults.
    """
    settings = dict(settings)
    check_train_unit(registry.get_model_class(model) if isinstance(model, str) else model, settings)
    settings["data_path"] = str(dataset_dir.parent)
    config = MBConfig(model=model, dataset=dataset_dir.name, config_dict=settings)
    # Protocol: drop users with fewer than min_user_inter interactions; optional item k-core.
    config["user_inter_num_interval"] = f"[{int(config['min_user_inter'])},inf)"
    min_item_inter = int(config["min_item_inter"] or 0)
    config["item_inter_num_interval"] = f"[{min_item_inter},inf)" if min_item_inter > 0 else None
    # RecBole's batch transforms write config keys that models read in __init__ (BERT4Rec reads
    # MASK_ITEM_SEQ set by mask_itemseq); RecBole builds them before the model, and so do we.
    construct_transform(config)
    return config
