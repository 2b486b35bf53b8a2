"""How a model is trained: the epoch loop with early stopping on valid and best-checkpoint restore
(``trainer``), multi-stage schedules (``staged_trainer``), warm-up/cosine learning rates
(``scheduled_trainer``) and the no-training trainer of heuristics.

Imports: mbrec.data (loaders), mbrec.evaluation (valid scores), mbrec.utils. Models and baselines
import their trainer from here; nothing here imports mbrec.benchmark or mbrec.reporting.
"""
