"""Validated pass-through: `train.trainer_args` to the installed SFTConfig / Seq2SeqTrainingArguments and
`model.init_kwargs` to `from_pretrained`, for the knobs sft's schema does not name (NEFTune, scheduler
kwargs, offloading, ...). Unknown keys get a did-you-mean; keys the schema already owns are refused with a
pointer to their field, so one setting never has two places."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re

from .errors import RecipeError
from .families import PATHS
from .switches import owned_arguments

# TrainingArguments / SFTConfig fields that a recipe field decides.
TRAINER_OWNED = {
    "output_dir": "train.output_dir", "num_train_epochs": "train.epochs", "max_steps": "train.max_steps",
    "per_device_train_batch_size": "train.batch_size", "gradient_accumulation_steps": "train.grad_accum",
    "learning_rate": "train.learning_rate", "lr_scheduler_type": "train.lr_scheduler",
    "warmup_steps": "train.warmup_steps", "warmup_ratio": "train.warmup_steps (a value below 1 is a ratio of the "
    "total steps; transformers 5 has no warmup_ratio)", "weight_decay": "train.weight_decay",
    "max_grad_norm": "train.max_grad_norm", "optim": "train.optim", "logging_steps": "train.logging_steps",
    "save_steps": "train.save_steps", "save_strategy": "train.save_steps", "save_total_limit": "train.save_total_limit",
    "seed": "train.seed", "data_seed": "train.seed", "full_determinism": "train.full_determinism",
    "report_to": "train.report_to", "use_cpu": "train.use_cpu", "bf16": "train.mixed_precision",
    "fp16": "train.mixed_precision", "ddp_timeout": "train.ddp_timeout",
    "eval_strategy": "train.eval_steps", "eval_steps": "train.eval_steps",
    "metric_for_best_model": "train.metric_for_best_model", "greater_is_better": "train.metric_for_best_model",
    "load_best_model_at_end": "train.load_best_model_at_end", "max_length": "data.max_length",
    "per_device_eval_batch_size": "eval.batch_size", "push_to_hub": "hub.push_to_hub", "hub_model_id": "hub.repo_id",
    **owned_arguments(),  # the speed switches' own (switches.SWITCHES)
}
# Set by sft for its pipeline to work (pre-tokenised features, its own logger and evaluator).
TRAINER_FIXED = {"remove_unused_columns", "logging_first_step", "logging_nan_inf_filter", "disable_tqdm",
                 "ddp_find_unused_parameters", "dataloader_num_workers", "include_num_input_tokens_seen",
                 "dataset_num_proc", "dataset_text_field", "dataset_kwargs", "completion_only_loss",
                 "assistant_only_loss", "predict_with_generate"}

INIT_OWNED = {
    "pretrained_model_name_or_path": "model.name", "config": "model.config_overrides", "revision": "model.revision",
    "trust_remote_code": "model.trust_remote_code", "use_safetensors": "model.allow_pickle",
    "attn_implementation": "model.attn_implementation", "dtype": "train.mixed_precision",
    "torch_dtype": "train.mixed_precision", "quantization_config": "quantization",
    "device_map": "the placement sft chooses (one GPU per rank)", "model_args": "model.config_overrides",
}


def _trainer_classes(arch: str | None) -> list:
    """The installed arguments class of the trainer path (both when the path is not known yet)."""
    import importlib

    paths = [PATHS[arch]] if arch in PATHS else list(PATHS.values())
    return [getattr(importlib.import_module(module), name)
            for module, _, name in (p.arguments.rpartition(".") for p in paths)]


def _trainer_fields(arch: str | None) -> set[str]:
    return {f.name for c in _trainer_classes(arch) for f in dataclasses.fields(c) if f.init}


def _from_pretrained_kwargs() -> set[str]:
    from transformers import PreTrainedModel

    fn = PreTrainedModel.from_pretrained
    names = {p for p in inspect.signature(fn).parameters if p not in ("kwargs", "cls")}
    names |= set(re.findall(r'kwargs\.pop\("(\w+)"', inspect.getsource(fn)))
    return {n for n in names if not n.startswith("_")}


def _refuse(key: str, valid: set[str], owned: dict, fixed: set[str], field: str, what: str, file: str):
    if key in owned:
        raise RecipeError(f"{key} is set by {owned[key]}", file=file, field=f"{field}.{key}",
                          fix=f"set {owned[key].split(' ')[0]} instead")
    if key in fixed:
        raise RecipeError(f"{key} is fixed by sft (its pipeline depends on it)", file=file, field=f"{field}.{key}",
                          fix="remove it")
    if key not in valid:
        close = difflib.get_close_matches(key, sorted(valid), n=1)
        raise RecipeError(f"{key!r} is not a field of {what}", file=file, field=f"{field}.{key}",
                          fix=f"did you mean {close[0]!r}?" if close else f"see the {what} documentation")


def _type_ok(value, tp) -> bool:
    """Does `value` (from YAML) fit the dataclass annotation `tp`? Unknown annotations pass."""
    import types
    import typing

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    base = origin or tp
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base in (bool, str, dict, list):
        return isinstance(value, base)
    return True


def _field_types(arch: str | None) -> dict:
    import typing

    out: dict = {}
    for c in _trainer_classes(arch):
        for k, v in typing.get_type_hints(c).items():
            out.setdefault(k, []).append(v)
    return out


def _check_scheduler_kwargs(recipe, value) -> None:
    """lr_scheduler_kwargs must be arguments of the chosen scheduler's function (else the Trainer fails late)."""
    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION
    from transformers.trainer_utils import SchedulerType

    try:
        fn = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(recipe.train.lr_scheduler)]
    except (ValueError, KeyError):
        return
    params = set(inspect.signature(fn).parameters) - {"optimizer", "num_warmup_steps", "num_training_steps"}
    for key in value:
        if key not in params:
            raise RecipeError(f"{recipe.train.lr_scheduler} takes no argument {key!r}", file=recipe.path,
                              field=f"train.trainer_args.lr_scheduler_kwargs.{key}",
                              fix=f"use {', '.join(sorted(params)) or 'none (this scheduler takes no extra arguments)'}")


