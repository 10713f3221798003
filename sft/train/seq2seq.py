"""Encoder-decoder models (T5 family) through transformers' Seq2SeqTrainer: TRL's SFTTrainer is causal-only.
Features are source ids -> target ids; DataCollatorForSeq2Seq pads labels with -100."""

from __future__ import annotations

from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

from ..data.arrow import trainer_view
from ..recipe import Recipe
from .callbacks import EvaluatingTrainer, NonFiniteLossGuard


class GuardedSeq2SeqTrainer(NonFiniteLossGuard, EvaluatingTrainer, Seq2SeqTrainer):
    pass


def build_trainer(recipe: Recipe, model, tokenizer, train_features, args_kwargs: dict, callbacks,
                  eval_features: list[dict] | None = None):
    from ..passthrough import build_args

    args = build_args(Seq2SeqTrainingArguments, args_kwargs, recipe)
    dataset = trainer_view(train_features)
    # sft's own evaluator scores during training; the Trainer only needs an eval set to schedule it
    eval_dataset = trainer_view(eval_features) if eval_features else None
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100, padding=True)
    return GuardedSeq2SeqTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                                 processing_class=tokenizer, callbacks=callbacks, eval_dataset=eval_dataset)
