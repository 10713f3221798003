"""GPU benchmark kit: training throughput, MFU and peak memory of `sft train` against plain TRL, in one run.

    bash benchmarks/gpu/run.sh            # on one CUDA GPU: writes benchmarks/gpu/results.md (+ results.json)
    bash benchmarks/gpu/run.sh --smoke    # the same code on CPU with tiny models (a test runs this)

GPT-2 small (124M) is built from its config with the real GPT-2 tokenizer and trained on the Alpaca demo plus
the synthetic suite, full / LoRA / QLoRA, each plain and with packing and torch.compile, and the same model
and data through plain TRL `SFTTrainer`. GPT-2 has no Liger kernels, so a Llama of the same width and depth
(grouped-query-free, 12 x 768) measures Liger on and off; asking Liger for GPT-2 is shown refused.

tokens/s counts non-padding tokens (the Trainer's num_input_tokens_seen) between the log at step --warmup and
the last one, so start-up, data preparation and compilation are excluded, identically for sft and TRL; what a
user waits for before that is its own column, the time from the row's start (recipe, data, model, trainer) to
the end of the first forward and backward. A weight-dominated model (a Llama of Llama-3.2-1B's shape, sequence
512, gradient checkpointing) measures what QLoRA saves against full fine-tuning where weights, not activations,
dominate memory (GPT-2 small's are a few percent of its peak).
MFU = 6 * N * tokens/s / peak dense bf16 FLOP/s of the GPU (N = all parameters; for LoRA and QLoRA the
backward skips weight gradients, so 6N overstates their work by about a third).
Each row runs in this process one after another; a row that fails is reported with its error, not hidden.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Peak dense bf16 tensor FLOP/s (no sparsity) by device name, from the vendors' datasheets.
PEAK_BF16 = [("H200", 989e12), ("H100 SXM", 989e12), ("H100 80GB HBM3", 989e12), ("H100 PCIe", 756e12),
             ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10", 125e12),
             ("RTX 4090", 165e12), ("V100", 125e12), ("T4", 65e12)]

SIZES = {  # model -> (gpu config, smoke config)
    "gpt2-small": ({}, {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 128}),
    "llama-small": ({"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
                     "num_attention_heads": 12, "num_key_value_heads": 12, "max_position_embeddings": 1024},
                    {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "max_position_embeddings": 128}),
    # Llama-3.2-1B's shape (GPT-2's vocabulary, to use its tokenizer): 1.0B parameters, weight-dominated
    "llama-1b": ({"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
                  "num_key_value_heads": 8, "max_position_embeddings": 2048, "tie_word_embeddings": True},
                 {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "max_position_embeddings": 128, "tie_word_embeddings": True}),
}
LLAMA = ("llama-small", "llama-1b")


def variants() -> list[dict]:
    """Rows in order of importance (results are written after each, so a cut-short run keeps the first)."""
    g = "gpt2-small"
    rows = [dict(model=g, mode=m, trainer=t) for m in ("full", "lora", "qlora") for t in ("trl", "sft")]
    rows += [dict(model=g, mode="full", trainer="sft", packing="wrapped"),
             dict(model=g, mode="full", trainer="sft", packing="bfd"),
             dict(model=g, mode="full", trainer="sft", packing="wrapped", compile=True),
             dict(model=g, mode="full", trainer="sft", liger=True),  # refused: Liger has no GPT-2 kernels
             dict(model="llama-small", mode="full", trainer="sft"),
             dict(model="llama-small", mode="full", trainer="sft", liger=True),
             dict(model="llama-small", mode="full", trainer="sft", packing="wrapped", liger=True),
             dict(model=g, mode="lora", trainer="sft", packing="wrapped"),
             dict(model=g, mode="qlora", trainer="sft", packing="wrapped"),
             dict(model=g, mode="lora", trainer="sft", packing="bfd"),
             dict(model=g, mode="qlora", trainer="sft", packing="bfd"),
             dict(model=g, mode="full", trainer="sft", compile=True),
             dict(model=g, mode="lora", trainer="sft", packing="wrapped", compile=True)]
    # the weight-dominated pair for the QLoRA memory goal (after the GPT-2 rows: a 1B full run is the slowest)
    rows[6:6] = [dict(model="llama-1b", mode=m, trainer="sft", max_length=512, checkpointing=True)
                 for m in ("full", "qlora")]
    for r in rows:
        r.setdefault("packing", None)
        r.setdefault("liger", False)
        r.setdefault("compile", False)
        r.setdefault("max_length", None)
        r.setdefault("checkpointing", False)
        r["name"] = "-".join([r["model"], r["mode"], r["trainer"]] + ([f"pack_{r['packing']}"] if r["packing"] else [])
                             + (["liger"] if r["liger"] else []) + (["compile"] if r["compile"] else [])
                             + ([f"seq{r['max_length']}"] if r["max_length"] else [])
                             + (["ckpt"] if r["checkpointing"] else []))
    return rows


def peak_flops(name: str) -> float | None:
    for key, value in PEAK_BF16:
        if key.lower() in name.lower():
            return value
    return None


def matmul_tflops() -> float:
    """Measured bf16 8192^3 matmul throughput (the practical ceiling)."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - t0) / 1e12


