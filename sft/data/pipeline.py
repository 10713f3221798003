"""sources -> formats -> clean -> split -> mix -> render -> tokenise.

`load_splits` returns canonical records per split with a report of counts and drops;
`encode` turns records into model features exactly as training and evaluation read them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field

from ..errors import DataError
from ..recipe import DataConfig, SourceConfig
from . import formats, sources
from .clean import DropReport, clean_records, prompt_key
from .templates import TemplateRejected, get_template, render_prompt, render_prompt_segments, render_training


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


def source_names(srcs: list[SourceConfig]) -> list[str]:
    """Report names for sources: the file's base name, widened with its folder (or the source's position)
    where two sources would otherwise share one."""
    base = [sources.source_name(s.path) for s in srcs]
    names = []
    for i, (s, b) in enumerate(zip(srcs, base)):
        if base.count(b) == 1:
            names.append(b)
            continue
        parent = os.path.basename(os.path.dirname(os.path.abspath(os.path.expanduser(s.path))))
        wide = f"{parent}/{b}" if not s.path.startswith("builtin:") else b
        clash = sum(1 for j, (t, c) in enumerate(zip(srcs, base)) if c == b and not t.path.startswith("builtin:")
                    and os.path.basename(os.path.dirname(os.path.abspath(os.path.expanduser(t.path)))) == parent)
        names.append(wide if clash == 1 else f"{b}#{i}")
    return names


def load_source(src: SourceConfig, index: int, *, field_prefix: str, seed: int, report: DropReport,
                per_source: dict, recipe_file: str | None = None, name: str | None = None) -> list[dict]:
    field_name = f"{field_prefix}.{index}"
    rows = sources.read_rows(src.path, split=src.split, subset=src.subset, field=f"{field_name}.path",
                             num_examples=src.num_examples, tasks=src.tasks, seed=seed)
    name = name or sources.source_name(src.path)
    if not rows:
        raise DataError("source has no rows", file=src.path, field=f"{field_name}.path")
    fmt = source_format(src, rows, field_name, recipe_file)
    records, rows_dropped = records_from_rows(src, fmt, rows, name, report)
    key = name if field_prefix == "data.sources" else f"{name} ({field_prefix.split('.')[-1]}, {src.split})"
    per_source[key] = {"path": src.path, "format": fmt, "rows": len(rows), "examples": len(records),
                       "rows_dropped": rows_dropped, "detected": src.format == "auto",
                       "role": "train" if field_prefix == "data.sources" else "eval"}
    return records


def source_format(src: SourceConfig, sample: list[dict], field_name: str, recipe_file: str | None) -> str:
    """The source's format (detected from `sample` rows when auto), its columns checked against them."""
    fmt = src.format
    if fmt == "auto":
        fmt = "columns" if src.columns and not set(src.columns) <= {"task"} else \
            formats.detect_format(sample, file=src.path, field=f"{field_name}.format")
    elif fmt not in formats.FORMATS:
        import difflib

        close = difflib.get_close_matches(fmt, list(formats.FORMATS), n=1)
        raise DataError(f"unknown format {fmt!r}", file=recipe_file, field=f"{field_name}.format",
                        fix=f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(formats.FORMATS)}")
    formats.check_columns(fmt, sample, src.columns, file=src.path, field=field_name)
    return fmt


def records_from_rows(src: SourceConfig, fmt: str, rows: list[dict], name: str,
                      report: DropReport) -> tuple[list[dict], int]:
    """Raw rows -> canonical records (messages, task, source), and how many rows could not be converted (each
    counted in `report` by reason)."""
    if src.replace:
        rows = [_replace_placeholders(r, src.replace) for r in rows]
    converted, drops = formats.convert_rows(fmt, rows, src.columns)
    for reason, n in drops.items():
        report.drop(f"{name}: {reason}", n)
    return [{"messages": msgs, "task": _task_of(src, row, name), "source": name,
             **({"allow_empty_prompt": True} if fmt == "text" else {})} for msgs, row in converted], sum(drops.values())


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


