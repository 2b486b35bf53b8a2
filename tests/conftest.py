"""Shared fixtures: tiny atomic files written by the tests themselves."""

import pytest
import torch

from mbrec import registry
from mbrec.config import build_config, merge_layers

# One intra-op thread in every test process: float reductions then add up in the same order on any machine,
# so the seeded training tests give the same numbers on a developer's machine and on CI (several learned-
# model tests were validated at one thread, and a tiny Cloze overfit test missed its bound at two). On a
# loaded 2-core machine one thread per test is not slower.
torch.set_num_threads(1)

INTER_HEADER = "user_id:token\titem_id:token\tbehavior:token\ttimestamp:float\n"


def write_inter(folder, name, rows):
    """Write ``rows`` of (user, item, behavior, timestamp) as ``folder/name/name.inter``."""
    dataset_dir = folder / name
    dataset_dir.mkdir(parents=True, exist_ok=True)
    with open(dataset_dir / f"{name}.inter", "w", encoding="utf-8") as handle:
        handle.write(INTER_HEADER)
        for user, item, behavior, timestamp in rows:
            handle.write(f"{user}\t{item}\t{behavior}\t{timestamp}\n")
    return dataset_dir


def make_config(model, dataset_dir, base_dataset="synthetic", **overrides):
    """A full run config for ``model`` on the atomic files in ``dataset_dir``."""
    settings = merge_layers(model, base_dataset)
    settings.update(show_progress=False, **overrides)
    config = build_config(registry.get_model_class(model), dataset_dir, settings)
    config["device"] = torch.device("cpu")
    return config


@pytest.fixture
def tiny_rows():
    """Three users; behaviors deliberately first seen in non-funnel order (buy before view)."""
    return [
        # user a: 6 interactions, two tied timestamps (file order must be kept)
        ("a", "i1", "buy", 1), ("a", "i2", "view", 2), ("a", "i3", "view", 3),
        ("a", "i3", "cart", 3), ("a", "i4", "view", 5), ("a", "i3", "buy", 6),
        # user b: 3 interactions (minimum kept), written out of time order
        ("b", "i2", "view", 30), ("b", "i5", "view", 10), ("b", "i2", "cart", 20),
        # user c: 2 interactions -> dropped (min_user_inter 3)
        ("c", "i1", "view", 1), ("c", "i2", "view", 2),
    ]
