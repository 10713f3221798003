"""Speed and memory switches: each is one declaration here (its recipe field, type, default and help, the check
against this machine, and the trainer arguments it sets); the recipe schema takes its fields from this table, the
pass-through refuses the trainer arguments a switch owns, and both trainer paths read their arguments from it.

A switch the hardware, the installed packages or the model family cannot honour is refused with a one-line error
rather than ignored or left to fail deep inside a kernel."""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

from .errors import RecipeError, TrainError
from .families import path_of

if TYPE_CHECKING:  # precision imports torch; the recipe (and `sft --help`) reads this table without it
    from .precision import Precision

ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
# flash kernels and the package each needs; they alone read a flattened padding-free batch as variable-length
# sequences (cu_seqlens), so the trainer packs per row for every other attention
FLASH_PACKAGE = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}
# accelerate turns FSDP on only for GPU-family distributed types (accelerate/state.py); on CPU its MULTI_CPU state
# would train plain DDP while the recipe says "sharded", so sft refuses. tests/fsdp_cpu.py lifts both, test-only.
FSDP_NEEDS_GPU = True


@dataclass(frozen=True)
class Here:
    """What a check may ask about this run: the training path, the model type, the device and the precision."""

    arch: str
    model_type: str | None
    on_gpu: bool
    precision: Precision


@dataclass(frozen=True)
class Switch:
    field: str  # "train.NAME" or "model.NAME": the recipe key
    type: Any
    default: Any
    help: str
    limits: dict = field(default_factory=dict)  # min / max, as the schema checks them
    owns: tuple[str, ...] = ()  # trainer / SFTConfig arguments it decides: refused in train.trainer_args
    check: Callable[[Any, Here], None] | None = None  # (recipe, here) -> raise RecipeError
    arguments: Callable[[Any], dict] | None = None  # TrainingArguments fields, both trainer paths
    sft_config: Callable[[Any], dict] | None = None  # SFTConfig fields (the causal path)
    model_arguments: Callable[[Any, Any], dict] | None = None  # (recipe, model) -> arguments needing the model

    @property
    def section(self) -> str:
        return self.field.split(".")[0]

    @property
    def name(self) -> str:
        return self.field.split(".")[1]


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def liger_model_types() -> set[str]:
    """Model types liger-kernel can patch (its own table), empty when it is not installed."""
    if not _installed("liger_kernel"):
        return set()
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return set(MODEL_TYPE_TO_APPLY_LIGER_FN)


def _causal_only(recipe, here: Here, name: str) -> None:
    if path_of(here.arch).encoder_decoder and getattr(recipe.train, name):
        raise RecipeError(f"train.{name} is for causal models", file=recipe.path, field=f"train.{name}",
                          fix=f"set train.{name}: false for encoder-decoder models")


def _attention(recipe, here: Here) -> None:
    name, file = recipe.model.attn_implementation, recipe.path
    if name is None:
        return
    if name not in ATTENTION:
        close = difflib.get_close_matches(name, ATTENTION, n=1)
        raise RecipeError(f"unknown attention implementation {name!r}", file=file, field="model.attn_implementation",
                          fix=f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(ATTENTION)}")
    if name in FLASH_PACKAGE:
        if not here.on_gpu:
            raise RecipeError(f"{name} needs a CUDA GPU", file=file, field="model.attn_implementation",
                              fix="use sdpa (or leave it unset) on CPU")
        if not _installed(FLASH_PACKAGE[name]):
            raise RecipeError(f"{name} needs the {FLASH_PACKAGE[name]} package, which is not installed", file=file,
                              field="model.attn_implementation",
                              fix="pip install flash-attn --no-build-isolation, or use sdpa")
        if here.precision.mode == "no":
            raise RecipeError(f"{name} runs in bf16/fp16 only, and this run is float32", file=file,
                              field="model.attn_implementation", fix="set train.mixed_precision: bf16, or use sdpa")


def _packing(recipe, here: Here) -> None:
    if path_of(here.arch).encoder_decoder and recipe.train.packing:
        raise TrainError("packing is for causal models; seq2seq examples cannot be packed", file=recipe.path,
                         field="train.packing", fix="set train.packing: false for T5-family models")


def _packing_strategy(recipe, here: Here) -> None:
    t = recipe.train
    if t.packing_strategy != "bfd" and not t.packing:
        raise RecipeError(f"train.packing_strategy={t.packing_strategy} has no effect without packing",
                          file=recipe.path, field="train.packing_strategy",
                          fix="set train.packing: true, or remove packing_strategy")


def _padding_free(recipe, here: Here) -> None:
    _causal_only(recipe, here, "padding_free")
    t = recipe.train
    if t.padding_free and t.packing and t.packing_strategy == "wrapped":
        raise RecipeError("padding_free with wrapped packing lets examples attend across their boundaries",
                          file=recipe.path, field="train.padding_free",
                          fix="use packing_strategy: bfd, or padding_free: false")


def _padding_free_config(recipe) -> dict:
    """Features are already cut to data.max_length, so padding-free without packing needs no max_length of TRL's
    (which it would refuse to enforce)."""
    t = recipe.train
    padding_free = t.padding_free or (t.packing and t.packing_strategy in ("bfd", "bfd_split"))
    return {"padding_free": t.padding_free,
            "max_length": None if padding_free and not t.packing else recipe.data.max_length}


