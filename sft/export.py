"""`sft export RUN --out DIR`: one standalone model folder that transformers, vLLM and `transformers serve` load
unchanged: merged safetensors weights (a LoRA adapter folded into its base) in the asked dtype, the tokenizer with
the run's chat template, and a generation config whose stop ids are the run's (EOS plus the end-of-turn token).

`sft merge` is this export at float32 for adapter runs. GGUF (llama.cpp, Ollama) is one step further, with
llama.cpp's own converter run on the export (README "Use, serve and export").
"""

from __future__ import annotations

import os

from .errors import PublishError
from .io import write_text_atomic
from . import rundir

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def export(run_dir: str, out: str, *, dtype: str = "fp32", adapters_only: bool = False) -> str:
    """Write the standalone model folder `out` (new or empty, outside `run_dir`) and return it."""
    import torch

    from .inference import load_use
    from .publish import is_adapter

    if dtype not in DTYPES:
        raise PublishError(f"unknown dtype {dtype!r}", field="--dtype", fix=f"use one of {', '.join(DTYPES)}")
    if adapters_only and not is_adapter(run_dir):
        raise PublishError("no LoRA adapter here (adapter_config.json missing)", file=run_dir,
                           fix="merge applies to runs with lora.enabled: true; a full fine-tune is already standalone")
    if os.path.isdir(run_dir):
        rundir.claim(out, kind="export", field="--out", error=PublishError, src=run_dir, fresh=True)
    use = load_use(run_dir, device="cpu")
    if not os.path.isdir(run_dir):  # a Hub id: resolved to its cached snapshot
        rundir.claim(out, kind="export", field="--out", error=PublishError, src=use.folder, fresh=True)
    model = use.model
    if is_adapter(use.folder):
        model = model.merge_and_unload()
    model = model.to(getattr(torch, DTYPES[dtype]))
    gen = model.generation_config
    gen.eos_token_id = use.format.generation_eos  # EOS plus a one-token end of turn, as training saves
    gen.pad_token_id = use.tokenizer.pad_token_id
    model.config.dtype = getattr(torch, DTYPES[dtype])
    model.save_pretrained(out)  # safetensors
    use.tokenizer.save_pretrained(out)  # with the run's chat template
    recipe_path = os.path.join(use.folder, rundir.RECIPE)
    if os.path.exists(recipe_path):  # `sft generate OUT` then prompts exactly as the run did
        recipe = use.recipe
        recipe.lora.enabled = False
        recipe.quantization.load_in_4bit = recipe.quantization.load_in_8bit = False
        write_text_atomic(os.path.join(out, rundir.RECIPE), recipe.to_yaml())
    return out
