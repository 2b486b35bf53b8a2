"""Per-item side features ("modalities") aligned to a dataset's internal item ids.

Multi-modal models (M3BSR) read item features next to the interactions. A *modality* is one
table with a row per item:

* **dense**: a float32 ``[n_items + 1, dim]`` matrix, e.g. text or image embeddings, or the
  synthetic generator's content vectors;
* **categorical**: an int64 ``[n_items + 1]`` vector of category ids (``1..n_categories``), which
  a model embeds, e.g. Taobao's ``category_id``.

Row ``i`` belongs to the dataset's internal item id ``i`` (RecBole's remapped id); row 0, the
padding item, is zero, and so is the row of every item the file does not cover. ``has_feature``
(bool ``[n_items + 1]``) says which rows are real, so a model can tell "no feature" from a zero
feature.

File convention, in the prepared dataset folder (``<folder>/``, named ``<folder>.*`` like the
atomic files, or in the folder given by ``modal_feature_path``):

* ``<name>.<modality>.npz`` with arrays ``item_id`` (item tokens as strings, the raw ids of the
  ``.inter`` file) and ``vectors`` (``[n, dim]`` float). The synthetic generator writes
  ``<name>.content.npz`` this way (``prepare.content_dim``).
* or ``<name>.<modality>.npy`` (``[n, dim]`` float) with ``<name>.<modality>.ids``: a text file,
  one item token per line, line ``k`` naming row ``k`` of the matrix.
* ``<name>.item`` (``item_id:token``, ``category:token``; written by ``prepare`` for formats that
  have categories: tianchi, ijcai15, synthetic) gives the categorical modality ``category``.

Tokens the dataset does not know (items filtered out, or never interacted with) are ignored.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

CATEGORY_MODALITY = "category"
DENSE, CATEGORICAL = "dense", "categorical"
AUTO = "auto"


class ItemFeatureError(ValueError):
    """A feature file is missing or malformed, or a requested modality does not exist."""


@dataclass
class Modality:
    """One item feature table aligned to internal item ids (row 0 = padding)."""

    name: str
    kind: str                 # DENSE or CATEGORICAL
    values: np.ndarray        # [n_items, dim] float32 (dense) or [n_items] int64 (categorical)
    has_feature: np.ndarray   # [n_items] bool
    n_categories: int = 0     # categorical only: ids run 1..n_categories, 0 = none
    source: str = ""

    @property
    def dim(self):
        return self.values.shape[1] if self.kind == DENSE else 0

    @property
    def coverage(self):
        """Share of real items (row 0 excluded) that have a feature."""
        return float(self.has_feature[1:].mean()) if len(self.has_feature) > 1 else 0.0


@dataclass
class ItemFeatures:
    """The modalities of one dataset, in a fixed order (dense in the order asked, then category)."""

    modalities: list = field(default_factory=list)

    def __bool__(self):
        return bool(self.modalities)

    @property
    def names(self):
        return [modality.name for modality in self.modalities]

    def describe(self):
        """One line per modality: what a run log / record should say."""
        if not self.modalities:
            return "no modal item features (ID-only)"
        return "; ".join(f"{m.name}: {m.kind}{f' dim {m.dim}' if m.kind == DENSE else f' {m.n_categories} ids'}, "
                         f"{m.coverage:.1%} of items ({m.source})" for m in self.modalities)


def _token_to_id(dataset):
    """Item token (str) -> internal id, for the tokens the dataset kept."""
    return dataset.field2token_id[dataset.iid_field]


def _align(tokens, token_to_id, n_items):
    """Rows of the file -> internal ids; returns (file rows that are known, their internal ids)."""
    tokens = np.asarray([str(token) for token in tokens])
    ids = np.array([token_to_id.get(token, -1) for token in tokens], dtype=np.int64)
    ids[ids == 0] = -1  # a token named '[PAD]' is never a real item
    known = np.flatnonzero(ids > 0)
    if known.size and ids[known].max() >= n_items:
        raise ItemFeatureError(f"item ids beyond the dataset's {n_items} items")
    return known, ids[known]


def dense_files(folder, name):
    """``{modality: (kind_of_file, path)}`` of the dense feature files found in ``folder``."""
    folder = Path(folder)
    found = {}
    for path in sorted(folder.glob(f"{name}.*.npz")):
        found[path.name[len(name) + 1:-len(".npz")]] = path
    for path in sorted(folder.glob(f"{name}.*.npy")):
        modality = path.name[len(name) + 1:-len(".npy")]
        if modality in found:
            raise ItemFeatureError(f"modality '{modality}' has both {found[modality].name} and {path.name}")
        found[modality] = path
    return found


def _read_dense(path, modality):
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            missing = {"item_id", "vectors"} - set(archive.files)
            if missing:
                raise ItemFeatureError(f"{path} lacks array(s) {sorted(missing)} (needs item_id and vectors)")
            return archive["item_id"], np.asarray(archive["vectors"], dtype=np.float32)
    ids_path = path.with_suffix(".ids")
    if not ids_path.is_file():
        raise ItemFeatureError(f"{path} needs its item-token map {ids_path} (one token per line, row order)")
    vectors = np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
    tokens = ids_path.read_text(encoding="utf-8").split()
    return np.asarray(tokens), vectors


def load_dense(path, modality, dataset):
    """One dense modality aligned to ``dataset``'s internal item ids."""
    tokens, vectors = _read_dense(Path(path), modality)
    if vectors.ndim != 2 or len(vectors) != len(tokens):
        raise ItemFeatureError(f"{path}: vectors must be [n_items, dim] with one item token per row; got "
                               f"{vectors.shape} for {len(tokens)} tokens")
    if not np.isfinite(vectors).all():
        raise ItemFeatureError(f"{path}: vectors hold NaN or inf")
    n_items = dataset.item_num
    rows, ids = _align(tokens, _token_to_id(dataset), n_items)
    values = np.zeros((n_items, vectors.shape[1]), dtype=np.float32)
    values[ids] = vectors[rows]
    has_feature = np.zeros(n_items, dtype=bool)
    has_feature[ids] = True
    return Modality(modality, DENSE, values, has_feature, source=Path(path).name)