def _liger(recipe, here: Here) -> None:
    if not recipe.train.use_liger_kernel:
        return
    file = recipe.path
    if not here.on_gpu:
        raise RecipeError("Liger kernels are Triton kernels and need a CUDA GPU", file=file,
                          field="train.use_liger_kernel", fix="set it false on CPU")
    if not _installed("liger_kernel"):
        raise RecipeError("train.use_liger_kernel needs liger-kernel, which is not installed", file=file,
                          field="train.use_liger_kernel", fix="pip install liger-kernel, or set it false")
    supported = liger_model_types()
    if here.model_type not in supported:
        raise RecipeError(f"liger-kernel has no kernels for model type {here.model_type!r}", file=file,
                          field="train.use_liger_kernel",
                          fix=f"set it false (Liger patches e.g. {', '.join(sorted(supported)[:8])}, ...)")
    _causal_only(recipe, here, "use_liger_kernel")


def _compile(recipe, here: Here) -> None:
    if recipe.train.torch_compile and not hasattr(__import__("torch"), "compile"):
        raise RecipeError("this torch has no torch.compile", file=recipe.path, field="train.torch_compile",
                          fix="install torch >= 2.0 or set it false")


def _fsdp(recipe, here: Here) -> None:
    if recipe.train.fsdp and not here.on_gpu and FSDP_NEEDS_GPU:
        raise RecipeError("train.fsdp needs CUDA GPUs: on CPU, accelerate runs the processes as plain DDP "
                          "(MULTI_CPU) and would silently not shard", file=recipe.path, field="train.fsdp",
                          fix="set train.fsdp: false on CPU (torchrun still trains data-parallel)")


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


def _checkpointing(recipe) -> dict:
    """transformers 5.2x renamed gradient_checkpointing to activation_checkpointing (the old name warns)."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing":
            recipe.train.gradient_checkpointing}


SWITCHES: list[Switch] = [
    Switch("model.attn_implementation", str | None, None,
           "Attention kernel: sdpa, eager, flash_attention_2, flash_attention_3, flex_attention (default: "
           "transformers' choice, sdpa where the model supports it). Checked against this machine.",
           check=_attention),  # the model loader passes it to from_pretrained / from_config
    Switch("train.packing", bool, False, "Pack several examples into each max_length sequence (causal models only).",
           owns=("packing",), check=_packing, sft_config=lambda r: {"packing": r.train.packing}),
    Switch("train.packing_strategy", Literal["bfd", "bfd_split", "wrapped"], "bfd",
           "With packing: bfd (best-fit decreasing, whole examples, padding-free), bfd_split (splits overlong ones) "
           "or wrapped (concatenate and cut; examples can attend across boundaries).",
           owns=("packing_strategy",), check=_packing_strategy,
           sft_config=lambda r: {"packing_strategy": r.train.packing_strategy}),
    Switch("train.padding_free", bool, False,
           "Per-example positions and no padding mask (causal models; always on with bfd packing): flash attention "
           "reads the batch flattened into one sequence; sdpa, eager and every CPU keep one row per packed "
           "sequence, masked block-diagonally.", owns=("padding_free",), check=_padding_free,
           sft_config=_padding_free_config),
    Switch("train.gradient_checkpointing", bool, False, "Trade compute for memory.",
           owns=("gradient_checkpointing", "activation_checkpointing"), arguments=_checkpointing),
    Switch("train.use_liger_kernel", bool, False,
           "Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy): needs a CUDA GPU, "
           "liger-kernel, and a model family Liger patches.", owns=("use_liger_kernel",), check=_liger,
           arguments=lambda r: {"use_liger_kernel": r.train.use_liger_kernel}),
    Switch("train.torch_compile", bool, False, "torch.compile the model (first steps are slower while it compiles).",
           owns=("torch_compile", "dataloader_drop_last"), check=_compile,
           # a compiled model recompiles for the epoch's ragged last batch (36 s on an H200 in the GPU kit)
           arguments=lambda r: {"torch_compile": r.train.torch_compile,
                                "dataloader_drop_last": r.train.torch_compile}),
    Switch("train.fsdp", bool, False,
           "Shard parameters, gradients and optimizer state over the ranks with FSDP2 (torch's fully_shard), one "
           "unit per transformer block; launch with torchrun or accelerate launch.",
           owns=("fsdp", "fsdp_config"), check=_fsdp, model_arguments=fsdp_arguments),
]


def of_section(section: str) -> list[Switch]:
    return [s for s in SWITCHES if s.section == section]


def owned_arguments() -> dict[str, str]:
    """Trainer argument -> the switch's recipe key, for the pass-through's refusals."""
    return {arg: s.field for s in SWITCHES for arg in s.owns}


def check(recipe, *, arch: str, model_type: str | None, on_gpu: bool, precision: Precision) -> None:
    """Raise RecipeError for a switch that cannot work here."""
    here = Here(arch, model_type, on_gpu, precision)
    for s in SWITCHES:
        if s.check:
            s.check(recipe, here)


def trainer_arguments(recipe, precision: Precision) -> dict:
    """TrainingArguments fields shared by both trainer paths: the precision's and every switch's."""
    out = {**precision.trainer_flags(), "ddp_timeout": recipe.train.ddp_timeout}
    for s in SWITCHES:
        if s.arguments:
            out.update(s.arguments(recipe))
    return out


def model_arguments(recipe, model) -> dict:
    """TrainingArguments fields a switch can only decide once the model is built (FSDP's block class)."""
    out: dict = {}
    for s in SWITCHES:
        if s.model_arguments:
            out.update(s.model_arguments(recipe, model))
    return out


def sft_config_arguments(recipe) -> dict:
    """SFTConfig fields of the causal path."""
    out: dict = {}
    for s in SWITCHES:
        if s.sft_config:
            out.update(s.sft_config(recipe))
    return out
