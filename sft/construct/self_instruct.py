"""Self-Instruct bootstrapping (Wang et al. 2022) with a local generator model.

Each round prompts with k in-context instructions (default 8: 6 seed + 2 generated), parses the
numbered new instructions, and filters them: word-length bounds, a keyword blacklist, a leading
punctuation check, and ROUGE-L > threshold against every instruction already in the pool. Unlike the
original, non-ASCII (e.g. Chinese) instructions are kept, and ROUGE-L uses a tokenizer that keeps CJK.
Accepted instructions then get instances (input/output) from the same model.

The pool is appended to `pool.jsonl` as it grows, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field

from ..text import is_punctuation_or_symbol, mostly_punctuation, word_count
from .neardup import NearDupIndex

DEFAULT_BLACKLIST = ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
                     "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram"]


@dataclass
class SelfInstructConfig:
    seed_tasks: str
    generator: str
    num_instructions: int = 20
    num_prompt_instructions: int = 8
    num_prompt_generated: int = 2
    min_words: int = 3
    max_words: int = 150
    blacklist: list = field(default_factory=lambda: list(DEFAULT_BLACKLIST))
    rouge_threshold: float = 0.7
    instances_per_instruction: int = 1
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.5
    max_rounds: int | None = None
    seed: int = 0


def encode_prompt(instructions: list[str]) -> str:
    prompt = "Come up with a series of tasks:\n"
    for i, inst in enumerate(instructions, 1):
        prompt += f"{i}. {' '.join(inst.split())}\n"
    return prompt + f"{len(instructions) + 1}."


def parse_instructions(text: str) -> list[str]:
    """The numbered items of a completion (the first continues the prompt's trailing 'N.')."""
    raw = re.split(r"\n\s*\d+\s*[.)]\s*", "\n1." + text if not text.lstrip().startswith(("1.", "1)")) else text)
    out = []
    for item in raw:
        item = re.sub(r"^\s*\d+\s*[.)]\s*", "", item).strip()
        item = item.split("\n\n")[0].strip()
        if item:
            out.append(item)
    return out


def filter_reason(inst: str, cfg: SelfInstructConfig, index: NearDupIndex) -> str | None:
    """Why an instruction is rejected (None: accepted)."""
    if mostly_punctuation(inst):
        return "only punctuation"
    length = word_count(inst)
    if length < cfg.min_words:
        return f"fewer than {cfg.min_words} words"
    if length > cfg.max_words:
        return f"more than {cfg.max_words} words"
    lower = inst.lower()
    for word in cfg.blacklist:
        if re.search(rf"\b{re.escape(word)}\b", lower):
            return "blacklisted keyword"
    if inst.startswith("Write a program"):
        return "blacklisted keyword"
    if is_punctuation_or_symbol(inst[0]):
        return "starts with punctuation"
    score, _ = index.query(inst)
    if score > cfg.rouge_threshold:
        return f"ROUGE-L > {cfg.rouge_threshold} to the pool"
    return None


def _load_generator(name: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, trust_remote_code=False).eval()
    return model, tok


def _complete(model, tok, prompt: str, cfg: SelfInstructConfig, seed: int) -> str:
    import torch

    torch.manual_seed(seed)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    max_pos = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024)
    ids = {k: v[:, -(max_pos - cfg.max_new_tokens):] for k, v in ids.items()}
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature,
                             top_p=cfg.top_p, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def instance_prompt(instruction: str) -> str:
    return f"Task: {instruction}\nInput:"


def parse_instance(text: str) -> tuple[str, str] | None:
    """'<input>\\nOutput: <output>' -> (input, output); None when no output could be parsed."""
    if "Output:" not in text:
        return None
    inp, out = text.split("Output:", 1)
    out = out.split("\nTask:")[0].strip()
    inp = inp.strip()
    if inp.lower() in ("<noinput>", "none", "n/a"):
        inp = ""
    return (inp, out) if out else None


