"""Multi-stage training (e.g. FatsMB's Alg. 1: autoencoder, then diffusion, then decoder fine-tuning).

A model opts in with ``trainer_class = StagedTrainer`` and declares
- ``training_stages``: stage names in order, e.g. ``("mbae", "diffusion", "finetune")``;
- ``set_stage(name)``: freezes and unfreezes its parts and picks the loss and the inference path
  of that stage (``calculate_loss`` and ``full_sort_predict`` then follow the stage);
- ``stage_inference``: ``{stage: inference path}``. Consecutive stages with the same inference
  path are one selection: a later stage must beat the best valid score of the earlier one, else
  the earlier stage's best weights stay (FatsMB: fine-tuning the decoder must improve on the
  diffusion stage's generation, or it is not kept).

Config: ``<stage>_epochs`` per stage (0 skips it), ``stage`` = the last stage to train (``all``:
every stage; ``mbae``: stop after it, FatsMB's "MBAE" row), plus the base trainer's keys
(``stopping_step`` applies per stage, learning rate and optimizer are rebuilt per stage over the
stage's trainable parameters).

Interruption: after each completed stage, the weights, the history and the stage summaries are
stored beside the checkpoint (``<name>.stages.pth``); a new ``fit`` with the same checkpoint path
(the runner derives it from the run key, so the same config and seed) resumes after the last
completed stage. The file is removed when ``fit`` finishes. Resuming does not restore the RNG
state, so a resumed run is not bit-identical to an uninterrupted one.
"""

import logging
import math
import time

import torch

from mbrec.training.trainer import STOPPED_BY_EPOCH_CAP, STOPPED_BY_PATIENCE, Trainer, build_optimizer
from mbrec.utils import atomic_path

logger = logging.getLogger("mbrec")

ALL_STAGES = "all"


def stage_floors(floor, stages):
    """``stopping_min_epochs`` as ``{stage: epochs}``: one number for every stage, or a mapping that
    names stages (a stage it leaves out has none). Why per stage: FatsMB's Cloze-trained MBAE stage
    climbs off a long plateau (patience ended one run at epoch 37, still rising, at valid 0.07),
    while its later stages start from a trained encoder and settle within a few epochs."""
    if not isinstance(floor, dict):
        return {stage: int(floor or 0) for stage in stages}
    unknown = sorted(set(floor) - set(stages))
    if unknown:
        raise ValueError(f"stopping_min_epochs names unknown stage(s) {unknown}; the stages are {', '.join(stages)}")
    return {stage: int(floor.get(stage) or 0) for stage in stages}


