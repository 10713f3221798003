"""The recipe: one typed, documented schema, YAML loading, `key=value` overrides and validation.

Every default lives in the dataclasses below and nowhere else. Each field's `help` metadata is its
documentation (`sft recipe show --help-fields` prints it). Range checks live beside the field. Pydantic v2
validates a recipe against these dataclasses (types, nesting, unknown and required keys, ranges: sft/schema.py);
the checks across fields follow. `key=value` overrides are set into the YAML tree first (`_set_dotted`: Pydantic
has no dotted-path setter for plain data; pydantic-settings' CLI parsing would take over the command line).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from .errors import RecipeError
from .schema import fields_of, validate
from .switches import of_section


def _f(default: Any = dataclasses.MISSING, *, help: str, factory: Any = None, **checks: Any) -> Any:
    meta = {"help": help, **checks}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _with_switches(section: str):
    """Add the section's speed switches (each declared once, in switches.SWITCHES, with its check and trainer
    arguments) as fields of this dataclass."""
    def add(cls: type) -> type:
        for s in of_section(section):
            cls.__annotations__[s.name] = s.type
            setattr(cls, s.name, _f(s.default, help=s.help, **s.limits))
        return cls
    return add


@dataclass
@_with_switches("model")
class ModelConfig:
    name: str = _f("gpt2", help="Hub id or local directory of the base model (or of the architecture, with init: scratch).")
    arch: Literal["auto", "causal", "seq2seq"] = _f(
        "auto", help="auto: read `is_encoder_decoder` from the model config (GPT-2 -> causal, T5 -> seq2seq).")
    init: Literal["pretrained", "scratch"] = _f(
        "pretrained", help="pretrained: load weights; scratch: random weights from the config (offline path).")
    config_overrides: dict = _f(
        help="Config fields to override, e.g. {n_layer: 2, n_embd: 128} for a tiny GPT-2.", factory=dict)
    tokenizer: str | None = _f(
        None, help="Tokenizer: a Hub id or directory (default: model.name), or 'bpe' / 'byte' to build one offline "
        "from the training data (cached).")
    tokenizer_vocab_size: int = _f(2000, help="Vocabulary size of a tokenizer built with tokenizer: bpe.", min=260,
                                   max=1_000_000)
    tokenizer_digits: int = _f(1, help="Digits per number token in a tokenizer built with tokenizer: bpe, grouped "
                               "from the right by place value: 1 splits every digit (as Llama and Qwen), 2 gives "
                               "12345 -> 1|23|45 (each number below 100 one token).", min=1, max=3)
    trust_remote_code: bool = _f(False, help="Run model code from the Hub repo. Off unless you trust the repo.")
    allow_pickle: bool = _f(False, help="Allow loading pickle (.bin) checkpoints; safetensors only otherwise.")
    revision: str | None = _f(None, help="Hub revision (branch, tag or commit) of the base model.")
    init_kwargs: dict = _f(help="Other from_pretrained arguments (e.g. {low_cpu_mem_usage: true, max_memory: ...}); "
                           "checked by name, and those a recipe key owns are refused.", factory=dict)


@dataclass
class SourceConfig:
    path: str = _f(help="Hub dataset id, local file / glob (json, jsonl, csv, parquet), or builtin:synthetic.")
    format: str = _f("auto", help="alpaca, sharegpt, messages, prompt-completion, text, self-instruct, columns, "
                     "or auto (detected from the first rows).")
    columns: dict[str, str] = _f(help="For format: columns, map prompt/input/completion/system/task to column names; for format: text, {text: COL}.",
                       factory=dict)
    split: str = _f("train", help="Split to read (Hub datasets, build-data directories).")
    subset: str | None = _f(None, help="Hub dataset configuration name.")
    weight: float = _f(1.0, help="Sampling weight when mixing sources (1.0 = as is; 2.0 doubles, 0.5 halves).",
                       min=0.0, exclusive_min=True, max=1000.0)
    max_samples: int | None = _f(None, help="Cap on rows taken from this source (after weighting).", min=1)
    task: str | None = _f(None, help="Task label for every row of this source (default: a `task` column, else "
                          "the source's name).")
    task_column: str | None = _f(None, help="Column holding a per-row task label.")
    replace: dict[str, str] = _f(help="Literal placeholder replacements, e.g. {'{{name}}': 'Sft'}.", factory=dict)
    num_examples: int = _f(2000, help="builtin:synthetic only: examples to generate.", min=1, max=10_000_000)
    tasks: list[str] = _f(help="builtin:synthetic only: task families to include (default: all).", factory=list)


@dataclass
class CleanConfig:
    normalize: Literal["nfc", "nfkc", "none"] = _f(
        "nfc", help="Unicode normalisation. nfc keeps every visible character (Chinese full-width punctuation "
        "stays); nfkc folds compatibility forms (full-width to ASCII, ½ to 1⁄2); none keeps the bytes as read. "
        "Every changed example is counted.")
    dedupe: bool = _f(True, help="Drop exact duplicate (prompt, answer) pairs.")
    strip_eos_markers: bool = _f(True, help="Remove literal end-of-text markers (<|endoftext|>, </s>) from text.")
    overlong: Literal["drop", "trim"] = _f(
        "drop", help="Examples longer than data.max_length tokens: drop them, or trim the answer to fit.")


# data fields that say how the data is prepared, not what it is: neither the run's fingerprint nor the data
# cache key depends on them
PREPARATION_ONLY = ("num_proc", "cache", "cache_dir")


@dataclass
class DataConfig:
    sources: list[SourceConfig] = _f(help="One or more data sources, mixed by weight.", factory=list)
    template: str = _f("alpaca", help="Prompt template: a built-in (alpaca, chatml, plain: each a chat template in "
                       "sft/data/chat_templates/), tokenizer (the tokenizer's own chat template, as servers apply "
                       "it), or a Jinja template given inline (contains '{{') or as a file path ending in .jinja / "
                       ".j2.")
    system_prompt: str | None = _f(None, help="System message added to examples that have none.")
    chat_template_path: str | None = _f(
        None, help="With template: tokenizer, a .jinja chat template to use (and save with the model) instead of "
        "the tokenizer's own.")
    max_length: int = _f(256, help="Maximum tokens per example (prompt + answer).", min=8)
    text_stride: int = _f(0, help="format: text documents are cut into max_length windows; each window after the "
                          "first repeats this many tokens of the one before as context (loss off there).", min=0)
    reasoning: Literal["train", "mask", "drop"] = _f(
        "train", help="Reasoning in answers (reasoning_content, <think> blocks, typed reasoning parts): train it with "
        "the answer, mask it (rendered as context, not in the loss; causal models), or drop it from the examples.")
    max_samples: int | None = _f(None, help="Cap on the mixed training set.", min=1)
    eval_ratio: float = _f(0.1, help="Fraction of each source held out for evaluation (0 to disable). The split "
                           "is decided by a stable hash of the prompt, so it does not depend on row order.",
                           min=0.0, max=0.9)
    test_ratio: float = _f(0.0, help="Fraction carved from train for a held-out test split.", min=0.0, max=0.9)
    eval_sources: list[SourceConfig] = _f(help="Explicit eval data; replaces carving eval_ratio from train.",
                                          factory=list)
    max_eval_samples: int | None = _f(200, help="Cap on the eval split, sampled across sources (each source that "
                                      "has data keeps at least one example); rows beyond it stay in train.", min=1)
    seed: int = _f(42, help="Seed for mixing, shuffling and splitting.", min=0)
    clean: CleanConfig = _f(help="Cleaning steps (each drop is counted).", factory=CleanConfig)
    num_proc: int = _f(1, help="Processes that render and tokenise (the output is identical for any count).", min=1)
    cache: bool = _f(True, help="Keep the tokenised training set and its splits in a cache keyed by this data "
                     "section, each source's content, the tokenizer, the template and the sft version: a second "
                     "start memory-maps it instead of re-tokenising (under torchrun, rank 0 builds it once).")
    cache_dir: str | None = _f(None, help="Where the tokenised cache lives (default: $SFT_CACHE/data, else "
                               "~/.cache/sft/data).")
    streaming: bool = _f(False, help="Read the sources lazily (Parquet / jsonl(.gz) files and globs, Hub ids) for "
                         "corpora bigger than memory: mixed by weight with interleave_datasets, split by the "
                         "prompt hash, tokenised on the fly. Needs train.max_steps; exact-duplicate removal is off.")


@dataclass
@_with_switches("train")
class TrainConfig:
    output_dir: str = _f("outputs/run", help="Where the adapter/model, logs, checkpoints and metrics go.",
                         nonempty=True)
    epochs: float = _f(1.0, help="Training epochs (ignored when max_steps > 0).", min=0.0, exclusive_min=True)
    max_steps: int = _f(-1, help="Total optimiser steps; -1 to use epochs.", min=-1)
    batch_size: int = _f(8, help="Per-device batch size.", min=1)
    grad_accum: int = _f(1, help="Gradient accumulation steps.", min=1)
    learning_rate: float = _f(2e-4, help="Peak learning rate.", min=0.0, max=1.0, exclusive_min=True)
    lr_scheduler: str = _f("linear", help="transformers scheduler name: linear, cosine, constant, ...")
    warmup_steps: int | float = _f(0, help="Linear warm-up: steps, or below 1 a ratio of the total steps "
                                   "(transformers 5's replacement for warmup_ratio).", min=0)
    weight_decay: float = _f(0.0, help="AdamW weight decay.", min=0.0)
    max_grad_norm: float = _f(1.0, help="Gradient clipping norm.", min=0.0)
    optim: str = _f("adamw_torch", help="transformers optimiser name.")
    logging_steps: int = _f(10, help="Log loss every N steps.", min=1)
    save_steps: int = _f(500, help="Write a checkpoint every N steps.", min=1)
    save_total_limit: int = _f(2, help="Keep at most N checkpoints.", min=1)
    seed: int = _f(42, help="Training seed (model init, dropout, data order).", min=0, max=2**32 - 1)
    report_to: list[str] = _f(help="Loggers: tensorboard, wandb, none.", factory=lambda: ["tensorboard"])
    eval_steps: int = _f(0, help="Evaluate answer-token eval loss and perplexity on the eval split every N optimiser "
                         "steps while training (0: only before and after).", min=0)
    evals_per_epoch: int = _f(0, help="Instead of eval_steps: evaluations per epoch.", min=0)
    metric_for_best_model: str = _f(
        "perplexity", help="What picks the best checkpoint and drives early stopping: perplexity (or loss), or a "
        "score key of eval.during_training.metrics (e.g. rougeL, exact_match, bleu). Its direction comes from "
        "the metrics registry.")
    load_best_model_at_end: bool = _f(False, help="Save the best evaluated checkpoint as the output (checkpoints are "
                                      "then written at every evaluation).")
    early_stopping_patience: int = _f(0, help="Stop after N evaluations without improvement (0: off).", min=0)
    early_stopping_threshold: float = _f(0.0, help="Smallest change of metric_for_best_model that counts as an "
                                         "improvement.", min=0.0)
    use_cpu: bool = _f(False, help="Force CPU even when a GPU is present.")
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = _f(
        "auto", help="The one precision switch: load dtype, autocast, loss scaler and 4-bit compute dtype follow it. "
        "auto: bf16 on GPUs that support it, else fp16 (not for T5), float32 on CPU. See README 'Precision'.")
    ddp_timeout: int = _f(1800, help="Seconds a rank waits at a collective before failing (raise it for long data "
                          "preparation on many nodes).", min=60, max=7 * 24 * 3600)
    full_determinism: bool = _f(False, help="Deterministic kernels (slower); seeds are always set.")
    trainer_args: dict = _f(help="Other fields of the installed trl.SFTConfig (causal) or "
                            "Seq2SeqTrainingArguments (seq2seq), e.g. {neftune_noise_alpha: 5, lr_scheduler_kwargs: "
                            "{min_lr: 1.0e-5}}. Checked by name; fields a recipe key owns are refused.", factory=dict)


@dataclass
class LoraConfig:
    enabled: bool = _f(False, help="Train LoRA adapters instead of all weights.")
    r: int = _f(8, help="LoRA rank.", min=1)
    alpha: int = _f(16, help="LoRA scaling alpha.", min=1)
    dropout: float = _f(0.05, help="LoRA dropout.", min=0.0, max=1.0)
    target_modules: list[str] = _f(
        help="Module names to adapt, or all-linear (every linear layer but the output head). Default per family "
        "(sft/families.py): GPT-2 c_attn; T5 q, v; Llama/Mistral/Qwen/Gemma attention and MLP projections.",
        factory=list)
    use_dora: bool = _f(False, help="DoRA: weight-decomposed LoRA (magnitude + direction); slower, often better "
                        "at low rank.")
    use_rslora: bool = _f(False, help="rsLoRA: scale by alpha/sqrt(r) instead of alpha/r (stable at high rank).")
    bias: Literal["none", "all", "lora_only"] = _f("none", help="Which biases to train.")
    modules_to_save: list[str] = _f(help="Extra modules trained in full and saved with the adapter.", factory=list)


@dataclass
class QuantizationConfig:
    load_in_4bit: bool = _f(False, help="QLoRA: load the base in 4 bits (bitsandbytes NF4); needs lora.enabled.")
    load_in_8bit: bool = _f(False, help="Load the base in 8 bits (bitsandbytes LLM.int8).")
    quant_type: Literal["nf4", "fp4"] = _f("nf4", help="4-bit data type.")
    double_quant: bool = _f(True, help="Quantise the quantisation constants too.")

    @property
    def enabled(self) -> bool:
        return self.load_in_4bit or self.load_in_8bit


@dataclass
class GenerationConfig:
    max_new_tokens: int = _f(64, help="Tokens to generate per example.", min=1)
    num_beams: int = _f(1, help="Beam search width (1 = greedy).", min=1)
    do_sample: bool = _f(False, help="Sample instead of greedy/beam decoding.")
    temperature: float = _f(1.0, help="Sampling temperature.", min=0.0, exclusive_min=True)
    top_p: float = _f(1.0, help="Nucleus sampling p.", min=0.0, max=1.0, exclusive_min=True)
    top_k: int = _f(0, help="Top-k sampling: keep the k likeliest tokens (0 = off; transformers' own default of 50 "
                    "is not applied).", min=0)
    repetition_penalty: float = _f(1.0, help="Repetition penalty (1 = off).", min=0.0, exclusive_min=True)


@dataclass
class DuringTrainingConfig:
    metrics: list[str] = _f(help="Generation metrics (bleu, rouge, exact_match, ...) computed at every evaluation "
                            "during training, on a fixed subset of the eval split.", factory=list)
    max_samples: int = _f(32, help="Eval items (the first N, the same every time) scored by those metrics.", min=1)


@dataclass
class EvalConfig:
    before: bool = _f(True, help="Score the base model before training.")
    after: bool = _f(True, help="Score the trained model after training.")
    metrics: list[str] = _f(help="perplexity, bleu, rouge, exact_match, exact_match_normalized, f1, distinct, "
                            "accuracy, or evaluate:NAME "
                            "(extra hub-metrics). See README 'Metrics'.",
                            factory=lambda: ["perplexity", "bleu", "rouge", "exact_match"])
    sql_database: str | None = _f(None, help="SQLite file that execution_accuracy runs predicted and reference SQL "
                                  "on (read-only), or builtin:synthetic for the synthetic suite's SQL families.")
    tokenize: Literal["auto", "13a", "zh", "char"] = _f(
        "auto", help="How BLEU and ROUGE split text, decided once per eval set from its references: auto = zh when "
        "any reference contains CJK, else 13a (predictions never change it); char = one token per character.")
    group_references: bool = _f(True, help="Eval examples with the same prompt become one item scored against all "
                                "their references (multi-reference BLEU/ROUGE/exact match).")
    batch_size: int = _f(32, help="Evaluation batch size.", min=1)
    max_samples: int | None = _f(None, help="Cap on examples scored (default: the whole eval split).", min=1)
    generation: GenerationConfig = _f(help="Decoding settings for generation metrics.", factory=GenerationConfig)
    during_training: DuringTrainingConfig = _f(help="Generation metrics at every evaluation during training.",
                                               factory=DuringTrainingConfig)


@dataclass
class HubConfig:
    push_to_hub: bool = _f(False, help="Push the result at the end of sft train.")
    repo_id: str | None = _f(None, help="OWNER/NAME of the model repo.")
    private: bool = _f(True, help="Create the repo as private.")
    revision: str | None = _f(None, help="Branch to push to.")
    license: str = _f("apache-2.0", help="License in the model card.")


@dataclass
class Recipe:
    model: ModelConfig = _f(help="Base model and tokenizer.", factory=ModelConfig)
    data: DataConfig = _f(help="Data sources, template and cleaning.", factory=DataConfig)
    train: TrainConfig = _f(help="Optimisation and outputs.", factory=TrainConfig)
    lora: LoraConfig = _f(help="LoRA adapters (peft).", factory=LoraConfig)
    quantization: QuantizationConfig = _f(help="bitsandbytes quantisation (QLoRA).", factory=QuantizationConfig)
    eval: EvalConfig = _f(help="Evaluation before and after training.", factory=EvalConfig)
    hub: HubConfig = _f(help="Publishing to a model hub.", factory=HubConfig)

    # Where the recipe came from (not part of the schema; set by load_recipe).
    path: str = field(default="<recipe>", init=False, metadata={"internal": True})

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("path", None)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def fingerprint(self) -> str:
        """Hash of everything that changes what is trained (not where it is written)."""
        d = self.to_dict()
        d["train"].pop("output_dir", None)
        d.pop("hub", None)
        d.pop("eval", None)
        for key in PREPARATION_ONLY:
            d["data"].pop(key, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# ---- validation -------------------------------------------------------------------------------

def _override_value(raw: str) -> Any:
    """YAML-typed override value; a Jinja template or anything YAML cannot read stays a plain string."""
    if not raw.strip():
        return ""
    if "{{" in raw or "{%" in raw:
        return raw
    from .io import load_yaml_text

    try:
        return load_yaml_text(raw, "command line")
    except yaml.YAMLError:
        return raw


def _set_dotted(tree: dict, dotted: str, raw: str, file: str) -> None:
    parts = dotted.split(".")
    if any(not p for p in parts):
        raise RecipeError("empty part in the key", file="command line", field=dotted,
                          fix="write e.g. train.learning_rate=1e-4")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if not isinstance(node, (dict, list)):
            raise RecipeError(f"{'.'.join(parts[:i]) or 'this'} is a single value, it has no field {part!r}",
                              file="command line", field=dotted, fix=f"set {'.'.join(parts[:i])}=VALUE instead")
        if isinstance(node, list):
            if not part.isdigit() or int(part) > len(node):
                raise RecipeError(f"no list item {part}", file=file, field=".".join(parts[: i + 1]),
                                  fix=f"the list has {len(node)} item(s); index up to {len(node)} (to append)")
            if int(part) == len(node):
                node.append([] if nxt.isdigit() else {})
            node = node[int(part)]
            continue
        if part not in node or node[part] is None:
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    value = _override_value(raw)
    last = parts[-1]
    if not isinstance(node, (dict, list)):
        raise RecipeError(f"{'.'.join(parts[:-1])} is a single value, it has no field {last!r}",
                          file="command line", field=dotted, fix=f"set {'.'.join(parts[:-1])}=VALUE instead")
    if isinstance(node, list):
        if not last.isdigit():
            raise RecipeError(f"{last!r} is not a list index", file="command line", field=dotted,
                              fix=f"use a number from 0 to {len(node)}")
        idx = int(last)
        if idx == len(node):
            node.append(value)
        elif idx < len(node):
            node[idx] = value
        else:
            raise RecipeError(f"no list item {idx}", file=file, field=dotted,
                              fix=f"the list has {len(node)} item(s); index up to {len(node)} (to append)")
    else:
        node[last] = value


_VAR = re.compile(r"\$(\w+|\{[^}]*\})")


def expand_path(value: str, *, file: str | None, field: str) -> str:
    """`~` and `$VAR` / `${VAR}` in a path, expanded one way for every path sft reads or writes; a variable that is
    not set is refused (the literal text would become a folder named `$VAR`)."""
    if not isinstance(value, str) or ("~" not in value and "$" not in value):
        return value
    for m in _VAR.finditer(value):
        name = m[1].strip("{}")
        if not name or name not in os.environ:
            raise RecipeError(f"{value!r} uses ${name or '{}'}, which is not set", file=file, field=field,
                              fix=f"export {name or 'VAR'}=... before running, or write the path out")
    return os.path.expanduser(os.path.expandvars(value))


def _expand_paths(r: Recipe) -> None:
    """The recipe's path fields, expanded once (see expand_path): the run writes and reads one place."""
    def local(v: str) -> bool:
        return isinstance(v, str) and v.startswith(("~", "$"))

    r.train.output_dir = expand_path(r.train.output_dir, file=r.path, field="train.output_dir")
    for key in ("sources", "eval_sources"):
        for i, src in enumerate(getattr(r.data, key)):
            src.path = expand_path(src.path, file=r.path, field=f"data.{key}.{i}.path")
    if r.eval.sql_database and local(r.eval.sql_database):
        r.eval.sql_database = expand_path(r.eval.sql_database, file=r.path, field="eval.sql_database")
    for obj, attr, field_name in ((r.data, "chat_template_path", "data.chat_template_path"),
                                  (r.data, "cache_dir", "data.cache_dir"), (r.data, "template", "data.template"),
                                  (r.model, "name", "model.name"), (r.model, "tokenizer", "model.tokenizer")):
        value = getattr(obj, attr)
        if value and (attr in ("chat_template_path", "cache_dir") or local(value)):
            setattr(obj, attr, expand_path(value, file=r.path, field=field_name))


