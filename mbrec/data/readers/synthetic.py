"""The embedded synthetic dataset: no raw files, the generator ``mbrec.data.synthetic`` is the source."""

from pathlib import Path

import numpy as np
import pandas as pd

from mbrec.data.errors import DataPreparationError
from mbrec.data.readers.parse import behavior_column, vocabulary_mapping
from mbrec.data.readers.table import ReaderOutput

DEFAULT_FILES = {}


def raw_sources():
    """The generator package's source files stand in for raw data: editing any of them invalidates caches."""
    try:
        from mbrec.data import synthetic
    except ImportError as exc:
        raise DataPreparationError(f"The synthetic generator mbrec.data.synthetic is unavailable: {exc}")
    package_dir = Path(synthetic.__file__).resolve().parent
    return {f"generator/{path.name}": path for path in sorted(package_dir.glob("*.py"))}


def read_synthetic(files, options):
    """Delegate to mbrec.data.synthetic (chunks come per user, already in time order)."""
    from mbrec.data import synthetic

    size, seed = options.get("size", "small"), int(options.get("seed", 0))
    vocabulary = options["behaviors"]
    mapping = vocabulary_mapping(vocabulary, {b: b for b in vocabulary})

    def chunks():
        for chunk in synthetic.iter_interaction_chunks(size, seed):
            yield pd.DataFrame({
                "user_id": chunk["user_id"].to_numpy(np.int64),
                "item_id": chunk["item_id"].to_numpy(np.int64),
                "behavior": behavior_column(chunk["behavior"], mapping, vocabulary,
                                            "synthetic generator", "behavior", 0),
                "timestamp": chunk["timestamp"].to_numpy(),
            })

    categories = np.asarray(synthetic.item_categories(size, seed))
    items = pd.Series(categories, index=np.arange(len(categories)), name="category")
    content_dim = int(options.get("content_dim") or 0)

    def write_content(folder, name, item_ids):
        if content_dim <= 0:
            return
        noise = float(options.get("content_noise", synthetic.CONTENT_NOISE))  # synthetic's std unless set
        vectors = np.asarray(synthetic.item_content(size, seed, content_dim, noise), dtype=np.float32)
        np.savez(folder / f"{name}.content.npz", item_id=np.array([str(i) for i in item_ids]),
                 vectors=vectors[item_ids])

    return ReaderOutput(chunks(), items, {}, {}, write_content)
