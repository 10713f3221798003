"""sources -> formats -> clean -> split -> mix -> render -> tokenise.

`load_splits` returns canonical records per split with a report of counts and drops;
`encode` turns records into model features exactly as training and evaluation read them.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from ..errors import DataError
from ..recipe import DataConfig, SourceConfig
from . import formats, sources
from .clean import DropReport, clean_records, prompt_key
from .templates import get_template, render_prompt, render_prompt_segments, render_training


@dataclass
class Splits:
    train: list[dict]
    eval: list[dict]
    test: list[dict]
    report: DropReport
    per_source: dict = field(default_factory=dict)  # source -> {"format":, "rows":, "examples":}

    def split(self, name: str) -> list[dict]:
        if name in ("eval", "validation"):
            return self.eval
        if name in ("train", "test"):
            return getattr(self, name)
        raise DataError(f"unknown split {name!r}", field="--split", fix="use train, eval or test")


def _task_of(src: SourceConfig, row: dict, default: str) -> str:
    if src.task:
        return src.task
    col = src.task_column or src.columns.get("task") or "task"
    value = row.get(col)
    if isinstance(value, str) and value:
        return value
    if src.task_column:
        return "unknown"
    return default


def load_source(src: SourceConfig, index: int, *, field_prefix: str, seed: int, report: DropReport,
                per_source: dict, recipe_file: str | None = None) -> list[dict]:
    field_name = f"{field_prefix}.{index}"
    rows = sources.read_rows(src.path, split=src.split, subset=src.subset, field=f"{field_name}.path",
                             num_examples=src.num_examples, tasks=src.tasks, seed=seed)
    name = sources.source_name(src.path)
    if not rows:
        raise DataError("source has no rows", file=src.path, field=f"{field_name}.path")
    fmt = src.format
    if fmt == "auto":
        fmt = "columns" if src.columns and not set(src.columns) <= {"task"} else \
            formats.detect_format(rows, file=src.path, field=f"{field_name}.format")
    elif fmt not in formats.FORMATS:
        import difflib

        close = difflib.get_close_matches(fmt, list(formats.FORMATS), n=1)
        raise DataError(f"unknown format {fmt!r}", file=recipe_file, field=f"{field_name}.format",
                        fix=f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(formats.FORMATS)}")
    formats.check_columns(fmt, rows, src.columns, file=src.path, field=field_name)
    if src.replace:
        rows = [_replace_placeholders(r, src.replace) for r in rows]
    converted, drops = formats.convert_rows(fmt, rows, src.columns)
    for reason, n in drops.items():
        report.drop(f"{name}: {reason}", n)
    records = [{"messages": msgs, "task": _task_of(src, row, name), "source": name,
                **({"allow_empty_prompt": True} if fmt == "text" else {})} for msgs, row in converted]
    key = name if field_prefix == "data.sources" else f"{name} ({field_prefix.split('.')[-1]}, {src.split})"
    per_source[key] = {"path": src.path, "format": fmt, "rows": len(rows), "examples": len(records),
                        "detected": src.format == "auto"}
    return records


def _replace_placeholders(row, mapping: dict):
    if isinstance(row, str):
        for k, v in mapping.items():
            row = row.replace(k, str(v))
        return row
    if isinstance(row, dict):
        return {k: _replace_placeholders(v, mapping) for k, v in row.items()}
    if isinstance(row, list):
        return [_replace_placeholders(v, mapping) for v in row]
    return row


def _weighted(records: list[dict], weight: float, cap: int | None, rng: random.Random) -> list[dict]:
    """Up- or down-sample by weight (whole copies plus a random remainder), then cap."""
    whole, frac = int(weight), weight - int(weight)
    out = records * whole + rng.sample(records, round(len(records) * frac))
    if cap is not None and len(out) > cap:
        out = rng.sample(out, cap)
    return out


def carve(records: list[dict], ratio: float, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """Split off about `ratio` of the records, keeping all copies of one prompt on the same side."""
    if ratio <= 0:
        return records, []
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(prompt_key(r), []).append(r)
    keys = list(groups)
    rng.shuffle(keys)
    target = round(len(records) * ratio)
    held, n = set(), 0
    for k in keys:
        if n >= target:
            break
        held.add(k)
        n += len(groups[k])
    keep = [r for r in records if prompt_key(r) not in held]
    out = [r for r in records if prompt_key(r) in held]
    return keep, out


def load_splits(cfg: DataConfig, *, recipe_file: str | None = None) -> Splits:
    report = DropReport()
    per_source: dict = {}
    rng = random.Random(cfg.seed)

    def load_all(srcs: list[SourceConfig], prefix: str) -> list[list[dict]]:
        out = []
        for i, src in enumerate(srcs):
            recs = load_source(src, i, field_prefix=prefix, seed=cfg.seed, report=report, per_source=per_source,
                               recipe_file=recipe_file)
            out.append(clean_records(recs, nfkc=cfg.clean.nfkc, dedupe=cfg.clean.dedupe,
                                     strip_eos_markers=cfg.clean.strip_eos_markers, report=report))
        return out

    pooled = load_all(cfg.sources, "data.sources")
    # Carve eval/test from each source before weighting, so upsampled copies cannot leak across splits.
    train_parts, eval_recs, test_recs = [], [], []
    for src, recs in zip(cfg.sources, pooled):
        recs = list(recs)
        rng.shuffle(recs)
        if not cfg.eval_sources:
            recs, ev = carve(recs, cfg.eval_ratio, rng)
            eval_recs += ev
        recs, te = carve(recs, cfg.test_ratio / max(1e-9, 1 - (0 if cfg.eval_sources else cfg.eval_ratio)), rng)
        test_recs += te
        train_parts.append(_weighted(recs, src.weight, src.max_samples, rng))
    if cfg.eval_sources:
        eval_recs = [r for part in load_all(cfg.eval_sources, "data.eval_sources") for r in part]
    train = [r for part in train_parts for r in part]
    rng.shuffle(train)
    if cfg.max_samples is not None:
        train = train[: cfg.max_samples]

    # Exact-duplicate prompts never in both train and eval/test (matters for explicit eval sources).
    held_keys = {prompt_key(r) for r in eval_recs + test_recs}
    before = len(train)
    train = [r for r in train if prompt_key(r) not in held_keys]
    report.drop("train prompt also in eval/test", before - len(train))
    if cfg.max_eval_samples is not None and len(eval_recs) > cfg.max_eval_samples:
        eval_recs = eval_recs[: cfg.max_eval_samples]
    if not train:
        raise DataError("every training example was dropped or held out", file=recipe_file, field="data.sources",
                        fix=f"check the drop report: {report.to_dict()['dropped']}")
    return Splits(train, eval_recs, test_recs, report, per_source)


# ---- tokenisation -----------------------------------------------------------------------------

@dataclass
class Encoded:
    features: list[dict]  # input_ids, labels (+ task, index into the records)
    records: list[dict]  # the records kept, aligned with features
    report: DropReport
    lengths: list[int]  # token lengths before trimming


def _tokenize_many(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def encode(records: list[dict], tokenizer, template_spec: str, *, arch: str, max_length: int,
           overlong: str = "drop", system: str | None = None, report: DropReport | None = None) -> Encoded:
    """Render and tokenise. Causal: input_ids = all segments + EOS, labels -100 on untrained tokens.
    Seq2seq: input_ids = source + EOS, labels = final answer + EOS."""
    template = get_template(template_spec)
    report = report or DropReport()
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("tokenizer has no EOS token", field="model.tokenizer", fix="use a tokenizer with an eos_token")
    rendered = [render_training(template, r["messages"], system) for r in records]
    flat = [t for segs in rendered for t, _ in segs]
    ids_flat = iter(_tokenize_many(tokenizer, flat))
    feats, kept, lengths = [], [], []
    for rec, segs in zip(records, rendered):
        seg_ids = [(next(ids_flat), trained) for _, trained in segs]
        if arch == "seq2seq":
            last = max((i for i, (_, t) in enumerate(seg_ids) if t), default=None)
            if last is None:
                report.drop("no answer after rendering")
                continue
            src = [i for ids, _ in seg_ids[:last] for i in ids] + [eos]
            tgt = seg_ids[last][0] + [eos]
            lengths.append(len(src) + len(tgt))
            if len(src) > max_length or len(tgt) > max_length:
                if overlong == "drop":
                    report.drop(f"longer than max_length={max_length} tokens")
                    continue
                report.edit(f"trimmed to max_length={max_length} tokens")
                src, tgt = src[: max_length - 1] + [eos], tgt[: max_length - 1] + [eos]
            feats.append({"input_ids": src, "labels": tgt, "task": rec["task"]})
        else:
            input_ids, labels = [], []
            for ids, trained in seg_ids:
                input_ids += ids
                labels += ids if trained else [-100] * len(ids)
            input_ids.append(eos)
            labels.append(eos)
            lengths.append(len(input_ids))
            if len(input_ids) > max_length:
                if overlong == "drop":
                    report.drop(f"longer than max_length={max_length} tokens")
                    continue
                input_ids, labels = input_ids[:max_length], labels[:max_length]
                if all(x == -100 for x in labels):
                    report.drop(f"prompt fills max_length={max_length} (answer fully truncated)")
                    continue
                report.edit(f"trimmed to max_length={max_length} tokens")
            feats.append({"input_ids": input_ids, "labels": labels, "task": rec["task"]})
        kept.append(rec)
    return Encoded(feats, kept, report, lengths)


def encode_prompts(records: list[dict], tokenizer, template_spec: str, *, arch: str,
                   system: str | None = None) -> list[list[int]]:
    """Inference prompts, tokenised exactly as the training prefix of the final answer."""
    template = get_template(template_spec)
    rendered = [render_prompt_segments(template, r["messages"], system) for r in records]
    flat = [t for segs in rendered for t, _ in segs]
    ids_flat = iter(_tokenize_many(tokenizer, flat))
    out = []
    for segs in rendered:
        ids = [i for _ in segs for i in next(ids_flat)]
        if arch == "seq2seq":
            ids = ids + [tokenizer.eos_token_id]
        out.append(ids)
    return out


def final_answer(record: dict) -> str:
    return next(m["content"] for m in reversed(record["messages"]) if m["role"] == "assistant")


def prompt_text(record: dict, template_spec: str, system: str | None = None) -> str:
    return render_prompt(get_template(template_spec), record["messages"], system)


def count_by(records: list[dict], key: str) -> dict:
    return dict(Counter(r[key] for r in records).most_common())
