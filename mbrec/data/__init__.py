"""Data preparation for mbrec: raw multi-behavior logs -> RecBole atomic files, and the dataset and
loaders that read them back.

Imports: mbrec.utils and third-party libraries only. ``prepare`` is kept free of torch/recbole so
that preparing data stays light.
"""

from mbrec.data.prepare import DataPreparationError, dataset_spec, prepare

__all__ = ["DataPreparationError", "dataset_spec", "prepare"]