def run_self_instruct(cfg: SelfInstructConfig, work_dir: str, progress: bool = True) -> dict:
    """Grow `work_dir/pool.jsonl` to cfg.num_instructions, then write instances. Returns counts."""
    from tqdm.auto import tqdm

    os.makedirs(work_dir, exist_ok=True)
    with open(cfg.seed_tasks, encoding="utf-8") as fh:
        seeds = [json.loads(l) for l in fh if l.strip()]
    seed_instructions = [s["instruction"] for s in seeds]
    pool_path = os.path.join(work_dir, "pool.jsonl")
    pool: list[dict] = []
    if os.path.exists(pool_path):  # resume
        with open(pool_path, encoding="utf-8") as fh:
            pool = [json.loads(l) for l in fh if l.strip()]
    state_path = os.path.join(work_dir, "state.json")
    state = json.load(open(state_path)) if os.path.exists(state_path) else {"round": 0, "filtered": {},
                                                                             "proposed": 0}
    filtered = Counter(state["filtered"])
    index = NearDupIndex(seed=cfg.seed)
    for inst in seed_instructions + [p["instruction"] for p in pool]:
        index.add(inst)
    model, tok = _load_generator(cfg.generator)
    bar = tqdm(total=cfg.num_instructions, initial=len(pool), desc="self-instruct pool", disable=not progress)
    prompts_log = os.path.join(work_dir, "prompts.jsonl")
    while len(pool) < cfg.num_instructions and (cfg.max_rounds is None or state["round"] < cfg.max_rounds):
        rng = random.Random(cfg.seed * 100003 + state["round"])
        generated = [p["instruction"] for p in pool]
        n_gen = min(cfg.num_prompt_generated, len(generated))
        chosen = rng.sample(generated, n_gen) + rng.sample(seed_instructions, cfg.num_prompt_instructions - n_gen)
        rng.shuffle(chosen)
        prompt = encode_prompt(chosen)
        completion = _complete(model, tok, prompt, cfg, seed=cfg.seed * 7919 + state["round"])
        with open(prompts_log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"round": state["round"], "prompt": prompt, "completion": completion},
                                ensure_ascii=False) + "\n")
        new = parse_instructions(completion)
        state["proposed"] += len(new)
        with open(pool_path, "a", encoding="utf-8") as fh:
            for inst in new:
                if len(pool) >= cfg.num_instructions:
                    break
                inst = " ".join(inst.split())
                reason = filter_reason(inst, cfg, index) if inst else "empty"
                if reason:
                    filtered[reason] += 1
                    continue
                index.add(inst)
                rec = {"instruction": inst, "round": state["round"]}
                pool.append(rec)
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                bar.update(1)
        state["round"] += 1
        state["filtered"] = dict(filtered)
        tmp = state_path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(state, fh)
        os.replace(tmp, state_path)
    bar.close()

    # Instances for accepted instructions (resumable: instances.jsonl keyed by instruction)
    inst_path = os.path.join(work_dir, "instances.jsonl")
    done = {}
    if os.path.exists(inst_path):
        with open(inst_path, encoding="utf-8") as fh:
            for l in fh:
                if l.strip():
                    r = json.loads(l)
                    done[r["instruction"]] = r
    instance_drops = Counter()
    with open(inst_path, "a", encoding="utf-8") as fh:
        for k, p in enumerate(tqdm(pool, desc="instances", disable=not progress)):
            if p["instruction"] in done:
                continue
            instances = []
            for j in range(cfg.instances_per_instruction):
                text = _complete(model, tok, instance_prompt(p["instruction"]), cfg, seed=cfg.seed + 31 * k + j)
                parsed = parse_instance(text)
                if parsed is None:
                    instance_drops["instance without 'Output:'"] += 1
                    continue
                instances.append({"input": parsed[0], "output": parsed[1]})
            rec = {"instruction": p["instruction"], "instances": instances}
            done[p["instruction"]] = rec
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return {"pool": len(pool), "rounds": state["round"], "proposed": state["proposed"], "filtered": dict(filtered),
            "instance_drops": dict(instance_drops),
            "records": [r for r in done.values() if r["instances"]]}