def split_hash(key: str, seed: int) -> float:
    """A stable number in [0, 1) for a prompt: the split never depends on row order or the machine."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode("utf-8", "surrogatepass")).hexdigest()
    return int(digest[:15], 16) / 16 ** 15


def record_id(record: dict) -> str:
    """Identity of one example (its messages, task and source), stored with a run's eval/test split."""
    body = json.dumps([record["messages"], record.get("task"), record.get("source")], ensure_ascii=False,
                      sort_keys=True)
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def hash_split(records: list[dict], sizes: list[int], seed: int) -> list[list[dict]]:
    """Hold out groups of same-prompt records, lowest prompt hash first, until each of `sizes` is reached;
    the rest comes last. Every copy of one prompt lands on the same side."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(prompt_key(r), []).append(r)
    order = sorted(groups, key=lambda k: (split_hash(k, seed), k))
    parts: list[list[dict]] = [[] for _ in sizes] + [[]]
    for k in order:
        g = groups[k]
        # the first held-out part this whole group fits in (a part still empty takes one group even if it
        # is larger, so a small cap still gets an example); otherwise it trains
        target = next((i for i, n in enumerate(sizes) if len(parts[i]) + len(g) <= n or (not parts[i] and n > 0)),
                      len(sizes))
        parts[target].extend(g)
    return parts


def allocate(wanted: list[int], cap: int | None) -> list[int]:
    """Share `cap` across sources in proportion to what each wants (largest remainder), at least one for
    every source that wants any, when the cap allows."""
    total = sum(wanted)
    if cap is None or total <= cap:
        return list(wanted)
    has = [i for i, w in enumerate(wanted) if w > 0]
    floor = 1 if cap >= len(has) else 0
    rest = cap - floor * len(has)
    share = [(w - floor) * rest / max(total - floor * len(has), 1) if w else 0.0 for w in wanted]
    out = [(floor if w else 0) + int(x) for w, x in zip(wanted, share)]
    left = cap - sum(out)
    for i in sorted(has, key=lambda i: (-(share[i] - int(share[i])), i))[:left]:
        out[i] += 1
    return [min(o, w) for o, w in zip(out, wanted)]


def load_splits(cfg: DataConfig, *, recipe_file: str | None = None) -> Splits:
    """Sources -> formats -> clean -> hash split per source -> weight -> mix. Every example is counted."""
    report = DropReport()
    per_source: dict = {}
    rng = random.Random(cfg.seed)

    def load_all(srcs: list[SourceConfig], prefix: str) -> list[list[dict]]:
        out = []
        names = source_names(srcs)
        for i, src in enumerate(srcs):
            recs = load_source(src, i, field_prefix=prefix, seed=cfg.seed, report=report, per_source=per_source,
                               recipe_file=recipe_file, name=names[i])
            out.append(clean_records(recs, normalize_form=cfg.clean.normalize, dedupe=cfg.clean.dedupe,
                                     strip_eos_markers=cfg.clean.strip_eos_markers, report=report))
        return out

    pooled = load_all(cfg.sources, "data.sources")
    names = source_names(cfg.sources)
    # Eval/test are held out per source before weighting, so upsampled copies cannot leak across splits.
    # max_eval_samples is shared across sources, so the carve takes only what is kept: no surplus is lost.
    eval_ratio = 0.0 if cfg.eval_sources else cfg.eval_ratio
    eval_sizes = allocate([round(len(r) * eval_ratio) for r in pooled], cfg.max_eval_samples)
    test_sizes = [round(len(r) * cfg.test_ratio) for r in pooled]
    train_parts, eval_recs, test_recs = [], [], []
    for name, src, recs, n_eval, n_test in zip(names, cfg.sources, pooled, eval_sizes, test_sizes):
        ev, te, rest = hash_split(recs, [n_eval, n_test], cfg.seed)
        eval_recs += ev
        test_recs += te
        rest = list(rest)
        rng.shuffle(rest)
        weighted = _weighted(rest, src.weight, src.max_samples, rng)
        report.drop(f"not sampled (weight {src.weight:g}" + (f", max_samples {src.max_samples})" if src.max_samples
                                                             else ")"),
                    len(rest) - len({id(r) for r in weighted}), source=name)
        train_parts.append(weighted)
    if cfg.eval_sources:
        parts = load_all(cfg.eval_sources, "data.eval_sources")
        sizes = allocate([len(p) for p in parts], cfg.max_eval_samples)
        for part, n in zip(parts, sizes):
            ev, rest = hash_split(part, [n], cfg.seed)
            eval_recs += ev
            if rest:
                report.drop("eval source beyond data.max_eval_samples", len(rest), source=part[0]["source"])
    train = [r for part in train_parts for r in part]
    rng.shuffle(train)
    if cfg.max_samples is not None and len(train) > cfg.max_samples:
        _drop_unique(train[cfg.max_samples:], train[: cfg.max_samples], "over data.max_samples", report)
        train = train[: cfg.max_samples]

    # Exact-duplicate prompts never in both train and eval/test (matters for explicit eval sources).
    held_keys = {prompt_key(r) for r in eval_recs + test_recs}
    kept = [r for r in train if prompt_key(r) not in held_keys]
    _drop_unique([r for r in train if prompt_key(r) in held_keys], kept, "train prompt also in eval/test", report)
    train = kept
    if not train:
        raise DataError("every training example was dropped or held out", file=recipe_file, field="data.sources",
                        fix=f"check the drop report: {report.to_dict()['dropped']}")
    return Splits(train, eval_recs, test_recs, report, per_source)


def _drop_unique(removed: list[dict], kept: list[dict], reason: str, report: DropReport) -> None:
    """Count removed examples once each (copies from up-weighting are not examples of their own)."""
    still = {id(r) for r in kept}
    gone: dict[int, dict] = {id(r): r for r in removed if id(r) not in still}
    for r in gone.values():
        report.drop(reason, 1, source=r["source"])


def accounting(splits: Splits, train_records: list[dict]) -> dict:
    """Per source: examples = train + eval + test + dropped (train counts distinct examples; weighting may
    repeat them). `train_records` are the examples that survived tokenisation."""
    out = {}
    for name, info in splits.per_source.items():
        if info.get("role") == "eval":
            src = name.split(" (")[0]
            ev = sum(r["source"] == src for r in splits.eval)
            dropped = dict(splits.report.dropped_by_source.get(src, {}))
            out[name] = {"rows": info["rows"], "rows_dropped": info.get("rows_dropped", 0),
                         "examples": info["examples"], "train": 0, "train_with_copies": 0, "eval": ev, "test": 0,
                         "dropped": dropped, "balanced": info["examples"] == ev + sum(dropped.values())}
            continue
        src = name
        train_unique = {id(r) for r in train_records if r["source"] == src}
        train_total = sum(1 for r in train_records if r["source"] == src)
        dropped = dict(splits.report.dropped_by_source.get(src, {}))
        row = {"rows": info["rows"], "rows_dropped": info.get("rows_dropped", 0), "examples": info["examples"],
               "train": len(train_unique), "train_with_copies": train_total,
               "eval": sum(r["source"] == src for r in splits.eval),
               "test": sum(r["source"] == src for r in splits.test), "dropped": dropped}
        row["balanced"] = row["examples"] == row["train"] + row["eval"] + row["test"] + sum(dropped.values())
        out[name] = row
    return out


def accounting_lines(acc: dict) -> list[str]:
    """The identity, one line per source, as `sft data` and `sft train` print it."""
    lines = []
    for name, a in acc.items():
        drops = ", ".join(f"{k} {v}" for k, v in sorted(a["dropped"].items(), key=lambda kv: -kv[1]))
        rows = f"{a['rows']} rows" + (f" ({a['rows_dropped']} unreadable)" if a["rows_dropped"] else "")
        copies = a["train_with_copies"] - a["train"]
        lines.append(f"source {name}: {rows} -> {a['examples']} examples = train {a['train']} + eval {a['eval']} + "
                     f"test {a['test']} + dropped {sum(a['dropped'].values())}" + (f" ({drops})" if drops else "")
                     + (f"; train repeats {copies} by weight" if copies else "")
                     + ("" if a["balanced"] else " [does not add up: please report]"))
    return lines


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
    backend = getattr(tokenizer, "_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    fast = getattr(backend, "encode_batch_fast", None)
    if fast is not None and backend.truncation is None and backend.padding is None and \
            backend.encode_special_tokens == bool(getattr(tokenizer, "split_special_tokens", False)):
        # the same ids as tokenizer(texts) (which calls this backend), without offsets it never reads: ~25 % faster
        return [e.ids for e in fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def encode_rows(records: list[dict], tokenizer, template, *, arch: str, max_length: int, overlong: str = "drop",
                system: str | None = None, final_only: bool = False) -> list[tuple]:
    """Per record: (feature or None, drop reason or None, edit or None, token length before trimming or None).
    The one implementation behind `encode` (lists) and the batched Arrow stage (`arrow.encode_dataset`)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("tokenizer has no EOS token", field="model.tokenizer", fix="use a tokenizer with an eos_token")
    rendered, out = [], []
    for r in records:
        try:
            rendered.append(render_training(template, r["messages"], system))
        except TemplateRejected as e:  # one conversation the chat template refuses: dropped and counted
            rendered.append(e.reason)
    flat = [t for segs in rendered if not isinstance(segs, str) for t, _ in segs]
    ids_flat = iter(_tokenize_many(tokenizer, flat))
    no_answer = "no trained token (no answer, or every answer has loss_weight 0)"
    for rec, segs in zip(records, rendered):
        if isinstance(segs, str):
            out.append((None, segs, None, None))
            continue
        seg_ids = [(next(ids_flat), trained) for _, trained in segs]
        last = max((i for i, (_, t) in enumerate(seg_ids) if t), default=None)
        if last is None:
            out.append((None, no_answer, None, None))
            continue
        edit = None
        if arch == "seq2seq":
            src = [i for ids, _ in seg_ids[:last] for i in ids] + [eos]
            tgt = seg_ids[last][0] + [eos]
            length = len(src) + len(tgt)
            if len(src) > max_length or len(tgt) > max_length:
                if overlong == "drop":
                    out.append((None, f"longer than max_length={max_length} tokens", None, length))
                    continue
                edit = f"trimmed to max_length={max_length} tokens"
                src, tgt = src[: max_length - 1] + [eos], tgt[: max_length - 1] + [eos]
            out.append(({"input_ids": src, "labels": tgt, "task": rec["task"]}, None, edit, length))
            continue
        input_ids, labels = [], []
        for i, (ids, trained) in enumerate(seg_ids):
            input_ids += ids
            labels += ids if trained and (not final_only or i == last) else [-100] * len(ids)
        if template.appends_eos:
            input_ids.append(eos)
            labels.append(eos)
        length = len(input_ids)
        if length > max_length:
            if overlong == "drop":
                out.append((None, f"longer than max_length={max_length} tokens", None, length))
                continue
            input_ids, labels = input_ids[:max_length], labels[:max_length]
            if all(x == -100 for x in labels):
                out.append((None, f"prompt fills max_length={max_length} (answer fully truncated)", None, length))
                continue
            edit = f"trimmed to max_length={max_length} tokens"
        out.append(({"input_ids": input_ids, "labels": labels, "task": rec["task"]}, None, edit, length))
    return out