def _validate_combinations(r: Recipe) -> None:
    file = r.path
    if r.quantization.load_in_4bit and r.quantization.load_in_8bit:
        raise RecipeError("load_in_4bit and load_in_8bit are both on", file=file, field="quantization",
                          fix="choose one")
    if r.quantization.enabled and not r.lora.enabled:
        raise RecipeError("a quantised base cannot be trained in full", file=file, field="quantization.load_in_4bit",
                          fix="set lora.enabled: true (QLoRA) or turn quantisation off")
    if r.model.tokenizer_digits != 1 and (r.model.tokenizer or r.model.name) != "bpe":
        raise RecipeError("digit grouping applies only to a tokenizer built with tokenizer: bpe", file=file,
                          field="model.tokenizer_digits", fix="set model.tokenizer: bpe, or remove tokenizer_digits")
    if r.data.chat_template_path and r.data.template != "tokenizer":
        raise RecipeError("data.chat_template_path is read only with template: tokenizer", file=file,
                          field="data.chat_template_path", fix="set data.template: tokenizer, or remove the path")
    if "all-linear" in r.lora.target_modules and len(r.lora.target_modules) > 1:
        raise RecipeError("all-linear stands alone", file=file, field="lora.target_modules",
                          fix="use [all-linear] or a list of module names, not both")
    if not r.data.sources:
        raise RecipeError("no data sources", file=file, field="data.sources",
                          fix="add at least one source, e.g. '- path: builtin:synthetic'")
    if r.data.eval_ratio + r.data.test_ratio >= 1.0:
        raise RecipeError("eval_ratio + test_ratio must be < 1", file=file, field="data.eval_ratio")
    if r.data.text_stride >= r.data.max_length - 1:
        raise RecipeError(f"got {r.data.text_stride}, expected less than max_length - 1 ({r.data.max_length - 1}): "
                          "each window must add a token", file=file, field="data.text_stride",
                          fix="use a smaller stride, e.g. max_length // 4")
    if r.data.streaming and r.train.max_steps <= 0:
        raise RecipeError("data.streaming needs a step budget: a stream has no length to count epochs by", file=file,
                          field="train.max_steps", fix="set train.max_steps to the number of optimiser steps")
    if r.data.streaming and r.train.evals_per_epoch:
        raise RecipeError("a stream has no epochs to divide", file=file, field="train.evals_per_epoch",
                          fix="use train.eval_steps instead")
    from .metrics import METRICS, check_metric_names

    check_metric_names(r.eval.metrics, field_name="eval.metrics", file=file)  # the registry's one check
    if any("sql_database" in METRICS[m].options for m in r.eval.metrics + r.eval.during_training.metrics
           if m in METRICS):
        from .sql import check_database

        check_database(r.eval.sql_database, file=file)  # builtin:synthetic is built when first scored
    _validate_training_eval(r)
    if r.hub.push_to_hub and not r.hub.repo_id:
        raise RecipeError("push_to_hub is on but no repo_id is set", file=file, field="hub.repo_id",
                          fix="set hub.repo_id: OWNER/NAME, or hub.push_to_hub: false")
    from .passthrough import check as check_passthrough

    check_passthrough(r)
    _check_name(r.train.lr_scheduler, _known(KNOWN_SCHEDULERS, r.train.lr_scheduler, _scheduler_names), file,
                "train.lr_scheduler")
    _check_name(r.train.optim, _known(KNOWN_OPTIMIZERS, r.train.optim, _optimizer_names), file, "train.optim")
    for i, name in enumerate(r.train.report_to):
        _check_name(name, _known(KNOWN_REPORT_TO, name, _report_to_names), file, f"train.report_to.{i}")


