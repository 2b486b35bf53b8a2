"""Resuming an interrupted training run at the epoch it reached, bit for bit.

Why: a run of the reference suite trains for up to an hour on a CPU core (MBGen, the diffusion
family), and a working session ends wherever it is. Without a resume state a killed run starts
again from epoch 0 and everything it trained is lost.

What is stored (``<checkpoint>.resume.pth`` beside the run's best-weights checkpoint, written
atomically after a validation, at most once every ``resume_every_seconds``): the weights, the
optimizer's and the learning-rate schedule's state, the best weights selected so far, the early
stopping counters, the history, and every random number generator the epoch loop draws from
(Python's, NumPy's, torch's and, on CUDA, the devices'). Training's random draws (shuffling,
Cloze masks, dropout, diffusion noise) all come from those generators in the training thread
(``mbrec.data.dataset``), so a resumed run continues the same stream: its weights and metrics equal
those of a run that was never interrupted (``tests/test_resume.py``).

A state is used only by the same run (its path derives from the run key, i.e. settings, data and
seed) and the same training code: :func:`training_code_identity` hashes the sources that decide
what a training step computes, plus the torch version. After any change there the run starts
over, so a record never mixes two versions of a model.
"""

import hashlib
import importlib.util
import logging
import random
from pathlib import Path

import numpy as np
import torch

from mbrec.utils import PACKAGE_DIR, atomic_path

logger = logging.getLogger("mbrec")

RESUME_FORMAT = 1
# The sources a training step's numbers depend on (models, layers, data, loss, evaluation, config
# merging), as paths under the mbrec package, and the baselines package. Left out on purpose: the
# benchmark runner, sweeps, suites, the results store, reporting and the CLI, which decide which
# run happens and what is written about it, not what it computes.
TRAINING_SOURCES = ("models", "layers", "training", "data", "evaluation", "compat.py", "config.py",
                    "protocol.py", "registry.py", "utils.py")
BASELINES_PACKAGE = "baselines"


def resume_path_of(checkpoint_path):
    """Where the resume state of the run whose best weights go to ``checkpoint_path`` lives."""
    checkpoint_path = Path(checkpoint_path)
    return checkpoint_path.with_name(checkpoint_path.stem + ".resume.pth")


def _source_files():
    roots = [PACKAGE_DIR / name for name in TRAINING_SOURCES]
    spec = importlib.util.find_spec(BASELINES_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        roots.extend(Path(location) for location in spec.submodule_search_locations)
    files = []
    for root in roots:
        files.extend(sorted(root.rglob("*.py")) if root.is_dir() else [root] if root.is_file() else [])
    return files


def _hash_sources():
    digest = hashlib.sha256(f"torch {torch.__version__}\n".encode())
    for path in _source_files():
        digest.update(f"{path.parent.name}/{path.name}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


# Hashed when this module is imported, i.e. with the code the process loaded: a checkout updated
# under a running process must not relabel the states that process writes with the new code's hash.
_LOADED_CODE_IDENTITY = _hash_sources()


def training_code_identity():
    """sha256 over the training sources (names and contents) and the torch version, as imported."""
    return _LOADED_CODE_IDENTITY


def capture_rng():
    """Every generator the epoch loop draws from, in a form ``torch.load(weights_only=True)`` reads."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"python": [version, list(internal), gauss_next],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss),
                       float(cached_gaussian)],
             "torch": torch.get_rng_state(), "cuda": None}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state):
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def save_resume_state(path, state):
    """Write ``state`` (a dict of tensors, numbers, strings, lists) atomically, with the format and code identity."""
    with atomic_path(path) as tmp:
        torch.save({"format": RESUME_FORMAT, "code": training_code_identity(), **state}, tmp)


def load_resume_state(path, device):
    """The stored state at ``path``, or None when there is none or it cannot serve this code.

    A state of another format or other training code is removed (the run starts over, and says so).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # noqa: BLE001 (an unreadable state is not an error: the run starts over)
        logger.warning(f"cannot read the resume state {path} ({type(error).__name__}: {error}); training from "
                       f"epoch 0")
        path.unlink(missing_ok=True)
        return None
    if state.get("format") != RESUME_FORMAT or state.get("code") != training_code_identity():
        logger.warning(f"the resume state {path} was saved by other training code (or torch); training from "
                       f"epoch 0")
        path.unlink(missing_ok=True)
        return None
    return state
