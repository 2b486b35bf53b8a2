"""mbrec's own models, one file per model family, each readable top to bottom with its equations.

Imports: mbrec.layers (building blocks), mbrec.training (the trainer a model needs), mbrec.data
(tokenizers, item features), RecBole. Never mbrec.benchmark, mbrec.reporting or mbrec.results.
"""

import torch


class PredictFromFullSort:
    """``predict`` (score of the given item) read off ``full_sort_predict``.

    For models whose natural output is a score over all items; mixed in before the RecBole
    base class so it replaces that class's ``predict``.
    """

    def predict(self, interaction):
        scores = self.full_sort_predict(interaction)  # [B, n_items]
        return scores.gather(1, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)  # [B]


class SeededSampling:
    """Generative models whose scores depend on sampled noise: that noise comes from a model-owned
    generator seeded with ``sampling_seed`` (default: the run's seed), reseeded at every switch to
    eval mode, so each evaluation of the same weights sees the same noise and a run is repeatable.

    ``stochastic_inference`` tells the runner it may re-evaluate test under other sampling seeds
    (``sampling_repeats``) to report how much the metrics move with the noise alone.
    Training keeps torch's global RNG (``sampling_generator`` returns None in train mode).
    """

    stochastic_inference = True

    def init_sampling(self, config):
        """Call in ``__init__`` before anything switches the train/eval mode."""
        seed = config["sampling_seed"] if config["sampling_seed"] is not None else config["seed"]
        self.sampling_seed = int(seed)
        self._sampling_generator = None

    def reseed_sampling(self, seed):
        """Use ``seed`` from the next evaluation on."""
        self.sampling_seed = int(seed)
        self._sampling_generator = None

    def sampling_generator(self, device):
        if self.training:
            return None
        if self._sampling_generator is None or self._sampling_generator.device != device:
            self._sampling_generator = torch.Generator(device=device).manual_seed(self.sampling_seed)
        return self._sampling_generator

    def train(self, mode=True):
        super().train(mode)
        if not mode:
            self._sampling_generator = None  # reseeded on the next sampling: same noise each evaluation
        return self
