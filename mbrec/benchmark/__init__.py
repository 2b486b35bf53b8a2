"""Planning and running runs: the runner (one run end to end), the Ray grid of runs, Ray Tune
sweeps and their search spaces.

Imports: mbrec.training, mbrec.evaluation, mbrec.data, mbrec.registry, mbrec.config, mbrec.results,
mbrec.protocol.
Nothing below it (models, baselines, layers, training, data, reporting) imports it; the command
line (mbrec.cli) does.
"""
