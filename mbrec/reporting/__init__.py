"""What stored records say: statistics (``stats``), how seeds and users become one test
(``evidence``: n = users, each averaged over seeds), comparison tables (``tables``) and run-vs-run
comparisons (``compare``).

Imports: mbrec.results (the records), mbrec.protocol (protocol fingerprints), mbrec.evaluation.metrics
(numpy metrics), mbrec.utils, and each other. Never a dataset, a model, a trainer or the runner, so tables rebuild from records alone.
"""