def best_metric_keys(r: Recipe) -> list[str]:
    """Names train.metric_for_best_model may take for this recipe."""
    from .metrics import METRICS

    keys = ["perplexity", "loss"]
    for m in r.eval.during_training.metrics:
        if m in METRICS:
            keys += list(METRICS[m].keys)
    return keys


def _validate_training_eval(r: Recipe) -> None:
    from .metrics import METRICS

    file, t = r.path, r.train
    for i, m in enumerate(r.eval.during_training.metrics):
        if m not in METRICS or METRICS[m].kind != "text":
            close = difflib.get_close_matches(m, [k for k, v in METRICS.items() if v.kind == "text"], n=1)
            raise RecipeError(f"{m!r} is not a generation metric", file=file, field=f"eval.during_training.metrics.{i}",
                              fix=f"did you mean {close[0]!r}?" if close else
                              f"use {', '.join(k for k, v in METRICS.items() if v.kind == 'text')}")
    if t.eval_steps and t.evals_per_epoch:
        raise RecipeError("eval_steps and evals_per_epoch are both set", file=file, field="train.evals_per_epoch",
                          fix="choose one")
    evaluating = bool(t.eval_steps or t.evals_per_epoch)
    for name, on in (("load_best_model_at_end", t.load_best_model_at_end),
                     ("early_stopping_patience", t.early_stopping_patience),
                     ("eval.during_training.metrics", r.eval.during_training.metrics)):
        if on and not evaluating:
            raise RecipeError(f"{name} needs evaluations during training", file=file,
                              field=name if "." in name else f"train.{name}",
                              fix="set train.eval_steps (e.g. 50) or train.evals_per_epoch")
    if evaluating and not (r.data.eval_ratio > 0 or r.data.eval_sources):
        raise RecipeError("evaluation during training needs an eval split", file=file, field="data.eval_ratio",
                          fix="set data.eval_ratio > 0 or add data.eval_sources")
    keys = best_metric_keys(r)
    if evaluating and t.metric_for_best_model not in keys:
        close = difflib.get_close_matches(t.metric_for_best_model, keys, n=1)
        raise RecipeError(f"{t.metric_for_best_model!r} is not measured during training", file=file,
                          field="train.metric_for_best_model",
                          fix=f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(keys)} (add "
                          "generation metrics under eval.during_training.metrics)")


