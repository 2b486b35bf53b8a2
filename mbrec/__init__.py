"""mbrec: a benchmark suite for multi-behavior sequential recommendation on RecBole."""

from mbrec import compat  # noqa: F401  (must run before recbole is imported anywhere)

__version__ = "0.1.0"