def check(recipe, arch: str | None = None) -> None:
    """Validate both pass-through mappings (arch None: against either trainer path)."""
    file = recipe.path
    if recipe.train.trainer_args:
        valid = _trainer_fields(arch)
        what = PATHS[arch].arguments if arch in PATHS else " or ".join(p.arguments for p in PATHS.values())
        types_of = _field_types(arch)
        for key, value in recipe.train.trainer_args.items():
            _refuse(key, valid, TRAINER_OWNED, TRAINER_FIXED, "train.trainer_args", what, file)
            tps = types_of.get(key, [])
            if tps and not any(_type_ok(value, tp) for tp in tps):
                raise RecipeError(f"got {value!r}, expected {tps[0]}".replace("<class '", "").replace("'>", ""),
                                  file=file, field=f"train.trainer_args.{key}", fix="give a value of that type")
            if key == "lr_scheduler_kwargs" and isinstance(value, dict):
                _check_scheduler_kwargs(recipe, value)
    if recipe.model.init_kwargs:
        if recipe.model.init == "scratch":
            raise RecipeError("model.init_kwargs apply when loading pretrained weights", file=file,
                              field="model.init_kwargs", fix="remove them, or use model.config_overrides for scratch")
        valid = _from_pretrained_kwargs()
        for key in recipe.model.init_kwargs:
            _refuse(key, valid, INIT_OWNED, set(), "model.init_kwargs", "from_pretrained", file)


def build_args(cls, kwargs: dict, recipe):
    """cls(**kwargs), with a bad pass-through value reported against its recipe field."""
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        bad = [k for k in recipe.train.trainer_args if k in str(e)]
        field = f"train.trainer_args.{bad[0]}" if bad else "train.trainer_args"
        raise RecipeError(f"{cls.__name__} refused the arguments ({str(e).splitlines()[0][:200]})",
                          file=recipe.path, field=field, fix="check the value against the transformers/TRL docs"
                          ) from e
