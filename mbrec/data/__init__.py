"""Data preparation for mbrec: raw multi-behavior logs -> RecBole atomic files.

Kept free of torch/recbole imports so that preparing data stays light.
"""

from mbrec.data.prepare import DataPreparationError, dataset_spec, prepare

__all__ = ["DataPreparationError", "dataset_spec", "prepare"]