def _check_name(value: str, valid: list[str], file: str, field_name: str) -> None:
    if valid and value not in valid:
        close = difflib.get_close_matches(value, valid, n=1)
        raise RecipeError(f"unknown name {value!r}", file=file, field=field_name,
                          fix=f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(valid)}")


# Names transformers 5.x accepts, known here so that validating a recipe does not import the trainer stack
# (transformers.trainer_utils pulls in peft, bitsandbytes and torch: 4.7 s of every `sft recipe show`). A name
# not listed is looked up in transformers itself, so a newer release's names still work; a test keeps these
# equal to the installed transformers'.
KNOWN_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                    "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                    "warmup_stable_decay", "greedy")
KNOWN_OPTIMIZERS = (
    "adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adafactor", "adamw_anyprecision",
    "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "sgd", "adagrad", "adamw_bnb_8bit", "adamw_8bit",
    "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit", "paged_adamw_8bit", "paged_ademamix_32bit",
    "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit", "rmsprop", "rmsprop_bnb", "rmsprop_bnb_8bit",
    "rmsprop_bnb_32bit", "galore_adamw", "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise",
    "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise", "lomo", "adalomo", "grokadamw", "schedule_free_radam",
    "schedule_free_adamw", "schedule_free_sgd", "apollo_adamw", "apollo_adamw_layerwise", "stable_adamw")
