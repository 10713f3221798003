"""`sft train`: recipe -> data -> model -> (eval before) -> trainer -> save -> (eval after) -> push.

Thin orchestration: the trainers are TRL's / transformers', built in `causal.py` and `seq2seq.py`.
Under `accelerate launch` / `torchrun` every rank trains and evaluates its shard; rank 0 writes the outputs.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import time

import torch

from .. import rundir
from ..data.fingerprint import data_changes, data_fingerprint
from ..data.pipeline import accounting_lines
from ..errors import TrainError
from ..io import read_json, write_json_atomic, write_text_atomic
from ..modeling import apply_lora, count_parameters, load_model
from ..recipe import Recipe, load_recipe
from ..distributed import env_rank as rank
from ..distributed import env_world_size as world_size
from .callbacks import JsonlLogger, TrainingEvaluator


def say(msg: str) -> None:
    if rank() == 0:
        print(f"[sft] {msg}", flush=True)


def _step(checkpoint: str) -> int:
    return int(checkpoint.rsplit("-", 1)[-1])


def _checkpoints(out: str) -> list[str]:
    """checkpoint-N folders of output_dir, oldest first."""
    if not os.path.isdir(out):
        return []
    cks = [os.path.join(out, d) for d in os.listdir(out) if d.startswith("checkpoint-") and d.split("-")[-1].isdigit()]
    return sorted(cks, key=_step)


# What a checkpoint needs for a resume to equal an uninterrupted run: each part, and the names transformers
# (plain, sharded, FSDP, per-rank RNG) saves it under.
CHECKPOINT_PARTS = {
    "weights": ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                "pytorch_model.bin", "pytorch_model_fsdp.bin", "pytorch_model_fsdp_0"),
    "optimizer state": ("optimizer.pt", "optimizer.bin", "optimizer_0"),
    "scheduler state": ("scheduler.pt",),
    "RNG state": ("rng_state.pth", "rng_state_0.pth"),
}


def missing_parts(checkpoint: str) -> list[str]:
    """What a checkpoint lacks (empty: complete). transformers writes trainer_state.json last, so a checkpoint
    without a readable one was cut off while saving."""
    try:
        names = set(os.listdir(checkpoint))
    except OSError:
        return ["everything"]
    missing = [part for part, files in CHECKPOINT_PARTS.items() if not names & set(files)]
    try:
        read_json(os.path.join(checkpoint, "trainer_state.json"))
    except (OSError, ValueError):
        missing.append("trainer state")
    return missing


def _complete(checkpoint: str) -> bool:
    return not missing_parts(checkpoint)


def check_output_dir(recipe: Recipe, *, resume: bool, overwrite: bool) -> str | None:
    """Refuse to mix runs in one output_dir or to write where sft must not; return the checkpoint to resume
    from, if any. Deletes nothing (clearing for --overwrite happens once the new run's data has loaded)."""
    out = recipe.train.output_dir
    rundir.check_usable(out, recipe.path, overwrite=overwrite)
    if resume and overwrite:
        raise TrainError("--resume and --overwrite contradict each other", field="--resume / --overwrite",
                         fix="pass one of them")
    saved = os.path.join(out, rundir.RECIPE)
    if os.path.exists(saved) and not overwrite:
        other = load_recipe(saved)
        if other.fingerprint() != recipe.fingerprint():
            raise TrainError("output_dir holds a run of a different recipe", file=saved, field="train.output_dir",
                             fix="choose another train.output_dir, or pass --overwrite to replace that run")
    cks = _checkpoints(out)
    if resume:
        lacking = {c: missing_parts(c) for c in cks}
        complete = [c for c in cks if not lacking[c]]
        if not complete:
            detail = f" ({os.path.basename(cks[-1])} lacks its {', '.join(lacking[cks[-1]])})" if cks else ""
            raise TrainError(f"nothing to resume: no complete checkpoint-* in output_dir{detail}", file=out,
                             field="train.output_dir", fix="run without --resume (or --overwrite) to start training")
        for c in cks:
            if lacking[c] and _step(c) > _step(complete[-1]) and rank() == 0:
                print(f"[sft] skipping incomplete {os.path.basename(c)} (no {', '.join(lacking[c])}); resuming "
                      f"from {os.path.basename(complete[-1])}", flush=True)
                if "trainer state" in lacking[c]:  # cut off while saving: the resumed run writes that step again
                    shutil.rmtree(c, ignore_errors=True)
        return complete[-1]
    if cks and not overwrite:
        raise TrainError(f"output_dir has checkpoints of an unfinished or earlier run ({os.path.basename(cks[-1])})",
                         file=out, field="train.output_dir",
                         fix="pass --resume to continue it or --overwrite to start over")
    if not overwrite and os.path.exists(os.path.join(out, rundir.METRICS)):
        raise TrainError("output_dir holds a finished run", file=out, field="train.output_dir",
                         fix="choose another train.output_dir, or pass --overwrite to replace that run")
    return None


def check_resumable_data(out: str, fingerprint: dict) -> None:
    """--resume continues only on the data, template and tokenizer the run started with."""
    path = os.path.join(out, rundir.FINGERPRINT)
    if not os.path.exists(path):
        return
    changes = data_changes(read_json(path), fingerprint)
    if changes:
        raise TrainError(f"cannot resume: the data changed since this run started ({'; '.join(changes)})",
                         file=out, field="--resume",
                         fix="restore the original data, or start a new run (another output_dir, or --overwrite)")


def resolve_eval_steps(recipe: Recipe, n_train: int) -> int:
    """train.eval_steps, or the steps between train.evals_per_epoch evaluations (0: no evaluation)."""
    t = recipe.train
    if t.eval_steps:
        return t.eval_steps
    if not t.evals_per_epoch:
        return 0
    steps_per_epoch = max(1, math.ceil(n_train / (t.batch_size * t.grad_accum * world_size())))
    return max(1, steps_per_epoch // t.evals_per_epoch)


def _eval_arguments(recipe: Recipe, eval_steps: int) -> dict:
    from ..metrics import higher_is_better

    t = recipe.train
    if not eval_steps:
        return {"eval_strategy": "no"}
    metric = t.metric_for_best_model
    kw = dict(eval_strategy="steps", eval_steps=eval_steps, metric_for_best_model=metric,
              greater_is_better=False if metric == "loss" else higher_is_better(metric),
              load_best_model_at_end=t.load_best_model_at_end)
    if t.load_best_model_at_end:  # the Trainer can only return to a checkpoint written at an evaluation
        kw["save_steps"] = eval_steps
    return kw


def training_arguments(recipe: Recipe, *, on_gpu: bool, eval_steps: int = 0, precision=None) -> dict:
    from ..modeling import run_precision
    from ..switches import trainer_arguments

    t = recipe.train
    precision = precision or run_precision(recipe)
    report_to = [r for r in t.report_to if r != "none"] or "none"
    return dict(
        output_dir=t.output_dir, num_train_epochs=t.epochs, max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size, gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps if t.warmup_steps < 1 else int(t.warmup_steps),  # below 1: a ratio
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, optim=t.optim,
        logging_steps=t.logging_steps, logging_first_step=True, logging_nan_inf_filter=False,
        save_strategy="steps", save_steps=t.save_steps, save_total_limit=t.save_total_limit,
        seed=t.seed, data_seed=t.seed, full_determinism=t.full_determinism, report_to=report_to,
        use_cpu=t.use_cpu or not on_gpu, **trainer_arguments(recipe, precision),
        remove_unused_columns=True, disable_tqdm=False,
        ddp_find_unused_parameters=False if world_size() > 1 else None,
        dataloader_num_workers=0, include_num_input_tokens_seen="non_padding",
    ) | _eval_arguments(recipe, eval_steps) | dict(t.trainer_args)


def training_outcome(recipe: Recipe, trainer, stopper, eval_steps: int) -> dict:
    """Which evaluation was best and why training stopped (train_summary.json and metrics.json)."""
    st = trainer.state
    if stopper is not None and stopper.early_stopping_patience_counter >= stopper.early_stopping_patience:
        reason = (f"early stopping: {recipe.train.metric_for_best_model} did not improve in "
                  f"{stopper.early_stopping_patience} evaluations")
    else:
        reason = "max_steps reached" if recipe.train.max_steps > 0 else "epochs completed"
    out = {"stopped": reason}
    if eval_steps:
        evals = [h for h in st.log_history if "eval_loss" in h]
        out.update({"eval_steps": eval_steps, "evaluations": len(evals),
                    "best": {"metric": recipe.train.metric_for_best_model, "value": st.best_metric,
                             "step": getattr(st, "best_global_step", None) or _step_of(st.best_model_checkpoint),
                             "checkpoint": os.path.basename(st.best_model_checkpoint or "") or None,
                             "loaded_at_end": recipe.train.load_best_model_at_end}})
    return out


def _step_of(checkpoint: str | None) -> int | None:
    return _step(checkpoint) if checkpoint else None


def _distributed_kind(trainer) -> str:
    """FSDP when the model was sharded (its parameters are DTensors), else accelerate's distributed type."""
    try:
        from torch.distributed.tensor import DTensor

        if any(isinstance(p, DTensor) for p in trainer.model_wrapped.parameters()):
            return "FSDP"
    except ImportError:
        pass
    return str(getattr(trainer.accelerator.distributed_type, "value", "NO"))


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def say_data_source(prep) -> None:
    """Where this rank's training data came from (every rank says it: rank 0 tokenises, the others read)."""
    where = {"built": "tokenised and cached in", "hit": "read from the cache", "off": "tokenised (cache off)",
             "streaming": "streamed (tokenised on the fly)"}[prep.cache]
    line = f"training data {where}" + (f" {prep.cache_path}" if prep.cache in ("built", "hit") else "")
    if world_size() > 1:
        print(f"[sft] rank {rank()}: {line}", flush=True)
    else:
        say(line)


def train(recipe: Recipe, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Train per the recipe; returns the training summary (with "eval": metrics when evaluated)."""
    from ..context import RunContext
    from ..distributed import init_process_group

    out = recipe.train.output_dir
    resume_from = check_output_dir(recipe, resume=resume, overwrite=overwrite)
    init_process_group(recipe.train.ddp_timeout)  # so evaluation before training is sharded over the ranks too
    # device, precision, rank, family: decided once, switches checked here, before output_dir is created
    run = RunContext.build(recipe)
    lock = rundir.RunLock(out)
    if rank() == 0:
        rundir.create(out)
        lock.acquire()
    try:
        return _train(recipe, run, resume_from, overwrite, out)
    finally:
        lock.release()


def _train(recipe: Recipe, run, resume_from: str | None, overwrite: bool, out: str) -> dict:
    from transformers import set_seed

    from ..prepare import prepare_data

    set_seed(recipe.train.seed)
    arch, precision, on_gpu = run.arch, run.precision, run.on_gpu
    say(f"precision: {precision.mode} ({precision.reason})")
    run.preflight()  # lengths, LoRA names (on a weightless skeleton), Hub credentials: before any data is read

    say(f"loading data ({len(recipe.data.sources)} source(s))")
    prep = prepare_data(recipe, arch)
    splits, tokenizer, enc = prep.splits, prep.tokenizer, prep.train
    for line in accounting_lines(prep.accounting):
        say(line)
    say_data_source(prep)
    n_train = prep.summary()["train"]
    if n_train == 0:
        raise TrainError("no training example fits", file=recipe.path, field="data.max_length",
                         fix=f"raise data.max_length or set data.clean.overlong: trim ({splits.report.to_dict()})")
    drops = splits.report.to_dict()
    say(f"train {'a stream of' if n_train is None else n_train} examples, eval {len(splits.eval)}, "
        f"test {len(splits.test)}; dropped {drops['dropped'] or 'none'}")
    fingerprint = data_fingerprint(recipe, tokenizer, splits)
    if resume_from:
        check_resumable_data(out, fingerprint)
        say(f"resuming from {os.path.basename(resume_from)}")
    elif overwrite and rank() == 0:
        removed = rundir.clear(out)
        if removed:
            say(f"--overwrite: removed the previous run's {len(removed)} file(s) and folder(s)")
    scratch_lora = recipe.model.init == "scratch" and recipe.lora.enabled
    base_dir = os.path.join(out, "base_model") if scratch_lora and rank() == 0 else None
    model = load_model(recipe, tokenizer, arch, base_save_dir=base_dir, precision=precision, config=run.config)
    if rank() == 0:  # committed only now: a start that failed on data or model never blocks the rerun
        write_text_atomic(os.path.join(out, rundir.RECIPE), recipe.to_yaml())
        write_json_atomic(os.path.join(out, rundir.FINGERPRINT), fingerprint)

    from ..evaluation.run import evaluate_model, note_lines, write_eval_outputs

    before = None
    if recipe.eval.before and splits.eval and not resume_from:
        say("evaluating the base model" + (f" (all {world_size()} ranks)" if world_size() > 1 else ""))
        eval_model = model
        if recipe.quantization.enabled and not on_gpu:
            # bitsandbytes repacks 4-bit CPU weights for inference the first time they run in eval mode,
            # after which they cannot train: score the base on a separate (identical) copy.
            eval_model = load_model(recipe, tokenizer, arch, precision=precision, config=run.config)
        before = evaluate_model(eval_model, tokenizer, arch, splits.eval, recipe, label="before", precision=precision)
        for line in note_lines(before["metrics"]):
            say(line)
        del eval_model
        if rank() == 0:
            write_json_atomic(os.path.join(out, rundir.EVAL_BEFORE), before["metrics"])
    elif resume_from and os.path.exists(os.path.join(out, rundir.EVAL_BEFORE)):
        before = {"metrics": read_json(os.path.join(out, rundir.EVAL_BEFORE)), "predictions": None}

    if recipe.lora.enabled:
        model = apply_lora(recipe, model, arch)
    trainable, total = count_parameters(model)
    say(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.3f}%)")

    import importlib

    from ..families import path_of
    from ..switches import model_arguments

    builder = importlib.import_module(f".{path_of(arch).trainer}", __package__)
    resume_step = _step(resume_from) if resume_from else None
    callbacks = [JsonlLogger(os.path.join(out, rundir.TRAIN_LOG), resume_step)] if rank() == 0 else []
    eval_steps = resolve_eval_steps(recipe, n_train or 0)
    stopper = None
    if eval_steps and recipe.train.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        stopper = EarlyStoppingCallback(recipe.train.early_stopping_patience, recipe.train.early_stopping_threshold)
        callbacks.append(stopper)
    if eval_steps:
        say(f"evaluating every {eval_steps} steps on {len(splits.eval)} eval examples "
            f"(best by {recipe.train.metric_for_best_model})")
    eval_features = None
    if eval_steps:
        eval_features = run.prompt_format(tokenizer).encode_train(splits.eval, overlong="trim",
                                                                   final_only=True).features
    trainer = builder.build_trainer(recipe, model, tokenizer, enc.dataset,
                                    training_arguments(recipe, on_gpu=on_gpu, eval_steps=eval_steps,
                                                       precision=precision) | model_arguments(recipe, model),
                                    callbacks,
                                    eval_features=eval_features)
    if eval_steps:
        trainer.sft_evaluator = TrainingEvaluator(recipe, tokenizer, arch, splits.eval)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=resume_from)
    except (TypeError, ValueError) as e:
        if not recipe.train.trainer_args:
            raise
        # a pass-through value the Trainer only uses once training starts: point at the recipe, not at sft
        raise TrainError(f"training failed with train.trainer_args {sorted(recipe.train.trainer_args)} "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:160]})", file=recipe.path,
                         field="train.trainer_args", fix="check those values against the TRL/transformers docs") from e
    elapsed = time.time() - start
    # Tokens actually fed (non-padding, all ranks), counted by the Trainer; minus those before a resume.
    tokens_before = 0
    if resume_from and os.path.exists(os.path.join(resume_from, "trainer_state.json")):
        tokens_before = read_json(os.path.join(resume_from, "trainer_state.json")).get("num_input_tokens_seen", 0)
    tokens_seen = trainer.state.num_input_tokens_seen - tokens_before
    summary = {
        "train_loss": result.training_loss, "global_step": trainer.state.global_step,
        "train_runtime_s": round(elapsed, 3), "train_examples": n_train,
        "tokens_per_second": round(tokens_seen / max(elapsed, 1e-9), 1),
        "trainable_params": trainable, "total_params": total, "peak_memory_mb": round(peak_memory_mb(), 1),
        "world_size": world_size(), "distributed": _distributed_kind(trainer),
        "accelerate_distributed_type": str(getattr(trainer.accelerator.distributed_type, "value", "NO")),
        "mixed_precision": precision.mode, "arch": arch, "data": prep.summary(),
        **training_outcome(recipe, trainer, stopper, eval_steps),
    }
    trainer.save_model(out)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(out)  # with its chat_template when the run used one
        if getattr(model, "generation_config", None) is not None:  # adapters too: the stop tokens servers read
            model.generation_config.save_pretrained(out)
        trainer.save_state()
        write_json_atomic(os.path.join(out, rundir.TRAIN_SUMMARY), summary)
    model = trainer.model
    if hasattr(model, "module"):
        model = model.module
    if recipe.eval.after and splits.eval:
        say("evaluating the trained model" + (f" (all {world_size()} ranks)" if world_size() > 1 else ""))
        after = evaluate_model(model, tokenizer, arch, splits.eval, recipe, label="after", precision=precision)
        if rank() == 0:
            summary["eval"] = write_eval_outputs(out, recipe, after, before=before, train_summary=summary)
            from ..evaluation.report import before_after_table

            print(before_after_table(before["metrics"] if before else None, after["metrics"]), flush=True)
    if rank() != 0:
        return summary
    if recipe.hub.push_to_hub:
        from ..publish import push

        files, where = push(out, repo_id=recipe.hub.repo_id, private=recipe.hub.private, revision=recipe.hub.revision)
        say(f"pushed {len(files)} files to {where}")
    say(f"done: outputs in {out}")
    return summary
