"""mbrec: a benchmark suite for multi-behavior sequential recommendation on RecBole.

Packages, lowest first (README "Architecture"): layers < data < evaluation < training < models
(and baselines/) < benchmark < cli, with reporting beside benchmark, reading mbrec.results only.
A package imports only packages below it; tests/test_architecture.py checks the rules.
"""

from mbrec import compat  # noqa: F401  (must run before recbole is imported anywhere)

__version__ = "0.1.0"
