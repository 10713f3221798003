"""Cleaning canonical records; every drop and edit is counted by reason (nothing disappears silently)."""

from __future__ import annotations

import json
import unicodedata
from collections import Counter

EOS_MARKERS = ("<|endoftext|>", "</s>", "<|im_end|>", "<eos>")


class DropReport:
    """Counts of dropped examples and edits, by reason."""

    def __init__(self):
        self.dropped: Counter = Counter()
        self.edited: Counter = Counter()

    def drop(self, reason: str, n: int = 1) -> None:
        if n:
            self.dropped[reason] += n

    def edit(self, reason: str, n: int = 1) -> None:
        if n:
            self.edited[reason] += n

    def merge(self, other: "DropReport") -> None:
        self.dropped.update(other.dropped)
        self.edited.update(other.edited)

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict:
        return {"dropped": dict(self.dropped.most_common()), "edited": dict(self.edited.most_common())}


def normalise_text(text: str, nfkc: bool = True) -> str:
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    return text.strip()


def prompt_key(record: dict) -> str:
    """Identity of an example's prompt: every message before the final answer."""
    msgs = record["messages"]
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=len(msgs))
    return json.dumps([[m["role"], m["content"], m.get("input", "")] for m in msgs[:last]], ensure_ascii=False)


def clean_records(records: list[dict], *, nfkc: bool = True, dedupe: bool = True, strip_eos_markers: bool = True,
                  report: DropReport) -> list[dict]:
    out, seen = [], set()
    for rec in records:
        msgs = []
        for m in rec["messages"]:
            m = dict(m)
            content = m["content"]
            if strip_eos_markers and m["role"] == "assistant":
                for marker in EOS_MARKERS:
                    if marker in content:
                        content = content.replace(marker, "")
                        report.edit(f"removed literal {marker} from an answer")
            m["content"] = normalise_text(content, nfkc)
            if "input" in m:
                m["input"] = normalise_text(m["input"] or "", nfkc)
            msgs.append(m)
        answers = [m for m in msgs if m["role"] == "assistant"]
        users = [m for m in msgs if m["role"] in ("user", "tool")]
        if not answers or not answers[-1]["content"]:
            report.drop("empty answer")
            continue
        if not users or not any(m["content"] or m.get("input") for m in users):
            if rec.get("allow_empty_prompt"):
                pass
            else:
                report.drop("empty prompt")
                continue
        rec = {**rec, "messages": msgs}
        if dedupe:
            key = json.dumps([[m["role"], m["content"], m.get("input", "")] for m in msgs], ensure_ascii=False)
            if key in seen:
                report.drop("exact duplicate")
                continue
            seen.add(key)
        out.append(rec)
    return out
