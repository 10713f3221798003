"""Records -> model features: render with the template and tokenise (causal: the whole conversation with labels
on trained spans; seq2seq: source -> final answer; documents: windows, `documents.py`), and the inference prompt
exactly as the training prefix of the final answer."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DataError
from ..families import path_of
from .clean import DropReport
from .templates import TemplateRejected, get_template, render_prompt, render_prompt_segments, render_training


NO_ANSWER = "no trained token (no answer, or every answer has loss_weight 0)"


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


def _whole_text_runs(tokenizer, rendered: list[list]) -> list[list[tuple[list[int], bool]]]:
    """Each rendering tokenised as one text, cut into runs of tokens that are trained (overlap a trained span)
    or not."""
    texts = ["".join(t for t, _ in segs) for segs in rendered]
    if not texts:
        return []
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for segs, ids, offsets in zip(rendered, enc["input_ids"], enc["offset_mapping"]):
        spans, pos = [], 0
        for text, trained in segs:
            if trained and text:
                spans.append((pos, pos + len(text)))
            pos += len(text)
        runs: list[tuple[list[int], bool]] = []
        for tok, (a, b) in zip(ids, offsets):
            flag = any(a < e and s < max(b, a + 1) for s, e in spans)
            if runs and runs[-1][1] == flag:
                runs[-1][0].append(tok)
            else:
                runs.append(([tok], flag))
        out.append(runs)
    return out


def encode_rows(records: list[dict], tokenizer, template, *, arch: str, max_length: int, overlong: str = "drop",
                system: str | None = None, final_only: bool = False, text_stride: int = 0, seed: int = 0,
                window: int | None = None) -> list[tuple]:
    """Per record: (feature or None, drop reason or None, edit or None, token length before trimming or None).
    A document (`format: text`) has a list of features instead, its windows of `window` (default `max_length`)
    tokens (`documents.py`). The one implementation behind `encode` (lists) and the batched Arrow stage
    (`arrow.encode_dataset`)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("tokenizer has no EOS token", field="model.tokenizer", fix="use a tokenizer with an eos_token")
    docs = [i for i, r in enumerate(records) if r.get("document")]
    if docs:
        return _encode_mixed(records, docs, tokenizer, template, arch=arch, max_length=max_length,
                             overlong=overlong, system=system, final_only=final_only, text_stride=text_stride,
                             seed=seed, window=window)
    rendered, out = [], []
    for r in records:
        try:
            rendered.append(render_training(template, r["messages"], system, r.get("tools")))
        except TemplateRejected as e:  # one conversation the chat template refuses: dropped and counted
            rendered.append(e.reason)
    # A chat template's text is tokenised whole, as apply_chat_template(tokenize=True) and a server tokenise it, and
    # a token is trained where it overlaps a trained span (as return_assistant_tokens_mask marks it); built-in
    # templates tokenise span by span (their recorded losses and benchmark tables pin that).
    whole = getattr(template, "whole_text", False) and not path_of(arch).encoder_decoder and \
        getattr(tokenizer, "is_fast", False)
    kept = [segs for segs in rendered if not isinstance(segs, str)]
    if whole:
        runs = iter(_whole_text_runs(tokenizer, kept))
    else:
        ids_flat = iter(_tokenize_many(tokenizer, [t for segs in kept for t, _ in segs]))
    for rec, segs in zip(records, rendered):
        if isinstance(segs, str):
            out.append((None, segs, None, None))
            continue
        seg_ids = next(runs) if whole else [(next(ids_flat), trained) for _, trained in segs]
        last = max((i for i, (_, t) in enumerate(seg_ids) if t), default=None)
        if last is None:
            out.append((None, NO_ANSWER, None, None))
            continue
        edit = None
        if path_of(arch).encoder_decoder:
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


def _encode_mixed(records, docs, tokenizer, template, *, text_stride, seed, window, **kw) -> list[tuple]:
    """`encode_rows` for a batch holding documents: they are windowed raw text (no template), the rest as usual."""
    from . import documents

    sentinels = documents.require_sentinels(tokenizer) if path_of(kw["arch"]).encoder_decoder else None
    doc_set = set(docs)
    rest = [r for i, r in enumerate(records) if i not in doc_set]
    others = iter(encode_rows(rest, tokenizer, template, **kw)) if rest else iter(())
    texts = [documents.document_text(records[i]) for i in docs]
    ids = iter(_tokenize_many(tokenizer, texts))
    text = iter(texts)
    out = []
    for i, rec in enumerate(records):
        if i not in doc_set:
            out.append(next(others))
            continue
        toks, body = next(ids), next(text)
        if not toks:
            out.append((None, NO_ANSWER, None, None))
            continue
        feats = documents.document_features(toks, body, eos=tokenizer.eos_token_id, sentinels=sentinels,
                                            max_length=window or kw["max_length"], stride=text_stride, seed=seed,
                                            task=rec["task"])
        out.append((feats, None, None, len(toks) + 1))
    return out


