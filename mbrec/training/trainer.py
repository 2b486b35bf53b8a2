"""Training with early stopping on the valid split, through the shared evaluator.

Why not RecBole's ``Trainer``: it evaluates with RecBole's evaluator (no tasks, no per-user
ranks), loads checkpoints with ``torch.load`` in a way torch >= 2.6 rejects, and names
checkpoints by second-resolution timestamps that collide across parallel trials. This one
keeps RecBole's model contract (``calculate_loss`` / ``full_sort_predict``) and config keys
(``learner``, ``learning_rate``, ``weight_decay``, ``epochs``, ``eval_step``,
``stopping_step``, ``clip_grad_norm``, ``valid_metric``), and stores the best weights as a
plain ``state_dict`` in the run's own directory.

A model that needs a different schedule (e.g. multi-stage training) sets a ``trainer_class``
attribute naming a subclass of :class:`Trainer`. Such a subclass that overrides ``fit`` calls
:meth:`Trainer.notify_validation` after each validation, so that Ray Tune trials
(``mbrec.benchmark.tune``) see its valid scores epoch by epoch.

Test lock: ``fit`` sees only the train and valid splits. It must leave the selected weights
both loaded and written at ``checkpoint_path``; the runner hashes that file (sha256) into the
record before it evaluates test, once.
"""

import logging
import math
import time
from datetime import datetime, timezone

import torch
from recbole.data.interaction import Interaction
from tqdm import tqdm

from mbrec.data.dataset import SequenceLoader, WindowLoader, train_unit
from mbrec.evaluation import Evaluator
from mbrec.training.resume import (capture_rng, load_resume_state, restore_rng, resume_path_of,
                                   save_resume_state)
from mbrec.utils import atomic_path

logger = logging.getLogger("mbrec")

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
}


# Training precision (``precision``): bf16 runs the forward pass and loss under torch.autocast;
# weights, optimizer state and evaluation stay fp32 (bf16 scores would tie items that fp32 tells
# apart, and ties count against the target).
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}

# Why training ended (``stopped_by`` of the fit summary and the record): patience ran out on valid
# (converged), or the epoch cap came first (the selected epoch may still have been improving).
STOPPED_BY_PATIENCE = "patience"
STOPPED_BY_EPOCH_CAP = "epoch_cap"
STOPPED_BY_NO_TRAINING = "not_trained"  # rules without training (Pop, Recent)


