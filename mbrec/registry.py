"""Model and dataset names -> classes and configs: mbrec's own first, then RecBole's.

A later model issue adds its class to ``MBREC_MODELS`` (name -> "module:Class"); modules are
imported lazily so that a broken optional model never stops the others from running.
"""

import difflib
import importlib

from recbole.model.abstract_recommender import SequentialRecommender

from mbrec.data import declarations
from mbrec.utils import PROPERTIES_DIR

MBREC_MODELS = {
    # RecBole's own classes with sequence-mode training added (same parameters, same prefix mode)
    "SASRec": "mbrec.models.causal:SASRec",
    "GRU4Rec": "mbrec.models.causal:GRU4Rec",
    "BERT4Rec": "baselines.bert4rec:BERT4Rec",  # RecBole's, plus the sequence training unit
    "SASRec_B": "baselines.sasrec_b:SASRec_B",
    "SASRec_MB": "baselines.sasrec_mb:SASRec_MB",
    "BERT4Rec_MB": "baselines.bert4rec_mb:BERT4Rec_MB",
    "BERT4Rec_B": "baselines.bert4rec_b:BERT4Rec_B",
    "MBSTR": "baselines.mbstr:MBSTR",
    "PBAT": "baselines.pbat:PBAT",
    "Pop": "baselines.heuristics:Pop",
    "Recent": "baselines.heuristics:Recent",
    "DiffuRec": "baselines.diffurec:DiffuRec",
    "DiffuRecSys": "mbrec.models.diffurecsys:DiffuRecSys",
    "DiffuRecSysV1": "mbrec.models.diffurecsys:DiffuRecSysV1",
    "DiffuRecSysMB": "mbrec.models.diffurecsys:DiffuRecSysMB",
    "FatsMB": "mbrec.models.fatsmb:FatsMB",
    "MBGen": "mbrec.models.mbgen:MBGen",
    "M3BSR": "mbrec.models.m3bsr:M3BSR",
    "M3BSR_woMD": "mbrec.models.m3bsr:M3BSR",  # ablations: properties/model/M3BSR_wo*.yaml switch one part off
    "M3BSR_woBD": "mbrec.models.m3bsr:M3BSR",
    "M3BSR_woCL": "mbrec.models.m3bsr:M3BSR",
}


# At most this many did-you-mean suggestions for an unknown name.
SUGGESTIONS = 3


class UnknownModelError(ValueError):
    """A model name that neither mbrec nor RecBole knows."""


def recbole_sequential_models():
    """RecBole's own sequential models, by class name (no lightgbm/xgboost needed)."""
    module = importlib.import_module("recbole.model.sequential_recommender")
    return {
        name: obj
        for name, obj in vars(module).items()
        if isinstance(obj, type) and issubclass(obj, SequentialRecommender) and obj is not SequentialRecommender
    }


def model_names():
    return sorted(set(MBREC_MODELS) | set(recbole_sequential_models()))


def get_model_class(name):
    """Resolve a model name; unknown names raise a ValueError that lists the valid ones."""
    if name in MBREC_MODELS:
        module_name, class_name = MBREC_MODELS[name].split(":")
        return getattr(importlib.import_module(module_name), class_name)
    recbole_models = recbole_sequential_models()
    if name in recbole_models:
        return recbole_models[name]
    names = model_names()
    # Case first (sasrec -> SASRec), then spelling (SASRek -> SASRec).
    close = [known for known in names if known.lower() == str(name).lower()] or difflib.get_close_matches(
        str(name), names, n=SUGGESTIONS)
    hint = f" Did you mean {' or '.join(repr(known) for known in close)}?" if close else ""
    raise UnknownModelError(f"Unknown model '{name}'.{hint} Valid models: {', '.join(names)}")


def model_config_files(name):
    """mbrec's YAMLs for a model, base class first (RecBole's own YAML still applies underneath).

    A model class that specialises another (``DiffuRec`` of ``DiffuRecSys``, a paper variant)
    inherits the base class's YAML and only states what differs in its own.
    """
    try:
        lineage = [cls.__name__ for cls in reversed(get_model_class(name).__mro__)]
    except UnknownModelError:
        lineage = [name]
    if lineage[-1] != name:  # a registry alias: its own YAML comes last
        lineage.append(name)
    paths = [PROPERTIES_DIR / "model" / f"{cls_name}.yaml" for cls_name in dict.fromkeys(lineage)]
    return [path for path in paths if path.is_file()]


def dataset_names():
    """Built-in datasets and those declared with ``--dataset-file``."""
    return declarations.dataset_names()
