"""Baseline models that RecBole does not ship, one file per model."""

from mbrec.models import PredictFromFullSort  # noqa: F401  (the baselines mix it in)