class StagedTrainer(Trainer):
    """Runs the model's stages in order, each with its own optimizer, early stopping and selection."""

    def __init__(self, config, model, device):
        super().__init__(config, model, device)
        self.stages = tuple(model.training_stages)
        self.stage_epochs = {}
        for stage in self.stages:
            epochs = config[f"{stage}_epochs"]
            if epochs is None or int(epochs) < 0:
                raise ValueError(f"config key '{stage}_epochs' must be a number >= 0, got {epochs!r}")
            self.stage_epochs[stage] = int(epochs)
        self.stage_floors = stage_floors(self.stopping_min_epochs, self.stages)
        last = config["stage"] or ALL_STAGES
        if last != ALL_STAGES and last not in self.stages:
            raise ValueError(f"stage '{last}' is not one of {ALL_STAGES}, {', '.join(self.stages)}")
        self.stages_to_run = self.stages if last == ALL_STAGES else self.stages[:self.stages.index(last) + 1]
        self.stage_summaries = {}

    @staticmethod
    def state_path(checkpoint_path):
        return checkpoint_path.with_name(checkpoint_path.stem + ".stages.pth")

    def fit(self, train_dataset, valid_dataset, checkpoint_path):
        state_path = self.state_path(checkpoint_path)
        completed = []
        carried = None  # (inference path, best score) of the last completed stage
        if state_path.exists():
            state = torch.load(state_path, map_location=self.device, weights_only=True)
            self.model.load_state_dict(state["model"])
            completed, self.history = list(state["completed"]), list(state["history"])
            self.stage_summaries = dict(state["summaries"])
            if state["carried"] is not None:
                carried = (state["carried"][0], float(state["carried"][1]))
            logger.info(f"resuming after stage(s) {', '.join(completed)} from {state_path}")
            with atomic_path(checkpoint_path) as tmp:
                torch.save(self.model.state_dict(), tmp)
        loader = self.train_loader(train_dataset)
        for stage in self.stages_to_run:
            if stage in completed:
                continue
            if self.stage_epochs[stage] == 0:
                logger.info(f"stage {stage}: 0 epochs, skipped")
                continue
            inference = self.model.stage_inference[stage]
            floor = carried[1] if carried is not None and carried[0] == inference else None
            summary = self._fit_stage(stage, loader, valid_dataset, checkpoint_path, floor)
            self.stage_summaries[stage] = summary
            carried = (inference, summary["best_valid_score"])
            completed.append(stage)
            self._save_state(state_path, completed, carried)
        if completed:
            last = completed[-1]
            self.model.set_stage(last)  # the inference path of the last stage trained
        state_path.unlink(missing_ok=True)
        final = self.stage_summaries[completed[-1]] if completed else {"best_epoch": None,
                                                                       "best_valid_score": math.nan}
        # Converged only if every stage trained ended by patience; one capped stage caps the run.
        capped = any(summary.get("stopped_by") == STOPPED_BY_EPOCH_CAP for summary in self.stage_summaries.values())
        return {"best_epoch": final["best_epoch"], "best_valid_score": final["best_valid_score"],
                "epochs_run": len(self.history), "stages": self.stage_summaries,
                "stopped_by": STOPPED_BY_EPOCH_CAP if capped or not completed else STOPPED_BY_PATIENCE}

    def _fit_stage(self, stage, loader, valid_dataset, checkpoint_path, floor):
        """Train one stage; leave its best weights (or, under ``floor``, the previous ones) loaded."""
        self.model.set_stage(stage)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.config, trainable)
        epochs = self.stage_epochs[stage]
        first_epoch = len(self.history)
        best_score = -math.inf if floor is None else floor
        best_epoch, bad_validations, seconds = None, 0, []
        stopped_by = STOPPED_BY_EPOCH_CAP
        logger.info(f"stage {stage}: up to {epochs} epochs, {sum(p.numel() for p in trainable)} trainable "
                    f"parameters" + ("" if floor is None else f", must beat {floor:.4f} of the previous stage"))
        for stage_epoch in range(epochs):
            epoch = first_epoch + stage_epoch
            start = time.perf_counter()
            loss = self._train_epoch(loader, epoch)
            entry = {"epoch": epoch, "stage": stage, "stage_epoch": stage_epoch, "loss": loss,
                     "train_seconds": time.perf_counter() - start, "data_wait_seconds": self.data_wait_seconds}
            seconds.append(entry["train_seconds"])
            if (stage_epoch + 1) % self.eval_step == 0 or stage_epoch == epochs - 1:
                start = time.perf_counter()
                score = self.validate(valid_dataset)
                entry.update(valid_score=score, valid_seconds=time.perf_counter() - start)
                if score > best_score or (best_epoch is None and floor is None):
                    best_score, best_epoch, bad_validations = score, epoch, 0
                    self._save(checkpoint_path)
                else:
                    bad_validations += 1
                logger.info(f"[{stage}] epoch {epoch}: loss {loss:.4f}  valid {self.valid_task} "
                            f"{self.valid_metric} {score:.4f}  (best {best_score:.4f} @ {best_epoch})  "
                            f"{entry['train_seconds']:.1f}s")
                self.notify_validation(entry, best_score, best_epoch)  # sweeps see every validation
            self.history.append(entry)
            if bad_validations > self.stopping_step and stage_epoch + 1 >= self.stage_floors[stage]:
                logger.info(f"stage {stage}: early stopping after epoch {epoch}")
                stopped_by = STOPPED_BY_PATIENCE
                break
        if best_epoch is None:
            logger.info(f"stage {stage} did not beat the previous stage ({best_score:.4f}); keeping its weights")
        self.model.load_state_dict(torch.load(checkpoint_path, map_location=self.device, weights_only=True))
        return {"best_epoch": best_epoch, "best_valid_score": best_score, "epochs_run": len(self.history) - first_epoch,
                "train_seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None, "stopped_by": stopped_by}

    def _save_state(self, state_path, completed, carried):
        with atomic_path(state_path) as tmp:
            torch.save({"model": self.model.state_dict(), "completed": completed, "history": self.history,
                        "summaries": self.stage_summaries, "carried": list(carried) if carried else None}, tmp)
