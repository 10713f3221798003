"""Cleaning canonical records; every drop and edit is counted by reason (nothing disappears silently)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

from ..text import normalize, squash_spaces

EOS_MARKERS = ("<|endoftext|>", "</s>", "<|im_end|>", "<eos>")


class DropReport:
    """Counts of dropped examples and edits, by reason (and by source, for the row accounting)."""

    def __init__(self):
        self.dropped: Counter = Counter()
        self.edited: Counter = Counter()
        self.dropped_by_source: dict[str, Counter] = {}

    def drop(self, reason: str, n: int = 1, source: str | None = None) -> None:
        if n:
            self.dropped[reason] += n
            if source is not None:
                self.dropped_by_source.setdefault(source, Counter())[reason] += n

    def edit(self, reason: str, n: int = 1) -> None:
        if n:
            self.edited[reason] += n

    def merge(self, other: "DropReport") -> None:
        self.dropped.update(other.dropped)
        self.edited.update(other.edited)
        for src, c in other.dropped_by_source.items():
            self.dropped_by_source.setdefault(src, Counter()).update(c)

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict:
        return {"dropped": dict(self.dropped.most_common()), "edited": dict(self.edited.most_common())}


def normalise_text(text: str, form: str = "nfc") -> str:
    return normalize(text, form).strip()


def prompt_key(record: dict) -> str:
    """Identity of an example's prompt: every message before the final answer. A row with no prompt at all
    (plain text, language modelling) is identified by its text, so such rows split one by one instead of
    landing together on one side of the train/eval split."""
    msgs = record["messages"]
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=len(msgs))
    if not any(m["content"] or m.get("input") for m in msgs[:last]):
        last = len(msgs)
    return json.dumps([message_key(m) for m in msgs[:last]] + ([record["tools"]] if record.get("tools") else []),
                      ensure_ascii=False)


def message_key(m: dict) -> list:
    """What identifies a message: role, text, input, and its tool calls and reasoning where it has them."""
    key = [m["role"], m["content"], m.get("input", "")]
    if m.get("tool_calls") or m.get("reasoning"):
        key += [m.get("tool_calls") or [], m.get("reasoning") or ""]
    return key


def has_answer(m: dict) -> bool:
    """An assistant turn says something: text or a tool call (reasoning alone is not an answer)."""
    return bool(m["content"] or m.get("tool_calls"))


def clean_records(records: list[dict], *, normalize_form: str = "nfc", dedupe: bool = True,
                  strip_eos_markers: bool = True, report: DropReport, seen: set | None = None) -> list[dict]:
    """Normalise, strip and drop empty or (with `dedupe`) repeated examples. `seen` carries the duplicate check
    across calls, when a source is cleaned a piece at a time."""
    out = []
    seen = set() if seen is None else seen
    for rec in records:
        msgs = []
        changed: set[str] = set()
        for m in rec["messages"]:
            m = dict(m)
            content = m["content"]
            if strip_eos_markers and m["role"] == "assistant":
                for marker in EOS_MARKERS:
                    if marker in content:
                        content = content.replace(marker, "")
                        report.edit(f"removed literal {marker} from an answer")
            for key, text in (("content", content), ("input", m.get("input")), ("reasoning", m.get("reasoning"))):
                if key != "content" and key not in m:
                    continue
                text = text or ""
                normal = normalize(text, normalize_form)
                if normal != text:
                    changed.add(f"unicode {normalize_form.upper()} changed characters")
                if normal.strip() != normal:
                    changed.add("stripped surrounding whitespace")
                m[key] = normal.strip()
            msgs.append(m)
        for reason in changed:
            report.edit(reason)
        task = squash_spaces(str(rec.get("task", "")))
        if task != rec.get("task"):
            rec = {**rec, "task": task}
        answers = [m for m in msgs if m["role"] == "assistant"]
        users = [m for m in msgs if m["role"] in ("user", "tool")]
        if not answers or not has_answer(answers[-1]):
            report.drop("empty answer", source=rec.get("source"))
            continue
        if not rec.get("document") and not any(m["content"] or m.get("input") for m in users):
            report.drop("empty prompt", source=rec.get("source"))  # a document has no prompt by design
            continue
        rec = {**rec, "messages": msgs}
        if dedupe:
            key = json.dumps([message_key(m) for m in msgs] + [rec.get("tools") or []], ensure_ascii=False)
            # a 128-bit digest stands for the text: a million examples' keys would otherwise sit in memory
            key = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            if key in seen:
                report.drop("exact duplicate", source=rec.get("source"))
                continue
            seen.add(key)
        out.append(rec)
    return out
