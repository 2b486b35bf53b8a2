"""Baseline models that RecBole does not ship, one file per model."""
