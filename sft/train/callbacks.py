"""Trainer pieces shared by the causal and seq2seq paths: a JSONL log and a non-finite-loss guard."""

from __future__ import annotations

import json
import math
import os
import time

import torch
from transformers import TrainerCallback

from ..errors import TrainError


class JsonlLogger(TrainerCallback):
    """Appends every log record to output_dir/train_log.jsonl (rank 0 only). On resume, lines past the
    checkpoint's step are dropped first so the log reads as one uninterrupted run."""

    def __init__(self, path: str, resume_step: int | None = None):
        self.path = path
        self.start = time.time()
        if resume_step is not None and os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                keep = [ln for ln in fh if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            with open(path, "w", encoding="utf-8") as fh:
                fh.writelines(keep)
        elif resume_step is None and os.path.exists(path):
            os.remove(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        rec = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs,
               "elapsed_s": round(time.time() - self.start, 3)}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")


class NonFiniteLossGuard:
    """Mixin for a Trainer: stop at the first NaN/inf loss, before the optimiser applies it, so the last
    checkpoint on disk stays good."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        value = loss.detach().float()
        if not bool(torch.isfinite(value).all()):
            step = self.state.global_step + 1
            raise TrainError(f"training loss became {float(value.mean()) if value.numel() else math.nan} at step "
                             f"{step}; stopped without applying it (last checkpoint kept in {self.args.output_dir})",
                             field="train.learning_rate",
                             fix="lower the learning rate or use float32/bfloat16, then run again with --resume")
        return loss