KNOWN_REPORT_TO = ("azure_ml", "clearml", "codecarbon", "comet_ml", "dagshub", "dvclive", "flyte", "kubeflow",
                   "mlflow", "neptune", "swanlab", "tensorboard", "trackio", "wandb", "none", "all")


def _known(known: tuple[str, ...], value: str, live) -> list[str]:
    """The names to check `value` against: the list above when it holds it, else transformers' own (slow)."""
    return list(known) if value in known else live()


def _scheduler_names() -> list[str]:
    from transformers.trainer_utils import SchedulerType

    return [s.value for s in SchedulerType]


def _optimizer_names() -> list[str]:
    from transformers.training_args import OptimizerNames

    return [o.value for o in OptimizerNames]


def _report_to_names() -> list[str]:
    try:
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK
    except ImportError:  # the table moved: do not block a run on our own lookup
        return []
    return sorted(INTEGRATION_TO_CALLBACK) + ["none", "all"]


_DTYPE_TO_PRECISION = {"float16": "fp16", "bfloat16": "bf16", "float32": "no"}


def _migrate(data: dict, path: str = "<recipe>") -> dict:
    """Recipes saved by earlier sft versions keep loading with the meaning they had."""
    # model.dtype and quantization.compute_dtype became train.mixed_precision (one decision, sft/precision.py).
    old = [(data.get(sec), key) for sec, key in (("model", "dtype"), ("quantization", "compute_dtype"))]
    for section, key in old:
        if isinstance(section, dict) and key in section:
            value = section[key]
            if value != "auto" and value not in _DTYPE_TO_PRECISION:
                raise RecipeError(f"got {value!r}; this field is now train.mixed_precision", file=path,
                                  field=f"{'model' if key == 'dtype' else 'quantization'}.{key}",
                                  fix="remove it and set train.mixed_precision: auto, bf16, fp16 or no")
            section.pop(key)
            train = data.setdefault("train", {}) if isinstance(data.get("train", {}), dict) else None
            if train is not None and value in _DTYPE_TO_PRECISION and "mixed_precision" not in train:
                train["mixed_precision"] = _DTYPE_TO_PRECISION[value]
    clean = (data.get("data") or {}).get("clean") if isinstance(data.get("data"), dict) else None
    if isinstance(clean, dict) and "nfkc" in clean and "normalize" not in clean:
        clean["normalize"] = "nfkc" if clean.pop("nfkc") else "none"
    return data