def encode(records: list[dict], tokenizer, template_spec: str, *, arch: str, max_length: int,
           overlong: str = "drop", system: str | None = None, report: DropReport | None = None,
           final_only: bool = False) -> Encoded:
    """Render and tokenise. Causal: input_ids = all segments + EOS, labels -100 on untrained tokens
    (`final_only`: only the final answer is labelled, as evaluation scores it).
    Seq2seq: input_ids = source + EOS, labels = final answer + EOS."""
    template = get_template(template_spec, tokenizer)
    report = report or DropReport()
    counted: set[int] = set()
    feats, kept, lengths = [], [], []
    rows = encode_rows(records, tokenizer, template, arch=arch, max_length=max_length, overlong=overlong,
                       system=system, final_only=final_only)
    for rec, (feat, reason, edit, length) in zip(records, rows):
        if length is not None:
            lengths.append(length)
        if reason is not None:
            # a record repeated by up-weighting is one example: count it once per source
            report.drop(reason, 1, source=None if id(rec) in counted else rec.get("source"))
            counted.add(id(rec))
            continue
        if edit:
            report.edit(edit)
        feats.append(feat)
        kept.append(rec)
    return Encoded(feats, kept, report, lengths)


def encode_prompts(records: list[dict], tokenizer, template_spec: str, *, arch: str,
                   system: str | None = None) -> list[list[int]]:
    """Inference prompts, tokenised exactly as the training prefix of the final answer."""
    template = get_template(template_spec, tokenizer)
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


def prompt_text(record: dict, template_spec: str, system: str | None = None, tokenizer=None) -> str:
    return render_prompt(get_template(template_spec, tokenizer), record["messages"], system)


def count_by(records: list[dict], key: str) -> dict:
    return dict(Counter(r[key] for r in records).most_common())
