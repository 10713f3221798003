"""Causal LMs (GPT-2 family) through TRL's SFTTrainer on pre-tokenised prompt/completion features:
labels are -100 on prompt tokens, so loss is on answers only (assistant turns in multi-turn data)."""

from __future__ import annotations

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from ..recipe import Recipe
from .callbacks import NonFiniteLossGuard


class GuardedSFTTrainer(NonFiniteLossGuard, SFTTrainer):
    pass


def build_trainer(recipe: Recipe, model, tokenizer, train_features: list[dict], args_kwargs: dict, callbacks):
    args = SFTConfig(max_length=recipe.data.max_length, packing=recipe.train.packing,
                     dataset_num_proc=None, **args_kwargs)
    dataset = Dataset.from_list([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in train_features])
    return GuardedSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=callbacks)
