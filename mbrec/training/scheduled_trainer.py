"""Training with a per-batch learning-rate schedule: linear warm-up, then cosine decay.

For models trained as large Transformers usually are (MBGen: AdamW with "cosine schedule with
warm-up", Liu et al., Section 4.1): the rate rises linearly from 0 to ``learning_rate`` over
``warmup_steps`` batches, then follows a half cosine down to ``min_lr_ratio * learning_rate`` at
the last batch of ``epochs`` epochs. With early stopping a run may end before the cosine does.
A model opts in with ``trainer_class = ScheduledTrainer``; everything else is :class:`Trainer`
(the base trainer steps ``self.scheduler`` after every optimizer step).
"""

import math

from torch.optim.lr_scheduler import LambdaLR

from mbrec.training.trainer import Trainer


def warmup_cosine_factor(step, warmup_steps, total_steps, min_ratio):
    """Multiplier of the base learning rate after ``step`` optimizer steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class ScheduledTrainer(Trainer):
    """:class:`Trainer` with linear warm-up and cosine decay of the learning rate, stepped per batch."""

    def __init__(self, config, model, device):
        super().__init__(config, model, device)
        self.warmup_steps = int(config["warmup_steps"] or 0)
        self.min_lr_ratio = float(config["min_lr_ratio"] or 0.0)
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("warmup_steps must be >= 0 and min_lr_ratio within [0, 1]")

    def fit(self, train_dataset, valid_dataset, checkpoint_path):
        total_steps = self.epochs * len(self.train_loader(train_dataset))
        self.scheduler = LambdaLR(self.optimizer, lambda step: warmup_cosine_factor(
            step, self.warmup_steps, total_steps, self.min_lr_ratio))
        return super().fit(train_dataset, valid_dataset, checkpoint_path)
