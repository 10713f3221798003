"""Causal LMs (GPT-2 family) through TRL's SFTTrainer on pre-tokenised prompt/completion features:
labels are -100 on prompt tokens, so loss is on answers only (assistant turns in multi-turn data)."""

from __future__ import annotations

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from ..recipe import Recipe
from .callbacks import EvaluatingTrainer, NonFiniteLossGuard


class GuardedSFTTrainer(NonFiniteLossGuard, EvaluatingTrainer, SFTTrainer):
    pass


def compact_cpu_lm_head() -> bool:
    """Make TRL's fused LM head score only the labelled positions on CPU, as it does on CUDA.

    TRL projects every position through the LM head on devices without Triton (so that Neuron's compiled tile
    shapes stay fixed); eager CPU has no such constraint, and prompt and padding positions are most of an SFT
    batch. Same loss (the masked positions contribute zero either way); 1.4x faster steps on the quickstart.
    TRL exposes no switch for this, so it wraps the module-level device check; returns False (and changes
    nothing) if a TRL release moves it."""
    import trl.trainer.utils as trl_utils

    check = getattr(trl_utils, "_use_triton", None)
    if check is None:
        return False
    if not getattr(check, "_sft_cpu_compact", False):
        def use_compact(device) -> bool:
            return device.type == "cpu" or check(device)

        use_compact._sft_cpu_compact = True
        use_compact._sft_original = check
        trl_utils._use_triton = use_compact
    return True


def build_trainer(recipe: Recipe, model, tokenizer, train_features, args_kwargs: dict, callbacks,
                  eval_features: list[dict] | None = None):
    from ..switches import sft_config_arguments

    compact_cpu_lm_head()

    from ..passthrough import build_args

    # features arrive tokenised, labelled and cut to max_length: TRL's preparation would only re-map them (over a
    # whole memory-mapped corpus, at every start), so it runs only where it packs
    skip = {} if recipe.train.packing else {"dataset_kwargs": {"skip_prepare_dataset": True}}
    args = build_args(SFTConfig, {"dataset_num_proc": None, **skip, **sft_config_arguments(recipe), **args_kwargs},
                      recipe)
    dataset = _dataset(train_features)
    # sft's own evaluator scores during training; the Trainer only needs an eval set to schedule it
    eval_dataset = _dataset(eval_features) if eval_features else None
    return GuardedSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=callbacks, eval_dataset=eval_dataset)


def _dataset(features):
    """The trainer's view: a list of feature dicts (evaluation sets), or the prepared Arrow / streaming dataset
    read directly."""
    if isinstance(features, list):
        return Dataset.from_list([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
    return features.select_columns(["input_ids", "labels"])
