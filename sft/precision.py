"""Precision, decided once per run from `train.mixed_precision`, the device and the model family.

One decision gives the dtype weights load in, the Trainer's autocast flags (bf16 / fp16 with a GradScaler)
and the matmul dtype of 4-bit layers, so they can never disagree:

| mode | trainable weights         | frozen base (LoRA)  | autocast | scaler | 4-bit compute |
|------|---------------------------|---------------------|----------|--------|---------------|
| no   | float32                   | float32             | -        | -      | float32       |
| bf16 | float32 (master weights)  | bfloat16            | bfloat16 | -      | bfloat16      |
| fp16 | float32 (master weights)  | float16             | float16  | yes    | float16       |

Full fine-tuning always keeps float32 master weights: fp16 weights under plain AdamW diverge or stop learning,
and bf16 weights lose small updates. A frozen LoRA base is only read, so it loads in the half dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import RecipeError

MODES = ("auto", "bf16", "fp16", "no")
# Families whose activations overflow float16 (T5's feed-forward outputs exceed 65504; transformers #10830).
FP16_UNSAFE = {"t5", "mt5", "umt5", "longt5", "switch_transformers"}
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}


@dataclass(frozen=True)
class Precision:
    mode: str                 # "bf16" | "fp16" | "no"
    load_dtype: torch.dtype   # dtype the model's weights are loaded in
    compute_dtype: torch.dtype  # autocast dtype, and the matmul dtype of 4-bit layers
    reason: str               # why (for the log)

    @property
    def bf16(self) -> bool:
        return self.mode == "bf16"

    @property
    def fp16(self) -> bool:
        return self.mode == "fp16"

    def trainer_flags(self) -> dict:
        return {"bf16": self.bf16, "fp16": self.fp16}


def device_facts() -> tuple[bool, bool]:
    """(CUDA usable, bf16 supported there)."""
    on_gpu = torch.cuda.is_available()
    return on_gpu, bool(on_gpu and torch.cuda.is_bf16_supported())


def decide(requested: str, *, on_gpu: bool, bf16_supported: bool, model_type: str | None, frozen_base: bool,
           file: str = "<recipe>") -> Precision:
    """The precision table above, for `requested` in MODES on this device. Refusals raise RecipeError."""
    field = "train.mixed_precision"
    fp16_unsafe = (model_type or "") in FP16_UNSAFE
    if requested == "auto":
        if on_gpu and bf16_supported:
            mode, reason = "bf16", "auto: this GPU supports bfloat16"
        elif on_gpu and not fp16_unsafe:
            mode, reason = "fp16", "auto: this GPU has no bfloat16, so float16 with a loss scaler"
        elif on_gpu:
            mode, reason = "no", f"auto: this GPU has no bfloat16 and {model_type} overflows in float16"
        else:
            mode, reason = "no", "auto: float32 on CPU"
    elif requested == "bf16":
        if on_gpu and not bf16_supported:
            raise RecipeError("this GPU does not support bfloat16 (it needs compute capability 8.0, e.g. A100, "
                              "L4, H100)", file=file, field=field,
                              fix="use fp16 (not for T5) or no" if not fp16_unsafe else "use no")
        mode, reason = "bf16", "requested" + ("" if on_gpu else " (CPU autocast)")
    elif requested == "fp16":
        if not on_gpu:
            raise RecipeError("fp16 mixed precision needs a CUDA GPU (its loss scaler is CUDA-only)", file=file,
                              field=field, fix="use bf16 or no on CPU")
        if fp16_unsafe:
            raise RecipeError(f"{model_type} overflows in float16 (activations exceed 65504 and turn into inf/NaN)",
                              file=file, field=field, fix="use bf16 on a GPU that supports it, or no")
        mode, reason = "fp16", "requested: float16 autocast with fp32 master weights and a loss scaler"
    elif requested == "no":
        mode, reason = "no", "requested: float32"
    else:
        raise RecipeError(f"got {requested!r}, expected one of {', '.join(MODES)}", file=file, field=field)
    half = _HALF[mode]
    return Precision(mode=mode, load_dtype=half if frozen_base else torch.float32, compute_dtype=half,
                     reason=reason)


def for_recipe(recipe, model_type: str | None = None) -> Precision:
    """The run's precision (device from the environment, unless train.use_cpu)."""
    on_gpu, bf16_ok = device_facts()
    on_gpu = on_gpu and not recipe.train.use_cpu
    return decide(recipe.train.mixed_precision, on_gpu=on_gpu, bf16_supported=bf16_ok and on_gpu,
                  model_type=model_type, frozen_base=recipe.lora.enabled, file=recipe.path)