def encode(records: list[dict], tokenizer, template_spec: str, *, arch: str, max_length: int,
           overlong: str = "drop", system: str | None = None, report: DropReport | None = None,
           final_only: bool = False, text_stride: int = 0, seed: int = 0, window: int | None = None) -> Encoded:
    """Render and tokenise. Causal: input_ids = all segments + EOS, labels -100 on untrained tokens
    (`final_only`: only the final answer is labelled, as evaluation scores it).
    Seq2seq: input_ids = source + EOS, labels = final answer + EOS. A document gives one feature per window,
    each aligned with the document's record."""
    template = get_template(template_spec, tokenizer)
    report = report or DropReport()
    rows = encode_rows(records, tokenizer, template, arch=arch, max_length=max_length, overlong=overlong,
                       system=system, final_only=final_only, text_stride=text_stride, seed=seed, window=window)
    keep, lengths = tally([id(r) for r in records], [row[1:] for row in rows], report,
                          lambda i: records[i].get("source"))
    features, kept = [], []
    for i in keep:
        feats = rows[i][0] if isinstance(rows[i][0], list) else [rows[i][0]]
        features += feats
        kept += [records[i]] * len(feats)
    return Encoded(features, kept, report, lengths)


def tally(keys: list, outcomes, report: DropReport, source_of) -> tuple[list[int], list[int]]:
    """Count one tokenising pass, in training order: example i has identity keys[i] (a weighted copy shares its
    original's) and outcome (drop reason, edit, token length; each None where there is none). A dropped example
    counts once against its source, `source_of(i)`, however many copies it has. Returns the positions kept and
    the token lengths."""
    counted: set = set()
    keep, lengths = [], []
    for i, (key, (reason, edit, length)) in enumerate(zip(keys, outcomes)):
        if length is not None:
            lengths.append(length)
        if reason:
            report.drop(reason, 1, source=None if key in counted else source_of(i))
            counted.add(key)
            continue
        if edit:
            report.edit(edit)
        keep.append(i)
    return keep, lengths


def encode_prompts(records: list[dict], tokenizer, template_spec: str, *, arch: str,
                   system: str | None = None) -> list[list[int]]:
    """Inference prompts, tokenised exactly as the training prefix of the final answer."""
    template = get_template(template_spec, tokenizer)
    rendered = [render_prompt_segments(template, r["messages"], system, r.get("tools")) for r in records]
    flat = [t for segs in rendered for t, _ in segs]
    ids_flat = iter(_tokenize_many(tokenizer, flat))
    out = []
    for segs in rendered:
        ids = [i for _ in segs for i in next(ids_flat)]
        if path_of(arch).encoder_decoder:
            ids = ids + [tokenizer.eos_token_id]
        out.append(ids)
    return out


class PromptFormat:
    """Training examples, inference prompts and stop tokens of one run (its recipe, tokenizer and training path),
    from one template object: training, evaluation, generate, chat and the saved generation config all read their
    stops here. `raw`: plain-text continuation (no template; ends at EOS)."""

    def __init__(self, recipe, tokenizer, arch: str, raw: bool = False):
        self.recipe, self.tokenizer, self.arch, self.raw = recipe, tokenizer, arch, raw
        self.template = None if raw else get_template(recipe.data.template, tokenizer)

    def encode_train(self, records: list[dict], **kw):
        d = self.recipe.data
        return encode(records, self.tokenizer, d.template, arch=self.arch, max_length=kw.pop("max_length", d.max_length),
                      system=d.system_prompt, text_stride=d.text_stride, seed=d.seed, **kw)

    def encode_prompt(self, records: list[dict]) -> list[list[int]]:
        if self.raw:
            return [self.tokenizer(r["text"])["input_ids"] for r in records]
        return encode_prompts(records, self.tokenizer, self.recipe.data.template, arch=self.arch,
                              system=self.recipe.data.system_prompt)

    @property
    def stops(self) -> tuple[str, ...]:
        """Text markers that end an answer besides EOS (none for a raw continuation)."""
        return () if self.template is None else tuple(self.template.stop)

    @property
    def stop_ids(self) -> list[int]:
        """EOS plus every stop marker that is one token."""
        from .templates import stop_token_ids

        return stop_token_ids(self.tokenizer, self.stops)

    @property
    def generation_eos(self):
        """What generation_config.json tells servers (transformers serve, vLLM) to stop at: one id or a list."""
        ids = self.stop_ids
        return ids if len(ids) > 1 else (ids[0] if ids else None)


def final_answer(record: dict) -> str:
    """The reference an evaluation scores: the final answer's text, and its tool calls in the built-in tool
    format (`<tool_call>` JSON, which the tool-call metrics parse); its reasoning is not part of it."""
    from .templates import answer_text

    return answer_text(next(m for m in reversed(record["messages"]) if m["role"] == "assistant"), reasoning=False)


def prompt_text(record: dict, template_spec: str, system: str | None = None, tokenizer=None) -> str:
    return render_prompt(get_template(template_spec, tokenizer), record["messages"], system, record.get("tools"))
