"""The run context: what a run decides once about its machine and model (device, precision, rank, family),
and the prompt format built from the recipe, the tokenizer and the family.

`RunContext.build(recipe)` validates the machine-dependent switches and the pass-through against this
machine; `ctx.prompt_format(tokenizer)` gives the one object that encodes training examples and prompts
and knows the stop tokens, so training, evaluation, generate and chat cannot disagree about them."""

from __future__ import annotations

from dataclasses import dataclass

from .distributed import env_rank, env_world_size
from .errors import RecipeError, TrainError
from .families import Family, family_of, path_of
from .precision import Precision, device_facts, for_recipe


@dataclass(frozen=True)
class RunContext:
    recipe: object
    config: object            # the model config (offline table, local folder or Hub), overrides applied
    arch: str                 # causal | seq2seq
    family: Family | None     # None: a model type sft/families.py does not list (config fallbacks apply)
    on_gpu: bool
    precision: Precision | None  # None: a trained model used where its training precision cannot run
    rank: int
    world_size: int
    context_length: int | None

    @classmethod
    def build(cls, recipe, *, config=None, check: bool = True) -> "RunContext":
        """Decide once, for a recipe: its model config (loaded here, or the given one: a trained model's), the
        training path, the device and the precision. `check`: also refuse switches and pass-through arguments
        this machine or trainer cannot honour (training; evaluation and inference only read the decisions)."""
        from .modeling import context_length, load_config, resolve_arch
        from .passthrough import check as check_passthrough
        from .switches import check as check_switches

        config = config if config is not None else load_config(recipe.model)
        arch = resolve_arch(recipe.model, config)
        cuda, _ = device_facts()
        on_gpu = cuda and not recipe.train.use_cpu
        model_type = getattr(config, "model_type", None)
        try:
            precision = for_recipe(recipe, model_type)
        except RecipeError:
            if check:
                raise
            precision = None  # using a trained model where its training precision cannot run: compute as loaded
        if check:
            check_passthrough(recipe, arch)  # against the installed trainer class of this path
            check_switches(recipe, arch=arch, model_type=model_type, on_gpu=on_gpu, precision=precision)
        return cls(recipe=recipe, config=config, arch=arch, family=family_of(model_type), on_gpu=on_gpu,
                   precision=precision, rank=env_rank(), world_size=env_world_size(),
                   context_length=context_length(config))

    def preflight(self) -> None:
        """Everything about the model that can be checked before data is read or weights load: lengths against
        the context, LoRA targets and modules_to_save against a weightless skeleton (meta device), and the Hub
        credentials and repo id when the run pushes at the end."""
        r, ctx = self.recipe, self.context_length
        if ctx is not None and r.data.max_length > ctx:
            raise TrainError(f"data.max_length={r.data.max_length} is longer than the model's context ({ctx} "
                             "tokens)", file=r.path, field="data.max_length", fix=f"set data.max_length <= {ctx}")
        new = r.eval.generation.max_new_tokens
        generates = bool(r.eval.during_training.metrics) or (
            (r.eval.before or r.eval.after) and any(m != "perplexity" for m in r.eval.metrics))
        if ctx is not None and generates and path_of(self.arch).prompt_budget(ctx, new) < 1:
            raise TrainError(f"max_new_tokens={new} leaves no room for a prompt in the model's {ctx}-token context",
                             file=r.path, field="eval.generation.max_new_tokens", fix=f"use fewer than {ctx}")
        if r.lora.enabled:
            skeleton = self.skeleton()
            if skeleton is not None:
                from .modeling import lora_targets

                lora_targets(r, skeleton)
                names = [n for n, _ in skeleton.named_modules() if n]
                for i, want in enumerate(r.lora.modules_to_save):
                    if not any(n == want or n.endswith("." + want) for n in names):
                        import difflib

                        leaves = sorted({n.split(".")[-1] for n in names})
                        close = difflib.get_close_matches(want, leaves, n=1)
                        raise TrainError(f"lora.modules_to_save names {want!r}, which is no module of "
                                         f"{self.config.model_type}", file=r.path, field=f"lora.modules_to_save.{i}",
                                         fix=f"did you mean {close[0]!r}?" if close else f"choose from {leaves[:12]}")
        if r.hub.push_to_hub:
            check_hub(r)

    def skeleton(self):
        """The model's module tree on the meta device (no weights, no memory); None where it cannot be built."""
        import warnings

        import torch

        from .modeling import _auto_class

        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return _auto_class(self.arch).from_config(self.config,
                                                           trust_remote_code=self.recipe.model.trust_remote_code)
        except Exception:  # an exotic class: loading the model reports it
            return None

    def prompt_format(self, tokenizer, raw: bool = False):
        """Training examples, prompts and stop tokens for this run (`raw`: plain text, no template)."""
        from .data.encode import PromptFormat

        return PromptFormat(self.recipe, tokenizer, self.arch, raw=raw)


def check_hub(recipe) -> None:
    """hub.push_to_hub: a valid repo id, a token, and a network mode that can upload; checked before training."""
    import os

    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    h = recipe.hub
    try:
        validate_repo_id(h.repo_id)
    except HFValidationError as e:
        raise TrainError(f"hub.repo_id {h.repo_id!r} is not a valid repo id ({str(e).splitlines()[0][:120]})",
                         file=recipe.path, field="hub.repo_id", fix="use OWNER/NAME with letters, digits, '-', '_', '.'"
                         ) from None
    if "/" not in h.repo_id:
        raise TrainError(f"hub.repo_id {h.repo_id!r} names no owner", file=recipe.path, field="hub.repo_id",
                         fix="use OWNER/NAME")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise TrainError("hub.push_to_hub is on but HF_HUB_OFFLINE=1 is set: the upload would fail after training",
                         file=recipe.path, field="hub.push_to_hub",
                         fix="unset HF_HUB_OFFLINE, or set hub.push_to_hub: false and run sft push later")
    if not (os.environ.get("HF_TOKEN") or get_token()):
        raise TrainError("hub.push_to_hub is on but no Hub token is found", file=recipe.path, field="hub.push_to_hub",
                         fix="export HF_TOKEN=... or run `hf auth login` first (or set hub.push_to_hub: false)")
