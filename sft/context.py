"""The run context: what a run decides once about its machine and model (device, precision, rank, family),
and the prompt format built from the recipe, the tokenizer and the family.

`RunContext.build(recipe)` validates the machine-dependent switches and the pass-through against this
machine; `ctx.prompt_format(tokenizer)` gives the one object that encodes training examples and prompts
and knows the stop tokens, so training, evaluation, generate and chat cannot disagree about them."""

from __future__ import annotations

from dataclasses import dataclass

from .distributed import env_rank, env_world_size
from .errors import TrainError
from .families import Family, family_of
from .precision import Precision, device_facts, for_recipe


@dataclass(frozen=True)
class RunContext:
    recipe: object
    config: object            # the model config (offline table, local folder or Hub), overrides applied
    arch: str                 # causal | seq2seq
    family: Family | None     # None: a model type sft/families.py does not list (config fallbacks apply)
    on_gpu: bool
    precision: Precision
    rank: int
    world_size: int
    context_length: int | None

    @classmethod
    def build(cls, recipe) -> "RunContext":
        from .modeling import context_length, load_config, resolve_arch
        from .passthrough import check as check_passthrough
        from .switches import check as check_switches

        config = load_config(recipe.model)
        arch = resolve_arch(recipe.model)
        cuda, _ = device_facts()
        on_gpu = cuda and not recipe.train.use_cpu
        if arch == "seq2seq" and recipe.train.packing:
            raise TrainError("packing is for causal models; seq2seq examples cannot be packed", file=recipe.path,
                             field="train.packing", fix="set train.packing: false for T5-family models")
        check_passthrough(recipe, arch)  # against the installed trainer class of this path
        precision = for_recipe(recipe, config.model_type)
        check_switches(recipe, arch=arch, model_type=config.model_type, on_gpu=on_gpu, precision=precision)
        return cls(recipe=recipe, config=config, arch=arch, family=family_of(config.model_type), on_gpu=on_gpu,
                   precision=precision, rank=env_rank(), world_size=env_world_size(),
                   context_length=context_length(config))

    def prompt_format(self, tokenizer) -> "PromptFormat":
        return PromptFormat(self.recipe, tokenizer, self.arch)


class PromptFormat:
    """Training examples, inference prompts and stop tokens of one run, from one template object."""

    def __init__(self, recipe, tokenizer, arch: str):
        from .data.templates import get_template

        self.recipe, self.tokenizer, self.arch = recipe, tokenizer, arch
        self.template = get_template(recipe.data.template, tokenizer)

    def encode_train(self, records: list[dict], **kw):
        from .data.pipeline import encode

        d = self.recipe.data
        return encode(records, self.tokenizer, d.template, arch=self.arch, max_length=kw.pop("max_length", d.max_length),
                      system=d.system_prompt, **kw)

    def encode_prompt(self, records: list[dict]) -> list[list[int]]:
        from .data.pipeline import encode_prompts

        return encode_prompts(records, self.tokenizer, self.recipe.data.template, arch=self.arch,
                              system=self.recipe.data.system_prompt)

    @property
    def stops(self) -> tuple[str, ...]:
        return tuple(self.template.stop)

    @property
    def stop_ids(self) -> list[int]:
        from .data.templates import stop_token_ids

        return stop_token_ids(self.tokenizer, self.stops)
