"""Model families: what sft needs to know about an architecture, one entry per family.

A family maps transformers' `model_type`s to their trainer path (causal or seq2seq), default LoRA targets,
whether their linear layers are GPT-2's transposed Conv1D, and the config field holding the context length.
Model types not listed still work (causal/seq2seq is read from the config's `is_encoder_decoder`, and LoRA
targets must then be given or `all-linear` used). `SCRATCH` holds public configs of common checkpoints, so
`init: scratch` and parameter counting work offline. Adding a family or a checkpoint is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

ATTENTION_AND_MLP = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    trainer: str                      # "causal" | "seq2seq"
    lora_targets: tuple[str, ...]     # default lora.target_modules
    conv1d: bool = False              # linear layers are transformers' Conv1D (weights stored transposed)
    context_attr: str | None = "max_position_embeddings"  # None: relative positions (no hard limit)


FAMILIES: tuple[Family, ...] = (
    Family("gpt2", ("gpt2",), "causal", ("c_attn",), conv1d=True, context_attr="n_positions"),
    Family("llama", ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "smollm3", "olmo2", "granite"),
           "causal", ATTENTION_AND_MLP),
    Family("phi3", ("phi3",), "causal", ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")),
    Family("gpt_neox", ("gpt_neox",), "causal", ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")),
    Family("t5", ("t5", "mt5", "umt5"), "seq2seq", ("q", "v"), context_attr=None),
    Family("bart", ("bart", "mbart"), "seq2seq", ("q_proj", "v_proj")),
)

_BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}


@dataclass(frozen=True)
class TrainingPath:
    """Everything that differs between the two training paths, in one place: a causal LM trains on the whole
    sequence (TRL's SFTTrainer) and generates after a left-padded prompt; an encoder-decoder trains source ->
    target (transformers' Seq2SeqTrainer) and generates the target alone. Code asks the path, never `arch ==`."""

    name: str                 # "causal" | "seq2seq" (the recipe's model.arch and the family's trainer)
    encoder_decoder: bool     # features are source ids -> target ids; generation returns only new tokens
    auto_class: str           # the transformers Auto class
    peft_task: str            # peft.TaskType member
    trainer: str              # sft.train module that builds its trainer
    trainer_name: str         # what trains it, for the model card
    pipeline_tag: str         # Hub pipeline tag
    card_tag: str             # Hub tag beside "sft"
    eos_token: str            # the EOS of a tokenizer sft builds for this path
    arguments: str            # its trainer's arguments class, as "module.Class"

    @property
    def left_pad(self) -> bool:
        """Batched generation pads prompts on the left (a decoder continues the prompt's last token)."""
        return not self.encoder_decoder

    def prompt_budget(self, context: int, max_new_tokens: int) -> int:
        """Prompt tokens that fit: a decoder shares its context with the answer; an encoder has its own."""
        return context if self.encoder_decoder else context - max_new_tokens

    def new_tokens(self, sequences, prompt_width: int):
        """The generated part of `generate`'s output (a decoder returns the prompt first)."""
        return sequences if self.encoder_decoder else sequences[..., prompt_width:]

    def scored_width(self, feature: dict) -> int:
        """The length a perplexity forward pays for: the target's (seq2seq) or the whole sequence's."""
        return len(feature["labels" if self.encoder_decoder else "input_ids"])

    def logits_and_targets(self, model, ids, mask, labels):
        """Next-token logits aligned with the tokens they score: a decoder predicts position i + 1 from i; a
        seq2seq model's decoder is fed the shifted labels and scores every label."""
        if self.encoder_decoder:
            return model(input_ids=ids, attention_mask=mask, labels=labels).logits, labels
        return model(input_ids=ids, attention_mask=mask).logits[:, :-1], labels[:, 1:]

    def answer_start(self, prompt_length: int) -> int:
        """Tokens of an inference prompt that precede the answer in a perplexity feature (the encoder's EOS is not
        part of a seq2seq prompt's feature)."""
        return prompt_length - 1 if self.encoder_decoder else prompt_length


PATHS = {
    "causal": TrainingPath("causal", False, "AutoModelForCausalLM", "CAUSAL_LM", "causal", "TRL SFTTrainer",
                           "text-generation", "trl", "<|endoftext|>", "trl.SFTConfig"),
    "seq2seq": TrainingPath("seq2seq", True, "AutoModelForSeq2SeqLM", "SEQ_2_SEQ_LM", "seq2seq",
                            "transformers Seq2SeqTrainer", "text2text-generation", "seq2seq", "</s>",
                            "transformers.Seq2SeqTrainingArguments"),
}


def path_of(arch: str) -> TrainingPath:
    """The training path named by a resolved arch ("causal" or "seq2seq")."""
    return PATHS[arch]


def path_of_adapter(task_type: str | None) -> TrainingPath:
    """The path a saved adapter was trained on, from its adapter_config.json task_type (causal when unknown)."""
    return next((p for p in PATHS.values() if p.peft_task == task_type), PATHS["causal"])


def family_of(model_type: str | None) -> Family | None:
    return _BY_TYPE.get(model_type or "")


def trainer_path(config) -> str:
    """causal or seq2seq: the family's, else the config's is_encoder_decoder."""
    fam = family_of(getattr(config, "model_type", None))
    if fam is not None:
        return fam.trainer
    return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"


_GPT2_MEDIUM = {"n_embd": 1024, "n_layer": 24, "n_head": 16}
_GPT2_LARGE = {"n_embd": 1280, "n_layer": 36, "n_head": 20}
_T5_BASE = {"d_model": 768, "d_ff": 3072, "num_layers": 12, "num_decoder_layers": 12, "num_heads": 12}
_FLAN_SMALL = {"d_model": 512, "d_ff": 1024, "num_layers": 8, "num_decoder_layers": 8, "num_heads": 6,
               "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}
_FLAN_BASE = {"d_model": 768, "d_ff": 2048, "num_layers": 12, "num_decoder_layers": 12, "num_heads": 12,
              "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}
_SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                 "num_key_value_heads": 3, "max_position_embeddings": 8192, "rope_theta": 100000.0,
                 "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "vocab_size": 49152}
_QWEN25_05B = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
               "num_key_value_heads": 2, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
               "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "vocab_size": 151936}

# Public configs (architecture only) of common checkpoints: name -> (model_type, fields).
SCRATCH: dict[str, tuple[str, dict]] = {
    **{n: ("gpt2", {}) for n in ("gpt2", "openai-community/gpt2")},
    **{n: ("gpt2", _GPT2_MEDIUM) for n in ("gpt2-medium", "openai-community/gpt2-medium")},
    **{n: ("gpt2", _GPT2_LARGE) for n in ("gpt2-large", "openai-community/gpt2-large")},
    **{n: ("t5", {}) for n in ("t5", "t5-small", "google-t5/t5-small")},
    "t5-base": ("t5", _T5_BASE),
    "google/flan-t5-small": ("t5", _FLAN_SMALL),
    "google/flan-t5-base": ("t5", _FLAN_BASE),
    **{n: ("llama", _SMOLLM2_135M) for n in ("HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M-Instruct")},
    **{n: ("qwen2", _QWEN25_05B) for n in ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct")},
}
