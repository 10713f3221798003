"""Publishing: the model card, `sft push` (Hub upload or --to-dir), and `sft merge`.

The Hub token comes from HF_TOKEN or the user's existing login (huggingface_hub.get_token) and is
passed to the API only: it is never written to disk, logs or the card.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import yaml

from .errors import PublishError
from .io import read_json, write_text_atomic
from .recipe import Recipe, load_recipe
from . import rundir

WEIGHT_FILES = ("adapter_model.safetensors", rundir.ADAPTER_CONFIG, "model.safetensors", rundir.MODEL_CONFIG,
                rundir.GENERATION_CONFIG, "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "spiece.model", "added_tokens.json", "chat_template.jinja")
EXTRA_FILES = (rundir.RECIPE, rundir.METRICS, rundir.TRAIN_SUMMARY, rundir.EVAL_REPORT)



def is_adapter(output_dir: str) -> bool:
    return os.path.exists(os.path.join(output_dir, rundir.ADAPTER_CONFIG))


def _hub_datasets(recipe: Recipe) -> list[str]:
    from .data.sources import is_local_path

    return [s.path for s in recipe.data.sources if not s.path.startswith("builtin:") and not is_local_path(s.path)]


def model_card(output_dir: str, repo_id: str | None, license: str = "apache-2.0") -> str:
    """README.md with YAML front matter (base_model, datasets, library_name, pipeline_tag, tags, license,
    model-index from metrics.json) and a body: recipe, data, hyperparameters, metrics, how to load."""
    recipe = load_recipe(os.path.join(output_dir, rundir.RECIPE))
    metrics_path = os.path.join(output_dir, rundir.METRICS)
    metrics = read_json(metrics_path) if os.path.exists(metrics_path) else None
    adapter = is_adapter(output_dir)
    arch = (metrics or {}).get("model", {}).get("arch")
    if arch is None:  # from the folder's own files (the base model's config may be on the Hub)
        from .modeling import folder_arch

        arch = folder_arch(output_dir, trust_remote_code=recipe.model.trust_remote_code)
    from .families import path_of

    path = path_of(arch)
    pipeline_tag = path.pipeline_tag
    name = repo_id or os.path.basename(os.path.abspath(output_dir))
    tags = ["sft", path.card_tag, "generated_from_trainer"]
    if adapter:
        tags += ["lora", "peft"] + (["qlora"] if recipe.quantization.load_in_4bit else [])
    front: dict = {"library_name": "peft" if adapter else "transformers", "license": license,
                   "pipeline_tag": pipeline_tag, "tags": tags}
    if recipe.model.init == "pretrained":
        front["base_model"] = recipe.model.name
    datasets = _hub_datasets(recipe)
    if datasets:
        front["datasets"] = datasets
    if metrics:
        from .metrics import display_name

        results = [{"type": k, "name": display_name(k), "value": round(float(v), 4)}
                   for k, v in metrics["metrics"].items()]
        front["model-index"] = [{"name": name, "results": [{
            "task": {"type": pipeline_tag, "name": "Instruction following"},
            "dataset": {"type": datasets[0] if datasets else "custom", "name": ", ".join(
                s.path for s in recipe.data.sources), "split": metrics.get("split", "eval")},
            "metrics": results}]}]
    t = recipe.train
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "",
             f"# {name}", "",
             f"{'A LoRA adapter for' if adapter else 'A fine-tune of'} `{recipe.model.name}`"
             f"{' (initialised from scratch)' if recipe.model.init == 'scratch' else ''}, trained with "
             f"[sft](https://github.com/) ({path.trainer_name}).",
             "", "## Data", ""]
    for s in recipe.data.sources:
        lines.append(f"- `{s.path}` (format {s.format}, weight {s.weight}"
                     f"{f', max {s.max_samples}' if s.max_samples else ''})")
    lines += ["", f"Prompt template: `{recipe.data.template}`; max length {recipe.data.max_length} tokens.", "",
              "## Hyperparameters", "", "| setting | value |", "|---|---|"]
    hp = {"epochs": t.epochs, "max_steps": t.max_steps, "batch size": t.batch_size, "grad accumulation": t.grad_accum,
          "learning rate": t.learning_rate, "scheduler": t.lr_scheduler, "warmup steps": t.warmup_steps,
          "seed": t.seed}
    if adapter:
        hp.update({"LoRA r": recipe.lora.r, "LoRA alpha": recipe.lora.alpha, "LoRA dropout": recipe.lora.dropout,
                   "LoRA targets": ", ".join(recipe.lora.target_modules) or "architecture default",
                   "4-bit base (QLoRA)": recipe.quantization.load_in_4bit})
    lines += [f"| {k} | {v} |" for k, v in hp.items()]
    if metrics:
        from .evaluation.report import before_after_table, metrics_table

        lines += ["", "## Evaluation", "", f"On the {metrics.get('split', 'eval')} split "
                  f"({metrics['num_samples']} examples). BLEU 0-100; ROUGE and exact match 0-1.", ""]
        lines += [before_after_table(metrics["before"], metrics) if "before" in metrics else metrics_table(metrics)]
    repo = repo_id or "OWNER/NAME"
    lines += ["", "## How to use", "", "```python"]
    if adapter:
        cls = path.auto_class
        lines += ["from peft import PeftModel", f"from transformers import {cls}, AutoTokenizer", ""]
        if recipe.model.init == "scratch":
            # adapter_kwargs: else transformers finds the repo's own adapter_config.json and ignores the subfolder
            lines += [f"base = {cls}.from_pretrained('{repo}', subfolder='base_model',",
                      f"{' ' * (len(cls) + 24)}adapter_kwargs={{'subfolder': 'base_model'}})"]
        else:
            lines += [f"base = {cls}.from_pretrained('{recipe.model.name}')"]
        # an adapter repo has no config.json, which AutoTokenizer otherwise looks for: give it the base's
        lines += [f"tokenizer = AutoTokenizer.from_pretrained('{repo}', config=base.config)",
                  f"model = PeftModel.from_pretrained(base, '{repo}')"]
    else:
        cls = path.auto_class
        lines += [f"from transformers import {cls}, AutoTokenizer", "",
                  f"tokenizer = AutoTokenizer.from_pretrained('{repo}')",
                  f"model = {cls}.from_pretrained('{repo}')"]
    lines += ["```", "", "With sft, prompted exactly as in training (the saved chat template and stop tokens):", "",
              "```bash", f"sft generate {repo} --input prompts.jsonl   # one JSON object a line: {{\"instruction\": ...}}",
              f"sft chat {repo}",
              f"sft serve {repo} --port 8000                # OpenAI-compatible server (pip install 'sft[serve]')",
              f"sft export {repo} --out exported --dtype bf16  # one merged safetensors model",
              f"vllm serve {'exported' if adapter else repo}" + ("                       # the export: vLLM loads it unchanged"
                                                               if adapter else ""),
              "```", "", f"Requests to `sft serve {repo}` name the model `{repo}`, e.g. with the openai client:", "",
              "```python", "from openai import OpenAI", "",
              "client = OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='none')",
              f"reply = client.chat.completions.create(model='{repo}', temperature=0,",
              "                                       messages=[{'role': 'user', 'content': 'Hello'}])",
              "print(reply.choices[0].message.content)", "```", ""]
    return "\n".join(lines)


def stage(output_dir: str, dest: str, repo_id: str | None, license: str = "apache-2.0", *,
          field: str = "--to-dir") -> list[str]:
    """Copy exactly what would be uploaded into `dest`; returns the relative paths."""
    if not os.path.exists(os.path.join(output_dir, rundir.RECIPE)):
        raise PublishError("not a training output directory (no recipe.yaml)", file=output_dir,
                           fix="pass the train.output_dir of a finished sft train run")
    if not any(os.path.exists(os.path.join(output_dir, f)) for f in ("adapter_model.safetensors", "model.safetensors",
                                                                     "model.safetensors.index.json")):
        raise PublishError("no trained weights in the output directory", file=output_dir,
                           fix="wait for sft train to finish (or resume it)")
    rundir.claim(dest, kind="stage", field=field, error=PublishError, src=output_dir, fresh=True)
    copied = []
    for f in sorted(os.listdir(output_dir)):
        if f in WEIGHT_FILES + TOKENIZER_FILES + EXTRA_FILES or (f.startswith("model-") and f.endswith(".safetensors")):
            shutil.copy2(os.path.join(output_dir, f), os.path.join(dest, f))
            copied.append(f)
    base = os.path.join(output_dir, "base_model")
    if is_adapter(output_dir) and os.path.isdir(base):  # scratch base: the adapter needs it to load
        shutil.copytree(base, os.path.join(dest, "base_model"), dirs_exist_ok=True)
        copied += [f"base_model/{f}" for f in sorted(os.listdir(base))]
    write_text_atomic(os.path.join(dest, rundir.CARD), model_card(output_dir, repo_id, license))
    copied.append(rundir.CARD)
    return copied


def push(output_dir: str, *, repo_id: str | None, private: bool = True, revision: str | None = None,
         to_dir: str | None = None) -> tuple[list[str], str]:
    """Upload (or with `to_dir`, stage) a run; returns (files, where they went)."""
    recipe = load_recipe(os.path.join(output_dir, rundir.RECIPE)) if os.path.exists(
        os.path.join(output_dir, rundir.RECIPE)) else None
    license = recipe.hub.license if recipe else "apache-2.0"
    if to_dir:
        return stage(output_dir, to_dir, repo_id, license), to_dir
    if not repo_id:
        raise PublishError("no repository id", field="--repo-id / hub.repo_id", fix="pass --repo-id OWNER/NAME")
    from huggingface_hub import HfApi, get_token

    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise PublishError("no Hub token found", field="HF_TOKEN",
                           fix="export HF_TOKEN=... or run `hf auth login` (the token is never written by sft)")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        files = stage(output_dir, tmp, repo_id, license)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            api.upload_folder(folder_path=tmp, repo_id=repo_id, revision=revision, ignore_patterns=[rundir.MARKER],
                              commit_message=f"sft: upload {os.path.basename(os.path.abspath(output_dir))}")
        except Exception as e:
            raise PublishError(f"upload to {repo_id!r} failed ({type(e).__name__}: {str(e).splitlines()[0][:160]})",
                               field="--repo-id", fix="check the repo id, your token's write access and the network"
                               ) from e
    return files, f"https://huggingface.co/{repo_id}"


def merge_adapter(output_dir: str, out: str) -> str:
    """Merge a LoRA adapter into its base (float32) and save a standalone model + tokenizer (sft export's rule)."""
    from .export import export

    return export(output_dir, out, dtype="fp32", adapters_only=True)