def recipe_from_dict(data: dict, *, path: str = "<recipe>", overrides: list[str] | tuple = ()) -> Recipe:
    data = _migrate(json.loads(json.dumps(data)), path)  # deep copy, plain types
    for ov in overrides:
        if "=" not in ov:
            raise RecipeError(f"override {ov!r} is not key=value", file="command line", field=ov,
                              fix="write e.g. train.learning_rate=1e-4")
        key, raw = ov.split("=", 1)
        _set_dotted(data, key.strip(), raw, path)
    recipe = validate(Recipe, data, path)  # Pydantic, over the dataclasses above (sft/schema.py)
    recipe.path = path
    _expand_paths(recipe)
    _validate_combinations(recipe)
    return recipe


def load_recipe(path: str, overrides: list[str] | tuple = ()) -> Recipe:
    """Load, override and validate a recipe file. Raises RecipeError with one-line messages."""
    from .io import read_yaml

    if not os.path.exists(path):
        raise RecipeError("recipe file not found", file=path, fix="check the path, e.g. recipes/quickstart.yaml")
    data = read_yaml(path, "recipe file")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"top level is a {type(data).__name__}, expected a mapping of sections",
                          file=path, fix="start the file with sections such as 'model:', 'data:', 'train:'")
    return recipe_from_dict(data, path=path, overrides=overrides)


def describe_schema(cls: type = Recipe, prefix: str = "") -> list[str]:
    """One line per field: dotted path, default and help (the schema's documentation)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for name, f in fields_of(cls).items():
        path = f"{prefix}{name}"
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            lines.append(f"{path}: {f.metadata['help']}")
            lines.extend(describe_schema(tp, path + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        lines.append(f"  {path} = {default!r}  -- {f.metadata['help']}")
        if typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            lines.extend(describe_schema(typing.get_args(tp)[0], path + ".N."))
    return lines