def _to_device(batch, device):
    """Pinned batches are copied asynchronously; the step that follows waits for them on the device."""
    return Interaction({field: value.to(device, non_blocking=True) for field, value in batch.interaction.items()})


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. the loss became NaN)."""


def build_optimizer(config, parameters):
    name = str(config["learner"]).lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown learner '{config['learner']}'; use one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](parameters, lr=config["learning_rate"], weight_decay=config["weight_decay"] or 0.0)


class Trainer:
    """Fits a RecBole-style sequential model and selects the epoch by a valid metric."""

    def __init__(self, config, model, device):
        # recbole 1.2.1's sine.py runs torch.autograd.set_detect_anomaly(True) when imported, and importing
        # any RecBole sequential model imports it: every backward would then record a Python stack trace per
        # autograd node (about 2x the CPU time of a small SASRec step). It only adds checks, so switching it
        # off changes no number.
        torch.autograd.set_detect_anomaly(False)
        self.config = config
        self.model = model
        self.device = device
        self.evaluator = Evaluator(config)
        self.optimizer = build_optimizer(config, [p for p in model.parameters() if p.requires_grad])
        self.epochs = int(config["epochs"])
        self.eval_step = max(1, int(config["eval_step"]))
        self.stopping_step = int(config["stopping_step"])
        # Patience cannot end training before this many epochs (per stage for staged models): a
        # Cloze model's valid score sits on a plateau for its first epochs (one pass per user an
        # epoch), where patience alone stopped MB-STR at valid 0.04 (suite cpu, session 6).
        # A mapping {stage: epochs} gives each stage of a staged model its own floor (StagedTrainer).
        floor = config["stopping_min_epochs"] or 0
        if isinstance(floor, dict) and not getattr(model, "training_stages", None):
            raise ValueError(f"stopping_min_epochs per stage ({floor}) needs a staged model; {type(model).__name__} "
                             f"trains in one loop: give one number")
        self.stopping_min_epochs = floor if isinstance(floor, dict) else int(floor)
        self.valid_metric = str(config["valid_metric"]).lower()
        self.valid_task = config["valid_task"]
        self.clip_grad_norm = config["clip_grad_norm"]
        self.scheduler = None  # an optional per-batch learning-rate schedule (e.g. ScheduledTrainer sets one)
        self.precision = config["precision"] or "fp32"
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got '{self.precision}'")
        self.loader_prefetch = int(config["loader_prefetch"] or 0)
        self.data_wait_seconds = 0.0  # of the last epoch: time the training loop waited for batches
        self.show_progress = bool(config["show_progress"])
        self.history = []  # one dict per epoch: loss, seconds, valid score
        # Called as callback(entry, best_score, best_epoch) after each validation (tune trials report there).
        self.validation_callbacks = []
        # Seconds between resume states (``mbrec.training.resume``); None: none are written or read.
        self.resume_every_seconds = config["resume_every_seconds"]
        if self.resume_every_seconds is not None and float(self.resume_every_seconds) < 0:
            raise ValueError(f"resume_every_seconds must be >= 0 or None, got {self.resume_every_seconds}")
        self.resumes = []  # [{at_epoch, saved}] per resumed attempt
        self.seconds_before_resume = 0.0  # training seconds of the earlier attempts, up to their resume state

    def train_loader(self, train_dataset):
        """Prefix examples, or whole windows when ``train_unit: sequence`` (laid out for the model's
        ``train_unit_kind``; the model's ``calculate_loss`` reads them, see ``mbrec.data.dataset``)."""
        pin_memory = torch.device(self.device).type == "cuda"
        if train_unit(self.config) == "sequence":
            return WindowLoader(self.config, train_dataset, self.config["train_batch_size"],
                                kind=getattr(self.model, "train_unit_kind", None), prefetch=self.loader_prefetch,
                                pin_memory=pin_memory,
                                cloze_window_rows=getattr(self.model, "cloze_window_rows", "window"))
        return SequenceLoader(self.config, train_dataset, self.config["train_batch_size"], shuffle=True,
                              training=True, prefetch=self.loader_prefetch, pin_memory=pin_memory)

    def fit(self, train_dataset, valid_dataset, checkpoint_path):
        """Train until ``epochs`` or early stopping; leave the best weights loaded.

        Resumes from the resume state beside ``checkpoint_path`` when an interrupted attempt of the
        same run left one (``mbrec.training.resume``), and saves one after a validation, at most once
        every ``resume_every_seconds`` (None: never). It is removed when training ends.
        """
        loader = self.train_loader(train_dataset)
        fit_start = time.perf_counter()
        best_score, best_epoch, bad_validations, first_epoch = -math.inf, -1, 0, 0
        resume_path = resume_path_of(checkpoint_path)
        state = load_resume_state(resume_path, self.device) if self.resume_every_seconds is not None else None
        if state is not None:
            best_score, best_epoch, bad_validations, first_epoch = self._resume(state, checkpoint_path, resume_path)
        last_saved = time.perf_counter()
        stopped_by = STOPPED_BY_EPOCH_CAP
        for epoch in range(first_epoch, self.epochs):
            start = time.perf_counter()
            loss = self._train_epoch(loader, epoch)
            entry = {"epoch": epoch, "loss": loss, "train_seconds": time.perf_counter() - start,
                     "data_wait_seconds": self.data_wait_seconds}
            validated = (epoch + 1) % self.eval_step == 0 or epoch == self.epochs - 1
            if validated:
                start = time.perf_counter()
                score = self.validate(valid_dataset)
                entry.update(valid_score=score, valid_seconds=time.perf_counter() - start)
                if score > best_score or best_epoch < 0:  # the first validation always saves
                    best_score, best_epoch, bad_validations = score, epoch, 0
                    self._save(checkpoint_path)
                else:
                    bad_validations += 1
                logger.info(f"epoch {epoch}: loss {loss:.4f}  valid {self.valid_task} {self.valid_metric} "
                            f"{score:.4f}  (best {best_score:.4f} @ {best_epoch})  {entry['train_seconds']:.1f}s")
                self.notify_validation(entry, best_score, best_epoch)
            self.history.append(entry)
            if bad_validations > self.stopping_step and epoch + 1 >= self.stopping_min_epochs:
                logger.info(f"early stopping after epoch {epoch}: no valid improvement for "
                            f"{bad_validations} validations")
                stopped_by = STOPPED_BY_PATIENCE
                break
            if (validated and self.resume_every_seconds is not None and epoch + 1 < self.epochs
                    and time.perf_counter() - last_saved >= self.resume_every_seconds):
                self._save_resume_state(resume_path, checkpoint_path, epoch + 1, best_score, best_epoch,
                                        bad_validations, time.perf_counter() - fit_start)
                last_saved = time.perf_counter()
        if stopped_by == STOPPED_BY_EPOCH_CAP:
            logger.info(f"stopped by the epoch cap ({self.epochs} epochs) before patience ran out: valid may still "
                        f"improve")
        self.model.load_state_dict(torch.load(checkpoint_path, map_location=self.device, weights_only=True))
        resume_path.unlink(missing_ok=True)
        summary = {"best_epoch": best_epoch, "best_valid_score": best_score, "epochs_run": len(self.history),
                   "stopped_by": stopped_by}
        if self.resumes:  # the record says the run was resumed, where, and what the earlier attempts trained
            summary.update(resumed=self.resumes, seconds_before_resume=self.seconds_before_resume)
        return summary

    def _save_resume_state(self, resume_path, checkpoint_path, next_epoch, best_score, best_epoch, bad_validations,
                           seconds):
        """Everything :meth:`_resume` needs to continue at ``next_epoch`` as if never interrupted."""
        save_resume_state(resume_path, {
            "epoch": next_epoch, "best_score": best_score, "best_epoch": best_epoch,
            "bad_validations": bad_validations, "history": self.history,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            # the selected weights so far: the checkpoint file may be overwritten by a later, unsaved epoch
            "best_model": torch.load(checkpoint_path, map_location=self.device, weights_only=True),
            "rng": capture_rng(), "resumes": self.resumes,
            "seconds": self.seconds_before_resume + seconds,
            "saved": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        logger.info(f"resume state saved at epoch {next_epoch}: {resume_path}")

    def _resume(self, state, checkpoint_path, resume_path):
        """Load a resume state; return (best score, best epoch, bad validations, next epoch)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if (state["scheduler"] is None) != (self.scheduler is None):
            raise TrainingError(f"the resume state {resume_path} and this trainer disagree on a learning-rate "
                                f"schedule; remove the file to train from epoch 0")
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        with atomic_path(checkpoint_path) as tmp:
            torch.save(state["best_model"], tmp)
        self.history = list(state["history"])
        self.resumes = list(state["resumes"]) + [{"at_epoch": int(state["epoch"]), "saved": state["saved"]}]
        self.seconds_before_resume = float(state["seconds"])
        restore_rng(state["rng"])
        logger.info(f"resuming at epoch {state['epoch']} from {resume_path} (saved {state['saved']}; best valid "
                    f"{state['best_score']:.4f} @ {state['best_epoch']})")
        # The callbacks hear the earlier validations again, with the best as it was at each: a sweep's
        # scheduler counts a trial's reports from the trial's start (ASHA's rungs).
        best_score, best_epoch = -math.inf, -1
        for entry in self.history:
            if "valid_score" in entry:
                if entry["valid_score"] > best_score or best_epoch < 0:
                    best_score, best_epoch = entry["valid_score"], entry["epoch"]
                self.notify_validation(entry, best_score, best_epoch)
        return float(state["best_score"]), int(state["best_epoch"]), int(state["bad_validations"]), int(state["epoch"])

    def notify_validation(self, entry, best_score, best_epoch):
        """Hand one validated epoch (its history ``entry``) and the best so far to the callbacks."""
        for callback in self.validation_callbacks:
            callback(entry, best_score, best_epoch)

    def validate(self, valid_dataset):
        results = self.evaluator.evaluate(self.model, valid_dataset, tasks=[self.valid_task], device=self.device)
        result = results[self.valid_task]
        if result is None:
            raise TrainingError(f"valid_task '{self.valid_task}' is not available for this model")
        if self.valid_metric not in result.metrics:
            raise TrainingError(f"valid_metric '{self.valid_metric}' not among {sorted(result.metrics)}")
        return result.metrics[self.valid_metric]

    def _train_epoch(self, loader, epoch):
        self.model.train()
        total, batches = 0.0, 0
        self.data_wait_seconds = 0.0
        device_type = torch.device(self.device).type
        progress = tqdm(loader, desc=f"train {epoch:>3}", leave=False, disable=not self.show_progress)
        batch_iterator = iter(progress)
        while True:
            # loss.item() below synchronises each step, so time spent here is time the device idles
            waited = time.perf_counter()
            batch = next(batch_iterator, None)
            if batch is None:
                break
            batch = _to_device(batch, self.device)
            self.data_wait_seconds += time.perf_counter() - waited
            self.optimizer.zero_grad()
            with torch.autocast(device_type, dtype=PRECISIONS[self.precision], enabled=self.precision != "fp32"):
                loss = self.model.calculate_loss(batch)
            if isinstance(loss, tuple):  # some RecBole models return several loss terms
                loss = sum(loss)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss is {loss.item()} at epoch {epoch}, batch {batches}; "
                                    f"lower learning_rate or check the data")
            loss.backward()
            if self.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), **self.clip_grad_norm)
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            total += loss.item()
            batches += 1
            progress.set_postfix(loss=f"{total / batches:.4f}")
        return total / max(batches, 1)

    def _save(self, checkpoint_path):
        with atomic_path(checkpoint_path) as tmp:
            torch.save(self.model.state_dict(), tmp)


class NoTrainingTrainer(Trainer):
    """For rules that do not learn (Pop, Recent): no optimizer, no epochs, one validation."""

    def __init__(self, config, model, device):
        self.config = config
        self.model = model
        self.device = device
        self.evaluator = Evaluator(config)
        self.valid_metric = str(config["valid_metric"]).lower()
        self.valid_task = config["valid_task"]
        self.history = []
        self.validation_callbacks = []

    def fit(self, train_dataset, valid_dataset, checkpoint_path):
        # The rule's state is its checkpoint too, so every run's record can name (hash) the
        # weights its test metrics came from.
        self._save(checkpoint_path)
        score = self.validate(valid_dataset)
        logger.info(f"{type(self.model).__name__} does not train; valid {self.valid_task} "
                    f"{self.valid_metric} {score:.4f}")
        self.notify_validation({"epoch": None, "loss": None, "valid_score": score}, score, None)
        return {"best_epoch": None, "best_valid_score": score, "epochs_run": 0, "stopped_by": STOPPED_BY_NO_TRAINING}
