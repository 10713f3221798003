"""Encoder-decoder models (T5 family) through transformers' Seq2SeqTrainer: TRL's SFTTrainer is causal-only.
Features are source ids -> target ids; DataCollatorForSeq2Seq pads labels with -100."""

from __future__ import annotations

from datasets import Dataset
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

from ..recipe import Recipe
from .callbacks import NonFiniteLossGuard


class GuardedSeq2SeqTrainer(NonFiniteLossGuard, Seq2SeqTrainer):
    pass


def build_trainer(recipe: Recipe, model, tokenizer, train_features: list[dict], args_kwargs: dict, callbacks):
    args = Seq2SeqTrainingArguments(**args_kwargs)
    dataset = Dataset.from_list([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in train_features])
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100, padding=True)
    return GuardedSeq2SeqTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                                 processing_class=tokenizer, callbacks=callbacks)
