"""Every work-around mbrec needs to run recbole 1.2.1 on today's numpy/torch/pandas.

Imported first by ``mbrec/__init__.py``; nothing else in mbrec patches third-party code.
Each block names what breaks without it.
"""

import importlib.metadata
import warnings

import numpy as np

# recbole is installed with --no-deps (its metadata pins ray<=2.6.3), so setup.cfg cannot
# require it: say how to install it instead of failing later with a bare ModuleNotFoundError.
REQUIRED_RECBOLE = "1.2.1"
try:
    _recbole_version = importlib.metadata.version("recbole")
except importlib.metadata.PackageNotFoundError:
    raise ImportError(f"mbrec needs recbole {REQUIRED_RECBOLE}: pip install --no-deps recbole=={REQUIRED_RECBOLE}") from None
if _recbole_version != REQUIRED_RECBOLE:
    warnings.warn(f"mbrec is tested with recbole {REQUIRED_RECBOLE}; found {_recbole_version}")

# numpy 2 removed these aliases. recbole's ``Config.compatibility_settings`` runs
# ``np.float = np.float_`` (and complex_, unicode_) on every Config construction, and
# ``recbole.data.interaction._convert_to_tensor`` tests ``isinstance(x, np.float)``:
# without these, building any Config raises AttributeError under numpy 2.
_NUMPY2_REMOVED_ALIASES = {"float_": np.float64, "complex_": np.complex128, "unicode_": np.str_}
for _name, _value in _NUMPY2_REMOVED_ALIASES.items():
    if not hasattr(np, _name):
        setattr(np, _name, _value)
# recbole's evaluator (metrics.py) uses np.float / np.bool at call time; Config sets them too,
# but only once a Config exists. Set them here so code paths without a Config also work.
with warnings.catch_warnings():  # numpy warns when probing the removed names
    warnings.simplefilter("ignore", FutureWarning)
    for _name, _value in {"float": float, "int": int, "bool": bool, "object": object, "str": str,
                          "long": int, "complex": complex, "unicode": str}.items():
        if not hasattr(np, _name):
            setattr(np, _name, _value)

# recbole's Interaction/Dataset emit FutureWarnings on modern pandas/torch for every batch
# (e.g. torch.cuda.amp deprecation in trainer imports); they drown the progress bars.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\..*")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"recbole\..*")

# Other recbole 1.2.1 breakages are avoided by design rather than patched:
# - ``recbole.utils.get_model`` probes ``recbole.model.exlib_recommender`` whose __init__
#   imports lightgbm and xgboost, so an unknown model name dies with ModuleNotFoundError.
#   ``mbrec.registry`` resolves names itself (sequential models only) and never calls it.
# - ``recbole.quick_start`` imports ray at module import (recbole pins ray<=2.6.3, which has
#   no wheels for Python 3.12 and needs numpy<2). mbrec never imports recbole.quick_start.
# - ``run_recbole()`` cannot take a model class; mbrec.benchmark.runner is our own runner.
# - torch >= 2.6 ``torch.load`` defaults to ``weights_only=True`` and breaks recbole's
#   Trainer checkpoints (they pickle the whole config). mbrec's trainer stores plain
#   state_dicts, which load with ``weights_only=True``.
# - recbole's Trainer names checkpoints by second-resolution timestamps, so parallel
#   trials collide; mbrec's trainer writes into each run's own directory.
# - ``recbole.model.sequential_recommender`` (imported by every RecBole sequential model) imports
#   sine.py, which switches torch's autograd anomaly detection on for the whole process; mbrec's
#   ``Trainer`` switches it off (it costs a stack trace per autograd node in every backward).
# - pandas 3 breaks recbole's NaN filling and token_seq parsing: setup.cfg pins pandas<3.