def load_categories(path, dataset):
    """The ``category`` column of an atomic ``.item`` file as a categorical modality."""
    table = pd.read_csv(path, sep="\t", dtype=str)
    columns = {column.split(":")[0]: column for column in table.columns}
    if "item_id" not in columns or CATEGORY_MODALITY not in columns:
        raise ItemFeatureError(f"{path} needs columns item_id:token and category:token, found {list(table.columns)}")
    table = table.dropna()
    rows, ids = _align(table[columns["item_id"]].to_numpy(), _token_to_id(dataset), dataset.item_num)
    categories = table[columns[CATEGORY_MODALITY]].to_numpy()[rows]
    vocabulary, codes = np.unique(categories, return_inverse=True)  # only the categories of kept items
    values = np.zeros(dataset.item_num, dtype=np.int64)
    values[ids] = codes + 1
    has_feature = values > 0
    return Modality(CATEGORY_MODALITY, CATEGORICAL, values, has_feature, n_categories=len(vocabulary),
                    source=Path(path).name)


def load_item_features(dataset, modalities=AUTO, folder=None):
    """The item modalities of ``dataset`` (a MultiBehaviorSequentialDataset or one of its splits).

    Args:
        modalities: ``"auto"`` (every dense file found, plus ``category`` when the ``.item`` file
            has it), a list of modality names (each must exist), or ``None`` / ``[]`` (none).
        folder: where the files are; default the prepared dataset folder (``config["data_path"]``).
    """
    name = dataset.dataset_name
    folder = Path(folder or dataset.config["data_path"])
    if modalities in (None, [], (), "none"):
        return ItemFeatures([])
    dense = dense_files(folder, name)
    item_file = folder / f"{name}.item"
    has_category = item_file.is_file() and f"{CATEGORY_MODALITY}:" in item_file.open(encoding="utf-8").readline()
    available = list(dense) + ([CATEGORY_MODALITY] if has_category else [])
    if modalities == AUTO:
        wanted = available
    elif isinstance(modalities, str):
        raise ItemFeatureError(f"modal features must be 'auto', a list of names or empty, got {modalities!r}")
    else:
        wanted = list(modalities)
        missing = [modality for modality in wanted if modality not in available]
        if missing:
            raise ItemFeatureError(f"modality {missing} not found in {folder} (available: {available or 'none'}; "
                                   f"expected {name}.<modality>.npz, {name}.<modality>.npy + .ids, or a category "
                                   f"column in {name}.item)")
    loaded = [load_dense(dense[m], m, dataset) for m in wanted if m != CATEGORY_MODALITY]
    if CATEGORY_MODALITY in wanted:
        loaded.append(load_categories(item_file, dataset))
    return ItemFeatures(loaded)
