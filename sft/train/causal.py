"""Causal LMs (GPT-2 family) through TRL's SFTTrainer on pre-tokenised prompt/completion features:
labels are -100 on prompt tokens, so loss is on answers only (assistant turns in multi-turn data)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from ..data.arrow import trainer_view
from ..recipe import Recipe
from ..switches import FLASH_PACKAGE
from .callbacks import EvaluatingTrainer, NonFiniteLossGuard

REAL_TOKENS = "sft_real_tokens"


@dataclass
class RowPackedCollator(DataCollatorForLanguageModeling):
    """Padding-free batches for attention without variable-length kernels (sdpa, eager, flex; every CPU).

    Each packed row keeps its own batch slot, with per-example position ids and no attention mask, so
    transformers masks it block-diagonally within the row (its packed-sequence detection). TRL's padding-free
    collator flattens the whole batch into one row, which these kernels attend over as one (batch x length)^2
    mask: a training step of the quickstart's tiny GPT-2 on CPU took 1.9x as long at 8 rows of 128 tokens and
    4.3x at 32 rows. Written here because TRL's collator has no per-row mode."""

    def __post_init__(self):
        self.padding_free, self.return_position_ids = False, True

    def torch_call(self, examples):
        out = super().torch_call(examples)
        del out["attention_mask"]
        # each row's length (a batch-sized tensor, so accelerate can split it), taken off before the model
        out[REAL_TOKENS] = torch.tensor([len(e["input_ids"]) for e in examples])
        # an example's first label would be predicted from the previous example's last token (as TRL masks it)
        out["labels"][out["position_ids"] == 0] = -100
        return out


def row_packed_collator(trainer) -> RowPackedCollator | None:
    """The per-row collator where TRL chose padding-free batches and the model's attention has no varlen kernel."""
    attention = getattr(trainer.model.config, "_attn_implementation", None) or "eager"
    if not getattr(trainer, "padding_free", False) or attention in FLASH_PACKAGE:
        return None
    flat = trainer.data_collator
    return RowPackedCollator(pad_token_id=flat.pad_token_id, pad_to_multiple_of=flat.pad_to_multiple_of)


class GuardedSFTTrainer(NonFiniteLossGuard, EvaluatingTrainer, SFTTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        real = inputs.pop(REAL_TOKENS, None)
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if real is not None and self.model.training and hasattr(self, "_total_train_tokens"):
            # TRL counts a padding-free batch as one row (position_ids.size(1)); count every row's tokens instead
            extra = real.to(inputs["input_ids"].device).sum() - inputs["input_ids"].size(1)
            self._total_train_tokens += int(self.accelerator.gather_for_metrics(extra).sum()) // self._tp_size
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return result


_LM_HEAD = {"all_positions": False}


def configure_lm_head(*, all_positions: bool = False) -> bool:
    """Which positions TRL's fused LM head scores: only the labelled ones, on CPU as on CUDA, or every position.

    TRL projects every position through the LM head on devices without Triton (so that Neuron's compiled tile
    shapes stay fixed); eager CPU has no such constraint, and prompt and padding positions are most of an SFT
    batch. Same loss (the masked positions contribute zero either way); 1.4x faster steps on the quickstart.
    Under torch.compile (`all_positions=True`) every position is scored on every device: the labelled count
    changes from batch to batch, and each new count would recompile the head (caught by
    tests/test_speed_precision.py), while all positions of wrapped-packed rows are one fixed shape.
    TRL exposes no switch for this, so it wraps the module-level device check; returns False (and changes
    nothing) if a TRL release moves it."""
    import trl.trainer.utils as trl_utils

    check = getattr(trl_utils, "_use_triton", None)
    if check is None:
        return False
    _LM_HEAD["all_positions"] = all_positions
    if not getattr(check, "_sft_cpu_compact", False):
        def use_compact(device) -> bool:
            if _LM_HEAD["all_positions"]:
                return False
            return device.type == "cpu" or check(device)

        use_compact._sft_cpu_compact = True
        use_compact._sft_original = check
        trl_utils._use_triton = use_compact
    return True


def build_trainer(recipe: Recipe, model, tokenizer, train_features, args_kwargs: dict, callbacks,
                  eval_features: list[dict] | None = None):
    from ..switches import sft_config_arguments

    configure_lm_head(all_positions=recipe.train.torch_compile)

    from ..passthrough import build_args

    # features arrive tokenised, labelled and cut to max_length: TRL's preparation would only re-map them (over a
    # whole memory-mapped corpus, at every start), so it runs only where it packs
    skip = {} if recipe.train.packing else {"dataset_kwargs": {"skip_prepare_dataset": True}}
    args = build_args(SFTConfig, {"dataset_num_proc": None, **skip, **sft_config_arguments(recipe), **args_kwargs},
                      recipe)
    dataset = trainer_view(train_features)
    # sft's own evaluator scores during training; the Trainer only needs an eval set to schedule it
    eval_dataset = trainer_view(eval_features) if eval_features else None
    trainer = GuardedSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                callbacks=callbacks, eval_dataset=eval_dataset)
    trainer.data_collator = row_packed_collator(trainer) or trainer.data_collator
    return trainer