def steady_throughput(log_path: str, warmup: int) -> tuple[float | None, float | None]:
    """(tokens/s between the log at step >= warmup and the last log, last logged loss)."""
    recs = []
    with open(log_path, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            if "num_input_tokens_seen" in rec and "loss" in rec:
                recs.append(rec)
    loss = recs[-1]["loss"] if recs else None
    start = next((r for r in recs if r["step"] >= warmup), None)
    if start is None or recs[-1] is start:
        return None, loss
    tokens = recs[-1]["num_input_tokens_seen"] - start["num_input_tokens_seen"]
    return tokens / (recs[-1]["elapsed_s"] - start["elapsed_s"]), loss


def recipe_for(v: dict, args, work: str):
    from sft.recipe import load_recipe

    size = SIZES[v["model"]][1 if args.smoke else 0]
    model_name = "gpt2"
    if v["model"] in LLAMA:
        from transformers import AutoConfig

        model_name = os.path.join(work, f"{v['model']}-config")
        if not os.path.isdir(model_name):
            AutoConfig.for_model("llama", vocab_size=50257, **size).save_pretrained(model_name)
        size = {}
    max_length = min(v["max_length"] or args.max_length, args.max_length)
    out = os.path.join(work, "runs", v["name"])
    ov = [f"model.name={model_name}", "model.init=scratch", f"model.tokenizer={args.tokenizer}",
          f"model.config_overrides={json.dumps(size)}",
          f"data.sources.0.path={args.alpaca}", f"data.sources.0.weight={args.alpaca_weight}",
          f"data.sources.1.num_examples={args.synthetic}", f"data.max_length={max_length}",
          f"train.output_dir={out}", f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}",
          f"train.logging_steps={args.log_every}", "train.save_steps=1000000", "train.report_to=none",
          f"train.mixed_precision={'no' if args.smoke else 'auto'}",
          f"lora.enabled={v['mode'] != 'full'}", f"quantization.load_in_4bit={v['mode'] == 'qlora'}",
          f"train.packing={bool(v['packing'])}", f"train.packing_strategy={v['packing'] or 'bfd'}",
          f"train.use_liger_kernel={v['liger']}", f"train.torch_compile={v['compile']}",
          f"train.gradient_checkpointing={v['checkpointing']}"]
    if v["mode"] != "full":
        ov.append("train.learning_rate=2e-4")
        if v["model"] in LLAMA:
            ov.append("lora.target_modules=[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]")
        else:
            ov.append("lora.target_modules=[c_attn, c_proj, c_fc]")
    return load_recipe(os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipe.yaml"), ov)


def run_sft(v: dict, args, work: str) -> dict:
    from sft.train.run import train

    recipe = recipe_for(v, args, work)
    summary = train(recipe, overwrite=True)
    tps, loss = steady_throughput(os.path.join(recipe.train.output_dir, "train_log.jsonl"), args.warmup)
    return {"tokens_per_s": tps, "loss": loss, "params": summary["total_params"],
            "trainable": summary["trainable_params"], "peak_mem_gib": summary["peak_memory_mb"] / 1024}


def run_trl(v: dict, args, work: str) -> dict:
    """Plain TRL on the same model (same init) and the same rows, rendered by the same template as text:
    TRL tokenises, collates and (for LoRA) wraps the model itself."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from sft.data.encode import final_answer, prompt_text
    from sft.families import family_of
    from sft.modeling import count_parameters, load_model, lora_targets, run_precision
    from sft.data.pipeline import load_splits
    from sft.tokenizer import get_tokenizer
    from sft.train.callbacks import JsonlLogger
    from sft.train.run import peak_memory_mb

    recipe = recipe_for(v, args, work)
    splits = load_splits(recipe.data, recipe_file=recipe.path)  # the records, as sft's pipeline splits them
    tok = get_tokenizer(recipe, splits.train, "causal")
    ds = Dataset.from_list([{"prompt": prompt_text(r, recipe.data.template),
                             "completion": final_answer(r) + tok.eos_token} for r in splits.train])
    precision = run_precision(recipe)
    model = load_model(recipe, tok, "causal", precision=precision)
    peft_config = None
    if recipe.lora.enabled:
        peft_config = LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                                 target_modules=lora_targets(recipe, model), task_type="CAUSAL_LM",
                                 fan_in_fan_out=bool(getattr(family_of(model.config.model_type), "conv1d", False)))
    out = recipe.train.output_dir
    os.makedirs(out, exist_ok=True)
    t = recipe.train
    cfg = SFTConfig(output_dir=out, max_steps=t.max_steps, per_device_train_batch_size=t.batch_size,
                    learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_steps,
                    logging_steps=t.logging_steps, save_strategy="no", report_to="none", seed=t.seed,
                    max_length=recipe.data.max_length, use_cpu=args.smoke, disable_tqdm=True, optim=t.optim,
                    include_num_input_tokens_seen="non_padding", **precision.trainer_flags(),
                    # TRL turns gradient checkpointing on by default; sft (and this comparison) has it off
                    gradient_checkpointing=recipe.train.gradient_checkpointing)
    log = os.path.join(out, "train_log.jsonl")
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_config,
                         callbacks=[JsonlLogger(log)])
    trainable, total = count_parameters(trainer.model)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    tps, loss = steady_throughput(log, args.warmup)
    return {"tokens_per_s": tps, "loss": loss, "params": total, "trainable": trainable,
            "peak_mem_gib": peak_memory_mb() / 1024}


_FIRST_STEP: dict = {}


def time_first_step() -> None:
    """Record when the first forward and backward of a row ends (the Trainer's training_step; synchronised on a
    GPU once), for sft and TRL alike."""
    import torch
    from transformers import Trainer

    original = Trainer.training_step
    if getattr(original, "_bench", False):
        return

    def training_step(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        if "end" not in _FIRST_STEP:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            _FIRST_STEP["end"] = time.time()
        return loss

    training_step._bench = True
    Trainer.training_step = training_step


def fmt(x, spec: str, none: str = "-") -> str:
    return none if x is None else format(x, spec)


def write_results(path_md: str, meta: dict, rows: list[dict]) -> None:
    by_name = {r["name"]: r for r in rows}
    lines = [f"# GPU benchmark: sft vs plain TRL ({meta['device']})", "",
             f"Measured {meta['date']} by `bash benchmarks/gpu/run.sh{' --smoke' if meta['smoke'] else ''}` "
             f"in {meta['wall_min']:.1f} min. torch {meta['torch']}, transformers {meta['transformers']}, trl "
             f"{meta['trl']}, peft {meta['peft']}, bitsandbytes {meta['bitsandbytes']}, liger-kernel {meta['liger']}.",
             "", f"Data: Alpaca demo x{meta['alpaca_weight']} + {meta['synthetic']} synthetic rows, alpaca template, "
             f"max_length {meta['max_length']}, batch {meta['batch_size']}, {meta['steps']} steps; tokens/s from step "
             f"{meta['warmup']} to the end. Peak dense bf16: {fmt(meta['peak_tflops'], '.0f')} TFLOP/s (datasheet), "
             f"{fmt(meta['matmul_tflops'], '.0f')} measured on an 8192^3 bf16 matmul. Precision: {meta['precision']}.",
             "", "| run | first step | tokens/s | MFU (6N) | peak memory | vs TRL | last loss | note |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        base = by_name.get(f"{r['model']}-{r['mode']}-trl")
        ratio = (r["tokens_per_s"] / base["tokens_per_s"] if r.get("tokens_per_s") and base and
                 base.get("tokens_per_s") and r["trainer"] == "sft" else None)
        mfu = (6 * r["params"] * r["tokens_per_s"] / meta["peak_flops"] * 100
               if r.get("tokens_per_s") and r.get("params") and meta.get("peak_flops") else None)
        note = r.get("error") or ""
        first = fmt(r.get("first_step_s"), ".1f")
        lines.append(f"| {r['name']} | {first}{' s' if r.get('first_step_s') else ''} "
                     f"| {fmt(r.get('tokens_per_s'), ',.0f')} | {fmt(mfu, '.1f')}{'%' if mfu else ''} "
                     f"| {fmt(r.get('peak_mem_gib'), '.2f')}{' GiB' if r.get('peak_mem_gib') else ''} "
                     f"| {fmt(ratio, '.2f')} | {fmt(r.get('loss'), '.3f')} | {note} |")
    lines += ["", "## Goals", ""] + [f"- {g}" for g in goals(rows, meta)]
    tmp = path_md + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, path_md)


def goals(rows: list[dict], meta: dict) -> list[str]:
    ok = {r["name"]: r for r in rows if r.get("tokens_per_s")}
    out = []
    full = [r for r in ok.values() if r["model"] == "gpt2-small" and r["mode"] == "full" and r["trainer"] == "sft"]
    if full and meta.get("peak_flops"):
        best = max(full, key=lambda r: r["tokens_per_s"])
        mfu = 6 * best["params"] * best["tokens_per_s"] / meta["peak_flops"] * 100
        out.append(f"GPT-2 small full fine-tuning MFU >= 40 %: best {mfu:.1f} % ({best['name']}) -> "
                   f"{'met' if mfu >= 40 else 'not met'}")
    f, q = ok.get("gpt2-small-full-sft"), ok.get("gpt2-small-qlora-sft")
    if f and q:
        share = q["peak_mem_gib"] / f["peak_mem_gib"] * 100
        out.append(f"QLoRA peak memory <= 40 % of full: {share:.0f} % ({q['peak_mem_gib']:.2f} vs "
                   f"{f['peak_mem_gib']:.2f} GiB) -> {'met' if share <= 40 else 'not met'}")
    f, q = (ok.get(f"llama-1b-{m}-sft-seq512-ckpt") for m in ("full", "qlora"))
    if f and q:
        share = q["peak_mem_gib"] / f["peak_mem_gib"] * 100
        out.append(f"QLoRA peak memory <= 40 % of full, weight-dominated (Llama 1B, sequence 512, checkpointing): "
                   f"{share:.0f} % ({q['peak_mem_gib']:.2f} vs {f['peak_mem_gib']:.2f} GiB) -> "
                   f"{'met' if share <= 40 else 'not met'}")
    for mode in ("full", "lora", "qlora"):
        s, t = ok.get(f"gpt2-small-{mode}-sft"), ok.get(f"gpt2-small-{mode}-trl")
        if s and t:
            ratio = s["tokens_per_s"] / t["tokens_per_s"]
            out.append(f"sft >= TRL tokens/s ({mode}, same settings): {ratio:.2f} -> {'met' if ratio >= 1 else 'not met'}")
    return out or ["no completed rows"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny models, few steps (what the test runs)")
    ap.add_argument("--out", default=None, help="folder for results.md / results.json (default: benchmarks/gpu, "
                    "or a temporary folder with --smoke)")
    ap.add_argument("--work", default=None, help="scratch folder for the runs (default: a temporary folder)")
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "..", "shared", "tokenizers", "gpt2"))
    ap.add_argument("--alpaca", default=os.path.join(ROOT, "..", "shared", "data", "llamafactory",
                                                     "alpaca_en_demo.json"))
    ap.add_argument("--only", default=None, help="comma-separated run names to keep (a trailing * matches a prefix)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--max-length", type=int, default=None)
    args = ap.parse_args(argv)
    smoke = args.smoke
    args.steps = args.steps or (6 if smoke else 60)
    args.batch_size = args.batch_size or (4 if smoke else 16)
    args.max_length = args.max_length or (64 if smoke else 1024)
    args.log_every = 2 if smoke else 10
    args.warmup = 2 if smoke else 20
    args.alpaca_weight = 1 if smoke else 3
    args.synthetic = 200 if smoke else 5000
    import torch

    if not smoke and not torch.cuda.is_available():
        print("benchmarks/gpu: no CUDA GPU here; run with --smoke for the CPU check", file=sys.stderr)
        return 2
    out_dir = args.out or (tempfile.mkdtemp(prefix="sft-gpu-smoke-") if smoke else os.path.dirname(
        os.path.abspath(__file__)))
    work = args.work or tempfile.mkdtemp(prefix="sft-gpu-bench-")
    os.makedirs(out_dir, exist_ok=True)
    if smoke:  # CPU: Liger and compile need CUDA / minutes of compiling; everything else runs as on the GPU
        rows = [v for v in variants() if not v["compile"] and not (v["liger"] and v["model"] == "llama-small")
                and not (v["packing"] and v["mode"] != "full")]
    else:
        rows = variants()
    if args.only:
        keys = args.only.split(",")
        rows = [v for v in rows if any(v["name"] == k or (k.endswith("*") and v["name"].startswith(k[:-1]))
                                       for k in keys)]
    import importlib.metadata as md

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "not installed"

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not smoke else \
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    pf = peak_flops(device) if not smoke else None
    meta = {"device": device, "smoke": smoke, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
            "transformers": version("transformers"), "trl": version("trl"), "peft": version("peft"),
            "bitsandbytes": version("bitsandbytes"), "liger": version("liger-kernel"), "steps": args.steps,
            "batch_size": args.batch_size, "max_length": args.max_length, "warmup": args.warmup,
            "alpaca_weight": args.alpaca_weight, "synthetic": args.synthetic, "peak_flops": pf,
            "peak_tflops": pf / 1e12 if pf else None,
            "matmul_tflops": matmul_tflops() if torch.cuda.is_available() and not smoke else None,
            "precision": "float32 (CPU)" if smoke else "train.mixed_precision auto (bf16 autocast, fp32 master "
            "weights for full; bf16 frozen base for LoRA; NF4 + bf16 compute for QLoRA)", "wall_min": 0.0}
    time_first_step()
    start = time.time()
    results = []
    for v in rows:
        print(f"[bench] {v['name']}", flush=True)
        res = dict(v)
        _FIRST_STEP.clear()
        t0 = time.time()
        try:
            res.update(run_trl(v, args, work) if v["trainer"] == "trl" else run_sft(v, args, work))
            res["first_step_s"] = round(_FIRST_STEP["end"] - t0, 2) if "end" in _FIRST_STEP else None
        except Exception as e:  # a row that cannot run says why; the others still run
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            res["error"] = f"{type(e).__name__}: {msg}".replace("|", "/")
            if os.environ.get("SFT_BENCH_TRACE"):
                traceback.print_exc()
        res["wall_s"] = round(time.time() - t0, 1)
        print(f"[bench] {v['name']}: {json.dumps({k: res.get(k) for k in ('first_step_s', 'tokens_per_s', 'peak_mem_gib', 'loss', 'error', 'wall_s')})}",
              flush=True)
        results.append(res)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        meta["wall_min"] = (time.time() - start) / 60
        write_results(os.path.join(out_dir, "results.md"), meta, results)
        with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as fh:
            json.dump({"meta": meta, "rows": results}, fh, indent=1)
    print(f"[bench] wrote {os.path.join(out_dir, 'results.md')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
