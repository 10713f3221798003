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
    """Mixin for a Trainer: stop at the first NaN/inf loss without applying it, so the last checkpoint on disk
    stays good, and without a host sync per step (which would stall a GPU's queue).

    Each micro-step folds `isfinite(loss)` into a flag on the device, with the first bad loss and its step.
    Before every optimiser step the gradients are zeroed on the device when the flag is set (`masked_fill_`
    with the flag: no sync; on CPU, where reading it costs nothing, only when set), so a non-finite update is
    never applied. The flag is read on the host only where the Trainer syncs anyway: at logging steps, before a
    checkpoint or an evaluation, and at the end."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._bad = self._bad_loss = self._bad_step = None
        self.add_callback(_GuardCheck(self))

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        value = loss.detach().float().mean()
        bad = ~torch.isfinite(value)
        if self._bad is None or self._bad.device != value.device:
            self._bad, self._bad_loss = torch.zeros_like(bad), torch.zeros_like(value)
            self._bad_step = torch.zeros((), dtype=torch.long, device=value.device)
        first = bad & ~self._bad
        self._bad_loss = torch.where(first, value, self._bad_loss)
        self._bad_step = torch.where(first, torch.full_like(self._bad_step, self.state.global_step + 1),
                                     self._bad_step)
        self._bad = self._bad | bad
        return loss

    def neutralise_update(self) -> None:
        """Zero every gradient on the device if a loss since the last check was not finite (no host sync)."""
        if self._bad is None or (self._bad.device.type == "cpu" and not bool(self._bad)):
            return  # a CPU flag reads for free: a clean step skips the per-parameter fill (3 % of a tiny step)
        for p in self.model.parameters():
            g = p.grad
            if g is None:
                continue
            if hasattr(g, "to_local"):  # FSDP2 DTensor: fill the local shard
                g = g.to_local()
            g.masked_fill_(self._bad.to(g.device), 0.0)

    def check_finite(self) -> None:
        if self._bad is not None and bool(self._bad):  # host sync: only where the Trainer syncs anyway
            raise TrainError(f"training loss became {float(self._bad_loss)} at step {int(self._bad_step)}; "
                             f"stopped without applying it (last checkpoint kept in {self.args.output_dir})",
                             field="train.learning_rate",
                             fix="lower the learning rate or use mixed precision bf16 or no, then run again with "
                                 "--resume")


class _GuardCheck(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.neutralise_update()

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save or control.should_evaluate or control.should_training_stop:
            self.trainer.check_finite()

    def on_log(self, args, state, control, **kwargs):
        self.trainer.check_finite()

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.check_finite()


class TrainingEvaluator:
    """Answer-token eval loss and perplexity on the eval split (and, optionally, generation metrics on a fixed
    subset), computed by every rank on its shard with the same code as the before/after evaluation."""

    def __init__(self, recipe, tokenizer, arch: str, records: list[dict]):
        self.recipe, self.tokenizer, self.arch, self.records = recipe, tokenizer, arch, records
        self.loss_set = self.gen_set = None

    def __call__(self, model) -> dict:
        from ..metrics import score_texts
        from ..evaluation.run import build_eval_set, sharded_generate, sharded_nll
        from ..data.encode import PromptFormat

        r, e = self.recipe, self.recipe.eval
        if self.loss_set is None:
            self.loss_set = build_eval_set(model.config, self.tokenizer, self.arch, self.records, r)
        nlls = sharded_nll(model, self.loss_set, arch=self.arch, pad_id=self.tokenizer.pad_token_id,
                           batch_size=e.batch_size)
        total, count = sum(n for n, _ in nlls), sum(c for _, c in nlls)
        loss = total / max(count, 1)
        out = {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}
        wanted = e.during_training.metrics
        if wanted:
            if self.gen_set is None:
                from ..evaluation.score import metric_options

                self.options = metric_options(wanted, e.sql_database, file=r.path)  # resolved once
                self.gen_set = build_eval_set(model.config, self.tokenizer, self.arch, self.records, r,
                                              max_items=e.during_training.max_samples, features=False)
            from ..toolcalls import structure_answer

            generated = sharded_generate(model, self.tokenizer, self.gen_set, arch=self.arch, gen=e.generation,
                                         batch_size=e.batch_size, keep_raw=True,
                                         stops=PromptFormat(r, self.tokenizer, self.arch).stops)
            preds = [structure_answer(g)["prediction"] for g in generated]  # scored as sft eval scores them
            scores, _ = score_texts(preds, [it["references"] for it in self.gen_set.items], wanted, e.tokenize,
                                    self.options)
            out.update(scores)
        return out


class EvaluatingTrainer:
    """Mixin for a Trainer: `evaluate()` runs sft's TrainingEvaluator, so eval loss, perplexity and generation
    metrics during training are the same numbers as sft eval's, and best-checkpoint selection and early
    stopping (the Trainer's own) read them."""

    sft_evaluator: TrainingEvaluator | None = None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval", **kwargs):
        if self.sft_evaluator is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix, **kwargs)
        start = time.time()
        model = self.model
        was_training = model.training
        model.eval()
        try:
            scores = self.sft_evaluator(model)
        finally:
            model.train(was_training)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in scores.items()}
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - start, 3)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
