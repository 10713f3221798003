"""Speed switches, checked against this machine before anything loads, and turned into trainer arguments.

Each switch is one recipe field; a switch the hardware, the installed packages or the model family cannot honour
is refused with a one-line error rather than ignored or left to fail deep inside a kernel."""

from __future__ import annotations

import difflib
import importlib.util

from .errors import RecipeError
from .families import path_of
from .precision import Precision

ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
# flash kernels and the package each needs; they alone read a flattened padding-free batch as variable-length
# sequences (cu_seqlens), so the trainer packs per row for every other attention
FLASH_PACKAGE = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}
# accelerate turns FSDP on only for GPU-family distributed types (accelerate/state.py); on CPU its MULTI_CPU state
# would train plain DDP while the recipe says "sharded", so sft refuses. tests/fsdp_cpu.py lifts both, test-only.
FSDP_NEEDS_GPU = True


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def liger_model_types() -> set[str]:
    """Model types liger-kernel can patch (its own table), empty when it is not installed."""
    if not _installed("liger_kernel"):
        return set()
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return set(MODEL_TYPE_TO_APPLY_LIGER_FN)


def check(recipe, *, arch: str, model_type: str | None, on_gpu: bool, precision: Precision) -> None:
    """Raise RecipeError for a switch that cannot work here."""
    m, t, file = recipe.model, recipe.train, recipe.path
    if m.attn_implementation is not None:
        name = m.attn_implementation
        if name not in ATTENTION:
            close = difflib.get_close_matches(name, ATTENTION, n=1)
            raise RecipeError(f"unknown attention implementation {name!r}", file=file,
                              field="model.attn_implementation",
                              fix=f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(ATTENTION)}")
        if name in FLASH_PACKAGE:
            if not on_gpu:
                raise RecipeError(f"{name} needs a CUDA GPU", file=file, field="model.attn_implementation",
                                  fix="use sdpa (or leave it unset) on CPU")
            if not _installed(FLASH_PACKAGE[name]):
                raise RecipeError(f"{name} needs the {FLASH_PACKAGE[name]} package, which is not installed",
                                  file=file, field="model.attn_implementation",
                                  fix="pip install flash-attn --no-build-isolation, or use sdpa")
            if precision.mode == "no":
                raise RecipeError(f"{name} runs in bf16/fp16 only, and this run is float32", file=file,
                                  field="model.attn_implementation", fix="set train.mixed_precision: bf16, or use sdpa")
    if t.use_liger_kernel:
        if not on_gpu:
            raise RecipeError("Liger kernels are Triton kernels and need a CUDA GPU", file=file,
                              field="train.use_liger_kernel", fix="set it false on CPU")
        if not _installed("liger_kernel"):
            raise RecipeError("train.use_liger_kernel needs liger-kernel, which is not installed", file=file,
                              field="train.use_liger_kernel", fix="pip install liger-kernel, or set it false")
        supported = liger_model_types()
        if model_type not in supported:
            raise RecipeError(f"liger-kernel has no kernels for model type {model_type!r}", file=file,
                              field="train.use_liger_kernel",
                              fix=f"set it false (Liger patches e.g. {', '.join(sorted(supported)[:8])}, ...)")
    if path_of(arch).encoder_decoder:
        for name, on in (("padding_free", t.padding_free), ("use_liger_kernel", t.use_liger_kernel)):
            if on:
                raise RecipeError(f"train.{name} is for causal models", file=file, field=f"train.{name}",
                                  fix=f"set train.{name}: false for encoder-decoder models")
    if t.packing_strategy != "bfd" and not t.packing:
        raise RecipeError(f"train.packing_strategy={t.packing_strategy} has no effect without packing", file=file,
                          field="train.packing_strategy", fix="set train.packing: true, or remove packing_strategy")
    if t.padding_free and t.packing and t.packing_strategy == "wrapped":
        raise RecipeError("padding_free with wrapped packing lets examples attend across their boundaries",
                          file=file, field="train.padding_free", fix="use packing_strategy: bfd, or padding_free: false")
    if t.fsdp and not on_gpu and FSDP_NEEDS_GPU:
        raise RecipeError("train.fsdp needs CUDA GPUs: on CPU, accelerate runs the processes as plain DDP "
                          "(MULTI_CPU) and would silently not shard", file=file, field="train.fsdp",
                          fix="set train.fsdp: false on CPU (torchrun still trains data-parallel)")
    if t.torch_compile and not hasattr(__import__("torch"), "compile"):
        raise RecipeError("this torch has no torch.compile", file=file, field="train.torch_compile",
                          fix="install torch >= 2.0 or set it false")


def fsdp_arguments(recipe, model) -> dict:
    """train.fsdp -> FSDP2 over the model's own block class (transformers' `_no_split_modules`)."""
    if not recipe.train.fsdp:
        return {}
    blocks = list(getattr(model, "_no_split_modules", None) or [])
    if not blocks:
        raise RecipeError(f"{type(model).__name__} names no transformer block class to shard by", file=recipe.path,
                          field="train.fsdp", fix="set train.fsdp: false (use DDP) for this model")
    # transformers 5.x form: fsdp=True and everything in fsdp_config (the "full_shard auto_wrap" string is deprecated)
    return {"fsdp": True, "fsdp_config": {"version": 2, "transformer_layer_cls_to_wrap": blocks,
                                          "reshard_after_forward": True, "state_dict_type": "FULL_STATE_DICT"}}


def trainer_arguments(recipe, precision: Precision) -> dict:
    """TrainingArguments fields shared by both trainer paths."""
    t = recipe.train
    return {**precision.trainer_flags(), "torch_compile": t.torch_compile, "use_liger_kernel": t.use_liger_kernel,
            "ddp_timeout": t.ddp_timeout,
            # a compiled model recompiles for the epoch's ragged last batch (36 s on an H200 in the GPU kit)
            "dataloader_drop_last": t.torch_compile}


def sft_config_arguments(recipe) -> dict:
    """SFTConfig fields of the causal path. Features are already cut to data.max_length, so padding-free without
    packing needs no max_length of TRL's (which it would refuse to enforce)."""
    t = recipe.train
    padding_free = t.padding_free or (t.packing and t.packing_strategy in ("bfd", "bfd_split"))
    return {"packing": t.packing, "packing_strategy": t.packing_strategy, "padding_free": t.padding_free,
            "max_length": None if padding_free and not t.packing else recipe.data.max_length}
